//! Writing events to S3: the client, the conditional uploads, and the classification of errors.
//!
//! Every object is created with `If-None-Match: *`, so nothing is ever overwritten: when the name
//! is taken (412), the object there is read back; the same bytes mean a replay (nothing to do),
//! other bytes mean another event of the same key in the same second, which goes to the
//! `+<lsn>` name the same way. Events of a batch that share a name are written one after another
//! in LSN order, so a replay finds the names it wrote before; different names are written in
//! parallel, at most `upload-tasks` at once. `write` returns `Ok` only when every object of the
//! batch is confirmed.

use super::config::{Format, Provider, S3Config, DESCRIPTION};
use crate::driver::{Batch, BoxFuture, Delivery, Description, Driver, DriverError, ErrorClass, Limits};
use crate::naming;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use futures_util::stream::{self, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The response type of the SDK's errors.
type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// The S3 destination.
pub struct S3Driver {
    config: S3Config,
    /// Built at the first call (the credential chain is asynchronous).
    client: OnceCell<Client>,
}

impl std::fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver").field("url", &self.config.redacted).finish_non_exhaustive()
    }
}

/// An S3 client for `config`: rustls on ring, the URL's region, endpoint and addressing, static
/// keys or the standard AWS credential chain, a deadline per call and per attempt, and no retries
/// of its own (the drain retries with backoff).
pub async fn client(config: &S3Config) -> Client {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http =
        aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .operation_timeout(config.timeout)
        .operation_attempt_timeout(config.timeout)
        .build();
    let region = Region::new(config.region.clone());
    let builder = match &config.keys {
        Some(keys) => aws_sdk_s3::Config::builder().behavior_version(BehaviorVersion::latest()).credentials_provider(
            Credentials::new(
                &keys.access_key_id,
                &keys.secret_access_key,
                keys.session_token.clone(),
                None,
                "eds-s3-url",
            ),
        ),
        None => {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http.clone())
                .region(region.clone())
                .timeout_config(timeouts.clone())
                .retry_config(RetryConfig::disabled())
                .load()
                .await;
            aws_sdk_s3::config::Builder::from(&shared)
        }
    };
    let mut builder = builder
        .region(region)
        .http_client(http)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::disabled())
        .force_path_style(config.path_style);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    // Checksums only when the operation requires them, except on AWS itself: S3-compatible stores
    // (MinIO, Ceph and R2 releases before the SDK's 2025 default) and GCS refuse the SDK's
    // default CRC32 trailers.
    if config.provider != Provider::Aws {
        builder = builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Client::from_conf(builder.build())
}

/// What creating an object found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    /// Written now.
    New,
    /// The name already held these bytes (a replay).
    Same,
    /// The name holds other bytes.
    Taken,
}

impl S3Driver {
    /// The driver for `config`; connects at the first call.
    pub fn new(config: S3Config) -> S3Driver {
        S3Driver { config, client: OnceCell::new() }
    }

    /// What the URL said.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| client(&self.config)).await
    }

    /// Create `key` with `body` unless it exists; when it does, compare.
    async fn create(&self, key: &str, body: &[u8]) -> Result<Created, DriverError> {
        let gcs = self.config.provider == Provider::Gcs;
        let put = self
            .client()
            .await
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .content_type("application/json")
            .if_none_match("*")
            .body(ByteStream::from(body.to_vec()))
            .customize()
            .mutate_request(move |request| {
                // GCS's XML API creates only-if-absent by generation, not by If-None-Match.
                if gcs {
                    request.headers_mut().insert("x-goog-if-generation-match", "0");
                }
            })
            .send()
            .await;
        match put {
            Ok(_) => return Ok(Created::New),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 412 => {}
            Err(e) => return Err(classify(e, &format!("writing {}", self.where_(key)), &self.config)),
        }
        let got = self.client().await.get_object().bucket(&self.config.bucket).key(key).send().await;
        let existing = match got {
            Ok(out) => out.body.collect().await.map_err(|e| {
                DriverError::caused(ErrorClass::Transient, format!("reading {} back", self.where_(key)), e)
            })?,
            Err(e) => return Err(classify(e, &format!("reading {} back", self.where_(key)), &self.config)),
        };
        Ok(if existing.into_bytes().as_ref() == body { Created::Same } else { Created::Taken })
    }

    fn where_(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    /// One event: its plain name, else its `+<lsn>` name.
    async fn write_event(&self, d: &Delivery<'_>) -> Result<(), DriverError> {
        let (folder, name) = naming::object(d.event);
        let dir = match folder.is_empty() {
            true => self.config.prefix.clone(),
            false => format!("{}{folder}/", self.config.prefix),
        };
        if self.create(&format!("{dir}{name}"), d.raw).await? != Created::Taken {
            return Ok(());
        }
        let key = format!("{dir}{}", naming::with_lsn(&name, d.lsn));
        match self.create(&key, d.raw).await? {
            Created::New | Created::Same => Ok(()),
            Created::Taken => Err(DriverError::new(
                ErrorClass::Rejected,
                format!(
                    "{} already holds another object for LSN {} (another eds data dir writing to the same prefix?); \
                     not overwritten",
                    self.where_(&key),
                    d.lsn
                ),
            )),
        }
    }

    /// Every event its object: names shared within the batch in LSN order, the rest in parallel.
    async fn write_objects(&self, events: &[Delivery<'_>]) -> Result<(), DriverError> {
        // Indices into `events` (closures over borrowed deliveries trip the compiler's `Send`
        // inference for the boxed future).
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_name: HashMap<(String, String), usize> = HashMap::new();
        for (at, d) in events.iter().enumerate() {
            let name = naming::object(d.event);
            let i = *by_name.entry(name).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            if let Some(g) = groups.get_mut(i) {
                g.push(at);
            }
        }
        // After an error only the data explains (Rejected), the rest goes on so the drain can
        // isolate that event; after any other (S3 away, access denied), no new upload starts: the
        // whole batch is retried anyway, and a black hole would otherwise cost a timeout per
        // upload.
        let halt = AtomicBool::new(false);
        let halt = &halt;
        let results: Vec<Result<(), DriverError>> = stream::iter(groups)
            .map(|group| async move {
                for d in group.into_iter().filter_map(|at| events.get(at)) {
                    if halt.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if let Err(e) = self.write_event(d).await {
                        if e.class != ErrorClass::Rejected {
                            halt.store(true, Ordering::Relaxed);
                        }
                        return Err(e);
                    }
                }
                Ok(())
            })
            .buffer_unordered(self.config.upload_tasks)
            .collect()
            .await;
        worst(results, events.len())
    }

    /// The batch as one object, one event per line, named by its first and last LSN.
    async fn write_ndjson(&self, events: &[Delivery<'_>]) -> Result<(), DriverError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(()) };
        let mut body = Vec::with_capacity(events.iter().map(|d| d.raw.len() + 1).sum());
        for d in events {
            // In valid JSON a line break can only be whitespace between tokens (inside strings it
            // is escaped), so a space in its place keeps the event and makes it one line.
            body.extend(d.raw.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
            body.push(b'\n');
        }
        let key = format!("{}{:020}-{:020}.ndjson", self.config.prefix, first.lsn, last.lsn);
        match self.create(&key, &body).await? {
            Created::New | Created::Same => Ok(()),
            Created::Taken => Err(DriverError::new(
                ErrorClass::Rejected,
                format!(
                    "{} already holds other events (another eds data dir writing to the same prefix?); not overwritten",
                    self.where_(&key)
                ),
            )),
        }
    }
}

/// The error the drain should act on when uploads of a batch failed: what an operator must fix
/// first, then what retrying fixes, then what a split may isolate.
fn worst(results: Vec<Result<(), DriverError>>, objects: usize) -> Result<(), DriverError> {
    let rank = |c: ErrorClass| match c {
        ErrorClass::Config => 0,
        ErrorClass::Transient => 1,
        ErrorClass::Unknown => 2,
        ErrorClass::TooLarge => 3,
        ErrorClass::Rejected => 4,
    };
    let errors: Vec<DriverError> = results.into_iter().filter_map(Result::err).collect();
    let failed = errors.len();
    match errors.into_iter().min_by_key(|e| rank(e.class)) {
        None => Ok(()),
        Some(mut e) if failed > 1 => {
            e.message = format!("{} (and {} more of {objects} uploads failed)", e.message, failed - 1);
            Err(e)
        }
        Some(e) => Err(e),
    }
}

/// An SDK error as the drain needs it: what an operator must fix (`Config`, named), what passes
/// (`Transient`), what this object's data causes (`Rejected`), or `Unknown`.
pub fn classify<E>(err: SdkError<E, HttpResponse>, what: &str, config: &S3Config) -> DriverError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let location = config.location();
    let (class, message) = match &err {
        SdkError::TimeoutError(_) => {
            (ErrorClass::Transient, format!("{what}: no answer within {:?} (timeout)", config.timeout))
        }
        SdkError::DispatchFailure(_) => (ErrorClass::Transient, format!("{what}: could not reach S3")),
        SdkError::ResponseError(_) => (ErrorClass::Transient, format!("{what}: the answer was cut off or garbled")),
        SdkError::ConstructionFailure(_) => (
            ErrorClass::Config,
            format!("{what}: the request could not be built (no credentials found by the AWS credential chain?)"),
        ),
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let code = err.code().unwrap_or("");
            let detail = match (code, err.message()) {
                ("", _) => format!("HTTP {status}"),
                (c, Some(m)) => format!("{c}: {m}"),
                (c, None) => c.to_owned(),
            };
            match (code, status) {
                ("NoSuchBucket", _) => {
                    (ErrorClass::Config, format!("{what}: bucket {:?} does not exist ({detail})", config.bucket))
                }
                ("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException", _)
                | (_, 301) => (
                    ErrorClass::Config,
                    format!(
                        "{what}: bucket {:?} is not in region {} or not at this endpoint ({detail})",
                        config.bucket, config.region
                    ),
                ),
                (
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "TokenRefreshRequired"
                    | "AllAccessDisabled"
                    | "AccountProblem"
                    | "InvalidSecurity"
                    | "RequestTimeTooSkewed",
                    _,
                )
                | ("", 401 | 403) => (ErrorClass::Config, format!("{what}: access denied to {location} ({detail})")),
                ("" | "NotFound", 404) => {
                    (ErrorClass::Config, format!("{what}: bucket {:?} does not exist ({detail})", config.bucket))
                }
                ("NotImplemented", _) | (_, 501) => (
                    ErrorClass::Config,
                    format!(
                        "{what}: this store does not support a request eds needs (conditional creates with \
                         If-None-Match, which keep one event from overwriting another) ({detail})"
                    ),
                ),
                ("EntityTooLarge", _) | (_, 413) => {
                    (ErrorClass::Rejected, format!("{what}: the object is too large for S3 ({detail})"))
                }
                (
                    "SlowDown"
                    | "ServiceUnavailable"
                    | "InternalError"
                    | "RequestTimeout"
                    | "OperationAborted"
                    | "ConditionalRequestConflict"
                    | "Throttling"
                    | "ThrottlingException",
                    _,
                )
                | (_, 408 | 409 | 429 | 500..=599) => (ErrorClass::Transient, format!("{what}: {detail}")),
                _ => (ErrorClass::Unknown, format!("{what}: {detail}")),
            }
        }
        _ => (ErrorClass::Unknown, format!("{what}: unexpected S3 client error")),
    };
    DriverError::caused(class, message, err)
}

impl Driver for S3Driver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        // A batch must get through a shop's slow uplink within the drain's deadline per write
        // (2 minutes; 8 MiB is about 0.6 Mbit/s over it), and one ndjson object within `timeout`
        // (8 MiB in the default 30 s is about 2.2 Mbit/s; raise `timeout` on slower links).
        match self.config.format {
            // Each event is a call: at most `upload-tasks` calls in flight.
            Format::Json => Limits { max_rows: 1_000, max_bytes: 8 << 20, max_bind_params: usize::MAX },
            // One object per batch.
            Format::Ndjson => Limits { max_rows: 10_000, max_bytes: 8 << 20, max_bind_params: usize::MAX },
        }
    }

    /// The bucket is there and this identity may list the prefix (reads no object, writes none).
    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let c = self.client().await;
            let bucket = &self.config.bucket;
            c.head_bucket()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| classify(e, &format!("checking bucket {bucket:?}"), &self.config))?;
            c.list_objects_v2()
                .bucket(bucket)
                .prefix(&self.config.prefix)
                .max_keys(1)
                .send()
                .await
                .map_err(|e| classify(e, &format!("listing {}", self.config.location()), &self.config))?;
            Ok(())
        })
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match (batch, self.config.format) {
                (Batch::Events(events), Format::Json) => self.write_objects(events).await,
                (Batch::Events(events), Format::Ndjson) => self.write_ndjson(events).await,
                (Batch::Folded(_), _) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the S3 destination takes every event (stream kind), not folded changes",
                )),
            }
        })
    }
}
