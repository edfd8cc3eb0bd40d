//! Loading export files into a destination: every row becomes the INSERT event EDS synthesised
//! for it (fixed where EDS was wrong: a unique id per row, the row's own company and location),
//! goes through the schema validator when there is one, and is delivered in batches the size of
//! the destination's limits through the drain's own write path (schemas, tables, folding,
//! isolating rejected rows). A batch the destination cannot take for a passing reason is tried
//! again with backoff, for a bounded time; a row it rejects is reported with its file and line.
//!
//! Into tables the import has just dropped and created, a state destination without a validator
//! may take rows in its own bulk format ([`FreshEncoder`]): each line is encoded as it is read, no
//! event is built, and a batch is one bulk write. A line the encoder declines takes the event way;
//! a batch the destination refuses in bulk is written again as events, which upsert or refuse row
//! by row — so the outcome is the event way's.
//!
//! Reading (gunzip, JSON, building and checking events) runs on a blocking thread that hands
//! whole batches over a bounded channel, so it overlaps with the destination writing the batch
//! before. Invariant: the outcome is the one of reading and delivering in turn — batches are cut
//! and delivered in file order, and what reading refused before a batch is reported before what
//! the destination refused of it.

use super::files::ExportFile;
use crate::drain::Destination;
use crate::validator::{Validator, Verdict};
use anyhow::{bail, Context, Result};
use eds_drivers::driver::Kind;
use eds_drivers::driver::{ErrorClass, FreshEncoder, Limits};
use eds_drivers::event::{ChangeEvent, ImportedInsert};
use eds_drivers::schema::Schema;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one batch may keep failing for passing reasons before the import gives up.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// How long the delivering side waits for the reader's next batch before giving up on it.
const READ_STALL: Duration = Duration::from_secs(600);

/// Batches read ahead of the one being delivered (each at most the destination's batch size).
const READ_AHEAD: usize = 2;

/// How long one write of encoded rows may take before the import takes the event way for them.
const ENCODED_WRITE_DEADLINE: Duration = Duration::from_secs(120);

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Rows delivered, per table.
    pub rows: BTreeMap<String, u64>,
    /// Rows skipped because the schema validator has no rule for their table, per table.
    pub skipped: BTreeMap<String, u64>,
    /// Rows the destination or the validator refused: file, line, why.
    pub rejected: Vec<(PathBuf, u64, String)>,
    /// Bytes of row data read (uncompressed).
    pub bytes: u64,
}

/// What every row of one export file shares in its synthesised event.
struct FileMeta {
    /// The hash of the file's name that starts every event id.
    name_hash: u64,
    /// The file's time, unix milliseconds.
    millis: i128,
    /// The file's time as the events' `mvccTimestamp`.
    mvcc: String,
}

impl FileMeta {
    fn of(file: &ExportFile) -> FileMeta {
        let name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        FileMeta {
            name_hash: xxhash_rust::xxh64::xxh64(name.as_bytes(), 0),
            millis: file.nanos.div_euclid(1_000_000),
            mvcc: format!("{}.0000000000", file.nanos),
        }
    }
}

/// The event's fields besides the row, for line `line` of `file` holding `row`; the timestamp
/// as the file gives it (it may not fit an event's).
fn row_meta(
    file: &ExportFile,
    meta: &FileMeta,
    line: u64,
    row: &Map<String, Value>,
    model_version: &str,
) -> Result<(ImportedInsert, i128)> {
    let key = match row.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => bail!("the row has no id"),
    };
    let text = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_owned);
    let insert = ImportedInsert {
        id: format!("{:016x}-{line}", meta.name_hash),
        table: file.table.clone(),
        key,
        model_version: model_version.to_owned(),
        company_id: text("companyId"),
        location_id: text("locationId"),
        user_id: text("userId"),
        timestamp: 0,
        mvcc_timestamp: meta.mvcc.clone(),
    };
    Ok((insert, meta.millis))
}

/// The event eds synthesises for line `line` of `file` holding `row`.
pub fn row_event(file: &ExportFile, line: u64, row: Map<String, Value>, model_version: &str) -> Result<Vec<u8>> {
    let (m, millis) = row_meta(file, &FileMeta::of(file), line, &row, model_version)?;
    event_json(m, millis, row)
}

/// The JSON of the event of `m` and `row`, `millis` its timestamp.
fn event_json(m: ImportedInsert, millis: i128, row: Map<String, Value>) -> Result<Vec<u8>> {
    let event = json!({
        "operation": "INSERT",
        "id": m.id,
        "table": m.table,
        "key": [m.key],
        "modelVersion": m.model_version,
        "companyId": m.company_id,
        "locationId": m.location_id,
        "userId": m.user_id,
        "timestamp": millis,
        "mvccTimestamp": m.mvcc_timestamp,
        "imported": true,
        "after": Value::Object(row),
    });
    // The bytes `event.to_string()` gives, without the formatting machinery's per-piece writes.
    let mut raw = Vec::with_capacity(1024);
    serde_json::to_writer(&mut raw, &event)?;
    Ok(raw)
}

/// The event of `m` and `row` built directly ([`ChangeEvent::imported_insert`]): the event
/// [`ChangeEvent::from_json_for_state`] decodes from [`event_json`]'s bytes, refused for the
/// same reasons.
fn direct_event(mut m: ImportedInsert, millis: i128, row: Map<String, Value>) -> Result<ChangeEvent> {
    m.timestamp = i64::try_from(millis)
        .map_err(|_| anyhow::anyhow!("not a valid row: the export file's time {millis} ms is out of range"))?;
    ChangeEvent::imported_insert(m, row).map_err(|e| anyhow::anyhow!("not a valid row: {e}"))
}

/// A row read and checked, waiting for delivery.
struct Pending {
    /// Its position among the rows read (every non-blank line counts).
    position: u64,
    /// Index of its file in the caller's list.
    file: usize,
    /// Its line in the file.
    line: u64,
    /// What its event is made again from, after a failed attempt took it.
    source: Source,
    /// The object name the schema validator gave it.
    path: Option<String>,
}

/// What a row's event is made from.
enum Source {
    /// The event's JSON: what stream destinations and the schema validator see.
    Event(Vec<u8>),
    /// The line of the export file, for a state destination without a validator: its event is
    /// built directly from the row ([`direct_event`]), and its JSON is never written.
    Line(String),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Event(raw) => raw,
            Source::Line(line) => line.as_bytes(),
        }
    }
}

/// What the reader hands the delivering side: one batch, and what reading found before it.
struct Chunk {
    /// Rows refused or skipped while reading since the previous batch, and the bytes read.
    read: Loaded,
    /// The batch's rows and, in the same order, their events — or, when `encoded`, no events:
    /// the rows in the destination's bulk format instead.
    rows: Vec<Pending>,
    events: Vec<ChangeEvent>,
    encoded: Option<Encoded>,
    /// Bytes of the batch's rows (their events' JSON, or their lines), against the limits.
    size: usize,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk { read: Loaded::default(), rows: Vec::new(), events: Vec::new(), encoded: None, size: 0 }
    }

    /// Whether the batch has reached the destination's limits.
    fn full(&self, limits: &Limits) -> bool {
        self.rows.len() >= limits.max_rows || self.size >= limits.max_bytes
    }
}

/// A batch of one table's rows in the destination's bulk format ([`FreshEncoder`]).
struct Encoded {
    table: String,
    data: Vec<u8>,
}

/// The encoders of a load's tables, and the schemas they encode for.
type Encoders = HashMap<String, (Arc<Schema>, Box<dyn FreshEncoder>)>;

/// For a state destination without a validator writing tables the import has just created: the
/// destination's encoder of each of `tables` that has one (see [`FreshEncoder`]), its table made
/// sure of first. A table whose schema cannot be had here goes the event way, which reports why.
async fn encoders(dest: &Destination, tables: &BTreeSet<String>, versions: &HashMap<String, String>) -> Encoders {
    let mut out = Encoders::new();
    let Some(registry) = dest.registry.as_ref() else { return out };
    for table in tables {
        let Some(version) = versions.get(table) else { continue };
        let Ok(schema) = registry.schema(table, version).await else { continue };
        if dest.driver.ensure_schema(&schema).await.is_err() {
            continue;
        }
        if let Some(encoder) = dest.driver.fresh_encoder(&schema) {
            out.insert(table.clone(), (schema, encoder));
        }
    }
    out
}

/// Load `files` (those of `tables`) into `dest`; `versions` gives each table's model version.
/// `progress` hears (table, rows delivered so far in it) after every batch. `fresh`: the import
/// dropped `tables` and created them again, so the destination may insert the rows its fastest
/// way ([`eds_drivers::driver::Driver::write_fresh`]); the content is the same either way.
pub async fn load(
    dest: &Destination,
    files: &[ExportFile],
    tables: &BTreeSet<String>,
    versions: &HashMap<String, String>,
    fresh: bool,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Loaded> {
    let limits = (dest.driver.limits(), dest.driver.encoded_limits());
    let wanted: Vec<(usize, ExportFile)> =
        files.iter().cloned().enumerate().filter(|(_, f)| tables.contains(&f.table)).collect();
    let read_versions = versions.clone();
    let validator = dest.validator.clone();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    // Dropping `rx` (an error below) stops the reader at its next batch.
    // A state destination without a validator never sees an event's JSON: its events are built
    // directly from the rows.
    let direct = validator.is_none() && dest.driver.describe().kind == Kind::State;
    // Into tables just created, rows may skip events altogether.
    let mut encoders = if direct && fresh { encoders(dest, tables, versions).await } else { Encoders::new() };
    let schemas: HashMap<String, Arc<Schema>> =
        encoders.iter().map(|(table, (schema, _))| (table.clone(), schema.clone())).collect();
    let reader = tokio::task::spawn_blocking(move || {
        let mut encoders: HashMap<String, Box<dyn FreshEncoder>> =
            encoders.drain().map(|(table, (_, encoder))| (table, encoder)).collect();
        read(&wanted, &read_versions, validator.as_deref(), direct, &mut encoders, (&limits.0, &limits.1), &tx)
    });
    let target = Target { dest, files, versions, fresh, said: Default::default() };
    let mut out = Loaded::default();
    loop {
        let next = tokio::time::timeout(READ_STALL, rx.recv())
            .await
            .with_context(|| format!("reading the export files made no progress for {READ_STALL:?}"))?;
        let Some(chunk) = next else { break };
        let Chunk { read, rows, events, encoded, .. } = chunk?;
        out.bytes += read.bytes;
        out.rejected.extend(read.rejected);
        for (table, n) in read.skipped {
            *out.skipped.entry(table).or_default() += n;
        }
        if rows.is_empty() {
            continue;
        }
        match encoded {
            Some(encoded) => deliver_encoded(&target, &schemas, rows, encoded, &mut out, progress).await?,
            None => deliver(&target, rows, events, &mut out, progress).await?,
        }
    }
    reader.await.context("reading the export files")?;
    Ok(out)
}

/// Reads `files` and sends their rows in batches of `limits` (rows an encoder took: of
/// `encoded_limits`) to `tx`, then what was read after
/// the last batch (a chunk without rows); an error ends it. Stops when `tx`'s receiver is gone.
fn read(
    files: &[(usize, ExportFile)],
    versions: &HashMap<String, String>,
    validator: Option<&Validator>,
    direct: bool,
    encoders: &mut HashMap<String, Box<dyn FreshEncoder>>,
    (limits, encoded_limits): (&Limits, &Limits),
    tx: &mpsc::Sender<Result<Chunk>>,
) {
    let mut chunk = Chunk::new();
    let mut position = 0u64;
    // One row's encoding, before it is known which chunk it goes to.
    let mut scratch = Vec::new();
    let send = |chunk: &mut Chunk| {
        let full = std::mem::replace(chunk, Chunk::new());
        tx.blocking_send(Ok(full)).is_ok()
    };
    let failed = |e: anyhow::Error| {
        let _ = tx.blocking_send(Err(e));
    };
    for (index, file) in files {
        let Some(version) = versions.get(&file.table) else {
            return failed(anyhow::anyhow!("table {:?} has no schema in HQ's registry", file.table));
        };
        let f = match std::fs::File::open(&file.path) {
            Ok(f) => f,
            Err(e) => return failed(anyhow::Error::new(e).context(format!("opening {}", file.path.display()))),
        };
        let meta = FileMeta::of(file);
        // Rows whose events could not be made anyway (a time out of range) go the event way.
        let mut encoder = encoders.get_mut(&file.table).filter(|_| i64::try_from(meta.millis).is_ok());
        let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f)));
        for (n, line) in reader.lines().enumerate() {
            let line_no = n as u64 + 1;
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    return failed(
                        anyhow::Error::new(e).context(format!("{}: reading line {line_no}", file.path.display())),
                    )
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            chunk.read.bytes += line.len() as u64;
            position += 1;
            // A chunk holds encoded rows of one table, or events: a row that does not fit the
            // chunk being filled is sent on after it. A row the encoder declines takes the
            // event way.
            if let Some(encoder) = encoder.as_deref_mut() {
                scratch.clear();
                if encoder.encode(&line, &mut scratch) {
                    let fits = match &chunk.encoded {
                        Some(e) => e.table == file.table,
                        None => chunk.rows.is_empty(),
                    };
                    if !fits && !send(&mut chunk) {
                        return;
                    }
                    let encoded =
                        chunk.encoded.get_or_insert_with(|| Encoded { table: file.table.clone(), data: Vec::new() });
                    encoded.data.extend_from_slice(&scratch);
                    chunk.size += line.len();
                    chunk.rows.push(Pending {
                        position,
                        file: *index,
                        line: line_no,
                        source: Source::Line(line),
                        path: None,
                    });
                    if chunk.full(encoded_limits) && !send(&mut chunk) {
                        return;
                    }
                    continue;
                }
                if chunk.encoded.is_some() && !send(&mut chunk) {
                    return;
                }
            }
            let refuse = |read: &mut Loaded, why: String| read.rejected.push((file.path.clone(), line_no, why));
            let row = match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(row)) => row,
                Ok(_) => {
                    refuse(&mut chunk.read, "the line is not a JSON object".into());
                    continue;
                }
                Err(e) => {
                    refuse(&mut chunk.read, format!("the line is not JSON: {e}"));
                    continue;
                }
            };
            let (m, millis) = match row_meta(file, &meta, line_no, &row, version) {
                Ok(m) => m,
                Err(e) => {
                    refuse(&mut chunk.read, e.to_string());
                    continue;
                }
            };
            if direct {
                match direct_event(m, millis, row) {
                    Ok(event) => {
                        chunk.size += line.len();
                        chunk.rows.push(Pending {
                            position,
                            file: *index,
                            line: line_no,
                            source: Source::Line(line),
                            path: None,
                        });
                        chunk.events.push(event);
                    }
                    Err(e) => {
                        refuse(&mut chunk.read, e.to_string());
                        continue;
                    }
                }
            } else {
                let raw = match event_json(m, millis, row) {
                    Ok(raw) => raw,
                    Err(e) => {
                        refuse(&mut chunk.read, e.to_string());
                        continue;
                    }
                };
                let mut event = match ChangeEvent::from_json_for_state(&raw) {
                    Ok(e) => e,
                    Err(e) => {
                        refuse(&mut chunk.read, format!("not a valid row: {e}"));
                        continue;
                    }
                };
                if let Some(v) = validator {
                    match v.check(&raw) {
                        Verdict::Valid(path) => event.path = path,
                        Verdict::Invalid(why) => {
                            refuse(&mut chunk.read, why);
                            continue;
                        }
                        Verdict::NoRule => {
                            *chunk.read.skipped.entry(file.table.clone()).or_default() += 1;
                            continue;
                        }
                    }
                }
                chunk.size += raw.len();
                let path = event.path.clone();
                chunk.rows.push(Pending { position, file: *index, line: line_no, source: Source::Event(raw), path });
                chunk.events.push(event);
            }
            if chunk.full(limits) && !send(&mut chunk) {
                return;
            }
        }
    }
    send(&mut chunk);
}

/// The events of `rows` again, as they were read (after a failed attempt took them).
fn events_of(rows: &[Pending], files: &[ExportFile], versions: &HashMap<String, String>) -> Result<Vec<ChangeEvent>> {
    rows.iter()
        .map(|r| {
            let mut e = match &r.source {
                Source::Event(raw) => ChangeEvent::from_json_for_state(raw).context("decoding an event read before")?,
                Source::Line(line) => {
                    let file = files.get(r.file).context("the file of a row read before")?;
                    let version = versions.get(&file.table).context("the version of a row read before")?;
                    let row: Map<String, Value> = serde_json::from_str(line).context("decoding a row read before")?;
                    let (m, millis) = row_meta(file, &FileMeta::of(file), r.line, &row, version)?;
                    direct_event(m, millis, row)?
                }
            };
            e.path = r.path.clone();
            Ok(e)
        })
        .collect()
}

/// Deliver rows a [`FreshEncoder`] encoded: written in one go by
/// [`eds_drivers::driver::Driver::write_encoded`] — or, when the destination refuses them or the
/// write fails, as events (which upserts or refuses row by row, and retries what passes).
async fn deliver_encoded(
    target: &Target<'_>,
    schemas: &HashMap<String, Arc<Schema>>,
    rows: Vec<Pending>,
    encoded: Encoded,
    out: &mut Loaded,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<()> {
    let dest = target.dest;
    if let Some(schema) = schemas.get(&encoded.table) {
        let write = dest.driver.write_encoded(schema, &encoded.data);
        match tokio::time::timeout(ENCODED_WRITE_DEADLINE, write).await {
            Ok(Ok(true)) => {
                let n = out.rows.entry(encoded.table.clone()).or_default();
                *n += rows.len() as u64;
                progress(&encoded.table, *n);
                return Ok(());
            }
            Ok(Ok(false)) => {
                tracing::debug!(destination = %dest.name, table = %encoded.table, rows = rows.len(), "the destination refused the rows in bulk; writing them as events");
            }
            Ok(Err(e)) => {
                // Said once per load at info (a destination whose bulk way cannot work says why).
                if target.said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::debug!(destination = %dest.name, table = %encoded.table, error = %eds_wal::error_chain(&e), "writing rows in bulk failed; writing them as events");
                } else {
                    tracing::info!(destination = %dest.name, table = %encoded.table, error = %eds_wal::error_chain(&e), "writing rows in bulk failed; writing them as events");
                }
            }
            Err(_) => {
                tracing::debug!(destination = %dest.name, table = %encoded.table, "writing rows in bulk did not finish in time; writing them as events");
            }
        }
    }
    drop(encoded);
    let events = events_of(&rows, target.files, target.versions)?;
    deliver(target, rows, events, out, progress).await
}

/// Where a load's batches go, and what their rows came from.
struct Target<'a> {
    dest: &'a Destination,
    files: &'a [ExportFile],
    versions: &'a HashMap<String, String>,
    /// Whether the tables were just dropped and created again (see [`load`]).
    fresh: bool,
    /// Whether a failed bulk write was logged at info.
    said: std::sync::atomic::AtomicBool,
}

async fn deliver(
    target: &Target<'_>,
    rows: Vec<Pending>,
    events: Vec<ChangeEvent>,
    out: &mut Loaded,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<()> {
    let Target { dest, files, versions, fresh, .. } = *target;
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    // The first attempt takes the events; a retry decodes them again from their bytes.
    let mut events = Some(events);
    let rejected = loop {
        let events = match events.take() {
            Some(e) => e,
            None => events_of(&rows, files, versions)?,
        };
        let decoded: Vec<(u64, ChangeEvent, &[u8])> =
            rows.iter().zip(events).map(|(r, e)| (r.position, e, r.source.bytes())).collect();
        match crate::drain::deliver_batch(dest, decoded, fresh).await {
            Ok(rejected) => break rejected,
            Err(e)
                if matches!(e.class, ErrorClass::Transient | ErrorClass::Unknown) && started.elapsed() < RETRY_FOR =>
            {
                tracing::warn!(destination = %dest.name, error = %eds_wal::error_chain(&e), retry_in = ?wait, "import batch failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("delivering to destination {:?}", dest.name)));
            }
        }
    };
    // `rows` is in position order.
    let refused: HashSet<u64> = rejected.iter().map(|(p, _)| *p).collect();
    for (p, why) in rejected {
        let found = rows.binary_search_by_key(&p, |r| r.position).ok().and_then(|i| rows.get(i));
        if let Some((r, file)) = found.and_then(|r| files.get(r.file).map(|f| (r, f))) {
            out.rejected.push((file.path.clone(), r.line, why));
        }
    }
    let mut touched = BTreeSet::new();
    for r in rows.iter().filter(|r| !refused.contains(&r.position)) {
        if let Some(file) = files.get(r.file) {
            *out.rows.entry(file.table.clone()).or_default() += 1;
            touched.insert(&file.table);
        }
    }
    for t in touched {
        progress(t, out.rows[t]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings a row may hold that could trip up JSON writing and reading.
    const NASTY: &[&str] = &[
        "",
        "plain",
        "\\N",
        "tab\there",
        "new\nline\r\n",
        "quote\" and 'single'",
        "back\\slash\\",
        "emoji 🚗💨 and é",
        "\u{0}nul",
        "\u{1f}\u{7f}",
        "\u{2028}\u{2029}",
        "{\"json\": [1, 2]}",
        "null",
        "123",
    ];

    fn export_file(table: &str) -> ExportFile {
        ExportFile {
            path: PathBuf::from(format!(
                "/x/20261201120000123456789000000000-c7274317e9a4a9cb-1-651-00000000-{table}-1.ndjson.gz"
            )),
            table: table.to_owned(),
            nanos: 1_764_590_400_123_456_789,
        }
    }

    /// The lines a hostile export might hold, as text (so duplicate keys and number forms stay
    /// as written).
    fn lines() -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in NASTY.iter().enumerate() {
            let q = serde_json::to_string(s).unwrap_or_default();
            out.push(format!(
                r#"{{"id":"r{i}","name":{q},{q}:{q},"companyId":{q},"locationId":null,"userId":{i},"n":{i}.50,"big":123456789012345678901234567890,"neg":-0.0,"exp":1e400,"obj":{{"k":{q},"a":[{q},null,true,1.0]}},"arr":[],"b":false}}"#
            ));
        }
        out.push(r#"{"id":12345678901234567890123,"name":"numeric id"}"#.to_owned());
        out.push(r#"{"id":"dup","name":"first","name":"second","companyId":"c1","companyId":"c2"}"#.to_owned());
        out.push(r#"{"id":"u","locationId":7,"userId":{"x":1},"companyId":["c"]}"#.to_owned());
        out
    }

    /// Both ways of making a row's event: its JSON decoded, and built directly.
    fn both(file: &ExportFile, line: u64, text: &str) -> (Result<ChangeEvent, String>, Result<ChangeEvent, String>) {
        let row = || serde_json::from_str::<Map<String, Value>>(text).unwrap_or_default();
        let meta = FileMeta::of(file);
        let via_json = row_meta(file, &meta, line, &row(), "v1")
            .and_then(|(m, millis)| event_json(m, millis, row()))
            .map_err(|e| e.to_string())
            .and_then(|raw| ChangeEvent::from_json_for_state(&raw).map_err(|e| format!("not a valid row: {e}")));
        let direct = row_meta(file, &meta, line, &row(), "v1")
            .and_then(|(m, millis)| direct_event(m, millis, row()))
            .map_err(|e| e.to_string());
        (via_json, direct)
    }

    #[test]
    fn the_direct_event_is_the_event_its_json_decodes_to() {
        let file = export_file("order");
        for (n, text) in lines().iter().enumerate() {
            let (via_json, direct) = both(&file, n as u64 + 1, text);
            let via_json = via_json.unwrap_or_else(|e| panic!("line {text}: {e}"));
            assert_eq!(direct.as_ref().ok(), Some(&via_json), "line {text}");
            assert!(via_json.imported && via_json.before.is_none(), "line {text}");
        }
    }

    #[test]
    fn rows_refused_one_way_are_refused_the_other_way_alike() {
        // No id, an empty id, an id that is neither text nor number; a table with no name.
        for (table, text) in [
            ("order", r#"{"name":"no id"}"#),
            ("order", r#"{"id":""}"#),
            ("order", r#"{"id":{"a":1}}"#),
            ("order", r#"{"id":null}"#),
            ("", r#"{"id":"r1"}"#),
        ] {
            let (via_json, direct) = both(&export_file(table), 3, text);
            let why = via_json.expect_err(text);
            assert_eq!(direct.expect_err(text), why, "{text}");
        }
    }
}
