//! The HQ session: what `eds server` tells HQ about itself when it starts one (spec §3.2), the
//! start with its wait while another server holds the session (409), and what the rest of the
//! server knows about the session it runs under.

use super::api::{HqApi, SessionStart};
use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::watch;

/// A session HQ granted.
pub struct Session {
    /// Its id.
    pub id: String,
    /// The NATS credentials issued for it (decorated `.creds` text: a secret).
    pub credential: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).finish_non_exhaustive()
    }
}

/// The destination as HQ sees it in the session request (`driver`), its URL masked.
#[derive(Debug, Clone)]
pub struct DriverInfo {
    /// The URL scheme it registered under.
    pub id: String,
    /// Display name.
    pub name: String,
    /// One line on what it does.
    pub description: String,
    /// The URL with its secrets masked.
    pub masked_url: String,
}

/// The body of `POST /v3/eds/internal` (spec §3.2). Host facts eds cannot read are left out
/// rather than made up; `ipAddress` is empty on a host without a private IPv4 address (EDS
/// refused to start there).
pub fn request_body(server_id: &str, company_ids: &[String], driver: Option<&DriverInfo>) -> Value {
    let host = super::host::facts();
    let mut body = json!({
        "version": crate::VERSION,
        "hostname": host.hostname,
        "ipAddress": super::host::private_ipv4().map(|ip| ip.to_string()).unwrap_or_default(),
        "machineId": super::host::machine_id_hash(),
        "osinfo": {
            "host": host.to_json(),
            "num_cpu": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        },
        "serverId": server_id,
    });
    if let Some(d) = driver {
        body["driver"] = json!({ "id": d.id, "name": d.name, "description": d.description, "url": d.masked_url });
    }
    if !company_ids.is_empty() {
        body["companyIds"] = json!(company_ids);
    }
    body
}

/// The longest wait between session starts while HQ cannot be reached.
const UNREACHABLE_MAX_WAIT: Duration = Duration::from_secs(60);

/// Starts a session, asking again `every` (5 s by default, `--session-conflict-retry`) while HQ
/// answers 409 (another eds server runs with this server id), and with a growing wait (5 s up to
/// a minute) while HQ cannot be reached or fails: a shop's internet may be down for hours, and
/// the destinations go on draining the log meanwhile. `Ok(None)` when `stop` turned true
/// meanwhile. When `refusal_is_final`, a 401 or 403 (a wrong key) is a usage error; any other
/// refusal is asked again like an HQ out of reach (an HQ deploy, a proxy in the way).
pub async fn start(
    api: &HqApi,
    body: &Value,
    stop: &mut watch::Receiver<bool>,
    every: Duration,
    refusal_is_final: bool,
) -> Result<Option<Session>> {
    let server_id = body.get("serverId").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut unreachable = Duration::from_secs(5);
    loop {
        if *stop.borrow() {
            return Ok(None);
        }
        // A stop is honoured even while a request waits for its answer.
        let answer = tokio::select! {
            a = api.start_session(body) => a,
            _ = stop.changed() => return Ok(None),
        };
        let wait: Result<Duration> = match answer {
            Ok(SessionStart::Started { session_id, credential }) => {
                return Ok(Some(Session { id: session_id, credential }));
            }
            Ok(SessionStart::Conflict(reason)) => {
                tracing::warn!(
                    server_id,
                    reason,
                    "another eds server is already running for this server (id: {server_id}); retrying in {}s",
                    every.as_secs_f64()
                );
                Ok(every)
            }
            Ok(SessionStart::Refused { status: 401 | 403, reason }) if refusal_is_final => {
                return Err(crate::exit::UsageError(reason).into())
            }
            Ok(SessionStart::Refused { reason, .. }) => Err(anyhow::anyhow!(reason)),
            Err(e) => Err(e),
        };
        let wait = match wait {
            Ok(wait) => wait,
            Err(e) => {
                let wait = unreachable;
                unreachable = (unreachable * 2).min(UNREACHABLE_MAX_WAIT);
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_secs = wait.as_secs(),
                    "no HQ session yet; ingest waits, destinations go on draining the log"
                );
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}
