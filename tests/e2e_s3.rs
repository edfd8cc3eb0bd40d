//! End to end: NATS JetStream → `eds server` → S3 (a private moto server per test, `MOTO_SERVER`),
//! read back with the AWS SDK. Built with the `s3` feature only.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::{mixed_stream, Raw};
use common::proxy::{Mode, Proxy};
use common::setup::{setup, Setup};
use common::wait::{delivered, destination, metric, status, stored, until, DELIVERY};
use common::*;
use eds_drivers::event::ChangeEvent;
use eds_drivers::naming;
use eds_drivers::s3::moto::Moto;
use std::collections::BTreeMap;
use std::path::Path;

const BUCKET: &str = "eds-e2e";
const PREFIX: &str = "cdc/";

/// Publish every event; the stream sequence of the last.
async fn publish_raw(js: &async_nats::jetstream::Context, events: &[Raw]) -> u64 {
    let mut seq = 0;
    for e in events {
        seq = publish(js, e.subject.clone(), e.bytes.clone()).await;
    }
    seq
}

/// Every event in the WAL of `data_dir`, by LSN (read after eds stopped).
fn wal_events(data_dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let wal = eds_wal::Wal::open_read_only(data_dir.join("wal"), eds_wal::Options::default()).unwrap();
    let mut r = wal.reader(1).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        let e = eds::record::decode(&rec.data).unwrap();
        if matches!(e.kind, eds::record::Kind::Event) {
            out.push((rec.lsn, e.payload.to_vec()));
        }
    }
    out
}

/// The objects one clean delivery of `events` (LSN, bytes; in LSN order) writes: each event at
/// `<prefix><table>/<secs>-<pk>.json` unless an earlier event took that name, then at
/// `…+<lsn>.json`; and how many got an `+<lsn>` name.
fn clean_delivery(events: &[(u64, Vec<u8>)]) -> (BTreeMap<String, Vec<u8>>, usize) {
    let mut out = BTreeMap::new();
    let mut collisions = 0;
    for (lsn, bytes) in events {
        let e = ChangeEvent::from_json(bytes).unwrap();
        let dir = format!("{PREFIX}{}/", naming::table_dir(&e));
        let plain = format!("{dir}{}", naming::plain_name(&e));
        let key = if out.contains_key(&plain) {
            collisions += 1;
            format!("{dir}{}", naming::lsn_name(&e, *lsn))
        } else {
            plain
        };
        assert!(out.insert(key.clone(), bytes.clone()).is_none(), "{key} twice");
    }
    (out, collisions)
}

/// The objects are exactly what one clean delivery of the WAL writes, and their bodies are, as a
/// multiset, exactly the published events.
fn assert_objects(objects: &BTreeMap<String, Vec<u8>>, data_dir: &Path, published: &[Raw]) {
    let wal = wal_events(data_dir);
    assert_eq!(wal.len(), published.len(), "events in the WAL");
    let (want, collisions) = clean_delivery(&wal);
    let extra: Vec<&String> = objects.keys().filter(|k| !want.contains_key(*k)).collect();
    let missing: Vec<&String> = want.keys().filter(|k| !objects.contains_key(*k)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "objects not written by one clean delivery: {extra:?}; missing: {missing:?}"
    );
    for (k, v) in &want {
        assert!(objects[k] == *v, "{k} holds other bytes");
    }
    let mut bodies: Vec<&[u8]> = objects.values().map(Vec::as_slice).collect();
    let mut sent: Vec<&[u8]> = published.iter().map(|r| r.bytes.as_slice()).collect();
    bodies.sort();
    sent.sort();
    assert!(bodies == sent, "the bodies are not the published events");
    // The stream has what the test is about: collisions, hostile keys, a 200 KiB event.
    assert!(collisions > 0, "no two events of a key in one second");
    assert!(objects.keys().any(|k| k.contains("%2E.%2F")), "a hostile key");
    assert!(objects.values().any(|b| b.len() > 200 * 1024), "the 200 KiB event");
}

/// moto with the test's bucket.
async fn moto() -> Moto {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    moto
}

/// The destination URL at `endpoint` (moto or a proxy in front of it), named `s3`.
fn url(endpoint: &str) -> String {
    Moto::url_at(endpoint, BUCKET, PREFIX, "&name=s3&timeout=2s")
}

/// Wait until the destination `s3` reports retrying with an error, and has failed `n` times.
async fn retrying(eds: &Eds, n: f64) -> String {
    let err = until(eds, "the destination to report retrying with an error", DELIVERY, || async {
        let st = status(eds).await;
        let d = destination(&st, "s3");
        (d["state"] == "retrying").then(|| d["last_error"].as_str().map(str::to_owned)).flatten()
    })
    .await;
    until(eds, &format!("{n} failed attempts"), DELIVERY, || async {
        (metric(eds, r#"eds_destination_retries_total{destination="s3"}"#).await >= n).then_some(())
    })
    .await;
    err
}

/// Ingest stored and acknowledged everything through stream sequence `last` while S3 is away.
async fn acked_while_away(s: &Setup, eds: &Eds, last: u64) -> u64 {
    let lsn = stored(eds, last).await;
    let stream = s.js.get_stream("dbchange").await.unwrap();
    until(eds, "every message acknowledged upstream", DELIVERY, || async {
        let info = stream.consumer_info("eds-dev").await.unwrap();
        (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == last).then_some(())
    })
    .await;
    let st = status(eds).await;
    assert!(destination(&st, "s3")["cursor"].as_u64().unwrap() < lsn, "delivered while S3 was away? {st}");
    lsn
}

/// A realistic mixed stream (collisions within a second, hostile keys and values, a 200 KiB
/// event) arrives as objects byte for byte, named as one clean delivery names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_stream_arrives_byte_for_byte() {
    let moto = moto().await;
    let s = setup().await;
    let events = mixed_stream(400);
    let eds = s.eds(&[url(&moto.endpoint())], &[]);
    let lsn = stored(&eds, publish_raw(&s.js, &events).await).await;
    let st = delivered(&eds, &["s3"], lsn).await;
    assert!(destination(&st, "s3")["last_error"].is_null(), "{st}");
    assert_eq!(eds.stop(), 0);
    assert_objects(&moto.objects(BUCKET, "").await, s.data.path(), &events);
}

/// S3 goes away twice in the middle of a stream — connections refused, then a black hole that
/// answers nothing: ingest keeps acknowledging, the destination reports retrying, and once S3 is
/// back every event is there, once, under the names one clean delivery gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_cut_then_black_hole_loses_nothing() {
    let moto = moto().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", moto.port)).await;
    let s = setup().await;
    let events = mixed_stream(600);
    let eds = s.eds(&[url(&format!("http://{}", proxy.addr()))], &[]);
    let (first, rest) = events.split_at(200);
    let (second, third) = rest.split_at(200);

    let lsn = stored(&eds, publish_raw(&s.js, first).await).await;
    delivered(&eds, &["s3"], lsn).await;

    for (mode, part) in [(Mode::Cut, second), (Mode::Blackhole, third)] {
        proxy.set(mode);
        let last = publish_raw(&s.js, part).await;
        let before = metric(&eds, r#"eds_destination_retries_total{destination="s3"}"#).await;
        let err = retrying(&eds, before + 2.0).await;
        assert!(!err.is_empty(), "{mode:?}");
        let lsn = acked_while_away(&s, &eds, last).await;
        proxy.set(Mode::Up);
        let st = delivered(&eds, &["s3"], lsn).await;
        assert!(destination(&st, "s3")["last_error"].is_null(), "{mode:?}: {st}");
    }
    assert_eq!(status(&eds).await["ingest"]["received"], 600);
    assert_eq!(eds.stop(), 0);
    assert_objects(&moto.objects(BUCKET, "").await, s.data.path(), &events);
}

/// eds is SIGKILLed while a batch is in flight (S3 a black hole); requests it sent before dying
/// reach S3 late, and the restart on the same data dir replays from the persisted cursor: nothing
/// is missing, and the objects are exactly those of one clean delivery (no `+<lsn>` copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_then_restart_converges() {
    let moto = moto().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", moto.port)).await;
    let s = setup().await;
    let events = mixed_stream(800);
    let dest = url(&format!("http://{}", proxy.addr()));
    let eds = s.eds(std::slice::from_ref(&dest), &[]);
    let (first, rest) = events.split_at(400);
    let lsn = stored(&eds, publish_raw(&s.js, first).await).await;
    delivered(&eds, &["s3"], lsn).await;

    proxy.set(Mode::Blackhole);
    let last_lsn = stored(&eds, publish_raw(&s.js, rest).await).await;
    // Uploads sent into the black hole, before the first of them times out (30 s by default).
    until(&eds, "a batch in flight", DELIVERY, || async {
        let st = status(&eds).await;
        let d = destination(&st, "s3");
        let waiting = d["cursor"].as_u64().unwrap_or(0) < last_lsn && d["state"] != "retrying";
        (waiting && proxy.swallowed() > 0).then_some(())
    })
    .await;
    eds.kill();
    proxy.set(Mode::Up);

    let eds = s.eds(std::slice::from_ref(&dest), &[]);
    let st = delivered(&eds, &["s3"], last_lsn).await;
    assert!(destination(&st, "s3")["last_error"].is_null(), "{st}");
    assert_eq!(eds.stop(), 0);
    assert_objects(&moto.objects(BUCKET, "").await, s.data.path(), &events);
}
