//! Downloading a bulk export's files: in parallel (bounded), each to `<name>.part` first and
//! renamed only once whole and checked (length as announced, gzip intact, fsynced) — so a re-run
//! after an interruption keeps every finished file and fetches only the rest. Before any file, the
//! names of all of them are written to [`MANIFEST`] in the directory, so that loading the
//! directory with `--dir` can tell an interrupted download from a whole one.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Files fetched at once (EDS's 10).
pub const PARALLEL: usize = 10;
/// How often a file is tried, and the first wait between attempts; the waits double up to 30 s,
/// longer when the server says so (`Retry-After`, at most 2 minutes).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per file, the first included.
    pub attempts: u32,
    /// The wait after the first failure.
    pub first_wait: Duration,
}

impl Default for Retry {
    /// 8 attempts from half a second: about a minute of trying in all.
    fn default() -> Retry {
        Retry { attempts: 8, first_wait: Duration::from_millis(500) }
    }
}
/// The file in a download directory that lists the export's file names, one a line.
pub const MANIFEST: &str = ".export-files";

/// The files [`MANIFEST`] in `dir` names that are not in `dir` (an interrupted download); none
/// when there is no manifest (a directory eds did not download, EDS's for one).
pub fn missing(dir: &Path) -> Result<Vec<String>> {
    let manifest = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&manifest) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", manifest.display()))),
    };
    Ok(text.lines().filter(|n| !n.is_empty() && !dir.join(n).is_file()).map(str::to_owned).collect())
}

/// A transfer that delivers nothing for this long is cut and tried again.
const STALL: Duration = Duration::from_secs(60);

/// What a download did.
#[derive(Debug, Default)]
pub struct Downloaded {
    /// Every file, in the order of the URLs.
    pub files: Vec<PathBuf>,
    /// Fetched now.
    pub fetched: usize,
    /// Already there from an earlier run.
    pub kept: usize,
    /// Bytes fetched now.
    pub bytes: u64,
}

/// The file name a URL's file gets: the last segment of its path. Pre-signed URLs carry secrets
/// in their query, so messages name only the path.
pub fn file_name(url: &str) -> Result<(String, String)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("export file URL {:?} is not a URL", shown(url)))?;
    let path = parsed.path().to_owned();
    let name = path.rsplit('/').next().unwrap_or_default().to_owned();
    if name.is_empty() || name == "." || name == ".." || name.contains('\\') || name.starts_with('.') {
        bail!("export file URL path {path:?} does not end in a file name");
    }
    Ok((name, path))
}

/// A URL without its query (pre-signed signatures) for messages.
fn shown(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Download every URL into `dir` (created when missing), `parallel` at a time. `progress` is
/// called with the bytes of each chunk received.
pub async fn download(
    http: &reqwest::Client,
    urls: &[String],
    dir: &Path,
    parallel: usize,
    retry: Retry,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Downloaded> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for url in urls {
        let (name, path) = file_name(url)?;
        if !names.insert(name.clone()) {
            bail!("two export files are named {name:?} (the second at {path:?})");
        }
        jobs.push((url.clone(), dir.join(name)));
    }
    let listed: String =
        jobs.iter().filter_map(|(_, f)| f.file_name()).map(|n| format!("{}\n", n.to_string_lossy())).collect();
    crate::datadir::write_atomically(&dir.join(MANIFEST), listed.as_bytes())?;
    let bytes = AtomicU64::new(0);
    // Owned jobs: a stream over borrowed ones makes a future the compiler cannot prove `Send`
    // (a running server spawns the import).
    let results: Vec<Result<bool>> = futures_util::stream::iter(jobs.clone())
        .map(|(url, file)| {
            let bytes = &bytes;
            async move {
                if file.exists() {
                    return Ok(false);
                }
                let mut last = None;
                for attempt in 1..=retry.attempts.max(1) {
                    let got = AtomicU64::new(0);
                    match fetch(http, &url, &file, &|n| {
                        got.fetch_add(n, Ordering::Relaxed);
                        progress(n)
                    })
                    .await
                    {
                        Ok(()) => {
                            bytes.fetch_add(got.load(Ordering::Relaxed), Ordering::Relaxed);
                            return Ok(true);
                        }
                        Err(Fetch::Fatal(e)) => return Err(e),
                        Err(Fetch::Again(e, asked)) => {
                            last = Some(e);
                            if attempt >= retry.attempts {
                                break;
                            }
                            let backoff = (retry.first_wait * (1 << (attempt - 1).min(10))).min(Duration::from_secs(30));
                            let wait = asked.map_or(backoff, |a| a.min(Duration::from_secs(120)).max(backoff));
                            let error = last.as_ref().map(|e| format!("{e:#}")).unwrap_or_default();
                            tracing::warn!(file = %file.display(), attempt, retry_in = ?wait, error, "download failed; trying again");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
                    .context(format!("downloading {} failed {} times", shown(&url), retry.attempts.max(1))))
            }
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    let mut out = Downloaded { bytes: bytes.load(Ordering::Relaxed), ..Downloaded::default() };
    for (r, (_, file)) in results.into_iter().zip(jobs) {
        match r? {
            true => out.fetched += 1,
            false => out.kept += 1,
        }
        out.files.push(file);
    }
    crate::datadir::fsync_dir(dir)?;
    Ok(out)
}

enum Fetch {
    /// Worth another attempt (network, 5xx, 429, a short or damaged body), after the wait the
    /// server asked for, if it did.
    Again(anyhow::Error, Option<Duration>),
    /// Not (403: the pre-signed URL expired or is wrong; 404).
    Fatal(anyhow::Error),
}

async fn fetch(http: &reqwest::Client, url: &str, file: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<(), Fetch> {
    let what = shown(url);
    let mut response = match tokio::time::timeout(STALL, http.get(url).send()).await {
        Err(_) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: no answer within {STALL:?}"), None)),
        Ok(Err(e)) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {}", e.without_url()), None)),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
        return Err(Fetch::Fatal(anyhow::anyhow!("GET {what}: {status} (an expired or wrong pre-signed URL?)")));
    }
    if !status.is_success() {
        let asked = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {status}"), asked));
    }
    let expected = response.content_length();
    let part = file.with_extension(format!("{}.part", file.extension().and_then(|e| e.to_str()).unwrap_or_default()));
    let fatal = |e: std::io::Error, doing: &str| {
        Fetch::Fatal(anyhow::Error::new(e).context(format!("{doing} {}", part.display())))
    };
    let mut out = std::fs::File::create(&part).map_err(|e| fatal(e, "creating"))?;
    let mut got = 0u64;
    loop {
        match tokio::time::timeout(STALL, response.chunk()).await {
            Err(_) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: nothing received for {STALL:?}"), None)),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {}", e.without_url()), None)),
            Ok(Ok(Some(chunk))) => {
                out.write_all(&chunk).map_err(|e| fatal(e, "writing"))?;
                got += chunk.len() as u64;
                progress(chunk.len() as u64);
            }
        }
    }
    if let Some(n) = expected.filter(|&n| n != got) {
        return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {got} bytes received of {n} announced"), None));
    }
    out.sync_all().map_err(|e| fatal(e, "syncing"))?;
    drop(out);
    if file.extension().is_some_and(|e| e == "gz") {
        // Reading the whole file is CPU work: off the async threads.
        let p = part.clone();
        let checked = tokio::task::spawn_blocking(move || check_gzip(&p))
            .await
            .map_err(|e| Fetch::Fatal(anyhow::anyhow!("checking {}: {e}", part.display())))?;
        checked.map_err(|e| Fetch::Again(e.context(format!("GET {what}: the file is not whole gzip")), None))?;
    }
    std::fs::rename(&part, file).map_err(|e| fatal(e, "renaming"))?;
    Ok(())
}

/// Read a gzip file to its end: its CRC and length trailer prove it whole.
pub fn check_gzip(path: &Path) -> Result<u64> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut d = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
    std::io::copy(&mut d, &mut std::io::sink()).with_context(|| format!("{}", path.display()))
}
