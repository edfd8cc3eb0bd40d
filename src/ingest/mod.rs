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
//! appended in sequence order. The wait lasts as long as awaited messages keep coming back, and
//! what is held is told to the server as in progress so it is not redelivered meanwhile. What
//! still is missing then (MaxDeliver exhausted on the way through dying processes: JetStream no
//! longer counts it as pending) is read straight from the stream; what the stream no longer has
//! is recorded as a gap: logged, counted, in `gaps.jsonl` and `/status` — never silent.

pub mod consumer;
pub mod puller;
mod reconcile;
mod store;
mod stream;
pub mod validate;

use crate::dlq;
use crate::record::{self, Envelope, Kind};
use crate::state::{Gap, IngestState, ServerState};
use crate::timefmt::now_micros;
use anyhow::{Context, Result};
use async_nats::jetstream::{self, Message};
use consumer::ConsumerSettings;
use puller::{DeliveryFaults, Puller};
use reconcile::{held, Reconcile};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{envelope_size, StoreError};
use stream::StreamCheck;
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
/// "Still working on it": the server restarts the message's AckWait and does not redeliver it.
const IN_PROGRESS: &[u8] = b"+WPI";

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
                    Some(r) => self.state.metrics.pending_events.sub(r.offer(vec![p], Instant::now()) as i64),
                    None => ready.push(p),
                }
            }
            if let Some(r) = &mut reconcile {
                if let Some(replies) = r.in_progress_due(Instant::now()) {
                    answer(&client, replies, IN_PROGRESS).await;
                }
                // Only the server knows whether every pending message is in our hands: compare
                // its pending count with what we hold.
                if r.check_due(Instant::now()) {
                    let info = consumer.info().await.context("reading the consumer's pending count")?.clone();
                    if let Some((released, gap)) =
                        r.settle(info.num_ack_pending as u64, info.delivered.stream_sequence, Instant::now())
                    {
                        let (released, gap) = self.fill_holes(&js, released, gap, r.delivered).await?;
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

    /// Complete what a reconciliation releases: every message up to `delivered` that the
    /// consumer's filter takes but that is neither in `released` nor stored is read straight from
    /// the stream. JetStream's pending count does not show a message that hit MaxDeliver on its
    /// way through dying processes (no longer pending, never redelivered, yet still in the
    /// stream), nor one removed from the stream. The gap is then what the stream no longer has.
    async fn fill_holes(
        &self,
        js: &jetstream::Context,
        released: Vec<Pending>,
        gap: Option<Gap>,
        delivered: u64,
    ) -> Result<(Vec<Pending>, Option<Gap>)> {
        let have: std::collections::BTreeSet<u64> = released.iter().map(|p| p.seq).collect();
        let to = delivered.max(have.last().copied().unwrap_or(0));
        let Some(from) = (self.appended_seq + 1..=to).find(|s| !have.contains(s)) else {
            return Ok((released, gap));
        };
        let read = consumer::read_range(js, &self.cfg.consumer, from, to, &have).await?;
        let mut all: BTreeMap<u64, Pending> = released.into_iter().map(|p| (p.seq, p)).collect();
        let mut filled = 0u64;
        for m in read.ours {
            let mut p = self.pending(m)?;
            // Read, not delivered: nothing to ack. Its delivery, should it still come, is acked
            // then as already stored.
            p.reply = None;
            if all.insert(p.seq, p).is_none() {
                filled += 1;
            }
        }
        if filled > 0 {
            tracing::warn!(
                filled,
                from_seq = from,
                to_seq = to,
                "messages the reconciliation waited for were not redelivered (MaxDeliver?): read from the stream instead"
            );
            self.state.metrics.pending_events.add(filled as i64);
        }
        let gap = match (read.removed.first(), read.removed.last()) {
            (Some(&first), Some(&last)) => Some(Gap {
                from_seq: first,
                to_seq: last,
                missing: read.removed.len() as u64,
                reason: "removed from the stream before it was stored (whether each was for this consumer's companies cannot be told any more)".into(),
                at: gap.map_or_else(now_micros, |g| g.at),
            }),
            _ => None,
        };
        Ok((all.into_values().collect(), gap))
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
                if first > gap.from_seq {
                    gap.reason = format!(
                        "removed from the stream by its limits before it was stored (the stream now starts at sequence {first})"
                    );
                }
            }
        }
        let stored = released.iter().map(|p| p.seq).filter(|s| (gap.from_seq..=gap.to_seq).contains(s)).collect();
        self.gap_window = Some((gap.from_seq, gap.to_seq, stored));
        self.record_gap(gap);
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
