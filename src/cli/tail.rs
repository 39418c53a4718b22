//! `cutover tail --topic T [--from-beginning | --last N] [--follow]`: print a topic's change
//! events decoded (writer schemas from the registry) as JSON lines, for inspection. Reads with
//! plain partition assignment: no consumer group, nothing committed.

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{load_config, Cli};
use crate::apply::decode::{ChangeEvent, Decoder};
use crate::error::{Error, Result};
use crate::kafka::inspect::Inspector;
use crate::registry::RegistryClient;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The topic to read.
    #[arg(long)]
    pub topic: String,
    /// From the oldest retained record (default: the last --last records of each partition).
    #[arg(long)]
    pub from_beginning: bool,
    /// How many of the newest records per partition to start with.
    #[arg(long, default_value_t = 10)]
    pub last: i64,
    /// Keep printing new records until interrupted.
    #[arg(long)]
    pub follow: bool,
}

fn row_json(ev: &ChangeEvent, row: &Option<Vec<Option<String>>>) -> serde_json::Value {
    match row {
        None => serde_json::Value::Null,
        Some(r) => serde_json::Value::Object(
            ev.fields
                .fields
                .iter()
                .zip(r)
                .map(|(f, v)| {
                    (
                        f.name.clone(),
                        v.clone().map(serde_json::Value::String).unwrap_or_default(),
                    )
                })
                .collect(),
        ),
    }
}

pub async fn run(cli: &Cli, args: &Args) -> Result<ExitCode> {
    let cfg = load_config(cli)?;
    let inspector = Inspector::new(&cfg.kafka)?;
    let marks = inspector
        .watermarks(std::slice::from_ref(&args.topic))
        .await?;
    let parts = marks
        .get(&args.topic)
        .cloned()
        .flatten()
        .ok_or_else(|| Error::config(format!("--topic {}: no such topic", args.topic)))?;
    let consumer: BaseConsumer = crate::kafka::base_config(&cfg.kafka)
        // librdkafka wants a group for assign(); it is never joined or committed to.
        .set("group.id", format!("{}.tail", cfg.kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| Error::kafka("creating the tail consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for (p, w) in &parts {
        let start = if args.from_beginning {
            w.low
        } else {
            (w.high - args.last.max(0)).max(w.low)
        };
        remaining += w.high - start;
        tpl.add_partition_offset(&args.topic, *p, Offset::Offset(start))
            .map_err(|e| Error::kafka("assigning", e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assigning the tail consumer", e))?;
    let mut decoder = Decoder::new(RegistryClient::new(&cfg.registry)?);
    loop {
        if !args.follow && remaining <= 0 {
            break;
        }
        let msg = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(500)));
        let m = match msg {
            None => continue,
            Some(Err(e)) => return Err(Error::kafka("reading", e)),
            Some(Ok(m)) => m.detach(),
        };
        remaining -= 1;
        let line = match m.payload() {
            None => {
                serde_json::json!({"partition": m.partition(), "offset": m.offset(), "value": null})
            }
            Some(v) => match decoder.decode(m.key(), v).await {
                Ok(ev) => serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "table": ev.table.to_string(),
                    "op": ev.op.code(),
                    "commit_lsn": crate::event::Lsn(ev.commit_lsn as u64).to_string(),
                    "seq": ev.seq,
                    "commit_ts": chrono::DateTime::from_timestamp_micros(ev.commit_ts_us)
                        .map(|t| t.to_rfc3339()),
                    "key": ev.key_columns.iter().cloned().zip(ev.key_values().unwrap_or_default()).collect::<std::collections::BTreeMap<_, _>>(),
                    "before": row_json(&ev, &ev.before),
                    "after": row_json(&ev, &ev.after),
                }),
                Err(e) => serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "error": e.to_string(),
                }),
            },
        };
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
