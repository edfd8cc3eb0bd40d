//! Recovery: opening a log directory, at startup or after a failure.
//!
//! A writable open takes the directory lock; every open lists the segments and scans only the
//! last one, since sealed segments were fsynced whole before the next one was created. A bad
//! frame in the last segment is an unsynced tail, cut and reported in [`Recovery::cut`], unless a
//! later readable frame says the bad frame's records were already durable: that is damage to
//! acknowledged data, which fails the open, becomes a hole ([`RecoveryMode::RecordHoles`], kept
//! in the holes file whose layout is in [`crate::holes`]) or, read-only, ends the readable log
//! ([`Recovery::damage`]). What recovery keeps is made durable before anyone can read it.
//! [`Wal::open_after_failure`] first cuts everything past the old handle's durable position,
//! which a failed fsync may have left looking like data. The cursors are loaded last.

use super::commit::create_segment;
use super::cursors::load_cursors;
use super::{
    read_all, write_atomic, Counters, Inner, Position, SegmentMeta, SyncState, Wal, Writer, CURSOR_DIR, HOLES_FILE,
    LOCK_FILE,
};
use crate::error::{Error, Result};
use crate::holes::{self, Hole};
use crate::options::{Options, RecoveryMode};
use crate::segment::{self, FrameScanner, ScanError, SEGMENT_HEADER_LEN};
use crate::storage::{StdStorage, Storage, StorageFile};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

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
