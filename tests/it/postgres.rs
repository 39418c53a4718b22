//! The two local clusters: logical decoding enabled, default databases present, a logical
//! replication slot with pgoutput can be created on legacy.

use std::time::Duration;

use super::support::{local_config, unique};
use cutover::database::{server_facts, Endpoint};

fn endpoint(field: &str, url: &cutover::config::DbUrl) -> Endpoint {
    Endpoint {
        field: field.into(),
        url: url.clone(),
        password: None,
        connect_timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn both_clusters_are_logical_and_have_the_default_databases() {
    let cfg = local_config();
    let legacy = endpoint("source.url", &cfg.source.url)
        .connect()
        .await
        .unwrap();
    let f = server_facts(&legacy).await.unwrap();
    assert_eq!(f.wal_level, "logical");
    assert_eq!(f.database, "app");
    assert!(f.version_num >= 150000, "{}", f.version);
    assert!(f.max_replication_slots >= 16);
    assert!(f.max_wal_senders >= 16);
    let port: i32 = legacy
        .query_one("SELECT current_setting('port')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, 5433);

    let mut dbs = Vec::new();
    for (i, s) in cfg.sinks.iter().enumerate() {
        let c = endpoint(&format!("sinks[{i}].url"), &s.url)
            .connect()
            .await
            .unwrap();
        let f = server_facts(&c).await.unwrap();
        assert_eq!(f.wal_level, "logical");
        dbs.push(f.database);
    }
    assert_eq!(dbs, ["app", "newapp"]);
}

#[tokio::test]
async fn a_pgoutput_slot_can_be_created_on_legacy() {
    let cfg = local_config();
    let c = endpoint("source.url", &cfg.source.url)
        .connect()
        .await
        .unwrap();
    let slot = unique("it_slot");
    let lsn: String = c
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(lsn.contains('/'), "{lsn}");
    let row = c
        .query_one(
            "SELECT plugin, slot_type, database FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pgoutput");
    assert_eq!(row.get::<_, String>(1), "logical");
    assert_eq!(row.get::<_, String>(2), "app");
    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
}

/// Every sink (and every instance of one) runs the state DDL at start. `CREATE … IF NOT
/// EXISTS` alone races (CI once saw 23505 on `pg_type_typname_nsp_index` when two sinks
/// started together); under the advisory lock, any number of concurrent creators succeed.
#[tokio::test]
async fn state_ddl_is_safe_when_many_sinks_start_at_once() {
    let db = unique("stateddl");
    let admin_url = "host=127.0.0.1 port=5434 user=postgres dbname=postgres";
    let (admin, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();

    for round in 0..3 {
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (c, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port=5434 user=postgres dbname={db}"),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            clients.push(c);
        }
        if round > 0 {
            clients[0]
                .batch_execute("DROP SCHEMA cutover CASCADE")
                .await
                .unwrap();
        }
        let results = futures::future::join_all(clients.iter().map(|c| async move {
            cutover::state::ensure_target(c).await?;
            cutover::state::ensure_control(c).await?;
            cutover::state::ensure_backfill(c).await
        }))
        .await;
        for (i, r) in results.iter().enumerate() {
            assert!(r.is_ok(), "round {round}, creator {i}: {:?}", r);
        }
        let n: i64 = clients[0]
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'cutover'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(n >= 5, "round {round}: only {n} state tables");
    }
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
