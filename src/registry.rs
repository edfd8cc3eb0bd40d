//! The schema registry: which [`Schema`] describes a table at a given model version.
//!
//! A [`Registry`] answers `(table, modelVersion)` from, in order, its in-memory map, the tracker
//! (key `registry:<table>-<version>`, schema JSON, as EDS stores it) and a [`SchemaSource`] — HQ's
//! schema endpoints ([`HqSchemas`], spec §3.5) in the server, embedded schemas in `eds demo`.
//!
//! Invariants:
//! - A schema fetched for a version is kept for that version for good (model versions are
//!   immutable), in memory and in the tracker; nothing expires it (EDS's zero-TTL cache entry
//!   \[QUIRK\] is not copied).
//! - A version HQ does not know never leads to recreating a table: the table's latest schema
//!   answers for it (EDS drops and recreates the table \[BUG\]). Such an answer is remembered only
//!   for a while (the list refresh interval), and never stored in the tracker, so the real
//!   version is picked up once HQ has it.
//! - A table HQ does not know at all is [`RegistryError::Unknown`] (a permanent answer for that
//!   event); anything that failed to answer is [`RegistryError::Unavailable`] (try again later).
//! - HTTP retries are bounded (attempts and elapsed time), unlike EDS's \[BUG\] unbounded ones.

use crate::tracker::Tracker;
use eds_drivers::driver::BoxFuture;
use eds_drivers::schema::{ColumnType, LatestSchemas, Schema, SchemaError};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where schemas come from when they are not cached: HQ, or the demo's embedded set.
pub trait SchemaSource: Send + Sync {
    /// Every table's latest schema (`GET /v3/schema`).
    fn latest(&self) -> BoxFuture<'_, Result<LatestSchemas, SourceError>>;

    /// The schema of HQ object `object` at model version `version`
    /// (`GET /v3/schema/<object>/<version>`); `Ok(None)` when the source has no such object or
    /// version (HTTP 404).
    fn version<'a>(&'a self, object: &'a str, version: &'a str) -> BoxFuture<'a, Result<Option<Schema>, SourceError>>;
}

/// Why a [`SchemaSource`] could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The request failed: transport error, timeout, or a non-2xx answer (after the retries the
    /// policy allows).
    #[error("GET {url}: {reason}")]
    Request {
        /// The URL asked (or, for a source without URLs, what was asked).
        url: String,
        /// What went wrong, with HQ's `message` when it sent one.
        reason: String,
    },
    /// The answer is not a valid schema document (or schema list).
    #[error("GET {url}: the answer is not a valid schema")]
    Invalid {
        /// The URL asked (or, for a source without URLs, what was asked).
        url: String,
        /// Why the document was rejected.
        #[source]
        source: SchemaError,
    },
}

/// Why the [`Registry`] has no schema for a `(table, version)`. Every message names both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// HQ knows neither this version nor the table at all: events of it cannot be given a table.
    #[error("no schema for table {table} version {version}: HQ does not know the table")]
    Unknown {
        /// The table asked for.
        table: String,
        /// The model version asked for.
        version: String,
    },
    /// The schema could not be fetched (HQ down, timeout, error answer, invalid document): try
    /// again later. Transient for the destination that asked, and only for it.
    #[error("schema for table {table} version {version} is unavailable: {reason}")]
    Unavailable {
        /// The table asked for.
        table: String,
        /// The model version asked for.
        version: String,
        /// What failed, naming the URL.
        reason: String,
    },
    /// HQ answered with the schema of another table. Not cached, so a corrected answer is used
    /// as soon as HQ gives it.
    #[error("schema for table {table} version {version}: HQ answered with the schema of table {found} instead")]
    Mismatch {
        /// The table asked for.
        table: String,
        /// The model version asked for.
        version: String,
        /// The table the answer describes.
        found: String,
    },
}

impl RegistryError {
    /// Whether asking again later may succeed: only [`RegistryError::Unavailable`].
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// The tracker key of a table's schema at a version: `registry:<table>-<version>` (EDS's key).
///
/// The key is ambiguous when a table name holds `-` (`a-b` + `c` vs `a` + `b-c`), so a stored
/// schema is used only when its own `table` is the one asked for.
pub fn schema_key(table: &str, version: &str) -> String {
    format!("registry:{table}-{version}")
}

/// How often, at most, the latest-schema list is fetched again when a table is not in it (and
/// how long an answer for a version HQ does not know is remembered).
pub const LIST_REFRESH: Duration = Duration::from_secs(60);

/// Schemas by `(table, modelVersion)`, cached in memory and in the tracker. Cheap to clone:
/// clones share the caches and the source.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn SchemaSource>,
    tracker: Option<Tracker>,
    list_refresh: Duration,
    memory: Mutex<Memory>,
    /// Held while asking the tracker or the source, so concurrent misses for one key make one
    /// request; memory hits never wait for it.
    fetch: tokio::sync::Mutex<Lists>,
}

#[derive(Default)]
struct Memory {
    schemas: HashMap<(String, String), Arc<Schema>>,
    /// Versions the source does not have, until `until`: the latest schema standing in for them,
    /// or `None` when the table is unknown.
    misses: HashMap<(String, String), Miss>,
}

struct Miss {
    stand_in: Option<Arc<Schema>>,
    until: Instant,
}

#[derive(Default)]
struct Lists {
    latest: Option<LatestSchemas>,
    attempted: Option<Instant>,
    warned: HashSet<(String, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("tracker", &self.inner.tracker).finish_non_exhaustive()
    }
}

impl Registry {
    /// The tracker schemas are cached in, when there is one.
    pub fn tracker(&self) -> Option<&Tracker> {
        self.inner.tracker.as_ref()
    }

    /// A registry over `source`, persisting fetched schemas in `tracker` when given.
    pub fn new(source: Arc<dyn SchemaSource>, tracker: Option<Tracker>) -> Registry {
        Registry::with_list_refresh(source, tracker, LIST_REFRESH)
    }

    /// As [`Registry::new`], refreshing the latest-schema list at most every `every` (instead of
    /// [`LIST_REFRESH`]) when a table is not in it.
    pub fn with_list_refresh(source: Arc<dyn SchemaSource>, tracker: Option<Tracker>, every: Duration) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                source,
                tracker,
                list_refresh: every,
                memory: Mutex::new(Memory::default()),
                fetch: tokio::sync::Mutex::new(Lists::default()),
            }),
        }
    }

    /// The schema of `table` at model version `version`.
    ///
    /// Looks in memory, then in the tracker, then asks the source for the version (under HQ's
    /// object name for the table, from the latest-schema list, fetched on first need and again
    /// at most every [`LIST_REFRESH`] while the table is not in it). When the source has no such
    /// version but the table is in the list, the table's latest schema answers (with one warning
    /// per table and version); the returned schema's `model_version()` then differs from
    /// `version`. Tracker reads are synchronous sled reads (served from its page cache).
    pub async fn schema(&self, table: &str, version: &str) -> Result<Arc<Schema>, RegistryError> {
        if let Some(answer) = self.remembered(table, version) {
            return answer;
        }
        let mut lists = self.inner.fetch.lock().await;
        if let Some(answer) = self.remembered(table, version) {
            return answer;
        }
        if let Some(schema) = self.stored(table, version) {
            return Ok(self.remember(table, version, schema));
        }
        let in_list = lists.latest.as_ref().is_some_and(|l| l.get(table).is_some());
        if !in_list {
            self.load_list(&mut lists, table, version).await?;
            // The list may have brought this very version.
            if let Some(answer) = self.remembered(table, version) {
                return answer;
            }
        }
        let object = lists.latest.as_ref().map_or(table, |l| l.object_name(table)).to_owned();
        match self.inner.source.version(&object, version).await {
            Ok(Some(schema)) => {
                if schema.table() != table {
                    tracing::warn!(
                        table,
                        version,
                        object,
                        found = schema.table(),
                        "HQ answered with another table's schema"
                    );
                    return Err(RegistryError::Mismatch {
                        table: table.to_owned(),
                        version: version.to_owned(),
                        found: schema.table().to_owned(),
                    });
                }
                let found = schema.model_version().to_owned();
                self.persist(&[(schema_key(table, &found), &schema)]).await;
                let schema = self.remember(table, &found, schema);
                if schema.model_version() == version {
                    return Ok(schema);
                }
                // HQ answered for `version` with another version's schema: a stand-in, like the
                // latest schema below, so it is only remembered for a while.
                tracing::debug!(
                    table,
                    version,
                    found = schema.model_version(),
                    "HQ answered with another model version"
                );
                let until = Instant::now() + self.inner.list_refresh;
                self.memory()
                    .misses
                    .insert((table.to_owned(), version.to_owned()), Miss { stand_in: Some(schema.clone()), until });
                Ok(schema)
            }
            Ok(None) => {
                // The latest schema may have moved on since the list was fetched.
                self.load_list(&mut lists, table, version).await?;
                let until = Instant::now() + self.inner.list_refresh;
                let key = (table.to_owned(), version.to_owned());
                let Some(latest) = lists.latest.as_ref().and_then(|l| l.get(table)) else {
                    self.memory().misses.insert(key, Miss { stand_in: None, until });
                    return Err(RegistryError::Unknown { table: table.to_owned(), version: version.to_owned() });
                };
                let stand_in = self.remember(table, latest.model_version(), latest.clone());
                if lists.warned.insert(key.clone()) {
                    tracing::warn!(
                        table,
                        version,
                        latest = stand_in.model_version(),
                        "HQ has no schema for this model version; using the table's latest schema \
                         (the destination table is kept, not recreated)"
                    );
                }
                self.memory().misses.insert(key, Miss { stand_in: Some(stand_in.clone()), until });
                Ok(stand_in)
            }
            Err(e) => Err(RegistryError::Unavailable {
                table: table.to_owned(),
                version: version.to_owned(),
                reason: error_chain(&e),
            }),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // The map stays consistent whatever panicked while holding it: each update is one insert.
        self.inner.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer memory holds for the key, if any.
    fn remembered(&self, table: &str, version: &str) -> Option<Result<Arc<Schema>, RegistryError>> {
        let mut memory = self.memory();
        let key = (table.to_owned(), version.to_owned());
        if let Some(schema) = memory.schemas.get(&key) {
            return Some(Ok(schema.clone()));
        }
        match memory.misses.get(&key) {
            Some(miss) if miss.until > Instant::now() => Some(match &miss.stand_in {
                Some(schema) => Ok(schema.clone()),
                None => Err(RegistryError::Unknown { table: key.0, version: key.1 }),
            }),
            Some(_) => {
                memory.misses.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `schema` for the key (the one already kept wins) and returns the kept one.
    fn remember(&self, table: &str, version: &str, schema: Schema) -> Arc<Schema> {
        self.memory().schemas.entry((table.to_owned(), version.to_owned())).or_insert_with(|| Arc::new(schema)).clone()
    }

    fn stored(&self, table: &str, version: &str) -> Option<Schema> {
        let tracker = self.inner.tracker.as_ref()?;
        let key = schema_key(table, version);
        let bytes = match tracker.get(&key) {
            Ok(bytes) => bytes?,
            Err(e) => {
                tracing::warn!(key, error = %eds_wal::error_chain(e.as_ref()), "reading a cached schema failed; asking the source");
                return None;
            }
        };
        match Schema::from_json(&bytes) {
            Ok(schema) if schema.table() == table => Some(schema),
            Ok(schema) => {
                tracing::warn!(key, found = schema.table(), "cached schema is for another table; asking the source");
                None
            }
            Err(e) => {
                tracing::warn!(key, error = %error_chain(&e), "cached schema is not valid; asking the source");
                None
            }
        }
    }

    /// Stores schemas in the tracker (when there is one) in one durable write, skipping keys that
    /// already hold the same document. A failure is logged, not returned: memory has the schemas.
    async fn persist(&self, entries: &[(String, &Schema)]) {
        let Some(tracker) = &self.inner.tracker else { return };
        let changed: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|(key, schema)| (key.clone(), schema_json(schema).to_string().into_bytes()))
            .filter(|(key, json)| tracker.get(key).ok().flatten().as_deref() != Some(json.as_slice()))
            .collect();
        if let Err(e) = tracker.set_all(&changed).await {
            tracing::warn!(error = %eds_wal::error_chain(e.as_ref()), "storing schemas in the tracker failed");
        }
    }

    /// Fetches the latest-schema list when there is none yet, or when the last attempt is at
    /// least `list_refresh` old. A failure is an error only when there is no list at all.
    async fn load_list(&self, lists: &mut Lists, table: &str, version: &str) -> Result<(), RegistryError> {
        let due = lists.attempted.is_none_or(|at| at.elapsed() >= self.inner.list_refresh);
        if lists.latest.is_some() && !due {
            return Ok(());
        }
        lists.attempted = Some(Instant::now());
        match self.inner.source.latest().await {
            Ok(latest) => {
                let entries: Vec<(String, &Schema)> =
                    latest.iter().map(|s| (schema_key(s.table(), s.model_version()), s)).collect();
                self.persist(&entries).await;
                for schema in latest.iter() {
                    self.remember(schema.table(), schema.model_version(), schema.clone());
                }
                tracing::debug!(tables = latest.len(), "fetched the latest schema list");
                lists.latest = Some(latest);
                Ok(())
            }
            Err(e) if lists.latest.is_some() => {
                tracing::warn!(error = %error_chain(&e), "refreshing the latest schema list failed; keeping the previous one");
                Ok(())
            }
            Err(e) => Err(RegistryError::Unavailable {
                table: table.to_owned(),
                version: version.to_owned(),
                reason: format!("fetching the latest schema list: {}", error_chain(&e)),
            }),
        }
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A schema as an EDS schema document: what the tracker stores. `Schema::from_json` of it gives
/// back an equal schema (fields the model does not keep, such as `additionalProperties`, are not
/// written).
fn schema_json(schema: &Schema) -> Value {
    let mut properties = Map::new();
    for c in schema.columns() {
        let mut p = type_json(&c.kind);
        if c.nullable {
            p.insert("nullable".into(), Value::Bool(true));
        }
        if c.deprecated {
            p.insert("deprecated".into(), Value::Bool(true));
        }
        if let Some(comment) = &c.comment {
            p.insert("$comment".into(), Value::String(comment.clone()));
        }
        properties.insert(c.name.clone(), Value::Object(p));
    }
    json!({
        "properties": properties,
        "required": schema.required(),
        "primaryKeys": schema.primary_keys(),
        "table": schema.table(),
        "modelVersion": schema.model_version(),
    })
}

fn type_json(kind: &ColumnType) -> Map<String, Value> {
    let value = match kind {
        ColumnType::Text => json!({"type": "string"}),
        ColumnType::DateTime => json!({"type": "string", "format": "date-time"}),
        ColumnType::Integer => json!({"type": "integer"}),
        ColumnType::Number => json!({"type": "number"}),
        ColumnType::Boolean => json!({"type": "boolean"}),
        ColumnType::Object => json!({"type": "object"}),
        ColumnType::Enum { values } => json!({"type": "array", "items": {"type": "enum", "enum": values}}),
        ColumnType::Array { items: None } => json!({"type": "array"}),
        ColumnType::Array { items: Some(items) } => json!({"type": "array", "items": type_json(items)}),
        ColumnType::Unknown(kind) if kind.is_empty() => json!({}),
        ColumnType::Unknown(kind) => json!({"type": kind}),
    };
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

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
    fn delay(&self, attempts: u32) -> Duration {
        self.base_delay + random_below(self.jitter_per_attempt.saturating_mul(attempts))
    }
}

/// A random duration in `[0, max)` (zero when `max` is zero). std's `RandomState` is randomly
/// keyed per instance, which is plenty for retry jitter.
fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let hasher = std::collections::hash_map::RandomState::new().build_hasher();
    Duration::from_nanos(hasher.finish() % nanos)
}

/// HTTP statuses worth retrying (spec §3.7).
const RETRY_STATUSES: [u16; 5] = [408, 429, 502, 503, 504];

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

    /// GETs `url`, retrying as the policy allows. `Ok(None)` for a 404 when `missing_ok`.
    async fn get(&self, url: &str, missing_ok: bool) -> Result<Option<Vec<u8>>, SourceError> {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (retryable, reason) = match self.attempt(url).await {
                Ok((status, body)) if status.is_success() => return Ok(Some(body)),
                Ok((status, _)) if missing_ok && status == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                Ok((status, body)) => (RETRY_STATUSES.contains(&status.as_u16()), status_reason(status, &body)),
                Err(AttemptError::Http(e)) => (retryable_transport(&e), error_chain(&e)),
                Err(AttemptError::TooLarge) => (false, format!("the answer is larger than {MAX_BODY} bytes")),
            };
            let delay = self.retry.delay(attempts);
            if !retryable || attempts >= self.retry.max_attempts || started.elapsed() + delay > self.retry.max_elapsed {
                let reason = if attempts > 1 { format!("{reason} (after {attempts} attempts)") } else { reason };
                return Err(SourceError::Request { url: url.to_owned(), reason });
            }
            tracing::debug!(url, attempts, reason, "schema request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, url: &str) -> Result<(reqwest::StatusCode, Vec<u8>), AttemptError> {
        let mut response = self.client.get(url).send().await.map_err(AttemptError::Http)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(AttemptError::Http)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(AttemptError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
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
    if matches!(s, "" | "." | "..") {
        return None;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    Some(out)
}

/// The error text of a non-2xx answer: HQ's `message` when the body is JSON with one, else the
/// status and the start of the body.
fn status_reason(status: reqwest::StatusCode, body: &[u8]) -> String {
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
/// was reset or closed before the answer was complete (the request is a GET, so repeating it is
/// harmless). Timeouts are not retried: the request timeout already spends the time budget.
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

/// A minimal HTTP server for tests of schema lookups (this crate's and the integration tests in
/// `tests/`). It exists for tests only; eds never starts it.
#[doc(hidden)]
pub mod testing {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::http::request::Parts;
    use hyper::service::service_fn;
    use hyper::{Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use serde_json::json;
    use std::convert::Infallible;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    /// Answers a request path (as sent, still percent-escaped) with a status and a JSON body.
    pub type Routes = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

    /// Answers a request (method, URI, headers) with a status and a JSON body.
    pub type Handler = Arc<dyn Fn(&Parts) -> (u16, String) + Send + Sync>;

    /// Serves `routes` on `listener` over HTTP/1 until the task is dropped or aborted. Every
    /// answer has `Content-Type: application/json`.
    pub async fn serve_schemas(listener: TcpListener, routes: Routes) {
        serve(listener, Arc::new(move |parts: &Parts| routes(parts.uri.path()))).await
    }

    /// As [`serve_schemas`], for handlers that look at more than the path (headers, method).
    pub async fn serve(listener: TcpListener, handler: Handler) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (parts, _body) = req.into_parts();
                    let (status, body) = handler(&parts);
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }

    /// The schema routes of EDS's end-to-end mock HQ (spec §9.2): `/v3/schema` lists only
    /// `order` (id, name, updatedDate) at version `fff000111`; `/v3/schema/order/<v>` is `order`
    /// with `age` (number) added and `/v3/schema/customer/<v>` is `customer` (id, name,
    /// updatedDate), both echoing the (unescaped) version; anything else is a 404.
    pub fn e2e_routes(path: &str) -> (u16, String) {
        if path == "/v3/schema" {
            return (200, json!({"order": order("fff000111", false)}).to_string());
        }
        let found =
            path.strip_prefix("/v3/schema/").and_then(|rest| rest.split_once('/')).and_then(|(object, version)| {
                let version = unescape(version);
                match object {
                    "order" => Some(order(&version, true)),
                    "customer" => Some(customer(&version)),
                    _ => None,
                }
            });
        match found {
            Some(schema) => (200, schema.to_string()),
            None => not_found(),
        }
    }

    /// A 404 answer with HQ's error envelope.
    pub fn not_found() -> (u16, String) {
        (404, json!({"success": false, "message": "not found"}).to_string())
    }

    /// The mock's `order` schema at `version`, with the `age` column when `with_age`.
    pub fn order(version: &str, with_age: bool) -> serde_json::Value {
        let mut schema = json!({
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "updatedDate": {"type": "string", "format": "date-time"},
            },
            "required": ["id"], "primaryKeys": ["id"], "table": "order", "modelVersion": version,
        });
        if with_age {
            schema["properties"]["age"] = json!({"type": "number"});
        }
        schema
    }

    /// The mock's `customer` schema at `version`.
    pub fn customer(version: &str) -> serde_json::Value {
        json!({
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "updatedDate": {"type": "string", "format": "date-time"},
            },
            "required": ["id"], "primaryKeys": ["id"], "table": "customer", "modelVersion": version,
        })
    }

    /// Percent-decodes a path segment (invalid escapes stay as they are; invalid UTF-8 is
    /// replaced).
    pub fn unescape(segment: &str) -> String {
        let bytes = segment.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            match (bytes[i], bytes.get(i + 1).and_then(|&b| hex(b)), bytes.get(i + 2).and_then(|&b| hex(b))) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                    i += 3;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{self, Routes};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Requests seen by a mock server, by path.
    #[derive(Default)]
    struct Seen {
        paths: Mutex<Vec<String>>,
    }

    impl Seen {
        fn count(&self) -> usize {
            self.paths.lock().unwrap().len()
        }
        fn paths(&self) -> Vec<String> {
            self.paths.lock().unwrap().clone()
        }
    }

    struct Mock {
        url: String,
        seen: Arc<Seen>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Mock {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn mock(routes: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let counted = seen.clone();
        let routes: Routes = Arc::new(move |path: &str| {
            counted.paths.lock().unwrap().push(path.to_owned());
            routes(path)
        });
        let task = tokio::spawn(testing::serve_schemas(listener, routes));
        Mock { url, seen, task }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(5),
            base_delay: Duration::from_millis(10),
            jitter_per_attempt: Duration::from_millis(10),
        }
    }

    fn hq(url: &str) -> Arc<dyn SchemaSource> {
        Arc::new(HqSchemas::new(url).unwrap().with_retry(fast()))
    }

    fn columns(schema: &Schema) -> Vec<&str> {
        schema.column_names().collect()
    }

    /// An address nothing listens on.
    async fn dead_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    #[tokio::test]
    async fn lookups_are_cached_in_memory() {
        let hq_mock = mock(testing::e2e_routes).await;
        let registry = Registry::new(hq(&hq_mock.url), None);

        // The latest version comes with the list: one request.
        let order = registry.schema("order", "fff000111").await.unwrap();
        assert_eq!((order.table(), order.model_version()), ("order", "fff000111"));
        assert_eq!(columns(&order), ["id", "name", "updatedDate"]);
        assert_eq!(hq_mock.seen.paths(), ["/v3/schema"]);

        let newer = registry.schema("order", "fff000112-update").await.unwrap();
        assert_eq!(newer.model_version(), "fff000112-update");
        assert_eq!(columns(&newer), ["id", "age", "name", "updatedDate"]);
        let customer = registry.schema("customer", "fff000111").await.unwrap();
        assert_eq!(customer.table(), "customer");
        // `customer` is not in the list, which was fetched less than a minute ago: not fetched again.
        assert_eq!(
            hq_mock.seen.paths(),
            ["/v3/schema", "/v3/schema/order/fff000112-update", "/v3/schema/customer/fff000111"]
        );

        for _ in 0..3 {
            let again = registry.schema("order", "fff000112-update").await.unwrap();
            assert!(Arc::ptr_eq(&again, &newer), "the cached schema is shared");
            registry.schema("customer", "fff000111").await.unwrap();
            registry.clone().schema("order", "fff000111").await.unwrap();
        }
        assert_eq!(hq_mock.seen.count(), 3, "cache hits make no request");
    }

    #[tokio::test]
    async fn the_tracker_keeps_schemas_across_registries() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        {
            let hq_mock = mock(testing::e2e_routes).await;
            let registry = Registry::new(hq(&hq_mock.url), Some(tracker.clone()));
            registry.schema("order", "fff000112-update").await.unwrap();
            registry.schema("customer", "fff000111").await.unwrap();
        }
        let stored: Vec<String> = tracker.scan_prefix("registry:").unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            stored,
            ["registry:customer-fff000111", "registry:order-fff000111", "registry:order-fff000112-update"],
            "fetched versions and the latest list are stored"
        );

        // HQ is gone; a new registry on the same tracker still answers.
        let registry = Registry::new(hq(&dead_url().await), Some(tracker.clone()));
        let order = registry.schema("order", "fff000112-update").await.unwrap();
        assert_eq!(columns(&order), ["id", "age", "name", "updatedDate"]);
        assert_eq!(registry.schema("order", "fff000111").await.unwrap().model_version(), "fff000111");
        assert_eq!(registry.schema("customer", "fff000111").await.unwrap().table(), "customer");
        let err = registry.schema("customer", "fff000999").await.unwrap_err();
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");

        // A stored document for another table (the key is ambiguous) or a broken one is not used.
        tracker.set(&schema_key("order", "x"), testing::customer("x").to_string().as_bytes()).await.unwrap();
        tracker.set(&schema_key("order", "y"), b"{not json").await.unwrap();
        for v in ["x", "y"] {
            let err = registry.schema("order", v).await.unwrap_err();
            assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn transient_answers_are_retried_and_others_are_not() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let hq_mock = mock(move |path| match (path, c.fetch_add(1, Ordering::SeqCst)) {
            ("/v3/schema", 0) => (503, "upstream busy".into()),
            ("/v3/schema/order/bad", _) => (400, json!({"success": false, "message": "bad version"}).to_string()),
            (path, _) => testing::e2e_routes(path),
        })
        .await;
        let registry = Registry::new(hq(&hq_mock.url), None);
        registry.schema("order", "fff000111").await.unwrap();
        assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema"], "503 then 200");

        let err = registry.schema("order", "bad").await.unwrap_err();
        assert_eq!(hq_mock.seen.count(), 3, "a 400 is not retried");
        match &err {
            RegistryError::Unavailable { table, version, reason } => {
                assert_eq!((table.as_str(), version.as_str()), ("order", "bad"));
                assert!(reason.contains("bad version") && reason.contains("400"), "{reason}");
                assert!(
                    reason.contains(&format!("{}/v3/schema/order/bad", hq_mock.url.trim_end_matches('/'))),
                    "{reason}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(err.is_transient());
        assert!(err.to_string().contains("table order version bad"), "{err}");
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let hq_mock = mock(|_| (503, "<html>down for maintenance</html>".repeat(20))).await;
        let err = HqSchemas::new(&hq_mock.url).unwrap().with_retry(fast()).latest().await.unwrap_err();
        assert_eq!(hq_mock.seen.count(), 3);
        let msg = err.to_string();
        assert!(msg.contains("HTTP 503") && msg.contains("after 3 attempts") && msg.contains("/v3/schema"), "{msg}");
        assert!(msg.len() < 400, "only the start of the body: {msg}");

        let hq_mock = mock(|_| (503, String::new())).await;
        let slow = RetryPolicy { max_elapsed: Duration::from_millis(1), ..fast() };
        HqSchemas::new(&hq_mock.url).unwrap().with_retry(slow).latest().await.unwrap_err();
        assert_eq!(hq_mock.seen.count(), 1, "no attempt beyond the time budget");
    }

    #[tokio::test]
    async fn an_unknown_version_falls_back_to_the_latest_schema() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        let hq_mock = mock(|path| match path {
            "/v3/schema/order/missing" => testing::not_found(),
            path => testing::e2e_routes(path),
        })
        .await;
        let registry = Registry::new(hq(&hq_mock.url), Some(tracker.clone()));
        let schema = registry.schema("order", "missing").await.unwrap();
        assert_eq!((schema.table(), schema.model_version()), ("order", "fff000111"));
        assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/order/missing"]);
        let again = registry.schema("order", "missing").await.unwrap();
        assert!(Arc::ptr_eq(&schema, &again));
        assert_eq!(hq_mock.seen.count(), 2, "the stand-in is remembered");
        assert_eq!(tracker.get(&schema_key("order", "missing")).unwrap(), None, "and never stored");

        // `.` and `..` cannot be asked for: they are versions HQ does not have.
        assert_eq!(registry.schema("order", "..").await.unwrap().model_version(), "fff000111");
        assert_eq!(hq_mock.seen.count(), 2);
    }

    #[tokio::test]
    async fn an_answer_for_another_version_is_a_stand_in() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        let hq_mock = mock(|path| match path {
            "/v3/schema/order/old" => (200, testing::order("v2", true).to_string()),
            path => testing::e2e_routes(path),
        })
        .await;
        let registry = Registry::new(hq(&hq_mock.url), Some(tracker.clone()));
        let schema = registry.schema("order", "old").await.unwrap();
        assert_eq!(schema.model_version(), "v2");
        assert!(Arc::ptr_eq(&schema, &registry.schema("order", "v2").await.unwrap()));
        assert!(Arc::ptr_eq(&schema, &registry.schema("order", "old").await.unwrap()));
        assert_eq!(hq_mock.seen.count(), 2);
        assert_eq!(tracker.get(&schema_key("order", "old")).unwrap(), None);
        assert!(tracker.get(&schema_key("order", "v2")).unwrap().is_some());
    }

    #[tokio::test]
    async fn a_table_hq_does_not_know_is_unknown() {
        let hq_mock = mock(testing::e2e_routes).await;
        let registry = Registry::new(hq(&hq_mock.url), None);
        let err = registry.schema("labor", "fff000111").await.unwrap_err();
        assert_eq!(err, RegistryError::Unknown { table: "labor".into(), version: "fff000111".into() });
        assert!(!err.is_transient());
        assert_eq!(err.to_string(), "no schema for table labor version fff000111: HQ does not know the table");
        assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/labor/fff000111"]);
        // Remembered for a while, and the list is not fetched again within a minute.
        registry.schema("labor", "fff000111").await.unwrap_err();
        registry.schema("labor", "other").await.unwrap_err();
        assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/labor/fff000111", "/v3/schema/labor/other"]);
    }

    #[tokio::test]
    async fn the_list_is_refreshed_for_new_tables_at_most_every_interval() {
        let labor_listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listed = labor_listed.clone();
        let hq_mock = mock(move |path| match path {
            "/v3/schema" if listed.load(Ordering::SeqCst) => {
                let mut labor = testing::customer("l1");
                labor["table"] = json!("labor");
                (200, json!({"order": testing::order("fff000111", false), "Labor": labor}).to_string())
            }
            path => testing::e2e_routes(path),
        })
        .await;
        let every = Duration::from_millis(300);
        let registry = Registry::with_list_refresh(hq(&hq_mock.url), None, every);
        registry.schema("labor", "l1").await.unwrap_err();
        labor_listed.store(true, Ordering::SeqCst);
        registry.schema("labor", "l1").await.unwrap_err();
        assert_eq!(hq_mock.seen.count(), 2, "no refresh within the interval");
        tokio::time::sleep(every).await;
        let labor = registry.schema("labor", "l1").await.unwrap();
        assert_eq!(labor.table(), "labor");
        assert_eq!(hq_mock.seen.paths().last().map(String::as_str), Some("/v3/schema"));
        // Another version of labor is asked for under HQ's object name.
        registry.schema("labor", "l2").await.unwrap();
        assert_eq!(hq_mock.seen.paths().last().map(String::as_str), Some("/v3/schema/Labor/l2"));
    }

    #[tokio::test]
    async fn an_unreachable_hq_is_unavailable() {
        let url = dead_url().await;
        let registry = Registry::new(hq(&url), None);
        let err = registry.schema("order", "fff000111").await.unwrap_err();
        match &err {
            RegistryError::Unavailable { table, version, reason } => {
                assert_eq!((table.as_str(), version.as_str()), ("order", "fff000111"));
                assert!(reason.contains(&format!("{url}/v3/schema")), "{reason}");
                assert!(reason.contains("after 3 attempts"), "connection refused is retried: {reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(err.to_string().starts_with("schema for table order version fff000111 is unavailable: "), "{err}");
    }

    #[tokio::test]
    async fn path_segments_are_escaped() {
        let hq_mock = mock(|path| {
            let version = path.rsplit('/').next().map(testing::unescape).unwrap_or_default();
            (200, testing::order(&version, false).to_string())
        })
        .await;
        let source = HqSchemas::new(&hq_mock.url).unwrap();
        for (version, sent) in [
            ("fff000112-update", "fff000112-update"),
            ("a/../../b", "a%2F..%2F..%2Fb"),
            ("v?x=1#f", "v%3Fx%3D1%23f"),
            ("100%", "100%25"),
            ("é ü", "%C3%A9%20%C3%BC"),
        ] {
            let schema = source.version("order", version).await.unwrap().unwrap();
            assert_eq!(schema.model_version(), version);
            assert_eq!(hq_mock.seen.paths().last().cloned(), Some(format!("/v3/schema/order/{sent}")));
        }
        source.version("or/der", "v").await.unwrap();
        assert_eq!(hq_mock.seen.paths().last().map(String::as_str), Some("/v3/schema/or%2Fder/v"));
        let before = hq_mock.seen.count();
        for (object, version) in [("order", ""), ("order", "."), ("..", "v"), ("", "v")] {
            assert!(source.version(object, version).await.unwrap().is_none());
        }
        assert_eq!(hq_mock.seen.count(), before, "no request for names that are not a segment");
    }

    #[tokio::test]
    async fn requests_carry_the_user_agent_and_no_authorization() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/", listener.local_addr().unwrap());
        let headers = Arc::new(Mutex::new(Vec::new()));
        let h = headers.clone();
        let task = tokio::spawn(testing::serve(
            listener,
            Arc::new(move |parts: &hyper::http::request::Parts| {
                h.lock().unwrap().push((parts.method.to_string(), parts.uri.path().to_owned(), parts.headers.clone()));
                (200, json!({"order": testing::order("v1", false)}).to_string())
            }),
        ));
        let latest = HqSchemas::new(&url).unwrap().latest().await.unwrap();
        assert_eq!(latest.tables().collect::<Vec<_>>(), ["order"]);
        let seen = headers.lock().unwrap().clone();
        let (method, path, headers) = &seen[0];
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v3/schema"), "the trailing slash is tolerated");
        assert_eq!(headers.get("user-agent").unwrap(), concat!("eds/", env!("CARGO_PKG_VERSION")));
        assert!(headers.get("authorization").is_none());
        task.abort();
    }

    #[tokio::test]
    async fn a_schema_of_another_table_is_refused() {
        let hq_mock = mock(|path| match path {
            "/v3/schema" => (200, "{}".into()),
            _ => (200, testing::customer("v1").to_string()),
        })
        .await;
        let registry = Registry::new(hq(&hq_mock.url), None);
        let err = registry.schema("order", "v1").await.unwrap_err();
        assert_eq!(
            err,
            RegistryError::Mismatch { table: "order".into(), version: "v1".into(), found: "customer".into() }
        );
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "schema for table order version v1: HQ answered with the schema of table customer instead"
        );
        registry.schema("order", "v1").await.unwrap_err();
        assert_eq!(hq_mock.seen.count(), 3, "not cached");
    }

    #[tokio::test]
    async fn invalid_documents_are_unavailable_and_name_the_url() {
        let hq_mock = mock(|path| match path {
            "/v3/schema" => (200, "{}".into()),
            _ => (200, r#"{"table": "order", "modelVersion": "v1", "properties": {}}"#.into()),
        })
        .await;
        let registry = Registry::new(hq(&hq_mock.url), None);
        match registry.schema("order", "v1").await.unwrap_err() {
            RegistryError::Unavailable { reason, .. } => {
                assert!(reason.contains("/v3/schema/order/v1: the answer is not a valid schema"), "{reason}");
                assert!(reason.contains("has no primary keys"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let hq_mock = mock(|_| (200, "[]".into())).await;
        let err = Registry::new(hq(&hq_mock.url), None).schema("order", "v1").await.unwrap_err();
        assert!(err.to_string().contains("fetching the latest schema list"), "{err}");
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_request() {
        let hq_mock = mock(|path| {
            std::thread::sleep(Duration::from_millis(20));
            testing::e2e_routes(path)
        })
        .await;
        let registry = Registry::new(hq(&hq_mock.url), None);
        let lookups: Vec<_> = (0..16)
            .map(|_| {
                let r = registry.clone();
                tokio::spawn(async move { r.schema("customer", "c1").await })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap().unwrap().model_version(), "c1");
        }
        assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/customer/c1"]);
    }

    #[test]
    fn bad_api_urls_are_refused() {
        for url in ["", "not a url", "ftp://host", "http://host/?q=1", "mailto:x@y"] {
            assert!(HqSchemas::new(url).is_err(), "{url}");
        }
        assert!(HqSchemas::new("https://api.shopmonkey.cloud").is_ok());
    }

    #[test]
    fn stored_documents_round_trip() {
        let doc = json!({
            "properties": {
                "id": {"type": "string", "$comment": "key"},
                "when": {"type": "string", "format": "date-time", "nullable": true},
                "n": {"type": "integer"}, "x": {"type": "number", "deprecated": true},
                "b": {"type": "boolean"}, "o": {"type": "object", "additionalProperties": true},
                "status": {"type": "array", "items": {"type": "enum", "enum": ["A", "B"]}},
                "noValues": {"type": "array", "items": {"type": "enum"}},
                "dates": {"type": "array", "items": {"type": "string", "format": "date-time"}},
                "nested": {"type": "array", "items": {"type": "array"}},
                "untypedItems": {"type": "array", "items": {}},
                "bare": {"type": "array"}, "odd": {"type": "uuid"}, "untyped": {},
            },
            "required": ["id", "n", "ghost"], "primaryKeys": ["id", "n"], "table": "t", "modelVersion": "v1",
        });
        let schema = Schema::from_json(doc.to_string().as_bytes()).unwrap();
        let stored = schema_json(&schema).to_string();
        assert_eq!(Schema::from_json(stored.as_bytes()).unwrap(), schema);
        assert_eq!(schema_json(&schema).to_string(), stored, "deterministic");
    }

    #[test]
    fn error_chains_and_reasons() {
        assert_eq!(status_reason(reqwest::StatusCode::BAD_GATEWAY, b""), "HTTP 502 Bad Gateway");
        assert_eq!(status_reason(reqwest::StatusCode::NOT_FOUND, br#"{"message":"nope"}"#), "HTTP 404 Not Found: nope");
        assert_eq!(
            status_reason(reqwest::StatusCode::NOT_FOUND, br#"{"message":""}"#),
            r#"HTTP 404 Not Found: {"message":""}"#
        );
        let long = "x".repeat(1000);
        assert_eq!(status_reason(reqwest::StatusCode::IM_A_TEAPOT, long.as_bytes()).matches('x').count(), 200);
        assert!(random_below(Duration::from_millis(5)) < Duration::from_millis(5));
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
        assert_eq!(testing::unescape("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
