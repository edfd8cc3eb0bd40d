//! Publishing events to a Kafka topic with librdkafka's idempotent producer.
//!
//! A batch is confirmed only when the broker acknowledged every one of its messages (`acks=all`);
//! any message that was not is an error of the whole batch, classified, never dropped. The drain
//! then writes the batch again: the messages that did arrive arrive twice, with the same key,
//! partition, headers and value — `eds-lsn` tells a consumer it has seen them.
//!
//! An event too big for `max-message-bytes` is refused before anything of its batch is sent
//! ([`ErrorClass::Rejected`]), so the drain's bisection isolates and dead-letters it without
//! sending any other message twice.

use super::config::{Compression, KafkaConfig, DESCRIPTION};
use crate::driver::{Batch, BoxFuture, Delivery, Description, Driver, DriverError, ErrorClass, Limits};
use crate::event::ChangeEvent;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The header carrying the partition key (EDS's).
pub const PARTITION_KEY_HEADER: &str = "eds-partitionkey";
/// The header carrying the event's position in eds's log.
pub const LSN_HEADER: &str = "eds-lsn";
/// Bytes a message takes on the wire beyond its key, value and header names and values: the
/// record's own framing plus its share of a record batch's header (librdkafka counts at most 21
/// for a record and its headers' lengths; the batch header is 61). Kept generous so an event
/// that passes the check is never refused by librdkafka's or the broker's own.
const MESSAGE_OVERHEAD: usize = 128;
/// How long the partition count of the topic is trusted before it is asked again.
const METADATA_MAX_AGE: Duration = Duration::from_secs(60);

/// xxhash64 (seed 0) of `text` as 16 lowercase hex digits: EDS's `Hash` of one string (§6.5).
pub fn hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh64::xxh64(text.as_bytes(), 0))
}

/// FNV-1a (32 bits) of `text` modulo `n`: EDS's `Modulo` (§6.5). `n` must not be 0.
pub fn modulo(text: &str, n: u32) -> u32 {
    let fnv = text.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    fnv % n.max(1)
}

/// The partition of a message with `partition_key` in a topic of `partitions` partitions, as
/// EDS chose it: partition 0 of a one-partition topic, else `Modulo(Hash(partition key), n)`.
pub fn partition_for(partition_key: &str, partitions: i32) -> i32 {
    match u32::try_from(partitions) {
        Ok(n) if n > 1 => i32::try_from(modulo(&hash(partition_key), n)).unwrap_or(0),
        _ => 0,
    }
}

/// EDS's `NONE` for a company or location that is absent or empty.
fn or_none(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("NONE")
}

/// The message key: `dbchange.<table>.<operation>.<companyId|NONE>.<locationId|NONE>.<event id>`
/// (company and location of the event's envelope, as EDS).
pub fn message_key(event: &ChangeEvent) -> String {
    format!(
        "dbchange.{}.{}.{}.{}.{}",
        event.table,
        event.operation.as_str(),
        or_none(event.company_id.as_deref()),
        or_none(event.location_id.as_deref()),
        event.id
    )
}

/// The partition key header: `<table>.<companyId|NONE>.<locationId|NONE>.<primary key>`.
pub fn partition_key(event: &ChangeEvent) -> String {
    format!(
        "{}.{}.{}.{}",
        event.table,
        or_none(event.company_id.as_deref()),
        or_none(event.location_id.as_deref()),
        event.primary_key()
    )
}

/// One event as the message it becomes.
struct Message<'a> {
    delivery: &'a Delivery<'a>,
    key: String,
    partition_key: String,
    lsn: String,
}

impl<'a> Message<'a> {
    fn of(delivery: &'a Delivery<'a>) -> Message<'a> {
        Message {
            delivery,
            key: message_key(delivery.event),
            partition_key: partition_key(delivery.event),
            lsn: delivery.lsn.to_string(),
        }
    }

    /// The size the message is held to (an upper bound of what librdkafka counts).
    fn size(&self) -> usize {
        self.key.len()
            + self.delivery.raw.len()
            + PARTITION_KEY_HEADER.len()
            + self.partition_key.len()
            + LSN_HEADER.len()
            + self.lsn.len()
            + MESSAGE_OVERHEAD
    }

    fn headers(&self) -> OwnedHeaders {
        OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: PARTITION_KEY_HEADER, value: Some(self.partition_key.as_str()) })
            .insert(Header { key: LSN_HEADER, value: Some(self.lsn.as_str()) })
    }
}

/// The last error librdkafka reported for the client as a whole (a broker it cannot reach, an
/// authentication that failed): what a message that timed out waited for.
#[derive(Debug, Default)]
struct LastError(Mutex<Option<(RDKafkaErrorCode, String, Instant)>>);

impl LastError {
    fn take_recent(&self, since: Instant) -> Option<(RDKafkaErrorCode, String)> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match last.take() {
            Some((code, reason, at)) if at >= since => Some((code, reason)),
            _ => None,
        }
    }
}

/// The producer's context: keeps librdkafka's client-wide errors for the batch that waits on them.
struct Context(Arc<LastError>);

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            *self.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = Some((code, reason.to_owned(), Instant::now()));
        }
    }
}

type Client = FutureProducer<Context>;

/// The Kafka destination.
pub struct KafkaDriver {
    config: KafkaConfig,
    last_error: Arc<LastError>,
    /// Replaced after a fatal error of the idempotent producer (it cannot go on after one).
    producer: Mutex<Client>,
    /// A broker refused the producer's identity (fenced, unknown or out-of-sequence producer id):
    /// the producer is replaced, so the next attempt starts with a new id.
    spent: AtomicBool,
    /// The topic's partition count and when it was asked; `None` after an error.
    partitions: Mutex<Option<(i32, Instant)>>,
}

impl std::fmt::Debug for KafkaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDriver").field("config", &self.config).finish_non_exhaustive()
    }
}

/// librdkafka's settings for `config`: the idempotent producer, every message acknowledged by all
/// in-sync replicas, messages given up after the timeout (so an outage is an error, not a hang).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let timeout_ms = config.timeout.as_millis().to_string();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", config.brokers.join(","))
        .set("client.id", "eds")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", &timeout_ms)
        .set("socket.timeout.ms", &timeout_ms)
        .set("request.timeout.ms", config.timeout.min(Duration::from_secs(30)).as_millis().to_string())
        .set("message.max.bytes", config.max_message_bytes.max(1000).to_string())
        .set("allow.auto.create.topics", config.create_topic.to_string())
        .set("linger.ms", "5")
        .set(
            "compression.type",
            match config.compression {
                Compression::None => "none",
                Compression::Lz4 => "lz4",
                Compression::Snappy => "snappy",
            },
        )
        .set("security.protocol", config.security_protocol());
    if let Some(ca) = &config.ca {
        c.set("ssl.ca.location", ca.to_string_lossy());
    }
    if config.insecure_skip_verify {
        c.set("enable.ssl.certificate.verification", "false").set("ssl.endpoint.identification.algorithm", "none");
    }
    if let Some(sasl) = &config.sasl {
        c.set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", &sasl.password);
    }
    c
}

/// How the drain should treat a librdkafka error code.
pub fn classify(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord => ErrorClass::Rejected,
        // The broker finds the producer's timestamp (this machine's clock) out of its range: no
        // event's fault, so never dead-lettered (see `hint`).
        C::InvalidTimestamp => ErrorClass::Config,
        C::Authentication
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::InvalidTopic
        | C::InvalidRequiredAcks
        | C::InvalidArgument
        | C::InvalidConfig => ErrorClass::Config,
        // Brokers away or slow, leaders moving, replicas missing, a full queue, timeouts; also a
        // corrupt message on the way (retriable in Kafka's protocol) and an unknown topic or
        // partition while brokers restart or move leaders (a topic that really is missing is a
        // configuration error from the metadata check).
        _ => ErrorClass::Transient,
    }
}

/// What an operator should look at for an error of `code`, if anything beyond the code.
fn hint(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::InvalidTimestamp => {
            " (the broker refuses the messages' timestamps: check this machine's clock)"
        }
        _ => "",
    }
}

/// Whether a delivery error says the producer's identity is no longer good at the broker.
fn producer_is_spent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::ProducerFenced
            | C::InvalidProducerEpoch
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerIdMapping
            | C::Fatal
    )
}

impl KafkaDriver {
    /// A driver for `config`. Creates librdkafka's client (which connects in the background).
    pub fn new(config: KafkaConfig) -> Result<KafkaDriver, DriverError> {
        let last_error = Arc::new(LastError::default());
        let producer = create(&config, &last_error)?;
        Ok(KafkaDriver {
            config,
            last_error,
            producer: Mutex::new(producer),
            spent: AtomicBool::new(false),
            partitions: Mutex::new(None),
        })
    }

    /// The parsed URL.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn producer(&self) -> Client {
        self.producer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The topic's partition count: asked at the first write, again after [`METADATA_MAX_AGE`]
    /// and after any failed batch (partitions may have been added).
    async fn partition_count(&self) -> Result<i32, DriverError> {
        let cached = *self.partitions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((count, at)) = cached {
            if at.elapsed() < METADATA_MAX_AGE {
                return Ok(count);
            }
        }
        let count = self.fetch_partition_count().await?;
        *self.partitions.lock().unwrap_or_else(PoisonError::into_inner) = Some((count, Instant::now()));
        Ok(count)
    }

    /// Asks the brokers for the topic's metadata, within the timeout.
    async fn fetch_partition_count(&self) -> Result<i32, DriverError> {
        let producer = self.producer();
        let topic = self.config.topic.clone();
        let timeout = self.config.timeout;
        let started = Instant::now();
        let fetched = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Timeout::After(timeout))
                .map(|m| m.topics().iter().find(|t| t.name() == topic).map(|t| (t.error(), t.partitions().len())))
        })
        .await
        .map_err(|e| DriverError::new(ErrorClass::Transient, format!("asking Kafka for metadata: {e}")))?;
        let topic = &self.config.topic;
        let brokers = self.config.brokers.join(",");
        match fetched {
            Ok(Some((None, n))) if n > 0 => Ok(i32::try_from(n).unwrap_or(i32::MAX)),
            Ok(Some((Some(err), _))) => {
                let code = RDKafkaErrorCode::from(err);
                let (class, hint) = match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
                        if !self.config.create_topic =>
                    {
                        (ErrorClass::Config, " (create it, or leave create-topic on for brokers that create topics)")
                    }
                    _ => (classify(code), hint(code)),
                };
                Err(DriverError::new(class, format!("Kafka topic {topic:?} at {brokers}: {code}{hint}")))
            }
            Ok(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("Kafka topic {topic:?} at {brokers}: the brokers list no partition of it (yet)"),
            )),
            Err(e) => Err(self.client_error(
                e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown),
                format!("asking Kafka at {brokers} for topic {topic:?}"),
                started,
            )),
        }
    }

    /// An error of `code` while doing `what`, with librdkafka's client-wide error since `since`
    /// when there was one (which says why a message or a request timed out, and may make it a
    /// configuration error: a failed authentication).
    fn client_error(&self, code: RDKafkaErrorCode, what: String, since: Instant) -> DriverError {
        let what = format!("{what}{}", hint(code));
        match self.last_error.take_recent(since) {
            Some((cause, reason)) if classify(cause) == ErrorClass::Config => {
                DriverError::new(ErrorClass::Config, format!("{what}: {code}; the client reports {cause}: {reason}"))
            }
            Some((cause, reason)) => {
                DriverError::new(classify(code), format!("{what}: {code}; the client reports {cause}: {reason}"))
            }
            None => DriverError::new(classify(code), format!("{what}: {code}")),
        }
    }

    /// After a failed batch: ask the partition count again, and replace a producer that hit a
    /// fatal error (the idempotent producer stops for good after one) or whose identity a broker
    /// refused (some brokers fence an idempotent producer for good after its messages timed out).
    fn after_failure(&self) {
        *self.partitions.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let mut producer = self.producer.lock().unwrap_or_else(PoisonError::into_inner);
        let spent = self.spent.swap(false, Ordering::Relaxed);
        if spent || producer.client().fatal_error().is_some() {
            if let Ok(fresh) = create(&self.config, &self.last_error) {
                *producer = fresh;
            }
        }
    }

    async fn write_events(&self, events: &[Delivery<'_>]) -> Result<(), DriverError> {
        if events.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message<'_>> = events.iter().map(Message::of).collect();
        if let Some(m) = messages.iter().find(|m| m.size() > self.config.max_message_bytes) {
            return Err(DriverError::new(
                ErrorClass::Rejected,
                format!(
                    "the event at LSN {} (table {:?}, id {:?}) is {} bytes as a Kafka message (key, value and headers), \
                     more than max-message-bytes={}",
                    m.delivery.lsn,
                    m.delivery.event.table,
                    m.delivery.event.id,
                    m.size(),
                    self.config.max_message_bytes
                ),
            ));
        }
        let result = self.send_all(&messages).await;
        if result.is_err() {
            self.after_failure();
        }
        result
    }

    async fn send_all(&self, messages: &[Message<'_>]) -> Result<(), DriverError> {
        let partitions = self.partition_count().await?;
        let producer = self.producer();
        let topic = &self.config.topic;
        let started = Instant::now();
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let record = FutureRecord::to(topic)
                .key(m.key.as_str())
                .payload(m.delivery.raw)
                .partition(partition_for(&m.partition_key, partitions))
                .headers(m.headers());
            match producer.send_result(record) {
                Ok(delivery) => pending.push((m.delivery.lsn, delivery)),
                Err((e, _)) => {
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
                    return Err(self.client_error(
                        code,
                        format!("queueing the event at LSN {} for Kafka topic {topic:?}", m.delivery.lsn),
                        started,
                    ));
                }
            }
        }
        // librdkafka gives every message up after `message.timeout.ms` (the timeout option); the
        // deadline here is a guard against a delivery report that never comes.
        let deadline = tokio::time::Instant::now() + self.config.timeout + Duration::from_secs(10);
        let total = pending.len();
        let mut failed: Vec<(u64, RDKafkaErrorCode)> = Vec::new();
        for (lsn, delivery) in pending {
            match tokio::time::timeout_at(deadline, delivery).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((e, _)))) => failed.push((lsn, e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown))),
                Ok(Err(_canceled)) => failed.push((lsn, RDKafkaErrorCode::Fatal)),
                Err(_elapsed) => failed.push((lsn, RDKafkaErrorCode::MessageTimedOut)),
            }
        }
        if failed.iter().any(|(_, code)| producer_is_spent(*code)) {
            self.spent.store(true, Ordering::Relaxed);
        }
        // The worst first: what an operator must fix, then what passes, then what the data did.
        let rank = |code: RDKafkaErrorCode| match classify(code) {
            ErrorClass::Config => 0,
            ErrorClass::Transient | ErrorClass::Unknown | ErrorClass::TooLarge => 1,
            ErrorClass::Rejected => 2,
        };
        match failed.iter().min_by_key(|(_, code)| rank(*code)) {
            None => Ok(()),
            Some(&(lsn, code)) => Err(self.client_error(
                code,
                format!(
                    "{} of {total} messages to Kafka topic {topic:?} at {} were not acknowledged (the event at LSN {lsn})",
                    failed.len(),
                    self.config.brokers.join(",")
                ),
                started,
            )),
        }
    }
}

fn create(config: &KafkaConfig, last_error: &Arc<LastError>) -> Result<Client, DriverError> {
    client_config(config).create_with_context(Context(last_error.clone())).map_err(|e| {
        // librdkafka names the setting; no setting holds a secret it would print.
        DriverError::new(ErrorClass::Config, format!("creating the Kafka client for topic {:?}: {e}", config.topic))
    })
}

impl Driver for KafkaDriver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        // Every message of a batch must be acknowledged within `timeout` (librdkafka's
        // message.timeout.ms): 4 MiB in the default 30 s is about 1.1 Mbit/s of a shop's uplink.
        Limits { max_rows: 5_000, max_bytes: 4 << 20, max_bind_params: usize::MAX }
    }

    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            self.fetch_partition_count().await?;
            Ok(())
        })
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                Batch::Events(events) => self.write_events(events).await,
                Batch::Folded(_) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the Kafka destination takes every event (stream kind), not folded changes",
                )),
            }
        })
    }
}
