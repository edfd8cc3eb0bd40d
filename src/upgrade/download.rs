//! `eds download <version> <file>`: fetch a release archive and its detached signature, verify
//! the signature against Shopmonkey's key, and only then extract the `eds` binary (spec §2.7).
//!
//! Invariant: nothing from an archive is written anywhere before its signature has verified.

use super::signature::{ReleaseKey, SignatureError};
use crate::registry::RetryPolicy;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Shopmonkey publishes releases: `<base>/<vX.Y.Z>/eds_<OS>_<arch>.tar.gz`.
pub const DEFAULT_BASE_URL: &str = "https://github.com/shopmonkeyus/eds/releases/download";

/// The most of an archive (or signature) read; a release archive is some tens of MB.
const MAX_ARCHIVE: usize = 512 << 20;

/// `eds download` arguments.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The release to download, e.g. 3.1.0 or v3.1.0
    // Not the id `version`: that is `--version`'s (clap's propagated flag).
    #[arg(id = "release", value_name = "VERSION")]
    pub version: String,
    /// Where to write the eds binary (mode 0755, replaced atomically)
    pub file: PathBuf,
    /// Base URL of the releases, instead of Shopmonkey's GitHub releases
    #[arg(long, hide = true, value_name = "URL", default_value = DEFAULT_BASE_URL)]
    pub base_url: String,
}

/// Why a release could not be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The version is not a release version (letters, digits, `.`, `-`, `+`).
    #[error("{version:?} is not a release version (e.g. v3.1.0)")]
    InvalidVersion {
        /// The version given.
        version: String,
    },
    /// Shopmonkey builds no release for this operating system and architecture.
    #[error("no eds release is built for {os}/{arch}")]
    Platform {
        /// Rust's name of the operating system.
        os: String,
        /// Rust's name of the architecture.
        arch: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client {
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A request failed: transport error or non-2xx answer, after the retries allowed.
    #[error("GET {url}: {reason}")]
    Request {
        /// The URL asked.
        url: String,
        /// What went wrong (`HTTP 404 Not Found`, a transport error).
        reason: String,
    },
    /// The key to verify against could not be loaded.
    #[error(transparent)]
    Key(SignatureError),
    /// The signature does not verify: the archive is not Shopmonkey's, or was changed.
    #[error("checking {signature_url}")]
    Signature {
        /// The signature's URL.
        signature_url: String,
        /// Why the signature was refused.
        #[source]
        source: SignatureError,
    },
    /// The (verified) archive could not be read as gzip-compressed tar.
    #[error("reading the archive {url}")]
    Archive {
        /// The archive.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The archive holds no regular file named `eds`.
    #[error("the archive {url} has no entry named eds")]
    NoBinary {
        /// The archive.
        url: String,
    },
    /// Windows releases are zip archives, which this build does not extract.
    #[error("the archive {url} is a zip archive (Windows), which eds cannot extract yet")]
    Zip {
        /// The archive.
        url: String,
    },
    /// The binary could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How to download: where from, how to retry, and the key to verify against.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Base URL of the releases ([`DEFAULT_BASE_URL`]; tests point it at a local double).
    pub base_url: String,
    /// Retries of each request.
    pub retry: RetryPolicy,
    /// The key signatures must verify against.
    pub key: ReleaseKey,
}

impl DownloadOptions {
    /// Shopmonkey's releases, the default retries, and [`ReleaseKey::for_releases`].
    pub fn new(base_url: &str) -> Result<DownloadOptions, DownloadError> {
        Ok(DownloadOptions {
            base_url: base_url.trim_end_matches('/').to_owned(),
            retry: RetryPolicy::default(),
            key: ReleaseKey::for_releases().map_err(DownloadError::Key)?,
        })
    }
}

/// What was downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The version, with its `v`.
    pub version: String,
    /// The archive's URL.
    pub archive_url: String,
    /// The file written.
    pub file: PathBuf,
}

/// `version` with a leading `v` (added when missing), checked to be a release version.
pub fn tag_of(version: &str) -> Result<String, DownloadError> {
    let version = version.trim();
    let bare = version.strip_prefix('v').unwrap_or(version);
    let valid = bare.starts_with(|c: char| c.is_ascii_digit())
        && bare.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if !valid {
        return Err(DownloadError::InvalidVersion { version: version.to_owned() });
    }
    Ok(format!("v{bare}"))
}

/// The release archive's file name for an operating system and architecture as Rust names them
/// (`std::env::consts::{OS, ARCH}`): `eds_<OS>_<arch>.tar.gz` as goreleaser names them, the OS
/// title-cased (`Linux`, `Darwin`, `Windows`) and the architecture as `uname -m` spells it
/// (`x86_64`, `arm64`, `i386`); Windows gets `.zip`.
///
/// EDS \[BUG-likely\] built this name from the host's *platform* (the Linux distribution, e.g.
/// `ubuntu`, or a Windows product string) and the kernel's `aarch64`, which matches no archive
/// outside macOS; here it is the OS and goreleaser's architecture names.
pub fn archive_name(os: &str, arch: &str) -> Result<String, DownloadError> {
    let unsupported = || DownloadError::Platform { os: os.to_owned(), arch: arch.to_owned() };
    let (os_name, ext) = match os {
        "linux" => ("Linux", "tar.gz"),
        "macos" => ("Darwin", "tar.gz"),
        "windows" => ("Windows", "zip"),
        _ => return Err(unsupported()),
    };
    let arch_name = match arch {
        "x86_64" => "x86_64",
        "aarch64" => "arm64",
        "x86" => "i386",
        _ => return Err(unsupported()),
    };
    Ok(format!("eds_{os_name}_{arch_name}.{ext}"))
}

/// The archive URL of `version` for this host, under `base_url`.
pub fn archive_url(base_url: &str, version: &str) -> Result<String, DownloadError> {
    let tag = tag_of(version)?;
    let name = archive_name(std::env::consts::OS, std::env::consts::ARCH)?;
    Ok(format!("{}/{tag}/{name}", base_url.trim_end_matches('/')))
}

/// Downloads release `version` for this host, verifies it, and writes its `eds` binary to
/// `file` with `mode` (Unix), atomically (temporary file, fsync, rename, directory fsync).
pub async fn download(
    version: &str,
    file: &Path,
    mode: u32,
    opts: &DownloadOptions,
) -> Result<Downloaded, DownloadError> {
    let version = tag_of(version)?;
    let url = archive_url(&opts.base_url, &version)?;
    let client = reqwest::Client::builder()
        .user_agent(format!("Shopmonkey EDS Server/{}", crate::VERSION))
        .connect_timeout(Duration::from_secs(10))
        // A stalled transfer fails; a slow but moving one may take as long as it needs.
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|source| DownloadError::Client { source })?;
    let archive = fetch(&client, &url, opts.retry).await?;
    let signature_url = format!("{url}.sig");
    let signature = fetch(&client, &signature_url, opts.retry).await?;
    // Hashing, inflating and writing tens of MB: off the async workers.
    let (key, target, archive_url) = (opts.key.clone(), file.to_owned(), url.clone());
    let installed = tokio::task::spawn_blocking(move || {
        install(&key, &archive, &signature, &signature_url, &archive_url, &target, mode)
    })
    .await;
    match installed {
        Ok(result) => result?,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => return Err(DownloadError::Write { path: file.to_owned(), source: std::io::Error::other(e) }),
        },
    }
    Ok(Downloaded { version, archive_url: url, file: file.to_owned() })
}

/// Verifies `signature` over `archive`, then extracts its `eds` binary to `file`.
fn install(
    key: &ReleaseKey,
    archive: &[u8],
    signature: &[u8],
    signature_url: &str,
    archive_url: &str,
    file: &Path,
    mode: u32,
) -> Result<(), DownloadError> {
    key.verify(archive, signature)
        .map_err(|source| DownloadError::Signature { signature_url: signature_url.to_owned(), source })?;
    tracing::info!(url = archive_url, key = key.fingerprint(), "the release's signature verifies");
    if archive_url.ends_with(".zip") {
        return Err(DownloadError::Zip { url: archive_url.to_owned() });
    }
    let binary = binary_in_tar_gz(archive, archive_url)?;
    write_atomically(file, &binary, mode).map_err(|source| DownloadError::Write { path: file.to_owned(), source })
}

/// The contents of the regular file named `eds` (or `./eds`) at the top of a gzip-compressed tar.
fn binary_in_tar_gz(archive: &[u8], url: &str) -> Result<Vec<u8>, DownloadError> {
    let broken = |source| DownloadError::Archive { url: url.to_owned(), source };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let path = entry.path().map_err(broken)?;
        let named_eds = path.strip_prefix(".").unwrap_or(&path) == Path::new("eds");
        if !named_eds || entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let size = usize::try_from(entry.size()).unwrap_or(usize::MAX);
        if size > MAX_ARCHIVE {
            return Err(broken(std::io::Error::other(format!("its eds entry is larger than {MAX_ARCHIVE} bytes"))));
        }
        let mut binary = Vec::with_capacity(size);
        entry.read_to_end(&mut binary).map_err(broken)?;
        return Ok(binary);
    }
    Err(DownloadError::NoBinary { url: url.to_owned() })
}

/// Replaces `path` with `bytes`: a temporary file next to it (`.<name>.download`) written with
/// `mode` set explicitly (the process umask is 077), fsynced, renamed over `path`, and the
/// directory fsynced. `crate::datadir::write_atomically` does the same with mode 0600.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"));
    }
    let tmp = dir.join(format!(".{name}.download"));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        super::swap::sync_dir(dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// GETs `url`, retrying connection failures and busy answers as `retry` allows.
async fn fetch(client: &reqwest::Client, url: &str, retry: RetryPolicy) -> Result<Vec<u8>, DownloadError> {
    let failed = |reason| DownloadError::Request { url: url.to_owned(), reason };
    let answer =
        crate::registry::send_retrying_limited(&retry, MAX_ARCHIVE, || client.get(url)).await.map_err(failed)?;
    if !answer.status.is_success() {
        return Err(failed(answer.reason()));
    }
    Ok(answer.body)
}

/// Runs `eds download`.
pub fn run(args: &DownloadArgs, out: &mut dyn std::io::Write) -> anyhow::Result<u8> {
    use anyhow::Context;
    let opts = DownloadOptions::new(&args.base_url)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let done = runtime
        .block_on(download(&args.version, &args.file, 0o755, &opts))
        .with_context(|| format!("downloading eds {}", args.version.trim()))?;
    writeln!(out, "Downloaded eds {} to {} ({})", done.version, done.file.display(), done.archive_url)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn versions_get_their_v_and_nothing_else_passes() {
        assert_eq!(tag_of("1.2.3").unwrap(), "v1.2.3");
        assert_eq!(tag_of("v1.2.3").unwrap(), "v1.2.3");
        assert_eq!(tag_of(" 3.0.0-rc.1 ").unwrap(), "v3.0.0-rc.1");
        for bad in ["", "v", "latest", "1.2.3/../x", "../1", "1.2 3", "1.2.3?x"] {
            assert!(matches!(tag_of(bad), Err(DownloadError::InvalidVersion { .. })), "{bad:?}");
        }
    }

    #[test]
    fn archive_names_follow_goreleaser_not_the_distribution() {
        assert_eq!(archive_name("linux", "x86_64").unwrap(), "eds_Linux_x86_64.tar.gz");
        assert_eq!(archive_name("linux", "aarch64").unwrap(), "eds_Linux_arm64.tar.gz");
        assert_eq!(archive_name("linux", "x86").unwrap(), "eds_Linux_i386.tar.gz");
        assert_eq!(archive_name("macos", "aarch64").unwrap(), "eds_Darwin_arm64.tar.gz");
        assert_eq!(archive_name("windows", "x86_64").unwrap(), "eds_Windows_x86_64.zip");
        let e = archive_name("freebsd", "x86_64").unwrap_err();
        assert_eq!(e.to_string(), "no eds release is built for freebsd/x86_64");
        assert!(archive_name("linux", "riscv64").is_err());
        let url = archive_url("http://h/x/", "1.0.0").unwrap();
        assert!(url.starts_with("http://h/x/v1.0.0/eds_") && !url.contains("//v"), "{url}");
    }

    fn tar_gz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o755);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn only_a_regular_file_named_eds_is_the_binary() {
        let archive = tar_gz(&[
            ("README.md", tar::EntryType::Regular, b"readme"),
            ("bin/eds", tar::EntryType::Regular, b"nested"),
            ("eds.sig", tar::EntryType::Regular, b"sig"),
            ("eds", tar::EntryType::Regular, b"the binary"),
        ]);
        assert_eq!(binary_in_tar_gz(&archive, "u").unwrap(), b"the binary");
        let dotted = tar_gz(&[("./eds", tar::EntryType::Regular, b"dotted")]);
        assert_eq!(binary_in_tar_gz(&dotted, "u").unwrap(), b"dotted");
        let none = tar_gz(&[("eds-other", tar::EntryType::Regular, b"x"), ("LICENSE", tar::EntryType::Regular, b"")]);
        let e = binary_in_tar_gz(&none, "http://h/a.tar.gz").unwrap_err();
        assert_eq!(e.to_string(), "the archive http://h/a.tar.gz has no entry named eds");
        let dir = tar_gz(&[("eds", tar::EntryType::Directory, b"")]);
        assert!(matches!(binary_in_tar_gz(&dir, "u"), Err(DownloadError::NoBinary { .. })));
        assert!(matches!(binary_in_tar_gz(b"not gzip", "u"), Err(DownloadError::Archive { .. })));
    }

    #[test]
    fn the_binary_is_written_atomically_with_its_mode() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("eds");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new", 0o755).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["eds"], "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
            write_atomically(&path, b"private", 0o700).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        }
    }
}
