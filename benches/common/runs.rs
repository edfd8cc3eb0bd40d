//! What the drain benchmarks share around their runs: the knobs, one run's outcome, eds's own
//! drain timed until its cursor reaches the last LSN, and `main`.
#![allow(clippy::unwrap_used)]

use super::procs::{Probe, ServerTicks};
use anyhow::{bail, Context, Result};
use eds::drain::{self, Destination, Start};
use eds::registry::Registry;
use eds::state::ServerState;
use eds_wal::Wal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A run that takes longer than this is reported as stuck.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// The knobs of a drain benchmark, from the environment: `EDS_BENCH_QUICK=1` (100,000 events),
/// `EDS_BENCH_EVENTS` (default 1,000,000), `EDS_BENCH_SEED` (traffic seed, default 7),
/// `EDS_BENCH_RUNS` (comma-separated runs in order) and the database server's URL.
pub struct Config {
    pub quick: bool,
    pub events: u64,
    pub seed: u64,
    /// The database server's URL.
    pub url: String,
    pub runs: Vec<String>,
}

impl Config {
    /// The knobs, the URL from `url_var` (else `default_url`), the runs from `EDS_BENCH_RUNS`
    /// (else `default_runs`).
    pub fn from_env(url_var: &str, default_url: &str, default_runs: &[&str]) -> Config {
        let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let num = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.replace('_', "").parse::<u64>().ok()).unwrap_or(default)
        };
        let runs = std::env::var("EDS_BENCH_RUNS")
            .ok()
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default_runs.iter().map(|s| (*s).to_owned()).collect());
        Config {
            quick,
            events: num("EDS_BENCH_EVENTS", if quick { 100_000 } else { 1_000_000 }).max(1),
            seed: num("EDS_BENCH_SEED", 7).max(1),
            url: std::env::var(url_var).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default_url.into()),
            runs,
        }
    }
}

/// One run's outcome.
pub struct Outcome {
    pub wall: Duration,
    /// CPU seconds of this process during the run.
    pub cpu: f64,
    /// CPU seconds of the database server's processes during the run.
    pub server_cpu: f64,
    /// Events delivered (eds: per /status; direct: events applied).
    pub delivered: u64,
    /// Folded changes written (upserts + deletes); `None` when not counted by the run itself.
    pub changes: Option<u64>,
    pub note: String,
}

/// Runs `drain::run` for `dest` (from the oldest record, dead letters under `base`, the embedded
/// demo schemas as registry) on `wal`, timed from its start until its cursor reaches `last`
/// (polled every 5 ms; every 100 ms a stopped drain or a new error is noticed). `how` opens the
/// note; `server` gives the database server's CPU ticks.
pub async fn time_drain(
    wal: &Wal,
    base: &Path,
    mut dest: Destination,
    last: u64,
    how: &str,
    server: ServerTicks<'_>,
    tck: f64,
) -> Result<Outcome> {
    let name = dest.name.clone();
    let name = name.as_str();
    dest.dead_letters = Some(eds::dlq::DeadLetters::open_for_destination(base, &dest.name)?);
    let mut dests = vec![dest];
    drain::attach_registry(&mut dests, || {
        Ok(Arc::new(Registry::new(Arc::new(eds::demo_schemas::EmbeddedSchemas::new()), None)))
    })?;
    drain::ensure_cursor(wal, name, Start::Oldest)?;
    let state = Arc::new(ServerState::new(eds::metrics::Metrics::new()?, wal.clone(), "bench".into()));
    drain::register(&state, &dests);
    let dest = dests.pop().context("no destination")?;
    let (stop, stop_rx) = watch::channel(false);
    // The process's peak resident memory from here on: the drain's, plus what the bench itself
    // holds (reported as the resident memory before the start).
    let resident_before = reset_peak_rss();
    let started = Instant::now();
    let probe = Probe::now(server);
    let task = tokio::spawn(drain::run(dest, state.clone(), stop_rx));
    let mut last_error: Option<String> = None;
    let mut polls = 0u64;
    let finished = loop {
        let at = state.destination_positions().iter().find(|(n, _)| n == name).map_or(0, |(_, p)| *p);
        if at >= last {
            break true;
        }
        polls += 1;
        if !polls.is_multiple_of(20) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        // Every 100 ms: did the drain stop or report an error?
        let status = state.status_json();
        let d = &status["destinations"][0];
        if let Some(e) = d["last_error"].as_str() {
            if last_error.as_deref() != Some(e) {
                println!("   !! {name}: {} — {e}", d["state"].as_str().unwrap_or("?"));
                last_error = Some(e.to_owned());
            }
        }
        if d["state"] == "stopped" || started.elapsed() > RUN_TIMEOUT {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (wall, cpu, server_cpu) = probe.since(tck);
    let peak = status_kib("VmHWM:");
    let status = state.status_json();
    stop.send(true)?;
    task.await?;
    let d = &status["destinations"][0];
    if !finished {
        bail!("{name} stopped at cursor {} of {last} ({}): {}", d["cursor"], d["state"], d["last_error"]);
    }
    let delivered = d["delivered"].as_u64().unwrap_or(0);
    let flush = state.metrics.flush_duration.with_label_values(&[name]);
    let mib = |kib: Option<u64>| kib.map_or_else(|| "?".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0));
    let note = format!(
        "{how}; {} flushes, {:.2} s in them (schema look-up, fold, DDL, SQL), {:.2} s outside (WAL read, \
         decode, cursor); peak RSS {} MiB during the run ({} MiB resident before it)",
        flush.get_sample_count(),
        flush.get_sample_sum(),
        wall.as_secs_f64() - flush.get_sample_sum(),
        mib(peak),
        mib(resident_before),
    );
    Ok(Outcome { wall, cpu, server_cpu, delivered, changes: None, note })
}

/// A field of `/proc/self/status` in KiB (`VmRSS:`, `VmHWM:`); `None` where there is none.
pub fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resets the process's peak resident memory (`VmHWM`) to what is resident now (Linux: `5` to
/// `/proc/self/clear_refs`) and returns that, in KiB.
pub fn reset_peak_rss() -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_kib("VmRSS:")
}

/// `main` of the drain benchmark `name`: without `--bench` (as `cargo test --all-targets` runs
/// it) a hint only; else `run` on a temporary directory under `EDS_BENCH_DIR` (default
/// `target/`), its error printed.
pub fn main(name: &str, run: impl AsyncFnOnce(&Path) -> Result<()>) {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} bench: run it with `cargo bench --bench {name}` (EDS_BENCH_QUICK=1 for a short run)");
        return;
    }
    let parent = std::env::var_os("EDS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&parent).unwrap();
    let prefix = format!("eds-{}-bench-", name.replace('_', "-"));
    let tmp = tempfile::Builder::new().prefix(&prefix).tempdir_in(&parent).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Err(e) = runtime.block_on(run(tmp.path())) {
        println!("{name} bench failed: {e:#}");
    }
}
