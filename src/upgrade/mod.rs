//! Release downloads and self-upgrade: `eds publickey`, `eds download`, and the steps HQ's
//! `upgrade` notification runs (spec §1.7, §2.7).
//!
//! An upgrade: refuse inside a container; download the release for this host and verify its
//! detached OpenPGP signature against Shopmonkey's embedded key (before anything of the archive
//! is extracted); run the new binary's `version` and require the version asked for; replace the
//! running executable (with a way back, see [`swap`]).
//!
//! Invariant: no byte of an archive reaches the disk unless its signature verified against the
//! embedded key (a test key only in debug builds, see [`signature::PUBLIC_KEY_FILE_ENV`]).

pub mod container;
pub mod download;
pub mod signature;
pub mod swap;

pub use container::ContainerProbe;
pub use download::{download, DownloadArgs, DownloadError, DownloadOptions, Downloaded, DEFAULT_BASE_URL};
pub use signature::{ReleaseKey, SignatureError, SHOPMONKEY_PUBLIC_KEY};
pub use swap::{replace_executable, SwapError};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mode of the binary an upgrade downloads into the data dir: runnable by its owner only (the
/// data dir is private, see `crate::datadir`).
const DOWNLOAD_MODE: u32 = 0o700;

/// How an upgrade runs.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// The executable to replace: `std::env::current_exe()` in the server; tests pass a copy.
    pub executable: PathBuf,
    /// Where releases come from and the key they must be signed with.
    pub download: DownloadOptions,
    /// Where to look for signs of a container.
    pub container: ContainerProbe,
    /// How long the new binary's `version` may take.
    pub version_timeout: Duration,
}

impl UpgradeOptions {
    /// Replace `executable` with Shopmonkey's releases ([`DEFAULT_BASE_URL`]), verified with
    /// [`ReleaseKey::for_releases`], refusing inside a container of this host, allowing
    /// `version` 30 s.
    pub fn new(executable: PathBuf) -> Result<UpgradeOptions, DownloadError> {
        Ok(UpgradeOptions {
            executable,
            download: DownloadOptions::new(DEFAULT_BASE_URL)?,
            container: ContainerProbe::host(),
            version_timeout: Duration::from_secs(30),
        })
    }
}

/// A finished upgrade: the executable now holds `version`. The caller restarts the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeOutcome {
    /// The version installed, without a leading `v` (as HQ's answer and `eds version` have it).
    pub version: String,
    /// The executable replaced.
    pub executable: PathBuf,
}

/// Why an upgrade did not happen (or, for [`UpgradeError::is_fatal`], went wrong half-way).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// This process runs in a container: the image is what gets upgraded.
    #[error("upgrade is not supported inside a virtualized container system ({evidence})")]
    Container {
        /// What showed it (`/.dockerenv exists`, ...).
        evidence: String,
    },
    /// The release could not be downloaded or did not verify.
    #[error("downloading eds {version}")]
    Download {
        /// The version asked for.
        version: String,
        /// Why.
        #[source]
        source: DownloadError,
    },
    /// The downloaded binary could not be run.
    #[error("running {path} version")]
    Run {
        /// The downloaded binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The downloaded binary's `version` did not finish in time.
    #[error("{path} version did not finish within {timeout:?}")]
    VersionTimeout {
        /// The downloaded binary.
        path: PathBuf,
        /// The time allowed.
        timeout: Duration,
    },
    /// The downloaded binary is not the version asked for (or its `version` failed).
    #[error("{path} version printed {found:?}, not {expected}")]
    WrongVersion {
        /// The downloaded binary.
        path: PathBuf,
        /// The version asked for, without `v`.
        expected: String,
        /// What it printed (trimmed), or how it failed.
        found: String,
    },
    /// The executable could not be replaced.
    #[error("replacing the executable")]
    Swap(#[source] SwapError),
}

impl UpgradeError {
    /// Whether the executable's path may be left empty (a failed rollback): the caller should
    /// report it and exit.
    pub fn is_fatal(&self) -> bool {
        matches!(self, UpgradeError::Swap(e) if e.is_fatal())
    }
}

/// Upgrades to `version` (`v` optional): refuses inside a container, downloads and verifies the
/// release to `<data_dir>/eds-<version without v>`, checks its `version` output, and replaces
/// `opts.executable` with it; the downloaded copy is then removed (as is one that fails the
/// version check). The caller pauses work before
/// and restarts after (EDS's handler pauses the fork and asks the wrapper to restart).
pub async fn upgrade(version: &str, data_dir: &Path, opts: &UpgradeOptions) -> Result<UpgradeOutcome, UpgradeError> {
    if let Some(evidence) = opts.container.evidence() {
        return Err(UpgradeError::Container { evidence });
    }
    let download_error = |source| UpgradeError::Download { version: version.trim().to_owned(), source };
    let tag = download::tag_of(version).map_err(download_error)?;
    let bare = tag.trim_start_matches('v').to_owned();
    let downloaded = data_dir.join(format!("eds-{bare}"));
    download(&tag, &downloaded, DOWNLOAD_MODE, &opts.download).await.map_err(download_error)?;
    if let Err(e) = check_version(&downloaded, &bare, opts.version_timeout).await {
        let _ = std::fs::remove_file(&downloaded);
        return Err(e);
    }
    let (new, executable) = (downloaded.clone(), opts.executable.clone());
    let swapped =
        tokio::task::spawn_blocking(move || replace_executable(&new, &executable)).await.unwrap_or_else(|e| {
            match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Err(SwapError::Unchanged {
                    step: "replacing the executable was cancelled".to_owned(),
                    executable: opts.executable.clone(),
                    source: std::io::Error::other(e),
                }),
            }
        });
    swapped.map_err(UpgradeError::Swap)?;
    if let Err(e) = std::fs::remove_file(&downloaded) {
        tracing::warn!(path = %downloaded.display(), error = %e, "could not remove the downloaded release");
    }
    tracing::info!(version = bare, executable = %opts.executable.display(), "upgraded; restart to run it");
    Ok(UpgradeOutcome { version: bare, executable: opts.executable.clone() })
}

/// Runs `<binary> version` (killed after `timeout`) and requires its trimmed output to be
/// `expected`.
async fn check_version(binary: &Path, expected: &str, timeout: Duration) -> Result<(), UpgradeError> {
    let run = tokio::process::Command::new(binary)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(timeout, run).await {
        Err(_) => return Err(UpgradeError::VersionTimeout { path: binary.to_owned(), timeout }),
        Ok(Err(source)) => return Err(UpgradeError::Run { path: binary.to_owned(), source }),
        Ok(Ok(output)) => output,
    };
    let found = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && found == expected {
        return Ok(());
    }
    let found = if output.status.success() {
        found
    } else {
        format!("{found} (and failed: {}; {})", output.status, String::from_utf8_lossy(&output.stderr).trim())
    };
    Err(UpgradeError::WrongVersion { path: binary.to_owned(), expected: expected.to_owned(), found })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("eds-test");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        path
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_new_binary_must_print_the_version_asked_for() {
        let t = tempfile::tempdir().unwrap();
        let long = Duration::from_secs(20);
        let good = script(t.path(), "echo ' 1.2.3 '");
        check_version(&good, "1.2.3", long).await.unwrap();
        let e = check_version(&good, "1.2.4", long).await.unwrap_err();
        assert_eq!(e.to_string(), format!("{} version printed \"1.2.3\", not 1.2.4", good.display()));
        let failing = script(t.path(), "echo 1.2.3; echo broken >&2; exit 3");
        let e = check_version(&failing, "1.2.3", long).await.unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
        let hanging = script(t.path(), "exec sleep 30");
        let e = check_version(&hanging, "1.2.3", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, UpgradeError::VersionTimeout { .. }), "{e:?}");
        let e = check_version(&t.path().join("missing"), "1.2.3", long).await.unwrap_err();
        assert!(matches!(e, UpgradeError::Run { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn an_upgrade_inside_a_container_is_refused_before_anything_else() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(".dockerenv"), b"").unwrap();
        let exe = root.path().join("eds");
        std::fs::write(&exe, b"old").unwrap();
        let mut opts = UpgradeOptions::new(exe.clone()).unwrap();
        // Nothing listens here: a request would fail differently.
        opts.download.base_url = "http://127.0.0.1:9".to_owned();
        opts.container = ContainerProbe { root: root.path().to_owned(), container_env: None };
        let e = upgrade("1.2.3", root.path(), &opts).await.unwrap_err();
        assert!(e.to_string().starts_with("upgrade is not supported inside a virtualized container system ("), "{e}");
        assert!(!e.is_fatal());
        assert_eq!(std::fs::read(&exe).unwrap(), b"old");
        assert!(!root.path().join("eds-1.2.3").exists());
    }
}
