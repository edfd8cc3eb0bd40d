//! Placeholder until the credentials parser lands (replaced by the natsjwt branch).

use anyhow::{Context, Result};

/// What the session's NATS credentials say.
pub struct SessionCreds {
    /// Server id (`name`).
    pub server_id: String,
    /// Company ids from the subscribe permissions.
    pub company_ids: Vec<String>,
    /// Session id from the subscribe permissions.
    pub session_id: Option<String>,
}

/// Parses a decorated creds text.
pub fn parse(text: &str) -> Result<SessionCreds> {
    use base64::Engine;
    let jwt = text.lines().map(str::trim).find(|l| l.starts_with("eyJ")).context("no JWT in the credentials")?;
    let payload = jwt.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)?;
    let server_id = claims["name"].as_str().unwrap_or_default().to_owned();
    let mut company_ids = Vec::new();
    let mut session_id = None;
    for s in claims["nats"]["sub"]["allow"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
        if let Some(rest) = s.strip_prefix("dbchange.*.*.") {
            company_ids.push(rest.split('.').next().unwrap_or_default().to_owned());
        } else if let Some(rest) = s.strip_prefix("eds.notify.") {
            session_id = rest.split('.').next().map(str::to_owned);
        }
    }
    Ok(SessionCreds { server_id, company_ids, session_id })
}
