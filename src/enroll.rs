//! `eds enroll <code>`: trades a one-time enrollment code from Shopmonkey for this server's HQ API
//! key and server id (`GET <api>/v3/eds/internal/enroll/<code>`, spec §1.6), kept in the data
//! directory's `config.toml` (0600; other keys kept). The key is never printed.

use crate::exit::UsageError;
use crate::registry::{HqSchemas, SourceError};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::io::Write;
use std::path::Path;

/// `eds enroll` flags.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The one-time enrollment code from Shopmonkey; its first letter names the environment (P
    /// production, S sandbox, E edge, L a local HQ)
    pub code: String,
    /// HQ's API base URL, instead of the one the code's first letter names
    #[arg(long, hide = true, value_name = "URL")]
    pub api_url: Option<String>,
}

/// HQ's API base URL for an enrollment code, by its first letter.
pub fn api_url_for(code: &str) -> Result<&'static str, UsageError> {
    match code.chars().next() {
        Some('P') => Ok("https://api.shopmonkey.cloud"),
        Some('S') => Ok("https://sandbox-api.shopmonkey.cloud"),
        Some('E') => Ok("https://edge-api.shopmonkey.cloud"),
        Some('L') => Ok("http://localhost:3101"),
        _ => Err(UsageError(format!(
            "enrollment code {code:?} is not valid: it starts with P (production), S (sandbox), E (edge) or L (local)"
        ))),
    }
}

/// HQ's answer: `{success, message, data: {token, serverId}}`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    message: String,
    data: Option<Enrollment>,
}

#[derive(Deserialize)]
struct Enrollment {
    token: String,
    #[serde(rename = "serverId")]
    server_id: String,
}

/// Runs `eds enroll`: asks HQ, then writes `config.toml` under `data_dir`.
pub fn run(args: &EnrollArgs, data_dir: &Path, out: &mut dyn Write) -> Result<u8> {
    let code = args.code.trim();
    if code.is_empty() || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(UsageError(format!(
            "enrollment code {:?} is not valid: it is letters and digits, as Shopmonkey shows it",
            args.code
        ))
        .into());
    }
    let api = match &args.api_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => api_url_for(code)?.to_owned(),
    };
    let hq = HqSchemas::new(&api).map_err(|e| UsageError(format!("{e:#}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let answer = runtime.block_on(hq.get_json(&format!("/v3/eds/internal/enroll/{code}")));
    let body = match answer {
        Ok(Some(body)) => body,
        Ok(None) => anyhow::bail!("invalid enrollment code or it has already been used ({api})"),
        Err(SourceError::Request { url, reason }) => anyhow::bail!("enrolling with HQ: GET {url}: {reason}"),
        Err(e) => return Err(e).context("enrolling with HQ"),
    };
    let answer: Answer = serde_json::from_slice(&body).context("enrolling with HQ: the answer is not HQ's envelope")?;
    let enrollment = match (answer.success, answer.data) {
        (true, Some(e)) if !e.token.is_empty() && !e.server_id.is_empty() => e,
        (true, _) => anyhow::bail!("enrolling with HQ: the answer holds no token and server id"),
        (false, _) => anyhow::bail!("HQ refused the enrollment: {}", answer.message),
    };
    crate::datadir::prepare(data_dir)?;
    let mut config = crate::config::load(data_dir)?;
    config.token = Some(enrollment.token);
    config.server_id = Some(enrollment.server_id.clone());
    crate::config::save(data_dir, &config)?;
    writeln!(
        out,
        "Enrollment successful: server {} ({api}); its key is in {}. Start it with `eds server -d {}`.",
        enrollment.server_id,
        crate::config::path(data_dir).display(),
        data_dir.display()
    )?;
    Ok(0)
}
