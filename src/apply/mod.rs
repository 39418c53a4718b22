//! Apply: Kafka change events → a target PostgreSQL store, effectively-once, through a mapping.
//!
//! Each sink is its own consumer group, so the old store (`mirror`) and the new store
//! (`newstore`) are fed independently. The flow of one batch, file by file:
//!
//! ```text
//!   consumer ──▶ decode ──▶ schema ──▶ plan (pure) ──▶ write ──▶ COMMIT ──▶ consumer (offsets)
//!   (Kafka)      (Avro →    (mappings,  (dedupe, order,  (settle via the guard,
//!                 text)      target DDL) map, admit, fold) set-based SQL, savepoints)
//! ```
//!
//! [`service`] wires the loop and holds the invariant (progress commits atomically with the
//! data, see its diagram); [`consumer`] the Kafka side; [`decode`] turns records back into
//! PostgreSQL text (reading each datum with [`datum`]); [`schema`] knows the tables a sink writes; [`mapping`] translates the old
//! schema into the new contract (expressions in `crate::expr`); [`plan`] decides what a batch
//! writes; [`transaction`] runs one batch transaction per target connection; [`mod@write`] and [`target`] write it; [`guard`] is the interface a back-sync role
//! implements to admit or settle writes; [`metrics`] the sink's series; [`replay`] the lock
//! protocol that lets a replay rewind a sink.

pub mod consumer;
pub mod datum;
pub mod decode;
pub mod guard;
pub mod mapping;
pub mod metrics;
pub mod plan;
pub mod replay;
pub mod schema;
pub mod service;
pub mod target;
mod transaction;
pub mod write;

pub use service::Sink;
