//! The log: appending with group commit, recovery, cursors, retention and the disk budget.
//!
//! Invariant: nothing outside this module ever sees a record whose LSN is above the durable LSN.
//! An LSN handed to a reader can therefore never be lost in a crash and reused for other data.
//!
//! Locks, always taken in this order when nested: `cursors` → `writer` → `segments` → `sync`.
//! An fsync never runs under `sync`, so appenders keep writing while a group commit is in flight.

use crate::cursor::{self, CursorRecord, CURSOR_SUFFIX};
use crate::error::{Error, Result};
use crate::frame::{EncodeOptions, EncodedFrame};
use crate::holes::{self, Hole};
use crate::options::{Durability, Options, RecoveryMode, SharedBytes};
use crate::reader::Reader;
use crate::segment::{self, FrameScanner, ScanError, SEGMENT_HEADER_LEN};
use crate::storage::{LockGuard, StdStorage, Storage, StorageFile};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// What an append produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// LSN of the first record of the batch.
    pub first_lsn: u64,
    /// LSN of the last record.
    pub last_lsn: u64,
    /// Bytes the frame occupies on disk.
    pub frame_bytes: u64,
}

/// The unsynced tail that recovery cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Segment file.
    pub segment: PathBuf,
    /// Byte offset where the cut starts.
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// First LSN that was not recovered.
    pub first_lsn: u64,
    /// Highest LSN seen in a readable frame after the cut point, if any.
    pub last_lsn_seen: Option<u64>,
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The unsynced tail that was cut, if any.
    pub cut: Option<Cut>,
    /// Holes recorded by this recovery ([`RecoveryMode::RecordHoles`]).
    pub new_holes: Vec<Hole>,
    /// Segment files found.
    pub segments: usize,
    /// Last LSN after recovery.
    pub head: u64,
    /// Cursors that could not be loaded (read-only opens only; a writable open fails instead).
    pub cursor_problems: Vec<String>,
    /// Damage to acknowledged data in the last segment (read-only opens only; a writable open
    /// fails with [`Error::Corrupt`] instead). Readers stop before it; `verify` reports it.
    pub damage: Option<Damage>,
}

/// Damage found by a read-only open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Segment file.
    pub segment: PathBuf,
    /// Byte offset of the bad frame.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

/// Where a new cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// After the last record: only new records are read.
    Head,
    /// At the oldest record kept.
    Oldest,
    /// At this LSN (the first record read is this one).
    Lsn(u64),
}

/// A cursor as the log knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorInfo {
    /// Name.
    pub name: String,
    /// LSN of the last consumed record (in memory).
    pub position: u64,
    /// Position as persisted on disk (what retention and a restart use).
    pub persisted: u64,
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

#[derive(Debug)]
pub(crate) struct SegmentMeta {
    pub(crate) bytes: u64,
}

#[derive(Debug)]
struct Writer {
    file: Option<Arc<dyn StorageFile>>,
    segment: u64,
    offset: u64,
    next_lsn: u64,
}

#[derive(Debug)]
pub(crate) struct SyncState {
    pub(crate) durable: Position,
    syncing: bool,
    last_sync: Instant,
    /// Threads blocked on `synced`; counted so a durable advance with none skips the notify.
    waiters: u32,
}

#[derive(Debug)]
struct CursorState {
    position: u64,
    persisted: u64,
    persisted_at: Instant,
}

#[derive(Debug, Default)]
struct Counters {
    frames: AtomicU64,
    records: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) opts: Options,
    read_only: bool,
    writer: Mutex<Writer>,
    pub(crate) segments: RwLock<BTreeMap<u64, SegmentMeta>>,
    pub(crate) sync: Mutex<SyncState>,
    pub(crate) synced: Condvar,
    total_bytes: AtomicU64,
    poisoned: AtomicBool,
    poison: Mutex<Option<(&'static str, PathBuf)>>,
    cursors: Mutex<BTreeMap<String, CursorState>>,
    pub(crate) holes: RwLock<Vec<Hole>>,
    recovery: Recovery,
    counters: Counters,
    _lock: Option<Box<dyn LockGuard>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_micros() -> u64 {
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

    fn cursor_dir(&self) -> PathBuf {
        self.dir.join(CURSOR_DIR)
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let (op, path) = lock(&self.poison).clone().unwrap_or(("write", self.dir.clone()));
            return Err(Error::Poisoned { op, path });
        }
        Ok(())
    }

    fn poison(&self, op: &'static str, path: &Path) {
        let mut p = lock(&self.poison);
        if p.is_none() {
            *p = Some((op, path.to_path_buf()));
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

    fn set_durable(&self, st: &mut SyncState, pos: Position) {
        if pos.lsn > st.durable.lsn || (pos.segment, pos.offset) > (st.durable.segment, st.durable.offset) {
            st.durable = pos;
        }
        // Skip the futex call on the hot path when nobody waits.
        if st.waiters > 0 {
            self.synced.notify_all();
        }
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
    /// Open (or create) the log in `dir` on the real file system, recovering from a crash.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Wal::open_with(Arc::new(StdStorage), dir, opts)
    }

    /// Open without taking the lock and without changing any file: for tools that inspect a log
    /// a running server is writing. Appends and cursor changes fail with [`Error::ReadOnly`].
    pub fn open_read_only(dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Wal::open_inner(Arc::new(StdStorage), dir.as_ref(), opts, true)
    }

    /// Open on any [`Storage`] (tests use [`crate::FaultyStorage`]).
    pub fn open_with(storage: Arc<dyn Storage>, dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Wal::open_inner(storage, dir.as_ref(), opts, false)
    }

    /// Read-only open on any storage.
    pub fn open_read_only_with(storage: Arc<dyn Storage>, dir: impl AsRef<Path>, opts: Options) -> Result<Wal> {
        Wal::open_inner(storage, dir.as_ref(), opts, true)
    }

    /// The last durable position: what [`Wal::open_after_failure`] keeps.
    pub fn durable_position(&self) -> Position {
        self.inner.durable()
    }

    /// Reopen a log whose handle a failure poisoned, on the real file system. Everything after
    /// `durable` (the old handle's [`Wal::durable_position`]: written, never made durable, so
    /// never acknowledged) is cut before recovery reads the segment: after a failed fsync the page
    /// cache may still show bytes the disk never got, and a plain open would take them for data.
    /// Fails with [`Error::Locked`] while any clone of the old handle (or a reader) is alive.
    pub fn open_after_failure(dir: impl AsRef<Path>, opts: Options, durable: Position) -> Result<Wal> {
        Wal::open_inner_at(Arc::new(StdStorage), dir.as_ref(), opts, false, Some(durable))
    }

    /// [`Wal::open_after_failure`] on any storage.
    pub fn open_after_failure_with(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: Options,
        durable: Position,
    ) -> Result<Wal> {
        Wal::open_inner_at(storage, dir.as_ref(), opts, false, Some(durable))
    }

    /// Drop this handle and reopen with [`Wal::open_after_failure`] semantics.
    pub fn reopen(self) -> Result<Wal> {
        let i = &self.inner;
        let (storage, dir, opts, durable) = (i.storage.clone(), i.dir.clone(), i.opts.clone(), i.durable());
        drop(self);
        Wal::open_after_failure_with(storage, &dir, opts, durable)
    }

    fn open_inner(storage: Arc<dyn Storage>, dir: &Path, opts: Options, read_only: bool) -> Result<Wal> {
        Wal::open_inner_at(storage, dir, opts, read_only, None)
    }

    fn open_inner_at(
        storage: Arc<dyn Storage>,
        dir: &Path,
        opts: Options,
        read_only: bool,
        cut_after: Option<Position>,
    ) -> Result<Wal> {
        opts.validate().map_err(|reason| Error::InvalidOptions { reason })?;
        let dir = dir.to_path_buf();
        let cursor_dir = dir.join(CURSOR_DIR);
        let lock_guard = if read_only {
            storage.list(&dir).map_err(Error::io("open directory", &dir))?;
            None
        } else {
            storage.create_dir_all(&cursor_dir).map_err(Error::io("create directory", &cursor_dir))?;
            // Make the new directory entries durable, so a cursor persisted into them is too.
            storage.sync_dir(&dir).map_err(Error::io("fsync directory", &dir))?;
            let lock_path = dir.join(LOCK_FILE);
            match storage.lock(&lock_path) {
                Ok(g) => Some(g),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Error::Locked { dir }),
                Err(e) => return Err(Error::io("lock", lock_path)(e)),
            }
        };

        let mut firsts: Vec<u64> = storage
            .list(&dir)
            .map_err(Error::io("list", &dir))?
            .iter()
            .filter_map(|n| segment::parse_segment_name(n))
            .collect();
        firsts.sort_unstable();
        if let Some(pos) = cut_after {
            cut_after_position(&*storage, &dir, &mut firsts, pos)?;
        }

        let holes_path = dir.join(HOLES_FILE);
        let mut hole_list = match storage.open(&holes_path, false) {
            Ok(_) => holes::decode(&read_all(&*storage, &holes_path)?)
                .ok_or(Error::HolesFile { path: holes_path.clone() })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("open", holes_path)(e)),
        };

        let mut segments = BTreeMap::new();
        let mut recovery = Recovery { segments: firsts.len(), ..Recovery::default() };
        let mut total = 0u64;
        let (writer, durable) = match firsts.split_last() {
            None if read_only => {
                let w = Writer { file: None, segment: 1, offset: SEGMENT_HEADER_LEN, next_lsn: 1 };
                (w, Position { lsn: 0, segment: 1, offset: SEGMENT_HEADER_LEN })
            }
            None => {
                let file = create_segment(&*storage, &dir, 1)?;
                segments.insert(1, SegmentMeta { bytes: SEGMENT_HEADER_LEN });
                total = SEGMENT_HEADER_LEN;
                let w = Writer { file: Some(file), segment: 1, offset: SEGMENT_HEADER_LEN, next_lsn: 1 };
                (w, Position { lsn: 0, segment: 1, offset: SEGMENT_HEADER_LEN })
            }
            Some((&last, sealed)) => {
                for &first in sealed {
                    let path = dir.join(segment::segment_name(first));
                    let f = storage.open(&path, false).map_err(Error::io("open", &path))?;
                    let bytes = f.len().map_err(Error::io("stat", &path))?;
                    total += bytes;
                    segments.insert(first, SegmentMeta { bytes });
                }
                let scan = recover_last_segment(&*storage, &dir, last, &opts, read_only, &mut hole_list)?;
                recovery.cut = scan.cut;
                recovery.new_holes = scan.new_holes;
                recovery.damage = scan.damage;
                total += scan.end;
                segments.insert(last, SegmentMeta { bytes: scan.end });
                let w = Writer { file: scan.file, segment: last, offset: scan.end, next_lsn: scan.next_lsn };
                (w, Position { lsn: scan.next_lsn - 1, segment: last, offset: scan.end })
            }
        };
        if !read_only && !recovery.new_holes.is_empty() {
            write_atomic(&*storage, &dir, HOLES_FILE, &holes::encode(&hole_list))?;
        }
        recovery.head = durable.lsn;

        let (cursors, problems) = load_cursors(&*storage, &cursor_dir, durable.lsn, read_only)?;
        recovery.cursor_problems = problems;

        let inner = Inner {
            dir,
            storage,
            opts,
            read_only,
            writer: Mutex::new(writer),
            segments: RwLock::new(segments),
            sync: Mutex::new(SyncState { durable, syncing: false, last_sync: Instant::now(), waiters: 0 }),
            synced: Condvar::new(),
            total_bytes: AtomicU64::new(total),
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            cursors: Mutex::new(cursors),
            holes: RwLock::new(hole_list),
            recovery,
            counters: Counters::default(),
            _lock: lock_guard,
        };
        Ok(Wal { inner: Arc::new(inner) })
    }

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

    /// Append a batch as one frame and, per the durability policy, wait until it is durable.
    /// With [`Durability::Always`], `Ok` means every record of the batch survives a crash.
    pub fn append<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Appended> {
        let appended = self.append_nowait(records)?;
        match self.inner.opts.durability {
            Durability::Always => self.sync_through(appended.last_lsn)?,
            Durability::Interval(every) => {
                if lock(&self.inner.sync).last_sync.elapsed() >= every {
                    self.sync_through(appended.last_lsn)?;
                }
            }
            Durability::Never => {}
        }
        Ok(appended)
    }

    /// Write a batch as one frame without waiting for an fsync. The records become visible to
    /// readers only once durable: after [`Wal::sync_through`] (or at once with
    /// [`Durability::Never`]). Lets a caller prepare the next batch while this one syncs.
    pub fn append_nowait<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Appended> {
        let i = &*self.inner;
        if i.read_only {
            return Err(Error::ReadOnly);
        }
        i.check_poison()?;
        let enc = EncodeOptions {
            compress_threshold: i.opts.compress_threshold,
            zstd_level: i.opts.zstd_level,
            max_frame: i.opts.max_frame_bytes,
        };
        // Encoding and compression happen before taking the writer lock.
        let mut frame = EncodedFrame::encode(records, enc)?;
        let appended_at = now_micros();

        let mut w = lock(&i.writer);
        i.check_poison()?;
        let frame_len = frame.len();
        let needs_roll = w.offset > SEGMENT_HEADER_LEN && w.offset + frame_len > i.opts.segment_size;
        let needed = frame_len + if needs_roll { SEGMENT_HEADER_LEN } else { 0 };
        if let Some(budget) = i.opts.max_bytes {
            let outside = || i.opts.outside_bytes.as_ref().map_or(0, SharedBytes::get);
            if i.total_bytes.load(Ordering::Relaxed) + outside() + needed > budget {
                // Cursors may have moved since their last persist; persisting lets retention
                // free whole segments before we give up.
                drop(w);
                self.persist_cursors()?;
                w = lock(&i.writer);
                i.check_poison()?;
                let used = i.total_bytes.load(Ordering::Relaxed) + outside();
                if used + needed > budget {
                    return Err(Error::Full { used, needed, budget });
                }
            }
        }
        // Recomputed: another append may have rolled while the lock was released above.
        let needs_roll = w.offset > SEGMENT_HEADER_LEN && w.offset + frame_len > i.opts.segment_size;
        if needs_roll {
            self.roll(&mut w)?;
        }
        let first_lsn = w.next_lsn;
        let synced_lsn = i.durable().lsn;
        let bytes = frame.stamp(first_lsn, appended_at, synced_lsn);
        let file = match &w.file {
            Some(f) => f.clone(),
            None => return Err(Error::ReadOnly),
        };
        if let Err(e) = file.write_all_at(bytes, w.offset) {
            let path = i.segment_path(w.segment);
            i.poison("write", &path);
            return Err(Error::io("write", path)(e));
        }
        let count = u64::from(frame.record_count());
        w.offset += frame_len;
        w.next_lsn += count;
        let written = Position { lsn: w.next_lsn - 1, segment: w.segment, offset: w.offset };
        if let Some(meta) = write(&i.segments).get_mut(&w.segment) {
            meta.bytes = w.offset;
        }
        i.total_bytes.fetch_add(frame_len, Ordering::Relaxed);
        i.counters.frames.fetch_add(1, Ordering::Relaxed);
        i.counters.records.fetch_add(count, Ordering::Relaxed);
        if i.opts.durability == Durability::Never {
            let mut st = lock(&i.sync);
            i.set_durable(&mut st, written);
        }
        Ok(Appended { first_lsn, last_lsn: written.lsn, frame_bytes: frame_len })
    }

    /// Seal the active segment (fsynced, so sealed segments never hold an unsynced tail) and
    /// start a new one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let i = &*self.inner;
        let old_path = i.segment_path(w.segment);
        if let Some(f) = &w.file {
            if let Err(e) = f.sync() {
                i.poison("fsync", &old_path);
                return Err(Error::io("fsync", old_path)(e));
            }
            i.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        let sealed = Position { lsn: w.next_lsn - 1, segment: w.segment, offset: w.offset };
        let first = w.next_lsn;
        let file = match create_segment(&*i.storage, &i.dir, first) {
            Ok(f) => f,
            Err(e) => {
                i.poison("create segment", &i.segment_path(first));
                return Err(e);
            }
        };
        write(&i.segments).insert(first, SegmentMeta { bytes: SEGMENT_HEADER_LEN });
        i.total_bytes.fetch_add(SEGMENT_HEADER_LEN, Ordering::Relaxed);
        w.file = Some(file);
        w.segment = first;
        w.offset = SEGMENT_HEADER_LEN;
        let mut st = lock(&i.sync);
        i.set_durable(&mut st, sealed);
        Ok(())
    }

    /// Make every record up to `lsn` durable. Concurrent callers share fsyncs: one fsync covers
    /// every frame written before it started.
    pub fn sync_through(&self, lsn: u64) -> Result<()> {
        let i = &*self.inner;
        let mut st = lock(&i.sync);
        loop {
            i.check_poison()?;
            if st.durable.lsn >= lsn {
                return Ok(());
            }
            if st.syncing {
                st.waiters += 1;
                st = i.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                st.waiters -= 1;
                continue;
            }
            st.syncing = true;
            drop(st);
            let (target, file) = {
                let w = lock(&i.writer);
                (Position { lsn: w.next_lsn - 1, segment: w.segment, offset: w.offset }, w.file.clone())
            };
            if target.lsn < lsn {
                st = lock(&i.sync);
                st.syncing = false;
                i.synced.notify_all();
                return Err(Error::LsnBeyondHead { lsn, head: target.lsn });
            }
            let started = Instant::now();
            let result = match &file {
                Some(f) => f.sync(),
                None => Ok(()),
            };
            let took = started.elapsed();
            st = lock(&i.sync);
            st.syncing = false;
            match result {
                Ok(()) => {
                    i.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                    i.counters.fsync_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                    st.last_sync = Instant::now();
                    i.set_durable(&mut st, target);
                }
                Err(e) => {
                    // Never retry an fsync: after a failure the kernel may have dropped the
                    // dirty pages, and a later "successful" fsync would lie.
                    drop(st);
                    let path = i.segment_path(target.segment);
                    i.poison("fsync", &path);
                    return Err(Error::io("fsync", path)(e));
                }
            }
        }
    }

    /// Make everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        let written = lock(&self.inner.writer).next_lsn - 1;
        self.sync_through(written)
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

    /// A reader that starts after the named cursor's position.
    pub fn cursor_reader(&self, name: &str) -> Result<Reader> {
        let position = self.cursor(name)?.position;
        let oldest = self.oldest_lsn();
        if position + 1 < oldest {
            return Err(Error::CursorBelowOldest { cursor: name.to_owned(), needed: position + 1, oldest });
        }
        Ok(Reader::new(self.inner.clone(), position + 1))
    }

    fn writable(&self) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::ReadOnly);
        }
        self.inner.check_poison()
    }

    /// Create a cursor and persist it at once (so retention honours it from now on).
    pub fn create_cursor(&self, name: &str, start: CursorStart) -> Result<CursorInfo> {
        self.writable()?;
        cursor::validate_name(name).map_err(|reason| Error::InvalidCursorName { name: name.to_owned(), reason })?;
        let mut cursors = lock(&self.inner.cursors);
        if cursors.contains_key(name) {
            return Err(Error::CursorExists { cursor: name.to_owned() });
        }
        let head = self.durable_lsn();
        let oldest = self.oldest_lsn();
        let position = match start {
            CursorStart::Head => head,
            CursorStart::Oldest => oldest - 1,
            CursorStart::Lsn(lsn) => {
                if lsn < oldest {
                    return Err(Error::CursorBelowOldest { cursor: name.to_owned(), needed: lsn, oldest });
                }
                if lsn > head + 1 {
                    return Err(Error::CursorBeyondHead { cursor: name.to_owned(), position: lsn - 1, head });
                }
                lsn - 1
            }
        };
        self.persist_one(name, position)?;
        cursors.insert(name.to_owned(), CursorState { position, persisted: position, persisted_at: Instant::now() });
        Ok(CursorInfo { name: name.to_owned(), position, persisted: position })
    }

    /// The named cursor.
    pub fn cursor(&self, name: &str) -> Result<CursorInfo> {
        let cursors = lock(&self.inner.cursors);
        let c = cursors.get(name).ok_or_else(|| Error::CursorNotFound { cursor: name.to_owned() })?;
        Ok(CursorInfo { name: name.to_owned(), position: c.position, persisted: c.persisted })
    }

    /// All cursors, by name.
    pub fn cursors(&self) -> Vec<CursorInfo> {
        lock(&self.inner.cursors)
            .iter()
            .map(|(name, c)| CursorInfo { name: name.clone(), position: c.position, persisted: c.persisted })
            .collect()
    }

    /// Record that the cursor's owner is done with every record up to `lsn`. Never moves
    /// backwards. Cheap: persisted per [`crate::CursorPersist`], or by
    /// [`Wal::persist_cursors`], or at [`Wal::close`].
    pub fn advance_cursor(&self, name: &str, lsn: u64) -> Result<()> {
        self.writable()?;
        let head = self.durable_lsn();
        if lsn > head {
            return Err(Error::LsnBeyondHead { lsn, head });
        }
        let due = {
            let mut cursors = lock(&self.inner.cursors);
            let c = cursors.get_mut(name).ok_or_else(|| Error::CursorNotFound { cursor: name.to_owned() })?;
            if lsn < c.position {
                return Err(Error::CursorBackwards { cursor: name.to_owned(), position: c.position, requested: lsn });
            }
            c.position = lsn;
            let p = self.inner.opts.cursor_persist;
            c.position != c.persisted
                && (c.position - c.persisted >= p.records || c.persisted_at.elapsed() >= p.interval)
        };
        if due {
            self.persist_cursors()?;
        }
        Ok(())
    }

    /// Move a cursor to `position` even backwards (an operator replaying), persisted at once.
    pub fn reset_cursor(&self, name: &str, position: u64) -> Result<()> {
        self.writable()?;
        let mut cursors = lock(&self.inner.cursors);
        if !cursors.contains_key(name) {
            return Err(Error::CursorNotFound { cursor: name.to_owned() });
        }
        let head = self.durable_lsn();
        let oldest = self.oldest_lsn();
        if position > head {
            return Err(Error::CursorBeyondHead { cursor: name.to_owned(), position, head });
        }
        if position + 1 < oldest {
            return Err(Error::CursorBelowOldest { cursor: name.to_owned(), needed: position + 1, oldest });
        }
        self.persist_one(name, position)?;
        cursors.insert(name.to_owned(), CursorState { position, persisted: position, persisted_at: Instant::now() });
        Ok(())
    }

    /// Delete a cursor: it no longer holds retention back.
    pub fn delete_cursor(&self, name: &str) -> Result<()> {
        self.writable()?;
        let mut cursors = lock(&self.inner.cursors);
        if cursors.remove(name).is_none() {
            return Err(Error::CursorNotFound { cursor: name.to_owned() });
        }
        remove_cursor_file(&*self.inner.storage, &self.inner.cursor_dir(), name)?;
        drop(cursors);
        self.apply_retention()?;
        Ok(())
    }

    fn persist_one(&self, name: &str, position: u64) -> Result<()> {
        let rec = CursorRecord { name: name.to_owned(), position, updated_at: now_micros() };
        let dir = self.inner.cursor_dir();
        write_atomic(&*self.inner.storage, &dir, &format!("{name}{CURSOR_SUFFIX}"), &cursor::encode(&rec)).inspect_err(
            |_| {
                self.inner.poison("persist cursor", &dir.join(name));
            },
        )
    }

    /// Persist every cursor that moved, then delete segments every persisted cursor has passed.
    pub fn persist_cursors(&self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        self.inner.check_poison()?;
        {
            let mut cursors = lock(&self.inner.cursors);
            for (name, c) in cursors.iter_mut() {
                if c.position != c.persisted {
                    self.persist_one(name, c.position)?;
                    c.persisted = c.position;
                    c.persisted_at = Instant::now();
                }
            }
        }
        self.apply_retention()?;
        Ok(())
    }

    /// Delete whole segments below every persisted cursor. With no cursor at all nothing is
    /// deleted. Returns the number of segments deleted.
    pub fn apply_retention(&self) -> Result<usize> {
        let i = &*self.inner;
        if i.read_only {
            return Ok(0);
        }
        i.check_poison()?;
        // Hold the cursors until the segments are gone: a cursor created or reset meanwhile
        // checks the oldest LSN under this lock, and must not end up below what is deleted.
        let cursors = lock(&i.cursors);
        let min = match cursors.values().map(|c| c.persisted).min() {
            Some(m) => m,
            None => return Ok(0),
        };
        let head = i.durable().lsn;
        let mut segs = write(&i.segments);
        let firsts: Vec<u64> = segs.keys().copied().collect();
        let mut deleted = 0;
        for pair in firsts.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            // The segment's last LSN is next - 1; the active segment (last key) is never deleted,
            // and neither is the one holding the last record (right after a roll the active
            // segment is empty): the log's last record always stays readable, so its owner can
            // always tell where it stopped.
            if next - 1 > min || next > head {
                break;
            }
            let path = i.segment_path(first);
            i.storage.remove(&path).map_err(Error::io("remove", &path))?;
            if let Some(meta) = segs.remove(&first) {
                i.total_bytes.fetch_sub(meta.bytes, Ordering::Relaxed);
            }
            deleted += 1;
        }
        drop(segs);
        drop(cursors);
        if deleted > 0 {
            i.storage.sync_dir(&i.dir).map_err(Error::io("fsync directory", &i.dir))?;
        }
        Ok(deleted)
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

    /// Delete a cursor file while no server runs (takes the directory lock): for orphaned
    /// cursors, including ones too damaged or too far ahead for [`Wal::open`] to accept.
    pub fn remove_cursor_offline(dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let storage = StdStorage;
        cursor::validate_name(name).map_err(|reason| Error::InvalidCursorName { name: name.to_owned(), reason })?;
        let lock_path = dir.join(LOCK_FILE);
        let _guard = match storage.lock(&lock_path) {
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Error::Locked { dir: dir.to_path_buf() }),
            Err(e) => return Err(Error::io("lock", lock_path)(e)),
        };
        remove_cursor_file(&storage, &dir.join(CURSOR_DIR), name)
    }
}

/// Remove everything after `pos`: later segments entirely, the rest of `pos`'s segment.
fn cut_after_position(storage: &dyn Storage, dir: &Path, firsts: &mut Vec<u64>, pos: Position) -> Result<()> {
    while let Some(&last) = firsts.last() {
        if last <= pos.segment {
            break;
        }
        let path = dir.join(segment::segment_name(last));
        storage.remove(&path).map_err(Error::io("remove", &path))?;
        firsts.pop();
    }
    if firsts.last() == Some(&pos.segment) {
        let path = dir.join(segment::segment_name(pos.segment));
        let f = storage.open(&path, true).map_err(Error::io("open", &path))?;
        if f.len().map_err(Error::io("stat", &path))? > pos.offset {
            f.set_len(pos.offset).map_err(Error::io("truncate", &path))?;
            f.sync().map_err(Error::io("fsync", &path))?;
        }
    }
    storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))
}

fn remove_cursor_file(storage: &dyn Storage, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(format!("{name}{CURSOR_SUFFIX}"));
    match storage.remove(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::CursorNotFound { cursor: name.to_owned() }),
        Err(e) => return Err(Error::io("remove", path)(e)),
    }
    storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))
}

fn create_segment(storage: &dyn Storage, dir: &Path, first_lsn: u64) -> Result<Arc<dyn StorageFile>> {
    let path = dir.join(segment::segment_name(first_lsn));
    let f = storage.create(&path).map_err(Error::io("create", &path))?;
    f.write_all_at(&segment::encode_header(first_lsn), 0).map_err(Error::io("write", &path))?;
    f.sync().map_err(Error::io("fsync", &path))?;
    storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))?;
    Ok(f)
}

struct LastSegment {
    file: Option<Arc<dyn StorageFile>>,
    end: u64,
    next_lsn: u64,
    cut: Option<Cut>,
    new_holes: Vec<Hole>,
    damage: Option<Damage>,
}

/// Scan the last segment to its last valid frame and decide what a bad frame means.
/// Sealed segments are never scanned here: they were fsynced whole before the next one was
/// created, so opening costs the same however many there are.
fn recover_last_segment(
    storage: &dyn Storage,
    dir: &Path,
    first: u64,
    opts: &Options,
    read_only: bool,
    holes: &mut Vec<Hole>,
) -> Result<LastSegment> {
    let path = dir.join(segment::segment_name(first));
    let file = storage.open(&path, !read_only).map_err(Error::io("open", &path))?;
    let len = file.len().map_err(Error::io("stat", &path))?;
    let mut header = vec![0u8; SEGMENT_HEADER_LEN.min(len) as usize];
    file.read_exact_at(&mut header, 0).map_err(Error::io("read", &path))?;
    if let Err(reason) = segment::check_header(&header, first) {
        // A header that never reached the disk whole, with nothing after it, is an unfinished
        // segment creation: nothing acknowledged can be in it.
        if len <= SEGMENT_HEADER_LEN {
            if !read_only {
                file.set_len(0).map_err(Error::io("truncate", &path))?;
                file.write_all_at(&segment::encode_header(first), 0).map_err(Error::io("write", &path))?;
                file.sync().map_err(Error::io("fsync", &path))?;
                // The segment's creation may never have reached its directory fsync.
                storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))?;
            }
            let file = (!read_only).then_some(file);
            return Ok(LastSegment {
                file,
                end: SEGMENT_HEADER_LEN,
                next_lsn: first,
                cut: None,
                new_holes: Vec::new(),
                damage: None,
            });
        }
        return Err(Error::SegmentHeader { segment: path, reason });
    }

    let mut scanner = FrameScanner::new(file.clone(), SEGMENT_HEADER_LEN, len, crate::frame::MAX_FRAME_BYTES);
    let mut expected = first;
    let mut cut = None;
    let mut new_holes = Vec::new();
    let mut damage = None;
    loop {
        let offset = scanner.offset();
        if let Some(h) = holes.iter().find(|h| h.segment == first && h.offset == offset) {
            scanner.seek(offset + h.len);
            expected = h.last_lsn + 1;
            continue;
        }
        let reason = match scanner.next_frame(true) {
            Ok(None) => break,
            Ok(Some(f)) if f.header.first_lsn == expected => {
                expected = f.header.last_lsn() + 1;
                continue;
            }
            Ok(Some(f)) => crate::frame::FrameError::LsnMismatch { expected, found: f.header.first_lsn },
            Err(ScanError::Io { offset, source }) => {
                return Err(Error::io("read", &path)(std::io::Error::new(
                    source.kind(),
                    format!("at byte offset {offset}: {source}"),
                )))
            }
            Err(ScanError::Frame { reason, .. }) => reason,
        };
        // A bad frame. Look at every readable frame after it: if any was written when the bad
        // frame's records were already durable, acknowledged data is damaged.
        let mut pos = offset + 1;
        let mut max_synced = 0u64;
        let mut max_lsn_seen = None;
        let mut next_good = None;
        while let Some(g) = scanner.find_valid_frame(pos).map_err(|e| scan_io(&path, e))? {
            if next_good.is_none() && g.header.first_lsn > expected {
                next_good = Some(g);
            }
            max_synced = max_synced.max(g.header.synced_lsn);
            max_lsn_seen = Some(max_lsn_seen.unwrap_or(0).max(g.header.last_lsn()));
            pos = g.offset + g.header.frame_len();
        }
        if max_synced >= expected {
            match (opts.recovery, next_good) {
                (RecoveryMode::RecordHoles, Some(g)) => {
                    let hole = Hole {
                        segment: first,
                        offset,
                        len: g.offset - offset,
                        first_lsn: expected,
                        last_lsn: g.header.first_lsn - 1,
                    };
                    holes.push(hole);
                    new_holes.push(hole);
                    scanner.seek(g.offset);
                    expected = g.header.first_lsn;
                    continue;
                }
                _ if read_only => {
                    // Tools must still be able to look at a damaged log: report the damage,
                    // stop the readable log before it, and leave the bytes for `verify`.
                    damage = Some(Damage { segment: path.clone(), offset, message: crate::error_chain(&reason) });
                    let file = None;
                    return Ok(LastSegment { file, end: len, next_lsn: expected, cut: None, new_holes, damage });
                }
                _ => return Err(Error::Corrupt { segment: path, offset, reason }),
            }
        }
        cut = Some(Cut {
            segment: path.clone(),
            offset,
            bytes: len - offset,
            first_lsn: expected,
            last_lsn_seen: max_lsn_seen,
        });
        if !read_only {
            file.set_len(offset).map_err(Error::io("truncate", &path))?;
        }
        break;
    }
    if !read_only {
        // What recovery keeps becomes readable at once, so it must be durable: the frames may
        // have been written by a process that died before its fsync (they are in the page cache,
        // not on disk), and the segment's creation may never have reached its directory fsync.
        file.sync().map_err(Error::io("fsync", &path))?;
        storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))?;
    }
    let end = cut.as_ref().map(|c| c.offset).unwrap_or(len);
    let file = (!read_only).then_some(file);
    Ok(LastSegment { file, end, next_lsn: expected, cut, new_holes, damage })
}

fn scan_io(path: &Path, e: ScanError) -> Error {
    match e {
        ScanError::Io { source, .. } => Error::io("read", path)(source),
        ScanError::Frame { offset, reason } => Error::Corrupt { segment: path.to_path_buf(), offset, reason },
    }
}

type CursorLoad = (BTreeMap<String, CursorState>, Vec<String>);

fn load_cursors(storage: &dyn Storage, dir: &Path, head: u64, read_only: bool) -> Result<CursorLoad> {
    let mut cursors = BTreeMap::new();
    let mut problems = Vec::new();
    let names = match storage.list(dir) {
        Ok(n) => n,
        Err(e) if read_only && e.kind() == io::ErrorKind::NotFound => return Ok((cursors, problems)),
        Err(e) => return Err(Error::io("list", dir)(e)),
    };
    for name in names {
        if name.ends_with(".tmp") {
            // A persist interrupted before its rename: the old file is still in place.
            if !read_only {
                let p = dir.join(&name);
                storage.remove(&p).map_err(Error::io("remove", &p))?;
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(CURSOR_SUFFIX) else { continue };
        let path = dir.join(&name);
        let loaded = read_all(storage, &path).and_then(|bytes| {
            let rec =
                cursor::decode(&bytes, stem).map_err(|reason| Error::CursorFile { path: path.clone(), reason })?;
            if rec.position > head {
                return Err(Error::CursorBeyondHead { cursor: rec.name, position: rec.position, head });
            }
            Ok(rec)
        });
        match loaded {
            Ok(rec) => {
                cursors.insert(
                    rec.name,
                    CursorState { position: rec.position, persisted: rec.position, persisted_at: Instant::now() },
                );
            }
            Err(e) if read_only => problems.push(format!("{}: {}", path.display(), crate::error_chain(&e))),
            Err(e) => return Err(e),
        }
    }
    Ok((cursors, problems))
}

/// Wait helper for readers: block until the durable LSN reaches `lsn`, the timeout passes, or
/// the log is poisoned. Returns whether `lsn` is durable.
pub(crate) fn wait_durable(inner: &Inner, lsn: u64, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut st = lock(&inner.sync);
    loop {
        inner.check_poison()?;
        if st.durable.lsn >= lsn {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        st.waiters += 1;
        st = inner.synced.wait_timeout(st, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        st.waiters -= 1;
    }
}
