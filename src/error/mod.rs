//! One error type for the whole crate.
//!
//! Every failure is an [`Error`] carrying an [`ErrorKind`]. The kind is what callers branch on;
//! the message is for humans and always names the thing that failed (a config field path, a
//! topic, a table, a record). Whether an error is worth retrying is decided in exactly one place,
//! `retry::policy`, from the kind alone — never by string matching at call sites.
//!
//! This module is a leaf: it imports nothing from the crate. How peer codes become kinds
//! (SQLSTATE classes, librdkafka error codes) lives beside it in [`classify`].

pub mod classify;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether messages may quote row values (`observe.log_row_values`); off by default.
static ROW_VALUES: AtomicBool = AtomicBool::new(false);

/// Let (or stop) error messages quote row values: PostgreSQL's DETAIL, rejected values. Set
/// once at start from `observe.log_row_values`.
pub fn show_row_values(on: bool) {
    ROW_VALUES.store(on, Ordering::Relaxed);
}

/// `value` for a message, or a placeholder when row values are kept out of messages.
pub fn row_value(value: &str) -> String {
    if ROW_VALUES.load(Ordering::Relaxed) {
        let shown: String = value.chars().take(80).collect();
        format!("{shown:?}")
    } else {
        "<value withheld: observe.log_row_values>".to_string()
    }
}

/// What went wrong, coarsely. Retry decisions are derived from this (see `retry::policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The configuration is invalid; the message names the field path and the rule.
    Config,
    /// A peer (database, broker, registry) could not be reached or dropped the connection.
    Connection,
    /// A peer answered but is temporarily unable to serve (broker unavailable, leader election,
    /// deadlock, serialization failure, registry 5xx).
    Unavailable,
    /// A timeout elapsed while waiting on a peer.
    Timeout,
    /// Authentication or authorization failed: retrying will not help.
    Auth,
    /// Input data could not be decoded or does not fit its schema (a poison record).
    Data,
    /// A schema was rejected (invalid, or incompatible with the registered history).
    Schema,
    /// The request conflicts with existing state (e.g. incompatible schema, wrong phase).
    Conflict,
    /// Something that must exist does not (subject, topic, slot, publication, table).
    NotFound,
    /// The environment is misconfigured in a way an operator must fix (wal_level, privileges).
    Environment,
    /// Local I/O failed (files, sockets we own).
    Io,
    /// A bug or an invariant violation inside cutover.
    Internal,
}

impl ErrorKind {
    /// Every kind, for initialising per-kind metric series at zero.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::Config,
        ErrorKind::Connection,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Auth,
        ErrorKind::Data,
        ErrorKind::Schema,
        ErrorKind::Conflict,
        ErrorKind::NotFound,
        ErrorKind::Environment,
        ErrorKind::Io,
        ErrorKind::Internal,
    ];

    /// Stable lower-case name, used as a metric label value (`kind="connection"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connection => "connection",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Auth => "auth",
            ErrorKind::Data => "data",
            ErrorKind::Schema => "schema",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Environment => "environment",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The crate's error: a kind, a human message, and an optional underlying cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefix the message with more context, keeping kind and source.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// Classify a PostgreSQL client error. SQLSTATE classes decide the kind: connection
    /// exceptions and "operator intervention" are connection problems, deadlocks and
    /// serialization failures are transient, privilege and auth errors are fatal, data and
    /// integrity violations are data errors (poison for a sink).
    pub fn postgres(context: impl Into<String>, err: tokio_postgres::Error) -> Self {
        Error::postgres_by(context, err, classify::sqlstate)
    }

    /// A failure to open a PostgreSQL connection: like [`Error::postgres`], but a server error
    /// is judged as one about the connection's own parameters ([`classify::connect_sqlstate`]).
    pub fn postgres_connect(context: impl Into<String>, err: tokio_postgres::Error) -> Self {
        Error::postgres_by(context, err, classify::connect_sqlstate)
    }

    fn postgres_by(
        context: impl Into<String>,
        err: tokio_postgres::Error,
        by_sqlstate: fn(&str) -> ErrorKind,
    ) -> Self {
        let kind = match err.code() {
            Some(state) => by_sqlstate(state.code()),
            None if err.is_closed() => ErrorKind::Connection,
            None => {
                // No SQLSTATE: I/O, TLS, protocol or timeout trouble on the wire.
                let text = err.to_string();
                if text.contains("timed out") || text.contains("timeout") {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::Connection
                }
            }
        };
        Error::with_source(
            kind,
            format!("{}: {}", context.into(), pg_message(&err)),
            err,
        )
    }

    /// Classify a Kafka client error (see [`classify::kafka`]).
    pub fn kafka(context: impl Into<String>, err: rdkafka::error::KafkaError) -> Self {
        let kind = classify::kafka(&err);
        Error::with_source(kind, format!("{}: {err}", context.into()), err)
    }

    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        Error::with_source(ErrorKind::Io, format!("{}: {err}", context.into()), err)
    }
}

/// A readable message for a tokio-postgres error: the server's message and detail when there
/// is one (the default Display says only "db error").
fn pg_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                // DETAIL quotes rows and keys (`Key (id)=(5) already exists`).
                if ROW_VALUES.load(Ordering::Relaxed) {
                    s.push_str(": ");
                    s.push_str(detail);
                } else {
                    s.push_str(
                        " [detail withheld: it may quote row values; observe.log_row_values]",
                    );
                }
            }
            if let Some(hint) = db.hint() {
                s.push_str(" hint: ");
                s.push_str(hint);
            }
            s
        }
        None => {
            let mut s = err.to_string();
            let mut src = std::error::Error::source(err);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_message_and_keeps_kind() {
        let e = Error::new(ErrorKind::Timeout, "no answer").context("registry http://x");
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.to_string(), "registry http://x: no answer");
    }
}
