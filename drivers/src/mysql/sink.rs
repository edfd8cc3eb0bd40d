//! Writing folded changes to MySQL or MariaDB, and keeping tables in step with HQ's schemas.
//!
//! Statements: every identifier goes through [`quote_ident`]; every value is a bound parameter
//! (`?`), converted in Rust by the destination column's real type (see `cells.rs`). Sessions run
//! with `time_zone='+00:00'` (so a `TIMESTAMP` column stores the right instant) and a strict
//! `sql_mode` (so a value the column cannot hold is an error, not a silent truncation or a zero
//! date).
//!
//! Upserts: `INSERT INTO t (…) VALUES (?, …), (?, …) ON DUPLICATE KEY UPDATE c = VALUES(c), …`.
//! `VALUES(c)` is the one spelling both servers accept: MariaDB (10.11 included) has no row alias
//! (`AS new … new.c`), and MySQL 8.0.20+ only deprecates `VALUES()` (a warning), it still works.
//! Never `REPLACE INTO`, which deletes and re-inserts: it fires delete triggers, breaks foreign
//! keys and wipes the columns the event did not carry. A change that lists its changed columns
//! (`standard` strategy) updates only those; a whole-row change every non-key column; an update
//! with nothing to set becomes `ON DUPLICATE KEY UPDATE <key> = <key>` (insert or leave alone).
//! Note that `ON DUPLICATE KEY` fires on any unique index, so a destination table should have no
//! unique index besides its primary key.
//!
//! Batches: one transaction per batch. Upserts are grouped by (table, schema version, columns to
//! update), deletes by table, and every group is cut into multi-row statements of at most
//! [`MAX_BIND_PARAMS`] placeholders (the protocol allows 65,535) and at most about the server's
//! `max_allowed_packet` of bound data (read at connect; one row larger than that is rejected).
//!
//! Schema: the catalog of each table (`information_schema.columns` for `table_schema =
//! DATABASE()`, its unique indexes, and on MariaDB the `json_valid` checks that make a `JSON`
//! column) is cached and re-read after DDL; which (table, model version) pairs were already ensured
//! is remembered, so [`Driver::ensure_schema`] is a set lookup when nothing changed. MySQL and
//! MariaDB commit implicitly on DDL, so DDL is serialised by a mutex and runs on its own, never
//! inside a batch's transaction. Column names are case-insensitive in MySQL, so the catalog is
//! matched by lower-cased name.

use super::catalog::{
    check_table, create_table_sql, load_server, load_table, migration_actions, ServerInfo, TableInfo,
    ASSUMED_MAX_PACKET,
};
use super::cells::{bind_cell, Cell, ColumnPlan};
use super::config::{connect_options, redact, DESCRIPTION, SESSION_SQL_MODE};
use crate::driver::{Batch, BoxFuture, Description, Driver, DriverError, ErrorClass, Limits, StateChange};
use crate::schema::Schema;
use crate::sql::plan::{self, Step};
use crate::sqltx::BatchTx;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool};
use sqlx::{Connection, Executor};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bind parameters per statement by default: MySQL's prepared statements take at most 65,535
/// placeholders; this stays well below.
pub const MAX_BIND_PARAMS: usize = 60_000;

/// Statements never carry more than this many bytes of values, whatever `max_allowed_packet` is.
const MAX_STATEMENT_BYTES: usize = 64 << 20;

/// Room left in a packet for the statement's own framing.
const PACKET_HEADROOM: usize = 64 << 10;

/// How long a write waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Driver::test`] waits for the server.
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// MySQL identifiers are at most 64 characters.
const MAX_IDENTIFIER_CHARS: usize = 64;

/// `name` as a MySQL identifier: always in backticks, with every backtick doubled, so case, spaces
/// and punctuation are kept exactly (`updatedDate` stays `updatedDate`). Names MySQL cannot hold —
/// empty, containing a NUL byte or a character outside the Basic Multilingual Plane, ending with a
/// space, or longer than 64 characters — are an [`ErrorClass::Rejected`] error.
pub fn quote_ident(name: &str) -> Result<String, DriverError> {
    crate::sql::quote_identifier("MySQL", name, ('`', '`'), |name| {
        if name.chars().any(|c| u32::from(c) > 0xFFFF) {
            Some("contains a character outside the Basic Multilingual Plane (such as an emoji)")
        } else if name.ends_with(' ') {
            Some("ends with a space")
        } else if name.chars().count() > MAX_IDENTIFIER_CHARS {
            Some("is longer than MySQL's 64-character identifier limit")
        } else {
            None
        }
    })
}

/// How the drain should treat a MySQL / MariaDB error number (with its SQLSTATE as a fallback).
pub fn classify_number(number: u16, sqlstate: &str) -> ErrorClass {
    match number {
        // Lock wait timeout, deadlock, server gone or lost (client codes, as proxies report them),
        // too many connections, shutdown, network errors, killed or interrupted, statement time
        // limits, disconnect for inactivity, too many prepared statements, disk full, a table or
        // column missing after a concurrent change (the catalog cache is dropped and the retry
        // re-reads it), a table or column created by someone else at the same moment, a statement
        // to prepare again after a concurrent ALTER.
        1205 | 1213 | 2002 | 2003 | 2006 | 2013 | 1040 | 1053 | 1077 | 1078 | 1079 | 1080 | 1152 | 1158 | 1159
        | 1160 | 1161 | 1184 | 1317 | 1927 | 3024 | 1969 | 4031 | 1461 | 1021 | 1114 | 1146 | 1054 | 1050 | 1060
        | 1061 | 1615 => ErrorClass::Transient,
        // Access denied (user, database, command, column, privilege), unknown database, account
        // locked or host not allowed, authentication plugin, read-only server or table, no
        // database selected, a statement the server does not understand, too many columns, row
        // size too large for the table (DDL).
        1044 | 1045 | 1049 | 1142 | 1143 | 1227 | 1251 | 1129 | 1130 | 1698 | 3118 | 1290 | 1036 | 1046 | 1064
        | 1117 | 1118 => ErrorClass::Config,
        // Column cannot be null, out of range, incorrect date-time or value, data too long or
        // truncated, no default, invalid JSON, foreign keys, duplicate entry, check constraints,
        // invalid character string, value out of range in a function.
        1048 | 1264 | 1292 | 1366 | 1367 | 1406 | 1265 | 1364 | 3140 | 3141 | 3146 | 1451 | 1452 | 1062 | 1586
        | 4025 | 3819 | 1300 | 1690 | 1411 | 4038 => ErrorClass::Rejected,
        // A trigger's SIGNAL (user-defined exception).
        1644 => ErrorClass::Rejected,
        // Packet too big, too many placeholders, transaction larger than the binlog cache or the
        // lock table, result larger than max_allowed_packet.
        1153 | 1390 | 1197 | 1206 | 1301 => ErrorClass::TooLarge,
        _ => match sqlstate {
            c if c.starts_with("08") => ErrorClass::Transient,
            c if c.starts_with("28") => ErrorClass::Config,
            "40001" => ErrorClass::Transient,
            c if c.starts_with("22") || c.starts_with("23") || c.starts_with("45") => ErrorClass::Rejected,
            // Anything else: retried, and held against a change only when it fails alone again
            // and again (the drain's backstop).
            _ => ErrorClass::Unknown,
        },
    }
}

/// How the drain should treat an sqlx error.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) => classify_number(my.number(), my.code().unwrap_or("")),
            None => classify_number(0, db.code().as_deref().unwrap_or("")),
        },
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => ErrorClass::Config,
        // I/O, protocol, pool timeouts, a closed pool: the connection.
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Unknown,
    }
}

/// "error 1048 (23000): Column 'name' cannot be null" for database errors, sqlx's text otherwise.
fn describe_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) => format!("error {} ({}): {}", my.number(), my.code().unwrap_or("HY000"), my.message()),
            None => format!("error ({}): {}", db.code().as_deref().unwrap_or("HY000"), db.message()),
        },
        other => other.to_string(),
    }
}

pub(super) fn sql_error(what: &str, e: sqlx::Error) -> DriverError {
    let class = classify(&e);
    DriverError::caused(class, format!("MySQL: {what} failed: {}", describe_error(&e)), e)
}

/// Like [`sql_error`], for DDL: a rejected-data or size error there cannot be fixed by splitting a
/// batch or dead-lettering a row (a row too large for the table's definition, too many columns).
fn ddl_error(what: &str, e: sqlx::Error) -> DriverError {
    let mut err = sql_error(what, e);
    if matches!(err.class, ErrorClass::Rejected | ErrorClass::TooLarge) {
        err.class = ErrorClass::Config;
    }
    err
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The MySQL destination.
pub struct MysqlDriver {
    pub(super) pool: MySqlPool,
    options: MySqlConnectOptions,
    target: String,
    max_bind_params: usize,
    packet_budget: Option<usize>,
    server: Mutex<Option<ServerInfo>>,
    catalog: Mutex<HashMap<String, Arc<TableInfo>>>,
    ensured: Mutex<HashSet<(String, String)>>,
    ddl: tokio::sync::Mutex<()>,
    /// Statements executed by writes (tests check the cutting with it).
    #[cfg(test)]
    pub(super) executed: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for MysqlDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlDriver")
            .field("target", &self.target)
            .field("max_bind_params", &self.max_bind_params)
            .finish_non_exhaustive()
    }
}

type UpsertGroup<'b> = plan::UpsertGroup<'b, Cell<'b>>;

/// Cuts `rows` into runs of at most `max_params` placeholders and `budget` bytes of values. A run
/// holds at least one row; `Err(i)` names a row that alone exceeds `budget`.
pub(super) fn chunks(rows: &[Vec<Cell<'_>>], max_params: usize, budget: usize) -> Result<Vec<Range<usize>>, usize> {
    let width = rows.first().map_or(1, Vec::len).max(1);
    let per_statement = (max_params / width).max(1);
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, row) in rows.iter().enumerate() {
        let size: usize = row.iter().map(Cell::wire_bytes).sum();
        if size > budget {
            return Err(i);
        }
        if i > start && (i - start >= per_statement || bytes + size > budget) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    Ok(out)
}

impl MysqlDriver {
    /// A driver for `url` (see [`connect_options`]). Connects lazily: the first write, ensure or
    /// test opens the connection. At most two connections; a write waits up to 10 s for one.
    /// Every session runs with `time_zone='+00:00'` and charset utf8mb4 (sqlx sets both right
    /// after connecting) and [`SESSION_SQL_MODE`]. Called outside a tokio runtime, the pool's
    /// idle-connection reaper is left off.
    pub fn new(url: &str) -> Result<MysqlDriver, DriverError> {
        let options = connect_options(url)?;
        let mut pool =
            MySqlPoolOptions::new().max_connections(2).acquire_timeout(ACQUIRE_TIMEOUT).after_connect(|conn, _meta| {
                Box::pin(async move {
                    // MariaDB (10.3 and later) also ends a transaction left idle for a minute, a
                    // server-side backstop should a connection ever be lost mid-batch; MySQL reads
                    // the `/*M!…*/` part as a comment.
                    let set = format!(
                        "SET SESSION sql_mode = '{SESSION_SQL_MODE}'/*M!100300 , SESSION idle_transaction_timeout = 60*/"
                    );
                    conn.execute(set.as_str()).await?;
                    Ok(())
                })
            });
        if tokio::runtime::Handle::try_current().is_err() {
            pool = pool.idle_timeout(None).max_lifetime(None);
        }
        Ok(MysqlDriver {
            pool: pool.connect_lazy_with(options.clone()),
            options,
            target: redact(url),
            max_bind_params: MAX_BIND_PARAMS,
            packet_budget: None,
            server: Mutex::new(None),
            catalog: Mutex::new(HashMap::new()),
            ensured: Mutex::new(HashSet::new()),
            ddl: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            executed: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Sets how many bind parameters one statement may carry ([`MAX_BIND_PARAMS`] by default);
    /// larger groups are cut into several statements of the same transaction.
    pub fn with_max_bind_params(mut self, params: usize) -> MysqlDriver {
        self.max_bind_params = params.max(1);
        self
    }

    /// Sets how many bytes of values one statement may carry, instead of what the server's
    /// `max_allowed_packet` allows.
    pub fn with_statement_bytes(mut self, bytes: usize) -> MysqlDriver {
        self.packet_budget = Some(bytes.max(1));
        self
    }

    /// Bytes of values one statement may carry.
    fn budget(&self) -> usize {
        if let Some(b) = self.packet_budget {
            return b;
        }
        let max_packet = lock(&self.server).as_ref().map_or(ASSUMED_MAX_PACKET, |s| s.max_packet);
        max_packet.saturating_sub(PACKET_HEADROOM).clamp(PACKET_HEADROOM, MAX_STATEMENT_BYTES)
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

    async fn server_info(&self, conn: &mut MySqlConnection) -> Result<ServerInfo, DriverError> {
        if let Some(info) = lock(&self.server).clone() {
            return Ok(info);
        }
        let info = load_server(conn).await.map_err(|e| sql_error("reading the server's settings", e))?;
        *lock(&self.server) = Some(info.clone());
        Ok(info)
    }

    /// [`Driver::drop_table`]: an unqualified name is the connection's own database's table.
    async fn drop_one(&self, table: &str) -> Result<(), DriverError> {
        let sql = format!("DROP TABLE IF EXISTS {}", quote_ident(table)?);
        let _ddl = self.ddl.lock().await;
        let mut conn = crate::sqltx::acquire(&self.pool, &self.options)
            .await
            .map_err(|e| sql_error(&format!("connecting to {}", self.target), e))?;
        let dropped = conn.execute(sql.as_str()).await;
        self.forget_catalog();
        dropped.map_err(|e| ddl_error(&format!("dropping table {table:?}"), e))?;
        Ok(())
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
        let server = self.server_info(&mut conn).await?;
        let reading = format!("reading the catalog of table {table:?}");
        let existing = load_table(&mut conn, table, server.mariadb).await.map_err(|e| sql_error(&reading, e))?;
        match existing {
            None => {
                let sql = create_table_sql(&quoted, schema, server.collation.as_deref())?;
                conn.execute(sql.as_str()).await.map_err(|e| ddl_error(&format!("creating table {table:?}"), e))?;
            }
            Some(info) => {
                check_table(schema, &info)?;
                let actions = migration_actions(&mut conn, schema, &info).await?;
                if !actions.is_empty() {
                    let sql = format!("ALTER TABLE {} {}", quote_ident(&info.name)?, actions.join(", "));
                    conn.execute(sql.as_str()).await.map_err(|e| ddl_error(&format!("altering table {table:?}"), e))?;
                }
            }
        }
        let info = load_table(&mut conn, table, server.mariadb).await.map_err(|e| sql_error(&reading, e))?.ok_or_else(
            || {
                DriverError::new(
                    ErrorClass::Transient,
                    format!("MySQL: table {table:?} is still missing after CREATE TABLE"),
                )
            },
        )?;
        // A concurrent creator may have made other types; the upsert's key must exist.
        check_table(schema, &info)?;
        if let Some(c) = schema.columns().iter().find(|c| !info.columns.contains_key(&c.name.to_lowercase())) {
            return Err(DriverError::new(
                ErrorClass::Transient,
                format!("MySQL: column {:?} of table {table:?} is still missing after ALTER TABLE", c.name),
            ));
        }
        let keys: BTreeSet<String> = schema.primary_keys().iter().map(|k| k.to_lowercase()).collect();
        if !info.unique_keys.contains(&keys) {
            return Err(DriverError::new(
                ErrorClass::Config,
                format!(
                    "MySQL: table {table:?} has no primary key or unique index on exactly ({}), \
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
                let Some(dest) = info.columns.get(&c.name.to_lowercase()) else {
                    self.forget_catalog();
                    return Err(DriverError::new(
                        ErrorClass::Transient,
                        format!("MySQL: column {:?} of table {table:?} is missing at the destination", c.name),
                    ));
                };
                Ok(ColumnPlan {
                    name: &c.name,
                    quoted: quote_ident(&c.name)?,
                    storage: dest.storage,
                    unsigned: dest.column_type.to_ascii_lowercase().contains("unsigned"),
                    default: plan::json_default(c),
                    on_update: dest.on_update,
                })
            })
            .collect()
    }

    /// `rows` cut into statements (see [`chunks`]); a row too large for any statement is rejected.
    fn cut(&self, rows: &[Vec<Cell<'_>>], table: &str) -> Result<Vec<Range<usize>>, DriverError> {
        let budget = self.budget();
        chunks(rows, self.max_bind_params, budget).map_err(|i| {
            let size: usize = rows.get(i).map_or(0, |r| r.iter().map(Cell::wire_bytes).sum());
            DriverError::new(
                ErrorClass::Rejected,
                format!(
                    "MySQL: a row of table {table:?} needs about {size} bytes, more than one statement may carry \
                     ({budget} bytes, from the server's max_allowed_packet)"
                ),
            )
        })
    }

    async fn write_folded(&self, changes: &[StateChange<'_>]) -> Result<(), DriverError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Tables and columns first (cheap when nothing changed), outside the batch's transaction:
        // DDL would commit it. Once per (table, version) of the batch.
        let mut infos: HashMap<(&str, &str), Arc<TableInfo>> = HashMap::new();
        let mut plans: plan::Columns<'_, ColumnPlan<'_>> = HashMap::new();
        for schema in plan::schemas("MySQL", changes)? {
            self.ensure(schema).await?;
            let info = self.cached(schema.table()).ok_or_else(|| {
                DriverError::new(
                    ErrorClass::Transient,
                    format!("MySQL: the catalog of table {:?} was dropped during the write", schema.table()),
                )
            })?;
            let id = (schema.table(), schema.model_version());
            plans.insert(id, self.column_plans(schema, &info)?);
            infos.insert(id, info);
        }
        let plan = plan::plan("MySQL", changes, &plans)?;

        // Every statement of the batch, in order: (SQL, what it does, its rows).
        let mut statements: Vec<(String, String, &[Vec<Cell<'_>>])> = Vec::new();
        for step in plan.steps() {
            match step {
                Step::Delete(g) => {
                    let table = g.schema.table();
                    let columns = plans.get(&(table, g.schema.model_version())).map_or(&[][..], Vec::as_slice);
                    for range in self.cut(&g.rows, table)? {
                        let rows = &g.rows[range];
                        let what = format!("deleting {} rows from table {table:?}", rows.len());
                        statements.push((delete_sql(g.schema, columns, rows.len())?, what, rows));
                    }
                }
                Step::Upsert(g) => {
                    let table = g.schema.table();
                    let id = (table, g.schema.model_version());
                    let columns = plans.get(&id).map_or(&[][..], Vec::as_slice);
                    // A table with other unique keys than the primary key: ON DUPLICATE KEY UPDATE
                    // could update the row of another key. Update by primary key, then insert what
                    // is missing; a collision on another key fails, naming the index.
                    let by_key = infos.get(&id).is_some_and(|i| !i.other_unique.is_empty());
                    for range in self.cut(&g.rows, table)? {
                        let rows = &g.rows[range];
                        let what = format!("upserting {} rows into table {table:?}", rows.len());
                        if by_key {
                            if let Some(update) = update_by_key_sql(g, columns, rows.len())? {
                                statements.push((update, what.clone(), rows));
                            }
                            statements.push((insert_missing_sql(g, columns, rows.len())?, what, rows));
                        } else {
                            statements.push((upsert_sql(g, columns, rows.len())?, what, rows));
                        }
                    }
                }
            }
        }

        let mut tx = BatchTx::begin(&self.pool, &self.options)
            .await
            .map_err(|e| sql_error(&format!("starting a transaction on {}", self.target), e))?;
        let outcome = self.apply(tx.conn(), &statements, changes.len()).await;
        tx.finish(outcome, |e| self.write_error("committing the batch", e, changes.len())).await
    }

    /// Every statement of a batch, in order, in its transaction on `tx`.
    async fn apply(
        &self,
        tx: &mut MySqlConnection,
        statements: &[(String, String, &[Vec<Cell<'_>>])],
        changes: usize,
    ) -> Result<(), DriverError> {
        for (sql, what, rows) in statements {
            // Not cached as a prepared statement: the row count makes nearly every text unique.
            let mut q = sqlx::query(sql).persistent(false);
            for cell in rows.iter().flatten() {
                q = bind_cell(q, cell);
            }
            q.execute(&mut *tx).await.map_err(|e| self.write_error(what, e, changes))?;
            #[cfg(test)]
            self.executed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Classifies a write error; one that suggests the catalog changed drops the cache. The
    /// server finding a batch of one change too large is a rejection of that change: splitting
    /// cannot help.
    fn write_error(&self, what: &str, e: sqlx::Error, changes: usize) -> DriverError {
        if let sqlx::Error::Database(db) = &e {
            if db.try_downcast_ref::<MySqlDatabaseError>().is_some_and(|my| matches!(my.number(), 1146 | 1054)) {
                self.forget_catalog();
            }
        }
        let mut err = sql_error(what, e);
        if err.class == ErrorClass::TooLarge && changes == 1 {
            err.class = ErrorClass::Rejected;
        }
        err
    }

    async fn check(&self) -> Result<(), DriverError> {
        let probe = async {
            let mut conn = MySqlConnection::connect_with(&self.options).await?;
            let (_, database): (i64, Option<Vec<u8>>) =
                sqlx::query_as("SELECT 1, CAST(DATABASE() AS CHAR)").fetch_one(&mut conn).await?;
            // Closing politely is a courtesy; the check already succeeded.
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(database)
        };
        let target = &self.target;
        match tokio::time::timeout(TEST_TIMEOUT, probe).await {
            Err(_) => Err(DriverError::new(
                ErrorClass::Transient,
                format!("MySQL: {target} did not answer within {} s", TEST_TIMEOUT.as_secs()),
            )),
            Ok(Err(e)) => Err(sql_error(&format!("connecting to {target}"), e)),
            Ok(Ok(None)) => Err(DriverError::new(ErrorClass::Config, format!("MySQL: {target} selects no database"))),
            Ok(Ok(Some(_))) => Ok(()),
        }
    }
}

/// `(?, ?, …)` for `n` values.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3 + 2);
    s.push('(');
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

/// `INSERT INTO t (…) VALUES (?, …), … ON DUPLICATE KEY UPDATE c = VALUES(c), …` for `rows` rows.
fn upsert_sql(g: &UpsertGroup<'_>, columns: &[ColumnPlan<'_>], rows: usize) -> Result<String, DriverError> {
    let table = quote_ident(g.schema.table())?;
    let names = columns.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    let row = placeholders(columns.len());
    let values = vec![row.as_str(); rows].join(", ");
    let sets = if g.update.is_empty() {
        // Nothing to update: insert a missing row, leave an existing one alone.
        let key = columns.first().map_or("", |p| p.quoted.as_str());
        vec![format!("{key} = {key}")]
    } else {
        g.update.iter().map(|c| quote_ident(c).map(|q| format!("{q} = VALUES({q})"))).collect::<Result<Vec<_>, _>>()?
    };
    // A column the server updates by itself keeps its value unless the change sets it.
    let keys = g.schema.primary_keys();
    let pinned = columns
        .iter()
        .filter(|p| p.on_update && !g.update.contains(&p.name) && !keys.iter().any(|k| k == p.name))
        .map(|p| format!("{q} = {q}", q = p.quoted));
    let sets: Vec<String> = sets.into_iter().chain(pinned).collect();
    Ok(format!("INSERT INTO {table} ({names}) VALUES {values} ON DUPLICATE KEY UPDATE {}", sets.join(", ")))
}

/// The rows of a group as a derived table `(SELECT ? AS c0, ? AS c1, … UNION ALL SELECT ?, ?, …)`,
/// bound in the same order as [`upsert_sql`]'s values.
fn rows_table(columns: usize, rows: usize) -> String {
    let first = (0..columns).map(|i| format!("? AS c{i}")).collect::<Vec<_>>().join(", ");
    let rest = vec!["?"; columns].join(", ");
    let mut s = format!("(SELECT {first}");
    for _ in 1..rows {
        s.push_str(" UNION ALL SELECT ");
        s.push_str(&rest);
    }
    s.push(')');
    s
}

/// `t.k0 = s.c0 AND …` over the primary-key columns (the first columns of a plan).
fn key_match(schema: &Schema, columns: &[ColumnPlan<'_>]) -> String {
    let keys = &columns[..schema.primary_keys().len().min(columns.len())];
    keys.iter().enumerate().map(|(i, p)| format!("t.{} = s.c{i}", p.quoted)).collect::<Vec<_>>().join(" AND ")
}

/// For a table with other unique keys: `UPDATE t JOIN <rows> AS s ON <primary key> SET …` — the
/// update half of an upsert that only ever touches the row of the event's own primary key.
/// `None` when the group updates nothing.
fn update_by_key_sql(
    g: &UpsertGroup<'_>,
    columns: &[ColumnPlan<'_>],
    rows: usize,
) -> Result<Option<String>, DriverError> {
    if g.update.is_empty() {
        return Ok(None);
    }
    let table = quote_ident(g.schema.table())?;
    let keys = g.schema.primary_keys();
    let mut sets = Vec::new();
    for (i, p) in columns.iter().enumerate() {
        if g.update.contains(&p.name) {
            sets.push(format!("t.{q} = s.c{i}", q = p.quoted));
        } else if p.on_update && !keys.iter().any(|k| k == p.name) {
            // A column the server updates by itself keeps its value unless the change sets it.
            sets.push(format!("t.{q} = t.{q}", q = p.quoted));
        }
    }
    Ok(Some(format!(
        "UPDATE {table} AS t JOIN {} AS s ON {} SET {}",
        rows_table(columns.len(), rows),
        key_match(g.schema, columns),
        sets.join(", ")
    )))
}

/// For a table with other unique keys: `INSERT INTO t (…) SELECT … FROM <rows> AS s WHERE NOT
/// EXISTS (<a row with the primary key>)` — the insert half, which fails (naming the index) rather
/// than touch another row when a new row collides on another unique key.
fn insert_missing_sql(g: &UpsertGroup<'_>, columns: &[ColumnPlan<'_>], rows: usize) -> Result<String, DriverError> {
    let table = quote_ident(g.schema.table())?;
    let names = columns.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    let picks = (0..columns.len()).map(|i| format!("s.c{i}")).collect::<Vec<_>>().join(", ");
    Ok(format!(
        "INSERT INTO {table} ({names}) SELECT {picks} FROM {} AS s WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {})",
        rows_table(columns.len(), rows),
        key_match(g.schema, columns)
    ))
}

/// `DELETE FROM t WHERE k IN (?, …)`, or `WHERE (k1, k2) IN ((?, ?), …)` for a composite key.
fn delete_sql(schema: &Schema, columns: &[ColumnPlan<'_>], rows: usize) -> Result<String, DriverError> {
    let table = quote_ident(schema.table())?;
    let keys = &columns[..schema.primary_keys().len().min(columns.len())];
    let names = keys.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
    if keys.len() == 1 {
        return Ok(format!("DELETE FROM {table} WHERE {names} IN {}", placeholders(rows)));
    }
    let row = placeholders(keys.len());
    let values = vec![row.as_str(); rows].join(", ");
    Ok(format!("DELETE FROM {table} WHERE ({names}) IN ({values})"))
}

impl Driver for MysqlDriver {
    fn describe(&self) -> &'static Description {
        &DESCRIPTION
    }

    fn limits(&self) -> Limits {
        // 2 MiB of records per batch, as PostgreSQL: it bounds the drain's memory (see the README).
        Limits { max_rows: 5_000, max_bytes: 2 << 20, max_bind_params: self.max_bind_params }
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
                    "the MySQL destination takes folded changes (state kind), not every event",
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
