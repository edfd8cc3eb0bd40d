//! URL and self-description of the Kafka destination.
//!
//! `kafka://[user:password@]host[:port][,host[:port]…]/topic[?option=value&…]`, port 9092 when
//! left out. Options: `tls`, `ca`, `insecure-skip-verify`, `sasl-mechanism`, `sasl-username`,
//! `sasl-password`, `timeout`, `compression`, `max-message-bytes`, `create-topic`; eds's own parameters (`name`,
//! `start`, `overflow`, `eds-…`) are ignored here, any other is an error naming it. Errors never
//! print the password: every URL in them goes through [`redact`].

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
use crate::url::{is_eds_param, percent_decode, redact};
use std::path::PathBuf;
use std::time::Duration;

/// What the Kafka destination says about itself.
pub const DESCRIPTION: Description = Description {
    name: "Kafka",
    scheme: "kafka",
    aliases: &[],
    example_url: "kafka://kafka:9092/topic",
    help: "Publishes every change event, exactly as received, to a Kafka topic. \
Key dbchange.<table>.<operation>.<companyId|NONE>.<locationId|NONE>.<event id>; \
header eds-partitionkey <table>.<companyId|NONE>.<locationId|NONE>.<primary key> chooses the partition as EDS did \
(FNV-1a of its xxhash64, modulo the topic's partitions); header eds-lsn is the event's position in eds's log, \
the same on every replay, so consumers can drop duplicates (delivery is at least once). \
Several brokers: kafka://a:9092,b:9092/topic. Options: tls=true, ca=<PEM file>, insecure-skip-verify=true, \
sasl-mechanism=PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 with sasl-username and sasl-password (or user:password@ in the URL), \
timeout=30s (how long a batch may take to be acknowledged), compression=none|lz4|snappy, \
max-message-bytes=1000000 (bigger events are dead-lettered), \
create-topic=false (a missing topic is an error instead of created by brokers that allow it).",
    fields: &[
        ConfigField {
            name: "Brokers",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "host:port of one or more brokers, comma-separated",
        },
        ConfigField {
            name: "Topic",
            kind: FieldKind::Text,
            required: true,
            default: None,
            help: "topic to publish to",
        },
        ConfigField {
            name: "Username",
            kind: FieldKind::Text,
            required: false,
            default: None,
            help: "SASL user name (with a password: SASL PLAIN unless a mechanism is given in the URL)",
        },
        ConfigField {
            name: "Password",
            kind: FieldKind::Password,
            required: false,
            default: None,
            help: "SASL password",
        },
        ConfigField {
            name: "TLS",
            kind: FieldKind::Text,
            required: false,
            default: Some("false"),
            help: "true to connect with TLS",
        },
    ],
    kind: Kind::Stream,
    needs_schema: false,
};

/// The port of a broker given without one.
pub const DEFAULT_PORT: u16 = 9092;
/// How long a batch may take to be acknowledged by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message by default (Kafka's own default for `message.max.bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// A SASL mechanism librdkafka offers without GSSAPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// User name and password in the clear (use with TLS).
    Plain,
    /// SCRAM with SHA-256.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka (and Kafka) use.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (never printed: see the `Debug` implementation).
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Compression of message batches (codecs built into librdkafka here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None (EDS's).
    None,
    /// LZ4.
    Lz4,
    /// Snappy.
    Snappy,
}

/// A parsed `kafka://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of each bootstrap broker.
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
    /// Connect with TLS.
    pub tls: bool,
    /// CA certificates (PEM) to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// Skip the broker certificate's verification (tests, self-signed brokers).
    pub insecure_skip_verify: bool,
    /// SASL credentials, if any.
    pub sasl: Option<Sasl>,
    /// How long a batch may take to be acknowledged; bounds librdkafka's `message.timeout.ms`.
    pub timeout: Duration,
    /// Batch compression.
    pub compression: Compression,
    /// The largest message (key, value and headers) sent; bigger events are dead-lettered.
    pub max_message_bytes: usize,
    /// Let brokers that allow it create a missing topic (EDS did); when off, a missing topic is a
    /// configuration error.
    pub create_topic: bool,
}

impl KafkaConfig {
    /// The `security.protocol` librdkafka is given.
    pub fn security_protocol(&self) -> &'static str {
        match (self.tls, self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }
}

fn config_error(url: &str, problem: impl std::fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("invalid Kafka URL {}: {problem}", redact(url)))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
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

/// One `host[:port]` of the broker list, with the default port when none is given.
fn broker(url: &str, text: &str) -> Result<String, DriverError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| config_error(url, format!("broker {text:?}: no `]`")))?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(config_error(url, format!("broker {text:?} has no host")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| config_error(url, format!("broker {text:?}: port {p:?} is not a port number")))?,
    };
    Ok(format!("{host}:{port}"))
}

/// Parse a `kafka://` URL (see the module documentation).
pub fn parse(url: &str) -> Result<KafkaConfig, DriverError> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("kafka") => rest,
        _ => return Err(config_error(url, "the scheme must be kafka://")),
    };
    let rest = rest.split('#').next().unwrap_or("");
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if hosts.is_empty() {
        return Err(config_error(url, "no broker (kafka://host:9092/topic)"));
    }
    let brokers = hosts.split(',').map(|b| broker(url, b)).collect::<Result<Vec<_>, _>>()?;
    let topic =
        percent_decode(path).ok_or_else(|| config_error(url, "the topic is not valid percent-encoded UTF-8"))?;
    if topic.is_empty() {
        return Err(config_error(url, "no topic: the URL's path names it (kafka://host:9092/topic)"));
    }
    // Kafka's own rule for topic names.
    if topic.len() > 249
        || topic == "."
        || topic == ".."
        || !topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(config_error(
            url,
            format!("topic {topic:?} is not a Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"),
        ));
    }
    let (mut username, mut password) = match userinfo {
        Some(u) => {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let user =
                percent_decode(user).ok_or_else(|| config_error(url, "the user name is badly percent-encoded"))?;
            let pass =
                percent_decode(pass).ok_or_else(|| config_error(url, "the password is badly percent-encoded"))?;
            (Some(user).filter(|s| !s.is_empty()), Some(pass).filter(|s| !s.is_empty()))
        }
        None => (None, None),
    };
    let mut config = KafkaConfig {
        brokers,
        topic,
        tls: false,
        ca: None,
        insecure_skip_verify: false,
        sasl: None,
        timeout: DEFAULT_TIMEOUT,
        compression: Compression::None,
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        create_topic: true,
    };
    let mut mechanism = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key =
            percent_decode(key).ok_or_else(|| config_error(url, format!("query key {key:?} is badly encoded")))?;
        if is_eds_param(&key) {
            continue;
        }
        // `+` stays a plus (as the S3 URL reads it): a password `a+b` is `a+b`.
        let value = percent_decode(raw_value)
            .ok_or_else(|| config_error(url, format!("the value of {key} is badly percent-encoded")))?;
        let bad = |what: &str| config_error(url, format!("{key}={value:?}: {what}"));
        match key.as_str() {
            "tls" => config.tls = parse_bool(&value).ok_or_else(|| bad("expected true or false"))?,
            "insecure-skip-verify" => {
                config.insecure_skip_verify = parse_bool(&value).ok_or_else(|| bad("expected true or false"))?
            }
            "create-topic" => config.create_topic = parse_bool(&value).ok_or_else(|| bad("expected true or false"))?,
            "ca" if !value.is_empty() => config.ca = Some(PathBuf::from(value)),
            "ca" => return Err(bad("expected the path of a PEM file")),
            "sasl-mechanism" => {
                mechanism = Some(match value.to_ascii_uppercase().as_str() {
                    "PLAIN" => SaslMechanism::Plain,
                    "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
                    "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
                    _ => return Err(bad("expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")),
                })
            }
            "sasl-username" => username = Some(value).filter(|s| !s.is_empty()),
            // The value is a secret: it is never part of a message.
            "sasl-password" => password = Some(value).filter(|s| !s.is_empty()),
            "timeout" => {
                config.timeout = parse_duration(&value)
                    // Below the drain's own deadline for a write (2 minutes), so the driver's
                    // error, which says what the brokers did, comes first.
                    // At most 50 s: a metadata request and a delivery, each within it, stay inside
                    // the drain's 2-minute deadline per write (past it the driver's own clean-up
                    // after a failed batch would not run).
                    .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(50)).contains(d))
                    .ok_or_else(|| bad("expected a duration from 1s to 50s (30s, 1500ms)"))?
            }
            "compression" => {
                config.compression = match value.to_ascii_lowercase().as_str() {
                    "none" => Compression::None,
                    "lz4" => Compression::Lz4,
                    "snappy" => Compression::Snappy,
                    _ => return Err(bad("expected none, lz4 or snappy")),
                }
            }
            "max-message-bytes" => {
                config.max_message_bytes = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1000..=1_000_000_000).contains(n))
                    .ok_or_else(|| bad("expected a number of bytes from 1000 to 1000000000"))?
            }
            _ => {
                return Err(config_error(
                    url,
                    format!(
                        "unknown option {key:?} (known: tls, ca, insecure-skip-verify, sasl-mechanism, sasl-username, \
                         sasl-password, timeout, compression, max-message-bytes, create-topic)"
                    ),
                ))
            }
        }
    }
    config.sasl = match (username, password, mechanism) {
        (Some(username), Some(password), mechanism) => {
            Some(Sasl { mechanism: mechanism.unwrap_or(SaslMechanism::Plain), username, password })
        }
        (None, None, None) => None,
        (None, None, Some(m)) => {
            return Err(config_error(url, format!("sasl-mechanism={} needs a user name and a password", m.as_str())))
        }
        (Some(_), None, _) => return Err(config_error(url, "a SASL user name without a password")),
        (None, Some(_), _) => return Err(config_error(url, "a SASL password without a user name")),
    };
    if (config.ca.is_some() || config.insecure_skip_verify) && !config.tls {
        return Err(config_error(url, "ca and insecure-skip-verify need tls=true"));
    }
    Ok(config)
}
