//! URL and self-description of the MySQL / MariaDB destination.
//!
//! The URL is `mysql://user:password@host:port/database` (or `mariadb://…`). eds adds its own
//! defaults (port 3306, `ssl-mode=DISABLED` for a server on this machine) and removes its own
//! destination options (`name`, `start`, `overflow`, anything starting with `eds-`), which the drain
//! reads, before sqlx sees the URL. Every session speaks utf8mb4 and runs in UTC with a strict
//! `sql_mode` (see [`SESSION_SQL_MODE`]), whatever the URL or the server's defaults say. Error
//! messages never contain the password.

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
pub use crate::url::redact;
use crate::url::{is_eds_param, is_local_host};
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use std::str::FromStr;

/// What the MySQL destination says about itself.
pub static DESCRIPTION: Description = Description {
    name: "MySQL",
    scheme: "mysql",
    aliases: &["mariadb"],
    example_url: "mysql://user:password@localhost:3306/database",
    help: "Keeps the current state of every table in a MySQL 8 or MariaDB database: \
inserts and updates become upserts (INSERT … ON DUPLICATE KEY UPDATE, never REPLACE), deletes delete, one \
transaction per batch. Tables are created from HQ's schemas (InnoDB, utf8mb4, date-times as DATETIME(6) in UTC) and \
only ever gain columns (never dropped, never retyped). The URL must name the database. ssl-mode (DISABLED, \
PREFERRED, REQUIRED, VERIFY_CA, VERIFY_IDENTITY) and ssl-ca are honoured; ssl-mode defaults to DISABLED for \
localhost and to PREFERRED otherwise. Sessions always use charset utf8mb4, time_zone '+00:00' and a strict \
sql_mode, whatever the URL or the server's defaults say.",
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
            default: Some("3306"),
            help: "TCP port of the server",
        },
    ],
    kind: Kind::State,
    needs_schema: true,
};

/// The `sql_mode` every session of the driver runs with, replacing the server's default: bad data
/// is an error (strict for every table, no zero dates, division by zero), never a silent
/// truncation, clamp or zero date; a missing storage engine is an error too. Without
/// `ANSI_QUOTES` (identifiers are quoted with backticks) and without `NO_BACKSLASH_ESCAPES`
/// (irrelevant: every value is a bound parameter). Every mode named here exists in MySQL 8 and
/// MariaDB.
pub const SESSION_SQL_MODE: &str =
    "STRICT_ALL_TABLES,STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// Query parameters that belong to eds's drain, not to MySQL.
fn config_error(url: &str, problem: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("invalid MySQL URL {}: {problem}", redact(url)))
}

/// A URL ready for sqlx: eds's own parameters removed, and what the URL already says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CleanUrl {
    /// `mysql://…` without eds's parameters.
    pub(super) url: String,
    /// The URL gives `ssl-mode` (or `sslmode`).
    pub(super) has_ssl_mode: bool,
}

/// Checks the scheme and removes eds's own query parameters (`name`, `start`, `overflow`,
/// `eds-*`) and any fragment. `mariadb://` becomes `mysql://`.
pub(super) fn clean_url(url: &str) -> Result<CleanUrl, DriverError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(config_error(url, "expected mysql://[user[:password]@]host[:port]/database"));
    };
    if !scheme.eq_ignore_ascii_case("mysql") && !scheme.eq_ignore_ascii_case("mariadb") {
        return Err(config_error(url, format!("the scheme must be mysql or mariadb, not {scheme:?}")));
    }
    let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut kept: Vec<&str> = Vec::new();
    let mut clean = CleanUrl { url: format!("mysql://{base}"), has_ssl_mode: false };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if is_eds_param(key) {
            continue;
        }
        if matches!(key, "ssl-mode" | "sslmode") {
            clean.has_ssl_mode = true;
        }
        kept.push(pair);
    }
    if !kept.is_empty() {
        clean.url.push('?');
        clean.url.push_str(&kept.join("&"));
    }
    Ok(clean)
}

/// Connection options for a `mysql://` or `mariadb://` URL.
///
/// Rules: the URL must name a database; the port defaults to 3306; `ssl-mode` defaults to
/// `DISABLED` when the host is `localhost`, `127.0.0.1` or `::1` (or a `socket=` path is given)
/// and to sqlx's `PREFERRED` otherwise; `ssl-mode`/`sslmode`, `ssl-ca`, `ssl-cert`, `ssl-key`,
/// `socket`, `collation` and `statement-cache-capacity` are honoured as sqlx reads them. Forced
/// whatever the URL says: charset `utf8mb4` (4-byte UTF-8 such as emoji must survive) and
/// `time_zone='+00:00'` (sqlx sets it right after connecting; TIMESTAMP columns then store and
/// return UTC). eds's own parameters (`name`, `start`, `overflow`, `eds-*`) are removed first. A bad
/// URL is an [`ErrorClass::Config`] error that names the problem but never the password.
pub fn connect_options(url: &str) -> Result<MySqlConnectOptions, DriverError> {
    let clean = clean_url(url)?;
    // sqlx's messages describe the problem (e.g. "invalid port number") without the URL.
    let mut options = MySqlConnectOptions::from_str(&clean.url).map_err(|e| config_error(url, e))?;
    if options.get_database().is_none_or(str::is_empty) {
        return Err(config_error(url, "the URL must name the database (mysql://host:3306/database)"));
    }
    options = options.charset("utf8mb4").timezone(Some("+00:00".to_owned()));
    if !clean.has_ssl_mode && (options.get_socket().is_some() || is_local_host(options.get_host())) {
        options = options.ssl_mode(MySqlSslMode::Disabled);
    }
    Ok(options)
}
