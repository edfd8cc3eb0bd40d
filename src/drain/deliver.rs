//! Delivering one batch: to a stream destination every event, to a state destination the
//! per-key fold with schemas; what the destination refuses is isolated by bisection, and a change
//! that keeps failing with an unplaced error is judged by the backstop.

use anyhow::Result;
use eds_drivers::driver::{Batch, Delivery, Driver, DriverError, ErrorClass, Kind, StateChange};
use eds_drivers::event::{fold_taking, ChangeEvent, Row};
use eds_drivers::schema::Schema;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::destination::Destination;

/// How long one driver write may take before it counts as a transient failure.
const WRITE_DEADLINE: Duration = Duration::from_secs(120);

/// What bisecting one batch found, by index in the batch.
#[derive(Debug, Default)]
struct Refused {
    /// Items the destination refused for their data, with the reason.
    rejected: Vec<(usize, String)>,
    /// Items that failed alone with an error the driver could not place ([`ErrorClass::Unknown`]).
    suspects: Vec<(usize, String)>,
    /// Items written.
    written: usize,
}

/// Write `batch`; when the destination rejects data or finds the batch too large, split it in
/// halves until the rejected items stand alone, and collect those (index in `batch`, reason)
/// instead of failing. An error the driver cannot place is bisected the same way, so the change
/// behind it stands alone as a suspect — unless nothing of the batch can be written at all, which
/// is the destination's problem, not a row's: then the error is returned. Replayed halves are
/// harmless: writes are idempotent.
fn deliver<'a>(
    driver: &'a dyn Driver,
    batch: Batch<'a>,
    fresh: bool,
    offset: usize,
    refused: &'a mut Refused,
) -> eds_drivers::driver::BoxFuture<'a, Result<(), DriverError>> {
    Box::pin(async move {
        let write = if fresh { driver.write_fresh(batch) } else { driver.write(batch) };
        let result = match tokio::time::timeout(WRITE_DEADLINE, write).await {
            Ok(r) => r,
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("writing {} changes did not finish within {WRITE_DEADLINE:?}", batch.len()),
            )),
        };
        let split = matches!(result, Err(ref e) if batch.len() > 1
            && matches!(e.class, ErrorClass::Rejected | ErrorClass::TooLarge | ErrorClass::Unknown));
        match result {
            Ok(()) => {
                refused.written += batch.len();
                Ok(())
            }
            Err(e) if split => {
                let before = refused.written;
                let mid = batch.len() / 2;
                let (left, right) = batch.split_at(mid);
                deliver(driver, left, fresh, offset, refused).await?;
                deliver(driver, right, fresh, offset + mid, refused).await?;
                if e.class == ErrorClass::Unknown && refused.written == before {
                    return Err(e);
                }
                Ok(())
            }
            Err(e) if e.class == ErrorClass::Rejected => {
                refused.rejected.push((offset, eds_wal::error_chain(&e)));
                Ok(())
            }
            Err(e) if e.class == ErrorClass::Unknown && batch.len() == 1 => {
                refused.suspects.push((offset, eds_wal::error_chain(&e)));
                Ok(())
            }
            Err(e) => Err(e),
        }
    })
}

/// [`deliver`] from the top: a batch of which nothing could be written blames no single change.
async fn deliver_all(driver: &dyn Driver, batch: Batch<'_>, fresh: bool) -> Result<Refused, DriverError> {
    let mut refused = Refused::default();
    deliver(driver, batch, fresh, 0, &mut refused).await?;
    if refused.written == 0 {
        if let Some((_, why)) = refused.suspects.first() {
            return Err(DriverError::new(ErrorClass::Unknown, why.clone()));
        }
    }
    Ok(refused)
}

/// Events of one batch that the destination did not take.
#[derive(Debug, Default)]
pub(super) struct Undelivered {
    /// (LSN, reason) of events the destination refused for their data.
    pub(super) rejected: Vec<(u64, String)>,
    /// Changes that failed alone with an error the driver could not place.
    pub(super) suspects: Vec<Suspect>,
}

/// A change (or an event) that failed alone with an error the driver could not place.
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    /// The LSN of its first event: the same change in the next attempt of the same records.
    key: u64,
    /// Every event folded into it.
    lsns: Vec<u64>,
    /// The error.
    reason: String,
}

/// Deliver every event to a stream destination.
pub(super) async fn write_stream(
    driver: &dyn Driver,
    decoded: &[(u64, ChangeEvent, &[u8])],
    out: &mut Undelivered,
) -> Result<(), DriverError> {
    let deliveries: Vec<Delivery<'_>> =
        decoded.iter().map(|(lsn, event, raw)| Delivery { lsn: *lsn, event, raw }).collect();
    let refused = deliver_all(driver, Batch::Events(&deliveries), false).await?;
    let lsn = |i: usize| deliveries.get(i).map(|d| d.lsn);
    out.rejected.extend(refused.rejected.into_iter().filter_map(|(i, why)| Some((lsn(i)?, why))));
    out.suspects.extend(
        refused
            .suspects
            .into_iter()
            .filter_map(|(i, reason)| Some(Suspect { key: lsn(i)?, lsns: vec![lsn(i)?], reason })),
    );
    Ok(())
}

/// How many attempts in a row a change must fail alone with the same error the driver could not
/// place (while the rest of its batch is written) before it is dead-lettered.
pub(super) const BACKSTOP_ATTEMPTS: u32 = 8;

/// Counts, per change, the attempts in a row that it failed alone with the same unplaced error.
#[derive(Debug, Default)]
pub(super) struct Backstop {
    /// By the change's first LSN: the error and how many attempts in a row it failed with it.
    failing: HashMap<u64, (String, u32)>,
}

impl Backstop {
    /// Take this attempt's suspects. Returns the events to dead-letter now (those of changes that
    /// failed [`BACKSTOP_ATTEMPTS`] times in a row with the same error), and the error to retry
    /// with while others have not failed that often yet.
    pub(super) fn judge(&mut self, suspects: Vec<Suspect>) -> (Vec<(u64, String)>, Option<DriverError>) {
        let mut failing = HashMap::with_capacity(suspects.len());
        let (mut dead, mut retry) = (Vec::new(), None);
        for s in suspects {
            let count = match self.failing.remove(&s.key) {
                Some((reason, n)) if reason == s.reason => n + 1,
                _ => 1,
            };
            if count >= BACKSTOP_ATTEMPTS {
                let why = format!("failed alone {count} times in a row with the same error: {}", s.reason);
                dead.extend(s.lsns.iter().map(|&lsn| (lsn, why.clone())));
            } else {
                retry.get_or_insert_with(|| {
                    DriverError::new(
                        ErrorClass::Unknown,
                        format!(
                            "{} (attempt {count} of {BACKSTOP_ATTEMPTS} before the change is dead-lettered)",
                            s.reason
                        ),
                    )
                });
                failing.insert(s.key, (s.reason, count));
            }
        }
        // Only changes failing now keep their count: one that went through starts again at zero.
        self.failing = failing;
        (dead, retry)
    }
}

/// Deliver one event as the drain would (schema, table creation, fold of one): `Ok(None)` when
/// the destination took it, `Ok(Some(reason))` when it still rejects it. For `eds dlq replay`.
pub async fn deliver_one(
    dest: &Destination,
    lsn: u64,
    event: ChangeEvent,
    raw: &[u8],
) -> Result<Option<String>, DriverError> {
    let mut out = Undelivered::default();
    let decoded = vec![(lsn, event, raw)];
    match dest.driver.describe().kind {
        Kind::Stream => write_stream(&*dest.driver, &decoded, &mut out).await?,
        Kind::State => write_state(dest, decoded, false, &mut out).await?,
    }
    Ok(out.rejected.into_iter().next().map(|(_, why)| why))
}

/// Deliver a batch as the drain would (schemas, tables, folding, splitting around rejected
/// changes): the (LSN, reason) of every event the destination rejected. For `eds import`, whose
/// rows do not come from the WAL; the "LSN" is whatever position the caller numbers them by.
/// `fresh`: the import dropped and created again the tables it writes, so a state destination
/// may write through [`Driver::write_fresh`].
pub async fn deliver_batch(
    dest: &Destination,
    decoded: Vec<(u64, ChangeEvent, &[u8])>,
    fresh: bool,
) -> Result<Vec<(u64, String)>, DriverError> {
    let mut out = Undelivered::default();
    match dest.driver.describe().kind {
        Kind::Stream => write_stream(&*dest.driver, &decoded, &mut out).await?,
        Kind::State => write_state(dest, decoded, fresh, &mut out).await?,
    }
    // A change that failed alone with an error the driver could not place is rejected here: an
    // import has no later attempt to wait for.
    let mut rejected = out.rejected;
    for s in out.suspects {
        rejected.extend(s.lsns.into_iter().map(|lsn| (lsn, s.reason.clone())));
    }
    rejected.sort_by_key(|r| r.0);
    Ok(rejected)
}

/// Schemas by table, then model version.
type Schemas = HashMap<String, HashMap<String, Arc<Schema>>>;

fn lookup<'s>(schemas: &'s Schemas, table: &str, version: &str) -> Option<&'s Arc<Schema>> {
    schemas.get(table).and_then(|v| v.get(version))
}

/// Drop the properties `schema` does not know (EDS does the same for state destinations). A
/// row whose every property is known (most rows) is only looked through, not rebuilt.
fn keep_known(row: &mut Option<Row>, schema: &Schema) {
    if let Some(r) = row {
        if r.keys().any(|k| schema.column(k).is_none()) {
            r.retain(|k, _| schema.column(k).is_some());
        }
    }
}

/// Deliver a batch to a state destination: look up every event's schema, cut its rows to the
/// schema, fold per (table, key), make sure the tables and columns exist, write the changes.
/// A change the destination rejects makes every event folded into it a rejected event. `fresh`:
/// written through [`Driver::write_fresh`] (an import into tables it just created).
pub(super) async fn write_state(
    dest: &Destination,
    decoded: Vec<(u64, ChangeEvent, &[u8])>,
    fresh: bool,
    out: &mut Undelivered,
) -> Result<(), DriverError> {
    let rejected = &mut out.rejected;
    let driver = &*dest.driver;
    let Some(registry) = dest.registry.as_ref().filter(|_| driver.describe().needs_schema) else {
        return Err(DriverError::new(
            ErrorClass::Config,
            format!("destination {:?} holds tables but has no schema registry to create them from", dest.name),
        ));
    };
    let mut schemas: Schemas = HashMap::new();
    // (table, version) → why it has no schema.
    let mut unknown: HashMap<(String, String), String> = HashMap::new();
    for (_, e, _) in &decoded {
        // Known already (most events): two borrowed look-ups, nothing allocated.
        if lookup(&schemas, &e.table, &e.model_version).is_some() {
            continue;
        }
        let key = (e.table.clone(), e.model_version.clone());
        if unknown.contains_key(&key) {
            continue;
        }
        match registry.schema(&e.table, &e.model_version).await {
            Ok(s) => {
                schemas.entry(key.0).or_default().insert(key.1, s);
            }
            Err(err) if err.is_transient() => {
                return Err(DriverError::caused(ErrorClass::Transient, "looking up table schemas", err))
            }
            Err(err) => {
                unknown.insert(key, err.to_string());
            }
        }
    }
    let mut events: Vec<(u64, ChangeEvent)> = Vec::with_capacity(decoded.len());
    for (lsn, mut e, _) in decoded {
        if let Some(why) = e.no_row_to_write() {
            rejected.push((lsn, why));
            continue;
        }
        match lookup(&schemas, &e.table, &e.model_version) {
            Some(schema) => {
                keep_known(&mut e.after, schema);
                keep_known(&mut e.before, schema);
                events.push((lsn, e));
            }
            None => {
                let why = unknown.get(&(e.table.clone(), e.model_version.clone())).cloned().unwrap_or_default();
                rejected.push((lsn, why));
            }
        }
    }
    // The row images move into the fold, which keeps every event's LSN; the rest goes.
    let folded = fold_taking(events.iter_mut().map(|(lsn, e)| (*lsn, e)));
    drop(events);
    // DDL first, outside the batch's transaction, once per schema the batch writes with. A
    // schema the destination refuses (a table name it cannot hold) rejects that table's events.
    let mut ensured: Vec<&Arc<Schema>> = Vec::new();
    let mut refused_tables: HashMap<&str, String> = HashMap::new();
    for (i, c) in folded.iter().enumerate() {
        let previous = i.checked_sub(1).and_then(|p| folded.get(p));
        if previous.is_some_and(|p| p.table == c.table && p.model_version == c.model_version) {
            continue;
        }
        let Some(schema) = lookup(&schemas, &c.table, &c.model_version) else { continue };
        if ensured.iter().any(|s| Arc::ptr_eq(s, schema)) {
            continue;
        }
        ensured.push(schema);
        let ensure = tokio::time::timeout(WRITE_DEADLINE, driver.ensure_schema(schema)).await.unwrap_or_else(|_| {
            Err(DriverError::new(
                ErrorClass::Transient,
                format!("creating or migrating table {:?} did not finish within {WRITE_DEADLINE:?}", c.table),
            ))
        });
        match ensure {
            Ok(()) => {}
            Err(e) if e.class == ErrorClass::Rejected => {
                refused_tables.insert(&c.table, eds_wal::error_chain(&e));
            }
            Err(e) => return Err(e),
        }
    }
    let mut changes: Vec<StateChange<'_>> = Vec::with_capacity(folded.len());
    // The schema of the change before, by its (table, version).
    let mut last: Option<(&str, &str, &Arc<Schema>)> = None;
    for c in &folded {
        if let Some(why) = (!refused_tables.is_empty()).then(|| refused_tables.get(c.table.as_str())).flatten() {
            rejected.extend(c.positions.iter().map(|&lsn| (lsn, why.clone())));
            continue;
        }
        let schema = match last {
            Some((t, v, schema)) if t == c.table && v == c.model_version => Some(schema),
            _ => lookup(&schemas, &c.table, &c.model_version),
        };
        if let Some(schema) = schema {
            last = Some((&c.table, &c.model_version, schema));
            changes.push(StateChange { change: c, schema });
        }
    }
    let refused = if changes.is_empty() {
        Refused::default()
    } else {
        deliver_all(driver, Batch::Folded(&changes), fresh).await?
    };
    // The events folded into a change.
    let lsns = |i: usize| changes.get(i).map(|c| c.change.positions.clone());
    for (i, why) in refused.rejected {
        rejected.extend(lsns(i).unwrap_or_default().into_iter().map(|lsn| (lsn, why.clone())));
    }
    rejected.sort_by_key(|r| r.0);
    for (i, reason) in refused.suspects {
        let (Some(lsns), Some(c)) = (lsns(i), changes.get(i)) else { continue };
        out.suspects.push(Suspect { key: c.change.first_pos, lsns, reason });
    }
    Ok(())
}
