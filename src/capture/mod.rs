//! Capture: committed changes of the legacy database → Kafka, Avro-encoded, in commit order.
//!
//! ```text
//!   setup ──▶ stream ──▶ relation (schemas, topics) ──▶ produce ──▶ Kafka
//!   (publication,  (replication loop,                    (keyed records,   │ acks
//!    slot, catalog) pgoutput decode)                      dead letters)    ▼
//!                     ▲                                                  ack (trackers)
//!                     └──────── confirm LSN when every older transaction is acked ◀┘
//!   backfill: chunked copies of existing rows, merged into the stream between watermarks
//! ```
//!
//! [`pgoutput`] decodes the replication protocol, [`leader`] makes one capture per slot lead
//! (others wait as standbys), [`setup`] prepares the source (publication, slot, catalog lookups), [`stream`] runs the loop and holds the LSN-confirmation invariant
//! (see its module docs for the diagram); `relation` turns Relation messages into registered
//! schemas and topics, `produce` sends events and dead letters with their delivery trackers,
//! `ack` counts the acknowledgements; [`backfill`] copies existing rows.

mod ack;
pub mod backfill;
pub mod leader;
mod metrics;
pub mod pgoutput;
mod produce;
pub mod projection;
mod relation;
pub mod setup;
pub mod stream;

pub use stream::Capture;
