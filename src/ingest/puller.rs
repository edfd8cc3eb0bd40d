//! The puller: one task per session that keeps a pull request open on the consumer at all times —
//! one-shot requests back to back, each read as fast as the network delivers — and hands every
//! message to the session through a bounded channel, so pulling never waits for the WAL.
//!
//! Invariant: at most one request is open (the consumer allows one waiting request, as EDS
//! configures it), and a request is given up only after it expired on the server, which then
//! delivers nothing more to it. nats-server before 2.9.16 sometimes removes an expired request
//! without sending the 408 that ends it; async-nats then waits 5 s more before giving up, and
//! ingest stalled for that long. Each request therefore has a deadline of its own, just after
//! its expiry. Should a delivery still get lost, the consumer sequence shows it, and the session
//! holds newer messages until JetStream redelivers it (see [`super::Reconcile`]).

use super::consumer::{self, ConsumerSettings, PULL_EXPIRES};
use anyhow::Result;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long after its expiry a request is given up without the server's word.
const REQUEST_GRACE: Duration = Duration::from_millis(300);

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
    /// Messages in delivery order; closed when the puller ends.
    pub messages: mpsc::Receiver<Message>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Puller {
    /// Start pulling from `consumer`. `capacity` bounds the messages waiting in the channel.
    pub fn start(
        consumer: PullConsumer,
        settings: ConsumerSettings,
        capacity: usize,
        faults: Option<Arc<DeliveryFaults>>,
    ) -> Puller {
        let (tx, messages) = mpsc::channel(capacity.max(1));
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

async fn pull(
    consumer: PullConsumer,
    settings: ConsumerSettings,
    tx: mpsc::Sender<Message>,
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
                let deadline = tokio::time::sleep(PULL_EXPIRES + REQUEST_GRACE);
                tokio::pin!(deadline);
                let mut failed = None;
                loop {
                    tokio::select! {
                        next = request.next() => match next {
                            Some(Ok(m)) => {
                                let lose = faults.as_ref().is_some_and(|f| {
                                    f.drop_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
                                });
                                if lose {
                                    tracing::warn!(subject = %m.subject, "fault injection: a delivery is lost");
                                    continue;
                                }
                                errors = 0;
                                first_error = None;
                                if tx.send(m).await.is_err() {
                                    return Ok(()); // the session is gone
                                }
                            }
                            Some(Err(e)) => {
                                failed = Some(e.to_string());
                                break;
                            }
                            None => break,
                        },
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
