//! Cross-check of our pgoutput decoder against an independent parser (`pg_walstream`, a
//! dev-dependency only), on bytes the real PostgreSQL server produced: a temporary slot is read
//! through `pg_logical_slot_get_binary_changes`, which returns exactly the pgoutput messages a
//! walsender would stream. Every message type cutover decodes appears in the workload.

use bytes::Bytes;
use pg_walstream::{ColumnData, LogicalReplicationMessage as W, LogicalReplicationParser};

use super::capture::sql;
use super::support::{local_config, unique};
use cutover::capture::pgoutput::{self, Column, Datum, Message, OldKind, Relation};
use cutover::event::Lsn;

fn datum(c: &ColumnData) -> Datum {
    match c.data_type {
        b'n' => Datum::Null,
        b'u' => Datum::UnchangedToast,
        b't' => Datum::Text(Bytes::copy_from_slice(c.as_bytes())),
        b'b' => Datum::Binary(Bytes::copy_from_slice(c.as_bytes())),
        other => panic!("pg_walstream column kind {other}"),
    }
}

fn tuple(t: &pg_walstream::TupleData) -> Vec<Datum> {
    t.columns.iter().map(datum).collect()
}

fn old_kind(k: char) -> OldKind {
    match k {
        'K' => OldKind::Key,
        'O' => OldKind::Full,
        other => panic!("old tuple kind {other}"),
    }
}

/// pg_walstream's reading, in our types.
fn theirs(m: W) -> Message {
    match m {
        W::Begin {
            final_lsn,
            timestamp,
            xid,
        } => Message::Begin {
            final_lsn: Lsn(final_lsn),
            commit_ts_us: timestamp,
            xid,
        },
        W::Commit {
            flags,
            commit_lsn,
            end_lsn,
            timestamp,
        } => Message::Commit {
            flags,
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn(end_lsn),
            commit_ts_us: timestamp,
        },
        W::Origin {
            origin_lsn,
            origin_name,
        } => Message::Origin {
            commit_lsn: Lsn(origin_lsn),
            name: origin_name,
        },
        W::Relation {
            relation_id,
            namespace,
            relation_name,
            replica_identity,
            columns,
        } => Message::Relation(Relation {
            id: relation_id,
            namespace: namespace.to_string(),
            name: relation_name.to_string(),
            replica_identity,
            columns: columns
                .iter()
                .map(|c| Column {
                    key: c.is_key(),
                    name: c.name.to_string(),
                    type_oid: c.type_id,
                    type_modifier: c.type_modifier,
                })
                .collect(),
        }),
        W::Type {
            type_id,
            namespace,
            type_name,
        } => Message::Type {
            oid: type_id,
            namespace,
            name: type_name,
        },
        W::Insert {
            relation_id,
            tuple: t,
        } => Message::Insert {
            rel_id: relation_id,
            new: tuple(&t),
        },
        W::Update {
            relation_id,
            old_tuple,
            new_tuple,
            key_type,
        } => Message::Update {
            rel_id: relation_id,
            old: old_tuple.map(|t| (old_kind(key_type.expect("key type")), tuple(&t))),
            new: tuple(&new_tuple),
        },
        W::Delete {
            relation_id,
            old_tuple,
            key_type,
        } => Message::Delete {
            rel_id: relation_id,
            old: (old_kind(key_type), tuple(&old_tuple)),
        },
        W::Truncate {
            relation_ids,
            flags,
        } => Message::Truncate {
            cascade: flags & 1 != 0,
            restart_identity: flags & 2 != 0,
            rel_ids: relation_ids,
        },
        W::Message {
            flags,
            lsn,
            prefix,
            content,
        } => Message::Message {
            transactional: flags & 1 != 0,
            lsn: Lsn(lsn),
            prefix,
            content,
        },
        other => panic!("protocol v1 never sends {other:?}"),
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Begin { .. } => "Begin",
        Message::Commit { .. } => "Commit",
        Message::Origin { .. } => "Origin",
        Message::Relation(_) => "Relation",
        Message::Type { .. } => "Type",
        Message::Insert { .. } => "Insert",
        Message::Update { old: None, .. } => "Update",
        Message::Update {
            old: Some((OldKind::Key, _)),
            ..
        } => "Update(K)",
        Message::Update {
            old: Some((OldKind::Full, _)),
            ..
        } => "Update(O)",
        Message::Delete { .. } => "Delete",
        Message::Truncate { .. } => "Truncate",
        Message::Message { .. } => "Message",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoder_agrees_with_pg_walstream_on_real_server_bytes() {
    let cfg = local_config();
    let c = sql(&cfg).await;
    let (a, b, slot, origin) = (unique("xa"), unique("xb"), unique("xslot"), unique("xorig"));
    c.batch_execute(&format!(
        r#"DROP TYPE IF EXISTS "{a}_mood"; CREATE TYPE "{a}_mood" AS ENUM ('ok', 'bad');
        CREATE TABLE "{a}" (id int PRIMARY KEY, m "{a}_mood", big text, "naïve" text);
        ALTER TABLE "{a}" ALTER COLUMN big SET STORAGE EXTERNAL;
        CREATE TABLE "{b}" (k text, v int);
        ALTER TABLE "{b}" REPLICA IDENTITY FULL;
        CREATE PUBLICATION "{slot}" FOR TABLE "{a}", "{b}";"#
    ))
    .await
    .unwrap();
    c.query_one(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', true)",
        &[&slot],
    )
    .await
    .unwrap();
    c.batch_execute(&format!(
        r#"BEGIN;
        INSERT INTO "{a}" VALUES (1, 'ok', repeat('t', 9000), 'Zoë'), (2, NULL, NULL, '');
        UPDATE "{a}" SET "naïve" = 'x' WHERE id = 1;
        UPDATE "{a}" SET id = 3 WHERE id = 2;
        DELETE FROM "{a}" WHERE id = 3;
        INSERT INTO "{b}" VALUES ('k', 1);
        UPDATE "{b}" SET v = 2;
        DELETE FROM "{b}";
        SELECT pg_logical_emit_message(true, 'cutover.test', 'in txn');
        COMMIT;
        SELECT pg_logical_emit_message(false, 'cutover.test', '\xff00'::bytea);
        TRUNCATE "{a}", "{b}" RESTART IDENTITY CASCADE;"#
    ))
    .await
    .unwrap();
    // A transaction replayed under a replication origin (what a cutover sink writes).
    for stmt in [
        format!("SELECT pg_replication_origin_create('{origin}')"),
        format!("SELECT pg_replication_origin_session_setup('{origin}')"),
        "BEGIN".into(),
        "SELECT pg_replication_origin_xact_setup('0/AB', now())".into(),
        format!(r#"INSERT INTO "{b}" VALUES ('from-origin', 9)"#),
        "COMMIT".into(),
        "SELECT pg_replication_origin_session_reset()".into(),
    ] {
        c.batch_execute(&stmt).await.unwrap();
    }
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &slot],
        )
        .await
        .unwrap();
    let mut parser = LogicalReplicationParser::with_protocol_version(1);
    let mut seen = std::collections::BTreeSet::new();
    for row in &rows {
        let data: Vec<u8> = row.get(0);
        let ours = pgoutput::decode(&Bytes::from(data.clone())).unwrap();
        let other = theirs(parser.parse_wal_message(&data).unwrap().message);
        assert_eq!(ours, other, "decoders disagree on {:02x?}", data);
        seen.insert(kind(&ours));
    }
    let expected = [
        "Begin",
        "Commit",
        "Origin",
        "Relation",
        "Type",
        "Insert",
        "Update",
        "Update(K)",
        "Update(O)",
        "Delete",
        "Truncate",
        "Message",
    ];
    for k in expected {
        assert!(seen.contains(k), "workload produced no {k}: saw {seen:?}");
    }
    // The unchanged TOAST value really was exercised.
    assert!(rows.iter().any(|r| {
        let d: Vec<u8> = r.get(0);
        matches!(pgoutput::decode(&Bytes::from(d)).unwrap(),
            Message::Update { ref new, .. } if new.contains(&Datum::UnchangedToast))
    }));
    c.batch_execute(&format!(
        r#"SELECT pg_drop_replication_slot('{slot}'); SELECT pg_replication_origin_drop('{origin}');
        DROP PUBLICATION "{slot}"; DROP TABLE "{a}", "{b}"; DROP TYPE "{a}_mood";"#
    ))
    .await
    .unwrap();
}
