//! URL and self-description of the SQL Server destination.
//!
//! The URL is EDS's `sqlserver://user:password@host:1433/database` (alias `mssql`). eds adds its
//! defaults (port 1433, app name `eds`, no encryption for a server on this machine and required
//! encryption otherwise) and removes its own destination options (`name`, `start`, `overflow`,
//! anything starting with `eds-`), which the drain reads. Error messages never contain the
//! password.

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
pub use crate::url::redact;
use crate::url::{is_eds_param, is_local_host, percent_decode};
use tiberius::{AuthMethod, Config, EncryptionLevel};

/// What the SQL Server destination says about itself.
pub static DESCRIPTION: Description = Description {
    name: "Microsoft SQL Server",
    scheme: "sqlserver",
    aliases: &["mssql"],
    example_url: "sqlserver://user:password@localhost:1433/database",
    help: "Keeps the current state of every table in a Microsoft SQL Server database: each batch is loaded into a \
temporary table and applied with one MERGE … WITH (HOLDLOCK) per table and column set plus deletes by primary key, \
in one transaction. Tables are created from HQ's schemas (in the login's default schema) and only ever gain columns \
(never dropped, never retyped). SQL Server authentication (user and password). URL parameters: encrypt=disable|false|true \
(default: disable for localhost, true otherwise), trustServerCertificate=true, certificate=<CA file>, app name=<name> \
(default eds), database=<name> (when the path gives none).",
    fields: &[
        ConfigField {
            name: "Database",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "database to write into",
        },
        ConfigField { name: "Username", kind: FieldKind::Text, required: true, default: None, help: "user name" },
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
            default: Some("1433"),
            help: "TCP port of the server",
        },
    ],
    kind: Kind::State,
    needs_schema: true,
};

/// The default TCP port of SQL Server.
pub const DEFAULT_PORT: u16 = 1433;

/// How the connection is encrypted (go-mssqldb's `encrypt` values, which EDS passes through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// `encrypt=disable`: no TLS at all (tiberius `NotSupported`). The default for localhost.
    Disable,
    /// `encrypt=false`: only the login packet is encrypted (tiberius `Off`).
    LoginOnly,
    /// `encrypt=true`: everything is encrypted, or the connection fails (tiberius `Required`). The
    /// default for any other host.
    Required,
}

/// How the server's certificate is checked when the connection is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Against the system's root certificates.
    System,
    /// Any certificate (`trustServerCertificate=true`).
    Any,
    /// Against this CA file (`certificate=<path>`).
    CaFile(String),
}

/// Everything needed to open a connection, read from the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectSpec {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database; `None` uses the login's default database.
    pub database: Option<String>,
    /// SQL Server login.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Application name reported to the server.
    pub app_name: String,
    /// Encryption.
    pub encryption: Encryption,
    /// Certificate check.
    pub trust: Trust,
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("app_name", &self.app_name)
            .field("encryption", &self.encryption)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ConnectSpec {
    /// The tiberius configuration for this spec, connecting to `host:port` (the spec's own, or
    /// where the server routed the client).
    pub fn tiberius_config(&self, host: &str, port: u16) -> Config {
        let mut config = Config::new();
        config.host(host);
        config.port(port);
        if let Some(db) = &self.database {
            config.database(db);
        }
        config.application_name(&self.app_name);
        config.authentication(AuthMethod::sql_server(&self.user, &self.password));
        config.encryption(match self.encryption {
            Encryption::Disable => EncryptionLevel::NotSupported,
            Encryption::LoginOnly => EncryptionLevel::Off,
            Encryption::Required => EncryptionLevel::Required,
        });
        // trust_cert and trust_cert_ca panic when both are set; the URL parser allows only one.
        match &self.trust {
            Trust::System => {}
            Trust::Any => config.trust_cert(),
            Trust::CaFile(path) => config.trust_cert_ca(path),
        }
        config
    }
}

/// Query parameters that belong to eds's drain, not to SQL Server.
fn config_error(url: &str, problem: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("invalid SQL Server URL {}: {problem}", redact(url)))
}

/// A query parameter's key or value: `+` is a space there, then percent-decoding.
fn decode_query_part(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " "))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Parameters go-mssqldb knows that eds accepts but does not act on (timeouts and tuning that
/// tiberius does not offer), so existing EDS URLs keep working.
fn is_ignored_param(key: &str) -> bool {
    matches!(key, "connection timeout" | "dial timeout" | "keepalive" | "packet size" | "log")
}

/// Reads a `sqlserver://` or `mssql://` URL.
///
/// Rules: the port defaults to 1433; the database comes from the path (else `database=`); the app
/// name defaults to `eds` (`app name=`); `encrypt` defaults to `disable` when the host is
/// `localhost`, `127.0.0.1` or `::1` and to `true` otherwise; `trustServerCertificate=true` accepts
/// any server certificate and `certificate=<file>` a certificate signed by that CA. eds's own
/// parameters (`name`, `start`, `overflow`, `eds-*`) are removed first. Parameter names are
/// case-insensitive. A bad URL, an unknown parameter, a missing user name, a named instance
/// (`host\instance`) or `encrypt=strict` (TDS 8, which tiberius does not speak) is an
/// [`ErrorClass::Config`] error that names the problem but never the password.
pub fn connect_spec(url: &str) -> Result<ConnectSpec, DriverError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(config_error(url, "expected sqlserver://user:password@host[:port]/database"));
    };
    if !scheme.eq_ignore_ascii_case("sqlserver") && !scheme.eq_ignore_ascii_case("mssql") {
        return Err(config_error(url, format!("the scheme must be sqlserver or mssql, not {scheme:?}")));
    }
    let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = base.split_once('/').unwrap_or((base, ""));
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            let user = percent_decode(user).ok_or_else(|| config_error(url, "the user name is not well escaped"))?;
            let password =
                percent_decode(password).ok_or_else(|| config_error(url, "the password is not well escaped"))?;
            (user, password)
        }
        None => (String::new(), String::new()),
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or_else(|| config_error(url, "unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    let host = percent_decode(host).ok_or_else(|| config_error(url, "the host is not well escaped"))?;
    if host.is_empty() {
        return Err(config_error(url, "no host"));
    }
    if host.contains('\\') {
        return Err(config_error(url, "named instances (host\\instance) are not supported: give the instance's port"));
    }
    let port = match port.filter(|p| !p.is_empty()) {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(config_error(url, format!("invalid port {p:?}"))),
        },
    };
    let path = percent_decode(path.trim_end_matches('/'))
        .ok_or_else(|| config_error(url, "the database name is not well escaped"))?;
    if path.contains('/') {
        return Err(config_error(url, "the path must be just the database name"));
    }

    let mut spec = ConnectSpec {
        encryption: if is_local_host(&host) { Encryption::Disable } else { Encryption::Required },
        host,
        port,
        database: Some(path).filter(|p| !p.is_empty()),
        user,
        password,
        app_name: "eds".to_owned(),
        trust: Trust::System,
    };
    let mut trust_any = false;
    let mut ca_file = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode_query_part(raw_key)
            .ok_or_else(|| config_error(url, format!("parameter {raw_key:?} is not well escaped")))?
            .to_ascii_lowercase();
        if is_eds_param(&key) || is_ignored_param(&key) {
            continue;
        }
        let value = decode_query_part(raw_value)
            .ok_or_else(|| config_error(url, format!("the value of {key:?} is not well escaped")))?;
        match key.as_str() {
            "encrypt" => {
                spec.encryption = match value.to_ascii_lowercase().as_str() {
                    "disable" => Encryption::Disable,
                    "false" | "no" | "0" | "optional" => Encryption::LoginOnly,
                    "true" | "yes" | "1" | "mandatory" => Encryption::Required,
                    "strict" => return Err(config_error(url, "encrypt=strict (TDS 8) is not supported")),
                    other => return Err(config_error(url, format!("encrypt must be disable, false or true, not {other:?}"))),
                }
            }
            "trustservercertificate" => {
                trust_any = parse_bool(&value).ok_or_else(|| {
                    config_error(url, format!("trustServerCertificate must be true or false, not {value:?}"))
                })?;
            }
            "certificate" | "trustservercertificateca" => ca_file = Some(value).filter(|v| !v.is_empty()),
            "app name" | "appname" | "application name" => spec.app_name = value,
            "database" => {
                if spec.database.is_none() {
                    spec.database = Some(value).filter(|v| !v.is_empty());
                }
            }
            other => {
                return Err(config_error(
                    url,
                    format!(
                        "unknown parameter {other:?} (known: encrypt, trustServerCertificate, certificate, app name, database)"
                    ),
                ))
            }
        }
    }
    spec.trust = match (trust_any, ca_file) {
        (true, Some(_)) => {
            return Err(config_error(url, "give either trustServerCertificate=true or certificate, not both"))
        }
        (true, None) => Trust::Any,
        (false, Some(path)) => Trust::CaFile(path),
        (false, None) => Trust::System,
    };
    if spec.user.is_empty() {
        return Err(config_error(url, "no user name (eds signs in with SQL Server authentication)"));
    }
    Ok(spec)
}
