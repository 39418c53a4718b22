//! Reading one Avro binary datum by walking its writer schema (Avro 1.11 specification,
//! "Binary Encoding"), without `apache_avro::from_avro_datum`. Pure: no I/O.
//!
//! ```text
//!   writer schema (parsed once per schema id, cached by the decoder)
//!        │ walked field by field
//!   datum bytes ──▶ Datum::value(schema) ──▶ Value per cell ──▶ decode::render ──▶ PostgreSQL text
//! ```
//!
//! Why: `from_avro_datum` builds a `ResolvedSchema` (a table of every named type) for every
//! datum, 11 % of the sink's CPU, and a value tree for the whole envelope with a cloned name
//! per field (docs/PERFORMANCE.md). Here the only named type a cutover envelope references, its
//! row record (defined in `before`, referenced by `after`), is handed in once. Any other shape
//! (a `Ref` to something else, `map`, `duration`) is an error and the decoder falls back to
//! apache-avro for that record, so a foreign but valid datum still decodes.

use apache_avro::types::Value;
use apache_avro::Schema;

pub type Outcome<T> = std::result::Result<T, String>;

/// A cursor over one datum.
pub struct Datum<'a> {
    buf: &'a [u8],
    /// The row record, for `Ref`s to it.
    row: Option<&'a Schema>,
}

impl<'a> Datum<'a> {
    pub fn new(buf: &'a [u8], row: Option<&'a Schema>) -> Datum<'a> {
        Datum { buf, row }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Outcome<&'a [u8]> {
        if n > self.buf.len() {
            return Err(format!(
                "datum ends early: {n} bytes wanted, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A zig-zag varint (`int` and `long`).
    pub fn long(&mut self) -> Outcome<i64> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn int(&mut self) -> Outcome<i32> {
        let l = self.long()?;
        i32::try_from(l).map_err(|_| format!("int out of range: {l}"))
    }

    fn len(&mut self) -> Outcome<usize> {
        let l = self.long()?;
        usize::try_from(l).map_err(|_| format!("negative length {l}"))
    }

    pub fn bytes(&mut self) -> Outcome<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    pub fn string(&mut self) -> Outcome<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|e| format!("string is not UTF-8: {e}"))
    }

    /// Which branch of a union follows.
    pub fn branch<'s>(&mut self, schema: &'s Schema) -> Outcome<(u32, &'s Schema)> {
        let Schema::Union(u) = schema else {
            return Err("not a union".into());
        };
        let i = self.len()?;
        let s = u
            .variants()
            .get(i)
            .ok_or_else(|| format!("union branch {i} does not exist"))?;
        Ok((i as u32, s))
    }

    /// The record schema a row field's type names (inline or by reference).
    pub fn record(&self, schema: &'a Schema) -> Outcome<&'a Schema> {
        match schema {
            Schema::Record(_) => Ok(schema),
            Schema::Ref { name } => match self.row {
                Some(r @ Schema::Record(rs)) if rs.name == *name => Ok(r),
                _ => Err(format!("unknown named type {name}")),
            },
            _ => Err("not a record".into()),
        }
    }

    /// The value of `schema` at the cursor, as apache-avro's reader would produce it (logical
    /// types typed; a `uuid` as its string).
    pub fn value(&mut self, schema: &'a Schema) -> Outcome<Value> {
        Ok(match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => match self.take(1)?[0] {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                b => return Err(format!("boolean byte {b}")),
            },
            Schema::Int => Value::Int(self.int()?),
            Schema::Long => Value::Long(self.long()?),
            Schema::Float => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            Schema::Double => Value::Double(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            Schema::Bytes => Value::Bytes(self.bytes()?.to_vec()),
            Schema::String | Schema::Uuid => Value::String(self.string()?.to_string()),
            Schema::Decimal(d) => match d.inner.as_ref() {
                Schema::Fixed(f) => Value::Decimal(apache_avro::Decimal::from(self.take(f.size)?)),
                _ => Value::Decimal(apache_avro::Decimal::from(self.bytes()?)),
            },
            Schema::Date => Value::Date(self.int()?),
            Schema::TimeMillis => Value::TimeMillis(self.int()?),
            Schema::TimeMicros => Value::TimeMicros(self.long()?),
            Schema::TimestampMillis => Value::TimestampMillis(self.long()?),
            Schema::TimestampMicros => Value::TimestampMicros(self.long()?),
            Schema::TimestampNanos => Value::TimestampNanos(self.long()?),
            Schema::LocalTimestampMillis => Value::LocalTimestampMillis(self.long()?),
            Schema::LocalTimestampMicros => Value::LocalTimestampMicros(self.long()?),
            Schema::LocalTimestampNanos => Value::LocalTimestampNanos(self.long()?),
            Schema::Enum(e) => {
                let i = self.len()?;
                let s = e.symbols.get(i).ok_or_else(|| format!("enum index {i}"))?;
                Value::Enum(i as u32, s.clone())
            }
            Schema::Fixed(f) => Value::Fixed(f.size, self.take(f.size)?.to_vec()),
            Schema::Array(a) => {
                let mut items = Vec::new();
                loop {
                    let n = self.long()?;
                    if n == 0 {
                        break;
                    }
                    if n < 0 {
                        self.long()?; // a negative count is followed by the block's size
                    }
                    for _ in 0..n.unsigned_abs() {
                        items.push(self.value(&a.items)?);
                    }
                }
                Value::Array(items)
            }
            Schema::Union(_) => {
                let (i, s) = self.branch(schema)?;
                Value::Union(i, Box::new(self.value(s)?))
            }
            Schema::Record(r) => Value::Record(
                r.fields
                    .iter()
                    .map(|f| Ok((f.name.clone(), self.value(&f.schema)?)))
                    .collect::<Outcome<_>>()?,
            ),
            Schema::Ref { .. } => {
                let r = self.record(schema)?;
                self.value(r)?
            }
            other => return Err(format!("unsupported writer type {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(schema: &str, v: Value) -> (Value, Value) {
        let s = Schema::parse_str(schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&s, v).unwrap();
        let want = apache_avro::from_avro_datum(&s, &mut &bytes[..], None).unwrap();
        let mut d = Datum::new(&bytes, None);
        let got = d.value(&s).unwrap();
        assert_eq!(d.remaining(), 0);
        (got, want)
    }

    proptest! {
        #[test]
        fn reads_what_apache_avro_reads(l in any::<i64>(), i in any::<i32>(), f in any::<f64>(),
                                       s in ".{0,30}", b in proptest::collection::vec(any::<u8>(), 0..20),
                                       n in proptest::option::of(any::<i64>())) {
            let schema = r#"{"type":"record","name":"R","fields":[
                {"name":"l","type":"long"},{"name":"i","type":"int"},{"name":"f","type":"double"},
                {"name":"s","type":"string"},{"name":"b","type":"bytes"},
                {"name":"n","type":["null","long"]},
                {"name":"a","type":{"type":"array","items":["null","string"]}},
                {"name":"d","type":{"type":"int","logicalType":"date"}},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;
            let v = Value::Record(vec![
                ("l".into(), Value::Long(l)), ("i".into(), Value::Int(i)), ("f".into(), Value::Double(f)),
                ("s".into(), Value::String(s.clone())), ("b".into(), Value::Bytes(b)),
                ("n".into(), match n { None => Value::Union(0, Box::new(Value::Null)), Some(x) => Value::Union(1, Box::new(Value::Long(x))) }),
                ("a".into(), Value::Array(vec![Value::Union(1, Box::new(Value::String(s))), Value::Union(0, Box::new(Value::Null))])),
                ("d".into(), Value::Date(i)), ("t".into(), Value::TimestampMicros(l)),
            ]);
            let (got, want) = roundtrip(schema, v);
            if f.is_nan() {
                prop_assert_eq!(format!("{got:?}").len(), format!("{want:?}").len());
            } else {
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn truncated_and_malformed_datums_are_errors() {
        let s = Schema::parse_str(r#"["null","string"]"#).unwrap();
        assert!(Datum::new(&[2, 10, b'a'], None).value(&s).is_err()); // 5 bytes promised, 1 given
        assert!(Datum::new(&[8], None).value(&s).is_err()); // branch 4
        assert!(Datum::new(&[0xff; 11], None).value(&Schema::Long).is_err());
        assert!(Datum::new(&[3], None).value(&Schema::Bytes).is_err()); // length -2
    }
}
