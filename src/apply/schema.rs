//! What a sink knows about the tables it writes: the mapping of each source table, the
//! target's catalog of each target table, and the casts a mapping asks for. Configured
//! mappings are compiled and checked against the target at start; identity mappings are added
//! at a table's first event, creating or widening the target table when `create_tables` is on.
//!
//! ```text
//!   start:        [[sinks.tables]] ─▶ Mapping::compile ─▶ describe targets ─▶ check_target, casts
//!   first event:  identity? ─▶ CREATE TABLE / ADD COLUMN (outside the batch's transaction)
//!   per schema id: check_source once (the writer schema may differ from the last one)
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::decode::ChangeEvent;
use super::mapping::Mapping;
use super::target;
use crate::config::{SinkConfig, Unmapped};
use crate::database::catalog::{self, TargetTable};
use crate::error::{Error, Result};
use crate::event::{Op, TableId};

#[derive(Default)]
pub struct Tables {
    /// Mapping per source table: configured ones from `load`, identity ones added on first use.
    mappings: HashMap<TableId, Arc<Mapping>>,
    /// Target table → its `cast` settings (from the mapping that writes it).
    casts: HashMap<TableId, BTreeMap<String, String>>,
    /// Source tables whose mapping was checked against this schema id (by Arc pointer).
    checked: HashSet<(TableId, usize)>,
    catalogs: HashMap<TableId, TargetTable>,
}

impl Tables {
    /// Compile the configured mappings of `sinks[i]` and check them against the target.
    pub async fn load(client: &Client, sink: &SinkConfig, i: usize) -> Result<Tables> {
        let mut t = Tables::default();
        for (j, tm) in sink.tables.iter().enumerate() {
            let path = format!("sinks[{i}].tables[{j}]");
            let m = Mapping::compile(path.clone(), tm)?;
            for target in m.targets() {
                let tt = catalog::describe(client, &target).await?.ok_or_else(|| {
                    Error::config(format!(
                        "{path}: target table {target} does not exist in sink {}",
                        sink.name
                    ))
                })?;
                m.check_target(&tt)?;
                let mut casts = BTreeMap::new();
                for (col, via) in &m.cast {
                    let canonical =
                        canonical_type(client, &format!("{path}.cast.{col}"), via).await?;
                    casts.insert(col.clone(), canonical);
                }
                if !casts.is_empty() {
                    t.casts.insert(target.clone(), casts);
                }
                t.catalogs.insert(target, tt);
            }
            t.mappings.insert(m.source.clone(), Arc::new(m));
        }
        Ok(t)
    }

    pub fn catalog(&self, t: &TableId) -> Option<&TargetTable> {
        self.catalogs.get(t)
    }

    /// Key columns of a target table (empty when unknown), borrowed.
    pub fn key_cols(&self, t: &TableId) -> &[String] {
        self.catalogs
            .get(t)
            .map(|c| c.key.as_slice())
            .unwrap_or(&[])
    }

    /// Key columns of a target table (empty when unknown).
    pub fn key_of(&self, t: &TableId) -> Vec<String> {
        self.catalogs
            .get(t)
            .map(|c| c.key.clone())
            .unwrap_or_default()
    }

    pub fn casts(&self, t: &TableId) -> Option<&BTreeMap<String, String>> {
        self.casts.get(t)
    }

    /// Make sure the mapping of `ev.table` is known and checked against the target. Returns
    /// the mapping (`None`: the sink skips the table) and whether target DDL ran (prepared
    /// statements must then be dropped).
    pub async fn prepare(
        &mut self,
        client: &Client,
        sink: &SinkConfig,
        ev: &ChangeEvent,
    ) -> Result<(Option<Arc<Mapping>>, bool)> {
        let key = (ev.table.clone(), Arc::as_ptr(&ev.fields) as usize);
        let mapping = match self.mappings.get(&ev.table) {
            Some(m) => m.clone(),
            None if sink.unmapped_tables == Unmapped::Skip => return Ok((None, false)),
            None => self
                .mappings
                .entry(ev.table.clone())
                .or_insert_with(|| Arc::new(Mapping::identity(ev.table.clone())))
                .clone(),
        };
        if self.checked.contains(&key) {
            return Ok((Some(mapping), false));
        }
        let mut ddl = false;
        if mapping.is_identity() && ev.op != Op::Truncate {
            evolve_identity(client, sink, ev).await?;
            let t = catalog::describe(client, &ev.table)
                .await?
                .ok_or_else(|| Error::internal(format!("{} vanished", ev.table)))?;
            mapping.check_target(&t)?;
            self.catalogs.insert(ev.table.clone(), t);
            ddl = true;
        }
        if ev.op != Op::Truncate {
            for t in mapping.targets() {
                mapping.check_source(ev, &self.key_of(&t))?;
            }
            self.checked.insert(key);
        }
        Ok((Some(mapping), ddl))
    }
}

/// An identity target: create the table, or add the columns it lacks (`create_tables`).
async fn evolve_identity(client: &Client, sink: &SinkConfig, ev: &ChangeEvent) -> Result<()> {
    match catalog::describe(client, &ev.table).await? {
        None if sink.create_tables => {
            target::create_table(client, &ev.table, &ev.fields.fields, &ev.key_columns).await
        }
        None => Err(Error::config(format!(
            "sink {}: target table {} does not exist (create_tables = false)",
            sink.name, ev.table
        ))),
        Some(t) => {
            for f in &ev.fields.fields {
                if t.columns.contains_key(&f.name) {
                    continue;
                }
                if !sink.create_tables {
                    return Err(Error::config(format!(
                        "sink {}: column {}.{} does not exist in the target",
                        sink.name, ev.table, f.name
                    )));
                }
                target::add_column(client, &ev.table, f).await?;
            }
            Ok(())
        }
    }
}

/// A `cast` type must be one the target knows, and what reaches SQL is the server's own
/// spelling of it, never the configured text: the name is checked as a bind parameter
/// (`to_regtype` parses a type name and nothing else, so `int; DROP TABLE x` is no type) and
/// replaced by `regtype`'s output, which quotes whatever needs quoting. A type modifier in the
/// configured name (`varchar(20)`) is not kept: the value is cast on to the target column's
/// own type, typmod included, right after.
async fn canonical_type(client: &Client, field: &str, via: &str) -> Result<String> {
    let known: Option<String> = client
        .query_one("SELECT to_regtype($1)::text", &[&via])
        .await
        .map_err(|e| Error::postgres(format!("{field}: checking type {via:?}"), e))?
        .get(0);
    known.ok_or_else(|| Error::config(format!("{field}: {via:?} is not a type the target knows")))
}
