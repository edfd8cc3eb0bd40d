//! Everything that talks to Shopmonkey HQ: the API client, the session (start, renew, end), the
//! NATS credentials it issues, heartbeats, notifications and log uploads.
//!
//! Under HQ, ingest runs inside a session: [`run`] starts one (waiting while another server
//! holds it), connects ingest, heartbeats and notifications with the session's credentials,
//! renews the session every `--renew-interval` (a new session, ingest reconnected; drains never
//! stop), and ends it — `{errored}` and the log upload — when the server stops.

pub mod api;
pub mod creds;
pub mod heartbeat;
pub mod host;
pub mod logs;
pub mod mask;
pub mod notify;
pub mod session;
pub mod wire;

use crate::ingest::{self, IngestConfig};
use crate::state::{ServerState, SessionStatus};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub use mask::mask_url;

/// The session's log file (`<data-dir>/logs/eds-<unixMillis>.log`) and its uploads to HQ.
#[derive(Debug)]
pub struct SessionLogs {
    api: api::HqApi,
    shipper: logs::LogShipper,
}

impl SessionLogs {
    fn new(api: api::HqApi, keep_logs: bool) -> SessionLogs {
        let shipper = logs::LogShipper::new(api.http().clone(), crate::logging::log_file().clone(), keep_logs);
        SessionLogs { api, shipper }
    }

    /// Cuts the log and uploads the finished part to a URL HQ hands out (hourly, `sendlogs`);
    /// the uploaded path, empty when no log file is open.
    pub async fn send(&self, session_id: &str) -> Result<String> {
        let path = self.shipper.send_logs(|| async { Ok(self.api.log_url(session_id).await?.url) }).await?;
        Ok(path.unwrap_or_default())
    }

    /// The logs earlier sessions left (a crashed worker's, say), each to a URL HQ hands out;
    /// their uploaded paths.
    async fn send_leftovers(&self, session_id: &str) -> Result<Vec<String>> {
        self.shipper.send_leftovers(|| async { Ok(self.api.log_url(session_id).await?.url) }).await
    }

    /// At the session's end: closes the log and uploads it to the URL of the end's answer.
    async fn finish(&self, url: Option<String>) -> Result<Option<String>> {
        self.shipper.send_final_logs(|| async { url.filter(|u| !u.is_empty()).context("HQ gave no upload URL") }).await
    }
}

/// HQ's `upgrade`: downloads release `version` from `release_url`, verifies its signature
/// against Shopmonkey's key, checks its `version`, and puts it in place of this program's file
/// (see [`crate::upgrade`]); the caller then restarts the worker, which the supervisor starts
/// from the new file. A failed rollback leaves no program to start: that exits at once.
pub async fn upgrade_to(data_dir: &Path, version: &str, release_url: &str) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program's file")?;
    let mut opts = crate::upgrade::UpgradeOptions::new(exe)?;
    opts.download.base_url = release_url.trim_end_matches('/').to_owned();
    match crate::upgrade::upgrade(version, data_dir, &opts).await {
        Ok(done) => {
            tracing::info!(version = %done.version, file = %done.executable.display(), "upgraded: the new version starts now");
            Ok(())
        }
        Err(e) if e.is_fatal() => {
            tracing::error!(error = %eds_wal::error_chain(&e), "the upgrade failed and could not be rolled back; exiting");
            std::process::exit(i32::from(crate::exit::FAILURE));
        }
        Err(e) => Err(e.into()),
    }
}

/// How the server runs under HQ.
#[derive(Debug, Clone)]
pub struct HqSettings {
    /// The API client (base URL and key).
    pub api: api::HqApi,
    /// The server id config.toml or `--eds-id` gives (sent in the session request).
    pub server_id: String,
    /// `--companyIds`: narrows the companies the credentials allow.
    pub company_ids: Vec<String>,
    /// `--consumer-suffix`.
    pub consumer_suffix: Option<String>,
    /// The destination HQ is told about.
    pub driver: Option<session::DriverInfo>,
    /// `--renew-interval`.
    pub renew_every: Duration,
    /// How often heartbeats go out.
    pub heartbeat_every: Duration,
    /// Wait between session starts while another server holds the session.
    pub conflict_retry: Duration,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Keep log files after uploading them.
    pub keep_logs: bool,
    /// Where releases are downloaded from (`upgrade`).
    pub release_url: String,
    /// How often the session's log goes to HQ (hourly).
    pub log_upload_every: Duration,
    /// Runs HQ's `import` with a backfill inside this server.
    pub backfill: Option<Arc<dyn notify::Backfill>>,
}

/// The longest a session's end (HQ's answer and the last log's upload) may hold up a stop or a
/// renewal: a stopping server must not hang on an HQ out of reach (systemd stops waiting after
/// 90 s by default).
const END_DEADLINE: Duration = Duration::from_secs(30);

/// Why a session ended.
enum Ending {
    /// A stop signal.
    Stop,
    /// Ingest ended by itself (an error, or a stop it saw first).
    Ingest,
    /// A notification asked for it.
    Control(notify::Control),
    /// Time to renew.
    Renew,
}

/// The consumer's companies: the credentials' list, narrowed by `--companyIds` when given.
pub fn companies(from_creds: &[String], flag: &[String]) -> Result<Vec<String>> {
    if flag.is_empty() {
        return Ok(from_creds.to_vec());
    }
    for c in flag {
        if !from_creds.contains(c) {
            anyhow::bail!("provided company ID {c} not in credentials");
        }
    }
    Ok(flag.to_vec())
}

async fn connect(nats_url: &str, credential: &str, name: &str) -> Result<async_nats::Client> {
    let (servers, _) = ingest::consumer::url_auth(nats_url);
    async_nats::ConnectOptions::with_credentials(credential)
        .context("the session's NATS credentials are not a valid creds file")?
        .name(name)
        // A NATS server out of reach now is tried again in the background, as ingest does: a
        // shop's internet comes and goes.
        .retry_on_initial_connect()
        .connect(servers.as_str())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "error connecting to NATS hosts at {} for HQ notifications: {}",
                eds_drivers::url::redact(nats_url),
                eds_drivers::url::redact(&eds_wal::error_chain(&e))
            )
        })
}

/// Runs ingest under HQ sessions until `stop` turns true or a notification ends the server.
/// Returns the exit code: 0, or [`crate::exit::RESTART`] when HQ asked for a restart.
pub async fn run(
    hq: HqSettings,
    mut ingest_cfg: IngestConfig,
    state: Arc<ServerState>,
    dlq: crate::dlq::DeadLetters,
    mut stop: watch::Receiver<bool>,
) -> Result<u8> {
    let logs = Arc::new(SessionLogs::new(hq.api.clone(), hq.keep_logs));
    let mut renewals = 0;
    loop {
        // One channel per session: a slow handler of an ended session cannot restart the next.
        let (control_tx, mut control_rx) = mpsc::channel(8);
        let body = session::request_body(&hq.server_id, &hq.company_ids, hq.driver.as_ref());
        // A refusal (a wrong or revoked key) stops a server that just started; a server that has
        // run keeps draining and keeps asking.
        let refusal_is_final = renewals == 0;
        let Some(session) = session::start(&hq.api, &body, &mut stop, hq.conflict_retry, refusal_is_final).await?
        else {
            return Ok(0);
        };
        let started = async {
            let creds = creds::SessionCreds::parse(&session.credential).context("HQ's session credential")?;
            if creds.session_id.as_deref().is_some_and(|id| id != session.id) {
                tracing::warn!(session_id = %session.id, "the session credential names another session id; using HQ's");
            }
            ingest_cfg.consumer.company_ids = companies(&creds.company_ids, &hq.company_ids)?;
            ingest_cfg.consumer.durable =
                ingest::consumer::durable_name(&creds.server_id, hq.consumer_suffix.as_deref());
            ingest_cfg.connection_name = format!("eds-{}", creds.server_id);
            ingest_cfg.creds = Some(creds.for_ingest());
            let client = connect(&ingest_cfg.nats_url, &session.credential, &ingest_cfg.connection_name).await?;
            Ok::<_, anyhow::Error>((creds, client))
        }
        .await;
        let (creds, client) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::time::timeout(END_DEADLINE, end(&hq, &session.id, true, &logs)).await;
                return Err(e);
            }
        };
        match crate::logging::log_file().open(&hq.data_dir.join("logs")) {
            Ok(file) => tracing::info!(file = %file.display(), session_id = %session.id, "session log file opened"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "no session log file: HQ gets no logs of this session"),
        }
        tracing::info!(session_id = %session.id, server_id = %creds.server_id, companies = ingest_cfg.consumer.company_ids.len(), renewals, "HQ session started");
        *state.session() = Some(SessionStatus {
            id: session.id.clone(),
            server_id: creds.server_id.clone(),
            since: crate::timefmt::now_micros(),
            renewals,
            ..SessionStatus::default()
        });
        state.ingest().consumer = ingest_cfg.consumer.durable.clone();

        let (session_stop_tx, session_stop) = watch::channel(false);
        let heartbeats = tokio::spawn(heartbeat::run(
            client.clone(),
            state.clone(),
            session.id.clone(),
            hq.heartbeat_every,
            session_stop.clone(),
        ));
        let notifier = notify::Notifier {
            client: client.clone(),
            session_id: session.id.clone(),
            state: state.clone(),
            control: control_tx.clone(),
            data_dir: hq.data_dir.clone(),
            logs: Some(logs.clone()),
            release_url: hq.release_url.clone(),
            backfill: hq.backfill.clone(),
        };
        let uploads =
            tokio::spawn(upload_hourly(notifier.clone(), logs.clone(), hq.log_upload_every, session_stop.clone()));
        let leftovers = {
            let (n, logs) = (notifier.clone(), logs.clone());
            tokio::spawn(async move {
                match logs.send_leftovers(&n.session_id).await {
                    Ok(paths) => {
                        for path in paths {
                            tracing::info!(path, "uploaded a log an earlier session left");
                            n.logs_sent(&path).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "could not upload the logs earlier sessions left")
                    }
                }
            })
        };
        let notifications = tokio::spawn(notify::run(notifier, session_stop.clone()));
        let mut ingesting =
            tokio::spawn(ingest::run(ingest_cfg.clone(), state.clone(), dlq.clone(), session_stop.clone()));

        let joined = |r: Result<Result<()>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(anyhow::anyhow!("ingest task failed: {e}")))
        };
        let (ending, ended) = tokio::select! {
            r = &mut ingesting => (Ending::Ingest, Some(joined(r))),
            _ = stop.changed() => (Ending::Stop, None),
            c = control_rx.recv() => (c.map_or(Ending::Stop, Ending::Control), None),
            _ = tokio::time::sleep(hq.renew_every) => (Ending::Renew, None),
        };
        let _ = session_stop_tx.send(true);
        let ingest_result = match ended {
            Some(r) => r,
            None => joined(ingesting.await),
        };
        let _ = heartbeats.await;
        // An hourly upload in flight is left to the next session (its file is a leftover then).
        uploads.abort();
        let _ = uploads.await;
        // Leftovers not sent yet wait for the next session.
        leftovers.abort();
        let _ = leftovers.await;
        match tokio::time::timeout(Duration::from_secs(5), notifications).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = format!("{e:#}"), "HQ notifications ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HQ notifications task failed"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => tracing::warn!("HQ notifications did not stop within 5s; left behind"),
        }
        let ending_session = end(&hq, &session.id, ingest_result.is_err(), &logs);
        if tokio::time::timeout(END_DEADLINE, ending_session).await.is_err() {
            tracing::warn!(session_id = %session.id, "ending the HQ session took longer than {}s; going on without (its log stays in {})", END_DEADLINE.as_secs(), hq.data_dir.join("logs").display());
        }
        // Bounded: while NATS is out of reach a flush waits for the reconnect.
        let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
        *state.session() = None;
        ingest_result?;
        match ending {
            Ending::Renew => {
                renewals += 1;
                tracing::info!(renewals, "renewing the HQ session");
            }
            Ending::Stop | Ending::Ingest | Ending::Control(notify::Control::Shutdown(_)) => return Ok(0),
            Ending::Control(notify::Control::Restart(why)) => {
                tracing::info!(why, "restarting");
                return Ok(crate::exit::RESTART);
            }
        }
    }
}

/// Uploads the log `every` (an hour) until `stop`, telling HQ each time.
async fn upload_hourly(n: notify::Notifier, logs: Arc<SessionLogs>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        match logs.send(&n.session_id).await {
            Ok(path) => n.logs_sent(&path).await,
            Err(e) => tracing::warn!(error = format!("{e:#}"), "the hourly log upload failed"),
        }
    }
}

/// Ends the session with HQ and uploads its last log to the URL HQ answers with. Failures are
/// logged: HQ ends abandoned sessions itself, and a stopping server must not hang on it.
async fn end(hq: &HqSettings, session_id: &str, errored: bool, logs: &SessionLogs) {
    let url = match hq.api.end_session(session_id, errored).await {
        Ok(urls) => {
            tracing::info!(session_id, errored, "HQ session ended");
            Some(urls.url)
        }
        Err(e) => {
            tracing::warn!(session_id, error = format!("{e:#}"), "could not end the HQ session");
            None
        }
    };
    match logs.finish(url).await {
        Ok(Some(path)) => tracing::info!(path, "the session's log is uploaded"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = format!("{e:#}"), "could not upload the session's last log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn company_flags_only_narrow_the_credentials() {
        let creds = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(companies(&creds, &[]).unwrap(), creds);
        assert_eq!(companies(&creds, &["b".to_owned()]).unwrap(), ["b"]);
        let e = companies(&creds, &["c".to_owned()]).unwrap_err().to_string();
        assert_eq!(e, "provided company ID c not in credentials");
    }
}
