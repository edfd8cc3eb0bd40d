//! File drain benchmark: figures, never pass/fail. Run with `cargo bench --bench drain_file`.
//!
//! "N events into files vs direct writes": N change events of the demo traffic
//! (`eds::sample::Traffic`) are wrapped in Event envelopes as ingest does and appended to a WAL
//! (`Durability::Never`; setup is not timed). Then, in the same run and from the same WAL, into
//! two directories of the same file system:
//!
//! - `eds`: `drain::run` with the destination `file://<dir>/eds?name=file&start=oldest` (the file
//!   driver: each event as `<table>/<unix seconds>-<key>.json`, written to a temporary name and
//!   renamed, a name already holding another event's file read back and the event given its
//!   `+<lsn>` name; per batch one `syncfs` and an fsync of every directory that got entries).
//!   Timed from starting the drain until its cursor reaches the last LSN.
//! - `direct`: the same files written without eds: read the WAL with a plain `eds_wal::Reader` in
//!   batches cut like the drain's, unwrap the envelope, parse the event (for table, key and
//!   timestamp), name it the same way (a name used before in this run gets the `+<lsn>` name,
//!   remembered in memory rather than read back from disk), write it to a temporary name and
//!   rename it; per batch one `syncfs` and an fsync of each directory written to.
//!
//! Per run: wall time, events/s, CPU seconds of this process (from /proc), files written, the
//! load average. The ratio printed is eds's events/s ÷ direct's; both directories must hold the
//! same number of files.
//!
//! Knobs: `EDS_BENCH_QUICK=1` (20,000 events); `EDS_BENCH_EVENTS` (default 200,000);
//! `EDS_BENCH_SEED` (traffic seed, default 7); `EDS_BENCH_DIR` (parent of the temporary
//! directory, default `target/`: disk-backed, so the syncs are real).

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{Context, Result};
use common::backlog::{read_batch, write_backlog};
use common::procs::{clk_tck, load, Probe};
use common::runs::time_drain;
use eds::drain;
use eds_drivers::driver::Driver;
use eds_drivers::event::ChangeEvent;
use eds_drivers::file::FileDriver;
use eds_drivers::naming;
use eds_wal::Wal;
use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse::<u64>().ok()).unwrap_or(default).max(1)
}

fn files_under(dir: &Path) -> u64 {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            n += files_under(&p);
        } else if p.extension().is_some_and(|e| e == "json") {
            n += 1;
        }
    }
    n
}

/// The direct path: (events written, wall, CPU of this process).
fn direct(wal: &Wal, root: &Path, max: (usize, usize)) -> Result<(u64, Duration, f64)> {
    let none: [String; 0] = [];
    let ticks = || common::procs::ticks_of(&none);
    let probe = Probe::now(&ticks);
    std::fs::create_dir_all(root)?;
    let mut reader = wal.reader(1)?;
    let mut written = 0u64;
    let mut used: HashSet<PathBuf> = HashSet::new();
    loop {
        let records = read_batch(&mut reader, max.0, max.1)?;
        if records.is_empty() {
            break;
        }
        let mut touched = BTreeSet::new();
        for rec in &records {
            let env = eds::record::decode(&rec.data)?;
            let e = ChangeEvent::from_json(env.payload)?;
            let (folder, name) = naming::object(&e);
            let dir = root.join(folder);
            if touched.insert(dir.clone()) {
                std::fs::create_dir_all(&dir)?;
            }
            let mut path = dir.join(&name);
            if !used.insert(path.clone()) {
                path = dir.join(naming::with_lsn(&name, rec.lsn));
                used.insert(path.clone());
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::File::create(&tmp)?
                .write_all(env.payload)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)?;
        }
        rustix::fs::syncfs(std::fs::File::open(root)?)?;
        for dir in touched.iter().map(PathBuf::as_path).chain([root]) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        written += records.len() as u64;
    }
    let (wall, cpu, _) = probe.since(clk_tck());
    Ok((written, wall, cpu))
}

async fn run(base: &Path) -> Result<()> {
    let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let events = num("EDS_BENCH_EVENTS", if quick { 20_000 } else { 200_000 });
    let seed = num("EDS_BENCH_SEED", 7);
    println!(
        "eds file drain benchmark: events into files, eds vs direct writes{}",
        if quick { " (quick)" } else { "" }
    );
    let (wal, last, payload_bytes) = write_backlog(base, seed, events).await?;
    let limits = FileDriver::new(base.join("out")).limits();
    println!(
        "  env:    {} events of eds::sample::Traffic (seed {seed}), {:.0} bytes on average, LSNs 1..={last}; \
         {} — batches of {} events or {} MiB; {} cpus; load {:.1}",
        events,
        payload_bytes as f64 / events as f64,
        common::describe_fs(base),
        limits.max_rows,
        limits.max_bytes >> 20,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );
    let eds_dir = base.join("out-eds");
    let url = format!("file://{}?name=file&start=oldest", eds_dir.display());
    let dest = drain::parse_destination(&url)?.context("no destination")?;
    let none: [String; 0] = [];
    let eds = time_drain(&wal, base, dest, last, "FileDriver", &|| common::procs::ticks_of(&none), clk_tck()).await?;
    let eds_rate = eds.delivered as f64 / eds.wall.as_secs_f64();
    println!(
        "  eds:    {} events in {:.2} s = {eds_rate:.0} events/s; CPU {:.2} s; {} files; {}",
        eds.delivered,
        eds.wall.as_secs_f64(),
        eds.cpu,
        files_under(&eds_dir),
        eds.note
    );
    let direct_dir = base.join("out-direct");
    let (n, wall, cpu) = {
        let dir = direct_dir.clone();
        let max = (limits.max_rows, limits.max_bytes);
        tokio::task::block_in_place(|| direct(&wal, &dir, max))?
    };
    let direct_rate = n as f64 / wall.as_secs_f64();
    println!(
        "  direct: {n} events in {:.2} s = {direct_rate:.0} events/s; CPU {cpu:.2} s; {} files",
        wall.as_secs_f64(),
        files_under(&direct_dir)
    );
    println!("  ratio:  eds / direct = {:.2}; load {:.1}", eds_rate / direct_rate, load());
    Ok(())
}

fn main() {
    common::runs::main("drain_file", async |base| run(base).await);
}
