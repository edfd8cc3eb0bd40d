//! Publishing events to an Event Hub with Microsoft's `azure_messaging_eventhubs` producer.
//!
//! A write builds every message of its batch first, groups them by partition key (log order kept
//! within a key) into `EventDataBatch`es sized by the hub link's advertised maximum message size,
//! and only then sends them, one after the other, each awaited until the hub settles it. So an
//! event too big for the hub is refused ([`ErrorClass::Rejected`]) before anything of its batch
//! is sent, and `write` returns `Ok` only when the hub accepted every batch. Every step (opening
//! the connection, each send) is bounded by the `timeout` option; after any failure the client is
//! dropped and the next write opens a new one, so a half-broken connection is never reused.

use super::config::{EventHubConfig, DESCRIPTION};
use crate::driver::{Batch, BoxFuture, Delivery, Description, Driver, DriverError, ErrorClass, Limits};
use crate::event::ChangeEvent;
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::{AmqpMessage, EventData};
use azure_messaging_eventhubs::{EventDataBatch, EventDataBatchOptions, EventHubsError, ProducerClient, RetryOptions};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The application property carrying the event's position in eds's log (decimal text).
pub const LSN_PROPERTY: &str = "eds-lsn";
/// The application property EDS set: `dbchange.<table>.<op>.<companyId|NONE>.<locationId|NONE>.<pk>`.
pub const OBJECT_ID_PROPERTY: &str = "objectId";
/// The content type of every message.
pub const CONTENT_TYPE: &str = "application/json";
/// The message annotation that carries a message's partition key.
pub const PARTITION_KEY_ANNOTATION: &str = "x-opt-partition-key";

/// A string field of the event's row (`after`, else `before`), `NONE` when absent, empty or not a
/// string (as EDS, which read it from the decoded row).
fn row_field<'a>(event: &'a ChangeEvent, field: &str) -> &'a str {
    event.object().and_then(|row| row.get(field)).and_then(|v| v.as_str()).filter(|v| !v.is_empty()).unwrap_or("NONE")
}

/// The partition key: `<table>.<companyId|NONE>.<locationId|NONE>.<primary key>`, company and
/// location from the row object, not the envelope (§7.8).
pub fn partition_key(event: &ChangeEvent) -> String {
    format!(
        "{}.{}.{}.{}",
        event.table,
        row_field(event, "companyId"),
        row_field(event, "locationId"),
        event.primary_key()
    )
}

/// The `objectId` property: `dbchange.<table>.<operation>.<companyId|NONE>.<locationId|NONE>.<pk>`.
pub fn object_id(event: &ChangeEvent) -> String {
    format!(
        "dbchange.{}.{}.{}.{}.{}",
        event.table,
        event.operation.as_str(),
        row_field(event, "companyId"),
        row_field(event, "locationId"),
        event.primary_key()
    )
}

/// The message an event becomes (without its partition key, which its batch carries).
pub fn event_data(delivery: &Delivery<'_>) -> EventData {
    EventData::builder()
        .with_body(delivery.raw.to_vec())
        .with_message_id(delivery.event.id.clone())
        .with_content_type(CONTENT_TYPE.to_owned())
        .add_property(OBJECT_ID_PROPERTY.to_owned(), object_id(delivery.event))
        .add_property(LSN_PROPERTY.to_owned(), delivery.lsn.to_string())
        .build()
}

/// The message an event becomes when sent alone: with its partition key annotation.
fn lone_message(delivery: &Delivery<'_>, partition_key: &str) -> AmqpMessage {
    let mut message = AmqpMessage::from(event_data(delivery));
    message.add_message_annotation(PARTITION_KEY_ANNOTATION.into(), partition_key.to_owned());
    message
}

/// How the drain should treat an error of the client, from what it says (the client's errors
/// nest AMQP errors several levels deep; their text names the AMQP condition or the status).
pub fn classify(text: &str) -> ErrorClass {
    let t = text.to_ascii_lowercase();
    if t.contains("message-size-exceeded") || t.contains("messagesizeexceeded") {
        ErrorClass::TooLarge
    } else if t.contains("unauthorized")
        || t.contains("invalidsignature")
        || t.contains("status code: 401")
        || t.contains("status code: 403")
        || t.contains("status code: 404")
        || t.contains("not-found")
        || t.contains("notfound")
        || t.contains("could not be found")
        || t.contains("invalid connection string")
    {
        ErrorClass::Config
    } else if t.contains("amqp:invalid-field")
        || t.contains("amqp:decode-error")
        || t.contains("amqp:not-allowed")
        || t.contains("amqp:not-implemented")
    {
        // The hub refuses what was sent, for a reason eds cannot place on one message: the drain
        // bisects, and dead-letters a message that keeps failing alone (never a stall forever).
        ErrorClass::Unknown
    } else {
        ErrorClass::Transient
    }
}

/// A driver error for a client error while doing `what`, classified.
fn client_error(what: String, e: &EventHubsError) -> DriverError {
    let text = error_text(e);
    DriverError::new(classify(&text), format!("{what}: {text}"))
}

/// The error and its causes, one line (the client's `Display` alone hides the AMQP condition).
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The Event Hubs destination.
pub struct EventHubDriver {
    config: EventHubConfig,
    /// The open client, if any; `None` after a failure (the next write opens a new one).
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

/// An open producer and the largest message its hub link takes.
struct Client {
    producer: ProducerClient,
    max_message_size: u64,
}

impl std::fmt::Debug for EventHubDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubDriver").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The client's own retries: short, inside the driver's timeout (the drain retries the rest).
fn retry_options(timeout: Duration) -> RetryOptions {
    let ms = |d: Duration| azure_core::time::Duration::milliseconds(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    RetryOptions {
        initial_delay: ms(Duration::from_millis(100)),
        max_delay: ms(Duration::from_secs(1)),
        max_total_elapsed: ms(timeout),
        max_retries: 2,
    }
}

/// Opens a producer for `config` (connects and authorises): the driver's own and the benchmark's
/// direct one, so both talk to the hub the same way.
pub async fn open_producer(config: &EventHubConfig) -> Result<ProducerClient, EventHubsError> {
    let mut builder = ProducerClient::builder()
        .with_application_id("eds".to_owned())
        .with_retry_options(retry_options(config.timeout));
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_custom_endpoint(endpoint.clone());
    }
    builder.open_with_connection_string(&config.connection_string(), None).await
}

/// The largest message the hub's link takes, as the client reads it from the link's attach: the
/// client refuses a batch size above it and names it (it has no other way to tell).
pub async fn link_max_message_size(producer: &ProducerClient) -> Result<u64, EventHubsError> {
    let probe = EventDataBatchOptions { max_size_in_bytes: Some(u64::MAX), ..Default::default() };
    match producer.create_batch(Some(probe)).await {
        Ok(_) => Ok(u64::MAX),
        Err(e) => match e.kind {
            ErrorKind::InvalidBatchSize { max_allowed, .. } => Ok(max_allowed),
            _ => Err(e),
        },
    }
}

/// What one write sends, in order: batches of events with one partition key, and events too big
/// for a batch of their own that still fit the link, sent alone.
enum Send<'p> {
    Batch { batch: EventDataBatch<'p>, first_lsn: u64, events: usize },
    Alone { message: AmqpMessage, lsn: u64 },
}

impl EventHubDriver {
    /// A driver for `config`; connects at the first write or test.
    pub fn new(config: EventHubConfig) -> EventHubDriver {
        EventHubDriver { config, client: tokio::sync::Mutex::new(None) }
    }

    /// The parsed URL.
    pub fn config(&self) -> &EventHubConfig {
        &self.config
    }

    fn where_(&self) -> String {
        format!("Event Hub {:?} at {}", self.config.hub, self.config.address())
    }

    /// `future` within the timeout; past it a transient error saying what took too long.
    async fn bounded<T>(
        &self,
        what: impl Fn() -> String,
        future: impl Future<Output = Result<T, EventHubsError>>,
    ) -> Result<T, DriverError> {
        match tokio::time::timeout(self.config.timeout, future).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(client_error(what(), &e)),
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("{}: no answer within the timeout of {:?}", what(), self.config.timeout),
            )),
        }
    }

    /// The open client, opened (and the link's limit read) when there is none.
    async fn client(&self) -> Result<Arc<Client>, DriverError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let what = || format!("connecting to {}", self.where_());
        let producer = self.bounded(what, open_producer(&self.config)).await?;
        // The hub's properties first: a hub that does not exist is a 404 here (a configuration
        // error), where a sender link to it would only be detached after its attach.
        let what = || format!("reading the properties of {}", self.where_());
        let properties = self.bounded(what, producer.get_eventhub_properties()).await?;
        if properties.partition_ids.is_empty() {
            return Err(DriverError::new(ErrorClass::Config, format!("{} lists no partition", self.where_())));
        }
        let what = || format!("opening a sender link to {}", self.where_());
        let max_message_size = self.bounded(what, link_max_message_size(&producer)).await?;
        let client = Arc::new(Client { producer, max_message_size });
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops the client after a failure: the next write opens a new connection (dropping the
    /// last handle of a producer ends its connection).
    async fn discard(&self) {
        self.client.lock().await.take();
    }

    /// Every event of `events` in batches by partition key (log order within a key), or the
    /// rejection of the first event too big for the hub. Nothing is sent here.
    async fn plan<'p>(&self, client: &'p Client, events: &[Delivery<'_>]) -> Result<Vec<Send<'p>>, DriverError> {
        // Group by partition key, keeping the first appearance order of keys and log order within.
        let mut groups: Vec<(String, Vec<&Delivery<'_>>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for d in events {
            let key = partition_key(d.event);
            match index.get(&key).and_then(|&i| groups.get_mut(i)) {
                Some((_, group)) => group.push(d),
                None => {
                    index.insert(key.clone(), groups.len());
                    groups.push((key, vec![d]));
                }
            }
        }
        let mut plan = Vec::new();
        let new_batch = |key: &str| {
            let options = EventDataBatchOptions {
                partition_key: Some(key.to_owned()),
                max_size_in_bytes: Some(client.max_message_size),
                ..Default::default()
            };
            let what = || format!("making a batch for {}", self.where_());
            self.bounded(what, client.producer.create_batch(Some(options)))
        };
        for (key, deliveries) in groups {
            let mut batch: Option<(EventDataBatch<'p>, u64)> = None;
            for d in deliveries {
                let adding = |b: &EventDataBatch<'p>| {
                    b.try_add_event_data(event_data(d), None)
                        .map_err(|e| client_error(format!("adding the event at LSN {} to a batch", d.lsn), &e))
                };
                if let Some((b, _)) = &batch {
                    if adding(b)? {
                        continue;
                    }
                }
                if let Some((b, first_lsn)) = batch.take() {
                    let events = b.len();
                    plan.push(Send::Batch { batch: b, first_lsn, events });
                }
                let b = new_batch(&key).await?;
                if adding(&b)? {
                    batch = Some((b, d.lsn));
                    continue;
                }
                // Too big for a batch of its own (the client counts an envelope beside the
                // message): alone, if the link takes it.
                let message = lone_message(d, &key);
                let size = AmqpMessage::serialize(&message)
                    .map_err(|e| {
                        client_error(format!("encoding the event at LSN {}", d.lsn), &EventHubsError::from(e))
                    })?
                    .len();
                if u64::try_from(size).unwrap_or(u64::MAX) > client.max_message_size {
                    return Err(DriverError::new(
                        ErrorClass::Rejected,
                        format!(
                            "the event at LSN {} (table {:?}, id {:?}) is {size} bytes as an AMQP message, more than \
                             the {} bytes the {} takes (its maximum message size)",
                            d.lsn,
                            d.event.table,
                            d.event.id,
                            client.max_message_size,
                            self.where_()
                        ),
                    ));
                }
                plan.push(Send::Alone { message, lsn: d.lsn });
            }
            if let Some((b, first_lsn)) = batch {
                let events = b.len();
                plan.push(Send::Batch { batch: b, first_lsn, events });
            }
        }
        Ok(plan)
    }

    async fn write_events(&self, events: &[Delivery<'_>]) -> Result<(), DriverError> {
        if events.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let plan = match self.plan(&client, events).await {
            Ok(plan) => plan,
            // An event too big for the hub: the client is fine.
            Err(e) if e.class == ErrorClass::Rejected => return Err(e),
            Err(e) => {
                self.discard().await;
                return Err(e);
            }
        };
        let result = self.send_all(&client, plan).await;
        if result.is_err() {
            self.discard().await;
        }
        result
    }

    async fn send_all(&self, client: &Client, plan: Vec<Send<'_>>) -> Result<(), DriverError> {
        let total = plan.len();
        for (n, send) in plan.into_iter().enumerate() {
            match send {
                Send::Batch { batch, first_lsn, events } => {
                    let what = || {
                        format!(
                            "sending batch {} of {total} ({events} events from LSN {first_lsn}) to {}",
                            n + 1,
                            self.where_()
                        )
                    };
                    self.bounded(what, client.producer.send_batch(batch, None)).await?;
                }
                Send::Alone { message, lsn } => {
                    let what = || format!("sending the event at LSN {lsn} alone to {}", self.where_());
                    self.bounded(what, client.producer.send_message(message, None)).await?;
                }
            }
        }
        Ok(())
    }
}

impl Driver for EventHubDriver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        // Batches go one after the other, each awaited: a write of many partition keys is many
        // round trips, so writes stay small enough to finish well within the timeout on a WAN.
        Limits { max_rows: 1_000, max_bytes: 4 << 20, max_bind_params: usize::MAX }
    }

    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            // Connecting reads the hub's properties; an open client reads them again.
            let client = self.client().await?;
            let what = || format!("reading the properties of {}", self.where_());
            let read = self.bounded(what, client.producer.get_eventhub_properties()).await;
            if read.is_err() {
                self.discard().await;
            }
            read.map(|_| ())
        })
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                // One event the hub calls too large is that event's fault: dead-letter it
                // (the size check before sending should have caught it).
                Batch::Events(events) => self.write_events(events).await.map_err(|e| match e.class {
                    ErrorClass::TooLarge if events.len() == 1 => DriverError { class: ErrorClass::Rejected, ..e },
                    _ => e,
                }),
                Batch::Folded(_) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the Event Hubs destination takes every event (stream kind), not folded changes",
                )),
            }
        })
    }
}
