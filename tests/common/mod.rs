//! Test harness: a private nats-server per test, the real `eds` binary, polling with deadlines.
//! In modules: the HQ double (hq) and, for the end-to-end tests, change events (events), the
//! expected state of a destination table (model), a TCP proxy to cut a connection (proxy), a
//! whole setup of NATS, HQ and eds (setup), and waits on eds's `/status` (wait).
#![allow(dead_code, clippy::unwrap_used)]

use async_nats::jetstream;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The nats-server binary: `NATS_SERVER` or the first on PATH (the test script installs it).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/usr/local/bin"]) {
        let p = Path::new(dir).join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server not found: install it (apt-get install nats-server) or set NATS_SERVER");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A suffix for the names of a test's schemas and databases, different for every call and
/// process (time, pid and a counter, mixed): 16 hex digits.
pub fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mixed =
        nanos ^ (u64::from(std::process::id()) << 40) ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9);
    format!("{mixed:016x}")
}

/// Poll `f` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A nats-server with JetStream on a free port, its store in a temp dir; killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    /// `user:password@` or `token@` when the server wants authentication, else empty.
    pub userinfo: String,
    /// The command line, to start the server again on the same port and store.
    command: (PathBuf, Vec<String>),
    _store: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        Nats::start_with(nats_server_bin()).await
    }

    pub async fn start_with(bin: impl AsRef<std::ffi::OsStr>) -> Nats {
        Nats::start_with_auth(bin, &[], "").await
    }

    /// A server started with `auth` flags (`--user u --pass p`, `--auth token`); clients connect
    /// with `userinfo` (`u:p@`, `token@`) in the URL.
    pub async fn start_with_auth(bin: impl AsRef<std::ffi::OsStr>, auth: &[&str], userinfo: &str) -> Nats {
        let store = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> =
            ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", store.path().to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(auth.iter().map(|s| s.to_string()));
        let command = (PathBuf::from(bin.as_ref()), args);
        let child = Nats::spawn(&command);
        let nats = Nats { child, port, userinfo: userinfo.to_owned(), command, _store: store };
        nats.wait_ready().await;
        nats
    }

    fn spawn((bin, args): &(PathBuf, Vec<String>)) -> Child {
        Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting nats-server")
    }

    async fn wait_ready(&self) {
        eventually("nats-server to accept connections", Duration::from_secs(10), || async {
            self.options().connect(format!("nats://127.0.0.1:{}", self.port)).await.ok()
        })
        .await;
    }

    /// Stop the server (SIGTERM: a clean shutdown, JetStream's store flushed) and wait for it to
    /// exit; [`Nats::resume`] starts it again on the same port and store.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let _ = self.child.wait();
    }

    /// Start the server again after [`Nats::stop`], on the same port and store, and wait until it
    /// accepts connections.
    pub async fn resume(&mut self) {
        self.child = Nats::spawn(&self.command);
        self.wait_ready().await;
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Let a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{sig} nats-server");
    }

    /// Connection options carrying the server's credentials (async-nats does not read them from
    /// the URL).
    fn options(&self) -> async_nats::ConnectOptions {
        let userinfo = self.userinfo.trim_end_matches('@');
        match userinfo.split_once(':') {
            Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(user.into(), password.into()),
            None if !userinfo.is_empty() => async_nats::ConnectOptions::with_token(userinfo.into()),
            None => async_nats::ConnectOptions::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://{}127.0.0.1:{}", self.userinfo, self.port)
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(self.options().connect(format!("nats://127.0.0.1:{}", self.port)).await.unwrap())
    }

    /// Create the `dbchange` stream as Shopmonkey's has it.
    pub async fn create_stream(&self) -> jetstream::Context {
        create_dbchange(self.js().await).await
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // A frozen server would not die of SIGKILL any later, but let it go on first anyway.
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subject of an event for a company.
pub fn subject(table: &str, op: &str, company: &str) -> String {
    format!("dbchange.{table}.{op}.{company}.loc1.PUBLIC.2")
}

/// A valid UPDATE of row `key` carrying `n` so order can be checked.
pub fn event(key: &str, n: u64) -> Vec<u8> {
    format!(
        r#"{{"operation":"UPDATE","id":"ev{n}","table":"order","key":["gcp-us-west1","{key}"],"modelVersion":"b041c12fbf8d1103","after":{{"id":"{key}","number":{n},"status":"RepairOrder"}},"before":{{"id":"{key}","number":{prev}}},"diff":["number"],"timestamp":{ts},"mvccTimestamp":"1.0"}}"#,
        prev = n.saturating_sub(1),
        ts = 1_795_749_176_000u64 + n
    )
    .into_bytes()
}

/// Creates the `dbchange` stream (`dbchange.>`) through `js` and returns `js`.
pub async fn create_dbchange(js: jetstream::Context) -> jetstream::Context {
    js.create_stream(jetstream::stream::Config {
        name: "dbchange".into(),
        subjects: vec!["dbchange.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Publish and return the stream sequence.
pub async fn publish(js: &jetstream::Context, subject: String, payload: Vec<u8>) -> u64 {
    js.publish(subject, payload.into()).await.unwrap().await.unwrap().sequence
}

/// A running `eds server`.
pub struct Eds {
    pub child: Child,
    pub http: String,
    pub lines: mpsc::Receiver<String>,
}

pub fn eds_bin() -> &'static str {
    env!("CARGO_BIN_EXE_eds")
}

impl Eds {
    /// Start `eds server` with `args` and wait for its HTTP address in the log.
    pub fn start(data_dir: &Path, nats: &Nats, extra: &[&str]) -> Eds {
        let mut args: Vec<String> = vec![
            "server".into(),
            "-d".into(),
            data_dir.to_str().unwrap().into(),
            "--server".into(),
            nats.url(),
            "--port".into(),
            "0".into(),
            "-v".into(),
            // The worker itself: these tests kill it, and read its exit codes (the supervisor
            // has tests of its own in tests/supervisor.rs).
            "--no-restart".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Eds::start_args(&args)
    }

    pub fn start_args(args: &[String]) -> Eds {
        Eds::start_program(eds_bin(), args, &[])
    }

    /// `program` (a copy of eds) with `args` and extra environment variables.
    pub fn start_program(program: &str, args: &[String], env: &[(&str, &str)]) -> Eds {
        let mut command = Command::new(program);
        command.args(args).envs(env.iter().copied());
        Eds::spawn(command)
    }

    /// `eds` with `args` in a process group of its own (as a shell starts a foreground job), so
    /// a test can signal the whole group as a terminal's Ctrl-C does.
    pub fn start_own_group(args: &[String]) -> Eds {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(eds_bin());
        command.args(args).process_group(0);
        Eds::spawn(command)
    }

    fn spawn(mut command: Command) -> Eds {
        let mut child = command
            .env_remove("PORT")
            .env_remove("SM_APIKEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting eds");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var("EDS_TEST_ECHO").is_ok() {
                    eprintln!("eds| {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let http = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find("addr=") {
                        if line.contains("listening") {
                            break line[at + 5..].split_whitespace().next().unwrap().to_string();
                        }
                    }
                    seen.push(line);
                }
                Err(_) => panic!("eds did not report its HTTP address; output:\n{}", seen.join("\n")),
            }
        };
        Eds { child, http, lines: rx }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http, path).await
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Wait until the durable stream sequence reaches `seq`.
    pub async fn wait_stored(&self, seq: u64, timeout: Duration) {
        eventually(&format!("stream sequence {seq} stored"), timeout, || async {
            let s = self.status().await;
            (s["ingest"]["stream_sequence"].as_u64().unwrap_or(0) >= seq).then_some(())
        })
        .await
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Send `sig` to eds's whole process group (see [`Eds::start_own_group`]).
    pub fn signal_group(&self, sig: &str) {
        let ok =
            Command::new("kill").args([&format!("-{sig}"), "--", &format!("-{}", self.child.id())]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGTERM and wait for the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }

    /// Send `sig` (e.g. `INT`) and wait for the exit code.
    pub fn stop_with(mut self, sig: &str) -> i32 {
        self.signal(sig);
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }

    /// SIGTERM, wait for the exit code, and return it with every log line not read yet.
    pub fn stop_with_log(mut self) -> (i32, String) {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        let mut lines = Vec::new();
        // The reader thread forwards what is left in the pipe, then hangs up.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            lines.push(line);
        }
        (status.code().unwrap_or(-1), lines.join("\n"))
    }

    /// The last `n` log lines received so far that are not TRACE lines (they are consumed), for
    /// failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let lines: Vec<String> = self.lines.try_iter().filter(|l| !l.contains("TRACE")).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Eds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.1 GET over a TCP stream.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// Minimal HTTP/1.1 request without a body.
pub async fn http_request(addr: &str, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Every envelope in the WAL of `data_dir`: (stream_seq, kind byte, payload).
pub fn wal_envelopes(data_dir: &Path) -> Vec<(u64, u8, Vec<u8>)> {
    wal_retained(data_dir, 1)
}

/// The envelopes the WAL of `data_dir` still holds (retention removes segments every destination
/// has passed), from its oldest record: (its oldest LSN, the envelopes).
pub fn wal_tail(data_dir: &Path) -> (u64, Vec<(u64, u8, Vec<u8>)>) {
    let wal = eds_wal::Wal::open_read_only(data_dir.join("wal"), eds_wal::Options::default()).unwrap();
    let oldest = wal.stats().oldest_lsn.max(1);
    drop(wal);
    (oldest, wal_retained(data_dir, oldest))
}

/// The envelopes of the WAL of `data_dir` from LSN `from`.
fn wal_retained(data_dir: &Path, from: u64) -> Vec<(u64, u8, Vec<u8>)> {
    let wal = eds_wal::Wal::open_read_only(data_dir.join("wal"), eds_wal::Options::default()).unwrap();
    let mut r = wal.reader(from).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        let e = eds::record::decode(&rec.data).unwrap();
        let kind = match e.kind {
            eds::record::Kind::Event => 1,
            eds::record::Kind::DeadLetter => 2,
            eds::record::Kind::DeadLetterMarker => 3,
            eds::record::Kind::StreamReset => 4,
        };
        out.push((e.stream_seq, kind, e.payload.to_vec()));
    }
    out
}

/// An UPDATE whose payload does not compress (random hex), about 2.2 KB, timestamped `n`
/// seconds after the epoch (so the file driver gives each its own file).
pub fn bulky_event(n: u64, seed: &mut u64) -> Vec<u8> {
    let mut noise = String::with_capacity(2048);
    for _ in 0..128 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        noise.push_str(&format!("{:016x}", *seed));
    }
    format!(
        r#"{{"operation":"UPDATE","table":"order","key":["k{n}"],"after":{{"id":"k{n}","note":"{noise}"}},"timestamp":{}}}"#,
        n * 1000
    )
    .into_bytes()
}

pub mod events;
pub mod hq;
pub mod hq_session;
pub mod model;
pub mod nats_jwt;
pub mod pg;
pub mod proxy;
pub mod publisher;
pub mod release;
pub mod setup;
pub mod wait;
