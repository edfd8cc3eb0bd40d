//! Drains: one task per destination, reading the WAL through the destination's own cursor and
//! handing batches to its driver.
//!
//! Invariant: the cursor only moves past records the driver confirmed durable; a crash replays
//! from the last persisted position, which drivers make harmless.
//!
//! Stream destinations (files) receive every event. State destinations (SQL databases) receive
//! the batch folded per (table, key): the drain looks up each event's schema in the registry,
//! drops the properties the schema does not know, asks the driver to make sure the table and its
//! columns exist (DDL, outside the batch's transaction), then hands it the folded changes.

use crate::ingest::dlq_watch::Watched;
use crate::ingest::envelope::{self, Kind as EnvelopeKind};
use crate::registry::Registry;
use crate::server::state::ServerState;
use anyhow::{bail, Context, Result};
use eds_drivers::driver::{Batch, Delivery, Driver, DriverError, ErrorClass, Kind, StateChange};
use eds_drivers::event::{fold_taking, ChangeEvent, Row};
use eds_drivers::schema::Schema;
use eds_drivers::url::redact;
use eds_wal::{CursorStart, Reader, Record, Wal};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a destination stopped by a configuration or authentication error waits before it
/// tries again (someone has to fix something; there is no point in hammering it).
const CONFIG_RETRY: Duration = Duration::from_secs(180);

/// How long one driver write may take before it counts as a transient failure.
const WRITE_DEADLINE: Duration = Duration::from_secs(120);

/// Where a new destination's cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After the last record: only what arrives from now on.
    Head,
    /// At the oldest record the WAL still holds.
    Oldest,
    /// At this LSN.
    Lsn(u64),
}

/// A configured destination.
pub struct Destination {
    /// Stable name: cursor name, log field, metric label. Never holds credentials.
    pub name: String,
    /// The driver.
    pub driver: Arc<dyn Driver>,
    /// Where a new cursor starts.
    pub start: Start,
    /// Where events the destination rejects go (set by the caller, under the data dir).
    pub dead_letters: Option<crate::ingest::dlq::DeadLetters>,
    /// What happens when the disk budget is full and this destination holds the oldest data.
    pub overflow: Overflow,
    /// Where schemas come from, for drivers that need them (set by the caller).
    pub registry: Option<Arc<Registry>>,
    /// Per table: events older than this (unix milliseconds) are skipped — an import already
    /// wrote the table as of that time.
    pub skip_before: HashMap<String, i64>,
    /// How long a failed batch waits before it is tried again.
    pub retry: Retry,
}

/// Waits between attempts of a failing batch: `first`, doubling with every failure in a row up
/// to `max`, each with up to a quarter more at random so destinations do not retry in step.
/// Configuration errors wait [`CONFIG_RETRY`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { first: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

/// A destination's overflow policy (`overflow=` in its URL's query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Ingest pauses until the destination catches up (upstream keeps the data). The default.
    Block,
    /// The destination's cursor jumps past the oldest segment so ingest can go on; what it skips
    /// is recorded as a gap, logged and counted.
    DropOldest,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination").field("name", &self.name).field("start", &self.start).finish()
    }
}

/// A name usable as a cursor: `[A-Za-z0-9._-]`, at most 128 characters, not starting with a dot.
fn cursor_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    while out.starts_with('.') || out.starts_with('-') {
        out.remove(0);
    }
    out.truncate(128);
    out
}

fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Parse one `--url`. `Ok(None)` for a scheme whose driver is not in this build yet.
pub fn parse_destination(url: &str) -> Result<Option<Destination>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("--url {:?}: expected <scheme>://…", redact(url));
    };
    let start = match query_param(url, "start") {
        None | Some("head") => Start::Head,
        Some("oldest") => Start::Oldest,
        Some(s) => match s.strip_prefix("lsn:").map(str::parse::<u64>) {
            Some(Ok(n)) if n > 0 => Start::Lsn(n),
            _ => bail!("--url {:?}: start={s:?} is not head, oldest or lsn:N", redact(url)),
        },
    };
    // Every driver of this build, by scheme or alias: no per-scheme code here.
    let Some(registered) = eds_drivers::find(scheme) else { return Ok(None) };
    let driver = registered
        .open(url)
        .map_err(|e| anyhow::anyhow!("--url {:?}: {}", redact(url), redact(&eds_wal::error_chain(&e))))?;
    let default_name = format!("{}-{}", registered.scheme, host_and_path(rest));
    let name = cursor_safe(query_param(url, "name").map(str::to_owned).as_deref().unwrap_or(&default_name));
    if name.is_empty() {
        bail!("--url {:?}: the destination name is empty (set name=… in the URL's query)", redact(url));
    }
    let overflow = match query_param(url, "overflow") {
        None | Some("block") => Overflow::Block,
        Some("drop-oldest") => Overflow::DropOldest,
        Some(o) => bail!("--url {:?}: overflow={o:?} is not block or drop-oldest", redact(url)),
    };
    Ok(Some(Destination {
        name,
        driver,
        start,
        dead_letters: None,
        overflow,
        registry: None,
        skip_before: HashMap::new(),
        retry: Retry::default(),
    }))
}

/// `host[:port][-database]` of the part of a URL after `scheme://`, without user info or query.
fn host_and_path(rest: &str) -> String {
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let path = path.trim_matches('/');
    if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}-{path}")
    }
}

/// Parse every `--url`; two destinations with one name are a usage error.
pub fn parse_destinations(urls: &[String]) -> Result<Vec<Destination>> {
    let mut out: Vec<Destination> = Vec::new();
    for url in urls {
        match parse_destination(url)? {
            Some(d) => {
                if out.iter().any(|o| o.name == d.name) {
                    bail!("two destinations are named {:?}: give one a name=… in its URL's query", d.name);
                }
                out.push(d);
            }
            None => {
                tracing::warn!(url = %redact(url), "this destination's driver arrives with a later eds version; not delivering to it")
            }
        }
    }
    Ok(out)
}

/// Create the destination's cursor if it has none, where its `start` says. Called before
/// anything is appended, so a new destination's "head" is the head at start-up.
pub fn ensure_cursor(wal: &Wal, name: &str, start: Start) -> Result<(), eds_wal::Error> {
    if wal.cursor(name).is_ok() {
        return Ok(());
    }
    let s = match start {
        Start::Head => CursorStart::Head,
        Start::Oldest => CursorStart::Oldest,
        Start::Lsn(l) => CursorStart::Lsn(l),
    };
    wal.create_cursor(name, s)?;
    tracing::info!(destination = %name, start = ?start, "new destination: cursor created");
    Ok(())
}

/// File in the data dir naming the destinations of the last server start, so read-only tools can
/// tell a destination's cursor from an orphaned one.
pub const DESTINATIONS_FILE: &str = "destinations.json";

/// Record the configured destinations (name, driver, URL without password) in the data dir,
/// atomically and durably.
pub fn record_destinations(data_dir: &std::path::Path, destinations: &[Destination], urls: &[String]) -> Result<()> {
    let list: Vec<serde_json::Value> = destinations
        .iter()
        .map(|d| {
            // The URL this destination came from: the one whose parse gives its name.
            let url = urls
                .iter()
                .find(|u| parse_destination(u).ok().flatten().is_some_and(|p| p.name == d.name))
                .map(|u| redact(u));
            serde_json::json!({"name": d.name, "driver": d.driver.describe().name, "url": url})
        })
        .collect();
    crate::datadir::write_atomically(&data_dir.join(DESTINATIONS_FILE), &serde_json::to_vec_pretty(&list)?)
        .context("recording the destinations")
}

/// The destinations recorded by the last server start: (name, driver).
pub fn recorded_destinations(data_dir: &std::path::Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read(data_dir.join(DESTINATIONS_FILE)).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&text).ok()?;
    Some(
        list.iter()
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("driver"))
            })
            .collect(),
    )
}

/// Give every destination whose driver needs table schemas the registry `make` returns (called
/// only when there is such a destination, so no tracker or HQ client exists without need).
pub fn attach_registry(destinations: &mut [Destination], make: impl FnOnce() -> Result<Arc<Registry>>) -> Result<()> {
    if !destinations.iter().any(|d| d.driver.describe().needs_schema) {
        return Ok(());
    }
    let registry = make()?;
    for d in destinations.iter_mut().filter(|d| d.driver.describe().needs_schema) {
        d.registry = Some(registry.clone());
    }
    Ok(())
}

/// Make every destination known to `/status` (and to pause/resume) before anything serves HTTP.
pub fn register(state: &ServerState, destinations: &[Destination]) {
    for dest in destinations {
        let (driver, drop_oldest) = (dest.driver.describe().name, dest.overflow == Overflow::DropOldest);
        state.destination(&dest.name, |d| {
            d.driver = driver.to_owned();
            d.state = "idle";
            d.drop_oldest = drop_oldest;
        });
    }
}

/// [`ensure_cursor`] for every destination, off the async threads.
pub async fn ensure_cursors(wal: Wal, destinations: &[Destination]) -> Result<()> {
    let dests: Vec<(String, Start)> = destinations.iter().map(|d| (d.name.clone(), d.start)).collect();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for (name, start) in dests {
            ensure_cursor(&wal, &name, start).map_err(|e| {
                anyhow::anyhow!("creating the cursor of destination {name:?}: {}", eds_wal::error_chain(&e))
            })?;
        }
        Ok(())
    })
    .await?
}

/// What bisecting one batch found, by index in the batch.
#[derive(Debug, Default)]
struct Refused {
    /// Items the destination refused for their data, with the reason.
    rejected: Vec<(usize, String)>,
    /// Items that failed alone with an error the driver could not place ([`ErrorClass::Unknown`]).
    suspects: Vec<(usize, String)>,
    /// Items written.
    written: usize,
}

/// Write `batch`; when the destination rejects data or finds the batch too large, split it in
/// halves until the rejected items stand alone, and collect those (index in `batch`, reason)
/// instead of failing. An error the driver cannot place is bisected the same way, so the change
/// behind it stands alone as a suspect — unless nothing of the batch can be written at all, which
/// is the destination's problem, not a row's: then the error is returned. Replayed halves are
/// harmless: writes are idempotent.
fn deliver<'a>(
    driver: &'a dyn Driver,
    batch: Batch<'a>,
    offset: usize,
    refused: &'a mut Refused,
) -> eds_drivers::driver::BoxFuture<'a, Result<(), DriverError>> {
    Box::pin(async move {
        let result = match tokio::time::timeout(WRITE_DEADLINE, driver.write(batch)).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("writing {} changes did not finish within {WRITE_DEADLINE:?}", batch.len()),
            )),
        };
        let split = matches!(result, Err(ref e) if batch.len() > 1
            && matches!(e.class, ErrorClass::Rejected | ErrorClass::TooLarge | ErrorClass::Unknown));
        match result {
            Ok(()) => {
                refused.written += batch.len();
                Ok(())
            }
            Err(e) if split => {
                let before = refused.written;
                let mid = batch.len() / 2;
                let (left, right) = batch.split_at(mid);
                deliver(driver, left, offset, refused).await?;
                deliver(driver, right, offset + mid, refused).await?;
                if e.class == ErrorClass::Unknown && refused.written == before {
                    return Err(e);
                }
                Ok(())
            }
            Err(e) if e.class == ErrorClass::Rejected => {
                refused.rejected.push((offset, eds_wal::error_chain(&e)));
                Ok(())
            }
            Err(e) if e.class == ErrorClass::Unknown && batch.len() == 1 => {
                refused.suspects.push((offset, eds_wal::error_chain(&e)));
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}

/// [`deliver`] from the top: a batch of which nothing could be written blames no single change.
async fn deliver_all(driver: &dyn Driver, batch: Batch<'_>) -> Result<Refused, DriverError> {
    let mut refused = Refused::default();
    deliver(driver, batch, 0, &mut refused).await?;
    if refused.written == 0 {
        if let Some((_, why)) = refused.suspects.first() {
            return Err(DriverError::new(ErrorClass::Unknown, why.clone()));
        }
    }
    Ok(refused)
}

/// Events of one batch that the destination did not take.
#[derive(Debug, Default)]
struct Undelivered {
    /// (LSN, reason) of events the destination refused for their data.
    rejected: Vec<(u64, String)>,
    /// Changes that failed alone with an error the driver could not place.
    suspects: Vec<Suspect>,
}

/// A change (or an event) that failed alone with an error the driver could not place.
#[derive(Debug, Clone)]
struct Suspect {
    /// The LSN of its first event: the same change in the next attempt of the same records.
    key: u64,
    /// Every event folded into it.
    lsns: Vec<u64>,
    /// The error.
    reason: String,
}

/// Deliver every event to a stream destination.
async fn write_stream(
    driver: &dyn Driver,
    decoded: &[(u64, ChangeEvent, &[u8])],
    out: &mut Undelivered,
) -> Result<(), DriverError> {
    let deliveries: Vec<Delivery<'_>> =
        decoded.iter().map(|(lsn, event, raw)| Delivery { lsn: *lsn, event, raw }).collect();
    let refused = deliver_all(driver, Batch::Events(&deliveries)).await?;
    let lsn = |i: usize| deliveries.get(i).map(|d| d.lsn);
    out.rejected.extend(refused.rejected.into_iter().filter_map(|(i, why)| Some((lsn(i)?, why))));
    out.suspects.extend(
        refused
            .suspects
            .into_iter()
            .filter_map(|(i, reason)| Some(Suspect { key: lsn(i)?, lsns: vec![lsn(i)?], reason })),
    );
    Ok(())
}

/// How many attempts in a row a change must fail alone with the same error the driver could not
/// place (while the rest of its batch is written) before it is dead-lettered.
const BACKSTOP_ATTEMPTS: u32 = 8;

/// Counts, per change, the attempts in a row that it failed alone with the same unplaced error.
#[derive(Debug, Default)]
struct Backstop {
    /// By the change's first LSN: the error and how many attempts in a row it failed with it.
    failing: HashMap<u64, (String, u32)>,
}

impl Backstop {
    /// Take this attempt's suspects. Returns the events to dead-letter now (those of changes that
    /// failed [`BACKSTOP_ATTEMPTS`] times in a row with the same error), and the error to retry
    /// with while others have not failed that often yet.
    fn judge(&mut self, suspects: Vec<Suspect>) -> (Vec<(u64, String)>, Option<DriverError>) {
        let mut failing = HashMap::with_capacity(suspects.len());
        let (mut dead, mut retry) = (Vec::new(), None);
        for s in suspects {
            let count = match self.failing.remove(&s.key) {
                Some((reason, n)) if reason == s.reason => n + 1,
                _ => 1,
            };
            if count >= BACKSTOP_ATTEMPTS {
                let why = format!("failed alone {count} times in a row with the same error: {}", s.reason);
                dead.extend(s.lsns.iter().map(|&lsn| (lsn, why.clone())));
            } else {
                retry.get_or_insert_with(|| {
                    DriverError::new(
                        ErrorClass::Unknown,
                        format!(
                            "{} (attempt {count} of {BACKSTOP_ATTEMPTS} before the change is dead-lettered)",
                            s.reason
                        ),
                    )
                });
                failing.insert(s.key, (s.reason, count));
            }
        }
        // Only changes failing now keep their count: one that went through starts again at zero.
        self.failing = failing;
        (dead, retry)
    }
}

/// Deliver one event as the drain would (schema, table creation, fold of one): `Ok(None)` when
/// the destination took it, `Ok(Some(reason))` when it still rejects it. For `eds dlq replay`.
pub async fn deliver_one(
    dest: &Destination,
    lsn: u64,
    event: ChangeEvent,
    raw: &[u8],
) -> Result<Option<String>, DriverError> {
    let mut out = Undelivered::default();
    let decoded = vec![(lsn, event, raw)];
    match dest.driver.describe().kind {
        Kind::Stream => write_stream(&*dest.driver, &decoded, &mut out).await?,
        Kind::State => write_state(dest, decoded, &mut out).await?,
    }
    Ok(out.rejected.into_iter().next().map(|(_, why)| why))
}

/// Schemas by table, then model version.
type Schemas = HashMap<String, HashMap<String, Arc<Schema>>>;

fn lookup<'s>(schemas: &'s Schemas, table: &str, version: &str) -> Option<&'s Arc<Schema>> {
    schemas.get(table).and_then(|v| v.get(version))
}

/// Drop the properties `schema` does not know (EDS does the same for state destinations).
fn keep_known(row: &mut Option<Row>, schema: &Schema) {
    if let Some(r) = row {
        r.retain(|k, _| schema.column(k).is_some());
    }
}

/// Deliver a batch to a state destination: look up every event's schema, cut its rows to the
/// schema, fold per (table, key), make sure the tables and columns exist, write the changes.
/// A change the destination rejects makes every event folded into it a rejected event.
async fn write_state(
    dest: &Destination,
    decoded: Vec<(u64, ChangeEvent, &[u8])>,
    out: &mut Undelivered,
) -> Result<(), DriverError> {
    let rejected = &mut out.rejected;
    let driver = &*dest.driver;
    let Some(registry) = dest.registry.as_ref().filter(|_| driver.describe().needs_schema) else {
        return Err(DriverError::new(
            ErrorClass::Config,
            format!("destination {:?} holds tables but has no schema registry to create them from", dest.name),
        ));
    };
    let mut schemas: Schemas = HashMap::new();
    // (table, version) → why it has no schema.
    let mut unknown: HashMap<(String, String), String> = HashMap::new();
    for (_, e, _) in &decoded {
        let key = (e.table.clone(), e.model_version.clone());
        if lookup(&schemas, &e.table, &e.model_version).is_some() || unknown.contains_key(&key) {
            continue;
        }
        match registry.schema(&e.table, &e.model_version).await {
            Ok(s) => {
                schemas.entry(key.0).or_default().insert(key.1, s);
            }
            Err(err) if err.is_transient() => {
                return Err(DriverError::caused(ErrorClass::Transient, "looking up table schemas", err))
            }
            Err(err) => {
                unknown.insert(key, err.to_string());
            }
        }
    }
    let mut events: Vec<(u64, ChangeEvent)> = Vec::with_capacity(decoded.len());
    for (lsn, mut e, _) in decoded {
        if let Some(why) = e.no_row_to_write() {
            rejected.push((lsn, why));
            continue;
        }
        match lookup(&schemas, &e.table, &e.model_version) {
            Some(schema) => {
                keep_known(&mut e.after, schema);
                keep_known(&mut e.before, schema);
                events.push((lsn, e));
            }
            None => {
                let why = unknown.get(&(e.table.clone(), e.model_version.clone())).cloned().unwrap_or_default();
                rejected.push((lsn, why));
            }
        }
    }
    // The row images move into the fold, which keeps every event's LSN; the rest goes.
    let folded = fold_taking(events.iter_mut().map(|(lsn, e)| (*lsn, e)));
    drop(events);
    // DDL first, outside the batch's transaction, once per schema the batch writes with. A
    // schema the destination refuses (a table name it cannot hold) rejects that table's events.
    let mut ensured: Vec<&Arc<Schema>> = Vec::new();
    let mut refused_tables: HashMap<&str, String> = HashMap::new();
    for c in &folded {
        let Some(schema) = lookup(&schemas, &c.table, &c.model_version) else { continue };
        if ensured.iter().any(|s| Arc::ptr_eq(s, schema)) {
            continue;
        }
        ensured.push(schema);
        let ensure = tokio::time::timeout(WRITE_DEADLINE, driver.ensure_schema(schema)).await.unwrap_or_else(|_| {
            Err(DriverError::new(
                ErrorClass::Transient,
                format!("creating or migrating table {:?} did not finish within {WRITE_DEADLINE:?}", c.table),
            ))
        });
        match ensure {
            Ok(()) => {}
            Err(e) if e.class == ErrorClass::Rejected => {
                refused_tables.insert(&c.table, eds_wal::error_chain(&e));
            }
            Err(e) => return Err(e),
        }
    }
    let mut changes: Vec<StateChange<'_>> = Vec::with_capacity(folded.len());
    for c in &folded {
        if let Some(why) = refused_tables.get(c.table.as_str()) {
            rejected.extend(c.positions.iter().map(|&lsn| (lsn, why.clone())));
        } else if let Some(schema) = lookup(&schemas, &c.table, &c.model_version) {
            changes.push(StateChange { change: c, schema });
        }
    }
    let refused =
        if changes.is_empty() { Refused::default() } else { deliver_all(driver, Batch::Folded(&changes)).await? };
    // The events folded into a change.
    let lsns = |i: usize| changes.get(i).map(|c| c.change.positions.clone());
    for (i, why) in refused.rejected {
        rejected.extend(lsns(i).unwrap_or_default().into_iter().map(|lsn| (lsn, why.clone())));
    }
    rejected.sort_by_key(|r| r.0);
    for (i, reason) in refused.suspects {
        let (Some(lsns), Some(c)) = (lsns(i), changes.get(i)) else { continue };
        out.suspects.push(Suspect { key: c.change.first_pos, lsns, reason });
    }
    Ok(())
}

/// At least this many rejected events in a row (across batches), or at least this many making up
/// [`SYSTEMATIC_SHARE`] of one batch, means something systematic: the destination is stopped
/// with that error rather than dead-lettering a whole table.
const SYSTEMATIC_MIN: usize = 10;
/// See [`SYSTEMATIC_MIN`].
const SYSTEMATIC_SHARE: f64 = 0.5;

/// Run one destination until shutdown.
pub async fn run(dest: Destination, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    let name = dest.name.clone();
    let limits = dest.driver.limits();
    let kind = dest.driver.describe().kind;
    register(&state, std::slice::from_ref(&dest));
    let mut reader: Option<(Wal, Reader)> = None;
    let mut backoff = dest.retry.first;
    let mut consecutive_rejected = 0usize;
    let mut backstop = Backstop::default();
    // Rows with dead letters, whose later deliveries a replay must know about (state kinds).
    let watch = match (kind, dest.registry.as_ref().and_then(|r| r.tracker())) {
        (Kind::State, Some(tracker)) => match Watched::load(tracker.clone(), &name) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(destination = %name, error = %eds_wal::error_chain(e.as_ref()), "cannot read which rows have dead letters; `eds dlq replay` will not know which are superseded");
                None
            }
        },
        _ => None,
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        if state.is_paused(&name) {
            state.destination(&name, |d| d.state = "paused");
            tokio::select! { _ = tokio::time::sleep(Duration::from_millis(100)) => {}, _ = shutdown.changed() => {} }
            continue;
        }
        let Some(wal) = state.wal().filter(|w| !w.is_poisoned()) else {
            reader = None; // let ingest reopen the log
            tokio::select! { _ = tokio::time::sleep(Duration::from_millis(100)) => {}, _ = shutdown.changed() => {} }
            continue;
        };
        // A reader behind its cursor means the cursor was moved (overflow=drop-oldest): reopen.
        let moved = |w: &Wal, r: &Reader| w.cursor(&name).map(|c| r.next_lsn() <= c.position).unwrap_or(true);
        let (wal, r) = match reader.take() {
            Some((w, r)) if !w.is_poisoned() && !moved(&w, &r) => (w, r),
            _ => {
                let (w, n, start) = (wal.clone(), name.clone(), dest.start);
                let opened = tokio::task::spawn_blocking(move || -> Result<Reader, eds_wal::Error> {
                    ensure_cursor(&w, &n, start)?;
                    w.cursor_reader(&n)
                })
                .await;
                match opened {
                    Ok(Ok(r)) => (wal, r),
                    Ok(Err(e)) => {
                        tracing::error!(destination = %name, error = %eds_wal::error_chain(&e), "cannot read the WAL for this destination");
                        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => {}, _ = shutdown.changed() => {} }
                        continue;
                    }
                    Err(_) => break,
                }
            }
        };
        // Read what is there, up to the driver's limits; wait briefly when there is nothing.
        let (max_rows, max_bytes) = (limits.max_rows.max(1), limits.max_bytes.max(1));
        let read = tokio::task::spawn_blocking(move || -> Result<(Reader, Vec<Record>), eds_wal::Error> {
            let mut r = r;
            let mut records = Vec::new();
            let mut bytes = 0usize;
            while records.len() < max_rows && bytes < max_bytes {
                match r.next()? {
                    Some(rec) => {
                        bytes += rec.data.len();
                        records.push(rec);
                    }
                    None if records.is_empty() => {
                        if !r.wait(Duration::from_millis(200))? {
                            break;
                        }
                    }
                    None => break,
                }
            }
            Ok((r, records))
        })
        .await;
        let (r, records) = match read {
            Ok(Ok(read)) => read,
            Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(destination = %name, error = %eds_wal::error_chain(&e), "reading the WAL failed; retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(500)) => {}, _ = shutdown.changed() => {} }
                continue;
            }
        };
        tracing::trace!(destination = %name, records = records.len(), next = r.next_lsn(), "drain read");
        let age =
            records.first().map_or(0.0, |r| crate::timefmt::now_micros().saturating_sub(r.appended_at) as f64 / 1e6);
        state.metrics.destination_lag_seconds.with_label_values(&[&name]).set(age);
        let Some(last) = records.last().map(|r| r.lsn) else {
            state.destination(&name, |d| d.state = "idle");
            reader = Some((wal, r));
            continue;
        };
        // Decode: events go to the driver; dead-letter markers only move the cursor.
        let mut decoded: Vec<(u64, ChangeEvent, &[u8])> = Vec::with_capacity(records.len());
        let mut undecodable: Vec<(u64, String)> = Vec::new();
        let mut skipped = 0usize;
        // Events of rows with dead letters: (LSN, table, key, stream sequence).
        let mut watched: Vec<(u64, String, String, u64)> = Vec::new();
        let watching = watch.as_ref().filter(|w| !w.is_empty());
        for rec in &records {
            match envelope::decode(&rec.data) {
                Ok(env) if env.kind == EnvelopeKind::Event => match ChangeEvent::from_json(env.payload) {
                    Ok(e) if dest.skip_before.get(&e.table).is_some_and(|&t| e.timestamp < t) => skipped += 1,
                    Ok(e) => {
                        if watching.is_some_and(|w| w.contains(&e.table, e.primary_key())) {
                            watched.push((rec.lsn, e.table.clone(), e.primary_key().to_owned(), env.stream_seq));
                        }
                        decoded.push((rec.lsn, e, env.payload))
                    }
                    Err(e) => {
                        undecodable.push((rec.lsn, format!("drivers cannot decode it: {}", eds_wal::error_chain(&e))))
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(destination = %name, lsn = rec.lsn, error = %e, "skipping a damaged WAL record")
                }
            }
        }
        if skipped > 0 {
            tracing::debug!(destination = %name, skipped, "skipped events older than the table's import");
        }
        let started = Instant::now();
        let attempted = decoded.len();
        let undecodable_count = undecodable.len();
        let mut undelivered = Undelivered::default();
        let mut written = match kind {
            _ if decoded.is_empty() => Ok(()),
            Kind::Stream => write_stream(&*dest.driver, &decoded, &mut undelivered).await,
            Kind::State => write_state(&dest, decoded, &mut undelivered).await,
        };
        // Events the destination refused: (LSN, reason).
        let mut rejected = std::mem::take(&mut undelivered.rejected);
        if written.is_ok() {
            // The backstop: a change that keeps failing alone with an error the driver cannot
            // place, while the rest of its batch is written, is dead-lettered in the end.
            let (dead, retry) = backstop.judge(std::mem::take(&mut undelivered.suspects));
            rejected.extend(dead);
            rejected.sort_by_key(|r| r.0);
            if let Some(e) = retry {
                written = Err(e);
            }
        }
        // Events no driver can decode are refused like the rest: they count towards a stop.
        if !undecodable.is_empty() {
            rejected.extend(undecodable);
            rejected.sort_by_key(|r| r.0);
        }
        let attempted = attempted + undecodable_count;
        if written.is_ok() && !rejected.is_empty() {
            // Rejections in a row (across batches) or most of a big batch: something systematic
            // (a type mismatch, a NOT NULL column) — stop instead of dead-lettering a whole table.
            let all_rejected = rejected.len() == attempted;
            let in_a_row = if all_rejected { consecutive_rejected + rejected.len() } else { rejected.len() };
            let share = rejected.len() as f64 / attempted.max(1) as f64;
            let systematic = in_a_row >= SYSTEMATIC_MIN && (all_rejected || share >= SYSTEMATIC_SHARE);
            let first = rejected.first().map(|(_, r)| r.clone()).unwrap_or_default();
            written = if systematic {
                Err(DriverError::new(
                    ErrorClass::Config,
                    format!(
                        "{in_a_row} events in a row were rejected, so the destination is stopped instead of dead-lettering them; first reason: {first}"
                    ),
                ))
            } else {
                consecutive_rejected = if all_rejected { in_a_row } else { 0 };
                dead_letter(&dest, &name, &records, &rejected, watch.as_ref()).await
            };
        } else if written.is_ok() && attempted > 0 {
            consecutive_rejected = 0;
        }
        // Newer events of rows with dead letters are on record before the cursor moves past them.
        if let (true, Some(w)) = (written.is_ok() && !watched.is_empty(), &watch) {
            let items: Vec<(String, String, u64)> = watched
                .into_iter()
                .filter(|(lsn, ..)| rejected.binary_search_by_key(lsn, |r| r.0).is_err())
                .map(|(_, table, pk, seq)| (table, pk, seq))
                .collect();
            if let Err(e) = w.delivered(&items).await {
                written = Err(DriverError::new(ErrorClass::Transient, eds_wal::error_chain(e.as_ref())));
            }
        }
        match written {
            Ok(()) => {
                backoff = dest.retry.first;
                let took = started.elapsed().as_secs_f64();
                let oldest = records.first().map(|r| r.appended_at).unwrap_or(0);
                let waited = crate::timefmt::now_micros().saturating_sub(oldest) as f64 / 1e6;
                state.metrics.observe_flush(&name, took, attempted, waited);
                let (w, n) = (wal.clone(), name.clone());
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || w.advance_cursor(&n, last)).await {
                    tracing::error!(destination = %name, error = %eds_wal::error_chain(&e), "advancing the cursor failed");
                }
                let delivered = attempted.saturating_sub(rejected.len()) as u64;
                let dead = rejected.len() as u64;
                state.metrics.dead_lettered.inc_by(dead);
                state.metrics.destination_dead_lettered.with_label_values(&[&name]).inc_by(dead);
                state.metrics.destination_delivered.with_label_values(&[&name]).inc_by(delivered);
                state.destination(&name, |d| {
                    d.state = "delivering";
                    d.position = d.position.max(last);
                    d.delivered += delivered;
                    d.last_error = None;
                });
                reader = Some((wal, r));
            }
            Err(e) => {
                // Re-read the same records next time: a fresh reader from the cursor.
                drop(r);
                let wait = match e.class {
                    ErrorClass::Config => CONFIG_RETRY,
                    _ => backoff,
                };
                let msg = eds_wal::error_chain(&e);
                tracing::warn!(destination = %name, error = %msg, retry_in = ?wait, "delivery failed; retrying");
                let stopped = e.class == ErrorClass::Config;
                state.metrics.destination_retries.with_label_values(&[&name]).inc();
                state.destination(&name, |d| {
                    d.state = if stopped { "stopped" } else { "retrying" };
                    d.last_error = Some(msg);
                });
                // Capped exponential backoff with jitter, so many destinations do not retry in step.
                let spread = (backoff.as_micros() as u64 / 4).max(1);
                let jitter = Duration::from_micros(crate::timefmt::now_micros() % spread);
                backoff = (backoff * 2).min(dest.retry.max) + jitter;
                tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = shutdown.changed() => {} }
            }
        }
    }
    drop(reader);
    state.destination(&name, |d| d.state = "stopped");
    tracing::info!(destination = %name, "drain stopped");
}

/// Make the rejected events durable in the destination's dead-letter log, with their reasons.
async fn dead_letter(
    dest: &Destination,
    name: &str,
    records: &[Record],
    rejected: &[(u64, String)],
    watch: Option<&Watched>,
) -> Result<(), eds_drivers::driver::DriverError> {
    let Some(dlq) = dest.dead_letters.clone() else {
        return Err(eds_drivers::driver::DriverError::new(
            ErrorClass::Config,
            format!("destination {name:?} rejected {} events and has no dead-letter log", rejected.len()),
        ));
    };
    let mut entries = Vec::with_capacity(rejected.len());
    let mut rows = Vec::new();
    for (lsn, reason) in rejected {
        let Some(rec) = records.iter().find(|r| r.lsn == *lsn) else { continue };
        let env = envelope::decode(&rec.data).map_err(|e| {
            eds_drivers::driver::DriverError::new(ErrorClass::Config, format!("WAL record {lsn} is damaged: {e}"))
        })?;
        tracing::warn!(destination = %name, lsn, stream_seq = env.stream_seq, reason = %reason, "the destination rejected an event: dead-lettered");
        if let Ok(e) = ChangeEvent::from_json(env.payload) {
            let pk = e.primary_key().to_owned();
            rows.push((e.table, pk, env.stream_seq));
        }
        entries.push(
            envelope::Envelope {
                kind: EnvelopeKind::DeadLetter,
                reason: format!("destination {name} rejected it: {reason}").into(),
                ..env
            }
            .encode(),
        );
    }
    // The rows first: a watched row without its dead letter (after a crash here) is harmless.
    if let Some(w) = watch {
        w.dead_lettered(&rows).await.map_err(|e| {
            eds_drivers::driver::DriverError::new(ErrorClass::Transient, eds_wal::error_chain(e.as_ref()))
        })?;
    }
    tokio::task::spawn_blocking(move || dlq.append(&entries))
        .await
        .map_err(|e| {
            eds_drivers::driver::DriverError::new(ErrorClass::Transient, format!("dead-letter task failed: {e}"))
        })?
        .map_err(|e| {
            eds_drivers::driver::DriverError::caused(
                ErrorClass::Transient,
                "writing the destination's dead-letter log",
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_hold_credentials_and_must_be_unique() {
        let d = parse_destination("file:///var/eds/out").unwrap().unwrap();
        assert_eq!(d.name, "file--var-eds-out");
        assert_eq!(d.start, Start::Head);
        let d = parse_destination("file://out?name=archive&start=oldest").unwrap().unwrap();
        assert_eq!((d.name.as_str(), d.start), ("archive", Start::Oldest));
        assert_eq!(parse_destination("file://x?start=lsn:42").unwrap().unwrap().start, Start::Lsn(42));
        assert!(parse_destination("file://x?start=yesterday").unwrap_err().to_string().contains("start=\"yesterday\""));
        assert_eq!(parse_destination("file://x").unwrap().unwrap().overflow, Overflow::Block);
        assert_eq!(parse_destination("file://x?overflow=drop-oldest").unwrap().unwrap().overflow, Overflow::DropOldest);
        assert!(parse_destination("file://x?overflow=maybe").unwrap_err().to_string().contains("overflow=\"maybe\""));
        let pg = parse_destination("postgres://u:secret@db:5433/shop?sslmode=require").unwrap().unwrap();
        assert_eq!(pg.name, "postgres-db-5433-shop", "no user, no password, no query");
        assert_eq!(pg.driver.describe().kind, Kind::State);
        assert!(parse_destination("kafka://u:secret@broker/x").unwrap().is_none(), "no driver in this build yet");
        let my = parse_destination("mysql://root:pw@127.0.0.1:3306/shop").unwrap().unwrap();
        assert_eq!((my.name.as_str(), my.driver.describe().name), ("mysql-127.0.0.1-3306-shop", "MySQL"));
        let ms = parse_destination("mssql://sa:pw@db/shop").unwrap().unwrap();
        assert_eq!(ms.name, "sqlserver-db-shop");
        let err = parse_destinations(&["file://a?name=same".into(), "file://b?name=same".into()]).unwrap_err();
        assert!(err.to_string().contains("two destinations are named \"same\""), "{err}");
        assert_eq!(redact("postgres://user:secret@db:5432/x"), "postgres://user:***@db:5432/x");
        assert_eq!(redact("file:///x"), "file:///x");
    }
}

#[cfg(test)]
mod rejection_tests {
    use super::*;
    use crate::ingest::dlq::DeadLetters;
    use eds_drivers::driver::{Description, DriverError, Limits};
    use std::sync::Mutex;

    static PICKY: Description = Description {
        name: "Picky",
        scheme: "picky",
        aliases: &[],
        example_url: "picky://x",
        help: "rejects rows whose key starts with bad",
        fields: &[],
        kind: Kind::Stream,
        needs_schema: false,
    };

    /// What the double refuses.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Refuse {
        /// Batches holding a key starting with "bad": rejected.
        Bad,
        /// Every batch: rejected.
        All,
        /// Batches holding a key starting with "bad": an error the driver cannot place.
        BadUnplaced,
    }

    /// Refuses (atomically, like a SQL transaction) what its [`Refuse`] says; writes the rest.
    struct Picky {
        written: Mutex<Vec<u64>>,
        refuse: Refuse,
        attempts: Mutex<usize>,
    }

    impl Driver for Picky {
        fn describe(&self) -> &'static Description {
            &PICKY
        }
        fn limits(&self) -> Limits {
            Limits { max_rows: 8, max_bytes: 1 << 20, max_bind_params: usize::MAX }
        }
        fn test(&self) -> eds_drivers::driver::BoxFuture<'_, Result<(), DriverError>> {
            Box::pin(async { Ok(()) })
        }
        fn write<'a>(&'a self, batch: Batch<'a>) -> eds_drivers::driver::BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async move {
                let Batch::Events(events) = batch else { unreachable!() };
                *self.attempts.lock().unwrap() += 1;
                let bad = events.iter().any(|d| d.event.primary_key().starts_with("bad"));
                match self.refuse {
                    Refuse::All => {
                        return Err(DriverError::new(ErrorClass::Rejected, "value out of range for column \"number\""))
                    }
                    Refuse::Bad if bad => {
                        return Err(DriverError::new(ErrorClass::Rejected, "value out of range for column \"number\""))
                    }
                    Refuse::BadUnplaced if bad => {
                        return Err(DriverError::new(ErrorClass::Unknown, "XX000: unexpected internal error"))
                    }
                    _ => {}
                }
                self.written.lock().unwrap().extend(events.iter().map(|d| d.lsn));
                Ok(())
            })
        }
    }

    async fn run_with(
        refuse: Refuse,
        undecodable: &[u64],
    ) -> (Vec<u64>, Vec<crate::ingest::dlq::Listed>, serde_json::Value, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let records: Vec<Vec<u8>> = (1..=20u64)
            .map(|n| {
                let key = if [4, 9, 17].contains(&n) { format!("bad{n}") } else { format!("k{n}") };
                // Ingest's validation does not look at `timestamp`; drivers' decoding does.
                let ts = if undecodable.contains(&n) { r#""soon""#.to_string() } else { n.to_string() };
                let payload = format!(
                    r#"{{"operation":"INSERT","table":"t","key":["{key}"],"after":{{"id":"{key}"}},"timestamp":{ts}}}"#
                );
                envelope::Envelope {
                    kind: EnvelopeKind::Event,
                    stream_seq: n,
                    received_at: 1,
                    subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
                    msg_id: "".into(),
                    reason: "".into(),
                    payload: payload.as_bytes(),
                }
                .encode()
            })
            .collect();
        wal.append(&records).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Picky { written: Mutex::new(Vec::new()), refuse, attempts: Mutex::new(0) });
        let dest = Destination {
            name: "picky".into(),
            driver: driver.clone(),
            start: Start::Oldest,
            dead_letters: Some(DeadLetters::open_for_destination(dir.path(), "picky").unwrap()),
            overflow: Overflow::Block,
            registry: None,
            skip_before: HashMap::new(),
            retry: Retry { first: Duration::from_millis(1), max: Duration::from_millis(4) },
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = state.status_json();
            let d = &s["destinations"][0];
            if d["cursor"] == 20 || d["state"] == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "drain made no progress: {s}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = state.status_json();
        stop.send(true).unwrap();
        task.await.unwrap();
        let mut written = driver.written.lock().unwrap().clone();
        written.sort_unstable();
        let letters = crate::ingest::dlq::list_at(&dir.path().join("dlq").join("picky")).unwrap();
        let positions = state.destination_positions().into_iter().map(|(_, p)| p).collect();
        (written, letters, status, positions)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejected_event_is_isolated_and_dead_lettered_the_rest_delivered() {
        let (written, letters, status, positions) = run_with(Refuse::Bad, &[]).await;
        let good: Vec<u64> = (1..=20).filter(|n| ![4, 9, 17].contains(n)).collect();
        assert_eq!(written, good, "every other event exactly once");
        let dead: Vec<u64> = letters.iter().map(|l| l.stream_seq).collect();
        assert_eq!(dead, vec![4, 9, 17]);
        assert!(letters
            .iter()
            .all(|l| l.reason == "destination picky rejected it: value out of range for column \"number\""));
        assert_eq!(positions, vec![20], "the cursor passes dead letters: {status}");
        assert_eq!(status["destinations"][0]["delivered"], 17);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_drivers_cannot_decode_is_dead_lettered_not_dropped() {
        let (written, letters, _, positions) = run_with(Refuse::Bad, &[2]).await;
        assert!(!written.contains(&2));
        let undecodable: Vec<&crate::ingest::dlq::Listed> = letters.iter().filter(|l| l.stream_seq == 2).collect();
        assert_eq!(undecodable.len(), 1);
        assert!(undecodable[0].reason.contains("drivers cannot decode it"), "{}", undecodable[0].reason);
        assert_eq!(positions, vec![20]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_systematic_rejection_stops_the_destination_instead_of_dead_lettering_everything() {
        let (written, letters, status, positions) = run_with(Refuse::All, &[]).await;
        assert!(written.is_empty());
        // The first batch (8 < 10 in a row) is dead-lettered; the second proves it systematic.
        assert_eq!(letters.len(), 8, "at most one batch below the threshold is dead-lettered");
        let d = &status["destinations"][0];
        assert_eq!(d["state"], "stopped", "{status}");
        assert!(d["last_error"].as_str().unwrap().contains("16 events in a row were rejected"), "{status}");
        assert_eq!(positions, vec![8], "the cursor stops before the batch that proved it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_no_driver_can_decode_count_towards_the_stop() {
        let all: Vec<u64> = (1..=20).collect();
        let (written, letters, status, positions) = run_with(Refuse::Bad, &all).await;
        assert!(written.is_empty());
        assert_eq!(letters.len(), 8, "the first batch is dead-lettered, the second proves it systematic");
        let d = &status["destinations"][0];
        assert_eq!(d["state"], "stopped", "{status}");
        assert!(d["last_error"].as_str().unwrap().contains("drivers cannot decode it"), "{status}");
        assert_eq!(positions, vec![8]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_failing_alone_with_an_unplaced_error_is_dead_lettered_in_the_end() {
        let (written, letters, status, positions) = run_with(Refuse::BadUnplaced, &[]).await;
        let good: Vec<u64> = (1..=20).filter(|n| ![4, 9, 17].contains(n)).collect();
        let mut once = written.clone();
        once.dedup();
        assert_eq!(once, good, "every other event delivered: {status}");
        let dead: Vec<(u64, &str)> = letters.iter().map(|l| (l.stream_seq, l.reason.as_str())).collect();
        assert_eq!(dead.len(), 3, "{dead:?}");
        for (seq, reason) in dead {
            assert!([4, 9, 17].contains(&seq));
            assert!(
                reason.contains("failed alone 8 times in a row with the same error: XX000: unexpected internal error"),
                "{reason}"
            );
        }
        assert_eq!(positions, vec![20], "{status}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unplaced_error_on_every_change_blames_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let records: Vec<Vec<u8>> = (1..=16u64)
            .map(|n| {
                let payload =
                    format!(r#"{{"operation":"INSERT","table":"t","key":["bad{n}"],"after":{{"id":"bad{n}"}}}}"#);
                let env = envelope::Envelope {
                    kind: EnvelopeKind::Event,
                    stream_seq: n,
                    received_at: 1,
                    subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
                    msg_id: "".into(),
                    reason: "".into(),
                    payload: payload.as_bytes(),
                };
                env.encode()
            })
            .collect();
        wal.append(&records).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver =
            Arc::new(Picky { written: Mutex::new(Vec::new()), refuse: Refuse::BadUnplaced, attempts: Mutex::new(0) });
        let dest = Destination {
            name: "picky".into(),
            driver: driver.clone(),
            start: Start::Oldest,
            dead_letters: Some(DeadLetters::open_for_destination(dir.path(), "picky").unwrap()),
            overflow: Overflow::Block,
            registry: None,
            skip_before: HashMap::new(),
            retry: Retry { first: Duration::from_millis(1), max: Duration::from_millis(4) },
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        // Far more attempts than the backstop needs: still nothing dead-lettered, cursor held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while *driver.attempts.lock().unwrap() < 20 * BACKSTOP_ATTEMPTS as usize {
            assert!(Instant::now() < deadline, "too few attempts: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = state.status_json();
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(status["destinations"][0]["state"], "retrying", "{status}");
        assert!(status["destinations"][0]["last_error"].as_str().unwrap().contains("XX000"), "{status}");
        assert_eq!(state.destination_positions(), vec![("picky".to_owned(), 0)]);
        let letters = crate::ingest::dlq::list_at(&dir.path().join("dlq").join("picky")).unwrap();
        assert!(letters.is_empty(), "{letters:?}");
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use crate::ingest::dlq::DeadLetters;
    use crate::registry::{SchemaSource, SourceError};
    use eds_drivers::driver::{BoxFuture, Description, Limits};
    use eds_drivers::event::Folded;
    use eds_drivers::schema::LatestSchemas;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    static MEMORY: Description = Description {
        name: "Memory",
        scheme: "memory",
        aliases: &[],
        example_url: "memory://x",
        help: "a table store in memory; rejects rows whose n is 13",
        fields: &[],
        kind: Kind::State,
        needs_schema: true,
    };

    /// Tables in memory: (table, primary key) → row. Rejects, atomically, a batch holding n = 13.
    #[derive(Default)]
    struct Memory {
        rows: Mutex<BTreeMap<(String, String), Row>>,
        ensured: Mutex<Vec<(String, String)>>,
        writes: Mutex<usize>,
    }

    impl Driver for Memory {
        fn describe(&self) -> &'static Description {
            &MEMORY
        }
        fn limits(&self) -> Limits {
            Limits { max_rows: 100, max_bytes: 1 << 20, max_bind_params: usize::MAX }
        }
        fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
            Box::pin(async { Ok(()) })
        }
        fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async move {
                let id = (schema.table().to_owned(), schema.model_version().to_owned());
                self.ensured.lock().unwrap().push(id);
                Ok(())
            })
        }
        fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
            Box::pin(async move {
                let Batch::Folded(changes) = batch else { unreachable!() };
                *self.writes.lock().unwrap() += 1;
                let bad = changes.iter().any(|c| match &c.change.change {
                    Folded::Upsert { row, .. } => row.get("n") == Some(&serde_json::json!(13)),
                    Folded::Delete { .. } => false,
                });
                if bad {
                    return Err(DriverError::new(ErrorClass::Rejected, "n must not be 13"));
                }
                let mut rows = self.rows.lock().unwrap();
                for c in changes {
                    let id = (c.change.table.clone(), c.change.primary_key.clone());
                    match &c.change.change {
                        Folded::Delete { .. } => {
                            rows.remove(&id);
                        }
                        Folded::Upsert { row, changed: None } => {
                            rows.insert(id, row.clone());
                        }
                        Folded::Upsert { row, changed: Some(cols) } => {
                            let r = rows.entry(id).or_insert_with(|| row.clone());
                            for c in cols {
                                if let Some(v) = row.get(c) {
                                    r.insert(c.clone(), v.clone());
                                }
                            }
                        }
                    }
                }
                Ok(())
            })
        }
    }

    /// Table `t` at v1 (id, n) and v2 (id, n, added); nothing else.
    struct Source;

    fn doc(version: &str) -> Schema {
        let mut props = serde_json::json!({"id": {"type": "string"}, "n": {"type": "integer", "nullable": true}});
        if version == "v2" {
            props["added"] = serde_json::json!({"type": "string", "nullable": true});
        }
        let d = serde_json::json!({"table": "t", "modelVersion": version, "primaryKeys": ["id"], "required": ["id"], "properties": props});
        Schema::from_json(d.to_string().as_bytes()).unwrap()
    }

    impl SchemaSource for Source {
        fn latest(&self) -> BoxFuture<'_, Result<LatestSchemas, SourceError>> {
            Box::pin(async {
                let d = serde_json::json!({"t": {"table": "t", "modelVersion": "v2", "primaryKeys": ["id"], "required": ["id"],
                    "properties": {"id": {"type": "string"}, "n": {"type": "integer", "nullable": true}, "added": {"type": "string", "nullable": true}}}});
                Ok(LatestSchemas::from_json(d.to_string().as_bytes()).unwrap())
            })
        }
        fn version<'a>(
            &'a self,
            object: &'a str,
            version: &'a str,
        ) -> BoxFuture<'a, Result<Option<Schema>, SourceError>> {
            Box::pin(async move { Ok((object == "t" && (version == "v1" || version == "v2")).then(|| doc(version))) })
        }
    }

    fn record(n: u64, payload: serde_json::Value) -> Vec<u8> {
        let payload = payload.to_string();
        envelope::Envelope {
            kind: EnvelopeKind::Event,
            stream_seq: n,
            received_at: 1,
            subject: "dbchange.t.INSERT.c.l.PUBLIC.1".into(),
            msg_id: "".into(),
            reason: "".into(),
            payload: payload.as_bytes(),
        }
        .encode()
    }

    /// Runs a drain to a [`Memory`] destination holding `rows` over `events` (stream sequences 1,
    /// 2, …) until its cursor passes them all. The driver and the dead letters then.
    async fn drain_to_memory(
        events: &[serde_json::Value],
        rows: &[(&str, serde_json::Value)],
        skip_before: HashMap<String, i64>,
    ) -> (Arc<Memory>, Vec<crate::ingest::dlq::Listed>) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
        let records: Vec<Vec<u8>> = events.iter().enumerate().map(|(i, e)| record(i as u64 + 1, e.clone())).collect();
        wal.append(&records).unwrap();
        let state = Arc::new(ServerState::new(crate::metrics::Metrics::new().unwrap(), wal.clone(), "test".into()));
        let driver = Arc::new(Memory::default());
        for (id, row) in rows {
            driver.rows.lock().unwrap().insert(("t".into(), (*id).into()), row.as_object().unwrap().clone());
        }
        let dest = Destination {
            name: "mem".into(),
            driver: driver.clone(),
            start: Start::Oldest,
            dead_letters: Some(DeadLetters::open_for_destination(dir.path(), "mem").unwrap()),
            overflow: Overflow::Block,
            registry: Some(Arc::new(Registry::new(Arc::new(Source), None))),
            skip_before,
            retry: Retry { first: Duration::from_millis(1), max: Duration::from_millis(4) },
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(dest, state.clone(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.destination_positions() != vec![("mem".to_owned(), events.len() as u64)] {
            assert!(Instant::now() < deadline, "drain made no progress: {}", state.status_json());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        let letters = crate::ingest::dlq::list_at(&dir.path().join("dlq").join("mem")).unwrap();
        (driver, letters)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_batches_are_cut_to_the_schema_folded_and_bad_rows_dead_lettered() {
        use serde_json::json;
        let ev = |op: &str, table: &str, v: &str, id: &str, after: serde_json::Value, ts: i64| {
            json!({"operation": op, "table": table, "modelVersion": v, "key": ["gcp-us-west1", id], "after": after,
                "before": {"id": id}, "diff": ["n"], "timestamp": ts})
        };
        let events = [
            ev("INSERT", "t", "v1", "a", json!({"id": "a", "n": 1, "unknown": "dropped"}), 100),
            ev("UPDATE", "t", "v1", "a", json!({"id": "a", "n": 2}), 101),
            ev("INSERT", "t", "v2", "b", json!({"id": "b", "n": 5, "added": "x"}), 102),
            ev("INSERT", "ghost", "v1", "g", json!({"id": "g"}), 103),
            ev("INSERT", "t", "v1", "bad", json!({"id": "bad", "n": 12}), 104),
            ev("UPDATE", "t", "v1", "bad", json!({"id": "bad", "n": 13}), 105),
            ev("INSERT", "t", "v1", "old", json!({"id": "old", "n": 0}), 50),
            ev("DELETE", "t", "v1", "c", json!(null), 106),
        ];
        let (driver, letters) =
            drain_to_memory(&events, &[("c", json!({}))], HashMap::from([("t".to_owned(), 60)])).await;
        let rows = driver.rows.lock().unwrap().clone();
        let row = |id: &str| rows.get(&("t".to_owned(), id.to_owned())).cloned();
        assert_eq!(row("a"), Some(json!({"id": "a", "n": 2}).as_object().unwrap().clone()), "folded, unknown dropped");
        assert_eq!(row("b"), Some(json!({"id": "b", "n": 5, "added": "x"}).as_object().unwrap().clone()));
        assert_eq!(row("bad"), None, "the rejected key's events are all dead-lettered");
        assert_eq!(row("old"), None, "older than the table's import: skipped");
        assert_eq!(row("c"), None, "deleted");
        assert_eq!(rows.len(), 2, "{rows:?}");
        let mut ensured = driver.ensured.lock().unwrap().clone();
        ensured.sort();
        assert_eq!(ensured, vec![("t".to_owned(), "v1".to_owned()), ("t".to_owned(), "v2".to_owned())]);
        let dead: Vec<(u64, bool)> =
            letters.iter().map(|l| (l.stream_seq, l.reason.contains("ghost") || l.reason.contains("13"))).collect();
        assert_eq!(dead, vec![(4, true), (5, true), (6, true)], "{letters:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_without_an_after_image_is_dead_lettered_never_written() {
        use serde_json::json;
        let before = json!({"id": "k", "n": 1});
        let ev = |op: &str, id: &str, after: Option<serde_json::Value>| {
            let mut e = json!({"operation": op, "table": "t", "modelVersion": "v1", "key": [id],
                "before": {"id": id, "n": 0}, "diff": ["n"]});
            if let Some(a) = after {
                e["after"] = a;
            }
            e
        };
        let events = [
            ev("UPDATE", "k", Some(json!(null))),
            ev("UPDATE", "k", Some(json!({}))),
            ev("UPDATE", "k", None),
            ev("INSERT", "z", Some(json!({}))),
            ev("UPDATE", "k", Some(json!({"id": "k", "n": 2}))),
        ];
        let (driver, letters) = drain_to_memory(&events, &[("k", before)], HashMap::new()).await;
        let rows = driver.rows.lock().unwrap().clone();
        // Neither NULLs nor the `before` image (n = 0) were written: only the real update.
        assert_eq!(rows.get(&("t".to_owned(), "k".to_owned())), Some(json!({"id": "k", "n": 2}).as_object().unwrap()));
        assert_eq!(rows.len(), 1, "{rows:?}");
        let dead: Vec<u64> = letters.iter().map(|l| l.stream_seq).collect();
        assert_eq!(dead, vec![1, 2, 3, 4]);
        assert!(letters.iter().all(|l| l.reason.contains("has no `after` image")), "{letters:?}");
    }
}
