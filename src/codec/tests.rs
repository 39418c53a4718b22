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
                Some(t) => Value::Union(1, Box::new(types::text_to_avro(&col.kind, t).unwrap())),
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
