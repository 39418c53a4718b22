//! The target PostgreSQL store: catalog lookups, table creation for identity sinks, the
//! progress tables in schema `cutover`, and the set-based statements a batch runs.
//!
//! Progress (`cutover.sink_progress`) is the source of truth for where a sink is: one row per
//! (sink, topic, partition) with the next offset and the last applied `(commit_lsn, seq)`. It
//! is written in the same transaction as the data it covers, so the two can never disagree.
//! The rows are locked (`FOR UPDATE`) at the start of every batch, so two instances of one sink
//! can never both apply the same events, whatever Kafka's rebalances do.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::{Client, Statement};

use super::decode::FieldInfo;
use crate::database::catalog::TargetTable;
use crate::database::ident::{qualified, quote};
use crate::database::serialized_ddl;
use crate::error::{Error, Result};
use crate::event::TableId;

/// The PostgreSQL type for a captured column: its source type if the target knows it, else
/// one derived from the Avro type.
pub async fn column_type(client: &Client, f: &FieldInfo) -> Result<String> {
    if let Some(t) = &f.pg_type {
        let known: Option<String> = client
            .query_one("SELECT to_regtype($1)::text", &[t])
            .await
            .map_err(|e| Error::postgres("to_regtype", e))?
            .get(0);
        if known.is_some() {
            return Ok(t.clone());
        }
    }
    Ok(avro_pg_type(&f.avro))
}

fn avro_pg_type(a: &serde_json::Value) -> String {
    let logical = a["logicalType"].as_str();
    let base = a.as_str().or(a["type"].as_str()).unwrap_or("string");
    match (base, logical) {
        (_, Some("decimal")) => format!(
            "numeric({},{})",
            a["precision"].as_u64().unwrap_or(38),
            a["scale"].as_u64().unwrap_or(0)
        ),
        (_, Some("uuid")) => "uuid".into(),
        (_, Some("date")) => "date".into(),
        (_, Some("time-micros")) => "time".into(),
        (_, Some("local-timestamp-micros")) => "timestamp".into(),
        (_, Some("timestamp-micros")) => "timestamptz".into(),
        ("boolean", _) => "boolean".into(),
        ("int", _) => "integer".into(),
        ("long", _) => "bigint".into(),
        ("float", _) => "real".into(),
        ("double", _) => "double precision".into(),
        ("bytes", _) => "bytea".into(),
        ("array", _) => {
            let items = &a["items"];
            let inner = items
                .as_array()
                .and_then(|u| u.iter().find(|b| *b != "null"))
                .unwrap_or(items);
            format!("{}[]", avro_pg_type(inner))
        }
        _ => "text".into(),
    }
}

/// Create an identity target table (and schema) from a captured layout.
pub async fn create_table(
    client: &Client,
    t: &TableId,
    fields: &[FieldInfo],
    key: &[String],
) -> Result<()> {
    let mut cols = vec![];
    for f in fields {
        cols.push(format!(
            "{} {}",
            quote(&f.name),
            column_type(client, f).await?
        ));
    }
    let pk: Vec<String> = key.iter().map(|k| quote(k)).collect();
    // The schema only when it is missing: `CREATE SCHEMA IF NOT EXISTS` needs CREATE on the
    // database even when the schema exists, which a least-privilege sink role that owns its
    // schema does not have (docs/SECURITY.md).
    let schema_missing: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&t.schema],
        )
        .await
        .map_err(|e| Error::postgres(format!("looking up schema {}", t.schema), e))?
        .get(0);
    let schema = if schema_missing {
        format!("CREATE SCHEMA IF NOT EXISTS {}; ", quote(&t.schema))
    } else {
        String::new()
    };
    let sql = format!(
        "{schema}CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
        qualified(t),
        cols.join(", "),
        pk.join(", ")
    );
    serialized_ddl(client, &sql, &format!("target table {t}")).await?;
    tracing::info!(table = %t, "created target table");
    Ok(())
}

pub async fn add_column(client: &Client, t: &TableId, f: &FieldInfo) -> Result<()> {
    let ty = column_type(client, f).await?;
    let sql = format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {ty}",
        qualified(t),
        quote(&f.name)
    );
    serialized_ddl(client, &sql, &format!("column {t}.{}", f.name)).await?;
    tracing::info!(table = %t, column = %f.name, "added target column");
    Ok(())
}

/// Prepared set-based statements, cached by SQL text.
#[derive(Default)]
pub struct Statements {
    cache: HashMap<String, Statement>,
}

impl Statements {
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    async fn get(&mut self, tx: &Client, sql: String) -> Result<Statement> {
        if let Some(s) = self.cache.get(&sql) {
            return Ok(s.clone());
        }
        let s = tx
            .prepare(&sql)
            .await
            .map_err(|e| Error::postgres("preparing apply statement", e))?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    /// `INSERT ... SELECT FROM unnest(text arrays) ON CONFLICT (key) DO UPDATE` for rows that
    /// all carry the same columns.
    pub async fn upsert(
        &mut self,
        tx: &Client,
        t: &TargetTable,
        cast: &BTreeMap<String, String>,
        cols: &[String],
        values: &[Vec<Option<String>>],
    ) -> Result<u64> {
        let select: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = &t.columns[c];
                match cast.get(c) {
                    Some(via) => format!("u.c{i}::{via}::{ty}"),
                    None => format!("u.c{i}::{ty}"),
                }
            })
            .collect();
        let params: Vec<String> = (0..cols.len())
            .map(|i| format!("${}::text[]", i + 1))
            .collect();
        let names: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
        let updates: Vec<String> = cols
            .iter()
            .filter(|c| !t.key.contains(c))
            .map(|c| format!("{0} = excluded.{0}", quote(c)))
            .collect();
        let conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let sql =
            format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {conflict}",
            qualified(&t.id),
            cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
            select.join(", "),
            params.join(", "),
            names.join(", "),
            t.key.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
        );
        let stmt = self.get(tx, sql).await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&stmt, &params)
            .await
            .map_err(|e| Error::postgres(format!("upserting into {}", t.id), e))
    }

    /// `DELETE ... WHERE (key) IN (SELECT FROM unnest(text arrays))`.
    pub async fn delete(
        &mut self,
        tx: &Client,
        t: &TargetTable,
        keys: &[Vec<Option<String>>],
    ) -> Result<u64> {
        let select: Vec<String> = t
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("u.c{i}::{}", t.columns[c]))
            .collect();
        let params: Vec<String> = (0..t.key.len())
            .map(|i| format!("${}::text[]", i + 1))
            .collect();
        let names: Vec<String> = (0..t.key.len()).map(|i| format!("c{i}")).collect();
        let sql = format!(
            "DELETE FROM {} WHERE ({}) IN (SELECT {} FROM unnest({}) AS u({}))",
            qualified(&t.id),
            t.key
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            select.join(", "),
            params.join(", "),
            names.join(", "),
        );
        let stmt = self.get(tx, sql).await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = keys
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&stmt, &params)
            .await
            .map_err(|e| Error::postgres(format!("deleting from {}", t.id), e))
    }
}
