//! The fault campaign (issue 16, "Proof"): the durability promise — every event NATS acked to
//! the publisher reaches the destination, exactly as the stream ordered it — under the faults a
//! gateway meets: eds SIGKILLed again and again, NATS restarted and frozen, PostgreSQL crashed
//! mid-batch, the disk full, and an outage of the destination longer than the stream keeps
//! messages. Each run checks the end state the same way: the WAL holds every acked event once in
//! stream order and `eds wal verify` is clean, PostgreSQL's tables equal a model computed from the
//! published events, and nothing is in gaps.jsonl or a dead-letter log.
//!
//! CI runs the short mode. `scripts/faults.sh --long` (`EDS_FAULTS_LONG=1`) scales it up;
//! `EDS_FAULTS_ROUNDS`, `EDS_FAULTS_EVENTS` and `EDS_FAULTS_SEED` set the SIGKILL loop's size and
//! seed. On failure the seed is printed and the data dir copied to /tmp for inspection.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::Ev;
use common::model::{assert_table, expected_state};
use common::pg::{Cluster, Schema};
use common::publisher::{self, rng, Acked};
use common::setup::Hq;
use common::wait::{destination, status, until};
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn long() -> bool {
    std::env::var("EDS_FAULTS_LONG").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_or(name: &str, short: u64, long_mode: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) if long() => long_mode,
        Err(_) => short,
    }
}

fn seed() -> u64 {
    match std::env::var("EDS_FAULTS_SEED") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("EDS_FAULTS_SEED={v:?} is not a whole number")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1,
    }
}

/// On a failing test: says the seed and copies the data dir to /tmp (read it with `eds wal …`).
struct Evidence {
    test: &'static str,
    seed: u64,
    data: PathBuf,
}

impl Drop for Evidence {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let to = PathBuf::from(format!("/tmp/eds-faults-{}-{}", self.test, self.seed));
        let copied = Command::new("cp").arg("-a").arg(&self.data).arg(&to).status().is_ok_and(|s| s.success());
        eprintln!(
            "FAULT CAMPAIGN FAILED: {} with EDS_FAULTS_SEED={}; data dir {}",
            self.test,
            self.seed,
            if copied { format!("copied to {}", to.display()) } else { "could not be copied".into() }
        );
    }
}

/// eds's arguments for the campaign: the mock HQ, `--restart`, one destination named `pg`.
fn eds_args(hq: &Hq, url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        vec!["--restart".into(), "--api-url".into(), hq.url.clone(), "--url".into(), url.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `eds server` on `data`; `EDS_FAULTS_BIN` runs another build of eds (to compare builds).
fn start_eds(data: &Path, nats: &Nats, args: &[String]) -> Eds {
    let mut all: Vec<String> = ["server", "-d", data.to_str().unwrap(), "--server", &nats.url(), "--port", "0", "-v"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // The worker itself, not a supervisor: SIGKILL must hit the process that holds the messages.
    all.push("--no-restart".into());
    all.extend(args.iter().cloned());
    match std::env::var("EDS_FAULTS_BIN") {
        Ok(program) => Eds::start_program(&program, &all, &[]),
        Err(_) => Eds::start_args(&all),
    }
}

/// Run `eds <args> -d <data>`; its exit code and output.
fn eds_cli(data: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(eds_bin()).args(args).arg("-d").arg(data).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Where the destination's rows are read back.
enum Target<'a> {
    Shared(&'a Schema),
    Private(&'a Cluster),
}

impl Target<'_> {
    async fn rows(&self, table: &str) -> common::model::Rows {
        match self {
            Target::Shared(s) => s.rows(table).await,
            Target::Private(c) => c.rows(table).await,
        }
    }
}

/// The end state, with eds still running: everything acked stored and delivered, no gap, no dead
/// letter; then eds stops cleanly and the WAL, the dead-letter logs and the tables are checked.
async fn check_end_state(eds: Eds, data: &Path, events: &[Ev], acked: &Acked, target: Target<'_>, timeout: Duration) {
    let ordered = acked.in_stream_order(events);
    let last = ordered.last().map_or(0, |(s, _)| *s);
    let lsn = until(&eds, &format!("stream sequence {last} stored"), timeout, || async {
        let s = status(&eds).await;
        (s["ingest"]["stream_sequence"].as_u64().unwrap_or(0) >= last)
            .then(|| s["wal"]["durable_lsn"].as_u64().unwrap())
    })
    .await;
    let s = until(&eds, &format!("destination pg delivered through LSN {lsn}"), timeout, || async {
        let s = status(&eds).await;
        (destination(&s, "pg")["cursor"].as_u64().unwrap_or(0) >= lsn).then_some(s)
    })
    .await;
    assert_eq!(s["ingest"]["gaps"], serde_json::json!([]), "gaps recorded: {s}");
    assert_eq!(s["ingest"]["dead_lettered"].as_u64(), Some(0), "dead letters: {s}");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "eds did not stop cleanly; log tail:\n{}", tail(&log, 40));

    // The WAL: every acked event once, in stream order, nothing else — of what it still holds:
    // retention removes the segments every destination has passed (the long mode's million events
    // fill several), and the table check below covers those events.
    let (oldest, envs) = wal_tail(data);
    let odd: Vec<(u64, u8)> = envs.iter().filter(|e| e.1 != 1).map(|e| (e.0, e.1)).take(10).collect();
    assert!(odd.is_empty(), "records other than events in the WAL (seq, kind): {odd:?}");
    let stored: Vec<u64> = envs.iter().map(|e| e.0).collect();
    let mut want: Vec<u64> = ordered.iter().map(|(s, _)| *s).collect();
    if oldest > 1 {
        // Trimmed: what is left is the tail of the acked events.
        want.drain(..want.len().saturating_sub(stored.len()));
    }
    if stored != want {
        let missing: Vec<u64> = want.iter().filter(|s| stored.binary_search(s).is_err()).take(20).copied().collect();
        panic!(
            "the WAL does not hold exactly the acked events in stream order: {} stored from LSN {oldest}, {} acked; first missing: {missing:?}; strictly increasing: {}",
            stored.len(),
            want.len(),
            stored.windows(2).all(|w| w[0] < w[1])
        );
    }
    let (code, out) = eds_cli(data, &["wal", "verify"]);
    assert_eq!(code, 0, "eds wal verify: {out}");
    for args in [&["wal", "dlq", "--json"][..], &["wal", "dlq", "--json", "--destination", "pg"]] {
        let (code, out) = eds_cli(data, args);
        assert_eq!(code, 0, "eds {args:?}: {out}");
        let letters: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("eds {args:?}: {e}: {out}"));
        assert_eq!(letters, serde_json::json!([]), "dead letters (eds {args:?})");
    }
    let gaps = std::fs::read_to_string(data.join("gaps.jsonl")).unwrap_or_default();
    assert!(gaps.trim().is_empty(), "gaps.jsonl: {gaps}");

    // The tables: the model of the acked events, in stream order.
    let in_order: Vec<Ev> = ordered.iter().map(|(_, e)| (*e).clone()).collect();
    for table in publisher::TABLES {
        let of_table: Vec<Ev> = in_order.iter().filter(|e| e.table == *table).cloned().collect();
        let got = target.rows(table).await;
        assert_table(&got, &expected_state(&of_table));
    }
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("TRACE")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Spawn the pipelined publisher of `events`; `acked` counts what NATS acked.
fn spawn_publisher(
    js: &async_nats::jetstream::Context,
    events: &Arc<Vec<Ev>>,
    spread: Option<Duration>,
    acked: &Arc<AtomicUsize>,
    deadline: Duration,
) -> tokio::task::JoinHandle<Acked> {
    let (js, events, acked) = (js.clone(), events.clone(), acked.clone());
    tokio::spawn(async move { publisher::publish_pipelined(&js, &events, 512, spread, acked, deadline).await })
}

/// Wait until the publisher has had `n` events acked.
async fn acked_reach(acked: &AtomicUsize, n: usize, timeout: Duration) {
    eventually(&format!("{n} events acked to the publisher"), timeout, || async {
        (acked.load(Ordering::Relaxed) >= n).then_some(())
    })
    .await
}

/// SIGKILL `eds server` at random moments, again and again, while a seeded stream of creates,
/// updates and deletes is published; a last eds drains what is left. Every acked event arrives,
/// once, in stream order; nothing is recorded as a gap or parked as a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_loses_nothing() {
    let rounds = env_or("EDS_FAULTS_ROUNDS", 50, 400);
    let n = env_or("EDS_FAULTS_EVENTS", 200_000, 1_000_000) as usize;
    let seed = seed();
    eprintln!("sigkill loop: EDS_FAULTS_SEED={seed} rounds={rounds} events={n}");
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let hq = Hq::start().await;
    let schema = Schema::create("faults").await;
    let data = tempfile::tempdir().unwrap();
    let _evidence = Evidence { test: "sigkill_loop", seed, data: data.path().to_owned() };
    let events = Arc::new(publisher::events(n, 2_000, seed));
    let acked = Arc::new(AtomicUsize::new(0));
    // Publishing spreads over about the rounds' time, so kills land while events arrive.
    let spread = Duration::from_millis(rounds * 800);
    let publishing = spawn_publisher(&js, &events, Some(spread), &acked, spread + Duration::from_secs(300));
    let args = eds_args(&hq, &schema.url("pg"), &["--ack-wait", "1s"]);
    let mut r = seed;
    let started = Instant::now();
    for round in 0..rounds {
        let eds = start_eds(data.path(), &nats, &args);
        let delay = Duration::from_millis(100 + rng(&mut r) % 1400);
        tokio::time::sleep(delay).await;
        eds.kill();
        if round % 10 == 9 {
            eprintln!("round {}: {} acked, {:?}", round + 1, acked.load(Ordering::Relaxed), started.elapsed());
        }
    }
    let published = publishing.await.unwrap();
    eprintln!("{rounds} kills in {:?}; {} events acked ({} publish retries)", started.elapsed(), n, published.retries);
    let eds = start_eds(data.path(), &nats, &args);
    let catch_up = Instant::now();
    check_end_state(eds, data.path(), &events, &published, Target::Shared(&schema), Duration::from_secs(240)).await;
    eprintln!("final catch-up and checks took {:?}", catch_up.elapsed());
}

/// NATS goes away mid-stream twice (stopped and started again on the same store) and once
/// freezes (SIGSTOP, then SIGCONT) while the publisher publishes and eds ingests: eds reconnects
/// each time and everything acked is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_loses_nothing() {
    let seed = seed();
    let n = env_or("EDS_FAULTS_NATS_EVENTS", 20_000, 100_000) as usize;
    eprintln!("nats restart: EDS_FAULTS_SEED={seed} events={n}");
    let mut nats = Nats::start().await;
    let js = nats.create_stream().await;
    let hq = Hq::start().await;
    let schema = Schema::create("faults").await;
    let data = tempfile::tempdir().unwrap();
    let _evidence = Evidence { test: "nats_restart", seed, data: data.path().to_owned() };
    let events = Arc::new(publisher::events(n, 1_000, seed));
    let acked = Arc::new(AtomicUsize::new(0));
    let eds = start_eds(data.path(), &nats, &eds_args(&hq, &schema.url("pg"), &["--ack-wait", "2s"]));
    let publishing = spawn_publisher(&js, &events, Some(Duration::from_secs(8)), &acked, Duration::from_secs(120));
    for (i, fault) in ["restart", "restart", "freeze"].iter().enumerate() {
        acked_reach(&acked, n * (i + 1) / 4, Duration::from_secs(60)).await;
        // How long the fault lasts is the fault itself, not a wait for something.
        match *fault {
            "restart" => {
                nats.stop();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                nats.resume().await;
            }
            _ => {
                nats.freeze();
                tokio::time::sleep(Duration::from_secs(3)).await;
                nats.thaw();
            }
        }
        eprintln!("nats {fault} done at {} acked", acked.load(Ordering::Relaxed));
    }
    let published = publishing.await.unwrap();
    eprintln!("{n} events acked ({} publish retries)", published.retries);
    check_end_state(eds, data.path(), &events, &published, Target::Shared(&schema), Duration::from_secs(120)).await;
}

/// A private PostgreSQL cluster crashes (`pg_ctl stop -m immediate`) while eds delivers a
/// backlog, batch after batch, and starts again: the batch cut short is delivered again, and the
/// table ends exactly as the model says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_mid_batch_delivers_exactly() {
    let seed = seed();
    let n = env_or("EDS_FAULTS_PG_EVENTS", 30_000, 200_000) as usize;
    eprintln!("postgres crash: EDS_FAULTS_SEED={seed} events={n}");
    let cluster = Cluster::start().await;
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let hq = Hq::start().await;
    let data = tempfile::tempdir().unwrap();
    let _evidence = Evidence { test: "postgres_crash", seed, data: data.path().to_owned() };
    let events = Arc::new(publisher::events(n, 1_000, seed));
    let acked = Arc::new(AtomicUsize::new(0));
    let published = spawn_publisher(&js, &events, None, &acked, Duration::from_secs(120)).await.unwrap();
    let eds = start_eds(data.path(), &nats, &eds_args(&hq, &cluster.url("pg"), &[]));
    // Crash while the destination is part-way through the backlog: batches are being written.
    let last_lsn = until(&eds, "the destination part-way through the backlog", Duration::from_secs(120), || async {
        let s = status(&eds).await;
        let cursor = destination(&s, "pg")["cursor"].as_u64().unwrap_or(0);
        (cursor > 0).then_some(cursor)
    })
    .await;
    cluster.crash();
    eprintln!("PostgreSQL crashed with the destination at LSN {last_lsn}");
    // The outage is the fault itself: eds's retries meet a closed port for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume().await;
    check_end_state(eds, data.path(), &events, &published, Target::Private(&cluster), Duration::from_secs(180)).await;
}

/// A small tmpfs mounted for one test; unmounted on drop. Fails loudly when mounting is not
/// permitted (the test needs root to make a disk full): never skipped silently.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", mnt.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the disk-full fault needs a small tmpfs (mount -t tmpfs, as root) and mounting failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { mnt, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process still holding a file must not make the drop wait or fail.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Fill the file system of `dir` with `filler` until a write fails for lack of space.
fn fill(filler: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    let _ = f.sync_all();
}

/// The data dir's file system fills up while events arrive: ingest stops acking (no ack without
/// a durable write), says why in /status, and once space is freed everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_stops_acks_and_delivers_after() {
    let seed = seed();
    let n = env_or("EDS_FAULTS_DISK_EVENTS", 10_000, 50_000) as usize;
    eprintln!("disk full: EDS_FAULTS_SEED={seed} events={n}");
    let fs = Tmpfs::mount("64m");
    let data = fs.mnt.join("data");
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let hq = Hq::start().await;
    let schema = Schema::create("faults").await;
    let _evidence = Evidence { test: "disk_full", seed, data: data.clone() };
    let events = Arc::new(publisher::events(n, 1_000, seed));
    let (first, rest) = events.split_at(n / 5);
    let args =
        eds_args(&hq, &schema.url("pg"), &["--ack-wait", "2s", "--wal-retry", "100ms", "--wal-segment-size", "4MiB"]);
    let eds = start_eds(&data, &nats, &args);
    let acked = Arc::new(AtomicUsize::new(0));
    let mut published =
        publisher::publish_pipelined(&js, first, 512, None, acked.clone(), Duration::from_secs(60)).await;
    let before = *published.seqs.iter().max().unwrap();
    eds.wait_stored(before, Duration::from_secs(60)).await;

    let filler = fs.mnt.join("filler");
    fill(&filler);
    let more = publisher::publish_pipelined(&js, rest, 512, None, acked.clone(), Duration::from_secs(60)).await;
    let last = *more.seqs.iter().max().unwrap();
    let full = until(&eds, "ingest to report the full disk", Duration::from_secs(60), || async {
        let s = status(&eds).await;
        let error = s["ingest"]["last_error"].as_str().unwrap_or("");
        (error.contains("No space left") && s["ingest"]["state"] != "running").then_some(s)
    })
    .await;
    eprintln!("disk full: ingest {} / {}", full["ingest"]["state"], full["ingest"]["last_error"]);
    // No ack without a durable write: what the consumer has acked is at most what the WAL holds,
    // and the WAL does not hold what arrived after the disk filled.
    let consumer = js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev").await.unwrap();
    let stored = status(&eds).await["ingest"]["stream_sequence"].as_u64().unwrap();
    assert!(stored < last, "everything stored although the disk is full ({stored} of {last})");
    assert!(
        consumer.ack_floor.stream_sequence <= stored,
        "acked beyond the durable WAL: ack floor {} > stored {stored}",
        consumer.ack_floor.stream_sequence
    );
    assert!(consumer.num_pending + consumer.num_ack_pending as u64 >= last - stored, "{consumer:?}");

    std::fs::remove_file(&filler).unwrap();
    published.seqs.extend(more.seqs);
    check_end_state(eds, &data, &events, &published, Target::Shared(&schema), Duration::from_secs(120)).await;
}

/// The destination is down longer than the stream keeps messages (max_age 3 s): what eds acked
/// is gone from NATS, and is delivered from the WAL once the destination is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_stream_retention_delivers_from_the_wal() {
    let seed = seed();
    let n = env_or("EDS_FAULTS_RETENTION_EVENTS", 10_000, 50_000) as usize;
    eprintln!("outage beyond retention: EDS_FAULTS_SEED={seed} events={n}");
    let cluster = Cluster::start().await;
    let nats = Nats::start().await;
    let js = nats.js().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "dbchange".into(),
        subjects: vec!["dbchange.>".into()],
        max_age: Duration::from_secs(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let hq = Hq::start().await;
    let data = tempfile::tempdir().unwrap();
    let _evidence = Evidence { test: "outage_retention", seed, data: data.path().to_owned() };
    let events = Arc::new(publisher::events(n, 1_000, seed));
    let eds = start_eds(data.path(), &nats, &eds_args(&hq, &cluster.url("pg"), &[]));
    cluster.crash();
    let acked = Arc::new(AtomicUsize::new(0));
    let published = publisher::publish_pipelined(&js, &events, 512, None, acked, Duration::from_secs(60)).await;
    let last = *published.seqs.iter().max().unwrap();
    eds.wait_stored(last, Duration::from_secs(60)).await;
    // The stream forgets every message: only the WAL has them now.
    let mut stream = js.get_stream("dbchange").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream.info().await.unwrap();
        if info.state.messages == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the stream still holds {} messages after 30s", info.state.messages);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = status(&eds).await;
    assert_eq!(destination(&s, "pg")["cursor"].as_u64().unwrap_or(0), 0, "delivered while PostgreSQL was down? {s}");
    cluster.resume().await;
    check_end_state(eds, data.path(), &events, &published, Target::Private(&cluster), Duration::from_secs(120)).await;
}
