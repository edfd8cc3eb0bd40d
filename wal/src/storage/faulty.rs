//! An in-memory [`Storage`] for tests that fails on command and simulates power loss.
//!
//! It keeps two views of every file: the bytes written and the bytes made durable by `sync`, and
//! two views of the directory tree: the entries as they are and as of the last `sync_dir`.
//! [`FaultyStorage::power_loss`] replaces the live view with the durable one, which is exactly
//! what a machine losing power would keep. SIGKILL on a real file system cannot show this: the
//! page cache survives a killed process.

use super::{LockGuard, Storage, StorageFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// In-memory storage with fault injection. Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, Arc<MemFile>>,
    durable: BTreeMap<PathBuf, Arc<MemFile>>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    writes_left: Option<u64>,
    syncs_left: Option<u64>,
    writes: u64,
    syncs: u64,
    dir_syncs: u64,
}

#[derive(Debug, Default)]
struct FileData {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug)]
struct MemFile {
    data: Mutex<FileData>,
    /// Weak: `Shared` owns the files, a strong pointer back would be a cycle that never frees.
    shared: Weak<Shared>,
    writable: bool,
}

#[derive(Debug)]
struct Handle {
    file: Arc<MemFile>,
    writable: bool,
}

#[derive(Debug)]
struct MemLock {
    shared: Arc<Shared>,
    path: PathBuf,
}

impl LockGuard for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        lock(&self.shared.state).locks.remove(&self.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} failure"))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl FaultyStorage {
    /// Empty storage with no faults armed.
    pub fn new() -> FaultyStorage {
        FaultyStorage::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Let `n` more writes succeed, then fail every write (the failing write stores the first
    /// half of its bytes, as a torn write would) until [`FaultyStorage::heal`].
    pub fn fail_writes_after(&self, n: u64) {
        self.state().writes_left = Some(n);
    }

    /// Let `n` more file syncs succeed, then fail every sync until [`FaultyStorage::heal`].
    pub fn fail_syncs_after(&self, n: u64) {
        self.state().syncs_left = Some(n);
    }

    /// Disarm all faults.
    pub fn heal(&self) {
        let mut s = self.state();
        s.writes_left = None;
        s.syncs_left = None;
    }

    /// File syncs that succeeded.
    pub fn sync_count(&self) -> u64 {
        self.state().syncs
    }

    /// Directory syncs.
    pub fn dir_sync_count(&self) -> u64 {
        self.state().dir_syncs
    }

    /// Writes that succeeded.
    pub fn write_count(&self) -> u64 {
        self.state().writes
    }

    /// Simulate power loss: every byte and directory entry not yet made durable is gone. Open
    /// handles keep pointing at the old, now unreachable files; locks are released.
    pub fn power_loss(&self) {
        self.power_loss_keeping(0);
    }

    /// Like [`FaultyStorage::power_loss`], but up to `keep` bytes of each file's unsynced
    /// appended tail survive, as when the disk wrote some pages before power went.
    pub fn power_loss_keeping(&self, keep: u64) {
        let mut s = self.state();
        let mut files = BTreeMap::new();
        for (path, f) in &s.durable {
            let d = lock(&f.data);
            let mut bytes = d.synced.clone();
            if d.data.len() > d.synced.len() && d.data.starts_with(&d.synced) {
                let extra = (d.data.len() - d.synced.len()).min(keep as usize);
                bytes.extend_from_slice(&d.data[d.synced.len()..d.synced.len() + extra]);
            }
            let file = Arc::new(MemFile {
                data: Mutex::new(FileData { data: bytes.clone(), synced: bytes }),
                shared: Arc::downgrade(&self.shared),
                writable: true,
            });
            files.insert(path.clone(), file);
        }
        s.durable = files.clone();
        s.files = files;
        s.locks.clear();
    }

    /// Bytes of a file as they are now (not necessarily durable).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let f = self.state().files.get(path)?.clone();
        let d = lock(&f.data);
        Some(d.data.clone())
    }

    /// Replace a file's bytes, durable at once (to plant corruption).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut s = self.state();
        let file = Arc::new(MemFile {
            data: Mutex::new(FileData { data: bytes.to_vec(), synced: bytes.to_vec() }),
            shared: Arc::downgrade(&self.shared),
            writable: true,
        });
        s.files.insert(path.to_path_buf(), file.clone());
        s.durable.insert(path.to_path_buf(), file);
    }
}

impl StorageFile for Handle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = lock(&self.file.data);
        let start = (offset as usize).min(d.data.len());
        let n = buf.len().min(d.data.len() - start);
        buf[..n].copy_from_slice(&d.data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable || !self.file.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"));
        }
        let fail = {
            let shared = self.file.shared.upgrade().ok_or_else(|| io::Error::other("storage was dropped"))?;
            let mut s = lock(&shared.state);
            match s.writes_left {
                Some(0) => true,
                Some(ref mut n) => {
                    *n -= 1;
                    s.writes += 1;
                    false
                }
                None => {
                    s.writes += 1;
                    false
                }
            }
        };
        let buf = if fail { &buf[..buf.len() / 2] } else { buf };
        let mut d = lock(&self.file.data);
        let offset = offset as usize;
        if d.data.len() < offset + buf.len() {
            d.data.resize(offset + buf.len(), 0);
        }
        d.data[offset..offset + buf.len()].copy_from_slice(buf);
        if fail {
            return Err(injected("write"));
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.file.data).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.file.data).data.resize(len as usize, 0);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        {
            let shared = self.file.shared.upgrade().ok_or_else(|| io::Error::other("storage was dropped"))?;
            let mut s = lock(&shared.state);
            match s.syncs_left {
                Some(0) => return Err(injected("sync")),
                Some(ref mut n) => *n -= 1,
                None => {}
            }
            s.syncs += 1;
        }
        let mut d = lock(&self.file.data);
        let FileData { data, synced } = &mut *d;
        // Appends are the common case: extend instead of copying the whole file again.
        if data.len() >= synced.len() && data.starts_with(synced) {
            let from = synced.len();
            synced.extend_from_slice(&data[from..]);
        } else {
            synced.clone_from(data);
        }
        Ok(())
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state();
        for p in path.ancestors() {
            s.dirs.insert(p.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.state();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = s
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.extend(
            s.dirs
                .iter()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned)),
        );
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.state();
        if !path.parent().is_some_and(|d| s.dirs.contains(d)) {
            return Err(not_found(path));
        }
        let file = Arc::new(MemFile {
            data: Mutex::new(FileData::default()),
            shared: Arc::downgrade(&self.shared),
            writable: true,
        });
        s.files.insert(path.to_path_buf(), file.clone());
        Ok(Arc::new(Handle { file, writable: true }))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn StorageFile>> {
        let s = self.state();
        let file = s.files.get(path).ok_or_else(|| not_found(path))?.clone();
        Ok(Arc::new(Handle { file, writable: write }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.state().files.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state();
        let f = s.files.remove(from).ok_or_else(|| not_found(from))?;
        s.files.insert(to.to_path_buf(), f);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state();
        s.dir_syncs += 1;
        let State { files, durable, .. } = &mut *s;
        durable.retain(|p, _| p.parent() != Some(dir));
        for (p, f) in files.iter() {
            if p.parent() == Some(dir) {
                durable.insert(p.clone(), f.clone());
            }
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let mut s = self.state();
        if !s.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(MemLock { shared: self.shared.clone(), path: path.to_path_buf() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_keeps_only_synced_bytes_and_entries() {
        let st = FaultyStorage::new();
        let dir = Path::new("/d");
        st.create_dir_all(dir).unwrap();
        let a = st.create(&dir.join("a")).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync().unwrap();
        st.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let b = st.create(&dir.join("b")).unwrap();
        b.write_all_at(b"x", 0).unwrap();
        b.sync().unwrap(); // data synced but the entry never was
        st.power_loss();
        assert_eq!(st.read_file(&dir.join("a")).unwrap(), b"hello");
        assert!(st.read_file(&dir.join("b")).is_none());
    }

    #[test]
    fn torn_tail_survives_partially() {
        let st = FaultyStorage::new();
        let dir = Path::new("/d");
        st.create_dir_all(dir).unwrap();
        let a = st.create(&dir.join("a")).unwrap();
        st.sync_dir(dir).unwrap();
        a.write_all_at(b"abcdef", 0).unwrap();
        st.power_loss_keeping(2);
        assert_eq!(st.read_file(&dir.join("a")).unwrap(), b"ab");
    }

    #[test]
    fn injected_faults_fire_after_the_allowance() {
        let st = FaultyStorage::new();
        let dir = Path::new("/d");
        st.create_dir_all(dir).unwrap();
        let a = st.create(&dir.join("a")).unwrap();
        st.fail_writes_after(1);
        a.write_all_at(b"ok", 0).unwrap();
        assert!(a.write_all_at(b"torn", 2).is_err());
        assert_eq!(st.read_file(&dir.join("a")).unwrap(), b"okto");
        st.fail_syncs_after(0);
        assert!(a.sync().is_err());
        st.heal();
        a.sync().unwrap();
        assert_eq!(st.sync_count(), 1);
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let st = FaultyStorage::new();
        let g = st.lock(Path::new("/LOCK")).unwrap();
        assert_eq!(st.lock(Path::new("/LOCK")).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(g);
        st.lock(Path::new("/LOCK")).unwrap();
    }
}
