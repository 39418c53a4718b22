//! Where to connect: every PostgreSQL endpoint of a pipeline, built from the config in one
//! place, with the config path of its URL for messages (`source.url`, `sinks[1].url`).
//!
//! TLS follows the connection string's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` with
//! libpq's semantics, on SQL and replication connections alike (see [`super::tls`]).

use std::time::Duration;

use tokio_postgres::Client;

use super::tls::{self, Tls};
use crate::config::{Config, DbUrl, Secret, SinkConfig};
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
    /// The connection settings and the TLS settings of this endpoint.
    pub fn pg_config(&self) -> Result<(tokio_postgres::Config, Tls)> {
        let (conninfo, tls) = tls::split(self.url.expose())
            .map_err(|e| Error::config(format!("{}: {e}", self.field)))?;
        let mut cfg: tokio_postgres::Config = conninfo.parse().map_err(|e| {
            Error::config(format!(
                "{}: not a valid PostgreSQL connection string ({e})",
                self.field
            ))
        })?;
        cfg.ssl_mode(tls.pg_mode());
        if let Some(pw) = &self.password {
            cfg.password(pw.expose());
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(self.connect_timeout);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("cutover");
        }
        Ok((cfg, tls))
    }

    /// Open a connection; the connection task runs in the background and logs if it ends
    /// with an error. A certificate the mode does not accept fails with [`ErrorKind::Auth`].
    pub async fn connect(&self) -> Result<Client> {
        let (cfg, tls) = self.pg_config()?;
        let connector = tls.sql_connector(&self.field)?;
        let (client, conn) = cfg.connect(connector).await.map_err(|e| {
            let what = format!("connecting to {} ({})", self.field, self.url);
            let err = Error::postgres_connect(what, e);
            if crate::error::classify::certificate_failure(&err.to_string()) {
                Error::new(
                    ErrorKind::Auth,
                    format!("{err} (check sslmode and sslrootcert)"),
                )
            } else {
                err
            }
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

impl Endpoint {
    /// The legacy database (`source.url`), where capture reads and the phases live.
    pub fn source(cfg: &Config) -> Endpoint {
        Endpoint {
            field: "source.url".into(),
            url: cfg.source.url.clone(),
            password: cfg.source.password.clone(),
            connect_timeout: Duration::from_secs(cfg.source.connect_timeout_secs),
        }
    }

    /// The target store of sink `name` (`sinks[i].url`).
    pub fn sink(cfg: &Config, name: &str) -> Result<Endpoint> {
        let (i, sink) = cfg.sink_at(name)?;
        Ok(Endpoint::of_sink(sink, i))
    }

    /// The target store of `sink`, the `i`-th of `sinks[]`.
    pub fn of_sink(sink: &SinkConfig, i: usize) -> Endpoint {
        Endpoint {
            field: format!("sinks[{i}].url"),
            url: sink.url.clone(),
            password: sink.password.clone(),
            connect_timeout: Duration::from_secs(sink.connect_timeout_secs),
        }
    }

    /// The new store of a back-sync: the target of `backsync.forward_sink`.
    pub fn new_store(cfg: &Config) -> Result<Endpoint> {
        let b = cfg
            .backsync
            .as_ref()
            .ok_or_else(|| Error::config("backsync: not configured (add a [backsync] section)"))?;
        Endpoint::sink(cfg, &b.forward_sink).map_err(|e| e.context("backsync.forward_sink"))
    }
}
