//! S3 drain benchmark: figures, never pass/fail. Run with `cargo bench --features s3 --bench
//! drain_s3` (needs `MOTO_SERVER`, as the tests: `scripts/test.sh` installs moto).
//!
//! "N events into S3 (moto) vs a direct aws-sdk-s3 client": N change events of the demo traffic
//! (`eds::sample::Traffic`) are wrapped in Event envelopes as ingest does and appended to a WAL
//! (`Durability::Never`; setup is not timed). A private moto server gets two buckets. Then, in the
//! same run and from the same WAL:
//!
//! - `eds`: `drain::run` with the destination `parse_destination` makes of
//!   `s3://bench-eds?endpoint=<moto>&upload-tasks=<T>&name=s3&start=oldest` (the S3 driver:
//!   batches of 2,000 events or 32 MiB, one conditional `PutObject` (`If-None-Match: *`) per event,
//!   `T` in flight, events sharing a name in LSN order). Timed from starting the drain until its
//!   cursor reaches the last LSN (polled every 5 ms).
//! - `direct`: what a competent engineer would write without eds, with the same SDK client
//!   (`eds_drivers::s3::client`: rustls on ring, no SDK retries): read the WAL with a plain
//!   `eds_wal::Reader` in batches cut like the drain's, unwrap the envelope, parse the event
//!   (`ChangeEvent::from_json`, as eds does, for table, key and timestamp), name it as eds does
//!   (an event whose name another event of the batch took gets its `+<lsn>` name), and upload
//!   every payload with a plain `PutObject` (`Content-Type: application/json`, no condition, so no
//!   read-back ever), `T` at a time; the next batch once every upload of this one is confirmed.
//!
//! Per run: wall time, events/s, CPU seconds of this process and of moto (from /proc), the load
//! average (a shared machine moves wall times). The ratio printed is eds's events/s ÷ direct's.
//! moto is a single Python process: it, not eds or the SDK, is what both runs wait on, so the
//! figures compare eds's overhead with the direct path's on the same server, not S3 throughput.
//!
//! Knobs: `EDS_BENCH_QUICK=1` (20,000 events); `EDS_BENCH_EVENTS` (default 200,000);
//! `EDS_BENCH_SEED` (traffic seed, default 7); `EDS_BENCH_UPLOAD_TASKS` (default 16);
//! `EDS_BENCH_DIR` (parent of the temporary directory, default `target/`).

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{Context, Result};
use common::backlog::{read_batch, write_backlog};
use common::procs::{clk_tck, load, ticks_of, Probe};
use common::runs::time_drain;
use eds::drain;
use eds_drivers::driver::Driver;
use eds_drivers::event::ChangeEvent;
use eds_drivers::naming;
use eds_drivers::s3::moto::Moto;
use eds_drivers::s3::sdk::primitives::ByteStream;
use eds_drivers::s3::{self, S3Driver};
use eds_wal::Wal;
use futures_util::stream::{self, StreamExt};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

fn num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse::<u64>().ok()).unwrap_or(default).max(1)
}

/// The direct path: (events uploaded, wall, CPU of this process, CPU of moto).
async fn direct(
    wal: &Wal,
    moto: &Moto,
    bucket: &str,
    tasks: usize,
    max: (usize, usize),
) -> Result<(u64, Duration, f64, f64)> {
    let client = s3::client(&moto.config(bucket)).await;
    let server = [moto.pid().to_string()];
    let ticks = || ticks_of(&server);
    let probe = Probe::now(&ticks);
    let mut reader = wal.reader(1)?;
    let mut uploaded = 0u64;
    loop {
        let records = read_batch(&mut reader, max.0, max.1)?;
        if records.is_empty() {
            break;
        }
        let mut taken = HashSet::new();
        let mut puts = Vec::with_capacity(records.len());
        for rec in &records {
            let env = eds::record::decode(&rec.data)?;
            let e = ChangeEvent::from_json(env.payload)?;
            let dir = naming::table_dir(&e);
            let plain = format!("{dir}/{}", naming::plain_name(&e));
            let key =
                if taken.insert(plain.clone()) { plain } else { format!("{dir}/{}", naming::lsn_name(&e, rec.lsn)) };
            puts.push((key, env.payload.to_vec()));
        }
        let results: Vec<Result<()>> = stream::iter(puts)
            .map(|(key, body)| {
                let client = &client;
                async move {
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(&key)
                        .content_type("application/json")
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .with_context(|| format!("PutObject {key}"))?;
                    Ok(())
                }
            })
            .buffer_unordered(tasks)
            .collect()
            .await;
        for r in results {
            r?;
        }
        uploaded += records.len() as u64;
    }
    let (wall, cpu, server_cpu) = probe.since(clk_tck());
    Ok((uploaded, wall, cpu, server_cpu))
}

async fn run(base: &Path) -> Result<()> {
    let quick = std::env::var("EDS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let events = num("EDS_BENCH_EVENTS", if quick { 20_000 } else { 200_000 });
    let seed = num("EDS_BENCH_SEED", 7);
    let tasks = num("EDS_BENCH_UPLOAD_TASKS", s3::DEFAULT_UPLOAD_TASKS as u64) as usize;
    println!(
        "eds S3 drain benchmark: events into moto, eds vs a direct aws-sdk-s3 client{}",
        if quick { " (quick)" } else { "" }
    );
    let moto = Moto::start().await;
    for b in ["bench-eds", "bench-direct"] {
        moto.create_bucket(b).await;
    }
    let (wal, last, payload_bytes) = write_backlog(base, seed, events).await?;
    let limits = S3Driver::new(moto.config("bench-eds")).limits();
    println!(
        "  env:    {} events of eds::sample::Traffic (seed {seed}), {:.0} bytes on average, LSNs 1..={last}; \
         moto at {} (pid {}); upload-tasks {tasks}; batches of {} events or {} MiB; {} cpus; load {:.1}",
        events,
        payload_bytes as f64 / events as f64,
        moto.endpoint(),
        moto.pid(),
        limits.max_rows,
        limits.max_bytes >> 20,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );

    let url = moto.url("bench-eds", "", &format!("&name=s3&start=oldest&upload-tasks={tasks}"));
    let dest = drain::parse_destination(&url)?.context("no destination")?;
    let server = [moto.pid().to_string()];
    let eds = time_drain(&wal, base, dest, last, "S3Driver", &|| ticks_of(&server), clk_tck()).await?;
    let eds_rate = eds.delivered as f64 / eds.wall.as_secs_f64();
    println!(
        "  eds:    {} events in {:.2} s = {eds_rate:.0} events/s; CPU {:.2} s here, {:.2} s moto; {}",
        eds.delivered,
        eds.wall.as_secs_f64(),
        eds.cpu,
        eds.server_cpu,
        eds.note
    );
    let (n, wall, cpu, server_cpu) =
        direct(&wal, &moto, "bench-direct", tasks, (limits.max_rows, limits.max_bytes)).await?;
    let direct_rate = n as f64 / wall.as_secs_f64();
    println!(
        "  direct: {n} events in {:.2} s = {direct_rate:.0} events/s; CPU {cpu:.2} s here, {server_cpu:.2} s moto",
        wall.as_secs_f64()
    );
    println!("  ratio:  eds / direct = {:.2}; load {:.1}", eds_rate / direct_rate, load());
    Ok(())
}

fn main() {
    common::runs::main("drain_s3", async |base| run(base).await);
}
