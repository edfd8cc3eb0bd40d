//! Which rows have dead letters, and whether a newer event of the same row was delivered since —
//! so `eds dlq replay` never rolls a row back to an older image.
//!
//! Invariant: for every (destination, table, primary key) with a dead letter, the tracker holds
//! the highest stream sequence dead-lettered and the highest delivered after it; the drain keeps
//! the second up to date before it moves its cursor past a delivery of a watched row. Only state
//! destinations (current row per key) are watched: a stream destination keeps every event.

use crate::tracker::Tracker;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Mutex;

const PREFIX: &str = "dlq-watch:";

/// What the tracker holds for a watched row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Highest stream sequence of the row that was dead-lettered.
    pub dead: u64,
    /// Highest stream sequence of the row delivered (0 when none was).
    pub delivered: u64,
}

/// The tracker key of a row: the JSON array `[destination, table, key]` (no separator to confuse).
fn key(destination: &str, table: &str, pk: &str) -> String {
    format!("{PREFIX}{}", serde_json::json!([destination, table, pk]))
}

/// The watched rows of one destination.
#[derive(Debug)]
pub struct Watched {
    tracker: Tracker,
    destination: String,
    rows: Mutex<HashSet<(String, String)>>,
}

impl Watched {
    /// The rows of `destination` the tracker watches.
    pub fn load(tracker: Tracker, destination: &str) -> Result<Watched> {
        let prefix = format!("{PREFIX}[{},", serde_json::json!(destination));
        let mut rows = HashSet::new();
        for (k, _) in tracker.scan_prefix(&prefix)? {
            let parsed: Option<(String, String, String)> =
                k.strip_prefix(PREFIX).and_then(|json| serde_json::from_str(json).ok());
            if let Some((_, table, pk)) = parsed {
                rows.insert((table, pk));
            }
        }
        Ok(Watched { tracker, destination: destination.to_owned(), rows: Mutex::new(rows) })
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no row is watched (the drain's usual case: nothing to look up).
    pub fn is_empty(&self) -> bool {
        self.rows().is_empty()
    }

    /// Whether the row has dead letters.
    pub fn contains(&self, table: &str, pk: &str) -> bool {
        self.rows().contains(&(table.to_owned(), pk.to_owned()))
    }

    /// Note rows being dead-lettered: `(table, key, stream sequence)`. Durable when it returns.
    pub async fn dead_lettered(&self, items: &[(String, String, u64)]) -> Result<()> {
        self.update(items, |w, seq| w.dead = w.dead.max(seq)).await?;
        self.rows().extend(items.iter().map(|(t, k, _)| (t.clone(), k.clone())));
        Ok(())
    }

    /// Note deliveries of watched rows: `(table, key, stream sequence)`. Durable when it returns.
    pub async fn delivered(&self, items: &[(String, String, u64)]) -> Result<()> {
        self.update(items, |w, seq| w.delivered = w.delivered.max(seq)).await
    }

    async fn update(&self, items: &[(String, String, u64)], apply: impl Fn(&mut Watch, u64)) -> Result<()> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::with_capacity(items.len());
        for (table, pk, seq) in items {
            let k = key(&self.destination, table, pk);
            let mut w = match entries.iter().position(|(e, _)| *e == k) {
                Some(i) => serde_json::from_slice(&entries.swap_remove(i).1).unwrap_or_default(),
                None => read(&self.tracker, &k)?.unwrap_or_default(),
            };
            apply(&mut w, *seq);
            entries.push((k, serde_json::to_vec(&w)?));
        }
        self.tracker.set_all(&entries).await.context("recording rows with dead letters in the tracker")
    }
}

fn read(tracker: &Tracker, key: &str) -> Result<Option<Watch>> {
    let Some(bytes) = tracker.get(key)? else { return Ok(None) };
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("tracker key {key} is not valid"))?))
}

/// The stream sequence of a newer event of the row delivered to `destination` since `seq` was
/// dead-lettered, if there is one: replaying `seq` would roll the row back.
pub fn superseded_by(tracker: &Tracker, destination: &str, table: &str, pk: &str, seq: u64) -> Result<Option<u64>> {
    Ok(read(tracker, &key(destination, table, pk))?.map(|w| w.delivered).filter(|&d| d > seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_row_delivered_after_its_dead_letter_supersedes_it() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::open(dir.path()).unwrap();
        let w = Watched::load(tracker.clone(), "pg").unwrap();
        assert!(w.is_empty());
        w.dead_lettered(&[("order".into(), "k/1".into(), 7)]).await.unwrap();
        assert!(w.contains("order", "k/1") && !w.contains("order", "k"));
        assert_eq!(superseded_by(&tracker, "pg", "order", "k/1", 7).unwrap(), None);
        w.delivered(&[("order".into(), "k/1".into(), 9), ("order".into(), "k/1".into(), 8)]).await.unwrap();
        assert_eq!(superseded_by(&tracker, "pg", "order", "k/1", 7).unwrap(), Some(9));
        assert_eq!(superseded_by(&tracker, "pg", "order", "k/1", 10).unwrap(), None, "newer than the delivery");
        assert_eq!(superseded_by(&tracker, "other", "order", "k/1", 7).unwrap(), None, "per destination");
        drop(w);
        // What the tracker holds survives a restart.
        let again = Watched::load(tracker.clone(), "pg").unwrap();
        assert!(again.contains("order", "k/1"));
        assert!(Watched::load(tracker, "pgx").unwrap().is_empty(), "a name's prefix is not the name");
    }
}
