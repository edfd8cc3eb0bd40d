//! URL and self-description of the S3 destination.
//!
//! `s3://<bucket>[/<prefix>][?<options>]` (EDS's form, spec §7.6), plus what EDS lacked: any
//! S3-compatible store through `endpoint=`, path-style addressing as an option, the standard AWS
//! credential chain when no keys are given, and options for parallelism, format and deadlines.
//! Parsing reads the environment only through the lookup function it is given, so tests never
//! set process environment variables.

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
use crate::url::{is_eds_param, is_local_host, percent_decode, redact};
use std::fmt;
use std::time::Duration;

/// What the S3 destination says about itself.
pub const DESCRIPTION: Description = Description {
    name: "AWS S3",
    scheme: "s3",
    aliases: &[],
    example_url: "s3://bucket/folder?region=us-west-2&access-key-id=AKIA…&secret-access-key=…",
    help: "Writes every change event, exactly as received, as an object <prefix><table>/<unix seconds>-<primary key>.json \
(Content-Type application/json) in an S3 bucket. \
Objects are created only if absent (If-None-Match): a second event for the same key in the same second goes to \
<unix seconds>-<primary key>+<lsn>.json, and a replay writes nothing new. \
Options: region (else AWS_REGION, AWS_DEFAULT_REGION, us-west-2); access-key-id, secret-access-key, session-token \
(else AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, else the standard AWS credential chain: \
profile, web identity, ECS, EC2 instance metadata); endpoint=https://host[:port] for any S3-compatible store \
(MinIO, Ceph, R2) with path-style=true|false (default true with an endpoint); upload-tasks (parallel uploads, \
default 16); timeout (per call, default 30s); format=ndjson for one object per batch, \
<prefix><first lsn>-<last lsn>.ndjson, one event per line. \
s3://localhost:9000/bucket and s3://127.0.0.1:9000/bucket mean endpoint http://host:port and the first path \
segment as the bucket (EDS's LocalStack form); a host with googleapis.com means Google Cloud Storage.",
    fields: &[
        ConfigField { name: "Bucket", kind: FieldKind::Text, required: true, default: None, help: "bucket name" },
        ConfigField {
            name: "Prefix",
            kind: FieldKind::Text,
            required: false,
            default: None,
            help: "folder within the bucket for the objects",
        },
        ConfigField {
            name: "Region",
            kind: FieldKind::Text,
            required: false,
            default: None,
            help: "AWS region (else AWS_REGION, AWS_DEFAULT_REGION, us-west-2)",
        },
        ConfigField {
            name: "Access Key ID",
            kind: FieldKind::Password,
            required: false,
            default: None,
            help: "access key id (else the AWS credential chain)",
        },
        ConfigField {
            name: "Secret Access Key",
            kind: FieldKind::Password,
            required: false,
            default: None,
            help: "secret access key",
        },
        ConfigField {
            name: "Endpoint",
            kind: FieldKind::Text,
            required: false,
            default: None,
            help: "URL of an S3-compatible store (MinIO, Ceph, R2), e.g. https://minio.local:9000",
        },
    ],
    kind: Kind::Stream,
    needs_schema: false,
};

/// Parallel uploads when the URL does not say.
pub const DEFAULT_UPLOAD_TASKS: usize = 16;
/// Deadline of one S3 call when the URL does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The region when neither the URL nor the environment names one (EDS's).
pub const DEFAULT_REGION: &str = "us-west-2";
/// Google Cloud Storage's S3-compatible (XML API) endpoint.
pub const GCS_ENDPOINT: &str = "https://storage.googleapis.com";

/// How events become objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One object per event (EDS's layout).
    Json,
    /// One object per batch, one event per line.
    Ndjson,
}

/// Which store the URL addresses, for what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// AWS S3 (virtual-hosted addressing unless `path-style=true`).
    Aws,
    /// An S3-compatible store at `endpoint=` (or EDS's localhost form).
    Compatible,
    /// Google Cloud Storage through its XML API: region `auto`, checksums only when required.
    Gcs,
}

/// Static credentials from the URL or the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// `access-key-id`.
    pub access_key_id: String,
    /// `secret-access-key`.
    pub secret_access_key: String,
    /// `session-token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").field("access_key_id", &"***").field("secret_access_key", &"***").finish()
    }
}

/// Everything an `s3://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix: empty, or ending in `/`.
    pub prefix: String,
    /// Signing region.
    pub region: String,
    /// Which store.
    pub provider: Provider,
    /// Endpoint URL for S3-compatible stores and GCS; `None` for AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of `bucket.endpoint/key`.
    pub path_style: bool,
    /// Static keys; `None` means the standard AWS credential chain.
    pub keys: Option<Keys>,
    /// Uploads in flight at once.
    pub upload_tasks: usize,
    /// One object per event or per batch.
    pub format: Format,
    /// Deadline of one S3 call (and of each attempt).
    pub timeout: Duration,
    /// The URL with its secrets masked, for messages.
    pub redacted: String,
}

impl S3Config {
    /// `s3://bucket/prefix` (no options), for messages.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

fn config_error(url: &str, problem: impl fmt::Display) -> DriverError {
    DriverError::new(ErrorClass::Config, format!("invalid S3 URL {}: {problem}", redact(url)))
}

/// The process environment, for [`parse`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// An `s3://` URL, reading environment variables through `env` (use [`process_env`]).
pub fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<S3Config, DriverError> {
    let rest = url
        .get(..5)
        .filter(|s| s.eq_ignore_ascii_case("s3://"))
        .and_then(|_| url.get(5..))
        .ok_or_else(|| config_error(url, "it does not start with s3://"))?;
    let rest = rest.split('#').next().unwrap_or("");
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = location.split_once('/').unwrap_or((location, ""));
    let host = percent_decode(host).ok_or_else(|| config_error(url, "the bucket is not well escaped"))?;
    let path = percent_decode(path).ok_or_else(|| config_error(url, "the prefix is not well escaped"))?;

    let mut region = None;
    let mut keys = (None, None, None);
    let mut endpoint = None;
    let mut path_style = None;
    let mut upload_tasks = DEFAULT_UPLOAD_TASKS;
    let mut format = Format::Json;
    let mut timeout = DEFAULT_TIMEOUT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k).ok_or_else(|| config_error(url, format!("query key {k:?} is not well escaped")))?;
        let value =
            percent_decode(v).ok_or_else(|| config_error(url, format!("the value of {key} is not well escaped")))?;
        let value = value.trim().to_owned();
        if is_eds_param(&key) {
            continue;
        }
        match key.as_str() {
            "region" => region = Some(value).filter(|v| !v.is_empty()),
            "access-key-id" => keys.0 = Some(value).filter(|v| !v.is_empty()),
            "secret-access-key" => keys.1 = Some(value).filter(|v| !v.is_empty()),
            "session-token" => keys.2 = Some(value).filter(|v| !v.is_empty()),
            "endpoint" => endpoint = Some(value).filter(|v| !v.is_empty()),
            "path-style" => {
                path_style = Some(match value.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return Err(config_error(url, format!("path-style must be true or false, not {value:?}"))),
                })
            }
            "upload-tasks" | "uploadTasks" => {
                upload_tasks = value.parse::<usize>().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| {
                    config_error(url, format!("{key} must be a whole number from 1 to 1024, not {value:?}"))
                })?
            }
            "format" => {
                format = match value.to_ascii_lowercase().as_str() {
                    "json" => Format::Json,
                    "ndjson" => Format::Ndjson,
                    _ => return Err(config_error(url, format!("format must be json or ndjson, not {value:?}"))),
                }
            }
            "timeout" => {
                timeout = parse_duration(&value).ok_or_else(|| {
                    config_error(url, format!("timeout must be a duration such as 30s, 500ms or 2m, not {value:?}"))
                })?
            }
            // EDS's options that eds does not need (the drain retries and sizes batches).
            "max-retries" | "maxBatchSize" => {}
            _ => return Err(config_error(url, format!("unknown option {key:?}"))),
        }
    }

    // Which store, and where bucket and prefix are.
    let host_only = host.rsplit_once(':').map_or(host.as_str(), |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() {
            h
        } else {
            host.as_str()
        }
    });
    let (provider, bucket, prefix, endpoint) = if is_local_host(host_only) && endpoint.is_none() {
        // EDS's LocalStack form: s3://localhost:4566/bucket/prefix.
        let (bucket, prefix) = path.split_once('/').unwrap_or((path.as_str(), ""));
        (Provider::Compatible, bucket.to_owned(), prefix.to_owned(), Some(format!("http://{host}")))
    } else if host.contains("googleapis.com") && endpoint.is_none() {
        // EDS: s3://storage.googleapis.com/bucket/prefix.
        let (bucket, prefix) = path.split_once('/').unwrap_or((path.as_str(), ""));
        (Provider::Gcs, bucket.to_owned(), prefix.to_owned(), Some(GCS_ENDPOINT.to_owned()))
    } else {
        let provider = match &endpoint {
            Some(e) if e.contains("googleapis.com") => Provider::Gcs,
            Some(_) => Provider::Compatible,
            None => Provider::Aws,
        };
        (provider, host.clone(), path.clone(), endpoint)
    };
    if bucket.is_empty() {
        return Err(config_error(url, "it names no bucket (s3://bucket/prefix)"));
    }
    if !valid_bucket(&bucket) {
        return Err(config_error(
            url,
            format!("{bucket:?} is not a bucket name (3 to 63 lower-case letters, digits, '.', '-' and '_')"),
        ));
    }
    if let Some(e) = &endpoint {
        let ok = (e.starts_with("http://") || e.starts_with("https://"))
            && e.split_once("://").is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
        if !ok {
            return Err(config_error(url, format!("endpoint {e:?} must be an http:// or https:// URL")));
        }
    }
    let region = match provider {
        Provider::Gcs => region.unwrap_or_else(|| "auto".to_owned()),
        _ => region
            .or_else(|| env("AWS_REGION").filter(|v| !v.is_empty()))
            .or_else(|| env("AWS_DEFAULT_REGION").filter(|v| !v.is_empty()))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
    };
    if !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(config_error(url, format!("region {region:?} is not a region name (such as us-west-2)")));
    }
    let keys = match keys {
        (Some(id), Some(secret), token) => {
            Some(Keys { access_key_id: id, secret_access_key: secret, session_token: token })
        }
        (Some(_), None, _) => return Err(config_error(url, "access-key-id is given without secret-access-key")),
        (None, Some(_), _) => return Err(config_error(url, "secret-access-key is given without access-key-id")),
        (None, None, Some(_)) => return Err(config_error(url, "session-token is given without the keys")),
        (None, None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Some(Keys {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
            }),
            // The credential chain: profile, web identity, ECS, instance metadata.
            _ => None,
        },
    };
    let prefix = match prefix.trim_start_matches('/') {
        "" => String::new(),
        p if p.ends_with('/') => p.to_owned(),
        p => format!("{p}/"),
    };
    Ok(S3Config {
        bucket,
        prefix,
        region,
        path_style: path_style.unwrap_or(endpoint.is_some() && provider != Provider::Gcs),
        provider,
        endpoint,
        keys,
        upload_tasks,
        format,
        timeout,
        redacted: redact(url),
    })
}

/// S3's bucket naming rules, loosely (`_` for older buckets and other stores).
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_'))
}

/// `30s`, `500ms`, `2m`, or plain seconds; more than zero.
fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = number.parse().ok()?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}
