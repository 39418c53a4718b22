//! Unit and property tests of batch planning: no database, no broker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::apply::decode::{FieldInfo, WriterSchema};

const COLS: [&str; 3] = ["id", "a", "b"];

fn schema() -> Arc<WriterSchema> {
    Arc::new(WriterSchema {
        schema: apache_avro::Schema::Null,
        fields: COLS
            .iter()
            .map(|c| FieldInfo {
                name: c.to_string(),
                pg_type: None,
                avro: serde_json::json!("string"),
            })
            .collect(),
        row: None,
    })
}

fn table() -> TableId {
    TableId::new("public", "t")
}

/// A row event on `public.t` (`id`, `a`, `b`); `unchanged` columns were not sent (TOAST).
fn event(
    op: Op,
    before: Option<[&str; 3]>,
    after: Option<[&str; 3]>,
    unchanged: &[&str],
    pos: (i64, i64),
) -> ChangeEvent {
    let row = |r: [&str; 3]| r.iter().map(|v| Some(v.to_string())).collect::<Vec<_>>();
    ChangeEvent {
        table: table(),
        op,
        fields: schema(),
        before: before.map(row),
        after: after.map(row),
        unchanged: unchanged.iter().map(|s| s.to_string()).collect(),
        key_columns: vec!["id".into()],
        commit_lsn: pos.0,
        seq: pos.1,
        commit_ts_us: pos.0 * 1000 + pos.1,
    }
}

fn truncate(pos: (i64, i64)) -> ChangeEvent {
    ChangeEvent {
        op: Op::Truncate,
        before: None,
        after: None,
        key_columns: vec![],
        ..event(Op::Create, None, None, &[], pos)
    }
}

static ID_KEY: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| vec!["id".to_string()]);

fn key_cols(_: &TableId) -> &'static [String] {
    &ID_KEY
}

fn key_of(t: &TableId) -> Vec<String> {
    key_cols(t).to_vec()
}

fn apply_all(_: &ChangeEvent, _: &Mapping) -> Admission {
    Admission::Apply
}

/// Plan `events` as records of one partition at offsets 0.., against `stored`.
fn plan_of(
    events: &[ChangeEvent],
    stored: &HashMap<Partition, Progress>,
    admit: &dyn Fn(&ChangeEvent, &Mapping) -> Admission,
) -> Plan {
    let mapping = Mapping::identity(table());
    let records = records_of(events, "p.public.t", &mapping);
    plan_with(&records, stored, &HashMap::new(), admit)
}

/// `events` as records of one partition of `topic`, at offsets 0.., all through `mapping`.
fn records_of<'a>(
    events: &'a [ChangeEvent],
    topic: &'a str,
    mapping: &'a Mapping,
) -> Vec<Record<'a>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            topic,
            partition: 0,
            offset: i as i64,
            event: Some(e),
            parked: false,
            mapping: Some(mapping),
        })
        .collect()
}

/// Plan `records` with the identity key and truncates applied.
fn plan_with(
    records: &[Record<'_>],
    stored: &HashMap<Partition, Progress>,
    truncated: &HashMap<String, (i64, i64)>,
    admit: &dyn Fn(&ChangeEvent, &Mapping) -> Admission,
) -> Plan {
    plan(
        records,
        &Context {
            stored,
            truncated,
            truncate: TruncatePolicy::Apply,
            key_of: &|t| key_cols(t),
            admit,
        },
    )
    .unwrap()
}

fn writes(p: &Plan) -> Vec<&Write> {
    p.steps
        .iter()
        .flat_map(|s| match s {
            Step::Writes(w) => w.iter().collect::<Vec<_>>(),
            Step::Truncate { .. } => vec![],
        })
        .collect()
}

fn cols(pairs: &[(&str, &str)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

#[test]
fn folds_per_key_into_one_write() {
    let evs = [
        event(Op::Create, None, Some(["1", "x", "y"]), &[], (10, 0)),
        event(Op::Update, None, Some(["1", "x2", "?"]), &["b"], (10, 1)),
        event(Op::Create, None, Some(["2", "p", "q"]), &[], (10, 2)),
        event(Op::Delete, Some(["2", "p", "q"]), None, &[], (11, 0)),
    ];
    let p = plan_of(&evs, &HashMap::new(), &apply_all);
    let w = writes(&p);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        w[0].op,
        Folded::Upsert(cols(&[("id", "1"), ("a", "x2"), ("b", "y")]))
    );
    assert_eq!(w[0].sources, vec![0, 1]);
    assert_eq!(w[1].op, Folded::Delete);
    assert_eq!(w[1].key, vec![Some("2".to_string())]);
    assert_eq!(w[1].sources, vec![2, 3]);
    assert_eq!(p.live, vec![0, 1, 2, 3]);
}

#[test]
fn drops_what_stored_progress_covers_and_advances_the_rest() {
    let evs = [
        event(Op::Create, None, Some(["1", "x", "y"]), &[], (10, 0)),
        event(Op::Create, None, Some(["2", "x", "y"]), &[], (10, 1)),
        event(Op::Create, None, Some(["3", "x", "y"]), &[], (12, 0)),
    ];
    // Offset 0 is below next_offset; offset 1 is at/below the last applied (lsn, seq) (a
    // re-sent event at a new offset); offset 2 is new.
    let stored: HashMap<Partition, Progress> = [(
        ("p.public.t".to_string(), 0),
        Progress {
            next_offset: 1,
            commit_lsn: 10,
            seq: 1,
        },
    )]
    .into();
    let p = plan_of(&evs, &stored, &apply_all);
    assert_eq!(p.duplicates, 2);
    assert_eq!(p.live, vec![2]);
    assert_eq!(
        p.progress[&("p.public.t".to_string(), 0)],
        Progress {
            next_offset: 3,
            commit_lsn: 12,
            seq: 0
        }
    );
    // Planning the same records again against the new progress applies nothing.
    let again = plan_of(&evs, &p.progress, &apply_all);
    assert!(again.live.is_empty() && writes(&again).is_empty());
    assert!(again.progress.is_empty(), "progress unchanged");
}

#[test]
fn orders_across_partitions_by_source_position() {
    let a = event(Op::Create, None, Some(["1", "x", "y"]), &[], (20, 0));
    let b = event(Op::Update, None, Some(["1", "z", "y"]), &[], (30, 0));
    let mapping = Mapping::identity(table());
    // The later change sits in the batch first (another partition, same key after a
    // repartition): source order decides.
    let records = [
        Record {
            topic: "t",
            partition: 1,
            offset: 0,
            event: Some(&b),
            parked: false,
            mapping: Some(&mapping),
        },
        Record {
            topic: "t",
            partition: 0,
            offset: 0,
            event: Some(&a),
            parked: false,
            mapping: Some(&mapping),
        },
    ];
    let p = plan_with(&records, &HashMap::new(), &HashMap::new(), &apply_all);
    assert_eq!(p.live, vec![1, 0]);
    assert_eq!(
        writes(&p)[0].op,
        Folded::Upsert(cols(&[("id", "1"), ("a", "z"), ("b", "y")]))
    );
}

#[test]
fn a_truncate_closes_the_segment_and_supersedes_older_events() {
    let evs = [
        event(Op::Create, None, Some(["1", "x", "y"]), &[], (10, 0)),
        truncate((11, 0)),
        event(Op::Create, None, Some(["2", "x", "y"]), &[], (12, 0)),
    ];
    let p = plan_of(&evs, &HashMap::new(), &apply_all);
    assert_eq!(p.steps.len(), 3, "{:?}", p.steps);
    assert!(matches!(
        &p.steps[1],
        Step::Truncate {
            at: (11, 0),
            apply: true,
            ..
        }
    ));

    // With the truncate already applied, the events before it are superseded.
    let mapping = Mapping::identity(table());
    let records = records_of(&evs, "t", &mapping);
    let truncated: HashMap<String, (i64, i64)> = [("public.t".to_string(), (11, 0))].into();
    let p = plan_with(&records, &HashMap::new(), &truncated, &apply_all);
    assert_eq!(p.duplicates, 2);
    assert_eq!(writes(&p).len(), 1);
}

#[test]
fn admission_skips_and_marks_writes_to_settle() {
    let evs = [event(Op::Create, None, Some(["1", "x", "y"]), &[], (10, 0))];
    let skip = |_: &ChangeEvent, _: &Mapping| Admission::Skip;
    let p = plan_of(&evs, &HashMap::new(), &skip);
    assert_eq!(p.phase_skipped, 1);
    assert!(writes(&p).is_empty());
    assert_eq!(p.live, vec![0], "a skipped event still moves progress");

    let settle = |_: &ChangeEvent, _: &Mapping| Admission::Settle;
    let p = plan_of(&evs, &HashMap::new(), &settle);
    assert!(writes(&p)[0].settle);
}

#[test]
fn a_leak_is_not_written_but_handed_over_with_its_target_row_and_moves_progress() {
    let evs = [
        event(Op::Create, None, Some(["1", "x", "y"]), &[], (10, 0)),
        event(Op::Create, None, Some(["2", "z", "w"]), &[], (11, 0)),
    ];
    // Key 1 leaked (written on the side that does not own it), key 2 applies.
    let by_key = |e: &ChangeEvent, _: &Mapping| {
        if e.key_values() == Some(vec![Some("1".into())]) {
            Admission::Leak
        } else {
            Admission::Apply
        }
    };
    let p = plan_of(&evs, &HashMap::new(), &by_key);
    assert_eq!(p.leaks.len(), 1);
    let leak = &p.leaks[0];
    assert_eq!(leak.record, 0);
    assert_eq!(leak.key.len(), 1);
    assert_eq!(leak.key[0].1.as_deref(), Some("1"));
    assert!(leak
        .row
        .as_ref()
        .is_some_and(|r| r.values().any(|v| v.as_deref() == Some("x"))));
    let w = writes(&p);
    assert_eq!(w.len(), 1, "only the owned key is written");
    assert_eq!(w[0].key, vec![Some("2".to_string())]);
    assert_eq!(p.live, vec![0, 1], "a leaked event still moves progress");
}

#[test]
fn unmapped_and_parked_records_write_nothing_but_move_progress() {
    let e = event(Op::Create, None, Some(["1", "x", "y"]), &[], (10, 0));
    let records = [
        Record {
            topic: "t",
            partition: 0,
            offset: 0,
            event: Some(&e),
            parked: false,
            mapping: None,
        },
        Record {
            topic: "t",
            partition: 0,
            offset: 1,
            event: None,
            parked: true,
            mapping: None,
        },
    ];
    let p = plan_with(&records, &HashMap::new(), &HashMap::new(), &apply_all);
    assert_eq!(p.skipped, 1);
    assert!(p.steps.is_empty());
    assert_eq!(p.progress[&("t".to_string(), 0)].next_offset, 2);
}

// ---- property: folding equals applying one by one ----

type Rows = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// One source change, generated against a model of the source table so it is a change the
/// source could have made: inserts of absent keys (every column), updates of present ones (a
/// TOASTed column may be left out), deletes of present ones.
#[derive(Debug, Clone)]
enum Change {
    Insert { id: u8, a: u8, b: u8 },
    Update { id: u8, a: u8, b: Option<u8> },
    Delete { id: u8 },
}

fn changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec((0u8..6, 0u8..4, 0u8..4, any::<bool>(), 0u8..3), 0..40).prop_map(|raw| {
        let mut present = std::collections::BTreeSet::new();
        let mut out = vec![];
        for (id, a, b, toast, kind) in raw {
            if !present.contains(&id) {
                present.insert(id);
                out.push(Change::Insert { id, a, b });
            } else if kind == 0 {
                present.remove(&id);
                out.push(Change::Delete { id });
            } else {
                out.push(Change::Update {
                    id,
                    a,
                    b: (!toast).then_some(b),
                });
            }
        }
        out
    })
}

fn to_events(changes: &[Change], rows: &mut Rows) -> Vec<ChangeEvent> {
    let mut out = vec![];
    for (n, c) in changes.iter().enumerate() {
        let pos = (100 + n as i64 / 3, n as i64 % 3);
        let s = |v: u8| v.to_string();
        match c {
            Change::Insert { id, a, b } => {
                let (id, a, b) = (s(*id), s(*a), s(*b));
                out.push(event(Op::Create, None, Some([&id, &a, &b]), &[], pos));
                rows.insert(id.clone(), cols(&[("id", &id), ("a", &a), ("b", &b)]));
            }
            Change::Update { id, a, b } => {
                let (id, a) = (s(*id), s(*a));
                let row = rows.get_mut(&id).expect("present");
                let b_text = match b {
                    Some(b) => s(*b),
                    None => row["b"].clone().unwrap_or_default(),
                };
                let unchanged: &[&str] = if b.is_some() { &[] } else { &["b"] };
                out.push(event(
                    Op::Update,
                    None,
                    Some([&id, &a, if b.is_some() { &b_text } else { "?" }]),
                    unchanged,
                    pos,
                ));
                row.insert("a".into(), Some(a));
                row.insert("b".into(), Some(b_text));
            }
            Change::Delete { id } => {
                let id = s(*id);
                let row = rows.remove(&id).expect("present");
                let v = |c: &str| row[c].clone().unwrap_or_default();
                out.push(event(
                    Op::Delete,
                    Some([&id, &v("a"), &v("b")]),
                    None,
                    &[],
                    pos,
                ));
            }
        }
    }
    out
}

/// What the target does with one keyed write (the upsert and delete statements' semantics:
/// an upsert sets the columns it carries, inserting the row when absent).
fn apply_write(target: &mut Rows, key: &str, op: &Folded) {
    match op {
        Folded::Delete => {
            target.remove(key);
        }
        Folded::Upsert(c) => {
            let row = target.entry(key.to_string()).or_default();
            for (k, v) in c {
                row.insert(k.clone(), v.clone());
            }
        }
    }
}

fn one_op(ev: &ChangeEvent) -> (String, Folded) {
    let m = Mapping::identity(table());
    let op = m.map(ev, &key_of).unwrap().pop().unwrap();
    let (_, key, f) = keyed(op, &key_cols);
    (key[0].clone().unwrap(), f)
}

proptest! {
    /// Folding any sequence of a source's changes per key gives the same final target state
    /// as applying the events one by one, whatever the target held before.
    #[test]
    fn folding_equals_applying_one_by_one(initial in changes(), batch in changes()) {
        let mut source = Rows::new();
        to_events(&initial, &mut source);
        let start = source.clone();
        // The batch continues the source's history from `start`: keep the changes that are
        // valid there.
        let mut rows = start.clone();
        // Re-derive a valid history from `start` (filtering can break later steps).
        let mut valid = vec![];
        for c in batch {
            let id = match &c { Change::Insert { id, .. } | Change::Update { id, .. } | Change::Delete { id } => id.to_string() };
            let ok = match c { Change::Insert { .. } => !rows.contains_key(&id), _ => rows.contains_key(&id) };
            if ok {
                match c { Change::Insert { .. } => { rows.insert(id, BTreeMap::new()); } Change::Delete { .. } => { rows.remove(&id); } _ => {} }
                valid.push(c);
            }
        }
        let mut model = start.clone();
        let events = to_events(&valid, &mut model);

        let mut one_by_one = start.clone();
        for ev in &events {
            let (k, f) = one_op(ev);
            apply_write(&mut one_by_one, &k, &f);
        }
        let p = plan_of(&events, &HashMap::new(), &apply_all);
        let mut folded = start.clone();
        for w in writes(&p) {
            apply_write(&mut folded, w.key[0].as_deref().unwrap(), &w.op);
        }
        prop_assert_eq!(&folded, &one_by_one);
        prop_assert_eq!(&folded, &model, "the target ends like the source");
        prop_assert!(writes(&p).len() <= events.len());
    }

    /// Re-delivering any prefix of a batch after it was applied applies nothing again, and
    /// progress never moves backward.
    #[test]
    fn redelivery_applies_nothing_and_progress_never_goes_back(batch in changes(), cut in 0usize..40) {
        let events = to_events(&batch, &mut Rows::new());
        let first = plan_of(&events, &HashMap::new(), &apply_all);
        let stored = first.progress.clone();
        let prefix = &events[..cut.min(events.len())];
        let again = plan_of(prefix, &stored, &apply_all);
        prop_assert!(writes(&again).is_empty());
        prop_assert_eq!(again.duplicates, prefix.len());
        for (k, p) in &again.progress {
            prop_assert!(p.next_offset >= stored.get(k).copied().unwrap_or_default().next_offset);
        }
    }
}
