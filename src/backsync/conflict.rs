//! Conflicts in the `dual` phase: both sides changed the same row before either saw the other's
//! change.
//!
//! Detection compares an incoming change's **before-image** (what the row looked like on the
//! side it comes from, mapped to this side's shape) with the target's current row: equal means
//! the change was made on top of the state this side has, so it applies; different means this
//! side changed the row meanwhile — a conflict. Before-images of updates and deletes need
//! `REPLICA IDENTITY FULL` on both sides' tables (the gate into `dual` checks it); an insert
//! conflicts when a different row with its key already exists.
//!
//! Resolution is a pure function ([`resolve`]) applied identically by both directions, which is
//! what makes the two sides converge:
//!
//! | policy             | update/insert vs local change          | delete vs local change | update vs local delete |
//! |--------------------|----------------------------------------|------------------------|------------------------|
//! | `source_of_truth`  | the phase's owner wins                 | the owner wins         | the owner wins         |
//! | `last_writer_wins` | later commit time wins, ties to legacy | the delete wins        | the delete wins        |
//!
//! Every conflict is written to the target's `cutover.conflicts` (both versions, commit times,
//! the policy and the winner) in the transaction that resolves it.

use std::collections::BTreeMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::config::ConflictPolicy;
use crate::database::catalog::TargetTable;
use crate::database::ident::{qualified, quote};
use crate::error::{Error, Result};
use crate::event::Side;

/// The incoming change, as far as resolution cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Upsert { has_before: bool },
    Delete,
}

/// The target's row compared with the incoming change's before-image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Missing,
    /// Equal to the before-image (or, for an insert, to the new row).
    Same,
    /// Changed since the incoming change's base. `commit_ts_us` is when the current version
    /// was committed at its origin, when known; `written_by` is the side it came from when
    /// cutover wrote it (`None`: an application on this side wrote it).
    Differs {
        commit_ts_us: Option<i64>,
        written_by: Option<Side>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InsertExists,
    UpdateDiffers,
    UpdateMissing,
    DeleteDiffers,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InsertExists => "insert_exists",
            Kind::UpdateDiffers => "update_differs",
            Kind::UpdateMissing => "update_missing",
            Kind::DeleteDiffers => "delete_differs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// Apply the incoming change?
    pub apply: bool,
    pub conflict: Option<Kind>,
}

fn rank(s: Side) -> u8 {
    // Ties go to legacy.
    match s {
        Side::Legacy => 1,
        Side::New => 0,
    }
}

/// Decide one incoming change. `from` is the side it comes from, `owner` the phase's source of
/// truth. Deterministic: the other direction, seeing the mirror-image situation, decides the
/// opposite way, so both sides end with the same row.
pub fn resolve(
    policy: ConflictPolicy,
    from: Side,
    owner: Side,
    incoming: Incoming,
    incoming_ts_us: i64,
    local: &Local,
) -> Resolution {
    let owner_wins = from == owner;
    let (kind, lww) = match (incoming, local) {
        (_, Local::Same) => {
            return Resolution {
                apply: true,
                conflict: None,
            }
        }
        (Incoming::Delete, Local::Missing)
        | (Incoming::Upsert { has_before: false }, Local::Missing) => {
            return Resolution {
                apply: true,
                conflict: None,
            }
        }
        (Incoming::Upsert { has_before: true }, Local::Missing) => (Kind::UpdateMissing, false),
        (Incoming::Delete, Local::Differs { .. }) => (Kind::DeleteDiffers, true),
        (
            Incoming::Upsert { has_before },
            Local::Differs {
                commit_ts_us,
                written_by,
            },
        ) => {
            let here = match from {
                Side::Legacy => Side::New,
                Side::New => Side::Legacy,
            };
            let local_side = written_by.unwrap_or(here);
            let newer =
                (incoming_ts_us, rank(from)) > (commit_ts_us.unwrap_or(i64::MIN), rank(local_side));
            let kind = if has_before {
                Kind::UpdateDiffers
            } else {
                Kind::InsertExists
            };
            (kind, newer)
        }
    };
    let apply = match policy {
        ConflictPolicy::SourceOfTruth => owner_wins,
        ConflictPolicy::LastWriterWins => lww,
    };
    Resolution {
        apply,
        conflict: Some(kind),
    }
}

/// The target's current row for `key`, compared with `image` (target column → text value),
/// and locked (`FOR UPDATE`) until the batch commits: an application write between this check
/// and the batch's own write would otherwise be overwritten unseen (a lost update).
/// Returns the comparison and the row as JSON (for the conflicts table). `with_ts` reads the
/// row's commit timestamp (needs `track_commit_timestamp = on`).
///
/// Long on purpose: it builds one `SELECT … FOR UPDATE` with typed parameters and reads the
/// row back; the SQL and its parameter order are checked most easily side by side.
pub async fn compare(
    tx: &Client,
    tt: &TargetTable,
    key: &[(String, Option<String>)],
    image: Option<&BTreeMap<String, Option<String>>>,
    with_ts: bool,
) -> Result<(Local, Option<String>)> {
    let mut params: Vec<Option<String>> = Vec::new();
    let cast = |col: &str, v: &Option<String>, params: &mut Vec<Option<String>>| -> String {
        params.push(v.clone());
        let ty = tt.columns.get(col).map(String::as_str).unwrap_or("text");
        format!("${}::text::{ty}", params.len())
    };
    let mut wh = Vec::new();
    for (k, v) in key {
        let p = cast(k, v, &mut params);
        wh.push(format!("t.{} = {p}", quote(k)));
    }
    let same = match image {
        None => "true".to_string(),
        Some(img) => {
            let mut parts = vec!["true".to_string()];
            for (c, v) in img.iter().filter(|(c, _)| tt.columns.contains_key(*c)) {
                let p = cast(c, v, &mut params);
                parts.push(format!("t.{} IS NOT DISTINCT FROM {p}", quote(c)));
            }
            parts.join(" AND ")
        }
    };
    let ts = if with_ts {
        "(extract(epoch FROM pg_xact_commit_timestamp(t.xmin)) * 1000000)::int8"
    } else {
        "NULL::int8"
    };
    params.push(Some(tt.id.to_string()));
    let tpos = params.len();
    params.push(Some(key_text(key)));
    let kpos = params.len();
    let sql = format!(
        "SELECT ({same}), {ts}, to_jsonb(t)::text, t.xmin::text, rv.ts_us, rv.side, rv.row_xmin
         FROM {} t LEFT JOIN cutover.row_versions rv
           ON rv.target_table = ${tpos}::text AND rv.row_key = ${kpos}::text
         WHERE {}
         FOR UPDATE OF t",
        qualified(&tt.id),
        wh.join(" AND ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let row = tx
        .query_opt(&sql, &refs)
        .await
        .map_err(|e| Error::postgres(format!("reading {} for conflict detection", tt.id), e))?;
    Ok(match row {
        None => (Local::Missing, None),
        Some(r) => {
            let json: Option<String> = r.get(2);
            if r.get::<_, bool>(0) {
                (Local::Same, json)
            } else {
                // The version cutover wrote last is still there: its origin commit time and
                // side are in row_versions (the row's own commit time is the apply time).
                let xmin: Option<String> = r.get(3);
                let rv_xmin: Option<String> = r.get(6);
                let local = if xmin.is_some() && xmin == rv_xmin {
                    Local::Differs {
                        commit_ts_us: r.get(4),
                        written_by: r.get::<_, Option<String>>(5).map(|s| {
                            if s == "legacy" {
                                Side::Legacy
                            } else {
                                Side::New
                            }
                        }),
                    }
                } else {
                    Local::Differs {
                        commit_ts_us: r.get(1),
                        written_by: None,
                    }
                };
                (local, json)
            }
        }
    })
}

fn key_text(key: &[(String, Option<String>)]) -> String {
    json_object(key.iter().map(|(k, v)| (k, v)))
}

/// Remember the origin commit time and side of the version cutover just wrote for `key`
/// (last-writer-wins compares against it later; the row's own commit timestamp is the apply
/// time). Call after the write, in the same transaction.
pub async fn remember(
    tx: &Client,
    tt: &TargetTable,
    key: &[(String, Option<String>)],
    ts_us: i64,
    side: Side,
    deleted: bool,
) -> Result<()> {
    let table = tt.id.to_string();
    let k = key_text(key);
    if deleted {
        tx.execute(
            "DELETE FROM cutover.row_versions WHERE target_table = $1 AND row_key = $2",
            &[&table, &k],
        )
        .await
        .map_err(|e| Error::postgres("cutover.row_versions", e))?;
        return Ok(());
    }
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(table),
        Box::new(k),
        Box::new(ts_us),
        Box::new(side.as_str().to_string()),
    ];
    let mut wh = Vec::new();
    for (c, v) in key {
        params.push(Box::new(v.clone()));
        let ty = tt.columns.get(c).map(String::as_str).unwrap_or("text");
        wh.push(format!("t.{} = ${}::text::{ty}", quote(c), params.len()));
    }
    let sql = format!(
        "INSERT INTO cutover.row_versions (target_table, row_key, ts_us, side, row_xmin)
         SELECT $1, $2, $3, $4, t.xmin::text FROM {} t WHERE {}
         ON CONFLICT (target_table, row_key) DO UPDATE
           SET ts_us = EXCLUDED.ts_us, side = EXCLUDED.side, row_xmin = EXCLUDED.row_xmin",
        qualified(&tt.id),
        wh.join(" AND ")
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    tx.execute(&sql, &refs)
        .await
        .map_err(|e| Error::postgres("cutover.row_versions", e))?;
    Ok(())
}

/// One resolved conflict, as recorded.
pub struct Record<'a> {
    pub sink: &'a str,
    pub table: &'a TargetTable,
    pub key: &'a [(String, Option<String>)],
    pub kind: Kind,
    pub policy: ConflictPolicy,
    pub incoming_won: bool,
    pub local_row: Option<String>,
    pub local_commit_ts_us: Option<i64>,
    pub incoming_row: Option<&'a BTreeMap<String, Option<String>>>,
    pub incoming_commit_ts_us: i64,
    pub incoming_from: Side,
    pub incoming_commit_lsn: i64,
    pub incoming_seq: i64,
}

fn json_object<'a>(pairs: impl Iterator<Item = (&'a String, &'a Option<String>)>) -> String {
    let m: serde_json::Map<String, serde_json::Value> = pairs
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone().map(serde_json::Value::String).unwrap_or_default(),
            )
        })
        .collect();
    serde_json::Value::Object(m).to_string()
}

pub async fn record(tx: &Client, r: &Record<'_>) -> Result<()> {
    let key = json_object(r.key.iter().map(|(k, v)| (k, v)));
    let incoming = r.incoming_row.map(|m| json_object(m.iter()));
    tx.execute(
        "INSERT INTO cutover.conflicts (sink, target_table, row_key, kind, policy, winner,
            local_row, local_commit_ts, incoming_row, incoming_commit_ts, incoming_from,
            incoming_commit_lsn, incoming_seq)
         VALUES ($1, $2, $3::text::jsonb, $4, $5, $6, $7::text::jsonb,
                 'epoch'::timestamptz + $8::int8 * interval '1 microsecond',
                 $9::text::jsonb, 'epoch'::timestamptz + $10::int8 * interval '1 microsecond',
                 $11, $12, $13)",
        &[
            &r.sink,
            &r.table.id.to_string(),
            &key,
            &r.kind.as_str(),
            &r.policy.as_str(),
            &if r.incoming_won { "incoming" } else { "local" },
            &r.local_row,
            &r.local_commit_ts_us,
            &incoming,
            &r.incoming_commit_ts_us,
            &r.incoming_from.as_str(),
            &r.incoming_commit_lsn,
            &r.incoming_seq,
        ],
    )
    .await
    .map_err(|e| Error::postgres("recording a conflict in cutover.conflicts", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConflictPolicy::*;
    use Side::*;

    const UPDATE: Incoming = Incoming::Upsert { has_before: true };
    const INSERT: Incoming = Incoming::Upsert { has_before: false };

    fn differs(ts: i64) -> Local {
        Local::Differs {
            commit_ts_us: Some(ts),
            written_by: None,
        }
    }

    #[test]
    fn no_conflict_when_the_change_was_made_on_this_sides_state() {
        for p in [SourceOfTruth, LastWriterWins] {
            assert_eq!(
                resolve(p, New, Legacy, UPDATE, 5, &Local::Same),
                Resolution {
                    apply: true,
                    conflict: None
                }
            );
            assert_eq!(
                resolve(p, New, Legacy, INSERT, 5, &Local::Missing).conflict,
                None
            );
            assert_eq!(
                resolve(p, New, Legacy, Incoming::Delete, 5, &Local::Missing).conflict,
                None
            );
        }
    }

    /// Both directions see the mirror image of one concurrent pair; exactly one side's change
    /// must win on both sides.
    fn converges(
        policy: ConflictPolicy,
        owner: Side,
        legacy: (Incoming, i64),
        new: (Incoming, i64),
    ) {
        let local_for = |inc: Incoming, ts: i64| match inc {
            Incoming::Delete => Local::Missing,
            _ => differs(ts),
        };
        // At the new store: the legacy change arrives; the local row is the new store's change.
        let at_new = resolve(
            policy,
            Legacy,
            owner,
            legacy.0,
            legacy.1,
            &local_for(new.0, new.1),
        );
        // At legacy: the new store's change arrives; the local row is legacy's change.
        let at_legacy = resolve(
            policy,
            New,
            owner,
            new.0,
            new.1,
            &local_for(legacy.0, legacy.1),
        );
        assert!(at_new.conflict.is_some() && at_legacy.conflict.is_some());
        let both_deletes = matches!((legacy.0, new.0), (Incoming::Delete, Incoming::Delete));
        if !both_deletes {
            // Legacy's change survives iff it is applied at the new store and the new store's
            // change is not applied at legacy (and vice versa).
            assert_ne!(
                at_new.apply, at_legacy.apply,
                "{policy:?} {owner:?} {legacy:?} {new:?}"
            );
        }
    }

    #[test]
    fn every_concurrent_pair_converges_under_both_policies() {
        for policy in [SourceOfTruth, LastWriterWins] {
            for owner in [Legacy, New] {
                for (l, n) in [
                    (UPDATE, UPDATE),
                    (Incoming::Delete, UPDATE),
                    (UPDATE, Incoming::Delete),
                    (INSERT, INSERT),
                ] {
                    for (lt, nt) in [(1, 2), (2, 1), (3, 3)] {
                        converges(policy, owner, (l, lt), (n, nt));
                    }
                }
            }
        }
    }

    #[test]
    fn source_of_truth_lets_the_owner_win() {
        let r = resolve(SourceOfTruth, New, Legacy, UPDATE, 10, &differs(1));
        assert_eq!(
            r,
            Resolution {
                apply: false,
                conflict: Some(Kind::UpdateDiffers)
            }
        );
        let r = resolve(SourceOfTruth, Legacy, Legacy, UPDATE, 1, &differs(10));
        assert!(r.apply);
        let r = resolve(SourceOfTruth, New, New, Incoming::Delete, 1, &differs(10));
        assert_eq!(
            r,
            Resolution {
                apply: true,
                conflict: Some(Kind::DeleteDiffers)
            }
        );
    }

    #[test]
    fn last_writer_wins_by_commit_time_ties_to_legacy_deletes_win() {
        assert!(resolve(LastWriterWins, New, Legacy, UPDATE, 10, &differs(5)).apply);
        assert!(!resolve(LastWriterWins, New, Legacy, UPDATE, 5, &differs(10)).apply);
        // Tie: legacy wins on both sides.
        assert!(!resolve(LastWriterWins, New, Legacy, UPDATE, 7, &differs(7)).apply);
        assert!(resolve(LastWriterWins, Legacy, Legacy, UPDATE, 7, &differs(7)).apply);
        // A delete beats a concurrent update, whichever is later.
        assert!(
            resolve(
                LastWriterWins,
                New,
                Legacy,
                Incoming::Delete,
                1,
                &differs(10)
            )
            .apply
        );
        let r = resolve(LastWriterWins, Legacy, Legacy, UPDATE, 10, &Local::Missing);
        assert_eq!(
            r,
            Resolution {
                apply: false,
                conflict: Some(Kind::UpdateMissing)
            }
        );
        // Unknown local commit time: the incoming change is later.
        assert!(
            resolve(
                LastWriterWins,
                New,
                Legacy,
                UPDATE,
                1,
                &Local::Differs {
                    commit_ts_us: None,
                    written_by: None
                }
            )
            .apply
        );
        // A version cutover wrote keeps the rank of the side it came from: at the new store,
        // a legacy version (ts 7) written by cutover beats a new-store change at ts 7.
        let from_legacy = Local::Differs {
            commit_ts_us: Some(7),
            written_by: Some(Legacy),
        };
        assert!(!resolve(LastWriterWins, New, Legacy, UPDATE, 7, &from_legacy).apply);
    }
}
