//! The direct path of the drain benchmarks, without eds: what a competent engineer would write
//! to apply the WAL to a database by hand. Reading and folding are the same for every database;
//! each benchmark writes a folded batch in its own dialect.

use super::backlog::read_batch;
use anyhow::{Context, Result};
use eds::record::{self, Kind as EnvelopeKind};
use eds_wal::{Record, Wal};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The fields of an event the direct path reads.
#[derive(Deserialize)]
struct Wire {
    operation: String,
    table: String,
    #[serde(default)]
    key: Vec<String>,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    #[serde(default)]
    diff: Option<Vec<String>>,
}

pub enum Change {
    /// `changed`: the columns to write on conflict; `None` = every column (of the table, or that
    /// the row carries: the writer's choice).
    Upsert {
        row: Map<String, Value>,
        changed: Option<BTreeSet<String>>,
    },
    Delete,
}

/// Keeps the last change per (table, id) of a batch. With `honour_diff`, UPDATEs accumulate the
/// union of their diffs as the columns to write (as eds's fold does); without, every upsert writes
/// the whole row.
pub fn fold_batch(records: &[Record], honour_diff: bool) -> Result<Vec<(String, String, Change)>> {
    let mut index: HashMap<(String, String), usize> = HashMap::with_capacity(records.len());
    let mut out: Vec<(String, String, Change)> = Vec::with_capacity(records.len());
    for rec in records {
        let env = record::decode(&rec.data)?;
        if env.kind != EnvelopeKind::Event {
            continue;
        }
        let w: Wire = serde_json::from_slice(env.payload)?;
        let image = w.after.filter(|r| !r.is_empty()).or(w.before).unwrap_or_default();
        let id = match w.key.last() {
            Some(k) => k.clone(),
            None => image.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
        };
        let slot = index.get(&(w.table.clone(), id.clone())).copied();
        let prev = slot.and_then(|i| out.get(i)).map(|(_, _, c)| c);
        let change = match w.operation.as_str() {
            "DELETE" => Change::Delete,
            "INSERT" => Change::Upsert { row: image, changed: None },
            _ if !honour_diff => Change::Upsert { row: image, changed: None },
            _ => {
                let diff: Option<BTreeSet<String>> = w.diff.map(|d| d.into_iter().collect());
                let changed = match prev {
                    None => diff,
                    Some(Change::Delete) => None,
                    Some(Change::Upsert { changed: Some(a), .. }) => diff.map(|d| a.union(&d).cloned().collect()),
                    Some(Change::Upsert { changed: None, .. }) => None,
                };
                Change::Upsert { row: image, changed }
            }
        };
        match slot.and_then(|i| out.get_mut(i)) {
            Some(s) => s.2 = change,
            None => {
                index.insert((w.table.clone(), id.clone()), out.len());
                out.push((w.table, id, change));
            }
        }
    }
    Ok(out)
}

/// What a direct pass did, and where its time went.
pub struct DirectPass {
    /// Events applied.
    pub events: u64,
    /// Folded changes written (what `write` returned).
    pub changes: u64,
    /// Batches, one transaction each.
    pub batches: u64,
    pub reading: Duration,
    pub folding: Duration,
    pub writing: Duration,
}

/// Reads the WAL from its start with a plain reader (off the runtime) in batches of `limits`
/// (records, bytes), folds each with [`fold_batch`] and hands it to `write`, which writes it and
/// returns the number of changes written; until the end of the log.
pub async fn direct_pass(
    wal: &Wal,
    limits: (usize, usize),
    honour_diff: bool,
    mut write: impl AsyncFnMut(&[(String, String, Change)]) -> Result<u64>,
) -> Result<DirectPass> {
    let mut reader = Some(wal.reader(1)?);
    let (mut events, mut changes, mut batches) = (0u64, 0u64, 0u64);
    let (mut reading, mut folding, mut writing) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    loop {
        let t0 = Instant::now();
        let mut r = reader.take().context("reader lost")?;
        let (r, records) = tokio::task::spawn_blocking(move || {
            let records = read_batch(&mut r, limits.0, limits.1);
            (r, records)
        })
        .await?;
        let records = records?;
        reader = Some(r);
        let t1 = Instant::now();
        reading += t1 - t0;
        if records.is_empty() {
            break;
        }
        let folded = fold_batch(&records, honour_diff)?;
        let t2 = Instant::now();
        folding += t2 - t1;
        changes += write(&folded).await?;
        writing += t2.elapsed();
        events += records.len() as u64;
        batches += 1;
    }
    Ok(DirectPass { events, changes, batches, reading, folding, writing })
}
