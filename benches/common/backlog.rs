//! The backlog the drain benchmarks deliver: change events of the demo traffic wrapped in Event
//! envelopes as ingest does and appended to a WAL, read back in batches cut as the drain cuts
//! them, and what eds's per-batch fold makes of them.

use anyhow::Result;
use eds::drain::{self, Start};
use eds::record::{self, Envelope, Kind as EnvelopeKind};
use eds_drivers::event::{fold, ChangeEvent, Folded};
use eds_wal::{Durability, Options, Reader, Record, Wal};
use std::path::Path;

/// Records per WAL append during setup.
pub const APPEND_CHUNK: usize = 2_000;
/// A cursor that never moves, so retention keeps every segment for every run.
pub const HOLD_CURSOR: &str = "bench-hold";

/// A WAL in `<base>/wal` (`Durability::Never`) holding `n` events of the traffic of `seed`, with
/// [`HOLD_CURSOR`] at the oldest record; returns (the WAL, last LSN, payload bytes).
pub async fn write_backlog(base: &Path, seed: u64, n: u64) -> Result<(Wal, u64, u64)> {
    let wal_dir = base.join("wal");
    let opts = Options { durability: Durability::Never, ..Options::default() };
    tokio::task::spawn_blocking(move || -> Result<(Wal, u64, u64)> {
        let wal = Wal::open(wal_dir, opts)?;
        drain::ensure_cursor(&wal, HOLD_CURSOR, Start::Oldest)?;
        let (last, bytes) = fill_wal(&wal, seed, n)?;
        Ok((wal, last, bytes))
    })
    .await?
}

/// Appends the traffic as ingest would; returns (last LSN, payload bytes).
pub fn fill_wal(wal: &Wal, seed: u64, n: u64) -> Result<(u64, u64)> {
    let now = eds::timefmt::now_micros();
    let mut traffic = eds::sample::Traffic::new(seed, n);
    let (mut seq, mut last, mut bytes) = (1u64, 0u64, 0u64);
    loop {
        let payloads: Vec<Vec<u8>> = traffic.by_ref().take(APPEND_CHUNK).collect();
        if payloads.is_empty() {
            break;
        }
        let mut records = Vec::with_capacity(payloads.len());
        for payload in &payloads {
            let subject = eds::sample::subject_of(payload)?;
            records.push(
                Envelope {
                    kind: EnvelopeKind::Event,
                    stream_seq: seq,
                    received_at: now,
                    subject: subject.into(),
                    msg_id: "".into(),
                    reason: "".into(),
                    payload,
                }
                .encode(),
            );
            bytes += payload.len() as u64;
            seq += 1;
        }
        last = wal.append(&records)?.last_lsn;
    }
    Ok((last, bytes))
}

/// The next batch, cut as the drain cuts it: up to `max_rows` records or `max_bytes` of records.
pub fn read_batch(reader: &mut Reader, max_rows: usize, max_bytes: usize) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut bytes = 0usize;
    while records.len() < max_rows && bytes < max_bytes {
        match reader.next()? {
            Some(rec) => {
                bytes += rec.data.len();
                records.push(rec);
            }
            None => break,
        }
    }
    Ok(records)
}

/// What eds's fold makes of the log, batch by batch.
#[derive(Debug, Default)]
pub struct FoldStats {
    pub batches: u64,
    pub events: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub ops: [u64; 3],
}

/// Reads the whole log in batches of `max_rows` records or `max_bytes` and folds each as eds
/// does; `inspect` sees every event on the way.
pub fn fold_pass(
    wal: &Wal,
    max_rows: usize,
    max_bytes: usize,
    mut inspect: impl FnMut(&ChangeEvent),
) -> Result<FoldStats> {
    let mut reader = wal.reader(1)?;
    let mut s = FoldStats::default();
    loop {
        let records = read_batch(&mut reader, max_rows, max_bytes)?;
        if records.is_empty() {
            return Ok(s);
        }
        s.batches += 1;
        let mut events = Vec::with_capacity(records.len());
        for rec in &records {
            let env = record::decode(&rec.data)?;
            let e = ChangeEvent::from_json(env.payload)?;
            s.ops[e.operation as usize] += 1;
            inspect(&e);
            events.push((rec.lsn, e));
        }
        s.events += events.len() as u64;
        for c in fold(events.iter().map(|(lsn, e)| (*lsn, e))) {
            match c.change {
                Folded::Upsert { .. } => s.upserts += 1,
                Folded::Delete { .. } => s.deletes += 1,
            }
        }
    }
}
