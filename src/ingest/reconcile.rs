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
///
/// What is missing is called a gap only after [`Reconcile::patience`] passed without one of the
/// awaited messages coming back. A fixed deadline from the start was not enough: after several
/// SIGKILLs in a row the messages come back over many AckWaits (each dead process took some of
/// them, and their redeliveries queue behind the redeliveries of everything else pending), and
/// the deadline recorded a gap for messages that arrived a moment later — then dead-lettered
/// them, so events NATS had acked never reached the destination. And what we hold is told to the
/// server as in progress (`+WPI`) every half AckWait, so it is not redelivered to us again and
/// again while we wait: those redeliveries crowded out the awaited ones, and burnt MaxDeliver.
pub(super) struct Reconcile {
    pub(super) ack_floor: u64,
    pub(super) delivered: u64,
    /// The highest sequence delivered before this reconciliation began: messages up to it are
    /// the awaited ones.
    pub(super) awaited_to: u64,
    pub(super) in_hand: BTreeMap<u64, Pending>,
    /// How long to wait for the next awaited message before calling what is missing a gap.
    pub(super) patience: Duration,
    pub(super) deadline: Instant,
    pub(super) next_check: Instant,
    /// AckWait: held messages are told to be in progress twice per AckWait.
    pub(super) ack_wait: Duration,
    pub(super) next_progress: Instant,
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
        // margin for the redelivery itself, counted from the last awaited message that came back.
        let patience = ack_wait * 2 + Duration::from_secs(5);
        Some(Reconcile {
            ack_floor: info.ack_floor.stream_sequence,
            delivered: info.delivered.stream_sequence,
            awaited_to: info.delivered.stream_sequence,
            in_hand: BTreeMap::new(),
            patience,
            deadline: now + patience,
            next_check: now,
            ack_wait,
            next_progress: now + ack_wait / 2,
        })
    }

    /// Take a batch (a redelivery replaces an earlier delivery of the same sequence). Returns how
    /// many earlier deliveries were replaced.
    /// An awaited message not in hand before is progress: the deadline moves to `now` plus the
    /// patience.
    pub(super) fn offer(&mut self, batch: Vec<Pending>, now: Instant) -> u64 {
        let mut replaced = 0;
        for p in batch {
            let seq = p.seq;
            if self.in_hand.insert(seq, p).is_some() {
                replaced += 1;
            } else if seq <= self.awaited_to {
                self.deadline = self.deadline.max(now + self.patience);
            }
        }
        replaced
    }

    /// When due (every half AckWait), the reply subjects of every message held, to be told to
    /// the server as in progress so it does not redeliver them while we wait.
    pub(super) fn in_progress_due(&mut self, now: Instant) -> Option<Vec<async_nats::Subject>> {
        if now < self.next_progress || self.in_hand.is_empty() {
            return None;
        }
        self.next_progress = now + (self.ack_wait / 2).max(Duration::from_millis(50));
        Some(self.in_hand.values().filter_map(|p| p.reply.clone()).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64) -> Pending {
        Pending {
            seq,
            cseq: seq,
            subject: "dbchange.order.UPDATE.c.l.PUBLIC.2".into(),
            reply: Some(format!("$JS.ACK.dbchange.eds.1.{seq}.{seq}.0.0").into()),
            payload: bytes::Bytes::new(),
            msg_id: None,
        }
    }

    /// Waiting for sequences up to 10, AckWait 1 s (patience 7 s), started at `t0`.
    fn waiting(t0: Instant) -> Reconcile {
        let patience = Duration::from_secs(7);
        Reconcile {
            ack_floor: 0,
            delivered: 10,
            awaited_to: 10,
            in_hand: BTreeMap::new(),
            patience,
            deadline: t0 + patience,
            next_check: t0,
            ack_wait: Duration::from_secs(1),
            next_progress: t0 + Duration::from_millis(500),
        }
    }

    /// The bug the SIGKILL loop found: after several kills the awaited messages came back over
    /// many seconds, and a deadline fixed at the start recorded a gap while they still arrived.
    #[test]
    fn no_gap_while_awaited_messages_keep_coming_back() {
        let t0 = Instant::now();
        let mut r = waiting(t0);
        for (i, seq) in [1u64, 2, 3].into_iter().enumerate() {
            let now = t0 + Duration::from_secs(5 * (i as u64 + 1));
            assert_eq!(r.offer(vec![pending(seq)], now), 0);
            assert!(r.settle(4, 10, now).is_none(), "settled at {:?} with 3 of 4", now - t0);
        }
        // 21 s after the start, three times the old deadline: the last one comes back.
        let now = t0 + Duration::from_secs(21);
        assert!(r.settle(4, 10, now - Duration::from_secs(1)).is_none());
        r.offer(vec![pending(4)], now);
        let (all, gap) = r.settle(4, 10, now).unwrap();
        assert!(gap.is_none(), "{gap:?}");
        assert_eq!(all.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }

    /// A message that never comes back is still a gap, once the patience passed since the last
    /// awaited one came; newer messages (above what was delivered at the start) and redeliveries
    /// of what is already in hand are no progress.
    #[test]
    fn a_message_that_never_comes_back_is_a_gap_after_the_patience() {
        let t0 = Instant::now();
        let mut r = waiting(t0);
        let last = t0 + Duration::from_secs(2);
        r.offer(vec![pending(1), pending(2)], last);
        assert_eq!(r.offer(vec![pending(2), pending(11)], last + Duration::from_secs(6)), 1);
        assert!(r.settle(4, 11, last + Duration::from_secs(7) - Duration::from_millis(1)).is_none());
        let (all, gap) = r.settle(4, 11, last + Duration::from_secs(7)).unwrap();
        let gap = gap.expect("a gap for the one that never came");
        assert_eq!((gap.from_seq, gap.to_seq, gap.missing), (1, 11, 1));
        assert_eq!(all.len(), 3);
    }

    /// What is held is told to be in progress every half AckWait, so the server does not
    /// redeliver it while we wait.
    #[test]
    fn held_messages_are_told_in_progress_every_half_ack_wait() {
        let t0 = Instant::now();
        let mut r = waiting(t0);
        assert!(r.in_progress_due(t0 + Duration::from_secs(1)).is_none(), "nothing held");
        r.offer(vec![pending(3), pending(1)], t0);
        assert!(r.in_progress_due(t0 + Duration::from_millis(400)).is_none());
        let at = t0 + Duration::from_secs(1);
        let replies = r.in_progress_due(at).unwrap();
        assert_eq!(replies.len(), 2);
        assert!(replies[0].as_str().ends_with(".1.1.0.0"), "{replies:?}");
        assert!(r.in_progress_due(at + Duration::from_millis(499)).is_none());
        assert!(r.in_progress_due(at + Duration::from_millis(500)).is_some());
    }
}
