//! End to end into Kafka: NATS → the real `eds server` → a private tansu broker, read back with a
//! consumer that assigns every partition and reads to the end. Every message is checked against
//! what was published: key, both headers, partition (recomputed from the header) and value byte
//! for byte; delivery is at least once, so a duplicate is allowed only as an exact replay (same
//! `eds-lsn`, same key, partition, headers and value).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::{mixed_stream, Raw};
use common::proxy::{Mode, Proxy};
use common::setup::setup;
use common::wait::{delivered, destination, metric, status, stored, until, DELIVERY};
use common::{eds_bin, free_port, publish};
use eds_drivers::kafka::tansu::{consume, Consumed, Tansu};
use eds_drivers::kafka::{partition_for, LSN_HEADER, PARTITION_KEY_HEADER};
use std::collections::BTreeMap;

/// Publish every event; the stream sequence of the last.
async fn publish_raw(js: &async_nats::jetstream::Context, events: &[Raw]) -> u64 {
    let mut seq = 0;
    for e in events {
        seq = publish(js, e.subject.clone(), e.bytes.clone()).await;
    }
    seq
}

fn or_none(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("NONE")
}

/// Checks every consumed message against the published events (matched by body) and returns the
/// messages by `eds-lsn`: each event arrived, laid out as EDS did, in its key's partition, in log
/// order within the partition; a message seen twice is the same message twice.
fn check_arrived(events: &[Raw], partitions: i32, got: &[Consumed]) -> BTreeMap<u64, Consumed> {
    let by_body: BTreeMap<&[u8], &Raw> = events.iter().map(|e| (e.bytes.as_slice(), e)).collect();
    assert_eq!(by_body.len(), events.len(), "the test's events are distinct");
    let mut by_lsn: BTreeMap<u64, Consumed> = BTreeMap::new();
    for m in got {
        let e = by_body.get(m.value.as_slice()).unwrap_or_else(|| panic!("a message that was never published: {m:?}"));
        let key = format!("dbchange.{}.{}.{}.{}.{}", e.table, e.op, or_none(&e.company), or_none(&e.location), e.id);
        assert_eq!(String::from_utf8_lossy(&m.key), key);
        let pk = format!("{}.{}.{}.{}", e.table, or_none(&e.company), or_none(&e.location), e.pk);
        assert_eq!(m.header(PARTITION_KEY_HEADER), pk);
        assert_eq!(m.partition, partition_for(&pk, partitions), "{pk}");
        assert_eq!(m.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), [PARTITION_KEY_HEADER, LSN_HEADER]);
        match by_lsn.get(&m.lsn()) {
            Some(seen) => {
                assert_eq!(seen.without_offset(), m.without_offset(), "a replay differs from the first delivery")
            }
            None => {
                by_lsn.insert(m.lsn(), m.clone());
            }
        }
    }
    let bodies: std::collections::BTreeSet<&[u8]> = by_lsn.values().map(|m| m.value.as_slice()).collect();
    assert_eq!(by_lsn.len(), bodies.len(), "one eds-lsn per event");
    for e in events {
        assert!(bodies.contains(e.bytes.as_slice()), "event {} ({} {}) never arrived", e.id, e.table, e.op);
    }
    // Within a partition, first deliveries come in log order (a replay starts over at its batch).
    for p in 0..partitions {
        let mut seen = std::collections::BTreeSet::new();
        let firsts: Vec<u64> =
            got.iter().filter(|m| m.partition == p).map(Consumed::lsn).filter(|l| seen.insert(*l)).collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "partition {p} out of log order: {firsts:?}");
    }
    by_lsn
}

/// A realistic stream — hostile strings and keys, 2^63-1, nested JSON, a 200 KiB value, events
/// without company or location — arrives in full, each message exactly as EDS laid it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_stream_arrives_message_for_message() {
    let tansu = Tansu::start();
    tansu.create_topic("cdc", 3);
    let s = setup().await;
    let events = mixed_stream(400);
    let eds = s.eds(&[tansu.url("cdc", "?name=k")], &[]);
    let lsn = stored(&eds, publish_raw(&s.js, &events).await).await;
    let st = delivered(&eds, &["k"], lsn).await;
    let d = destination(&st, "k");
    assert!(d["last_error"].is_null(), "{st}");
    assert_eq!(d["delivered"], events.len(), "{st}");
    let got = consume(&tansu.addr(), "cdc").await;
    assert_eq!(got.len(), events.len(), "a clean run sends every event once");
    check_arrived(&events, 3, &got);
    assert!(got.iter().any(|m| m.value.len() > 200 * 1024), "the event with the 200 KiB value");
    assert_eq!(eds.stop(), 0);
}

/// The broker goes away behind a proxy, first cut (connections refused), then a black hole
/// (connections held, nothing answered): ingest keeps acknowledging, the destination reports
/// retrying with an error, and everything arrives once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_through_a_proxy_loses_nothing() {
    let listen = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{listen}")).await;
    let tansu = Tansu::start_advertising(listen, proxy.port);
    tansu.create_topic("cdc", 3);
    let s = setup().await;
    let events = mixed_stream(600);
    let eds = s.eds(&[tansu.url("cdc", "?name=k&timeout=3s")], &[]);
    let stream = s.js.get_stream("dbchange").await.unwrap();
    let chunks: Vec<&[Raw]> = events.chunks(200).collect();
    let lsn = stored(&eds, publish_raw(&s.js, chunks[0]).await).await;
    delivered(&eds, &["k"], lsn).await;

    for (mode, chunk) in [(Mode::Cut, chunks[1]), (Mode::Blackhole, chunks[2])] {
        let retries = metric(&eds, r#"eds_destination_retries_total{destination="k"}"#).await;
        proxy.set(mode);
        let last = publish_raw(&s.js, chunk).await;
        let err = until(&eds, &format!("{mode:?}: the destination to report retrying"), DELIVERY, || async {
            let st = status(&eds).await;
            let d = destination(&st, "k");
            (d["state"] == "retrying").then(|| d["last_error"].as_str().map(str::to_owned)).flatten()
        })
        .await;
        assert!(err.contains("Kafka"), "{mode:?}: {err}");
        until(&eds, &format!("{mode:?}: two more failed attempts"), DELIVERY, || async {
            let now = metric(&eds, r#"eds_destination_retries_total{destination="k"}"#).await;
            (now >= retries + 2.0).then_some(())
        })
        .await;
        // Ingest keeps storing and acknowledging while the broker is away.
        let lsn = stored(&eds, last).await;
        until(&eds, &format!("{mode:?}: every message acknowledged upstream"), DELIVERY, || async {
            let info = stream.consumer_info("eds-dev").await.unwrap();
            (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == last).then_some(())
        })
        .await;
        let st = status(&eds).await;
        let d = destination(&st, "k");
        assert!(d["cursor"].as_u64().unwrap() < lsn, "{mode:?}: delivered while the broker was away? {st}");
        proxy.set(Mode::Up);
        let st = delivered(&eds, &["k"], lsn).await;
        assert!(destination(&st, "k")["last_error"].is_null(), "{st}");
    }
    assert_eq!(status(&eds).await["ingest"]["received"], events.len());
    let got = consume(&tansu.addr(), "cdc").await;
    let by_lsn = check_arrived(&events, 3, &got);
    assert_eq!(by_lsn.len(), events.len());
    eprintln!("{} messages for {} events: {} replays", got.len(), events.len(), got.len() - events.len());
    assert_eq!(eds.stop(), 0);
}

/// eds is SIGKILLed while a batch is in flight (held by a black hole in front of the broker, so
/// the request may reach the broker after eds died); the restart on the same data dir replays
/// from the persisted cursor: nothing is missing, and a duplicate is only ever a replay of the
/// same message (same `eds-lsn`, key, partition, headers and value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_then_restart_loses_nothing() {
    let listen = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{listen}")).await;
    let tansu = Tansu::start_advertising(listen, proxy.port);
    tansu.create_topic("cdc", 3);
    let s = setup().await;
    let events = mixed_stream(1000);
    let url = tansu.url("cdc", "?name=k&timeout=50s");
    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let (first, rest) = events.split_at(500);
    let lsn = stored(&eds, publish_raw(&s.js, first).await).await;
    delivered(&eds, &["k"], lsn).await;

    proxy.set(Mode::Blackhole);
    let last = stored(&eds, publish_raw(&s.js, rest).await).await;
    // With a 50 s timeout the first attempt at the rest waits for the broker's acknowledgements
    // (its produce requests held in the black hole), not retrying.
    until(&eds, "a batch in flight", DELIVERY, || async {
        let st = status(&eds).await;
        let d = destination(&st, "k");
        let waiting = d["cursor"].as_u64().unwrap_or(0) < last && d["state"] != "retrying";
        (waiting && proxy.swallowed() > 0).then_some(())
    })
    .await;
    eds.kill();
    // What eds had sent reaches the broker now, after eds died.
    proxy.set(Mode::Up);

    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let st = delivered(&eds, &["k"], last).await;
    assert!(destination(&st, "k")["last_error"].is_null(), "{st}");
    let got = consume(&tansu.addr(), "cdc").await;
    let by_lsn = check_arrived(&events, 3, &got);
    assert_eq!(by_lsn.len(), events.len());
    eprintln!("{} messages for {} events: {} replays", got.len(), events.len(), got.len() - events.len());
    assert_eq!(eds.stop(), 0);
}

/// Events bigger than the destination's `max-message-bytes` are dead-lettered with the reason —
/// their size and the limit — while every other event is delivered; they never block the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_dead_lettered_and_the_rest_delivered() {
    let tansu = Tansu::start();
    tansu.create_topic("cdc", 3);
    let s = setup().await;
    let events = mixed_stream(120);
    // The 200 KiB value, in the event that writes it and in the `before` of the next for its key.
    let big: Vec<&Raw> = events.iter().filter(|e| e.bytes.len() > 100_000).collect();
    assert!(!big.is_empty() && big.len() < events.len() / 2, "{} big events", big.len());
    let eds = s.eds(&[tansu.url("cdc", "?name=k&max-message-bytes=100000")], &[]);
    let lsn = stored(&eds, publish_raw(&s.js, &events).await).await;
    let st = delivered(&eds, &["k"], lsn).await;
    assert_ne!(destination(&st, "k")["state"], "stopped", "{st}");
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="k"}"#).await, big.len() as f64);
    let got = consume(&tansu.addr(), "cdc").await;
    assert_eq!(got.len(), events.len() - big.len());
    let rest: Vec<Raw> = events.iter().filter(|e| e.bytes.len() <= 100_000).cloned().collect();
    check_arrived(&rest, 3, &got);
    assert_eq!(eds.stop(), 0);

    let dir = s.data.path().to_str().unwrap();
    let listed = std::process::Command::new(eds_bin())
        .args(["dlq", "list", "--destination", "k", "--json", "-d", dir])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let letters: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), big.len(), "{letters:?}");
    for (letter, e) in letters.iter().zip(&big) {
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains("max-message-bytes=100000") && reason.contains(&e.id), "{reason}");
        let said: usize = reason.split(" is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(said > e.bytes.len(), "{reason}");
    }
}
