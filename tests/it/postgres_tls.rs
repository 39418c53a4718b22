//! TLS to PostgreSQL (issue 15): a cluster of the test's own that accepts only `hostssl`
//! connections, with a CA, a server certificate for `localhost` only and a client certificate
//! the test generates (openssl), a second CA nobody signed with; every sslmode on SQL
//! connections, and the replication stream encrypted and verified the same way.

use std::time::Duration;

use super::capture::{consume, test_config};
use super::support::{pki, unique, Pki, PrivatePostgres};
use cutover::capture::Capture;
use cutover::config::DbUrl;
use cutover::database::Endpoint;
use cutover::error::ErrorKind;
use cutover::kafka::topic::for_table as topic_for;
use cutover::retry::{policy, Decision};

const HBA: &str = "\
hostssl all certuser 127.0.0.1/32 cert
hostssl all all 127.0.0.1/32 trust
hostssl replication all 127.0.0.1/32 trust
";

fn tls_cluster(pki: &Pki) -> PrivatePostgres {
    PrivatePostgres::start_with(
        &[
            "wal_level = logical",
            "ssl = on",
            "ssl_cert_file = 'server.pem'",
            "ssl_key_file = 'server.key'",
            "ssl_ca_file = 'ca.pem'",
        ],
        Some(HBA),
        &[
            ("server.pem", &pki.read("server.pem")),
            ("server.key", &pki.read("server.key")),
            ("ca.pem", &pki.read("ca.pem")),
        ],
    )
}

fn endpoint(url: String) -> Endpoint {
    Endpoint {
        field: "source.url".into(),
        url: DbUrl::new(url),
        password: None,
        connect_timeout: Duration::from_secs(10),
    }
}

/// Connect with `url`; Ok(whether the session is encrypted) or the error.
async fn try_connect(url: String) -> cutover::Result<bool> {
    let c = endpoint(url).connect().await?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_connections_follow_sslmode_against_a_hostssl_only_server() {
    let pki = pki();
    let pg = tls_cluster(&pki);
    let ca = pki.path("ca.pem").display().to_string();
    let other = pki.path("other-ca.pem").display().to_string();
    let at = |host: &str, user: &str, q: &str| {
        format!("postgres://{user}@{host}:{}/postgres?{q}", pg.port)
    };

    // sslmode=disable: the server has no entry for plain connections. 28000, fatal.
    let e = try_connect(at("127.0.0.1", "postgres", "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert_eq!(policy(e.kind()), Decision::Fatal);
    assert!(e.to_string().contains("no encryption"), "{e}");

    // prefer (the default) and require encrypt without checking the certificate (libpq).
    for q in ["", "sslmode=prefer", "sslmode=allow", "sslmode=require"] {
        assert!(
            try_connect(at("127.0.0.1", "postgres", q)).await.unwrap(),
            "{q}"
        );
    }

    // verify-ca: the right CA passes whatever the host name; another CA is refused, fatally.
    assert!(try_connect(at(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={ca}")
    ))
    .await
    .unwrap());
    for q in [
        format!("sslmode=verify-ca&sslrootcert={other}"),
        // libpq: a root certificate turns require into verify-ca.
        format!("sslmode=require&sslrootcert={other}"),
    ] {
        let e = try_connect(at("127.0.0.1", "postgres", &q))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth, "{q}: {e}");
        assert!(e.to_string().contains("sslrootcert"), "{e}");
    }

    // verify-full: the certificate names localhost, not 127.0.0.1.
    assert!(try_connect(at(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}")
    ))
    .await
    .unwrap());
    let e = try_connect(at(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    let e = try_connect(at(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");

    // Client certificate authentication (`cert` in pg_hba.conf for certuser).
    let c = endpoint(at("127.0.0.1", "postgres", "sslmode=require"))
        .connect()
        .await
        .unwrap();
    c.batch_execute("CREATE ROLE certuser LOGIN").await.unwrap();
    let with_cert = format!(
        "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    assert!(try_connect(at("localhost", "certuser", &with_cert))
        .await
        .unwrap());
    let e = try_connect(at(
        "localhost",
        "certuser",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");

    // Settings cutover cannot honour are refused before connecting, naming the field.
    let e = try_connect(at("localhost", "postgres", "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.to_string().contains("source.url") && e.to_string().contains("sslrootcert"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_stream_is_encrypted_and_verified_like_sql() {
    let pki = pki();
    let pg = tls_cluster(&pki);
    let ca = pki.path("ca.pem").display().to_string();
    let table = unique("tls");
    let mut cfg = test_config(&[&table]);
    cfg.source.url = DbUrl::new(format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        pg.port
    ));
    let c = endpoint(cfg.source.url.expose().to_string())
        .connect()
        .await
        .unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, secret text)"
    ))
    .await
    .unwrap();

    // A wrong CA on the replication link: refused, fatal, naming TLS; not retried forever.
    let mut wrong = cfg.clone();
    wrong.source.url = DbUrl::new(format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pki.path("other-ca.pem").display()
    ));
    // The SQL half refuses first (prepare connects for the publication and the slot) ...
    let e = Capture::prepare(&wrong).await.err().expect("refused");
    assert_eq!(policy(e.kind()), Decision::Fatal, "{e}");
    // ... and the replication link on its own, with the settings capture derives from the
    // URL: another CA, and a host name the certificate does not name, are TLS failures that
    // classify as fatal trust failures.
    for (host, root) in [("localhost", "other-ca.pem"), ("127.0.0.1", "ca.pem")] {
        let url = format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port,
            pki.path(root).display()
        );
        let (_, tls) = cutover::database::tls::split(&url).unwrap();
        let rc = pgwire_replication::ReplicationConfig::new(
            host,
            "postgres",
            "",
            "postgres",
            "no_such_slot",
            "no_such_publication",
        )
        .with_port(pg.port)
        .with_tls(tls.replication(host));
        // connect() hands the session to a worker; the refusal surfaces when the
        // stream is awaited, as it is in capture.
        let mut client = pgwire_replication::ReplicationClient::connect(rc)
            .await
            .unwrap();
        let e = client.wait_started().await.expect_err("refused");
        assert!(
            matches!(e, pgwire_replication::PgWireError::Tls(_)),
            "{host} {root}: {e}"
        );
        assert_eq!(
            cutover::error::classify::replication(&e),
            ErrorKind::Auth,
            "{host} {root}: {e}"
        );
    }

    // The right settings: rows arrive, and the walsender's session is encrypted.
    let (capture, lsn) = Capture::prepare(&cfg).await.unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(capture.run(lsn, rx));
    c.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 20) g"
    ))
    .await
    .unwrap();
    let topic = topic_for(
        &cfg.topic_prefix,
        &cutover::event::TableId::new("public", &table),
    );
    let events = consume(&cfg, &topic, 20);
    assert_eq!(events.len(), 20);
    let ssl: bool = c
        .query_one(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = 'cutover-capture'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the walsender's session is not encrypted");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}
