-- A back-sync, on the legacy database, as a superuser, after legacy.sql (docs/SECURITY.md):
--   psql -d legacy -v schema=app -v app_owner=app -f backsync-legacy.sql
-- The back-sync's sink connects as cutover_sink (backsync.legacy_url) and writes the legacy
-- tables the new store owns in the `dual` and `reverse` phases.
\set ON_ERROR_STOP on
GRANT USAGE ON SCHEMA :"schema" TO cutover_sink;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA :"schema" TO cutover_sink;
ALTER DEFAULT PRIVILEGES FOR ROLE :"app_owner" IN SCHEMA :"schema"
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO cutover_sink;
-- cutover's tables on legacy are created by whichever of capture (phase tables through
-- `cutover phase`, run with source.url's role) and the back-sync's sink (its progress, the
-- conflicts) comes first: each may use the other's.
ALTER DEFAULT PRIVILEGES FOR ROLE cutover_capture IN SCHEMA cutover
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cutover_sink;
ALTER DEFAULT PRIVILEGES FOR ROLE cutover_capture IN SCHEMA cutover
    GRANT USAGE, SELECT ON SEQUENCES TO cutover_sink;
ALTER DEFAULT PRIVILEGES FOR ROLE cutover_sink IN SCHEMA cutover
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cutover_capture;
ALTER DEFAULT PRIVILEGES FOR ROLE cutover_sink IN SCHEMA cutover
    GRANT USAGE, SELECT ON SEQUENCES TO cutover_capture;
-- Echo suppression: the back-sync's writes carry a replication origin (per database grants).
GRANT EXECUTE ON FUNCTION
    pg_replication_origin_oid(text),
    pg_replication_origin_create(text),
    pg_replication_origin_session_setup(text),
    pg_replication_origin_session_reset(),
    pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone),
    pg_replication_origin_drop(text)
    TO cutover_sink;
