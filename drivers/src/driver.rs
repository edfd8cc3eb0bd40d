//! The `Driver` trait every destination implements, and what drivers describe about themselves.
//!
//! Invariant: `write` returning `Ok` means the batch is durable at the destination, and writing
//! the same batch twice leaves the same content as writing it once — a replay after a crash is
//! normal (cursors persist on an interval) and must be harmless. Drivers classify their errors;
//! they never sleep or retry: the drain decides.

use crate::event::{ChangeEvent, FoldedChange};
use crate::schema::Schema;
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

impl Description {
    /// The first sentence of the help: a one-line description (HQ's session and driver list).
    pub fn summary(&self) -> &'static str {
        self.help.split(". ").next().unwrap_or(self.help)
    }
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

/// One folded change as a state destination receives it, with the schema to write it by.
///
/// The drain has already dropped the properties `schema` does not know from the row, and has
/// called [`Driver::ensure_schema`] with `schema` before the batch's write.
#[derive(Debug, Clone, Copy)]
pub struct StateChange<'a> {
    /// The change of one (table, key) after folding the batch.
    pub change: &'a FoldedChange,
    /// The schema of the version of the last event folded into it (`change.model_version`).
    pub schema: &'a Schema,
}

/// What the drain hands a driver: every event, or the per-key fold, by the driver's [`Kind`].
#[derive(Debug, Clone, Copy)]
pub enum Batch<'a> {
    /// Stream destinations.
    Events(&'a [Delivery<'a>]),
    /// State destinations. At most one change per (table, key array).
    Folded(&'a [StateChange<'a>]),
}

impl<'a> Batch<'a> {
    /// How many events or folded changes the batch holds.
    pub fn len(&self) -> usize {
        match self {
            Batch::Events(e) => e.len(),
            Batch::Folded(c) => c.len(),
        }
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `mid` items and the rest (for splitting a batch the destination refused).
    pub fn split_at(self, mid: usize) -> (Batch<'a>, Batch<'a>) {
        match self {
            Batch::Events(e) => {
                let (l, r) = e.split_at(mid.min(e.len()));
                (Batch::Events(l), Batch::Events(r))
            }
            Batch::Folded(c) => {
                let (l, r) = c.split_at(mid.min(c.len()));
                (Batch::Folded(l), Batch::Folded(r))
            }
        }
    }
}

/// How the drain should treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (network, timeouts, locks, the server's resources): retried with backoff
    /// for as long as it takes; never held against the data.
    Transient,
    /// The driver cannot tell what it is: retried with backoff, and the batch is bisected so the
    /// change behind it stands alone; a change that fails alone with the same error several times
    /// in a row (while the rest of its batch is written) is dead-lettered with that error — so a
    /// misjudged row never blocks the destination for good.
    Unknown,
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

/// Turns export rows into a driver's bulk format (see [`Driver::fresh_encoder`]).
///
/// Invariant: what a row encodes to is exactly what [`Driver::write_fresh`] would store for the
/// INSERT event `eds import` makes of it, into a table without that key. A row the encoder is
/// not certain of — one the event way refuses, or treats in a way the encoder does not
/// reproduce — is declined, and the caller takes the event way for it.
pub trait FreshEncoder: Send {
    /// Append `line` (one export line: a JSON object) to `out`; `false` when declined, with
    /// `out` as it was.
    fn encode(&mut self, line: &str, out: &mut Vec<u8>) -> bool;
}

/// A destination.
pub trait Driver: Send + Sync {
    /// What it is.
    fn describe(&self) -> &'static Description;
    /// Batch limits.
    fn limits(&self) -> Limits;
    /// Check connectivity and permissions without writing data.
    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>>;
    /// Write a batch durably. Must be idempotent (see the module invariant). State drivers get
    /// [`Batch::Folded`] and apply it in one transaction; stream drivers get [`Batch::Events`].
    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>>;

    /// [`write`](Self::write) a batch into tables an import has just dropped and created again,
    /// so most of its rows are new: a driver may insert them the fastest way it has, provided it
    /// leaves exactly the content `write` would (existing rows included — a resumed or repeated
    /// import finds them) and refuses the same rows. The default is `write`.
    fn write_fresh<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        self.write(batch)
    }

    /// Batch limits of rows [`fresh_encoder`](Self::fresh_encoder) encoded (bulk loads may take
    /// larger batches than the drain's); the drain's [`limits`](Self::limits) by default.
    fn encoded_limits(&self) -> Limits {
        self.limits()
    }

    /// An encoder of import rows of `schema`'s table into the driver's own bulk format, for
    /// [`write_encoded`](Self::write_encoded): the fastest way an import fills a table it has just
    /// dropped and created again, with no event built per row. `None` (the default) when the
    /// driver has none, or has none for this table as it stands (call after
    /// [`ensure_schema`](Self::ensure_schema)); the import then writes events.
    fn fresh_encoder(&self, schema: &Schema) -> Option<Box<dyn FreshEncoder>> {
        let _ = schema;
        None
    }

    /// Write rows [`fresh_encoder`](Self::fresh_encoder) encoded for `schema` into its table,
    /// in one transaction. `Ok(true)`: all written. `Ok(false)`: the destination refused them
    /// (a key already in the table, a value a column refuses…) and nothing was written; the
    /// caller writes the same rows as events through [`write_fresh`](Self::write_fresh), which
    /// upserts or refuses each row with its own message. The default writes nothing and says
    /// `Ok(false)`.
    fn write_encoded<'a>(&'a self, schema: &'a Schema, data: &'a [u8]) -> BoxFuture<'a, Result<bool, DriverError>> {
        let _ = (schema, data);
        Box::pin(async { Ok(false) })
    }

    /// Make sure `schema`'s table exists at the destination and has every one of its columns,
    /// checked against the destination's own catalog (cached by the driver). Never drops a table
    /// or a column and never moves a table "backwards": an older version's schema only ever adds
    /// what is missing. A non-key column that is NOT NULL at the destination but absent from, or
    /// nullable in, `schema` gets its NOT NULL dropped; a column whose type cannot hold the
    /// schema's type is a [`ErrorClass::Config`] error naming table, column and both types. Runs
    /// its DDL outside any batch transaction. Called by the drain before every write that uses
    /// `schema`, so it must be cheap when nothing changed. Drivers that need no schema (stream
    /// kinds) keep the default, which does nothing.
    fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = schema;
        Box::pin(async { Ok(()) })
    }

    /// Drop `table` at the destination, with every row in it, when it exists, and forget what
    /// the driver cached about it, so the next [`ensure_schema`](Self::ensure_schema) creates it
    /// afresh. Only a full import calls it (after the operator confirmed), before it writes the
    /// table. Drops exactly the table [`ensure_schema`](Self::ensure_schema) would create (the
    /// connection's own schema or database, never one further along a search path) and nothing
    /// that depends on it: a view on the table makes it a [`ErrorClass::Config`] error. Drivers
    /// that keep no tables (stream kinds) keep the default, which does nothing.
    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let _ = table;
        Box::pin(async { Ok(()) })
    }
}
