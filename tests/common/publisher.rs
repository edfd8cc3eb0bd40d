//! The fault campaign's publisher: a seeded stream of creates, updates and deletes over a few
//! tables, published with many publish acks in flight at once, every event with a `Nats-Msg-Id`
//! so a retry after a lost ack is deduplicated by the stream (never stored twice).
#![allow(dead_code, clippy::unwrap_used)]

use super::events::{date, Ev, T0};
use async_nats::jetstream::message::PublishMessage;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tables of the campaign (both known to the mock HQ's `e2e_routes`).
pub const TABLES: &[&str] = &["order", "customer"];

/// A xorshift step: the campaign's only source of randomness, so a seed replays a run.
pub fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// `n` events over [`TABLES`], `keys` keys each, drawn from `seed`: a key is inserted when absent,
/// else deleted one time in eight, else updated. Every UPDATE names each column in its diff, so a
/// row's final state is its last event in stream order, whatever order retries published them in.
pub fn events(n: usize, keys: u64, mut seed: u64) -> Vec<Ev> {
    let mut live: BTreeMap<(usize, u64), Value> = BTreeMap::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = (rng(&mut seed) % TABLES.len() as u64) as usize;
        let k = rng(&mut seed) % keys;
        let table = TABLES[t];
        let mut row = json!({
            "id": format!("{table}-{k}"),
            "name": format!("name {i} {:x}", rng(&mut seed)),
            "updatedDate": date((i % 60_000) as i64),
        });
        let diff: &[&'static str] = if table == "order" {
            row["age"] = json!((rng(&mut seed) % 100_000) as f64 / 4.0);
            &["name", "updatedDate", "age"]
        } else {
            &["name", "updatedDate"]
        };
        let version = "fff000112";
        let ev = match live.get(&(t, k)) {
            None => {
                live.insert((t, k), row.clone());
                Ev::insert(table, version, row)
            }
            Some(prev) if rng(&mut seed).is_multiple_of(8) => {
                let ev = Ev::delete(table, version, prev.clone());
                live.remove(&(t, k));
                ev
            }
            Some(prev) => {
                let ev = Ev::update(table, version, prev.clone(), row.clone(), diff);
                live.insert((t, k), row);
                ev
            }
        };
        out.push(Ev { timestamp: T0 + i as i64, ..ev });
    }
    out
}

/// What a publisher run acked: the stream sequence of each event (by index), and how many were
/// sent again after a failed publish.
#[derive(Debug, Default)]
pub struct Acked {
    pub seqs: Vec<u64>,
    pub retries: u64,
}

impl Acked {
    /// The events in stream order, with their sequences.
    pub fn in_stream_order<'e>(&self, events: &'e [Ev]) -> Vec<(u64, &'e Ev)> {
        let mut v: Vec<(u64, &Ev)> = self.seqs.iter().copied().zip(events).collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }
}

/// Publish every event with up to `window` publish acks in flight, spread over about `spread`
/// (none: as fast as acks come). A failed publish (NATS down, an ack timed out) is sent again, with
/// the same message id, until acked; `acked` counts the events acked so far. Fails after
/// `deadline`.
pub async fn publish_pipelined(
    js: &async_nats::jetstream::Context,
    events: &[Ev],
    window: usize,
    spread: Option<Duration>,
    acked: Arc<AtomicUsize>,
    deadline: Duration,
) -> Acked {
    let started = Instant::now();
    let give_up = started + deadline;
    let payloads: Vec<(String, bytes::Bytes)> = events.iter().map(|e| (e.subject(), e.bytes().into())).collect();
    let mut seqs = vec![0u64; events.len()];
    let mut retry: VecDeque<usize> = VecDeque::new();
    // Each with the moment its ack is given up on: five seconds after it was sent, so acks lost with
    // a restarted server expire together, not one after another.
    let mut inflight: VecDeque<(usize, tokio::time::Instant, async_nats::jetstream::context::PublishAckFuture)> =
        VecDeque::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let mut retries = 0u64;
    // Message ids unique to this call: a second call on the same stream must not be taken for
    // duplicates of the first.
    let run = super::unique_suffix();
    while done < events.len() {
        assert!(
            Instant::now() < give_up,
            "publishing: only {done} of {} events acked after {deadline:?}",
            events.len()
        );
        // Send while the window has room: retries first, then new events (paced).
        while inflight.len() < window {
            let i = match retry.pop_front() {
                Some(i) => i,
                None if next < events.len() => {
                    if let Some(spread) = spread {
                        let due = started + spread.mul_f64(next as f64 / events.len() as f64);
                        if Instant::now() < due {
                            if inflight.is_empty() {
                                tokio::time::sleep_until(due.into()).await;
                            } else {
                                break;
                            }
                        }
                    }
                    next += 1;
                    next - 1
                }
                None => break,
            };
            let (subject, payload) = &payloads[i];
            let msg = PublishMessage::build().payload(payload.clone()).message_id(format!("fault-{run}-{i}"));
            // Bounded: while NATS is away, sending may wait for the reconnect.
            match tokio::time::timeout(Duration::from_secs(5), js.send_publish(subject.clone(), msg)).await {
                Ok(Ok(ack)) => inflight.push_back((i, tokio::time::Instant::now() + Duration::from_secs(5), ack)),
                _ => {
                    retries += 1;
                    retry.push_back(i);
                    // NATS is out of reach: give it a moment rather than spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
        let Some((i, expires, ack)) = inflight.pop_front() else { continue };
        // Bounded too: an ack lost with a restarted server must not hold the publisher up.
        match tokio::time::timeout_at(expires, ack).await.map_err(|_| ()).and_then(|r| r.map_err(|_| ())) {
            Ok(a) => {
                seqs[i] = a.sequence;
                done += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                retries += 1;
                retry.push_back(i);
            }
        }
    }
    Acked { seqs, retries }
}
