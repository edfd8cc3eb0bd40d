//! The dead-letter log: messages that can never be valid, with the reason, kept durably so an
//! operator can see and replay them. It is an `eds-wal` log of its own (`<data-dir>/dlq/ingest`)
//! without cursors, so retention never deletes from it; records are envelopes of kind
//! `DeadLetter`.

use super::envelope::{self, Kind};
use anyhow::{Context, Result};
use eds_wal::{Options, Wal};
use std::path::{Path, PathBuf};
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
}

fn options() -> Options {
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
        Ok(DeadLetters { dir: d, wal: Arc::new(Mutex::new(Some(wal))) })
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
        wal.append(records).map(|_| ())
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
}

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
    let wal = Wal::open_read_only(&d, Options::default()).with_context(|| format!("opening {}", d.display()))?;
    let mut r = wal.reader(wal.oldest_lsn())?;
    let mut out = Vec::new();
    while let Some(rec) = r.next()? {
        let env = envelope::decode(&rec.data).with_context(|| format!("dead-letter record {} is damaged", rec.lsn))?;
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
        });
    }
    Ok(out)
}
