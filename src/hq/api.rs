//! HQ's authenticated API (spec §3): session start and end, and the log-upload URL.
//!
//! Every call sends `Authorization: Bearer <API key>`, `Content-Type: application/json` and
//! `User-Agent: Shopmonkey EDS Server/<version>`, reads HQ's envelope `{success, message, data}`
//! and is retried within a bounded [`RetryPolicy`] with its body sent whole each time (EDS
//! retried without limit and re-sent an already consumed body).

use crate::registry::{send_retrying, Answer, RetryPolicy};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A client of HQ's API for one API key.
#[derive(Clone)]
pub struct HqApi {
    client: reqwest::Client,
    base: String,
    key: String,
    retry: RetryPolicy,
}

impl std::fmt::Debug for HqApi {
    /// The key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HqApi").field("base", &self.base).finish_non_exhaustive()
    }
}

/// What `POST /v3/eds/internal` answered.
#[derive(Debug)]
pub enum SessionStart {
    /// A session: its id and the NATS credentials HQ issued for it (decoded from base64).
    Started {
        /// The session id.
        session_id: String,
        /// The decorated `.creds` text (user JWT and seed): a secret.
        credential: String,
    },
    /// 409: another eds server holds a session for this server id.
    Conflict(String),
    /// A 4xx answer other than 408, 409 and 429: a wrong or revoked API key (401, 403), a wrong
    /// API URL (404), a proxy in the way.
    Refused {
        /// The HTTP status.
        status: u16,
        /// HQ's message.
        reason: String,
    },
}

/// Where to upload logs: HQ's pre-signed URLs (`data` of session end and of the log-URL call).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct LogUrls {
    /// The session's log file goes here.
    #[serde(default)]
    pub url: String,
    /// The error output goes here, when HQ wants it.
    #[serde(default, rename = "errorUrl")]
    pub error_url: String,
}

/// What `POST /v3/export/bulk` asks for (empty lists and no time are left out, as EDS sends it).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ExportRequest {
    /// Only rows changed after this time (unix milliseconds).
    #[serde(rename = "timeOffset", skip_serializing_if = "Option::is_none")]
    pub time_offset: Option<i64>,
    /// Only these companies.
    #[serde(rename = "companyIds", skip_serializing_if = "Vec::is_empty")]
    pub company_ids: Vec<String>,
    /// Only these locations.
    #[serde(rename = "locationIds", skip_serializing_if = "Vec::is_empty")]
    pub location_ids: Vec<String>,
    /// Only these tables.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
}

/// Where a bulk export job stands.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ExportStatus {
    /// Every table is done.
    #[serde(default)]
    pub completed: bool,
    /// Per table.
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, TableExportStatus>,
}

/// One table of a bulk export job.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct TableExportStatus {
    /// `Pending`, `Completed` or `Failed`.
    #[serde(default)]
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub error: String,
    /// Its files (pre-signed, fetched without the key).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The export's time for the table, integer nanoseconds as a string.
    #[serde(default)]
    pub cursor: String,
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    message: String,
    data: Option<T>,
}

#[derive(Deserialize)]
struct Started {
    #[serde(rename = "sessionId")]
    session_id: String,
    credential: Option<String>,
}

impl HqApi {
    /// A client of the API at `base` (no trailing slash needed) with `key`.
    pub fn new(base: &str, key: &str) -> Result<HqApi> {
        let url = reqwest::Url::parse(base).with_context(|| format!("invalid API URL {base:?}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            bail!("invalid API URL {base:?}: not an http or https URL");
        }
        let client = reqwest::Client::builder()
            .user_agent(super::logs::user_agent())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client for HQ")?;
        Ok(HqApi {
            client,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> HqApi {
        self.retry = retry;
        self
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client (for uploads to pre-signed URLs, which take no key).
    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    async fn post(&self, what: &str, path: &str, body: &impl Serialize) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(body).with_context(|| format!("{what}: encoding the request"))?;
        send_retrying(&self.retry, || {
            self.client
                .post(&url)
                .bearer_auth(&self.key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map_err(|reason| anyhow::anyhow!("{what}: POST {url}: {reason}"))
    }

    async fn get(&self, what: &str, path: &str) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        send_retrying(&self.retry, || self.client.get(&url).bearer_auth(&self.key))
            .await
            .map_err(|reason| anyhow::anyhow!("{what}: GET {url}: {reason}"))
    }

    /// `POST /v3/export/bulk` (spec §3.6): starts a bulk export; its job id.
    pub async fn create_export(&self, request: &ExportRequest) -> Result<String> {
        const WHAT: &str = "creating the bulk export";
        #[derive(Deserialize)]
        struct Job {
            #[serde(rename = "jobId")]
            job_id: String,
        }
        let answer = self.post(WHAT, "/v3/export/bulk", request).await?;
        let job: Job = Self::data(WHAT, &answer)?;
        if job.job_id.is_empty() {
            bail!("{WHAT}: HQ answered an empty job id");
        }
        Ok(job.job_id)
    }

    /// `GET /v3/export/bulk/<jobId>` (spec §3.6): where the export stands.
    pub async fn export_status(&self, job_id: &str) -> Result<ExportStatus> {
        let what = format!("reading bulk export job {job_id}");
        let path = format!("/v3/export/bulk/{}", eds_drivers::url::escape_component(job_id));
        let answer = self.get(&what, &path).await?;
        Self::data(&what, &answer)
    }

    fn data<T: DeserializeOwned>(what: &str, answer: &Answer) -> Result<T> {
        if !answer.status.is_success() {
            bail!("{what}: {}", answer.reason());
        }
        let envelope: Envelope<T> = serde_json::from_slice(&answer.body)
            .with_context(|| format!("{what}: HQ's answer is not its usual envelope"))?;
        if !envelope.success {
            bail!("{what}: HQ refused: {}", envelope.message);
        }
        envelope.data.with_context(|| format!("{what}: HQ's answer holds no data"))
    }

    /// `POST /v3/eds/internal` (spec §3.2).
    pub async fn start_session(&self, request: &serde_json::Value) -> Result<SessionStart> {
        const WHAT: &str = "starting the HQ session";
        let answer = self.post(WHAT, "/v3/eds/internal", request).await?;
        if answer.status == reqwest::StatusCode::CONFLICT {
            return Ok(SessionStart::Conflict(answer.reason()));
        }
        if answer.status.is_client_error() && !matches!(answer.status.as_u16(), 408 | 429) {
            return Ok(SessionStart::Refused {
                status: answer.status.as_u16(),
                reason: format!("{WHAT}: {}", answer.reason()),
            });
        }
        let started: Started = Self::data(WHAT, &answer)?;
        let Some(encoded) = started.credential.filter(|c| !c.is_empty()) else {
            bail!("{WHAT}: HQ issued no NATS credential for session {}", started.session_id);
        };
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .with_context(|| format!("{WHAT}: the credential of session {} is not base64", started.session_id))?;
        let credential = String::from_utf8(bytes)
            .with_context(|| format!("{WHAT}: the credential of session {} is not text", started.session_id))?;
        Ok(SessionStart::Started { session_id: started.session_id, credential })
    }

    /// `POST /v3/eds/internal/<sessionId>` with `{"errored": …}` (spec §3.3): ends the session;
    /// HQ answers where to upload its last log.
    pub async fn end_session(&self, session_id: &str, errored: bool) -> Result<LogUrls> {
        let what = format!("ending HQ session {session_id}");
        let path = format!("/v3/eds/internal/{}", eds_drivers::url::escape_component(session_id));
        let answer = self.post(&what, &path, &serde_json::json!({ "errored": errored })).await?;
        Self::data(&what, &answer)
    }

    /// `POST /v3/eds/internal/<sessionId>/log` with `{}`: a fresh URL for a log upload.
    pub async fn log_url(&self, session_id: &str) -> Result<LogUrls> {
        let what = format!("asking HQ where to upload the logs of session {session_id}");
        let path = format!("/v3/eds/internal/{}/log", eds_drivers::url::escape_component(session_id));
        let answer = self.post(&what, &path, &serde_json::json!({})).await?;
        Self::data(&what, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_not_in_debug_output() {
        let api = HqApi::new("http://127.0.0.1:1/", "secret-key").unwrap();
        let shown = format!("{api:?}");
        assert!(!shown.contains("secret-key"), "{shown}");
        assert_eq!(api.base(), "http://127.0.0.1:1");
    }
}
