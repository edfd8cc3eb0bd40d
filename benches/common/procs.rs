//! Processes the benchmarks run: a private nats-server, `eds server`; CPU time from `/proc` (theirs,
//! this process's, a database server's) and the load average.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed on drop (so a panic leaves nothing running).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
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
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process in clock ticks (`self` for this one).
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|w| w.parse().unwrap_or(0)).collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

pub fn nats_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nats-server (version unknown)".into())
}

pub async fn start_nats(bin: &Path, store: &Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", store.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server");
    let proc = Proc(child);
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while async_nats::connect(url.as_str()).await.is_err() {
        assert!(Instant::now() < deadline, "nats-server did not accept connections within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (proc, url)
}

/// A private nats-server storing under `base/nats`, with the `dbchange` stream: the process, its
/// URL and a JetStream context on it.
pub async fn nats_with_stream(bin: &Path, base: &Path) -> (Proc, String, async_nats::jetstream::Context) {
    let store = base.join("nats");
    std::fs::create_dir_all(&store).unwrap();
    let (proc, url) = start_nats(bin, &store).await;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "dbchange".into(),
        subjects: vec!["dbchange.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    (proc, url, js)
}

/// A running `eds server`, its HTTP address and its log lines.
pub struct Eds {
    pub proc: Proc,
    pub http: String,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Eds {
    /// Start `eds server` on `data_dir` and `nats_url` (dev mode, `--restart`, a free port) with
    /// `extra` flags, and wait for its HTTP address.
    pub fn start(data_dir: &Path, nats_url: &str, extra: &[&str]) -> Eds {
        let args = [
            "server",
            "-d",
            data_dir.to_str().unwrap(),
            "--server",
            nats_url,
            "--restart",
            "--port",
            "0",
            "--no-restart",
        ];
        let mut child = Command::new(env!("CARGO_BIN_EXE_eds"))
            .args(args)
            .args(extra)
            .env_remove("PORT")
            .env_remove("SM_APIKEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting eds");
        let stderr = child.stderr.take().unwrap();
        let proc = Proc(child);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut log = Vec::new();
        let http = loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let addr = line
                        .find("addr=")
                        .filter(|_| line.contains("listening"))
                        .and_then(|at| line[at + 5..].split_whitespace().next())
                        .map(str::to_owned);
                    log.push(line);
                    if let Some(a) = addr {
                        break a;
                    }
                }
                Err(_) => panic!("eds did not report its HTTP address; output:\n{}", log.join("\n")),
            }
        };
        Eds { proc, http, lines, log }
    }

    pub fn pid(&self) -> String {
        self.proc.0.id().to_string()
    }

    /// Log lines so far.
    pub fn log(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        &self.log
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(&self.http, "/status").await;
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// SIGTERM and wait (at most 20 s) for the exit code.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.proc.0.try_wait() {
                return format!("{st}");
            }
            if Instant::now() > deadline {
                return "still running 20 s after SIGTERM (killed)".into();
            }
            std::thread::sleep(Duration::from_millis(20));
            let _ = self.log();
        }
    }
}

/// Minimal HTTP/1.1 GET.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code: u16 = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The 1-minute load average.
pub fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Whether the process `pid` is named (`/proc/<pid>/comm`) one of `names`.
pub fn named(pid: &str, names: &[&str]) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| names.contains(&c.trim()))
}

/// Every process on this machine named one of `names`, in `/proc`'s order.
pub fn pids_named(names: &[&str]) -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && named(pid, names))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU ticks of each of `pids`, by pid.
pub fn ticks_of(pids: &[String]) -> HashMap<String, u64> {
    pids.iter().map(|pid| (pid.clone(), cpu_ticks(pid))).collect()
}

/// CPU ticks by pid of the processes a run's figures count besides this one (a database server's),
/// read at the start and again at the end of the run.
pub type ServerTicks<'a> = &'a dyn Fn() -> HashMap<String, u64>;

/// A point in time with the CPU used so far by this process and by a server's processes.
pub struct Probe<'a> {
    at: Instant,
    own: u64,
    server: HashMap<String, u64>,
    server_ticks: ServerTicks<'a>,
}

impl<'a> Probe<'a> {
    pub fn now(server_ticks: ServerTicks<'a>) -> Probe<'a> {
        Probe { at: Instant::now(), own: cpu_ticks("self"), server: server_ticks(), server_ticks }
    }

    /// (wall, CPU seconds of this process, CPU seconds of the server) since `self`. A server
    /// process that ended meanwhile is not counted; one that started meanwhile counts whole.
    pub fn since(&self, tck: f64) -> (Duration, f64, f64) {
        let end = Probe::now(self.server_ticks);
        let server: u64 = end.server.iter().map(|(pid, t)| t.saturating_sub(*self.server.get(pid).unwrap_or(&0))).sum();
        (end.at - self.at, end.own.saturating_sub(self.own) as f64 / tck, server as f64 / tck)
    }
}
