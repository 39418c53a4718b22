//! # cutover
//!
//! Change-data-capture for zero-downtime database migrations: every committed change of a
//! legacy PostgreSQL database goes to Kafka (Avro, one topic per table, keyed by primary key),
//! and independent consumer groups apply it to the old and the new store; a back-sync carries
//! writes made on the new store back to legacy so a rollback loses nothing.
//!
//! ```text
//!                 pgoutput                 Avro + registry id            one group per sink
//!  legacy PG ──(logical slot)──▶ capture ──▶ Kafka <prefix>.<schema>.<table> ──▶ sink "mirror"   ──▶ new PG / app
//!      ▲        confirm LSN only            (key = primary key,          └──▶ sink "newstore" ──▶ new PG / newapp
//!      │        after Kafka acks             per-row order)                        (mapping old → new)
//!      │                                                                               │
//!      └──────── back-sync sink ◀── Kafka <prefix>.back.* ◀── capture (new PG) ◀───────┘
//!                (replication origin: never echoed)
//! ```
//!
//! Invariants (each documented where it is enforced):
//! 1. An LSN is confirmed to PostgreSQL only after Kafka acknowledged every event up to it.
//! 2. Every event carries `(commit_lsn, seq)`, a total order; re-sent events carry the same pair.
//! 3. A sink's progress lives in the target, in the same transaction as the rows it covers.
//! 4. All changes of one row stay in one partition (key = primary key).
//! 5. What cutover writes is tagged with a replication origin; captures skip their own origins.
//! 6. Bad data is parked in a dead-letter topic, never dropped.
//! 7. Memory is bounded by configuration, not by input.
//!
//! The house, from the top floor down (a module imports only modules below it; `farm-studio
//! look` draws it, with no circles):
//!
//! ```text
//!   cli                      subcommands: the only wiring layer
//!   monitor                  lag and slot growth observed from outside, the health verdict
//!   backsync                 roles, the write guard of a back-sync sink, the phase gate, conflicts
//!   capture   verify         the source half of the pipeline; old-vs-new comparison
//!   apply                    the target half: consumer → decode → schema → plan → write
//!   deadletter               parked records, one shape for capture and sinks
//!   kafka  database  state   Kafka clients and topic names; PostgreSQL endpoints, identifiers,
//!   registry  codec          catalog, origins; the cutover.* state tables; schemas and Avro
//!   config  observe  retry   typed config; metrics and health; the one retry policy
//!   error  event  expr       leaves: the error type, the shared vocabulary, mapping expressions
//! ```
//!
//! Modules: [`config`] (typed config, validation, redaction), [`error`] + [`retry`] (one
//! error type with its peer-code classification, one retry policy and loop), [`event`] (LSNs,
//! ops, table ids, sides), [`expr`] (the mapping expression language), [`database`]
//! (endpoints, identifiers and literals, catalog facts, replication origins), [`state`] (every
//! `cutover.*` table: DDL and SQL), [`kafka`] (clients, topic names, error classes, read-only
//! inspection), [`registry`] (schema-registry client and embedded server), [`codec`] (Avro
//! schemas and encodings), [`deadletter`] (parking bad records), [`capture`] and [`apply`]
//! (the two halves of the pipeline), [`verify`] (chunked checksums and bisection),
//! [`backsync`] (roles, guard, gate, conflicts: what makes the reverse direction safe),
//! [`monitor`] (lag and slot growth observed from outside, the health verdict), [`observe`]
//! (metrics, health endpoints, logging), [`cli`] (subcommands; the only wiring layer).

pub mod apply;
pub mod backsync;
pub mod capture;
pub mod cli;
pub mod codec;
pub mod config;
pub mod database;
pub mod deadletter;
pub mod error;
pub mod event;
pub mod expr;
pub mod kafka;
pub mod monitor;
pub mod observe;
pub mod reconcile;
pub mod registry;
pub mod retry;
pub mod state;
pub mod trust;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
