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
mod tests {
    use super::*;
    use apache_avro::types::Value;

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

    fn row(kinds: &[PgKind], cells: &[Option<&str>]) -> Row {
        let mut r = Row::with_columns(cells.len());
        for (k, c) in kinds.iter().zip(cells) {
            match c {
                None => r.push_null(),
                Some("<toast>") => r.push_unchanged(),
                Some(t) => r.push_text(k, t).unwrap(),
            }
        }
        r
    }

    fn src() -> SourceInfo<'static> {
        SourceInfo {
            pipeline: "p",
            db: "app",
            txid: Some(9),
            lsn: Some(100),
            commit_lsn: 200,
            seq: 3,
            commit_ts_us: 1_700_000_000_123_456,
            origin: None,
            snapshot: false,
        }
    }

    #[test]
    fn events_encode_and_decode_with_the_schema() {
        let s = derive(&TableId::new("public", "t"), cols(), "cutover.public.t").unwrap();
        let kinds: Vec<_> = s.columns.iter().map(|c| c.kind.clone()).collect();
        let after = row(&kinds, &[Some("7"), Some("Zoë"), Some("<toast>"), None]);
        let datum = s.encode_value(Op::Update, None, Some(&after), &src(), 5);
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
        assert!(s.encode_key(&row(&kinds, &[None])).is_err());
        assert!(s.encode_key(&Row::default()).is_err());
    }

    #[test]
    fn a_value_that_does_not_parse_leaves_the_row_as_it_was() {
        let mut r = Row::with_columns(2);
        r.push_text(&PgKind::Long, "1").unwrap();
        let before = r.clone();
        let e = r.push_text(&PgKind::Int, "12x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert_eq!(r, before);
    }

    /// The value tree cutover built per event before it wrote Avro directly, kept as the
    /// oracle: apache-avro encodes it, validated against the derived schema.
    fn oracle_row(s: &TableSchema, texts: &[Option<String>], unchanged: &mut Vec<Value>) -> Value {
        let fields = s
            .columns
            .iter()
            .zip(&s.avro_names)
            .zip(texts)
            .map(|((col, n), t)| {
                let v = match t.as_deref() {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some("<toast>") => {
                        unchanged.push(Value::String(col.name.clone()));
                        Value::Union(0, Box::new(Value::Null))
                    }
                    Some(t) => {
                        Value::Union(1, Box::new(types::text_to_avro(&col.kind, t).unwrap()))
                    }
                };
                (n.clone(), v)
            })
            .collect();
        Value::Record(fields)
    }

    fn oracle(
        s: &TableSchema,
        op: Op,
        before: Option<&[Option<String>]>,
        after: Option<&[Option<String>]>,
        src: &SourceInfo<'_>,
        ts_ms: i64,
    ) -> Vec<u8> {
        let mut unchanged = Vec::new();
        let mut ignored = Vec::new();
        let opt = |r: Option<&[Option<String>]>, u: &mut Vec<Value>| match r {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(t) => Value::Union(1, Box::new(oracle_row(s, t, u))),
        };
        let before = opt(before, &mut ignored);
        let after = opt(after, &mut unchanged);
        let nl = |v: Option<i64>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(x) => Value::Union(1, Box::new(Value::Long(x))),
        };
        let source = Value::Record(vec![
            (
                "version".into(),
                Value::String(crate::observe::VERSION.into()),
            ),
            ("connector".into(), Value::String("postgresql".into())),
            ("name".into(), Value::String(src.pipeline.into())),
            ("db".into(), Value::String(src.db.into())),
            ("schema".into(), Value::String(s.table.schema.clone())),
            ("table".into(), Value::String(s.table.name.clone())),
            ("txid".into(), nl(src.txid.map(i64::from))),
            ("lsn".into(), nl(src.lsn.map(|l| l as i64))),
            ("commit_lsn".into(), Value::Long(src.commit_lsn as i64)),
            ("seq".into(), Value::Long(src.seq as i64)),
            (
                "ts_ms".into(),
                Value::Long(src.commit_ts_us.div_euclid(1000)),
            ),
            ("commit_ts_us".into(), Value::Long(src.commit_ts_us)),
            (
                "origin".into(),
                match src.origin {
                    None => Value::Union(0, Box::new(Value::Null)),
                    Some(o) => Value::Union(1, Box::new(Value::String(o.into()))),
                },
            ),
            ("snapshot".into(), Value::Boolean(src.snapshot)),
        ]);
        let env = Value::Record(vec![
            ("before".into(), before),
            ("after".into(), after),
            ("source".into(), source),
            ("op".into(), Value::String(op.code().into())),
            ("ts_ms".into(), Value::Long(ts_ms)),
            ("unchanged_toast".into(), Value::Array(unchanged)),
        ]);
        apache_avro::to_avro_datum(&s.value_schema, env).unwrap()
    }

    fn every_kind() -> Vec<(PgKind, Vec<&'static str>)> {
        use PgKind::*;
        vec![
            (Bool, vec!["t", "f"]),
            (Int, vec!["0", "-1", "2147483647", "-2147483648"]),
            (Long, vec!["9223372036854775807", "-42"]),
            (Float, vec!["1.5", "NaN", "-Infinity"]),
            (Double, vec!["3.141592653589793", "Infinity", "-0"]),
            (
                Decimal {
                    precision: 10,
                    scale: 2,
                },
                vec!["0.00", "-1.28", "12345678.99"],
            ),
            (Text, vec!["", "Zoë ✓", "a,b\"c"]),
            (Bytes, vec!["\\x", "\\x00ff7f"]),
            (Uuid, vec!["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
            (Date, vec!["1970-01-02", "infinity", "0044-03-15 BC"]),
            (Time, vec!["00:00:01.5", "23:59:59.999999"]),
            (Timestamp, vec!["2024-03-01 12:00:00.000001", "-infinity"]),
            (
                Timestamptz,
                vec!["1970-01-01 01:00:00+01", "2024-02-29 23:59:59.5-05:30"],
            ),
            (Array(Box::new(Int)), vec!["{}", "{1,NULL,3}"]),
            (Array(Box::new(Text)), vec![r#"{"a,b",NULL,""}"#]),
        ]
    }

    proptest::proptest! {
        /// Byte for byte what apache-avro writes for the same event, for every kind, nulls,
        /// unchanged TOAST values, keys of any kind, every op and source field.
        #[test]
        fn direct_encoding_equals_apache_avro(
            picks in proptest::collection::vec((0usize..15, 0usize..4, 0u8..4), 1..8),
            op in 0usize..5, has_before in proptest::bool::ANY, origin in proptest::option::of("[a-z:]{0,12}"),
            txid in proptest::option::of(proptest::num::u32::ANY), seq in 0u64..1_000_000,
            commit_ts_us in proptest::num::i64::ANY, ts_ms in proptest::num::i64::ANY,
        ) {
            let kinds = every_kind();
            let columns: Vec<ColumnSpec> = picks.iter().enumerate().map(|(i, (k, _, _))| ColumnSpec {
                name: format!("c{i}"),
                kind: kinds[*k].0.clone(),
                key: i == 0,
                pg_type: None,
            }).collect();
            let s = derive(&TableId::new("s", "t"), columns, "p.s.t").unwrap();
            // state 0: null (not for the key), 1: unchanged TOAST (not for the key), else a value
            let texts: Vec<Option<String>> = picks.iter().enumerate().map(|(i, (k, v, state))| {
                let samples = &kinds[*k].1;
                match state {
                    0 if i > 0 => None,
                    1 if i > 0 => Some("<toast>".to_string()),
                    _ => Some(samples[v % samples.len()].to_string()),
                }
            }).collect();
            let kinds_of: Vec<_> = s.columns.iter().map(|c| c.kind.clone()).collect();
            let refs: Vec<Option<&str>> = texts.iter().map(|t| t.as_deref()).collect();
            let r = row(&kinds_of, &refs);
            let op = [Op::Create, Op::Update, Op::Delete, Op::Truncate, Op::Read][op];
            let mut source = src();
            source.origin = origin.as_deref();
            source.txid = txid;
            source.seq = seq;
            source.commit_ts_us = commit_ts_us;
            let before = has_before.then_some(&r);
            let want = oracle(&s, op, before.map(|_| &texts[..]), Some(&texts[..]), &source, ts_ms);
            proptest::prop_assert_eq!(s.encode_value(op, before, Some(&r), &source, ts_ms), want);
            let key = s.encode_key(&r).unwrap();
            let key_value = apache_avro::from_avro_datum(&s.key_schema, &mut &key[..], None).unwrap();
            proptest::prop_assert_eq!(
                apache_avro::to_avro_datum(&s.key_schema, key_value).unwrap(),
                key
            );
        }
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
