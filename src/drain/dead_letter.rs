//! What a destination refuses goes, with its reason, to that destination's dead-letter log.

use crate::dlq::watch::Watched;
use crate::record::{self, Kind as EnvelopeKind};
use anyhow::Result;
use eds_drivers::driver::ErrorClass;
use eds_drivers::event::ChangeEvent;
use eds_wal::Record;

use super::destination::Destination;

/// Make the rejected events durable in the destination's dead-letter log, with their reasons.
pub(super) async fn dead_letter(
    dest: &Destination,
    name: &str,
    records: &[Record],
    rejected: &[(u64, String)],
    watch: Option<&Watched>,
) -> Result<(), eds_drivers::driver::DriverError> {
    let Some(dlq) = dest.dead_letters.clone() else {
        return Err(eds_drivers::driver::DriverError::new(
            ErrorClass::Config,
            format!("destination {name:?} rejected {} events and has no dead-letter log", rejected.len()),
        ));
    };
    let mut entries = Vec::with_capacity(rejected.len());
    let mut rows = Vec::new();
    for (lsn, reason) in rejected {
        let Some(rec) = records.iter().find(|r| r.lsn == *lsn) else { continue };
        let env = record::decode(&rec.data).map_err(|e| {
            eds_drivers::driver::DriverError::new(ErrorClass::Config, format!("WAL record {lsn} is damaged: {e}"))
        })?;
        tracing::warn!(destination = %name, lsn, stream_seq = env.stream_seq, reason = %reason, "the destination rejected an event: dead-lettered");
        if let Ok(e) = ChangeEvent::from_json(env.payload) {
            let pk = e.primary_key().to_owned();
            rows.push((e.table, pk, env.stream_seq));
        }
        entries.push(
            record::Envelope {
                kind: EnvelopeKind::DeadLetter,
                reason: format!("destination {name} rejected it: {reason}").into(),
                ..env
            }
            .encode(),
        );
    }
    // The rows first: a watched row without its dead letter (after a crash here) is harmless.
    if let Some(w) = watch {
        w.dead_lettered(&rows).await.map_err(|e| {
            eds_drivers::driver::DriverError::new(ErrorClass::Transient, eds_wal::error_chain(e.as_ref()))
        })?;
    }
    tokio::task::spawn_blocking(move || dlq.append(&entries))
        .await
        .map_err(|e| {
            eds_drivers::driver::DriverError::new(ErrorClass::Transient, format!("dead-letter task failed: {e}"))
        })?
        .map_err(|e| {
            eds_drivers::driver::DriverError::caused(
                ErrorClass::Transient,
                "writing the destination's dead-letter log",
                e,
            )
        })
}
