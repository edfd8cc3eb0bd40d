//! Event Hubs drain benchmark: figures, never pass/fail. Run with
//! `cargo bench --bench drain_eventhub --features eventhub` (needs `EVENTHUB_DOUBLE`, as the tests).
//!
//! "N events into an Event Hub: eds's drain vs the Azure SDK's producer alone": N change events of
//! the demo traffic (`eds::sample::Traffic`) are wrapped in Event envelopes as ingest does and
//! appended to a WAL (`Durability::Never`; setup is not timed). A private Event Hubs test double
//! (`eds_drivers::eventhub::double`: AMQP 1.0 on python-qpid-proton, which settles each transfer
//! after 5 ms, as a service across a network would, and writes every message it accepts to a
//! file) is started on a free port, one per run. Then, in the same run and from the same WAL:
//!
//! - `eds`: `drain::run` with the destination `parse_destination` makes of the double's
//!   `eventhub://…?endpoint=amqp://127.0.0.1:<port>` URL (the Event Hubs driver: EDS's body, id,
//!   content type, partition key and properties, batches by partition key sized by the link,
//!   every batch settled before the cursor moves). Timed from starting the drain until its cursor
//!   reaches the last LSN.
//! - `direct`: what a competent engineer would write without eds: read the WAL with a plain
//!   `eds_wal::Reader` (so both sides pay the same decompression), in batches cut like the
//!   drain's (the driver's `limits()`), unwrap the envelope, take table, operation, id, key and the
//!   row's company and location with serde_json, and send the events with the SDK's own
//!   `ProducerClient` (opened as the driver opens it) in the same batches — one `EventDataBatch`
//!   per partition key and WAL batch, with the same message fields — each `send_batch` awaited
//!   before the next, as a gateway that must not lose data has to.
//!
//! Per run: wall time, events/s, CPU seconds of this process and of the double; at the end the
//! ratio eds/direct (events/s) and the messages each double received (both must equal N).
//!
//! Knobs: `EDS_BENCH_QUICK=1` (10,000 events); `EDS_BENCH_EVENTS` (default 50,000);
//! `EDS_BENCH_SEED` (traffic seed, default 7); `EDS_BENCH_RUNS` (default `eds,direct`);
//! `EDS_BENCH_DIR` (parent of the temporary directory, default `target/`).

#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use common::backlog::{read_batch, write_backlog};
use common::procs::{clk_tck, load, ticks_of, Probe};
use common::runs::{time_drain, Config, Outcome};
use eds::drain;
use eds_drivers::driver::Driver;
use eds_drivers::eventhub::client::models::EventData;
use eds_drivers::eventhub::client::EventDataBatchOptions;
use eds_drivers::eventhub::double::{Double, Options};
use eds_drivers::eventhub::{link_max_message_size, open_producer, parse, EventHubDriver};
use eds_wal::Wal;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

mod common;
use common::describe_fs;

const RUNS: [&str; 2] = ["eds", "direct"];
/// How long the direct path waits for a batch's outcome (the driver's default timeout).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// A string field of the row, `NONE` when absent, empty or not a string.
fn row_field<'a>(row: Option<&'a Value>, field: &str) -> &'a str {
    row.and_then(|r| r.get(field)).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("NONE")
}

/// The SDK's producer alone, on the same WAL, batch by batch.
async fn direct_pass(wal: &Wal, url: &str, max_rows: usize, max_bytes: usize) -> Result<u64> {
    let config = parse(url)?;
    let mut producer = open_producer(&config).await?;
    let link_max = link_max_message_size(&producer).await?;
    let mut reader = wal.reader(1)?;
    let (mut sent, mut resent) = (0u64, 0u64);
    loop {
        let records = read_batch(&mut reader, max_rows, max_bytes)?;
        if records.is_empty() {
            // Dropped, not closed: every batch is settled already, and the client's close can
            // wait on the double's answer for long.
            if resent > 0 {
                eprintln!("  (direct: {resent} sends without an answer within {SEND_TIMEOUT:?}, sent again)");
            }
            return Ok(sent);
        }
        // One group per partition key, in order of first appearance, log order within.
        let mut groups: Vec<(String, Vec<EventData>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for rec in &records {
            let envelope = eds::record::decode(&rec.data)?;
            let v: Value = serde_json::from_slice(envelope.payload)?;
            let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
            let after = v.get("after").filter(|a| a.as_object().is_some_and(|o| !o.is_empty()));
            let row = after.or(v.get("before"));
            let pk = v
                .get("key")
                .and_then(Value::as_array)
                .and_then(|k| k.last())
                .and_then(Value::as_str)
                .or_else(|| row.and_then(|r| r.get("id")).and_then(Value::as_str))
                .unwrap_or_default();
            let (company, location) = (row_field(row, "companyId"), row_field(row, "locationId"));
            let (table, operation) = (text("table"), text("operation"));
            let partition_key = format!("{table}.{company}.{location}.{pk}");
            let event = EventData::builder()
                .with_body(envelope.payload.to_vec())
                .with_message_id(text("id").to_owned())
                .with_content_type("application/json".to_owned())
                .add_property("objectId".to_owned(), format!("dbchange.{table}.{operation}.{company}.{location}.{pk}"))
                .add_property("eds-lsn".to_owned(), rec.lsn.to_string())
                .build();
            match index.get(&partition_key).and_then(|&i| groups.get_mut(i)) {
                Some((_, events)) => events.push(event),
                None => {
                    index.insert(partition_key.clone(), groups.len());
                    groups.push((partition_key, vec![event]));
                }
            }
        }
        for (key, events) in groups {
            let options = || EventDataBatchOptions {
                partition_key: Some(key.clone()),
                max_size_in_bytes: Some(link_max),
                ..Default::default()
            };
            // Cut into batches the link takes, then send each, awaited; a send without an answer
            // within the timeout is sent again on a new connection (the client now and then never
            // sees the outcome of a transfer the double settles; see the driver's README section).
            let mut cuts: Vec<Vec<EventData>> = vec![Vec::new()];
            let mut batch = producer.create_batch(Some(options())).await?;
            for event in events {
                if !batch.try_add_event_data(event.clone(), None)? {
                    batch = producer.create_batch(Some(options())).await?;
                    if !batch.try_add_event_data(event.clone(), None)? {
                        bail!("an event of the traffic does not fit an empty batch of {link_max} bytes");
                    }
                    cuts.push(Vec::new());
                }
                cuts.last_mut().unwrap().push(event);
            }
            drop(batch);
            for cut in cuts {
                loop {
                    let batch = producer.create_batch(Some(options())).await?;
                    for event in &cut {
                        batch.try_add_event_data(event.clone(), None)?;
                    }
                    match tokio::time::timeout(SEND_TIMEOUT, producer.send_batch(batch, None)).await {
                        Ok(sent_ok) => {
                            sent_ok?;
                            break;
                        }
                        Err(_) => {
                            resent += 1;
                            producer = open_producer(&config).await?;
                        }
                    }
                }
                sent += cut.len() as u64;
            }
        }
    }
}

fn main() {
    common::runs::main("drain_eventhub", async |base| {
        let mut cfg = Config::from_env("EDS_BENCH_EVENTHUB_UNUSED", "", &RUNS);
        if std::env::var_os("EDS_BENCH_EVENTS").is_none() {
            cfg.events = if cfg.quick { 10_000 } else { 50_000 };
        }
        run(&cfg, base).await
    });
}

async fn run(cfg: &Config, base: &Path) -> Result<()> {
    println!(
        "eds drain benchmark: events into an Event Hub (test double), eds vs the Azure SDK's producer alone{}",
        if cfg.quick { " (quick)" } else { "" }
    );
    for run in &cfg.runs {
        if !RUNS.contains(&run.as_str()) {
            bail!("unknown run {run:?} (known: {})", RUNS.join(", "));
        }
    }
    println!(
        "  env:    dir {} — {}; Event Hubs double (python-qpid-proton, settles after 5 ms); {} cpus available \
         (shared by the double and this process); load average {:.2}",
        base.display(),
        describe_fs(base),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );
    let (wal, last, payload_bytes) = write_backlog(base, cfg.seed, cfg.events).await?;
    let limits = EventHubDriver::new(parse(&Double::start().url(""))?).limits();
    println!(
        "  events: N = {} of eds::sample::Traffic (seed {}), {:.0} bytes on average; LSNs 1..={last}; batches of up \
         to {} events or {} MiB",
        cfg.events,
        cfg.seed,
        payload_bytes as f64 / cfg.events as f64,
        limits.max_rows,
        limits.max_bytes >> 20
    );
    let tck = clk_tck();
    let mut rates = HashMap::new();
    for run in &cfg.runs {
        // 5 ms, as the figures in benches/README.md were measured with.
        let double = Double::start_with(Options { settle_delay_ms: 5.0, ..Options::default() });
        let url = double.url("");
        let ticks = || ticks_of(&[double.child.id().to_string()]);
        let outcome: Outcome = match run.as_str() {
            "eds" => {
                let dest = drain::parse_destination(&format!("{url}&name={run}&start=oldest"))?
                    .context("this build has no Event Hubs driver (feature eventhub)")?;
                time_drain(&wal, base, dest, last, "the Event Hubs driver", &ticks, tck).await?
            }
            _ => {
                let probe = Probe::now(&ticks);
                let delivered = direct_pass(&wal, &url, limits.max_rows, limits.max_bytes).await?;
                let (wall, cpu, server_cpu) = probe.since(tck);
                Outcome {
                    wall,
                    cpu,
                    server_cpu,
                    delivered,
                    changes: None,
                    note: "azure_messaging_eventhubs ProducerClient".into(),
                }
            }
        };
        let received = double.wait_for(usize::try_from(outcome.delivered)?, Duration::from_secs(600)).len();
        let rate = outcome.delivered as f64 / outcome.wall.as_secs_f64();
        println!(
            "  {run:<7} {:>8.2} s  {:>9.0} events/s  cpu {:.2} s (this process), {:.2} s (the double); {} delivered, {} \
             received; {}",
            outcome.wall.as_secs_f64(),
            rate,
            outcome.cpu,
            outcome.server_cpu,
            outcome.delivered,
            received,
            outcome.note
        );
        rates.insert(run.clone(), rate);
    }
    if let (Some(eds), Some(direct)) = (rates.get("eds"), rates.get("direct")) {
        println!("  ratio   eds / direct = {:.2} (events/s)", eds / direct);
    }
    Ok(())
}
