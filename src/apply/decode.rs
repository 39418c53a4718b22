//! Kafka record → [`ChangeEvent`]: Confluent wire format, writer schema by id from the registry
//! (cached), Avro datum → each column in PostgreSQL's text input form.
//!
//! Text is the one representation every target type accepts (the target casts it with its own
//! column types), so the codec's mapping is reversed here exactly once:
//!
//! | Avro | PostgreSQL text |
//! |---|---|
//! | `boolean` | `t` / `f` |
//! | `int`, `long`, `float`, `double` | decimal; `NaN`, `Infinity`, `-Infinity` |
//! | `bytes` logical `decimal(p,s)` | exact decimal with `s` fraction digits |
//! | `bytes` | `\x` + hex |
//! | `int` logical `date` | `YYYY-MM-DD` (`BC` suffix before year 1; i32 max/min → `±infinity`) |
//! | `long` logical `time-micros` | `HH:MM:SS.ffffff` |
//! | `long` logical `(local-)timestamp-micros` | ISO timestamp (`+00` for timestamptz; i64 max/min → `±infinity`) |
//! | `array` | array literal `{...}` with quoted elements |
//! | `string` (text, uuid, json, interval, enum, other) | as is |

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;

use super::datum::Datum;
use crate::codec;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Op, TableId};
use crate::registry::RegistryClient;

/// One column of a captured row schema.
#[derive(Debug, Clone)]
pub struct FieldInfo {
    /// PostgreSQL column name (`pg_name` attribute, else the Avro name).
    pub name: String,
    /// Source type as `format_type` printed it, if the producer recorded it.
    pub pg_type: Option<String>,
    /// The Avro type of the value (without the null branch).
    pub avro: Json,
}

/// A decoded writer schema.
#[derive(Debug)]
pub struct WriterSchema {
    pub schema: Schema,
    /// Row fields (value schemas) or key fields (key schemas).
    pub fields: Vec<FieldInfo>,
    /// The row record (value schemas: defined inline in `before`), for [`Datum`]; `None`
    /// for key schemas.
    pub row: Option<Schema>,
}

impl WriterSchema {
    /// Parse schema `id`'s text: a cutover key record (`key`) or envelope.
    pub fn parse(id: u32, text: &str, key: bool) -> Result<WriterSchema> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| data_err(format!("schema {id} is not JSON: {e}")))?;
        let schema = Schema::parse_str(text)
            .map_err(|e| data_err(format!("schema {id} does not parse: {e}")))?;
        let record = if key {
            Some(&json)
        } else {
            // The row record is defined inline at its first use (`before`); `after` names it.
            json["fields"].as_array().and_then(|fs| {
                fs.iter()
                    .filter(|f| f["name"] == "before" || f["name"] == "after")
                    .filter_map(|f| f["type"].as_array())
                    .find_map(|u| u.iter().find(|t| t.is_object()))
            })
        };
        let fields = match record.and_then(|r| r["fields"].as_array()) {
            Some(fs) => fs
                .iter()
                .map(|f| FieldInfo {
                    name: f["pg_name"]
                        .as_str()
                        .or(f["name"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                    pg_type: f["pg_type"].as_str().map(String::from),
                    avro: strip_null(&f["type"]).clone(),
                })
                .collect(),
            None => return Err(data_err(format!("schema {id} is not a cutover envelope"))),
        };
        let row = match (&schema, key) {
            (Schema::Record(env), false) => env
                .fields
                .iter()
                .filter(|f| f.name == "before" || f.name == "after")
                .find_map(|f| match &f.schema {
                    Schema::Union(u) => u
                        .variants()
                        .iter()
                        .find(|v| matches!(v, Schema::Record(_)))
                        .cloned(),
                    _ => None,
                }),
            _ => None,
        };
        Ok(WriterSchema {
            schema,
            fields,
            row,
        })
    }
}

/// A row: one text value (or NULL) per field of its schema, in field order.
pub type Row = Vec<Option<String>>;

/// A decoded change event.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub table: TableId,
    pub op: Op,
    /// Column layout of `before`/`after` (shared by every event of a schema version).
    pub fields: Arc<WriterSchema>,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// Columns of `after` whose TOASTed value was not sent: leave them untouched.
    pub unchanged: Vec<String>,
    /// Key column names (from the key schema); empty for truncates.
    pub key_columns: Vec<String>,
    pub commit_lsn: i64,
    pub seq: i64,
    pub commit_ts_us: i64,
}

impl ChangeEvent {
    /// The values of the key columns (from `after`, else `before`), in key order.
    pub fn key_values(&self) -> Option<Vec<Option<String>>> {
        let row = self.after.as_ref().or(self.before.as_ref())?;
        self.key_columns
            .iter()
            .map(|k| {
                self.fields
                    .fields
                    .iter()
                    .position(|f| &f.name == k)
                    .map(|i| row[i].clone())
            })
            .collect()
    }
}

/// Decodes records, caching writer schemas by id.
pub struct Decoder {
    registry: RegistryClient,
    cache: HashMap<u32, Arc<WriterSchema>>,
}

fn data_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Data, msg)
}

impl Decoder {
    pub fn new(registry: RegistryClient) -> Self {
        Decoder {
            registry,
            cache: HashMap::new(),
        }
    }

    async fn writer(&mut self, id: u32, key: bool) -> Result<Arc<WriterSchema>> {
        if let Some(s) = self.cache.get(&id) {
            return Ok(s.clone());
        }
        // An id the registry does not know is the record's fault (written by another
        // registry's producer, or forged): dead-lettered like any undecodable record, not a
        // reason to stop the sink, which would crash-loop on it.
        let text = self.registry.schema_by_id(id).await.map_err(|e| {
            if e.kind() == crate::error::ErrorKind::NotFound {
                data_err(format!("schema id {id} is not in the registry: {e}"))
            } else {
                e
            }
        })?;
        let w = Arc::new(WriterSchema::parse(id, &text, key)?);
        self.cache.insert(id, w.clone());
        Ok(w)
    }

    /// Decode one record (key may be absent: truncates).
    pub async fn decode(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<ChangeEvent> {
        let (vid, datum) = codec::unwire(value).map_err(|e| e.context("value"))?;
        let vs = self.writer(vid, false).await?;
        let key_columns = match key {
            Some(k) => {
                let (kid, _) = codec::unwire(k).map_err(|e| e.context("key"))?;
                self.writer(kid, true)
                    .await?
                    .fields
                    .iter()
                    .map(|f| f.name.clone())
                    .collect()
            }
            None => vec![],
        };
        let ev = read_envelope(datum, vid, &vs, key_columns)?;
        if ev.op != Op::Truncate && ev.key_values().is_none() {
            return Err(data_err(format!("{}: event has no row", ev.table)));
        }
        Ok(ev)
    }
}

/// The envelope of one value datum: read directly by walking the writer schema (see
/// [`datum`]); a shape that reader does not know falls back to apache-avro's reader, so both
/// give the same event or the same error.
pub fn read_envelope(
    datum: &[u8],
    id: u32,
    vs: &Arc<WriterSchema>,
    key_columns: Vec<String>,
) -> Result<ChangeEvent> {
    match direct_envelope(datum, vs, &key_columns) {
        Ok(ev) => Ok(ev),
        Err(_) => {
            let v = apache_avro::from_avro_datum(&vs.schema, &mut &datum[..], None)
                .map_err(|e| data_err(format!("value does not match schema {id}: {e}")))?;
            envelope(v, vs, key_columns)
        }
    }
}

fn direct_envelope(
    datum: &[u8],
    vs: &Arc<WriterSchema>,
    key_columns: &[String],
) -> std::result::Result<ChangeEvent, String> {
    let Schema::Record(env) = &vs.schema else {
        return Err("value schema is not a record".into());
    };
    let mut d = Datum::new(datum, vs.row.as_ref());
    let (mut before, mut after, mut op, mut unchanged, mut src) = (None, None, None, vec![], None);
    for f in &env.fields {
        match f.name.as_str() {
            "before" | "after" => {
                let (_, branch) = d.branch(&f.schema)?;
                let row = match branch {
                    Schema::Null => None,
                    s => {
                        let record = d.record(s)?;
                        Some(read_row(&mut d, record, vs)?)
                    }
                };
                if f.name == "before" {
                    before = row;
                } else {
                    after = row;
                }
            }
            "op" => op = Some(d.string()?.to_string()),
            "unchanged_toast" => match d.value(&f.schema)? {
                Value::Array(a) => {
                    unchanged = a
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::String(s) => Some(s),
                            _ => None,
                        })
                        .collect()
                }
                _ => return Err("unchanged_toast is not an array".into()),
            },
            "source" => src = Some(d.value(&f.schema)?),
            _ => {
                d.value(&f.schema)?;
            }
        }
    }
    if d.remaining() != 0 {
        return Err(format!("{} bytes after the envelope", d.remaining()));
    }
    let Some(Value::Record(src)) = src else {
        return Err("event has no source".into());
    };
    let src = Source::of(&src)?;
    Ok(ChangeEvent {
        table: src.table,
        op: op_of(op.as_deref().ok_or("event has no op")?).ok_or("unknown op")?,
        fields: vs.clone(),
        before,
        after,
        unchanged,
        key_columns: key_columns.to_vec(),
        commit_lsn: src.commit_lsn,
        seq: src.seq,
        commit_ts_us: src.commit_ts_us,
    })
}

/// What a sink reads from an event's `source` block (both readers share it).
struct Source {
    table: TableId,
    commit_lsn: i64,
    seq: i64,
    commit_ts_us: i64,
}

impl Source {
    fn of(fields: &[(String, Value)]) -> std::result::Result<Source, String> {
        let get = |n: &str| {
            fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| unwrap_union(v))
        };
        let long = |n: &str| match get(n) {
            Some(Value::Long(l)) => Ok(*l),
            _ => Err(format!("source.{n} missing")),
        };
        let string = |n: &str| match get(n) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(format!("source.{n} missing")),
        };
        Ok(Source {
            table: TableId::new(string("schema")?, string("table")?),
            commit_lsn: long("commit_lsn")?,
            seq: long("seq")?,
            commit_ts_us: long("commit_ts_us")?,
        })
    }
}

/// One row record, each field rendered to PostgreSQL text with the writer's field types.
fn read_row<'a>(
    d: &mut Datum<'a>,
    record: &'a Schema,
    vs: &WriterSchema,
) -> std::result::Result<Row, String> {
    let Schema::Record(r) = record else {
        return Err("row is not a record".into());
    };
    r.fields
        .iter()
        .zip(&vs.fields)
        .map(|(f, info)| {
            let v = d.value(&f.schema)?;
            render(&v, &info.avro).map_err(|e| format!("column {}: {e}", info.name))
        })
        .collect()
}

fn op_of(code: &str) -> Option<Op> {
    Some(match code {
        "c" => Op::Create,
        "u" => Op::Update,
        "d" => Op::Delete,
        "t" => Op::Truncate,
        "r" => Op::Read,
        _ => return None,
    })
}

fn strip_null(t: &Json) -> &Json {
    match t.as_array() {
        Some(u) => u.iter().find(|b| *b != "null").unwrap_or(t),
        None => t,
    }
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, b) => unwrap_union(b),
        other => other,
    }
}

/// The Debezium-style envelope (`before`, `after`, `op`, `unchanged_toast`, `source`) of a
/// decoded value, rendered to PostgreSQL text with the writer schema's fields.
fn envelope(v: Value, vs: &Arc<WriterSchema>, key_columns: Vec<String>) -> Result<ChangeEvent> {
    let Value::Record(env) = v else {
        return Err(data_err("value is not a record"));
    };
    let get = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v);
    let row = |v: Option<&Value>| -> Result<Option<Row>> {
        match v.map(unwrap_union) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Record(fs)) => fs
                .iter()
                .zip(&vs.fields)
                .map(|((_, v), f)| {
                    render(v, &f.avro).map_err(|e| data_err(format!("column {}: {e}", f.name)))
                })
                .collect::<Result<Row>>()
                .map(Some),
            Some(_) => Err(data_err("row is not a record")),
        }
    };
    let before = row(get("before"))?;
    let after = row(get("after"))?;
    let op = match get("op") {
        Some(Value::String(s)) => op_of(s).ok_or_else(|| data_err(format!("unknown op {s:?}")))?,
        _ => return Err(data_err("event has no op")),
    };
    let unchanged = match get("unchanged_toast") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    let Some(Value::Record(src)) = get("source") else {
        return Err(data_err("event has no source"));
    };
    let src = Source::of(src).map_err(data_err)?;
    Ok(ChangeEvent {
        table: src.table,
        op,
        fields: vs.clone(),
        before,
        after,
        unchanged,
        key_columns,
        commit_lsn: src.commit_lsn,
        seq: src.seq,
        commit_ts_us: src.commit_ts_us,
    })
}

/// Render an Avro value as PostgreSQL text input (`None` = SQL NULL).
///
/// Long on purpose: one arm per Avro type and logical type the codec writes, each next to the
/// PostgreSQL text form it must produce; splitting it would scatter that table.
pub fn render(v: &Value, avro: &Json) -> std::result::Result<Option<String>, String> {
    let avro = strip_null(avro);
    // Raw ints/longs/bytes with a logical type (as the codec builds them) read like the typed
    // values apache-avro's reader produces.
    let typed;
    let v = match (unwrap_union(v), avro["logicalType"].as_str()) {
        (Value::Int(d), Some("date")) => {
            typed = Value::Date(*d);
            &typed
        }
        (Value::Long(t), Some("time-micros")) => {
            typed = Value::TimeMicros(*t);
            &typed
        }
        (Value::Long(t), Some("timestamp-micros")) => {
            typed = Value::TimestampMicros(*t);
            &typed
        }
        (Value::Long(t), Some("local-timestamp-micros")) => {
            typed = Value::LocalTimestampMicros(*t);
            &typed
        }
        (Value::Bytes(b), Some("decimal")) => {
            typed = Value::Decimal(apache_avro::Decimal::from(b.clone()));
            &typed
        }
        (other, _) => other,
    };
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Boolean(b) => if *b { "t" } else { "f" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Long(l) => l.to_string(),
        Value::Float(f) => float(*f as f64, Some(*f)),
        Value::Double(d) => float(*d, None),
        Value::String(s) | Value::Enum(_, s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for x in b {
                s.push_str(&format!("{x:02x}"));
            }
            s
        }
        Value::Decimal(d) => {
            let bytes: Vec<u8> = d.try_into().map_err(|e| format!("decimal: {e}"))?;
            let scale = avro["scale"].as_u64().unwrap_or(0) as usize;
            decimal_text(&bytes, scale)
        }
        Value::BigDecimal(d) => d.to_string(),
        Value::Date(days) => match *days {
            i32::MAX => "infinity".into(),
            i32::MIN => "-infinity".into(),
            d => {
                let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
                    .and_then(|e| e.checked_add_signed(chrono::Duration::days(d as i64)))
                    .ok_or("date out of range")?;
                era(&date.format("%Y-%m-%d").to_string(), date.year_ce())
            }
        },
        Value::TimeMicros(us) => {
            let t = chrono::NaiveTime::from_num_seconds_from_midnight_opt(
                (us / 1_000_000) as u32,
                ((us % 1_000_000) * 1000) as u32,
            )
            .ok_or("time out of range")?;
            t.format("%H:%M:%S%.6f").to_string()
        }
        Value::TimeMillis(ms) => (*ms as i64 * 1000).to_string(),
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            let tz = matches!(v, Value::TimestampMicros(_));
            match *us {
                i64::MAX => "infinity".into(),
                i64::MIN => "-infinity".into(),
                us => {
                    let dt = chrono::DateTime::from_timestamp_micros(us)
                        .ok_or("timestamp out of range")?
                        .naive_utc();
                    if let Some(mut body) = timestamp_ce(&dt) {
                        if tz {
                            body.push_str("+00");
                        }
                        return Ok(Some(body));
                    }
                    let body = dt.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
                    let body = era(&body, dt.date().year_ce());
                    if tz {
                        // "2024-01-01 10:00:00.000000+00" / "... BC" needs the zone before BC.
                        match body.strip_suffix(" BC") {
                            Some(b) => format!("{b}+00 BC"),
                            None => format!("{body}+00"),
                        }
                    } else {
                        body
                    }
                }
            }
        }
        Value::Array(items) => {
            let elem = &avro["items"];
            let mut s = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                match render(item, elem)? {
                    None => s.push_str("NULL"),
                    Some(t) => {
                        s.push('"');
                        for c in t.chars() {
                            if c == '"' || c == '\\' {
                                s.push('\\');
                            }
                            s.push(c);
                        }
                        s.push('"');
                    }
                }
            }
            s.push('}');
            s
        }
        other => return Err(format!("unsupported Avro value {other:?}")),
    }))
}

use chrono::{Datelike, Timelike};

/// `YYYY-MM-DD HH:MM:SS.ffffff` for years 1–9999, without chrono's format-string
/// interpreter (`perf`: 5 % of the sink's CPU on a table with one timestamptz column); other
/// years go through `format` and [`era`].
fn timestamp_ce(dt: &chrono::NaiveDateTime) -> Option<String> {
    use std::fmt::Write;
    let year = dt.year();
    if !(1..=9999).contains(&year) {
        return None;
    }
    let mut s = String::with_capacity(29);
    let _ = write!(
        s,
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.nanosecond() / 1000
    );
    Some(s)
}

/// chrono prints year 0 / negative years astronomically; PostgreSQL wants `YYYY-... BC`.
fn era(formatted: &str, (ce, year): (bool, u32)) -> String {
    if ce {
        return formatted.to_string();
    }
    // Strip chrono's leading sign and year, put the BC year (1 BC = year 0) back.
    let rest = formatted
        .trim_start_matches('-')
        .split_once('-')
        .map(|(_, r)| r)
        .unwrap_or("");
    format!("{year:04}-{rest} BC")
}

fn float(d: f64, single: Option<f32>) -> String {
    if d.is_nan() {
        "NaN".into()
    } else if d.is_infinite() {
        if d > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if let Some(f) = single {
        f.to_string()
    } else {
        d.to_string()
    }
}

/// Two's-complement big-endian unscaled integer → decimal text with `scale` fraction digits.
pub fn decimal_text(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // Magnitude as big-endian bytes.
    let mut mag: Vec<u8> = if negative {
        let mut inv: Vec<u8> = bytes.iter().map(|b| !b).collect();
        for b in inv.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
        inv
    } else {
        bytes.to_vec()
    };
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push((b'0' + rem as u8) as char);
    }
    while digits.len() <= scale {
        digits.push('0');
    }
    digits.reverse();
    let int_len = digits.len() - scale;
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    s.extend(&digits[..int_len]);
    if scale > 0 {
        s.push('.');
        s.extend(&digits[int_len..]);
    }
    s
}

#[cfg(test)]
mod tests;
