use super::*;

const V1: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
const BAD: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"c","type":"string"}]}"#;

#[test]
fn register_is_idempotent_and_ids_are_global() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    let (id1, v1) = st.register("t-value", V1).unwrap();
    assert_eq!((id1, v1), (1, 1));
    // Same schema, different whitespace: same id, no new version.
    let spaced = V1.replace(',', " , ");
    assert_eq!(st.register("t-value", &spaced).unwrap(), (1, 1));
    // Same schema under another subject: same id, version 1 there.
    assert_eq!(st.register("u-value", V1).unwrap(), (1, 1));
    assert_eq!(st.register("t-value", V2).unwrap(), (2, 2));
    assert_eq!(st.versions("t-value", false).unwrap(), vec![1, 2]);
    assert_eq!(st.id_versions(1).unwrap().len(), 2);
}

#[test]
fn incompatible_schema_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    st.register("t-value", V1).unwrap();
    let before = std::fs::metadata(st.path()).unwrap().len();
    let err = st.register("t-value", BAD).unwrap_err();
    assert_eq!(err.code(), 409);
    assert_eq!(std::fs::metadata(st.path()).unwrap().len(), before);
    st.set_compatibility(Some("t-value"), Some(Compatibility::None))
        .unwrap();
    assert_eq!(st.register("t-value", BAD).unwrap().1, 2);
}

#[test]
fn state_survives_reopen_and_torn_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
        st.register("t-value", V1).unwrap();
        st.register("t-value", V2).unwrap();
        st.set_compatibility(None, Some(Compatibility::Full))
            .unwrap();
        st.delete_version("t-value", VersionRef::Number(1), false)
            .unwrap();
    }
    // Simulate a crash in the middle of an append.
    let path = dir.path().join("schemas.log");
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"op":"version","subj"#).unwrap();
    drop(f);
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    assert_eq!(st.versions("t-value", false).unwrap(), vec![2]);
    assert_eq!(st.versions("t-value", true).unwrap(), vec![1, 2]);
    assert_eq!(st.global_compatibility(), Compatibility::Full);
    assert_eq!(st.schema_by_id(1).unwrap(), canonical_text(V1).unwrap().0);
    // The torn bytes are gone, and new writes land on a clean line.
    let (id, v) = st.register("x-value", V1).unwrap();
    assert_eq!((id, v), (1, 1));
    drop(st);
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    assert_eq!(st.subjects(false), vec!["t-value", "x-value"]);
}

#[test]
fn corrupt_middle_line_is_fatal_with_line_number() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schemas.log"),
        "garbage\n{\"op\":\"config\",\"subject\":null,\"compatibility\":\"FULL\"}\n",
    )
    .unwrap();
    let err = Store::open(dir.path(), Compatibility::Backward)
        .err()
        .unwrap();
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn deletes_follow_confluent_rules() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    st.register("t-value", V1).unwrap();
    assert_eq!(
        st.delete_subject("t-value", true).unwrap_err().code(),
        40407
    );
    assert_eq!(st.delete_subject("t-value", false).unwrap(), vec![1]);
    assert_eq!(st.versions("t-value", false).unwrap_err().code(), 40401);
    assert!(st.subjects(false).is_empty());
    assert_eq!(st.delete_subject("t-value", true).unwrap(), vec![1]);
    assert!(st.subjects(true).is_empty());
    // Re-registering after a hard delete starts again at version 1, same id.
    assert_eq!(st.register("t-value", V1).unwrap(), (1, 1));
}

#[test]
fn invalid_schema_and_version_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    assert_eq!(
        st.register("t", r#"{"type":"recrd"}"#).unwrap_err().code(),
        42201
    );
    assert_eq!(VersionRef::parse("0").unwrap_err().code(), 42202);
    assert_eq!(VersionRef::parse("latest").unwrap(), VersionRef::Latest);
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    let err = Store::open(dir.path(), Compatibility::Backward)
        .err()
        .expect("refused");
    assert!(err.contains("in use by another registry process"), "{err}");
    drop(st);
    // Released with the store.
    Store::open(dir.path(), Compatibility::Backward).unwrap();
}

#[test]
fn a_failed_append_leaves_a_log_that_replays_and_the_store_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    assert_eq!(st.register("t-value", V1).unwrap(), (1, 1));
    let good = std::fs::metadata(st.path()).unwrap().len();
    // The disk fails half-way through the next record.
    st.fail_next_append_after(10);
    let err = st.register("u-value", V2).unwrap_err();
    assert_eq!(err.code(), 50001);
    assert!(
        err.message().contains("read-only until restarted"),
        "{}",
        err.message()
    );
    assert_eq!(
        std::fs::metadata(st.path()).unwrap().len(),
        good,
        "partial record cut off"
    );
    // Reads go on, writes are refused, nothing changed in memory.
    assert!(st.read_only_reason().unwrap().contains("injected"));
    assert_eq!(st.versions("t-value", false).unwrap(), vec![1]);
    assert!(st.versions("u-value", false).is_err());
    let err = st.register("u-value", V2).unwrap_err();
    assert!(
        err.message().contains("read-only since a failed write"),
        "{}",
        err.message()
    );
    drop(st);
    // A restart replays the log: the id handed out before the failure is still there, and
    // the failed one is given again.
    let st = Store::open(dir.path(), Compatibility::Backward).unwrap();
    assert_eq!(st.schema_by_id(1).unwrap(), canonical_text(V1).unwrap().0);
    assert_eq!(st.register("u-value", V2).unwrap(), (2, 1));
}
