//! The heartbeat (spec §4.3): `eds.client.<sessionId>.heartbeat`, msgpack, the first at once
//! and then every minute, carrying EDS's fields plus this server's WAL and per-destination lag.
//! `pendingEvents` is the real figure (EDS always sent 0).

use super::wire;
use crate::state::ServerState;
use crate::timefmt::now_micros;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a heartbeat goes out.
pub const EVERY: Duration = Duration::from_secs(60);

/// Sample counts of a histogram vector, over all its label values.
fn sample_count(h: &prometheus::HistogramVec) -> u64 {
    use prometheus::core::Collector;
    h.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_histogram().get_sample_count()).sum()
}

/// One heartbeat's body as JSON (numbers and field names as they go out).
pub fn body(state: &ServerState, session_id: &str, offset: u64, uptime: Duration) -> serde_json::Value {
    state.refresh_metrics();
    let m = &state.metrics;
    let wal = state.wal().map(|w| {
        let s = w.stats();
        json!({ "bytes": s.bytes, "segments": s.segments, "durableLsn": s.durable_lsn, "oldestLsn": s.oldest_lsn })
    });
    let head = state.wal().map(|w| w.durable_lsn()).unwrap_or(0);
    let destinations: Vec<_> = state
        .destination_positions()
        .into_iter()
        .map(|(name, position)| {
            let lag_seconds = m.destination_lag_seconds.with_label_values(&[&name]).get();
            json!({ "name": name, "cursor": position, "lagRecords": head.saturating_sub(position), "lagSeconds": lag_seconds })
        })
        .collect();
    json!({
        "sessionId": session_id,
        "offset": offset,
        "uptime": uptime.as_secs(),
        "stats": {
            "metrics": {
                "flushCount": sample_count(&m.flush_count),
                "flushDuration": sample_count(&m.flush_duration),
                "processingDuration": sample_count(&m.processing_duration),
                "totalEvents": m.total_events.get(),
                "pendingEvents": m.pending_events.get().max(0),
            },
            "memory": super::host::memory(),
            "load": super::host::load(),
        },
        "wal": wal,
        "destinations": destinations,
    })
}

/// One heartbeat as msgpack: [`body`], plus `paused` (msgpack timestamp) while HQ paused delivery.
pub fn encode(state: &ServerState, session_id: &str, offset: u64, uptime: Duration) -> Vec<u8> {
    let mut v = wire::to_msgpack(&body(state, session_id, offset, uptime));
    if let (Some(since), rmpv::Value::Map(map)) = (state.hq_paused_since(), &mut v) {
        map.push((rmpv::Value::from("paused"), wire::timestamp(since)));
    }
    wire::encode(&v)
}

/// Publishes heartbeats for `session_id` every `every` until `stop` turns true. A failed publish
/// is logged and the next one tried on time: heartbeats are best-effort, the data path is not.
pub async fn run(
    client: async_nats::Client,
    state: Arc<ServerState>,
    session_id: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let subject = format!("eds.client.{session_id}.heartbeat");
    let started = Instant::now();
    let mut offset = 0u64;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let payload = encode(&state, &session_id, offset, started.elapsed());
        match client.publish_with_headers(subject.clone(), wire::msgpack_headers(), payload.into()).await {
            Ok(()) => {
                state.metrics.hq_heartbeats.inc();
                if let Some(s) = state.session().as_mut() {
                    s.heartbeats += 1;
                    s.last_heartbeat = Some(now_micros());
                }
                tracing::trace!(session_id, offset, "heartbeat sent");
            }
            Err(e) => tracing::warn!(session_id, error = %e, "heartbeat could not be published"),
        }
        offset += 1;
    }
}
