//! Writing folded changes to SQL Server, and keeping tables in step with HQ's schemas.
//!
//! Statements: every table and column name goes through [`quote_ident`] (`[name]`, `]` doubled);
//! no value is ever put into SQL text. Values are converted in Rust by the destination column's
//! real type (see `cells.rs`).
//!
//! Batches: one transaction per batch (`SET XACT_ABORT ON; BEGIN TRANSACTION` … `COMMIT`, rolled
//! back on any error). Upserts are grouped by (table, schema version, columns to update) and
//! deletes by (table, schema version), as in the PostgreSQL driver. Each group is staged in a
//! temporary table `#eds_stage_<n>`, loaded with multi-row parameterised `INSERT … VALUES` chunked
//! under SQL Server's 2,100-parameter and 1,000-row limits, then applied with ONE `MERGE … WITH
//! (HOLDLOCK)` (upserts) or one `DELETE … INNER JOIN` (deletes), and dropped. Staging keeps a
//! 98-column table far from the parameter limit that a per-row parameterised MERGE would hit.
//! (tiberius's bulk-load path was not used: its encoder refuses `NVARCHAR(MAX)` values over 65,535
//! bytes, declares `NVARCHAR(n > 2000)` columns as `nvarchar(max)`, and does not rescale
//! `DATETIMEOFFSET` values.) The staged key columns have the destination key columns' own type and
//! collation, so the MERGE's join compares like with like and can seek the primary key.
//!
//! Schema: the catalog of each table is cached and re-read after DDL; which (table, model version)
//! pairs were already ensured is remembered, so [`Driver::ensure_schema`] is a set lookup when
//! nothing changed. DDL runs in its own batches, never inside a batch's transaction. The one
//! connection is behind a tokio mutex, so DDL and writes are serialised; it is opened lazily and
//! dropped after any error that may have left it unusable, to be reopened by the next call.

use super::catalog::{check_types, create_table_sql, load_table, migration_sql, TableInfo};
use super::cells::{column_plans, ColumnPlan, Param};
use super::config::{connect_spec, redact, ConnectSpec};
use super::DESCRIPTION;
use crate::driver::{Batch, BoxFuture, Description, Driver, DriverError, ErrorClass, Limits, StateChange};
use crate::schema::Schema;
use crate::sql::plan::{self, Step};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tiberius::{ColumnData, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

/// A tiberius client over tokio's TCP stream.
pub(super) type Client = tiberius::Client<Compat<TcpStream>>;

/// Parameters per statement when staging rows: below SQL Server's 2,100 (the RPC call carries
/// the statement and its parameter declarations too).
pub const MAX_STATEMENT_PARAMS: usize = 2_000;

/// Rows per `INSERT … VALUES` (SQL Server allows at most 1,000 row value expressions).
pub const MAX_INSERT_ROWS: usize = 1_000;

/// How long [`Driver::test`] waits for the server.
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening a connection (TCP, TLS, login) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long one batch (or one ensure) may take before the connection is considered dead.
const WORK_TIMEOUT: Duration = Duration::from_secs(300);

/// SQL Server's identifier limit (`sysname` is `NVARCHAR(128)`).
const MAX_IDENTIFIER_CHARS: usize = 128;

/// `name` as a SQL Server identifier: always in brackets, with every `]` doubled, so case,
/// spaces and punctuation are kept exactly. Names SQL Server cannot hold — empty, containing a
/// NUL byte, or longer than 128 characters — are an [`ErrorClass::Rejected`] error. The
/// only function that puts a table or column name into SQL.
pub fn quote_ident(name: &str) -> Result<String, DriverError> {
    crate::sql::quote_identifier("SQL Server", name, ('[', ']'), |name| {
        (name.encode_utf16().count() > MAX_IDENTIFIER_CHARS)
            .then_some("is longer than SQL Server's 128-character identifier limit")
    })
}

/// How the drain should treat a SQL Server error number.
pub fn classify_number(number: u32) -> ErrorClass {
    match number {
        // Deadlock victim, lock request timeout, Azure SQL's "database unavailable / busy /
        // reconfiguring" family.
        1205 | 1222 | 40197 | 40501 | 40613 | 49918 | 49919 | 49920 | 10928 | 10929 => ErrorClass::Transient,
        // Login failed (and its password-expired/locked variants), cannot open database, no
        // permission (object, database, server), cannot find the user's default schema.
        18456 | 18452 | 18486 | 18487 | 18488 | 4060 | 229 | 230 | 262 | 297 | 300 | 916 | 2760 => ErrorClass::Config,
        // Cannot insert NULL, duplicate key, truncation, date-time conversion and range,
        // conversion, arithmetic overflow, constraint conflict, the same target row twice in one
        // MERGE (keys equal under the column's collation).
        515 | 2627 | 2601 | 8152 | 2628 | 241 | 242 | 245 | 8114 | 8115 | 220 | 232 | 8169 | 547 | 8672 => {
            ErrorClass::Rejected
        }
        // A trigger's RAISERROR/THROW (user errors are numbered from 50000), or its ROLLBACK.
        50_000.. | 3609 => ErrorClass::Rejected,
        // Too many parameters; the query processor ran out of resources for a big statement.
        8003 | 8623 | 8632 => ErrorClass::TooLarge,
        // Invalid object or column name after a concurrent change: the catalog cache is dropped
        // and the retry re-reads it.
        207 | 208 => ErrorClass::Transient,
        // Anything else: retried, and held against a change only when it fails alone again and
        // again (the drain's backstop).
        _ => ErrorClass::Unknown,
    }
}

/// How the drain should treat a tiberius error.
pub fn classify(e: &tiberius::error::Error) -> ErrorClass {
    use tiberius::error::Error;
    match e {
        Error::Server(token) => classify_number(token.code()),
        // Certificate or TLS set-up problems are fixed by configuration.
        Error::Tls(_) => ErrorClass::Config,
        // A value tiberius cannot encode for the column.
        Error::Encoding(_) | Error::BulkInput(_) => ErrorClass::Rejected,
        // I/O, protocol, routing and the rest: the connection.
        _ => ErrorClass::Transient,
    }
}

/// "error 2627: Violation of PRIMARY KEY …" for server errors, tiberius's text otherwise.
fn describe_error(e: &tiberius::error::Error) -> String {
    match e {
        tiberius::error::Error::Server(token) => format!("error {}: {}", token.code(), token.message()),
        other => other.to_string(),
    }
}

fn sql_error(what: &str, e: tiberius::error::Error) -> DriverError {
    let class = classify(&e);
    DriverError::caused(class, format!("SQL Server: {what} failed: {}", describe_error(&e)), e)
}

/// Like [`sql_error`], for DDL: a duplicate-name error there means another session created the
/// same table or column at the same moment, which a retry resolves; a size limit (too many
/// columns, row too wide) or a column that cannot be altered is configuration.
fn ddl_error(what: &str, e: tiberius::error::Error) -> DriverError {
    let number = e.code();
    let mut err = sql_error(what, e);
    err.class = match (number, err.class) {
        (Some(1701 | 1702 | 4922 | 5074 | 8111), _) => ErrorClass::Config,
        (_, ErrorClass::Rejected) => ErrorClass::Transient,
        (_, ErrorClass::TooLarge) => ErrorClass::Config,
        (_, other) => other,
    };
    err
}

/// Whether the connection may still be used after `e` (a server error leaves it usable; I/O,
/// protocol and TLS errors do not).
fn connection_survives(e: &tiberius::error::Error) -> bool {
    matches!(e, tiberius::error::Error::Server(_))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Planning a batch

pub(super) type UpsertGroup<'b> = plan::UpsertGroup<'b, Param>;
pub(super) type DeleteGroup<'b> = plan::DeleteGroup<'b, Param>;
pub(super) type Plan<'b> = plan::Plan<'b, Param>;

/// The shared planner ([`plan::plan`]) for SQL Server's cells.
pub(super) fn plan<'b>(
    changes: &'b [StateChange<'b>],
    plans: &plan::Columns<'b, ColumnPlan<'_>>,
) -> Result<Plan<'b>, DriverError> {
    plan::plan("SQL Server", changes, plans)
}

// ---------------------------------------------------------------------------------------------
// Statements (pure: built before anything is sent)

/// One statement with its parameters (`@P1` is `params[0]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text; never contains a value.
    pub sql: String,
    /// The values, in `@P` order.
    pub params: Vec<Param>,
}

/// Everything one group sends, in order: `create` (a batch: a temporary table made inside
/// `sp_executesql` would vanish when it returns), the staging `inserts`, the `apply` statement
/// (MERGE or DELETE) and `drop`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSql {
    /// What the group does, for messages ("upserting 3 rows into table \"order\"").
    pub what: String,
    /// Drops a leftover and creates the staging table.
    pub create: String,
    /// Multi-row `INSERT INTO #stage … VALUES`, each under the parameter and row limits.
    pub inserts: Vec<Statement>,
    /// The MERGE or DELETE.
    pub apply: String,
    /// Drops the staging table.
    pub drop: String,
}

/// The staging table's name for the `n`th group of a batch.
pub(super) fn stage_name(n: usize) -> String {
    format!("#eds_stage_{n}")
}

/// `IF OBJECT_ID(…) IS NOT NULL DROP TABLE #s; CREATE TABLE #s ([c0] <type> NULL, …)`.
pub(super) fn create_stage_sql(stage: &str, types: &[&str]) -> String {
    let defs = types.iter().enumerate().map(|(i, t)| format!("[c{i}] {t} NULL")).collect::<Vec<_>>().join(", ");
    format!("IF OBJECT_ID(N'tempdb..{stage}') IS NOT NULL DROP TABLE {stage};\nCREATE TABLE {stage} ({defs})")
}

/// Multi-row `INSERT INTO #s ([c0], …) VALUES (@P1, …), …`, chunked so that no statement has
/// more than [`MAX_STATEMENT_PARAMS`] parameters or [`MAX_INSERT_ROWS`] rows.
pub(super) fn stage_inserts(stage: &str, width: usize, rows: &[Vec<Param>]) -> Vec<Statement> {
    let per = (MAX_STATEMENT_PARAMS / width.max(1)).clamp(1, MAX_INSERT_ROWS);
    let names = (0..width).map(|i| format!("[c{i}]")).collect::<Vec<_>>().join(", ");
    rows.chunks(per)
        .map(|chunk| {
            let mut n = 0usize;
            let tuples = chunk
                .iter()
                .map(|_| {
                    let list = (0..width)
                        .map(|_| {
                            n += 1;
                            format!("@P{n}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    format!("({list})")
                })
                .collect::<Vec<_>>()
                .join(", ");
            Statement {
                sql: format!("INSERT INTO {stage} ({names}) VALUES {tuples}"),
                params: chunk.iter().flat_map(|row| row.iter().cloned()).collect(),
            }
        })
        .collect()
}

/// `t.[k1] = s.[c0] AND t.[k2] = s.[c1]` for the first `npk` columns.
fn key_match(columns: &[ColumnPlan<'_>], npk: usize) -> String {
    columns
        .iter()
        .take(npk)
        .enumerate()
        .map(|(i, p)| format!("t.{} = s.[c{i}]", p.quoted))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `MERGE INTO [t] WITH (HOLDLOCK) AS t USING #s AS s ON <keys> [WHEN MATCHED THEN UPDATE SET …]
/// WHEN NOT MATCHED BY TARGET THEN INSERT (…) VALUES (…);`
pub(super) fn merge_sql(
    schema: &Schema,
    columns: &[ColumnPlan<'_>],
    update: &[&str],
    stage: &str,
) -> Result<String, DriverError> {
    let table = quote_ident(schema.table())?;
    let npk = schema.primary_keys().len().min(columns.len());
    let mut sql = format!("MERGE INTO {table} WITH (HOLDLOCK) AS t USING {stage} AS s ON {}", key_match(columns, npk));
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(_, p)| update.contains(&p.name))
        .map(|(i, p)| format!("t.{} = s.[c{i}]", p.quoted))
        .collect();
    if !sets.is_empty() {
        sql.push_str(&format!(" WHEN MATCHED THEN UPDATE SET {}", sets.join(", ")));
    }
    let names = columns.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    let values = (0..columns.len()).map(|i| format!("s.[c{i}]")).collect::<Vec<_>>().join(", ");
    sql.push_str(&format!(" WHEN NOT MATCHED BY TARGET THEN INSERT ({names}) VALUES ({values});"));
    Ok(sql)
}

/// `DELETE t FROM [t] AS t INNER JOIN #s AS s ON <keys>`.
pub(super) fn delete_sql(schema: &Schema, columns: &[ColumnPlan<'_>], stage: &str) -> Result<String, DriverError> {
    let table = quote_ident(schema.table())?;
    let npk = schema.primary_keys().len().min(columns.len());
    Ok(format!("DELETE t FROM {table} AS t INNER JOIN {stage} AS s ON {}", key_match(columns, npk)))
}

/// Everything an upsert group sends, staging in `stage`.
pub(super) fn upsert_group_sql(
    g: &UpsertGroup<'_>,
    columns: &[ColumnPlan<'_>],
    stage: &str,
) -> Result<GroupSql, DriverError> {
    let types: Vec<&str> = columns.iter().map(|p| p.stage_type.as_str()).collect();
    Ok(GroupSql {
        what: format!("upserting {} rows into table {:?}", g.rows.len(), g.schema.table()),
        create: create_stage_sql(stage, &types),
        inserts: stage_inserts(stage, columns.len(), &g.rows),
        apply: merge_sql(g.schema, columns, &g.update, stage)?,
        drop: format!("DROP TABLE {stage}"),
    })
}

/// Everything a delete group sends, staging in `stage`.
pub(super) fn delete_group_sql(
    g: &DeleteGroup<'_>,
    columns: &[ColumnPlan<'_>],
    stage: &str,
) -> Result<GroupSql, DriverError> {
    let npk = g.schema.primary_keys().len().min(columns.len());
    let keys = columns.get(..npk).unwrap_or_default();
    let types: Vec<&str> = keys.iter().map(|p| p.stage_type.as_str()).collect();
    Ok(GroupSql {
        what: format!("deleting {} rows from table {:?}", g.rows.len(), g.schema.table()),
        create: create_stage_sql(stage, &types),
        inserts: stage_inserts(stage, npk, &g.rows),
        apply: delete_sql(g.schema, columns, stage)?,
        drop: format!("DROP TABLE {stage}"),
    })
}

/// Every group of a plan as statements, in execution order: per round, deletes then upserts.
pub(super) fn batch_sql(
    plan: &Plan<'_>,
    plans: &HashMap<(&str, &str), Vec<ColumnPlan<'_>>>,
) -> Result<Vec<GroupSql>, DriverError> {
    let mut out = Vec::new();
    fn columns_of<'p, 'c>(plans: &'p plan::Columns<'_, ColumnPlan<'c>>, schema: &'p Schema) -> &'p [ColumnPlan<'c>] {
        plans.get(&(schema.table(), schema.model_version())).map_or(&[][..], Vec::as_slice)
    }
    for step in plan.steps() {
        let stage = stage_name(out.len());
        out.push(match step {
            Step::Delete(g) => delete_group_sql(g, columns_of(plans, g.schema), &stage)?,
            Step::Upsert(g) => upsert_group_sql(g, columns_of(plans, g.schema), &stage)?,
        });
    }
    Ok(out)
}

/// Starts a batch's transaction; errors abort and roll back the whole transaction.
pub(super) const BEGIN_SQL: &str = "SET XACT_ABORT ON; SET ANSI_WARNINGS ON; BEGIN TRANSACTION";
/// Ends it.
pub(super) const COMMIT_SQL: &str = "COMMIT TRANSACTION";
/// Rolls back whatever is left after an error.
pub(super) const ROLLBACK_SQL: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION";

// ---------------------------------------------------------------------------------------------
// The driver

/// Runs `sql` as a batch (no parameters) and reads every result, so errors surface.
pub(super) async fn run_batch(client: &mut Client, sql: &str) -> Result<(), tiberius::error::Error> {
    client.simple_query(sql).await?.into_results().await?;
    Ok(())
}

/// `DROP TABLE IF EXISTS` for `table` of `schema`, both quoted.
pub(super) fn drop_table_sql(schema: &str, table: &str) -> Result<String, DriverError> {
    Ok(format!("DROP TABLE IF EXISTS {}.{}", quote_ident(schema)?, quote_ident(table)?))
}

/// Runs a parameterised statement.
async fn run_statement(client: &mut Client, statement: &Statement) -> Result<(), tiberius::error::Error> {
    let params: Vec<&dyn ToSql> = statement.params.iter().map(|p| p as &dyn ToSql).collect();
    client.execute(statement.sql.as_str(), &params).await?;
    Ok(())
}

/// Opens a TCP connection to `host:port` and signs in.
async fn connect_to(spec: &ConnectSpec, host: &str, port: u16) -> Result<Client, tiberius::error::Error> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Client::connect(spec.tiberius_config(host, port), tcp.compat_write()).await
}

/// Connects, following one redirection (Azure SQL's gateway routes clients to the database's
/// node).
async fn connect(spec: &ConnectSpec) -> Result<Client, tiberius::error::Error> {
    match connect_to(spec, &spec.host, spec.port).await {
        Err(tiberius::error::Error::Routing { host, port }) => connect_to(spec, &host, port).await,
        other => other,
    }
}

/// Opens a connection to `spec` (named `target` in messages) before `deadline`. The connection
/// is made in a task of its own: tiberius asserts on some malformed server answers (a TLS
/// handshake in the wrong packet type), and its panic must become an error, not end the caller.
pub(super) async fn open(
    spec: &ConnectSpec,
    target: &str,
    deadline: tokio::time::Instant,
) -> Result<Client, DriverError> {
    let spec = spec.clone();
    let task = tokio::spawn(async move { tokio::time::timeout_at(deadline, connect(&spec)).await });
    match task.await {
        Ok(Err(_)) => {
            Err(DriverError::new(ErrorClass::Transient, format!("SQL Server: {target} did not answer in time")))
        }
        Ok(Ok(Err(e))) => Err(sql_error(&format!("connecting to {target}"), e)),
        Ok(Ok(Ok(client))) => Ok(client),
        Err(join) => {
            let panic = join.try_into_panic().ok();
            let why = panic
                .as_ref()
                .and_then(|p| {
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                })
                .unwrap_or_else(|| "the connection task ended".to_owned());
            Err(DriverError::new(
                ErrorClass::Config,
                format!(
                    "SQL Server: connecting to {target} failed: the TDS client could not follow the server ({why})"
                ),
            ))
        }
    }
}

/// The SQL Server destination.
pub struct SqlServerDriver {
    spec: ConnectSpec,
    target: String,
    conn: tokio::sync::Mutex<Option<Client>>,
    catalog: Mutex<HashMap<String, Arc<TableInfo>>>,
    ensured: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for SqlServerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerDriver")
            .field("target", &self.target)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl SqlServerDriver {
    /// A driver for `url` (see [`connect_spec`](super::connect_spec)). Connects lazily: the first
    /// write, ensure or test opens the connection; it can be made outside a tokio runtime.
    pub fn new(url: &str) -> Result<SqlServerDriver, DriverError> {
        Ok(SqlServerDriver {
            spec: connect_spec(url)?,
            target: redact(url),
            conn: tokio::sync::Mutex::new(None),
            catalog: Mutex::new(HashMap::new()),
            ensured: Mutex::new(HashSet::new()),
        })
    }

    /// Forgets every cached catalog entry and ensured schema, so the next ensure re-reads the
    /// destination (after an error that suggests the catalog changed behind our back).
    fn forget_catalog(&self) {
        lock(&self.catalog).clear();
        lock(&self.ensured).clear();
    }

    fn cached(&self, table: &str) -> Option<Arc<TableInfo>> {
        lock(&self.catalog).get(table).cloned()
    }

    async fn open(&self) -> Result<Client, DriverError> {
        open(&self.spec, &self.target, tokio::time::Instant::now() + CONNECT_TIMEOUT).await
    }

    /// Classifies an error from work on the shared connection, drops the connection when it may
    /// be unusable, and drops the catalog cache when the error suggests it changed (invalid
    /// object or column name).
    fn work_error(&self, slot: &mut Option<Client>, what: &str, e: tiberius::error::Error, ddl: bool) -> DriverError {
        if !connection_survives(&e) {
            *slot = None;
        }
        if matches!(e.code(), Some(207 | 208)) {
            self.forget_catalog();
        }
        if ddl {
            ddl_error(what, e)
        } else {
            sql_error(what, e)
        }
    }

    async fn ensure(&self, schema: &Schema) -> Result<(), DriverError> {
        let id = (schema.table().to_owned(), schema.model_version().to_owned());
        if lock(&self.ensured).contains(&id) {
            return Ok(());
        }
        quote_ident(schema.table())?;
        for c in schema.columns() {
            quote_ident(&c.name)?;
        }
        // The connection's mutex also serialises DDL.
        let mut slot = self.conn.lock().await;
        if lock(&self.ensured).contains(&id) {
            return Ok(());
        }
        let client = match slot.take() {
            Some(client) => client,
            None => self.open().await?,
        };
        let client = slot.insert(client);
        match tokio::time::timeout(WORK_TIMEOUT, self.ensure_on(client, schema)).await {
            Err(_) => {
                *slot = None;
                Err(DriverError::new(
                    ErrorClass::Transient,
                    format!(
                        "SQL Server: ensuring table {:?} took longer than {} s",
                        schema.table(),
                        WORK_TIMEOUT.as_secs()
                    ),
                ))
            }
            Ok(Err(Fail::Sql(what, e))) => Err(self.work_error(&mut slot, &what, e, true)),
            Ok(Err(Fail::Driver(e))) => Err(e),
            Ok(Ok(())) => {
                lock(&self.ensured).insert(id);
                Ok(())
            }
        }
    }

    /// [`Driver::drop_table`]: the table of the login's default schema (the one the catalog
    /// reads), named with that schema, since an unqualified name would fall back to `dbo`'s.
    async fn drop_one(&self, table: &str) -> Result<(), DriverError> {
        quote_ident(table)?;
        let mut slot = self.conn.lock().await;
        let client = match slot.take() {
            Some(client) => client,
            None => self.open().await?,
        };
        let client = slot.insert(client);
        let work = async {
            let what = || format!("dropping table {table:?}");
            let row = client
                .simple_query("SELECT SCHEMA_NAME()")
                .await
                .map_err(|e| Fail::Sql(what(), e))?
                .into_row()
                .await
                .map_err(|e| Fail::Sql(what(), e))?;
            let schema = row
                .and_then(|r| r.get::<&str, _>(0).map(str::to_owned))
                .ok_or_else(|| DriverError::new(ErrorClass::Config, "SQL Server: the login has no default schema"))?;
            run_batch(client, &drop_table_sql(&schema, table)?).await.map_err(|e| Fail::Sql(what(), e))
        };
        let outcome = tokio::time::timeout(WORK_TIMEOUT, work).await;
        self.forget_catalog();
        match outcome {
            Err(_) => {
                *slot = None;
                Err(DriverError::new(
                    ErrorClass::Transient,
                    format!("SQL Server: dropping table {table:?} took longer than {} s", WORK_TIMEOUT.as_secs()),
                ))
            }
            Ok(Err(Fail::Sql(what, e))) => Err(self.work_error(&mut slot, &what, e, true)),
            Ok(Err(Fail::Driver(e))) => Err(e),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The catalog reads and DDL of [`ensure`](Self::ensure) on `client`.
    async fn ensure_on(&self, client: &mut Client, schema: &Schema) -> Result<(), Fail> {
        let table = schema.table();
        let reading = || format!("reading the catalog of table {table:?}");
        let existing = load_table(client, table).await.map_err(|e| Fail::Sql(reading(), e))?;
        match existing {
            None => {
                let sql = create_table_sql(schema)?;
                if let Err(e) = run_batch(client, &sql).await {
                    // 2714: another session created it at the same moment; re-read below.
                    if e.code() != Some(2714) {
                        return Err(Fail::Sql(format!("creating table {table:?}"), e));
                    }
                }
            }
            Some(info) => {
                if !info.is_table {
                    return Err(not_a_table(table).into());
                }
                check_types(schema, &info)?;
                for sql in migration_sql(schema, &info)? {
                    run_batch(client, &sql).await.map_err(|e| Fail::Sql(format!("altering table {table:?}"), e))?;
                }
            }
        }
        let info = load_table(client, table).await.map_err(|e| Fail::Sql(reading(), e))?;
        // CREATE TABLE fails with 2714 when any object (a view, a procedure) has the name.
        let info = info.filter(|i| i.is_table).ok_or_else(|| not_a_table(table))?;
        // A concurrent creator may have made other types.
        check_types(schema, &info)?;
        if let Some(c) = schema.columns().iter().find(|c| !info.columns.contains_key(&c.name)) {
            return Err(Fail::Driver(DriverError::new(
                ErrorClass::Transient,
                format!("SQL Server: column {:?} of table {table:?} is still missing after ALTER TABLE", c.name),
            )));
        }
        lock(&self.catalog).insert(table.to_owned(), Arc::new(info));
        Ok(())
    }

    async fn write_folded(&self, changes: &[StateChange<'_>]) -> Result<(), DriverError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Tables and columns first (cheap when nothing changed), outside the batch's transaction.
        // Once per (table, version) of the batch.
        let mut plans: plan::Columns<'_, ColumnPlan<'_>> = HashMap::new();
        for schema in plan::schemas("SQL Server", changes)? {
            self.ensure(schema).await?;
            let info = self.cached(schema.table()).ok_or_else(|| {
                DriverError::new(
                    ErrorClass::Transient,
                    format!("SQL Server: the catalog of table {:?} was dropped during the write", schema.table()),
                )
            })?;
            let columns = column_plans(schema, &info).inspect_err(|_| self.forget_catalog())?;
            plans.insert((schema.table(), schema.model_version()), columns);
        }
        // Every value is converted and every statement built before anything is sent.
        let groups = batch_sql(&plan(changes, &plans)?, &plans)?;

        let mut slot = self.conn.lock().await;
        // The client stays out of the slot until its transaction is over: a write cancelled
        // half-way (by the drain's deadline) drops it, and a closed connection ends its
        // transaction on the server. It goes back only after a COMMIT or a ROLLBACK got through.
        let mut client = match slot.take() {
            Some(client) => client,
            None => self.open().await?,
        };
        let outcome = tokio::time::timeout(WORK_TIMEOUT, apply(&mut client, &groups)).await;
        let (what, e) = match outcome {
            Ok(Ok(())) => {
                *slot = Some(client);
                return Ok(());
            }
            Ok(Err(failed)) => failed,
            Err(_) => {
                return Err(DriverError::new(
                    ErrorClass::Transient,
                    format!("SQL Server: the batch took longer than {} s", WORK_TIMEOUT.as_secs()),
                ));
            }
        };
        *slot = settle(client, connection_survives(&e)).await;
        Err(self.work_error(&mut slot, &what, e, false))
    }

    async fn check(&self) -> Result<(), DriverError> {
        let target = &self.target;
        let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
        let mut client = open(&self.spec, target, deadline).await?;
        let probe = async {
            let row = client.simple_query("SELECT 1").await?.into_row().await?;
            Ok::<_, tiberius::error::Error>(row.as_ref().and_then(|r| r.cells().next()).and_then(|(_, c)| int_cell(c)))
        };
        let answer = tokio::time::timeout_at(deadline, probe).await;
        if matches!(answer, Ok(Ok(_))) {
            // Closing politely is a courtesy; the check already has its answer.
            let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
        }
        match answer {
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("SQL Server: {target} did not answer within {} s", TEST_TIMEOUT.as_secs()),
            )),
            Ok(Err(e)) => Err(sql_error(&format!("running SELECT 1 on {target}"), e)),
            Ok(Ok(Some(1))) => Ok(()),
            Ok(Ok(other)) => Err(DriverError::new(
                ErrorClass::Config,
                format!("SQL Server: {target} answered SELECT 1 with {other:?}: not a SQL Server"),
            )),
        }
    }
}

/// An integer cell of any width.
fn int_cell(cell: &ColumnData<'_>) -> Option<i64> {
    match cell {
        ColumnData::U8(v) => v.map(i64::from),
        ColumnData::I16(v) => v.map(i64::from),
        ColumnData::I32(v) => v.map(i64::from),
        ColumnData::I64(v) => *v,
        _ => None,
    }
}

/// Why work on the connection failed: a statement (what it was doing, and the error), or the
/// driver itself.
enum Fail {
    Sql(String, tiberius::error::Error),
    Driver(DriverError),
}

impl From<DriverError> for Fail {
    fn from(e: DriverError) -> Fail {
        Fail::Driver(e)
    }
}

fn not_a_table(table: &str) -> DriverError {
    DriverError::new(
        ErrorClass::Config,
        format!("SQL Server: {table:?} exists in the default schema but is not a table (a view or another object)"),
    )
}

/// What can end a transaction (a [`Client`]; a recording double in the tests).
pub(super) trait Rollback {
    /// Sends ROLLBACK; whether it got through within [`TEST_TIMEOUT`].
    fn rollback(&mut self) -> BoxFuture<'_, bool>;
}

impl Rollback for Client {
    fn rollback(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            matches!(tokio::time::timeout(TEST_TIMEOUT, run_batch(self, ROLLBACK_SQL)).await, Ok(Ok(())))
        })
    }
}

/// After a failed batch: the connection to keep, or `None` to close it. XACT_ABORT has usually
/// rolled back already; an explicit ROLLBACK makes sure before the connection is used again.
/// After an error that may have broken the connection (`survives` false), or when the ROLLBACK
/// does not get through, the connection is given up (closing it ends the transaction on the
/// server).
pub(super) async fn settle<C: Rollback>(mut client: C, survives: bool) -> Option<C> {
    if survives && client.rollback().await {
        Some(client)
    } else {
        None
    }
}

/// Sends one batch's transaction: begin, every group (create stage, inserts, MERGE or DELETE,
/// drop stage), commit. On error, what was being done and the error.
async fn apply(client: &mut Client, groups: &[GroupSql]) -> Result<(), (String, tiberius::error::Error)> {
    run_batch(client, BEGIN_SQL).await.map_err(|e| ("starting a transaction".to_owned(), e))?;
    for g in groups {
        let failed = |e| (g.what.clone(), e);
        run_batch(client, &g.create).await.map_err(failed)?;
        for statement in &g.inserts {
            run_statement(client, statement).await.map_err(failed)?;
        }
        run_batch(client, &g.apply).await.map_err(failed)?;
        run_batch(client, &g.drop).await.map_err(failed)?;
    }
    run_batch(client, COMMIT_SQL).await.map_err(|e| ("committing the batch".to_owned(), e))
}

impl Driver for SqlServerDriver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        Limits { max_rows: 5_000, max_bytes: 8 << 20, max_bind_params: 2_100 }
    }

    fn test(&self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.check())
    }

    fn write<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            match batch {
                Batch::Folded(changes) => self.write_folded(changes).await,
                Batch::Events(_) => Err(DriverError::new(
                    ErrorClass::Config,
                    "the SQL Server destination takes folded changes (state kind), not every event",
                )),
            }
        })
    }

    fn ensure_schema<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.ensure(schema))
    }

    fn drop_table<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.drop_one(table))
    }
}
