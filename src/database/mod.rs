//! Plain SQL connections to PostgreSQL (the legacy source and the target stores).
//!
//! Replication streaming lives in `capture`; this module only opens ordinary connections.
//! TLS follows the connection string's `sslmode` (`disable`, `prefer`, `require`) with
//! certificate verification through the system trust store (native-tls / OpenSSL).

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{DbUrl, Secret};
use crate::error::{Error, ErrorKind, Result};

/// Where to connect, with the password kept apart from the (printable) URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Config path of this endpoint, for messages (`source.url`, `sinks[0].url`).
    pub field: String,
    pub url: DbUrl,
    pub password: Option<Secret>,
    pub connect_timeout: Duration,
}

impl Endpoint {
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        let mut cfg: tokio_postgres::Config = self.url.expose().parse().map_err(|e| {
            Error::config(format!(
                "{}: not a valid PostgreSQL connection string ({e})",
                self.field
            ))
        })?;
        if let Some(pw) = &self.password {
            cfg.password(pw.expose());
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(self.connect_timeout);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("cutover");
        }
        Ok(cfg)
    }

    /// Open a connection; the connection task runs in the background and logs if it ends
    /// with an error.
    pub async fn connect(&self) -> Result<Client> {
        let cfg = self.pg_config()?;
        let tls = native_tls::TlsConnector::new().map_err(|e| {
            Error::with_source(ErrorKind::Environment, "initialising TLS for PostgreSQL", e)
        })?;
        let tls = postgres_native_tls::MakeTlsConnector::new(tls);
        let (client, conn) = cfg.connect(tls).await.map_err(|e| {
            Error::postgres(format!("connecting to {} ({})", self.field, self.url), e)
        })?;
        let field = self.field.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(endpoint = %field, error = %e, "PostgreSQL connection closed with an error");
            }
        });
        Ok(client)
    }
}

/// Facts about a server that cutover depends on.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version: String,
    pub version_num: i32,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub max_wal_senders: i32,
    pub database: String,
}

pub async fn server_facts(client: &Client) -> Result<ServerFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    current_setting('wal_level'), current_setting('max_replication_slots')::int, \
                    current_setting('max_wal_senders')::int, current_database()",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading server settings", e))?;
    Ok(ServerFacts {
        version: row.get(0),
        version_num: row.get(1),
        wal_level: row.get(2),
        max_replication_slots: row.get(3),
        max_wal_senders: row.get(4),
        database: row.get(5),
    })
}
