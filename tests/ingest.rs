//! Ingest in-process against a real nats-server, with faults injected where no outside lever can
//! reach deterministically: a delivery lost in transit in the middle of a session.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use eds::dlq::DeadLetters;
use eds::ingest::consumer::ConsumerSettings;
use eds::ingest::puller::DeliveryFaults;
use eds::ingest::{self, IngestConfig};
use eds::metrics::Metrics;
use eds::state::ServerState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn config(nats: &Nats, dir: &std::path::Path, ack_wait: Duration, faults: Arc<DeliveryFaults>) -> IngestConfig {
    IngestConfig {
        consumer: ConsumerSettings {
            durable: "eds-faults".into(),
            company_ids: Vec::new(),
            ack_wait,
            max_ack_pending: 1_000,
            max_request_batch: 64,
            inactive_threshold: Duration::from_secs(3600),
            restart: true,
            start_after_import: None,
        },
        nats_url: nats.url(),
        creds: None,
        connection_name: "eds-faults".into(),
        max_batch: 64,
        max_batch_bytes: 1 << 20,
        max_inflight_batches: 4,
        gaps_file: dir.join("gaps.jsonl"),
        wal_retry: Duration::from_millis(100),
        accept_stream_reset: None,
        faults: Some(faults),
    }
}

/// A message delivered to this process but lost on the way (a dropped request, a reconnect) is
/// redelivered only after AckWait, behind newer messages that were stored meanwhile. Before the
/// fix it was then taken for "already stored" and acked without ever being stored. Now the gap in
/// the consumer sequence holds the newer messages until it is back: every message is in the WAL
/// once, in stream order, and no gap is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_lost_mid_session_is_waited_for_not_acked_away() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let wal = eds_wal::Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
    let state = Arc::new(ServerState::new(Metrics::new().unwrap(), wal.clone(), "eds-faults".into()));
    let dlq = DeadLetters::open(dir.path()).unwrap();
    let faults = Arc::new(DeliveryFaults::default());
    let cfg = config(&nats, dir.path(), Duration::from_secs(2), faults.clone());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(ingest::run(cfg, state.clone(), dlq, stop_rx));
    let stored = |want: u64| {
        let state = state.clone();
        async move { (state.ingest().stream_seq >= want).then_some(()) }
    };

    let mut seqs = Vec::new();
    for n in 1..=10 {
        seqs.push(publish(&js, subject("order", "UPDATE", "c1"), event("k", n)).await);
    }
    eventually("the first ten stored", Duration::from_secs(20), || stored(10)).await;
    // The next delivery is lost in transit; the nine after it arrive.
    faults.drop_next.store(1, Ordering::SeqCst);
    for n in 11..=20 {
        seqs.push(publish(&js, subject("order", "UPDATE", "c1"), event("k", n)).await);
    }
    eventually("every message stored (the lost one after AckWait)", Duration::from_secs(30), || stored(20)).await;
    assert_eq!(faults.drop_next.load(Ordering::SeqCst), 0, "the fault was injected");
    let status = state.status_json();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();

    let mut r = wal.reader(1).unwrap();
    let mut in_wal = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        in_wal.push(eds::record::decode(&rec.data).unwrap().stream_seq);
    }
    assert_eq!(in_wal, seqs, "every message once, in stream order");
    assert_eq!(status["ingest"]["gaps"], serde_json::json!([]), "{status}");
}

/// A gap that is real is still recorded, never silent: a delivery lost in transit whose message
/// is then removed from the stream can never come back. Once nothing awaited has come back for
/// the reconciliation's patience, what is missing is a gap (in /status and gaps.jsonl), and the
/// messages after it are stored in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delivery_removed_from_the_stream_is_recorded_as_a_gap() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let wal = eds_wal::Wal::open(dir.path().join("wal"), eds_wal::Options::default()).unwrap();
    let state = Arc::new(ServerState::new(Metrics::new().unwrap(), wal.clone(), "eds-faults".into()));
    let dlq = DeadLetters::open(dir.path()).unwrap();
    let faults = Arc::new(DeliveryFaults::default());
    let cfg = config(&nats, dir.path(), Duration::from_secs(1), faults.clone());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(ingest::run(cfg, state.clone(), dlq, stop_rx));
    let stored = |want: u64| {
        let state = state.clone();
        async move { (state.ingest().stream_seq >= want).then_some(()) }
    };

    let mut seqs = Vec::new();
    for n in 1..=5 {
        seqs.push(publish(&js, subject("order", "UPDATE", "c1"), event("k", n)).await);
    }
    eventually("the first five stored", Duration::from_secs(20), || stored(5)).await;
    faults.drop_next.store(1, Ordering::SeqCst);
    let lost = publish(&js, subject("order", "UPDATE", "c1"), event("k", 6)).await;
    eventually("the delivery lost", Duration::from_secs(20), || async {
        (faults.drop_next.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    // Gone from the stream before JetStream could redeliver it (AckWait 1 s).
    let stream = js.get_stream("dbchange").await.unwrap();
    assert!(stream.delete_message(lost).await.unwrap());
    for n in 7..=10 {
        seqs.push(publish(&js, subject("order", "UPDATE", "c1"), event("k", n)).await);
    }
    eventually("the messages after the lost one stored", Duration::from_secs(40), || stored(10)).await;
    let status = state.status_json();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();

    let gaps = status["ingest"]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{status}");
    let (from, to) = (gaps[0]["from_seq"].as_u64().unwrap(), gaps[0]["to_seq"].as_u64().unwrap());
    assert!((from..=to).contains(&lost), "the gap covers sequence {lost}: {status}");
    let recorded = std::fs::read_to_string(dir.path().join("gaps.jsonl")).unwrap();
    assert_eq!(recorded.lines().count(), 1, "{recorded}");
    let mut r = wal.reader(1).unwrap();
    let mut in_wal = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        in_wal.push(eds::record::decode(&rec.data).unwrap().stream_seq);
    }
    assert_eq!(in_wal, seqs, "every other message once, in stream order");
}
