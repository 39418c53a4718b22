//! `cutover check-config [--connect]`: validate, print the effective config (secrets
//! redacted), and optionally check that every peer answers.

use std::process::ExitCode;
use std::time::Duration;

use super::{load_config, Cli};
use crate::config::Config;
use crate::database::{server_facts, Endpoint};
use crate::error::{Error, Result};
use crate::registry::RegistryClient;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also check that both databases, the broker and the registry answer.
    #[arg(long)]
    pub connect: bool,
    /// Do not print the effective configuration.
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli).map_err(|e| e.context("configuration invalid"))?;
    let source = match &cli.config {
        Some(p) => p.display().to_string(),
        None => "built-in local default".to_string(),
    };
    if !args.quiet {
        println!("# effective configuration ({source}), secrets redacted");
        print!("{}", cfg.to_redacted_toml());
        println!();
    }
    println!("configuration OK ({source})");
    if !args.connect {
        return Ok(ExitCode::SUCCESS);
    }
    let results = connect_checks(&cfg).await;
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut failed = 0;
    for r in &results {
        match &r.outcome {
            Ok(detail) => println!("{:<width$}  OK    {detail}", r.name),
            Err(e) => {
                failed += 1;
                println!("{:<width$}  FAIL  {e}", r.name)
            }
        }
    }
    if failed > 0 {
        println!("{failed} of {} checks failed", results.len());
        Ok(ExitCode::from(1))
    } else {
        println!("all {} checks passed", results.len());
        Ok(ExitCode::SUCCESS)
    }
}

pub struct CheckResult {
    pub name: String,
    pub outcome: std::result::Result<String, String>,
}

/// Check every peer concurrently, each bounded in time.
pub async fn connect_checks(cfg: &Config) -> Vec<CheckResult> {
    let mut dbs = vec![(
        format!("source {}", cfg.source.url),
        Endpoint {
            field: "source.url".into(),
            url: cfg.source.url.clone(),
            password: cfg.source.password.clone(),
            connect_timeout: Duration::from_secs(cfg.source.connect_timeout_secs),
        },
        true,
    )];
    for (i, s) in cfg.sinks.iter().enumerate() {
        dbs.push((
            format!("sink {} {}", s.name, s.url),
            Endpoint {
                field: format!("sinks[{i}].url"),
                url: s.url.clone(),
                password: s.password.clone(),
                connect_timeout: Duration::from_secs(s.connect_timeout_secs),
            },
            false,
        ));
    }
    let db_checks = dbs.into_iter().map(|(name, ep, is_source)| async move {
        CheckResult {
            name,
            outcome: bounded(check_db(&ep, is_source)).await,
        }
    });
    let kafka = async {
        CheckResult {
            name: format!("kafka {}", cfg.kafka.brokers.join(",")),
            outcome: bounded(async {
                let n = crate::kafka::ping(&cfg.kafka).await?;
                Ok(format!("{n} broker(s) in metadata"))
            })
            .await,
        }
    };
    let registry = async {
        CheckResult {
            name: format!("registry {}", cfg.registry.url),
            outcome: bounded(async {
                let client = RegistryClient::new(&cfg.registry)?;
                let n = client.ping().await?;
                Ok(format!("{n} subject(s)"))
            })
            .await,
        }
    };
    let (mut out, k, r) = tokio::join!(futures::future::join_all(db_checks), kafka, registry);
    out.push(k);
    out.push(r);
    out
}

async fn bounded(
    f: impl std::future::Future<Output = Result<String>>,
) -> std::result::Result<String, String> {
    match tokio::time::timeout(Duration::from_secs(45), f).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 45 s".into()),
    }
}

async fn check_db(ep: &Endpoint, is_source: bool) -> Result<String> {
    let client = ep.connect().await?;
    let f = server_facts(&client).await?;
    if is_source && f.wal_level != "logical" {
        return Err(Error::new(
            crate::error::ErrorKind::Environment,
            format!(
                "wal_level is {:?}; logical replication needs wal_level = logical in postgresql.conf (restart required)",
                f.wal_level
            ),
        ));
    }
    Ok(format!(
        "PostgreSQL {} db={} wal_level={} max_replication_slots={} max_wal_senders={}",
        f.version, f.database, f.wal_level, f.max_replication_slots, f.max_wal_senders
    ))
}
