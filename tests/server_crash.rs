//! SIGKILL `eds server` at random moments while events are being published: every stream
//! sequence ends up in the WAL exactly once, in stream order, and per-key order holds.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const C1: &str = "6287a4154d1a72cc5ce091bb";

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_publishing_loses_nothing_and_keeps_stream_order() {
    let rounds: usize = std::env::var("EDS_SERVER_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut seed: u64 = std::env::var("EDS_SERVER_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("EDS_SERVER_CRASH_SEED={seed}");

    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();

    // Publisher: updates to a few hot keys, so per-key order is meaningful.
    let published: Arc<Mutex<Vec<(u64, String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop, js) = (published.clone(), stop.clone(), js.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", n % 7);
                let seq = publish(&js, subject("order", "UPDATE", C1), event(&key, n)).await;
                published.lock().unwrap().push((seq, key, n));
                n += 1;
                if n.is_multiple_of(50) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    // Consumer created before publishing matters: start at the beginning of the stream.
    let args = ["--restart", "--ack-wait", "1s"];
    for round in 0..rounds {
        let eds = Eds::start(data.path(), &nats, &args);
        let delay = Duration::from_millis(50 + rng(&mut seed) % 2500);
        tokio::time::sleep(delay).await;
        eprintln!("round {round}: SIGKILL after {delay:?}");
        eds.kill();
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let published = published.lock().unwrap().clone();
    let last = published.last().unwrap().0;

    // A final server drains what is left: redeliveries come after AckWait, in seconds.
    let started = Instant::now();
    let eds = Eds::start(data.path(), &nats, &args);
    eds.wait_stored(last, Duration::from_secs(60)).await;
    eprintln!("final catch-up took {:?}", started.elapsed());
    let status = eds.status().await;
    assert_eq!(status["ingest"]["gaps"].as_array().unwrap().len(), 0, "{status}");
    assert_eq!(eds.stop(), 0);

    let envs = wal_envelopes(data.path());
    let stored: Vec<u64> = envs.iter().map(|e| e.0).collect();
    let expected: Vec<u64> = published.iter().map(|p| p.0).collect();
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "WAL not in strictly increasing stream order");
    assert_eq!(stored.len(), expected.len(), "every published message exactly once");
    assert_eq!(stored, expected);
    // Per-key order: each key's `number` only grows in WAL order.
    let mut last_per_key: BTreeMap<String, u64> = BTreeMap::new();
    let by_seq: BTreeMap<u64, (String, u64)> = published.iter().map(|(s, k, n)| (*s, (k.clone(), *n))).collect();
    for (seq, _, payload) in &envs {
        let (key, n) = &by_seq[seq];
        assert_eq!(payload, &event(key, *n));
        if let Some(prev) = last_per_key.insert(key.clone(), *n) {
            assert!(prev < *n, "key {key}: update {n} stored after {prev}");
        }
    }
    let info = js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev").await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    eprintln!("{} messages over {rounds} SIGKILL rounds", expected.len());
}

/// A graceful restart under traffic, with the default AckWait of five minutes: nothing is left
/// delivered-but-unread at the stop, so the next start has nothing to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_under_traffic_does_not_wait_for_ack_wait() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let published: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop, js) = (published.clone(), stop.clone(), js.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let seq = publish(&js, subject("order", "UPDATE", C1), event(&format!("k{}", n % 5), n)).await;
                published.lock().unwrap().push(seq);
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for _ in 0..3 {
        let eds = Eds::start(data.path(), &nats, &["--restart"]);
        let target = eventually("some traffic", Duration::from_secs(10), || async {
            published.lock().unwrap().last().copied().filter(|s| *s > 0)
        })
        .await;
        eds.wait_stored(target, Duration::from_secs(20)).await;
        assert_eq!(eds.stop(), 0);
    }
    let eds = Eds::start(data.path(), &nats, &["--restart"]);
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let expected = published.lock().unwrap().clone();
    // Far below AckWait (5 minutes): a stall would fail this.
    eds.wait_stored(*expected.last().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(eds.status().await["ingest"]["gaps"].as_array().unwrap().len(), 0);
    assert_eq!(eds.stop(), 0);
    let stored: Vec<u64> = wal_envelopes(data.path()).iter().map(|e| e.0).collect();
    assert_eq!(stored, expected);
}
