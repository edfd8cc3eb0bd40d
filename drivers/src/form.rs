//! A destination URL from the values of a driver's configuration form (HQ's `validate`
//! notification, spec §7): the fields each driver describes in its [`Description`].
//!
//! The S3 driver takes `Bucket`, `Prefix`, `Region`, `Access Key ID`, `Secret Access Key` and
//! `Endpoint` and gives `s3://<bucket>[/<prefix>]?<options>`.
//! Database drivers take `Database`, `Username`, `Password`, `Hostname` and `Port` and give
//! `<scheme>://[user:password@]host[:port]/<database>`; the file driver takes `directory`; the
//! Kafka driver `Brokers`, `Topic`, `Username`, `Password` and `TLS`; the Event Hubs driver its
//! `Connection String` (`Endpoint=sb://…`, as EDS: `eventhub://` and what follows `://`).
//! Unlike EDS, a missing required field is a field error (EDS panicked), the user name and
//! password are percent-escaped and stay so (EDS un-escaped the finished URL), and a port that
//! arrives as a JSON number is honoured (EDS ignored it).

use crate::driver::{Description, FieldKind};
use serde_json::{Map, Value};

/// One field the form got wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name as the driver describes it.
    pub field: String,
    /// What is wrong with it.
    pub error: String,
}

/// A form value as text: strings trimmed, numbers as integers when integral, booleans as
/// `true`/`false`; empty strings and nulls count as absent.
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Some(u.to_string()),
            (_, Some(i), _) => Some(i.to_string()),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => Some(format!("{}", f as i64)),
            _ => Some(n.to_string()),
        },
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `s3://<bucket>[/<prefix>]?<options>`: EDS's S3 form (spec §7.6), but the endpoint as the
/// `endpoint=` option (EDS put it in front of the bucket, where it read as the bucket's name).
/// Options sorted by name, every part percent-escaped (`/` kept in the prefix).
fn s3_url(d: &Description, get: &mut dyn FnMut(&str) -> Option<String>) -> Option<String> {
    let bucket = get("Bucket");
    let prefix = get("Prefix");
    let options = [
        ("access-key-id", get("Access Key ID")),
        ("endpoint", get("Endpoint")),
        ("region", get("Region")),
        ("secret-access-key", get("Secret Access Key")),
    ];
    let mut url = format!("{}://{}", d.scheme, crate::url::escape_component(&bucket?));
    if let Some(p) = prefix.filter(|p| !p.trim_matches('/').is_empty()) {
        let escaped: Vec<String> = p.trim_start_matches('/').split('/').map(crate::url::escape_component).collect();
        url = format!("{url}/{}", escaped.join("/"));
    }
    let query: Vec<String> = options
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", crate::url::escape_component(v))))
        .collect();
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    Some(url)
}

/// `DATABASE[/SCHEMA]` as a URL path: each part escaped, the slash between them kept.
fn database_path(db: &str) -> String {
    db.trim().split('/').map(crate::url::escape_component).collect::<Vec<_>>().join("/")
}

/// The URL the form `values` describe for the driver `d`, or every field error found.
pub fn url_from_form(d: &Description, values: &Map<String, Value>) -> Result<String, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut get = |name: &str| -> Option<String> {
        let field = d.fields.iter().find(|f| f.name == name);
        let value = values.get(name).and_then(value_text).or_else(|| field.and_then(|f| f.default).map(str::to_owned));
        if let (Some(f), None) = (field, &value) {
            if f.required {
                errors.push(FieldError { field: name.to_owned(), error: format!("{name} is required") });
            }
        }
        if let (Some(f), Some(v)) = (field, &value) {
            if f.kind == FieldKind::Number && v.parse::<u64>().is_err() {
                errors.push(FieldError { field: name.to_owned(), error: format!("{name} must be a whole number") });
            }
        }
        value
    };
    let url = if d.scheme == "s3" {
        s3_url(d, &mut get)
    } else if d.fields.iter().any(|f| f.name == "directory") {
        get("directory").map(|dir| format!("{}://{dir}", d.scheme))
    } else if d.fields.iter().any(|f| f.name == "Connection String") {
        // Event Hubs, as EDS: the connection string must start with `Endpoint=` and contain
        // `://`; the URL is `<scheme>://` and what follows `://`.
        match get("Connection String").map(|c| c.trim().to_owned()) {
            Some(c) if c.starts_with("Endpoint=") && c.contains("://") => {
                c.split_once("://").map(|(_, rest)| format!("{}://{rest}", d.scheme))
            }
            Some(_) => {
                errors.push(FieldError {
                    field: "Connection String".to_owned(),
                    error: "the connection string must start with Endpoint= and contain :// (Endpoint=sb://…)"
                        .to_owned(),
                });
                None
            }
            None => None,
        }
    } else if d.fields.iter().any(|f| f.name == "Account") {
        // Snowflake key pair (spec §7.5): `<scheme>://<user>@<account>/<DATABASE/SCHEMA>?secret-key=<env var>`.
        let (database, user, account, secret) = (get("Database"), get("Username"), get("Account"), get("Secret"));
        match (database, user, account) {
            (Some(db), Some(u), Some(a)) => {
                let query =
                    secret.map(|s| format!("?secret-key={}", crate::url::escape_component(&s))).unwrap_or_default();
                Some(format!(
                    "{}://{}@{}/{}{query}",
                    d.scheme,
                    crate::url::escape_component(&u),
                    a.trim(),
                    database_path(&db)
                ))
            }
            _ => None,
        }
    } else if d.fields.iter().any(|f| f.name == "Brokers") {
        // Kafka: `kafka://[user:password@]host:port[,host:port…]/topic[?tls=true]`.
        let (brokers, topic, user, password, tls) =
            (get("Brokers"), get("Topic"), get("Username"), get("Password"), get("TLS"));
        let auth = match (&user, &password) {
            (Some(u), Some(p)) => format!("{}:{}@", crate::url::escape_component(u), crate::url::escape_component(p)),
            (None, None) => String::new(),
            _ => {
                errors.push(FieldError {
                    field: if user.is_none() { "Username" } else { "Password" }.to_owned(),
                    error: "a SASL user name and password go together".to_owned(),
                });
                String::new()
            }
        };
        let tls = match tls.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => "",
            Some("true") => "?tls=true",
            Some(_) => {
                errors.push(FieldError { field: "TLS".to_owned(), error: "TLS must be true or false".to_owned() });
                ""
            }
        };
        let brokers = brokers.map(|b| b.split(',').map(str::trim).collect::<Vec<_>>().join(","));
        match (brokers, topic) {
            (Some(b), Some(t)) => Some(format!("{}://{auth}{b}/{}{tls}", d.scheme, crate::url::escape_component(&t))),
            _ => None,
        }
    } else {
        let (database, user, password, host, port) =
            (get("Database"), get("Username"), get("Password"), get("Hostname"), get("Port"));
        let auth = match (user, password) {
            (Some(u), Some(p)) => format!("{}:{}@", crate::url::escape_component(&u), crate::url::escape_component(&p)),
            (Some(u), None) => format!("{}@", crate::url::escape_component(&u)),
            (None, Some(p)) => format!(":{}@", crate::url::escape_component(&p)),
            (None, None) => String::new(),
        };
        match (host, database) {
            (Some(host), Some(db)) => {
                let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                // Snowflake's DATABASE/SCHEMA keeps its slash; each part is escaped.
                let db = if d.scheme == "snowflake" { database_path(&db) } else { crate::url::escape_component(&db) };
                Some(format!("{}://{auth}{host}{port}/{db}", d.scheme))
            }
            _ => None,
        }
    };
    match url {
        Some(url) if errors.is_empty() => Ok(url),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{ConfigField, Kind};
    use serde_json::json;

    static DB: Description = Description {
        name: "Test DB",
        scheme: "postgres",
        aliases: &[],
        example_url: "postgres://u:p@h/db",
        help: "",
        fields: &[
            ConfigField { name: "Database", kind: FieldKind::Text, required: true, default: None, help: "" },
            ConfigField { name: "Username", kind: FieldKind::Text, required: false, default: None, help: "" },
            ConfigField { name: "Password", kind: FieldKind::Password, required: false, default: None, help: "" },
            ConfigField { name: "Hostname", kind: FieldKind::Text, required: true, default: None, help: "" },
            ConfigField { name: "Port", kind: FieldKind::Number, required: false, default: Some("5432"), help: "" },
        ],
        kind: Kind::State,
        needs_schema: true,
    };

    fn form(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn database_forms_become_urls_with_escaped_secrets() {
        let url = url_from_form(
            &DB,
            &form(json!({"Database": "shop", "Username": "me", "Password": "p@ss:/%20", "Hostname": "db.local", "Port": 6432.0})),
        )
        .unwrap();
        assert_eq!(url, "postgres://me:p%40ss%3A%2F%2520@db.local:6432/shop");
        let url = url_from_form(&DB, &form(json!({"Database": "shop", "Hostname": "::1"}))).unwrap();
        assert_eq!(url, "postgres://[::1]:5432/shop");
    }

    #[test]
    fn missing_and_bad_fields_are_named_never_a_panic() {
        let errors = url_from_form(&DB, &form(json!({"Port": "x"}))).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["Database", "Hostname", "Port"], "{errors:?}");
        assert!(url_from_form(&DB, &form(json!({"Database": null, "Hostname": ""}))).is_err());
        assert!(url_from_form(&DB, &Map::new()).is_err());
    }
}
