//! Import timestamps: per table, the time an import wrote the table as of. The server skips,
//! per destination, events of a table older than its timestamp (the import already holds them),
//! and a new durable consumer starts at the earliest one — so nothing is lost or doubled at the
//! seam between an import and streaming.
//!
//! Stored in the tracker: under EDS's key `table-export`, in EDS's format
//! (`[{"Table":"order","Timestamp":"2024-07-24T20:03:01.585498856Z"}]`, so an EDS data dir keeps
//! working and EDS could read eds's), and under `table-export:<destination>` for the destination
//! the import wrote. A destination that has its own key skips by it; when eds recorded no import
//! (a data dir EDS imported into, with its single destination) EDS's key applies to all.

use crate::drain::Destination;
use crate::tracker::Tracker;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// EDS's key.
pub const KEY: &str = "table-export";

/// The key of one destination's import timestamps.
pub fn destination_key(destination: &str) -> String {
    format!("{KEY}:{destination}")
}

/// The key of the mark an import leaves on a destination while it has dropped its tables and not
/// yet finished loading them.
pub fn unfinished_key(destination: &str) -> String {
    format!("import-unfinished:{destination}")
}

/// What an unfinished import's mark says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfinished {
    /// When the import began dropping tables (RFC 3339, UTC).
    pub since: String,
    /// The tables it dropped.
    pub tables: Vec<String>,
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 5;
        let mut names = self.tables.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
        if self.tables.len() > SHOWN {
            names.push_str(", …");
        }
        write!(
            f,
            "an import that began at {} dropped {} table{} ({names}) and did not finish",
            self.since,
            self.tables.len(),
            if self.tables.len() == 1 { "" } else { "s" }
        )
    }
}

/// Mark `destination` as having an unfinished import before it drops `tables`.
pub async fn mark_unfinished(tracker: &Tracker, destination: &str, tables: &[String]) -> Result<()> {
    let mark = Unfinished { since: jiff::Timestamp::now().to_string(), tables: tables.to_vec() };
    let value = serde_json::to_vec(&mark).context("encoding the unfinished-import mark")?;
    tracker.set(&unfinished_key(destination), &value).await
}

/// The unfinished import marked on `destination`, if any. A mark that does not decode still
/// holds (with what little it says), so a damaged value never releases a half-loaded destination.
pub fn unfinished(tracker: &Tracker, destination: &str) -> Result<Option<Unfinished>> {
    Ok(tracker.get(&unfinished_key(destination))?.map(|bytes| {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Unfinished { since: "an unknown time".to_owned(), tables: Vec::new() })
    }))
}

/// One table's import timestamp, as EDS stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableExport {
    /// The table.
    #[serde(rename = "Table")]
    pub table: String,
    /// RFC 3339 with up to nanoseconds, UTC.
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
}

impl TableExport {
    /// The timestamp in unix milliseconds (events' `timestamp` unit), rounded down.
    pub fn millis(&self) -> Result<i64> {
        let ts: jiff::Timestamp =
            self.timestamp.parse().with_context(|| format!("table {}: timestamp {:?}", self.table, self.timestamp))?;
        Ok(ts.as_millisecond())
    }
}

/// Decode a `table-export` value (`null`, as Go writes an empty list, is an empty list).
pub fn decode(bytes: &[u8]) -> Result<Vec<TableExport>> {
    let list: Option<Vec<TableExport>> =
        serde_json::from_slice(bytes).context("the tracker's import timestamps are not EDS's table-export JSON")?;
    Ok(list.unwrap_or_default())
}

/// Encode `exports` as EDS does.
pub fn encode(exports: &[TableExport]) -> Vec<u8> {
    serde_json::to_vec(exports).unwrap_or_else(|_| b"[]".to_vec())
}

/// Per table, unix milliseconds.
fn millis_by_table(exports: &[TableExport]) -> Result<HashMap<String, i64>> {
    exports.iter().map(|e| Ok((e.table.clone(), e.millis()?))).collect()
}

/// Give every destination the import timestamps it skips by (see the module doc). Returns the
/// earliest timestamp of all, in unix milliseconds, for a new consumer's start.
pub fn apply(tracker: &Tracker, destinations: &mut [Destination]) -> Result<Option<i64>> {
    let mut earliest: Option<i64> = None;
    let mut note = |m: &HashMap<String, i64>| {
        if let Some(&min) = m.values().min() {
            earliest = Some(earliest.map_or(min, |e| e.min(min)));
        }
    };
    // Any import eds made names its destination: EDS's key then never applies to all of them (a
    // destination renamed or removed since must not make the others skip what they never got).
    let eds_imported = tracker.scan_prefix(&format!("{KEY}:"))?;
    let mut own = 0;
    for d in destinations.iter_mut() {
        d.unfinished_import = unfinished(tracker, &d.name)?.map(|u| u.to_string());
        if let Some(bytes) = tracker.get(&destination_key(&d.name))? {
            let m = millis_by_table(&decode(&bytes)?).with_context(|| format!("destination {}", d.name))?;
            note(&m);
            tracing::info!(destination = %d.name, tables = m.len(), "skipping events older than this destination's import, per table");
            d.skip_before = m;
            own += 1;
        }
    }
    for (key, _) in &eds_imported {
        let name = key.trim_start_matches(KEY).trim_start_matches(':');
        if !destinations.iter().any(|d| d.name == name) {
            tracing::warn!(destination = name, "an import was recorded for a destination this server does not have (renamed or removed?): its timestamps apply to none");
        }
    }
    if let Some(bytes) = tracker.get(KEY)? {
        let m = millis_by_table(&decode(&bytes)?).context("EDS's table-export")?;
        note(&m);
        if eds_imported.is_empty() && own == 0 && !m.is_empty() {
            tracing::info!(
                tables = m.len(),
                "skipping events older than the data dir's import (EDS's table-export), per table"
            );
            for d in destinations.iter_mut() {
                d.skip_before = m.clone();
            }
        }
    }
    Ok(earliest)
}

/// Record `exports` as the import timestamps of `destination` (and under EDS's key), and clear
/// its unfinished-import mark in the same write: the import is done.
pub async fn record(tracker: &Tracker, destination: &str, exports: &[TableExport]) -> Result<()> {
    let value = encode(exports);
    tracker
        .set_all_and_remove(
            &[(KEY.to_owned(), value.clone()), (destination_key(destination), value)],
            &[unfinished_key(destination)],
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eds_format_round_trips_and_reads_as_milliseconds() {
        let eds = br#"[{"Table":"order","Timestamp":"2024-07-24T20:03:01.585498856Z"},{"Table":"user","Timestamp":"2024-07-24T20:03:02Z"}]"#;
        let v = decode(eds).unwrap();
        assert_eq!(v[0], TableExport { table: "order".into(), timestamp: "2024-07-24T20:03:01.585498856Z".into() });
        assert_eq!(v[0].millis().unwrap(), 1_721_851_381_585);
        assert_eq!(v[1].millis().unwrap(), 1_721_851_382_000);
        assert_eq!(encode(&v), eds.to_vec());
        let bad = TableExport { table: "t".into(), timestamp: "yesterday".into() };
        assert!(format!("{:#}", bad.millis().unwrap_err()).contains("table t"));
        assert!(decode(b"{}").is_err());
        assert_eq!(decode(b"null").unwrap(), vec![], "Go's empty list");
    }

    #[tokio::test]
    async fn an_unfinished_import_marks_its_destination_until_it_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        let mut dests = vec![
            crate::drain::parse_destination("file:///tmp/eds-a?name=a").unwrap().unwrap(),
            crate::drain::parse_destination("file:///tmp/eds-b?name=b").unwrap().unwrap(),
        ];
        let tables: Vec<String> = (1..=7).map(|i| format!("t{i}")).collect();
        mark_unfinished(&tracker, "a", &tables).await.unwrap();
        apply(&tracker, &mut dests).unwrap();
        let held = dests[0].unfinished_import.clone().expect("a is marked");
        assert!(held.contains("dropped 7 tables (t1, t2, t3, t4, t5, …) and did not finish"), "{held}");
        assert_eq!(dests[1].unfinished_import, None, "only the imported destination is held");

        // A damaged mark still holds.
        tracker.set(&unfinished_key("b"), b"not json").await.unwrap();
        apply(&tracker, &mut dests).unwrap();
        assert!(dests[1].unfinished_import.as_deref().unwrap().contains("an unknown time"));

        let exports = vec![TableExport { table: "t1".into(), timestamp: "2024-07-24T20:03:01Z".into() }];
        record(&tracker, "a", &exports).await.unwrap();
        assert_eq!(unfinished(&tracker, "a").unwrap(), None, "a recorded import clears the mark");
        apply(&tracker, &mut dests).unwrap();
        assert_eq!(dests[0].unfinished_import, None);
        assert_eq!(dests[0].skip_before.get("t1"), Some(&1_721_851_381_000));
    }
}
