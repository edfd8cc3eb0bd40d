//! `eds demo`: the whole pipeline in one process with no external server. A generator of
//! Shopmonkey-shaped change events stands in for NATS and feeds the same WAL, drains and drivers
//! the server uses.
//!
//! Invariant: the demo never touches a server's data: it refuses a data directory that holds a
//! write-ahead log it did not create (it marks its own with a `DEMO` file).

use crate::drain;
use crate::exit::UsageError;
use crate::metrics::Metrics;
use crate::record::{Envelope, Kind};
use crate::state::ServerState;
use anyhow::{Context, Result};
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// File marking a data directory as the demo's own.
const MARKER: &str = "DEMO";

/// `eds demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop once this many events are generated and delivered (default: run until Ctrl-C)
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,
    /// Events generated per second
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Destination (repeatable) [default: file://demo-out]
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Port for /status and /metrics (0 picks a free one)
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address the status and metrics server binds to
    #[arg(long = "bind", default_value = "127.0.0.1", value_name = "ADDR")]
    pub bind: IpAddr,
}

/// Run the demo in `data_dir`. Returns the exit code.
pub fn run(args: &DemoArgs, data_dir: &Path, schema_validator: Option<&Path>) -> Result<u8> {
    let urls = if args.urls.is_empty() { vec!["file://demo-out".to_owned()] } else { args.urls.clone() };
    let destinations = drain::parse_destinations(&urls).map_err(|e| UsageError(format!("{e:#}")))?;
    if destinations.is_empty() {
        return Err(UsageError("none of the --url destinations has a driver in this build".into()).into());
    }
    if data_dir.join("wal").exists() && !data_dir.join(MARKER).exists() {
        return Err(UsageError(format!(
            "{} holds a write-ahead log the demo did not create (a server's?); the demo uses its own data directory (default ./demo-data)",
            data_dir.display()
        ))
        .into());
    }
    let validator = match schema_validator {
        None => None,
        Some(dir) => Some(Arc::new(
            crate::validator::Validator::load(dir)
                .map_err(|e| UsageError(format!("{:#}", e.context("--schema-validator"))))?,
        )),
    };
    crate::datadir::prepare(data_dir)?;
    let mut destinations = destinations;
    for d in &mut destinations {
        d.validator = validator.clone();
    }
    for d in &mut destinations {
        d.dead_letters = Some(crate::dlq::DeadLetters::open_for_destination(data_dir, &d.name)?);
    }
    // The demo's tables come from schemas built in, never from HQ.
    drain::attach_registry(&mut destinations, || {
        let source = Arc::new(crate::demo_schemas::EmbeddedSchemas::new());
        Ok(Arc::new(crate::registry::Registry::new(source, None)))
    })?;
    std::fs::write(data_dir.join(MARKER), b"this data directory belongs to `eds demo`\n")
        .with_context(|| format!("marking {} as the demo's", data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(demo(args, destinations, data_dir.to_path_buf()))
}

async fn demo(args: &DemoArgs, destinations: Vec<drain::Destination>, data_dir: PathBuf) -> Result<u8> {
    let wal_dir = data_dir.join("wal");
    let wal = {
        let d = wal_dir.clone();
        tokio::task::spawn_blocking(move || eds_wal::Wal::open(d, eds_wal::Options::default())).await??
    };
    let first_seq = {
        let w = wal.clone();
        tokio::task::spawn_blocking(move || crate::record::last_stream_seq(&w)).await?? + 1
    };
    let state = Arc::new(ServerState::new(Metrics::new()?, wal.clone(), "demo".into()));
    crate::drain::register(&state, &destinations);
    // Signals are caught from here on: once the address is logged, a supervisor may stop us.
    let mut signals = crate::shutdown::Signals::install();
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.bind, args.port))?;
    tracing::info!(addr = %listener.local_addr()?, "status and metrics listening (/status, /metrics)");
    tokio::spawn(crate::http::serve(listener, state.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    // Cursors exist before anything is appended: a new destination's "head" is the head now.
    if let Some(w) = state.wal() {
        crate::drain::ensure_cursors(w, &destinations).await?;
    }
    let mut drains = Vec::new();
    for dest in destinations {
        tracing::info!(destination = %dest.name, driver = dest.driver.describe().name, "delivering");
        drains.push(tokio::spawn(drain::run(dest, state.clone(), stop_rx.clone())));
    }
    state.set_state(crate::state::IngestState::Running);

    let total = args.events.unwrap_or(u64::MAX);
    let mut traffic = crate::sample::Traffic::new(first_seq | 1, total);
    let per_tick = (args.rate / 20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut report = Instant::now();
    let (mut generated, mut seq, mut last_lsn) = (0u64, first_seq, wal.durable_lsn());
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = signals.next() => {
                tracing::info!("stopping");
                break;
            }
            _ = tick.tick() => {}
        }
        if generated < total {
            let n = per_tick.min(total - generated);
            let now = crate::timefmt::now_micros();
            let mut records = Vec::with_capacity(n as usize);
            for payload in traffic.by_ref().take(n as usize) {
                let subject = crate::sample::subject_of(&payload)?;
                records.push(
                    Envelope {
                        kind: Kind::Event,
                        stream_seq: seq,
                        received_at: now,
                        subject: subject.into(),
                        msg_id: "".into(),
                        reason: "".into(),
                        payload: &payload,
                    }
                    .encode(),
                );
                seq += 1;
            }
            let w = wal.clone();
            // A tick at a high --rate holds more than one frame may: appends of at most 4 MiB, as
            // ingest makes them (`eds server`'s default), within the frame limit.
            let limit = w.options().max_frame_bytes.min(4 << 20);
            let appended = tokio::task::spawn_blocking(move || {
                let (mut start, mut bytes, mut last) = (0usize, 0u64, None);
                for (i, r) in records.iter().enumerate() {
                    let size = (r.len() + eds_wal::frame::RECORD_OVERHEAD) as u64;
                    if i > start && bytes + size > limit {
                        last = Some(w.append(&records[start..i])?);
                        (start, bytes) = (i, 0);
                    }
                    bytes += size;
                }
                if start < records.len() {
                    last = Some(w.append(&records[start..])?);
                }
                Ok::<_, eds_wal::Error>(last)
            })
            .await??;
            if let Some(a) = appended {
                last_lsn = a.last_lsn;
            }
            generated += n;
            state.metrics.total_events.inc_by(n);
        }
        let positions = state.destination_positions();
        let delivered = positions.iter().map(|(_, p)| *p).min().unwrap_or(0);
        if report.elapsed() >= Duration::from_secs(1) {
            report = Instant::now();
            let lag = last_lsn.saturating_sub(delivered);
            println!(
                "generated {generated} events; every destination is within {lag} of the log head (LSN {last_lsn})"
            );
        }
        if generated >= total && !positions.is_empty() && delivered >= last_lsn {
            println!(
                "done: {generated} events generated and delivered in {:.1} s; see /status and the destination(s)",
                started.elapsed().as_secs_f64()
            );
            break;
        }
    }
    let _ = stop_tx.send(true);
    for d in drains {
        let _ = d.await;
    }
    drop(wal);
    let wal = state.wal.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(w) = wal {
        tokio::task::spawn_blocking(move || w.close()).await??;
    }
    Ok(0)
}
