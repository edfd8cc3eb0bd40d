//! Commit: the append path and group commit.
//!
//! An append encodes its batch into one frame before taking any lock, then, under the writer
//! lock, checks the disk budget, rolls to a new segment when the frame does not fit, and writes
//! the frame at the end of the active segment. The frame becomes readable once durable: one fsync
//! in [`Wal::sync_through`] covers every frame written before it started, so concurrent appenders
//! share it. A failed write or fsync poisons the handle; an fsync is never retried.
//!
//! New segment files are created here (at a roll, and by recovery for an empty log); their
//! header layout is documented in [`crate::segment`], the frame layout in [`crate::frame`].

use super::{lock, now_micros, write, Inner, Position, SegmentMeta, SyncState, Wal, Writer};
use crate::error::{Error, Result};
use crate::frame::{EncodeOptions, EncodedFrame};
use crate::options::Durability;
use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::storage::{Storage, StorageFile};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

impl Wal {
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
        if i.check_budget(needed).is_err() {
            // Cursors may have moved since their last persist; persisting lets retention
            // free whole segments before we give up.
            drop(w);
            self.persist_cursors()?;
            w = lock(&i.writer);
            i.check_poison()?;
            i.check_budget(needed)?;
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
            i.poison("write", &path, &e);
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
                i.poison("fsync", &old_path, &e);
                return Err(Error::io("fsync", old_path)(e));
            }
            i.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        let sealed = Position { lsn: w.next_lsn - 1, segment: w.segment, offset: w.offset };
        let first = w.next_lsn;
        let file = match create_segment(&*i.storage, &i.dir, first) {
            Ok(f) => f,
            Err(e) => {
                i.poison("create segment", &i.segment_path(first), &e);
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
                    i.poison("fsync", &path, &e);
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
}

impl Inner {
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

/// Create the segment whose first LSN is `first_lsn`: header written, file and directory fsynced.
pub(super) fn create_segment(storage: &dyn Storage, dir: &Path, first_lsn: u64) -> Result<Arc<dyn StorageFile>> {
    let path = dir.join(segment::segment_name(first_lsn));
    let f = storage.create(&path).map_err(Error::io("create", &path))?;
    f.write_all_at(&segment::encode_header(first_lsn), 0).map_err(Error::io("write", &path))?;
    f.sync().map_err(Error::io("fsync", &path))?;
    storage.sync_dir(dir).map_err(Error::io("fsync directory", dir))?;
    Ok(f)
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
