//! The JSON log file of an HQ session (spec §2.5): every event of eds's own crates down to TRACE
//! (libraries from INFO), whatever the console shows, one JSON object per line in EDS's format,
//! written to `<dir>/eds-<unix millis>.log` while a file is open. HQ asks for these files
//! (hourly, on a `sendlogs` notification, at session end): [`LogFileHandle::rotate`] hands the
//! finished file over and goes on in a new one.
//!
//! Line format (go-common's JSON logger; keys in this order, `metadata` omitted when empty):
//! `{"timestamp":"2026-11-27T03:12:56.123456789Z","message":"…","severity":"INFO",
//! "metadata":{"seq":42,"subject":"dbchange.…"},"component":"ingest, puller"}`. Severity is
//! `TRACE`, `DEBUG`, `INFO`, `WARNING` or `ERROR`; the timestamp is UTC in Go's RFC3339Nano
//! form; `metadata` holds the event's fields other than `message`, numbers and booleans as
//! such, everything else as text; ANSI escapes are removed from all text; `component` is the
//! event's target without the crate `eds` (`eds::ingest::puller` → `ingest, puller`,
//! `eds_wal::segment` → `wal, segment`), after the `--log-label` when one is set.
//!
//! Invariant: logging never blocks on anything but one `write(2)` of one line, never panics, and
//! never logs about itself (a failed write is counted and reported once on stderr).

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Switches the JSON log file on and off and cuts it. Clones share one file. Inactive (no file,
/// nothing formatted) until [`open`](LogFileHandle::open).
///
/// Each line is formatted outside the lock and written with one `write_all` on the file itself,
/// not through a `BufWriter`: every line reaches the kernel at once, so a crash or SIGKILL loses
/// nothing already logged (only a power loss can lose the page cache's tail; lines are not
/// fsynced). The lock is held for that one write, a few microseconds into the page cache.
#[derive(Clone, Default)]
pub struct LogFileHandle {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Whether a file is open: read on every event, without the lock.
    active: AtomicBool,
    file: Mutex<Option<OpenFile>>,
    /// The unix millis of the last file name handed out, so names never repeat in a process.
    last_millis: AtomicU64,
    write_errors: AtomicU64,
    reported: AtomicBool,
}

struct OpenFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
}

impl std::fmt::Debug for LogFileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFileHandle").field("current", &self.current()).finish()
    }
}

impl LogFileHandle {
    /// An inactive handle of its own (the process's is [`crate::logging::log_file`]).
    pub fn new() -> LogFileHandle {
        LogFileHandle::default()
    }

    /// Starts writing to a new `<dir>/eds-<unix millis>.log` (mode 0600; `dir` is created 0700
    /// and made 0700 when it exists) and returns its path. A file already open is closed first;
    /// its lines stay where they are ([`rotate`](Self::rotate) or [`close`](Self::close) first to
    /// hand it over).
    pub fn open(&self, dir: &Path) -> Result<PathBuf> {
        private_dir(dir)?;
        let mut guard = self.lock();
        let (path, file) = self.create(dir)?;
        *guard = Some(OpenFile { dir: dir.to_owned(), path: path.clone(), file });
        self.shared.active.store(true, Ordering::Release);
        Ok(path)
    }

    /// Closes the current file and goes on in a new one in the same directory; returns the
    /// closed file's path (for the caller to upload), `None` when no file is open. When the new
    /// file cannot be created, the current one stays open and the error is returned.
    pub fn rotate(&self) -> Result<Option<PathBuf>> {
        let mut guard = self.lock();
        let Some(current) = guard.as_mut() else { return Ok(None) };
        let (path, file) = self.create(&current.dir)?;
        let old = std::mem::replace(current, OpenFile { dir: current.dir.clone(), path, file });
        Ok(Some(old.path))
    }

    /// Stops writing; returns the path of the file that was open.
    pub fn close(&self) -> Option<PathBuf> {
        let mut guard = self.lock();
        self.shared.active.store(false, Ordering::Release);
        guard.take().map(|f| f.path)
    }

    /// The path of the file being written.
    pub fn current(&self) -> Option<PathBuf> {
        self.lock().as_ref().map(|f| f.path.clone())
    }

    /// How many lines could not be written (the first failure is reported on stderr).
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Option<OpenFile>> {
        // Nothing panics while holding the lock; should something, the file is still usable.
        self.shared.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates `eds-<millis>.log` in `dir`, new: later than every name this process made, and
    /// never an existing file (two processes sharing the directory).
    fn create(&self, dir: &Path) -> Result<(PathBuf, File)> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let now = u64::try_from(now).unwrap_or(u64::MAX);
        let mut millis = self.shared.last_millis.load(Ordering::Relaxed).saturating_add(1).max(now);
        for _ in 0..1000 {
            let path = dir.join(format!("eds-{millis}.log"));
            let mut options = std::fs::OpenOptions::new();
            options.create_new(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, crate::datadir::FILE_MODE);
            match options.open(&path) {
                Ok(file) => {
                    self.shared.last_millis.store(millis, Ordering::Relaxed);
                    return Ok((path, file));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => millis += 1,
                Err(e) => return Err(e).with_context(|| format!("creating the log file {}", path.display())),
            }
        }
        anyhow::bail!("creating a log file in {}: every name tried exists", dir.display())
    }

    fn write_line(&self, line: &[u8]) {
        let mut guard = self.lock();
        let Some(open) = guard.as_mut() else { return };
        if let Err(e) = open.file.write_all(line) {
            self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
            if !self.shared.reported.swap(true, Ordering::Relaxed) {
                // Straight to stderr: logging this through tracing would come back here.
                let _ = writeln!(
                    std::io::stderr(),
                    "eds: writing the log file {}: {e} (later failures are counted, not reported)",
                    open.path.display()
                );
            }
        }
    }
}

/// Creates `dir` (and its parents) 0700, or makes an existing one 0700.
fn private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, crate::datadir::DIR_MODE);
    b.create(dir).with_context(|| format!("creating the log directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(crate::datadir::DIR_MODE))
            .with_context(|| format!("making the log directory {} private", dir.display()))?;
    }
    Ok(())
}

/// The layer writing `log`'s file: eds's crates at TRACE, libraries at INFO, only while a file
/// is open. `label` is `--log-label`, the first part of every line's component.
pub fn layer<S>(log: LogFileHandle, label: Option<String>) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let targets = Targets::new()
        .with_target("eds", Level::TRACE)
        .with_target("eds_wal", Level::TRACE)
        .with_target("eds_drivers", Level::TRACE)
        .with_default(Level::INFO);
    let label = label.filter(|l| !l.is_empty());
    JsonFileLayer { log: log.clone(), label }.with_filter(FileFilter { targets, log })
}

struct JsonFileLayer {
    log: LogFileHandle,
    label: Option<String>,
}

impl<S: Subscriber> Layer<S> for JsonFileLayer {
    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        if !self.log.is_active() {
            return;
        }
        if let Some(mut line) = json_line(event, SystemTime::now(), self.label.as_deref()) {
            line.push(b'\n');
            self.log.write_line(&line);
        }
    }
}

/// Passes events the targets allow, and only while a file is open. The open state changes at
/// run time, so callsites are `sometimes` (asked per event: one atomic load when inactive).
struct FileFilter {
    targets: Targets,
    log: LogFileHandle,
}

impl<S> Filter<S> for FileFilter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        meta.is_event() && self.log.is_active() && self.targets.would_enable(meta.target(), meta.level())
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_event() && self.targets.would_enable(meta.target(), meta.level()) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

/// One line as go-common's `JSONLogEntry` serialises it (field order is the key order).
#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    message: &'a str,
    severity: &'static str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    metadata: &'a Map<String, Value>,
    component: &'a str,
}

/// The JSON text of `event` at `at` (without the newline).
fn json_line(event: &Event<'_>, at: SystemTime, label: Option<&str>) -> Option<Vec<u8>> {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let meta = event.metadata();
    let line = Line {
        timestamp: crate::timefmt::rfc3339_nanos(since.as_secs(), since.subsec_nanos()),
        message: &fields.message,
        severity: severity(meta.level()),
        metadata: &fields.metadata,
        component: &component(meta.target(), label),
    };
    serde_json::to_vec(&line).ok()
}

/// EDS's severity names.
fn severity(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARNING",
        Level::ERROR => "ERROR",
    }
}

/// `label, <target's path>` with eds's crate name left out and `eds_` cut from its other crates.
fn component(target: &str, label: Option<&str>) -> String {
    let mut parts = target.split("::");
    let krate = match parts.next() {
        Some("eds") | None => None,
        Some(other) => Some(other.strip_prefix("eds_").unwrap_or(other)),
    };
    let all: Vec<&str> = label.into_iter().chain(krate).chain(parts).filter(|p| !p.is_empty()).collect();
    if all.is_empty() {
        "eds".to_owned()
    } else {
        all.join(", ")
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    metadata: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.metadata.insert(field.name().to_owned(), value);
        }
    }

    fn put_text(&mut self, field: &Field, text: &str) {
        self.put(field, Value::String(strip_ansi(text).into_owned()));
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put_text(field, &format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put_text(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        match i64::try_from(value) {
            Ok(v) => self.put(field, Value::from(v)),
            Err(_) => self.put(field, Value::String(value.to_string())),
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        match u64::try_from(value) {
            Ok(v) => self.put(field, Value::from(v)),
            Err(_) => self.put(field, Value::String(value.to_string())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put_text(field, &eds_wal::error_chain(value));
    }
}

/// `s` without ANSI escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, and
/// two-character `ESC x`).
fn strip_ansi(s: &str) -> Cow<'_, str> {
    if !s.contains('\x1b') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` with only the file layer of `log` installed (on this thread).
    fn with_file_layer(log: &LogFileHandle, label: Option<&str>, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(layer(log.clone(), label.map(str::to_owned)));
        tracing::subscriber::with_default(subscriber, f);
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_line_format_is_eds_s() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFileHandle::new();
        let path = log.open(dir.path()).unwrap();
        with_file_layer(&log, None, || {
            tracing::warn!("careful");
            tracing::trace!(
                seq = 42u64,
                delta = -3i64,
                ratio = 0.5,
                ok = true,
                subject = "dbchange.order",
                "got {}",
                "it"
            );
            tracing::error!(error = %"a \"quoted\"\nline", id = ?"x", "\x1b[31mred\x1b[0m and é ✓ \u{1F600}");
            tracing::debug!(huge = u128::MAX, nan = f64::NAN, "d");
            tracing::info!(target: "eds_wal::segment", "w");
            tracing::info!(target: "async_nats", "lib info");
            tracing::debug!(target: "async_nats", "lib debug, not written");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        // Keys in EDS's order, no metadata key without fields.
        let (head, rest) = first.split_at(first.find("\",\"message\"").unwrap());
        assert!(head.starts_with("{\"timestamp\":\"") && head.ends_with('Z'), "{first}");
        assert_eq!(rest, r#"","message":"careful","severity":"WARNING","component":"logging, file, tests"}"#);

        let all = lines(&path);
        assert_eq!(all.len(), 6, "{text}");
        assert_eq!(all[1]["severity"], "TRACE");
        assert_eq!(all[1]["message"], "got it");
        assert_eq!(
            all[1]["metadata"],
            serde_json::json!({"seq": 42, "delta": -3, "ratio": 0.5, "ok": true, "subject": "dbchange.order"})
        );
        assert_eq!(all[2]["severity"], "ERROR");
        assert_eq!(all[2]["message"], "red and é ✓ \u{1F600}");
        assert_eq!(all[2]["metadata"]["error"], "a \"quoted\"\nline");
        assert_eq!(all[2]["metadata"]["id"], "\"x\"");
        assert!(!text.contains('\x1b'));
        // Escaped by serde_json: one physical line per event.
        assert!(text.lines().nth(2).unwrap().contains(r#"a \"quoted\"\nline"#));
        assert_eq!(all[3]["severity"], "DEBUG");
        assert_eq!(all[3]["metadata"], serde_json::json!({"huge": u128::MAX.to_string(), "nan": "NaN"}));
        assert_eq!(all[4]["component"], "wal, segment");
        assert_eq!(all[4]["severity"], "INFO");
        assert_eq!(all[5]["component"], "async_nats");
        for line in &all {
            let ts = line["timestamp"].as_str().unwrap();
            assert!(ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        }
    }

    #[test]
    fn components_and_labels() {
        assert_eq!(component("eds::ingest::puller", None), "ingest, puller");
        assert_eq!(component("eds", None), "eds");
        assert_eq!(component("eds", Some("fork")), "fork");
        assert_eq!(component("eds_drivers::postgres::sink", Some("fork")), "fork, drivers, postgres, sink");
        assert_eq!(component("hyper::proto", None), "hyper, proto");
        let dir = tempfile::tempdir().unwrap();
        let log = LogFileHandle::new();
        let path = log.open(dir.path()).unwrap();
        with_file_layer(&log, Some("edge"), || tracing::info!("x"));
        assert_eq!(lines(&path)[0]["component"], "edge, logging, file, tests");
    }

    #[test]
    fn strips_ansi() {
        assert_eq!(strip_ansi("\x1b[1;32mok\x1b[0m"), "ok");
        assert_eq!(strip_ansi("a\x1b]0;title\x07b\x1b]8;;x\x1b\\c"), "abc");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn inactive_until_opened_and_after_close() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFileHandle::new();
        assert_eq!(log.current(), None);
        assert_eq!(log.rotate().unwrap(), None);
        assert_eq!(log.close(), None);
        with_file_layer(&log, None, || tracing::error!("nowhere"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let path = log.open(dir.path()).unwrap();
        with_file_layer(&log, None, || tracing::info!("one"));
        assert_eq!(log.close(), Some(path.clone()));
        with_file_layer(&log, None, || tracing::info!("after close"));
        let all = lines(&path);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0]["message"], "one");
    }

    #[test]
    fn rotation_hands_over_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("session").join("logs");
        let log = LogFileHandle::new();
        let first = log.open(&logs).unwrap();
        assert_eq!(first.parent().unwrap(), logs);
        let name = first.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("eds-") && name.ends_with(".log") && name[4..name.len() - 4].parse::<u64>().is_ok());
        with_file_layer(&log, None, || tracing::info!("before"));
        // Twice in the same millisecond still gives new names.
        let old = log.rotate().unwrap().unwrap();
        let second = log.current().unwrap();
        let old2 = log.rotate().unwrap().unwrap();
        let third = log.current().unwrap();
        assert_eq!(old, first);
        assert_eq!(old2, second);
        assert!(first != second && second != third);
        assert!(first < second && second < third, "names sort in creation order");
        with_file_layer(&log, None, || tracing::info!("after"));
        assert_eq!(lines(&first).len(), 1);
        assert_eq!(lines(&first)[0]["message"], "before");
        assert!(lines(&second).is_empty());
        assert_eq!(lines(&third)[0]["message"], "after");
        #[cfg(unix)]
        {
            assert_eq!(mode(&logs), 0o700);
            for p in [&first, &second, &third] {
                assert_eq!(mode(p), 0o600, "{}", p.display());
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn write_errors_are_counted_not_raised() {
        let log = LogFileHandle::new();
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        *log.lock() = Some(OpenFile { dir: PathBuf::from("/dev"), path: PathBuf::from("/dev/full"), file: full });
        log.shared.active.store(true, Ordering::Release);
        with_file_layer(&log, None, || {
            tracing::info!("lost");
            tracing::info!("lost too");
        });
        assert_eq!(log.write_errors(), 2);
    }
}
