//! Writing folded changes to PostgreSQL, and keeping tables in step with HQ's schemas.
//!
//! Statements: every identifier goes through [`quote_ident`]; every value is bound as text (one
//! `text[]` parameter per column, or one COPY stream) and cast in SQL to the column's real type as
//! the catalog reports it, so tables made earlier by EDS or by hand (`TIMESTAMP` without time zone,
//! `VARCHAR(64)`, `NUMERIC`, `INTEGER`…) are written by their own types. Casts go to the type
//! without its modifier (`character varying`, not `character varying(64)`): an explicit cast to
//! `varchar(64)` would silently cut a longer value, while the assignment to the column refuses it.
//!
//! Batches: one transaction per batch. Upserts are grouped by (table, schema version, columns to
//! update); each group is one `INSERT … SELECT … FROM unnest($1::text[], …) ON CONFLICT (<primary
//! keys>) DO UPDATE SET …` — or, from [`COPY_THRESHOLD`] rows, a COPY into a temporary all-text
//! staging table followed by the same `INSERT … SELECT` from it, so both paths cast and conflict
//! identically. Deletes are one `DELETE … WHERE (<keys>) IN (SELECT … FROM unnest(…))` per table.
//!
//! Schema: the catalog of each table (column types, NOT NULL, unique keys) is cached and re-read
//! after DDL; which (table, model version) pairs were already ensured is remembered, so
//! [`Driver::ensure_schema`] is a set lookup when nothing changed. DDL is serialised by a mutex and
//! runs in its own statements, never inside a batch's transaction.

use super::catalog::{check_types, create_table_sql, load_table, migration_actions, TableInfo};
use super::config::{connect_options, redact, DESCRIPTION};
use super::fresh::{copy_data, copy_fresh, copy_statement, fresh_copy_fits, CopyEncoder};
use crate::driver::{
    Batch, BoxFuture, Description, Driver, DriverError, ErrorClass, FreshEncoder, Limits, StateChange,
};
use crate::schema::{ColumnType, Schema};
use crate::sql::plan::{self, KeyPart, Prepare, Step};
use crate::sqltx::BatchTx;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Upsert groups of at least this many rows go through COPY and a staging table; smaller ones
/// through one `INSERT … SELECT FROM unnest(…)`. Below a few thousand rows the single statement is
/// as fast and creates no temporary table; above, COPY's streaming wins.
pub const COPY_THRESHOLD: usize = 2_000;

/// How long a write waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Driver::test`] waits for the server.
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// COPY data is sent in chunks of about this many bytes.
pub(super) const COPY_CHUNK: usize = 1 << 20;

/// `name` as a PostgreSQL identifier: always double-quoted, with every `"` doubled, so case,
/// spaces and punctuation are kept exactly ("updatedDate" stays "updatedDate"). Names PostgreSQL
/// cannot hold — empty, containing a NUL byte, or longer than 63 bytes (which PostgreSQL would
/// silently truncate) — are an [`ErrorClass::Rejected`] error.
pub fn quote_ident(name: &str) -> Result<String, DriverError> {
    crate::sql::quote_identifier("PostgreSQL", name, ('"', '"'), |name| {
        (name.len() > MAX_IDENTIFIER_BYTES).then_some("is longer than PostgreSQL's 63-byte identifier limit")
    })
}

/// How a destination column stores values, from its catalog type (domains by their base type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// `text`, `varchar`, `char`, `citext` and any other string-category type.
    Text,
    /// `timestamp with time zone`.
    TimestampTz,
    /// `timestamp without time zone`: written as UTC wall-clock time.
    Timestamp,
    /// `bigint`, `integer`, `smallint`.
    Integer,
    /// `numeric`.
    Numeric,
    /// `double precision`, `real`.
    Float,
    /// `boolean`.
    Boolean,
    /// `json`, `jsonb`.
    Json,
    /// `uuid`.
    Uuid,
    /// A user-defined enum type.
    PgEnum,
    /// Anything else (date, bytea, arrays…): holds no schema type.
    Other,
}

impl Storage {
    pub(super) fn of(base_type: &str, category: &str) -> Storage {
        match base_type {
            "timestamp with time zone" => Storage::TimestampTz,
            "timestamp without time zone" => Storage::Timestamp,
            "bigint" | "integer" | "smallint" => Storage::Integer,
            "numeric" => Storage::Numeric,
            "double precision" | "real" => Storage::Float,
            "boolean" => Storage::Boolean,
            "json" | "jsonb" => Storage::Json,
            "uuid" => Storage::Uuid,
            _ if category == "S" => Storage::Text,
            _ if category == "E" => Storage::PgEnum,
            _ => Storage::Other,
        }
    }

    /// Whether a column stored this way can hold the schema's type. Text columns hold anything
    /// (every value is bound as text); otherwise:
    ///
    /// | schema type | destination types accepted besides text |
    /// |---|---|
    /// | string | uuid, enum types |
    /// | date-time string | timestamptz, timestamp |
    /// | integer | bigint, integer, smallint, numeric, double precision, real |
    /// | number | double precision, real, numeric |
    /// | boolean | boolean |
    /// | object, array | jsonb, json |
    /// | enum | enum types |
    /// | unknown | — |
    pub(super) fn holds(self, kind: &ColumnType) -> bool {
        matches!(
            (kind, self),
            (_, Storage::Text)
                | (ColumnType::Text, Storage::Uuid | Storage::PgEnum)
                | (ColumnType::DateTime, Storage::TimestampTz | Storage::Timestamp)
                | (ColumnType::Integer, Storage::Integer | Storage::Numeric | Storage::Float)
                | (ColumnType::Number, Storage::Float | Storage::Numeric)
                | (ColumnType::Boolean, Storage::Boolean)
                | (ColumnType::Object | ColumnType::Array { .. }, Storage::Json)
                | (ColumnType::Enum { .. }, Storage::PgEnum)
        )
    }
}

/// How the drain treats each SQLSTATE class (the first two characters), with the exceptions
/// [`SQLSTATE_CODES`] lists. One table, read by [`classify_sqlstate`] and documented as it stands:
///
/// - **Rejected** — the data: the row is isolated by bisection and dead-lettered with the reason;
/// - **Transient** — the connection, the server's resources, an operator, concurrency: retried,
///   never counted against a row;
/// - **Config** — authentication, privileges, objects eds does not create: the destination stops
///   and retries every few minutes;
/// - **Unknown** — anything else: retried, and a change that fails alone with the same error
///   several times in a row is dead-lettered (the drain's backstop).
pub const SQLSTATE_CLASSES: &[(&str, ErrorClass, &str)] = &[
    ("08", ErrorClass::Transient, "connection exception"),
    ("09", ErrorClass::Rejected, "triggered action exception"),
    ("20", ErrorClass::Rejected, "case not found (PL/pgSQL in a trigger)"),
    ("21", ErrorClass::Rejected, "cardinality violation"),
    ("22", ErrorClass::Rejected, "data exception (invalid text, out of range, NUL byte, …)"),
    ("23", ErrorClass::Rejected, "integrity constraint violation (NOT NULL, unique, foreign key, check)"),
    ("27", ErrorClass::Rejected, "triggered data change violation"),
    ("28", ErrorClass::Config, "invalid authorization specification"),
    ("2F", ErrorClass::Rejected, "SQL routine exception (a function in a trigger)"),
    ("38", ErrorClass::Rejected, "external routine exception"),
    ("39", ErrorClass::Rejected, "external routine invocation exception"),
    ("3D", ErrorClass::Config, "invalid catalog name (no such database)"),
    ("3F", ErrorClass::Config, "invalid schema name (search_path names no schema)"),
    ("40", ErrorClass::Transient, "transaction rollback (serialization failure, deadlock)"),
    ("42", ErrorClass::Config, "syntax error or access rule violation (privileges, undefined functions or types)"),
    ("44", ErrorClass::Rejected, "WITH CHECK OPTION violation"),
    ("53", ErrorClass::Transient, "insufficient resources (disk full, out of memory, too many connections)"),
    ("54", ErrorClass::Rejected, "program limit exceeded (index row too large, statement too complex)"),
    ("55", ErrorClass::Transient, "object not in prerequisite state (lock not available)"),
    ("57", ErrorClass::Transient, "operator intervention (shutdown, query canceled)"),
    ("58", ErrorClass::Transient, "system error (I/O)"),
    ("F0", ErrorClass::Config, "configuration file error"),
    ("P0", ErrorClass::Rejected, "PL/pgSQL error (RAISE EXCEPTION in a trigger, assertion)"),
];

/// Codes whose class in [`SQLSTATE_CLASSES`] does not fit them.
pub const SQLSTATE_CODES: &[(&str, ErrorClass, &str)] = &[
    ("40002", ErrorClass::Rejected, "integrity constraint violation at commit (a deferred constraint)"),
    ("42P01", ErrorClass::Transient, "undefined table: eds creates it; the catalog cache is dropped and re-read"),
    ("42703", ErrorClass::Transient, "undefined column: eds adds it; the catalog cache is dropped and re-read"),
    ("25006", ErrorClass::Config, "read-only transaction (a standby server)"),
];

/// How the drain should treat a PostgreSQL SQLSTATE (see `SQLSTATE_CLASSES`).
pub fn classify_sqlstate(code: &str) -> ErrorClass {
    let exact = SQLSTATE_CODES.iter().find(|(c, _, _)| *c == code);
    let class = || SQLSTATE_CLASSES.iter().find(|(c, _, _)| code.get(..2) == Some(*c));
    exact.or_else(class).map_or(ErrorClass::Unknown, |(_, class, _)| *class)
}

/// How the drain should treat an sqlx error.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or("")),
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => ErrorClass::Config,
        // I/O, protocol, pool timeouts, a closed pool: the connection.
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Unknown,
    }
}

/// "SQLSTATE 23502: null value in column …" for database errors, sqlx's text otherwise.
fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!("SQLSTATE {}: {}", db.code().as_deref().unwrap_or("?????"), db.message()),
        other => other.to_string(),
    }
}

fn sql_error(what: &str, e: sqlx::Error) -> DriverError {
    let class = classify(&e);
    DriverError::caused(class, format!("PostgreSQL: {what} failed: {}", describe_error(&e)), e)
}

/// Like [`sql_error`], for DDL: a unique violation or "already exists" there means another session
/// created the same table or column at the same moment, which a retry resolves; a program limit
/// (too many columns) cannot be fixed by splitting a batch.
fn ddl_error(what: &str, e: sqlx::Error) -> DriverError {
    let code = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    let mut err = sql_error(what, e);
    let raced = code.as_deref().is_some_and(|c| c.starts_with("23") || matches!(c, "42P07" | "42701" | "42710"));
    err.class = match err.class {
        _ if raced => ErrorClass::Transient,
        ErrorClass::Rejected | ErrorClass::TooLarge => ErrorClass::Config,
        other => other,
    };
    err
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The PostgreSQL destination.
pub struct PostgresDriver {
    pool: PgPool,
    options: PgConnectOptions,
    target: String,
    copy_threshold: usize,
    catalog: Mutex<HashMap<String, Arc<TableInfo>>>,
    ensured: Mutex<HashSet<(String, String)>>,
    ddl: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDriver")
            .field("target", &self.target)
            .field("copy_threshold", &self.copy_threshold)
            .finish_non_exhaustive()
    }
}

/// How one schema column is written: its destination column and value conversion.
#[derive(Debug)]
pub(super) struct ColumnPlan<'s> {
    pub(super) name: &'s str,
    pub(super) quoted: String,
    pub(super) storage: Storage,
    pub(super) cast: String,
    /// JSON default for a missing or null value (`{}`/`[]`), as EDS writes for not-null object
    /// and array columns.
    pub(super) default: Option<&'static str>,
}

impl ColumnPlan<'_> {
    /// The SELECT expression turning text column `c<i>` of source `u` into the column's type.
    fn select_expr(&self, i: usize) -> String {
        match self.storage {
            // Through timestamptz, so an offset in the text is honoured; stored as UTC.
            Storage::Timestamp => format!("(u.c{i}::timestamptz AT TIME ZONE 'UTC')"),
            _ => format!("u.c{i}::{}", self.cast),
        }
    }

    /// The value's text, or why the column cannot take it. PostgreSQL reads words such as
    /// `now`, `today`, `yesterday` or `epoch` as date-times relative to the moment of the write,
    /// which would make a replay store something else: a date-time must start with a digit.
    pub(super) fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Cell<'v>, DriverError> {
        match value {
            None | Some(Value::Null) => Ok(self.default.map(Cow::Borrowed)),
            Some(Value::String(s))
                if matches!(self.storage, Storage::TimestampTz | Storage::Timestamp)
                    && !s.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                Err(DriverError::new(
                    ErrorClass::Rejected,
                    format!("column {:?} of table {table:?}: {s:?} is not an ISO-8601 date-time", self.name),
                ))
            }
            Some(v) => Ok(Some(text_of(v, self.storage))),
        }
    }
}

/// A bound value: text PostgreSQL casts to the column's type, or NULL. It borrows the event's
/// strings where it can.
pub(super) type Cell<'v> = Option<Cow<'v, str>>;

impl Prepare for ColumnPlan<'_> {
    type Cell<'v> = Cell<'v>;

    fn name(&self) -> &str {
        self.name
    }

    fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        ColumnPlan::cell(self, value, table)
    }

    fn key_cell<'v>(&self, key: &'v str, _table: &str) -> Result<Self::Cell<'v>, DriverError> {
        Ok(Some(Cow::Borrowed(key)))
    }

    fn key<'c>(cell: &'c Self::Cell<'_>) -> KeyPart<'c> {
        cell.as_deref().map_or(KeyPart::Null, KeyPart::Text)
    }
}

/// A value as the text PostgreSQL casts to the column's type: JSON columns get the value's JSON
/// text (a string becomes a JSON string); otherwise strings as they are (borrowed), booleans
/// `true`/`false`, integers exactly, floats in shortest round-trip form, objects and arrays as
/// compact JSON.
pub(super) fn text_of(v: &Value, storage: Storage) -> Cow<'_, str> {
    match storage {
        Storage::Json => Cow::Owned(v.to_string()),
        _ => crate::sql::text_of(v, storage == Storage::Integer),
    }
}

/// [`text_of`], owned.
#[cfg(test)]
pub(super) fn value_text(v: &Value, storage: Storage) -> String {
    text_of(v, storage).into_owned()
}

#[cfg(test)]
pub(super) use crate::number::column_text as number_text;

/// Appends `value` as a field of COPY's text format.
pub(super) fn copy_field(out: &mut Vec<u8>, value: Option<&str>) {
    let Some(s) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    // Runs without a byte to escape are copied whole.
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

pub(super) type UpsertGroup<'b> = plan::UpsertGroup<'b, Cell<'b>>;

/// The rows of a group column by column, as `unnest` takes them (one `text[]` per column).
fn column_major<'r>(rows: &'r [Vec<Cell<'_>>], width: usize) -> Vec<Vec<Option<&'r str>>> {
    let mut columns: Vec<Vec<Option<&str>>> = (0..width).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (column, cell) in columns.iter_mut().zip(row) {
            column.push(cell.as_deref());
        }
    }
    columns
}

impl PostgresDriver {
    /// A driver for `url` (see [`connect_options`]). Connects lazily: the first write, ensure or
    /// test opens the connection. At most two connections; a write waits up to 10 s for one.
    /// Sessions run in UTC (sqlx sets `TimeZone=UTC` at connect). Called outside a tokio runtime,
    /// the pool's idle-connection reaper is left off.
    pub fn new(url: &str) -> Result<PostgresDriver, DriverError> {
        let options = connect_options(url)?;
        let mut pool = PgPoolOptions::new().max_connections(2).acquire_timeout(ACQUIRE_TIMEOUT);
        if tokio::runtime::Handle::try_current().is_err() {
            pool = pool.idle_timeout(None).max_lifetime(None);
        }
        Ok(PostgresDriver {
            pool: pool.connect_lazy_with(options.clone()),
            options,
            target: redact(url),
            copy_threshold: COPY_THRESHOLD,
            catalog: Mutex::new(HashMap::new()),
            ensured: Mutex::new(HashSet::new()),
            ddl: tokio::sync::Mutex::new(()),
        })
    }

    /// Sets from how many rows an upsert group goes through COPY ([`COPY_THRESHOLD`] by default):
    /// `0` always uses COPY, `usize::MAX` never does. Both paths write the same rows.
    pub fn with_copy_threshold(mut self, rows: usize) -> PostgresDriver {
        self.copy_threshold = rows;
        self
    }

    /// Forgets every cached catalog entry and ensured schema, so the next ensure re-reads the
    /// destination (after an error that suggests the catalog changed behind our back).
    fn forget_catalog(&self) {
        lock(&self.catalog).clear();
        lock(&self.ensured).clear();
    }

    /// [`Driver::drop_table`]: the table of the current schema, named with its schema, so a
    /// table of the same name further along the search path is never the one dropped.
    async fn drop_one(&self, table: &str) -> Result<(), DriverError> {
        let quoted = quote_ident(table)?;
        let _ddl = self.ddl.lock().await;
        let mut conn = crate::sqltx::acquire(&self.pool, &self.options)
            .await
            .map_err(|e| sql_error(&format!("connecting to {}", self.target), e))?;
        let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sql_error("reading the current schema", e))?;
        let Some(schema) = schema else {
            return Err(DriverError::new(
                ErrorClass::Config,
                "PostgreSQL: the connection has no current schema (its search_path names none that exists)",
            ));
        };
        let sql = format!("DROP TABLE IF EXISTS {}.{quoted}", quote_ident(&schema)?);
        let dropped = conn.execute(sql.as_str()).await;
        // Whatever happened, the cache may no longer describe the table.
        self.forget_catalog();
        dropped.map_err(|e| {
            let dependents = matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("2BP01"));
            let mut err = ddl_error(&format!("dropping table {table:?}"), e);
            if dependents {
                // Something (a view, a foreign key) depends on the table: eds drops nothing else.
                err.class = ErrorClass::Config;
            }
            err
        })?;
        Ok(())
    }

    fn cached(&self, table: &str) -> Option<Arc<TableInfo>> {
        lock(&self.catalog).get(table).cloned()
    }

    async fn ensure(&self, schema: &Schema) -> Result<(), DriverError> {
        let id = (schema.table().to_owned(), schema.model_version().to_owned());
        if lock(&self.ensured).contains(&id) {
            return Ok(());
        }
        let _ddl = self.ddl.lock().await;
        if lock(&self.ensured).contains(&id) {
            return Ok(());
        }
        let table = schema.table();
        let quoted = quote_ident(table)?;
        for c in schema.columns() {
            quote_ident(&c.name)?;
        }
        let mut conn = crate::sqltx::acquire(&self.pool, &self.options)
            .await
            .map_err(|e| sql_error(&format!("connecting to {}", self.target), e))?;
        let reading = format!("reading the catalog of table {table:?}");
        let existing = load_table(&mut conn, table).await.map_err(|e| sql_error(&reading, e))?;
        match existing {
            None => {
                let sql = create_table_sql(&quoted, schema)?;
                conn.execute(sql.as_str()).await.map_err(|e| ddl_error(&format!("creating table {table:?}"), e))?;
            }
            Some(info) => {
                check_types(schema, &info)?;
                let actions = migration_actions(schema, &info)?;
                if !actions.is_empty() {
                    let sql = format!("ALTER TABLE {quoted} {}", actions.join(", "));
                    conn.execute(sql.as_str()).await.map_err(|e| ddl_error(&format!("altering table {table:?}"), e))?;
                }
            }
        }
        let info = load_table(&mut conn, table).await.map_err(|e| sql_error(&reading, e))?.ok_or_else(|| {
            // CREATE TABLE IF NOT EXISTS skips when any relation has the name (a view, a sequence).
            DriverError::new(
                ErrorClass::Config,
                format!("PostgreSQL: {table:?} exists in the current schema but is not a table"),
            )
        })?;
        // A concurrent creator may have made other types; the conflict target must exist.
        check_types(schema, &info)?;
        if let Some(c) = schema.columns().iter().find(|c| !info.columns.contains_key(&c.name)) {
            return Err(DriverError::new(
                ErrorClass::Transient,
                format!("PostgreSQL: column {:?} of table {table:?} is still missing after ALTER TABLE", c.name),
            ));
        }
        let keys: BTreeSet<String> = schema.primary_keys().iter().cloned().collect();
        if !info.unique_keys.contains(&keys) {
            return Err(DriverError::new(
                ErrorClass::Config,
                format!(
                    "PostgreSQL: table {table:?} has no primary key or unique index on exactly ({}), \
                     the schema's primary key, so rows cannot be upserted",
                    schema.primary_keys().join(", ")
                ),
            ));
        }
        lock(&self.catalog).insert(table.to_owned(), Arc::new(info));
        lock(&self.ensured).insert(id);
        Ok(())
    }

    /// How each column of `schema` is written to `info`'s table, in schema column order.
    fn column_plans<'s>(&self, schema: &'s Schema, info: &TableInfo) -> Result<Vec<ColumnPlan<'s>>, DriverError> {
        let table = schema.table();
        schema
            .columns()
            .iter()
            .map(|c| {
                let Some(dest) = info.columns.get(&c.name) else {
                    self.forget_catalog();
                    return Err(DriverError::new(
                        ErrorClass::Transient,
                        format!("PostgreSQL: column {:?} of table {table:?} is missing at the destination", c.name),
                    ));
                };
                let cast = dest.cast.clone().ok_or_else(|| {
                    DriverError::new(
                        ErrorClass::Config,
                        format!(
                            "PostgreSQL: column {:?} of table {table:?} has type {:?}, whose name eds does not put into SQL",
                            c.name, dest.display
                        ),
                    )
                })?;
                let default = plan::json_default(c);
                Ok(ColumnPlan { name: &c.name, quoted: quote_ident(&c.name)?, storage: dest.storage, cast, default })
            })
            .collect()
    }

    /// One batch in one transaction; `fresh`: upsert groups try [`copy_fresh`] first.
    async fn write_folded(&self, changes: &[StateChange<'_>], fresh: bool) -> Result<(), DriverError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Tables and columns first (cheap when nothing changed), outside the batch's transaction.
        // Once per (table, version) of the batch.
        let mut plans: plan::Columns<'_, ColumnPlan<'_>> = HashMap::new();
        for schema in plan::schemas("PostgreSQL", changes)? {
            self.ensure(schema).await?;
            let info = self.cached(schema.table()).ok_or_else(|| {
                DriverError::new(
                    ErrorClass::Transient,
                    format!("PostgreSQL: the catalog of table {:?} was dropped during the write", schema.table()),
                )
            })?;
            plans.insert((schema.table(), schema.model_version()), self.column_plans(schema, &info)?);
        }
        let plan = plan::plan("PostgreSQL", changes, &plans)?;

        let mut tx = BatchTx::begin(&self.pool, &self.options)
            .await
            .map_err(|e| sql_error(&format!("starting a transaction on {}", self.target), e))?;
        let outcome = self.apply(tx.conn(), &plan, &plans, fresh).await;
        tx.finish(outcome, |e| self.write_error("committing the batch", e)).await
    }

    /// Every statement of a batch's plan, in its transaction on `tx`.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        plan: &plan::Plan<'_, Cell<'_>>,
        plans: &plan::Columns<'_, ColumnPlan<'_>>,
        fresh: bool,
    ) -> Result<(), DriverError> {
        let mut staging = 0usize;
        for step in plan.steps() {
            match step {
                Step::Delete(g) => {
                    let table = g.schema.table();
                    let columns = plans.get(&(table, g.schema.model_version())).map_or(&[][..], Vec::as_slice);
                    let rows = g.rows.len();
                    let sql = delete_sql(g.schema, columns)?;
                    let values = column_major(&g.rows, g.schema.primary_keys().len().min(columns.len()));
                    let mut q = sqlx::query(&sql);
                    for v in &values {
                        q = q.bind(v.as_slice());
                    }
                    q.execute(&mut *tx)
                        .await
                        .map_err(|e| self.write_error(&format!("deleting {rows} rows from table {table:?}"), e))?;
                }
                Step::Upsert(g) => {
                    let table = g.schema.table();
                    let columns = plans.get(&(table, g.schema.model_version())).map_or(&[][..], Vec::as_slice);
                    let rows = g.rows.len();
                    if fresh && fresh_copy_fits(columns) {
                        let what = format!("copying {rows} rows into table {table:?}");
                        if copy_fresh(tx, g, columns).await.map_err(|e| self.write_error(&what, e))? {
                            continue;
                        }
                    }
                    if rows >= self.copy_threshold {
                        let what = format!("upserting {rows} rows into table {table:?} through COPY");
                        let stage = format!("eds_stage_{staging}");
                        let sql = upsert_sql(g, columns, Some(&stage))?;
                        copy_upsert(tx, g, columns.len(), &stage, &sql)
                            .await
                            .map_err(|e| self.write_error(&what, e))?;
                        staging += 1;
                    } else {
                        let sql = upsert_sql(g, columns, None)?;
                        let values = column_major(&g.rows, columns.len());
                        let mut q = sqlx::query(&sql);
                        for v in &values {
                            q = q.bind(v.as_slice());
                        }
                        q.execute(&mut *tx)
                            .await
                            .map_err(|e| self.write_error(&format!("upserting {rows} rows into table {table:?}"), e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The [`CopyEncoder`] of `schema`'s table as the cached catalog has it (see
    /// [`Driver::fresh_encoder`]).
    fn encoder(&self, schema: &Schema) -> Option<CopyEncoder> {
        let info = self.cached(schema.table())?;
        let plans = self.column_plans(schema, &info).ok()?;
        let id_only = |keys: &mut dyn Iterator<Item = &str>| keys.eq(std::iter::once("id"));
        let id_key = id_only(&mut schema.primary_keys().iter().map(String::as_str))
            && id_only(&mut info.primary_key.iter().map(String::as_str));
        CopyEncoder::new(&plans, id_key)
    }

    /// [`Driver::write_encoded`]: `data` COPYed into `schema`'s table in a transaction of its own.
    async fn write_copy(&self, schema: &Schema, data: &[u8]) -> Result<bool, DriverError> {
        if data.is_empty() {
            return Ok(true);
        }
        let table = schema.table();
        let Some(info) = self.cached(table) else { return Ok(false) };
        let plans = self.column_plans(schema, &info)?;
        let copy = copy_statement(table, plans.iter().map(|p| p.quoted.as_str()))?;
        let mut tx = BatchTx::begin(&self.pool, &self.options)
            .await
            .map_err(|e| sql_error(&format!("starting a transaction on {}", self.target), e))?;
        let what = format!("copying rows into table {table:?}");
        match copy_data(tx.conn(), &copy, data).await {
            Ok(()) => tx.finish(Ok(()), |e| self.write_error("committing the rows", e)).await.map(|()| true),
            // Refused: rolled back, for the upsert way to write or refuse row by row.
            Err(sqlx::Error::Database(_)) => {
                let _ = tx.finish(Err(()), |_| ()).await;
                Ok(false)
            }
            Err(e) => {
                let e = self.write_error(&what, e);
                tx.finish(Err(e), |e| self.write_error("committing the rows", e)).await.map(|()| true)
            }
        }
    }

    /// Classifies a write error; one that suggests the catalog changed drops the cache.
    fn write_error(&self, what: &str, e: sqlx::Error) -> DriverError {
        if let sqlx::Error::Database(db) = &e {
            if db.code().is_some_and(|c| c.starts_with("42")) {
                self.forget_catalog();
            }
        }
        sql_error(what, e)
    }

    async fn check(&self) -> Result<(), DriverError> {
        let probe = async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            let schema: Option<String> = sqlx::query_scalar("SELECT current_schema()").fetch_one(&mut conn).await?;
            // Closing politely is a courtesy; the check already succeeded.
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(schema)
        };
        let target = &self.target;
        match tokio::time::timeout(TEST_TIMEOUT, probe).await {
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("PostgreSQL: {target} did not answer within {} s", TEST_TIMEOUT.as_secs()),
            )),
            Ok(Err(e)) => Err(sql_error(&format!("connecting to {target}"), e)),
            Ok(Ok(None)) => Err(DriverError::new(
                ErrorClass::Config,
                format!("PostgreSQL: {target} has no current schema (search_path names no existing schema)"),
            )),
            Ok(Ok(Some(_))) => Ok(()),
        }
    }
}

/// `INSERT INTO t (…) SELECT <casts> FROM <source> ON CONFLICT (<keys>) DO UPDATE SET …`; the
/// source is `unnest` of one `text[]` parameter per column, or the staging table `stage`.
fn upsert_sql(g: &UpsertGroup<'_>, columns: &[ColumnPlan<'_>], stage: Option<&str>) -> Result<String, DriverError> {
    let table = quote_ident(g.schema.table())?;
    let names = columns.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    let exprs = columns.iter().enumerate().map(|(i, p)| p.select_expr(i)).collect::<Vec<_>>().join(", ");
    let source = match stage {
        Some(stage) => format!("{stage} AS u"),
        None => unnest_source(columns.len()),
    };
    let keys = g.schema.primary_keys().iter().map(|k| quote_ident(k)).collect::<Result<Vec<_>, _>>()?;
    let action = if g.update.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        let sets = g
            .update
            .iter()
            .map(|c| quote_ident(c).map(|q| format!("{q} = EXCLUDED.{q}")))
            .collect::<Result<Vec<_>, _>>()?;
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    Ok(format!("INSERT INTO {table} ({names}) SELECT {exprs} FROM {source} ON CONFLICT ({}) {action}", keys.join(", ")))
}

/// `unnest($1::text[], …) AS u(c0, …)`.
fn unnest_source(n: usize) -> String {
    let params = (1..=n).map(|i| format!("${i}::text[]")).collect::<Vec<_>>().join(", ");
    let names = (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", ");
    format!("unnest({params}) AS u({names})")
}

/// `DELETE FROM t WHERE (<keys>) IN (SELECT <casts> FROM unnest(…))`.
fn delete_sql(schema: &Schema, columns: &[ColumnPlan<'_>]) -> Result<String, DriverError> {
    let table = quote_ident(schema.table())?;
    let keys = &columns[..schema.primary_keys().len().min(columns.len())];
    let names = keys.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    let exprs = keys.iter().enumerate().map(|(i, p)| p.select_expr(i)).collect::<Vec<_>>().join(", ");
    Ok(format!("DELETE FROM {table} WHERE ({names}) IN (SELECT {exprs} FROM {})", unnest_source(keys.len())))
}

/// The COPY path of one upsert group: a temporary all-text staging table dropped at commit, the
/// rows streamed into it in COPY's text format, then `sql`: the same `INSERT … SELECT` as the
/// unnest path, reading the staging table `stage`.
async fn copy_upsert(
    conn: &mut PgConnection,
    g: &UpsertGroup<'_>,
    width: usize,
    stage: &str,
    sql: &str,
) -> Result<(), sqlx::Error> {
    let defs = (0..width).map(|i| format!("c{i} text")).collect::<Vec<_>>().join(", ");
    conn.execute(format!("CREATE TEMP TABLE {stage} ({defs}) ON COMMIT DROP").as_str()).await?;
    copy_rows(conn, &format!("COPY {stage} FROM STDIN"), &g.rows).await?;
    // Not a prepared statement: the staging table is a new one in every transaction.
    sqlx::query(sql).persistent(false).execute(&mut *conn).await?;
    Ok(())
}

/// Streams `rows` in COPY's text format through `copy` (a `COPY … FROM STDIN` statement).
pub(super) async fn copy_rows(conn: &mut PgConnection, copy: &str, rows: &[Vec<Cell<'_>>]) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(copy).await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                buf.push(b'\t');
            }
            copy_field(&mut buf, cell.as_deref());
        }
        buf.push(b'\n');
        if buf.len() >= COPY_CHUNK {
            if let Err(e) = copy.send(std::mem::take(&mut buf)).await {
                // The connection is unusable anyway; the transaction rolls back.
                let _ = copy.abort("eds: sending COPY data failed").await;
                return Err(e);
            }
        }
    }
    if !buf.is_empty() {
        if let Err(e) = copy.send(buf).await {
            let _ = copy.abort("eds: sending COPY data failed").await;
            return Err(e);
        }
    }
    copy.finish().await?;
    Ok(())
}

impl Driver for PostgresDriver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        // 2 MiB of records (about 3,000 Shopmonkey events) per batch: as fast as 16 MiB in the
        // drain benchmark, at well under half the peak memory (51 MiB against 128 there).
        Limits { max_rows: 10_000, max_bytes: 2 << 20, max_bind_params: 65_535 }
    }

    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.check())
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                Batch::Folded(changes) => self.write_folded(changes, false).await,
                Batch::Events(_) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the PostgreSQL destination takes folded changes (state kind), not every event",
                )),
            }
        })
    }

    /// Each upsert group COPYed straight into its table inside a savepoint, without a staging
    /// table or `ON CONFLICT`; a group the server refuses that way (a key already there, a bad
    /// value) and one with a `timestamp without time zone` column go the upsert path instead, in
    /// the same transaction. The same content as [`Driver::write`], the same rows refused.
    fn write_fresh<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                Batch::Folded(changes) => self.write_folded(changes, true).await,
                Batch::Events(_) => self.write(batch).await,
            }
        })
    }

    /// Export rows as COPY text lines for a table whose primary key is `id` alone (the encoder
    /// of the `fresh` module); none for a table with a `timestamp without time zone` column.
    fn fresh_encoder(&self, schema: &Schema) -> Option<Box<dyn FreshEncoder>> {
        self.encoder(schema).map(|e| Box::new(e) as Box<dyn FreshEncoder>)
    }

    fn write_encoded<'a>(&'a self, schema: &'a Schema, data: &'a [u8]) -> BoxFuture<'a, Result<bool, DriverError>> {
        Box::pin(self.write_copy(schema, data))
    }

    fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.ensure(schema))
    }

    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.drop_one(table))
    }
}
