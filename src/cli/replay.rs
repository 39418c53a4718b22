//! `cutover replay --sink NAME (--from-beginning | --from-offset N | --from-timestamp T)
//! [--to-timestamp T] [--topic T ...] [--dry-run]`: re-apply topic history into a stopped sink.
//! See `crate::apply::replay` for the protocol. Exit 0 done, 1 error (a running sink is one).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{load_config, Cli};
use crate::apply::consumer::captured_topics;
use crate::apply::replay;
use crate::apply::service::Bounds;
use crate::database::Endpoint;
use crate::error::{Error, Result};
use crate::kafka::inspect::Inspector;
use crate::observe::Readiness;
use crate::registry::RegistryClient;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["from_beginning", "from_offset", "from_timestamp"])))]
pub struct Args {
    /// The sink to replay into (it must be stopped).
    #[arg(long)]
    pub sink: String,
    /// From the oldest retained record of every partition.
    #[arg(long)]
    pub from_beginning: bool,
    /// From this offset in every partition (clamped to what is retained).
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// From the first event committed at or after this time (RFC 3339, or Unix ms).
    #[arg(long)]
    pub from_timestamp: Option<String>,
    /// Stop before the first event committed after this time (default: the current end).
    #[arg(long)]
    pub to_timestamp: Option<String>,
    /// Only these topics (default: every captured topic).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Only report how many events per topic would be replayed.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_time(field: &str, s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| Error::config(format!("{field}: {s:?} is not RFC 3339 or Unix ms ({e})")))
}

/// Per partition: the first offset to re-apply and the first not to.
struct Span {
    starts: HashMap<(String, i32), i64>,
    ends: HashMap<(String, i32), i64>,
}

impl Span {
    fn events(&self, k: &(String, i32), start: i64) -> i64 {
        self.ends.get(k).copied().unwrap_or(start) - start
    }
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let (i, sink_cfg) = cfg.sink_at(&args.sink)?;
    let sink_cfg = sink_cfg.clone();
    let topics = select_topics(&cfg, args).await?;
    let inspector = Inspector::new(&cfg.kafka)?;
    let span = span(&inspector, &topics, args).await?;
    let total = print_plan(&span);
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(ExitCode::SUCCESS);
    }

    // Exclusive lock (refused while the sink runs), reset, audit.
    let mut control = Endpoint::of_sink(&sink_cfg, i).connect().await?;
    crate::state::ensure_target(&control).await?;
    let group = sink_cfg.group_id(&cfg.name);
    replay::hold_exclusive(&control, &args.sink, &group).await?;
    let tables: Vec<String> = crate::state::progress::truncates(&control, &args.sink)
        .await?
        .into_keys()
        .filter(|t| {
            let topic = crate::kafka::topic::for_table(
                &cfg.topic_prefix,
                &crate::apply::mapping::table_id(t),
            );
            topics.contains(&topic)
        })
        .collect();
    let spec = spec_of(args);
    let audit = crate::state::progress::reset(
        &mut control,
        &args.sink,
        &span.starts,
        &tables,
        (&super::operator(), &spec, total),
    )
    .await?;
    if let Err(e) = inspector.commit(&group, &span.starts).await {
        tracing::warn!(error = %e, "could not move the group's committed offsets (lag will read high until the first batch)");
    }
    tracing::info!(sink = %args.sink, %spec, events = total, "replay started");

    // Run the sink, bounded, until every partition's progress reaches its end.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sink = crate::backsync::start_sink(
        &cfg,
        &args.sink,
        Readiness::new(),
        Some(Bounds {
            topics: topics.clone(),
            end: span.ends.clone(),
        }),
    )
    .await?;
    let task = tokio::spawn(sink.run(stop));
    let started = Instant::now();
    if !wait_for_end(&control, &args.sink, &span, total, started, &task).await? {
        task.await
            .map_err(|e| Error::internal(format!("sink task: {e}")))??;
        return Err(Error::internal("the replay's sink stopped before the end"));
    }
    let _ = stop_tx.send(true);
    task.await
        .map_err(|e| Error::internal(format!("sink task: {e}")))??;
    crate::state::progress::finish(&control, audit).await?;
    println!(
        "replayed {total} events into sink {} in {:.1}s (audit id {audit})",
        args.sink,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The topics to replay: `--topic`s (each must be captured), else every captured topic.
async fn select_topics(cfg: &crate::config::Config, args: &Args) -> Result<Vec<String>> {
    let registry = RegistryClient::new(&cfg.registry)?;
    let captured = captured_topics(cfg, &registry).await?;
    if args.topics.is_empty() {
        return Ok(captured);
    }
    for t in &args.topics {
        if !captured.contains(t) {
            return Err(Error::config(format!(
                "--topic {t}: not a captured topic of this pipeline (known: {captured:?})"
            )));
        }
    }
    Ok(args.topics.clone())
}

/// Start and end offsets of every partition of `topics` for the requested window.
async fn span(inspector: &Inspector, topics: &[String], args: &Args) -> Result<Span> {
    let marks = inspector.watermarks(topics).await?;
    let mut tps = Vec::new();
    let mut low_high = HashMap::new();
    for (t, parts) in &marks {
        for (p, w) in parts.iter().flatten() {
            tps.push((t.clone(), *p));
            low_high.insert((t.clone(), *p), (w.low, w.high));
        }
    }
    let starts: HashMap<(String, i32), i64> = if args.from_beginning {
        low_high
            .iter()
            .map(|(k, (lo, _))| (k.clone(), *lo))
            .collect()
    } else if let Some(o) = args.from_offset {
        low_high
            .iter()
            .map(|(k, (lo, hi))| (k.clone(), o.clamp(*lo, *hi)))
            .collect()
    } else {
        let ts = parse_time(
            "--from-timestamp",
            args.from_timestamp.as_deref().unwrap_or(""),
        )?;
        inspector.offsets_for_time(&tps, ts).await?
    };
    let ends: HashMap<(String, i32), i64> = match &args.to_timestamp {
        None => low_high
            .iter()
            .map(|(k, (_, hi))| (k.clone(), *hi))
            .collect(),
        Some(s) => {
            let ts = parse_time("--to-timestamp", s)?;
            // The first record committed after `ts` is where the replay stops.
            inspector.offsets_for_time(&tps, ts + 1).await?
        }
    };
    let starts = starts
        .into_iter()
        .map(|(k, s)| {
            let e = ends.get(&k).copied().unwrap_or(s);
            (k, s.min(e))
        })
        .collect();
    Ok(Span { starts, ends })
}

/// Print the events to replay per topic; returns the total.
fn print_plan(span: &Span) -> i64 {
    let mut per_topic: BTreeMap<String, i64> = BTreeMap::new();
    for (k, s) in &span.starts {
        *per_topic.entry(k.0.clone()).or_default() += span.events(k, *s);
    }
    let total: i64 = per_topic.values().sum();
    println!("{:<60} {:>12}", "TOPIC", "EVENTS");
    for (t, n) in &per_topic {
        println!("{t:<60} {n:>12}");
    }
    println!("{:<60} {:>12}", "total", total);
    total
}

/// The window as recorded in the audit (`from offset 10 to end`).
fn spec_of(args: &Args) -> String {
    let from = if args.from_beginning {
        "beginning".to_string()
    } else if let Some(o) = args.from_offset {
        format!("offset {o}")
    } else {
        format!(
            "timestamp {}",
            args.from_timestamp.clone().unwrap_or_default()
        )
    };
    let to = args.to_timestamp.clone().unwrap_or_else(|| "end".into());
    format!("from {from} to {to}")
}

/// Report progress until every partition's stored progress reaches its end (`true`), or the
/// sink stops first (`false`).
async fn wait_for_end(
    control: &tokio_postgres::Client,
    sink: &str,
    span: &Span,
    total: i64,
    started: Instant,
    task: &tokio::task::JoinHandle<Result<()>>,
) -> Result<bool> {
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let progress = crate::state::progress::progress(control, sink).await?;
        let done: i64 = span
            .starts
            .iter()
            .map(|(k, s)| {
                let e = span.ends.get(k).copied().unwrap_or(*s);
                progress
                    .get(k)
                    .map(|p| p.next_offset.clamp(*s, e) - s)
                    .unwrap_or(0)
            })
            .sum();
        let (_, text) = super::progress(done, total, 0, started, "events");
        let line = format!("replay {sink}: {text}");
        if tty {
            eprint!("\r{line}   ");
        } else if last_line.elapsed() >= Duration::from_secs(5) || done >= total {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if done >= total {
            if tty {
                eprintln!();
            }
            return Ok(true);
        }
        if task.is_finished() {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
