//! Relations: how capture learns the shape of each table. A Relation message (or, for a table
//! not yet described by the stream, the catalog) becomes a `TableState`: its Avro schema,
//! registered as key and value subjects before any of its events is produced, its topic
//! (created with the configured partitions) and its columns' codecs.

use std::sync::Arc;

use super::metrics;
use super::pgoutput::{Datum, Relation};
use super::stream::{Capture, TableState};
use crate::codec::{self, ColumnSpec, Row};
use crate::error::{Error, ErrorKind, Result};
use crate::event::TableId;
use crate::kafka;

/// The columns a Relation message flags as its replica identity (the primary key under
/// `REPLICA IDENTITY DEFAULT`, the index's columns under `USING INDEX`), in column order.
fn identity_columns(rel: &Relation) -> Vec<String> {
    rel.columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.clone())
        .collect()
}

impl Capture {
    /// The relation id of `table`, registering its schema from the catalog when the stream has
    /// not described it yet (no change of it since capture started).
    pub(super) async fn relation_for(&mut self, table: &TableId) -> Result<u32> {
        if let Some((id, _)) = self
            .relations
            .iter()
            .find(|(_, st)| &st.schema.table == table)
        {
            return Ok(*id);
        }
        let q = crate::database::ident::qualified(table);
        let r = self
            .sql
            .query_one(
                "SELECT c.oid, c.relreplident::text FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&q],
            )
            .await
            .map_err(|e| Error::postgres(format!("describing {table} for backfill"), e))?;
        let oid: u32 = r.get(0);
        let ident: String = r.get(1);
        let cols = self
            .sql
            .query(
                "SELECT a.attname::text, a.atttypid, a.atttypmod,
                        coalesce(a.attnum = ANY(i.indkey), false)
                 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid
                     AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident ELSE i.indisprimary END
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("columns of {table} for backfill"), e))?;
        let rel = super::pgoutput::Relation {
            id: oid,
            namespace: table.schema.clone(),
            name: table.name.clone(),
            replica_identity: ident.as_bytes().first().copied().unwrap_or(b'd'),
            columns: cols
                .iter()
                .map(|c| super::pgoutput::Column {
                    key: ident == "f" || c.get::<_, bool>(3),
                    name: c.get(0),
                    type_oid: c.get(1),
                    type_modifier: c.get(2),
                })
                .collect(),
        };
        self.on_relation(rel).await?;
        Ok(oid)
    }

    pub(super) fn state(&self, rel_id: u32) -> Result<&TableState> {
        self.relations.get(&rel_id).ok_or_else(|| {
            Error::internal(format!(
                "change for relation {rel_id} before its Relation message"
            ))
        })
    }

    /// A tuple of the stream as a [`Row`] of Avro-encoded values; a value the codec cannot
    /// represent is a `Data` error naming the table and column. Excluded columns are skipped
    /// and cut columns cut ([`super::projection`]); each cut value is counted.
    pub(super) fn cells(&self, rel_id: u32, tuple: &[Datum]) -> Result<Row> {
        self.cells_of(rel_id, tuple, true)
    }

    /// [`Capture::cells`] without counting cuts (a key looked at for a backfill window).
    pub(super) fn cells_of(&self, rel_id: u32, tuple: &[Datum], count: bool) -> Result<Row> {
        let st = self.state(rel_id)?;
        let mut row = Row::with_columns(st.schema.columns.len());
        for (i, d, col) in st.carried(tuple) {
            match d {
                Datum::Null => row.push_null(),
                Datum::UnchangedToast => row.push_unchanged(),
                Datum::Text(b) | Datum::Binary(b) => {
                    let text = std::str::from_utf8(b).map_err(|e| {
                        Error::new(
                            ErrorKind::Data,
                            format!("{}.{}: value is not UTF-8: {e}", st.schema.table, col.name),
                        )
                    })?;
                    let text = match &st.projection {
                        Some(p) => {
                            let (text, cut) = p.cut(i, text);
                            if cut && count {
                                st.counters.truncated();
                            }
                            text
                        }
                        None => text,
                    };
                    row.push_text(&col.kind, text)
                        .map_err(|e| e.context(format!("{}.{}", st.schema.table, col.name)))?;
                }
            }
        }
        Ok(row)
    }

    pub(super) async fn on_relation(&mut self, rel: Relation) -> Result<()> {
        let table = TableId::new(rel.namespace.clone(), rel.name.clone());
        let configured = self.cfg.source.key_columns.get(&table.to_string()).cloned();
        let full = rel.replica_identity == b'f';
        let pk = match &configured {
            Some(cols) => cols.clone(),
            // The stream's own word first: a Relation message flags the replica identity's
            // columns as they were at its position in the WAL, so a backlog replays whatever
            // happened to the table since (dropped, renamed, re-keyed). Only REPLICA IDENTITY
            // FULL flags every column; then the primary key, if the table still has one.
            None if !full => identity_columns(&rel),
            None => self.catalog.primary_key(&self.sql, rel.id).await?,
        };
        if pk.is_empty() && !full {
            let why = format!("table {table} has no primary key: configure source.key_columns.\"{table}\" or ALTER TABLE {table} REPLICA IDENTITY FULL (then every column is the key)");
            if self.cfg.source.unkeyed_tables == crate::config::UnkeyedTables::Fail {
                return Err(Error::new(ErrorKind::Config, why));
            }
            // Its rows are dead-lettered (they keep their place and nothing is lost); no
            // schema is registered, so giving the table a key later registers the real one.
            tracing::warn!(table = %table, "{why}: its rows go to the capture dead-letter topic (source.unkeyed_tables = \"dead_letter\")");
            let (columns, projection) = self.projected(&table, &rel, &[]).await?;
            let topic = kafka::topic::for_table(&self.cfg.topic_prefix, &table);
            metrics::table_seen(&table.to_string());
            self.relations.insert(
                rel.id,
                TableState {
                    schema: Arc::new(codec::derive(&table, columns, &topic)?),
                    topic,
                    partitions: 1,
                    key_id: 0,
                    value_id: 0,
                    counters: super::metrics::TableCounters::new(&table.to_string()),
                    unkeyed: Some(why),
                    projection,
                },
            );
            return Ok(());
        }
        let (columns, projection) = self.projected(&table, &rel, &pk).await?;
        if let Some(cols) = &configured {
            for k in cols {
                if !rel.columns.iter().any(|c| &c.name == k) {
                    return Err(Error::config(format!(
                        "source.key_columns.\"{table}\": column {k} does not exist"
                    )));
                }
            }
        }
        let topic = kafka::topic::for_table(&self.cfg.topic_prefix, &table);
        if let Some(existing) = self.relations.get(&rel.id) {
            if existing.schema.columns == columns
                && existing.topic == topic
                && existing.projection == projection
            {
                return Ok(());
            }
        }
        let mut state = self.register(&table, columns, topic).await?;
        state.projection = projection;
        // The table's dead-letter series exists from its first relation, at zero.
        metrics::table_seen(&table.to_string());
        self.relations.insert(rel.id, state);
        Ok(())
    }

    /// The column specs events carry (excluded columns left out) and the projection that
    /// maps the Relation's columns onto them.
    async fn projected(
        &mut self,
        table: &TableId,
        rel: &Relation,
        pk: &[String],
    ) -> Result<(Vec<ColumnSpec>, Option<super::projection::Projection>)> {
        let all = self.column_specs(rel, pk).await?;
        let name = table.to_string();
        let ins: Vec<super::projection::ColumnIn<'_>> = rel
            .columns
            .iter()
            .zip(&all)
            .map(|(c, spec)| super::projection::ColumnIn {
                name: &c.name,
                type_oid: c.type_oid,
                key: spec.key,
            })
            .collect();
        let projection = super::projection::plan(
            table,
            &ins,
            self.cfg.source.exclude_columns.get(&name),
            self.cfg.source.truncate_columns.get(&name),
        )?;
        let columns = match &projection {
            Some(p) => all
                .into_iter()
                .enumerate()
                .filter(|(i, _)| p.kept(*i))
                .map(|(_, c)| c)
                .collect(),
            None => all,
        };
        Ok((columns, projection))
    }

    /// The codec's column specs of a relation; `pk` empty means every column is the key
    /// (`REPLICA IDENTITY FULL`).
    async fn column_specs(&mut self, rel: &Relation, pk: &[String]) -> Result<Vec<ColumnSpec>> {
        let mut columns = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let kind = self
                .catalog
                .kind(&self.sql, c.type_oid, c.type_modifier)
                .await?;
            let pg_type = self
                .catalog
                .type_name(&self.sql, c.type_oid, c.type_modifier)
                .await?;
            columns.push(ColumnSpec {
                name: c.name.clone(),
                kind,
                key: pk.is_empty() || pk.contains(&c.name),
                pg_type: Some(pg_type),
            });
        }
        Ok(columns)
    }

    /// Register a table's key schema. A key that changed (the table was re-keyed: another
    /// primary key, or `REPLICA IDENTITY FULL`) is incompatible with the old key by nature;
    /// the registry refuses it under BACKWARD, which would stop capture on that relation
    /// at every restart. The key subject is then set to compatibility NONE and the new key
    /// registered as its next version: each record names its key's schema id, so consumers
    /// read both, and per-key order holds within each key version (a re-key changes which
    /// rows share a partition anyway). Value subjects keep their compatibility contract.
    async fn register_key(&mut self, table: &TableId, topic: &str, key_json: &str) -> Result<u32> {
        let subject = format!("{topic}-key");
        match self.registry.register(&subject, key_json).await {
            Err(e) if e.kind() == ErrorKind::Schema => {
                tracing::warn!(table = %table, subject, error = %e, "the table's key changed (re-keyed): its key subject's compatibility is set to NONE and the new key registered as a new version");
                self.registry
                    .set_compatibility(&subject, "NONE")
                    .await
                    .map_err(|e| e.context(format!("{table} was re-keyed; its key subject {subject} must accept the new key")))?;
                self.registry.register(&subject, key_json).await
            }
            other => other,
        }
    }

    /// Derive a table's schema, register it (before the first event that uses this version)
    /// and make sure its topic exists.
    async fn register(
        &mut self,
        table: &TableId,
        columns: Vec<ColumnSpec>,
        topic: String,
    ) -> Result<TableState> {
        let schema = codec::derive(table, columns, &topic)?;
        let key_id = self.register_key(table, &topic, &schema.key_json).await?;
        let value_id = self
            .registry
            .register(&format!("{topic}-value"), &schema.value_json)
            .await?;
        let partitions = match self.topic_partitions.get(&topic) {
            Some(p) => *p,
            None => {
                let p = kafka::ensure_table_topics(&self.cfg.kafka, std::slice::from_ref(&topic))
                    .await?
                    .get(&topic)
                    .copied()
                    .unwrap_or(1);
                self.topic_partitions.insert(topic.clone(), p);
                p
            }
        };
        tracing::info!(table = %table, topic, key_id, value_id, "relation schema registered");
        Ok(TableState {
            schema: Arc::new(schema),
            topic,
            partitions: partitions.max(1),
            key_id,
            value_id,
            counters: super::metrics::TableCounters::new(&table.to_string()),
            unkeyed: None,
            projection: None,
        })
    }
}
