//! Publish→row latency benchmark: figures, never pass/fail. Run with `cargo bench --bench latency`.
//!
//! A private `nats-server -js` (store on disk), the mock HQ's `order` schema, the PostgreSQL at
//! 127.0.0.1:5432 (database `test`, a schema of the benchmark's own) and `eds server` delivering
//! to it. Events are published at a steady rate, in consecutive windows; each row's arrival is
//! stamped by PostgreSQL itself (a destination-only column `arrived DEFAULT clock_timestamp()`,
//! which eds leaves alone), so publish→row is measured without polling. Baseline in the same run:
//! publish→PubAck, the time JetStream itself takes to store the event.
//!
//! Events are due at the rate and published on 1 ms ticks without waiting for the previous one's
//! PubAck (each is awaited by a task of its own), so high rates (80 % of the maximum) can be
//! offered; a window whose publishing could not keep the rate says so.
//!
//! Knobs: `EDS_BENCH_WINDOWS` (default 10), `EDS_BENCH_WINDOW_SECS` (default 20), `EDS_BENCH_RATE`
//! (events/s, default 100), `EDS_BENCH_QUICK=1` (3 windows of 5 s), `EDS_BENCH_DIR`, `NATS_SERVER`.

#![allow(clippy::unwrap_used)]

use sqlx::Executor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::procs::{nats_server_bin, nats_with_stream, Eds};
use common::stack::{mock_hq, pg_schema, print_env};

const COMPANY: &str = "6287a4154d1a72cc5ce091bb";

fn num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default)
}

fn unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// An INSERT of `order` (the mock HQ's schema, version fff000111) with its own id.
fn insert(id: &str, n: u64) -> Vec<u8> {
    let ms = unix_micros() / 1000;
    serde_json::json!({
        "operation": "INSERT", "id": format!("ev-{id}"), "table": "order", "key": [id],
        "modelVersion": "fff000111", "companyId": COMPANY, "locationId": "1", "timestamp": ms,
        "mvccTimestamp": format!("{ms}000000.0000000000"),
        "after": {"id": id, "name": format!("order {n}"), "updatedDate": "2026-12-03T10:00:00.000Z", "age": n as f64 / 4.0},
    })
    .to_string()
    .into_bytes()
}

/// p50, p99 and max of `v` in milliseconds.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.5), at(0.99), v.last().copied().unwrap_or(f64::NAN))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency bench: run it with `cargo bench --bench latency` (EDS_BENCH_QUICK=1 for a short run)");
        return;
    }
    let parent = std::env::var_os("EDS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&parent).unwrap();
    let tmp = tempfile::Builder::new().prefix("eds-latency-bench-").tempdir_in(&parent).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(tmp.path()));
}

async fn run(base: &Path) {
    let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let windows = num("EDS_BENCH_WINDOWS", if quick { 3.0 } else { 10.0 }) as u64;
    let secs = num("EDS_BENCH_WINDOW_SECS", if quick { 5.0 } else { 20.0 });
    let rate = num("EDS_BENCH_RATE", 100.0);
    let bin = nats_server_bin();
    println!("eds publish→row latency benchmark{}", if quick { " (quick)" } else { "" });
    print_env(base, &bin, " (shared by nats-server, eds, PostgreSQL and this process)");
    let (_nats, url, js) = nats_with_stream(&bin, base).await;
    let (hq, hq_task) = mock_hq().await;

    let schema = format!("eds_latency_{}", std::process::id());
    let pool = pg_schema(&schema).await;
    pool.execute(
        r#"CREATE TABLE "order" (id TEXT PRIMARY KEY, name TEXT, "updatedDate" TIMESTAMPTZ, age DOUBLE PRECISION,
           arrived TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"#,
    )
    .await
    .unwrap();
    let dest = format!("postgres://postgres@127.0.0.1:5432/test?name=pg&options=-c%20search_path%3D{schema}");
    let mut eds = Eds::start(&base.join("eds-data"), &url, &["--api-url", &hq, "--url", &dest]);
    let subject = format!("dbchange.order.INSERT.{COMPANY}.1.PUBLIC.2");

    // Warm-up: the table's catalog and the schema are cached, connections open.
    for i in 0..20 {
        js.publish(subject.clone(), insert(&format!("warm-{i}"), i).into()).await.unwrap().await.unwrap();
    }
    let arrived = |prefix: String| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, f64)> = sqlx::query_as(
                r#"SELECT id, extract(epoch FROM arrived)::float8 * 1e6 FROM "order" WHERE id LIKE $1 || '%'"#,
            )
            .bind(prefix)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrived("warm-".into()).await.len() < 20 {
        assert!(Instant::now() < deadline, "the warm-up rows did not arrive; eds log:\n{}", eds.log().join("\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("  {windows} windows of {secs:.0} s at {rate:.0} events/s; each event an INSERT of its own `order` row");
    println!();
    println!(
        "  {:<8} {:>7} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
        "window", "events", "row p50", "row p99", "row max", "ack p50", "ack p99", "ack max"
    );
    let mut met = 0u64;
    let mut all_rows = Vec::new();
    let mut all_acks = Vec::new();
    for w in 0..windows {
        let count = (rate * secs).round() as u64;
        let mut sent: Vec<(String, i64)> = Vec::with_capacity(count as usize);
        // Events are due at the rate, published on 1 ms ticks (the timer's resolution) without
        // waiting for the previous one's PubAck: each ack is awaited by a task of its own.
        let mut pending = Vec::with_capacity(count as usize);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut k = 0u64;
        while k < count {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate).ceil() as u64).min(count);
            while k < due {
                let id = format!("w{w}-{k}");
                let payload = insert(&id, k);
                let (at, t0) = (unix_micros(), Instant::now());
                let ack = js.publish(subject.clone(), payload.into()).await.unwrap();
                pending.push(tokio::spawn(async move {
                    ack.await.unwrap();
                    t0.elapsed().as_secs_f64() * 1e3
                }));
                sent.push((id, at));
                k += 1;
            }
        }
        let publishing = started.elapsed().as_secs_f64();
        let mut acks = Vec::with_capacity(pending.len());
        for p in pending {
            acks.push(p.await.unwrap());
        }
        let prefix = format!("w{w}-");
        let deadline = Instant::now() + Duration::from_secs(60);
        let rows = loop {
            let rows = arrived(prefix.clone()).await;
            if rows.len() >= sent.len() || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let at: std::collections::HashMap<String, f64> = rows.into_iter().collect();
        let lat: Vec<f64> = sent.iter().filter_map(|(id, t)| at.get(id).map(|a| (a - *t as f64) / 1e3)).collect();
        let missing = sent.len() - lat.len();
        let (p50, p99, max) = spread(lat.clone());
        let (a50, a99, amax) = spread(acks.clone());
        met += u64::from(p99 <= 100.0 && missing == 0);
        let mut note = if missing > 0 { format!("  ({missing} rows missing after 60 s)") } else { String::new() };
        if publishing > secs * 1.05 {
            note.push_str(&format!("  (publishing took {publishing:.1} s: the rate was not reached)"));
        }
        println!(
            "  {:<8} {:>7} | {:>6.1} ms {:>6.1} ms {:>6.1} ms | {:>6.1} ms {:>6.1} ms {:>6.1} ms{note}",
            w + 1,
            sent.len(),
            p50,
            p99,
            max,
            a50,
            a99,
            amax
        );
        all_rows.extend(lat);
        all_acks.extend(acks);
    }
    let (p50, p99, max) = spread(all_rows);
    let (a50, a99, amax) = spread(all_acks);
    println!(
        "  {:<8} {:>7} | {:>6.1} ms {:>6.1} ms {:>6.1} ms | {:>6.1} ms {:>6.1} ms {:>6.1} ms",
        "all", "", p50, p99, max, a50, a99, amax
    );
    println!();
    println!("  windows with publish→row p99 ≤ 100 ms and every row there: {met} of {windows}");
    println!(
        "  row = publish → the row committed in PostgreSQL (its arrival stamped by the server's clock_timestamp())"
    );
    println!("  ack = publish → PubAck (JetStream stored the event): the floor any consumer starts from");
    println!("  eds exit after SIGTERM: {}", eds.stop());
    hq_task.abort();
    pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str()).await.unwrap();
    println!("(figures only; nothing here is asserted on time)");
}
