//! The dead-letter log: messages that can never be valid, with the reason, kept durably so an
//! operator can see and replay them. It is an `eds-wal` log of its own (`<data-dir>/dlq/ingest`)
//! without cursors, so retention never deletes from it; records are envelopes of kind
//! `DeadLetter`.

pub mod watch;

use crate::record::{self, Kind};
use anyhow::{Context, Result};
use eds_wal::{Options, SharedBytes, Wal};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where ingest's dead letters live under the data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("dlq").join("ingest")
}

/// Handle on the dead-letter log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
    wal: Arc<Mutex<Option<Wal>>>,
    /// Where its size counts against the WAL's disk budget, and the bytes counted there so far.
    budget: Option<(SharedBytes, Arc<AtomicU64>)>,
}

pub(crate) fn options() -> Options {
    // Frames big enough for any NATS message (NATS allows up to 64 MiB payloads).
    Options { segment_size: 128 << 20, max_frame_bytes: 96 << 20, ..Options::default() }
}

impl DeadLetters {
    /// Open (or create) it.
    pub fn open(data_dir: &Path) -> Result<DeadLetters> {
        DeadLetters::open_at(dir(data_dir))
    }

    /// Open (or create) the dead-letter log of one destination, `<data-dir>/dlq/<destination>`.
    pub fn open_for_destination(data_dir: &Path, destination: &str) -> Result<DeadLetters> {
        DeadLetters::open_at(data_dir.join("dlq").join(destination))
    }

    fn open_at(d: PathBuf) -> Result<DeadLetters> {
        let wal =
            Wal::open(&d, options()).with_context(|| format!("opening the dead-letter log at {}", d.display()))?;
        Ok(DeadLetters { dir: d, wal: Arc::new(Mutex::new(Some(wal))), budget: None })
    }

    /// Count this log's bytes in `usage` (the WAL's [`eds_wal::Options::outside_bytes`]), now and
    /// after every append: dead letters are kept until an operator acts, so they take from the
    /// same disk budget as the WAL. Dead-letter appends themselves are never refused for the
    /// budget (a destination could not move on otherwise); ingest pauses earlier instead.
    pub fn count_in(mut self, usage: &SharedBytes) -> DeadLetters {
        let counted = Arc::new(AtomicU64::new(0));
        self.budget = Some((usage.clone(), counted));
        self.recount();
        self
    }

    fn recount(&self) {
        let Some((usage, counted)) = &self.budget else { return };
        let bytes = self.wal.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |w| w.stats().bytes);
        let before = counted.swap(bytes, Ordering::Relaxed);
        if bytes >= before {
            usage.add(bytes - before);
        } else {
            usage.sub(before - bytes);
        }
    }

    /// Append encoded dead-letter envelopes durably. A log that an earlier failure poisoned is
    /// reopened first (cutting what was never durable), so one bad moment does not disable dead
    /// letters for good.
    pub fn append(&self, records: &[Vec<u8>]) -> Result<(), eds_wal::Error> {
        let mut slot = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = slot.take_if(|w| w.is_poisoned()) {
            let durable = w.durable_position();
            drop(w);
            *slot = Some(Wal::open_after_failure(&self.dir, options(), durable)?);
        }
        let wal = match slot.as_ref() {
            Some(w) => w,
            None => return Err(eds_wal::Error::Locked { dir: self.dir.clone() }),
        };
        let appended = wal.append(records).map(|_| ());
        drop(slot);
        self.recount();
        appended
    }
}

/// One dead letter as listed by `eds wal dlq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Position in the dead-letter log.
    pub lsn: u64,
    /// JetStream stream sequence.
    pub stream_seq: u64,
    /// Unix microseconds at receipt.
    pub received_at: u64,
    /// Subject.
    pub subject: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The message as received.
    pub payload: Vec<u8>,
    /// Already re-delivered by `eds dlq replay`.
    pub replayed: bool,
}

/// Cursor in a destination's dead-letter log: the last dead letter `eds dlq replay` re-delivered.
pub const REPLAYED_CURSOR: &str = "replayed";

/// Read every dead letter ingest wrote (read-only; safe while the server runs).
pub fn list(data_dir: &Path) -> Result<Vec<Listed>> {
    list_at(&dir(data_dir))
}

/// Read every dead letter of the dead-letter log in `d`.
pub fn list_at(d: &Path) -> Result<Vec<Listed>> {
    let d = d.to_path_buf();
    if !d.is_dir() {
        return Ok(Vec::new());
    }
    let wal = Wal::open_read_only(&d, options()).with_context(|| format!("opening {}", d.display()))?;
    let replayed_up_to = wal.cursor(REPLAYED_CURSOR).map(|c| c.position).unwrap_or(0);
    let mut r = wal.reader(wal.oldest_lsn())?;
    let mut out = Vec::new();
    while let Some(rec) = r.next()? {
        let env = record::decode(&rec.data).with_context(|| format!("dead-letter record {} is damaged", rec.lsn))?;
        if env.kind != Kind::DeadLetter {
            continue;
        }
        out.push(Listed {
            lsn: rec.lsn,
            stream_seq: env.stream_seq,
            received_at: env.received_at,
            subject: env.subject.into_owned(),
            reason: env.reason.into_owned(),
            payload: env.payload.to_vec(),
            replayed: rec.lsn <= replayed_up_to,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_reads_whatever_the_writer_writes() {
        // NATS allows messages of up to 64 MiB: a dead letter that large goes into one frame,
        // beyond the WAL's default frame limit, and must list whole.
        let dir = tempfile::tempdir().unwrap();
        let dlq = DeadLetters::open_for_destination(dir.path(), "d").unwrap();
        let payload = vec![b'x'; 20 << 20];
        let letter = record::Envelope {
            kind: Kind::DeadLetter,
            stream_seq: 7,
            received_at: 1,
            subject: "dbchange.order.INSERT.c.l.PUBLIC.2".into(),
            msg_id: "".into(),
            reason: "too big for the destination".into(),
            payload: &payload,
        };
        dlq.append(&[letter.encode()]).unwrap();
        let listed = list_at(&dir.path().join("dlq").join("d")).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].stream_seq, listed[0].payload.len()), (7, 20 << 20));
    }

    fn letter(n: u64, payload: &[u8]) -> Vec<u8> {
        record::Envelope {
            kind: Kind::DeadLetter,
            stream_seq: n,
            received_at: 1,
            subject: "dbchange.order.INSERT.c.l.PUBLIC.2".into(),
            msg_id: "".into(),
            reason: "refused".into(),
            payload,
        }
        .encode()
    }

    #[test]
    fn dead_letters_count_against_the_wal_disk_budget() {
        let dir = tempfile::tempdir().unwrap();
        let usage = SharedBytes::default();
        let opts = Options {
            segment_size: 64 << 10,
            max_bytes: Some(256 << 10),
            outside_bytes: Some(usage.clone()),
            compress_threshold: usize::MAX,
            ..Options::default()
        };
        let wal = Wal::open(dir.path().join("wal"), opts).unwrap();
        let ingest = DeadLetters::open(dir.path()).unwrap().count_in(&usage);
        let dest = DeadLetters::open_for_destination(dir.path(), "pg").unwrap().count_in(&usage);
        let empty = usage.get();
        assert!(empty > 0, "segment headers count");
        // 200 KB of dead letters that do not compress, across both logs.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut noise = || -> Vec<u8> {
            (0..100 << 10)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        ingest.append(&[letter(1, &noise())]).unwrap();
        dest.append(&[letter(2, &noise())]).unwrap();
        assert!(usage.get() >= empty + (200 << 10), "{}", usage.get());
        assert_eq!(wal.stats().outside_bytes, usage.get());
        // A 60 KB batch would fit the budget alone, not beside the dead letters.
        let err = wal.append(&[vec![b'w'; 60 << 10]]).unwrap_err();
        assert!(matches!(err, eds_wal::Error::Full { .. }), "{err}");
        // Reopened logs count what they already hold.
        drop((ingest, dest));
        let again = SharedBytes::default();
        let _i = DeadLetters::open(dir.path()).unwrap().count_in(&again);
        let _d = DeadLetters::open_for_destination(dir.path(), "pg").unwrap().count_in(&again);
        assert_eq!(again.get(), usage.get());
    }
}
