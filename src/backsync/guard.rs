//! The back-sync roles as a sink's write guard (`apply::guard::WriteGuard`): the phase of each
//! table decides whether an event crosses in this direction, and in `dual` every keyed write
//! is settled against the target row by the conflict policy before it is written.
//!
//! ```text
//!   begin(tx)   re-read cutover.table_phases (legacy): a phase change applies at the next batch
//!   admit       a table with share steps (split, or a change committed before its last step):
//!               the key's owner at the change's own-side position → Apply, or Leak;
//!               else phase.applies_towards(writes)?  no → Skip;  dual → Settle;  else Apply
//!   leak        record (cutover.conflicts, kind leak) and plan the restore of the
//!               owner's version on the leaking side: owner row present → no-op UPDATE of it
//!               outside cutover's origins (the other direction carries it back); absent →
//!               DELETE on the leaking side under the verify origin (never captured)
//!   after_commit  count the batch's leaks and carry out the planned restores (other sessions:
//!               never under the batch's row locks, never for a batch that rolled back; a
//!               retried batch counts its leaks once)
//!   settle      conflict::compare (row locked FOR UPDATE) → conflict::resolve → conflict::record
//!   finish      last-writer-wins: remember each written version's origin commit time
//! ```

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio_postgres::Client;

use super::conflict::{self, Incoming};
use super::owner;
use super::Role;
use crate::apply::decode::ChangeEvent;
use crate::apply::guard::{Admission, Contested, Leaked, Verdict, WriteGuard};
use crate::apply::mapping::Mapping;
use crate::config::ConflictPolicy;
use crate::database::catalog::TargetTable;
use crate::database::ident::{qualified, quote};
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
    /// Share steps of the tables that were ever split (`state::phases::Step`).
    steps: BTreeMap<String, Vec<phase::Step>>,
    versions: Vec<Version>,
    /// Leak resolutions planned by this batch, carried out after its COMMIT.
    restores: Vec<Restore>,
    /// The batch's leaks (table, leaking side), counted after its COMMIT.
    leaked: Vec<(String, &'static str)>,
}

/// How a leak is resolved once its batch committed: the owner's version restored on the
/// leaking side.
enum Restore {
    /// An untagged no-op update of the owner's row (`table`, `key`) in this sink's target:
    /// the other direction carries the owner's version back.
    Reemit {
        table: TableId,
        key: Vec<(String, Option<String>)>,
    },
    /// The owner has no such row: delete the leaked one on the incoming side under the
    /// verify origin (never captured).
    Delete {
        table: TableId,
        key: Vec<(String, Option<String>)>,
    },
}

impl RoleGuard {
    pub fn new(role: Role, pipeline: &str) -> RoleGuard {
        RoleGuard {
            role,
            pipeline: pipeline.to_string(),
            control: None,
            phases: BTreeMap::new(),
            steps: BTreeMap::new(),
            versions: Vec::new(),
            restores: Vec::new(),
            leaked: Vec::new(),
        }
    }

    /// Admission by key for a table with share steps: in `split`, or for a change committed
    /// before the table's last step on its side (the hand-over). `None`: phase rules apply.
    fn by_key(&self, table: &str, phase: Phase, ev: &ChangeEvent) -> Option<Admission> {
        let steps = self.steps.get(table)?;
        let incoming = self.role.incoming();
        let last = steps.last()?;
        if phase != Phase::Split && ev.commit_lsn >= last.lsn(incoming) {
            return None;
        }
        let share = phase::share_at(steps, incoming, ev.commit_lsn);
        let key: Vec<String> = ev
            .key_values()?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
        let owner = match owner::owner(share, &key) {
            owner::Owner::New => Side::New,
            owner::Owner::Legacy => Side::Legacy,
        };
        Some(if owner == incoming {
            Admission::Apply
        } else {
            Admission::Leak
        })
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
        self.restores.clear();
        self.leaked.clear();
        let pipeline = self.pipeline.clone();
        let control = self.control().await?;
        let client = control.unwrap_or(tx);
        let phases = phase::load(client, &pipeline).await?;
        let steps = phase::steps(client, &pipeline).await?;
        (self.phases, self.steps) = (phases, steps);
        Ok(())
    }

    fn admit(&self, event: &ChangeEvent, mapping: &Mapping) -> Admission {
        let source = &event.table;
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
        if let Some(a) = self.by_key(&legacy_table, phase, event) {
            return a;
        }
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

    async fn leak(&mut self, tx: &Client, l: &Leaked<'_>) -> Result<()> {
        let from = self.role.incoming();
        let table = qualified(l.table);
        let (cond, params) = key_condition(l.key.iter().map(|(k, v)| (k.as_str(), v)));
        let local: Option<String> = tx
            .query_opt(
                &format!("SELECT to_jsonb(t)::text FROM {table} t WHERE {cond}"),
                &params,
            )
            .await
            .map_err(|e| Error::postgres(format!("reading the owner's row of {table}"), e))?
            .map(|r| r.get(0));
        let key_json: serde_json::Map<String, serde_json::Value> = l
            .key
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let incoming_row = l.row.map(|r| serde_json::to_string(r).unwrap_or_default());
        let ev = l.event;
        tx.execute(
            "INSERT INTO cutover.conflicts (sink, target_table, row_key, kind, policy, winner,
                 local_row, incoming_row, incoming_commit_ts, incoming_from, incoming_commit_lsn,
                 incoming_seq)
             VALUES ($1, $2, $3::text::jsonb, 'leak', 'owner_restores', $4, $5::text::jsonb,
                 $6::text::jsonb, to_timestamp($7::float8 / 1e6), $8, $9, $10)",
            &[
                &l.sink,
                &l.table.to_string(),
                &serde_json::Value::Object(key_json).to_string(),
                &self.role.writes.as_str(),
                &local,
                &incoming_row,
                &(ev.commit_ts_us as f64),
                &from.as_str(),
                &ev.commit_lsn,
                &ev.seq,
            ],
        )
        .await
        .map_err(|e| Error::postgres("recording a leak in cutover.conflicts", e))?;
        self.leaked.push((ev.table.to_string(), from.as_str()));
        tracing::warn!(sink = %l.sink, table = %ev.table, leaked_on = from.as_str(), owner_has_row = local.is_some(), "leak: a write on the side that does not own the key; restoring the owner's version");
        self.restores.push(if local.is_some() {
            Restore::Reemit {
                table: l.table.clone(),
                key: l.key.to_vec(),
            }
        } else {
            Restore::Delete {
                table: ev.table.clone(),
                key: ev
                    .key_columns
                    .iter()
                    .cloned()
                    .zip(ev.key_values().unwrap_or_default())
                    .collect(),
            }
        });
        Ok(())
    }

    async fn after_commit(&mut self) -> Result<()> {
        for (table, side) in std::mem::take(&mut self.leaked) {
            crate::observe::names::phase_leak(&table, side);
        }
        for r in std::mem::take(&mut self.restores) {
            match r {
                Restore::Reemit { table, key } => {
                    let (cond, params) = key_condition(key.iter().map(|(k, v)| (k.as_str(), v)));
                    let first = quote(&key[0].0);
                    let t = qualified(&table);
                    let c = self.role.target.connect().await?;
                    c.execute(
                        &format!("UPDATE {t} t SET {first} = t.{first} WHERE {cond}"),
                        &params,
                    )
                    .await
                    .map_err(|e| {
                        Error::postgres(format!("re-emitting the owner's row of {t}"), e)
                    })?;
                }
                Restore::Delete { table, key } => {
                    let (cond, params) = key_condition(key.iter().map(|(k, v)| (k.as_str(), v)));
                    let c = self.role.incoming_side.connect().await?;
                    crate::database::origin::bind(
                        &c,
                        &self.pipeline,
                        crate::database::origin::VERIFY_WRITER,
                        None,
                    )
                    .await?;
                    c.execute(
                        &format!("DELETE FROM {} t WHERE {cond}", qualified(&table)),
                        &params,
                    )
                    .await
                    .map_err(|e| Error::postgres(format!("deleting a leaked row of {table}"), e))?;
                }
            }
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

/// `t."k1"::text = $1 AND …` over key columns and their text values, with the parameters.
fn key_condition<'a>(
    key: impl Iterator<Item = (&'a str, &'a Option<String>)>,
) -> (String, Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>) {
    let mut conds = Vec::new();
    let mut params: Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    for (i, (k, v)) in key.enumerate() {
        conds.push(format!("t.{}::text = ${}", quote(k), i + 1));
        params.push(v);
    }
    (conds.join(" AND "), params)
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
