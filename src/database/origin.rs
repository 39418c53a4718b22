//! Replication origins: how cutover's own writes are recognised and never captured back.
//!
//! ```text
//!   sink connection ── pg_replication_origin_session_setup('cutover:<pipeline>:<sink>[:<instance>]')
//!        │              (once per connection, BEFORE any BEGIN: a session set up inside an
//!        │               open transaction does not tag that transaction)
//!        ▼
//!   every transaction it commits carries the origin ──▶ WAL ──▶ pgoutput sends an Origin
//!   message after Begin ──▶ capture: is it one of OwnOrigins (this pipeline's writers)? ──▶
//!   drops the whole transaction (counted in cutover_capture_echoes_suppressed_total), still
//!   confirms its LSN
//! ```
//!
//! Invariant 5: what cutover writes is tagged, and captures skip their own origins, so a
//! back-sync can never echo a change to the side it came from. "Own" is exact: the origin must
//! be `cutover:<this pipeline>:<one of its writers>` (a sink, the back-sync, verify's repairs),
//! optionally followed by `:<instance>` and/or the pool number. Another pipeline's writes, or
//! any other `cutover:`-looking origin a role sets up, are captured like every other change.
//!
//! An origin can be active in one session at a time, so each connection of a sink has its own
//! (`--instance-id` is part of the name; [`bind`] picks a free one of the instance's pool). The role a sink connects as needs `EXECUTE` on the
//! origin functions (superusers have it): checked at start-up with the `GRANT` to run.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::{Error, ErrorKind, Result};

/// Every origin cutover creates starts with this; captures skip transactions carrying one.
pub const ORIGIN_PREFIX: &str = "cutover:";

/// The origin name of one sink instance.
pub fn origin_name(pipeline: &str, sink: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("{ORIGIN_PREFIX}{pipeline}:{sink}:{i}"),
        None => format!("{ORIGIN_PREFIX}{pipeline}:{sink}"),
    }
}

/// The writer name of `cutover verify --repair` in origin names.
pub const VERIFY_WRITER: &str = "verify";

/// The origins of one pipeline's writers: the transactions a capture of that pipeline must
/// not send back.
#[derive(Debug, Clone)]
pub struct OwnOrigins {
    /// `cutover:<pipeline>:`
    stem: String,
    writers: Vec<String>,
}

impl OwnOrigins {
    /// `writers`: every name the pipeline's processes bind origins under (sink names, the
    /// back-sync, [`VERIFY_WRITER`]).
    pub fn new<I, S>(pipeline: &str, writers: I) -> OwnOrigins
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut writers: Vec<String> = writers.into_iter().map(Into::into).collect();
        // Longest first: a writer named `a:b` must not be shadowed by one named `a`.
        writers.sort_by_key(|w| std::cmp::Reverse(w.len()));
        writers.dedup();
        OwnOrigins {
            stem: format!("{ORIGIN_PREFIX}{pipeline}:"),
            writers,
        }
    }

    /// Is a transaction with this origin one of this pipeline's own writes?
    pub fn contains(&self, origin: &str) -> bool {
        let Some(rest) = origin.strip_prefix(&self.stem) else {
            return false;
        };
        self.writers
            .iter()
            .any(|w| match rest.strip_prefix(w.as_str()) {
                Some(tail) => tail.is_empty() || tail.starts_with(':'),
                None => false,
            })
    }
}

const FUNCTIONS: [&str; 4] = [
    "pg_replication_origin_oid(text)",
    "pg_replication_origin_create(text)",
    "pg_replication_origin_session_setup(text)",
    "pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
];

/// Check that the connected role may use replication origins; the error names the missing
/// grants (`field` is the config path of the connection, e.g. `sinks[1].url`).
pub async fn check_privileges(client: &Client, field: &str) -> Result<()> {
    let mut missing = Vec::new();
    for f in FUNCTIONS {
        let ok: bool = client
            .query_one("SELECT has_function_privilege($1, 'EXECUTE')", &[&f])
            .await
            .map_err(|e| Error::postgres(format!("checking EXECUTE on {f}"), e))?
            .get(0);
        if !ok {
            missing.push(f);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let role: String = client
        .query_one("SELECT current_user", &[])
        .await
        .map_err(|e| Error::postgres("current_user", e))?
        .get(0);
    let grants: Vec<String> = missing
        .iter()
        .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO \"{role}\";"))
        .collect();
    Err(Error::new(
        ErrorKind::Environment,
        format!(
            "{field}: role {role} may not use replication origins, which cutover needs to tag its \
             writes so they are never captured back (echo suppression). As a superuser run: {}",
            grants.join(" ")
        ),
    ))
}

/// Create the origin if needed and bind this connection's session to it. Call right after
/// connecting, outside any transaction.
pub async fn setup_session(client: &Client, origin: &str) -> Result<()> {
    // Twice: an origin dropped by an operator between create and setup is created again.
    for attempt in 0..2 {
        client
            .execute(
                "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL",
                &[&origin],
            )
            .await
            .or_else(|e| {
                // Two instances creating it at once: the other one won, which is fine.
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    Ok(0)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::postgres(format!("creating replication origin {origin}"), e))?;
        match client
            .execute("SELECT pg_replication_origin_session_setup($1)", &[&origin])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) && attempt == 0 => continue,
            Err(e) => {
                let busy = e.code() == Some(&SqlState::OBJECT_IN_USE);
                let err = Error::postgres(
                    format!("binding the session to replication origin {origin}"),
                    e,
                );
                return Err(if busy {
                    Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "{err}: another process holds it (a previous connection still closing, \
                             or a second instance of this sink without its own --instance-id)"
                        ),
                    )
                } else {
                    err
                });
            }
        }
    }
    Err(Error::internal(format!(
        "replication origin {origin} vanished twice"
    )))
}

/// How many origins one sink instance name may use: one per target connection of every
/// instance running under it (`apply_connections`), and a spare while a closing connection
/// still holds its origin.
const POOL: u32 = 32;

/// Bind this connection to the first free origin of the sink instance's pool: `…`, `…:1`, …
/// `…:31`, where `…` is `cutover:<pipeline>:<sink>[:<instance>]`. So several connections of
/// one instance, and several instances without ids, each get their own, and restarts reuse
/// the same names instead of creating new ones.
pub async fn bind(
    client: &Client,
    pipeline: &str,
    sink: &str,
    instance: Option<&str>,
) -> Result<String> {
    let base = origin_name(pipeline, sink, instance);
    let mut last = None;
    for n in 0..POOL {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}:{n}")
        };
        match setup_session(client, &name).await {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == ErrorKind::Unavailable => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::internal("no origin tried")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_names_and_recognition() {
        assert_eq!(origin_name("p", "newstore", None), "cutover:p:newstore");
        assert_eq!(
            origin_name("p", "backsync", Some("pod-0")),
            "cutover:p:backsync:pod-0"
        );
    }

    #[test]
    fn only_this_pipelines_writers_are_its_own() {
        let own = OwnOrigins::new("p", ["newstore", "backsync", VERIFY_WRITER]);
        for name in [
            origin_name("p", "newstore", None),
            origin_name("p", "newstore", Some("pod-0")),
            format!("{}:3", origin_name("p", "backsync", None)),
            format!("{}:3", origin_name("p", "backsync", Some("pod-1"))),
            origin_name("p", VERIFY_WRITER, None),
        ] {
            assert!(own.contains(&name), "{name}");
        }
        for name in [
            "pglogical_sub",
            "cutover:",
            "cutover:p",
            "cutover:p:",
            "cutover:p:newstore2",
            "cutover:p:intruder",
            "cutover:q:newstore",
            "cutover:pp:newstore",
            "CUTOVER:p:newstore",
        ] {
            assert!(!own.contains(name), "{name}");
        }
    }
}
