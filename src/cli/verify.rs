//! `cutover verify [--sink NAME] [--table T ...] [--repair] [--json]`: do the source and a
//! sink's target agree? Chunked checksums, bisection down to rows, a re-check after the
//! pipeline's lag, parity per table and the differing keys. See `crate::verify`.
//!
//! `--repair` re-emits the missing and different rows through the normal pipeline (a no-op
//! `UPDATE` of their key on the source: capture sends the whole row again, every sink applies
//! it) and deletes the extra target rows under a cutover replication origin (never captured
//! back). Exit code: 0 every table identical, 3 differences found (after a repair: found and
//! repaired), 1 error.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use super::{load_config, Cli};
use crate::apply::mapping::Mapping;
use crate::config::Config;
use crate::database::ident::qualified;
use crate::error::{Error, Result};
use crate::verify::{self, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sink whose target is compared (default: backsync.forward_sink, or the only sink).
    #[arg(long)]
    pub sink: Option<String>,
    /// Source tables to verify, schema.table (default: every table the sink maps).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Keys per chunk.
    #[arg(long, default_value_t = 10_000)]
    pub chunk_rows: i64,
    /// Read at most this many rows per second from both sides together (0: unthrottled).
    #[arg(long, default_value_t = 0)]
    pub rows_per_sec: u64,
    /// Wait this long before re-checking differences (rows in flight are not differences).
    #[arg(long, default_value_t = 5)]
    pub recheck_after_secs: u64,
    /// Re-emit missing/different rows through the pipeline and delete extra target rows.
    #[arg(long)]
    pub repair: bool,
    #[arg(long)]
    pub json: bool,
    /// Serve /metrics (cutover_verify_*) on this address while verify runs, for Prometheus.
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

fn pick_sink(cfg: &Config, name: Option<&str>) -> Result<usize> {
    let name = match name {
        Some(n) => n.to_string(),
        None => match (&cfg.backsync, cfg.sinks.len()) {
            (Some(b), _) => b.forward_sink.clone(),
            (None, 1) => cfg.sinks[0].name.clone(),
            _ => {
                return Err(Error::config(
                    "--sink: several sinks are configured; name one",
                ))
            }
        },
    };
    Ok(cfg.sink_at(&name)?.0)
}

fn mapping_for(cfg: &Config, i: usize, table: &str) -> Result<Mapping> {
    crate::apply::mapping::for_table(cfg, i, table)?.ok_or_else(|| {
        Error::config(format!(
            "--table {table}: sink {} does not map it",
            cfg.sinks[i].name
        ))
    })
}

fn keys_text(keys: &[Vec<Option<String>>], n: usize) -> String {
    let shown: Vec<String> = keys
        .iter()
        .take(n)
        .map(|k| {
            let parts: Vec<String> = k
                .iter()
                .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                .collect();
            format!("({})", parts.join(", "))
        })
        .collect();
    let more = keys.len().saturating_sub(n);
    if more > 0 {
        format!("{} … and {more} more", shown.join(" "))
    } else {
        shown.join(" ")
    }
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let i = pick_sink(&cfg, args.sink.as_deref())?;
    if let Some(addr) = &args.metrics_listen {
        serve_metrics(addr).await?;
    }
    let src = crate::database::Endpoint::source(&cfg).connect().await?;
    let dst = crate::database::Endpoint::of_sink(&cfg.sinks[i], i)
        .connect()
        .await?;
    let tables = if args.tables.is_empty() {
        verify::tables(&cfg, i, &src).await?
    } else {
        args.tables.clone()
    };
    let opts = Options {
        chunk_rows: args.chunk_rows.max(2),
        rows_per_sec: args.rows_per_sec,
        recheck_after: Duration::from_secs(args.recheck_after_secs),
    };
    let tty = std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    let mut repairs = Vec::new();
    for table in &tables {
        let mapping = mapping_for(&cfg, i, table)?;
        let plan = verify::plan(&src, &dst, &mapping).await?;
        let est: i64 = src
            .query_one(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass($1)",
                &[&qualified(&plan.source)],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        let report = verify::verify_table(&src, &dst, &plan, &opts, |done| {
            if tty {
                eprint!("\rverify {table}: {done}/{} rows", est.max(done));
            }
        })
        .await?;
        if tty {
            eprintln!();
        }
        if args.repair && report.differences() > 0 {
            repairs.push((
                table.clone(),
                verify::repair(&cfg, &src, &dst, &plan, &report).await?,
            ));
        }
        reports.push(report);
    }
    print_reports(args.json, &cfg.sinks[i].name, &reports, &repairs);
    let clean = reports.iter().all(|r| r.differences() == 0);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
/// `--metrics-listen`: serve `/metrics` (`cutover_verify_*`) while verify runs.
async fn serve_metrics(addr: &str) -> Result<()> {
    let addr = addr
        .parse()
        .map_err(|_| Error::config(format!("--metrics-listen: {addr:?} is not host:port")))?;
    let handle = crate::observe::install_recorder()?;
    crate::observe::up("verify");
    crate::observe::serve(
        addr,
        handle,
        crate::observe::Readiness::new(),
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// Re-emitted source rows and deleted extra target rows, by table.
type Repairs = Vec<(String, (u64, u64))>;

/// The reports (and repairs) as JSON or as one line per table with the differing keys.
fn print_reports(json: bool, sink: &str, reports: &[verify::TableReport], repairs: &Repairs) {
    if json {
        let doc = serde_json::json!({
            "sink": sink,
            "tables": reports,
            "repairs": repairs.iter().map(|(t, (r, d))| serde_json::json!({"table": t, "reemitted": r, "deleted_extra": d})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        for r in reports {
            println!(
            "{} → {}: {} source rows, {} target rows, parity {:.2}%, missing {}, extra {}, different {} ({} chunks, {} mismatched, {:.1}s)",
            r.table,
            r.targets.join("+"),
            r.source_rows,
            r.target_rows,
            r.parity_pct,
            r.missing.len(),
            r.extra.len(),
            r.different.len(),
            r.chunks,
            r.mismatched_chunks,
            r.seconds
        );
            for (what, keys) in [
                ("missing", &r.missing),
                ("extra", &r.extra),
                ("different", &r.different),
            ] {
                if !keys.is_empty() {
                    println!("    {what}: {}", keys_text(keys, 10));
                }
            }
        }
        for (t, (re, del)) in repairs {
            println!("repaired {t}: re-emitted {re} source row(s) through the pipeline, deleted {del} extra target row(s)");
        }
    }
}
