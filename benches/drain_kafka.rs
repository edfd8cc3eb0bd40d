//! Kafka drain benchmark: figures, never pass/fail. Run with
//! `cargo bench --bench drain_kafka --features kafka` (needs `TANSU_BIN`, as the tests).
//!
//! "N events into Kafka: eds's drain vs librdkafka's producer alone": N change events of the demo
//! traffic (`eds::sample::Traffic`) are wrapped in Event envelopes as ingest does and appended to
//! a WAL (`Durability::Never`; setup is not timed). A private tansu broker (in memory) is started
//! on a free port with one 3-partition topic per run. Then, in the same run and from the same
//! WAL:
//!
//! - `eds`: `drain::run` with the destination `parse_destination` makes of
//!   `kafka://127.0.0.1:<port>/<topic>` (the Kafka driver: idempotent producer, `acks=all`,
//!   EDS's key, headers and partition, every batch confirmed before the cursor moves). Timed from
//!   starting the drain until its cursor reaches the last LSN.
//! - `direct`: what a competent engineer would write without eds: read the WAL with a plain
//!   `eds_wal::Reader` (so both sides pay the same decompression), in batches cut like the
//!   drain's (the driver's `limits()`), unwrap the envelope, take table, operation, ids and key
//!   with serde_json, and send each event with rdkafka's `FutureProducer` — the same settings as
//!   the driver (`client_config`: idempotent, `acks=all`, `linger.ms=5`), the same key, headers
//!   and explicit partition — waiting for every acknowledgement of a batch before the next, as a
//!   gateway that must not lose data has to.
//!
//! Per run: wall time, events/s, CPU seconds of this process and of tansu; at the end the ratio
//! eds/direct (events/s) and the messages each topic holds (read back; both must equal N).
//!
//! Knobs: `EDS_BENCH_QUICK=1` (100,000 events); `EDS_BENCH_EVENTS` (default 200,000);
//! `EDS_BENCH_SEED` (traffic seed, default 7); `EDS_BENCH_RUNS` (default `eds,direct`);
//! `EDS_BENCH_DIR` (parent of the temporary directory, default `target/`).

#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use common::backlog::{read_batch, write_backlog};
use common::procs::{clk_tck, load, ticks_of, Probe};
use common::runs::{time_drain, Config, Outcome};
use eds::drain;
use eds_drivers::driver::Driver;
use eds_drivers::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use eds_drivers::kafka::rdkafka::error::KafkaError;
use eds_drivers::kafka::rdkafka::message::{Header, OwnedHeaders};
use eds_drivers::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eds_drivers::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use eds_drivers::kafka::{client_config, parse, partition_for, KafkaDriver};
use eds_wal::Wal;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::describe_fs;
use eds_drivers::kafka::tansu::Tansu;

const RUNS: [&str; 2] = ["eds", "direct"];
const PARTITIONS: i32 = 3;

/// The CPU ticks of the broker process so far.
fn broker_ticks(tansu: &Tansu) -> HashMap<String, u64> {
    ticks_of(&[tansu.child.id().to_string()])
}

/// What the direct path reads of an event.
#[derive(Deserialize)]
struct Fields<'a> {
    operation: &'a str,
    #[serde(default)]
    id: &'a str,
    table: &'a str,
    #[serde(default)]
    key: Vec<&'a str>,
    #[serde(rename = "companyId")]
    company_id: Option<&'a str>,
    #[serde(rename = "locationId")]
    location_id: Option<&'a str>,
}

/// librdkafka's producer alone, on the same WAL, batch by batch.
async fn direct_pass(wal: &Wal, url: &str, max_rows: usize, max_bytes: usize) -> Result<u64> {
    let config = parse(url)?;
    let producer: FutureProducer = client_config(&config).create()?;
    let mut reader = wal.reader(1)?;
    let mut sent = 0u64;
    loop {
        let records = read_batch(&mut reader, max_rows, max_bytes)?;
        if records.is_empty() {
            return Ok(sent);
        }
        let mut pending = Vec::with_capacity(records.len());
        for rec in &records {
            let envelope = eds::record::decode(&rec.data)?;
            let f: Fields<'_> = serde_json::from_slice(envelope.payload)?;
            let (company, location) = (f.company_id.unwrap_or("NONE"), f.location_id.unwrap_or("NONE"));
            let pk = f.key.last().copied().unwrap_or_default();
            let key = format!("dbchange.{}.{}.{company}.{location}.{}", f.table, f.operation, f.id);
            let partition_key = format!("{}.{company}.{location}.{pk}", f.table);
            let lsn = rec.lsn.to_string();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: "eds-partitionkey", value: Some(partition_key.as_str()) })
                .insert(Header { key: "eds-lsn", value: Some(lsn.as_str()) });
            let record = FutureRecord::to(&config.topic)
                .key(key.as_str())
                .payload(envelope.payload)
                .partition(partition_for(&partition_key, PARTITIONS))
                .headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for delivery in pending {
            delivery.await?.map_err(|(e, _)| e)?;
            sent += 1;
        }
    }
}

/// How many messages `topic` holds (read to partition EOF).
fn count_messages(bootstrap: &str, topic: &str) -> Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eds-bench")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let (mut at_end, mut n) = (BTreeSet::new(), 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while at_end.len() < PARTITIONS as usize {
        if Instant::now() > deadline {
            bail!("reading {topic} back took over 10 minutes");
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(m) => {
                use eds_drivers::kafka::rdkafka::Message;
                at_end.remove(&m?.partition());
                n += 1;
            }
        }
    }
    Ok(n)
}

fn main() {
    common::runs::main("drain_kafka", async |base| {
        let mut cfg = Config::from_env("EDS_BENCH_KAFKA_UNUSED", "", &RUNS);
        if std::env::var_os("EDS_BENCH_EVENTS").is_none() && !cfg.quick {
            cfg.events = 200_000;
        }
        run(&cfg, base).await
    });
}

async fn run(cfg: &Config, base: &Path) -> Result<()> {
    println!(
        "eds drain benchmark: events into Kafka (tansu), eds vs librdkafka's producer alone{}",
        if cfg.quick { " (quick)" } else { "" }
    );
    for run in &cfg.runs {
        if !RUNS.contains(&run.as_str()) {
            bail!("unknown run {run:?} (known: {})", RUNS.join(", "));
        }
    }
    let tansu = Tansu::start();
    let bootstrap = tansu.addr();
    let version = Command::new(std::env::var_os("TANSU_BIN").context("TANSU_BIN")?).arg("--version").output()?;
    println!(
        "  env:    dir {} — {}; {} in memory at {bootstrap}, topics of {PARTITIONS} partitions; {} cpus available \
         (shared by tansu and this process); load average {:.2}",
        base.display(),
        describe_fs(base),
        String::from_utf8_lossy(&version.stdout).trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );
    let (wal, last, payload_bytes) = write_backlog(base, cfg.seed, cfg.events).await?;
    let limits = KafkaDriver::new(parse(&format!("kafka://{bootstrap}/limits"))?)?.limits();
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
    for (i, run) in cfg.runs.iter().enumerate() {
        let topic = format!("bench-{run}-{i}");
        tansu.create_topic(&topic, PARTITIONS.unsigned_abs());
        let url = format!("kafka://{bootstrap}/{topic}");
        let ticks = || broker_ticks(&tansu);
        let outcome: Outcome = match run.as_str() {
            "eds" => {
                let dest = drain::parse_destination(&format!("{url}?name={run}&start=oldest"))?
                    .context("this build has no Kafka driver (feature kafka)")?;
                time_drain(&wal, base, dest, last, "the Kafka driver", &ticks, tck).await?
            }
            _ => {
                let probe = Probe::now(&ticks);
                let delivered = direct_pass(&wal, &url, limits.max_rows, limits.max_bytes).await?;
                let (wall, cpu, server_cpu) = probe.since(tck);
                Outcome { wall, cpu, server_cpu, delivered, changes: None, note: "rdkafka FutureProducer".into() }
            }
        };
        let stored = count_messages(&bootstrap, &topic)?;
        let rate = outcome.delivered as f64 / outcome.wall.as_secs_f64();
        println!(
            "  {run:<7} {:>8.2} s  {:>9.0} events/s  cpu {:.2} s (this process), {:.2} s (tansu); {} delivered, {} in the \
             topic; {}",
            outcome.wall.as_secs_f64(),
            rate,
            outcome.cpu,
            outcome.server_cpu,
            outcome.delivered,
            stored,
            outcome.note
        );
        rates.insert(run.clone(), rate);
    }
    if let (Some(eds), Some(direct)) = (rates.get("eds"), rates.get("direct")) {
        println!("  ratio   eds / direct = {:.2} (events/s)", eds / direct);
    }
    Ok(())
}
