//! Downloading a bulk export's files: in parallel (bounded), each to `<name>.part` first and
//! renamed only once whole and checked (length as announced, gzip intact, fsynced) — so a re-run
//! after an interruption keeps every finished file and fetches only the rest.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Files fetched at once (EDS's 10).
pub const PARALLEL: usize = 10;
/// Attempts per file.
const ATTEMPTS: u32 = 4;
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
    let bytes = AtomicU64::new(0);
    let results: Vec<Result<bool>> = futures_util::stream::iter(jobs.iter())
        .map(|(url, file)| {
            let bytes = &bytes;
            async move {
                if file.exists() {
                    return Ok(false);
                }
                let mut last = None;
                for attempt in 1..=ATTEMPTS {
                    match fetch(http, url, file, &|n| {
                        bytes.fetch_add(n, Ordering::Relaxed);
                        progress(n)
                    })
                    .await
                    {
                        Ok(()) => return Ok(true),
                        Err(Fetch::Fatal(e)) => return Err(e),
                        Err(Fetch::Again(e)) => {
                            tracing::warn!(file = %file.display(), attempt, error = %format!("{e:#}"), "download failed; trying again");
                            last = Some(e);
                            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                        }
                    }
                }
                Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
                    .context(format!("downloading {} failed {ATTEMPTS} times", shown(url))))
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
    /// Worth another attempt (network, 5xx, a short or damaged body).
    Again(anyhow::Error),
    /// Not (403: the pre-signed URL expired or is wrong; 404).
    Fatal(anyhow::Error),
}

async fn fetch(http: &reqwest::Client, url: &str, file: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<(), Fetch> {
    let what = shown(url);
    let mut response = match tokio::time::timeout(STALL, http.get(url).send()).await {
        Err(_) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: no answer within {STALL:?}"))),
        Ok(Err(e)) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {}", e.without_url()))),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
        return Err(Fetch::Fatal(anyhow::anyhow!("GET {what}: {status} (an expired or wrong pre-signed URL?)")));
    }
    if !status.is_success() {
        return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {status}")));
    }
    let expected = response.content_length();
    let part = file.with_extension(format!(
        "{}.part",
        file.extension().and_then(|e| e.to_str()).unwrap_or_default()
    ));
    let fatal = |e: std::io::Error, doing: &str| Fetch::Fatal(anyhow::Error::new(e).context(format!("{doing} {}", part.display())));
    let mut out = std::fs::File::create(&part).map_err(|e| fatal(e, "creating"))?;
    let mut got = 0u64;
    loop {
        match tokio::time::timeout(STALL, response.chunk()).await {
            Err(_) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: nothing received for {STALL:?}"))),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {}", e.without_url()))),
            Ok(Ok(Some(chunk))) => {
                out.write_all(&chunk).map_err(|e| fatal(e, "writing"))?;
                got += chunk.len() as u64;
                progress(chunk.len() as u64);
            }
        }
    }
    if let Some(n) = expected.filter(|&n| n != got) {
        return Err(Fetch::Again(anyhow::anyhow!("GET {what}: {got} bytes received of {n} announced")));
    }
    out.sync_all().map_err(|e| fatal(e, "syncing"))?;
    drop(out);
    if file.extension().is_some_and(|e| e == "gz") {
        check_gzip(&part).map_err(|e| Fetch::Again(e.context(format!("GET {what}: the file is not whole gzip"))))?;
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
