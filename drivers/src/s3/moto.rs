//! Test support: a private moto server (the S3 the tests talk to), shared by this crate's tests,
//! eds's end-to-end tests and the benchmark. The binary is `MOTO_SERVER` (`scripts/test.sh`
//! installs `moto[server]` and sets it); without it the caller panics, it never skips.

use super::{client, parse, S3Config};
use aws_sdk_s3::Client;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Region and keys the tests use (moto accepts any).
pub const REGION: &str = "us-east-1";
/// Access key id of the tests.
pub const ACCESS_KEY_ID: &str = "testing";
/// Secret access key of the tests.
pub const SECRET_ACCESS_KEY: &str = "testing-secret";

/// A moto server on a free port of 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// Its port.
    pub port: u16,
}

/// The moto server binary: `MOTO_SERVER`, or a panic that says how to get it.
pub fn moto_bin() -> String {
    match std::env::var("MOTO_SERVER") {
        Ok(p) if std::path::Path::new(&p).is_file() => p,
        Ok(p) => panic!("MOTO_SERVER={p} does not exist: run scripts/test.sh, which installs moto[server]"),
        Err(_) => panic!(
            "MOTO_SERVER is not set: the S3 tests need moto (scripts/test.sh installs moto[server] into a venv and sets it)"
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// `GET /moto-api/` answers 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let req = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.") && head.ends_with(b"200")
}

impl Moto {
    /// Start moto and wait (at most 60 s) until it answers.
    pub async fn start() -> Moto {
        Moto::start_with_env(&[]).await
    }

    /// [`Moto::start`] with extra environment variables (`INITIAL_NO_AUTH_ACTION_COUNT=0` makes
    /// it check signatures).
    pub async fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let bin = moto_bin();
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(port).await {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("{bin} exited at start ({status}) on port {port}");
            }
            assert!(Instant::now() < deadline, "moto on port {port} did not answer GET /moto-api/ within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        moto
    }

    /// Its process id (for CPU figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An `s3://` URL of `bucket`/`prefix` at `endpoint` (moto, or a proxy in front of it), with
    /// the tests' region and keys, and `extra` appended to the query (`&format=ndjson`).
    pub fn url_at(endpoint: &str, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={endpoint}&region={REGION}&access-key-id={ACCESS_KEY_ID}\
             &secret-access-key={SECRET_ACCESS_KEY}{extra}"
        )
    }

    /// [`Moto::url_at`] this server.
    pub fn url(&self, bucket: &str, prefix: &str, extra: &str) -> String {
        Moto::url_at(&self.endpoint(), bucket, prefix, extra)
    }

    /// What [`Moto::url`] means.
    pub fn config(&self, bucket: &str) -> S3Config {
        parse(&self.url(bucket, "", ""), &|_| None).expect("the test URL parses")
    }

    /// A client of this server.
    pub async fn client(&self) -> Client {
        client(&self.config("unused-bucket")).await
    }

    /// Create `bucket`.
    pub async fn create_bucket(&self, bucket: &str) {
        self.client()
            .await
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }

    /// Every object of `bucket` below `prefix`: key → bytes.
    pub async fn objects(&self, bucket: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let c = self.client().await;
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = c
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("listing {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
            for o in page.contents() {
                let key = o.key().expect("a listed object has a key").to_owned();
                let got = c
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("reading {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
                let bytes = got.body.collect().await.expect("reading an object's body").into_bytes().to_vec();
                out.insert(key, bytes);
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return out,
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
