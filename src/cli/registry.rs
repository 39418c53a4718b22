//! `cutover registry`: serve the embedded schema registry until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use super::{load_config, shutdown_signal, Cli};
use crate::error::{Error, ErrorKind, Result};
use crate::observe;
use crate::registry::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen address (overrides registry_server.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (overrides registry_server.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve /metrics, /healthz, /readyz on this address (off unless given, so the registry
    /// can share a host with other cutover processes).
    #[arg(long)]
    pub observe_listen: Option<String>,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| cfg.registry_server.listen.clone());
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| cfg.registry_server.data_dir.clone());
    let level = cfg.registry_server.default_compatibility;
    let store = Store::open(&data_dir, level).map_err(|e| Error::new(ErrorKind::Io, e))?;
    let store = Arc::new(store);

    let readiness = observe::Readiness::new();
    if let Some(addr) = &args.observe_listen {
        let addr = addr
            .parse()
            .map_err(|_| Error::config(format!("--observe-listen: {addr:?} is not host:port")))?;
        let handle = observe::install_recorder()?;
        observe::up("registry");
        observe::serve(addr, handle, readiness.clone(), shutdown_signal()).await?;
    }

    let listener = tokio::net::TcpListener::bind(&listen).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Io,
            format!("registry_server.listen: cannot bind {listen}: {e}"),
            e,
        )
    })?;
    readiness.set("registry", true);
    tracing::info!(listen = %listen, log = %store.path().display(), "schema registry serving");
    let access = crate::registry::access::Access::new(&cfg.registry_server);
    if !access.authenticates() && !listen.starts_with("127.") && !listen.starts_with("localhost") {
        tracing::warn!(listen = %listen, "schema registry serving without authentication on a non-loopback address: set registry_server.username/password or token");
    }
    crate::registry::server::serve(listener, store, access, shutdown_signal())
        .await
        .map_err(|e| Error::io("registry server", e))?;
    tracing::info!("schema registry stopped");
    Ok(ExitCode::SUCCESS)
}
