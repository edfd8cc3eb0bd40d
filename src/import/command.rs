//! `eds import`: flags as EDS's (§1.5 of the behaviour reference), flow as §8, with EDS's import
//! defects fixed: every row its own event id and its own company and location, failures reported
//! as failures, a dry run records nothing, a second process never writes the tracker at once
//! (the import refuses a data dir a server holds; HQ's `import` runs [`import`] inside the server,
//! with the server's tracker: see `super::in_server`), and downloads resume.

use super::files::{self, ExportFile};
use super::timestamps::{self, TableExport};
use crate::exit::UsageError;
use crate::hq::api::{ExportRequest, ExportStatus, HqApi};
use anyhow::{bail, Context, Result};
use clap::Args;
use eds_drivers::driver::Kind;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code when the destination cannot be built or does not answer its test (EDS's).
pub const DRIVER_FAILED: u8 = 3;

/// `eds import` flags.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Destination URL (as `eds server --url`)
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Shopmonkey API key [default: `token` in config.toml, else $SM_APIKEY]
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_key: Option<String>,
    /// HQ API base URL [default: the API key's issuer]
    #[arg(long = "api-url", hide = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// Resume an existing export job instead of creating one
    #[arg(long = "job-id", value_name = "ID")]
    pub job_id: Option<String>,
    /// Read and check everything, write nothing (no rows, no import timestamps)
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Do not ask before deleting the destination's tables
    #[arg(long = "no-confirm")]
    pub no_confirm: bool,
    /// Keep the downloaded files
    #[arg(long = "no-cleanup")]
    pub no_cleanup: bool,
    /// Keep the destination's tables and upsert into them instead of dropping and recreating them
    #[arg(long = "no-delete")]
    pub no_delete: bool,
    /// Load the export files already in DIR (no export job, no download; kept afterwards)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Create the tables only
    #[arg(long = "schema-only")]
    pub schema_only: bool,
    /// Only build the destination and test its connection, then exit 0
    #[arg(long = "validate-only")]
    pub validate_only: bool,
    /// Only rows changed after this time (RFC 3339)
    #[arg(long = "timeOffset", value_name = "TIME")]
    pub time_offset: Option<String>,
    /// Parallel uploads (Snowflake's stage; accepted for EDS compatibility elsewhere)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub parallel: u32,
    /// SQL destinations write one row at a time (accepted for EDS compatibility; eds batches)
    #[arg(long)]
    pub single: bool,
    /// Only these tables (comma-separated or repeated)
    #[arg(long, value_delimiter = ',', value_name = "TABLE")]
    pub only: Vec<String>,
    /// Only these companies (comma-separated or repeated)
    #[arg(long = "companyIds", value_delimiter = ',', value_name = "ID")]
    pub company_ids: Vec<String>,
    /// Only these locations (comma-separated or repeated)
    #[arg(long = "locationIds", value_delimiter = ',', value_name = "ID")]
    pub location_ids: Vec<String>,
    /// How often the export job is polled
    #[arg(long = "poll-interval", hide = true, default_value = "5s", value_parser = crate::server::parse_duration)]
    pub poll_interval: Duration,
    /// Attempts per export file before the import gives up [default: 8, waits from 500 ms doubling]
    #[arg(long = "download-attempts", hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub download_attempts: Option<u32>,
}

/// Run `eds import` in `data_dir`. Returns the exit code.
pub fn run(args: &ImportArgs, data_dir: &Path, schema_validator: Option<&Path>, out: &mut dyn Write) -> Result<u8> {
    let time_offset = match &args.time_offset {
        None => None,
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| UsageError(format!("--timeOffset {t:?}: not an RFC 3339 time ({e})")))?
                .as_millisecond(),
        ),
    };
    if args.dir.is_some() && args.job_id.is_some() {
        return Err(
            UsageError("--dir and --job-id exclude each other: --dir loads files already downloaded".into()).into()
        );
    }
    let config = crate::config::load(data_dir)?;
    let api_key = args.api_key.clone().or(config.token.clone()).or_else(|| std::env::var("SM_APIKEY").ok());
    let Some(api_key) = api_key.filter(|k| !k.is_empty()) else {
        return Err(UsageError(
            "no API key: pass --api-key, set SM_APIKEY, or run `eds enroll [CODE]` (it writes token to config.toml)"
                .into(),
        )
        .into());
    };
    let api_url = crate::registry::api_url(args.api_url.as_deref(), Some(&api_key));
    let validator = match schema_validator {
        None => None,
        Some(dir) => Some(Arc::new(
            crate::validator::Validator::load(dir)
                .map_err(|e| UsageError(format!("{:#}", e.context("--schema-validator"))))?,
        )),
    };
    let mut dest = match crate::drain::parse_destination(&args.url) {
        Ok(Some(d)) => d,
        Ok(None) => {
            writeln!(out, "--url {}: this build has no driver for it", eds_drivers::url::redact(&args.url))?;
            return Ok(DRIVER_FAILED);
        }
        Err(e) => {
            writeln!(out, "{e:#}")?;
            return Ok(DRIVER_FAILED);
        }
    };
    dest.validator = validator;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Connectivity (EDS: a 15 s test; failure prints the error and exits 3).
    let tested = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(15), dest.driver.test()).await });
    match tested {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            writeln!(out, "destination {:?}: {}", dest.name, eds_wal::error_chain(&e))?;
            return Ok(DRIVER_FAILED);
        }
        Err(_) => {
            writeln!(out, "destination {:?}: no answer to its connection test within 15s", dest.name)?;
            return Ok(DRIVER_FAILED);
        }
    }
    if args.validate_only {
        writeln!(out, "destination {:?} ({}) is reachable", dest.name, dest.driver.describe().name)?;
        return Ok(0);
    }
    // One writer of the data dir at a time: a running server holds the WAL's lock.
    refuse_if_server_runs(data_dir)?;
    crate::datadir::prepare(data_dir)?;
    let tracker = crate::tracker::Tracker::open(data_dir)
        .map_err(|e| anyhow::anyhow!("{e:#} (is `eds server` running on this data dir? stop it for the import)"))?;
    let source =
        crate::registry::HqSchemas::new(&api_url).map_err(|e| UsageError(format!("--api-url {api_url:?}: {e:#}")))?;
    let registry = Arc::new(crate::registry::Registry::new(Arc::new(source), Some(tracker.clone())));
    dest.registry = Some(registry.clone());
    let api = HqApi::new(&api_url, &api_key).map_err(|e| UsageError(format!("--api-url {api_url:?}: {e:#}")))?;
    let mut ask = ask_on_stdin;
    let progress = super::progress::Progress::on_stderr();
    runtime.block_on(import(args, data_dir, &dest, &registry, &tracker, &api, time_offset, &mut ask, &progress, out))
}

/// What the operator answered to the question before tables are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Go on.
    Yes,
    /// Do not: the import ends with nothing changed (exit 0, as EDS's Cancel).
    No,
    /// Nobody answered (stdin closed): the import refuses (exit 2), naming `--no-confirm`.
    Nobody,
}

/// Asks `question` on stderr and reads the answer from stdin (a terminal, or a pipe: `yes |`).
fn ask_on_stdin(question: &str) -> Result<Answer> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question}")?;
    err.flush()?;
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line)? == 0 {
        writeln!(err)?;
        return Ok(Answer::Nobody);
    }
    Ok(if matches!(line.trim().to_ascii_lowercase().as_str(), "yes" | "y") { Answer::Yes } else { Answer::No })
}

/// The question asked before `tables` of `dest` are dropped.
fn drop_question(dest: &crate::drain::Destination, url: &str, tables: &BTreeSet<String>) -> String {
    const SHOWN: usize = 12;
    let names: Vec<&str> = tables.iter().map(String::as_str).take(SHOWN).collect();
    let more = tables.len().saturating_sub(SHOWN);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!(
        "WARNING: this import DROPS {} table{} at destination {:?} ({}, {}) and loads them again from the export; \
         every row in them now is deleted: {}{more}.\n(--no-delete keeps the tables and upserts into them; \
         --no-confirm skips this question.)\nType yes to go on: ",
        tables.len(),
        if tables.len() == 1 { "" } else { "s" },
        dest.name,
        dest.driver.describe().name,
        eds_drivers::url::redact(url),
        names.join(", "),
    )
}

fn refuse_if_server_runs(data_dir: &Path) -> Result<()> {
    let lock = data_dir.join("wal").join(eds_wal::LOCK_FILE);
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(&lock) else { return Ok(()) };
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(UsageError(format!(
            "{} is in use by a running eds server: stop it for the import (its events are not lost: streaming takes over where the import ends)",
            data_dir.display()
        ))
        .into()),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::Error::new(e).context(format!("locking {}", lock.display()))),
    }
}

impl ImportArgs {
    /// The import a running server makes for HQ's `import` notification, as EDS ran it
    /// (`import --url <url> --no-confirm [--schema-only]`): every other flag at its default.
    pub fn unattended(url: &str, schema_only: bool) -> ImportArgs {
        ImportArgs {
            url: url.to_owned(),
            api_key: None,
            api_url: None,
            job_id: None,
            dry_run: false,
            no_confirm: true,
            no_cleanup: false,
            no_delete: false,
            dir: None,
            schema_only,
            validate_only: false,
            time_offset: None,
            parallel: 4,
            single: false,
            only: Vec::new(),
            company_ids: Vec::new(),
            location_ids: Vec::new(),
            poll_interval: Duration::from_secs(5),
            download_attempts: None,
        }
    }
}

/// The import itself, after the flags are checked and the data dir, the destination, the
/// registry and the API are ready: `eds import` runs it, and so does a running server for HQ's
/// `import` (with the server's own tracker and registry: one writer). `dest` must have the
/// registry and the validator set. Returns the exit code; what it reports goes to `out`.
#[allow(clippy::too_many_arguments)]
pub async fn import<A, W>(
    args: &ImportArgs,
    data_dir: &Path,
    dest: &crate::drain::Destination,
    registry: &crate::registry::Registry,
    tracker: &crate::tracker::Tracker,
    api: &HqApi,
    time_offset: Option<i64>,
    ask: &mut A,
    progress: &super::progress::Progress,
    out: &mut W,
) -> Result<u8>
where
    A: FnMut(&str) -> Result<Answer> + ?Sized,
    W: Write + ?Sized,
{
    use super::progress::Unit;
    let started = Instant::now();
    let latest = registry.latest().await.context("reading the table list from HQ's schema registry")?;
    let versions: HashMap<String, String> =
        latest.iter().map(|s| (s.table().to_owned(), s.model_version().to_owned())).collect();
    let only: BTreeSet<String> = args.only.iter().cloned().collect();
    for t in &only {
        if !versions.contains_key(t) {
            return Err(UsageError(format!("--only {t:?}: HQ's schema registry has no such table")).into());
        }
    }
    // EDS's "create datasource": a full import into a destination that keeps tables drops and
    // recreates them first, once the operator said yes (asked before the export, which can
    // take long). Only the tables being imported are dropped.
    let drops = dest.driver.describe().kind == Kind::State && !args.no_delete;
    let listed = match &args.dir {
        Some(dir) if !args.schema_only => {
            // A download killed midway lacks files: loading the rest would record the tables'
            // import timestamps over rows never loaded.
            let missing = super::download::missing(dir)?;
            if let Some(first) = missing.first() {
                bail!(
                    "{}: the download into it did not finish ({} of its files missing, {first} the first): resume it with --job-id, which fetches only those",
                    dir.display(),
                    missing.len()
                );
            }
            Some(files::list(dir)?)
        }
        _ => None,
    };
    if drops {
        let candidates: BTreeSet<String> = match &listed {
            Some(files) => {
                files.iter().map(|f| f.table.clone()).filter(|t| only.is_empty() || only.contains(t)).collect()
            }
            None if !only.is_empty() => only.clone(),
            None => versions.keys().cloned().collect(),
        };
        if args.dry_run {
            writeln!(out, "dry run: the import would drop and recreate up to {} tables", candidates.len())?;
        } else if !args.no_confirm && !candidates.is_empty() {
            match ask(&drop_question(dest, &args.url, &candidates))? {
                Answer::Yes => {}
                Answer::No => {
                    writeln!(out, "cancelled: nothing was changed")?;
                    return Ok(0);
                }
                Answer::Nobody => {
                    return Err(UsageError(
                        "the import drops and recreates the destination's tables, and nobody answered the question \
                         (stdin is closed): pass --no-confirm to drop them without asking, or --no-delete to keep them"
                            .into(),
                    )
                    .into())
                }
            }
        }
    }
    // The files and each table's export time.
    let (files, times, download_dir): (Vec<ExportFile>, BTreeMap<String, i128>, Option<PathBuf>) = if args.schema_only {
        let now = jiff::Timestamp::now().as_nanosecond();
        (Vec::new(), versions.keys().map(|t| (t.clone(), now)).collect(), None)
    } else if let (Some(dir), Some(files)) = (&args.dir, listed) {
        if files.is_empty() {
            bail!("{}: no export files (named <33 digits>-…-<table>-<n>.ndjson.gz) in it", dir.display());
        }
        let times = files::newest_by_table(&files);
        (files, times, None)
    } else {
        let job_id = match &args.job_id {
            Some(id) => id.clone(),
            None => {
                let request = ExportRequest {
                    time_offset,
                    company_ids: args.company_ids.clone(),
                    location_ids: args.location_ids.clone(),
                    tables: args.only.clone(),
                };
                let id = api.create_export(&request).await?;
                tracing::info!(job_id = %id, "export job created (resume with --job-id {id})");
                writeln!(out, "export job {id} created (an interrupted import resumes with --job-id {id})")?;
                id
            }
        };
        let status = wait_for_export(api, &job_id, args.poll_interval, progress).await?;
        let safe: String =
            job_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        let dir = data_dir.join(format!("import-{safe}"));
        let urls: Vec<String> = status.tables.values().flat_map(|t| t.urls.iter().cloned()).collect();
        let bytes = std::sync::atomic::AtomicU64::new(0);
        let detail = format!("{} files", urls.len());
        progress.start("download", Unit::Bytes, None);
        // No overall deadline for a transfer (a big file takes long): a stall is caught instead.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client for the export's files")?;
        let retry = match args.download_attempts {
            Some(attempts) => super::download::Retry { attempts, ..super::download::Retry::default() },
            None => super::download::Retry::default(),
        };
        let got = super::download::download(&http, &urls, &dir, super::download::PARALLEL, retry, &|n| {
            let total = bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
            progress.update(total, &detail);
        })
        .await?;
        progress.finish();
        writeln!(
            out,
            "downloaded {} files ({}; {} already there) into {}",
            got.fetched,
            crate::timefmt::human_bytes(got.bytes),
            got.kept,
            dir.display()
        )?;
        let files = files::list(&dir)?;
        let mut times = files::newest_by_table(&files);
        for (table, t) in &status.tables {
            if !times.contains_key(table) {
                // A table without files: its cursor (integer nanoseconds).
                if let Ok(ns) = t.cursor.trim().parse::<i128>() {
                    times.insert(table.clone(), ns);
                }
            }
        }
        (files, times, Some(dir))
    };
    let tables: BTreeSet<String> = times
        .keys()
        .filter(|t| only.is_empty() || only.contains(*t))
        .filter(|t| versions.contains_key(*t))
        .cloned()
        .collect();
    if let Some(t) = times.keys().find(|t| !versions.contains_key(*t) && (only.is_empty() || only.contains(*t))) {
        bail!("table {t:?} is in the export but not in HQ's schema registry");
    }
    // Tables first (also for --schema-only), then rows.
    if drops && !args.dry_run {
        if !tables.is_empty() {
            // Until the timestamps are recorded, the server holds this destination's drain.
            let list: Vec<String> = tables.iter().cloned().collect();
            timestamps::mark_unfinished(tracker, &dest.name, &list).await?;
        }
        for t in &tables {
            dest.driver.drop_table(t).await.with_context(|| format!("dropping table {t:?}"))?;
        }
        if !tables.is_empty() {
            let s = if tables.len() == 1 { "" } else { "s" };
            writeln!(out, "dropped {} table{s} to load afresh", tables.len())?;
        }
    }
    if !args.dry_run && dest.driver.describe().needs_schema {
        for t in &tables {
            let version = &versions[t];
            let schema = registry.schema(t, version).await.with_context(|| format!("the schema of table {t:?}"))?;
            dest.driver.ensure_schema(&schema).await.with_context(|| format!("creating table {t:?}"))?;
        }
    }
    let mut loaded = super::load::Loaded::default();
    if !args.schema_only {
        if args.dry_run {
            loaded = dry_run(&files, &tables, &versions)?;
        } else {
            // Rows per table so far; the bar counts them all.
            let so_far = std::sync::Mutex::new(BTreeMap::<String, u64>::new());
            progress.start("load", Unit::Rows, None);
            // Tables dropped above are new: the destination may insert into them its fastest way.
            let fresh = drops;
            loaded = super::load::load(dest, &files, &tables, &versions, fresh, &|table, rows| {
                let mut so_far = so_far.lock().unwrap_or_else(|p| p.into_inner());
                so_far.insert(table.to_owned(), rows);
                let detail = format!("{table}: {}", super::progress::thousands(rows));
                progress.update(so_far.values().sum(), &detail);
            })
            .await?;
            progress.finish();
        }
    }
    let total: u64 = loaded.rows.values().sum();
    let secs = started.elapsed().as_secs_f64();
    for (table, rows) in &loaded.rows {
        writeln!(out, "  {table}: {rows} rows")?;
    }
    for (table, rows) in &loaded.skipped {
        writeln!(out, "  {table}: {rows} rows skipped (no schema validator rule)")?;
    }
    writeln!(
        out,
        "{} {} tables, {total} rows ({} of row data) in {secs:.1}s ({:.0} rows/s){}",
        if args.dry_run { "checked" } else { "loaded" },
        tables.len(),
        crate::timefmt::human_bytes(loaded.bytes),
        total as f64 / secs.max(1e-9),
        if args.dry_run { " — dry run: nothing written" } else { "" }
    )?;
    if !loaded.rejected.is_empty() {
        writeln!(out, "{} rows were refused:", loaded.rejected.len())?;
        for (file, line, why) in loaded.rejected.iter().take(20) {
            writeln!(out, "  {}:{line}: {why}", file.display())?;
        }
        if let Some(dir) = &download_dir {
            writeln!(out, "the files stay in {} (resume with --dir)", dir.display())?;
        }
        writeln!(out, "the import timestamps were not recorded: fix the rows' cause and run the import again")?;
        return Ok(crate::exit::FAILURE);
    }
    if !args.dry_run {
        let exports: Vec<TableExport> = tables
            .iter()
            .filter_map(|t| {
                times.get(t).map(|&ns| TableExport { table: t.clone(), timestamp: files::rfc3339_nanos(ns) })
            })
            .collect();
        timestamps::record(tracker, &dest.name, &exports).await?;
    }
    if let Some(dir) = download_dir {
        if args.no_cleanup || args.dry_run {
            writeln!(out, "the downloaded files stay in {}", dir.display())?;
        } else {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(0)
}

/// Poll the export job until every table is done; a failed table ends the import with its error.
async fn wait_for_export(
    api: &HqApi,
    job_id: &str,
    every: Duration,
    progress: &super::progress::Progress,
) -> Result<ExportStatus> {
    let mut started = false;
    loop {
        let status = api.export_status(job_id).await?;
        if let Some((table, t)) = status.tables.iter().find(|(_, t)| t.status.eq_ignore_ascii_case("failed")) {
            bail!(
                "error exporting table {table}: {}",
                if t.error.is_empty() { "(HQ gave no reason)" } else { &t.error }
            );
        }
        let done = status.tables.values().filter(|t| t.status.eq_ignore_ascii_case("completed")).count();
        if !started {
            started = true;
            progress.start("export", super::progress::Unit::Tables, Some(status.tables.len() as u64));
        }
        progress.update(done as u64, &format!("job {job_id}"));
        if status.completed {
            progress.finish();
            return Ok(status);
        }
        tokio::time::sleep(every).await;
    }
}

/// Read every row as the load would, deliver none.
fn dry_run(
    files: &[ExportFile],
    tables: &BTreeSet<String>,
    versions: &HashMap<String, String>,
) -> Result<super::load::Loaded> {
    use std::io::BufRead;
    let mut out = super::load::Loaded::default();
    for file in files.iter().filter(|f| tables.contains(&f.table)) {
        let f = std::fs::File::open(&file.path).with_context(|| format!("opening {}", file.path.display()))?;
        let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f)));
        for (n, line) in reader.lines().enumerate() {
            let line_no = n as u64 + 1;
            let line = line.with_context(|| format!("{}: reading line {line_no}", file.path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            out.bytes += line.len() as u64;
            let checked = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line)
                .map_err(|e| format!("the line is not a JSON object: {e}"))
                .and_then(|row| {
                    super::load::row_event(file, line_no, row, &versions[&file.table]).map_err(|e| e.to_string())
                });
            match checked {
                Ok(_) => *out.rows.entry(file.table.clone()).or_default() += 1,
                Err(why) => out.rejected.push((file.path.clone(), line_no, why)),
            }
        }
    }
    Ok(out)
}
