//! Catch-up after a destination outage while ingest continues: figures, never pass/fail. Run with
//! `cargo bench --bench catchup`.
//!
//! A private `nats-server -js`, the mock HQ's `order` schema, the PostgreSQL at 127.0.0.1:5432
//! (database `test`, a schema of the benchmark's own) reached through a TCP proxy, and `eds server`
//! delivering to it. Events (INSERTs of their own `order` rows) are published at a steady rate the
//! whole time. Two rounds, each: the proxy cuts PostgreSQL off for `EDS_BENCH_OUTAGE_SECS` while
//! publishing goes on (eds stores the events and retries the destination), then lets it through.
//!
//! * round **ingest continues**: publishing goes on after the outage; caught up when every event
//!   published more than a second earlier is a row (the destination is back within a second of
//!   the stream);
//! * round **ingest stopped** (the baseline, same backlog): publishing stops as the outage ends;
//!   caught up when every event published is a row.
//!
//! Printed per round: the backlog at the end of the outage, the time from the end of the outage to
//! the first new row (the drain's retry wait) and to caught up, and the drain's rate over the
//! catch-up. The ratio of the two catch-up times is what concurrent ingest costs; with a drain rate
//! D and a publish rate R, ideal is D/(D−R).
//!
//! Knobs: `EDS_BENCH_RATE` (events/s, default 1000), `EDS_BENCH_OUTAGE_SECS` (default 60),
//! `EDS_BENCH_QUICK=1` (500 events/s, 10 s outages), `EDS_BENCH_DIR`, `NATS_SERVER`.

#![allow(clippy::unwrap_used)]

use common::proxy::Proxy;
use sqlx::{Executor, PgPool};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::procs::{nats_server_bin, nats_with_stream, Eds};
use common::stack::{mock_hq, pg_schema, print_env};

const COMPANY: &str = "6287a4154d1a72cc5ce091bb";

fn num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default)
}

fn insert(id: &str, n: u64) -> Vec<u8> {
    serde_json::json!({
        "operation": "INSERT", "id": format!("ev-{id}"), "table": "order", "key": [id],
        "modelVersion": "fff000111", "companyId": COMPANY, "locationId": "1", "timestamp": 1_796_000_000_000u64 + n,
        "after": {"id": id, "name": format!("order {n}"), "updatedDate": "2026-12-03T10:00:00.000Z", "age": n as f64 / 4.0},
    })
    .to_string()
    .into_bytes()
}

/// A publisher at a steady rate: the time each event (`<prefix><n>`) was acked.
struct Publisher {
    acked: Arc<Mutex<Vec<Instant>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(js: async_nats::jetstream::Context, prefix: String, rate: f64) -> Publisher {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let log = acked.clone();
        let subject = format!("dbchange.order.INSERT.{COMPANY}.1.PUBLIC.2");
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let ack = js.publish(subject.clone(), insert(&format!("{prefix}{n}"), n).into()).await.unwrap();
                ack.await.unwrap();
                log.lock().unwrap().push(Instant::now());
                n += 1;
            }
        });
        Publisher { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Events acked before `t`.
    fn before(&self, t: Instant) -> usize {
        self.acked.lock().unwrap().partition_point(|a| *a < t)
    }

    async fn stop(self) -> usize {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.acked.lock().unwrap().len()
    }
}

async fn rows(pool: &PgPool, prefix: &str) -> usize {
    let n: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM "order" WHERE id LIKE $1 || '%'"#)
        .bind(prefix)
        .fetch_one(pool)
        .await
        .unwrap();
    n as usize
}

struct Round {
    backlog: usize,
    first_row: Duration,
    caught_up: Duration,
    delivered: usize,
}

/// One outage; `continue_ingest`: publishing goes on after it.
async fn round(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    proxy: &Proxy,
    prefix: &str,
    rate: f64,
    outage: Duration,
    continue_ingest: bool,
) -> Round {
    let publisher = Publisher::start(js.clone(), prefix.to_owned(), rate);
    // Steady state first: a few seconds with the destination up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_up(false);
    tokio::time::sleep(outage).await;
    let before = rows(pool, prefix).await;
    let published = publisher.count();
    let (publisher, target) =
        if continue_ingest { (Some(publisher), None) } else { (None, Some(publisher.stop().await)) };
    proxy.set_up(true);
    let restored = Instant::now();
    let backlog = target.unwrap_or(published).saturating_sub(before);
    let mut first_row = None;
    let deadline = restored + Duration::from_secs(600);
    let caught_up = loop {
        let now = Instant::now();
        let have = rows(pool, prefix).await;
        if first_row.is_none() && have > before {
            first_row = Some(now - restored);
        }
        let want = match (&publisher, target) {
            (Some(p), _) => p.before(now - Duration::from_secs(1)),
            (None, Some(t)) => t,
            (None, None) => unreachable!(),
        };
        if have >= want && first_row.is_some() {
            break now - restored;
        }
        assert!(now < deadline, "not caught up 600 s after the outage ({have} of {want} rows)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delivered = rows(pool, prefix).await - before;
    if let Some(p) = publisher {
        p.stop().await;
    }
    Round { backlog, first_row: first_row.unwrap_or_default(), caught_up, delivered }
}

fn main() {
    common::runs::main("catchup", async |base: &Path| {
        run(base).await;
        Ok(())
    });
}

async fn run(base: &Path) {
    let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let rate = num("EDS_BENCH_RATE", if quick { 500.0 } else { 1000.0 });
    let outage = Duration::from_secs_f64(num("EDS_BENCH_OUTAGE_SECS", if quick { 10.0 } else { 60.0 }));
    let bin = nats_server_bin();
    println!("eds catch-up after a destination outage{}", if quick { " (quick)" } else { "" });
    print_env(base, &bin, " (shared by nats-server, eds, PostgreSQL and this process)");
    let (_nats, url, js) = nats_with_stream(&bin, base).await;
    let (hq, hq_task) = mock_hq().await;

    let schema = format!("eds_catchup_{}", std::process::id());
    let pool = pg_schema(&schema).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let dest = format!("postgres://postgres@{}/test?name=pg&options=-c%20search_path%3D{schema}", proxy.addr());
    let eds = Eds::start(&base.join("eds-data"), &url, &["--api-url", &hq, "--url", &dest]);

    println!(
        "  {rate:.0} events/s published throughout; PostgreSQL cut off (connections refused) for {:.0} s per round",
        outage.as_secs_f64()
    );
    println!();
    println!("  {:<18} {:>8} | {:>10} {:>11} | {:>12}", "round", "backlog", "first row", "caught up", "drain ev/s");
    let mut results = Vec::new();
    for (name, prefix, continue_ingest) in [("ingest continues", "a", true), ("ingest stopped", "b", false)] {
        let r = round(&js, &pool, &proxy, prefix, rate, outage, continue_ingest).await;
        let drain_secs = (r.caught_up - r.first_row).as_secs_f64().max(1e-3);
        println!(
            "  {:<18} {:>8} | {:>8.2} s {:>9.2} s | {:>12.0}",
            name,
            r.backlog,
            r.first_row.as_secs_f64(),
            r.caught_up.as_secs_f64(),
            r.delivered as f64 / drain_secs
        );
        results.push(r);
    }
    let (a, b) = (&results[0], &results[1]);
    let drain_rate = b.delivered as f64 / (b.caught_up - b.first_row).as_secs_f64().max(1e-3);
    let ideal = if drain_rate > rate { drain_rate / (drain_rate - rate) } else { f64::INFINITY };
    println!();
    println!(
        "  catch-up with ingest continuing / with ingest stopped: {:.2}× (from the end of the outage; ideal for a drain of {:.0} ev/s against {:.0} ev/s published: {:.2}×)",
        a.caught_up.as_secs_f64() / b.caught_up.as_secs_f64(),
        drain_rate,
        rate,
        ideal
    );
    println!(
        "  the same without the retry wait (first row → caught up): {:.2}×",
        (a.caught_up - a.first_row).as_secs_f64() / (b.caught_up - b.first_row).as_secs_f64().max(1e-3)
    );
    println!(
        "  first row = the end of the outage → the first row of the backlog committed: the drain's retry wait \
         (capped exponential backoff, at most 10 s plus jitter), so it varies from run to run"
    );
    println!("  eds exit after SIGTERM: {}", eds.stop());
    hq_task.abort();
    pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str()).await.unwrap();
    println!("(figures only; nothing here is asserted on time)");
}
