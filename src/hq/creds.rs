//! The NATS credentials HQ issues for a session (behaviour spec §3.4): a decorated `.creds` text —
//! a user JWT and the NKEY seed that signs for it — and what the JWT's claims say: the server id
//! (`name`), the companies this server may consume (its `sub.allow` entries
//! `dbchange.*.*.<companyId>.…`) and the session (`eds.notify.<sessionId>.…`).
//!
//! Invariant: the text (its seed proves this server's identity) never reaches a log, an error
//! message or `Debug` output; only the derived ids do. The claims are read without verifying the
//! signature, as EDS reads them: the NATS server verifies them, eds only learns what they allow.

use base64::Engine as _;
use serde::Deserialize;

/// Why a credential text was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredsError {
    /// The text has no `-----BEGIN NATS USER JWT-----` block with a token in it.
    #[error("no user JWT in the credential (expected a -----BEGIN NATS USER JWT----- block)")]
    NoJwt,
    /// The text has no `-----BEGIN USER NKEY SEED-----` block with a seed in it.
    #[error("no user NKEY seed in the credential (expected a -----BEGIN USER NKEY SEED----- block)")]
    NoSeed,
    /// The user JWT is not `header.claims.signature` with base64url JSON claims of a user.
    #[error("the user JWT in the credential is malformed: {why}")]
    BadJwt {
        /// What is wrong with it.
        why: &'static str,
    },
    /// The claims have no `name`.
    #[error("missing server id in credential")]
    NoServerId,
    /// No `sub.allow` entry names a company.
    #[error(
        "issue parsing company IDs from JWT claims: no subscribe permission of the form dbchange.*.*.<companyId>.…"
    )]
    NoCompanyIds,
    /// The session's `credential` field is not standard base64.
    #[error("the session credential is not base64")]
    NotBase64,
}

/// Session credentials: the ids their claims carry and the text to authenticate with.
#[derive(Clone)]
pub struct SessionCreds {
    /// The server id (the JWT's `name`); the durable consumer is `eds-<serverId>`.
    pub server_id: String,
    /// The companies the credentials may consume, in the order of their permissions.
    pub company_ids: Vec<String>,
    /// The session id (from `eds.notify.<sessionId>.…`), when the permissions name one.
    pub session_id: Option<String>,
    /// Publish permissions, for [`SessionCreds::may_publish`].
    publish: Permission,
    /// The decorated text, secret.
    text: String,
}

impl std::fmt::Debug for SessionCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCreds")
            .field("server_id", &self.server_id)
            .field("company_ids", &self.company_ids)
            .field("session_id", &self.session_id)
            .field("text", &"<redacted>")
            .finish()
    }
}

/// The user claims eds reads. Unknown fields are ignored; a field of the wrong type is an error.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    nats: Option<UserClaims>,
}

#[derive(Deserialize, Default)]
struct UserClaims {
    #[serde(default, rename = "pub")]
    publish: Option<Permission>,
    #[serde(default)]
    sub: Option<Permission>,
}

/// One direction's permissions: no allow list means everything not denied.
#[derive(Deserialize, Default, Clone)]
struct Permission {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
}

impl Permission {
    fn allows(&self, subject: &str) -> bool {
        let allowed = match self.allow.as_deref() {
            None | Some([]) => true,
            Some(list) => list.iter().any(|p| subject_matches(p, subject)),
        };
        allowed && !self.deny.iter().flatten().any(|p| subject_matches(p, subject))
    }
}

/// NATS subject matching: `*` matches one token, `>` (last) one or more.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// The token of the first `-----BEGIN <label>-----` block: the next non-empty line.
fn block<'t>(text: &'t str, label: &str) -> Option<&'t str> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| l.starts_with("---") && l.contains(&format!("BEGIN {label}")))?;
    let token = lines.find(|l| !l.is_empty())?;
    let valid = !token.starts_with("---")
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    valid.then_some(token)
}

/// `prefix` followed by an id of `[a-f0-9-]+` and a dot: the id.
fn id_after<'s>(entry: &'s str, prefix: &str) -> Option<&'s str> {
    let rest = entry.strip_prefix(prefix)?;
    let end = rest.find(|c: char| !(c.is_ascii_digit() || ('a'..='f').contains(&c) || c == '-'))?;
    (end > 0 && rest[end..].starts_with('.')).then(|| &rest[..end])
}

impl SessionCreds {
    /// Read a decorated `.creds` text. The seed must be there (it signs the connection); the
    /// JWT's claims must name the server and at least one company.
    pub fn parse(text: &str) -> Result<SessionCreds, CredsError> {
        let jwt = block(text, "NATS USER JWT").ok_or(CredsError::NoJwt)?;
        block(text, "USER NKEY SEED").ok_or(CredsError::NoSeed)?;
        let mut parts = jwt.split('.');
        let (Some(_header), Some(claims), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CredsError::BadJwt { why: "not three dot-separated parts" });
        };
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims.trim_end_matches('='))
            .map_err(|_| CredsError::BadJwt { why: "its claims are not base64url" })?;
        let claims: Claims = serde_json::from_slice(&json)
            .map_err(|_| CredsError::BadJwt { why: "its claims are not the JSON of a NATS user" })?;
        let server_id = claims.name.filter(|n| !n.trim().is_empty()).ok_or(CredsError::NoServerId)?;
        let nats = claims.nats.unwrap_or_default();
        let subscribe = nats.sub.unwrap_or_default().allow.unwrap_or_default();
        let mut company_ids: Vec<String> = Vec::new();
        let mut session_id = None;
        for entry in &subscribe {
            if let Some(company) = id_after(entry, "dbchange.*.*.") {
                if !company_ids.iter().any(|c| c == company) {
                    company_ids.push(company.to_owned());
                }
            } else if let Some(session) = id_after(entry, "eds.notify.") {
                session_id.get_or_insert_with(|| session.to_owned());
            }
        }
        if company_ids.is_empty() {
            return Err(CredsError::NoCompanyIds);
        }
        Ok(SessionCreds {
            server_id,
            company_ids,
            session_id,
            publish: nats.publish.unwrap_or_default(),
            text: text.to_owned(),
        })
    }

    /// Read the `credential` of HQ's session start: standard base64 of a `.creds` file.
    pub fn from_base64(credential: &str) -> Result<SessionCreds, CredsError> {
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(credential.trim()).map_err(|_| CredsError::NotBase64)?;
        let text = String::from_utf8(bytes).map_err(|_| CredsError::NotBase64)?;
        SessionCreds::parse(&text)
    }

    /// Whether the credentials allow publishing to `subject` (a request to a JetStream API
    /// subject is a publish).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.allows(subject)
    }

    /// The credentials as ingest takes them: the text, and whether they allow reading the
    /// stream's info (HQ's session credentials do not).
    pub fn for_ingest(&self) -> crate::ingest::NatsCredentials {
        let info = format!("$JS.API.STREAM.INFO.{}", crate::ingest::consumer::STREAM);
        crate::ingest::NatsCredentials::new(self.text.clone(), self.may_publish(&info))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A decorated creds text around an (unsigned) JWT with these claims.
    pub(crate) fn creds_text(claims: &serde_json::Value) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = format!(
            "{}.{}.{}",
            b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
            b64(claims.to_string().as_bytes()),
            b64(b"signature")
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\nSUASECRETSEEDSECRETSEED\n------END USER NKEY SEED------\n"
        )
    }

    /// Claims as HQ's e2e mock issues them.
    pub(crate) fn hq_claims(server_id: &str, session: &str, companies: &[&str]) -> serde_json::Value {
        let mut sub: Vec<String> = companies.iter().map(|c| format!("dbchange.*.*.{c}.*.PUBLIC.>")).collect();
        sub.push(format!("eds.notify.{session}.>"));
        sub.push("_INBOX.>".into());
        serde_json::json!({
            "jti": "X", "iat": 1, "iss": "AISSUER", "sub": "USUBJECT", "name": server_id,
            "nats": {
                "pub": {"allow": ["$JS.API.STREAM.NAMES", "$JS.ACK.dbchange.>", "$JS.API.CONSUMER.MSG.NEXT.dbchange.>",
                    "$JS.API.STREAM.CREATE.dbchange", "$JS.API.CONSUMER.>", format!("eds.client.{session}.>"),
                    "_INBOX.>", "dbchange.>"]},
                "sub": {"allow": sub},
                "type": "user", "version": 2
            }
        })
    }

    const SESSION: &str = "4641e7c5-0f86-4576-89ca-15db401aea56";

    #[test]
    fn reads_server_companies_and_session_as_eds() {
        let text = creds_text(&hq_claims("1", SESSION, &["1234567890", "abc-def", "1234567890"]));
        let c = SessionCreds::parse(&text).unwrap();
        assert_eq!(c.server_id, "1");
        assert_eq!(c.company_ids, ["1234567890", "abc-def"]);
        assert_eq!(c.session_id.as_deref(), Some(SESSION));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        assert_eq!(SessionCreds::from_base64(&b64).unwrap().company_ids, c.company_ids);
    }

    #[test]
    fn knows_what_it_may_publish() {
        let c = SessionCreds::parse(&creds_text(&hq_claims("1", SESSION, &["c0ffee"]))).unwrap();
        assert!(c.may_publish("$JS.API.CONSUMER.INFO.dbchange.eds-1"));
        assert!(c.may_publish("$JS.API.CONSUMER.MSG.NEXT.dbchange.eds-1"));
        assert!(c.may_publish("$JS.ACK.dbchange.eds-1.1.2.3.4.5"));
        assert!(c.may_publish(&format!("eds.client.{SESSION}.heartbeat")));
        assert!(!c.may_publish("$JS.API.STREAM.INFO.dbchange"));
        assert!(!c.may_publish("eds.client.other.heartbeat"));
        assert!(!c.may_publish("$JS.API.STREAM.NAMES.x"), "no wildcard, no extra token");
        assert!(!c.for_ingest().stream_info_allowed);
        // No publish permissions at all: everything is allowed; a deny still denies.
        let mut claims = hq_claims("1", SESSION, &["c0ffee"]);
        claims["nats"]["pub"] = serde_json::json!({"deny": ["$JS.API.STREAM.DELETE.>"]});
        let open = SessionCreds::parse(&creds_text(&claims)).unwrap();
        assert!(open.may_publish("$JS.API.STREAM.INFO.dbchange"));
        assert!(!open.may_publish("$JS.API.STREAM.DELETE.dbchange"));
        assert!(open.for_ingest().stream_info_allowed);
    }

    #[test]
    fn subjects_match_as_nats_matches_them() {
        for (p, s, m) in [
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.b", "a.b", true),
            ("a.b", "a.bb", false),
            (">", "x", true),
        ] {
            assert_eq!(subject_matches(p, s), m, "{p} ~ {s}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let text = creds_text(&hq_claims("1", SESSION, &["c0ffee"]));
        let c = SessionCreds::parse(&text).unwrap();
        let shown = format!("{c:?} {:?}", c.for_ingest());
        assert!(!shown.contains("SUASECRET") && !shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("c0ffee"), "{shown}");
    }

    #[test]
    fn hostile_or_malformed_input_is_an_error_never_a_panic() {
        let good = hq_claims("1", SESSION, &["c0ffee"]);
        let jwt_of = |text: &str| block(text, "NATS USER JWT").unwrap().to_owned();
        let with_jwt = |jwt: &str| creds_text(&good).replace(&jwt_of(&creds_text(&good)), jwt);
        let cases: Vec<(String, CredsError)> = vec![
            (String::new(), CredsError::NoJwt),
            ("garbage\n\u{0}\u{fffd}".into(), CredsError::NoJwt),
            ("-----BEGIN NATS USER JWT-----\n".into(), CredsError::NoJwt),
            ("-----BEGIN NATS USER JWT-----\n------END NATS USER JWT------\n".into(), CredsError::NoJwt),
            (creds_text(&good).replace("SUASECRETSEEDSECRETSEED", ""), CredsError::NoSeed),
            (with_jwt("onlyonepart"), CredsError::BadJwt { why: "not three dot-separated parts" }),
            (with_jwt("a.b.c.d"), CredsError::BadJwt { why: "not three dot-separated parts" }),
            (with_jwt("a.x.c"), CredsError::BadJwt { why: "its claims are not base64url" }),
            (with_jwt("a.!!!.c"), CredsError::NoJwt),
            (with_jwt("a.bm90IGpzb24.c"), CredsError::BadJwt { why: "its claims are not the JSON of a NATS user" }),
            (
                creds_text(&serde_json::json!({"nats": {"sub": {"allow": 5}}, "name": "1"})),
                CredsError::BadJwt { why: "its claims are not the JSON of a NATS user" },
            ),
            (
                creds_text(&serde_json::json!([1, 2])),
                CredsError::BadJwt { why: "its claims are not the JSON of a NATS user" },
            ),
            (creds_text(&serde_json::json!({"nats": {}})), CredsError::NoServerId),
            (creds_text(&serde_json::json!({"name": " ", "nats": {}})), CredsError::NoServerId),
            (creds_text(&serde_json::json!({"name": "1"})), CredsError::NoCompanyIds),
            (creds_text(&serde_json::json!({"name": "1", "nats": {"sub": {}}})), CredsError::NoCompanyIds),
            (creds_text(&serde_json::json!({"name": "1", "nats": {"sub": {"allow": null}}})), CredsError::NoCompanyIds),
            (
                creds_text(
                    &serde_json::json!({"name": "1", "nats": {"sub": {"allow": ["dbchange.*.*.XYZ.*.PUBLIC.>", "dbchange.*.*.", "dbchange.*.*.abc"]}}}),
                ),
                CredsError::NoCompanyIds,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(SessionCreds::parse(&text).unwrap_err(), want, "{text:?}");
        }
        assert_eq!(SessionCreds::from_base64("not base64!").unwrap_err(), CredsError::NotBase64);
        assert_eq!(SessionCreds::from_base64("//79").unwrap_err(), CredsError::NotBase64, "not UTF-8");
        // Every error message is free of the secret.
        let e = SessionCreds::parse(&with_jwt("a.x.c")).unwrap_err().to_string();
        assert!(!e.contains("SUASECRET"), "{e}");
    }
}
