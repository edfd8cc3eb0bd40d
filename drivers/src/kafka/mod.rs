//! Kafka destination: every event, exactly as received, as one message of a topic, laid out as
//! EDS did so its consumers keep working. A stream destination, delivered at least once.
//!
//! - key: `dbchange.<table>.<operation>.<companyId|NONE>.<locationId|NONE>.<event id>`;
//! - value: the event's JSON exactly as received from NATS;
//! - header `eds-partitionkey`: `<table>.<companyId|NONE>.<locationId|NONE>.<primary key>`
//!   (company and location from the event's envelope);
//! - header `eds-lsn`: the event's position in eds's log, in decimal;
//! - partition: 0 in a one-partition topic, else FNV-1a (32 bits) of the 16 hex digits of the
//!   xxhash64 of the partition key, modulo the partition count (EDS's `Modulo(Hash(…), n)`), set
//!   explicitly on every message from the topic's metadata.
//!
//! Invariant: a message is a pure function of the event and its LSN — key, headers, value and
//! partition (while the partition count stays) — so a replayed batch sends the very same
//! messages again, and a consumer drops those whose `eds-lsn` it has seen. `write` returns `Ok`
//! only when the brokers acknowledged every message (`acks=all`, idempotent producer); EDS
//! dropped a batch after ten seconds of "Leader Not Available", this driver returns the error.

mod config;
/// The client crate (librdkafka's binding), for tests, benchmarks and tools that read back what
/// this driver wrote with the very client it wrote with.
pub use rdkafka;

mod sink;
pub mod tansu;
#[cfg(test)]
mod tests;

pub use config::{
    parse, Compression, KafkaConfig, Sasl, SaslMechanism, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PORT, DEFAULT_TIMEOUT,
    DESCRIPTION,
};
pub use sink::{
    classify, client_config, hash, message_key, modulo, partition_for, partition_key, KafkaDriver, LSN_HEADER,
    PARTITION_KEY_HEADER,
};

/// The Kafka driver for a `kafka://` URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(KafkaDriver::new(parse(url)?)?))
}
