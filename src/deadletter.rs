//! Dead letters (invariant 6: bad data is parked, never dropped). Capture and every sink park
//! what they cannot process here, in the same shape: the original bytes (or, for capture, the
//! raw row as JSON) with headers naming the error and where the record came from.
//!
//! ```text
//!   capture ── row the codec cannot encode ──▶ <prefix>.dlq.capture   (through capture's own
//!                                                                      tracked producer: the LSN
//!                                                                      waits for its ack)
//!   sink    ── event it cannot decode/map/write ─▶ <prefix>.dlq.<sink> (acked before the batch
//!                                                                      commits)
//!   headers: cutover.error, cutover.error.kind, then where it came from (cutover.sink,
//!            cutover.topic, cutover.partition, cutover.offset | cutover.table, cutover.commit_lsn)
//! ```
//!
//! Nothing is committed past a dead letter before the broker acknowledged it, so a crash
//! between the two re-parks the record instead of losing it.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::kafka::{self, TopicSpec};

/// Why a record was parked and where it came from.
pub struct Letter<'a> {
    pub error: &'a Error,
    /// Where it came from, as `cutover.<name>` headers, in order.
    pub origin: Vec<(&'static str, String)>,
}

impl Letter<'_> {
    pub fn headers(&self) -> OwnedHeaders {
        let error = self.error.to_string();
        let mut h = OwnedHeaders::new()
            .insert(Header {
                key: "cutover.error",
                value: Some(error.as_str()),
            })
            .insert(Header {
                key: "cutover.error.kind",
                value: Some(self.error.kind().as_str()),
            });
        for (key, value) in &self.origin {
            h = h.insert(Header {
                key,
                value: Some(value.as_str()),
            });
        }
        h
    }
}

/// Create a dead-letter topic (one partition: order of parking, not throughput, matters).
pub async fn ensure_topic(cfg: &KafkaConfig, topic: &str) -> Result<()> {
    kafka::ensure_topics(
        cfg,
        &[TopicSpec {
            name: topic.to_string(),
            partitions: 1,
            replication_factor: cfg.replication_factor,
            configs: vec![],
        }],
    )
    .await
    .map(|_| ())
}

/// A dead-letter producer of its own (a sink's; capture parks through its tracked producer).
pub struct Parking {
    producer: FutureProducer,
    topic: String,
}

impl Parking {
    /// Create `topic` and an idempotent producer for it.
    pub async fn open(cfg: &KafkaConfig, topic: String) -> Result<Parking> {
        ensure_topic(cfg, &topic).await?;
        let producer: FutureProducer = kafka::producer_config(cfg)
            .create()
            .map_err(|e| Error::kafka("creating dead-letter producer", e))?;
        Ok(Parking { producer, topic })
    }

    /// Park one record; the future resolves when the broker acknowledged it.
    pub fn park(
        &self,
        key: &[u8],
        payload: &[u8],
        letter: &Letter<'_>,
    ) -> impl std::future::Future<Output = Result<()>> + use<> {
        let record = FutureRecord::to(&self.topic)
            .headers(letter.headers())
            .payload(payload)
            .key(key);
        let fut = self.producer.send_result(record).map_err(|(e, _)| e);
        let topic = self.topic.clone();
        async move {
            match fut {
                Err(e) => Err(Error::kafka("producing a dead letter", e)),
                Ok(f) => match f.await {
                    Ok(Ok(d)) => match kafka::unverified_delivery(&topic, d.partition, d.offset) {
                        None => Ok(()),
                        Some(e) => Err(Error::new(ErrorKind::Unavailable, e)),
                    },
                    Ok(Err((e, _))) => Err(Error::kafka("producing a dead letter", e)),
                    Err(_) => Err(Error::new(
                        ErrorKind::Unavailable,
                        "dead-letter delivery canceled",
                    )),
                },
            }
        }
    }
}
