//! Integration tests against the real local stack (`make up`): two PostgreSQL clusters with
//! wal_level=logical, Apache Kafka (KRaft) over TCP (librdkafka), the embedded schema registry,
//! and stock Python clients. One test binary; modules by component.

mod it;
