//! Azure Event Hubs destination: every event, exactly as received, as one message of an Event
//! Hub, laid out as EDS did so its consumers keep working. A stream destination, delivered at
//! least once.
//!
//! - body: the event's JSON exactly as received from NATS; message id: the event id; content
//!   type `application/json`;
//! - partition key (message annotation `x-opt-partition-key`, shared by a batch):
//!   `<table>.<companyId|NONE>.<locationId|NONE>.<primary key>`, company and location from the
//!   row object (`after`, else `before`), not the envelope;
//! - application property `objectId`: `dbchange.<table>.<operation>.<companyId|NONE>.<locationId|NONE>.<primary key>`;
//! - application property `eds-lsn`: the event's position in eds's log, in decimal.
//!
//! Invariant: a message is a pure function of the event and its LSN, so a replayed batch sends
//! the very same messages again, and a consumer drops those whose `eds-lsn` it has seen. `write`
//! returns `Ok` only when the hub accepted every batch of it.
//!
//! The client is Microsoft's `azure_messaging_eventhubs` (re-exported as [`client`] for the
//! benchmark and tools); [`double`] is the test double the tests and the benchmark start.

mod config;
/// The client crate, for the benchmark and tools that talk to a hub as this driver does.
pub use azure_messaging_eventhubs as client;

pub mod double;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{parse, Credential, EventHubConfig, DEFAULT_TIMEOUT, DESCRIPTION};
pub use sink::{
    classify, event_data, link_max_message_size, object_id, open_producer, partition_key, EventHubDriver, CONTENT_TYPE,
    LSN_PROPERTY, OBJECT_ID_PROPERTY, PARTITION_KEY_ANNOTATION,
};

/// The Event Hubs driver for an `eventhub://` URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(EventHubDriver::new(parse(url)?)))
}
