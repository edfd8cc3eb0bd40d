//! Cursors held by the log: every named cursor's position in memory and as last persisted.
//!
//! An owner advances its cursor in memory, which is cheap; the position reaches its cursor file
//! per [`crate::CursorPersist`], by [`Wal::persist_cursors`] or at [`Wal::close`]. Retention
//! honours only persisted positions, so a crash replays records and never skips any. The cursor
//! files are loaded here when the log opens. Their byte layout, and how a file is replaced
//! atomically, are documented in [`crate::cursor`], next to the encoder.

use super::{lock, now_micros, read_all, write_atomic, CursorState, Inner, Wal, CURSOR_DIR, LOCK_FILE};
use crate::cursor::{self, CursorRecord, CURSOR_SUFFIX};
use crate::error::{Error, Result};
use crate::reader::Reader;
use crate::storage::{StdStorage, Storage};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

impl Wal {
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
            |e| {
                self.inner.poison("persist cursor", &dir.join(name), e);
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

impl Inner {
    fn cursor_dir(&self) -> PathBuf {
        self.dir.join(CURSOR_DIR)
    }
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

/// The cursors loaded at open, and what was wrong with the files a read-only open skipped.
pub(super) type CursorLoad = (BTreeMap<String, CursorState>, Vec<String>);

/// Load every cursor file at open. Leftover temp files are removed; a file that cannot be read, or
/// a position beyond `head`, fails a writable open and is reported by a read-only one.
pub(super) fn load_cursors(storage: &dyn Storage, dir: &Path, head: u64, read_only: bool) -> Result<CursorLoad> {
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
