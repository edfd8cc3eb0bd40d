//! Ingest: JetStream → WAL (fsynced) → ack, in stream order.
//!
//! Invariant: a message is acked only after the WAL holds it durably (or holds a marker for it
//! when it was dead-lettered), and WAL order is stream-sequence order, also across crashes.
//!
//! How order survives a crash: let `S` be the highest stream sequence durable in the WAL (read
//! back from the last record at start). A message with sequence ≤ `S` is acked and not appended.
//! The messages a dead process held unacked come back only after AckWait, behind newer ones; the
//! consumer info at start tells how many (`num_ack_pending`) and the highest sequence delivered
//! (`delivered.stream_seq`, `D`). Until all of them came back, messages above `D` are held (the
//! server stops delivering at MaxAckPending, which bounds the memory). Then everything is
//! appended in sequence order. Pending messages that never come back (MaxDeliver exhausted,
//! removed from the stream) are recorded as a gap after a deadline: logged, counted, in
//! `gaps.jsonl` and `/status` — never silent.

pub mod consumer;
pub mod dlq;
pub mod envelope;
pub mod validate;

use crate::server::state::{Gap, IngestState, ServerState};
use crate::timefmt::now_micros;
use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::pull as consumer_pull, Message};
use consumer::ConsumerSettings;
use envelope::{Envelope, Kind};
use futures_util::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Everything ingest needs to know.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Consumer settings (durable name, filters, limits).
    pub consumer: ConsumerSettings,
    /// NATS URLs, comma separated.
    pub nats_url: String,
    /// NATS creds file.
    pub creds: Option<PathBuf>,
    /// Connection name.
    pub connection_name: String,
    /// Largest number of messages appended as one WAL frame.
    pub max_batch: usize,
    /// Largest number of bytes appended as one WAL frame.
    pub max_batch_bytes: usize,
    /// Batches written but not yet acked at once (pipelining depth).
    pub max_inflight_batches: usize,
    /// Where gaps are recorded.
    pub gaps_file: PathBuf,
    /// How long to wait before retrying after the WAL failed.
    pub wal_retry: Duration,
}

/// Highest stream sequence stored in the WAL: from the last record's envelope.
pub fn last_stream_seq(wal: &eds_wal::Wal) -> Result<u64> {
    let head = wal.durable_lsn();
    if head == 0 {
        return Ok(0);
    }
    let dir = wal.dir().display();
    let mut r =
        wal.reader(head).with_context(|| format!("reading the last record (LSN {head}) of the WAL at {dir}"))?;
    let rec = r
        .next()
        .with_context(|| format!("reading the last record (LSN {head}) of the WAL at {dir}"))?
        .with_context(|| format!("the last record (LSN {head}) of the WAL at {dir} is not readable"))?;
    let env = envelope::decode(&rec.data).with_context(|| format!("WAL record {} is not an eds envelope", rec.lsn))?;
    Ok(env.stream_seq)
}

/// Bytes a message takes in a frame: payload, envelope fields (subject, id) and framing.
fn envelope_size(m: &Message) -> usize {
    m.payload.len() + m.subject.len() + 128
}

/// One message ready to be appended (or already stored and only waiting for its ack).
struct Pending {
    seq: u64,
    msg: Message,
}

/// For each drop-oldest destination whose cursor is inside the oldest segment, move its cursor
/// past that segment (so retention can delete it). Returns (destination, first, last) of the
/// LSNs skipped.
fn drop_oldest(wal: &eds_wal::Wal, destinations: &[String]) -> Vec<(String, u64, u64)> {
    let starts = wal.segment_starts();
    let Some(&second) = starts.get(1) else { return Vec::new() };
    let mut skipped = Vec::new();
    for name in destinations {
        let Ok(c) = wal.cursor(name) else { continue };
        if c.position + 1 < second {
            let to = second - 1;
            match wal.reset_cursor(name, to) {
                Ok(()) => skipped.push((name.clone(), c.position + 1, to)),
                Err(e) => {
                    tracing::error!(destination = %name, error = %eds_wal::error_chain(&e), "could not move a drop-oldest cursor")
                }
            }
        }
    }
    skipped
}

/// Why the inner loop stopped.
enum Stop {
    Shutdown,
    /// Re-run setup and reconciliation (after disk full, a WAL error, a lost consumer).
    Restart,
    /// Storing failed: the session ended (its pull stopped) and the error decides what next.
    StoreFailed(StoreError),
}

struct Ingest {
    cfg: IngestConfig,
    state: Arc<ServerState>,
    dlq: dlq::DeadLetters,
    /// Highest stream sequence appended (written, maybe not durable yet).
    appended_seq: u64,
    inflight: Arc<Semaphore>,
    /// The live connection, flushed at shutdown so the last acks leave the process.
    client: Option<async_nats::Client>,
    /// Signalled by the newest batch task once its batch is appended (true) or failed (false).
    last_append: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// The first error a batch task hit; the pull loop ends the session on it.
    failure: Arc<std::sync::Mutex<Option<StoreError>>>,
    /// A WAL to reopen after a failure: directory, options, last durable position.
    reopen: Option<(PathBuf, eds_wal::Options, eds_wal::Position)>,
    /// After a gap: the range it covers and the sequences of it that were stored. A message of
    /// that range arriving later cannot go into the WAL (it would break stream order) and must
    /// not be acked away as "already stored": it goes to the dead-letter log.
    gap_window: Option<(u64, u64, std::collections::BTreeSet<u64>)>,
}

/// Run ingest until `shutdown` turns true. Returns after in-flight batches are durable and acked.
pub async fn run(
    cfg: IngestConfig,
    state: Arc<ServerState>,
    dlq: dlq::DeadLetters,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let wal = state.wal().context("ingest started without an open write-ahead log")?;
    let s = tokio::task::spawn_blocking(move || last_stream_seq(&wal)).await??;
    state.ingest().stream_seq = s;
    state.metrics.stream_seq.set(s as i64);
    let inflight = Arc::new(Semaphore::new(cfg.max_inflight_batches.max(1)));
    let mut ingest = Ingest {
        cfg,
        state,
        dlq,
        appended_seq: s,
        inflight,
        client: None,
        last_append: None,
        failure: Arc::default(),
        reopen: None,
        gap_window: None,
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match ingest.session(&mut shutdown).await {
            Ok(Stop::Shutdown) => break,
            Ok(Stop::Restart) => backoff = Duration::from_millis(250),
            Ok(Stop::StoreFailed(e)) => {
                // The pull stream is gone with the session: nothing more is delivered to us
                // while we wait, so nothing climbs towards MaxDeliver.
                match ingest.after_store_error(e, &mut shutdown).await {
                    Ok(Stop::Shutdown) => break,
                    Ok(_) => backoff = Duration::from_millis(250),
                    Err(e) => {
                        let msg = eds_wal::error_chain(e.as_ref());
                        tracing::error!(error = %msg, retry_in = ?backoff, "ingest failed; retrying");
                        ingest.state.ingest().last_error = Some(msg);
                        ingest.state.set_state(IngestState::WalError);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            Err(e) => {
                let msg = eds_wal::error_chain(e.as_ref());
                tracing::error!(error = %msg, "ingest failed; retrying");
                {
                    let mut st = ingest.state.ingest();
                    st.last_error = Some(msg);
                }
                ingest.state.set_state(IngestState::Reconnecting);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    ingest.drain_inflight().await;
    if let Some(client) = &ingest.client {
        // Acks are published by the batch tasks; make sure they are on the wire before exit.
        if let Err(e) = client.flush().await {
            tracing::warn!(error = %e, "flushing the last acks failed; those messages will be redelivered and acked then");
        }
    }
    Ok(())
}

impl Ingest {
    async fn connect(&self) -> Result<(async_nats::Client, jetstream::Context)> {
        let (servers, auth) = consumer::url_auth(&self.cfg.nats_url);
        let mut opts = match auth {
            Some(consumer::UrlAuth::UserPassword(user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user, password)
            }
            Some(consumer::UrlAuth::Token(token)) => async_nats::ConnectOptions::with_token(token),
            None => async_nats::ConnectOptions::new(),
        }
        .name(&self.cfg.connection_name);
        if let Some(creds) = &self.cfg.creds {
            opts = opts
                .credentials_file(creds)
                .await
                .with_context(|| format!("reading NATS credentials {}", creds.display()))?;
        }
        let client = opts.connect(servers.as_str()).await.map_err(|e| {
            // async-nats's message may quote the server address it was given, secrets and all.
            let why = eds_drivers::url::redact(&eds_wal::error_chain(&e));
            anyhow::anyhow!("error connecting to NATS hosts at {}: {why}", eds_drivers::url::redact(&self.cfg.nats_url))
        })?;
        let js = jetstream::new(client.clone());
        Ok((client, js))
    }

    /// Wait until every in-flight batch is durable and acked.
    async fn drain_inflight(&self) {
        let n = self.cfg.max_inflight_batches.max(1) as u32;
        if let Ok(all) = self.inflight.acquire_many(n).await {
            drop(all);
        }
    }

    /// One connection + consumer lifetime.
    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Stop> {
        self.state.set_state(IngestState::Starting);
        // Everything written must be durable (and acked) before we read the consumer's state,
        // or its pending count would include our own in-flight batches.
        self.drain_inflight().await;
        self.last_append = None;
        if let Some(e) = self.take_failure() {
            let msg = format!("{e:?}");
            tracing::warn!(error = %msg, "a batch failed after its session ended; it will be redelivered");
            self.state.ingest().last_error = Some(msg);
        }
        if self.state.wal().is_none() {
            // An earlier reopen failed: try again before anything else.
            self.state.set_state(IngestState::WalError);
            self.reopen_wal().await?;
        }
        let wal =
            self.state.wal().context("the write-ahead log is not open (a reopen after a failure did not succeed)")?;
        let durable_seq = self.state.ingest().stream_seq;
        self.appended_seq = durable_seq;
        let (client, js) = self.connect().await?;
        if let Some(old) = self.client.replace(client.clone()) {
            // Acks of the previous session may still be in the old connection's buffer.
            let _ = tokio::time::timeout(Duration::from_secs(2), old.flush()).await;
        }
        let (mut consumer, info) = consumer::ensure(&js, &self.cfg.consumer, durable_seq).await?;
        let mut reconcile = Reconcile::from_info(&info, durable_seq, self.cfg.consumer.ack_wait);
        if reconcile.is_some() {
            self.state.set_state(IngestState::Reconciling);
        } else {
            self.state.set_state(IngestState::Running);
        }
        let mut pull: Option<consumer_pull::Batch> = None;
        let mut stopping = false;
        let mut errors_in_a_row = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            if pull.is_none() {
                if stopping {
                    // The last request is finished: nothing more can be delivered to us.
                    self.give_back(None, reconcile.take()).await;
                    return Ok(Stop::Shutdown);
                }
                pull = Some(consumer::request(&consumer, &self.cfg.consumer).await?);
            }
            let mut batch: Vec<Pending> = Vec::new();
            let Some(request) = pull.as_mut() else { continue };
            tokio::select! {
                _ = shutdown.changed(), if !stopping => {
                    // Stop asking; what the open request still delivers is stored as usual.
                    stopping = true;
                }
                next = request.next() => {
                    match next {
                        Some(Ok(m)) => {
                            errors_in_a_row = 0;
                            batch.push(self.pending(m)?);
                        }
                        Some(Err(e)) => {
                            errors_in_a_row += 1;
                            if errors_in_a_row >= 3 {
                                anyhow::bail!("pulling from consumer {} failed 3 times in a row: {e}", self.cfg.consumer.durable);
                            }
                            tracing::warn!(error = %e, "pull request failed");
                            pull = None;
                            continue;
                        }
                        None => {
                            pull = None;
                            continue;
                        }
                    }
                    // Take what is already there, without waiting: light load delivers at once,
                    // a backlog fills large frames.
                    let mut bytes = 0usize;
                    while batch.len() < self.cfg.max_batch && bytes < self.cfg.max_batch_bytes {
                        match request.next().now_or_never() {
                            Some(Some(Ok(m))) => {
                                bytes += envelope_size(&m);
                                batch.push(self.pending(m)?);
                            }
                            Some(Some(Err(e))) => tracing::warn!(error = %e, "pull request failed"),
                            Some(None) => {
                                pull = None;
                                break;
                            }
                            None => break,
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            if let Some(e) = self.take_failure() {
                self.give_back(pull.as_mut(), reconcile.take()).await;
                return Ok(Stop::StoreFailed(e));
            }
            let received = batch.len() as u64;
            if received > 0 {
                self.state.metrics.total_events.inc_by(received);
                self.state.metrics.pending_events.add(received as i64);
                self.state.ingest().received += received;
            }
            let ready = match &mut reconcile {
                Some(r) => {
                    // A replaced delivery is never acked itself: it is no longer pending with us.
                    let replaced = r.offer(batch);
                    self.state.metrics.pending_events.sub(replaced as i64);
                    // Only the server knows whether every pending message is in our hands:
                    // compare its pending count with what we hold.
                    if !r.check_due(Instant::now()) {
                        continue;
                    }
                    let info = consumer.info().await.context("reading the consumer's pending count")?;
                    match r.settle(info.num_ack_pending as u64, info.delivered.stream_sequence, Instant::now()) {
                        None => continue,
                        Some((ready, gap)) => {
                            if let Some(mut gap) = gap {
                                // Say which it was when the stream tells: removed by its limits,
                                // or still there but never redelivered (MaxDeliver).
                                if let Ok(mut stream) = js.get_stream(consumer::STREAM).await {
                                    if let Ok(info) = stream.info().await {
                                        let first = info.state.first_sequence;
                                        gap.reason = if first > gap.from_seq {
                                            format!("removed from the stream before redelivery (the stream now starts at sequence {first})")
                                        } else {
                                            "delivered to a previous process, never acked, and not redelivered before the deadline (MaxDeliver reached?)".into()
                                        };
                                    }
                                }
                                self.gap_window = Some((
                                    gap.from_seq,
                                    gap.to_seq,
                                    ready
                                        .iter()
                                        .map(|p| p.seq)
                                        .filter(|s| (gap.from_seq..=gap.to_seq).contains(s))
                                        .collect(),
                                ));
                                self.record_gap(gap);
                            }
                            reconcile = None;
                            self.state.set_state(IngestState::Running);
                            ready
                        }
                    }
                }
                None => batch,
            };
            if ready.is_empty() {
                continue;
            }
            // A reconciliation can release far more than one frame holds: store in chunks.
            let mut ready = ready.into_iter().peekable();
            while ready.peek().is_some() {
                let mut chunk = Vec::new();
                let mut bytes = 0usize;
                while let Some(p) = ready.next_if(|p| {
                    chunk.is_empty()
                        || (chunk.len() < self.cfg.max_batch
                            && bytes + envelope_size(&p.msg) <= self.cfg.max_batch_bytes)
                }) {
                    bytes += envelope_size(&p.msg);
                    chunk.push(p);
                }
                if let Err(e) = self.store(chunk, &wal).await {
                    self.give_back(pull.as_mut(), None).await;
                    return Ok(Stop::StoreFailed(e));
                }
            }
        }
    }

    /// Ending a session: NAK what was delivered to us but not stored (buffered in the pull, or
    /// held for reconciliation), so the server redelivers it at once to the next session instead
    /// of after AckWait — and the next session has nothing to wait for.
    async fn give_back(&self, request: Option<&mut consumer_pull::Batch>, held: Option<Reconcile>) {
        let mut given = Vec::new();
        if let Some(request) = request {
            while let Some(Some(Ok(m))) = request.next().now_or_never() {
                given.push(m);
            }
        }
        let buffered = given.len() as i64;
        if let Some(r) = held {
            given.extend(r.in_hand.into_values());
        }
        for m in &given {
            if let Err(e) = m.ack_with(async_nats::jetstream::AckKind::Nak(None)).await {
                tracing::debug!(error = %e, "NAK failed; the message comes back after AckWait");
            }
        }
        if !given.is_empty() {
            tracing::debug!(messages = given.len(), "gave unstored messages back to JetStream");
        }
        // Buffered ones were never counted as received; held ones were.
        self.state.metrics.pending_events.sub(given.len() as i64 - buffered);
        if let Some(c) = &self.client {
            let _ = c.flush().await;
        }
    }

    fn pending(&self, msg: Message) -> Result<Pending> {
        let seq = msg
            .info()
            .map_err(|e| anyhow::anyhow!("reading the JetStream metadata of a message on {}: {e}", msg.subject))?
            .stream_sequence;
        Ok(Pending { seq, msg })
    }

    /// Append `batch` (in stream order) and hand the acks to a task that waits for durability.
    async fn store(&mut self, mut batch: Vec<Pending>, wal: &eds_wal::Wal) -> Result<(), StoreError> {
        batch.sort_by_key(|p| p.seq);
        let received_at = now_micros();
        let mut records = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        let mut stored: Vec<Message> = Vec::with_capacity(batch.len());
        let mut already: Vec<Message> = Vec::new();
        let mut top = self.appended_seq;
        for p in batch {
            if p.seq <= top {
                let straggler = self
                    .gap_window
                    .as_ref()
                    .is_some_and(|(from, to, stored)| (*from..=*to).contains(&p.seq) && !stored.contains(&p.seq));
                if straggler {
                    tracing::warn!(stream_seq = p.seq, "a message of a recorded gap arrived late: dead-lettered, since storing it now would break stream order");
                    dead.push(
                        Envelope {
                            kind: Kind::DeadLetter,
                            stream_seq: p.seq,
                            received_at,
                            subject: p.msg.subject.as_str().into(),
                            msg_id: "".into(),
                            reason: "arrived after the gap it belonged to was recorded; storing it in the WAL now would break stream order".into(),
                            payload: &p.msg.payload,
                        }
                        .encode(),
                    );
                    if let Some((_, _, stored)) = self.gap_window.as_mut() {
                        stored.insert(p.seq);
                    }
                }
                // Already in the WAL (a redelivery) or dead-lettered: ack once durable.
                already.push(p.msg);
                continue;
            }
            top = p.seq;
            // Borrowed from the message: one envelope, encoded once per record kind.
            let msg_id = p.msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str()).unwrap_or("");
            let event = Envelope {
                kind: Kind::Event,
                stream_seq: p.seq,
                received_at,
                subject: p.msg.subject.as_str().into(),
                msg_id: msg_id.into(),
                reason: "".into(),
                payload: &p.msg.payload,
            };
            let checked = if envelope_size(&p.msg) > self.cfg.max_batch_bytes {
                Err(format!(
                    "message of {} bytes is larger than the write-ahead log's largest batch ({} bytes)",
                    p.msg.payload.len(),
                    self.cfg.max_batch_bytes
                ))
            } else {
                validate::check(&p.msg.payload)
            };
            match checked {
                Ok(_) => records.push(event.encode()),
                Err(reason) => {
                    tracing::warn!(stream_seq = p.seq, subject = %event.subject, reason = %reason, "dead-lettering an invalid message");
                    dead.push(Envelope { kind: Kind::DeadLetter, reason: reason.into(), ..event.clone() }.encode());
                    records.push(Envelope { kind: Kind::DeadLetterMarker, payload: &[], ..event }.encode());
                }
            }
            stored.push(p.msg);
        }
        let permit = self
            .inflight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Other(anyhow::anyhow!("ingest is closing")))?;
        if let Some(e) = self.take_failure() {
            return Err(e);
        }
        // The batch task appends once the previous batch has appended (WAL order = stream order)
        // and then waits for the fsync and acks, while this loop already pulls the next batch.
        let (appended_tx, appended_rx) = tokio::sync::oneshot::channel::<bool>();
        let previous = self.last_append.replace(appended_rx);
        self.appended_seq = top;
        let dead_count = dead.len() as u64;
        let (wal, dlq, state, failure) = (wal.clone(), self.dlq.clone(), self.state.clone(), self.failure.clone());
        let acked = (stored.len() + already.len()) as i64;
        tokio::spawn(async move {
            let _permit = permit;
            let written = tokio::task::spawn_blocking(move || -> Result<Option<(Duration, Duration)>, StoreError> {
                // The previous batch failed (or its task died): appending now would break order.
                if let Some(prev) = previous {
                    if prev.blocking_recv() != Ok(true) {
                        return Ok(None);
                    }
                }
                let started = Instant::now();
                let append = || -> Result<Option<u64>, StoreError> {
                    if !dead.is_empty() {
                        // Dead letters are durable before their markers: nothing is acked unless both are.
                        dlq.append(&dead).map_err(StoreError::Dlq)?;
                    }
                    if records.is_empty() {
                        return Ok(None);
                    }
                    Ok(Some(wal.append_nowait(&records).map_err(StoreError::Wal)?.last_lsn))
                };
                let target = match append() {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = appended_tx.send(false);
                        return Err(e);
                    }
                };
                let append_took = started.elapsed();
                let _ = appended_tx.send(true);
                let sync_started = Instant::now();
                let synced = match target {
                    Some(lsn) => wal.sync_through(lsn),
                    None => wal.sync(),
                };
                synced.map_err(StoreError::Wal)?;
                Ok(Some((append_took, sync_started.elapsed())))
            })
            .await;
            let (append_took, sync_took) = match written {
                Ok(Ok(Some(took))) => took,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    return;
                }
                Err(e) => {
                    let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(StoreError::Other(anyhow::anyhow!(
                        "the task appending a batch to the WAL failed: {e}"
                    )));
                    return;
                }
            };
            state.metrics.wal_append_seconds.observe(append_took.as_secs_f64());
            state.metrics.wal_fsync_seconds.observe(sync_took.as_secs_f64());
            for m in stored.iter().chain(already.iter()) {
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "ack failed; the message will be redelivered and acked then");
                }
            }
            let stored_seq = {
                let mut st = state.ingest();
                st.stream_seq = st.stream_seq.max(top);
                st.dead_lettered += dead_count;
                st.stream_seq
            };
            // Batch tasks may finish out of order: the gauge follows the maximum, never backwards.
            state.metrics.stream_seq.set(stored_seq as i64);
            state.metrics.dead_lettered.inc_by(dead_count);
            state.metrics.pending_events.sub(acked);
        });
        Ok(())
    }

    /// The first error a batch task hit, if any.
    fn take_failure(&self) -> Option<StoreError> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    async fn after_store_error(&mut self, e: StoreError, shutdown: &mut watch::Receiver<bool>) -> Result<Stop> {
        // The failed batch is not acked: JetStream redelivers it after AckWait, and the next
        // session's reconciliation keeps it ahead of newer messages.
        self.drain_inflight().await;
        match e {
            // The budget (not the file system: ENOSPC poisons the log and needs a reopen).
            StoreError::Wal(err @ eds_wal::Error::Full { .. }) => {
                tracing::warn!(error = %eds_wal::error_chain(&err), "WAL disk budget is full: ingest paused until space frees up; upstream keeps the data");
                self.state.set_state(IngestState::PausedForDisk);
                self.wait_for_space(shutdown).await
            }
            StoreError::Wal(err) => {
                let msg = eds_wal::error_chain(&err);
                tracing::error!(error = %msg, retry_in = ?self.cfg.wal_retry, "WAL write failed: ingest paused; reopening the WAL after a backoff");
                self.state.ingest().last_error = Some(msg);
                self.state.set_state(IngestState::WalError);
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.wal_retry) => {}
                    _ = shutdown.changed() => return Ok(Stop::Shutdown),
                }
                self.reopen_wal().await?;
                Ok(Stop::Restart)
            }
            StoreError::Dlq(err) => Err(anyhow::Error::new(err).context("writing the dead-letter log")),
            StoreError::Other(err) => Err(err),
        }
    }

    /// Replace a WAL handle a failure poisoned. What was written after its last durable
    /// position is cut first (a failed fsync may leave those bytes visible in the page cache,
    /// never on disk). If this fails, the next session tries again: `reopen` remembers where.
    async fn reopen_wal(&mut self) -> Result<()> {
        if let Some(old) = self.state.wal.write().unwrap_or_else(|p| p.into_inner()).take() {
            self.reopen = Some((old.dir().to_path_buf(), old.options().clone(), old.durable_position()));
        }
        let Some((dir, opts, durable)) = self.reopen.clone() else {
            anyhow::bail!("the write-ahead log is not open and there is nothing to reopen")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let wal = loop {
            let (d, o) = (dir.clone(), opts.clone());
            match tokio::task::spawn_blocking(move || eds_wal::Wal::open_after_failure(d, o, durable)).await? {
                Ok(w) => break w,
                // An HTTP request or a batch task may still hold a clone of the old handle for
                // a moment; the lock goes with the last one.
                Err(eds_wal::Error::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context(format!("reopening the write-ahead log at {}", dir.display()))
                    )
                }
            }
        };
        let s = {
            let w = wal.clone();
            tokio::task::spawn_blocking(move || last_stream_seq(&w)).await??
        };
        self.reopen = None;
        self.state.ingest().stream_seq = s;
        *self.state.wal.write().unwrap_or_else(|p| p.into_inner()) = Some(wal);
        tracing::info!(dir = %dir.display(), stream_seq = s, durable_lsn = durable.lsn, "write-ahead log reopened; anything after the last durable record was cut");
        Ok(())
    }

    /// Paused for disk: keep the durable consumer alive with pulls that cannot deliver, and
    /// resume once retention has freed enough space.
    async fn wait_for_space(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Stop> {
        let keepalive_every =
            (self.cfg.consumer.inactive_threshold / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        let mut keepalive = tokio::time::interval(keepalive_every);
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let (_client, js) = self.connect().await?;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Stop::Shutdown),
                _ = keepalive.tick() => {
                    if let Err(e) = consumer::keep_alive(&js, &self.cfg.consumer).await {
                        tracing::warn!(error = %e, "keep-alive pull failed");
                    }
                }
                _ = check.tick() => {
                    let Some(wal) = self.state.wal() else { continue };
                    let w = wal.clone();
                    let dropping = self.state.drop_oldest_destinations();
                    let skipped = tokio::task::spawn_blocking(move || drop_oldest(&w, &dropping)).await.unwrap_or_default();
                    for (name, from, to) in skipped {
                        self.state.destination(&name, |d| d.position = d.position.max(to));
                        self.record_gap(Gap {
                            from_seq: from,
                            to_seq: to,
                            missing: to - from + 1,
                            reason: format!("destination {name} (overflow=drop-oldest) skipped WAL records LSN {from}..{to} to make room while the disk budget was full"),
                            at: now_micros(),
                        });
                    }
                    let free = tokio::task::spawn_blocking(move || -> bool {
                        let _ = wal.persist_cursors();
                        let st = wal.stats();
                        let budget = wal.options().max_bytes.unwrap_or(u64::MAX);
                        // Room for a few full frames before pulling again, so we do not flap.
                        let used = st.bytes.saturating_add(st.outside_bytes);
                        used.saturating_add(4 * wal.options().max_frame_bytes.min(budget / 8)) <= budget
                    }).await.unwrap_or(false);
                    if free {
                        tracing::info!("WAL has room again: ingest resumes");
                        return Ok(Stop::Restart);
                    }
                }
            }
        }
    }

    fn record_gap(&self, gap: Gap) {
        tracing::error!(from_seq = gap.from_seq, to_seq = gap.to_seq, missing = gap.missing, reason = %gap.reason, "stream messages never came back: recorded as a gap");
        self.state.metrics.gaps.inc_by(gap.missing);
        let line = serde_json::json!({
            "from_seq": gap.from_seq, "to_seq": gap.to_seq, "missing": gap.missing,
            "reason": gap.reason, "at": crate::timefmt::rfc3339_micros(gap.at),
        });
        let written = crate::datadir::open_append(&self.cfg.gaps_file).and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
        if let Err(e) = written {
            tracing::error!(error = %e, file = %self.cfg.gaps_file.display(), "could not record the gap on disk");
        }
        self.state.ingest().gaps.push(gap);
    }
}

#[derive(Debug)]
enum StoreError {
    Wal(eds_wal::Error),
    Dlq(eds_wal::Error),
    Other(anyhow::Error),
}

/// Waiting for the messages a previous process held.
///
/// Done when every message the server counts as pending (delivered, not acked) is in our hands;
/// counting is the server's, so deliveries that went to a dead process after we looked are
/// waited for too.
struct Reconcile {
    ack_floor: u64,
    delivered: u64,
    in_hand: BTreeMap<u64, Message>,
    deadline: Instant,
    next_check: Instant,
}

impl Reconcile {
    fn from_info(
        info: &async_nats::jetstream::consumer::Info,
        durable_seq: u64,
        ack_wait: Duration,
    ) -> Option<Reconcile> {
        let pending = info.num_ack_pending as u64;
        // Nothing to hold when every pending message is already stored: they are acked as they
        // come back, and nothing newer can overtake them in the log.
        if pending == 0 || info.delivered.stream_sequence <= durable_seq {
            return None;
        }
        tracing::info!(
            pending,
            ack_floor = info.ack_floor.stream_sequence,
            delivered = info.delivered.stream_sequence,
            stored = durable_seq,
            "messages held by a previous process are pending: holding newer ones until they are redelivered (about AckWait)"
        );
        let now = Instant::now();
        // Redelivery starts AckWait after the original delivery; allow one more AckWait and a
        // margin for the redelivery itself before calling what is missing a gap.
        Some(Reconcile {
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            in_hand: BTreeMap::new(),
            deadline: now + ack_wait * 2 + Duration::from_secs(5),
            next_check: now,
        })
    }

    /// Take a batch (a redelivery replaces an earlier delivery of the same sequence). Returns how
    /// many earlier deliveries were replaced.
    fn offer(&mut self, batch: Vec<Pending>) -> u64 {
        batch.into_iter().map(|p| u64::from(self.in_hand.insert(p.seq, p.msg).is_some())).sum()
    }

    /// Whether to ask the server again (at most every 100 ms).
    fn check_due(&mut self, now: Instant) -> bool {
        if now < self.next_check {
            return false;
        }
        self.next_check = now + Duration::from_millis(100);
        true
    }

    /// Given the server's pending count, release everything in sequence order when all pending
    /// messages are in hand, or at the deadline with a gap for those that never came.
    fn settle(&mut self, pending: u64, delivered: u64, now: Instant) -> Option<(Vec<Pending>, Option<Gap>)> {
        self.delivered = self.delivered.max(delivered);
        let held = self.in_hand.len() as u64;
        tracing::trace!(pending, held, "reconciling");
        if held < pending && now < self.deadline {
            return None;
        }
        let gap = (held < pending).then(|| Gap {
            from_seq: self.ack_floor + 1,
            to_seq: self.delivered,
            missing: pending - held,
            reason: "delivered to a previous process, never acked, and not redelivered before the deadline (MaxDeliver reached or removed from the stream)".into(),
            at: now_micros(),
        });
        let all = std::mem::take(&mut self.in_hand).into_iter().map(|(seq, msg)| Pending { seq, msg }).collect();
        Some((all, gap))
    }
}
