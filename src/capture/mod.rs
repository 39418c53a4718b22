//! Capture: committed changes of the legacy database → Kafka, Avro-encoded, in commit order.
//!
//! [`pgoutput`] decodes the replication protocol, [`setup`] prepares the source (publication,
//! slot, catalog lookups), [`stream`] runs the loop and holds the LSN-confirmation invariant
//! (see its module docs for the diagram).

pub mod backfill;
pub mod pgoutput;
pub mod setup;
pub mod stream;

pub use stream::Capture;
