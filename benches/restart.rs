//! Restart-to-serving with a large write-ahead log: figures, never pass/fail. Run with
//! `cargo bench --bench restart`.
//!
//! `eds server` (dev mode, a private `nats-server -js`, no destination) is started on a data dir
//! whose WAL is empty — the baseline — and then, after the benchmark fills the same WAL with
//! `EDS_BENCH_RECOVERY_MIB` of the demo traffic's events (wrapped as ingest wraps them, kept by a
//! cursor that never moves), started again. Each start is timed from spawning the process to: its
//! HTTP address logged (the WAL is open by then), `/` answering 200, and `/status` showing ingest
//! `running` (consuming the stream). Median of `EDS_BENCH_STARTS` starts each, SIGTERM between
//! them; the page cache is warm for both (a machine that just booted reads the tail segment from
//! disk).
//!
//! The events' stream sequences in the filled WAL are the benchmark's own, not the NATS stream's,
//! so the filled starts pass `--accept-stream-reset` with the last of them (the stream here is new).
//!
//! Knobs: `EDS_BENCH_RECOVERY_MIB` (default 2048), `EDS_BENCH_STARTS` (default 5),
//! `EDS_BENCH_QUICK=1` (128 MiB, 3 starts), `EDS_BENCH_DIR`, `NATS_SERVER`.

#![allow(clippy::unwrap_used)]

use eds_wal::{Durability, Options, Wal};
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::procs::{http_get, nats_server_bin, nats_with_stream, Eds};
use common::stack::print_env;

fn num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

struct Start {
    listening: Duration,
    live: Duration,
    running: Duration,
}

async fn start_once(data: &Path, nats: &str, extra: &[&str]) -> Start {
    let t0 = Instant::now();
    let eds = Eds::start(data, nats, extra);
    let listening = t0.elapsed();
    let deadline = t0 + Duration::from_secs(600);
    let mut live = None;
    let running = loop {
        if live.is_none() && http_get(&eds.http, "/").await.0 == 200 {
            live = Some(t0.elapsed());
        }
        let (code, body) = http_get(&eds.http, "/status").await;
        if code == 200 {
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            if status["ingest"]["state"] == "running" {
                break t0.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "eds did not start consuming within 600 s: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let stopped = eds.stop();
    assert!(stopped.contains("exit status: 0"), "eds exit after SIGTERM: {stopped}");
    Start { listening, live: live.unwrap_or(running), running }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn starts(n: usize, data: &Path, nats: &str, extra: &[&str]) -> Start {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(start_once(data, nats, extra).await);
    }
    Start {
        listening: median(all.iter().map(|s| s.listening).collect()),
        live: median(all.iter().map(|s| s.live).collect()),
        running: median(all.iter().map(|s| s.running).collect()),
    }
}

fn main() {
    common::runs::main("restart", async |base: &Path| {
        run(base).await;
        Ok(())
    });
}

async fn run(base: &Path) {
    let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mib = num("EDS_BENCH_RECOVERY_MIB", if quick { 128.0 } else { 2048.0 }) as u64;
    let n = num("EDS_BENCH_STARTS", if quick { 3.0 } else { 5.0 }).max(1.0) as usize;
    let bin = nats_server_bin();
    println!("eds restart-to-serving benchmark{}", if quick { " (quick)" } else { "" });
    print_env(base, &bin, "");
    let (_nats, url, _js) = nats_with_stream(&bin, base).await;
    let data = base.join("eds-data");
    let budget = format!("{}MiB", (mib * 2).max(1024));
    let empty = starts(n, &data, &url, &["--wal-max-bytes", &budget]).await;

    // Fill the same WAL while eds is stopped.
    let wal_dir = data.join("wal");
    let filled = Instant::now();
    let (last_seq, events, bytes) = {
        let wal_dir = wal_dir.clone();
        tokio::task::spawn_blocking(move || {
            let opts = Options { durability: Durability::Never, ..Options::default() };
            let wal = Wal::open(&wal_dir, opts).unwrap();
            eds::drain::ensure_cursor(&wal, common::backlog::HOLD_CURSOR, eds::drain::Start::Oldest).unwrap();
            let (mut events, mut payload, mut last_seq) = (0u64, 0u64, 0u64);
            let chunk = 200_000;
            let mut seed = 1;
            while dir_bytes(&wal_dir) < mib << 20 {
                let (_, b) = common::backlog::fill_wal(&wal, seed, chunk).unwrap();
                payload += b;
                events += chunk;
                last_seq = chunk;
                seed += 1;
            }
            wal.sync().unwrap();
            wal.close().unwrap();
            (last_seq, events, payload)
        })
        .await
        .unwrap()
    };
    let on_disk = dir_bytes(&wal_dir);
    println!(
        "  filled the WAL with {events} events ({:.0} MiB of JSON, {:.0} MiB on disk) in {:.0} s",
        bytes as f64 / 1048576.0,
        on_disk as f64 / 1048576.0,
        filled.elapsed().as_secs_f64()
    );
    let reset = last_seq.to_string();
    let full = starts(n, &data, &url, &["--wal-max-bytes", &budget, "--accept-stream-reset", &reset]).await;

    println!();
    println!("  median of {n} starts, from spawning `eds server`:");
    println!("  {:<22} {:>12} {:>12} {:>12}", "WAL", "listening", "/ is 200", "ingest running");
    let filled_name = format!("{:.0} MiB", on_disk as f64 / 1048576.0);
    for (name, s) in [("empty (baseline)", &empty), (filled_name.as_str(), &full)] {
        println!(
            "  {:<22} {:>9.0} ms {:>9.0} ms {:>12.0} ms",
            name,
            s.listening.as_secs_f64() * 1e3,
            s.live.as_secs_f64() * 1e3,
            s.running.as_secs_f64() * 1e3
        );
    }
    println!(
        "  ratio (filled / empty): listening {:.2}×, / is 200 {:.2}×, ingest running {:.2}×",
        full.listening.as_secs_f64() / empty.listening.as_secs_f64(),
        full.live.as_secs_f64() / empty.live.as_secs_f64(),
        full.running.as_secs_f64() / empty.running.as_secs_f64()
    );
    println!("(figures only; nothing here is asserted on time)");
}
