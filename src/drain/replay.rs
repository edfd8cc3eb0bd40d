//! `eds dlq replay`: a destination's dead letters delivered again, through the same path as the
//! drain, once the operator fixed what made the destination refuse them.

use crate::dlq::{options, REPLAYED_CURSOR};
use crate::record::{self, Kind};
use anyhow::{Context, Result};
use eds_wal::Wal;
use std::path::Path;

/// What `eds dlq replay` did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Dead letters delivered.
    pub delivered: u64,
    /// Dead letters left alone because a newer event of the same row was delivered since
    /// (stream sequence, table, key, the newer event's stream sequence): replaying them would roll
    /// the row back. They stay pending for `--force`.
    pub superseded: Vec<(u64, String, String, u64)>,
    /// The dead letter the destination still refuses (stream sequence, reason); it and those
    /// after it stay pending.
    pub still_rejected: Vec<(u64, String)>,
}

/// Re-deliver a destination's dead letters not replayed yet through `dest` (after the operator
/// fixed what made the destination reject them), in order. Needs the server stopped: it takes the
/// dead-letter log's lock. A dead letter of a row that has had a newer event delivered since is
/// skipped as superseded (a state destination would get the older row back) unless `force`;
/// it stays pending, and so do the letters after it for the next replay, which delivers them
/// again harmlessly.
pub async fn replay(
    data_dir: &Path,
    destination: &str,
    dest: &crate::drain::Destination,
    force: bool,
) -> Result<Replayed> {
    let d = data_dir.join("dlq").join(destination);
    if !d.is_dir() {
        anyhow::bail!("destination {destination:?} has no dead-letter log at {}", d.display());
    }
    let wal = Wal::open(&d, options()).map_err(|e| match e {
        eds_wal::Error::Locked { .. } => {
            anyhow::anyhow!("{} is in use: stop the server before replaying dead letters", d.display())
        }
        e => anyhow::Error::new(e).context(format!("opening {}", d.display())),
    })?;
    if wal.cursor(REPLAYED_CURSOR).is_err() {
        wal.create_cursor(REPLAYED_CURSOR, eds_wal::CursorStart::Oldest)?;
    }
    // Only a destination holding rows can be rolled back.
    let tracker = match dest.driver.describe().kind {
        eds_drivers::driver::Kind::State => dest.registry.as_ref().and_then(|r| r.tracker()),
        eds_drivers::driver::Kind::Stream => None,
    };
    let mut r = wal.cursor_reader(REPLAYED_CURSOR)?;
    let mut done = Replayed::default();
    let mut last = wal.cursor(REPLAYED_CURSOR)?.position;
    let mut hold: Option<u64> = None;
    while let Some(rec) = r.next()? {
        let env = record::decode(&rec.data).with_context(|| format!("dead-letter record {} is damaged", rec.lsn))?;
        if env.kind == Kind::DeadLetter {
            let event = eds_drivers::event::ChangeEvent::from_json(env.payload).with_context(|| {
                format!("dead letter {} (stream sequence {}) is not a change event", rec.lsn, env.stream_seq)
            })?;
            let newer = match (&tracker, force) {
                (Some(t), false) => {
                    crate::dlq::watch::superseded_by(t, destination, &event.table, event.primary_key(), env.stream_seq)?
                }
                _ => None,
            };
            if let Some(by) = newer {
                done.superseded.push((env.stream_seq, event.table.clone(), event.primary_key().to_owned(), by));
                hold.get_or_insert(last);
            } else {
                match super::deliver_one(dest, rec.lsn, event, env.payload).await {
                    Ok(None) => done.delivered += 1,
                    Ok(Some(reason)) => {
                        // Still refused: stop here so it stays pending, in order, for a later replay.
                        done.still_rejected.push((env.stream_seq, reason));
                        break;
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("replaying dead letter {}", rec.lsn))),
                }
            }
        }
        last = rec.lsn;
    }
    drop(r);
    wal.advance_cursor(REPLAYED_CURSOR, hold.unwrap_or(last))?;
    wal.close()?;
    Ok(done)
}
