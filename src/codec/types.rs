//! PostgreSQL types → Avro types, and text-format values → Avro values. Pure: no I/O.
//!
//! | PostgreSQL | Avro | notes |
//! |---|---|---|
//! | `int2`, `int4` | `int` | |
//! | `int8`, `oid` | `long` | |
//! | `numeric(p,s)` | `bytes` logical `decimal(p,s)` | `NaN` is not representable: the event is refused (Data error naming the column) |
//! | `numeric` (unconstrained) | `string` | exact text, incl. `NaN`, `Infinity` |
//! | `float4` / `float8` | `float` / `double` | `NaN`, `±Infinity` kept |
//! | `bool` | `boolean` | |
//! | `text`, `varchar`, `bpchar`, `name`, `char` | `string` | bytes preserved (UTF-8) |
//! | `bytea` | `bytes` | |
//! | `uuid` | `string` logical `uuid` | |
//! | `date` | `int` logical `date` | days since 1970-01-01; `±infinity` → i32 max/min |
//! | `time` | `long` logical `time-micros` | |
//! | `timestamp` | `long` logical `local-timestamp-micros` | `±infinity` → i64 max/min |
//! | `timestamptz` | `long` logical `timestamp-micros` | UTC micros; `±infinity` → i64 max/min |
//! | `interval` | `string` | ISO 8601 (`P1Y2M3DT4H5M6S`); Avro `duration` cannot hold micros |
//! | `json`, `jsonb` | `string` | the JSON text |
//! | one-dimensional arrays of the above | `array` of nullable element | multi-dimensional arrays: Data error |
//! | enums | `string` | label text |
//! | domains | their base type | |
//! | anything else (`money`, `inet`, `point`, ranges, `xml`, `timetz`, …) | `string` | PostgreSQL's text form |
//!
//! Every column of a row record is a union `["null", T]` with default `null`, so a column added
//! later is backward compatible and an unchanged TOAST value can be left out (see envelope).

use apache_avro::types::Value;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde_json::json;

use super::binary;
use crate::error::{Error, ErrorKind, Result};

/// How a column's values are represented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgKind {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Unconstrained numeric, interval, json, enums, other types: the text form.
    Text,
    Bytes,
    Uuid,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Array(Box<PgKind>),
}

/// Well-known built-in type OIDs. `None` for user types (enums, domains, composite, arrays of
/// those): the capture resolves them from `pg_type` and calls [`kind_for_catalog`].
pub fn builtin_kind(oid: u32, typmod: i32) -> Option<PgKind> {
    Some(match oid {
        16 => PgKind::Bool,
        21 | 23 => PgKind::Int,
        20 | 26 => PgKind::Long,
        700 => PgKind::Float,
        701 => PgKind::Double,
        1700 => numeric_kind(typmod),
        17 => PgKind::Bytes,
        2950 => PgKind::Uuid,
        1082 => PgKind::Date,
        1083 => PgKind::Time,
        1114 => PgKind::Timestamp,
        1184 => PgKind::Timestamptz,
        // text-like and text-represented built-ins
        18 | 19 | 25 | 114 | 142 | 1042 | 1043 | 1186 | 1266 | 3802 | 790 | 869 | 650 | 829
        | 774 | 600 | 601 | 602 | 603 | 604 | 718 | 628 | 1560 | 1562 | 3614 | 3615 | 3904
        | 3906 | 3908 | 3910 | 3912 | 3926 | 4451 | 4532 | 2278 | 24 | 2205 | 2206 | 3734
        | 3769 | 4089 | 4096 | 28 | 29 | 5038 => PgKind::Text,
        // arrays of built-ins: element oid via the table below
        _ => {
            let elem = builtin_array_elem(oid)?;
            // typmod of an array column applies to its elements
            PgKind::Array(Box::new(builtin_kind(elem, typmod)?))
        }
    })
}

fn builtin_array_elem(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1002 => 18,
        1003 => 19,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1028 => 26,
        1021 => 700,
        1022 => 701,
        1231 => 1700,
        1009 => 25,
        1014 => 1042,
        1015 => 1043,
        2951 => 2950,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        199 => 114,
        3807 => 3802,
        _ => return None,
    })
}

/// Kind for a user type described by `pg_type`: `typtype` (`e` enum, `d` domain, `b` base,
/// …), `typcategory` (`A` array), and the resolved kind of its element/base type.
pub fn kind_for_catalog(typtype: u8, typcategory: u8, inner: Option<PgKind>) -> PgKind {
    match (typtype, typcategory, inner) {
        (b'd', _, Some(base)) => base,
        (_, b'A', Some(elem)) if !matches!(elem, PgKind::Array(_)) => PgKind::Array(Box::new(elem)),
        _ => PgKind::Text,
    }
}

fn numeric_kind(typmod: i32) -> PgKind {
    if typmod < 4 {
        return PgKind::Text;
    }
    let t = (typmod - 4) as u32;
    let precision = (t >> 16) & 0xffff;
    let scale = t & 0xffff;
    // Negative scale (PG 15 allows numeric(3,-2)) or scale > precision: keep exact text.
    if scale > precision || scale > 1000 || precision == 0 {
        return PgKind::Text;
    }
    PgKind::Decimal { precision, scale }
}

/// The Avro type (JSON) of a non-null value of `kind`.
pub fn avro_type(kind: &PgKind) -> serde_json::Value {
    match kind {
        PgKind::Bool => json!("boolean"),
        PgKind::Int => json!("int"),
        PgKind::Long => json!("long"),
        PgKind::Float => json!("float"),
        PgKind::Double => json!("double"),
        PgKind::Decimal { precision, scale } => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale})
        }
        PgKind::Text => json!("string"),
        PgKind::Bytes => json!("bytes"),
        PgKind::Uuid => json!({"type": "string", "logicalType": "uuid"}),
        PgKind::Date => json!({"type": "int", "logicalType": "date"}),
        PgKind::Time => json!({"type": "long", "logicalType": "time-micros"}),
        PgKind::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
        PgKind::Timestamptz => json!({"type": "long", "logicalType": "timestamp-micros"}),
        PgKind::Array(elem) => json!({"type": "array", "items": ["null", avro_type(elem)]}),
    }
}

fn bad(kind: &PgKind, text: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Data,
        format!(
            "value {} is not a valid {kind:?}: {why}",
            crate::error::row_value(text)
        ),
    )
}

/// Write PostgreSQL's text output (session settings `DateStyle=ISO`, `TimeZone=UTC`,
/// `IntervalStyle=iso_8601`, `extra_float_digits=3`) as the Avro binary encoding of
/// [`avro_type`]`(kind)`, appended to `out`. On error `out` may hold a partial value: the
/// caller discards the row.
pub fn write_text(kind: &PgKind, text: &str, out: &mut Vec<u8>) -> Result<()> {
    match kind {
        PgKind::Bool => match text {
            "t" | "true" => binary::boolean(out, true),
            "f" | "false" => binary::boolean(out, false),
            _ => return Err(bad(kind, text, "expected t or f")),
        },
        PgKind::Int => {
            let v: i32 = text.parse().map_err(|e| bad(kind, text, e))?;
            binary::long(out, i64::from(v))
        }
        PgKind::Long => binary::long(out, text.parse().map_err(|e| bad(kind, text, e))?),
        PgKind::Float => binary::float(
            out,
            parse_float(text).map_err(|e| bad(kind, text, e))? as f32,
        ),
        PgKind::Double => binary::double(out, parse_float(text).map_err(|e| bad(kind, text, e))?),
        PgKind::Decimal { scale, .. } => binary::bytes(
            out,
            &decimal_bytes(text, *scale).map_err(|e| bad(kind, text, e))?,
        ),
        PgKind::Text | PgKind::Uuid => binary::string(out, text),
        PgKind::Bytes => binary::bytes(out, &parse_bytea(text).map_err(|e| bad(kind, text, e))?),
        PgKind::Date => binary::long(
            out,
            i64::from(parse_date(text).map_err(|e| bad(kind, text, e))?),
        ),
        PgKind::Time => binary::long(out, parse_time(text).map_err(|e| bad(kind, text, e))?),
        PgKind::Timestamp => binary::long(
            out,
            parse_timestamp(text, false).map_err(|e| bad(kind, text, e))?,
        ),
        PgKind::Timestamptz => binary::long(
            out,
            parse_timestamp(text, true).map_err(|e| bad(kind, text, e))?,
        ),
        PgKind::Array(elem) => {
            let items = parse_array(text).map_err(|e| bad(kind, text, e))?;
            if !items.is_empty() {
                binary::long(out, items.len() as i64);
                for item in items {
                    match item {
                        None => binary::union(out, 0),
                        Some(s) => {
                            binary::union(out, 1);
                            write_text(elem, &s, out)?;
                        }
                    }
                }
            }
            binary::long(out, 0);
        }
    }
    Ok(())
}

/// The Avro value [`write_text`] encodes, as apache-avro reads it back with [`avro_type`]
/// (logical types included: a `date` is `Value::Date`, a `uuid` is `Value::Uuid`). For tests and
/// tools; the capture path never builds values.
pub fn text_to_avro(kind: &PgKind, text: &str) -> Result<Value> {
    let mut datum = Vec::new();
    write_text(kind, text, &mut datum)?;
    let schema = apache_avro::Schema::parse(&avro_type(kind))
        .map_err(|e| Error::internal(format!("avro_type({kind:?}): {e}")))?;
    apache_avro::from_avro_datum(&schema, &mut &datum[..], None)
        .map_err(|e| Error::internal(format!("reading back {kind:?}: {e}")))
}

fn parse_float(s: &str) -> std::result::Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        _ => s.parse::<f64>().map_err(|e| e.to_string()),
    }
}

/// Two's-complement big-endian bytes of the unscaled value of a decimal text at `scale`.
pub fn decimal_bytes(text: &str, scale: u32) -> std::result::Result<Vec<u8>, String> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if body == "NaN" || body.contains("Infinity") {
        return Err("NaN and Infinity have no decimal representation".into());
    }
    let (int_part, frac_part) = body.split_once('.').unwrap_or((body, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err("empty number".into());
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err("not a decimal number".into());
    }
    if frac_part.len() > scale as usize {
        return Err(format!("more than {scale} fractional digits"));
    }
    // Little-endian base-2^32 magnitude of the unscaled integer.
    let mut mag: Vec<u32> = vec![0];
    let digits = int_part
        .bytes()
        .chain(frac_part.bytes())
        .chain(std::iter::repeat_n(b'0', scale as usize - frac_part.len()));
    for d in digits {
        let mut carry = (d - b'0') as u64;
        for limb in mag.iter_mut() {
            let v = (*limb as u64) * 10 + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            mag.push(carry as u32);
        }
    }
    let mut be: Vec<u8> = mag.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    // Minimal two's complement: keep one leading 0 byte for positive values with high bit set.
    while be.len() > 1 && be[0] == 0 && be[1] & 0x80 == 0 {
        be.remove(0);
    }
    if be[0] & 0x80 != 0 {
        be.insert(0, 0);
    }
    if neg && be.iter().any(|b| *b != 0) {
        for b in be.iter_mut() {
            *b = !*b;
        }
        for b in be.iter_mut().rev() {
            let (v, overflow) = b.overflowing_add(1);
            *b = v;
            if !overflow {
                break;
            }
        }
        while be.len() > 1 && be[0] == 0xff && be[1] & 0x80 != 0 {
            be.remove(0);
        }
    }
    Ok(be)
}

fn parse_bytea(s: &str) -> std::result::Result<Vec<u8>, String> {
    let hex = s
        .strip_prefix("\\x")
        .ok_or("expected hex format (bytea_output = hex)")?;
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

const UNIX_EPOCH_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("valid date"),
};

/// PostgreSQL prints years before 1 AD with a ` BC` suffix: split it off.
fn split_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(d) => (d, true),
        None => (s, false),
    }
}

/// Move a parsed date or timestamp to its BC year if needed (year 1 BC is ISO year 0).
fn with_era<T: chrono::Datelike>(v: T, bc: bool) -> std::result::Result<T, String> {
    if !bc {
        return Ok(v);
    }
    let year = 1 - v.year();
    v.with_year(year)
        .ok_or_else(|| "BC date out of range".to_string())
}

fn parse_date(s: &str) -> std::result::Result<i32, String> {
    match s {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let (s, bc) = split_bc(s);
    let d = with_era(
        NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| e.to_string())?,
        bc,
    )?;
    Ok((d - UNIX_EPOCH_DATE).num_days() as i32)
}

fn parse_time(s: &str) -> std::result::Result<i64, String> {
    if s == "24:00:00" {
        return Ok(86_400_000_000);
    }
    let t = NaiveTime::parse_from_str(s, "%H:%M:%S%.f").map_err(|e| e.to_string())?;
    Ok((t - NaiveTime::MIN)
        .num_microseconds()
        .ok_or("time out of range")?)
}

fn parse_timestamp(s: &str, tz: bool) -> std::result::Result<i64, String> {
    match s {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (s, bc) = split_bc(s);
    let (naive, offset_secs) = if tz {
        // "2024-01-02 03:04:05.123456+00" or "+05:30" or "+05:30:15"
        let idx = s
            .rfind(['+', '-'])
            .filter(|i| *i > 10)
            .ok_or("missing UTC offset")?;
        let (ts, off) = s.split_at(idx);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let parts: Vec<i64> = off[1..]
            .split(':')
            .map(|p| p.parse::<i64>().map_err(|e| e.to_string()))
            .collect::<std::result::Result<_, _>>()?;
        let secs = parts.first().copied().unwrap_or(0) * 3600
            + parts.get(1).copied().unwrap_or(0) * 60
            + parts.get(2).copied().unwrap_or(0);
        (ts, sign * secs)
    } else {
        (s, 0)
    };
    let dt = with_era(
        NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S%.f").map_err(|e| e.to_string())?,
        bc,
    )?;
    let micros = dt.and_utc().timestamp_micros();
    Ok(micros - offset_secs * 1_000_000)
}

/// Parse a one-dimensional PostgreSQL array literal (`{1,NULL,"a,b","x\"y"}`) into elements.
pub fn parse_array(s: &str) -> std::result::Result<Vec<Option<String>>, String> {
    // Optional dimension decoration: "[0:2]={1,2,3}"
    let s = match s.find("={") {
        Some(i) if s.starts_with('[') => &s[i + 1..],
        _ => s,
    };
    let inner = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("array literal must be enclosed in braces")?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let chars: Vec<char> = inner.chars().collect();
    let mut i = 0;
    loop {
        if chars.get(i) == Some(&'{') {
            return Err("multi-dimensional arrays are not supported".into());
        }
        if chars.get(i) == Some(&'"') {
            i += 1;
            let mut v = String::new();
            loop {
                match chars.get(i) {
                    None => return Err("unterminated quoted element".into()),
                    Some('\\') => {
                        v.push(*chars.get(i + 1).ok_or("dangling escape")?);
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        v.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(Some(v));
        } else {
            let start = i;
            while i < chars.len() && chars[i] != ',' {
                i += 1;
            }
            let v: String = chars[start..i].iter().collect();
            let v = v.trim();
            out.push(if v.eq_ignore_ascii_case("NULL") {
                None
            } else {
                Some(v.to_string())
            });
        }
        match chars.get(i) {
            None => break,
            Some(',') => i += 1,
            Some(c) => return Err(format!("unexpected {c:?} after element")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_map_as_documented() {
        assert_eq!(builtin_kind(23, -1), Some(PgKind::Int));
        assert_eq!(builtin_kind(20, -1), Some(PgKind::Long));
        // numeric(10,2): typmod = (10 << 16 | 2) + 4
        assert_eq!(
            builtin_kind(1700, (10 << 16 | 2) + 4),
            Some(PgKind::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(builtin_kind(1700, -1), Some(PgKind::Text));
        assert_eq!(
            builtin_kind(1007, -1),
            Some(PgKind::Array(Box::new(PgKind::Int)))
        );
        assert_eq!(builtin_kind(3802, -1), Some(PgKind::Text));
        assert_eq!(builtin_kind(99999, -1), None);
        assert_eq!(kind_for_catalog(b'e', b'E', None), PgKind::Text);
        assert_eq!(
            kind_for_catalog(b'd', b'N', Some(PgKind::Long)),
            PgKind::Long
        );
        assert_eq!(
            kind_for_catalog(b'b', b'A', Some(PgKind::Text)),
            PgKind::Array(Box::new(PgKind::Text))
        );
    }

    #[test]
    fn decimals_encode_twos_complement() {
        assert_eq!(decimal_bytes("1.00", 2).unwrap(), vec![100]);
        assert_eq!(decimal_bytes("1.28", 2).unwrap(), vec![0, 128]);
        assert_eq!(decimal_bytes("-1.28", 2).unwrap(), vec![0x80]);
        assert_eq!(decimal_bytes("-1.29", 2).unwrap(), vec![0xff, 0x7f]);
        assert_eq!(decimal_bytes("-2.56", 2).unwrap(), vec![0xff, 0x00]);
        assert_eq!(decimal_bytes("-0.01", 2).unwrap(), vec![0xff]);
        assert_eq!(decimal_bytes("0", 2).unwrap(), vec![0]);
        assert_eq!(
            decimal_bytes("12345678901234567890123.5", 1).unwrap().len(),
            10
        );
        assert!(decimal_bytes("NaN", 2).is_err());
        assert!(decimal_bytes("1.234", 2).is_err());
    }

    #[test]
    fn temporal_values_convert_to_epoch_units() {
        assert_eq!(parse_date("1970-01-02").unwrap(), 1);
        assert_eq!(parse_date("infinity").unwrap(), i32::MAX);
        assert!(parse_date("0001-01-01 BC").unwrap() < parse_date("0001-01-01").unwrap());
        assert!(
            parse_timestamp("0044-03-15 12:00:00+00 BC", true).unwrap()
                < parse_timestamp("0001-01-01 00:00:00+00", true).unwrap()
        );
        assert_eq!(parse_time("00:00:01.5").unwrap(), 1_500_000);
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01", false).unwrap(),
            1_000_000
        );
        assert_eq!(parse_timestamp("1970-01-01 01:00:00+01", true).unwrap(), 0);
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:00-05:30", true).unwrap(),
            19_800_000_000
        );
        assert_eq!(
            parse_timestamp("2024-03-01 12:00:00.000001+00", true).unwrap() % 10,
            1
        );
    }

    #[test]
    fn arrays_parse_quotes_nulls_and_refuse_nesting() {
        assert_eq!(
            parse_array(r#"{1,NULL,"a,b","x\"y",""}"#).unwrap(),
            vec![
                Some("1".into()),
                None,
                Some("a,b".into()),
                Some("x\"y".into()),
                Some("".into())
            ]
        );
        assert_eq!(parse_array("{}").unwrap(), vec![]);
        assert_eq!(parse_array("[0:1]={7,8}").unwrap().len(), 2);
        assert!(parse_array("{{1,2},{3,4}}").is_err());
        let v = text_to_avro(&PgKind::Array(Box::new(PgKind::Int)), "{1,NULL}").unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Union(1, Box::new(Value::Int(1))),
                Value::Union(0, Box::new(Value::Null))
            ])
        );
    }

    #[test]
    fn bad_values_are_data_errors_naming_the_value() {
        // Row values stay out of messages unless observe.log_row_values says otherwise.
        let e = text_to_avro(&PgKind::Int, "12x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Data);
        assert!(!e.to_string().contains("12x"), "{e}");
        assert!(e.to_string().contains("withheld"), "{e}");
        crate::error::show_row_values(true);
        let e = text_to_avro(&PgKind::Int, "12x").unwrap_err();
        crate::error::show_row_values(false);
        assert!(e.to_string().contains("\"12x\""), "{e}");
        assert!(text_to_avro(&PgKind::Bytes, "abc").is_err());
        assert_eq!(
            text_to_avro(&PgKind::Bytes, "\\x00ff").unwrap(),
            Value::Bytes(vec![0, 255])
        );
        assert!(
            matches!(text_to_avro(&PgKind::Double, "NaN").unwrap(), Value::Double(d) if d.is_nan())
        );
    }
}
