//! `eds integrationtest`: publish Shopmonkey-shaped change events to a NATS JetStream server, to
//! smoke-test an `eds server` and its destinations end to end without Shopmonkey (EDS's
//! `integrationtest loadtest-random` and `publish-file-data`).
//!
//! Every event is published with a `Nats-Msg-Id` header (a hash of the event, so JetStream drops
//! a re-published duplicate) and counts only once the server acknowledged it as stored.

use crate::exit::UsageError;
use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The company of the load test's events (EDS's).
pub const LOADTEST_COMPANY: &str = "28a6712e-83a0-4ede-97cb-c3f5201068dc";
/// The location of the load test's events (EDS's).
pub const LOADTEST_LOCATION: &str = "5b7a05d6-c971-4f77-8792-9c12744a811d";
/// The `customer` model version of the load test's events (EDS's).
pub const LOADTEST_MODEL_VERSION: &str = "547388d6b0a76f85";

/// How many publishes may wait for their acknowledgement at once when there is no delay.
const WINDOW: usize = 256;
/// How long the server has to acknowledge one publish.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// `eds integrationtest` subcommands.
#[derive(Debug, Subcommand)]
pub enum IntegrationTestCommand {
    /// Publish COUNT updates of random, realistic `customer` rows
    #[command(name = "loadtest-random")]
    LoadtestRandom {
        /// How many events to publish
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Pause between two events, in milliseconds (0: as fast as the server acknowledges)
        #[arg(long = "delay-ms", default_value_t = 100, value_name = "MS")]
        delay_ms: u64,
        /// Seed of the random rows (default: from the clock); the same seed gives the same rows
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Publish recorded change events from a file (JSON lines; .gz and .tar.gz too)
    #[command(name = "publish-file-data")]
    PublishFileData {
        /// Publish at most this many events (default: the whole file)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// The recording: one change event per line; `.gz` is gunzipped, `.tar.gz`/`.tgz` read from its first file
        #[arg(long, default_value = "../eds_test_data/output.jsonl.tar.gz", value_name = "FILE")]
        file: PathBuf,
        /// Only these tables (comma-separated or repeated)
        #[arg(long, value_delimiter = ',', value_name = "TABLE")]
        only: Vec<String>,
        /// Company the events are rewritten to (envelope and rows)
        #[arg(long = "company-id", default_value = LOADTEST_COMPANY, value_name = "ID")]
        company_id: String,
        /// Location the events are rewritten to (envelope and rows)
        #[arg(long = "location-id", default_value = LOADTEST_LOCATION, value_name = "ID")]
        location_id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Where the events go.
#[derive(Debug, Args)]
pub struct Target {
    /// NATS server URL(s), comma-separated; user:password@ or token@ in the URL authenticate
    #[arg(long, default_value = "nats://localhost:4222", value_name = "URL")]
    pub server: String,
    /// NATS credentials file (JWT and nkey seed)
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// Create the `dbchange` stream (subjects `dbchange.>`) when the server has none
    #[arg(long)]
    pub create_stream: bool,
}

/// Run an `eds integrationtest` subcommand. Returns the exit code.
pub fn run(command: &IntegrationTestCommand, out: &mut dyn Write) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        IntegrationTestCommand::LoadtestRandom { count, delay_ms, seed, target } => {
            let seed = seed.unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()) << 40);
            let now = now_ms();
            let events = (0..*count).map(move |i| {
                let payload = customer_update(seed, i, now + i);
                (format!("dbchange.customer.UPDATE.{LOADTEST_COMPANY}.1.PUBLIC.2"), payload)
            });
            runtime.block_on(publish_all(target, events, Duration::from_millis(*delay_ms), out))
        }
        IntegrationTestCommand::PublishFileData { count, file, only, company_id, location_id, target } => {
            let events = read_recording(file, only, company_id, location_id, count.unwrap_or(u64::MAX))?;
            if events.is_empty() {
                return Err(UsageError(format!(
                    "--file {}: no change event to publish{}",
                    file.display(),
                    if only.is_empty() { "" } else { " of the --only tables" }
                ))
                .into());
            }
            runtime.block_on(publish_all(target, events.into_iter(), Duration::ZERO, out))
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// xorshift64*: cheap random numbers that are the same for the same seed.
fn random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

const FIRST: [&str; 12] = [
    "Ada",
    "Grace",
    "Linus",
    "Margaret",
    "Alan",
    "Katherine",
    "Dennis",
    "Barbara",
    "Ken",
    "Radia",
    "Edsger",
    "Frances",
];
const LAST: [&str; 12] = [
    "Lovelace", "Hopper", "Torvalds", "Hamilton", "Turing", "Johnson", "Ritchie", "Liskov", "Thompson", "Perlman",
    "Dijkstra", "O'Brien",
];
const STREETS: [&str; 6] = ["Main St", "Oak Ave", "Elm St", "Pine Rd", "Cedar Ln", "Maple Dr"];
const CITIES: [(&str, &str, &str); 4] =
    [("Sacramento", "CA", "95814"), ("Portland", "OR", "97201"), ("Austin", "TX", "73301"), ("Denver", "CO", "80202")];

/// The `i`-th load-test event: an UPDATE of customer `customer<i>` whose first name, last name and
/// email changed, shaped like Shopmonkey's `customer` changes, stamped `ts_ms`.
pub fn customer_update(seed: u64, i: u64, ts_ms: u64) -> Vec<u8> {
    let mut state = (seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut pick = |n: usize| (random(&mut state) % n as u64) as usize;
    let id = format!("customer{i}");
    let (city, st, zip) = CITIES[pick(CITIES.len())];
    let row = |first: &str, last: &str, pick: &mut dyn FnMut(usize) -> usize| {
        json!({
            "id": id,
            "companyId": LOADTEST_COMPANY,
            "locationIds": [LOADTEST_LOCATION],
            "firstName": first,
            "lastName": last,
            "email": format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase().replace('\'', ""), pick(1000)),
            "customerType": if pick(4) == 0 { "Fleet" } else { "Customer" },
            "address1": format!("{} {}", 100 + pick(9900), STREETS[pick(STREETS.len())]),
            "city": city,
            "state": st,
            "postalCode": zip,
            "country": "US",
            "marketingOptIn": pick(2) == 0,
            "deleted": false,
            "createdDate": "2026-01-15T17:04:05.000Z",
            "updatedDate": crate::timefmt::rfc3339_millis(ts_ms),
        })
    };
    let before = row(FIRST[pick(FIRST.len())], LAST[pick(LAST.len())], &mut pick);
    let after = row(FIRST[pick(FIRST.len())], LAST[pick(LAST.len())], &mut pick);
    let event = json!({
        "operation": "UPDATE",
        "id": format!("{:016x}{:016x}", random(&mut state), random(&mut state)),
        "table": "customer",
        "key": [id],
        "modelVersion": LOADTEST_MODEL_VERSION,
        "companyId": LOADTEST_COMPANY,
        "locationId": LOADTEST_LOCATION,
        "userId": null,
        "before": before,
        "after": after,
        "diff": ["firstName", "lastName", "email"],
        "timestamp": ts_ms,
        "mvccTimestamp": format!("{ts_ms}000000.0000000000"),
    });
    event.to_string().into_bytes()
}

/// Read the recording at `path`: the change events of its lines, rewritten to `company` and
/// `location` and moved in time so the first happens a day from now (later than any import's
/// timestamp), at most `limit` of them. A first line that is not a change event is a header
/// and skipped (EDS's recordings start with one); any other such line is an error naming it.
fn read_recording(
    path: &Path,
    only: &[String],
    company: &str,
    location: &str,
    limit: u64,
) -> Result<Vec<(String, Vec<u8>)>> {
    let file = std::fs::File::open(path).map_err(|e| UsageError(format!("--file {}: {e}", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let reader: Box<dyn Read> = if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut entries = archive.entries().with_context(|| format!("reading the tar archive {}", path.display()))?;
        let mut first = loop {
            match entries.next() {
                None => bail!("{}: the archive holds no file", path.display()),
                Some(entry) => {
                    let entry = entry.with_context(|| format!("reading the tar archive {}", path.display()))?;
                    if entry.header().entry_type().is_file() {
                        break entry;
                    }
                }
            }
        };
        // The entry borrows the archive: read it whole.
        let mut bytes = Vec::new();
        first.read_to_end(&mut bytes).with_context(|| format!("reading the first file of {}", path.display()))?;
        Box::new(std::io::Cursor::new(bytes))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let shift_to = now_ms() + 86_400_000;
    let mut first_ts: Option<u64> = None;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(reader).lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("{}: reading line {line_no}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut event: Value = match serde_json::from_str::<Value>(&line) {
            Ok(v) if eds_drivers::event::validate(line.as_bytes()).is_ok() => v,
            _ if line_no == 1 => continue,
            Ok(_) => {
                let why =
                    eds_drivers::event::validate(line.as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
                bail!("{}: line {line_no} is not a change event: {why}", path.display())
            }
            Err(e) => bail!("{}: line {line_no} is not JSON: {e}", path.display()),
        };
        let table = event["table"].as_str().unwrap_or_default().to_owned();
        if !only.is_empty() && !only.iter().any(|t| t == &table) {
            continue;
        }
        let ts = event["timestamp"].as_u64().unwrap_or(0);
        let first = *first_ts.get_or_insert(ts);
        let new_ts = shift_to + ts.saturating_sub(first);
        rewrite(&mut event, company, location, new_ts);
        let op = event["operation"].as_str().unwrap_or("UPDATE").to_owned();
        events.push((format!("dbchange.{table}.{op}.{company}.{location}.PUBLIC.2"), event.to_string().into_bytes()));
        if events.len() as u64 >= limit {
            break;
        }
    }
    Ok(events)
}

/// Move `event` to `company`/`location` (its envelope and the rows' own fields) and to `ts_ms`.
fn rewrite(event: &mut Value, company: &str, location: &str, ts_ms: u64) {
    let Some(e) = event.as_object_mut() else { return };
    e.insert("companyId".into(), json!(company));
    e.insert("locationId".into(), json!(location));
    e.insert("timestamp".into(), json!(ts_ms));
    e.insert("mvccTimestamp".into(), json!(format!("{ts_ms}000000.0000000000")));
    for image in ["before", "after"] {
        if let Some(row) = e.get_mut(image).and_then(Value::as_object_mut) {
            rewrite_row(row, company, location);
        }
    }
}

fn rewrite_row(row: &mut Map<String, Value>, company: &str, location: &str) {
    if row.contains_key("companyId") {
        row.insert("companyId".into(), json!(company));
    }
    if row.contains_key("locationId") {
        row.insert("locationId".into(), json!(location));
    }
}

async fn connect(target: &Target) -> Result<jetstream::Context> {
    let (servers, auth) = crate::ingest::consumer::url_auth(&target.server);
    let mut opts = match auth {
        Some(crate::ingest::consumer::UrlAuth::UserPassword(user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some(crate::ingest::consumer::UrlAuth::Token(token)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    }
    .name("eds-integrationtest")
    .connection_timeout(Duration::from_secs(5));
    if let Some(creds) = &target.creds {
        opts =
            opts.credentials_file(creds).await.map_err(|e| UsageError(format!("--creds {}: {e}", creds.display())))?;
    }
    let redacted = eds_drivers::url::redact(&target.server);
    let client = tokio::time::timeout(Duration::from_secs(10), opts.connect(servers.as_str()))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to NATS at {redacted}: no answer within 10s"))?
        .map_err(|e| {
            anyhow::anyhow!("connecting to NATS at {redacted}: {}", eds_drivers::url::redact(&e.to_string()))
        })?;
    let js = jetstream::new(client);
    match js.get_stream("dbchange").await {
        Ok(_) => {}
        Err(_) if target.create_stream => {
            js.get_or_create_stream(jetstream::stream::Config {
                name: "dbchange".into(),
                subjects: vec!["dbchange.>".into()],
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the stream dbchange on {redacted}"))?;
        }
        // Another stream may capture the subjects: publishing will tell.
        Err(_) => {}
    }
    Ok(js)
}

/// Publish `events` (subject, payload) with `delay` between two, each acknowledged by the server.
async fn publish_all(
    target: &Target,
    events: impl Iterator<Item = (String, Vec<u8>)>,
    delay: Duration,
    out: &mut dyn Write,
) -> Result<u8> {
    let js = connect(target).await?;
    let redacted = eds_drivers::url::redact(&target.server);
    let started = Instant::now();
    let mut waiting = VecDeque::new();
    let (mut published, mut bytes) = (0u64, 0u64);
    let (mut first_seq, mut last_seq) = (None, 0u64);
    let mut duplicates = 0u64;
    let mut stream = String::new();
    let window = if delay.is_zero() { WINDOW } else { 1 };
    let mut next = events.peekable();
    while next.peek().is_some() || !waiting.is_empty() {
        if waiting.len() < window {
            if let Some((subject, payload)) = next.next() {
                let mut headers = async_nats::HeaderMap::new();
                let id = format!("{:016x}", xxhash_rust::xxh64::xxh64(&payload, 0));
                headers.insert("Nats-Msg-Id", id.as_str());
                bytes += payload.len() as u64;
                let ack = js
                    .publish_with_headers(subject.clone(), headers, payload.into())
                    .await
                    .with_context(|| format!("publishing to {subject} on {redacted}"))?;
                waiting.push_back((subject, ack));
                if !delay.is_zero() && next.peek().is_some() {
                    tokio::time::sleep(delay).await;
                }
                continue;
            }
        }
        let Some((subject, ack)) = waiting.pop_front() else { break };
        let ack = match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Err(_) => bail!("{subject}: {redacted} did not acknowledge the event within {ACK_TIMEOUT:?}"),
            Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                return Err(UsageError(format!(
                    "no JetStream stream on {redacted} captures {subject}: create one (subjects `dbchange.>`), or \
                     pass --create-stream when the server has no `dbchange` stream"
                ))
                .into())
            }
            Ok(Err(e)) => bail!("{subject}: {redacted} refused the event: {e}"),
            Ok(Ok(ack)) => ack,
        };
        published += 1;
        duplicates += u64::from(ack.duplicate);
        first_seq.get_or_insert(ack.sequence);
        last_seq = ack.sequence;
        stream = ack.stream;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "published {published} events ({bytes} bytes) to {redacted} in {secs:.2}s ({:.0} events/s); stream {stream} sequences {}..={last_seq}{}",
        published as f64 / secs.max(1e-9),
        first_seq.unwrap_or(0),
        if duplicates > 0 { format!("; {duplicates} were duplicates the server already had") } else { String::new() },
    )?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadtest_events_are_valid_customer_updates() {
        let a = customer_update(7, 3, 1_800_000_000_000);
        eds_drivers::event::validate(&a).unwrap();
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["table"], "customer");
        assert_eq!(v["operation"], "UPDATE");
        assert_eq!(v["key"], json!(["customer3"]));
        assert_eq!(v["modelVersion"], LOADTEST_MODEL_VERSION);
        assert_eq!(v["diff"], json!(["firstName", "lastName", "email"]));
        assert_eq!(v["after"]["id"], "customer3");
        assert_eq!(v["after"]["updatedDate"], "2027-01-15T08:00:00.000Z");
        assert_eq!(customer_update(7, 3, 1_800_000_000_000), a, "the same seed gives the same event");
        assert_ne!(customer_update(8, 3, 1_800_000_000_000), a, "another seed gives other rows");
        let ids: std::collections::HashSet<String> = (0..500)
            .map(|i| serde_json::from_slice::<Value>(&customer_update(7, i, 1)).unwrap()["id"].to_string())
            .collect();
        assert_eq!(ids.len(), 500, "event ids are unique");
    }

    #[test]
    fn recordings_are_rewritten_and_shifted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let ev = |table: &str, ts: u64| {
            json!({"operation":"INSERT","id":format!("e{ts}"),"table":table,"key":["k"],"modelVersion":"v",
                "companyId":"c0","locationId":"l0","after":{"id":"k","companyId":"c0","name":"x"},
                "timestamp":ts,"mvccTimestamp":"1.0"})
            .to_string()
        };
        let text =
            format!("id,table,header\n{}\n\n{}\n{}\n", ev("order", 1000), ev("customer", 1500), ev("order", 4000));
        std::fs::write(&path, text).unwrap();
        let got = read_recording(&path, &[], "C", "L", u64::MAX).unwrap();
        assert_eq!(got.len(), 3, "the header line is skipped");
        let vs: Vec<Value> = got.iter().map(|(_, p)| serde_json::from_slice(p).unwrap()).collect();
        assert_eq!(got[0].0, "dbchange.order.INSERT.C.L.PUBLIC.2");
        assert_eq!(vs[0]["companyId"], "C");
        assert_eq!(vs[0]["after"]["companyId"], "C");
        assert!(vs[0]["after"].get("locationId").is_none(), "fields the row does not have are not added");
        let t0 = vs[0]["timestamp"].as_u64().unwrap();
        assert!(t0 > now_ms() + 86_000_000, "moved to a day from now");
        assert_eq!(vs[2]["timestamp"].as_u64().unwrap() - t0, 3000, "spacing kept");
        let only = read_recording(&path, &["customer".into()], "C", "L", u64::MAX).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(read_recording(&path, &[], "C", "L", 2).unwrap().len(), 2);

        std::fs::write(&path, format!("{}\nnot json\n", ev("order", 1))).unwrap();
        let e = read_recording(&path, &[], "C", "L", u64::MAX).unwrap_err().to_string();
        assert!(e.contains("rec.jsonl: line 2 is not JSON"), "{e}");
        std::fs::write(&path, format!("{}\n{{\"table\":\"x\"}}\n", ev("order", 1))).unwrap();
        let e = read_recording(&path, &[], "C", "L", u64::MAX).unwrap_err().to_string();
        assert!(e.contains("line 2 is not a change event"), "{e}");
    }

    #[test]
    fn gzip_and_tar_recordings_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let line = json!({"operation":"DELETE","id":"e1","table":"order","key":["k"],"modelVersion":"v",
            "before":{"id":"k"},"timestamp":5,"mvccTimestamp":"1.0"})
        .to_string()
            + "\n";
        let gz = dir.path().join("rec.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(line.as_bytes()).unwrap();
        enc.finish().unwrap();
        assert_eq!(read_recording(&gz, &[], "C", "L", u64::MAX).unwrap().len(), 1);

        let tgz = dir.path().join("rec.jsonl.tar.gz");
        let enc = flate2::write::GzEncoder::new(std::fs::File::create(&tgz).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(enc);
        let mut header = tar::Header::new_gnu();
        header.set_size(line.len() as u64 * 2);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "output.jsonl", format!("{line}{line}").as_bytes()).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        assert_eq!(read_recording(&tgz, &[], "C", "L", u64::MAX).unwrap().len(), 2);
    }
}
