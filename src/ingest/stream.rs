//! The stream's own state: whether it was recreated upstream (its sequences restarted below what
//! the WAL holds), read from the stream's info or, when the credentials do not allow that, from a
//! short-lived probe consumer; and holding ingest until the operator accepts a reset.

use super::*;

/// What the stream's state says about the WAL's last stored sequence.
pub(super) enum StreamCheck {
    /// Pull on; `from_start`: a new consumer starts at the stream's first message (the stream
    /// was recreated and the operator accepted it).
    Continue { from_start: bool },
    /// The stream was recreated upstream: its sequences restarted below what the WAL holds.
    Reset(String),
}

impl Ingest {
    /// Compare the WAL's last stored stream sequence `S` with the stream. JetStream sequences never
    /// go back, so a stream whose last sequence is below `S` was recreated upstream: pulling on
    /// would create the consumer after `S` and skip every new message up to it, silently. That
    /// is an error (`Reset`) until the operator accepts it for this very `S`; then a marker
    /// record restarts the sequence in the WAL and the consumer starts at the new stream's
    /// first message.
    pub(super) async fn check_stream(&mut self, js: &jetstream::Context, wal: &eds_wal::Wal) -> Result<StreamCheck> {
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
    pub(super) async fn check_stream_without_info(
        &mut self,
        js: &jetstream::Context,
        wal: &eds_wal::Wal,
    ) -> Result<StreamCheck> {
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
    pub(super) async fn judge_stream(&mut self, last: u64, wal: &eds_wal::Wal) -> Result<StreamCheck> {
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
    pub(super) async fn hold_for_stream_reset(
        &mut self,
        e: String,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Stop> {
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
}
