//! End to end into Azure Event Hubs: NATS → the real `eds server` → a private Event Hubs test
//! double (AMQP 1.0, `eds_drivers::eventhub::double`), which records every message it accepted.
//! Every message is checked against what was published: body byte for byte, message id, content
//! type, partition key and `objectId` (recomputed here from the event's row object) and
//! `eds-lsn`; delivery is at least once, so a duplicate is allowed only as an exact replay (same
//! `eds-lsn`, same body, id, partition key and properties).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::{mixed_stream, Raw};
use common::proxy::{Mode, Proxy};
use common::setup::setup;
use common::wait::{delivered, destination, metric, status, stored, until, DELIVERY};
use common::{eds_bin, publish};
use eds_drivers::eventhub::double::{Double, Options, Received};
use eds_drivers::eventhub::{LSN_PROPERTY, OBJECT_ID_PROPERTY};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the double may take to show what it received.
const READ: Duration = Duration::from_secs(60);

/// Publish every event; the stream sequence of the last.
async fn publish_raw(js: &async_nats::jetstream::Context, events: &[Raw]) -> u64 {
    let mut seq = 0;
    for e in events {
        seq = publish(js, e.subject.clone(), e.bytes.clone()).await;
    }
    seq
}

/// `<table>.<companyId|NONE>.<locationId|NONE>.<pk>` and the `objectId` of an event, from its
/// row object (`after` when non-empty, else `before`), as the spec says EDS set them.
fn expected_keys(e: &Raw) -> (String, String) {
    let v: Value = serde_json::from_slice(&e.bytes).unwrap();
    let after = v.get("after").filter(|a| a.as_object().is_some_and(|o| !o.is_empty()));
    let row = after.or(v.get("before")).unwrap();
    let field = |k: &str| row.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("NONE").to_owned();
    let (c, l) = (field("companyId"), field("locationId"));
    (format!("{}.{c}.{l}.{}", e.table, e.pk), format!("dbchange.{}.{}.{c}.{l}.{}", e.table, e.op, e.pk))
}

/// Checks every received message against the published events (matched by body) and returns the
/// messages by `eds-lsn`: each event arrived, laid out as EDS did; a message seen twice is the
/// same message twice; within a partition key, first deliveries come in log order.
fn check_arrived(events: &[Raw], got: &[Received]) -> BTreeMap<u64, Received> {
    let by_body: BTreeMap<&[u8], &Raw> = events.iter().map(|e| (e.bytes.as_slice(), e)).collect();
    assert_eq!(by_body.len(), events.len(), "the test's events are distinct");
    let mut by_lsn: BTreeMap<u64, Received> = BTreeMap::new();
    for m in got {
        let e = by_body.get(m.body.as_slice()).unwrap_or_else(|| panic!("a message that was never published: {m:?}"));
        let (pk, object_id) = expected_keys(e);
        assert_eq!(m.partition_key, json!(pk));
        assert_eq!(m.message_id, json!(e.id));
        assert_eq!(m.content_type, json!("application/json"));
        assert_eq!(m.property(OBJECT_ID_PROPERTY), object_id);
        assert_eq!(m.properties.keys().collect::<Vec<_>>(), [LSN_PROPERTY, OBJECT_ID_PROPERTY]);
        match by_lsn.get(&m.lsn()) {
            Some(seen) => assert_eq!(seen.content(), m.content(), "a replay differs from the first delivery"),
            None => {
                by_lsn.insert(m.lsn(), m.clone());
            }
        }
    }
    let bodies: std::collections::BTreeSet<&[u8]> = by_lsn.values().map(|m| m.body.as_slice()).collect();
    assert_eq!(by_lsn.len(), bodies.len(), "one eds-lsn per event");
    for e in events {
        assert!(bodies.contains(e.bytes.as_slice()), "event {} ({} {}) never arrived", e.id, e.table, e.op);
    }
    let mut firsts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for m in got {
        if seen.insert(m.lsn()) {
            firsts.entry(m.partition_key.to_string()).or_default().push(m.lsn());
        }
    }
    for (key, lsns) in firsts {
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "partition key {key} out of log order: {lsns:?}");
    }
    by_lsn
}

/// A realistic stream — hostile strings and keys, 2^63-1, nested JSON, a 200 KiB value, events
/// without company or location, DELETEs whose row names another company than the envelope —
/// arrives in full, each message exactly as EDS laid it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_stream_arrives_message_for_message() {
    let double = Double::start();
    let s = setup().await;
    let events = mixed_stream(400);
    let eds = s.eds(&[double.url("name=e")], &[]);
    let lsn = stored(&eds, publish_raw(&s.js, &events).await).await;
    let st = delivered(&eds, &["e"], lsn).await;
    let d = destination(&st, "e");
    assert!(d["last_error"].is_null(), "{st}");
    assert_eq!(d["delivered"], events.len(), "{st}");
    let got = double.wait_for(events.len(), READ);
    assert_eq!(got.len(), events.len(), "a clean run sends every event once");
    check_arrived(&events, &got);
    assert!(got.iter().any(|m| m.body.len() > 200 * 1024), "the event with the 200 KiB value");
    assert!(got.iter().all(|m| m.batch), "in batch envelopes");
    assert_eq!(eds.stop(), 0);
}

/// The hub goes away behind a proxy, first cut (connections refused), then a black hole
/// (connections held, nothing answered): ingest keeps acknowledging, the destination reports
/// retrying with an error, and everything arrives once the hub is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_hubs_outage_through_a_proxy_loses_nothing() {
    let double = Double::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", double.port)).await;
    let s = setup().await;
    let events = mixed_stream(600);
    let eds = s.eds(&[double.url_via(proxy.port, "name=e&timeout=3s")], &[]);
    let stream = s.js.get_stream("dbchange").await.unwrap();
    let chunks: Vec<&[Raw]> = events.chunks(200).collect();
    let lsn = stored(&eds, publish_raw(&s.js, chunks[0]).await).await;
    delivered(&eds, &["e"], lsn).await;

    for (mode, chunk) in [(Mode::Cut, chunks[1]), (Mode::Blackhole, chunks[2])] {
        let retries = metric(&eds, r#"eds_destination_retries_total{destination="e"}"#).await;
        proxy.set(mode);
        let last = publish_raw(&s.js, chunk).await;
        let err = until(&eds, &format!("{mode:?}: the destination to report retrying"), DELIVERY, || async {
            let st = status(&eds).await;
            let d = destination(&st, "e");
            (d["state"] == "retrying").then(|| d["last_error"].as_str().map(str::to_owned)).flatten()
        })
        .await;
        assert!(err.contains("Event Hub"), "{mode:?}: {err}");
        until(&eds, &format!("{mode:?}: two more failed attempts"), DELIVERY, || async {
            let now = metric(&eds, r#"eds_destination_retries_total{destination="e"}"#).await;
            (now >= retries + 2.0).then_some(())
        })
        .await;
        // Ingest keeps storing and acknowledging while the hub is away.
        let lsn = stored(&eds, last).await;
        until(&eds, &format!("{mode:?}: every message acknowledged upstream"), DELIVERY, || async {
            let info = stream.consumer_info("eds-dev").await.unwrap();
            (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == last).then_some(())
        })
        .await;
        let st = status(&eds).await;
        let d = destination(&st, "e");
        assert!(d["cursor"].as_u64().unwrap() < lsn, "{mode:?}: delivered while the hub was away? {st}");
        proxy.set(Mode::Up);
        let st = delivered(&eds, &["e"], lsn).await;
        assert!(destination(&st, "e")["last_error"].is_null(), "{st}");
    }
    assert_eq!(status(&eds).await["ingest"]["received"], events.len());
    let got = double.wait_for(events.len(), READ);
    let by_lsn = check_arrived(&events, &got);
    assert_eq!(by_lsn.len(), events.len());
    eprintln!("{} messages for {} events: {} replays", got.len(), events.len(), got.len() - events.len());
    assert_eq!(eds.stop(), 0);
}

/// eds is SIGKILLed while a batch is in flight (held by a black hole in front of the hub, so the
/// transfer may reach the hub after eds died); the restart on the same data dir replays from the
/// persisted cursor: nothing is missing, and a duplicate is only ever a replay of the same message
/// (same `eds-lsn`, body, id, partition key and properties).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_then_restart_loses_nothing() {
    let double = Double::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", double.port)).await;
    let s = setup().await;
    let events = mixed_stream(1000);
    let url = double.url_via(proxy.port, "name=e&timeout=50s");
    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let (first, rest) = events.split_at(500);
    let lsn = stored(&eds, publish_raw(&s.js, first).await).await;
    delivered(&eds, &["e"], lsn).await;

    proxy.set(Mode::Blackhole);
    let last = stored(&eds, publish_raw(&s.js, rest).await).await;
    // With a 50 s timeout the first attempt at the rest waits for the hub's settlement (its
    // transfer held in the black hole), not retrying.
    until(&eds, "a batch in flight", DELIVERY, || async {
        let st = status(&eds).await;
        let d = destination(&st, "e");
        let waiting = d["cursor"].as_u64().unwrap_or(0) < last && d["state"] != "retrying";
        (waiting && proxy.swallowed() > 0).then_some(())
    })
    .await;
    eds.kill();
    // What eds had sent reaches the hub now, after eds died.
    proxy.set(Mode::Up);

    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let st = delivered(&eds, &["e"], last).await;
    assert!(destination(&st, "e")["last_error"].is_null(), "{st}");
    let got = double.wait_for(events.len(), READ);
    let by_lsn = check_arrived(&events, &got);
    assert_eq!(by_lsn.len(), events.len());
    eprintln!("{} messages for {} events: {} replays", got.len(), events.len(), got.len() - events.len());
    assert_eq!(eds.stop(), 0);
}

/// Events bigger than the hub's maximum message size are dead-lettered with the reason — their
/// size and the limit — while every other event is delivered; they never block the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_dead_lettered_and_the_rest_delivered() {
    let double = Double::start_with(Options { max_message_size: 100_000, ..Options::default() });
    let s = setup().await;
    let events = mixed_stream(120);
    // The 200 KiB value, in the event that writes it and in the `before` of the next for its key.
    let big: Vec<&Raw> = events.iter().filter(|e| e.bytes.len() > 100_000).collect();
    assert!(!big.is_empty() && big.len() < events.len() / 2, "{} big events", big.len());
    let eds = s.eds(&[double.url("name=e")], &[]);
    let lsn = stored(&eds, publish_raw(&s.js, &events).await).await;
    let st = delivered(&eds, &["e"], lsn).await;
    assert_ne!(destination(&st, "e")["state"], "stopped", "{st}");
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="e"}"#).await, big.len() as f64);
    let got = double.wait_for(events.len() - big.len(), READ);
    let rest: Vec<Raw> = events.iter().filter(|e| e.bytes.len() <= 100_000).cloned().collect();
    let by_lsn = check_arrived(&rest, &got);
    assert_eq!(by_lsn.len(), rest.len());
    assert_eq!(eds.stop(), 0);

    let dir = s.data.path().to_str().unwrap();
    let listed = std::process::Command::new(eds_bin())
        .args(["dlq", "list", "--destination", "e", "--json", "-d", dir])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let letters: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), big.len(), "{letters:?}");
    for (letter, e) in letters.iter().zip(&big) {
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains("100000 bytes") && reason.contains(&e.id), "{reason}");
        let said: usize = reason.split(" is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(said > e.bytes.len(), "{reason}");
    }
}
