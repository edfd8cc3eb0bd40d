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
pub mod puller;
pub mod validate;

use crate::dlq;
use crate::record::{self, Envelope, Kind};
use crate::state::{Gap, IngestState, ServerState};
use crate::timefmt::now_micros;
use anyhow::{Context, Result};
use async_nats::jetstream::{self, Message};
use consumer::ConsumerSettings;
use puller::{DeliveryFaults, Puller};
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
    /// NATS user credentials (none: the URL's user info, or no authentication).
    pub creds: Option<NatsCredentials>,
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
    /// Go on after the stream was recreated upstream, when the WAL's last stored stream
    /// sequence is this one (the operator's `--accept-stream-reset`).
    pub accept_stream_reset: Option<u64>,
    /// Deliveries to lose on purpose (fault-injection tests only).
    pub faults: Option<Arc<DeliveryFaults>>,
}

/// NATS user credentials as ingest uses them: a decorated `.creds` text (user JWT and NKEY
/// seed), from a `--creds` file or handed over in memory by an HQ session, and what they allow.
/// The text is secret: `Debug` does not show it.
#[derive(Clone)]
pub struct NatsCredentials {
    text: Arc<str>,
    /// Whether the credentials allow `$JS.API.STREAM.INFO.dbchange`. HQ's session credentials do
    /// not: ingest then never asks for the stream's info (each refused request would be a
    /// permissions violation on the server, and a timeout here): a recreated stream is looked for
    /// with a probe consumer when the durable one is missing.
    pub stream_info_allowed: bool,
}

impl NatsCredentials {
    /// Credentials from a decorated `.creds` text.
    pub fn new(text: impl Into<Arc<str>>, stream_info_allowed: bool) -> NatsCredentials {
        NatsCredentials { text: text.into(), stream_info_allowed }
    }
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCredentials")
            .field("text", &"<redacted>")
            .field("stream_info_allowed", &self.stream_info_allowed)
            .finish()
    }
}

/// Bytes a message takes in a frame: payload, envelope fields (subject, id) and framing.
fn envelope_size(p: &Pending) -> usize {
    p.payload.len() + p.subject.len() + 128
}

/// One message ready to be appended (or already stored and only waiting for its ack).
///
/// Only what storing and acking need is kept: a JetStream message carries a whole client context,
/// and moving thousands of them through the batches cost measurable time.
struct Pending {
    /// Stream sequence.
    seq: u64,
    /// Consumer sequence: this delivery's number among all deliveries of the consumer.
    cseq: u64,
    subject: async_nats::Subject,
    /// Where the ack (or NAK) goes.
    reply: Option<async_nats::Subject>,
    payload: bytes::Bytes,
    /// The `Nats-Msg-Id` header, when there is one.
    msg_id: Option<String>,
}

/// What JetStream reads as an ack (an empty message, as async-nats sends it) and as a NAK.
const ACK: &[u8] = b"";
const NAK: &[u8] = b"-NAK";

/// Send `kind` to each reply subject.
async fn answer(
    client: &async_nats::Client,
    replies: impl IntoIterator<Item = async_nats::Subject>,
    kind: &'static [u8],
) {
    for reply in replies {
        if let Err(e) = client.publish(reply, bytes::Bytes::from_static(kind)).await {
            tracing::warn!(error = %e, "ack or NAK not sent; JetStream redelivers the message after AckWait");
        }
    }
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

/// What the stream's state says about the WAL's last stored sequence.
enum StreamCheck {
    /// Pull on; `from_start`: a new consumer starts at the stream's first message (the stream
    /// was recreated and the operator accepted it).
    Continue { from_start: bool },
    /// The stream was recreated upstream: its sequences restarted below what the WAL holds.
    Reset(String),
}

/// Why the inner loop stopped.
enum Stop {
    Shutdown,
    /// Re-run setup and reconciliation (after disk full, a WAL error, a lost consumer, a puller
    /// that kept failing).
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
    /// The log said once that the credentials do not allow reading the stream's info.
    told_no_stream_info: bool,
}

/// Run ingest until `shutdown` turns true. Returns after in-flight batches are durable and acked.
pub async fn run(
    cfg: IngestConfig,
    state: Arc<ServerState>,
    dlq: dlq::DeadLetters,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let wal = state.wal().context("ingest started without an open write-ahead log")?;
    let s = tokio::task::spawn_blocking(move || record::last_stream_seq(&wal)).await??;
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
        told_no_stream_info: false,
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
        // Bounded: while NATS is out of reach a flush waits for the reconnect, and a stop must
        // not (the unflushed acks' messages are redelivered and acked as already stored).
        match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "flushing the last acks failed; those messages will be redelivered and acked then")
            }
            Err(_) => tracing::warn!(
                "the last acks could not be flushed within 5s (NATS out of reach); those messages will be redelivered and acked then"
            ),
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
            // The error names what is missing, never the text.
            opts = opts.credentials(&creds.text).context("reading the NATS credentials")?;
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
        let (client, js) = self.connect().await?;
        if let Some(old) = self.client.replace(client.clone()) {
            // Acks of the previous session may still be in the old connection's buffer.
            let _ = tokio::time::timeout(Duration::from_secs(2), old.flush()).await;
        }
        let stream_info = self.cfg.creds.as_ref().is_none_or(|c| c.stream_info_allowed);
        let checked = if stream_info {
            self.check_stream(&js, &wal).await?
        } else {
            self.check_stream_without_info(&js, &wal).await?
        };
        let from_start = match checked {
            StreamCheck::Continue { from_start } => from_start,
            StreamCheck::Reset(e) => return self.hold_for_stream_reset(e, shutdown).await,
        };
        let durable_seq = self.state.ingest().stream_seq;
        self.appended_seq = durable_seq;
        let (mut consumer, info) = consumer::ensure(&js, &self.cfg.consumer, durable_seq, from_start).await?;
        let mut reconcile = Reconcile::from_info(&info, durable_seq, self.cfg.consumer.ack_wait);
        if reconcile.is_some() {
            self.state.set_state(IngestState::Reconciling);
        } else {
            self.state.set_state(IngestState::Running);
        }
        // Every delivery to this consumer takes the next consumer sequence; nothing else pulls
        // from it (`ensure` waited until no request was registered), so ours are contiguous
        // unless one got lost in transit.
        let mut next_cseq = info.delivered.consumer_sequence + 1;
        let mut puller = Puller::start(
            consumer.clone(),
            self.cfg.consumer.clone(),
            self.cfg.max_batch.max(4096),
            self.cfg.faults.clone(),
        );
        let mut stopping = false;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let mut batch: Vec<Pending> = Vec::new();
            tokio::select! {
                _ = shutdown.changed(), if !stopping => {
                    // Stop asking; what the open request still delivers is stored as usual.
                    stopping = true;
                    puller.stop();
                }
                next = puller.messages.recv() => match next {
                    Some(chunk) => {
                        // Take what is already there, without waiting: light load delivers at
                        // once, a backlog fills large frames.
                        let mut bytes = 0;
                        let mut chunk = Some(chunk);
                        while let Some(messages) = chunk.take() {
                            for m in messages {
                                let p = self.pending(m)?;
                                bytes += envelope_size(&p);
                                batch.push(p);
                            }
                            if batch.len() < self.cfg.max_batch && bytes < self.cfg.max_batch_bytes {
                                chunk = puller.messages.try_recv().ok();
                            }
                        }
                    }
                    None => {
                        // The puller ended: asked to stop (the last request is over, nothing more
                        // can be delivered to us), or its requests kept failing.
                        let ended = puller.outcome().await;
                        self.give_back(None, held(reconcile.take())).await;
                        ended?;
                        return Ok(if stopping { Stop::Shutdown } else { Stop::Restart });
                    }
                },
                _ = tick.tick() => {}
            }
            if let Some(e) = self.take_failure() {
                self.give_back(Some(puller), held(reconcile.take())).await;
                return Ok(Stop::StoreFailed(e));
            }
            if !batch.is_empty() {
                let received = batch.len() as u64;
                self.state.metrics.total_events.inc_by(received);
                self.state.metrics.pending_events.add(received as i64);
                self.state.ingest().received += received;
            }
            // A delivery lost in transit (a dropped request, a reconnect) comes back only after
            // AckWait, behind newer messages. A gap in the consumer sequence shows it: what was
            // delivered before the gap is stored; from the gap on, messages are held as at the
            // start of a session, until JetStream's pending count says every delivery is in hand.
            let mut ready = Vec::with_capacity(batch.len());
            for p in batch {
                let missed = p.cseq.saturating_sub(next_cseq);
                next_cseq = next_cseq.max(p.cseq + 1);
                if missed > 0 && reconcile.is_none() {
                    if let Err(e) = self.store_all(std::mem::take(&mut ready), &wal).await {
                        self.give_back(Some(puller), vec![p]).await;
                        return Ok(Stop::StoreFailed(e));
                    }
                    self.drain_inflight().await;
                    if let Some(e) = self.take_failure() {
                        self.give_back(Some(puller), vec![p]).await;
                        return Ok(Stop::StoreFailed(e));
                    }
                    let _ = client.flush().await;
                    let info = consumer.info().await.context("reading the consumer's pending count")?.clone();
                    tracing::warn!(
                        consumer_sequence = p.cseq,
                        stream_sequence = p.seq,
                        missed,
                        "deliveries were lost in transit: holding newer messages until JetStream redelivers them (about AckWait)"
                    );
                    reconcile = Reconcile::from_info(&info, self.appended_seq, self.cfg.consumer.ack_wait);
                    if reconcile.is_some() {
                        self.state.set_state(IngestState::Reconciling);
                    }
                }
                match &mut reconcile {
                    // A replaced delivery is never acked itself: it is no longer pending with us.
                    Some(r) => self.state.metrics.pending_events.sub(r.offer(vec![p]) as i64),
                    None => ready.push(p),
                }
            }
            if let Some(r) = &mut reconcile {
                // Only the server knows whether every pending message is in our hands: compare
                // its pending count with what we hold.
                if r.check_due(Instant::now()) {
                    let info = consumer.info().await.context("reading the consumer's pending count")?.clone();
                    if let Some((released, gap)) =
                        r.settle(info.num_ack_pending as u64, info.delivered.stream_sequence, Instant::now())
                    {
                        if let Some(gap) = gap {
                            self.note_gap(&js, gap, &released).await;
                        }
                        reconcile = None;
                        self.state.set_state(IngestState::Running);
                        ready.extend(released);
                    }
                }
            }
            if let Err(e) = self.store_all(ready, &wal).await {
                self.give_back(Some(puller), held(reconcile.take())).await;
                return Ok(Stop::StoreFailed(e));
            }
        }
    }

    /// Compare the WAL's last stored stream sequence `S` with the stream. JetStream sequences never
    /// go back, so a stream whose last sequence is below `S` was recreated upstream: pulling on
    /// would create the consumer after `S` and skip every new message up to it, silently. That
    /// is an error (`Reset`) until the operator accepts it for this very `S`; then a marker
    /// record restarts the sequence in the WAL and the consumer starts at the new stream's
    /// first message.
    async fn check_stream(&mut self, js: &jetstream::Context, wal: &eds_wal::Wal) -> Result<StreamCheck> {
        let stored = self.state.ingest().stream_seq;
        if stored == 0 {
            return Ok(StreamCheck::Continue { from_start: false });
        }
        let mut stream = js
            .get_stream(consumer::STREAM)
            .await
            .with_context(|| format!("opening JetStream stream {:?}", consumer::STREAM))?;
        let last = stream
            .info()
            .await
            .with_context(|| format!("reading the state of stream {:?}", consumer::STREAM))?
            .state
            .last_sequence;
        self.judge_stream(last, wal).await
    }

    /// [`Ingest::check_stream`] for credentials that may not read the stream's info (HQ's session
    /// credentials). Only a missing durable consumer needs the check: a consumer goes with its
    /// stream, so an existing one lives on the stream the WAL's messages came from, while a new
    /// one would be created after the WAL's last sequence — on a recreated stream, past its new
    /// messages. The stream's last sequence then comes from a probe consumer.
    async fn check_stream_without_info(&mut self, js: &jetstream::Context, wal: &eds_wal::Wal) -> Result<StreamCheck> {
        if !self.told_no_stream_info {
            self.told_no_stream_info = true;
            tracing::info!(
                stream = consumer::STREAM,
                "the NATS credentials do not allow reading the stream's info ($JS.API.STREAM.INFO): a recreated stream \
                 is looked for only when the durable consumer is missing (through a probe consumer), and a gap's reason \
                 does not say whether the stream's limits removed the messages"
            );
        }
        let stored = self.state.ingest().stream_seq;
        if stored == 0 || consumer::exists(js, &self.cfg.consumer.durable).await? {
            return Ok(StreamCheck::Continue { from_start: false });
        }
        match consumer::last_sequence_by_probe(js, &self.cfg.consumer.durable).await {
            Ok(last) => self.judge_stream(last, wal).await,
            Err(e) => {
                tracing::warn!(
                    error = %eds_wal::error_chain(e.as_ref()),
                    "could not check whether the stream was recreated; creating the consumer after the last stored message"
                );
                Ok(StreamCheck::Continue { from_start: false })
            }
        }
    }

    /// The stream's last sequence is `last`: go on, or stop on a recreated stream (see
    /// [`Ingest::check_stream`]).
    async fn judge_stream(&mut self, last: u64, wal: &eds_wal::Wal) -> Result<StreamCheck> {
        let stored = self.state.ingest().stream_seq;
        if last >= stored {
            return Ok(StreamCheck::Continue { from_start: false });
        }
        let stream_name = consumer::STREAM;
        if self.cfg.accept_stream_reset != Some(stored) {
            return Ok(StreamCheck::Reset(format!(
                "stream {stream_name} was recreated upstream: its last sequence is {last}, but this WAL already stored \
                 sequence {stored}; pulling on would skip every new message up to {stored}. Ingest is stopped. To \
                 start over from the new stream's first message, restart with --accept-stream-reset {stored}"
            )));
        }
        let reason = format!(
            "stream {stream_name} recreated upstream (its last sequence was {last}, the WAL's {stored}); accepted \
             with --accept-stream-reset {stored}"
        );
        let marker = Envelope {
            kind: Kind::StreamReset,
            stream_seq: 0,
            received_at: now_micros(),
            subject: "".into(),
            msg_id: "".into(),
            reason: reason.as_str().into(),
            payload: &[],
        }
        .encode();
        let w = wal.clone();
        tokio::task::spawn_blocking(move || w.append(&[marker]))
            .await?
            .context("recording the accepted stream reset in the WAL")?;
        tracing::warn!(reason = %reason, "stream sequences start again: ingest goes on from the new stream's first message");
        self.state.ingest().stream_seq = 0;
        self.state.metrics.stream_seq.set(0);
        self.gap_window = None;
        Ok(StreamCheck::Continue { from_start: true })
    }

    /// Ingest stays stopped after a stream reset the operator has not accepted: the error is in
    /// `/status` and the log; the stream is looked at again every 30 s.
    async fn hold_for_stream_reset(&mut self, e: String, shutdown: &mut watch::Receiver<bool>) -> Result<Stop> {
        if self.state.ingest().last_error.as_deref() != Some(e.as_str()) {
            tracing::error!(error = %e, "ingest stopped");
        }
        self.state.ingest().last_error = Some(e);
        self.state.set_state(IngestState::StreamReset);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(Stop::Restart),
            _ = shutdown.changed() => Ok(Stop::Shutdown),
        }
    }

    /// Record a gap found at the end of a reconciliation; `released` are the messages it let go.
    async fn note_gap(&mut self, js: &jetstream::Context, mut gap: Gap, released: &[Pending]) {
        // Say which it was when the stream tells: removed by its limits, or still there but never
        // redelivered (MaxDeliver).
        let stream_info = self.cfg.creds.as_ref().is_none_or(|c| c.stream_info_allowed);
        let stream = if stream_info { js.get_stream(consumer::STREAM).await.ok() } else { None };
        if let Some(mut stream) = stream {
            if let Ok(info) = stream.info().await {
                let first = info.state.first_sequence;
                gap.reason = if first > gap.from_seq {
                    format!("removed from the stream before redelivery (the stream now starts at sequence {first})")
                } else {
                    "delivered, never acked, and not redelivered before the deadline (MaxDeliver reached?)".into()
                };
            }
        }
        let stored = released.iter().map(|p| p.seq).filter(|s| (gap.from_seq..=gap.to_seq).contains(s)).collect();
        self.gap_window = Some((gap.from_seq, gap.to_seq, stored));
        self.record_gap(gap);
    }

    /// [`Ingest::store`] in chunks of at most one frame each (a reconciliation can release far
    /// more than one frame holds).
    async fn store_all(&mut self, ready: Vec<Pending>, wal: &eds_wal::Wal) -> Result<(), StoreError> {
        let mut ready = ready.into_iter().peekable();
        while ready.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0usize;
            while let Some(p) = ready.next_if(|p| {
                chunk.is_empty()
                    || (chunk.len() < self.cfg.max_batch && bytes + envelope_size(p) <= self.cfg.max_batch_bytes)
            }) {
                bytes += envelope_size(&p);
                chunk.push(p);
            }
            self.store(chunk, wal).await?;
        }
        Ok(())
    }

    /// Ending a session: NAK what was delivered to us but not stored (still coming from the
    /// puller, or held), so the server redelivers it at once to the next session instead of after
    /// AckWait — and the next session has nothing to wait for.
    async fn give_back(&self, puller: Option<Puller>, held: Vec<Pending>) {
        let mut given: Vec<async_nats::Subject> = Vec::new();
        let mut buffered = 0i64;
        if let Some(mut puller) = puller {
            // The open request is read to its end (about a second at most): whatever it still
            // delivers is given back too, none of it left to wait for AckWait.
            puller.stop();
            let deadline = tokio::time::Instant::now() + consumer::PULL_EXPIRES + Duration::from_secs(2);
            while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, puller.messages.recv()).await {
                given.extend(chunk.into_iter().filter_map(|m| m.message.reply));
            }
            buffered = given.len() as i64;
            if let Err(e) = puller.outcome().await {
                tracing::debug!(error = %eds_wal::error_chain(e.as_ref()), "the puller ended with an error");
            }
        }
        // Buffered ones were never counted as received; held ones were.
        self.state.metrics.pending_events.sub(held.len() as i64);
        let count = buffered + held.len() as i64;
        given.extend(held.into_iter().filter_map(|p| p.reply));
        let Some(client) = &self.client else { return };
        answer(client, given, NAK).await;
        if count > 0 {
            tracing::debug!(messages = count, "gave unstored messages back to JetStream");
        }
        let _ = client.flush().await;
    }

    fn pending(&self, msg: Message) -> Result<Pending> {
        let info = msg
            .info()
            .map_err(|e| anyhow::anyhow!("reading the JetStream metadata of a message on {}: {e}", msg.subject))?;
        let (seq, cseq) = (info.stream_sequence, info.consumer_sequence);
        let m = msg.message;
        let msg_id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
        Ok(Pending { seq, cseq, subject: m.subject, reply: m.reply, payload: m.payload, msg_id })
    }

    /// Append `batch` (in stream order) and hand the acks to a task that waits for durability.
    async fn store(&mut self, mut batch: Vec<Pending>, wal: &eds_wal::Wal) -> Result<(), StoreError> {
        batch.sort_by_key(|p| p.seq);
        let received_at = now_micros();
        let mut records = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        // Reply subjects of the messages to ack once the batch is durable.
        let mut acks: Vec<async_nats::Subject> = Vec::with_capacity(batch.len());
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
                            subject: p.subject.as_str().into(),
                            msg_id: "".into(),
                            reason: "arrived after the gap it belonged to was recorded; storing it in the WAL now would break stream order".into(),
                            payload: &p.payload,
                        }
                        .encode(),
                    );
                    if let Some((_, _, stored)) = self.gap_window.as_mut() {
                        stored.insert(p.seq);
                    }
                }
                // Already in the WAL (a redelivery) or dead-lettered: ack once durable.
                acks.extend(p.reply);
                continue;
            }
            top = p.seq;
            // Borrowed from the message: one envelope, encoded once per record kind.
            let event = Envelope {
                kind: Kind::Event,
                stream_seq: p.seq,
                received_at,
                subject: p.subject.as_str().into(),
                msg_id: p.msg_id.as_deref().unwrap_or("").into(),
                reason: "".into(),
                payload: &p.payload,
            };
            let checked = if envelope_size(&p) > self.cfg.max_batch_bytes {
                Err(format!(
                    "message of {} bytes is larger than the write-ahead log's largest batch ({} bytes)",
                    p.payload.len(),
                    self.cfg.max_batch_bytes
                ))
            } else {
                validate::check(&p.payload)
            };
            match checked {
                Ok(_) => records.push(event.encode()),
                Err(reason) => {
                    tracing::warn!(stream_seq = p.seq, subject = %event.subject, reason = %reason, "dead-lettering an invalid message");
                    dead.push(Envelope { kind: Kind::DeadLetter, reason: reason.into(), ..event.clone() }.encode());
                    records.push(Envelope { kind: Kind::DeadLetterMarker, payload: &[], ..event }.encode());
                }
            }
            acks.extend(p.reply);
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
        let acked = acks.len() as i64;
        let client = self.client.clone();
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
            if let Some(client) = &client {
                answer(client, acks, ACK).await;
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
            // The file system (ENOSPC, EIO): nothing is pulled until a write gets through, so
            // JetStream keeps the messages undelivered — a pull now would only deliver, fail and
            // give back, again and again, until MaxDeliver made them a gap.
            StoreError::Wal(err) => {
                let dir = err.path().and_then(|p| p.parent()).map(std::path::Path::to_path_buf);
                self.pause_until_writable("the write-ahead log", err, dir, shutdown).await
            }
            StoreError::Dlq(err) => {
                let dir = err.path().and_then(|p| p.parent()).map(std::path::Path::to_path_buf);
                self.pause_until_writable("the dead-letter log", err, dir, shutdown).await
            }
            StoreError::Other(err) => Err(err),
        }
    }

    /// Paused after a write to `what` failed with `err`: keep the durable consumer alive with
    /// pulls that cannot deliver, and every `--wal-retry` check that `dir` takes a write again
    /// (room for a few batches, a small write and fsync) and that the WAL reopens. Then a new
    /// session starts.
    async fn pause_until_writable(
        &mut self,
        what: &str,
        err: eds_wal::Error,
        dir: Option<PathBuf>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Stop> {
        let msg = format!("writing {what} failed: {}", eds_wal::error_chain(&err));
        tracing::error!(error = %msg, retry_every = ?self.cfg.wal_retry, "ingest paused: no pulls until the disk takes writes again; upstream keeps the data");
        self.state.ingest().last_error = Some(msg);
        self.state.set_state(IngestState::WalError);
        let dir = dir.or_else(|| self.state.wal().map(|w| w.dir().to_path_buf()));
        let room = 4 * self.cfg.max_batch_bytes as u64;
        let keepalive_every =
            (self.cfg.consumer.inactive_threshold / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        let mut keepalive = tokio::time::interval(keepalive_every);
        let mut check = tokio::time::interval(self.cfg.wal_retry.max(Duration::from_millis(10)));
        check.tick().await;
        let js = match self.connect().await {
            Ok((_, js)) => Some(js),
            Err(e) => {
                tracing::warn!(error = %eds_wal::error_chain(e.as_ref()), "no NATS connection for keep-alive pulls while paused");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(Stop::Shutdown),
                _ = keepalive.tick() => {
                    if let Some(js) = &js {
                        if let Err(e) = consumer::keep_alive(js, &self.cfg.consumer).await {
                            tracing::warn!(error = %e, "keep-alive pull failed");
                        }
                    }
                }
                _ = check.tick() => {
                    let probe = dir.clone();
                    let writable = tokio::task::spawn_blocking(move || probe.map_or(Ok(()), |d| crate::datadir::probe_write(&d, room)))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    if let Err(e) = writable {
                        tracing::debug!(error = %e, "the disk does not take writes yet");
                        continue;
                    }
                    let poisoned = self.state.wal().is_none_or(|w| w.is_poisoned());
                    if poisoned {
                        if let Err(e) = self.reopen_wal().await {
                            tracing::warn!(error = %eds_wal::error_chain(e.as_ref()), "reopening the WAL failed; trying again");
                            continue;
                        }
                    }
                    tracing::info!("the disk takes writes again: ingest resumes");
                    return Ok(Stop::Restart);
                }
            }
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
            tokio::task::spawn_blocking(move || record::last_stream_seq(&w)).await??
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

/// The messages a reconciliation holds, to give back.
fn held(r: Option<Reconcile>) -> Vec<Pending> {
    r.map(|r| r.in_hand.into_values().collect()).unwrap_or_default()
}

/// Waiting for the messages a previous process held.
///
/// Done when every message the server counts as pending (delivered, not acked) is in our hands;
/// counting is the server's, so deliveries that went to a dead process after we looked are
/// waited for too.
struct Reconcile {
    ack_floor: u64,
    delivered: u64,
    in_hand: BTreeMap<u64, Pending>,
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
        batch.into_iter().map(|p| u64::from(self.in_hand.insert(p.seq, p).is_some())).sum()
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
        let all = std::mem::take(&mut self.in_hand).into_values().collect();
        Some((all, gap))
    }
}
