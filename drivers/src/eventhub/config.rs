//! URL and self-description of the Azure Event Hubs destination.
//!
//! `eventhub://<namespace host>/;SharedAccessKeyName=<policy>;SharedAccessKey=<key>;EntityPath=<hub>`
//! as EDS had it: the connection string is `Endpoint=sb://` followed by everything after
//! `eventhub://` (taken as it is, without percent-decoding, so a key's `+`, `/` and `=` stay). A
//! `SharedAccessSignature=<token>` may stand instead of the key name and key. eds's own options
//! follow a `?` (no connection string holds one): `timeout`, and `endpoint` — an AMQP address the
//! client dials instead of the namespace (`amqp://host:port` without TLS, `amqps://host:port`
//! with), while the namespace stays the audience of its tokens: a proxy, or the test double.
//! eds's own parameters (`name`, `start`, `overflow`, `eds-…`) are ignored here, any other is an
//! error naming it. Errors never print a key or a signature: every URL in them goes through
//! [`redact`].

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
use crate::url::{is_eds_param, redact};
use std::time::Duration;

/// What the Event Hubs destination says about itself.
pub const DESCRIPTION: Description = Description {
    name: "Microsoft Azure EventHub",
    scheme: "eventhub",
    aliases: &[],
    example_url:
        "eventhub://my-namespace.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=<key>;EntityPath=my-eventhub",
    help: "Publishes every change event, exactly as received, to an Azure Event Hub. \
The URL is eventhub:// followed by the hub's connection string without its Endpoint=sb:// \
(SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature, and EntityPath naming the hub). \
Each event is one message: body the event's JSON, message id the event id, content type application/json, \
partition key <table>.<companyId|NONE>.<locationId|NONE>.<primary key> (company and location of the row), \
properties objectId dbchange.<table>.<operation>.<companyId|NONE>.<locationId|NONE>.<primary key> and eds-lsn, \
the event's position in eds's log, the same on every replay, so consumers can drop duplicates \
(delivery is at least once). The events of a write are grouped by partition key (log order kept within a key) \
into batches sized by the hub's maximum message size; an event bigger than that is dead-lettered. \
Options after a ?: timeout=30s (how long a batch may take to be accepted), \
endpoint=amqps://host:port (dial a proxy or another address instead of the namespace).",
    fields: &[ConfigField {
        name: "Connection String",
        kind: FieldKind::Password,
        required: true,
        default: None,
        help: "the Event Hub's connection string, Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=…",
    }],
    kind: Kind::Stream,
    needs_schema: false,
};

/// How long a batch may take to be accepted by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client proves it may send.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A shared access policy's name and key: the client signs its own tokens.
    Key {
        /// The policy's name (`SharedAccessKeyName`).
        name: String,
        /// The key (never printed: see the `Debug` implementation).
        key: String,
    },
    /// A ready-made `SharedAccessSignature sr=…&sig=…&se=…&skn=…` (cannot be renewed).
    Signature(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Key { name, .. } => f.debug_struct("Key").field("name", name).field("key", &"***").finish(),
            Credential::Signature(_) => f.write_str("Signature(***)"),
        }
    }
}

/// A parsed `eventhub://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubConfig {
    /// The namespace's host, `<namespace>.servicebus.windows.net`.
    pub namespace: String,
    /// The Event Hub (`EntityPath`).
    pub hub: String,
    /// The key or the signature.
    pub credential: Credential,
    /// The AMQP address dialled instead of the namespace (`amqp://` or `amqps://`), if any.
    pub endpoint: Option<String>,
    /// How long a batch may take to be accepted, and the connection to be made.
    pub timeout: Duration,
}

impl EventHubConfig {
    /// The connection string the client is given (holds the secret: never print it).
    pub fn connection_string(&self) -> String {
        let credential = match &self.credential {
            Credential::Key { name, key } => format!("SharedAccessKeyName={name};SharedAccessKey={key}"),
            Credential::Signature(sig) => format!("SharedAccessSignature={sig}"),
        };
        format!("Endpoint=sb://{}/;{credential};EntityPath={}", self.namespace, self.hub)
    }

    /// Where the client connects: the endpoint option, or the namespace over TLS.
    pub fn address(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| format!("amqps://{}", self.namespace))
    }
}

fn config_error(url: &str, problem: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("invalid Event Hubs URL {}: {problem}", redact(url)))
}

/// `30s`, `500ms`, `2m`, or a number of seconds.
fn parse_duration(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (n, unit) = value.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// An `amqp://host:port` or `amqps://host[:port]` address, checked.
fn endpoint(url: &str, value: &str) -> Result<String, DriverError> {
    let bad = |why: &str| config_error(url, format!("endpoint={value:?}: {why}"));
    let (scheme, rest) =
        value.split_once("://").ok_or_else(|| bad("expected amqp://host:port or amqps://host:port"))?;
    if !scheme.eq_ignore_ascii_case("amqp") && !scheme.eq_ignore_ascii_case("amqps") {
        return Err(bad("the scheme must be amqp:// (no TLS) or amqps:// (TLS)"));
    }
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains(['/', '?', '#', '@']) {
        return Err(bad("expected only a host and a port"));
    }
    if let Some((_, port)) = hostport.rsplit_once(':').filter(|(h, _)| !h.ends_with(']') || hostport.starts_with('[')) {
        if !port.is_empty() && port.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            return Err(bad("the port is not a port number"));
        }
    }
    Ok(format!("{}://{hostport}", scheme.to_ascii_lowercase()))
}

/// Parse an `eventhub://` URL (see the module documentation).
pub fn parse(url: &str) -> Result<EventHubConfig, DriverError> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("eventhub") => rest,
        _ => return Err(config_error(url, "the scheme must be eventhub://")),
    };
    let (connection, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, params) = connection.split_once('/').unwrap_or((connection, ""));
    if host.is_empty() || host.contains(['@', ';']) {
        return Err(config_error(
            url,
            "no namespace host (eventhub://<namespace>.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=<hub>)",
        ));
    }
    let (mut key_name, mut key, mut signature, mut hub) = (None, None, None, None);
    for part in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            // A secret may stand here (a key without its name): neither the part nor the URL,
            // which holds it unmasked, is printed.
            return Err(DriverError::new(
                ErrorClass::Config,
                format!(
                    "invalid Event Hubs URL for {host}: a part of the connection string is not Name=value \
                     (the URL is not printed: the part may be a key)"
                ),
            ));
        };
        if v.is_empty() {
            return Err(config_error(url, format!("{k} is empty")));
        }
        match k.to_ascii_lowercase().as_str() {
            "sharedaccesskeyname" => key_name = Some(v.to_owned()),
            "sharedaccesskey" => key = Some(v.to_owned()),
            "sharedaccesssignature" => signature = Some(v.to_owned()),
            "entitypath" => hub = Some(v.to_owned()),
            "endpoint" => return Err(config_error(url, "Endpoint is given by eventhub://<host>, not in the path")),
            _ => {
                return Err(config_error(
                    url,
                    format!(
                        "unknown connection string part {k:?} (known: SharedAccessKeyName, SharedAccessKey, SharedAccessSignature, EntityPath)"
                    ),
                ))
            }
        }
    }
    let hub = hub.ok_or_else(|| config_error(url, "no EntityPath: it names the Event Hub (…;EntityPath=<hub>)"))?;
    // Event Hubs' own rule for names.
    if hub.len() > 256 || !hub.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(config_error(
            url,
            format!("EntityPath {hub:?} is not an Event Hub name (letters, digits, `.`, `_`, `-`; at most 256)"),
        ));
    }
    let credential = match (key_name, key, signature) {
        (Some(name), Some(key), None) => Credential::Key { name, key },
        (None, None, Some(sig)) if sig.starts_with("SharedAccessSignature ") => Credential::Signature(sig),
        (None, None, Some(_)) => {
            return Err(config_error(url, "SharedAccessSignature must start with \"SharedAccessSignature \""))
        }
        (Some(_), None, _) => return Err(config_error(url, "SharedAccessKeyName without a SharedAccessKey")),
        (None, Some(_), _) => return Err(config_error(url, "SharedAccessKey without a SharedAccessKeyName")),
        (Some(_), Some(_), Some(_)) => {
            return Err(config_error(url, "both a shared access key and a SharedAccessSignature: give one"))
        }
        (None, None, None) => {
            return Err(config_error(
                url,
                "no credential: give SharedAccessKeyName and SharedAccessKey, or SharedAccessSignature",
            ))
        }
    };
    let mut config =
        EventHubConfig { namespace: host.to_owned(), hub, credential, endpoint: None, timeout: DEFAULT_TIMEOUT };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if is_eds_param(key) {
            continue;
        }
        let value = crate::url::percent_decode(value)
            .ok_or_else(|| config_error(url, format!("the value of {key} is badly percent-encoded")))?;
        match key {
            "timeout" => {
                // At most 50 s, below the drain's 2-minute deadline per write, so the driver's
                // error, which says what the hub did, comes first.
                config.timeout = parse_duration(&value)
                    .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(50)).contains(d))
                    .ok_or_else(|| {
                        config_error(
                            url,
                            format!("timeout={value:?}: expected a duration from 1s to 50s (30s, 1500ms)"),
                        )
                    })?
            }
            "endpoint" => config.endpoint = Some(endpoint(url, &value)?),
            _ => return Err(config_error(url, format!("unknown option {key:?} (known: timeout, endpoint)"))),
        }
    }
    Ok(config)
}
