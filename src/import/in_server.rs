//! HQ's `import` inside a running server: the same import as `eds import --no-confirm` (see
//! [`super::command::import`]), with the worker's own tracker and registry, into the destination
//! HQ configured, while that destination's drain is held. Ingest and the other destinations go
//! on (events keep being stored in the WAL).
//!
//! Invariant: the import drops and loads tables only once the destination's drain reported
//! `paused` — it checks its hold between batches, so none of its batches is in flight — and the
//! hold lasts until the worker restarts: the new worker reads the import's per-table timestamps
//! and skips, for this destination only, the events the export already holds. Releasing the
//! hold before would apply those older events on top of the export.

use super::command::{import, Answer, ImportArgs};
use super::progress::Progress;
use crate::hq::api::HqApi;
use crate::registry::Registry;
use crate::state::ServerState;
use crate::tracker::Tracker;
use anyhow::{bail, Result};
use eds_drivers::url::redact;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the import waits for the destination's drain to finish its batch in flight. Longer
/// than the longest wait of a drain between batches (a configuration error's three minutes).
pub const HOLD_DEADLINE: Duration = Duration::from_secs(200);

/// The connectivity check before anything is changed (as `eds import`'s).
const TEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What an import inside the server works with.
pub struct ServerImport {
    /// The server's state: the destinations' holds and states.
    pub state: Arc<ServerState>,
    /// The data directory (config.toml, the download directory).
    pub data_dir: PathBuf,
    /// HQ's API with the server's key (the bulk export).
    pub api: HqApi,
    /// The worker's tracker (never a second one: one writer).
    pub tracker: Tracker,
    /// The worker's schema registry.
    pub registry: Arc<Registry>,
    /// The server's `--schema-validator`, if any.
    pub validator: Option<Arc<crate::validator::Validator>>,
    /// The destinations this worker runs: (name, URL).
    pub running: Vec<(String, String)>,
    /// See [`HOLD_DEADLINE`].
    pub hold_deadline: Duration,
}

impl std::fmt::Debug for ServerImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running: Vec<&str> = self.running.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ServerImport").field("data_dir", &self.data_dir).field("running", &running).finish()
    }
}

impl crate::hq::notify::Backfill for ServerImport {
    fn run(&self) -> futures_util::future::BoxFuture<'_, Result<String>> {
        Box::pin(self.backfill())
    }
}

impl ServerImport {
    /// The destination to load: config.toml's `url` (HQ's configure) — held when this worker
    /// runs it, loaded anyway when it does not yet —, else the only destination the worker runs.
    /// Its URL and, when it runs, its name.
    fn target(&self) -> Result<(String, Option<String>)> {
        let config = crate::config::load(&self.data_dir)?;
        let configured = config.other.get("url").and_then(toml::Value::as_str).map(str::trim).filter(|u| !u.is_empty());
        let url = match (configured, self.running.as_slice()) {
            (Some(url), _) => url.to_owned(),
            (None, [(_, url)]) => url.clone(),
            (None, []) => bail!("no destination is configured yet: send configure first"),
            (None, many) => bail!(
                "this server runs {} destinations and config.toml names none of them (HQ's configure does): \
                 which one to load is not clear",
                many.len()
            ),
        };
        let Some(dest) = crate::drain::parse_destination(&url)? else {
            bail!("{}: this build has no driver for it", redact(&url));
        };
        let running = self.running.iter().any(|(n, _)| *n == dest.name).then_some(dest.name);
        Ok((url, running))
    }

    /// Runs the import with a backfill (HQ's `backfill: true`); what was loaded.
    pub async fn backfill(&self) -> Result<String> {
        let (url, running) = self.target()?;
        let Some(mut dest) = crate::drain::parse_destination(&url)? else {
            bail!("{}: this build has no driver for it", redact(&url));
        };
        dest.registry = Some(self.registry.clone());
        dest.validator = self.validator.clone();
        match tokio::time::timeout(TEST_TIMEOUT, dest.driver.test()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("destination {:?}: {}", dest.name, eds_wal::error_chain(&e)),
            Err(_) => bail!(
                "destination {:?}: no answer to its connection test within {}s",
                dest.name,
                TEST_TIMEOUT.as_secs()
            ),
        }
        match &running {
            Some(name) => {
                self.state.hold_for_import(name, true);
                tracing::info!(destination = %name, "import: waiting for the destination's drain to finish its batch in flight");
                self.wait_for_pause(name).await?;
                tracing::info!(destination = %name, "import: the destination's drain is paused (until the restart after the import)");
            }
            None => {
                tracing::info!(destination = %dest.name, "import: the configured destination does not run yet; loading it without a drain to hold")
            }
        }
        let args = ImportArgs::unattended(&url, false);
        let progress = Progress::new(false);
        let mut out = LogLines::new(&dest.name);
        // Never asked: the import runs with --no-confirm, as EDS ran it for HQ.
        let mut ask = |_: &str| -> Result<Answer> { Ok(Answer::Yes) };
        let code = import(
            &args,
            &self.data_dir,
            &dest,
            &self.registry,
            &self.tracker,
            &self.api,
            None,
            &mut ask,
            &progress,
            &mut out,
        )
        .await?;
        out.flush_line();
        if code != 0 {
            bail!("{}", out.tail(6).join("; "));
        }
        Ok(out.tail(1).join(""))
    }

    /// Waits until the drain of `name` reports `paused`.
    async fn wait_for_pause(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.hold_deadline;
        loop {
            match self.state.destination_state(name) {
                Some("paused") => return Ok(()),
                None => bail!("destination {name:?} is gone from this server"),
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "destination {name:?} did not pause within {}s (a batch of it is still being written): nothing was changed",
                    self.hold_deadline.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The import's report, one log line per line (a server has no terminal to print to); the
/// lines are kept for HQ's answer.
struct LogLines {
    destination: String,
    partial: Vec<u8>,
    lines: Vec<String>,
}

impl LogLines {
    fn new(destination: &str) -> LogLines {
        LogLines { destination: destination.to_owned(), partial: Vec::new(), lines: Vec::new() }
    }

    fn flush_line(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.partial).trim_end().to_owned();
        self.partial.clear();
        if line.trim().is_empty() {
            return;
        }
        tracing::info!(destination = %self.destination, "import: {}", line.trim());
        self.lines.push(line.trim().to_owned());
    }

    /// The last `n` lines.
    fn tail(&self, n: usize) -> Vec<String> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n)).cloned().collect()
    }
}

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.flush_line();
            } else {
                self.partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_report_becomes_lines() {
        let mut out = LogLines::new("pg");
        write!(out, "  order: 3 rows\nloaded 1 tables").unwrap();
        writeln!(out, ", 3 rows").unwrap();
        writeln!(out).unwrap();
        write!(out, "last").unwrap();
        out.flush_line();
        assert_eq!(out.tail(9), ["order: 3 rows", "loaded 1 tables, 3 rows", "last"]);
        assert_eq!(out.tail(1), ["last"]);
    }
}
