//! The durable JetStream consumer, set up as EDS sets it up (behaviour spec §4.2), so an existing
//! EDS deployment's consumer is reused as it is.

use anyhow::{bail, Context, Result};
use async_nats::jetstream::consumer::pull::{Batch, Config};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, Info, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use std::time::Duration;

/// The stream EDS consumes.
pub const STREAM: &str = "dbchange";
/// MaxDeliver, as EDS.
pub const MAX_DELIVER: i64 = 20;
/// How long one pull request waits on the server. Short: it bounds how long a stop waits for the
/// open request to finish, and how long a request left by a dead process blocks the consumer's
/// single waiting slot.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How the consumer is named and configured.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// `eds-<serverId>[-<suffix>]`.
    pub durable: String,
    /// Company IDs; empty means every company (dev mode).
    pub company_ids: Vec<String>,
    /// AckWait.
    pub ack_wait: Duration,
    /// MaxAckPending.
    pub max_ack_pending: i64,
    /// MaxRequestBatch (EDS `--maxPendingBuffer`).
    pub max_request_batch: i64,
    /// InactiveThreshold.
    pub inactive_threshold: Duration,
    /// A new consumer starts at the beginning of the stream (EDS `--restart`).
    pub restart: bool,
    /// Else, a new consumer starts at this time (unix milliseconds): the earliest import
    /// timestamp, so streaming takes over where an import ended.
    pub start_after_import: Option<i64>,
}

/// Credentials given in the NATS URL itself (`nats://user:password@host`, `nats://token@host`), as
/// EDS accepts them. async-nats does not read them from the URL, so ingest passes them on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlAuth {
    /// `user:password@`.
    UserPassword(String, String),
    /// `token@`.
    Token(String),
}

/// Split a comma-separated NATS URL list into the list without user info (what the client is
/// given, so no secret travels into its messages) and the credentials of the first URL that has
/// any (percent-decoded).
pub fn url_auth(urls: &str) -> (String, Option<UrlAuth>) {
    let mut auth = None;
    let clean: Vec<String> = urls
        .split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
            if auth.is_none() {
                auth = Some(match userinfo.split_once(':') {
                    Some((user, password)) => UrlAuth::UserPassword(percent_decode(user), percent_decode(password)),
                    None => UrlAuth::Token(percent_decode(userinfo)),
                });
            }
            let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
            format!("{scheme}{host}{tail}")
        })
        .collect();
    (clean.join(","), auth)
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|&c| char::from(c).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The durable name EDS uses.
pub fn durable_name(server_id: &str, suffix: Option<&str>) -> String {
    match suffix.filter(|s| !s.is_empty()) {
        Some(s) => format!("eds-{server_id}-{s}"),
        None => format!("eds-{server_id}"),
    }
}

/// Filter subjects: one per company, `dbchange.*.*.<companyId>.*.PUBLIC.>`; every company when
/// none is given.
pub fn filter_subjects(company_ids: &[String]) -> Vec<String> {
    if company_ids.is_empty() {
        return vec!["dbchange.*.*.*.*.PUBLIC.>".to_owned()];
    }
    company_ids.iter().map(|c| format!("dbchange.*.*.{c}.*.PUBLIC.>")).collect()
}

/// The consumer configuration; `deliver` only matters when the consumer is created.
pub fn config(s: &ConsumerSettings, deliver: DeliverPolicy) -> Config {
    let mut filters = filter_subjects(&s.company_ids);
    // One filter goes in `filter_subject`, which every server version understands;
    // `filter_subjects` (NATS ≥ 2.10) only for several.
    let (filter_subject, filter_subjects) =
        if filters.len() == 1 { (filters.pop().unwrap_or_default(), Vec::new()) } else { (String::new(), filters) };
    Config {
        durable_name: Some(s.durable.clone()),
        deliver_policy: deliver,
        ack_policy: AckPolicy::Explicit,
        ack_wait: s.ack_wait,
        max_deliver: MAX_DELIVER,
        filter_subject,
        filter_subjects,
        max_waiting: 1,
        max_ack_pending: s.max_ack_pending,
        max_batch: s.max_request_batch,
        inactive_threshold: s.inactive_threshold,
        ..Config::default()
    }
}

fn not_found(e: &async_nats::jetstream::context::ConsumerInfoError) -> bool {
    match e.kind() {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(j) => j.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

/// Find or create the durable consumer. An existing one is updated but keeps its deliver policy
/// (as EDS does). A missing one is created at `stored_seq + 1` when the WAL already holds data —
/// never at "new", which would silently skip what arrived meanwhile.
/// `from_start` makes a missing consumer start at the stream's first message (after an accepted
/// stream reset).
pub async fn ensure(
    js: &JetStream,
    s: &ConsumerSettings,
    stored_seq: u64,
    from_start: bool,
) -> Result<(PullConsumer, Info)> {
    // No stream info (`$JS.API.STREAM.INFO`, which HQ's session credentials do not allow): only
    // consumer requests, `$JS.API.CONSUMER.…`. A missing stream shows in the consumer lookup.
    let stream = js.get_stream_no_info(STREAM).await.with_context(|| format!("naming JetStream stream {STREAM:?}"))?;
    let mut consumer: PullConsumer = match stream.consumer_info(&s.durable).await {
        Ok(existing) => {
            let kept = existing.config.deliver_policy;
            let cfg = Config { deliver_policy: kept, ..config(s, kept) };
            stream.update_consumer(cfg).await.with_context(|| format!("updating consumer {}", s.durable))?
        }
        Err(e) if not_found(&e) => {
            let deliver = if stored_seq > 0 {
                tracing::info!(start_sequence = stored_seq + 1, consumer = %s.durable, "creating the consumer after the last stored message");
                DeliverPolicy::ByStartSequence { start_sequence: stored_seq + 1 }
            } else if s.restart || from_start {
                DeliverPolicy::All
            } else if let Some(ms) = s.start_after_import {
                let start_time = async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000)
                    .map_err(|e| anyhow::anyhow!("import timestamp {ms} ms: {e}"))?;
                tracing::info!(start_time = ms, consumer = %s.durable, "creating the consumer at the earliest import timestamp");
                DeliverPolicy::ByStartTime { start_time }
            } else {
                tracing::warn!("no import timestamp found, starting data stream from now");
                DeliverPolicy::New
            };
            stream
                .create_consumer(config(s, deliver))
                .await
                .with_context(|| format!("creating consumer {}", s.durable))?
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("looking up consumer {}", s.durable))),
    };
    // A pull request we sent before (an earlier session of this process, or a process that just
    // died) stays registered until it expires; only one may wait (MaxWaiting 1). Give it that
    // long before calling the consumer taken.
    let deadline = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(2);
    loop {
        let info = consumer.info().await.with_context(|| format!("reading consumer {}", s.durable))?.clone();
        if info.num_waiting == 0 {
            return Ok((consumer, info));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("consumer {} already running: another eds (or EDS) is pulling from it", s.durable);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the durable consumer exists (`$JS.API.CONSUMER.INFO`).
pub async fn exists(js: &JetStream, durable: &str) -> Result<bool> {
    let stream = js.get_stream_no_info(STREAM).await.with_context(|| format!("naming JetStream stream {STREAM:?}"))?;
    match stream.consumer_info(durable).await {
        Ok(_) => Ok(true),
        Err(e) if not_found(&e) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("looking up consumer {durable}"))),
    }
}

/// The stream's last sequence, read without `$JS.API.STREAM.INFO` (which HQ's session
/// credentials do not allow), through `$JS.API.CONSUMER.…` alone: a consumer on the whole stream
/// that delivers only new messages starts right after the last one, and its info says so
/// (`delivered.stream_sequence`). It is never pulled from, and deleted at once (the server would
/// remove it after its short InactiveThreshold anyway).
pub async fn last_sequence_by_probe(js: &JetStream, durable: &str) -> Result<u64> {
    let stream = js.get_stream_no_info(STREAM).await.with_context(|| format!("naming JetStream stream {STREAM:?}"))?;
    let name = format!("{durable}-probe");
    let probe: PullConsumer = stream
        .create_consumer(Config {
            name: Some(name.clone()),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            inactive_threshold: Duration::from_secs(10),
            ..Config::default()
        })
        .await
        .with_context(|| format!("creating the probe consumer {name}"))?;
    let last = probe.cached_info().delivered.stream_sequence;
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "deleting the probe consumer failed; the server removes it when it turns inactive");
    }
    Ok(last)
}

/// What the stream holds of a range of sequences: the messages the durable consumer's filter
/// takes (`ours`, whole), and the sequences the stream no longer has (`removed`).
pub struct RangeRead {
    pub ours: Vec<Message>,
    pub removed: Vec<u64>,
}

/// Whether `subject` matches the NATS filter `filter` (`*` one token, `>` the rest).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for f in filter.split('.') {
        match (f, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Read `from..=to` through a short-lived consumer of its own (no acks, deleted at once): every
/// message with `wanted(seq, subject)`, or only the subjects when `headers_only`.
async fn read_through(
    stream: &async_nats::jetstream::stream::Stream<()>,
    name: String,
    from: u64,
    to: u64,
    headers_only: bool,
    max_request_batch: i64,
) -> Result<Vec<Message>> {
    let reader: PullConsumer = stream
        .create_consumer(Config {
            name: Some(name.clone()),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
            ack_policy: AckPolicy::None,
            headers_only,
            inactive_threshold: Duration::from_secs(30),
            ..Config::default()
        })
        .await
        .with_context(|| format!("creating the consumer {name} that reads sequences {from}..={to}"))?;
    let mut out = Vec::new();
    let read = async {
        'reading: loop {
            let mut batch = reader
                .fetch()
                .max_messages(max_request_batch.clamp(1, 4096) as usize)
                .messages()
                .await
                .with_context(|| format!("reading sequences {from}..={to} through consumer {name}"))?;
            let mut any = false;
            while let Some(m) = batch.next().await {
                let m =
                    m.map_err(|e| anyhow::anyhow!("reading sequences {from}..={to} through consumer {name}: {e}"))?;
                let seq = m.info().map_err(|e| anyhow::anyhow!("a message read through {name}: {e}"))?.stream_sequence;
                if seq > to {
                    break 'reading;
                }
                any = true;
                out.push(m);
            }
            if !any {
                break;
            }
        }
        anyhow::Ok(())
    };
    let result = read.await;
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "deleting the reading consumer failed; the server removes it when it turns inactive");
    }
    result.map(|()| out)
}

/// What the stream holds of `from..=to` besides the sequences in `have`, read straight from the
/// stream: first only the subjects (every message, cheap), then whole the messages of ours that
/// are missing. Only `$JS.API.CONSUMER.…` requests, as HQ's session credentials allow.
///
/// Ends a reconciliation: a message that hit MaxDeliver while it went from one dying process to
/// the next is no longer pending (the server's count does not show it) and is never redelivered,
/// yet the stream still has it — storing it from here keeps the WAL complete and in stream order.
/// And a sequence the stream no longer has is a gap that the pending count does not show either
/// (the server forgets a removed message).
pub async fn read_range(
    js: &JetStream,
    s: &ConsumerSettings,
    from: u64,
    to: u64,
    have: &std::collections::BTreeSet<u64>,
) -> Result<RangeRead> {
    let stream = js.get_stream_no_info(STREAM).await.with_context(|| format!("naming JetStream stream {STREAM:?}"))?;
    let filters = filter_subjects(&s.company_ids);
    let heads = read_through(&stream, format!("{}-scan", s.durable), from, to, true, s.max_request_batch).await?;
    let mut present = std::collections::BTreeSet::new();
    let mut first_missing_of_ours = None;
    for m in &heads {
        let seq = m.info().map_err(|e| anyhow::anyhow!("a message read from the stream: {e}"))?.stream_sequence;
        present.insert(seq);
        let ours = filters.iter().any(|f| subject_matches(f, m.subject.as_str()));
        if ours && !have.contains(&seq) && first_missing_of_ours.is_none() {
            first_missing_of_ours = Some(seq);
        }
    }
    let removed = (from..=to).filter(|s| !present.contains(s) && !have.contains(s)).collect();
    let mut ours = Vec::new();
    if let Some(start) = first_missing_of_ours {
        for m in read_through(&stream, format!("{}-fill", s.durable), start, to, false, s.max_request_batch).await? {
            let seq = m.info().map_err(|e| anyhow::anyhow!("a message read from the stream: {e}"))?.stream_sequence;
            if !have.contains(&seq) && filters.iter().any(|f| subject_matches(f, m.subject.as_str())) {
                ours.push(m);
            }
        }
    }
    Ok(RangeRead { ours, removed })
}

/// One pull request: up to MaxRequestBatch messages, each handed over as it arrives, ending when
/// the batch is full or after [`PULL_EXPIRES`]. Ingest issues them one after another rather than
/// as a continuous stream so that, when it stops, no request is left open on the server to
/// deliver messages nobody reads (those would wait a full AckWait for redelivery, and hold up
/// the next start).
pub async fn request(consumer: &PullConsumer, s: &ConsumerSettings) -> Result<Batch> {
    consumer
        .batch()
        .max_messages(s.max_request_batch.max(1) as usize)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .with_context(|| format!("sending a pull request to consumer {}", s.durable))
}

/// A pull that cannot deliver anything (max_bytes 1: any message is larger, the server answers
/// "exceeds MaxBytes" and keeps it), sent while paused so the durable consumer does not count as
/// inactive and get deleted after InactiveThreshold.
pub async fn keep_alive(js: &JetStream, s: &ConsumerSettings) -> Result<()> {
    let stream = js
        .get_stream_no_info(STREAM)
        .await
        .with_context(|| format!("naming JetStream stream {STREAM:?} for a keep-alive pull"))?;
    let consumer: PullConsumer = stream
        .get_consumer(&s.durable)
        .await
        .map_err(|e| anyhow::anyhow!("looking up consumer {} for a keep-alive pull: {e}", s.durable))?;
    let mut batch =
        consumer.fetch().max_messages(1).max_bytes(1).expires(Duration::from_millis(100)).messages().await?;
    while let Some(m) = batch.next().await {
        if let Ok(m) = m {
            // Should not happen; never ack what was not stored — let it be redelivered.
            tracing::warn!(subject = %m.subject, "keep-alive pull delivered a message; leaving it unacked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_taken_out_and_passed_on() {
        assert_eq!(url_auth("nats://127.0.0.1:4222"), ("nats://127.0.0.1:4222".into(), None));
        assert_eq!(
            url_auth("nats://eds:p%40ss:w@a:4222, nats://b:4222"),
            ("nats://a:4222,nats://b:4222".into(), Some(UrlAuth::UserPassword("eds".into(), "p@ss:w".into())))
        );
        assert_eq!(url_auth("nats://s3cr3t@a"), ("nats://a".into(), Some(UrlAuth::Token("s3cr3t".into()))));
        assert_eq!(url_auth("u:p@a:4222"), ("a:4222".into(), Some(UrlAuth::UserPassword("u".into(), "p".into()))));
    }

    #[test]
    fn subjects_match_filters_as_nats_does() {
        let f = "dbchange.*.*.c1.*.PUBLIC.>";
        assert!(subject_matches(f, "dbchange.order.UPDATE.c1.loc.PUBLIC.2"));
        assert!(subject_matches(f, "dbchange.order.UPDATE.c1.loc.PUBLIC.2.3"));
        assert!(!subject_matches(f, "dbchange.order.UPDATE.c2.loc.PUBLIC.2"));
        assert!(!subject_matches(f, "dbchange.order.UPDATE.c1.loc.PUBLIC"));
        assert!(subject_matches("a.*", "a.b") && !subject_matches("a.*", "a.b.c") && !subject_matches("a.*", "a"));
    }

    #[test]
    fn names_and_filters_as_eds() {
        assert_eq!(durable_name("abc", None), "eds-abc");
        assert_eq!(durable_name("abc", Some("")), "eds-abc");
        assert_eq!(durable_name("abc", Some("x")), "eds-abc-x");
        assert_eq!(filter_subjects(&["c1".into()]), vec!["dbchange.*.*.c1.*.PUBLIC.>"]);
        let s = ConsumerSettings {
            durable: "eds-dev".into(),
            company_ids: vec!["c1".into()],
            ack_wait: Duration::from_secs(300),
            max_ack_pending: 25_000,
            max_request_batch: 4096,
            inactive_threshold: Duration::from_secs(72 * 3600),
            restart: false,
            start_after_import: None,
        };
        let one = config(&s, DeliverPolicy::New);
        assert_eq!(one.filter_subject, "dbchange.*.*.c1.*.PUBLIC.>");
        assert!(one.filter_subjects.is_empty());
        assert_eq!((one.max_deliver, one.max_waiting, one.ack_policy), (20, 1, AckPolicy::Explicit));
        let two = config(&ConsumerSettings { company_ids: vec!["c1".into(), "c2".into()], ..s }, DeliverPolicy::New);
        assert_eq!(two.filter_subject, "");
        assert_eq!(two.filter_subjects.len(), 2);
    }
}
