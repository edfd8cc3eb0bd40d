//! State shared between ingest and the HTTP endpoints.

use crate::metrics::Metrics;
use crate::timefmt::{now_micros, rfc3339_micros};
use eds_wal::Wal;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

/// What ingest is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestState {
    /// Connecting to NATS and setting up the consumer.
    Starting,
    /// Waiting for messages a previous process held to be redelivered, so the log keeps stream
    /// order; newer messages are held meanwhile.
    Reconciling,
    /// Pulling and storing.
    Running,
    /// The WAL disk budget is full: not pulling; upstream keeps the data.
    PausedForDisk,
    /// The WAL (or a dead-letter log) failed to write: not pulling until the disk takes writes.
    WalError,
    /// The stream was recreated upstream (its sequences restarted): stopped until the operator
    /// accepts it (`--accept-stream-reset`).
    StreamReset,
    /// Reconnecting to NATS after an error.
    Reconnecting,
    /// Shutting down.
    Stopping,
}

impl IngestState {
    fn name(self) -> &'static str {
        match self {
            IngestState::Starting => "starting",
            IngestState::Reconciling => "reconciling",
            IngestState::Running => "running",
            IngestState::PausedForDisk => "paused_for_disk",
            IngestState::WalError => "wal_error",
            IngestState::StreamReset => "stream_reset",
            IngestState::Reconnecting => "reconnecting",
            IngestState::Stopping => "stopping",
        }
    }
}

/// A range of stream messages that never came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Lowest stream sequence the missing messages can have.
    pub from_seq: u64,
    /// Highest.
    pub to_seq: u64,
    /// How many were missing.
    pub missing: u64,
    /// Why they are considered lost.
    pub reason: String,
    /// Unix microseconds when recorded.
    pub at: u64,
}

/// Ingest's figures for `/status`.
#[derive(Debug, Clone)]
pub struct IngestStatus {
    /// Current state.
    pub state: IngestState,
    /// Unix microseconds when it entered that state.
    pub since: u64,
    /// Durable consumer name.
    pub consumer: String,
    /// Highest stream sequence durable in the WAL.
    pub stream_seq: u64,
    /// Messages received.
    pub received: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Gaps recorded by this process.
    pub gaps: Vec<Gap>,
    /// Last error, if any.
    pub last_error: Option<String>,
}

/// Shared between ingest and HTTP.
#[derive(Debug)]
pub struct ServerState {
    /// Metrics registry.
    pub metrics: Metrics,
    /// The WAL (replaced when ingest reopens it after an I/O error).
    pub wal: RwLock<Option<Wal>>,
    shutting_down: AtomicBool,
    ingest: Mutex<IngestStatus>,
    destinations: Mutex<std::collections::BTreeMap<String, DestinationStatus>>,
    session: Mutex<Option<SessionStatus>>,
    /// Unix microseconds since HQ paused delivery (`pause` notification); 0 when not paused.
    hq_paused_since: std::sync::atomic::AtomicU64,
}

/// The HQ session the server runs under, for `/status` and heartbeats.
#[derive(Debug, Clone, Default)]
pub struct SessionStatus {
    /// Session id.
    pub id: String,
    /// Server id (from the session's credentials).
    pub server_id: String,
    /// Unix microseconds when this session started.
    pub since: u64,
    /// Sessions renewed by this process.
    pub renewals: u64,
    /// Heartbeats published in this session.
    pub heartbeats: u64,
    /// Unix microseconds of the last heartbeat published.
    pub last_heartbeat: Option<u64>,
}

/// One destination's figures for `/status`.
#[derive(Debug, Clone, Default)]
pub struct DestinationStatus {
    /// Driver name.
    pub driver: String,
    /// `delivering`, `idle`, `retrying`, `stopped`, `paused`, or `pausing` (held for an import,
    /// its drain not yet between batches).
    pub state: &'static str,
    /// Unix microseconds when it entered that state.
    pub since: u64,
    /// Cursor position: LSN of the last delivered record.
    pub position: u64,
    /// Events delivered by this process.
    pub delivered: u64,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Its overflow policy is drop-oldest.
    pub drop_oldest: bool,
    /// Held by an operator (`POST /destinations/<name>/pause`).
    pub paused: bool,
    /// Held while HQ's `import` loads this destination: an operator's or HQ's resume does not
    /// release it (the import's drops and loads must not meet a batch of the drain).
    pub importing: bool,
}

impl ServerState {
    /// Fresh state.
    pub fn new(metrics: Metrics, wal: Wal, consumer: String) -> ServerState {
        ServerState {
            metrics,
            wal: RwLock::new(Some(wal)),
            shutting_down: AtomicBool::new(false),
            destinations: Mutex::new(std::collections::BTreeMap::new()),
            session: Mutex::new(None),
            hq_paused_since: std::sync::atomic::AtomicU64::new(0),
            ingest: Mutex::new(IngestStatus {
                state: IngestState::Starting,
                since: now_micros(),
                consumer,
                stream_seq: 0,
                received: 0,
                dead_lettered: 0,
                gaps: Vec::new(),
                last_error: None,
            }),
        }
    }

    /// Lock the ingest status.
    pub fn ingest(&self) -> MutexGuard<'_, IngestStatus> {
        self.ingest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Move ingest to `state` (keeps `since` when unchanged).
    pub fn set_state(&self, state: IngestState) {
        let mut s = self.ingest();
        if s.state != state {
            s.state = state;
            s.since = now_micros();
            self.metrics.paused_for_disk.set(if state == IngestState::PausedForDisk { 1.0 } else { 0.0 });
        }
    }

    /// Lock the HQ session status (`None` without a session).
    pub fn session(&self) -> MutexGuard<'_, Option<SessionStatus>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// HQ's `pause`/`unpause`: holds or releases every destination's delivery (ingest goes on
    /// storing events, so nothing waits upstream). Returns whether anything changed.
    pub fn set_hq_paused(&self, paused: bool) -> bool {
        let since = if paused { now_micros().max(1) } else { 0 };
        let before = self.hq_paused_since.swap(since, Ordering::SeqCst);
        if paused && before != 0 {
            self.hq_paused_since.store(before, Ordering::SeqCst);
            return false;
        }
        let names: Vec<String> = self.destinations.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for name in names {
            self.set_paused(&name, paused);
        }
        before != since
    }

    /// Unix microseconds since HQ paused delivery, when it did.
    pub fn hq_paused_since(&self) -> Option<u64> {
        Some(self.hq_paused_since.load(Ordering::SeqCst)).filter(|&t| t != 0)
    }

    /// The current WAL handle.
    pub fn wal(&self) -> Option<Wal> {
        self.wal.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Update one destination's status.
    pub fn destination(&self, name: &str, update: impl FnOnce(&mut DestinationStatus)) {
        let mut all = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(name.to_owned()).or_default();
        let before = entry.state;
        update(entry);
        if entry.state != before {
            entry.since = now_micros();
        }
    }

    /// Pause or resume a destination's drain. False when there is no such destination.
    pub fn set_paused(&self, name: &str, paused: bool) -> bool {
        let mut all = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(name) {
            Some(d) => {
                d.paused = paused;
                tracing::info!(destination = %name, paused, "destination paused or resumed by an operator");
                true
            }
            None => false,
        }
    }

    /// Whether an operator paused this destination, or an import holds it.
    pub fn is_paused(&self, name: &str) -> bool {
        self.destinations.lock().unwrap_or_else(|p| p.into_inner()).get(name).is_some_and(|d| d.paused || d.importing)
    }

    /// Hold (or release) a destination's drain for an import. Holding marks it `pausing` until
    /// its drain, between batches, says `paused` (see [`ServerState::destination_state`]). False
    /// when there is no such destination.
    pub fn hold_for_import(&self, name: &str, held: bool) -> bool {
        let mut all = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = all.get_mut(name) else { return false };
        d.importing = held;
        if held {
            // Only the drain writes `paused`, at the top of its loop, after it saw the hold: a
            // `paused` seen from here on means no batch of it is in flight.
            d.state = "pausing";
            d.since = now_micros();
        }
        tracing::info!(destination = %name, held, "destination held for an import, or released");
        true
    }

    /// A destination's state (`delivering`, `paused`, …), when there is such a destination.
    pub fn destination_state(&self, name: &str) -> Option<&'static str> {
        self.destinations.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|d| d.state)
    }

    /// Names of the destinations whose overflow policy is drop-oldest.
    pub fn drop_oldest_destinations(&self) -> Vec<String> {
        let all = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().filter(|(_, d)| d.drop_oldest).map(|(n, _)| n.clone()).collect()
    }

    /// Every destination's cursor position.
    pub fn destination_positions(&self) -> Vec<(String, u64)> {
        self.destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, d)| (n.clone(), d.position))
            .collect()
    }

    /// Mark the process as shutting down (liveness turns 503).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.set_state(IngestState::Stopping);
    }

    /// Why liveness fails, if it does.
    pub fn liveness_problem(&self) -> Option<String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Some("shutting down".into());
        }
        match self.wal() {
            None => Some("write-ahead log is closed".into()),
            Some(w) if w.is_poisoned() => Some("write-ahead log cannot be written".into()),
            Some(_) if self.ingest().state == IngestState::WalError => Some("write-ahead log cannot be written".into()),
            Some(_) => None,
        }
    }

    /// Copy the WAL's counters into the metrics.
    pub fn refresh_metrics(&self) {
        let Some(w) = self.wal() else { return };
        let stats = w.stats();
        self.metrics.observe_wal(&stats);
        let positions = self.destination_positions();
        // Bytes are estimated from the log's average record size: segments are compressed and
        // records vary, so an exact figure would need a scan.
        let kept = stats.durable_lsn.saturating_sub(stats.oldest_lsn) + 1;
        let per_record = stats.bytes as f64 / kept.max(1) as f64;
        for (name, position) in &positions {
            let lag = stats.durable_lsn.saturating_sub(*position);
            self.metrics.destination_lag.with_label_values(&[name]).set(lag as i64);
            self.metrics.destination_lag_bytes.with_label_values(&[name]).set((lag as f64 * per_record) as i64);
        }
        // EDS's meaning, received and not yet delivered, once there are destinations: what the
        // slowest one still has to receive, plus what is received but not yet durable.
        if let Some(slowest) = positions.iter().map(|(_, p)| *p).min() {
            let not_durable = stats.written_lsn.saturating_sub(stats.durable_lsn);
            self.metrics.pending_events.set((stats.durable_lsn.saturating_sub(slowest) + not_durable) as i64);
        }
    }

    /// The `/status` document.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self.ingest().clone();
        let wal = self.wal().map(|w| {
            let st = w.stats();
            json!({
                "durable_lsn": st.durable_lsn, "oldest_lsn": st.oldest_lsn, "segments": st.segments,
                "bytes": st.bytes, "budget_bytes": w.options().max_bytes, "fsyncs": st.fsyncs,
                "records_appended": st.records, "poisoned": w.is_poisoned(),
            })
        });
        json!({
            "live": self.liveness_problem().is_none(),
            "pid": std::process::id(),
            "ingest": {
                "state": s.state.name(),
                "since": rfc3339_micros(s.since),
                "consumer": s.consumer,
                "stream_sequence": s.stream_seq,
                "received": s.received,
                "dead_lettered": s.dead_lettered,
                "gaps": s.gaps.iter().map(|g| json!({
                    "from_seq": g.from_seq, "to_seq": g.to_seq, "missing": g.missing,
                    "reason": g.reason, "at": rfc3339_micros(g.at),
                })).collect::<Vec<_>>(),
                "last_error": s.last_error,
            },
            "wal": wal,
            "session": self.session().as_ref().map(|s| json!({
                "id": s.id, "server_id": s.server_id, "since": rfc3339_micros(s.since), "renewals": s.renewals,
                "heartbeats": s.heartbeats, "last_heartbeat": s.last_heartbeat.map(rfc3339_micros),
                "paused_by_hq": self.hq_paused_since().map(rfc3339_micros),
            })),
            "destinations": self.destinations.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(name, d)| {
                let head = self.wal().map(|w| w.durable_lsn()).unwrap_or(0);
                json!({
                    "name": name, "driver": d.driver, "state": d.state, "since": rfc3339_micros(d.since),
                    "cursor": d.position, "lag_records": head.saturating_sub(d.position),
                    "delivered": d.delivered, "last_error": d.last_error, "paused": d.paused,
                    "importing": d.importing,
                })
            }).collect::<Vec<_>>(),
        })
    }
}
