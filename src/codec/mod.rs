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

pub mod types;

use apache_avro::types::Value;
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

/// A column value as captured.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// TOASTed and unchanged: not sent by the server.
    Unchanged,
    Value(Value),
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
    fn row(&self, cells: &[Cell]) -> (Value, Vec<String>) {
        let mut unchanged = Vec::new();
        let fields = self
            .avro_names
            .iter()
            .zip(cells.iter().chain(std::iter::repeat(&Cell::Null)))
            .zip(&self.columns)
            .map(|((n, c), col)| {
                let v = match c {
                    Cell::Null => Value::Union(0, Box::new(Value::Null)),
                    Cell::Unchanged => {
                        unchanged.push(col.name.clone());
                        Value::Union(0, Box::new(Value::Null))
                    }
                    Cell::Value(v) => Value::Union(1, Box::new(v.clone())),
                };
                (n.clone(), v)
            })
            .collect();
        (Value::Record(fields), unchanged)
    }

    /// The Avro key datum from a row's cells (key columns only; they must be present).
    pub fn encode_key(&self, cells: &[Cell]) -> Result<Vec<u8>> {
        let mut fields = Vec::new();
        for ((col, n), c) in self.columns.iter().zip(&self.avro_names).zip(cells) {
            if !col.key {
                continue;
            }
            match c {
                Cell::Value(v) => fields.push((n.clone(), v.clone())),
                _ => {
                    return Err(Error::new(
                        ErrorKind::Data,
                        format!("{}.{}: key column has no value", self.table, col.name),
                    ))
                }
            }
        }
        apache_avro::to_avro_datum(&self.key_schema, Value::Record(fields)).map_err(|e| {
            Error::new(
                ErrorKind::Data,
                format!("{}: key does not fit its schema: {e}", self.table),
            )
        })
    }

    /// The Avro envelope datum.
    pub fn encode_value(
        &self,
        op: Op,
        before: Option<&[Cell]>,
        after: Option<&[Cell]>,
        source: &SourceInfo<'_>,
        ts_ms: i64,
    ) -> Result<Vec<u8>> {
        let opt = |cells: Option<&[Cell]>| match cells {
            None => (Value::Union(0, Box::new(Value::Null)), vec![]),
            Some(c) => {
                let (r, u) = self.row(c);
                (Value::Union(1, Box::new(r)), u)
            }
        };
        let (before_v, _) = opt(before);
        let (after_v, unchanged) = opt(after);
        let nullable_long = |v: Option<i64>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(x) => Value::Union(1, Box::new(Value::Long(x))),
        };
        let src = Value::Record(vec![
            (
                "version".into(),
                Value::String(crate::observe::VERSION.into()),
            ),
            ("connector".into(), Value::String("postgresql".into())),
            ("name".into(), Value::String(source.pipeline.into())),
            ("db".into(), Value::String(source.db.into())),
            ("schema".into(), Value::String(self.table.schema.clone())),
            ("table".into(), Value::String(self.table.name.clone())),
            ("txid".into(), nullable_long(source.txid.map(i64::from))),
            ("lsn".into(), nullable_long(source.lsn.map(|l| l as i64))),
            ("commit_lsn".into(), Value::Long(source.commit_lsn as i64)),
            ("seq".into(), Value::Long(source.seq as i64)),
            (
                "ts_ms".into(),
                Value::Long(source.commit_ts_us.div_euclid(1000)),
            ),
            ("commit_ts_us".into(), Value::Long(source.commit_ts_us)),
            (
                "origin".into(),
                match source.origin {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(o) => Value::Union(1, Box::new(Value::String(o.into()))),
                },
            ),
            ("snapshot".into(), Value::Boolean(source.snapshot)),
        ]);
        let env = Value::Record(vec![
            ("before".into(), before_v),
            ("after".into(), after_v),
            ("source".into(), src),
            ("op".into(), Value::String(op.code().into())),
            ("ts_ms".into(), Value::Long(ts_ms)),
            (
                "unchanged_toast".into(),
                Value::Array(unchanged.into_iter().map(Value::String).collect()),
            ),
        ]);
        apache_avro::to_avro_datum(&self.value_schema, env).map_err(|e| {
            Error::new(
                ErrorKind::Data,
                format!("{}: event does not fit its schema: {e}", self.table),
            )
        })
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
mod tests {
    use super::*;

    fn cols() -> Vec<ColumnSpec> {
        vec![
            ColumnSpec {
                name: "id".into(),
                kind: PgKind::Long,
                key: true,
                pg_type: None,
            },
            ColumnSpec {
                name: "prénom".into(),
                kind: PgKind::Text,
                key: false,
                pg_type: None,
            },
            ColumnSpec {
                name: "prnom".into(),
                kind: PgKind::Text,
                key: false,
                pg_type: None,
            },
            ColumnSpec {
                name: "1st".into(),
                kind: PgKind::Decimal {
                    precision: 10,
                    scale: 2,
                },
                key: false,
                pg_type: None,
            },
        ]
    }

    #[test]
    fn derived_schemas_are_valid_and_keep_pg_names() {
        let t = TableId::new("public", "kunden_ä");
        let s = derive(&t, cols(), "cutover.public.kunden_ä").unwrap();
        assert_eq!(s.avro_names, ["id", "pr_nom", "prnom", "_1st"]);
        assert!(s.value_json.contains("\"pg_name\":\"prénom\""));
        assert!(s
            .value_json
            .contains("\"namespace\":\"cutover.public.kunden__\""));
        assert!(s.key_json.contains("\"name\":\"id\""));
    }

    #[test]
    fn collisions_get_suffixes() {
        let c = vec![
            ColumnSpec {
                name: "a-b".into(),
                kind: PgKind::Text,
                key: true,
                pg_type: None,
            },
            ColumnSpec {
                name: "a_b".into(),
                kind: PgKind::Text,
                key: false,
                pg_type: None,
            },
        ];
        let s = derive(&TableId::new("s", "t"), c, "p.s.t").unwrap();
        assert_eq!(s.avro_names, ["a_b", "a_b_2"]);
    }

    #[test]
    fn table_without_key_is_refused_with_guidance() {
        let c = vec![ColumnSpec {
            name: "a".into(),
            kind: PgKind::Text,
            key: false,
            pg_type: None,
        }];
        let e = derive(&TableId::new("s", "t"), c, "p.s.t").unwrap_err();
        assert!(e.to_string().contains("source.key_columns"), "{e}");
    }

    #[test]
    fn events_encode_and_decode_with_the_schema() {
        let s = derive(&TableId::new("public", "t"), cols(), "cutover.public.t").unwrap();
        let after = vec![
            Cell::Value(Value::Long(7)),
            Cell::Value(Value::String("Zoë".into())),
            Cell::Unchanged,
            Cell::Null,
        ];
        let src = SourceInfo {
            pipeline: "p",
            db: "app",
            txid: Some(9),
            lsn: Some(100),
            commit_lsn: 200,
            seq: 3,
            commit_ts_us: 1_700_000_000_123_456,
            origin: None,
            snapshot: false,
        };
        let datum = s
            .encode_value(Op::Update, None, Some(&after), &src, 5)
            .unwrap();
        let framed = wire(42, &datum);
        let (id, d) = unwire(&framed).unwrap();
        assert_eq!(id, 42);
        let v = apache_avro::from_avro_datum(&s.value_schema, &mut &d[..], None).unwrap();
        let Value::Record(fields) = v else { panic!() };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("op"), Value::String("u".into()));
        assert_eq!(
            get("unchanged_toast"),
            Value::Array(vec![Value::String("prnom".into())])
        );
        let Value::Record(src) = get("source") else {
            panic!()
        };
        assert!(src.contains(&("seq".into(), Value::Long(3))));
        assert!(src.contains(&("ts_ms".into(), Value::Long(1_700_000_000_123))));
        let key = s.encode_key(&after).unwrap();
        assert_eq!(
            apache_avro::from_avro_datum(&s.key_schema, &mut &key[..], None).unwrap(),
            Value::Record(vec![("id".into(), Value::Long(7))])
        );
        assert!(s.encode_key(&[Cell::Null]).is_err());
    }
}

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
