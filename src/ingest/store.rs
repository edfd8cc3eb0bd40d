//! Storing: batches appended to the WAL (and dead letters to their log) in stream order, acks
//! after the fsync, and what a failed write means — a full disk budget, a WAL to reopen, a
//! dead-letter log that cannot be written.

use super::*;

/// Bytes a message takes in a frame: payload, envelope fields (subject, id) and framing.
pub(super) fn envelope_size(p: &Pending) -> usize {
    p.payload.len() + p.subject.len() + 128
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

#[derive(Debug)]
pub(super) enum StoreError {
    Wal(eds_wal::Error),
    Dlq(eds_wal::Error),
    Other(anyhow::Error),
}

impl Ingest {
    /// [`Ingest::store`] in chunks of at most one frame each (a reconciliation can release far
    /// more than one frame holds).
    pub(super) async fn store_all(&mut self, ready: Vec<Pending>, wal: &eds_wal::Wal) -> Result<(), StoreError> {
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

    /// Append `batch` (in stream order) and hand the acks to a task that waits for durability.
    pub(super) async fn store(&mut self, mut batch: Vec<Pending>, wal: &eds_wal::Wal) -> Result<(), StoreError> {
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
    pub(super) fn take_failure(&self) -> Option<StoreError> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) async fn after_store_error(
        &mut self,
        e: StoreError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Stop> {
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
    pub(super) async fn pause_until_writable(
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
    pub(super) async fn reopen_wal(&mut self) -> Result<()> {
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
    pub(super) async fn wait_for_space(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Stop> {
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
}
