//! The back-sync roles as a sink's write guard (`apply::guard::WriteGuard`): the phase of each
//! table decides whether an event crosses in this direction, and in `dual` every keyed write
//! is settled against the target row by the conflict policy before it is written.
//!
//! ```text
//!   begin(tx)   re-read cutover.table_phases (legacy): a phase change applies at the next batch
//!   admit       phase.applies_towards(writes)?  no → Skip;  dual → Settle;  else Apply
//!   settle      conflict::compare (row locked FOR UPDATE) → conflict::resolve → conflict::record
//!   finish      last-writer-wins: remember each written version's origin commit time
//! ```

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::conflict::{self, Incoming};
use super::Role;
use crate::apply::guard::{Admission, Contested, Verdict, WriteGuard};
use crate::apply::mapping::Mapping;
use crate::config::ConflictPolicy;
use crate::database::catalog::TargetTable;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Side;
use crate::event::TableId;
use crate::state::phases::{self as phase, Phase};

/// A version written under last-writer-wins, remembered at `finish`.
struct Version {
    table: TargetTable,
    key: Vec<(String, Option<String>)>,
    ts_us: i64,
    deleted: bool,
}

/// The write guard of a sink with a back-sync role.
pub struct RoleGuard {
    role: Role,
    pipeline: String,
    /// Connection to legacy's phase table (the forward role; the reverse role writes legacy
    /// and reads the phases inside its own transaction).
    control: Option<Client>,
    phases: BTreeMap<String, Phase>,
    versions: Vec<Version>,
}

impl RoleGuard {
    pub fn new(role: Role, pipeline: &str) -> RoleGuard {
        RoleGuard {
            role,
            pipeline: pipeline.to_string(),
            control: None,
            phases: BTreeMap::new(),
            versions: Vec::new(),
        }
    }

    /// The forward role's connection to legacy, (re)opened when closed.
    async fn control(&mut self) -> Result<Option<&Client>> {
        if self.role.writes == Side::Legacy {
            return Ok(None);
        }
        if self.control.as_ref().is_none_or(|c| c.is_closed()) {
            self.control = Some(self.role.control.connect().await?);
        }
        Ok(self.control.as_ref())
    }
}

#[async_trait]
impl WriteGuard for RoleGuard {
    async fn start(&mut self, target: &Client) -> Result<()> {
        if self.role.policy == ConflictPolicy::LastWriterWins {
            require_commit_timestamps(target, &self.role.target_field).await?;
        }
        let control = self.control().await?;
        crate::state::ensure_control(control.unwrap_or(target)).await
    }

    async fn begin(&mut self, tx: &Client) -> Result<()> {
        self.versions.clear();
        let pipeline = self.pipeline.clone();
        let control = self.control().await?;
        self.phases = phase::load(control.unwrap_or(tx), &pipeline).await?;
        Ok(())
    }

    fn admit(&self, source: &TableId, mapping: &Mapping) -> Admission {
        // Phases are named by the legacy table: the source of the forward role, the (first)
        // target of the reverse one.
        let legacy_table = match self.role.writes {
            Side::New => source.to_string(),
            Side::Legacy => mapping
                .targets()
                .first()
                .map(|t| t.to_string())
                .unwrap_or_default(),
        };
        let phase = self
            .phases
            .get(&legacy_table)
            .copied()
            .unwrap_or(Phase::Forward);
        if !phase.applies_towards(self.role.writes) {
            Admission::Skip
        } else if phase == Phase::Dual {
            Admission::Settle
        } else {
            Admission::Apply
        }
    }

    async fn settle(&mut self, tx: &Client, w: &Contested<'_>) -> Result<Verdict> {
        let (incoming, image) = match w.row {
            Some(cols) => (
                Incoming::Upsert {
                    has_before: w.before.is_some(),
                },
                Some(w.before.unwrap_or(cols)),
            ),
            None => (Incoming::Delete, w.before),
        };
        let policy = self.role.policy;
        let lww = policy == ConflictPolicy::LastWriterWins;
        let (local, local_row) = conflict::compare(tx, w.table, w.key, image, lww).await?;
        let from = self.role.incoming();
        let r = conflict::resolve(
            policy,
            from,
            Phase::Dual.owner(),
            incoming,
            w.commit_ts_us,
            &local,
        );
        if let Some(kind) = r.conflict {
            let local_commit_ts_us = match local {
                conflict::Local::Differs { commit_ts_us, .. } => commit_ts_us,
                _ => None,
            };
            tracing::info!(sink = %w.sink, table = %w.table.id, kind = kind.as_str(), policy = policy.as_str(), incoming_won = r.apply, "conflict resolved");
            conflict::record(
                tx,
                &conflict::Record {
                    sink: w.sink,
                    table: w.table,
                    key: w.key,
                    kind,
                    policy,
                    incoming_won: r.apply,
                    local_row,
                    local_commit_ts_us,
                    incoming_row: w.row,
                    incoming_commit_ts_us: w.commit_ts_us,
                    incoming_from: from,
                    incoming_commit_lsn: w.commit_lsn,
                    incoming_seq: w.seq,
                },
            )
            .await?;
        }
        if r.apply && lww {
            self.versions.push(Version {
                table: w.table.clone(),
                key: w.key.to_vec(),
                ts_us: w.commit_ts_us,
                deleted: w.row.is_none(),
            });
        }
        Ok(Verdict {
            apply: r.apply,
            conflict: r.conflict.map(|_| r.apply),
        })
    }

    async fn finish(&mut self, tx: &Client) -> Result<()> {
        let side = self.role.incoming();
        for v in std::mem::take(&mut self.versions) {
            conflict::remember(tx, &v.table, &v.key, v.ts_us, side, v.deleted).await?;
        }
        Ok(())
    }

    fn policy(&self) -> Option<&'static str> {
        Some(self.role.policy.as_str())
    }

    fn writes(&self) -> Option<&'static str> {
        Some(self.role.writes.as_str())
    }
}

/// Last-writer-wins compares commit timestamps, which PostgreSQL keeps only with
/// `track_commit_timestamp = on`.
async fn require_commit_timestamps(client: &Client, field: &str) -> Result<()> {
    let on = crate::database::setting(client, "track_commit_timestamp").await?;
    if on != "on" {
        return Err(Error::new(
            ErrorKind::Environment,
            format!("{field}: backsync.conflict_policy = \"last_writer_wins\" needs track_commit_timestamp = on in this database's server (postgresql.conf; needs a restart)"),
        ));
    }
    Ok(())
}
