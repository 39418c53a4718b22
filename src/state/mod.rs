//! The `cutover.*` state tables: every one of them, its DDL, and where it lives. This module
//! is their one owner; the SQL that reads and writes a sink's progress is in [`progress`],
//! the phases and their audit trail in [`phases`], backfill requests and progress in
//! [`backfill`]; the conflict rows are written by
//! `backsync::conflict` (their shape is the conflict record's) through the tables defined here.
//!
//! ```text
//!   database        table                    written by                 invariant
//!   each target     cutover.sink_progress    a sink, in its batch tx    progress commits with the data (3)
//!                   cutover.sink_truncates   a sink, in its batch tx    a truncate is applied once
//!                   cutover.replay_audit     cutover replay             who rewound what, when
//!                   cutover.conflicts        a back-sync role (dual)    every conflict, both versions
//!                   cutover.row_versions     a back-sync role (lww)     last-writer-wins commit times
//!   legacy          cutover.table_phases     cutover phase set          one owner per table and phase
//!                   cutover.phase_audit      cutover phase set          every change, gated or forced
//!                   cutover.share_steps      cutover phase set (split)  each share step and its LSN on
//!                                                                       both sides (the hand-over)
//!   legacy          cutover.backfill         cutover backfill, capture  chunk progress survives restarts
//!   legacy          cutover.capture_slots    capture                    a lost slot is never silent
//!                   cutover.capture_gaps     capture --accept-gap       every accepted loss, audited
//!   each target     cutover.discrepancies    cutover reconcile          one open row per (key, kind)
//!                   cutover.reconcile_passes cutover reconcile          every table pass, and where a
//!                                                                       pass stopped (resume point)
//!                   cutover.repair_audit     reconcile (repair=auto)    every repair, row by row
//!   legacy, targets cutover.key_bucket(), cutover.owner()  (functions)  the ownership function,
//!                                                                       identical to backsync::owner
//! ```
//!
//! All DDL is idempotent (`IF NOT EXISTS`) and runs at start-up of whoever needs the tables.

pub mod backfill;
pub mod phases;
pub mod progress;
pub mod slots;

use tokio_postgres::Client;

/// The schema of cutover's own tables: no change event may write into it (a sink
/// dead-letters one that names it, whatever its topic).
pub const SCHEMA: &str = "cutover";

use crate::database::serialized_ddl;
use crate::error::Result;

/// The schema, created only when it is missing: `CREATE SCHEMA IF NOT EXISTS` checks the
/// database's CREATE privilege even when the schema exists, so a least-privilege role that
/// owns a schema a DBA created (docs/SECURITY.md) could not start with it.
pub const SCHEMA_DDL: &str = "
SET client_min_messages = warning;
DO $$ BEGIN
    IF to_regnamespace('cutover') IS NULL THEN CREATE SCHEMA cutover; END IF;
END $$;
";

/// A target store's tables (every sink creates them at start).
pub const TARGET_DDL: &str = "
CREATE TABLE IF NOT EXISTS cutover.sink_progress (
    sink text NOT NULL,
    topic text NOT NULL,
    kafka_partition int NOT NULL,
    next_offset bigint NOT NULL,
    commit_lsn bigint NOT NULL,
    seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, kafka_partition)
);
CREATE TABLE IF NOT EXISTS cutover.sink_truncates (
    sink text NOT NULL,
    source_table text NOT NULL,
    commit_lsn bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (sink, source_table)
);
CREATE TABLE IF NOT EXISTS cutover.conflicts (
    id bigserial PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT now(),
    sink text NOT NULL,
    target_table text NOT NULL,
    row_key jsonb NOT NULL,
    kind text NOT NULL,
    policy text NOT NULL,
    winner text NOT NULL,
    local_row jsonb,
    local_commit_ts timestamptz,
    incoming_row jsonb,
    incoming_commit_ts timestamptz NOT NULL,
    incoming_from text NOT NULL,
    incoming_commit_lsn bigint NOT NULL,
    incoming_seq bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS cutover.row_versions (
    target_table text NOT NULL,
    row_key text NOT NULL,
    ts_us bigint NOT NULL,
    side text NOT NULL,
    row_xmin text NOT NULL,
    PRIMARY KEY (target_table, row_key)
);
CREATE TABLE IF NOT EXISTS cutover.replay_audit (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    sink text NOT NULL,
    requested_by text NOT NULL,
    spec text NOT NULL,
    topics text[] NOT NULL,
    events bigint NOT NULL
);";

/// The phase tables, in legacy (the control database of a back-sync).
pub const CONTROL_DDL: &str = "
CREATE TABLE IF NOT EXISTS cutover.table_phases (
    pipeline text NOT NULL,
    table_name text NOT NULL,
    phase text NOT NULL CONSTRAINT table_phases_phase_check
        CHECK (phase IN ('forward', 'dual', 'split', 'reverse')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, table_name)
);
DO $m$ BEGIN
    -- Installs from before the split phase: widen the check once (by the table's owner).
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'table_phases_phase_check'
               AND conrelid = 'cutover.table_phases'::regclass
               AND pg_get_constraintdef(oid) NOT LIKE '%split%') THEN
        ALTER TABLE cutover.table_phases DROP CONSTRAINT table_phases_phase_check,
            ADD CONSTRAINT table_phases_phase_check
            CHECK (phase IN ('forward', 'dual', 'split', 'reverse'));
    END IF;
END $m$;
CREATE TABLE IF NOT EXISTS cutover.share_steps (
    id bigserial PRIMARY KEY,
    pipeline text NOT NULL,
    table_name text NOT NULL,
    share_bp int NOT NULL CHECK (share_bp BETWEEN 0 AND 10000),
    legacy_lsn bigint NOT NULL,
    new_lsn bigint NOT NULL,
    stepped_at timestamptz NOT NULL DEFAULT now(),
    stepped_by text NOT NULL
);
CREATE TABLE IF NOT EXISTS cutover.phase_audit (
    id bigserial PRIMARY KEY,
    pipeline text NOT NULL,
    table_name text NOT NULL,
    from_phase text NOT NULL,
    to_phase text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text NOT NULL,
    forced boolean NOT NULL,
    reason text,
    checks jsonb NOT NULL
);";

/// Backfill progress, in the source database.
pub const BACKFILL_DDL: &str = "
CREATE TABLE IF NOT EXISTS cutover.backfill (
    pipeline text NOT NULL,
    table_name text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    last_key text[],
    rows_done bigint NOT NULL DEFAULT 0,
    rows_estimated bigint NOT NULL DEFAULT 0,
    chunks_done bigint NOT NULL DEFAULT 0,
    chunk_rows int NOT NULL,
    rows_per_sec int NOT NULL DEFAULT 0,
    error text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, table_name)
);";

/// The ownership function (`backsync::owner`) in SQL, on legacy and on every target, so a
/// bridge, a trigger or an operator computes a key's owner where the data is. Created only
/// when missing (its definition is fixed: changing it would move keys between owners), so
/// sinks of different roles on one database never fight over the functions' ownership.
pub const OWNERSHIP_DDL: &str = "
DO $ddl$ BEGIN
    IF to_regprocedure('cutover.key_text(text[])') IS NULL THEN
        CREATE FUNCTION cutover.key_text(VARIADIC parts text[]) RETURNS text
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $f$ SELECT string_agg(octet_length(p)::text || ':' || p, '' ORDER BY i)
                   FROM unnest(parts) WITH ORDINALITY AS u(p, i) $f$;
    END IF;
    IF to_regprocedure('cutover.key_bucket(text[])') IS NULL THEN
        CREATE FUNCTION cutover.key_bucket(VARIADIC parts text[]) RETURNS int
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $f$ SELECT (('x' || substr(md5(cutover.key_text(VARIADIC parts)), 1, 8))::bit(32)::bigint
                           % 10000)::int $f$;
    END IF;
    IF to_regprocedure('cutover.owner(numeric,text[])') IS NULL THEN
        CREATE FUNCTION cutover.owner(new_share numeric, VARIADIC parts text[]) RETURNS text
            LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
            AS $f$ SELECT CASE WHEN cutover.key_bucket(VARIADIC parts)
                                    < round(least(greatest(new_share, 0), 100) * 100)
                               THEN 'new' ELSE 'legacy' END $f$;
    END IF;
END $ddl$;";

/// Install the ownership functions in `client`'s database (idempotent).
pub async fn ensure_ownership(client: &Client) -> Result<()> {
    ensure(
        client,
        OWNERSHIP_DDL,
        "cutover.key_text, cutover.key_bucket and cutover.owner",
    )
    .await
}

/// Run one group of state DDL after [`SCHEMA_DDL`], under the DDL lock.
async fn ensure(client: &Client, ddl: &str, what: &str) -> Result<()> {
    serialized_ddl(client, &format!("{SCHEMA_DDL}{ddl}"), what).await
}

/// Create a target store's state tables and the ownership functions (idempotent).
pub async fn ensure_target(client: &Client) -> Result<()> {
    ensure(
        client,
        &format!("{TARGET_DDL}{OWNERSHIP_DDL}"),
        "schema cutover, its progress tables and the ownership functions",
    )
    .await
}

/// Create the phase tables and the ownership functions in legacy (idempotent).
pub async fn ensure_control(client: &Client) -> Result<()> {
    ensure(
        client,
        &format!("{CONTROL_DDL}{OWNERSHIP_DDL}"),
        "cutover.table_phases, cutover.phase_audit and the ownership functions",
    )
    .await
}

/// What capture remembers of its slots, and the gaps it was told to accept, in the source.
pub const SLOTS_DDL: &str = "
CREATE TABLE IF NOT EXISTS cutover.capture_slots (
    pipeline text NOT NULL,
    slot text NOT NULL,
    created_lsn bigint NOT NULL,
    confirmed_lsn bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, slot)
);
CREATE TABLE IF NOT EXISTS cutover.capture_gaps (
    id bigserial PRIMARY KEY,
    pipeline text NOT NULL,
    slot text NOT NULL,
    reason text NOT NULL,
    lost_after_lsn bigint NOT NULL,
    resumed_at_lsn bigint NOT NULL,
    accepted_by text NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);";

/// Reconcile's ledger, pass history and repair audit, in each reconciled target.
pub const RECONCILE_DDL: &str = "
CREATE TABLE IF NOT EXISTS cutover.discrepancies (
    id bigserial PRIMARY KEY,
    sink text NOT NULL,
    source_table text NOT NULL,
    row_key jsonb NOT NULL,
    kind text NOT NULL CHECK (kind IN ('missing', 'extra', 'different')),
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution text
);
CREATE UNIQUE INDEX IF NOT EXISTS discrepancies_open
    ON cutover.discrepancies (sink, source_table, row_key, kind) WHERE resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS cutover.reconcile_passes (
    sink text NOT NULL,
    source_table text NOT NULL,
    started_at timestamptz NOT NULL,
    completed_at timestamptz,
    resume_key jsonb,
    source_rows bigint NOT NULL DEFAULT 0,
    target_rows bigint NOT NULL DEFAULT 0,
    chunks bigint NOT NULL DEFAULT 0,
    differences bigint,
    parity double precision,
    seconds double precision,
    PRIMARY KEY (sink, source_table, started_at)
);
CREATE TABLE IF NOT EXISTS cutover.repair_audit (
    id bigserial PRIMARY KEY,
    repaired_at timestamptz NOT NULL DEFAULT now(),
    pipeline text NOT NULL,
    sink text NOT NULL,
    source_table text NOT NULL,
    row_key jsonb NOT NULL,
    kind text NOT NULL,
    action text NOT NULL,
    repaired_by text NOT NULL
);";

/// Create reconcile's tables in a target (idempotent).
pub async fn ensure_reconcile(client: &Client) -> Result<()> {
    ensure(
        client,
        RECONCILE_DDL,
        "cutover.discrepancies, cutover.reconcile_passes and cutover.repair_audit",
    )
    .await
}

/// Create capture's slot memory in the source (idempotent).
pub async fn ensure_slots(client: &Client) -> Result<()> {
    ensure(
        client,
        SLOTS_DDL,
        "cutover.capture_slots and cutover.capture_gaps",
    )
    .await
}

/// Create the backfill table in the source (idempotent).
pub async fn ensure_backfill(client: &Client) -> Result<()> {
    ensure(client, BACKFILL_DDL, "cutover.backfill").await
}
