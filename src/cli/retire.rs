//! `cutover retire --sink NAME [--dry-run]`: remove what a sink leaves behind in its target
//! once it is gone for good (e.g. the mirror into the legacy store after the cutover).
//!
//! ```text
//!   take the sink's exclusive advisory lock ── refused while any instance of it runs
//!      ▼
//!   one target transaction: drop its replication origins (cutover:<pipeline>:<sink>[:…]),
//!   delete its progress rows and truncate watermarks
//!      ▼
//!   delete its consumer group on the broker (a broker that cannot is reported, not fatal)
//! ```
//!
//! Why it matters: every origin with progress holds one of the target server's
//! `max_replication_slots` origin slots until dropped, and a retired sink's stale progress
//! would make a sink later configured with the same name skip everything up to it.
//! Exit 0 done (or nothing to do), 1 error (a running sink is one), 2 configuration error.

use std::process::ExitCode;

use super::{load_config, Cli};
use crate::apply::replay;
use crate::config::{Config, BACKSYNC_SINK};
use crate::database::origin::origin_name;
use crate::database::Endpoint;
use crate::error::{Error, Result};
use crate::event::TableId;
use crate::kafka;
use crate::kafka::topic::for_table as topic_for;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sink to retire (a `[[sinks]]` name, or `backsync`; every instance must be stopped).
    #[arg(long)]
    pub sink: String,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a sink left in its target.
struct Leftovers {
    origins: Vec<String>,
    /// This pipeline's topics with stored progress, and the progress rows on them.
    topics: Vec<String>,
    progress_rows: usize,
    /// Source tables with a truncate watermark whose topic is one of `topics`.
    truncated_tables: Vec<String>,
}

async fn leftovers(client: &tokio_postgres::Client, cfg: &Config, sink: &str) -> Result<Leftovers> {
    let base = origin_name(&cfg.name, sink, None);
    let origins = client
        .query(
            "SELECT roname FROM pg_replication_origin
             WHERE roname = $1 OR roname LIKE $1 || ':%' ORDER BY roname",
            &[&base],
        )
        .await
        .map_err(|e| Error::postgres("listing replication origins", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Progress rows are per (sink name, topic): only this pipeline's topics
    // (`<topic_prefix>.…`), so another pipeline's sink of the same name keeps its own.
    let ours = format!("{}.", cfg.topic_prefix);
    let progress = crate::state::progress::progress(client, sink).await?;
    let mut topics: Vec<String> = progress
        .into_keys()
        .filter_map(|(t, _)| t.starts_with(&ours).then_some(t))
        .collect();
    let progress_rows = topics.len();
    topics.sort();
    topics.dedup();
    let truncated_tables = crate::state::progress::truncates(client, sink)
        .await?
        .into_keys()
        .filter(|t| {
            let (schema, name) = t.split_once('.').unwrap_or(("", t));
            topics.contains(&topic_for(&cfg.topic_prefix, &TableId::new(schema, name)))
        })
        .collect();
    Ok(Leftovers {
        origins,
        topics,
        progress_rows,
        truncated_tables,
    })
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    // The back-sync's sink lives in the reversed pipeline (it writes legacy).
    let cfg = if args.sink == BACKSYNC_SINK
        && cfg.backsync.is_some()
        && !cfg.sinks.iter().any(|s| s.name == args.sink)
    {
        cfg.reverse()?
    } else {
        cfg
    };
    let (i, sink) = cfg.sink_at(&args.sink).map_err(|e| e.context("--sink"))?;
    let group = sink.group_id(&cfg.name);
    let mut client = Endpoint::of_sink(sink, i).connect().await?;
    replay::hold_exclusive(&client, &sink.name, &group).await?;
    crate::state::ensure_target(&client).await?;
    let found = leftovers(&client, &cfg, &sink.name).await?;
    println!(
        "sink {}: {} replication origin(s) {:?}, {} progress row(s), consumer group {group}",
        sink.name,
        found.origins.len(),
        found.origins,
        found.progress_rows
    );
    if args.dry_run {
        println!("dry run: nothing removed");
        return Ok(ExitCode::SUCCESS);
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| Error::postgres("BEGIN", e))?;
    for o in &found.origins {
        tx.execute("SELECT pg_replication_origin_drop($1)", &[o])
            .await
            .map_err(|e| Error::postgres(format!("dropping replication origin {o}"), e))?;
    }
    crate::state::progress::clear_truncates(&tx, &sink.name, &found.truncated_tables).await?;
    crate::state::progress::forget_progress(&tx, &sink.name, &found.topics).await?;
    tx.commit()
        .await
        .map_err(|e| Error::postgres("COMMIT", e))?;
    tracing::info!(sink = %sink.name, origins = ?found.origins, progress_rows = found.progress_rows, "sink retired in its target");
    println!(
        "dropped {} origin(s), deleted {} progress row(s)",
        found.origins.len(),
        found.progress_rows
    );
    match kafka::delete_group(&cfg.kafka, &group).await {
        Ok(()) => println!("deleted consumer group {group}"),
        Err(e) => println!(
            "consumer group {group} not deleted ({e}); it only holds committed offsets, which \
             a sink with this name would not trust over its (now empty) progress"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
