//! The puller: one task per session that keeps a pull request open on the consumer at all times —
//! one-shot requests back to back, each read as fast as the network delivers — and hands every
//! message to the session through a bounded channel, so pulling never waits for the WAL.
//!
//! Invariant: at most one request is open (the consumer allows one waiting request, as EDS
//! configures it), and a request is given up only once the server no longer holds it, so nothing
//! more can be delivered to it. nats-server before 2.9.16 sometimes removes an expired request
//! without sending the 408 that ends it; async-nats then waits 5 s more before giving up, and
//! ingest stalled for that long. So when the 408 is late, the puller asks the server (consumer
//! info, which also clears expired requests) whether a request is still waiting, and moves on as
//! soon as none is; a deadline backs that up. Should a delivery still get lost, the consumer
//! sequence shows it, and the session holds newer messages until JetStream redelivers it (see
//! `Reconcile`).

use super::consumer::{self, ConsumerSettings, PULL_EXPIRES};
use anyhow::Result;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::Message;
use futures_util::{FutureExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long after its expiry the server is asked whether it still holds a request whose 408 has
/// not come, and then again every so often.
const LATE_CHECK: Duration = Duration::from_millis(20);

/// How long after its expiry a request is given up without the server's word.
const REQUEST_GRACE: Duration = Duration::from_millis(500);

/// Messages handed over at most at once (whatever has arrived, without waiting): one channel
/// operation per chunk instead of one per message.
const CHUNK: usize = 256;

/// Failed pull requests in a row (over at least [`PULL_EXPIRES`]) that end the session.
const ERRORS_IN_A_ROW: u32 = 5;

/// Deliveries to lose on purpose, for tests of what ingest does when a delivery is lost in
/// transit (a dropped request, a reconnect). Off unless a test sets it.
#[derive(Debug, Default)]
pub struct DeliveryFaults {
    /// Deliveries still to drop: neither handed over nor acked, as if they never arrived.
    pub drop_next: AtomicU64,
}

/// A running puller.
pub struct Puller {
    /// Messages in delivery order, in chunks of what had arrived; closed when the puller ends.
    pub messages: mpsc::Receiver<Vec<Message>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Puller {
    /// Start pulling from `consumer`. `capacity` bounds the messages waiting in the channel (in
    /// chunks of up to 256).
    pub fn start(
        consumer: PullConsumer,
        settings: ConsumerSettings,
        capacity: usize,
        faults: Option<Arc<DeliveryFaults>>,
    ) -> Puller {
        let (tx, messages) = mpsc::channel(capacity.div_ceil(CHUNK).max(2));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(pull(consumer, settings, tx, stop_rx, faults));
        Puller { messages, stop, task }
    }

    /// Ask no more: the open request is read to its end, then the channel closes.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Why the puller ended (after the channel closed): `Ok` when it was stopped.
    pub async fn outcome(self) -> Result<()> {
        self.stop();
        drop(self.messages);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the pulling task failed: {e}")),
        }
    }
}

/// Whether the fault injection loses `m`.
fn lost(faults: Option<&DeliveryFaults>, m: &Message) -> bool {
    let lose = faults
        .is_some_and(|f| f.drop_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok());
    if lose {
        tracing::warn!(subject = %m.subject, "fault injection: a delivery is lost");
    }
    lose
}

async fn pull(
    mut consumer: PullConsumer,
    settings: ConsumerSettings,
    tx: mpsc::Sender<Vec<Message>>,
    stop: watch::Receiver<bool>,
    faults: Option<Arc<DeliveryFaults>>,
) -> Result<()> {
    let mut errors = 0u32;
    let mut first_error: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let failed = match consumer::request(&consumer, &settings).await {
            Ok(mut request) => {
                let sent = tokio::time::Instant::now();
                let deadline = tokio::time::sleep_until(sent + PULL_EXPIRES + REQUEST_GRACE);
                let late = tokio::time::sleep_until(sent + PULL_EXPIRES + LATE_CHECK);
                tokio::pin!(deadline, late);
                let mut failed = None;
                loop {
                    tokio::select! {
                        next = request.next() => match next {
                            Some(Ok(m)) => {
                                // This one and whatever else has arrived, in one chunk.
                                let mut chunk = Vec::with_capacity(16);
                                let mut next = Some(m);
                                let mut ended: Option<Option<String>> = None;
                                while let Some(m) = next.take() {
                                    if lost(faults.as_deref(), &m) {
                                        continue;
                                    }
                                    chunk.push(m);
                                    if chunk.len() >= CHUNK {
                                        break;
                                    }
                                    match request.next().now_or_never() {
                                        Some(Some(Ok(m))) => next = Some(m),
                                        Some(Some(Err(e))) => ended = Some(Some(e.to_string())),
                                        Some(None) => ended = Some(None),
                                        None => {}
                                    }
                                }
                                if !chunk.is_empty() {
                                    errors = 0;
                                    first_error = None;
                                    if tx.send(chunk).await.is_err() {
                                        return Ok(()); // the session is gone
                                    }
                                }
                                match ended {
                                    Some(why) => {
                                        failed = why;
                                        break;
                                    }
                                    None => continue,
                                }
                            }
                            Some(Err(e)) => {
                                failed = Some(e.to_string());
                                break;
                            }
                            None => break,
                        },
                        // The 408 is late: the server may have dropped the request silently. When
                        // it holds no request, everything delivered to this one is already here
                        // (the answer comes on the same connection, after them).
                        _ = &mut late => {
                            let gone = consumer.info().await.is_ok_and(|i| i.num_waiting == 0);
                            if !gone {
                                late.as_mut().reset(tokio::time::Instant::now() + LATE_CHECK);
                                continue;
                            }
                            let mut chunk = Vec::new();
                            while let Some(Some(Ok(m))) = request.next().now_or_never() {
                                chunk.push(m);
                            }
                            if !chunk.is_empty() && tx.send(chunk).await.is_err() {
                                return Ok(());
                            }
                            break;
                        }
                        // The server expired the request without saying so: it delivers nothing
                        // more to it.
                        _ = &mut deadline => break,
                    }
                }
                failed
            }
            Err(e) => Some(eds_wal::error_chain(e.as_ref())),
        };
        let Some(why) = failed else { continue };
        // A request refused at once (another request still registered, the consumer being
        // updated): try again shortly; only failures that persist end the session.
        errors += 1;
        let since = *first_error.get_or_insert_with(tokio::time::Instant::now);
        if errors >= ERRORS_IN_A_ROW && since.elapsed() >= PULL_EXPIRES {
            anyhow::bail!("pulling from consumer {} failed {errors} times in a row: {why}", settings.durable);
        }
        tracing::warn!(error = %why, "pull request failed; asking again");
        tokio::time::sleep(Duration::from_millis(50 * u64::from(errors))).await;
    }
}
