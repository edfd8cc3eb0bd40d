//! Loading export files into a destination: every row becomes the INSERT event EDS synthesised
//! for it (fixed where EDS was wrong: a unique id per row, the row's own company and location),
//! goes through the schema validator when there is one, and is delivered in batches the size of
//! the destination's limits through the drain's own write path (schemas, tables, folding,
//! isolating rejected rows). A batch the destination cannot take for a passing reason is tried
//! again with backoff, for a bounded time; a row it rejects is reported with its file and line.

use super::files::ExportFile;
use crate::drain::Destination;
use crate::validator::Verdict;
use anyhow::{bail, Context, Result};
use eds_drivers::driver::ErrorClass;
use eds_drivers::event::ChangeEvent;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long one batch may keep failing for passing reasons before the import gives up.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Rows delivered, per table.
    pub rows: BTreeMap<String, u64>,
    /// Rows skipped because the schema validator has no rule for their table, per table.
    pub skipped: BTreeMap<String, u64>,
    /// Rows the destination or the validator refused: file, line, why.
    pub rejected: Vec<(PathBuf, u64, String)>,
    /// Bytes of row data read (uncompressed).
    pub bytes: u64,
}

/// The event eds synthesises for line `line` of `file` holding `row`.
pub fn row_event(file: &ExportFile, line: u64, row: Map<String, Value>, model_version: &str) -> Result<Vec<u8>> {
    let id = match row.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => bail!("the row has no id"),
    };
    let name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let millis = file.nanos.div_euclid(1_000_000);
    let text = |k: &str| row.get(k).and_then(Value::as_str).map(str::to_owned);
    let event = json!({
        "operation": "INSERT",
        "id": format!("{:016x}-{line}", xxhash_rust::xxh64::xxh64(name.as_bytes(), 0)),
        "table": file.table,
        "key": [id],
        "modelVersion": model_version,
        "companyId": text("companyId"),
        "locationId": text("locationId"),
        "userId": text("userId"),
        "timestamp": millis,
        "mvccTimestamp": format!("{}.0000000000", file.nanos),
        "imported": true,
        "after": Value::Object(row),
    });
    Ok(event.to_string().into_bytes())
}

/// Load `files` (those of `tables`) into `dest`; `versions` gives each table's model version.
/// `progress` hears (table, rows delivered so far in it) after every batch.
pub async fn load(
    dest: &Destination,
    files: &[ExportFile],
    tables: &BTreeSet<String>,
    versions: &HashMap<String, String>,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Loaded> {
    let limits = dest.driver.limits();
    let mut out = Loaded::default();
    // The batch being filled: (position, event, raw bytes), and where each position came from.
    let mut batch: Vec<(u64, ChangeEvent, Vec<u8>)> = Vec::new();
    let mut origin: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut batch_bytes = 0usize;
    let mut position = 0u64;
    for (index, file) in files.iter().enumerate().filter(|(_, f)| tables.contains(&f.table)) {
        let version = versions
            .get(&file.table)
            .with_context(|| format!("table {:?} has no schema in HQ's registry", file.table))?;
        let f = std::fs::File::open(&file.path).with_context(|| format!("opening {}", file.path.display()))?;
        let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f)));
        for (n, line) in reader.lines().enumerate() {
            let line_no = n as u64 + 1;
            let line = line.with_context(|| format!("{}: reading line {line_no}", file.path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            out.bytes += line.len() as u64;
            position += 1;
            let refuse = |out: &mut Loaded, why: String| out.rejected.push((file.path.clone(), line_no, why));
            let row = match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(row)) => row,
                Ok(_) => {
                    refuse(&mut out, "the line is not a JSON object".into());
                    continue;
                }
                Err(e) => {
                    refuse(&mut out, format!("the line is not JSON: {e}"));
                    continue;
                }
            };
            let raw = match row_event(file, line_no, row, version) {
                Ok(raw) => raw,
                Err(e) => {
                    refuse(&mut out, e.to_string());
                    continue;
                }
            };
            let mut event = match ChangeEvent::from_json_for_state(&raw) {
                Ok(e) => e,
                Err(e) => {
                    refuse(&mut out, format!("not a valid row: {e}"));
                    continue;
                }
            };
            if let Some(v) = &dest.validator {
                match v.check(&raw) {
                    Verdict::Valid(path) => event.path = path,
                    Verdict::Invalid(why) => {
                        refuse(&mut out, why);
                        continue;
                    }
                    Verdict::NoRule => {
                        *out.skipped.entry(file.table.clone()).or_default() += 1;
                        continue;
                    }
                }
            }
            batch_bytes += raw.len();
            origin.insert(position, (index, line_no));
            batch.push((position, event, raw));
            if batch.len() >= limits.max_rows || batch_bytes >= limits.max_bytes {
                deliver(dest, files, std::mem::take(&mut batch), &mut origin, &mut out, progress).await?;
                batch_bytes = 0;
            }
        }
    }
    if !batch.is_empty() {
        deliver(dest, files, batch, &mut origin, &mut out, progress).await?;
    }
    Ok(out)
}

async fn deliver(
    dest: &Destination,
    files: &[ExportFile],
    batch: Vec<(u64, ChangeEvent, Vec<u8>)>,
    origin: &mut HashMap<u64, (usize, u64)>,
    out: &mut Loaded,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<()> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    let rejected = loop {
        let decoded: Vec<(u64, ChangeEvent, &[u8])> =
            batch.iter().map(|(p, e, raw)| (*p, e.clone(), raw.as_slice())).collect();
        match crate::drain::deliver_batch(dest, decoded).await {
            Ok(rejected) => break rejected,
            Err(e)
                if matches!(e.class, ErrorClass::Transient | ErrorClass::Unknown) && started.elapsed() < RETRY_FOR =>
            {
                tracing::warn!(destination = %dest.name, error = %eds_wal::error_chain(&e), retry_in = ?wait, "import batch failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("delivering to destination {:?}", dest.name)));
            }
        }
    };
    let refused: std::collections::HashSet<u64> = rejected.iter().map(|(p, _)| *p).collect();
    for (p, why) in rejected {
        if let Some(&(file, line)) = origin.get(&p) {
            out.rejected.push((files[file].path.clone(), line, why));
        }
    }
    let mut touched = BTreeSet::new();
    for (p, e, _) in &batch {
        origin.remove(p);
        if !refused.contains(p) {
            *out.rows.entry(e.table.clone()).or_default() += 1;
            touched.insert(e.table.clone());
        }
    }
    for t in touched {
        progress(&t, out.rows[&t]);
    }
    Ok(())
}
