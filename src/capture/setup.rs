//! Source preparation: checks and idempotent creation of publication and slot, and catalog
//! lookups (primary keys, user types) the stream needs.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::codec::types::{builtin_kind, kind_for_catalog, PgKind};
use crate::config::SourceConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Lsn;

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Fail with an operator-actionable message unless the server can do logical decoding.
pub async fn check_server(client: &Client) -> Result<()> {
    let wal_level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(|e| Error::postgres("reading wal_level", e))?
        .get(0);
    if wal_level != "logical" {
        return Err(Error::new(
            ErrorKind::Environment,
            format!("source: wal_level is {wal_level:?}; set wal_level = logical in postgresql.conf and restart PostgreSQL"),
        ));
    }
    Ok(())
}

/// Create the publication if missing ("already exists" is success).
pub async fn ensure_publication(client: &Client, cfg: &SourceConfig) -> Result<bool> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&cfg.publication],
        )
        .await
        .map_err(|e| Error::postgres("looking up publication", e))?
        .is_some();
    if exists {
        return Ok(false);
    }
    let mut targets = Vec::new();
    if !cfg.schemas.is_empty() {
        let schemas: Vec<String> = cfg.schemas.iter().map(|s| quote_ident(s)).collect();
        targets.push(format!("TABLES IN SCHEMA {}", schemas.join(", ")));
    }
    if !cfg.tables.is_empty() {
        let tables: Vec<String> = cfg
            .tables
            .iter()
            .map(|t| {
                let (s, n) = t.split_once('.').unwrap_or(("public", t));
                format!("{}.{}", quote_ident(s), quote_ident(n))
            })
            .collect();
        targets.push(format!("TABLE {}", tables.join(", ")));
    }
    let sql = format!(
        "CREATE PUBLICATION {} FOR {}",
        quote_ident(&cfg.publication),
        targets.join(", ")
    );
    match client.batch_execute(&sql).await {
        Ok(()) => {
            tracing::info!(publication = %cfg.publication, "created publication");
            Ok(true)
        }
        Err(e) if e.code().map(|c| c.code()) == Some("42710") => Ok(false),
        Err(e) => Err(Error::postgres(format!("creating publication {}", cfg.publication), e)
            .context("the source role needs CREATE on the database and ownership of the tables (or superuser for TABLES IN SCHEMA)")),
    }
}

/// Create the slot if missing; check an existing one is usable. Returns its confirmed LSN.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<Lsn> {
    let row = client
        .query_opt(
            "SELECT plugin, database, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres("looking up replication slot", e))?;
    if let Some(row) = row {
        let plugin: Option<String> = row.get(0);
        let db: Option<String> = row.get(1);
        let confirmed: Option<String> = row.get(2);
        let wal_status: Option<String> = row.get(3);
        if plugin.as_deref() != Some("pgoutput") {
            return Err(Error::new(ErrorKind::Environment, format!("source.slot: slot {slot} uses plugin {plugin:?}, not pgoutput: drop it or choose another slot name")));
        }
        let current: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(|e| Error::postgres("current_database()", e))?
            .get(0);
        if db.as_deref() != Some(current.as_str()) {
            return Err(Error::new(
                ErrorKind::Environment,
                format!("source.slot: slot {slot} belongs to database {db:?}, not {current}"),
            ));
        }
        if wal_status.as_deref() == Some("lost") {
            return Err(Error::new(ErrorKind::Environment, format!("source.slot: slot {slot} is invalidated (WAL it needed was removed, max_slot_wal_keep_size): changes were lost; drop the slot, recreate it and backfill")));
        }
        let lsn = confirmed
            .as_deref()
            .and_then(Lsn::parse)
            .unwrap_or_default();
        return Ok(lsn);
    }
    match client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(row) => {
            let lsn: String = row.get(0);
            tracing::info!(slot, lsn = %lsn, "created replication slot");
            Ok(Lsn::parse(&lsn).unwrap_or_default())
        }
        Err(e) if e.code().map(|c| c.code()) == Some("42710") => {
            Box::pin(ensure_slot(client, slot)).await
        }
        Err(e) => Err(
            Error::postgres(format!("creating replication slot {slot}"), e)
                .context("the source role needs the REPLICATION attribute"),
        ),
    }
}

/// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - restart_lsn`).
pub async fn slot_retained_bytes(client: &Client, slot: &str) -> Result<Option<(i64, bool)>> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres("reading slot WAL retention", e))?;
    Ok(row.map(|r| (r.get::<_, Option<i64>>(0).unwrap_or(0), r.get(1))))
}

/// Catalog lookups with caches: column kinds for user types, primary keys per relation.
#[derive(Default)]
pub struct Catalog {
    kinds: HashMap<(u32, i32), PgKind>,
}

impl Catalog {
    /// The representation of a column of type `oid` with modifier `typmod`.
    pub async fn kind(&mut self, client: &Client, oid: u32, typmod: i32) -> Result<PgKind> {
        if let Some(k) = builtin_kind(oid, typmod) {
            return Ok(k);
        }
        if let Some(k) = self.kinds.get(&(oid, typmod)) {
            return Ok(k.clone());
        }
        let row = client
            .query_opt(
                "SELECT typtype::text, typcategory::text, typelem, typbasetype FROM pg_type WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("looking up type {oid}"), e))?;
        let kind = match row {
            None => PgKind::Text,
            Some(r) => {
                let typtype = r.get::<_, String>(0).bytes().next().unwrap_or(b'b');
                let cat = r.get::<_, String>(1).bytes().next().unwrap_or(b'U');
                let elem: u32 = r.get(2);
                let base: u32 = r.get(3);
                let inner_oid = if typtype == b'd' { base } else { elem };
                let inner = if inner_oid != 0 && inner_oid != oid {
                    Some(Box::pin(self.kind(client, inner_oid, typmod)).await?)
                } else {
                    None
                };
                kind_for_catalog(typtype, cat, inner)
            }
        };
        self.kinds.insert((oid, typmod), kind.clone());
        Ok(kind)
    }

    /// Primary-key column names of relation `oid`, in key order.
    pub async fn primary_key(&self, client: &Client, oid: u32) -> Result<Vec<String>> {
        let rows = client
            .query(
                "SELECT a.attname FROM pg_index i \
                 JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("reading primary key of relation {oid}"), e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
