-- A back-sync, on the new store's database, as a superuser, after target.sql
-- (docs/SECURITY.md):
--   psql -d newapp -v schema=app -v publication=cutover_back -f backsync-new.sql
-- The back-sync's capture connects as cutover_capture (backsync.url).
\set ON_ERROR_STOP on
CREATE PUBLICATION :"publication" FOR TABLES IN SCHEMA :"schema";
-- cutover.backfill of the reverse pipeline lives in the new store's cutover schema.
GRANT USAGE, CREATE ON SCHEMA cutover TO cutover_capture;
GRANT USAGE ON SCHEMA :"schema" TO cutover_capture;
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO cutover_capture;
ALTER DEFAULT PRIVILEGES FOR ROLE cutover_sink IN SCHEMA :"schema"
    GRANT SELECT ON TABLES TO cutover_capture;
