//! Mapping a captured row onto the target contract: renames, dropped columns, constants,
//! defaults, computed columns, casts, row filters and routing (see [`TableMapping`]).
//!
//! Errors come in two kinds. Structural ones (a target table or column that does not exist, a
//! cast type the target does not know, a target key not fed by the source key) are
//! configuration errors: found at start-up or at the first event of a table, they stop the sink
//! with a message naming `table.column`. Per-row ones (an expression that fails on this row's
//! values, a routing value with no target) are data errors: that event goes to the dead-letter
//! topic and the sink goes on.

use std::collections::{BTreeMap, BTreeSet};

use super::decode::ChangeEvent;
use crate::config::TableMapping;
use crate::database::catalog::TargetTable;
use crate::error::{Error, ErrorKind, Result};
use crate::event::TableId;
use crate::expr::{truth, Expr};

/// Parse `schema.table` (a bare name means `public`).
pub fn table_id(s: &str) -> TableId {
    match s.split_once('.') {
        Some((a, b)) => TableId::new(a, b),
        None => TableId::new("public", s),
    }
}

/// How sink `i` of `cfg` maps source `table`: its configured mapping, or identity when the
/// sink maps unmapped tables as themselves; `None` when the sink skips the table.
pub fn for_table(cfg: &crate::config::Config, i: usize, table: &str) -> Result<Option<Mapping>> {
    let sink = &cfg.sinks[i];
    match sink
        .tables
        .iter()
        .enumerate()
        .find(|(_, m)| m.source == table)
    {
        Some((j, m)) => Mapping::compile(format!("sinks[{i}].tables[{j}]"), m).map(Some),
        None if sink.unmapped_tables == crate::config::Unmapped::Identity => {
            Ok(Some(Mapping::identity(table_id(table))))
        }
        None => Ok(None),
    }
}

/// What to do in a target table for one source event.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetOp {
    /// Insert or update the row; only the listed columns are written.
    Upsert {
        table: TableId,
        cols: BTreeMap<String, Option<String>>,
    },
    Delete {
        table: TableId,
        key: Vec<(String, Option<String>)>,
    },
}

/// A compiled mapping for one source table.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Config path for messages, e.g. `sinks[1].tables[0]`; `None` for identity.
    pub path: Option<String>,
    pub source: TableId,
    target: TableId,
    rename: BTreeMap<String, String>,
    drop: BTreeSet<String>,
    pub cast: BTreeMap<String, String>,
    constants: BTreeMap<String, String>,
    defaults: BTreeMap<String, String>,
    computed: Vec<(String, Expr)>,
    filter: Option<Expr>,
    route: Option<(String, BTreeMap<String, TableId>, Option<TableId>)>,
}

fn cfg_err(msg: String) -> Error {
    Error::new(ErrorKind::Config, msg)
}

fn data_err(msg: String) -> Error {
    Error::new(ErrorKind::Data, msg)
}

impl Mapping {
    pub fn identity(source: TableId) -> Mapping {
        Mapping {
            path: None,
            target: source.clone(),
            source,
            rename: BTreeMap::new(),
            drop: BTreeSet::new(),
            cast: BTreeMap::new(),
            constants: BTreeMap::new(),
            defaults: BTreeMap::new(),
            computed: vec![],
            filter: None,
            route: None,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.path.is_none()
    }

    pub fn compile(path: String, m: &TableMapping) -> Result<Mapping> {
        let parse = |what: String, e: &str| {
            Expr::parse(e).map_err(|msg| cfg_err(format!("{path}.{what}: {msg}")))
        };
        let source = table_id(&m.source);
        Ok(Mapping {
            target: m
                .target
                .as_deref()
                .map(table_id)
                .unwrap_or_else(|| source.clone()),
            source,
            rename: m.rename.clone(),
            drop: m.drop.iter().cloned().collect(),
            cast: m.cast.clone(),
            constants: m.constants.clone(),
            defaults: m.defaults.clone(),
            computed: m
                .computed
                .iter()
                .map(|(c, e)| Ok((c.clone(), parse(format!("computed.{c}"), e)?)))
                .collect::<Result<_>>()?,
            filter: m
                .filter
                .as_deref()
                .map(|f| parse("filter".into(), f))
                .transpose()?,
            route: m.route.as_ref().map(|r| {
                (
                    r.column.clone(),
                    r.targets
                        .iter()
                        .map(|(v, t)| (v.clone(), table_id(t)))
                        .collect(),
                    r.default.as_deref().map(table_id),
                )
            }),
            path: Some(path),
        })
    }

    /// Every table this mapping may write.
    /// Source columns copied unchanged into the target (renamed at most), as (source, target)
    /// pairs in `source_columns` order: not dropped, not overridden by a constant or computed
    /// column, no default that could replace a NULL. What a row-by-row comparison of both
    /// sides can use as is.
    pub fn passthrough(&self, source_columns: &[String]) -> Vec<(String, String)> {
        source_columns
            .iter()
            .filter(|c| !self.drop.contains(*c))
            .map(|c| {
                let t = self.rename.get(c).cloned().unwrap_or_else(|| c.clone());
                (c.clone(), t)
            })
            .filter(|(_, t)| {
                !self.constants.contains_key(t)
                    && !self.defaults.contains_key(t)
                    && !self.computed.iter().any(|(c, _)| c == t)
            })
            .collect()
    }

    /// Does the mapping keep only some rows (a filter)? Then row counts differ by design.
    pub fn filters_rows(&self) -> bool {
        self.filter.is_some()
    }

    pub fn targets(&self) -> Vec<TableId> {
        match &self.route {
            None => vec![self.target.clone()],
            Some((_, ts, d)) => {
                let mut all: BTreeSet<TableId> = ts.values().cloned().collect();
                all.extend(d.iter().cloned());
                all.into_iter().collect()
            }
        }
    }

    fn at(&self) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("identity mapping of {}", self.source))
    }

    /// Start-up check against the target catalog: every named target column exists and every
    /// target key column is fed.
    pub fn check_target(&self, t: &TargetTable) -> Result<()> {
        let at = self.at();
        if t.key.is_empty() {
            return Err(cfg_err(format!(
                "{at}: target table {} has no primary key (cutover upserts by key)",
                t.id
            )));
        }
        let named = self
            .rename
            .values()
            .map(|c| ("rename", c))
            .chain(self.constants.keys().map(|c| ("constants", c)))
            .chain(self.defaults.keys().map(|c| ("defaults", c)))
            .chain(self.computed.iter().map(|(c, _)| ("computed", c)))
            .chain(self.cast.keys().map(|c| ("cast", c)));
        for (what, col) in named {
            if !t.columns.contains_key(col) {
                return Err(cfg_err(format!(
                    "{at}.{what}: column {}.{col} does not exist in the target",
                    t.id
                )));
            }
        }
        Ok(())
    }

    /// First-event check against the source layout: renamed, dropped and referenced source
    /// columns exist; the target key is fed by source key columns or constants.
    pub fn check_source(&self, ev: &ChangeEvent, target_key: &[String]) -> Result<()> {
        let at = self.at();
        let cols: BTreeSet<&str> = ev.fields.fields.iter().map(|f| f.name.as_str()).collect();
        let mut referenced: Vec<(String, String)> = vec![];
        referenced.extend(
            self.rename
                .keys()
                .map(|c| ("rename".to_string(), c.clone())),
        );
        referenced.extend(self.drop.iter().map(|c| ("drop".to_string(), c.clone())));
        for (c, e) in &self.computed {
            referenced.extend(
                e.columns()
                    .into_iter()
                    .map(|x| (format!("computed.{c}"), x)),
            );
        }
        if let Some(f) = &self.filter {
            referenced.extend(f.columns().into_iter().map(|x| ("filter".to_string(), x)));
        }
        if let Some((c, _, _)) = &self.route {
            referenced.push(("route.column".into(), c.clone()));
        }
        for (what, c) in referenced {
            if !cols.contains(c.as_str()) {
                return Err(cfg_err(format!(
                    "{at}.{what}: column {}.{c} does not exist in the source",
                    self.source
                )));
            }
        }
        if ev.op != crate::event::Op::Truncate {
            for k in target_key {
                let fed = self.constants.contains_key(k)
                    || ev
                        .key_columns
                        .iter()
                        .any(|sk| self.target_name(sk) == Some(k));
                if !fed {
                    return Err(cfg_err(format!(
                        "{at}: target key column {k} is not mapped from a key column of {} (key: {})",
                        self.source,
                        ev.key_columns.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    fn target_name<'a>(&'a self, source_col: &'a str) -> Option<&'a str> {
        if self.drop.contains(source_col) {
            return None;
        }
        Some(
            self.rename
                .get(source_col)
                .map(String::as_str)
                .unwrap_or(source_col),
        )
    }

    /// The target ops for one event (upserts, deletes; truncates are handled by the caller).
    /// `key_of` gives each target table's key columns.
    pub fn map(
        &self,
        ev: &ChangeEvent,
        key_of: &dyn Fn(&TableId) -> Vec<String>,
    ) -> Result<Vec<TargetOp>> {
        let Some(after) = &ev.after else {
            // Delete: only the key is known for sure; remove it from every possible target.
            let before = ev
                .before
                .as_ref()
                .ok_or_else(|| data_err(format!("{}: delete without a row", ev.table)))?;
            return self.delete_everywhere(ev, before, key_of);
        };
        let fields = &ev.fields.fields;
        let lookup = |c: &str| -> Option<Option<String>> {
            fields
                .iter()
                .position(|f| f.name == c)
                .map(|i| after[i].clone())
        };
        if let Some(f) = &self.filter {
            let keep = f
                .eval(&lookup)
                .map_err(|e| data_err(format!("{}: filter: {e}", self.source)))?;
            if truth(&keep) != Some(true) {
                return self.delete_everywhere(ev, after, key_of);
            }
        }
        let target = self.route_of(&lookup)?;
        let cols = self.target_row(ev, after, &target, &lookup)?;
        let mut ops = vec![];
        // A routed row leaves the other targets (its routing column may have changed).
        if self.route.is_some() {
            for op in self.delete_everywhere(ev, after, key_of)? {
                if matches!(&op, TargetOp::Delete { table, .. } if *table != target) {
                    ops.push(op);
                }
            }
        }
        ops.push(TargetOp::Upsert {
            table: target,
            cols,
        });
        Ok(ops)
    }

    /// Deletes of `row`'s key from every target the mapping can write.
    fn delete_everywhere(
        &self,
        ev: &ChangeEvent,
        row: &[Option<String>],
        key_of: &dyn Fn(&TableId) -> Vec<String>,
    ) -> Result<Vec<TargetOp>> {
        let key = self.target_key_values(ev, row)?;
        Ok(self
            .targets()
            .into_iter()
            .map(|t| TargetOp::Delete {
                key: key_of(&t)
                    .iter()
                    .map(|c| {
                        let v = key
                            .iter()
                            .find(|(n, _)| n == c)
                            .and_then(|(_, v)| v.clone());
                        (c.clone(), v)
                    })
                    .collect(),
                table: t,
            })
            .collect())
    }

    /// The target table of a row: the mapping's, or its route's for the routing column's value.
    fn route_of(&self, lookup: &dyn Fn(&str) -> Option<Option<String>>) -> Result<TableId> {
        let Some((col, ts, default)) = &self.route else {
            return Ok(self.target.clone());
        };
        let v = lookup(col).flatten();
        match v.as_ref().and_then(|v| ts.get(v)).or(default.as_ref()) {
            Some(t) => Ok(t.clone()),
            None => Err(data_err(format!(
                "{}.{col}: no route target for value {:?}",
                self.source, v
            ))),
        }
    }

    /// The target row: renamed source columns (TOASTed ones left out), constants, computed
    /// columns, then defaults for what is still NULL.
    fn target_row(
        &self,
        ev: &ChangeEvent,
        after: &[Option<String>],
        target: &TableId,
        lookup: &dyn Fn(&str) -> Option<Option<String>>,
    ) -> Result<BTreeMap<String, Option<String>>> {
        let mut cols = BTreeMap::new();
        for (f, v) in ev.fields.fields.iter().zip(after) {
            if ev.unchanged.contains(&f.name) {
                continue;
            }
            if let Some(t) = self.target_name(&f.name) {
                cols.insert(t.to_string(), v.clone());
            }
        }
        for (c, v) in &self.constants {
            cols.insert(c.clone(), Some(v.clone()));
        }
        for (c, e) in &self.computed {
            let v = e
                .eval(lookup)
                .map_err(|m| data_err(format!("{}.{c}: computed: {m}", target)))?;
            cols.insert(c.clone(), v);
        }
        for (c, d) in &self.defaults {
            let slot = cols.entry(c.clone()).or_insert(None);
            if slot.is_none() {
                *slot = Some(d.clone());
            }
        }
        Ok(cols)
    }

    /// Target key column → value, from the source key columns of `row` and constants.
    fn target_key_values(
        &self,
        ev: &ChangeEvent,
        row: &[Option<String>],
    ) -> Result<Vec<(String, Option<String>)>> {
        let mut out = vec![];
        for k in &ev.key_columns {
            let i = ev
                .fields
                .fields
                .iter()
                .position(|f| &f.name == k)
                .ok_or_else(|| data_err(format!("{}: key column {k} not in row", ev.table)))?;
            if let Some(t) = self.target_name(k) {
                out.push((t.to_string(), row[i].clone()));
            }
        }
        for (c, v) in &self.constants {
            out.push((c.clone(), Some(v.clone())));
        }
        Ok(out)
    }
}
