//! The log: one [`Wal`] handle over the segments, cursors and holes of a log directory.
//!
//! Invariant: nothing outside this module ever sees a record whose LSN is above the durable LSN.
//! An LSN handed to a reader can therefore never be lost in a crash and reused for other data.
//!
//! Locks, always taken in this order when nested: `cursors` → `writer` → `segments` → `sync`.
//! An fsync never runs under `sync`, so appenders keep writing while a group commit is in flight.
//!
//! This file holds what every room shares: the handle's state (`Inner`: the writer, the segment
//! table, the durable position, the cursor table, the poison flag), the read-only accessors,
//! [`Wal::reader`] and [`Wal::close`]. The behaviour lives in rooms, each with its own `impl Wal`:
//!
//! - `recovery`: opening the log at startup or after a failure: listing the segments, scanning
//!   the last one, cutting an unsynced tail, recording holes.
//! - `commit`: the append path: framing, segment rolls, group commit and the durable-LSN wait
//!   readers use.
//! - `cursors`: the named cursors the log holds: creating, advancing, resetting, deleting and
//!   persisting them, and loading them at open (their file format is in [`crate::cursor`]).
//! - `retention`: deleting segments every persisted cursor has passed, and the disk budget.
//!
//! Rooms call each other one way only: `recovery` → `commit`, `cursors`; `commit` → `cursors`,
//! `retention`; `cursors` → `retention`.

mod commit;
mod cursors;
mod recovery;
mod retention;

pub(crate) use commit::wait_durable;
pub use commit::Appended;
pub use cursors::{CursorInfo, CursorStart};
pub use recovery::{Cut, Damage, Recovery};

use crate::error::{Error, Result};
use crate::holes::Hole;
use crate::options::{Options, SharedBytes};
use crate::reader::Reader;
use crate::segment;
use crate::storage::{LockGuard, Storage, StorageFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Name of the lock file in the log directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the cursor directory inside the log directory.
pub const CURSOR_DIR: &str = "cursors";
/// Name of the holes file.
pub const HOLES_FILE: &str = "holes";

/// A position in the log: the last LSN up to some byte of some segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Last LSN at or before this position (0 when none).
    pub lsn: u64,
    /// First LSN of the segment.
    pub segment: u64,
    /// Byte offset in that segment just after the last frame.
    pub offset: u64,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Durable LSN.
    pub durable_lsn: u64,
    /// Last written LSN (may be above durable).
    pub written_lsn: u64,
    /// Oldest LSN kept.
    pub oldest_lsn: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes of all segments.
    pub bytes: u64,
    /// Bytes outside the log that count against its budget ([`Options::outside_bytes`]).
    pub outside_bytes: u64,
    /// Frames appended since open.
    pub frames: u64,
    /// Records appended since open.
    pub records: u64,
    /// Data fsyncs since open.
    pub fsyncs: u64,
    /// Total time spent in data fsyncs, nanoseconds.
    pub fsync_nanos: u64,
}

// The state a log's handles share. Its types live here, with private fields: the rooms are child
// modules and see them, while readers and inspect get only what is `pub(crate)`.

/// A row of the segment table, which is keyed by the segment's first LSN.
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    pub(crate) bytes: u64,
}

/// Where the next frame goes: set by `recovery`, moved by `commit`.
#[derive(Debug)]
struct Writer {
    file: Option<Arc<dyn StorageFile>>,
    segment: u64,
    offset: u64,
    next_lsn: u64,
}

/// The durable position and the group commit in flight (`commit`).
#[derive(Debug)]
struct SyncState {
    durable: Position,
    syncing: bool,
    last_sync: Instant,
    /// Threads blocked on `synced`; counted so a durable advance with none skips the notify.
    waiters: u32,
}

/// A cursor in memory and as last persisted (`cursors`; `retention` reads `persisted`).
#[derive(Debug)]
struct CursorState {
    position: u64,
    persisted: u64,
    persisted_at: Instant,
}

/// What [`Stats`] reports beyond positions and sizes.
#[derive(Debug, Default)]
struct Counters {
    frames: AtomicU64,
    records: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
}

/// Everything behind a [`Wal`] handle and its clones and readers.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    opts: Options,
    read_only: bool,
    writer: Mutex<Writer>,
    pub(crate) segments: RwLock<BTreeMap<u64, SegmentMeta>>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    total_bytes: AtomicU64,
    poisoned: AtomicBool,
    poison: Mutex<Option<(&'static str, PathBuf, String)>>,
    cursors: Mutex<BTreeMap<String, CursorState>>,
    pub(crate) holes: RwLock<Vec<Hole>>,
    recovery: Recovery,
    counters: Counters,
    _lock: Option<Box<dyn LockGuard>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A segmented, checksummed, compressed write-ahead log with named cursors.
///
/// Cheap to clone; clones share the same log. All methods take `&self` and may be called from
/// many threads: concurrent appends are group-committed.
#[derive(Debug, Clone)]
pub struct Wal {
    pub(crate) inner: Arc<Inner>,
}

impl Inner {
    pub(crate) fn segment_path(&self, first_lsn: u64) -> PathBuf {
        self.dir.join(segment::segment_name(first_lsn))
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let (op, path, cause) =
                lock(&self.poison).clone().unwrap_or(("write", self.dir.clone(), "an earlier failure".to_owned()));
            return Err(Error::Poisoned { op, path, cause });
        }
        Ok(())
    }

    fn poison(&self, op: &'static str, path: &Path, cause: &dyn std::fmt::Display) {
        let mut p = lock(&self.poison);
        if p.is_none() {
            *p = Some((op, path.to_path_buf(), cause.to_string()));
        }
        self.poisoned.store(true, Ordering::Release);
        drop(p);
        // Under the sync lock, so a waiter between its poison check and its wait cannot miss it.
        let _sync = lock(&self.sync);
        self.synced.notify_all();
    }

    pub(crate) fn durable(&self) -> Position {
        lock(&self.sync).durable
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub(crate) fn oldest_lsn(&self) -> u64 {
        read(&self.segments).keys().next().copied().unwrap_or(1)
    }
}

/// Write `bytes` to `path` atomically: temp file, fsync, rename, fsync directory.
fn write_atomic(storage: &dyn Storage, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let f = storage.create(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all_at(bytes, 0).map_err(Error::io("write", &tmp))?;
    f.sync().map_err(Error::io("fsync", &tmp))?;
    drop(f);
    storage.rename(&tmp, &dst).map_err(Error::io("rename", &tmp))?;
    storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))?;
    Ok(())
}

fn read_all(storage: &dyn Storage, path: &Path) -> Result<Vec<u8>> {
    let f = storage.open(path, false).map_err(Error::io("open", path))?;
    let len = f.len().map_err(Error::io("stat", path))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).map_err(Error::io("read", path))?;
    Ok(buf)
}

impl Wal {
    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What recovery found when this handle was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Last durable LSN (0 when the log is empty).
    pub fn durable_lsn(&self) -> u64 {
        self.inner.durable().lsn
    }

    /// Oldest LSN still kept (the first LSN of the oldest segment).
    pub fn oldest_lsn(&self) -> u64 {
        self.inner.oldest_lsn()
    }

    /// First LSN of every segment, oldest first.
    pub fn segment_starts(&self) -> Vec<u64> {
        read(&self.inner.segments).keys().copied().collect()
    }

    /// Holes recorded in this log.
    pub fn holes(&self) -> Vec<Hole> {
        read(&self.inner.holes).clone()
    }

    /// True once a write or fsync failed; every call then fails until the log is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let written_lsn = lock(&i.writer).next_lsn - 1;
        let segs = read(&i.segments);
        Stats {
            durable_lsn: i.durable().lsn,
            written_lsn,
            oldest_lsn: segs.keys().next().copied().unwrap_or(1),
            segments: segs.len() as u64,
            bytes: i.total_bytes.load(Ordering::Relaxed),
            outside_bytes: i.opts.outside_bytes.as_ref().map_or(0, SharedBytes::get),
            frames: i.counters.frames.load(Ordering::Relaxed),
            records: i.counters.records.load(Ordering::Relaxed),
            fsyncs: i.counters.fsyncs.load(Ordering::Relaxed),
            fsync_nanos: i.counters.fsync_nanos.load(Ordering::Relaxed),
        }
    }

    /// A reader positioned so that the first record it returns is `from_lsn`.
    pub fn reader(&self, from_lsn: u64) -> Result<Reader> {
        let oldest = self.oldest_lsn();
        let from = from_lsn.max(1);
        if from < oldest {
            return Err(Error::LsnBelowOldest { lsn: from, oldest });
        }
        Ok(Reader::new(self.inner.clone(), from))
    }

    /// Persist cursors and make everything written durable. Dropping the log without calling
    /// this loses at most the cursor moves since their last persist (a replay, never data).
    /// On a poisoned handle it reports the failure that poisoned it.
    pub fn close(self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.inner.check_poison()?;
        self.sync()?;
        self.persist_cursors()
    }
}
