//! Avro binary encoding, written straight into a byte buffer (Avro 1.11 specification,
//! "Binary Encoding"). Pure: no I/O, no schema lookups.
//!
//! ```text
//!   int, long      zig-zag varint            -1 → 01, 1 → 02, 64 → 80 01
//!   float, double  4 / 8 bytes little-endian
//!   boolean        one byte 00 / 01
//!   bytes, string  long length, then the bytes (strings are UTF-8)
//!   union          long branch index, then the branch's encoding
//!   array          blocks: long count, the items; a count of 0 ends it
//!   record         its fields in schema order, nothing between them
//! ```
//!
//! The capture hot path writes every event through these functions instead of building an
//! `apache_avro::types::Value` tree and letting `to_avro_datum` validate and resolve it per
//! event (28 % of capture CPU before, docs/PERFORMANCE.md). The caller owns the schema walk:
//! `codec::TableSchema` derives the schema and writes in the same order, and the tests decode
//! what it writes with apache-avro against the registered schema, byte for byte.

/// A zig-zag varint `long` (also `int`: Avro encodes both the same way).
pub fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub fn boolean(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

pub fn float(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn double(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// `bytes`, and `string` given as UTF-8 bytes.
pub fn bytes(out: &mut Vec<u8>, v: &[u8]) {
    long(out, v.len() as i64);
    out.extend_from_slice(v);
}

pub fn string(out: &mut Vec<u8>, v: &str) {
    bytes(out, v.as_bytes());
}

/// The branch index of a union; the branch's own encoding follows.
pub fn union(out: &mut Vec<u8>, branch: u8) {
    out.push(branch << 1);
}

/// `["null", "string"]` from an optional string.
pub fn nullable_string(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => union(out, 0),
        Some(s) => {
            union(out, 1);
            string(out, s);
        }
    }
}

/// `["null", "long"]` from an optional long.
pub fn nullable_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => union(out, 0),
        Some(x) => {
            union(out, 1);
            long(out, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use apache_avro::Schema;
    use proptest::prelude::*;

    fn avro(schema: &str, v: Value) -> Vec<u8> {
        apache_avro::to_avro_datum(&Schema::parse_str(schema).unwrap(), v).unwrap()
    }

    #[test]
    fn varints_match_the_specification_table() {
        for (v, want) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut o = Vec::new();
            long(&mut o, v);
            assert_eq!(o, want, "{v}");
        }
    }

    proptest! {
        #[test]
        fn primitives_equal_apache_avro(l in any::<i64>(), i in any::<i32>(), f in any::<f32>(),
                                        d in any::<f64>(), b in any::<bool>(), s in ".{0,40}",
                                        raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut o = Vec::new();
            long(&mut o, l);
            prop_assert_eq!(&o, &avro("\"long\"", Value::Long(l)));
            o.clear(); long(&mut o, i64::from(i));
            prop_assert_eq!(&o, &avro("\"int\"", Value::Int(i)));
            o.clear(); float(&mut o, f);
            prop_assert_eq!(&o, &avro("\"float\"", Value::Float(f)));
            o.clear(); double(&mut o, d);
            prop_assert_eq!(&o, &avro("\"double\"", Value::Double(d)));
            o.clear(); boolean(&mut o, b);
            prop_assert_eq!(&o, &avro("\"boolean\"", Value::Boolean(b)));
            o.clear(); string(&mut o, &s);
            prop_assert_eq!(&o, &avro("\"string\"", Value::String(s.clone())));
            o.clear(); bytes(&mut o, &raw);
            prop_assert_eq!(&o, &avro("\"bytes\"", Value::Bytes(raw.clone())));
            o.clear(); nullable_string(&mut o, Some(&s));
            prop_assert_eq!(&o, &avro("[\"null\",\"string\"]", Value::Union(1, Box::new(Value::String(s.clone())))));
            o.clear(); nullable_long(&mut o, None);
            prop_assert_eq!(&o, &avro("[\"null\",\"long\"]", Value::Union(0, Box::new(Value::Null))));
        }
    }
}
