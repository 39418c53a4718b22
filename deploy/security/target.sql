-- cutover on a target database (one sink's store), as a superuser (docs/SECURITY.md):
--   psql -d target -v schema=app -f target.sql
-- :schema is a schema the sink writes (repeat for each). With create_tables the sink creates
-- its tables there; otherwise grant it INSERT, UPDATE, DELETE, TRUNCATE on existing ones.
\set ON_ERROR_STOP on
-- The sink's progress commits in its batch transactions: the state schema is its own.
CREATE SCHEMA cutover AUTHORIZATION cutover_sink;
CREATE SCHEMA IF NOT EXISTS :"schema" AUTHORIZATION cutover_sink;
-- Echo suppression: every sink write carries a replication origin (superuser-only functions
-- unless granted). pg_replication_origin_drop is for `cutover retire`.
GRANT EXECUTE ON FUNCTION
    pg_replication_origin_oid(text),
    pg_replication_origin_create(text),
    pg_replication_origin_session_setup(text),
    pg_replication_origin_session_reset(),
    pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone),
    pg_replication_origin_drop(text)
    TO cutover_sink;
-- verify reads what the sink wrote.
GRANT USAGE ON SCHEMA :"schema" TO cutover_verify;
ALTER DEFAULT PRIVILEGES FOR ROLE cutover_sink IN SCHEMA :"schema"
    GRANT SELECT ON TABLES TO cutover_verify;
