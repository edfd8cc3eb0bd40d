//! The files of a Shopmonkey bulk export: CockroachDB changefeed files, gzipped NDJSON, one row
//! per line, named `<33 digits>-<id>-<…>-<table>-<n>.ndjson.gz` — the digits a UTC time
//! `YYYYMMDDHHMMSS` with 9 fractional digits (then 10 digits of logical clock).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An export file the import loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its table.
    pub table: String,
    /// Its time, unix nanoseconds.
    pub nanos: i128,
}

/// The table and time (unix nanoseconds) of an export file's base name, or `None` when the name is
/// not an export file's (EDS's pattern `^(\d{33})-\w+-[\w-]+-([a-z0-9_]+)-(\w+)\.ndjson\.gz`).
pub fn parse_name(name: &str) -> Option<(String, i128)> {
    let stem = name.strip_suffix(".ndjson.gz")?;
    let parts: Vec<&str> = stem.split('-').collect();
    // digits, id, at least one middle part, table, counter.
    if parts.len() < 5 {
        return None;
    }
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let (digits, id, table, counter) = (parts[0], parts[1], parts[parts.len() - 2], parts[parts.len() - 1]);
    let middle = &parts[2..parts.len() - 2];
    if digits.len() != 33 || !digits.bytes().all(|b| b.is_ascii_digit()) || !word(id) || !word(counter) {
        return None;
    }
    if !middle.iter().all(|m| word(m)) || middle.is_empty() {
        return None;
    }
    if table.is_empty() || !table.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return None;
    }
    Some((table.to_owned(), time_of(&digits[..23])?))
}

/// `YYYYMMDDHHMMSS` + 9 fractional digits → unix nanoseconds (UTC).
fn time_of(d: &str) -> Option<i128> {
    let n = |r: std::ops::Range<usize>| d.get(r)?.parse::<i64>().ok();
    // The fallible constructors: a month 13 is not an export file's name, not a panic.
    let date = jiff::civil::Date::new(
        i16::try_from(n(0..4)?).ok()?,
        i8::try_from(n(4..6)?).ok()?,
        i8::try_from(n(6..8)?).ok()?,
    )
    .ok()?;
    let time = jiff::civil::Time::new(
        i8::try_from(n(8..10)?).ok()?,
        i8::try_from(n(10..12)?).ok()?,
        i8::try_from(n(12..14)?).ok()?,
        i32::try_from(n(14..23)?).ok()?,
    )
    .ok()?;
    let zoned = jiff::civil::DateTime::from_parts(date, time).to_zoned(jiff::tz::TimeZone::UTC).ok()?;
    Some(zoned.timestamp().as_nanosecond())
}

/// Every export file under `dir` (recursively; other files ignored), sorted by table, then time.
pub fn list(dir: &Path) -> Result<Vec<ExportFile>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let entry = entry.with_context(|| format!("listing {}", d.display()))?;
            let path = entry.path();
            if entry.file_type().with_context(|| format!("reading {}", path.display()))?.is_dir() {
                stack.push(path);
            } else if let Some((table, nanos)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_name) {
                out.push(ExportFile { path, table, nanos });
            }
        }
    }
    out.sort_by(|a, b| (&a.table, a.nanos, &a.path).cmp(&(&b.table, b.nanos, &b.path)));
    Ok(out)
}

/// Per table, the newest file time (unix nanoseconds): the time the table was exported as of.
pub fn newest_by_table(files: &[ExportFile]) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for f in files {
        let e = out.entry(f.table.clone()).or_insert(f.nanos);
        *e = (*e).max(f.nanos);
    }
    out
}

/// RFC 3339 with nanoseconds (Go's `RFC3339Nano`, as EDS stores import timestamps).
pub fn rfc3339_nanos(nanos: i128) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000) as u32;
    crate::timefmt::rfc3339_nanos(u64::try_from(secs).unwrap_or(0), frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eds_names_parse_and_others_do_not() {
        let (t, n) =
            parse_name("202407131650522808024600000000000-c7274317e9a4a9cb-1-651-00000000-user-2.ndjson.gz").unwrap();
        assert_eq!(t, "user");
        assert_eq!(rfc3339_nanos(n), "2024-07-13T16:50:52.28080246Z");
        let (t, n) = parse_name("202407242003015854988560000000000-abc-1-work_order-0.ndjson.gz").unwrap();
        assert_eq!((t.as_str(), rfc3339_nanos(n).as_str()), ("work_order", "2024-07-24T20:03:01.585498856Z"));
        for bad in [
            "202407131650522808024600000000000-c7-1-651-00000000-user-2.ndjson",
            "20240713165052280802460000000000-c7-1-user-2.ndjson.gz",
            "202407131650522808024600000000000-c7-user-2.ndjson.gz",
            "202407131650522808024600000000000-c7-1-User-2.ndjson.gz",
            "202413131650522808024600000000000-c7-1-user-2.ndjson.gz",
            "202407131650522808024600000000000-c7-1-us.er-2.ndjson.gz",
            ".DS_Store",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn listing_finds_files_recursively_and_the_newest_per_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let names = [
            "a/202407131650522808024600000000000-c1-1-order-0.ndjson.gz",
            "a/b/202407141650522808024600000000000-c1-1-order-1.ndjson.gz",
            "202407121650522808024600000000000-c1-1-user-0.ndjson.gz",
            "notes.txt",
            ".DS_Store",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let files = list(dir.path()).unwrap();
        assert_eq!(files.iter().map(|f| f.table.as_str()).collect::<Vec<_>>(), ["order", "order", "user"]);
        let newest = newest_by_table(&files);
        assert_eq!(rfc3339_nanos(newest["order"]), "2024-07-14T16:50:52.28080246Z");
        assert_eq!(rfc3339_nanos(newest["user"]), "2024-07-12T16:50:52.28080246Z");
    }
}
