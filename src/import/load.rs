//! Loading export files into a destination: every row becomes the INSERT event EDS synthesised
//! for it (fixed where EDS was wrong: a unique id per row, the row's own company and location),
//! goes through the schema validator when there is one, and is delivered in batches the size of
//! the destination's limits through the drain's own write path (schemas, tables, folding,
//! isolating rejected rows). A batch the destination cannot take for a passing reason is tried
//! again with backoff, for a bounded time; a row it rejects is reported with its file and line.
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
use eds_drivers::driver::{ErrorClass, Limits};
use eds_drivers::event::ChangeEvent;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one batch may keep failing for passing reasons before the import gives up.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// How long the delivering side waits for the reader's next batch before giving up on it.
const READ_STALL: Duration = Duration::from_secs(600);

/// Batches read ahead of the one being delivered (each at most the destination's batch size).
const READ_AHEAD: usize = 2;

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

/// The event eds synthesises for line `line` of `file` holding `row`.
pub fn row_event(file: &ExportFile, line: u64, row: Map<String, Value>, model_version: &str) -> Result<Vec<u8>> {
    let id = match row.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => bail!("the row has no id"),
    };
    let name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let millis = file.nanos.div_euclid(1_000_000);
    let text = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_owned);
    let event = json!({
        "operation": "INSERT",
        "id": format!("{:016x}-{line}", xxhash_rust::xxh64::xxh64(name.as_bytes(), 0)),
        "table": file.table,
        "key": [id],
        "modelVersion": model_version,
        "companyId": text("companyId"),
        "locationId": text("locationId"),
        "userId": text("userId"),
        "timestamp": millis,
        "mvccTimestamp": format!("{}.0000000000", file.nanos),
        "imported": true,
        "after": Value::Object(row),
    });
    // The bytes `event.to_string()` gives, without the formatting machinery's per-piece writes.
    let mut raw = Vec::with_capacity(1024);
    serde_json::to_writer(&mut raw, &event)?;
    Ok(raw)
}

/// A row read and checked, waiting for delivery.
struct Pending {
    /// Its position among the rows read (every non-blank line counts).
    position: u64,
    /// Index of its file in the caller's list.
    file: usize,
    /// Its line in the file.
    line: u64,
    /// Its event's bytes.
    raw: Vec<u8>,
    /// The object name the schema validator gave it.
    path: Option<String>,
}

/// What the reader hands the delivering side: one batch, and what reading found before it.
struct Chunk {
    /// Rows refused or skipped while reading since the previous batch, and the bytes read.
    read: Loaded,
    /// The batch's rows and, in the same order, their events.
    rows: Vec<Pending>,
    events: Vec<ChangeEvent>,
}

/// Load `files` (those of `tables`) into `dest`; `versions` gives each table's model version.
/// `progress` hears (table, rows delivered so far in it) after every batch.
pub async fn load(
    dest: &Destination,
    files: &[ExportFile],
    tables: &BTreeSet<String>,
    versions: &HashMap<String, String>,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Loaded> {
    let limits = dest.driver.limits();
    let wanted: Vec<(usize, ExportFile)> =
        files.iter().cloned().enumerate().filter(|(_, f)| tables.contains(&f.table)).collect();
    let versions = versions.clone();
    let validator = dest.validator.clone();
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    // Dropping `rx` (an error below) stops the reader at its next batch.
    let reader = tokio::task::spawn_blocking(move || read(&wanted, &versions, validator.as_deref(), &limits, &tx));
    let mut out = Loaded::default();
    loop {
        let next = tokio::time::timeout(READ_STALL, rx.recv())
            .await
            .with_context(|| format!("reading the export files made no progress for {READ_STALL:?}"))?;
        let Some(chunk) = next else { break };
        let Chunk { read, rows, events } = chunk?;
        out.bytes += read.bytes;
        out.rejected.extend(read.rejected);
        for (table, n) in read.skipped {
            *out.skipped.entry(table).or_default() += n;
        }
        if !rows.is_empty() {
            deliver(dest, files, rows, events, &mut out, progress).await?;
        }
    }
    reader.await.context("reading the export files")?;
    Ok(out)
}

/// Reads `files` and sends their rows in batches of `limits` to `tx`, then what was read after
/// the last batch (a chunk without rows); an error ends it. Stops when `tx`'s receiver is gone.
fn read(
    files: &[(usize, ExportFile)],
    versions: &HashMap<String, String>,
    validator: Option<&Validator>,
    limits: &Limits,
    tx: &mpsc::Sender<Result<Chunk>>,
) {
    let mut chunk = Chunk { read: Loaded::default(), rows: Vec::new(), events: Vec::new() };
    let mut batch_bytes = 0usize;
    let mut position = 0u64;
    let send = |chunk: &mut Chunk| {
        let full = std::mem::replace(chunk, Chunk { read: Loaded::default(), rows: Vec::new(), events: Vec::new() });
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
            let raw = match row_event(file, line_no, row, version) {
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
            batch_bytes += raw.len();
            chunk.rows.push(Pending { position, file: *index, line: line_no, raw, path: event.path.clone() });
            chunk.events.push(event);
            if chunk.rows.len() >= limits.max_rows || batch_bytes >= limits.max_bytes {
                if !send(&mut chunk) {
                    return;
                }
                batch_bytes = 0;
            }
        }
    }
    send(&mut chunk);
}

/// The events of `rows` again, as they were read (after a failed attempt took them).
fn events_of(rows: &[Pending]) -> Result<Vec<ChangeEvent>> {
    rows.iter()
        .map(|r| {
            let mut e = ChangeEvent::from_json_for_state(&r.raw).context("decoding an event read before")?;
            e.path = r.path.clone();
            Ok(e)
        })
        .collect()
}

async fn deliver(
    dest: &Destination,
    files: &[ExportFile],
    rows: Vec<Pending>,
    events: Vec<ChangeEvent>,
    out: &mut Loaded,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<()> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    // The first attempt takes the events; a retry decodes them again from their bytes.
    let mut events = Some(events);
    let rejected = loop {
        let events = match events.take() {
            Some(e) => e,
            None => events_of(&rows)?,
        };
        let decoded: Vec<(u64, ChangeEvent, &[u8])> =
            rows.iter().zip(events).map(|(r, e)| (r.position, e, r.raw.as_slice())).collect();
        match crate::drain::deliver_batch(dest, decoded).await {
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
