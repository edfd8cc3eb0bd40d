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
    /// Every table's latest schema, fetched from the source now (an import's tables, and the
    /// model version its rows are written with); cached as [`Registry::schema`] caches.
    pub async fn latest(&self) -> Result<Vec<Arc<Schema>>, SourceError> {
        let mut lists = self.inner.fetch.lock().await;
        let latest = self.inner.source.latest().await?;
        let entries: Vec<(String, &Schema)> =
            latest.iter().map(|s| (schema_key(s.table(), s.model_version()), s)).collect();
        self.persist(&entries).await;
        let out = latest.iter().map(|s| self.remember(s.table(), s.model_version(), s.clone())).collect();
        lists.attempted = Some(Instant::now());
        lists.latest = Some(latest);
        Ok(out)
    }

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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

mod hq;
#[cfg(test)]
mod tests;

pub use hq::{
    api_url, api_url_of_key, send_retrying, send_retrying_limited, Answer, HqSchemas, RetryPolicy, DEFAULT_API_URL,
};
