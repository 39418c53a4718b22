//! The phase of each migrated table and the audit trail of every change, kept in the legacy
//! database (schema `cutover`), which every part of the migration can reach.
//!
//! A table is named by its legacy `schema.table`; a table without a row is in `forward`.
//! Phase changes happen in one transaction with their audit row, so the trail can never miss
//! a change. Sinks re-read the phases at every batch, so a change takes effect at the next
//! batch boundary of each direction.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Side;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Forward,
    Dual,
    /// Keys owned by share: the new store owns the keys whose bucket is below the table's
    /// current share (`backsync::owner`), legacy the rest; see [`Step`].
    Split,
    Reverse,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Dual => "dual",
            Phase::Split => "split",
            Phase::Reverse => "reverse",
        }
    }

    pub fn parse(s: &str) -> Result<Phase> {
        match s {
            "forward" => Ok(Phase::Forward),
            "dual" => Ok(Phase::Dual),
            "split" => Ok(Phase::Split),
            "reverse" => Ok(Phase::Reverse),
            other => Err(Error::config(format!(
                "phase {other:?}: must be forward, dual, split or reverse"
            ))),
        }
    }

    /// The side that is the source of truth in this phase (in `split`, of the keys outside
    /// the new store's share: each key has its own owner there).
    pub fn owner(self) -> Side {
        match self {
            Phase::Forward | Phase::Dual | Phase::Split => Side::Legacy,
            Phase::Reverse => Side::New,
        }
    }

    /// Does a sink writing `to` apply changes of a table in this phase?
    pub fn applies_towards(self, to: Side) -> bool {
        matches!(
            (self, to),
            (Phase::Dual | Phase::Split, _)
                | (Phase::Forward, Side::New)
                | (Phase::Reverse, Side::Legacy)
        )
    }

    pub const ALL: [Phase; 4] = [Phase::Forward, Phase::Dual, Phase::Split, Phase::Reverse];
}

/// One share step of a table: from it on, the new store owns the keys whose bucket is below
/// `share_bp`. The step's position on each side (`pg_current_wal_lsn()` when it was taken)
/// is where each direction switches: a change committed before it on its side is judged by
/// the share before it (the hand-over, docs/BACKSYNC.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    pub share_bp: u32,
    pub legacy_lsn: i64,
    pub new_lsn: i64,
}

impl Step {
    /// The step's position on `side`.
    pub fn lsn(&self, side: Side) -> i64 {
        match side {
            Side::Legacy => self.legacy_lsn,
            Side::New => self.new_lsn,
        }
    }
}

/// The new store's share (basis points) for a change committed at `lsn` on `side`: the share
/// of the last step at or before it, 0 before the first.
pub fn share_at(steps: &[Step], side: Side, lsn: i64) -> u32 {
    steps
        .iter()
        .rev()
        .find(|s| s.lsn(side) <= lsn)
        .map_or(0, |s| s.share_bp)
}

/// Leaks recorded in this database's `cutover.conflicts` (kind `leak`), by target table: the
/// writes made on the other side to keys this side owns.
pub async fn leaks(c: &Client) -> Result<BTreeMap<String, i64>> {
    let exists: bool = c
        .query_one("SELECT to_regclass('cutover.conflicts') IS NOT NULL", &[])
        .await
        .map_err(|e| Error::postgres("looking for cutover.conflicts", e))?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    Ok(c.query(
        "SELECT target_table, count(*) FROM cutover.conflicts WHERE kind = 'leak' GROUP BY 1",
        &[],
    )
    .await
    .map_err(|e| Error::postgres("counting leaks", e))?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Every table's share steps, oldest first.
pub async fn steps(client: &Client, pipeline: &str) -> Result<BTreeMap<String, Vec<Step>>> {
    let rows = client
        .query(
            "SELECT table_name, share_bp, legacy_lsn, new_lsn FROM cutover.share_steps
             WHERE pipeline = $1 ORDER BY id",
            &[&pipeline],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.share_steps", e))?;
    let mut out: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(Step {
            share_bp: r.get::<_, i32>(1) as u32,
            legacy_lsn: r.get(2),
            new_lsn: r.get(3),
        });
    }
    Ok(out)
}

/// Every table with a recorded phase (tables not listed are in `forward`).
pub async fn load(client: &Client, pipeline: &str) -> Result<BTreeMap<String, Phase>> {
    let rows = client
        .query(
            "SELECT table_name, phase FROM cutover.table_phases WHERE pipeline = $1",
            &[&pipeline],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.table_phases", e))?;
    rows.iter()
        .map(|r| Ok((r.get::<_, String>(0), Phase::parse(r.get(1))?)))
        .collect()
}

/// Every migrated table with its phase: the forward sink's configured mappings and any table
/// with a recorded phase (a table without a row is in `forward`), sorted.
pub async fn all(client: &Client, cfg: &crate::config::Config) -> Result<Vec<(String, Phase)>> {
    let recorded = load(client, &cfg.name).await?;
    let mut tables: Vec<String> = cfg
        .backsync
        .as_ref()
        .and_then(|b| cfg.sink(&b.forward_sink).ok())
        .map(|s| s.tables.iter().map(|m| m.source.clone()).collect())
        .unwrap_or_default();
    tables.extend(recorded.keys().cloned());
    tables.sort();
    tables.dedup();
    Ok(tables
        .into_iter()
        .map(|t| {
            let p = recorded.get(&t).copied().unwrap_or(Phase::Forward);
            (t, p)
        })
        .collect())
}

/// One audited change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub table: String,
    pub from: Phase,
    pub to: Phase,
    pub changed_by: String,
    pub forced: bool,
    pub reason: Option<String>,
    /// What the gate saw: lag, counts, checksums, the verdict of each check.
    pub checks: serde_json::Value,
    /// A share step recorded with the change (into, within or out of `split`).
    pub step: Option<Step>,
}

/// Set the phase of a table and record the change, atomically. Fails with `Conflict` if the
/// table is no longer in `change.from` (someone else changed it meanwhile).
pub async fn record(client: &mut Client, pipeline: &str, change: &Change) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres("BEGIN", e))?;
    let current: Option<String> = tx
        .query_opt(
            "SELECT phase FROM cutover.table_phases WHERE pipeline = $1 AND table_name = $2 FOR UPDATE",
            &[&pipeline, &change.table],
        )
        .await
        .map_err(|e| Error::postgres("locking the table's phase", e))?
        .map(|r| r.get(0));
    let current = current
        .as_deref()
        .map(Phase::parse)
        .transpose()?
        .unwrap_or(Phase::Forward);
    if current != change.from || (current == change.to && change.step.is_none()) {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} moved to {} while the checks ran; nothing changed",
                change.table,
                current.as_str()
            ),
        ));
    }
    tx.execute(
        "INSERT INTO cutover.table_phases (pipeline, table_name, phase) VALUES ($1, $2, $3)
         ON CONFLICT (pipeline, table_name) DO UPDATE SET phase = EXCLUDED.phase, changed_at = now()",
        &[&pipeline, &change.table, &change.to.as_str()],
    )
    .await
    .map_err(|e| Error::postgres("writing cutover.table_phases", e))?;
    tx.execute(
        "INSERT INTO cutover.phase_audit
           (pipeline, table_name, from_phase, to_phase, changed_by, forced, reason, checks)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb)",
        &[
            &pipeline,
            &change.table,
            &change.from.as_str(),
            &change.to.as_str(),
            &change.changed_by,
            &change.forced,
            &change.reason,
            &change.checks.to_string(),
        ],
    )
    .await
    .map_err(|e| Error::postgres("writing cutover.phase_audit", e))?;
    if let Some(step) = change.step {
        tx.execute(
            "INSERT INTO cutover.share_steps (pipeline, table_name, share_bp, legacy_lsn, new_lsn, stepped_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &pipeline,
                &change.table,
                &(step.share_bp as i32),
                &step.legacy_lsn,
                &step.new_lsn,
                &change.changed_by,
            ],
        )
        .await
        .map_err(|e| Error::postgres("writing cutover.share_steps", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("COMMIT of the phase change", e))
}

/// One row of the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub table: String,
    pub from: String,
    pub to: String,
    pub changed_at: String,
    pub changed_by: String,
    pub forced: bool,
    pub reason: Option<String>,
    pub checks: serde_json::Value,
}

pub async fn history(
    client: &Client,
    pipeline: &str,
    table: Option<&str>,
) -> Result<Vec<AuditEntry>> {
    let rows = client
        .query(
            "SELECT id, table_name, from_phase, to_phase,
                    to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"'),
                    changed_by, forced, reason, checks::text
             FROM cutover.phase_audit
             WHERE pipeline = $1 AND ($2::text IS NULL OR table_name = $2)
             ORDER BY id",
            &[&pipeline, &table],
        )
        .await
        .map_err(|e| Error::postgres("reading cutover.phase_audit", e))?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            table: r.get(1),
            from: r.get(2),
            to: r.get(3),
            changed_at: r.get(4),
            changed_by: r.get(5),
            forced: r.get(6),
            reason: r.get(7),
            checks: serde_json::from_str(r.get::<_, &str>(8)).unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_directions_per_phase() {
        assert_eq!(Phase::Forward.owner(), Side::Legacy);
        assert_eq!(Phase::Dual.owner(), Side::Legacy);
        assert_eq!(Phase::Reverse.owner(), Side::New);
        assert!(Phase::Forward.applies_towards(Side::New));
        assert!(!Phase::Forward.applies_towards(Side::Legacy));
        assert!(
            Phase::Dual.applies_towards(Side::New) && Phase::Dual.applies_towards(Side::Legacy)
        );
        assert!(Phase::Reverse.applies_towards(Side::Legacy));
        assert!(!Phase::Reverse.applies_towards(Side::New));
        assert!(Phase::parse("sideways")
            .unwrap_err()
            .to_string()
            .contains("forward, dual, split or reverse"));
        assert!(
            Phase::Split.applies_towards(Side::New) && Phase::Split.applies_towards(Side::Legacy)
        );
        assert_eq!(Phase::parse("split").unwrap(), Phase::Split);
    }

    #[test]
    fn a_change_is_judged_by_the_share_in_force_at_its_own_sides_position() {
        let steps = [
            Step {
                share_bp: 1000,
                legacy_lsn: 100,
                new_lsn: 5000,
            },
            Step {
                share_bp: 5000,
                legacy_lsn: 200,
                new_lsn: 6000,
            },
        ];
        // Before the first step: forward (0 %).
        assert_eq!(share_at(&steps, Side::Legacy, 99), 0);
        assert_eq!(share_at(&steps, Side::Legacy, 100), 1000);
        assert_eq!(share_at(&steps, Side::Legacy, 199), 1000);
        assert_eq!(share_at(&steps, Side::Legacy, 10_000), 5000);
        // The other side's positions are its own.
        assert_eq!(share_at(&steps, Side::New, 150), 0);
        assert_eq!(share_at(&steps, Side::New, 5999), 1000);
        assert_eq!(share_at(&steps, Side::New, 6000), 5000);
        assert_eq!(share_at(&[], Side::New, 6000), 0);
    }
}
