//! What a `--url` configures: a destination's name, driver, cursor start, overflow policy and
//! retry waits; its cursor; the list recorded in the data dir for read-only tools.

use crate::registry::Registry;
use crate::state::ServerState;
use anyhow::{bail, Context, Result};
use eds_drivers::driver::Driver;
use eds_drivers::url::redact;
use eds_drivers::Missing;
use eds_wal::{CursorStart, Wal};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Where a new destination's cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After the last record: only what arrives from now on.
    Head,
    /// At the oldest record the WAL still holds.
    Oldest,
    /// At this LSN.
    Lsn(u64),
}

/// A configured destination.
pub struct Destination {
    /// Stable name: cursor name, log field, metric label. Never holds credentials.
    pub name: String,
    /// The driver.
    pub driver: Arc<dyn Driver>,
    /// Where a new cursor starts.
    pub start: Start,
    /// Where events the destination rejects go (set by the caller, under the data dir).
    pub dead_letters: Option<crate::dlq::DeadLetters>,
    /// What happens when the disk budget is full and this destination holds the oldest data.
    pub overflow: Overflow,
    /// Where schemas come from, for drivers that need them (set by the caller).
    pub registry: Option<Arc<Registry>>,
    /// Per table: events older than this (unix milliseconds) are skipped — an import already
    /// wrote the table as of that time.
    pub skip_before: HashMap<String, i64>,
    /// Set when an import dropped this destination's tables and did not finish (what its mark
    /// says): the drain is held until an import of it succeeds.
    pub unfinished_import: Option<String>,
    /// The `--schema-validator` rules, when there are (set by the caller).
    pub validator: Option<Arc<crate::validator::Validator>>,
    /// How long a failed batch waits before it is tried again.
    pub retry: Retry,
}

/// Waits between attempts of a failing batch: `first`, doubling with every failure in a row up
/// to `max`, each with up to a quarter more at random so destinations do not retry in step.
/// Configuration errors wait `CONFIG_RETRY` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { first: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

/// A destination's overflow policy (`overflow=` in its URL's query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Ingest pauses until the destination catches up (upstream keeps the data). The default.
    Block,
    /// The destination's cursor jumps past the oldest segment so ingest can go on; what it skips
    /// is recorded as a gap, logged and counted.
    DropOldest,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination").field("name", &self.name).field("start", &self.start).finish()
    }
}

/// A name usable as a cursor: `[A-Za-z0-9._-]`, at most 128 characters, not starting with a dot.
fn cursor_safe(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    while out.starts_with('.') || out.starts_with('-') {
        out.remove(0);
    }
    out.truncate(128);
    out
}

fn query_param<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Parse one `--url`. `Ok(None)` for a destination of EDS that eds has no driver for yet; an
/// error for a scheme nobody knows (a typo would otherwise deliver nowhere) and for a driver this
/// build was made without.
pub fn parse_destination(url: &str) -> Result<Option<Destination>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("--url {:?}: expected <scheme>://…", redact(url));
    };
    let start = match query_param(url, "start") {
        None | Some("head") => Start::Head,
        Some("oldest") => Start::Oldest,
        Some(s) => match s.strip_prefix("lsn:").map(str::parse::<u64>) {
            Some(Ok(n)) if n > 0 => Start::Lsn(n),
            _ => bail!("--url {:?}: start={s:?} is not head, oldest or lsn:N", redact(url)),
        },
    };
    // Every driver of this build, by scheme or alias: no per-scheme code here.
    let Some(registered) = eds_drivers::find(scheme) else {
        return match eds_drivers::missing(scheme) {
            Some(Missing::NotYet) | None => Ok(None),
            Some(Missing::NotBuilt { feature }) => bail!(
                "--url {:?}: this eds was built without the {scheme} driver (build with `--features {feature}`)",
                redact(url)
            ),
            Some(Missing::Unknown) => bail!(
                "--url {:?}: no destination has the scheme {scheme:?} (known: {})",
                redact(url),
                eds_drivers::known_schemes().collect::<Vec<_>>().join(", ")
            ),
        };
    };
    let driver = registered
        .open(url)
        .map_err(|e| anyhow::anyhow!("--url {:?}: {}", redact(url), redact(&eds_wal::error_chain(&e))))?;
    let default_name = format!("{}-{}", registered.scheme, host_and_path(rest));
    let name = cursor_safe(query_param(url, "name").map(str::to_owned).as_deref().unwrap_or(&default_name));
    if name.is_empty() {
        bail!("--url {:?}: the destination name is empty (set name=… in the URL's query)", redact(url));
    }
    let overflow = match query_param(url, "overflow") {
        None | Some("block") => Overflow::Block,
        Some("drop-oldest") => Overflow::DropOldest,
        Some(o) => bail!("--url {:?}: overflow={o:?} is not block or drop-oldest", redact(url)),
    };
    Ok(Some(Destination {
        name,
        driver,
        start,
        dead_letters: None,
        overflow,
        registry: None,
        skip_before: HashMap::new(),
        unfinished_import: None,
        validator: None,
        retry: Retry::default(),
    }))
}

/// `host[:port][-database]` of the part of a URL after `scheme://`, without user info or query.
fn host_and_path(rest: &str) -> String {
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // A connection string in the path (`;SharedAccessKey=…;EntityPath=hub`) holds a secret: only
    // its `EntityPath` names the destination.
    let path = match path.split_once(';') {
        Some((before, params)) => {
            let entity = params
                .split(';')
                .find_map(|p| p.split_once('=').filter(|(k, _)| k.eq_ignore_ascii_case("EntityPath")).map(|(_, v)| v));
            format!("{}/{}", before.trim_matches('/'), entity.unwrap_or(""))
        }
        None => path.to_owned(),
    };
    let path = path.trim_matches('/');
    if path.is_empty() {
        host.to_owned()
    } else {
        format!("{host}-{path}")
    }
}

/// Parse every `--url`; two destinations with one name are a usage error.
pub fn parse_destinations(urls: &[String]) -> Result<Vec<Destination>> {
    let mut out: Vec<Destination> = Vec::new();
    for url in urls {
        match parse_destination(url)? {
            Some(d) => {
                if out.iter().any(|o| o.name == d.name) {
                    bail!("two destinations are named {:?}: give one a name=… in its URL's query", d.name);
                }
                out.push(d);
            }
            None => {
                tracing::warn!(url = %redact(url), "this destination's driver arrives with a later eds version; not delivering to it")
            }
        }
    }
    Ok(out)
}

/// Create the destination's cursor if it has none, where its `start` says. Called before
/// anything is appended, so a new destination's "head" is the head at start-up.
pub fn ensure_cursor(wal: &Wal, name: &str, start: Start) -> Result<(), eds_wal::Error> {
    if wal.cursor(name).is_ok() {
        return Ok(());
    }
    let s = match start {
        Start::Head => CursorStart::Head,
        Start::Oldest => CursorStart::Oldest,
        Start::Lsn(l) => CursorStart::Lsn(l),
    };
    wal.create_cursor(name, s)?;
    tracing::info!(destination = %name, start = ?start, "new destination: cursor created");
    Ok(())
}

/// File in the data dir naming the destinations of the last server start, so read-only tools can
/// tell a destination's cursor from an orphaned one.
pub const DESTINATIONS_FILE: &str = "destinations.json";

/// Record the configured destinations (name, driver, URL without password) in the data dir,
/// atomically and durably.
pub fn record_destinations(data_dir: &std::path::Path, destinations: &[Destination], urls: &[String]) -> Result<()> {
    let list: Vec<serde_json::Value> = destinations
        .iter()
        .map(|d| {
            // The URL this destination came from: the one whose parse gives its name.
            let url = urls
                .iter()
                .find(|u| parse_destination(u).ok().flatten().is_some_and(|p| p.name == d.name))
                .map(|u| redact(u));
            serde_json::json!({"name": d.name, "driver": d.driver.describe().name, "url": url})
        })
        .collect();
    crate::datadir::write_atomically(&data_dir.join(DESTINATIONS_FILE), &serde_json::to_vec_pretty(&list)?)
        .context("recording the destinations")
}

/// The destinations recorded by the last server start: (name, driver).
pub fn recorded_destinations(data_dir: &std::path::Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read(data_dir.join(DESTINATIONS_FILE)).ok()?;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&text).ok()?;
    Some(
        list.iter()
            .map(|d| {
                let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("driver"))
            })
            .collect(),
    )
}

/// Give every destination whose driver needs table schemas the registry `make` returns (called
/// only when there is such a destination, so no tracker or HQ client exists without need).
pub fn attach_registry(destinations: &mut [Destination], make: impl FnOnce() -> Result<Arc<Registry>>) -> Result<()> {
    if !destinations.iter().any(|d| d.driver.describe().needs_schema) {
        return Ok(());
    }
    let registry = make()?;
    for d in destinations.iter_mut().filter(|d| d.driver.describe().needs_schema) {
        d.registry = Some(registry.clone());
    }
    Ok(())
}

/// Make every destination known to `/status` (and to pause/resume) before anything serves HTTP.
pub fn register(state: &ServerState, destinations: &[Destination]) {
    let wal = state.wal();
    for dest in destinations {
        let (driver, drop_oldest) = (dest.driver.describe().name, dest.overflow == Overflow::DropOldest);
        // The cursor a previous run left: /status shows it from the start, not 0 until the first
        // batch (nothing may come for a long time).
        let cursor = wal.as_ref().and_then(|w| w.cursor(&dest.name).ok()).map_or(0, |c| c.position);
        state.destination(&dest.name, |d| {
            d.driver = driver.to_owned();
            d.state = "idle";
            d.drop_oldest = drop_oldest;
            d.position = d.position.max(cursor);
        });
    }
}

/// [`ensure_cursor`] for every destination, off the async threads.
pub async fn ensure_cursors(wal: Wal, destinations: &[Destination]) -> Result<()> {
    let dests: Vec<(String, Start)> = destinations.iter().map(|d| (d.name.clone(), d.start)).collect();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for (name, start) in dests {
            ensure_cursor(&wal, &name, start).map_err(|e| {
                anyhow::anyhow!("creating the cursor of destination {name:?}: {}", eds_wal::error_chain(&e))
            })?;
        }
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use eds_drivers::driver::Kind;

    #[test]
    fn names_never_hold_credentials_and_must_be_unique() {
        let d = parse_destination("file:///var/eds/out").unwrap().unwrap();
        assert_eq!(d.name, "file--var-eds-out");
        assert_eq!(d.start, Start::Head);
        let d = parse_destination("file://out?name=archive&start=oldest").unwrap().unwrap();
        assert_eq!((d.name.as_str(), d.start), ("archive", Start::Oldest));
        assert_eq!(parse_destination("file://x?start=lsn:42").unwrap().unwrap().start, Start::Lsn(42));
        assert!(parse_destination("file://x?start=yesterday").unwrap_err().to_string().contains("start=\"yesterday\""));
        assert_eq!(parse_destination("file://x").unwrap().unwrap().overflow, Overflow::Block);
        assert_eq!(parse_destination("file://x?overflow=drop-oldest").unwrap().unwrap().overflow, Overflow::DropOldest);
        assert!(parse_destination("file://x?overflow=maybe").unwrap_err().to_string().contains("overflow=\"maybe\""));
        let pg = parse_destination("postgres://u:secret@db:5433/shop?sslmode=require").unwrap().unwrap();
        assert_eq!(pg.name, "postgres-db-5433-shop", "no user, no password, no query");
        assert_eq!(pg.driver.describe().kind, Kind::State);
        #[cfg(not(feature = "eventhub"))]
        {
            let err = parse_destination("eventhub://h/;SharedAccessKeyName=n;SharedAccessKey=s3cret;EntityPath=e")
                .unwrap_err()
                .to_string();
            assert!(err.contains("--features eventhub") && !err.contains("s3cret"), "{err}");
        }
        #[cfg(feature = "eventhub")]
        {
            // The default name: namespace and hub, never the key.
            let eh =
                parse_destination("eventhub://ns.example/;SharedAccessKeyName=n;SharedAccessKey=s3cret;EntityPath=hub")
                    .unwrap()
                    .unwrap();
            assert_eq!(eh.name, "eventhub-ns.example-hub");
            assert_eq!(eh.driver.describe().kind, Kind::Stream);
        }
        let err = parse_destination("postgress://u:secret@db/x").unwrap_err().to_string();
        assert!(err.contains("no destination has the scheme \"postgress\"") && !err.contains("secret"), "{err}");
        #[cfg(feature = "kafka")]
        {
            let k = parse_destination("kafka://u:secret@broker/x?sasl-password=secret2").unwrap().unwrap();
            assert!(!k.name.contains("secret") && k.name.starts_with("kafka-broker"), "{}", k.name);
            assert_eq!(k.driver.describe().kind, Kind::Stream);
        }
        #[cfg(feature = "snowflake")]
        {
            let sf = parse_destination("snowflake://u:secret@acct/DB/SCH").unwrap().unwrap();
            assert!(!sf.name.contains("secret"), "{}", sf.name);
            assert_eq!((sf.driver.describe().name, sf.driver.describe().kind), ("Snowflake", Kind::State));
            let err = parse_destination("snowflake-keypair://u@acct/DB/SCH?secret-key=EDS_TEST_UNSET_KEY_VAR")
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains("EDS_TEST_UNSET_KEY_VAR"), "{err}");
        }
        let my = parse_destination("mysql://root:pw@127.0.0.1:3306/shop").unwrap().unwrap();
        assert_eq!((my.name.as_str(), my.driver.describe().name), ("mysql-127.0.0.1-3306-shop", "MySQL"));
        let ms = parse_destination("mssql://sa:pw@db/shop").unwrap().unwrap();
        assert_eq!(ms.name, "sqlserver-db-shop");
        let err = parse_destinations(&["file://a?name=same".into(), "file://b?name=same".into()]).unwrap_err();
        assert!(err.to_string().contains("two destinations are named \"same\""), "{err}");
        assert_eq!(redact("postgres://user:secret@db:5432/x"), "postgres://user:***@db:5432/x");
        assert_eq!(redact("file:///x"), "file:///x");
    }
}
