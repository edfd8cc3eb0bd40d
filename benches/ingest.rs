//! Ingest benchmark: figures, never pass/fail. Run with `cargo bench --bench ingest`.
//!
//! Starts its own `nats-server -js` (store on disk), creates the `dbchange` stream and publishes
//! realistic ~800-byte UPDATE events of `order` to it, then in the same run:
//!
//! a) throughput, draining the whole stream from its start: a bare async-nats pull consumer (same
//!    consumer configuration and pull settings as eds; acks each message, stores nothing) beside
//!    `eds server` with its default durability (every batch fsynced before its acks), each with
//!    its own durable consumer so each sees every event. eds is timed from process start until
//!    `/status` shows the last published stream sequence; CPU per event from /proc (this process
//!    for the bare consumer, the eds child for eds, and nats-server for both);
//! b) latency with eds caught up: events published at a steady rate, publish→ack per event as seen
//!    by a core NATS subscriber of `$JS.ACK.>` (acks reach it as they reach the server), for eds
//!    and, as a floor, for the bare consumer (which acks on receipt) running alongside.
//!
//! Files go to a temporary directory under `target/` (disk-backed, so fsync is real; `/tmp` may be
//! tmpfs). Knobs: `EDS_BENCH_QUICK=1` shrinks everything (50,000 events, 3 s of latency);
//! `EDS_BENCH_EVENTS` (default 500,000), `EDS_BENCH_LATENCY_SECS` (default 10),
//! `EDS_BENCH_DIR` (parent directory to use), `NATS_SERVER` (the nats-server binary).

#![allow(clippy::unwrap_used)]

use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, Message};
use bytes::Bytes;
use eds::ingest::consumer::{self as eds_consumer, ConsumerSettings};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::procs::{clk_tck, cpu_ticks, http_get, nats_server_bin, nats_version, start_nats, Eds};
use common::{describe_fs, hex24, iso, mix, STATUSES};

const COMPANY: &str = "6287a4154d1a72cc5ce091bb";
const LOCATION: &str = "6287a4154d1a72cc5ce091bc";
/// The durable consumer eds creates in dev mode.
const EDS_DURABLE: &str = "eds-dev";
/// The bare consumer's durable name.
const BARE_DURABLE: &str = "bench-bare";
/// Publish acks awaited in windows of this many.
const PUBLISH_WINDOW: usize = 4096;
/// Distinct events; event `i` is `pool[i % len]`, so every WAL frame holds distinct events.
const POOL: usize = 64 * 1024;

struct Config {
    quick: bool,
    events: u64,
    latency_secs: f64,
    rate: u64,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let num =
            |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
        Config {
            quick,
            events: num("EDS_BENCH_EVENTS", if quick { 50_000.0 } else { 500_000.0 }) as u64,
            latency_secs: num("EDS_BENCH_LATENCY_SECS", if quick { 3.0 } else { 10.0 }),
            rate: 100,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events: UPDATEs of Shopmonkey `order` rows (field names as in `eds::sample::order_event`, whose
// UPDATEs are ~1.2 KB; these carry fewer row fields to land at ~800 bytes), with ids, amounts and
// timestamps varying per event so the WAL's compression sees realistic entropy.

fn order_row(order: u64, version: u64, ts_ms: u64) -> String {
    let total = 5_000 + mix(order * 31 + version) % 250_000;
    format!(
        concat!(
            r#"{{"id":"{id}","number":{number},"status":"{status}","#,
            r#""customerId":"{customer}","totalCostCents":{total},"laborCents":{labor},"#,
            r#""paid":{paid},"updatedDate":"{updated}"}}"#
        ),
        id = hex24(order),
        number = 10_000 + order,
        status = STATUSES[(version % 4) as usize],
        customer = hex24(order ^ 0xC0FFEE),
        total = total,
        labor = total / 3,
        paid = version % 4 == 3,
        updated = iso(ts_ms),
    )
}

fn update_event(i: u64) -> Bytes {
    // A shop edits a few thousand open orders; each event is one version step of one of them.
    let order = mix(i) % 5_000;
    let version = i / 5_000 + mix(i ^ 0xBEEF) % 3;
    let ts_ms = 1_795_749_176_000 + i * 173;
    format!(
        concat!(
            r#"{{"operation":"UPDATE","id":"{eid:016x}","table":"order","key":["gcp-us-west1","{key}"],"#,
            r#""modelVersion":"{model}","companyId":"{company}","locationId":"{location}","#,
            r#""before":{before},"after":{after},"#,
            r#""diff":["status","totalCostCents","laborCents","paid","updatedDate"],"#,
            r#""timestamp":{ts},"mvccTimestamp":"{ts}{ns:06}.0000000000"}}"#
        ),
        eid = mix(i ^ 0xE1E1),
        key = hex24(order),
        model = eds::sample::ORDER_MODEL_VERSION,
        company = COMPANY,
        location = LOCATION,
        before = order_row(order, version, ts_ms - 60_000),
        after = order_row(order, version + 1, ts_ms),
        ts = ts_ms,
        ns = mix(i) % 1_000_000,
    )
    .into()
}

fn subject() -> String {
    format!("dbchange.order.UPDATE.{COMPANY}.{LOCATION}.PUBLIC.2")
}

/// The consumer settings eds derives from its default flags in dev mode (`--restart`).
fn settings(durable: &str) -> ConsumerSettings {
    ConsumerSettings {
        durable: durable.into(),
        company_ids: Vec::new(),
        ack_wait: Duration::from_secs(300),
        max_ack_pending: 25_000,
        max_request_batch: 4096,
        inactive_threshold: Duration::from_secs(72 * 3600),
        restart: true,
        start_after_import: None,
    }
}

/// `name_sum` and `name_count` of a Prometheus histogram from `/metrics` text.
fn histogram(metrics: &str, name: &str) -> (f64, f64) {
    let get = |suffix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{suffix} ")).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    (get("_sum"), get("_count"))
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// One consumer's drain of the whole stream.
struct Drain {
    events: u64,
    wall: Duration,
    /// CPU seconds of the consumer's process.
    cpu: f64,
    /// CPU seconds of nats-server meanwhile.
    nats_cpu: f64,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }

    fn row(&self, label: &str) -> String {
        let per = |cpu: f64| cpu * 1e6 / self.events as f64;
        format!(
            "   {label:<26} {:>9} {:>9.2} s {:>12.0} {:>14.2} {:>18.2}",
            self.events,
            self.wall.as_secs_f64(),
            self.rate(),
            per(self.cpu),
            per(self.nats_cpu)
        )
    }
}

/// Publish `n` events with the publish acks awaited in a sliding window; returns the last
/// stream sequence.
async fn publish_all(js: &jetstream::Context, pool: &[Bytes], n: u64) -> u64 {
    let subject = subject();
    let mut window = VecDeque::with_capacity(PUBLISH_WINDOW);
    let mut last = 0;
    for i in 0..n {
        let ack = js.publish(subject.clone(), pool[i as usize % pool.len()].clone()).await.unwrap();
        window.push_back(ack);
        if window.len() >= PUBLISH_WINDOW {
            last = window.pop_front().unwrap().await.unwrap().sequence;
        }
    }
    while let Some(ack) = window.pop_front() {
        last = ack.await.unwrap().sequence;
    }
    last
}

/// a) The bare consumer: pull, ack, store nothing; timed until the server's ack floor is the
/// last sequence. Returns the message stream so it can keep acking during the latency run.
async fn bare_drain(
    client: &async_nats::Client,
    js: &jetstream::Context,
    last_seq: u64,
    nats_pid: &str,
    tck: f64,
) -> (Drain, PullConsumer, async_nats::jetstream::consumer::pull::Stream) {
    let s = settings(BARE_DURABLE);
    let (cpu0, nats0, start) = (cpu_ticks("self"), cpu_ticks(nats_pid), Instant::now());
    let stream = js.get_stream(eds_consumer::STREAM).await.unwrap();
    let mut consumer: PullConsumer =
        stream.create_consumer(eds_consumer::config(&s, DeliverPolicy::All)).await.unwrap();
    // The plainest fast consumer: a continuous pull stream with the same batch size eds asks for.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(s.max_request_batch as usize)
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .unwrap();
    let mut events = 0u64;
    let mut top = 0u64;
    while top < last_seq {
        let m: Message = messages.next().await.expect("the pull stream ended").expect("pull error");
        top = top.max(m.info().map(|i| i.stream_sequence).unwrap_or(0));
        m.ack().await.unwrap();
        events += 1;
    }
    client.flush().await.unwrap();
    loop {
        let info = consumer.info().await.unwrap();
        if info.ack_floor.stream_sequence >= last_seq && info.num_ack_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wall = start.elapsed();
    let d = Drain {
        events,
        wall,
        cpu: (cpu_ticks("self") - cpu0) as f64 / tck,
        nats_cpu: (cpu_ticks(nats_pid) - nats0) as f64 / tck,
    };
    (d, consumer, messages)
}

/// WAL figures of a running eds.
struct WalFigures {
    records: u64,
    fsyncs: u64,
    /// (sum s, count) of the append (write) and append→durable histograms.
    append: (f64, f64),
    durable: (f64, f64),
}

async fn wal_figures(eds: &Eds) -> WalFigures {
    let st = eds.status().await;
    let (_, metrics) = http_get(&eds.http, "/metrics").await;
    WalFigures {
        records: st["wal"]["records_appended"].as_u64().unwrap_or(0),
        fsyncs: st["wal"]["fsyncs"].as_u64().unwrap_or(0),
        append: histogram(&metrics, "eds_wal_append_duration_seconds"),
        durable: histogram(&metrics, "eds_wal_fsync_duration_seconds"),
    }
}

impl WalFigures {
    fn since(&self, before: &WalFigures) -> WalFigures {
        WalFigures {
            records: self.records - before.records,
            fsyncs: self.fsyncs - before.fsyncs,
            append: (self.append.0 - before.append.0, self.append.1 - before.append.1),
            durable: (self.durable.0 - before.durable.0, self.durable.1 - before.durable.1),
        }
    }

    fn describe(&self) -> String {
        let avg_ms = |(sum, n): (f64, f64)| if n > 0.0 { sum * 1e3 / n } else { 0.0 };
        format!(
            "{} records in {} batches, {} fsyncs ({:.0} records/fsync); per batch: write {:.2} ms, \
             write→durable {:.2} ms (total {:.2} s + {:.2} s)",
            self.records,
            self.append.1,
            self.fsyncs,
            self.records as f64 / self.fsyncs.max(1) as f64,
            avg_ms(self.append),
            avg_ms(self.durable),
            self.append.0,
            self.durable.0,
        )
    }
}

/// Acks seen on `$JS.ACK.>`: (consumer, stream sequence, when).
type AckLog = Arc<Mutex<Vec<(String, u64, Instant)>>>;

/// Consumer and stream sequence of an ack subject, in either form the server uses:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` or, with a domain and
/// account hash, `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.…`.
fn parse_ack(subject: &str) -> Option<(String, u64)> {
    let t: Vec<&str> = subject.split('.').collect();
    let base = match t.len() {
        9 => 2,
        n if n >= 11 => 4,
        _ => return None,
    };
    Some((t.get(base + 1)?.to_string(), t.get(base + 3)?.parse().ok()?))
}

fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no acks observed".into();
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:>6} {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>9.2} ms",
        v.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*v.last().unwrap()),
        ms(v.iter().sum::<Duration>() / v.len() as u32)
    )
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // minutes of NATS traffic have no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest bench: run it with `cargo bench --bench ingest` (EDS_BENCH_QUICK=1 for a short run)");
        return;
    }
    let cfg = Config::from_env();
    let parent = std::env::var_os("EDS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&parent).unwrap();
    let tmp = tempfile::Builder::new().prefix("eds-ingest-bench-").tempdir_in(&parent).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(&cfg, tmp.path()));
}

async fn run(cfg: &Config, base: &Path) {
    let bin = nats_server_bin();
    let tck = clk_tck();
    println!("eds ingest benchmark{}", if cfg.quick { " (quick)" } else { "" });
    println!(
        "  env:    dir {} — {}; {}; {} cpus available (shared by nats-server, eds and this process)",
        base.display(),
        describe_fs(base),
        nats_version(&bin),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );

    let store = base.join("nats");
    std::fs::create_dir_all(&store).unwrap();
    let (nats, url) = start_nats(&bin, &store).await;
    let nats_pid = nats.0.id().to_string();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: eds_consumer::STREAM.into(),
        subjects: vec!["dbchange.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    let pool: Vec<Bytes> = (0..POOL.min(cfg.events.max(1) as usize) as u64).map(update_event).collect();
    let avg = pool.iter().map(|e| e.len()).sum::<usize>() as f64 / pool.len() as f64;
    println!(
        "  events: {} UPDATE events of `order` ({} distinct, {avg:.0} bytes on average), subject {}",
        cfg.events,
        pool.len(),
        subject()
    );
    println!("  sample: {}", String::from_utf8_lossy(&pool[1]));
    for e in &pool {
        eds::ingest::validate::check(e).expect("eds would dead-letter this benchmark event");
    }
    let started = Instant::now();
    let last_seq = publish_all(&js, &pool, cfg.events).await;
    let took = started.elapsed();
    assert_eq!(last_seq, cfg.events, "a fresh stream numbers its messages from 1");
    println!(
        "  publish: {:.2} s, {:.0} events/s (publish acks awaited in a window of {PUBLISH_WINDOW}); last stream sequence {last_seq}",
        took.as_secs_f64(),
        cfg.events as f64 / took.as_secs_f64()
    );

    // a) throughput.
    println!();
    println!("a) throughput: each consumer drains the whole stream from its start (own durable consumer, same config:");
    println!("   explicit ack, MaxAckPending 25000, pulls of 4096)");
    println!(
        "   {:<26} {:>9} {:>11} {:>12} {:>14} {:>18}",
        "", "events", "wall", "events/s", "cpu µs/event", "nats cpu µs/event"
    );
    let (bare, bare_consumer, mut bare_messages) = bare_drain(&client, &js, last_seq, &nats_pid, tck).await;
    println!("{}", bare.row("bare consumer (ack only)"));

    let data = base.join("eds-data");
    let nats0 = cpu_ticks(&nats_pid);
    let started = Instant::now();
    let mut eds = Eds::start(&data, &url, &[]);
    let eds_pid = eds.pid();
    let mut polls = 0u64;
    let caught_up = loop {
        let st = eds.status().await;
        polls += 1;
        if st["ingest"]["stream_sequence"].as_u64().unwrap_or(0) >= last_seq {
            break Some(st);
        }
        if started.elapsed() > Duration::from_secs(600) {
            break None;
        }
        if eds.proc.0.try_wait().ok().flatten().is_some() {
            panic!("eds exited during ingest; log:\n{}", eds.log().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    let eds_cpu = cpu_ticks(&eds_pid) as f64 / tck;
    let nats_cpu = (cpu_ticks(&nats_pid) - nats0) as f64 / tck;
    let Some(status) = caught_up else {
        let st = eds.status().await;
        println!("   eds did not store stream sequence {last_seq} within 600 s; /status: {st}");
        println!("   log:\n{}", eds.log().join("\n"));
        return;
    };
    let drain = Drain { events: status["ingest"]["received"].as_u64().unwrap_or(0), wall, cpu: eds_cpu, nats_cpu };
    println!("{}", drain.row("eds server (fsync, ack)"));
    println!(
        "   eds/bare: {:.2} (goal ≥ 0.8); eds timed from process start until /status showed stream sequence \
         {last_seq} ({polls} polls, every 20 ms)",
        drain.rate() / bare.rate()
    );
    let wal_after_drain = wal_figures(&eds).await;
    println!("   eds WAL: {}", wal_after_drain.describe());

    // b) latency.
    println!();
    println!(
        "b) latency: {} events/s for {:.0} s with eds caught up; publish→ack of each event, from just before the",
        cfg.rate, cfg.latency_secs
    );
    println!("   publish to the ack's arrival at a core NATS subscriber of $JS.ACK.> (plus one server hop)");
    let observer = async_nats::connect(url.as_str()).await.unwrap();
    let mut acks_sub = observer.subscribe("$JS.ACK.>").await.unwrap();
    observer.flush().await.unwrap();
    let acks: AckLog = Arc::default();
    let watcher = {
        let acks = acks.clone();
        tokio::spawn(async move {
            while let Some(m) = acks_sub.next().await {
                let at = Instant::now();
                if let Some((consumer, seq)) = parse_ack(m.subject.as_str()) {
                    acks.lock().unwrap().push((consumer, seq, at));
                }
            }
        })
    };
    // The bare consumer keeps acking on receipt, alongside eds: the floor.
    let bare_task = tokio::spawn(async move {
        while let Some(Ok(m)) = bare_messages.next().await {
            let _ = m.ack().await;
        }
    });
    let wal_before = wal_figures(&eds).await;
    let subject = subject();
    let count = (cfg.rate as f64 * cfg.latency_secs).round() as u64;
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(count as usize);
    let mut puback: Vec<Duration> = Vec::with_capacity(count as usize);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cfg.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0..count {
        tick.tick().await;
        let payload = update_event(cfg.events + k);
        let t0 = Instant::now();
        let ack = js.publish(subject.clone(), payload).await.unwrap().await.unwrap();
        puback.push(t0.elapsed());
        sent.push((ack.sequence, t0));
    }
    let final_seq = sent.last().map(|s| s.0).unwrap_or(last_seq);
    // Wait (at most 10 s) until both consumers' acks of every event were seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = acks.lock().unwrap().iter().filter(|(_, s, _)| *s > last_seq).count();
        if seen >= 2 * sent.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wal_latency = wal_figures(&eds).await.since(&wal_before);
    let log = std::mem::take(&mut *acks.lock().unwrap());
    watcher.abort();
    bare_task.abort();
    let mut first: HashMap<(String, u64), Instant> = HashMap::new();
    for (consumer, seq, at) in log {
        first.entry((consumer, seq)).or_insert(at);
    }
    let latencies = |consumer: &str| -> Vec<Duration> {
        sent.iter().filter_map(|(seq, t0)| first.get(&(consumer.to_owned(), *seq)).map(|at| *at - *t0)).collect()
    };
    println!("   {:<38} {:>6} {:>12} {:>12} {:>12} {:>12}", "", "events", "p50", "p99", "max", "mean");
    println!("   {:<38} {}", "publish→PubAck (stored by JetStream)", percentiles(puback));
    println!("   {:<38} {}", "publish→ack, bare consumer (floor)", percentiles(latencies(BARE_DURABLE)));
    println!("   {:<38} {}", "publish→ack, eds (after fsync)", percentiles(latencies(EDS_DURABLE)));
    println!("   eds WAL meanwhile: {}", wal_latency.describe());
    let st = eds.status().await;
    let stored = st["ingest"]["stream_sequence"].as_u64().unwrap_or(0);
    if stored < final_seq {
        println!("   note: eds stored up to stream sequence {stored} of {final_seq}");
    }

    let exit = eds.stop();
    println!();
    println!("eds exit after SIGTERM: {exit}");
    drop(bare_consumer);
    drop(nats);
    println!("(figures only; nothing here is asserted on time)");
}
