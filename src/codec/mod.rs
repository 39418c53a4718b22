//! Avro schemas and encodings for change events. Pure: no I/O.
//!
//! ```text
//!   relation metadata ──derive()──▶ TableSchema { key record, envelope record }
//!                                        │ registered as <topic>-key / <topic>-value
//!   row values (text) ──encode_*()──▶ Avro datum ──wire()──▶ 0x00 | schema id (BE u32) | datum
//! ```
//!
//! The envelope and source records come from `schemas/envelope.avsc` and `schemas/source.avsc`
//! (compiled in and validated with apache-avro at derivation). Avro names allow only
//! `[A-Za-z_][A-Za-z0-9_]*`: a column whose PostgreSQL name does not fit gets a sanitized Avro
//! name and keeps its exact name in the field attribute `pg_name`, so Unicode names survive byte
//! for byte.

pub mod binary;
pub mod types;

use apache_avro::Schema;
use serde_json::json;

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Op, TableId};
pub use types::PgKind;

pub const ENVELOPE_AVSC: &str = include_str!("../../schemas/envelope.avsc");
pub const SOURCE_AVSC: &str = include_str!("../../schemas/source.avsc");

/// Confluent wire-format magic byte.
pub const MAGIC: u8 = 0;

/// One captured column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Exact PostgreSQL column name.
    pub name: String,
    pub kind: PgKind,
    /// Part of the event key (primary key or configured key columns).
    pub key: bool,
    /// PostgreSQL's name for the type (`format_type`, e.g. `numeric(10,2)`, `jsonb`), carried
    /// as the field attribute `pg_type` so identity sinks can create faithful tables.
    pub pg_type: Option<String>,
}

/// The Avro view of one table version.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub table: TableId,
    pub columns: Vec<ColumnSpec>,
    /// Avro field name per column (same order as `columns`).
    pub avro_names: Vec<String>,
    pub key_json: String,
    pub value_json: String,
    pub key_schema: Schema,
    pub value_schema: Schema,
}

/// A valid Avro name from any string: invalid characters become `_`, a leading digit gets `_`.
pub fn avro_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The Avro namespace for a topic: each dot-separated part made a valid name.
pub fn avro_namespace(topic: &str) -> String {
    topic
        .split('.')
        .map(avro_name)
        .collect::<Vec<_>>()
        .join(".")
}

fn unique_names(cols: &[ColumnSpec]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    cols.iter()
        .map(|c| {
            let base = avro_name(&c.name);
            let mut name = base.clone();
            let mut n = 2;
            while !seen.insert(name.clone()) {
                name = format!("{base}_{n}");
                n += 1;
            }
            name
        })
        .collect()
}

fn field(col: &ColumnSpec, avro: &str, nullable: bool) -> serde_json::Value {
    let t = types::avro_type(&col.kind);
    let mut f = if nullable {
        json!({"name": avro, "type": ["null", t], "default": null})
    } else {
        json!({"name": avro, "type": t})
    };
    if avro != col.name {
        f["pg_name"] = json!(col.name);
    }
    if let Some(t) = &col.pg_type {
        f["pg_type"] = json!(t);
    }
    f
}

fn parse_schema(what: &str, json: &serde_json::Value) -> Result<Schema> {
    Schema::parse(json).map_err(|e| {
        Error::new(
            ErrorKind::Schema,
            format!("derived {what} schema is invalid: {e}"),
        )
    })
}

/// Derive key and envelope schemas for a table published to `topic`.
pub fn derive(table: &TableId, columns: Vec<ColumnSpec>, topic: &str) -> Result<TableSchema> {
    if !columns.iter().any(|c| c.key) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("table {table} has no key columns: add a primary key, configure source.key_columns.\"{table}\", or set REPLICA IDENTITY FULL"),
        ));
    }
    let ns = avro_namespace(topic);
    let names = unique_names(&columns);
    let key_fields: Vec<_> = columns
        .iter()
        .zip(&names)
        .filter(|(c, _)| c.key)
        .map(|(c, n)| field(c, n, false))
        .collect();
    let key = json!({"type": "record", "name": "Key", "namespace": ns, "fields": key_fields});
    let value_fields: Vec<_> = columns
        .iter()
        .zip(&names)
        .map(|(c, n)| field(c, n, true))
        .collect();
    let row = json!({"type": "record", "name": "Value", "namespace": ns, "fields": value_fields});

    let mut envelope: serde_json::Value = serde_json::from_str(ENVELOPE_AVSC)
        .map_err(|e| Error::internal(format!("schemas/envelope.avsc: {e}")))?;
    let source: serde_json::Value = serde_json::from_str(SOURCE_AVSC)
        .map_err(|e| Error::internal(format!("schemas/source.avsc: {e}")))?;
    envelope["namespace"] = json!(ns);
    let fields = envelope["fields"]
        .as_array_mut()
        .ok_or_else(|| Error::internal("schemas/envelope.avsc: no fields"))?;
    let mut defined = false;
    for f in fields.iter_mut() {
        if f["type"] == json!(["null", "Value"]) {
            if !defined {
                f["type"] = json!(["null", row.clone()]);
                defined = true;
            } else {
                f["type"] = json!(["null", format!("{ns}.Value")]);
            }
        } else if f["type"] == json!("cutover.Source") {
            f["type"] = source.clone();
        }
    }
    let key_schema = parse_schema("key", &key)?;
    let value_schema = parse_schema("value", &envelope)?;
    Ok(TableSchema {
        table: table.clone(),
        columns,
        avro_names: names,
        key_json: key.to_string(),
        value_json: envelope.to_string(),
        key_schema,
        value_schema,
    })
}

/// A column value as captured, inside a [`Row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// TOASTed and unchanged: not sent by the server.
    Unchanged,
    /// Present: `Row::bytes[start..end]` is its Avro binary encoding (the value's own type,
    /// without the nullable union's branch index).
    Value {
        start: u32,
        end: u32,
    },
}

/// One captured row, each present value already encoded as Avro binary in one buffer: the
/// event's key and envelope are then written by copying slices, with no value tree per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    bytes: Vec<u8>,
    cells: Vec<Cell>,
}

impl Row {
    pub fn with_columns(n: usize) -> Row {
        Row {
            bytes: Vec::with_capacity(n * 12),
            cells: Vec::with_capacity(n),
        }
    }

    pub fn push_null(&mut self) {
        self.cells.push(Cell::Null);
    }

    pub fn push_unchanged(&mut self) {
        self.cells.push(Cell::Unchanged);
    }

    /// Append a value given in PostgreSQL's text form (see [`types::write_text`]).
    pub fn push_text(&mut self, kind: &PgKind, text: &str) -> Result<()> {
        let start = self.bytes.len();
        if let Err(e) = types::write_text(kind, text, &mut self.bytes) {
            self.bytes.truncate(start);
            return Err(e);
        }
        self.cells.push(Cell::Value {
            start: start as u32,
            end: self.bytes.len() as u32,
        });
        Ok(())
    }

    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// The encoded value of a present cell.
    pub fn value(&self, cell: Cell) -> Option<&[u8]> {
        match cell {
            Cell::Value { start, end } => Some(&self.bytes[start as usize..end as usize]),
            _ => None,
        }
    }
}

/// The `source` block of an event.
#[derive(Debug, Clone)]
pub struct SourceInfo<'a> {
    pub pipeline: &'a str,
    pub db: &'a str,
    pub txid: Option<u32>,
    pub lsn: Option<u64>,
    pub commit_lsn: u64,
    pub seq: u64,
    pub commit_ts_us: i64,
    pub origin: Option<&'a str>,
    pub snapshot: bool,
}

impl TableSchema {
    /// The row record `Value` (every field `["null", T]`); a missing trailing cell is null.
    /// Unchanged TOAST columns are written as null and their names collected in `unchanged`.
    fn write_row<'a>(&'a self, out: &mut Vec<u8>, row: &Row, unchanged: &mut Vec<&'a str>) {
        for (i, col) in self.columns.iter().enumerate() {
            match row.cells.get(i).copied().unwrap_or(Cell::Null) {
                Cell::Null => binary::union(out, 0),
                Cell::Unchanged => {
                    unchanged.push(&col.name);
                    binary::union(out, 0)
                }
                c @ Cell::Value { .. } => {
                    binary::union(out, 1);
                    out.extend_from_slice(row.value(c).unwrap_or_default());
                }
            }
        }
    }

    /// The Avro key datum from a row (key columns only; they must be present).
    pub fn encode_key(&self, row: &Row) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(16);
        for (i, col) in self.columns.iter().enumerate() {
            if !col.key {
                continue;
            }
            match row.cells.get(i).and_then(|c| row.value(*c)) {
                Some(v) => out.extend_from_slice(v),
                None => {
                    return Err(Error::new(
                        ErrorKind::Data,
                        format!("{}.{}: key column has no value", self.table, col.name),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The Avro envelope datum (`schemas/envelope.avsc`, fields in its order).
    pub fn encode_value(
        &self,
        op: Op,
        before: Option<&Row>,
        after: Option<&Row>,
        source: &SourceInfo<'_>,
        ts_ms: i64,
    ) -> Vec<u8> {
        let size = |r: Option<&Row>| r.map_or(1, |r| r.bytes.len() + self.columns.len() + 1);
        let mut out = Vec::with_capacity(size(before) + size(after) + 96);
        let mut unchanged = Vec::new();
        let mut ignored = Vec::new();
        for (row, unchanged) in [(before, &mut ignored), (after, &mut unchanged)] {
            match row {
                None => binary::union(&mut out, 0),
                Some(r) => {
                    binary::union(&mut out, 1);
                    self.write_row(&mut out, r, unchanged);
                }
            }
        }
        // source (schemas/source.avsc)
        binary::string(&mut out, crate::observe::VERSION);
        binary::string(&mut out, "postgresql");
        binary::string(&mut out, source.pipeline);
        binary::string(&mut out, source.db);
        binary::string(&mut out, &self.table.schema);
        binary::string(&mut out, &self.table.name);
        binary::nullable_long(&mut out, source.txid.map(i64::from));
        binary::nullable_long(&mut out, source.lsn.map(|l| l as i64));
        binary::long(&mut out, source.commit_lsn as i64);
        binary::long(&mut out, source.seq as i64);
        binary::long(&mut out, source.commit_ts_us.div_euclid(1000));
        binary::long(&mut out, source.commit_ts_us);
        binary::nullable_string(&mut out, source.origin);
        binary::boolean(&mut out, source.snapshot);
        // op, ts_ms, unchanged_toast
        binary::string(&mut out, op.code());
        binary::long(&mut out, ts_ms);
        if !unchanged.is_empty() {
            binary::long(&mut out, unchanged.len() as i64);
            for name in unchanged {
                binary::string(&mut out, name);
            }
        }
        binary::long(&mut out, 0);
        out
    }
}

/// Frame a datum in the Confluent wire format.
pub fn wire(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Split a Confluent-framed message into (schema id, datum).
pub fn unwire(bytes: &[u8]) -> Result<(u32, &[u8])> {
    if bytes.len() < 5 || bytes[0] != MAGIC {
        return Err(Error::new(
            ErrorKind::Data,
            "not in Confluent wire format (magic byte 0 + 4-byte schema id)",
        ));
    }
    Ok((
        u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
        &bytes[5..],
    ))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod evolution_tests {
    use super::*;

    fn col(name: &str, kind: PgKind, key: bool) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            kind,
            key,
            pg_type: None,
        }
    }

    fn compatible(v1: Vec<ColumnSpec>, added: ColumnSpec) -> Vec<String> {
        let t = TableId::new("s", "products");
        let mut v2 = v1.clone();
        v2.push(added);
        let a = derive(&t, v1, "p.s.products").unwrap();
        let b = derive(&t, v2, "p.s.products").unwrap();
        crate::registry::Compatibility::Backward.check(&b.value_schema, &[&a.value_schema])
    }

    #[test]
    fn adding_a_column_is_backward_compatible() {
        let dec = |p, s| PgKind::Decimal {
            precision: p,
            scale: s,
        };
        let cases = [
            (
                vec![col("id", PgKind::Int, true), col("a", PgKind::Text, false)],
                col("b", PgKind::Int, false),
            ),
            (
                vec![col("id", PgKind::Int, true), col("a", PgKind::Text, false)],
                col("b", dec(4, 2), false),
            ),
            (
                vec![
                    col("sku", PgKind::Text, true),
                    col("a", PgKind::Text, false),
                ],
                col("b", PgKind::Int, false),
            ),
            (
                vec![col("id", PgKind::Int, true), col("p", dec(10, 2), false)],
                col("b", PgKind::Int, false),
            ),
        ];
        for (i, (v1, added)) in cases.into_iter().enumerate() {
            let r = compatible(v1, added);
            assert!(r.is_empty(), "case {i}: {r:?}");
        }
    }
}
