//! The HQ schema client: `GET <api>/v3/schema` and `/v3/schema/<object>/<version>`, retried
//! within bounds.

use super::{error_chain, SchemaSource, SourceError};
use eds_drivers::driver::BoxFuture;
use eds_drivers::schema::{LatestSchemas, Schema};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How [`HqSchemas`] retries a request (spec §3.7, bounded).
///
/// A request is retried after a connection error (refused, reset, closed early) or an HTTP 408,
/// 429, 502, 503 or 504 answer, while fewer than `max_attempts` were made and the next attempt
/// would start within `max_elapsed` of the first. The delay before attempt `n + 1` is
/// `base_delay` plus a random part below `jitter_per_attempt × n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// No attempt starts later than this after the first.
    pub max_elapsed: Duration,
    /// Fixed part of the delay between attempts.
    pub base_delay: Duration,
    /// Random part of the delay, per attempt made so far.
    pub jitter_per_attempt: Duration,
}

/// HQ's production API, for a key that names no issuer.
pub const DEFAULT_API_URL: &str = "https://api.shopmonkey.cloud";

/// The API base URL an API key names: its `iss` claim (read, not verified: the key is the
/// operator's own, and HQ checks it), the legacy issuer `https://shopmonkey.io` read as
/// [`DEFAULT_API_URL`] (spec §3.1). `None` when the key is not a JWT with an http(s) `iss`.
pub fn api_url_of_key(key: &str) -> Option<String> {
    use base64::Engine;
    let payload = key.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let iss = claims.get("iss")?.as_str()?.trim().trim_end_matches('/');
    if iss == "https://shopmonkey.io" {
        return Some(DEFAULT_API_URL.to_owned());
    }
    let url = reqwest::Url::parse(iss).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| iss.to_owned())
}

/// The API base URL to use: `--api-url` when given, else the API key's issuer, else
/// [`DEFAULT_API_URL`].
pub fn api_url(flag: Option<&str>, key: Option<&str>) -> String {
    flag.map(str::to_owned).or_else(|| key.and_then(api_url_of_key)).unwrap_or_else(|| DEFAULT_API_URL.to_owned())
}

impl Default for RetryPolicy {
    /// 5 attempts within 30 s, 100 ms + random[0, 500 ms × attempt) apart (EDS's delays).
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(30),
            base_delay: Duration::from_millis(100),
            jitter_per_attempt: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt once `attempts` were made: `base_delay` plus a random
    /// part below `jitter_per_attempt × attempts`.
    pub fn delay(&self, attempts: u32) -> Duration {
        self.base_delay + random_below(self.jitter_per_attempt.saturating_mul(attempts))
    }
}

/// A random duration in `[0, max)` (zero when `max` is zero). std's `RandomState` is randomly
/// keyed per instance, which is plenty for retry jitter.
pub(super) fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let hasher = std::collections::hash_map::RandomState::new().build_hasher();
    Duration::from_nanos(hasher.finish() % nanos)
}

/// HTTP statuses worth retrying (spec §3.7).
const RETRY_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// The most of an answer's body read; a schema list of every Shopmonkey table is far smaller.
const MAX_BODY: usize = 64 << 20;

/// HQ's schema endpoints (spec §3.5): `GET <api>/v3/schema` and
/// `GET <api>/v3/schema/<object>/<version>`, unauthenticated, with `User-Agent: eds/<version>`.
/// Connections time out after 5 s, requests after 30 s; retries follow a bounded
/// [`RetryPolicy`] (both endpoints are retried, unlike EDS which retries only the list).
#[derive(Debug, Clone)]
pub struct HqSchemas {
    client: reqwest::Client,
    /// The API URL without a trailing slash.
    base: String,
    retry: RetryPolicy,
}

/// Why one attempt failed.
enum AttemptError {
    Http(reqwest::Error),
    TooLarge,
}

impl HqSchemas {
    /// A client of the API at `api_url` (e.g. `https://api.shopmonkey.cloud`; a trailing slash is
    /// fine). Fails when the URL is not an absolute http(s) URL without query or fragment, or the
    /// HTTP client cannot be built.
    pub fn new(api_url: &str) -> anyhow::Result<HqSchemas> {
        use anyhow::Context;
        let url = reqwest::Url::parse(api_url).with_context(|| format!("invalid API URL {api_url:?}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            anyhow::bail!("invalid API URL {api_url:?}: not an http or https URL");
        }
        if url.query().is_some() || url.fragment().is_some() {
            anyhow::bail!("invalid API URL {api_url:?}: it must not have a query or fragment");
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("eds/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client for HQ's schema registry")?;
        Ok(HqSchemas { client, base: url.as_str().trim_end_matches('/').to_owned(), retry: RetryPolicy::default() })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> HqSchemas {
        self.retry = retry;
        self
    }

    /// GETs `path` under the API base URL, retrying as the policy allows; `Ok(None)` for a 404.
    /// For HQ's other unauthenticated routes (enrollment).
    pub async fn get_json(&self, path: &str) -> Result<Option<Vec<u8>>, SourceError> {
        self.get(&format!("{}{path}", self.base), true).await
    }

    /// GETs `url`, retrying as the policy allows. `Ok(None)` for a 404 when `missing_ok`.
    async fn get(&self, url: &str, missing_ok: bool) -> Result<Option<Vec<u8>>, SourceError> {
        let answer = send_retrying(&self.retry, || self.client.get(url))
            .await
            .map_err(|reason| SourceError::Request { url: url.to_owned(), reason })?;
        match answer.status {
            s if s.is_success() => Ok(Some(answer.body)),
            reqwest::StatusCode::NOT_FOUND if missing_ok => Ok(None),
            _ => Err(SourceError::Request { url: url.to_owned(), reason: answer.reason() }),
        }
    }
}

/// An HTTP answer, after the retries a [`RetryPolicy`] allowed.
#[derive(Debug)]
pub struct Answer {
    /// Its status (a retryable one when the attempts ran out).
    pub status: reqwest::StatusCode,
    /// Its body.
    pub body: Vec<u8>,
    /// The `X-Request-Id` header, when the server sent one (HQ's, for support).
    pub request_id: Option<String>,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

impl Answer {
    /// Why a non-2xx answer failed: HQ's `message` or the start of the body, the request id and,
    /// after retries, how many attempts were made.
    pub fn reason(&self) -> String {
        let mut reason = status_reason(self.status, &self.body);
        if let Some(id) = &self.request_id {
            reason.push_str(&format!(" (requestId={id})"));
        }
        if self.attempts > 1 {
            reason.push_str(&format!(" (after {} attempts)", self.attempts));
        }
        reason
    }
}

/// Sends the request `make` builds, again (built afresh, so a body is sent whole every time)
/// after a connection error or a 408/429/502/503/504 answer, as `retry` allows (spec §3.7,
/// bounded). `Err` holds the reason when no answer came; a non-2xx answer is returned as it is,
/// for the caller to judge. Bodies above 64 MiB are refused.
pub async fn send_retrying(retry: &RetryPolicy, make: impl Fn() -> reqwest::RequestBuilder) -> Result<Answer, String> {
    send_retrying_limited(retry, MAX_BODY, make).await
}

/// [`send_retrying`] with another limit on the body read (release archives are larger).
pub async fn send_retrying_limited(
    retry: &RetryPolicy,
    max_body: usize,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Answer, String> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (retryable, failure) = match attempt(make(), max_body).await {
            Ok((status, body, request_id)) => {
                let answer = Answer { status, body, request_id, attempts };
                if !RETRY_STATUSES.contains(&status.as_u16()) {
                    return Ok(answer);
                }
                (true, Ok(answer))
            }
            // `without_url`: the caller names the URL (masked where it is a credential, as
            // pre-signed upload URLs are).
            Err(AttemptError::Http(e)) => (retryable_transport(&e), Err(error_chain(&e.without_url()))),
            Err(AttemptError::TooLarge) => (false, Err(format!("the answer is larger than {max_body} bytes"))),
        };
        let delay = retry.delay(attempts);
        if !retryable || attempts >= retry.max_attempts || started.elapsed() + delay > retry.max_elapsed {
            return failure.map_err(|reason| {
                if attempts > 1 {
                    format!("{reason} (after {attempts} attempts)")
                } else {
                    reason
                }
            });
        }
        let reason = match &failure {
            Ok(answer) => answer.reason(),
            Err(reason) => reason.clone(),
        };
        tracing::debug!(attempts, reason, "HTTP request failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

async fn attempt(
    request: reqwest::RequestBuilder,
    max_body: usize,
) -> Result<(reqwest::StatusCode, Vec<u8>, Option<String>), AttemptError> {
    let mut response = request.send().await.map_err(AttemptError::Http)?;
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.is_empty());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(AttemptError::Http)? {
        if body.len() + chunk.len() > max_body {
            return Err(AttemptError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body, request_id))
}

impl SchemaSource for HqSchemas {
    fn latest(&self) -> BoxFuture<'_, Result<LatestSchemas, SourceError>> {
        Box::pin(async move {
            let url = format!("{}/v3/schema", self.base);
            let body = self.get(&url, false).await?.unwrap_or_default();
            LatestSchemas::from_json(&body).map_err(|source| SourceError::Invalid { url, source })
        })
    }

    /// A name that cannot be one path segment (empty, `.`, `..`) names nothing HQ has: `Ok(None)`
    /// without a request. Other names are percent-escaped (everything but `A-Z a-z 0-9 - . _ ~`).
    fn version<'a>(&'a self, object: &'a str, version: &'a str) -> BoxFuture<'a, Result<Option<Schema>, SourceError>> {
        Box::pin(async move {
            let (Some(object), Some(version)) = (path_segment(object), path_segment(version)) else {
                return Ok(None);
            };
            let url = format!("{}/v3/schema/{object}/{version}", self.base);
            match self.get(&url, true).await? {
                None => Ok(None),
                Some(body) => Schema::from_json(&body).map(Some).map_err(|source| SourceError::Invalid { url, source }),
            }
        })
    }
}

/// `s` percent-escaped as one URL path segment: RFC 3986 unreserved bytes stay, every other
/// byte becomes `%XX`. `None` for names that are not a segment of their own (``, `.`, `..`).
fn path_segment(s: &str) -> Option<String> {
    (!matches!(s, "" | "." | "..")).then(|| eds_drivers::url::escape_component(s))
}

/// The error text of a non-2xx answer: HQ's `message` when the body is JSON with one, else the
/// status and the start of the body.
pub(super) fn status_reason(status: reqwest::StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .filter(|m| !m.is_empty());
    match message {
        Some(message) => format!("HTTP {status}: {message}"),
        None => {
            let start = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
            if start.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {start}")
            }
        }
    }
}

/// Whether a transport error is worth another attempt: the connection could not be made, or
/// was reset or closed before the answer was complete (HQ's calls are safe to repeat: reads,
/// and session calls HQ keys by server). Timeouts are not retried: the request timeout already
/// spends the time budget.
fn retryable_transport(e: &reqwest::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
            {
                return true;
            }
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() {
                return true;
            }
        }
        source = s.source();
    }
    false
}
