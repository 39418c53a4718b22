//! Why no broker answered: the reason behind librdkafka's bare "Broker transport failure".
//!
//! A metadata or watermark request that finds no usable broker within its timeout fails with
//! `BrokerTransportFailure` and nothing else. *Why* no broker was usable (a refused
//! connection, a TLS alert, failed SASL authentication) travels separately, as a global error
//! event on the client's main queue, which nobody polls on a client that only asks for
//! metadata. The operator then reads "Broker transport failure" for a wrong password.
//!
//! ```text
//!  broker thread ──connect/TLS/SASL fails──▶ main queue ──poll──▶ Diagnosis.last
//!                                                                     │
//!  fetch_metadata ──no usable broker in timeout──▶ BrokerTransportFailure
//!                                                      │ explain(): poll ≤ REASON_WAIT
//!                                                      ▼            until a reason is known
//!  Error { kind: Auth, "metadata for topic t: …transport failure; the broker connection
//!          failed with: SASL authentication error: …" }
//! ```
//!
//! The reason decides the kind: a failed authentication or a refused certificate is
//! [`ErrorKind::Auth`] (not retried: retrying cannot fix it), anything else keeps the
//! request's own kind. Waiting for a reason costs nothing when the broker is down (a refused
//! connection is reported at once) and at most [`REASON_WAIT`] when the connection attempt
//! itself hangs.
//!
//! A reason is used only while it is fresh ([`REASON_FRESH`]): a long-lived client (the
//! monitor's) must not explain today's timeout with a refused login from this morning.
//! librdkafka reports an identical failure of a broker at most every 30 s
//! (`rd_kafka_broker_set_error`), so a reason younger than 60 s is still the current one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::classify::{certificate_failure, kafka_code};
use crate::error::{Error, ErrorKind, Result};

/// The longest a failed request waits for the reason of its failure.
pub const REASON_WAIT: Duration = Duration::from_secs(5);

/// How long a reported reason counts as the current one.
pub const REASON_FRESH: Duration = Duration::from_secs(60);

/// A connection failure as librdkafka reported it, and when.
type Reason = (Instant, RDKafkaErrorCode, String);

/// A client context that remembers the last reason librdkafka gave for a broker connection
/// failing (its global error events), and logs each like the default context does.
#[derive(Default)]
pub struct Diagnosis {
    last: Mutex<Option<Reason>>,
}

impl Diagnosis {
    /// The last connection failure reported within `fresh`, if any.
    pub fn last(&self, fresh: Duration) -> Option<(RDKafkaErrorCode, String)> {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(at, _, _)| at.elapsed() <= fresh)
            .map(|(_, code, reason)| (*code, reason.clone()))
    }
}

impl ClientContext for Diagnosis {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!("librdkafka: {error}: {reason}");
        let Some(code) = error.rdkafka_error_code() else {
            return;
        };
        // "1/1 brokers are down" follows every failure and says nothing about its cause.
        if code != RDKafkaErrorCode::AllBrokersDown {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), code, reason.to_string()));
        }
    }
}

impl ConsumerContext for Diagnosis {}

/// A client for metadata and watermark requests only (no group, never joined).
pub type MetadataClient = BaseConsumer<Diagnosis>;

/// A [`MetadataClient`] from a client config (`kafka::base_config`).
pub fn metadata_client(config: &ClientConfig) -> Result<MetadataClient> {
    config
        .create_with_context(Diagnosis::default())
        .map_err(|e| Error::kafka("creating Kafka metadata client", e))
}

/// The code of a Kafka error, admin errors included (rust-rdkafka's `rdkafka_error_code()`
/// does not expose theirs).
fn code_of(err: &KafkaError) -> Option<RDKafkaErrorCode> {
    match err {
        KafkaError::AdminOp(code) => Some(*code),
        e => e.rdkafka_error_code(),
    }
}

/// The request failed because no broker could be used (as opposed to a broker answering with
/// an error): only then is there a connection failure to look for.
fn no_usable_broker(err: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code_of(err),
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::TimedOutQueue
        )
    )
}

/// The kind a connection failure's reason implies, if it implies one that is not retried.
pub fn reason_kind(code: RDKafkaErrorCode, reason: &str) -> Option<ErrorKind> {
    if kafka_code(code) == ErrorKind::Auth || certificate_failure(reason) {
        Some(ErrorKind::Auth)
    } else {
        None
    }
}

/// The reason `client` was given for its broker connections failing, waiting up to
/// [`REASON_WAIT`] for one to arrive.
fn reason(client: &MetadataClient) -> Option<(RDKafkaErrorCode, String)> {
    let deadline = Instant::now() + REASON_WAIT;
    let mut last = client.context().last(REASON_FRESH);
    while last.is_none() && Instant::now() < deadline {
        // Serves the queued log and error events; a metadata client has no messages to return.
        let _ = client.poll(Duration::from_millis(100));
        last = client.context().last(REASON_FRESH);
    }
    last
}

/// `err` from a request `what`, with `reason` when there is one (which then decides the kind).
fn explained(what: String, err: KafkaError, reason: Option<(RDKafkaErrorCode, String)>) -> Error {
    let Some((code, reason)) = reason else {
        return Error::kafka(what, err);
    };
    let kind = reason_kind(code, &reason).unwrap_or_else(|| crate::error::classify::kafka(&err));
    Error::with_source(
        kind,
        format!("{what}: {err}; the broker connection failed with: {reason}"),
        err,
    )
}

/// `err` from a request `what` on `client`, with the reason the broker connection failed
/// when there was one (waiting up to [`REASON_WAIT`] for it to arrive).
pub fn explain(client: &MetadataClient, what: impl Into<String>, err: KafkaError) -> Error {
    if !no_usable_broker(&err) {
        return Error::kafka(what, err);
    }
    let reason = reason(client);
    explained(what.into(), err, reason)
}

/// [`explain`] for a request made on a client that keeps no reasons (the admin client serves
/// only its own result queue): a metadata request on a fresh [`MetadataClient`] built from
/// `config` asks the brokers again, within `timeout`, and the reason it is given explains
/// `err`. Blocking.
pub fn explain_by_probe(
    config: &ClientConfig,
    timeout: Duration,
    what: impl Into<String>,
    err: KafkaError,
) -> Error {
    if !no_usable_broker(&err) {
        return Error::kafka(what, err);
    }
    let reason = metadata_client(config)
        .ok()
        .and_then(|c| match c.fetch_metadata(None, timeout) {
            Err(e) if no_usable_broker(&e) => reason(&c),
            // The brokers answer now: whatever failed, it was not the connection.
            _ => None,
        });
    explained(what.into(), err, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_authentication_or_refused_certificate_is_not_retried() {
        let sasl = "sasl_ssl://localhost:9093/bootstrap: SASL authentication error: \
                    Authentication failed during authentication due to invalid credentials \
                    with SASL mechanism SCRAM-SHA-512";
        assert_eq!(
            reason_kind(RDKafkaErrorCode::Authentication, sasl),
            Some(ErrorKind::Auth)
        );
        let cert = "ssl://localhost:9094/bootstrap: Receive failed: error:0A000412:SSL \
                    routines::sslv3 alert bad certificate: SSL alert number 42";
        assert_eq!(
            reason_kind(RDKafkaErrorCode::BrokerTransportFailure, cert),
            Some(ErrorKind::Auth)
        );
        let refused = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: \
                       Connection refused (after 0ms in state CONNECT)";
        assert_eq!(
            reason_kind(RDKafkaErrorCode::BrokerTransportFailure, refused),
            None
        );
    }

    #[test]
    fn the_reason_kept_is_the_last_that_says_something() {
        let d = Diagnosis::default();
        assert_eq!(d.last(REASON_FRESH), None);
        d.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error",
        );
        d.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(
            d.last(REASON_FRESH),
            Some((
                RDKafkaErrorCode::Authentication,
                "SASL authentication error".to_string()
            ))
        );
        // An old reason does not explain a new failure.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(d.last(Duration::from_millis(10)), None);
    }
}
