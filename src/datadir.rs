//! The data directory's files are private: every file eds writes under it is mode 0600 and every
//! directory 0700, including a data directory someone else created and files an earlier version
//! left looser. Events hold customers' data; the tracker and `destinations.json` name databases.
//!
//! Invariant: eds creates nothing group- or world-readable under the data dir. Processes run with
//! umask 077 ([`private_umask`]), which covers files that libraries create on their own (sled's),
//! and eds's own files are also created with explicit modes. What a *destination* writes (the
//! file driver's output) keeps that destination's own modes.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Mode of every file eds creates under the data dir.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory eds creates under the data dir.
pub const DIR_MODE: u32 = 0o700;

/// Entries of the data dir that eds owns (a file destination's output may live there too, and
/// keeps its own modes).
const OWN_ENTRIES: &[&str] = &["wal", "dlq", "tracker", "logs", "config.toml", "destinations.json", "gaps.jsonl"];

/// Make every file this process creates private to its user (umask 077). Called once at start,
/// before any thread that creates files.
pub fn private_umask() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Create the data directory (0700), or make an existing one 0700, and tighten whatever eds
/// already keeps in it to 0600 files and 0700 directories.
pub fn prepare(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
    b.create(dir).with_context(|| format!("creating the data directory {}", dir.display()))?;
    restrict(dir, DIR_MODE)?;
    for entry in OWN_ENTRIES {
        tighten(&dir.join(entry))?;
    }
    Ok(())
}

/// Give `path` `mode` unless it already allows no more than that.
fn restrict(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.file_type().is_symlink() || meta.permissions().mode() & 0o777 & !mode == 0 {
            return Ok(());
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| {
            format!("{} is readable by others and could not be made private (mode {mode:o})", path.display())
        })?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// [`restrict`] `path` and, when it is a directory, everything below it.
fn tighten(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if meta.is_dir() {
        restrict(path, DIR_MODE)?;
        for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            tighten(&entry.with_context(|| format!("listing {}", path.display()))?.path())?;
        }
        Ok(())
    } else {
        restrict(path, FILE_MODE)
    }
}

fn private_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o
}

/// Replace `path` with `bytes` atomically and durably: a private temporary file, fsynced, renamed
/// over it, and the directory fsynced — a crash leaves the old content or the new, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> std::io::Result<()> {
        let mut f = private_options().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    written.with_context(|| format!("writing {}", path.display()))
}

/// Make the entries of `dir` (files renamed into it) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// Whether the file system of `dir` takes writes: at least `room` bytes free, and a small file
/// written, fsynced and removed there (a disk that failed with EIO may answer the first but not
/// the second).
pub fn probe_write(dir: &Path, room: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < room {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("{} has {free} bytes free, {room} are needed to go on", dir.display()),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = room;
    let probe = dir.join(".eds-write-probe");
    let written = (|| {
        let mut f = private_options().write(true).create(true).truncate(true).open(&probe)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written
}

/// Open `path` for appending, creating it private.
pub fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    private_options().create(true).append(true).open(path)
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_data_dir_someone_else_made_and_old_loose_files_are_made_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data");
        std::fs::create_dir_all(dir.join("tracker/blobs")).unwrap();
        std::fs::create_dir_all(dir.join("out/order")).unwrap();
        for (p, m) in [("", 0o755), ("tracker", 0o755), ("tracker/blobs", 0o775), ("out", 0o755)] {
            std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        for f in ["tracker/db", "tracker/blobs/1", "gaps.jsonl", "destinations.json", "out/order/1-a.json"] {
            std::fs::write(dir.join(f), b"x").unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare(&dir).unwrap();
        for d in ["", "tracker", "tracker/blobs"] {
            assert_eq!(mode(&dir.join(d)), 0o700, "{d}");
        }
        for f in ["tracker/db", "tracker/blobs/1", "gaps.jsonl", "destinations.json"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        // A destination's own output keeps its modes.
        assert_eq!(mode(&dir.join("out/order/1-a.json")), 0o644);
        // Already tighter stays as it is.
        std::fs::set_permissions(dir.join("gaps.jsonl"), std::fs::Permissions::from_mode(0o400)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir.join("gaps.jsonl")), 0o400);
    }

    #[test]
    fn atomic_writes_are_private_and_replace_the_whole_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("destinations.json");
        std::fs::write(&p, b"old and longer").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("destinations.json")], "no temporary file left");
        let g = t.path().join("gaps.jsonl");
        open_append(&g).unwrap().write_all(b"{}\n").unwrap();
        assert_eq!(mode(&g), 0o600);
    }
}
