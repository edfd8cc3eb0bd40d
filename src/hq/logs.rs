//! Log uploads to HQ (spec §2.5, §3.3): the session's JSON log file (see
//! [`crate::logging::file`]) is cut, gzipped and `PUT` to a pre-signed URL HQ hands out, hourly,
//! on a `sendlogs` notification and at session end.
//!
//! The URL comes from the caller (the session asks `POST <api>/v3/eds/internal/<id>/log`, or
//! takes it from the session-end answer), so this module knows nothing of sessions.
//!
//! Invariant: a pre-signed URL is a credential (its query holds the signature). It is never
//! printed except through [`mask_url`], and reqwest's errors lose their URL before they are.

use super::mask::{mask_url, url_path};
use crate::logging::LogFileHandle;
use crate::registry::RetryPolicy;
use anyhow::{Context as _, Result};
use bytes::Bytes;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `Content-Type` of an upload, as EDS sends it (the body is a gzip stream, not a tar).
pub const UPLOAD_CONTENT_TYPE: &str = "application/x-tgz";

/// How an upload is retried: 5 attempts within 5 minutes, 100 ms + random[0, 500 ms × attempt)
/// apart, after a transport error or an HTTP 408, 429 or 5xx answer.
pub const UPLOAD_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    max_elapsed: Duration::from_secs(300),
    base_delay: Duration::from_millis(100),
    jitter_per_attempt: Duration::from_millis(500),
};

/// The most one `PUT` may take (an hour of TRACE lines over a shop's uplink).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The `User-Agent` of HQ requests: `Shopmonkey EDS Server/<version>`.
pub fn user_agent() -> String {
    format!("Shopmonkey EDS Server/{}", crate::VERSION)
}

/// Gzips `file` and `PUT`s it to the pre-signed `url` (no `Authorization`: `client` must carry
/// no default one), retried per [`UPLOAD_RETRY`] with the whole body each attempt. Success is
/// 200, 201 or 204. Returns the URL's (decoded) path, which EDS reports to HQ as the upload's
/// `path`. Errors name the file and the URL masked by [`mask_url`].
pub async fn upload_gzip(client: &reqwest::Client, url: &str, file: &Path) -> Result<String> {
    upload_gzip_with(client, url, file, &UPLOAD_RETRY).await
}

/// [`upload_gzip`] with another retry policy.
pub async fn upload_gzip_with(client: &reqwest::Client, url: &str, file: &Path, retry: &RetryPolicy) -> Result<String> {
    let context = || format!("uploading {} to {}", file.display(), mask_url(url));
    let target = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .context("the upload URL is not an http or https URL")
        .with_context(context)?;
    let path = url_path(url).unwrap_or_else(|| target.path().to_owned());
    let body = gzip(file.to_owned()).await.with_context(context)?;
    put(client, target, body, retry).await.with_context(context)?;
    Ok(path)
}

/// The gzip of `file`, compressed as it is read, on a blocking thread.
async fn gzip(file: PathBuf) -> Result<Bytes> {
    let compressed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut input = std::fs::File::open(&file)?;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::copy(&mut input, &mut encoder)?;
        encoder.finish()
    })
    .await
    .context("the compression task ended early")?
    .context("reading and compressing the file")?;
    Ok(Bytes::from(compressed))
}

/// `PUT`s `body` to `target` until it is accepted, a refusal is final, or `retry` is spent.
async fn put(client: &reqwest::Client, target: reqwest::Url, body: Bytes, retry: &RetryPolicy) -> Result<()> {
    use reqwest::header::{CONTENT_TYPE, USER_AGENT};
    let answer = crate::registry::send_retrying(retry, || {
        client
            .put(target.clone())
            .header(CONTENT_TYPE, UPLOAD_CONTENT_TYPE)
            .header(USER_AGENT, user_agent())
            .timeout(UPLOAD_TIMEOUT)
            // A fresh body each attempt (EDS re-sent the one its first attempt consumed).
            .body(body.clone())
    })
    .await
    .map_err(anyhow::Error::msg)?;
    if matches!(answer.status.as_u16(), 200 | 201 | 204) {
        return Ok(());
    }
    let reason = refusal(answer.status, &answer.body);
    if answer.attempts > 1 {
        anyhow::bail!("{reason} (after {} attempts)", answer.attempts);
    }
    anyhow::bail!("{reason}")
}

/// The text of a refused upload: the status, and S3's `<Code>`/`<Message>` or HQ's JSON
/// `message` or the start of the body. Never all of an S3 error, which can quote the
/// signature (`SignatureDoesNotMatch` does).
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let element = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let len = text.get(start..)?.find(&format!("</{name}>"))?;
        text.get(start..start + len).map(str::trim).filter(|s| !s.is_empty())
    };
    let detail = if text.trim_start().starts_with('<') {
        match (element("Code"), element("Message")) {
            (Some(code), Some(message)) => Some(format!("{code}: {message}")),
            (code, message) => code.or(message).map(str::to_owned),
        }
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .or_else(|| Some(text.chars().take(200).collect::<String>().trim().to_owned()))
            .filter(|s| !s.is_empty())
    };
    match detail {
        Some(detail) => format!("HTTP {status}: {detail}"),
        None => format!("HTTP {status}"),
    }
}

/// Uploads the log file for HQ, one upload at a time: the hourly timer, a `sendlogs`
/// notification and the session's end may ask at once, and each must get a file of its own.
#[derive(Debug)]
pub struct LogShipper {
    client: reqwest::Client,
    log: LogFileHandle,
    keep_logs: bool,
    retry: RetryPolicy,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl LogShipper {
    /// Ships `log`'s files with `client` (which must send no `Authorization` by default);
    /// uploaded files are deleted unless `keep_logs` (`--keep-logs`).
    pub fn new(client: reqwest::Client, log: LogFileHandle, keep_logs: bool) -> LogShipper {
        LogShipper { client, log, keep_logs, retry: UPLOAD_RETRY, one_at_a_time: tokio::sync::Mutex::new(()) }
    }

    /// The same shipper with another upload retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> LogShipper {
        self.retry = retry;
        self
    }

    /// Sends the lines logged so far and goes on in a new file (hourly, `sendlogs`): asks
    /// `upload_url` for a URL, rotates the file, uploads the finished one with
    /// [`upload_gzip`], deletes it unless `keep_logs`, and returns the uploaded path.
    /// `Ok(None)` without asking for a URL when no file is open (no session yet).
    ///
    /// The URL is asked for before the cut (EDS cut first), so an HQ that cannot be reached
    /// leaves the lines in the current file for the next attempt. A failed upload leaves the
    /// cut file on disk, named in the error.
    pub async fn send_logs<F, Fut>(&self, upload_url: F) -> Result<Option<String>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String>>,
    {
        let _turn = self.one_at_a_time.lock().await;
        if self.log.current().is_none() {
            return Ok(None);
        }
        let url = upload_url().await.context("asking HQ for a log upload URL")?;
        let Some(file) = self.log.rotate()? else { return Ok(None) };
        self.ship(&url, &file).await.map(Some)
    }

    /// Sends the last lines at the session's end: closes the file (nothing is written until
    /// the next [`LogFileHandle::open`]), uploads it to the URL `upload_url` gives (the
    /// session-end answer's), deletes it unless `keep_logs`, and returns the uploaded path.
    /// `Ok(None)` without asking for a URL when no file is open.
    pub async fn send_final_logs<F, Fut>(&self, upload_url: F) -> Result<Option<String>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String>>,
    {
        let _turn = self.one_at_a_time.lock().await;
        let Some(file) = self.log.close() else { return Ok(None) };
        let url = upload_url()
            .await
            .with_context(|| format!("asking HQ for a log upload URL (the log stays in {})", file.display()))?;
        self.ship(&url, &file).await.map(Some)
    }

    /// Sends the log files an earlier session left in the current file's directory — a worker
    /// that crashed, was killed, or could not reach HQ at its end — oldest first, each to a URL
    /// `upload_url` gives; returns the uploaded paths. Stops at the first failure (the rest wait
    /// for the next session). Nothing when no file is open.
    pub async fn send_leftovers<F, Fut>(&self, mut upload_url: F) -> Result<Vec<String>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<String>>,
    {
        let _turn = self.one_at_a_time.lock().await;
        let Some(current) = self.log.current() else { return Ok(Vec::new()) };
        let Some(dir) = current.parent() else { return Ok(Vec::new()) };
        let mut left: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| *p != current && p.file_name().and_then(|n| n.to_str()).is_some_and(is_unsent_log))
            .collect();
        left.sort();
        let mut sent = Vec::new();
        for file in left {
            let url = upload_url().await.context("asking HQ for a log upload URL")?;
            sent.push(self.ship(&url, &file).await?);
        }
        Ok(sent)
    }

    /// Uploads `file`, then deletes it — or, with `keep_logs`, renames it `sent-<name>` so it is
    /// never taken for a leftover.
    async fn ship(&self, url: &str, file: &Path) -> Result<String> {
        let path = upload_gzip_with(&self.client, url, file, &self.retry).await?;
        let done = if self.keep_logs {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            tokio::fs::rename(file, file.with_file_name(format!("{SENT_PREFIX}{name}"))).await
        } else {
            tokio::fs::remove_file(file).await
        };
        if let Err(e) = done {
            tracing::warn!(file = %file.display(), error = %e, "could not delete or mark an uploaded log file");
        }
        tracing::debug!(file = %file.display(), path, "uploaded a log file");
        Ok(path)
    }
}

/// The prefix of a kept log file that was uploaded (`--keep-logs`).
pub const SENT_PREFIX: &str = "sent-";

/// A session log file's name (`eds-<unix millis>.log`) not marked as sent.
fn is_unsent_log(name: &str) -> bool {
    name.strip_prefix("eds-").and_then(|r| r.strip_suffix(".log")).is_some_and(|ms| !ms.is_empty())
}

/// The HQ test double, for the tests below (the registry's tests load it too).
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/common/hq.rs"]
mod testing;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing;
    use super::*;
    use std::collections::VecDeque;
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Every test wait ends by this.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// One request the double received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        uri: String,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    }

    /// An upload target answering with `answers` in turn (200 once they run out).
    struct Bucket {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Bucket {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Bucket {
        async fn start(answers: Vec<(u16, &str)>) -> Bucket {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let answers: Arc<Mutex<VecDeque<(u16, String)>>> =
                Arc::new(Mutex::new(answers.into_iter().map(|(s, b)| (s, b.to_owned())).collect()));
            let log = seen.clone();
            let handler: testing::BodyHandler = Arc::new(move |parts, body| {
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body: body.to_vec(),
                });
                answers.lock().unwrap().pop_front().unwrap_or((200, String::new()))
            });
            let task = tokio::spawn(testing::serve_with_body(listener, handler));
            Bucket { base, seen, task }
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(10),
            base_delay: Duration::from_millis(1),
            jitter_per_attempt: Duration::from_millis(1),
        }
    }

    /// A log-like file of some size, with text gzip must carry byte for byte.
    fn sample_file(dir: &Path) -> (PathBuf, Vec<u8>) {
        let mut content = Vec::new();
        for i in 0..5000 {
            content.extend_from_slice(
                format!("{{\"message\":\"line {i} é ✓ \\\"q\\\"\",\"severity\":\"TRACE\"}}\n").as_bytes(),
            );
        }
        let path = dir.join("eds-1.log");
        std::fs::write(&path, &content).unwrap();
        (path, content)
    }

    async fn within<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(DEADLINE, f).await.expect("the test's deadline passed")
    }

    #[tokio::test]
    async fn uploads_the_gzipped_file_with_eds_s_headers() {
        let bucket = Bucket::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let (file, content) = sample_file(dir.path());
        let url =
            format!("{}/bucket/eds/a%20b.log.gz?X-Amz-Signature=0123456789abcdef&X-Amz-Expires=3600", bucket.base);
        let path = within(upload_gzip(&reqwest::Client::new(), &url, &file)).await.unwrap();
        assert_eq!(path, "/bucket/eds/a b.log.gz");
        let seen = bucket.seen();
        assert_eq!(seen.len(), 1);
        let put = &seen[0];
        assert_eq!(put.method, "PUT");
        assert_eq!(put.uri, "/bucket/eds/a%20b.log.gz?X-Amz-Signature=0123456789abcdef&X-Amz-Expires=3600");
        assert_eq!(put.headers["content-type"], "application/x-tgz");
        assert_eq!(put.headers["user-agent"], format!("Shopmonkey EDS Server/{}", crate::VERSION).as_str());
        assert!(put.headers.get("authorization").is_none());
        assert_eq!(put.headers["content-length"], put.body.len().to_string().as_str());
        assert!(put.body.len() < content.len() / 4, "compressed: {} of {}", put.body.len(), content.len());
        assert_eq!(gunzip(&put.body), content);
    }

    #[tokio::test]
    async fn a_503_is_retried_with_the_whole_body() {
        let bucket = Bucket::start(vec![(503, "<Error><Code>SlowDown</Code></Error>"), (201, "")]).await;
        let dir = tempfile::tempdir().unwrap();
        let (file, content) = sample_file(dir.path());
        let url = format!("{}/up.gz?sig=1", bucket.base);
        within(upload_gzip_with(&reqwest::Client::new(), &url, &file, &fast())).await.unwrap();
        let seen = bucket.seen();
        assert_eq!(seen.len(), 2);
        assert!(!seen[1].body.is_empty());
        assert_eq!(seen[0].body, seen[1].body);
        assert_eq!(gunzip(&seen[1].body), content);
    }

    #[tokio::test]
    async fn a_403_fails_at_once_with_a_clear_error() {
        let s3 = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message>\
                  <SignatureProvided>0123456789abcdef</SignatureProvided></Error>";
        let bucket = Bucket::start(vec![(403, s3)]).await;
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sample_file(dir.path());
        let url = format!("{}/logs/up.gz?X-Amz-Signature=0123456789abcdef", bucket.base);
        let e = within(upload_gzip_with(&reqwest::Client::new(), &url, &file, &fast())).await.unwrap_err();
        let text = eds_wal::error_chain(e.as_ref());
        assert_eq!(bucket.seen().len(), 1, "a 403 is not retried");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("/logs/*****?X-Amz-Signature=01234567********"), "{text}");
        assert!(text.contains("403 Forbidden: AccessDenied: Request has expired"), "{text}");
        assert!(!text.contains("89abcdef"), "the signature leaked: {text}");
        assert!(!text.contains("attempts"), "{text}");
    }

    #[tokio::test]
    async fn transport_errors_are_retried_and_never_show_the_signature() {
        // A port nobody listens on: connection refused.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/up.gz?X-Amz-Signature=0123456789abcdef", closed.local_addr().unwrap());
        drop(closed);
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = sample_file(dir.path());
        let e = within(upload_gzip_with(&reqwest::Client::new(), &url, &file, &fast())).await.unwrap_err();
        let text = eds_wal::error_chain(e.as_ref());
        assert!(text.contains("(after 3 attempts)"), "{text}");
        assert!(!text.contains("89abcdef"), "the signature leaked: {text}");
    }

    #[tokio::test]
    async fn a_missing_file_or_a_bad_url_is_an_error_without_a_request() {
        let bucket = Bucket::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("eds-404.log");
        let e =
            within(upload_gzip(&reqwest::Client::new(), &format!("{}/x", bucket.base), &missing)).await.unwrap_err();
        assert!(eds_wal::error_chain(e.as_ref()).contains("eds-404.log"));
        let (file, _) = sample_file(dir.path());
        let e = within(upload_gzip(&reqwest::Client::new(), "ftp://host/x", &file)).await.unwrap_err();
        assert!(eds_wal::error_chain(e.as_ref()).contains("not an http or https URL"));
        assert!(bucket.seen().is_empty());
    }

    fn log_lines(log: &LogFileHandle, messages: &[&str]) {
        let subscriber = tracing_subscriber::registry().with(crate::logging::file::layer(log.clone(), None));
        tracing::subscriber::with_default(subscriber, || {
            for m in messages {
                tracing::info!(kind = "test", "{m}");
            }
        });
    }

    #[tokio::test]
    async fn send_logs_rotates_uploads_and_deletes() {
        let bucket = Bucket::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let log = LogFileHandle::new();
        let first = log.open(&dir.path().join("logs")).unwrap();
        log_lines(&log, &["hour one"]);
        let shipper = LogShipper::new(reqwest::Client::new(), log.clone(), false).with_retry(fast());
        let url = format!("{}/b/s1.log.gz?sig=x", bucket.base);
        let path = within(shipper.send_logs(|| async { Ok(url) })).await.unwrap();
        assert_eq!(path.as_deref(), Some("/b/s1.log.gz"));
        assert!(!first.exists(), "deleted after the upload");
        let current = log.current().unwrap();
        assert_ne!(current, first);
        log_lines(&log, &["hour two"]);
        let uploaded = String::from_utf8(gunzip(&bucket.seen()[0].body)).unwrap();
        assert_eq!(uploaded.lines().count(), 1);
        assert!(uploaded.contains("\"message\":\"hour one\""), "{uploaded}");
        assert!(std::fs::read_to_string(&current).unwrap().contains("hour two"));

        // At the session's end: the last file, closed.
        let url = format!("{}/b/end.log.gz", bucket.base);
        let path = within(shipper.send_final_logs(|| async { Ok(url) })).await.unwrap();
        assert_eq!(path.as_deref(), Some("/b/end.log.gz"));
        assert_eq!(log.current(), None);
        assert!(!current.exists());
        assert!(String::from_utf8(gunzip(&bucket.seen()[1].body)).unwrap().contains("hour two"));
    }

    #[tokio::test]
    async fn keep_logs_keeps_the_uploaded_file() {
        let bucket = Bucket::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let log = LogFileHandle::new();
        let first = log.open(dir.path()).unwrap();
        log_lines(&log, &["kept"]);
        let shipper = LogShipper::new(reqwest::Client::new(), log.clone(), true).with_retry(fast());
        let url = format!("{}/k.gz", bucket.base);
        within(shipper.send_logs(|| async { Ok(url) })).await.unwrap();
        // Kept, and marked as sent so a later session does not take it for a leftover.
        let kept = first.with_file_name(format!("{SENT_PREFIX}{}", first.file_name().unwrap().to_string_lossy()));
        assert!(!first.exists());
        assert!(std::fs::read_to_string(&kept).unwrap().contains("kept"));
        assert_eq!(gunzip(&bucket.seen()[0].body), std::fs::read(&kept).unwrap());
        let sent = within(shipper.send_leftovers(|| async { Ok(String::new()) })).await.unwrap();
        assert!(sent.is_empty(), "{sent:?}");
        log.close();
    }

    #[tokio::test]
    async fn logs_an_earlier_session_left_are_sent_oldest_first_and_only_once() {
        let bucket = Bucket::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("eds-100.log"), "crashed\n").unwrap();
        std::fs::write(dir.path().join("eds-200.log"), "unreachable\n").unwrap();
        std::fs::write(dir.path().join("sent-eds-50.log"), "kept\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine\n").unwrap();
        let log = LogFileHandle::new();
        let current = log.open(dir.path()).unwrap();
        let shipper = LogShipper::new(reqwest::Client::new(), log.clone(), false).with_retry(fast());
        let n = std::sync::atomic::AtomicUsize::new(0);
        let base = bucket.base.clone();
        let sent = within(shipper.send_leftovers(|| {
            let url = format!("{base}/left-{}.gz", n.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
            async move { Ok(url) }
        }))
        .await
        .unwrap();
        assert_eq!(sent, ["/left-0.gz", "/left-1.gz"]);
        let bodies: Vec<Vec<u8>> = bucket.seen().iter().map(|r| gunzip(&r.body)).collect();
        assert_eq!(bodies, [b"crashed\n".to_vec(), b"unreachable\n".to_vec()]);
        assert!(!dir.path().join("eds-100.log").exists() && !dir.path().join("eds-200.log").exists());
        assert!(
            current.exists() && dir.path().join("sent-eds-50.log").exists() && dir.path().join("notes.txt").exists()
        );
        log.close();
    }

    #[tokio::test]
    async fn nothing_is_sent_without_a_file_and_a_failed_url_request_cuts_nothing() {
        let log = LogFileHandle::new();
        let shipper = LogShipper::new(reqwest::Client::new(), log.clone(), false).with_retry(fast());
        let asked = std::sync::atomic::AtomicBool::new(false);
        let sent = within(shipper.send_logs(|| async {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(String::new())
        }))
        .await
        .unwrap();
        assert_eq!(sent, None);
        assert!(!asked.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(within(shipper.send_final_logs(|| async { Ok(String::new()) })).await.unwrap(), None);

        let dir = tempfile::tempdir().unwrap();
        let file = log.open(dir.path()).unwrap();
        log_lines(&log, &["still here"]);
        let e = within(shipper.send_logs(|| async { anyhow::bail!("HQ answered 500") })).await.unwrap_err();
        assert!(eds_wal::error_chain(e.as_ref()).contains("HQ answered 500"));
        assert_eq!(log.current(), Some(file.clone()), "not rotated");
        log_lines(&log, &["and this"]);
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
        log.close();
    }

    #[tokio::test]
    async fn concurrent_requests_each_ship_a_file_of_their_own() {
        let bucket = Bucket::start(vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let log = LogFileHandle::new();
        log.open(dir.path()).unwrap();
        log_lines(&log, &["a"]);
        let shipper = LogShipper::new(reqwest::Client::new(), log.clone(), false).with_retry(fast());
        let (u1, u2) = (format!("{}/one.gz", bucket.base), format!("{}/two.gz", bucket.base));
        let (r1, r2) = within(async {
            tokio::join!(shipper.send_logs(|| async { Ok(u1) }), shipper.send_final_logs(|| async { Ok(u2) }))
        })
        .await;
        assert_eq!(r1.unwrap().as_deref(), Some("/one.gz"));
        assert_eq!(r2.unwrap().as_deref(), Some("/two.gz"));
        let seen = bucket.seen();
        assert_eq!(seen.len(), 2);
        let bodies: Vec<String> = seen.iter().map(|s| String::from_utf8(gunzip(&s.body)).unwrap()).collect();
        // The first holds the line; the second is the (empty) file the rotation opened.
        assert!(bodies[0].contains("\"message\":\"a\""), "{bodies:?}");
        assert_eq!(bodies[1], "");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "both uploaded and deleted");
    }
}
