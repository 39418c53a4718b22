-- cutover on the legacy (captured) database, as a superuser (docs/SECURITY.md):
--   psql -d legacy -v schema=app -v publication=cutover -v app_owner=app -f legacy.sql
-- :schema is one captured schema (repeat the GRANTs for each), :app_owner the role that
-- creates the application's tables (for the default privileges of tables created later).
\set ON_ERROR_STOP on
-- FOR TABLES IN SCHEMA needs a superuser (PostgreSQL 15): create the publication here,
-- exactly as source.schemas / source.tables say, and capture finds it and changes nothing.
CREATE PUBLICATION :"publication" FOR TABLES IN SCHEMA :"schema";
-- cutover's state on legacy (backfill progress; the phase tables of a back-sync), owned by
-- capture, which creates its tables on first start. Writers of the phase tables
-- (`cutover phase set`, the back-sync's sink) get CREATE on it.
CREATE SCHEMA cutover AUTHORIZATION cutover_capture;
GRANT USAGE, CREATE ON SCHEMA cutover TO cutover_sink;
-- capture reads the captured tables (backfill chunks), verify compares them.
GRANT USAGE ON SCHEMA :"schema" TO cutover_capture, cutover_verify;
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO cutover_capture, cutover_verify;
ALTER DEFAULT PRIVILEGES FOR ROLE :"app_owner" IN SCHEMA :"schema"
    GRANT SELECT ON TABLES TO cutover_capture, cutover_verify;
