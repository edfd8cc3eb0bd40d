//! `eds download` and `eds publickey` (the real binary), and `eds::upgrade::upgrade` (the library
//! call HQ's upgrade notification makes), against a local double of the release server that
//! serves archives signed with a key generated here (the binary, a debug build, is pointed at its
//! public half with `EDS_UPGRADE_PUBLIC_KEY_FILE`).

#![allow(clippy::unwrap_used)]
use crate::common;

use common::hq;
use common::release::{key, sign, tar_gz};
use eds::upgrade::{ContainerProbe, DownloadOptions, ReleaseKey, UpgradeError, UpgradeOptions};
use pgp::composed::{ArmorOptions, SignedSecretKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The binary a test release holds: a script that prints its version.
fn script(version: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho {version}\n").into_bytes()
}

/// This host's archive name, as eds computes it.
fn archive_name() -> String {
    eds::upgrade::download::archive_name(std::env::consts::OS, std::env::consts::ARCH).unwrap()
}

/// What the double serves: path → (status, body).
type Files = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

/// A release server double and a signing key, with the key's public half in a file.
struct Releases {
    url: String,
    files: Files,
    /// How many more requests get 503 (HQ-style busy answer) before the files are served.
    busy: Arc<AtomicUsize>,
    /// Every request: (path, User-Agent).
    requests: Arc<Mutex<Vec<(String, String)>>>,
    secret: SignedSecretKey,
    public_key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Releases {
    async fn start() -> Releases {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let files: Files = Arc::default();
        let requests: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let busy = Arc::new(AtomicUsize::new(0));
        let (served, seen, busy_left) = (files.clone(), requests.clone(), busy.clone());
        let handler: hq::BytesHandler = Arc::new(move |parts| {
            let path = parts.uri.path().to_owned();
            let agent = parts.headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            seen.lock().unwrap().push((path.clone(), agent));
            if busy_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return (503, b"busy".to_vec());
            }
            served.lock().unwrap().get(&path).cloned().unwrap_or((404, b"Not Found".to_vec()))
        });
        tokio::spawn(hq::serve_bytes(listener, handler, "application/octet-stream"));
        let secret = key("Test Releases <releases@example.com>");
        let dir = tempfile::tempdir().unwrap();
        let public_key_file = dir.path().join("release-key.asc");
        let armored = secret.to_public_key().to_armored_string(ArmorOptions::default()).unwrap();
        std::fs::write(&public_key_file, armored).unwrap();
        Releases { url, files, busy, requests, secret, public_key_file, _dir: dir }
    }

    /// Serves `archive` as release `tag` for this host, with `signature`.
    fn publish(&self, tag: &str, archive: Vec<u8>, signature: Vec<u8>) {
        let path = format!("/{tag}/{}", archive_name());
        let mut files = self.files.lock().unwrap();
        files.insert(format!("{path}.sig"), (200, signature));
        files.insert(path, (200, archive));
    }

    /// Serves `archive` as release `tag`, signed with the double's key.
    fn publish_signed(&self, tag: &str, archive: Vec<u8>) {
        let signature = sign(&self.secret, &archive);
        self.publish(tag, archive, signature);
    }

    /// Runs `eds download <version> <file> --base-url <double>` with the double's key.
    fn download(&self, version: &str, file: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_eds"))
            .args(["download", version, file.to_str().unwrap(), "--base-url", &self.url])
            .env("EDS_UPGRADE_PUBLIC_KEY_FILE", &self.public_key_file)
            .output()
            .unwrap()
    }

    fn options(&self, executable: &Path) -> UpgradeOptions {
        let clean_root = self._dir.path().join("root");
        std::fs::create_dir_all(&clean_root).unwrap();
        UpgradeOptions {
            executable: executable.to_owned(),
            download: DownloadOptions {
                base_url: self.url.clone(),
                retry: eds::registry::RetryPolicy::default(),
                key: ReleaseKey::from_file(&self.public_key_file).unwrap(),
            },
            container: ContainerProbe { root: clean_root, container_env: None },
            version_timeout: Duration::from_secs(30),
        }
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_release_is_verified_and_its_eds_written_0755() {
    let releases = Releases::start().await;
    let archive = tar_gz(&[("LICENSE", b"MIT"), ("README.md", b"readme"), ("eds", &script("1.2.3"))]);
    releases.publish_signed("v1.2.3", archive);
    // The first request finds the server busy and is made again.
    releases.busy.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eds-new");
    let o = releases.download("1.2.3", &file);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&file).unwrap(), script("1.2.3"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o755);
        let run = Command::new(&file).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "1.2.3");
    }
    assert_eq!(names(dir.path()), ["eds-new"], "no temporary file left");
    let requests = releases.requests.lock().unwrap().clone();
    let archive_path = format!("/v1.2.3/{}", archive_name());
    let paths: Vec<&str> = requests.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [archive_path.clone(), archive_path.clone(), format!("{archive_path}.sig")],
        "the v prefix is added, and a busy answer is asked again"
    );
    for (_, agent) in &requests {
        assert_eq!(agent, &format!("Shopmonkey EDS Server/{}", eds::VERSION));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_of_another_key_or_over_other_bytes_writes_nothing() {
    let releases = Releases::start().await;
    let archive = tar_gz(&[("eds", &script("1.2.3"))]);
    let stranger = key("Stranger <stranger@example.com>");
    releases.publish("v1.2.3", archive.clone(), sign(&stranger, &archive));
    // v1.2.4: the signature is the double's, but over other bytes than those served.
    let tampered = tar_gz(&[("eds", &script("6.6.6"))]);
    releases.publish("v1.2.4", tampered, sign(&releases.secret, &archive));
    let dir = tempfile::tempdir().unwrap();
    for version in ["v1.2.3", "1.2.4"] {
        let file = dir.path().join("eds-new");
        let o = releases.download(version, &file);
        assert_eq!(o.status.code(), Some(1), "{version}: {}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("the signature does not verify against the test"), "{version}: {stderr}");
        assert!(stderr.contains(&format!("{}.sig", archive_name())), "the signature is named: {stderr}");
        assert!(!file.exists(), "{version}: nothing is written");
        assert!(names(dir.path()).is_empty(), "{version}: no temporary file either: {:?}", names(dir.path()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_without_eds_or_a_missing_release_says_so() {
    let releases = Releases::start().await;
    releases.publish_signed("v2.0.0", tar_gz(&[("bin/eds", b"nested"), ("eds.exe", b"windows")]));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eds-new");
    let o = releases.download("2.0.0", &file);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let expected = format!("the archive {}/v2.0.0/{} has no entry named eds", releases.url, archive_name());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&expected), "{}", text(&o));
    assert!(!file.exists());

    let o = releases.download("9.9.9", &file);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let expected = format!("GET {}/v9.9.9/{}: HTTP 404 Not Found", releases.url, archive_name());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&expected), "{}", text(&o));
    assert!(names(dir.path()).is_empty());

    let o = releases.download("latest", &file);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("\"latest\" is not a release version"), "{}", text(&o));
}

#[test]
fn publickey_prints_the_embedded_key() {
    let o = Command::new(env!("CARGO_BIN_EXE_eds")).arg("publickey").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let embedded =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/upgrade/shopmonkey.asc")).unwrap();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), embedded);
    assert!(embedded.contains("mDMEZqbX1BYJKwYBBAHaRw8BAQdArMIL32vatKdxrJK2F/aKN+q3hS73CPnUdgpJ"));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_replaces_the_executable_with_the_verified_release() {
    let releases = Releases::start().await;
    releases.publish_signed("v1.2.3", tar_gz(&[("eds", &script("1.2.3"))]));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let executable = bin.join("eds");
    std::fs::write(&executable, script("1.0.0")).unwrap();

    let outcome = eds::upgrade::upgrade("v1.2.3", &data, &releases.options(&executable)).await.unwrap();
    assert_eq!(outcome.version, "1.2.3");
    assert_eq!(std::fs::read(&executable).unwrap(), script("1.2.3"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&executable).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(names(&bin), ["eds"], "no .eds.new or .eds.old left");
    assert!(names(&data).is_empty(), "the downloaded copy is removed: {:?}", names(&data));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_binary_of_another_version_or_a_bad_signature_keeps_the_executable() {
    let releases = Releases::start().await;
    // The archive for v1.2.3 holds a binary that says it is 1.2.4.
    releases.publish_signed("v1.2.3", tar_gz(&[("eds", &script("1.2.4"))]));
    let archive = tar_gz(&[("eds", &script("1.2.5"))]);
    releases.publish("v1.2.5", archive.clone(), sign(&key("Stranger <s@example.com>"), &archive));
    let dir = tempfile::tempdir().unwrap();
    let executable = dir.path().join("eds");
    std::fs::write(&executable, script("1.0.0")).unwrap();
    let opts = releases.options(&executable);

    let e = eds::upgrade::upgrade("1.2.3", dir.path(), &opts).await.unwrap_err();
    assert!(matches!(&e, UpgradeError::WrongVersion { found, .. } if found == "1.2.4"), "{e:?}");
    assert!(!e.is_fatal());
    assert_eq!(std::fs::read(&executable).unwrap(), script("1.0.0"));
    assert!(!dir.path().join("eds-1.2.3").exists(), "a binary of the wrong version is removed");

    let e = eds::upgrade::upgrade("1.2.5", dir.path(), &opts).await.unwrap_err();
    let chain = eds_wal::error_chain(&e);
    assert!(chain.contains("the signature does not verify against the test"), "{chain}");
    assert_eq!(std::fs::read(&executable).unwrap(), script("1.0.0"));
    assert!(!dir.path().join("eds-1.2.5").exists(), "nothing of an unverified archive is written");
}
