//! `eds server`'s supervisor: a killed worker is started again, five failures in a row give up
//! with exit 1, a usage error is not retried, signals reach the worker, and a killed supervisor
//! takes its worker with it.

#![allow(clippy::unwrap_used)]
use crate::common;

use common::{eds_bin, eventually, free_port, Eds, Nats};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `eds server` under its supervisor, on a fixed port (a restarted worker binds it again).
fn supervised(data: &std::path::Path, nats: &Nats, port: u16, extra: &[&str]) -> Eds {
    let mut args: Vec<String> =
        ["server", "-d", data.to_str().unwrap(), "--server", &nats.url(), "--port", &port.to_string(), "-v"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Eds::start_args(&args)
}

/// A supervised server on a free port, once its worker answers: the server, the worker's HTTP
/// address and its pid.
async fn supervised_worker(data: &std::path::Path, nats: &Nats) -> (Eds, String, u32) {
    let port = free_port();
    let eds = supervised(data, nats, port, &[]);
    let addr = format!("127.0.0.1:{port}");
    let pid = eventually("the worker's pid", Duration::from_secs(20), || worker_pid(&addr)).await;
    (eds, addr, pid)
}

/// The pid `/status` names, or `None` while nothing (or nothing whole) answers: a worker
/// being killed or started.
async fn worker_pid(addr: &str) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let s: serde_json::Value = serde_json::from_str(body).ok()?;
        s["pid"].as_u64().map(|p| p as u32)
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose: it holds no lock and runs no code.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_started_again_and_a_stop_reaches_it() {
    let nats = Nats::start().await;
    let _js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let (eds, addr, first) = supervised_worker(data.path(), &nats).await;
    assert_ne!(first, eds.child.id(), "the server answering is the supervisor itself, not a worker");
    assert!(alive(first));

    Command::new("kill").args(["-KILL", &first.to_string()]).status().unwrap();
    let second = eventually("a new worker", Duration::from_secs(30), || async {
        worker_pid(&addr).await.filter(|p| *p != first)
    })
    .await;
    assert!(!alive(first));
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("the worker failed; starting it again") && log.contains("killed by signal 9"), "{log}");
    eventually("the worker to be gone", Duration::from_secs(10), || async { (!alive(second)).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_in_a_row_give_up_with_exit_1() {
    let nats = Nats::start().await;
    let data = tempfile::tempdir().unwrap();
    // A file where the WAL's directory belongs: every worker fails to open the log.
    std::fs::write(data.path().join("wal"), b"not a directory").unwrap();
    let started = Instant::now();
    let out = Command::new(eds_bin())
        .args(["server", "-d", data.path().to_str().unwrap(), "--server", &nats.url(), "--port", "0"])
        .env_remove("PORT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert_eq!(log.matches("worker started").count(), 5, "{log}");
    assert!(log.contains("the worker failed 5 times in a row; giving up"), "{log}");
    // Backoff 1 s, 2 s, 3 s, 4 s between the five runs.
    assert!(started.elapsed() >= Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_exits_2_at_once_with_the_drivers_message() {
    let nats = Nats::start().await;
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(eds_bin())
        .args(["server", "-d", data.path().to_str().unwrap(), "--server", &nats.url(), "--port", "0"])
        .args(["--url", "postgres://u:pw@127.0.0.1:5432/db?start=sideways"])
        .env_remove("PORT")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("start") && log.contains("sideways"), "{log}");
    assert!(!log.contains("worker started"), "a usage error is not retried by a worker: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_takes_its_worker_down() {
    let nats = Nats::start().await;
    let _js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let (eds, _, worker) = supervised_worker(data.path(), &nats).await;
    eds.kill();
    eventually("the orphaned worker to die", Duration::from_secs(10), || async { (!alive(worker)).then_some(()) })
        .await;
    // Its data dir is free again: a new server starts on it.
    let again = Eds::start(data.path(), &nats, &[]);
    assert_eq!(again.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctrl_c_or_a_whole_service_stop_is_one_clean_stop() {
    let nats = Nats::start().await;
    let _js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let args: Vec<String> =
        ["server", "-d", data.path().to_str().unwrap(), "--server", &nats.url(), "--port", &port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    // Ctrl-C at a terminal: SIGINT to the foreground process group.
    let eds = Eds::start_own_group(&args);
    eventually("the worker", Duration::from_secs(20), || worker_pid(&addr)).await;
    eds.signal_group("INT");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("second signal"), "{log}");

    // systemd stopping the service signals every process of it: supervisor and worker at once.
    let eds = Eds::start_args(&args);
    let worker = eventually("the worker", Duration::from_secs(20), || worker_pid(&addr)).await;
    Command::new("kill").args(["-TERM", &worker.to_string()]).status().unwrap();
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("second signal"), "{log}");
}
