//! Apply: Kafka change events → a target PostgreSQL store, effectively-once, through a mapping.
//!
//! Each sink is its own consumer group, so the old store (`mirror`) and the new store
//! (`newstore`) are fed independently. [`service`] holds the loop and the invariant (progress
//! commits atomically with the data, see its diagram); [`target`] the SQL; [`decode`] turns
//! records back into PostgreSQL text; [`mapping`] and [`expr`] translate the old schema into
//! the new contract.

pub mod config;
pub mod decode;
pub mod expr;
pub mod mapping;
pub mod replay;
pub mod service;
pub mod target;

pub use service::{dlq_topic, Sink};
