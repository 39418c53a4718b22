-- cutover's least-privilege roles (docs/SECURITY.md). Roles are cluster-wide: run this once
-- per PostgreSQL cluster, as a superuser, then legacy.sql in the legacy database and
-- target.sql in each target database. None of these roles is a superuser.
--   psql -v capture_password=... -v sink_password=... -v verify_password=... \
--        -v monitor_password=... -f roles.sql
\set ON_ERROR_STOP on
-- capture: the replication slot and stream (REPLICATION), reads captured tables (backfill).
CREATE ROLE cutover_capture LOGIN REPLICATION PASSWORD :'capture_password';
-- each sink (and the back-sync's sink, on legacy): writes its target tables and progress,
-- tags its writes with a replication origin. Give each sink a role of its own if you like.
CREATE ROLE cutover_sink LOGIN PASSWORD :'sink_password';
-- verify (read-only; verify --repair runs as the sink's role).
CREATE ROLE cutover_verify LOGIN PASSWORD :'verify_password';
-- the monitor and `cutover status`: the slot's position only (pg_replication_slots is
-- readable by every role).
CREATE ROLE cutover_monitor LOGIN PASSWORD :'monitor_password';
