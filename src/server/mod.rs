//! `eds server`: flags, start-up and shutdown. Ingest lives in `crate::ingest`.
//!
//! Invariant: on SIGINT/SIGTERM nothing is acked that is not durable — ingest stops pulling,
//! finishes in-flight appends and their acks, cursors are persisted and the WAL lock released
//! before exit 0. A second signal exits at once, which is still safe for the same reason.

pub mod duration;
pub mod settings;

use crate::dlq::DeadLetters;
use crate::exit::UsageError;
use crate::hq::creds::SessionCreds;
use crate::ingest::{self, consumer::ConsumerSettings, IngestConfig};
use crate::metrics::Metrics;
use crate::state::ServerState;
use anyhow::{bail, Context, Result};
use clap::Args;
pub use settings::Settings;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// An EDS duration flag: `500ms`, `2s`, `5m`, `1h30m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// A size with an optional binary or decimal unit: `4GiB`, `512MiB`, `100MB`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {text:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// `eds server` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ServerCommand {
    /// List the destination drivers, or describe one by its URL scheme (e.g. `eds server help file`)
    Help {
        /// URL scheme or alias
        driver: Option<String>,
    },
}

/// `eds server` flags: every flag EDS v3 accepts (hidden ones too), plus eds's own.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// `help [driver]`
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// Destination URL; repeat for several destinations. With none, the server only ingests
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// Shopmonkey API key [default: `token` in config.toml, else $SM_APIKEY] (not needed in dev mode)
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Shopmonkey API base URL [default: the API key's issuer, else Shopmonkey's production API]
    #[arg(long, hide = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// Port for health checks and metrics
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Deprecated: use --port instead (overrides it when > 0)
    #[arg(long, default_value_t = 0)]
    pub health_port: u16,
    /// Address the health and metrics server binds to (0.0.0.0 in containers)
    #[arg(long = "bind", env = "EDS_BIND", default_value = "127.0.0.1", value_name = "ADDR")]
    pub bind: IpAddr,
    /// EDS server id (from enrollment) [default: the name in --creds]
    #[arg(long, value_name = "ID")]
    pub eds_id: Option<String>,
    /// Only consume these company IDs (comma separated or repeated; with --creds, only some of
    /// the credentials' companies)
    #[arg(long = "companyIds", hide = true, value_delimiter = ',', value_name = "IDS")]
    pub company_ids: Vec<String>,
    /// Keep session log files
    #[arg(long)]
    pub keep_logs: bool,
    /// NATS server URL(s), comma separated
    #[arg(long, hide = true, default_value = "nats://connect.nats.shopmonkey.pub")]
    pub server: String,
    /// NATS credentials file, as HQ issues them: its user JWT names the server id and the
    /// companies to consume (not needed for a NATS server on localhost)
    #[arg(long, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// Suffix appended to the durable consumer name
    #[arg(long, hide = true, value_name = "SUFFIX")]
    pub consumer_suffix: Option<String>,
    /// JetStream MaxAckPending (≤ 0 means 25000)
    #[arg(long = "maxAckPending", hide = true, default_value_t = 25_000, allow_negative_numbers = true)]
    pub max_ack_pending: i64,
    /// JetStream MaxRequestBatch: messages per pull request
    #[arg(long = "maxPendingBuffer", hide = true, default_value_t = 4096)]
    pub max_pending_buffer: i64,
    /// EDS flush latency floor (accepted; eds batches adaptively)
    #[arg(long = "minPendingLatency", hide = true, default_value = "2s", value_parser = parse_duration)]
    pub min_pending_latency: Duration,
    /// EDS flush latency ceiling (accepted; eds batches adaptively)
    #[arg(long = "maxPendingLatency", hide = true, default_value = "30s", value_parser = parse_duration)]
    pub max_pending_latency: Duration,
    /// A new consumer starts at the beginning of the stream
    #[arg(long, hide = true)]
    pub restart: bool,
    /// HQ session renewal period
    #[arg(long, hide = true, default_value = "24h", value_parser = parse_duration)]
    pub renew_interval: Duration,
    /// How often a heartbeat goes to HQ
    #[arg(long, hide = true, default_value = "1m", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// How often the session's log is uploaded to HQ
    #[arg(long, hide = true, default_value = "1h", value_parser = parse_duration)]
    pub log_upload_interval: Duration,
    /// Where HQ's `upgrade` downloads releases from
    #[arg(long, hide = true, default_value = crate::upgrade::DEFAULT_BASE_URL, value_name = "URL")]
    pub release_url: String,
    /// How long to wait before asking HQ again while another server holds this server's session
    #[arg(long, hide = true, default_value = "5s", value_parser = parse_duration)]
    pub session_conflict_retry: Duration,
    /// JetStream AckWait: how long a delivered, unacked message waits before redelivery
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub ack_wait: Duration,
    /// JetStream InactiveThreshold of the durable consumer
    #[arg(long, hide = true, default_value = "72h", value_parser = parse_duration)]
    pub inactive_threshold: Duration,
    /// Disk budget of the write-ahead log; when full, ingest pauses (upstream keeps the data)
    #[arg(long, default_value = "8GiB", value_parser = parse_size, value_name = "SIZE")]
    pub wal_max_bytes: u64,
    /// How long ingest waits before reopening the WAL after a write error
    #[arg(long, hide = true, default_value = "5s", value_parser = parse_duration)]
    pub wal_retry: Duration,
    /// The stream was recreated upstream (its sequences restarted): go on from its first
    /// message. Give the last stored stream sequence that eds names in its error, so the flag
    /// never accepts a later reset by accident
    #[arg(long, value_name = "SEQ")]
    pub accept_stream_reset: Option<u64>,
    /// Size of one WAL segment file
    #[arg(long, hide = true, default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub wal_segment_size: u64,
    /// After SIGINT/SIGTERM, answer 503 on / for this long before stopping (lets a load balancer
    /// or orchestrator notice first)
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_delay: Duration,
    /// Internal: this process is the worker its supervisor started
    #[arg(long, hide = true)]
    pub wrapper: bool,
    /// Internal: the supervisor's process id (the worker exits when it is gone)
    #[arg(long, hide = true, default_value_t = -1, allow_negative_numbers = true)]
    pub parent: i64,
    /// Run the worker in this process, without a supervisor restarting it (exit with its code)
    #[arg(long)]
    pub no_restart: bool,
}

/// `eds server help [scheme]`: the drivers of this build, found by URL scheme or alias (EDS
/// looked the argument up by display name, so its documented `server help s3` never worked).
pub fn help(scheme: Option<&str>, out: &mut dyn std::io::Write) -> Result<u8> {
    use eds_drivers::driver::{FieldKind, Kind};
    match scheme {
        None => {
            writeln!(out, "Destination drivers in this build (eds server help <scheme> for details):\n")?;
            for d in eds_drivers::descriptions() {
                writeln!(out, "  {:<12} {:<24} {}", d.scheme, d.name, d.example_url)?;
            }
            writeln!(
                out,
                "\nExample: eds server --url {}",
                eds_drivers::descriptions().first().map(|d| d.example_url).unwrap_or("file:///var/eds/out")
            )?;
            Ok(0)
        }
        Some(s) => {
            let Some(d) = eds_drivers::find(s) else {
                let built: Vec<&str> = eds_drivers::descriptions().iter().map(|d| d.scheme).collect();
                let why = match eds_drivers::missing(s) {
                    Some(eds_drivers::Missing::NotBuilt { feature }) => {
                        format!("this eds was built without it (build with `--features {feature}`)")
                    }
                    Some(eds_drivers::Missing::NotYet) => "eds has no driver for it yet".to_owned(),
                    _ => "no destination has this scheme".to_owned(),
                };
                return Err(UsageError(format!(
                    "no driver for scheme {s:?}: {why} (in this build: {})",
                    built.join(", ")
                ))
                .into());
            };
            writeln!(out, "{} ({}://)", d.name, d.scheme)?;
            if !d.aliases.is_empty() {
                writeln!(out, "aliases: {}", d.aliases.join(", "))?;
            }
            writeln!(out, "example: {}", d.example_url)?;
            let kind = match d.kind {
                Kind::State => "state (keeps the current row per key; batches are folded per key)",
                Kind::Stream => "stream (receives every event)",
            };
            writeln!(out, "kind:    {kind}\n\n{}\n", d.help)?;
            writeln!(out, "fields:")?;
            for f in d.fields {
                let kind = match f.kind {
                    FieldKind::Text => "text",
                    FieldKind::Password => "password",
                    FieldKind::Number => "number",
                    FieldKind::Directory => "directory",
                };
                let req = if f.required { "required" } else { "optional" };
                let default = f.default.map(|v| format!(", default {v}")).unwrap_or_default();
                writeln!(out, "  {:<12} {kind}, {req}{default}: {}", f.name, f.help)?;
            }
            Ok(0)
        }
    }
}

/// True when every server of a NATS URL list is on this machine: its host is exactly
/// `localhost`, `127.0.0.1`, `::1` or `0.0.0.0` (EDS looked for the substring "localhost"
/// anywhere in the URL, so `nats://localhost.example.com` or a password holding it counted).
pub fn is_local_nats(url: &str) -> bool {
    let mut hosts = url.split(',').map(|u| eds_drivers::url::host(u.trim()));
    hosts.all(|h| eds_drivers::url::is_local_host(h) || h == "0.0.0.0")
}

/// Where the server's NATS credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A NATS server on this machine, no credentials: every company (as EDS's dev mode).
    Dev,
    /// `--creds`: the operator manages NATS credentials; no HQ session.
    Operator,
    /// An HQ session issues the credentials (the API key from enrollment).
    Hq,
}

/// Settings derived from the flags.
#[derive(Debug, Clone)]
pub struct ServerPlan {
    /// Where the credentials come from.
    pub mode: Mode,
    /// Server id (`dev` in dev mode).
    pub server_id: String,
    /// Ingest settings.
    pub ingest: IngestConfig,
    /// HTTP address.
    pub http: SocketAddr,
    /// WAL budget.
    pub wal_max_bytes: u64,
    /// WAL segment size.
    pub wal_segment_size: u64,
    /// 503 period before stopping.
    pub shutdown_delay: Duration,
    /// This is a worker its supervisor started (`--wrapper`).
    pub supervised: bool,
}

impl ServerArgs {
    /// Where the credentials come from: `--creds`, else an HQ session when there is an API key,
    /// else dev mode for a NATS server on this machine; `None` when none applies (a remote NATS
    /// server and no API key: enrollment is missing).
    pub fn mode(&self, settings: &Settings) -> Option<Mode> {
        if self.creds.is_some() {
            Some(Mode::Operator)
        } else if settings.token.is_some() {
            Some(Mode::Hq)
        } else if is_local_nats(&self.server) {
            Some(Mode::Dev)
        } else {
            None
        }
    }

    /// Check the flags and derive the plan; errors are usage errors.
    pub fn plan(&self, data_dir: &Path, settings: &Settings) -> Result<ServerPlan> {
        let Some(mode) = self.mode(settings) else {
            bail!("API key not found. Make sure you run `eds enroll [CODE]` before continuing (or give --creds for NATS credentials you manage)");
        };
        let creds = match &self.creds {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading NATS credentials {}", path.display()))?;
                Some(
                    SessionCreds::parse(&text)
                        .with_context(|| format!("reading NATS credentials {}", path.display()))?,
                )
            }
            None => None,
        };
        let server_id = match (mode, settings.server_id.as_deref(), &creds) {
            (Mode::Dev, _, _) => "dev".to_owned(),
            (_, Some(id), c) => {
                if let Some(c) = c.as_ref().filter(|c| c.server_id != id) {
                    tracing::warn!(eds_id = %id, credentials = %c.server_id, "--eds-id differs from the server id in the NATS credentials; the durable consumer is named after --eds-id");
                }
                id.to_owned()
            }
            (_, None, Some(c)) => c.server_id.clone(),
            (_, None, None) => {
                bail!("no server id: run `eds enroll [CODE]` (it writes token and server_id to config.toml)")
            }
        };
        // The credentials name the companies; --companyIds may only narrow them.
        let asked: Vec<String> = self.company_ids.iter().filter(|c| !c.is_empty()).cloned().collect();
        let company_ids = match &creds {
            Some(c) => crate::hq::companies(&c.company_ids, &asked)?,
            None => asked,
        };
        if self.wal_segment_size < (64 << 10) {
            bail!("--wal-segment-size {} is below the minimum of 64KiB", self.wal_segment_size);
        }
        if self.wal_max_bytes < 2 * self.wal_segment_size {
            bail!(
                "--wal-max-bytes {} must hold at least two segments of --wal-segment-size {}",
                self.wal_max_bytes,
                self.wal_segment_size
            );
        }
        let port = if self.health_port > 0 { self.health_port } else { self.port };
        let max_ack_pending = if self.max_ack_pending <= 0 { 25_000 } else { self.max_ack_pending };
        let max_request_batch = self.max_pending_buffer.clamp(1, 1 << 20);
        let durable = ingest::consumer::durable_name(&server_id, self.consumer_suffix.as_deref());
        let ingest = IngestConfig {
            consumer: ConsumerSettings {
                durable,
                company_ids,
                ack_wait: self.ack_wait,
                max_ack_pending,
                max_request_batch,
                inactive_threshold: self.inactive_threshold,
                restart: self.restart,
                start_after_import: None,
            },
            nats_url: self.server.clone(),
            creds: creds.as_ref().map(SessionCreds::for_ingest),
            connection_name: format!("eds-{server_id}"),
            max_batch: (max_request_batch as usize).min(4096),
            // A batch must fit one WAL frame (half a segment at most), envelopes included.
            max_batch_bytes: (4usize << 20).min((self.wal_segment_size / 4) as usize),
            max_inflight_batches: 4,
            gaps_file: data_dir.join("gaps.jsonl"),
            wal_retry: self.wal_retry,
            accept_stream_reset: self.accept_stream_reset,
            faults: None,
        };
        Ok(ServerPlan {
            mode,
            server_id,
            ingest,
            http: SocketAddr::new(self.bind, port),
            wal_max_bytes: self.wal_max_bytes,
            wal_segment_size: self.wal_segment_size,
            shutdown_delay: self.shutdown_delay,
            supervised: self.wrapper,
        })
    }

    fn log_inactive_flags(&self) {
        let inactive: [(&str, bool); 2] = [
            ("--minPendingLatency (destination batching)", self.min_pending_latency != Duration::from_secs(2)),
            ("--maxPendingLatency (destination batching)", self.max_pending_latency != Duration::from_secs(30)),
        ];
        for (flag, given) in inactive {
            if given {
                tracing::warn!(flag, "accepted but not active yet in this version of eds");
            }
        }
    }
}

fn usage(e: anyhow::Error) -> anyhow::Error {
    UsageError(format!("{e:#}")).into()
}

/// The settings from flags and `config.toml`; asks for an enrollment code first when this
/// server would need HQ but has no server id (as EDS does, but enrolling into `data_dir`).
pub fn settings(args: &ServerArgs, data_dir: &Path) -> Result<Settings> {
    let env_key = std::env::var(settings::API_KEY_ENV).ok();
    let load = || -> Result<Settings> {
        let config = crate::config::load(data_dir).map_err(usage)?;
        Ok(Settings::resolve(args, &config, env_key.as_deref()))
    };
    let resolved = load()?;
    let needs_hq = matches!(args.mode(&resolved), None | Some(Mode::Hq));
    if !needs_hq || resolved.server_id.is_some() || args.wrapper {
        return Ok(resolved);
    }
    enroll_interactively(args, data_dir)?;
    load()
}

/// Asks for a one-time enrollment code on stdin until one enrolls this server; an empty line or
/// the end of input gives up (exit 1).
fn enroll_interactively(args: &ServerArgs, data_dir: &Path) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "Welcome to Shopmonkey EDS! This server is not enrolled yet (no server id in {}).",
        crate::config::path(data_dir).display()
    );
    let stdin = std::io::stdin();
    loop {
        let _ = write!(err, "Enter one-time enrollment code: ");
        let _ = err.flush();
        let mut line = String::new();
        stdin.lock().read_line(&mut line).context("reading the enrollment code")?;
        let code = line.trim();
        if code.is_empty() {
            return Err(UsageError(format!(
                "no enrollment code given: run `eds enroll [CODE] -d {}`, or start the server again and enter it",
                data_dir.display()
            ))
            .into());
        }
        let enroll = crate::enroll::EnrollArgs { code: code.to_owned(), api_url: args.api_url.clone() };
        match crate::enroll::run(&enroll, data_dir, &mut err) {
            Ok(_) => return Ok(()),
            Err(e) => {
                let _ = writeln!(err, "error: {}", eds_wal::error_chain(e.as_ref()));
            }
        }
    }
}

/// Run `eds server`: the supervisor, which starts the worker (this function again, with
/// `--wrapper`) and restarts it after a crash; or, with `--no-restart`, the worker in this
/// process. Returns the process exit code.
pub fn run(args: &ServerArgs, data_dir: &Path, schema_validator: Option<&Path>) -> Result<u8> {
    let settings = settings(args, data_dir)?;
    let plan = args.plan(data_dir, &settings).map_err(usage)?;
    let destinations = crate::drain::parse_destinations(&settings.urls).map_err(usage)?;
    let validator = match schema_validator {
        None => None,
        Some(dir) => Some(std::sync::Arc::new(
            crate::validator::Validator::load(dir).map_err(|e| usage(e.context("--schema-validator")))?,
        )),
    };
    if !args.wrapper && !args.no_restart {
        // Usage errors are found above, once: the supervisor never retries them.
        drop(destinations);
        return crate::supervisor::run();
    }
    if args.wrapper {
        crate::supervisor::die_with_parent(args.parent);
    }
    work(args, data_dir, validator, settings, plan, destinations)
}

/// The worker: ingest, drains, HTTP, and the HQ session when there is one.
fn work(
    args: &ServerArgs,
    data_dir: &Path,
    validator: Option<std::sync::Arc<crate::validator::Validator>>,
    settings: Settings,
    plan: ServerPlan,
    mut destinations: Vec<crate::drain::Destination>,
) -> Result<u8> {
    args.log_inactive_flags();
    if let Some(validator) = &validator {
        tracing::info!(dir = %validator.dir().display(), "schema validator loaded");
        for d in &mut destinations {
            d.validator = Some(validator.clone());
        }
    }
    let api_url = crate::registry::api_url(args.api_url.as_deref(), settings.token.as_deref());
    let hq = match (plan.mode, &settings.token) {
        (Mode::Hq, Some(token)) => Some(crate::hq::HqSettings {
            api: crate::hq::api::HqApi::new(&api_url, token).map_err(usage)?,
            server_id: plan.server_id.clone(),
            company_ids: plan.ingest.consumer.company_ids.clone(),
            consumer_suffix: args.consumer_suffix.clone(),
            driver: destinations.first().map(|d| {
                let desc = d.driver.describe();
                crate::hq::session::DriverInfo {
                    id: desc.scheme.to_owned(),
                    name: desc.name.to_owned(),
                    description: desc.summary().to_owned(),
                    masked_url: crate::hq::mask_url(&settings.urls[0]),
                }
            }),
            renew_every: args.renew_interval,
            heartbeat_every: args.heartbeat_interval,
            conflict_retry: args.session_conflict_retry,
            data_dir: data_dir.to_path_buf(),
            keep_logs: settings.keep_logs,
            release_url: args.release_url.clone(),
            log_upload_every: args.log_upload_interval,
            backfill: None,
        }),
        _ => None,
    };
    crate::datadir::prepare(data_dir)?;
    // The tracker's lock first: a server refused because another holds this data dir must not
    // touch anything in it (it used to rewrite destinations.json and make dead-letter dirs).
    let tracker = crate::tracker::Tracker::open(data_dir)?;
    // Dead letters take from the WAL's disk budget.
    let dlq_bytes = eds_wal::SharedBytes::default();
    for d in &mut destinations {
        d.dead_letters = Some(crate::dlq::DeadLetters::open_for_destination(data_dir, &d.name)?.count_in(&dlq_bytes));
    }
    crate::drain::record_destinations(data_dir, &destinations, &settings.urls)?;
    let mut plan = plan;
    plan.ingest.consumer.start_after_import = crate::import::timestamps::apply(&tracker, &mut destinations)?;
    let make_registry = || -> Result<Arc<crate::registry::Registry>> {
        let source = crate::registry::HqSchemas::new(&api_url)
            .map_err(|e| UsageError(format!("--api-url {api_url:?}: {e:#}")))?;
        Ok(Arc::new(crate::registry::Registry::new(Arc::new(source), Some(tracker.clone()))))
    };
    // Under HQ, the registry also serves HQ's `import`, whatever the destinations need.
    let registry = if hq.is_some() { Some(make_registry()?) } else { None };
    crate::drain::attach_registry(&mut destinations, || match &registry {
        Some(r) => Ok(r.clone()),
        None => make_registry(),
    })?;
    // HQ's `import` runs inside this worker with its own tracker and registry (one writer).
    let importing = match (&hq, registry) {
        (Some(hq), Some(registry)) => Some(ImportParts {
            api: hq.api.clone(),
            tracker: tracker.clone(),
            registry,
            validator,
            running: destinations
                .iter()
                .filter_map(|d| {
                    let url = settings.urls.iter().find(|u| {
                        crate::drain::parse_destination(u).ok().flatten().is_some_and(|p| p.name == d.name)
                    })?;
                    Some((d.name.clone(), url.clone()))
                })
                .collect(),
        }),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(plan, destinations, data_dir.to_path_buf(), dlq_bytes, hq, importing))
}

/// What HQ's `import` inside the worker needs besides the server state.
struct ImportParts {
    api: crate::hq::api::HqApi,
    tracker: crate::tracker::Tracker,
    registry: Arc<crate::registry::Registry>,
    validator: Option<Arc<crate::validator::Validator>>,
    running: Vec<(String, String)>,
}

async fn serve(
    plan: ServerPlan,
    destinations: Vec<crate::drain::Destination>,
    data_dir: PathBuf,
    dlq_bytes: eds_wal::SharedBytes,
    mut hq: Option<crate::hq::HqSettings>,
    importing: Option<ImportParts>,
) -> Result<u8> {
    let wal_dir = data_dir.join("wal");
    let opts = eds_wal::Options {
        max_bytes: Some(plan.wal_max_bytes),
        outside_bytes: Some(dlq_bytes.clone()),
        segment_size: plan.wal_segment_size,
        max_frame_bytes: eds_wal::Options::default().max_frame_bytes.min(plan.wal_segment_size / 2),
        ..eds_wal::Options::default()
    };
    let wal = {
        let d = wal_dir.clone();
        tokio::task::spawn_blocking(move || eds_wal::Wal::open(d, opts))
            .await?
            .with_context(|| format!("opening the write-ahead log at {}", wal_dir.display()))?
    };
    if let Some(cut) = &wal.recovery().cut {
        tracing::warn!(segment = %cut.segment.display(), offset = cut.offset, bytes = cut.bytes, first_lsn = cut.first_lsn, "recovery cut an unsynced tail (never acknowledged)");
    }
    tracing::info!(dir = %wal_dir.display(), head = wal.durable_lsn(), budget = plan.wal_max_bytes, "write-ahead log open");
    let dlq = {
        let d = data_dir.clone();
        tokio::task::spawn_blocking(move || DeadLetters::open(&d).map(|l| l.count_in(&dlq_bytes))).await??
    };
    let metrics = Metrics::new().context("registering metrics")?;
    let state = Arc::new(ServerState::new(metrics, wal, plan.ingest.consumer.durable.clone()));
    crate::drain::register(&state, &destinations);
    if let (Some(hq), Some(parts)) = (hq.as_mut(), importing) {
        hq.backfill = Some(Arc::new(crate::import::in_server::ServerImport {
            state: state.clone(),
            data_dir: data_dir.clone(),
            api: parts.api,
            tracker: parts.tracker,
            registry: parts.registry,
            validator: parts.validator,
            running: parts.running,
            hold_deadline: crate::import::in_server::HOLD_DEADLINE,
        }));
    }

    // Signals are caught from here on: once the address is logged, a supervisor may stop us.
    let mut signals = crate::shutdown::Signals::install();
    let listener =
        tokio::net::TcpListener::bind(plan.http).await.with_context(|| format!("listening on {}", plan.http))?;
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, "health, status and metrics listening (/, /status, /metrics)");
    tokio::spawn(crate::http::serve(listener, state.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_state = state.clone();
    let delay = plan.shutdown_delay;
    let signal_stop = stop_tx.clone();
    // A supervised worker may get one stop twice at once: from its supervisor and from systemd
    // signalling the whole service. Only a signal a moment later means "exit at once".
    let echo = if plan.supervised { Duration::from_secs(2) } else { Duration::ZERO };
    tokio::spawn(async move {
        signals.next().await;
        let first = std::time::Instant::now();
        tracing::info!(delay = %duration::format(delay), "shutting down: finishing in-flight appends and acks (signal again to exit at once)");
        signal_state.begin_shutdown();
        let second = async {
            loop {
                signals.next().await;
                if first.elapsed() >= echo {
                    break;
                }
            }
        };
        tokio::pin!(second);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut second => {
                tracing::warn!("second signal: exiting at once (safe: nothing is acked before it is durable)");
                std::process::exit(130);
            }
        }
        let _ = signal_stop.send(true);
        second.await;
        tracing::warn!("second signal: exiting at once (safe: nothing is acked before it is durable)");
        std::process::exit(130);
    });

    // Cursors exist before anything is appended: a new destination's "head" is the head now.
    if let Some(w) = state.wal() {
        crate::drain::ensure_cursors(w, &destinations).await?;
    }
    // A new destination's cursor starts at the head: /status says so before the first batch.
    crate::drain::register(&state, &destinations);
    let mut drains = Vec::new();
    for dest in destinations {
        tracing::info!(destination = %dest.name, driver = dest.driver.describe().name, "destination: delivering");
        drains.push(tokio::spawn(crate::drain::run(dest, state.clone(), stop_rx.clone())));
    }
    let result = match hq {
        None => {
            tracing::info!(server_id = %plan.server_id, consumer = %plan.ingest.consumer.durable, nats = %eds_drivers::url::redact(&plan.ingest.nats_url), "ingest starting");
            ingest::run(plan.ingest, state.clone(), dlq, stop_rx.clone()).await.map(|()| 0)
        }
        Some(hq) => {
            tracing::info!(api = hq.api.base(), server_id = %plan.server_id, nats = %eds_drivers::url::redact(&plan.ingest.nats_url), "starting an HQ session");
            crate::hq::run(hq, plan.ingest, state.clone(), dlq, stop_rx.clone()).await
        }
    };
    state.begin_shutdown();
    // Ingest may have ended without a signal (an error, or HQ's restart or shutdown).
    let _ = stop_tx.send(true);
    // Drains finish their current batch (their cursors are persisted when the log closes).
    for d in drains {
        let _ = d.await;
    }
    let wal = state.wal.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(wal) = wal {
        tokio::task::spawn_blocking(move || wal.close()).await?.context("closing the write-ahead log")?;
    }
    let code = result?;
    tracing::info!(exit_code = code, "stopped");
    Ok(code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("4 XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").unwrap_err().contains("expected a number"));
    }

    fn args(extra: &[&str]) -> ServerArgs {
        #[derive(clap::Parser)]
        #[command(disable_help_subcommand = true)]
        struct Cli {
            #[command(flatten)]
            server: ServerArgs,
        }
        let argv = ["eds", "--server", "nats://nats.example.com:4222"].iter().chain(extra);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().server
    }

    fn plan_of(extra: &[&str], dir: &Path) -> Result<ServerPlan> {
        let a = args(extra);
        let settings = Settings::resolve(&a, &crate::config::ConfigFile::default(), None);
        a.plan(dir, &settings)
    }

    #[test]
    fn the_credentials_name_the_server_and_the_companies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hq.creds");
        let session = "4641e7c5-0f86-4576-89ca-15db401aea56";
        let claims = crate::hq::creds::tests::hq_claims("srv-1", session, &["c0ffee", "beef"]);
        std::fs::write(&file, crate::hq::creds::tests::creds_text(&claims)).unwrap();
        let creds = file.to_str().unwrap();

        let plan = plan_of(&["--creds", creds], dir.path()).unwrap();
        assert_eq!(plan.server_id, "srv-1");
        assert_eq!(plan.ingest.consumer.durable, "eds-srv-1");
        assert_eq!(plan.ingest.consumer.company_ids, ["c0ffee", "beef"]);
        assert!(!plan.ingest.creds.as_ref().unwrap().stream_info_allowed);
        assert!(!format!("{plan:?}").contains("SUASECRET"), "the seed stays out of Debug output");

        let plan = plan_of(&["--creds", creds, "--companyIds", "beef", "--eds-id", "other"], dir.path()).unwrap();
        assert_eq!(
            (plan.server_id.as_str(), plan.ingest.consumer.company_ids.as_slice()),
            ("other", ["beef".to_owned()].as_slice())
        );

        let e = plan_of(&["--creds", creds, "--companyIds", "beef,cafe"], dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "provided company ID cafe not in credentials");
        let e = plan_of(&["--creds", "/nonexistent/x.creds"], dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("reading NATS credentials /nonexistent/x.creds"), "{e:#}");
    }

    #[test]
    fn dev_mode_is_localhost_without_creds() {
        assert!(is_local_nats("nats://127.0.0.1:4222"));
        assert!(is_local_nats("nats://localhost:4222"));
        assert!(is_local_nats("localhost:4222"));
        assert!(is_local_nats("nats://[::1]:4222,nats://127.0.0.1:4223"));
        assert!(!is_local_nats("nats://connect.nats.shopmonkey.pub"));
        // The host decides, exactly: not a substring anywhere in the URL.
        assert!(!is_local_nats("nats://localhost.evil.example:4222"));
        assert!(!is_local_nats("nats://127.0.0.1.nip.io:4222"));
        assert!(!is_local_nats("nats://me:localhost@connect.nats.shopmonkey.pub"));
        assert!(!is_local_nats("nats://127.0.0.1:4222,nats://connect.nats.shopmonkey.pub"));
    }
}
