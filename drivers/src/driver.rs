//! The `Driver` trait every destination implements, and what drivers describe about themselves.
//!
//! Invariant: `write` returning `Ok` means the batch is durable at the destination, and writing
//! the same batch twice leaves the same content as writing it once — a replay after a crash is
//! normal (cursors persist on an interval) and must be harmless. Drivers classify their errors;
//! they never sleep or retry: the drain decides.

use crate::event::{ChangeEvent, FoldedChange};
use std::future::Future;
use std::pin::Pin;
use thiserror::Error;

/// A boxed future, so drivers can be used as `dyn Driver`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a destination holds data, which decides what the drain hands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Current state per key (SQL databases, Snowflake): batches are folded per key.
    State,
    /// Every event (files, S3, Kafka, Event Hubs): batches carry every event in log order.
    Stream,
}

/// What kind of value a configuration field takes (for forms that build a URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Free text.
    Text,
    /// A secret.
    Password,
    /// A number.
    Number,
    /// A directory path.
    Directory,
}

/// One configuration field of a driver's URL form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigField {
    /// Machine name.
    pub name: &'static str,
    /// What it is.
    pub kind: FieldKind,
    /// Whether it must be given.
    pub required: bool,
    /// Default, if any.
    pub default: Option<&'static str>,
    /// One line of help.
    pub help: &'static str,
}

/// What a driver says about itself (`eds server help [scheme]`, HQ's validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Description {
    /// Display name.
    pub name: &'static str,
    /// URL scheme.
    pub scheme: &'static str,
    /// Other schemes that select it.
    pub aliases: &'static [&'static str],
    /// An example URL.
    pub example_url: &'static str,
    /// What it does, a few lines.
    pub help: &'static str,
    /// URL form fields.
    pub fields: &'static [ConfigField],
    /// State or stream destination.
    pub kind: Kind,
    /// Whether it needs table schemas (to create tables and columns).
    pub needs_schema: bool,
}

/// How big a batch may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows (state) or events (stream) per batch.
    pub max_rows: usize,
    /// Bytes of event data per batch.
    pub max_bytes: usize,
    /// Bind parameters per statement (SQL); `usize::MAX` when not applicable.
    pub max_bind_params: usize,
}

/// One event as a stream destination receives it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// Its position in the WAL (part of idempotent object names and the `eds-lsn` header).
    pub lsn: u64,
    /// The decoded event.
    pub event: &'a ChangeEvent,
    /// The event exactly as received from NATS.
    pub raw: &'a [u8],
}

/// What the drain hands a driver: every event, or the per-key fold, by the driver's [`Kind`].
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    /// Stream destinations.
    Events(&'a [Delivery<'a>]),
    /// State destinations.
    Folded(&'a [FoldedChange]),
}

/// How the drain should treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (network, timeouts, locks): retried with backoff.
    Transient,
    /// The batch is too big for the destination: split it.
    TooLarge,
    /// The destination refuses this data (a row it rejects): isolate it and dead-letter it.
    Rejected,
    /// Configuration or authentication is wrong: stop this destination and retry rarely.
    Config,
}

/// A driver's error, classified.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct DriverError {
    /// How the drain should react.
    pub class: ErrorClass,
    /// What happened, naming what and where.
    pub message: String,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DriverError {
    /// An error of `class` with `message` and no further cause.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> DriverError {
        DriverError { class, message: message.into(), source: None }
    }

    /// An error of `class` caused by `source`.
    pub fn caused(
        class: ErrorClass,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> DriverError {
        DriverError { class, message: message.into(), source: Some(Box::new(source)) }
    }
}

/// A destination.
pub trait Driver: Send + Sync {
    /// What it is.
    fn describe(&self) -> &'static Description;
    /// Batch limits.
    fn limits(&self) -> Limits;
    /// Check connectivity and permissions without writing data.
    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>>;
    /// Write a batch durably. Must be idempotent (see the module invariant).
    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>>;
}
