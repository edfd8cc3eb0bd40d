//! Writing events to files.
//!
//! What is written: the event's bytes exactly as received from NATS (unknown fields kept, no
//! re-serialisation, so `<` stays `<` — EDS re-serialised and wrote `\u003c`).
//!
//! Durability: every file of the batch is written first (temporary name, then rename), then one
//! sync barrier for the whole file system (`syncfs` on Linux; an fsync per file elsewhere), then
//! one fsync per directory that got new entries — not an fsync per file.
//!
//! Modes: files 0644 and the directories it creates 0755, as EDS (spec §7.9), set explicitly so
//! they do not depend on the process's umask (eds runs with 077 to keep its data dir private).

use super::config::DESCRIPTION;
use crate::driver::{Batch, BoxFuture, Delivery, Description, Driver, DriverError, ErrorClass, Limits};
use crate::naming;
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file destination.
#[derive(Debug, Clone)]
pub struct FileDriver {
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> DriverError {
    let class = match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => ErrorClass::Config,
        _ => ErrorClass::Transient,
    };
    DriverError::caused(class, format!("{what} {} failed", path.display()), e)
}

/// For an event the schema validator named: a name that is a directory, runs through a file or
/// is too long is the event's fault (no wait makes it writable), so it is dead-lettered. (For
/// eds's own names the same errors mean something in the way of the destination's directory,
/// which an operator clears: those stay passing errors.)
fn named_err(d: &Delivery<'_>, e: DriverError) -> DriverError {
    let kind = e.source.as_ref().and_then(|s| s.downcast_ref::<io::Error>()).map(io::Error::kind);
    let the_names_fault = matches!(
        kind,
        Some(
            io::ErrorKind::IsADirectory
                | io::ErrorKind::NotADirectory
                | io::ErrorKind::InvalidFilename
                | io::ErrorKind::AlreadyExists
        )
    );
    match d.event.path.is_some() && the_names_fault && e.class == ErrorClass::Transient {
        true => DriverError { class: ErrorClass::Rejected, ..e },
        false => e,
    }
}

/// Mode of the files written (EDS's).
const FILE_MODE: u32 = 0o644;
/// Mode of the directories created (EDS's).
const DIR_MODE: u32 = 0o755;

/// Give `path` `mode`, whatever the umask made of it.
fn set_mode(path: &Path, mode: u32) -> Result<(), DriverError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io_err("setting the mode of", path, e))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Create `dir` and its missing parents, each with [`DIR_MODE`].
fn create_dirs(dir: &Path) -> Result<(), DriverError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.is_dir()).collect();
    fs::create_dir_all(dir).map_err(|e| io_err("creating directory", dir, e))?;
    missing.into_iter().try_for_each(|d| set_mode(d, DIR_MODE))
}

fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| io_err("creating", &tmp, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(FILE_MODE)).map_err(|e| io_err("setting the mode of", &tmp, e))?;
    }
    f.write_all(bytes).map_err(|e| io_err("writing", &tmp, e))?;
    #[cfg(not(target_os = "linux"))]
    f.sync_data().map_err(|e| io_err("fsync of", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io_err("renaming", &tmp, e))
}

impl FileDriver {
    /// A driver writing below `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> FileDriver {
        FileDriver { dir: dir.into() }
    }

    /// Write one event; returns the directory that got a new entry, if any.
    fn write_one(
        &self,
        d: &Delivery<'_>,
        created_dirs: &mut BTreeSet<PathBuf>,
    ) -> Result<Option<PathBuf>, DriverError> {
        let (folder, name) = naming::object(d.event);
        let table_dir = self.dir.join(folder);
        if !table_dir.is_dir() {
            create_dirs(&table_dir)?;
            created_dirs.insert(table_dir.clone());
        }
        let mut path = table_dir.join(&name);
        match fs::read(&path) {
            Ok(existing) if existing == d.raw => return Ok(None), // a replay
            Ok(_) => {
                // Another event for the key in the same second: its own name, by LSN.
                path = table_dir.join(naming::with_lsn(&name, d.lsn));
                match fs::read(&path) {
                    Ok(existing) if existing == d.raw => return Ok(None),
                    Ok(_) => {
                        return Err(DriverError::new(
                            ErrorClass::Rejected,
                            format!(
                                "{} already holds another event's file for LSN {} (another eds data dir writing to the \
                                 same directory, or a schema validator path with a +); not overwritten",
                                path.display(),
                                d.lsn
                            ),
                        ))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("reading", &path, e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &path, e)),
        }
        write_whole(&path, d.raw)?;
        Ok(Some(table_dir))
    }

    fn write_events(&self, events: &[Delivery<'_>]) -> Result<(), DriverError> {
        let mut created_dirs = BTreeSet::new();
        let mut touched = BTreeSet::new();
        if !self.dir.is_dir() {
            create_dirs(&self.dir)?;
            created_dirs.insert(self.dir.clone());
        }
        for d in events {
            if let Some(dir) = self.write_one(d, &mut created_dirs).map_err(|e| named_err(d, e))? {
                touched.insert(dir);
            }
        }
        if touched.is_empty() && created_dirs.is_empty() {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            let root = fs::File::open(&self.dir).map_err(|e| io_err("opening", &self.dir, e))?;
            rustix::fs::syncfs(&root).map_err(|e| io_err("syncfs of the file system of", &self.dir, e.into()))?;
        }
        // New entries: each touched directory, and the parents of directories we created.
        for dir in created_dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)).chain(touched) {
            let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
            fs::File::open(&dir).and_then(|f| f.sync_all()).map_err(|e| io_err("fsync of directory", &dir, e))?;
        }
        Ok(())
    }
}

impl Driver for FileDriver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        Limits { max_rows: 10_000, max_bytes: 64 << 20, max_bind_params: usize::MAX }
    }

    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            create_dirs(&self.dir)?;
            let probe = self.dir.join(".eds-write-test");
            fs::write(&probe, b"ok").map_err(|e| io_err("writing", &probe, e))?;
            fs::remove_file(&probe).map_err(|e| io_err("removing", &probe, e))
        })
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                // Plain blocking file I/O: a batch is bounded by `limits()`, and a drain task
                // owns this destination alone.
                Batch::Events(events) => self.write_events(events),
                Batch::Folded(_) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the file destination takes every event (stream kind), not folded changes",
                )),
            }
        })
    }
}
