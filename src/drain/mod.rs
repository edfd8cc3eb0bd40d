//! Drains: one task per destination, reading the WAL through the destination's own cursor and
//! handing batches to its driver.
//!
//! Invariant: the cursor only moves past records the driver confirmed durable; a crash replays
//! from the last persisted position, which drivers make harmless.
//!
//! Stream destinations (files) receive every event. State destinations (SQL databases) receive
//! the batch folded per (table, key): the drain looks up each event's schema in the registry,
//! drops the properties the schema does not know, asks the driver to make sure the table and its
//! columns exist (DDL, outside the batch's transaction), then hands it the folded changes.
//!
//! Rooms: `destination` (what a `--url` configures, cursors, the recorded list), `deliver`
//! (batches to the driver: bisection, the backstop, the state path with schemas and the fold),
//! `dead_letter` (what a destination refuses goes to its dead-letter log) and `replay`
//! (`eds dlq replay` through the same path).

mod dead_letter;
mod deliver;
mod destination;
mod replay;
#[cfg(test)]
mod tests;

pub use deliver::{deliver_batch, deliver_one};
pub use destination::{
    attach_registry, ensure_cursor, ensure_cursors, parse_destination, parse_destinations, record_destinations,
    recorded_destinations, register, Destination, Overflow, Retry, Start, DESTINATIONS_FILE,
};
pub use replay::{replay, Replayed};

use crate::dlq::watch::Watched;
use crate::record::{self, Kind as EnvelopeKind};
use crate::state::ServerState;
use crate::validator::Verdict;
use anyhow::Result;
use eds_drivers::driver::{DriverError, ErrorClass, Kind};
use eds_drivers::event::ChangeEvent;
use eds_wal::{Reader, Record, Wal};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use dead_letter::dead_letter;
use deliver::{write_state, write_stream, Backstop, Undelivered};

/// How long a destination stopped by a configuration or authentication error waits before it
/// tries again (someone has to fix something; there is no point in hammering it).
const CONFIG_RETRY: Duration = Duration::from_secs(180);

/// At least this many rejected events in a row (across batches), or at least this many making up
/// [`SYSTEMATIC_SHARE`] of one batch, means something systematic: the destination is stopped
/// with that error rather than dead-lettering a whole table.
const SYSTEMATIC_MIN: usize = 10;
/// See [`SYSTEMATIC_MIN`].
const SYSTEMATIC_SHARE: f64 = 0.5;

/// Seconds since `appended_at` (a record's append time, unix microseconds).
fn age_secs(appended_at: u64) -> f64 {
    crate::timefmt::now_micros().saturating_sub(appended_at) as f64 / 1e6
}

/// How often a paused destination's lag in seconds is measured again (it opens a reader).
const PAUSED_LAG_EVERY: Duration = Duration::from_secs(1);

/// The age in seconds of the oldest record destination `name` has not received (0 when it has
/// everything), read from the log at its cursor; `None` when the log or the cursor cannot be read.
async fn undelivered_age(state: &ServerState, name: &str) -> Option<f64> {
    let wal = state.wal().filter(|w| !w.is_poisoned())?;
    let name = name.to_owned();
    let oldest = tokio::task::spawn_blocking(move || -> Option<Option<u64>> {
        let mut reader = wal.cursor_reader(&name).ok()?;
        Some(reader.next().ok()?.map(|rec| rec.appended_at))
    })
    .await
    .ok()??;
    Some(oldest.map_or(0.0, age_secs))
}

/// Run one destination until shutdown.
pub async fn run(dest: Destination, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    let name = dest.name.clone();
    let limits = dest.driver.limits();
    let kind = dest.driver.describe().kind;
    register(&state, std::slice::from_ref(&dest));
    if let Some(unfinished) = &dest.unfinished_import {
        // Streaming changes into tables an import left empty or half loaded would make them look
        // complete: hold the drain (its events wait in the log) until an import succeeds.
        state.hold_for_import(&name, true);
        tracing::error!(
            destination = %name,
            "{unfinished}: this destination's drain is held (its events wait in the write-ahead log) until an import of it succeeds — run `eds import` for it again (or HQ's import)"
        );
    }
    let mut reader: Option<(Wal, Reader)> = None;
    // When the lag of a paused destination was last measured.
    let mut paused_lag_at: Option<Instant> = None;
    let mut backoff = dest.retry.first;
    let mut consecutive_rejected = 0usize;
    let mut backstop = Backstop::default();
    // Rows with dead letters, whose later deliveries a replay must know about (state kinds).
    let watch = match (kind, dest.registry.as_ref().and_then(|r| r.tracker())) {
        (Kind::State, Some(tracker)) => match Watched::load(tracker.clone(), &name) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(destination = %name, error = %eds_wal::error_chain(e.as_ref()), "cannot read which rows have dead letters; `eds dlq replay` will not know which are superseded");
                None
            }
        },
        _ => None,
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        if state.is_paused(&name) {
            state.destination(&name, |d| d.state = "paused");
            // The lag in seconds keeps growing while paused (an alert on it must fire for a
            // destination paused and forgotten): the age of the oldest record not delivered yet.
            if paused_lag_at.is_none_or(|t: Instant| t.elapsed() >= PAUSED_LAG_EVERY) {
                paused_lag_at = Some(Instant::now());
                if let Some(age) = undelivered_age(&state, &name).await {
                    state.metrics.destination_lag_seconds.with_label_values(&[&name]).set(age);
                }
            }
            tokio::select! { _ = tokio::time::sleep(Duration::from_millis(100)) => {}, _ = shutdown.changed() => {} }
            continue;
        }
        paused_lag_at = None;
        let Some(wal) = state.wal().filter(|w| !w.is_poisoned()) else {
            reader = None; // let ingest reopen the log
            tokio::select! { _ = tokio::time::sleep(Duration::from_millis(100)) => {}, _ = shutdown.changed() => {} }
            continue;
        };
        // A reader behind its cursor means the cursor was moved (overflow=drop-oldest): reopen.
        let moved = |w: &Wal, r: &Reader| w.cursor(&name).map(|c| r.next_lsn() <= c.position).unwrap_or(true);
        let (wal, r) = match reader.take() {
            Some((w, r)) if !w.is_poisoned() && !moved(&w, &r) => (w, r),
            _ => {
                let (w, n, start) = (wal.clone(), name.clone(), dest.start);
                let opened = tokio::task::spawn_blocking(move || -> Result<Reader, eds_wal::Error> {
                    ensure_cursor(&w, &n, start)?;
                    w.cursor_reader(&n)
                })
                .await;
                match opened {
                    Ok(Ok(r)) => (wal, r),
                    Ok(Err(e)) => {
                        tracing::error!(destination = %name, error = %eds_wal::error_chain(&e), "cannot read the WAL for this destination");
                        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(5)) => {}, _ = shutdown.changed() => {} }
                        continue;
                    }
                    Err(_) => break,
                }
            }
        };
        // Read what is there, up to the driver's limits; wait briefly when there is nothing.
        let (max_rows, max_bytes) = (limits.max_rows.max(1), limits.max_bytes.max(1));
        let read = tokio::task::spawn_blocking(move || -> Result<(Reader, Vec<Record>), eds_wal::Error> {
            let mut r = r;
            let mut records = Vec::new();
            let mut bytes = 0usize;
            while records.len() < max_rows && bytes < max_bytes {
                match r.next()? {
                    Some(rec) => {
                        bytes += rec.data.len();
                        records.push(rec);
                    }
                    None if records.is_empty() => {
                        if !r.wait(Duration::from_millis(200))? {
                            break;
                        }
                    }
                    None => break,
                }
            }
            Ok((r, records))
        })
        .await;
        let (r, records) = match read {
            Ok(Ok(read)) => read,
            Err(_) => break,
            Ok(Err(e)) => {
                tracing::warn!(destination = %name, error = %eds_wal::error_chain(&e), "reading the WAL failed; retrying");
                tokio::select! { _ = tokio::time::sleep(Duration::from_millis(500)) => {}, _ = shutdown.changed() => {} }
                continue;
            }
        };
        if !records.is_empty() && state.is_paused(&name) {
            // Paused while the read waited for records: deliver none of them. The cursor has not
            // moved, so a fresh reader reads them again after the resume.
            drop(records);
            continue;
        }
        tracing::trace!(destination = %name, records = records.len(), next = r.next_lsn(), "drain read");
        let age = records.first().map_or(0.0, |r| age_secs(r.appended_at));
        state.metrics.destination_lag_seconds.with_label_values(&[&name]).set(age);
        let Some(last) = records.last().map(|r| r.lsn) else {
            state.destination(&name, |d| d.state = "idle");
            reader = Some((wal, r));
            continue;
        };
        // Decode: events go to the driver; dead-letter markers only move the cursor.
        let mut decoded: Vec<(u64, ChangeEvent, &[u8])> = Vec::with_capacity(records.len());
        let mut undecodable: Vec<(u64, String)> = Vec::new();
        // Events the schema validator refused: dead-lettered, never a reason to stop (the rule,
        // not the destination, refuses them, and would refuse them again after any wait).
        let mut invalid: Vec<(u64, String)> = Vec::new();
        let mut skipped = 0usize;
        // Events of rows with dead letters: (LSN, table, key, stream sequence).
        let mut watched: Vec<(u64, String, String, u64)> = Vec::new();
        let watching = watch.as_ref().filter(|w| !w.is_empty());
        // A state destination writes one row image per event: `before` is built only when needed.
        let decode = match kind {
            Kind::State => ChangeEvent::from_json_for_state,
            Kind::Stream => ChangeEvent::from_json,
        };
        for rec in &records {
            match record::decode(&rec.data) {
                Ok(env) if env.kind == EnvelopeKind::Event => match decode(env.payload) {
                    Ok(e) if dest.skip_before.get(&e.table).is_some_and(|&t| e.timestamp < t) => skipped += 1,
                    Ok(mut e) => {
                        if let Some(v) = &dest.validator {
                            match v.check(env.payload) {
                                Verdict::Valid(path) => e.path = path,
                                Verdict::Invalid(why) => {
                                    invalid.push((rec.lsn, why));
                                    continue;
                                }
                                Verdict::NoRule => {
                                    state.metrics.validator_skipped.with_label_values(&[&name, &e.table]).inc();
                                    if v.first_skip(&name, &e.table) {
                                        tracing::warn!(
                                            destination = %name,
                                            table = %e.table,
                                            validator = %v.dir().join(crate::validator::CONFIG_FILE).display(),
                                            "the schema validator has no rule for this table: its events are skipped (counted in {})",
                                            crate::metrics::VALIDATOR_SKIPPED
                                        );
                                    }
                                    continue;
                                }
                            }
                        }
                        if watching.is_some_and(|w| w.contains(&e.table, e.primary_key())) {
                            watched.push((rec.lsn, e.table.clone(), e.primary_key().to_owned(), env.stream_seq));
                        }
                        decoded.push((rec.lsn, e, env.payload))
                    }
                    Err(e) => {
                        undecodable.push((rec.lsn, format!("drivers cannot decode it: {}", eds_wal::error_chain(&e))))
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(destination = %name, lsn = rec.lsn, error = %e, "skipping a damaged WAL record")
                }
            }
        }
        if skipped > 0 {
            tracing::debug!(destination = %name, skipped, "skipped events older than the table's import");
        }
        let started = Instant::now();
        let attempted = decoded.len();
        let undecodable_count = undecodable.len();
        let mut undelivered = Undelivered::default();
        let mut written = match kind {
            _ if decoded.is_empty() => Ok(()),
            Kind::Stream => write_stream(&*dest.driver, &decoded, &mut undelivered).await,
            Kind::State => write_state(&dest, decoded, false, &mut undelivered).await,
        };
        // Events the destination refused: (LSN, reason).
        let mut rejected = std::mem::take(&mut undelivered.rejected);
        if written.is_ok() {
            // The backstop: a change that keeps failing alone with an error the driver cannot
            // place, while the rest of its batch is written, is dead-lettered in the end.
            let (dead, retry) = backstop.judge(std::mem::take(&mut undelivered.suspects));
            rejected.extend(dead);
            rejected.sort_by_key(|r| r.0);
            if let Some(e) = retry {
                written = Err(e);
            }
        }
        // Events no driver can decode are refused like the rest: they count towards a stop.
        if !undecodable.is_empty() {
            rejected.extend(undecodable);
            rejected.sort_by_key(|r| r.0);
        }
        let attempted = attempted + undecodable_count;
        let invalid_count = invalid.len();
        if written.is_ok() && !rejected.is_empty() {
            // Rejections in a row (across batches) or most of a big batch: something systematic
            // (a type mismatch, a NOT NULL column) — stop instead of dead-lettering a whole table.
            let all_rejected = rejected.len() == attempted;
            let in_a_row = if all_rejected { consecutive_rejected + rejected.len() } else { rejected.len() };
            let share = rejected.len() as f64 / attempted.max(1) as f64;
            let systematic = in_a_row >= SYSTEMATIC_MIN && (all_rejected || share >= SYSTEMATIC_SHARE);
            let first = rejected.first().map(|(_, r)| r.clone()).unwrap_or_default();
            written = if systematic {
                Err(DriverError::new(
                    ErrorClass::Config,
                    format!(
                        "{in_a_row} events in a row were rejected, so the destination is stopped instead of dead-lettering them; first reason: {first}"
                    ),
                ))
            } else {
                consecutive_rejected = if all_rejected { in_a_row } else { 0 };
                rejected.append(&mut invalid);
                rejected.sort_by_key(|r| r.0);
                dead_letter(&dest, &name, &records, &rejected, watch.as_ref()).await
            };
        } else if written.is_ok() && !invalid.is_empty() {
            if attempted > 0 {
                consecutive_rejected = 0;
            }
            rejected.append(&mut invalid);
            written = dead_letter(&dest, &name, &records, &rejected, watch.as_ref()).await;
        } else if written.is_ok() && attempted > 0 {
            consecutive_rejected = 0;
        }
        let attempted = attempted + invalid_count;
        // Newer events of rows with dead letters are on record before the cursor moves past them.
        if let (true, Some(w)) = (written.is_ok() && !watched.is_empty(), &watch) {
            let items: Vec<(String, String, u64)> = watched
                .into_iter()
                .filter(|(lsn, ..)| rejected.binary_search_by_key(lsn, |r| r.0).is_err())
                .map(|(_, table, pk, seq)| (table, pk, seq))
                .collect();
            if let Err(e) = w.delivered(&items).await {
                written = Err(DriverError::new(ErrorClass::Transient, eds_wal::error_chain(e.as_ref())));
            }
        }
        match written {
            Ok(()) => {
                backoff = dest.retry.first;
                let took = started.elapsed().as_secs_f64();
                let oldest = records.first().map(|r| r.appended_at).unwrap_or(0);
                let waited = age_secs(oldest);
                state.metrics.observe_flush(&name, took, attempted, waited);
                let (w, n) = (wal.clone(), name.clone());
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || w.advance_cursor(&n, last)).await {
                    tracing::error!(destination = %name, error = %eds_wal::error_chain(&e), "advancing the cursor failed");
                }
                let delivered = attempted.saturating_sub(rejected.len()) as u64;
                let dead = rejected.len() as u64;
                state.metrics.dead_lettered.inc_by(dead);
                state.metrics.destination_dead_lettered.with_label_values(&[&name]).inc_by(dead);
                state.metrics.destination_delivered.with_label_values(&[&name]).inc_by(delivered);
                state.destination(&name, |d| {
                    d.state = "delivering";
                    d.position = d.position.max(last);
                    d.delivered += delivered;
                    d.last_error = None;
                });
                reader = Some((wal, r));
            }
            Err(e) => {
                // Re-read the same records next time: a fresh reader from the cursor.
                drop(r);
                let wait = match e.class {
                    ErrorClass::Config => CONFIG_RETRY,
                    _ => backoff,
                };
                let msg = eds_wal::error_chain(&e);
                tracing::warn!(destination = %name, error = %msg, retry_in = ?wait, "delivery failed; retrying");
                let stopped = e.class == ErrorClass::Config;
                state.metrics.destination_retries.with_label_values(&[&name]).inc();
                state.destination(&name, |d| {
                    d.state = if stopped { "stopped" } else { "retrying" };
                    d.last_error = Some(msg);
                });
                // Capped exponential backoff with jitter, so many destinations do not retry in step.
                let spread = (backoff.as_micros() as u64 / 4).max(1);
                let jitter = Duration::from_micros(crate::timefmt::now_micros() % spread);
                backoff = (backoff * 2).min(dest.retry.max) + jitter;
                tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = shutdown.changed() => {} }
            }
        }
    }
    drop(reader);
    state.destination(&name, |d| d.state = "stopped");
    tracing::info!(destination = %name, "drain stopped");
}
