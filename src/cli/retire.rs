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
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

use super::{load_config, Cli};
use crate::apply::replay;
use crate::apply::service::target_endpoint;
use crate::backsync::origin::origin_name;
use crate::config::BACKSYNC_SINK;
use crate::error::{Error, Result};

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
    progress_rows: i64,
}

async fn leftovers(
    client: &tokio_postgres::Client,
    base: &str,
    sink: &str,
    prefix: &str,
) -> Result<Leftovers> {
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
    let progress_rows = client
        .query_one(
            "SELECT count(*) FROM cutover.sink_progress
             WHERE sink = $1 AND starts_with(topic, $2 || '.')",
            &[&sink, &prefix],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0); // no progress table: the sink never ran here
    Ok(Leftovers {
        origins,
        progress_rows,
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
    let i = cfg
        .sinks
        .iter()
        .position(|s| s.name == args.sink)
        .ok_or_else(|| Error::config(format!("--sink {}: no such sink in sinks[]", args.sink)))?;
    let sink = &cfg.sinks[i];
    let group = sink.group_id(&cfg.name);
    let mut client = target_endpoint(sink, i).connect().await?;
    replay::hold_exclusive(&client, &sink.name, &group).await?;
    let base = origin_name(&cfg.name, &sink.name, None);
    let found = leftovers(&client, &base, &sink.name, &cfg.topic_prefix).await?;
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
    // Progress rows are per (sink name, topic): only this pipeline's topics
    // (`<topic_prefix>.…`) are removed, so another pipeline with a sink of the same name in
    // the same database keeps its own. Truncate watermarks go with their table's topic.
    let exists: bool = tx
        .query_one(
            "SELECT to_regclass('cutover.sink_progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("to_regclass", e))?
        .get(0);
    if exists {
        let topics: Vec<String> = tx
            .query(
                "SELECT DISTINCT topic FROM cutover.sink_progress
                 WHERE sink = $1 AND starts_with(topic, $2 || '.')",
                &[&sink.name, &cfg.topic_prefix],
            )
            .await
            .map_err(|e| Error::postgres("reading cutover.sink_progress", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let truncates: Vec<String> = tx
            .query(
                "SELECT source_table FROM cutover.sink_truncates WHERE sink = $1",
                &[&sink.name],
            )
            .await
            .map_err(|e| Error::postgres("reading cutover.sink_truncates", e))?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|t| {
                let (schema, name) = t.split_once('.').unwrap_or(("", t));
                topics.contains(&crate::capture::topic_for(
                    &cfg.topic_prefix,
                    &crate::event::TableId::new(schema, name),
                ))
            })
            .collect();
        tx.execute(
            "DELETE FROM cutover.sink_truncates WHERE sink = $1 AND source_table = ANY($2)",
            &[&sink.name, &truncates],
        )
        .await
        .map_err(|e| Error::postgres("deleting the sink's truncate watermarks", e))?;
        tx.execute(
            "DELETE FROM cutover.sink_progress WHERE sink = $1 AND topic = ANY($2)",
            &[&sink.name, &topics],
        )
        .await
        .map_err(|e| Error::postgres("deleting the sink's progress", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::postgres("COMMIT", e))?;
    tracing::info!(sink = %sink.name, origins = ?found.origins, progress_rows = found.progress_rows, "sink retired in its target");
    println!(
        "dropped {} origin(s), deleted {} progress row(s)",
        found.origins.len(),
        found.progress_rows
    );
    match delete_group(&cfg, &group).await {
        Ok(()) => println!("deleted consumer group {group}"),
        Err(e) => println!(
            "consumer group {group} not deleted ({e}); it only holds committed offsets, which \
             a sink with this name would not trust over its (now empty) progress"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete_group(cfg: &crate::config::Config, group: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::base_config(&cfg.kafka)
            .create()
            .map_err(|e| Error::kafka("creating admin client", e))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_groups(&[group], &opts)
        .await
        .map_err(|e| Error::kafka("DeleteGroups", e))?;
    for r in results {
        if let Err((g, code)) = r {
            return Err(Error::new(
                crate::kafka::classify_code(code),
                format!("DeleteGroups {g}: {code}"),
            ));
        }
    }
    Ok(())
}
