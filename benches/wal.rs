//! WAL benchmarks: figures, never pass/fail. Run with `cargo bench --bench wal`.
//!
//! a) durable appends (fsync per batch) of ~700-byte CDC records, beside a plain-file baseline
//!    (`write` + `fdatasync` per batch of the same uncompressed bytes) in the same run;
//! b) appends without fsync (`Durability::Never`): CPU cost of framing, checksums, compression,
//!    with zstd levels compared;
//! c) replay: one reader over the whole log;
//! d) open/recovery time of a log with ~1 GiB of sealed segments beside one of ~64 MiB.
//!
//! Files go to a temporary directory under `target/` (disk-backed, so fsync is real; `/tmp` may be
//! tmpfs). Knobs: `EDS_BENCH_QUICK=1` shrinks everything to a few seconds in all;
//! `EDS_BENCH_SECS` (seconds per timed run, default 3), `EDS_BENCH_RECOVERY_MIB` (default 1024),
//! `EDS_BENCH_REPLAY_RECORDS` (default 2,000,000), `EDS_BENCH_DIR` (parent directory to use),
//! `EDS_BENCH_ONLY` (sections to run, e.g. `ab`; default `abcd`).

#![allow(clippy::unwrap_used)]

use eds_wal::{Durability, Options, Wal};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{describe_fs, hex24, iso, mix, STATUSES};

// ---------------------------------------------------------------------------------------------
// Records: UPDATE events of Shopmonkey `order` rows (field names from
// shared/fixtures/schema/order_schema_b041c12fbf8d1103.json), ~700 bytes, with ids, amounts and
// timestamps varying per record so compression sees realistic entropy.

fn order_row(i: u64, order: u64, version: u64, ts_ms: u64) -> String {
    let total = 5_000 + mix(order * 31 + version) % 250_000;
    let labor = total * 2 / 5;
    let status = STATUSES[(version % 4) as usize];
    format!(
        concat!(
            r#"{{"id":"{id}","number":{number},"status":"{status}","totalCostCents":{total},"#,
            r#""laborCents":{labor},"paid":{paid},"invoiced":{invoiced},"updatedDate":"{updated}"}}"#
        ),
        id = hex24(order),
        number = 10_000 + order,
        status = status,
        total = total,
        labor = labor,
        paid = version % 4 == 3,
        invoiced = version % 4 >= 2,
        updated = iso(ts_ms - (i % 7) * 1000),
    )
}

fn cdc_record(i: u64) -> Vec<u8> {
    // A shop edits a few thousand open orders; each event is one version step of one of them.
    let order = mix(i) % 5_000;
    let version = i / 5_000 + mix(i ^ 0xBEEF) % 3;
    let ts_ms = 1_795_749_176_000 + i * 173;
    format!(
        concat!(
            r#"{{"operation":"UPDATE","id":"{eid:016x}","table":"order","key":["gcp-us-west1","{key}"],"#,
            r#""modelVersion":"b041c12fbf8d1103","companyId":"{company}","locationId":"{location}","#,
            r#""userId":"{user}","before":{before},"after":{after},"#,
            r#""diff":["status","totalCostCents","updatedDate"],"timestamp":{ts},"mvccTimestamp":"{ts}{ns:06}.0000000000"}}"#
        ),
        eid = mix(i ^ 0xE1E1),
        key = hex24(order),
        company = hex24(7),
        location = hex24(100 + order % 3),
        user = hex24(300 + i % 5),
        before = order_row(i, order, version, ts_ms - 60_000),
        after = order_row(i, order, version + 1, ts_ms),
        ts = ts_ms,
        ns = mix(i) % 1_000_000,
    )
    .into_bytes()
}

/// A pool of distinct records, a multiple of 1024 long so every batch is one contiguous slice.
fn record_pool(len: usize) -> Vec<Vec<u8>> {
    (0..len as u64).map(cdc_record).collect()
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers.

struct Config {
    secs: Duration,
    recovery_mib: u64,
    replay_records: u64,
    quick: bool,
    only: String,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let num =
            |name: &str, default: f64| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
        Config {
            secs: Duration::from_secs_f64(num("EDS_BENCH_SECS", if quick { 0.3 } else { 3.0 })),
            recovery_mib: num("EDS_BENCH_RECOVERY_MIB", if quick { 192.0 } else { 1024.0 }) as u64,
            replay_records: num("EDS_BENCH_REPLAY_RECORDS", if quick { 200_000.0 } else { 2_000_000.0 }) as u64,
            quick,
            only: std::env::var("EDS_BENCH_ONLY").unwrap_or_else(|_| "abcd".into()),
        }
    }
}

/// CPU time of the calling thread (Linux: /proc/thread-self/schedstat, nanoseconds).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(s.split_whitespace().next()?.parse().ok()?))
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    records: u64,
    raw_bytes: u64,
    disk_bytes: u64,
    wall: Duration,
    cpu: Option<Duration>,
    /// fsyncs and the time spent in them.
    fsyncs: u64,
    fsync_time: Duration,
}

impl Run {
    fn rps(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64()
    }

    fn mbps(&self) -> f64 {
        self.raw_bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }

    /// Batches per fsync and the average fsync time.
    fn fsync_summary(&self, batch: usize) -> String {
        if self.fsyncs == 0 {
            return "n/a".into();
        }
        let avg = self.fsync_time.as_secs_f64() * 1e3 / self.fsyncs as f64;
        format!("{:.2} batch/fsync, {avg:.3} ms", self.records as f64 / batch as f64 / self.fsyncs as f64)
    }

    fn per_cpu(&self) -> String {
        match self.cpu {
            Some(c) if !c.is_zero() => format!("{:>6.2} M rec/cpu-s", self.records as f64 / c.as_secs_f64() / 1e6),
            _ => "n/a".into(),
        }
    }
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(durability: Durability, zstd_level: i32) -> Options {
    Options { durability, zstd_level, ..Options::default() }
}

/// Append batches of `batch` records from the pool for `budget`, timing only the appends.
fn run_eds(dir: &Path, options: Options, pool: &[Vec<u8>], batch: usize, budget: Duration) -> Run {
    let wal = Wal::open(dir, options).unwrap();
    let mut run = append_for(&wal, pool, 0, batch, budget);
    let st = wal.stats();
    run.disk_bytes = st.bytes;
    (run.fsyncs, run.fsync_time) = (st.fsyncs, Duration::from_nanos(st.fsync_nanos));
    run
}

/// Like [`run_eds`] with several appending threads sharing one log (group commit, and encoding
/// and compression in parallel outside the writer lock). CPU time is not measured.
fn run_eds_threads(
    dir: &Path,
    options: Options,
    pool: &[Vec<u8>],
    batch: usize,
    budget: Duration,
    threads: usize,
) -> Run {
    let wal = Wal::open(dir, options).unwrap();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let wal = wal.clone();
                s.spawn(move || append_for(&wal, pool, t * pool.len() / threads, batch, budget))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    Run {
        records: runs.iter().map(|r| r.records).sum(),
        raw_bytes: runs.iter().map(|r| r.raw_bytes).sum(),
        disk_bytes: wal.stats().bytes,
        wall: runs.iter().map(|r| r.wall).max().unwrap_or_default(),
        cpu: None,
        fsyncs: wal.stats().fsyncs,
        fsync_time: Duration::from_nanos(wal.stats().fsync_nanos),
    }
}

fn append_for(wal: &Wal, pool: &[Vec<u8>], start_at: usize, batch: usize, budget: Duration) -> Run {
    let mut run = Run::default();
    let (mut at, cpu0, start) = (start_at, thread_cpu(), Instant::now());
    while start.elapsed() < budget {
        let records = &pool[at..at + batch];
        wal.append(records).unwrap();
        run.records += batch as u64;
        run.raw_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
        at = (at + batch) % pool.len();
    }
    run.wall = start.elapsed();
    run.cpu = thread_cpu().zip(cpu0).map(|(b, a)| b - a);
    run
}

/// The baseline: the same record bytes, concatenated per batch, one `write` and one `fdatasync`
/// per batch, to a plain file.
fn run_baseline(path: &Path, pool: &[Vec<u8>], batch: usize, budget: Duration) -> Run {
    let mut f = File::create(path).unwrap();
    let mut buf = Vec::new();
    let mut run = Run::default();
    let (mut at, start) = (0usize, Instant::now());
    while start.elapsed() < budget {
        buf.clear();
        for r in &pool[at..at + batch] {
            buf.extend_from_slice(r);
        }
        f.write_all(&buf).unwrap();
        let t = Instant::now();
        f.sync_data().unwrap();
        run.fsync_time += t.elapsed();
        run.fsyncs += 1;
        run.records += batch as u64;
        run.raw_bytes += buf.len() as u64;
        at = (at + batch) % pool.len();
    }
    run.wall = start.elapsed();
    run.disk_bytes = f.metadata().unwrap().len();
    run
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------

/// a) durable appends beside the plain-file baseline.
fn durable_appends(cfg: &Config, base: &Path, pool: &[Vec<u8>]) {
    println!();
    println!("a) durable appends: Durability::Always (fsync per batch) vs write+fdatasync per batch of a plain file");
    println!(
        "   {:>11}  {:>24}  {:>24}  {:>6}  {:>9}  {:>27}  {:>12}",
        "batch", "eds (rec/s, MB/s)", "baseline (rec/s, MB/s)", "ratio", "disk/raw", "eds fsyncs", "base fsync"
    );
    // (batch, appending threads, zstd level)
    let rows = [(1usize, 1usize, 1), (64, 1, 1), (1024, 1, 1), (1024, 1, -3), (64, 2, 1), (1024, 2, 1)];
    for (batch, threads, level) in rows {
        let base_run = run_baseline(&fresh_dir(base, "baseline").join("plain.log"), pool, batch, cfg.secs);
        let dir = fresh_dir(base, "always");
        let eds_run = match threads {
            1 => run_eds(&dir, opts(Durability::Always, level), pool, batch, cfg.secs),
            n => run_eds_threads(&dir, opts(Durability::Always, level), pool, batch, cfg.secs, n),
        };
        let mut label = format!("{batch}");
        if threads > 1 {
            label += &format!("x{threads}t");
        }
        if level != 1 {
            label += &format!(" z{level}");
        }
        println!(
            "   {label:>11}  {:>12.0} {:>7.1} MB/s  {:>12.0} {:>7.1} MB/s  {:>6.2}  {:>9.3}  {:>27}  {:>9.3} ms",
            eds_run.rps(),
            eds_run.mbps(),
            base_run.rps(),
            base_run.mbps(),
            eds_run.rps() / base_run.rps(),
            eds_run.disk_bytes as f64 / eds_run.raw_bytes as f64,
            eds_run.fsync_summary(batch),
            base_run.fsync_time.as_secs_f64() * 1e3 / base_run.fsyncs.max(1) as f64,
        );
    }
    println!("   (zstd level 1 unless marked zL; NxMt: M threads appending batches of N to one log, group-committed,");
    println!("    against the one-writer baseline)");

    let _ = std::fs::remove_dir_all(base.join("always"));
    let _ = std::fs::remove_dir_all(base.join("baseline"));
}

/// b) appends without fsync, codecs compared.
fn appends_without_fsync(cfg: &Config, base: &Path, pool: &[Vec<u8>]) {
    println!();
    println!("b) appends without fsync: Durability::Never, one appending thread");
    println!("   {:>5}  {:>16}  {:>12}  {:>10}  {:>18}  {:>9}", "batch", "codec", "rec/s", "MB/s", "cpu", "disk/raw");
    let variants: Vec<(usize, &str, Options)> = vec![
        (1024, "zstd 1", opts(Durability::Never, 1)),
        (1024, "zstd -1", opts(Durability::Never, -1)),
        (1024, "zstd -3", opts(Durability::Never, -3)),
        (1024, "zstd -7", opts(Durability::Never, -7)),
        (1024, "zstd 3", opts(Durability::Never, 3)),
        (1024, "none", Options { compress_threshold: usize::MAX, ..opts(Durability::Never, 1) }),
        (64, "zstd 1", opts(Durability::Never, 1)),
        (64, "zstd -3", opts(Durability::Never, -3)),
        (1, "none (< 1024 B)", opts(Durability::Never, 1)),
    ];
    for (batch, codec, o) in variants {
        let r = run_eds(&fresh_dir(base, "never"), o, pool, batch, cfg.secs);
        println!(
            "   {batch:>5}  {codec:>16}  {:>12.0}  {:>5.1} MB/s  {:>18}  {:>9.3}",
            r.rps(),
            r.mbps(),
            r.per_cpu(),
            r.disk_bytes as f64 / r.raw_bytes as f64
        );
    }
    let _ = std::fs::remove_dir_all(base.join("never"));
}

/// c) replay of a whole log by one reader.
fn replay(cfg: &Config, base: &Path, pool: &[Vec<u8>]) {
    println!();
    let replay_dir = fresh_dir(base, "replay");
    {
        let wal = Wal::open(&replay_dir, opts(Durability::Never, 1)).unwrap();
        let mut at = 0;
        for _ in 0..cfg.replay_records.div_ceil(1024) {
            wal.append(&pool[at..at + 1024]).unwrap();
            at = (at + 1024) % pool.len();
        }
        wal.close().unwrap();
    }
    let wal = Wal::open(&replay_dir, opts(Durability::Never, 1)).unwrap();
    let stats = wal.stats();
    println!(
        "c) replay: one reader over {} records in frames of 1024 ({:.0} MiB on disk, {} segments; page cache warm)",
        stats.durable_lsn,
        stats.bytes as f64 / 1048576.0,
        stats.segments
    );
    for pass in 1..=2 {
        let mut reader = wal.reader(1).unwrap();
        let (mut n, mut bytes, cpu0, start) = (0u64, 0u64, thread_cpu(), Instant::now());
        while let Some(rec) = reader.next().unwrap() {
            n += 1;
            bytes += rec.data.len() as u64;
        }
        let r = Run {
            records: n,
            raw_bytes: bytes,
            disk_bytes: 0,
            wall: start.elapsed(),
            cpu: thread_cpu().zip(cpu0).map(|(b, a)| b - a),
            ..Run::default()
        };
        assert_eq!(n, stats.durable_lsn, "replay read another number of records");
        println!("   pass {pass}: {:>10.0} rec/s  {:>7.1} MB/s  {}  ({})", r.rps(), r.mbps(), r.per_cpu(), ms(r.wall));
    }
    drop(wal);
    let _ = std::fs::remove_dir_all(&replay_dir);
}

/// d) open/recovery time against the number of sealed segments.
fn recovery(cfg: &Config, base: &Path, pool: &[Vec<u8>]) {
    println!();
    println!(
        "d) open/recovery: default 64 MiB segments, written with Durability::Never and compression off (so the bytes \
         add up fast); each log ends with the same ~32 MiB active segment that recovery scans"
    );
    println!(
        "   {:>10}  {:>9}  {:>12}  {:>14}  {:>14}  {:>14}",
        "log", "segments", "write", "first open", "open (median)", "verify"
    );
    let small_mib = 64;
    for total_mib in [small_mib, cfg.recovery_mib.max(small_mib)] {
        let dir = fresh_dir(base, &format!("recovery-{total_mib}"));
        let o = Options { compress_threshold: usize::MAX, ..opts(Durability::Never, 1) };
        let started = Instant::now();
        {
            let wal = Wal::open(&dir, o.clone()).unwrap();
            let sealed_target = (total_mib / 64).max(1);
            let mut at = 0;
            // Fill whole sealed segments, then 32 MiB of the active one.
            while wal.stats().segments <= sealed_target {
                wal.append(&pool[at..at + 1024]).unwrap();
                at = (at + 1024) % pool.len();
            }
            let active_start = wal.stats().bytes;
            while wal.stats().bytes - active_start < 32 << 20 {
                wal.append(&pool[at..at + 1024]).unwrap();
                at = (at + 1024) % pool.len();
            }
            wal.close().unwrap();
        }
        let write = started.elapsed();
        let t = Instant::now();
        let wal = Wal::open(&dir, o.clone()).unwrap();
        let first_open = t.elapsed();
        let st = wal.stats();
        drop(wal);
        let mut opens: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let w = Wal::open(&dir, o.clone()).unwrap();
                let d = t.elapsed();
                drop(w);
                d
            })
            .collect();
        opens.sort();
        let wal = Wal::open(&dir, o.clone()).unwrap();
        let t = Instant::now();
        let v = wal.verify().unwrap();
        let verify = t.elapsed();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        drop(wal);
        println!(
            "   {:>6} MiB  {:>9}  {:>12}  {:>14}  {:>14}  {:>14}",
            st.bytes >> 20,
            st.segments,
            ms(write),
            ms(first_open),
            ms(opens[opens.len() / 2]),
            ms(verify)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// One lettered part of the benchmark.
type Section = fn(&Config, &Path, &[Vec<u8>]);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it:
    // minutes of I/O have no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("wal bench: run it with `cargo bench --bench wal` (EDS_BENCH_QUICK=1 for a short run)");
        return;
    }
    let cfg = Config::from_env();
    let parent = std::env::var_os("EDS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&parent).unwrap();
    let tmp = tempfile::Builder::new().prefix("eds-wal-bench-").tempdir_in(&parent).unwrap();
    let base = tmp.path();
    println!("eds-wal benchmarks{}", if cfg.quick { " (quick)" } else { "" });
    println!("  dir:   {} — {}", base.display(), describe_fs(base));
    println!(
        "  cpus:  {} available to this process (shared with other work); {:.1} s per timed run",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cfg.secs.as_secs_f64()
    );

    let pool = record_pool(64 * 1024);
    let avg = pool.iter().map(|r| r.len()).sum::<usize>() as f64 / pool.len() as f64;
    println!("  records: pool of {} distinct UPDATE events of `order`, {avg:.0} bytes on average", pool.len());
    println!("  sample:  {}", String::from_utf8_lossy(&pool[1]));

    let sections: [(char, Section); 4] =
        [('a', durable_appends), ('b', appends_without_fsync), ('c', replay), ('d', recovery)];
    for (key, section) in sections {
        if cfg.only.contains(key) {
            section(&cfg, base, &pool);
        }
    }
    println!();
    println!("(figures only; nothing here is asserted on time)");
}
