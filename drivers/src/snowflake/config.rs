//! URLs and self-descriptions of the Snowflake destinations.
//!
//! `snowflake://user:password@account/database[/schema]` (password, EDS's deprecated form) and
//! `snowflake-keypair://user@account/database/schema?secret-key=ENV_NAME` (key pair: the
//! unencrypted PKCS#8 RSA key in PEM is read from the environment variable `ENV_NAME`, or from
//! `SNOWFLAKE_SECRET_ACCESS_KEY` without `secret-key`). The account may be given as the account
//! identifier (`abcdefg-ab12345`, reached at `https://abcdefg-ab12345.snowflakecomputing.com`)
//! or as a host name with dots (`abcdefg-ab12345.snowflakecomputing.com`, or a private-link
//! host), whose first label is the account. `endpoint=http[s]://host[:port]` replaces the base
//! URL (a test double, a proxy). `warehouse=` and `role=` select them at login; `transaction=off`
//! lets every statement commit on its own; `timeout=` bounds each request (seconds, default 30); the schema
//! defaults to `PUBLIC`. eds's own parameters (`name`, `start`, `overflow`, `eds-*`) are left to
//! the drain. Messages never contain the password or the key.

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
use crate::url::{is_eds_param, percent_decode, redact};

/// The environment variable holding the private key when the URL names none (as EDS).
pub const DEFAULT_KEY_ENV: &str = "SNOWFLAKE_SECRET_ACCESS_KEY";

/// What the password-authenticated Snowflake destination says about itself.
pub static DESCRIPTION: Description = Description {
    name: "Snowflake",
    scheme: "snowflake",
    aliases: &[],
    example_url: "snowflake://user:password@account/database/schema",
    help: "Keeps the current state of every table in a Snowflake database, logging in with a user name and password \
(Snowflake deprecates password logins for service users: prefer snowflake-keypair). Inserts and updates become MERGE \
statements by primary key (an update sets only its changed columns; a row missing at the destination is inserted \
whole), deletes delete, one transaction per batch, every value a bound parameter. Tables are created from HQ's schemas \
(CREATE TABLE IF NOT EXISTS; objects and arrays as VARIANT, date-times as TIMESTAMP_NTZ in UTC) and only ever gain \
columns: never dropped or replaced. Every query carries a query tag eds-<pid>/<batch>/<changes>. Options: warehouse=, \
role=, endpoint= (another base URL), timeout= (seconds per request, default 30), transaction=off. The schema defaults to PUBLIC.",
    fields: &[
        ConfigField {
            name: "Database",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "database, or DATABASE/SCHEMA",
        },
        ConfigField { name: "Username", kind: FieldKind::Text, required: true, default: None, help: "user name" },
        ConfigField { name: "Password", kind: FieldKind::Password, required: true, default: None, help: "password" },
        ConfigField {
            name: "Hostname",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "account identifier (abcdefg-ab12345) or its host name",
        },
    ],
    kind: Kind::State,
    needs_schema: true,
};

/// What the key-pair-authenticated Snowflake destination says about itself.
pub static KEYPAIR_DESCRIPTION: Description = Description {
    name: "Snowflake Key Pair",
    scheme: "snowflake-keypair",
    aliases: &[],
    example_url: "snowflake-keypair://user@account/database/schema?secret-key=SNOWFLAKE_SECRET_ACCESS_KEY",
    help: "Keeps the current state of every table in a Snowflake database, logging in with a key pair (JWT): the \
unencrypted PKCS#8 RSA private key in PEM is read from the environment variable named by secret-key (default \
SNOWFLAKE_SECRET_ACCESS_KEY). Inserts and updates become MERGE statements by primary key (an update sets only its \
changed columns; a row missing at the destination is inserted whole), deletes delete, one transaction per batch, every \
value a bound parameter. Tables are created from HQ's schemas (CREATE TABLE IF NOT EXISTS; objects and arrays as \
VARIANT, date-times as TIMESTAMP_NTZ in UTC) and only ever gain columns: never dropped or replaced. Every query \
carries a query tag eds-<pid>/<batch>/<changes>. Options: warehouse=, role=, endpoint= (another base URL), timeout= (seconds per request, default 30), transaction=off.",
    fields: &[
        ConfigField {
            name: "Database",
            kind: FieldKind::Text,
            required: true,
            default: Some("DBNAME/SCHEMA"),
            help: "DATABASE/SCHEMA",
        },
        ConfigField { name: "Username", kind: FieldKind::Text, required: true, default: None, help: "user name" },
        ConfigField {
            name: "Account",
            kind: FieldKind::Text,
            required: true,
            default: Some("abcdefg-ab12345"),
            help: "account identifier",
        },
        ConfigField {
            name: "Secret",
            kind: FieldKind::Text,
            required: false,
            default: Some(DEFAULT_KEY_ENV),
            help: "name of the environment variable holding the private key (PEM, PKCS#8, unencrypted)",
        },
    ],
    kind: Kind::State,
    needs_schema: true,
};

/// How the driver logs in.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// User name and password.
    Password {
        /// The password.
        password: String,
    },
    /// Key pair: the private key's PEM text (read from the environment when the URL was parsed).
    KeyPair {
        /// The environment variable it came from (for messages).
        env: String,
        /// The PEM text.
        pem: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Password { .. } => f.write_str("Password(***)"),
            Auth::KeyPair { env, .. } => write!(f, "KeyPair(from ${env})"),
        }
    }
}

/// What a Snowflake URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnowflakeConfig {
    /// Base URL of the REST API, without a trailing slash (`https://<account>.snowflakecomputing.com`).
    pub base_url: String,
    /// The account identifier (upper case, as it goes into a JWT).
    pub account: String,
    /// The user name.
    pub user: String,
    /// How to log in.
    pub auth: Auth,
    /// The database.
    pub database: String,
    /// The schema (`PUBLIC` unless the URL names one).
    pub schema: String,
    /// `warehouse=`.
    pub warehouse: Option<String>,
    /// `role=`.
    pub role: Option<String>,
    /// `transaction=` (default on): a batch of several statements runs in `BEGIN` … `COMMIT`.
    /// Off, each statement commits on its own (still idempotent, so a retry converges); fakesnow
    /// needs it off, as its MERGE cannot run inside a transaction.
    pub transaction: bool,
    /// `timeout=` in seconds (default 30, at most 110): how long one request, login included, may
    /// take before it counts as failed (transient).
    pub timeout: std::time::Duration,
    /// The URL without secrets, for messages.
    pub target: String,
}

fn config_error(url: &str, problem: impl std::fmt::Display) -> DriverError {
    // The problem first: a message is masked again as a whole, and a secret-named query parameter
    // is masked to the end of the text.
    DriverError::new(ErrorClass::Config, format!("invalid Snowflake URL: {problem} (in {})", redact(url)))
}

fn decoded(url: &str, what: &str, s: &str) -> Result<String, DriverError> {
    percent_decode(s).ok_or_else(|| config_error(url, format!("the {what} has a malformed %-escape")))
}

/// Reads a `snowflake://` or `snowflake-keypair://` URL; `env` looks environment variables up
/// (the key pair's PEM). A bad URL is an [`ErrorClass::Config`] error naming the problem, never
/// the password or the key.
pub fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<SnowflakeConfig, DriverError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(config_error(url, "expected snowflake://user:password@account/database[/schema]"));
    };
    let keypair = if scheme.eq_ignore_ascii_case("snowflake") {
        false
    } else if scheme.eq_ignore_ascii_case("snowflake-keypair") {
        true
    } else {
        return Err(config_error(url, format!("the scheme must be snowflake or snowflake-keypair, not {scheme:?}")));
    };
    let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = base.split_once('/').unwrap_or((base, ""));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Err(config_error(url, "the URL must name the user (user@account)"));
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (decoded(url, "user", u)?, Some(decoded(url, "password", p)?)),
        None => (decoded(url, "user", userinfo)?, None),
    };
    if user.is_empty() {
        return Err(config_error(url, "the user name is empty"));
    }
    if host.is_empty() {
        return Err(config_error(url, "the account is empty"));
    }
    let segments: Vec<String> =
        path.split('/').filter(|s| !s.is_empty()).map(|s| decoded(url, "path", s)).collect::<Result<_, _>>()?;
    let (database, schema) = match segments.as_slice() {
        [db] if !keypair => (db.clone(), "PUBLIC".to_owned()),
        [db, schema] => (db.clone(), schema.clone()),
        [] => return Err(config_error(url, "the URL must name the database (…@account/database/schema)")),
        [_] => {
            return Err(config_error(url, "the key-pair URL must name database and schema (…@account/database/schema)"))
        }
        _ => return Err(config_error(url, "the path must be /database or /database/schema")),
    };
    let mut endpoint = None;
    let mut warehouse = None;
    let mut role = None;
    let mut key_env = None;
    let mut transaction = true;
    let mut timeout = std::time::Duration::from_secs(30);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if is_eds_param(k) {
            continue;
        }
        let v = decoded(url, k, v)?;
        match k {
            "endpoint" => endpoint = Some(v),
            "warehouse" => warehouse = Some(v),
            "role" => role = Some(v),
            "secret-key" if keypair => key_env = Some(v),
            "timeout" => match v.parse::<u64>() {
                Ok(secs) if (1..=110).contains(&secs) => timeout = std::time::Duration::from_secs(secs),
                _ => return Err(config_error(url, format!("timeout must be 1 to 110 seconds, not {v:?}"))),
            },
            "transaction" => {
                transaction = match v.to_ascii_lowercase().as_str() {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    _ => return Err(config_error(url, format!("transaction must be on or off, not {v:?}"))),
                }
            }
            // gosnowflake's own options EDS passed through: nothing eds needs.
            "application" | "client_session_keep_alive" | "authenticator" | "privateKey" => {}
            other => return Err(config_error(url, format!("unknown option {other:?}"))),
        }
    }
    let host_lc = host.to_ascii_lowercase();
    let account = host_lc.split('.').next().unwrap_or("").to_ascii_uppercase();
    let base_url = match endpoint {
        Some(e) if e.starts_with("http://") || e.starts_with("https://") => e.trim_end_matches('/').to_owned(),
        Some(e) => return Err(config_error(url, format!("endpoint must start with http:// or https://, not {e:?}"))),
        // A full host name (also private link and China's domain) as it is; an account
        // identifier, also the legacy `locator.region[.cloud]` form, gets Snowflake's domain.
        None if host_lc.ends_with(".snowflakecomputing.com") || host_lc.ends_with(".snowflakecomputing.cn") => {
            format!("https://{host_lc}")
        }
        None => format!("https://{host_lc}.snowflakecomputing.com"),
    };
    let auth = if keypair {
        if password.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(config_error(url, "a key-pair URL takes no password (user@account)"));
        }
        let name = key_env.unwrap_or_else(|| DEFAULT_KEY_ENV.to_owned());
        let pem = env(&name)
            .filter(|v| !v.trim().is_empty())
            .or_else(|| env(DEFAULT_KEY_ENV).filter(|v| !v.trim().is_empty()))
            .ok_or_else(|| {
                config_error(
                    url,
                    format!("the environment variable {name} (or {DEFAULT_KEY_ENV}) holds no private key"),
                )
            })?;
        Auth::KeyPair { env: name, pem }
    } else {
        match password {
            Some(p) if !p.is_empty() => Auth::Password { password: p },
            _ => return Err(config_error(url, "the URL must carry the password (user:password@account)")),
        }
    };
    Ok(SnowflakeConfig {
        base_url,
        account,
        user,
        auth,
        database,
        schema,
        warehouse,
        role,
        transaction,
        timeout,
        target: redact(url),
    })
}
