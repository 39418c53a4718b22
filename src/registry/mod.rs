//! Schema registry: a client for any Confluent-compatible registry, and the embedded registry
//! served by `cutover registry` for the local stack and small deployments.
//!
//! ```text
//!   cutover capture ──register(subject, schema)──▶ registry ──id──▶ wire format 0x00|id|avro
//!   any consumer    ──GET /schemas/ids/{id}────────▶ registry ──writer schema──▶ decode
//! ```
//!
//! The embedded server implements the subset of the Confluent REST API that serializers,
//! deserializers and operators use (see [`server`]), stores every change in an fsynced
//! append-only log before answering (see [`store`]), and enforces compatibility levels with
//! Avro schema resolution rules (see [`compat`]). Schema ids are global and stable: the same
//! schema registered under two subjects gets one id, as in Confluent's registry. Who may call
//! it and how much (basic auth or a bearer token, body size, time, concurrency) is
//! [`access`].

pub mod access;
pub mod client;
pub mod compat;
pub mod media;
pub mod server;
pub mod store;

pub use client::RegistryClient;
pub use compat::Compatibility;
