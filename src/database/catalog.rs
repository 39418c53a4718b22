//! Catalog facts: what a table looks like in a database, as the pipeline needs it (columns
//! with their `format_type`, the primary key in key order, the replica identity).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::ident::qualified;
use crate::error::{Error, Result};
use crate::event::TableId;

/// A target table as the target's catalog describes it.
#[derive(Debug, Clone)]
pub struct TargetTable {
    pub id: TableId,
    /// Column → `format_type` of its type.
    pub columns: BTreeMap<String, String>,
    /// Primary-key columns, in key order.
    pub key: Vec<String>,
}

/// The target's view of a table, `None` if it does not exist.
pub async fn describe(client: &Client, t: &TableId) -> Result<Option<TargetTable>> {
    let name = qualified(t);
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce((SELECT k.ord::int FROM unnest(i.indkey) WITH ORDINALITY AS k(n, ord) WHERE k.n = a.attnum), 0)
             FROM pg_attribute a
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&name],
        )
        .await
        .map_err(|e| Error::postgres(format!("describing target table {t}"), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut key: Vec<(i32, String)> = vec![];
    let mut columns = BTreeMap::new();
    for r in &rows {
        let n: String = r.get(0);
        let pos: i32 = r.get(2);
        if pos > 0 {
            key.push((pos, n.clone()));
        }
        columns.insert(n, r.get(1));
    }
    key.sort();
    Ok(Some(TargetTable {
        id: t.clone(),
        columns,
        key: key.into_iter().map(|(_, n)| n).collect(),
    }))
}

/// Does `t` log full before-images (`REPLICA IDENTITY FULL`)? `false` when it does not exist.
pub async fn replica_identity_full(c: &Client, t: &TableId) -> Result<bool> {
    let r = c
        .query_opt(
            "SELECT relreplident = 'f' FROM pg_class WHERE oid = to_regclass($1)",
            &[&qualified(t)],
        )
        .await
        .map_err(|e| Error::postgres(format!("replica identity of {t}"), e))?;
    Ok(r.map(|r| r.get(0)).unwrap_or(false))
}
