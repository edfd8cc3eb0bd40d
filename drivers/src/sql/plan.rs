//! The state planner every SQL destination shares: a folded batch becomes groups of rows, each
//! group one statement shape (a table, a schema version, the columns an update writes), in
//! rounds so that no statement sees a key twice. A dialect supplies the value preparation (its
//! [`Prepare`] for each column) and renders and binds the groups; it plans nothing itself.

use crate::driver::{DriverError, ErrorClass, StateChange};
use crate::event::{Folded, Row};
use crate::schema::{Column, ColumnType, Schema};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// How a dialect turns one schema column's values into the cells it binds.
pub(crate) trait Prepare {
    /// One bound value; it may borrow the event's strings (`'v`).
    type Cell<'v>;

    /// The column's name (the event's property).
    fn name(&self) -> &str;

    /// The cell for `value` (`None`: the property is absent), or why the column cannot take it
    /// ([`ErrorClass::Rejected`], naming the column and table).
    fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Self::Cell<'v>, DriverError>;

    /// The cell for a single primary-key column missing from the row image: the change's
    /// primary key as text.
    fn key_cell<'v>(&self, key: &'v str, table: &str) -> Result<Self::Cell<'v>, DriverError>;

    /// The identity of a primary-key cell: equal keys meet in the same round counter.
    fn key<'c>(cell: &'c Self::Cell<'_>) -> KeyPart<'c>;
}

/// A primary-key cell, comparable across the cell types of every dialect (PostgreSQL's cells
/// are all text).
#[cfg_attr(not(any(feature = "mysql", feature = "sqlserver")), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyPart<'c> {
    Null,
    Text(&'c str),
    Int(i128),
    /// A float by its bits.
    Float(u64),
    Bool(bool),
}

/// The JSON default for a missing or null value of a not-null object or array column (`{}`,
/// `[]`), as EDS writes it.
pub(crate) fn json_default(column: &Column) -> Option<&'static str> {
    match column.kind {
        ColumnType::Object if column.not_null_for_json_default() => Some("{}"),
        ColumnType::Array { .. } if column.not_null_for_json_default() => Some("[]"),
        _ => None,
    }
}

/// Upserts of one table and schema version that update the same columns, row by row.
pub(crate) struct UpsertGroup<'b, C> {
    pub(crate) round: usize,
    pub(crate) schema: &'b Schema,
    /// Names of the non-key columns an update writes, in schema order (empty: none, the insert
    /// alone).
    pub(crate) update: Vec<&'b str>,
    /// One cell per schema column, per row.
    pub(crate) rows: Vec<Vec<C>>,
}

/// Deletes of one table and schema version by primary key, row by row.
pub(crate) struct DeleteGroup<'b, C> {
    pub(crate) round: usize,
    pub(crate) schema: &'b Schema,
    /// One cell per primary-key column, per row.
    pub(crate) rows: Vec<Vec<C>>,
}

/// What a batch does, in rounds: within a round every (table, primary key) appears once, so its
/// statements commute (and no MERGE or `ON CONFLICT` sees a key twice); a key that appears again
/// (the same id under two key arrays) goes to a later round, in the order of the changes' last
/// events.
pub(crate) struct Plan<'b, C> {
    pub(crate) upserts: Vec<UpsertGroup<'b, C>>,
    pub(crate) deletes: Vec<DeleteGroup<'b, C>>,
    pub(crate) rounds: usize,
}

/// One statement group of a plan, in the order they run.
pub(crate) enum Step<'p, 'b, C> {
    Delete(&'p DeleteGroup<'b, C>),
    Upsert(&'p UpsertGroup<'b, C>),
}

impl<'b, C> Plan<'b, C> {
    /// Every group in the order it runs: round by round, a round's deletes before its upserts.
    pub(crate) fn steps(&self) -> impl Iterator<Item = Step<'_, 'b, C>> + '_ {
        (0..self.rounds).flat_map(move |round| {
            let deletes = self.deletes.iter().filter(move |g| g.round == round).map(Step::Delete);
            deletes.chain(self.upserts.iter().filter(move |g| g.round == round).map(Step::Upsert))
        })
    }
}

/// The planner's maps: keyed by table names and key values, hashed fast (foldhash, seeded per
/// process).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The columns a change updates (`None`: all), as the fold made them.
type ColumnSet<'b> = Option<&'b BTreeSet<String>>;

/// A change with its column preparations and cells.
type Prepared<'b, 'c, P> = (&'b StateChange<'b>, &'c [P], Vec<<P as Prepare>::Cell<'b>>);

/// The column preparations of each (table, schema version) of a batch, in schema column order.
pub(crate) type Columns<'b, P> = HashMap<(&'b str, &'b str), Vec<P>>;

/// The distinct schemas of a batch, in order of first appearance — what must be ensured once
/// each before the batch is written. A change whose schema is of another table is a
/// [`ErrorClass::Config`] error.
pub(crate) fn schemas<'b>(dialect: &str, changes: &[StateChange<'b>]) -> Result<Vec<&'b Schema>, DriverError> {
    let mut out: Vec<&'b Schema> = Vec::new();
    for sc in changes {
        let schema = sc.schema;
        if sc.change.table != schema.table() {
            return Err(DriverError::new(
                ErrorClass::Config,
                format!(
                    "{dialect}: a change of table {:?} came with the schema of table {:?}",
                    sc.change.table,
                    schema.table()
                ),
            ));
        }
        if !out.iter().any(|s| (s.table(), s.model_version()) == (schema.table(), schema.model_version())) {
            out.push(schema);
        }
    }
    Ok(out)
}

/// Turns a batch into groups (see [`Plan`]). Primary-key values come from the row image by
/// column name — never from the event's `key` array by position, which may carry a region
/// prefix — except a single key column missing from the image, which takes the change's primary
/// key ([`Prepare::key_cell`]). Primary keys are the first columns of the schema's order.
pub(crate) fn plan<'b, 'c, P: Prepare>(
    dialect: &str,
    changes: &'b [StateChange<'b>],
    columns: &'c Columns<'b, P>,
) -> Result<Plan<'b, P::Cell<'b>>, DriverError> {
    let mut order: Vec<&'b StateChange<'b>> = changes.iter().collect();
    order.sort_by_key(|c| c.change.last_pos);
    // Upserts first by the change's own column set (cheap to compare), merged below by the
    // update list it makes.
    let mut upsert_index: FastMap<(usize, &'b str, &'b str, ColumnSet<'b>), usize> = FastMap::default();
    let mut delete_index: FastMap<(usize, &'b str, &'b str), usize> = FastMap::default();
    let mut upserts: Vec<UpsertGroup<'b, P::Cell<'b>>> = Vec::new();
    let mut deletes: Vec<DeleteGroup<'b, P::Cell<'b>>> = Vec::new();
    let mut rounds = 0;
    // Cells of every change first (the round counter borrows them), then the grouping.
    let mut prepared: Vec<Prepared<'b, 'c, P>> = Vec::with_capacity(order.len());
    for sc in order {
        let schema = sc.schema;
        let (table, version) = (schema.table(), schema.model_version());
        let Some(cols) = columns.get(&(table, version)) else {
            return Err(DriverError::new(ErrorClass::Transient, format!("{dialect}: no plan for table {table:?}")));
        };
        let npk = schema.primary_keys().len();
        let image: Option<&'b Row> = match &sc.change.change {
            Folded::Upsert { row, .. } => Some(row),
            Folded::Delete { before } => before.as_ref(),
        };
        let width = match sc.change.change {
            Folded::Upsert { .. } => cols.len(),
            Folded::Delete { .. } => npk.min(cols.len()),
        };
        let present = |name: &str| image.and_then(|r| r.get(name)).is_some_and(|v| !v.is_null());
        let mut cells: Vec<P::Cell<'b>> = Vec::with_capacity(width);
        for p in &cols[..width] {
            cells.push(p.cell(image.and_then(|r| r.get(p.name())), table)?);
        }
        let mut missing = cols.iter().take(npk).find(|p| !present(p.name()));
        if let (1, Some(key), Some(first)) = (npk, missing, cells.first_mut()) {
            *first = key.key_cell(&sc.change.primary_key, table)?;
            missing = None;
        }
        if let Some(missing) = missing {
            return Err(DriverError::new(
                ErrorClass::Rejected,
                format!(
                    "{dialect}: a change of table {table:?} with key {:?} has no value for primary key column {:?}",
                    sc.change.key,
                    missing.name()
                ),
            ));
        }
        prepared.push((sc, cols, cells));
    }
    let mut placed: Vec<(usize, &'b StateChange<'b>)> = Vec::with_capacity(prepared.len());
    let mut seen: FastMap<(&'b str, Vec<KeyPart<'_>>), usize> = FastMap::default();
    for (sc, _, cells) in &prepared {
        let npk = sc.schema.primary_keys().len().min(cells.len());
        let identity: Vec<KeyPart<'_>> = cells[..npk].iter().map(P::key).collect();
        let r = seen.entry((sc.schema.table(), identity)).or_insert(0);
        placed.push((*r, sc));
        *r += 1;
    }
    drop(seen);
    for ((round, sc), (_, cols, cells)) in placed.into_iter().zip(prepared) {
        let schema = sc.schema;
        let (table, version) = (schema.table(), schema.model_version());
        rounds = rounds.max(round + 1);
        match &sc.change.change {
            Folded::Upsert { changed, .. } => {
                let set = changed.as_ref();
                let i = *upsert_index.entry((round, table, version, set)).or_insert_with(|| {
                    let npk = schema.primary_keys().len();
                    // The preparations follow the schema's column order; the names are the schema's.
                    let update = schema.columns()[npk.min(cols.len())..cols.len()]
                        .iter()
                        .map(|c| c.name.as_str())
                        .filter(|name| set.is_none_or(|set| set.contains(*name)))
                        .collect();
                    upserts.push(UpsertGroup { round, schema, update, rows: Vec::new() });
                    upserts.len() - 1
                });
                upserts[i].rows.push(cells);
            }
            Folded::Delete { .. } => {
                let i = *delete_index.entry((round, table, version)).or_insert_with(|| {
                    deletes.push(DeleteGroup { round, schema, rows: Vec::new() });
                    deletes.len() - 1
                });
                deletes[i].rows.push(cells);
            }
        }
    }
    // Column sets that name columns outside the schema, or differ only in such columns, make the
    // same update list: one statement shape, one group.
    let mut merged: Vec<UpsertGroup<'b, P::Cell<'b>>> = Vec::with_capacity(upserts.len());
    let mut by_shape: FastMap<(usize, &'b str, &'b str, Vec<&'b str>), usize> = FastMap::default();
    for g in upserts {
        let shape = (g.round, g.schema.table(), g.schema.model_version(), g.update.clone());
        match by_shape.get(&shape) {
            Some(&i) => merged[i].rows.extend(g.rows),
            None => {
                by_shape.insert(shape, merged.len());
                merged.push(g);
            }
        }
    }
    Ok(Plan { upserts: merged, deletes, rounds })
}
