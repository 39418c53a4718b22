//! Capture: committed changes of the legacy database → Kafka.
pub mod pgoutput;
