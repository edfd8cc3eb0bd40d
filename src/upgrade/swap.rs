//! Replacing the running executable with a new one, durably, with a way back.
//!
//! The sequence (EDS's, spec §2.7): copy the new binary to `<dir>/.<name>.new` (0755, fsynced),
//! remove a stale `<dir>/.<name>.old`, move the current executable to `.<name>.old`, move
//! `.<name>.new` to the executable's name, remove `.<name>.old`, fsync the directory. When moving
//! the new one in fails, the old one is moved back.
//!
//! Invariant: whatever fails, the executable's path ends up holding either the old binary or the
//! new one — except when putting the old one back fails too, which [`SwapError::is_fatal`] tells
//! the caller (the old binary is then at `.<name>.old`).
//!
//! On Unix the move-aside step is skipped: `rename` replaces the executable in one atomic step (a
//! running process keeps its open inode), so there is no moment without an executable at the path
//! and nothing to roll back. Windows cannot replace a running executable, only rename it, and
//! takes the full sequence. Both paths are tested on every platform.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Mode of the installed executable.
const EXECUTABLE_MODE: u32 = 0o755;

/// Why the executable could not be replaced.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The executable's path has no directory or file name.
    #[error("{path} is not a file path")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// Copying the new binary next to the executable failed; nothing was changed.
    #[error("copying {from} to {to}")]
    Copy {
        /// The new binary.
        from: PathBuf,
        /// The `.<name>.new` file.
        to: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A step before the replacement failed; the executable is unchanged.
    #[error("{step}; {executable} is unchanged")]
    Unchanged {
        /// What failed (`removing <path>`, `moving <a> to <b>`).
        step: String,
        /// The executable.
        executable: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Moving the new binary in failed; the old executable is in place again.
    #[error("moving {new} to {executable} failed; the old executable is back in place")]
    RolledBack {
        /// The `.<name>.new` file.
        new: PathBuf,
        /// The executable.
        executable: PathBuf,
        /// Why the move failed.
        #[source]
        source: std::io::Error,
    },
    /// Moving the new binary in failed and so did moving the old one back: the executable's
    /// path may be empty. Fatal: the old binary is at `old`.
    #[error("moving {new} to {executable} failed ({cause}), and moving the old executable back from {old} failed too")]
    RollbackFailed {
        /// The `.<name>.new` file.
        new: PathBuf,
        /// The executable.
        executable: PathBuf,
        /// Where the old executable is.
        old: PathBuf,
        /// Why moving the new one in failed.
        cause: std::io::Error,
        /// Why moving the old one back failed.
        #[source]
        source: std::io::Error,
    },
    /// The new binary is in place, but the directory could not be fsynced: after a crash the
    /// old one may be back.
    #[error("syncing the directory {dir} after replacing the executable")]
    Sync {
        /// The executable's directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SwapError {
    /// Whether the executable's path may now hold nothing: the caller should report it and exit
    /// rather than go on (EDS: "a failed rollback is fatal").
    pub fn is_fatal(&self) -> bool {
        matches!(self, SwapError::RollbackFailed { .. })
    }
}

/// Replaces `executable` with a copy of `new` (which stays where it is), as the module describes.
pub fn replace_executable(new: &Path, executable: &Path) -> Result<(), SwapError> {
    replace_with(new, executable, !cfg!(unix), &|from, to| std::fs::rename(from, to))
}

/// [`replace_executable`] with the move-aside step on or off and the rename to use, so tests can
/// take either path and make a rename fail.
fn replace_with(
    new: &Path,
    executable: &Path,
    move_aside: bool,
    rename: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<(), SwapError> {
    let not_a_file = || SwapError::NotAFile { path: executable.to_owned() };
    let name = executable.file_name().ok_or_else(not_a_file)?.to_string_lossy().into_owned();
    let dir = match executable.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(not_a_file()),
    };
    let staged = dir.join(format!(".{name}.new"));
    let old = dir.join(format!(".{name}.old"));
    copy_executable(new, &staged).map_err(|source| {
        let _ = std::fs::remove_file(&staged);
        SwapError::Copy { from: new.to_owned(), to: staged.clone(), source }
    })?;
    let unchanged = |step: String, source| {
        let _ = std::fs::remove_file(&staged);
        SwapError::Unchanged { step, executable: executable.to_owned(), source }
    };
    match std::fs::remove_file(&old) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unchanged(format!("removing {}", old.display()), e)),
    }
    if move_aside {
        rename(executable, &old)
            .map_err(|e| unchanged(format!("moving {} to {}", executable.display(), old.display()), e))?;
    }
    if let Err(cause) = rename(&staged, executable) {
        if move_aside {
            if let Err(source) = rename(&old, executable) {
                return Err(SwapError::RollbackFailed {
                    new: staged,
                    executable: executable.to_owned(),
                    old,
                    cause,
                    source,
                });
            }
        }
        let _ = std::fs::remove_file(&staged);
        return Err(SwapError::RolledBack { new: staged, executable: executable.to_owned(), source: cause });
    }
    if move_aside {
        // Windows cannot delete a running executable: it stays until the next upgrade removes
        // it as stale.
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::debug!(path = %old.display(), error = %e, "the old executable stays until the next upgrade");
        }
    }
    sync_dir(dir).map_err(|source| SwapError::Sync { dir: dir.to_owned(), source })
}

/// Copies `from` to a new file `to` with mode 0755 (whatever the umask), fsynced.
fn copy_executable(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(from)?;
    write_executable(to, &bytes)
}

/// Writes `bytes` to `path` (created or truncated), mode 0755 set explicitly (the process runs
/// with umask 077, which would leave 0700), and fsyncs it.
pub(super) fn write_executable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    file.write_all(bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(EXECUTABLE_MODE))?;
    }
    file.sync_all()
}

/// fsyncs a directory, so renames in it survive a crash (a no-op where directories cannot be
/// opened as files).
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    return std::fs::File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::cell::Cell;

    struct Setup {
        dir: tempfile::TempDir,
        new: PathBuf,
        exe: PathBuf,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("download").join("eds-1.2.3");
        std::fs::create_dir(new.parent().unwrap()).unwrap();
        std::fs::write(&new, b"#!/bin/sh\necho new\n").unwrap();
        let exe = dir.path().join("bin").join("eds");
        std::fs::create_dir(exe.parent().unwrap()).unwrap();
        std::fs::write(&exe, b"#!/bin/sh\necho old\n").unwrap();
        Setup { dir, new, exe }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// A rename that fails on call number `fail_at` (1-based) and works otherwise.
    fn failing_rename(fail_at: usize, calls: &Cell<usize>) -> impl Fn(&Path, &Path) -> std::io::Result<()> + '_ {
        move |from, to| {
            calls.set(calls.get() + 1);
            if calls.get() == fail_at {
                return Err(std::io::Error::other("injected rename failure"));
            }
            std::fs::rename(from, to)
        }
    }

    #[test]
    fn the_new_binary_replaces_the_executable_on_either_path() {
        for move_aside in [false, true] {
            let s = setup();
            std::fs::write(s.exe.with_file_name(".eds.old"), b"stale").unwrap();
            replace_with(&s.new, &s.exe, move_aside, &|a, b| std::fs::rename(a, b)).unwrap();
            assert_eq!(std::fs::read(&s.exe).unwrap(), b"#!/bin/sh\necho new\n");
            assert_eq!(names(s.exe.parent().unwrap()), ["eds"], "no .new or .old left (move_aside {move_aside})");
            assert!(s.new.exists(), "the download stays where it was");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&s.exe).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o755);
            }
        }
        let s = setup();
        replace_executable(&s.new, &s.exe).unwrap();
        assert_eq!(std::fs::read(&s.exe).unwrap(), b"#!/bin/sh\necho new\n");
        drop(s.dir);
    }

    #[test]
    fn a_failed_move_in_rolls_back_to_the_old_executable() {
        // With the move aside (Windows' path): rename 1 moves eds to .eds.old, rename 2 (moving
        // .eds.new in) fails, rename 3 moves the old one back.
        let s = setup();
        let calls = Cell::new(0);
        let e = replace_with(&s.new, &s.exe, true, &failing_rename(2, &calls)).unwrap_err();
        assert!(matches!(e, SwapError::RolledBack { .. }) && !e.is_fatal(), "{e:?}");
        assert!(e.to_string().contains("the old executable is back in place"), "{e}");
        assert_eq!(calls.get(), 3);
        assert_eq!(std::fs::read(&s.exe).unwrap(), b"#!/bin/sh\necho old\n");
        assert_eq!(names(s.exe.parent().unwrap()), ["eds"]);

        // Unix's path: the one rename fails, the executable was never moved.
        let s = setup();
        let calls = Cell::new(0);
        let e = replace_with(&s.new, &s.exe, false, &failing_rename(1, &calls)).unwrap_err();
        assert!(matches!(e, SwapError::RolledBack { .. }), "{e:?}");
        assert_eq!(std::fs::read(&s.exe).unwrap(), b"#!/bin/sh\necho old\n");
        assert_eq!(names(s.exe.parent().unwrap()), ["eds"]);

        // The move aside itself fails: nothing changed.
        let s = setup();
        let calls = Cell::new(0);
        let e = replace_with(&s.new, &s.exe, true, &failing_rename(1, &calls)).unwrap_err();
        assert!(matches!(e, SwapError::Unchanged { .. }), "{e:?}");
        assert_eq!(std::fs::read(&s.exe).unwrap(), b"#!/bin/sh\necho old\n");
        assert_eq!(names(s.exe.parent().unwrap()), ["eds"]);
    }

    #[test]
    fn a_failed_rollback_is_fatal_and_says_where_the_old_executable_is() {
        let s = setup();
        let calls = Cell::new(0);
        let rename = |from: &Path, to: &Path| {
            calls.set(calls.get() + 1);
            if calls.get() >= 2 {
                return Err(std::io::Error::other("injected rename failure"));
            }
            std::fs::rename(from, to)
        };
        let e = replace_with(&s.new, &s.exe, true, &rename).unwrap_err();
        assert!(e.is_fatal(), "{e:?}");
        let SwapError::RollbackFailed { old, .. } = &e else { panic!("{e:?}") };
        assert_eq!(std::fs::read(old).unwrap(), b"#!/bin/sh\necho old\n");
        assert!(e.to_string().contains(".eds.old"), "{e}");
    }

    #[test]
    fn a_missing_new_binary_changes_nothing() {
        let s = setup();
        let e = replace_executable(&s.dir.path().join("nope"), &s.exe).unwrap_err();
        assert!(matches!(e, SwapError::Copy { .. }), "{e:?}");
        assert_eq!(std::fs::read(&s.exe).unwrap(), b"#!/bin/sh\necho old\n");
        assert_eq!(names(s.exe.parent().unwrap()), ["eds"]);
    }
}
