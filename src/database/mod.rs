//! What cutover knows about PostgreSQL as a peer, in leaves that every part of the pipeline
//! uses and none of them owns:
//!
//! ```text
//!   endpoint  where to connect: source, sink(name), new_store  (config → Endpoint → Client)
//!   tls       sslmode/sslrootcert/sslcert/sslkey with libpq semantics, SQL and replication
//!   ident     identifiers and literals as SQL text (postgres_protocol::escape)
//!   catalog   what a table looks like in a target: columns, key, replica identity
//!   origin    replication origins: how cutover's own writes are tagged (never echoed)
//!   (here)    settings, server facts, and `serialized_ddl`: every DDL cutover runs
//! ```
//!
//! Replication streaming lives in `capture`; the `cutover.*` state tables in `state`.

pub mod catalog;
pub mod endpoint;
pub mod ident;
pub mod origin;
pub mod tls;

use tokio_postgres::Client;

pub use endpoint::Endpoint;

use crate::error::{Error, Result};

/// The advisory lock key every DDL script cutover runs takes first (see [`serialized_ddl`]).
const DDL_LOCK: &str = "hashtext('cutover:ddl')";

/// Runs one DDL script as a single implicit transaction (a multi-statement simple query)
/// that first takes a transaction-scoped advisory lock. `CREATE … IF NOT EXISTS` is not
/// safe against a concurrent creator (two sinks starting together fail with 23505 on
/// `pg_type_typname_nsp_index`); under the lock the second creator waits, then sees the
/// first one's objects and does nothing. Every DDL cutover runs on a store goes through
/// here: the `cutover.*` state tables (`state`) and identity target tables and columns.
/// `what` names the object in the error ("creating {what}").
pub async fn serialized_ddl(client: &Client, ddl: &str, what: &str) -> Result<()> {
    let script = format!("SELECT pg_advisory_xact_lock({DDL_LOCK});\n{ddl}");
    client
        .batch_execute(&script)
        .await
        .map_err(|e| Error::postgres(format!("creating {what}"), e))
}

/// The value of one server setting (`current_setting(name)`).
pub async fn setting(client: &Client, name: &str) -> Result<String> {
    Ok(client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|e| Error::postgres(format!("reading {name}"), e))?
        .get(0))
}

/// Facts about a server that cutover depends on.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version: String,
    pub version_num: i32,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub max_wal_senders: i32,
    pub database: String,
}

pub async fn server_facts(client: &Client) -> Result<ServerFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                    current_setting('wal_level'), current_setting('max_replication_slots')::int, \
                    current_setting('max_wal_senders')::int, current_database()",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading server settings", e))?;
    Ok(ServerFacts {
        version: row.get(0),
        version_num: row.get(1),
        wal_level: row.get(2),
        max_replication_slots: row.get(3),
        max_wal_senders: row.get(4),
        database: row.get(5),
    })
}
