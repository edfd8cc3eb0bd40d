//! URL and self-description of the PostgreSQL destination.
//!
//! The URL is a libpq-style `postgres://` (or `postgresql://`) URL. eds adds its own defaults (port
//! 5432, `application_name=eds`, `sslmode=disable` for a server on this machine) and removes its
//! own destination options (`name`, `start`, `overflow`, anything starting with `eds-`), which the
//! drain reads, before sqlx sees the URL. Error messages never contain the password.

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
pub use crate::url::redact;
use crate::url::{is_eds_param, is_local_host};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::str::FromStr;

/// What the PostgreSQL destination says about itself.
pub static DESCRIPTION: Description = Description {
    name: "PostgreSQL",
    scheme: "postgres",
    aliases: &["postgresql"],
    example_url: "postgres://user:password@localhost:5432/database",
    help: "Keeps the current state of every table in a PostgreSQL database: inserts and updates become upserts \
(INSERT … ON CONFLICT DO UPDATE), deletes delete, one transaction per batch. Tables are created from HQ's \
schemas and only ever gain columns (never dropped, never retyped). \
Standard URL parameters such as sslmode and sslrootcert are honoured; sslmode defaults to disable for \
localhost and to prefer otherwise. Tables live in the connection's current schema (set search_path with \
options=-csearch_path%3Dname to choose another).",
    fields: &[
        ConfigField {
            name: "Database",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "database to write into",
        },
        ConfigField { name: "Username", kind: FieldKind::Text, required: false, default: None, help: "user name" },
        ConfigField { name: "Password", kind: FieldKind::Password, required: false, default: None, help: "password" },
        ConfigField {
            name: "Hostname",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "host name or address of the server",
        },
        ConfigField {
            name: "Port",
            kind: FieldKind::Number,
            required: false,
            default: Some("5432"),
            help: "TCP port of the server",
        },
    ],
    kind: Kind::State,
    needs_schema: true,
};

/// Query parameters that belong to eds's drain, not to PostgreSQL.
fn config_error(url: &str, problem: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("invalid PostgreSQL URL {}: {problem}", redact(url)))
}

/// Whether the authority part (`user:pass@host:port`) names a port.
fn authority_has_port(authority: &str) -> bool {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.strip_prefix('[') {
        // `[::1]:5432`
        Some(v6) => v6.split_once(']').map(|(_, rest)| rest).and_then(|rest| rest.strip_prefix(':')),
        None => host_port.rsplit_once(':').map(|(_, p)| p),
    };
    port.is_some_and(|p| !p.is_empty())
}

/// A URL ready for sqlx: eds's own parameters removed, and what the URL already says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CleanUrl {
    /// `postgres://…` without eds's parameters.
    pub(super) url: String,
    /// The URL names a port (authority or `port=`).
    pub(super) has_port: bool,
    /// The URL gives `sslmode`.
    pub(super) has_sslmode: bool,
    /// The URL gives `application_name`.
    pub(super) has_app_name: bool,
}

/// Checks the scheme and removes eds's own query parameters (`name`, `start`, `overflow`,
/// `eds-*`) and any fragment.
pub(super) fn clean_url(url: &str) -> Result<CleanUrl, DriverError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(config_error(url, "expected postgres://[user[:password]@]host[:port]/database"));
    };
    if !scheme.eq_ignore_ascii_case("postgres") && !scheme.eq_ignore_ascii_case("postgresql") {
        return Err(config_error(url, format!("the scheme must be postgres or postgresql, not {scheme:?}")));
    }
    let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = &base[..base.find('/').unwrap_or(base.len())];

    let mut kept: Vec<&str> = Vec::new();
    let mut clean = CleanUrl {
        url: format!("postgres://{base}"),
        has_port: authority_has_port(authority),
        has_sslmode: false,
        has_app_name: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if is_eds_param(key) {
            continue;
        }
        match key {
            "port" => clean.has_port = true,
            "sslmode" | "ssl-mode" => clean.has_sslmode = true,
            "application_name" => clean.has_app_name = true,
            _ => {}
        }
        kept.push(pair);
    }
    if !kept.is_empty() {
        clean.url.push('?');
        clean.url.push_str(&kept.join("&"));
    }
    Ok(clean)
}

/// Connection options for a `postgres://` or `postgresql://` URL.
///
/// Rules: the port defaults to 5432; `application_name` defaults to `eds`; `sslmode` defaults to
/// `disable` when the host is `localhost`, `127.0.0.1` or `::1` (a Unix socket too) and to sqlx's
/// `prefer` otherwise; `sslmode`, `sslrootcert` and the other libpq parameters sqlx knows are
/// honoured; sessions end a transaction left idle for 60 s (`idle_in_transaction_session_timeout`).
/// eds's own parameters (`name`, `start`, `overflow`, `eds-*`) are removed first. A bad
/// URL is an [`ErrorClass::Config`] error that names the problem but never the password.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DriverError> {
    let clean = clean_url(url)?;
    // sqlx's messages describe the problem (e.g. "invalid port number") without the URL.
    let mut options = PgConnectOptions::from_str(&clean.url).map_err(|e| config_error(url, e))?;
    if !clean.has_port {
        options = options.port(5432);
    }
    if !clean.has_app_name {
        options = options.application_name("eds");
    }
    if !clean.has_sslmode && (options.get_socket().is_some() || is_local_host(options.get_host())) {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    // A server-side backstop: should a connection ever be lost half-way through a batch, the
    // server ends its transaction (and frees its locks) after a minute instead of keeping it.
    Ok(options.options([("idle_in_transaction_session_timeout", "60s")]))
}
