//! `cutover backfill [--table T ...] [--chunk-rows N] [--rows-per-sec N] [--restart] [--no-wait]`:
//! copy existing rows of captured tables into their topics as `op=r` events, consistent with
//! the stream, through the running capture (see `crate::capture::backfill`). This command
//! records the request in `cutover.backfill` on the source and shows progress (rows, rate,
//! ETA) until every requested table is done; the work itself survives this command (and a
//! capture restart: it resumes from the last acknowledged chunk).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{load_config, Cli};
use crate::error::{Error, Result};
use crate::state::backfill;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tables to backfill, schema.table (default: every captured table).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Primary keys per chunk (one short SELECT each).
    #[arg(long, default_value_t = 1000)]
    pub chunk_rows: i32,
    /// Read at most this many rows per second per table (0: as fast as the pipeline takes).
    #[arg(long, default_value_t = 0)]
    pub rows_per_sec: i32,
    /// Start again from the first key, also for tables already backfilled.
    #[arg(long)]
    pub restart: bool,
    /// Record the request and exit; the running capture does the work.
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    if args.chunk_rows < 1 {
        return Err(Error::config("--chunk-rows: must be at least 1"));
    }
    let src = crate::database::Endpoint::source(&cfg).connect().await?;
    crate::state::ensure_backfill(&src).await?;
    let mut tables = args.tables.clone();
    if tables.is_empty() {
        tables = crate::capture::setup::captured_tables(&cfg, &src).await?;
    }
    for t in &tables {
        let est = estimate(&src, t).await?;
        backfill::request(
            &src,
            &cfg.name,
            t,
            args.chunk_rows,
            args.rows_per_sec,
            est,
            args.restart,
        )
        .await?;
    }
    println!(
        "backfill requested for {} table(s): {}",
        tables.len(),
        tables.join(", ")
    );
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    wait_until_done(&src, &cfg.name, &tables, started).await?;
    println!(
        "backfill done: {} table(s) in {:.1}s",
        tables.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The table's row estimate (the planner's, or a count when it was never analysed).
async fn estimate(src: &tokio_postgres::Client, t: &str) -> Result<i64> {
    let q = crate::database::ident::qualified(&crate::apply::mapping::table_id(t));
    let est: Option<i64> = src
        .query_one(
            "SELECT greatest(reltuples::bigint, 0) FROM pg_class WHERE oid = to_regclass($1)",
            &[&q],
        )
        .await
        .map_err(|e| Error::postgres(format!("estimating rows of {t}"), e))?
        .get(0);
    Ok(match est {
        None => {
            return Err(Error::config(format!(
                "--table {t}: no such table on the source"
            )))
        }
        // Never analysed: count (fine for the tables a backfill is cheap for anyway).
        Some(0) => src
            .query_one(&format!("SELECT count(*) FROM {q}"), &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0),
        Some(n) => n,
    })
}

/// Show a progress bar until every table's backfill is done.
async fn wait_until_done(
    src: &tokio_postgres::Client,
    pipeline: &str,
    tables: &[String],
    started: Instant,
) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut first: Option<i64> = None;
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let rows = backfill::status(src, pipeline, tables).await?;
        let done: i64 = rows.iter().map(|r| r.rows_done).sum();
        let est: i64 = rows.iter().map(|r| r.rows_estimated).sum::<i64>().max(done);
        let finished = rows.iter().all(|r| r.state == "done");
        let base = *first.get_or_insert(done);
        let (pct, text) = super::progress(done, est, base, started, "rows");
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64).round() as usize;
        let line = format!(
            "backfill [{}{}] {text}",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width))
        );
        if tty {
            eprint!("\r{line}   ");
        } else if last_line.elapsed() >= Duration::from_secs(5) || finished {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if finished {
            if tty {
                eprintln!();
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
