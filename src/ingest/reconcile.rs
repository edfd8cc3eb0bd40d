//! Reconciliation after a restart: the messages a previous process held come back only after
//! AckWait, behind newer ones; they are collected here until the server's count says all are
//! back, so the WAL keeps stream order.

use super::*;

/// The messages a reconciliation holds, to give back.
pub(super) fn held(r: Option<Reconcile>) -> Vec<Pending> {
    r.map(|r| r.in_hand.into_values().collect()).unwrap_or_default()
}

/// Waiting for the messages a previous process held.
///
/// Done when every message the server counts as pending (delivered, not acked) is in our hands;
/// counting is the server's, so deliveries that went to a dead process after we looked are
/// waited for too.
pub(super) struct Reconcile {
    pub(super) ack_floor: u64,
    pub(super) delivered: u64,
    pub(super) in_hand: BTreeMap<u64, Pending>,
    pub(super) deadline: Instant,
    pub(super) next_check: Instant,
}

impl Reconcile {
    pub(super) fn from_info(
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
    pub(super) fn offer(&mut self, batch: Vec<Pending>) -> u64 {
        batch.into_iter().map(|p| u64::from(self.in_hand.insert(p.seq, p).is_some())).sum()
    }

    /// Whether to ask the server again (at most every 100 ms).
    pub(super) fn check_due(&mut self, now: Instant) -> bool {
        if now < self.next_check {
            return false;
        }
        self.next_check = now + Duration::from_millis(100);
        true
    }

    /// Given the server's pending count, release everything in sequence order when all pending
    /// messages are in hand, or at the deadline with a gap for those that never came.
    pub(super) fn settle(&mut self, pending: u64, delivered: u64, now: Instant) -> Option<(Vec<Pending>, Option<Gap>)> {
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
