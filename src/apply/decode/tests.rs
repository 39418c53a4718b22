use super::*;
use crate::codec::types::{decimal_bytes, text_to_avro, PgKind};
use serde_json::json;

fn round(kind: PgKind, text: &str) -> Option<String> {
    let avro = crate::codec::types::avro_type(&kind);
    let v = text_to_avro(&kind, text).unwrap();
    render(&v, &avro).unwrap()
}

#[test]
fn decimals_round_trip_exactly() {
    for (t, s) in [
        ("0.00", 2),
        ("12345678.91", 2),
        ("-0.05", 2),
        ("-12345678901234567890123456789.123456789", 9),
        ("7", 0),
    ] {
        let b = decimal_bytes(t, s).unwrap();
        assert_eq!(decimal_text(&b, s as usize), t);
    }
}

#[test]
fn codec_values_render_as_postgres_input() {
    let cases = [
        (PgKind::Bool, "t", "t"),
        (PgKind::Long, "-42", "-42"),
        (PgKind::Double, "NaN", "NaN"),
        (PgKind::Double, "-Infinity", "-Infinity"),
        (PgKind::Double, "2.25", "2.25"),
        (PgKind::Bytes, "\\x00ff", "\\x00ff"),
        (PgKind::Date, "2024-02-29", "2024-02-29"),
        (PgKind::Date, "0044-03-15 BC", "0044-03-15 BC"),
        (PgKind::Date, "infinity", "infinity"),
        (PgKind::Time, "13:14:15.123456", "13:14:15.123456"),
        (
            PgKind::Timestamp,
            "2024-02-29 13:14:15.5",
            "2024-02-29 13:14:15.500000",
        ),
        (
            PgKind::Timestamptz,
            "2024-02-29 11:14:15.5+00",
            "2024-02-29 11:14:15.500000+00",
        ),
        (PgKind::Timestamptz, "-infinity", "-infinity"),
        (
            PgKind::Uuid,
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ),
        (
            PgKind::Array(Box::new(PgKind::Text)),
            "{\"x,y\",NULL,\"q\\\"\"}",
            "{\"x,y\",NULL,\"q\\\"\"}",
        ),
    ];
    for (k, input, want) in cases {
        assert_eq!(round(k.clone(), input).as_deref(), Some(want), "{k:?}");
    }
    assert_eq!(
        render(&Value::Union(0, Box::new(Value::Null)), &json!("string")).unwrap(),
        None
    );
}

/// The direct reader and apache-avro's reader give the same event, for rows of every
/// kind the codec writes (nulls, unchanged TOAST, arrays, BC dates, infinities), for
/// every op; a truncated datum is an error on both.
#[test]
fn direct_envelope_reads_what_apache_avro_reads() {
    use crate::codec::{self, ColumnSpec, Row, SourceInfo};
    let cols: Vec<(PgKind, &[&str])> = vec![
        (PgKind::Long, &["7", "-9"]),
        (PgKind::Text, &["Zoë ✓", ""]),
        (
            PgKind::Decimal {
                precision: 10,
                scale: 2,
            },
            &["-1.28", "12345678.99"],
        ),
        (
            PgKind::Timestamptz,
            &["2024-02-29 23:59:59.5-05:30", "infinity"],
        ),
        (PgKind::Date, &["0044-03-15 BC", "1970-01-01"]),
        (PgKind::Array(Box::new(PgKind::Int)), &["{1,NULL,3}", "{}"]),
        (
            PgKind::Uuid,
            &[
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
            ],
        ),
        (PgKind::Bytes, &["\\x00ff", "\\x"]),
        (PgKind::Double, &["NaN", "2.5"]),
        (PgKind::Bool, &["t", "f"]),
    ];
    let specs: Vec<ColumnSpec> = cols
        .iter()
        .enumerate()
        .map(|(i, (k, _))| ColumnSpec {
            name: format!("c{i}"),
            kind: k.clone(),
            key: i == 0,
            pg_type: None,
        })
        .collect();
    let t = TableId::new("public", "t");
    let s = codec::derive(&t, specs, "p.public.t").unwrap();
    let ws = Arc::new(WriterSchema::parse(1, &s.value_json, false).unwrap());
    assert!(ws.row.is_some());
    for variant in 0..4 {
        let mut r = Row::with_columns(cols.len());
        for (i, (k, samples)) in cols.iter().enumerate() {
            match (variant + i) % 4 {
                0 if i > 0 => r.push_null(),
                1 if i > 0 => r.push_unchanged(),
                n => r.push_text(k, samples[n % 2]).unwrap(),
            }
        }
        let src = SourceInfo {
            pipeline: "p",
            db: "app",
            txid: Some(3),
            lsn: None,
            commit_lsn: 99,
            seq: variant as u64,
            commit_ts_us: 1_700_000_000_000_001,
            origin: Some("o"),
            snapshot: variant == 3,
        };
        let op = [Op::Create, Op::Update, Op::Delete, Op::Read][variant];
        let (b, a) = match op {
            Op::Delete => (Some(&r), None),
            Op::Update => (Some(&r), Some(&r)),
            _ => (None, Some(&r)),
        };
        let datum = s.encode_value(op, b, a, &src, 5);
        let keys = vec!["c0".to_string()];
        let direct = direct_envelope(&datum, &ws, &keys).unwrap();
        let v = apache_avro::from_avro_datum(&ws.schema, &mut &datum[..], None).unwrap();
        let oracle = envelope(v, &ws, keys.clone()).unwrap();
        let shown = |e: &ChangeEvent| {
            format!(
                "{} {:?} {:?} {:?} {:?} {:?} {} {} {}",
                e.table,
                e.op,
                e.before,
                e.after,
                e.unchanged,
                e.key_columns,
                e.commit_lsn,
                e.seq,
                e.commit_ts_us
            )
        };
        assert_eq!(shown(&direct), shown(&oracle), "variant {variant}");
        assert!(direct_envelope(&datum[..datum.len() - 1], &ws, &keys).is_err());
        assert!(read_envelope(&datum[..datum.len() - 1], 1, &ws, keys).is_err());
    }
}

proptest::proptest! {
    /// The hand-written timestamp text is exactly chrono's `%Y-%m-%d %H:%M:%S%.6f` for every
    /// instant of years 1–9999, and steps aside outside them.
    #[test]
    fn timestamp_text_equals_chronos_format(us in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
        let dt = chrono::DateTime::from_timestamp_micros(us).unwrap().naive_utc();
        proptest::prop_assert_eq!(
            timestamp_ce(&dt),
            Some(dt.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        );
    }
}

#[test]
fn timestamp_text_outside_years_1_to_9999_is_left_to_the_era_path() {
    for us in [-62_135_596_800_000_001i64, 253_402_300_800_000_000] {
        let dt = chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .naive_utc();
        assert_eq!(timestamp_ce(&dt), None);
    }
    // And render still writes BC dates the PostgreSQL way.
    let bc = render(
        &Value::TimestampMicros(-62_135_596_800_000_001),
        &json!({"type": "long", "logicalType": "timestamp-micros"}),
    )
    .unwrap()
    .unwrap();
    assert_eq!(bc, "0001-12-31 23:59:59.999999+00 BC");
}
