//! Retention: deleting whole segments every persisted cursor has passed, and the disk budget
//! ([`crate::Options::max_bytes`]) an append must fit in.

use super::{lock, write, Inner, Wal};
use crate::error::{Error, Result};
use crate::options::SharedBytes;
use std::sync::atomic::Ordering;

impl Wal {
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
}

impl Inner {
    /// Check that `needed` more bytes fit the disk budget ([`crate::Options::max_bytes`]), which
    /// counts the segments and what lies outside the log ([`crate::Options::outside_bytes`]).
    /// Fails with [`Error::Full`] when they do not; never without a budget.
    pub(super) fn check_budget(&self, needed: u64) -> Result<()> {
        let Some(budget) = self.opts.max_bytes else { return Ok(()) };
        let outside = self.opts.outside_bytes.as_ref().map_or(0, SharedBytes::get);
        let used = self.total_bytes.load(Ordering::Relaxed) + outside;
        if used + needed > budget {
            return Err(Error::Full { used, needed, budget });
        }
        Ok(())
    }
}
