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
        let q = crate::database::ident::qualified(&crate::apply::mapping::table_id(t));
        let est: Option<i64> = src
            .query_one(
                "SELECT greatest(reltuples::bigint, 0) FROM pg_class WHERE oid = to_regclass($1)",
                &[&q],
            )
            .await
            .map_err(|e| Error::postgres(format!("estimating rows of {t}"), e))?
            .get(0);
        let est = match est {
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
        };
        src.execute(
            "INSERT INTO cutover.backfill (pipeline, table_name, state, chunk_rows, rows_per_sec, rows_estimated)
             VALUES ($1, $2, 'pending', $3, $4, $5)
             ON CONFLICT (pipeline, table_name) DO UPDATE SET
               chunk_rows = EXCLUDED.chunk_rows, rows_per_sec = EXCLUDED.rows_per_sec,
               rows_estimated = EXCLUDED.rows_estimated, requested_at = now(), error = NULL,
               state = CASE WHEN $6 OR cutover.backfill.state = 'failed'
                            THEN 'pending' ELSE cutover.backfill.state END,
               last_key = CASE WHEN $6 THEN NULL ELSE cutover.backfill.last_key END,
               rows_done = CASE WHEN $6 THEN 0 ELSE cutover.backfill.rows_done END,
               chunks_done = CASE WHEN $6 THEN 0 ELSE cutover.backfill.chunks_done END",
            &[&cfg.name, t, &args.chunk_rows, &args.rows_per_sec, &est, &args.restart],
        )
        .await
        .map_err(|e| Error::postgres("recording the backfill request", e))?;
    }
    println!(
        "backfill requested for {} table(s): {}",
        tables.len(),
        tables.join(", ")
    );
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut first: Option<i64> = None;
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let rows = src
            .query(
                "SELECT table_name, state, rows_done, rows_estimated, error FROM cutover.backfill
                 WHERE pipeline = $1 AND table_name = ANY($2) ORDER BY table_name",
                &[&cfg.name, &tables],
            )
            .await
            .map_err(|e| Error::postgres("reading backfill progress", e))?;
        let done: i64 = rows.iter().map(|r| r.get::<_, i64>(2)).sum();
        let est: i64 = rows
            .iter()
            .map(|r| r.get::<_, i64>(3))
            .sum::<i64>()
            .max(done);
        let finished = rows.iter().all(|r| r.get::<_, String>(1) == "done");
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
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if tty {
        eprintln!();
    }
    println!(
        "backfill done: {} table(s) in {:.1}s",
        tables.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
