//! The tracker: a small persistent key-value store at `DATA_DIR/tracker` (sled) for state that is
//! not event data — the schema cache (`registry:<table>-<version>`), per-destination table state,
//! import timestamps (spec §6.4 lists EDS's keys).
//!
//! Invariant: a write that returned `Ok` is on disk — [`Tracker::set`] and [`Tracker::remove`]
//! flush (fsync) before they return — so nothing the tracker reported stored is lost in a crash.
//! Only one process opens a tracker at a time: sled locks its files, and a second [`Tracker::open`]
//! fails with an error saying so (it does not wait). Nothing in the tracker is needed to recover
//! event data: deleting the directory only loses caches and bookkeeping, as in EDS.

use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tracker's directory name inside the data directory.
pub const TRACKER_DIR: &str = "tracker";

/// sled's page cache: the tracker holds little, and eds runs on small boxes.
const CACHE_CAPACITY: u64 = 4 << 20;

/// The persistent key-value store at `DATA_DIR/tracker`. Cheap to clone; clones share one
/// database, which stays open until the last clone is dropped.
#[derive(Clone)]
pub struct Tracker {
    db: sled::Db,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Tracker {
    /// Opens (creating it when missing) the tracker at `data_dir/tracker`. Directories it creates
    /// are mode 0700 on unix, and an existing tracker directory is restricted to 0700, so the
    /// files sled creates inside are private whatever their own mode.
    ///
    /// Fails with an error naming the path when the directory cannot be made or the database
    /// cannot be opened — in particular when another process (or another `Tracker` in this one
    /// that is still open) holds it.
    pub fn open(data_dir: &Path) -> Result<Tracker> {
        let path = data_dir.join(TRACKER_DIR);
        create_private_dir(&path)?;
        let db = sled::Config::new().path(&path).cache_capacity(CACHE_CAPACITY).open().map_err(|e| {
            if is_lock_error(&e) {
                anyhow!(
                    "tracker {} is in use: another eds process (or another open tracker in this process) holds its lock",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("opening tracker {}", path.display()))
            }
        })?;
        Ok(Tracker { db, path: Arc::new(path) })
    }

    /// The tracker's directory (`DATA_DIR/tracker`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let value = self.db.get(key).with_context(|| format!("tracker {}: reading key {key}", self.path.display()))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Stores `value` under `key` and waits until it is on disk.
    ///
    /// Durability: the write is flushed with sled's `flush_async`, which fsyncs on sled's own
    /// thread pool, so the caller's async runtime thread is not blocked by the fsync. Every write
    /// flushes: tracker writes are rare (a schema version, a table migrated), and a caller that
    /// acts on a stored fact (a table created) must not find it forgotten after a crash.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.db.insert(key, value).with_context(|| format!("tracker {}: writing key {key}", self.path.display()))?;
        self.flush(key).await
    }

    /// Stores every `(key, value)` pair atomically (all or none) and waits until they are on disk:
    /// one flush for the lot, as [`Tracker::set`] does for one.
    pub async fn set_all(&self, entries: &[(String, Vec<u8>)]) -> Result<()> {
        self.set_all_and_remove(entries, &[]).await
    }

    /// Writes `entries` and removes the keys `remove` in one atomic batch (all or none, even
    /// across a crash), then waits until it is on disk as [`Tracker::set`] does.
    pub async fn set_all_and_remove(&self, entries: &[(String, Vec<u8>)], remove: &[String]) -> Result<()> {
        if entries.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, value) in entries {
            batch.insert(key.as_str(), value.as_slice());
        }
        for key in remove {
            batch.remove(key.as_str());
        }
        let what = format!("{} keys", entries.len() + remove.len());
        self.db.apply_batch(batch).with_context(|| format!("tracker {}: writing {what}", self.path.display()))?;
        self.flush(&what).await
    }

    /// Removes `key` (nothing happens when it is absent) and waits until that is on disk, as
    /// [`Tracker::set`] does. Returns whether the key was there.
    pub async fn remove(&self, key: &str) -> Result<bool> {
        let old =
            self.db.remove(key).with_context(|| format!("tracker {}: removing key {key}", self.path.display()))?;
        self.flush(key).await?;
        Ok(old.is_some())
    }

    /// Every key starting with `prefix` and its value, ascending by key bytes. Keys are read as
    /// UTF-8 (invalid bytes become U+FFFD; eds only writes `&str` keys).
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.db
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) =
                    item.with_context(|| format!("tracker {}: scanning keys under {prefix}", self.path.display()))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    async fn flush(&self, key: &str) -> Result<()> {
        self.db
            .flush_async()
            .await
            .with_context(|| format!("tracker {}: flushing after writing key {key}", self.path.display()))?;
        Ok(())
    }
}

/// sled reports a held lock as an `Other` I/O error with this text (sled 0.34 `Config::try_lock`).
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(path).with_context(|| format!("creating tracker directory {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting tracker directory {} to mode 0700", path.display()))?;
    }
    #[cfg(not(unix))]
    builder.create(path).with_context(|| format!("creating tracker directory {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_get_remove_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        assert_eq!(t.path(), dir.path().join("tracker"));
        assert_eq!(t.get("registry:order-v1").unwrap(), None);
        t.set("registry:order-v1", b"{\"a\":1}").await.unwrap();
        t.set("registry:order-v2", b"two").await.unwrap();
        t.set("registry:order:version", b"v2").await.unwrap();
        t.set("snowflake:order:1", b"tag").await.unwrap();
        t.set("registry:order-v2", b"2").await.unwrap();
        assert_eq!(t.get("registry:order-v1").unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(t.get("registry:order-v2").unwrap().as_deref(), Some(&b"2"[..]), "set overwrites");

        let scanned = t.scan_prefix("registry:order-").unwrap();
        assert_eq!(
            scanned,
            vec![
                ("registry:order-v1".to_owned(), b"{\"a\":1}".to_vec()),
                ("registry:order-v2".to_owned(), b"2".to_vec())
            ]
        );
        assert_eq!(t.scan_prefix("registry:").unwrap().len(), 3);
        assert!(t.scan_prefix("nothing").unwrap().is_empty());

        t.set_all(&[("a:1".to_owned(), b"one".to_vec()), ("a:2".to_owned(), b"two".to_vec())]).await.unwrap();
        t.set_all(&[]).await.unwrap();
        t.set_all_and_remove(&[("a:3".to_owned(), b"three".to_vec())], &["a:3".to_owned()]).await.unwrap();
        assert_eq!(t.get("a:3").unwrap(), None, "a batch's removal follows its writes");
        t.set_all_and_remove(&[("b:1".to_owned(), b"x".to_vec())], &["a:2".to_owned(), "absent".to_owned()])
            .await
            .unwrap();
        assert_eq!(t.get("b:1").unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(t.get("a:2").unwrap(), None);
        t.set_all(&[("a:2".to_owned(), b"two".to_vec())]).await.unwrap();
        t.remove("b:1").await.unwrap();
        assert_eq!(
            t.scan_prefix("a:").unwrap(),
            vec![("a:1".to_owned(), b"one".to_vec()), ("a:2".to_owned(), b"two".to_vec())]
        );

        assert!(t.remove("registry:order-v1").await.unwrap());
        assert!(!t.remove("registry:order-v1").await.unwrap(), "removing an absent key is fine");
        assert_eq!(t.get("registry:order-v1").unwrap(), None);

        // A clone shares the database.
        let c = t.clone();
        c.set("k", b"v").await.unwrap();
        assert_eq!(t.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(format!("{t:?}").contains("tracker"));
    }

    #[tokio::test]
    async fn values_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let t = Tracker::open(dir.path()).unwrap();
            t.set("table-export", b"[]").await.unwrap();
            t.set("gone", b"x").await.unwrap();
            t.remove("gone").await.unwrap();
        }
        let t = Tracker::open(dir.path()).unwrap();
        assert_eq!(t.get("table-export").unwrap().as_deref(), Some(&b"[]"[..]));
        assert_eq!(t.get("gone").unwrap(), None);
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tracker::open(dir.path()).unwrap();
        let err = Tracker::open(dir.path()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("is in use"), "{msg}");
        assert!(msg.contains(&dir.path().join("tracker").display().to_string()), "{msg}");
        drop(first);
        Tracker::open(dir.path()).expect("reopening after the first is closed");
    }

    #[cfg(unix)]
    #[test]
    fn directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("fresh").join("data");
        let _t = Tracker::open(&data).unwrap();
        for d in [data.clone(), data.join("tracker")] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }

        // An existing, looser tracker directory is tightened.
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("tracker")).unwrap();
        std::fs::set_permissions(other.join("tracker"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let _t = Tracker::open(&other).unwrap();
        let mode = std::fs::metadata(other.join("tracker")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the data directory should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Tracker::open(&file).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&file.join("tracker").display().to_string()), "{msg}");
    }
}
