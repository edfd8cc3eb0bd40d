//! Writing folded changes to MySQL or MariaDB, and keeping tables in step with HQ's schemas.
//!
//! Statements: every identifier goes through [`quote_ident`]; every value is a bound parameter
//! (`?`), converted in Rust by the destination column's real type as `information_schema` reports
//! it, so tables made earlier by EDS or by hand (`TIMESTAMP`, `VARCHAR(64)`, `TINYINT(1)`, `FLOAT`,
//! `DECIMAL`…) are written by their own types: integers exactly as `i64`/`u64` (never through
//! `f64`), floats as `f64`, booleans as `bool`, JSON as its text, ISO-8601 date-times as
//! `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, parsed here rather than by the server (see
//! [`datetime_text`]). Sessions run with `time_zone='+00:00'` (so a `TIMESTAMP` column stores the
//! right instant) and a strict `sql_mode` (so a value the column cannot hold is an error, not a
//! silent truncation or a zero date).
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
//!
//! New tables: InnoDB, `DEFAULT CHARSET=utf8mb4` (4-byte UTF-8 such as emoji), types by
//! [`ddl_type`], and the database's default collation when it is a utf8mb4 one, else the server's
//! default for utf8mb4 — eds picks none of its own, so an operator decides by the database's
//! collation. With the usual case-insensitive defaults (`utf8mb4_general_ci`,
//! `utf8mb4_0900_ai_ci`) two keys that differ only in case or trailing spaces are one row;
//! Shopmonkey's ids are lower-case hex, so this does not arise; a database created with
//! `utf8mb4_bin` compares keys byte for byte.

use super::config::{connect_options, redact, DESCRIPTION, SESSION_SQL_MODE};
use crate::driver::{Batch, BoxFuture, Description, Driver, DriverError, ErrorClass, Limits, StateChange};
use crate::schema::{ColumnType, Schema};
use crate::sql::datetime;
use crate::sql::plan::{self, KeyPart, Prepare, Step};
use crate::sqltx::BatchTx;
use serde_json::Value;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool};
use sqlx::query::Query;
use sqlx::{Connection, Executor};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Bind parameters per statement by default: MySQL's prepared statements take at most 65,535
/// placeholders; this stays well below.
pub const MAX_BIND_PARAMS: usize = 60_000;

/// The `max_allowed_packet` assumed until the server has told its own (MariaDB's default; MySQL
/// 8's is 64 MiB).
const ASSUMED_MAX_PACKET: usize = 16 << 20;

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

/// The first and last instant a `TIMESTAMP` column holds, in microseconds since the epoch:
/// `1970-01-01 00:00:01` and `2038-01-19 03:14:07.999999` UTC (MySQL 8; MariaDB before 11.5).
const TIMESTAMP_RANGE: (i64, i64) = (1_000_000, 2_147_483_647_999_999);

/// `name` as a MySQL identifier: always in backticks, with every backtick doubled, so case, spaces
/// and punctuation are kept exactly (`updatedDate` stays `updatedDate`). Names MySQL cannot hold —
/// empty, containing a NUL byte or a character outside the Basic Multilingual Plane, ending with a
/// space, or longer than 64 characters — are an [`ErrorClass::Rejected`] error.
pub fn quote_ident(name: &str) -> Result<String, DriverError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.chars().any(|c| u32::from(c) > 0xFFFF) {
        Some("contains a character outside the Basic Multilingual Plane (such as an emoji)")
    } else if name.ends_with(' ') {
        Some("ends with a space")
    } else if name.chars().count() > MAX_IDENTIFIER_CHARS {
        Some("is longer than MySQL's 64-character identifier limit")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(DriverError::new(
            ErrorClass::Rejected,
            format!("MySQL: the name {name:?} {problem}, so it cannot be a table or column name"),
        ));
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for ch in name.chars() {
        if ch == '`' {
            out.push('`');
        }
        out.push(ch);
    }
    out.push('`');
    Ok(out)
}

/// How a destination column stores values, from its catalog type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// `char`, `varchar` and the `text` types.
    Text,
    /// `enum`, `set`.
    Enum,
    /// `json` (MySQL), or a text column with a `json_valid` check (MariaDB's `JSON`).
    Json,
    /// `datetime`: written as UTC wall-clock time.
    DateTime,
    /// `timestamp`: an instant, written in the session's time zone, UTC.
    Timestamp,
    /// `tinyint` (but `tinyint(1)`), `smallint`, `mediumint`, `int`, `bigint`, signed or not.
    Integer,
    /// `tinyint(1)` (what `BOOLEAN` creates), `bit(1)`.
    Boolean,
    /// `decimal`.
    Decimal,
    /// `double`, `float`.
    Float,
    /// Anything else (date, time, year, blobs, spatial types…): holds no schema type.
    Other,
}

impl Storage {
    fn of(data_type: &str, column_type: &str, json_check: bool) -> Storage {
        let column_type = column_type.to_ascii_lowercase();
        match data_type.to_ascii_lowercase().as_str() {
            "json" => Storage::Json,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if json_check => Storage::Json,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => Storage::Text,
            "enum" | "set" => Storage::Enum,
            "datetime" => Storage::DateTime,
            "timestamp" => Storage::Timestamp,
            "tinyint" if column_type.starts_with("tinyint(1)") => Storage::Boolean,
            "bit" if column_type == "bit(1)" => Storage::Boolean,
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => Storage::Integer,
            "decimal" | "numeric" => Storage::Decimal,
            "double" | "float" | "real" | "double precision" => Storage::Float,
            _ => Storage::Other,
        }
    }

    /// Whether a column stored this way can hold the schema's type. Text columns hold anything
    /// (values become their text); otherwise:
    ///
    /// | schema type | destination types accepted besides text |
    /// |---|---|
    /// | string | enum, set |
    /// | date-time string | datetime, timestamp |
    /// | integer | the integer types, decimal, double, float |
    /// | number | double, float, decimal |
    /// | boolean | tinyint(1), bit(1) |
    /// | object, array | json |
    /// | enum | enum, set |
    /// | unknown | — |
    fn holds(self, kind: &ColumnType) -> bool {
        matches!(
            (kind, self),
            (_, Storage::Text)
                | (ColumnType::Text | ColumnType::Enum { .. }, Storage::Enum)
                | (ColumnType::DateTime, Storage::DateTime | Storage::Timestamp)
                | (ColumnType::Integer, Storage::Integer | Storage::Decimal | Storage::Float)
                | (ColumnType::Number, Storage::Float | Storage::Decimal)
                | (ColumnType::Boolean, Storage::Boolean)
                | (ColumnType::Object | ColumnType::Array { .. }, Storage::Json)
        )
    }
}

/// The column type CREATE TABLE and ADD COLUMN use for a schema type (spec §6.2, improved):
/// strings are `LONGTEXT` (`TEXT` holds only 64 KiB) and `VARCHAR(255)` in the primary key (an
/// index needs a bounded type; 255 characters of utf8mb4 fit InnoDB's 3072-byte key limit);
/// date-times `DATETIME(6)` (microseconds, and unlike `TIMESTAMP` not limited to 1970–2038);
/// numbers `DOUBLE` (EDS's `FLOAT` is single precision); objects and arrays `JSON` (MariaDB makes
/// that `LONGTEXT` with a `json_valid` check); enums `VARCHAR(64)`.
pub fn ddl_type(kind: &ColumnType, primary_key: bool) -> &'static str {
    match kind {
        ColumnType::Text | ColumnType::Unknown(_) | ColumnType::Object | ColumnType::Array { .. } if primary_key => {
            "VARCHAR(255)"
        }
        ColumnType::Text | ColumnType::Unknown(_) => "LONGTEXT",
        ColumnType::DateTime => "DATETIME(6)",
        ColumnType::Integer => "BIGINT",
        ColumnType::Number => "DOUBLE",
        ColumnType::Boolean => "BOOLEAN",
        ColumnType::Object | ColumnType::Array { .. } => "JSON",
        ColumnType::Enum { .. } => "VARCHAR(64)",
    }
}

/// One column of a destination table, as the catalog describes it.
#[derive(Debug, Clone)]
struct DestColumn {
    /// The name as the table spells it.
    name: String,
    /// The full type (`varchar(64)`, `tinyint(1)`), for messages and to loosen NOT NULL.
    column_type: String,
    storage: Storage,
    not_null: bool,
    /// `ON UPDATE current_timestamp()`: the server overwrites it on any update that does not set
    /// it (the first `TIMESTAMP` column of tables made with `explicit_defaults_for_timestamp=OFF`).
    on_update: bool,
}

impl DestColumn {
    /// The type for messages: MariaDB's `JSON` is a `longtext` with a check.
    fn display(&self) -> &str {
        match self.storage {
            Storage::Json => "json",
            _ => &self.column_type,
        }
    }
}

/// A destination table, as the catalog describes it. Column names are lower-cased keys.
#[derive(Debug, Clone, Default)]
struct TableInfo {
    /// The table's name as the server spells it.
    name: String,
    /// A base table (not a view).
    base_table: bool,
    columns: HashMap<String, DestColumn>,
    /// The primary key's columns (lower-cased).
    primary_key: BTreeSet<String>,
    /// Column sets (lower-cased) of the unique indexes without prefix lengths, the primary key
    /// included.
    unique_keys: Vec<BTreeSet<String>>,
    /// Names of the unique indexes other than the primary key (prefixed or functional ones too):
    /// `ON DUPLICATE KEY UPDATE` would fire on any of them and update another row.
    other_unique: Vec<String>,
}

/// What the server says about itself, read once.
#[derive(Debug, Clone)]
struct ServerInfo {
    mariadb: bool,
    max_packet: usize,
    /// The database's default collation.
    collation: Option<String>,
}

/// Bytes as text (catalog strings are read as bytes: MySQL 8 flags some of them binary).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Of catalog rows found for `table` (the server may compare names case-insensitively), those of
/// the table spelled exactly so, else those of the one table found.
fn pick_table<T>(rows: Vec<(String, T)>, table: &str) -> Vec<T> {
    let exact = rows.iter().any(|(t, _)| t == table);
    let first = rows.first().map(|(t, _)| t.clone());
    rows.into_iter()
        .filter(|(t, _)| if exact { t == table } else { Some(t) == first.as_ref() })
        .map(|(_, r)| r)
        .collect()
}

const SERVER_SQL: &str = "SELECT CAST(VERSION() AS CHAR), CAST(@@max_allowed_packet AS CHAR), \
CAST(@@collation_database AS CHAR)";

const TABLES_SQL: &str = "SELECT table_name, table_type FROM information_schema.tables \
WHERE table_schema = DATABASE() AND table_name = ?";

const COLUMNS_SQL: &str = "SELECT table_name, column_name, data_type, column_type, is_nullable, extra \
FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position";

const KEYS_SQL: &str = "SELECT table_name, index_name, column_name, CAST(sub_part AS CHAR) \
FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = ? AND non_unique = 0 \
ORDER BY index_name, seq_in_index";

/// MariaDB only (MySQL's `check_constraints` has no table name, and MySQL has a real JSON type).
/// MariaDB names a column's own check after the column: `JSON` makes `json_valid(`c`)`.
const JSON_CHECKS_SQL: &str = "SELECT table_name, constraint_name, check_clause \
FROM information_schema.check_constraints WHERE constraint_schema = DATABASE() AND table_name = ?";

async fn load_server(conn: &mut MySqlConnection) -> Result<ServerInfo, sqlx::Error> {
    let (version, packet, collation): (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as(SERVER_SQL).fetch_one(&mut *conn).await?;
    let version = text(version);
    Ok(ServerInfo {
        mariadb: version.to_ascii_lowercase().contains("mariadb"),
        max_packet: packet.map(text).and_then(|p| p.trim().parse().ok()).unwrap_or(ASSUMED_MAX_PACKET),
        collation: collation.map(text),
    })
}

/// Reads `table` of the current database from the catalog; `None` when there is no such table or
/// view.
async fn load_table(conn: &mut MySqlConnection, table: &str, mariadb: bool) -> Result<Option<TableInfo>, sqlx::Error> {
    let tables: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(TABLES_SQL).bind(table).fetch_all(&mut *conn).await?;
    let tables: Vec<(String, (String, String))> = tables
        .into_iter()
        .map(|(name, kind)| {
            let name = text(name);
            (name.clone(), (name, text(kind)))
        })
        .collect();
    let Some((name, kind)) = pick_table(tables, table).into_iter().next() else {
        return Ok(None);
    };
    let mut info = TableInfo {
        base_table: matches!(kind.as_str(), "BASE TABLE" | "SYSTEM VERSIONED"),
        name: name.clone(),
        ..TableInfo::default()
    };

    let mut json_checks: HashSet<String> = HashSet::new();
    if mariadb {
        let checks: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> =
            match sqlx::query_as(JSON_CHECKS_SQL).bind(&name).fetch_all(&mut *conn).await {
                Ok(rows) => rows,
                // An old MariaDB without this view or its table_name: no JSON columns known.
                Err(sqlx::Error::Database(db))
                    if db
                        .try_downcast_ref::<MySqlDatabaseError>()
                        .is_some_and(|e| matches!(e.number(), 1054 | 1109)) =>
                {
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
        let checks = checks.into_iter().map(|(t, c, clause)| (text(t), (text(c), text(clause)))).collect();
        for (column, clause) in pick_table(checks, &name) {
            let own = quote_ident(&column).map(|q| format!("json_valid({q})")).unwrap_or_default();
            if clause.to_lowercase().replace(' ', "") == own.to_lowercase().replace(' ', "") {
                json_checks.insert(column.to_lowercase());
            }
        }
    }

    type ColumnRow = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, Option<Vec<u8>>);
    let rows: Vec<ColumnRow> = sqlx::query_as(COLUMNS_SQL).bind(&name).fetch_all(&mut *conn).await?;
    let rows = rows
        .into_iter()
        .map(|(t, c, d, ct, n, x)| (text(t), (text(c), text(d), text(ct), text(n), x.map(text).unwrap_or_default())))
        .collect();
    for (column, data_type, column_type, nullable, extra) in pick_table(rows, &name) {
        let key = column.to_lowercase();
        let storage = Storage::of(&data_type, &column_type, json_checks.contains(&key));
        let not_null = nullable.eq_ignore_ascii_case("NO");
        let on_update = extra.to_ascii_lowercase().contains("on update");
        info.columns.insert(key, DestColumn { name: column, column_type, storage, not_null, on_update });
    }

    type KeyRow = (Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);
    let keys: Vec<KeyRow> = sqlx::query_as(KEYS_SQL).bind(&name).fetch_all(&mut *conn).await?;
    let keys = keys.into_iter().map(|(t, i, c, s)| (text(t), (text(i), c.map(text), s.is_some()))).collect();
    // index name → (columns, usable as a key: every part a whole column)
    let mut indexes: Vec<(String, BTreeSet<String>, bool)> = Vec::new();
    for (index, column, prefix) in pick_table(keys, &name) {
        if indexes.last().is_none_or(|(i, _, _)| *i != index) {
            indexes.push((index.clone(), BTreeSet::new(), true));
        }
        if let Some((_, columns, usable)) = indexes.last_mut() {
            match column {
                Some(c) if !prefix => {
                    columns.insert(c.to_lowercase());
                }
                // A prefix or an expression (MySQL's functional key parts).
                _ => *usable = false,
            }
        }
    }
    for (index, columns, usable) in indexes {
        if index == "PRIMARY" {
            info.primary_key = columns.clone();
        } else {
            info.other_unique.push(index.clone());
        }
        if usable {
            info.unique_keys.push(columns);
        }
    }
    Ok(Some(info))
}

/// `SHOW CREATE TABLE`'s definition of column `column` with its top-level `NOT NULL` made `NULL`,
/// everything else (type, character set, collation, default, `ON UPDATE`, comment, check) kept as
/// it is. `None` when the definition is not found or has no `NOT NULL`.
pub(super) fn loosened_definition(create: &str, column: &str) -> Option<String> {
    let quoted = quote_ident(column).ok()?;
    let prefix = format!("{quoted} ");
    let line = create.lines().map(str::trim_start).find(|l| l.starts_with(&prefix))?;
    let def = line[quoted.len()..].trim().trim_end_matches(',');
    // Find ` NOT NULL` outside quotes and parentheses (a CHECK or a generated expression may say
    // `IS NOT NULL`, a default or comment may contain the words).
    let bytes = def.as_bytes();
    let (mut depth, mut quote, mut i) = (0usize, None::<u8>, 0usize);
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'\'' | b'"' | b'`' => quote = Some(b),
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b' ' if depth == 0 => {
                    let rest = &def[i..];
                    if rest.len() >= 9 && rest[..9].eq_ignore_ascii_case(" NOT NULL") {
                        let after = &rest[9..];
                        if after.is_empty() || after.starts_with(' ') {
                            return Some(format!("{} NULL{after}", &def[..i]));
                        }
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
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

fn sql_error(what: &str, e: sqlx::Error) -> DriverError {
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

/// A value ready to bind; text borrows the event's strings where it can.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell<'v> {
    Null,
    Text(Cow<'v, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

impl Cell<'_> {
    /// An upper bound of the bytes the value takes in a COM_STMT_EXECUTE packet (type, length
    /// prefix, data, null bitmap).
    fn wire_bytes(&self) -> usize {
        match self {
            Cell::Text(s) => s.len() + 12,
            _ => 12,
        }
    }
}

fn bind_cell<'q>(q: Query<'q, MySql, MySqlArguments>, cell: &'q Cell<'_>) -> Query<'q, MySql, MySqlArguments> {
    match cell {
        Cell::Null => q.bind(None::<&str>),
        Cell::Text(s) => q.bind(s.as_ref()),
        Cell::Int(i) => q.bind(*i),
        Cell::UInt(u) => q.bind(*u),
        Cell::Float(f) => q.bind(*f),
        Cell::Bool(b) => q.bind(*b),
    }
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

/// How one schema column is written: its destination column and value conversion.
#[derive(Debug)]
pub(super) struct ColumnPlan<'s> {
    pub(super) name: &'s str,
    pub(super) quoted: String,
    pub(super) storage: Storage,
    /// Integer columns: the column is unsigned.
    pub(super) unsigned: bool,
    /// JSON default for a missing or null value (`{}`/`[]`), as EDS writes for not-null object
    /// and array columns.
    pub(super) default: Option<&'static str>,
    /// The server would overwrite it on update (`ON UPDATE current_timestamp()`): a partial
    /// update must set it to itself, or an event's date would be replaced by the clock.
    pub(super) on_update: bool,
}

/// A JSON value for messages, cut to a readable length.
fn preview(v: &Value) -> String {
    let mut s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.len() > 120 {
        let mut end = 117;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

impl ColumnPlan<'_> {
    fn refuse(&self, table: &str, v: &Value, why: &str) -> DriverError {
        DriverError::new(
            ErrorClass::Rejected,
            format!("MySQL: column {:?} of table {table:?}: {} {why}", self.name, preview(v)),
        )
    }

    /// The value converted for the column's storage, or why the column cannot take it.
    pub(super) fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Cell<'v>, DriverError> {
        let v = match value {
            None | Some(Value::Null) => return Ok(self.default.map_or(Cell::Null, |d| Cell::Text(Cow::Borrowed(d)))),
            Some(v) => v,
        };
        match self.storage {
            Storage::Json => Ok(Cell::Text(Cow::Owned(v.to_string()))),
            Storage::DateTime | Storage::Timestamp => {
                let Value::String(s) = v else {
                    return Err(self.refuse(table, v, "is not an ISO-8601 date-time"));
                };
                let micros = parse_datetime(s).ok_or_else(|| self.refuse(table, v, "is not an ISO-8601 date-time"))?;
                if self.storage == Storage::Timestamp && !(TIMESTAMP_RANGE.0..=TIMESTAMP_RANGE.1).contains(&micros) {
                    return Err(self.refuse(
                        table,
                        v,
                        "is outside what a TIMESTAMP column holds (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC)",
                    ));
                }
                format_micros(micros)
                    .map(|t| Cell::Text(Cow::Owned(t)))
                    .ok_or_else(|| self.refuse(table, v, "is outside the years 0000 to 9999"))
            }
            Storage::Integer => match v {
                // A whole value (`3.0`, `1e3`) is the integer, exactly; never through f64.
                Value::Number(n) => match crate::number::integer_text(n) {
                    Some(t) => match (t.parse::<i64>(), t.parse::<u64>()) {
                        (Ok(i), _) => Ok(Cell::Int(i)),
                        (_, Ok(u)) => Ok(Cell::UInt(u)),
                        _ => Err(self.refuse(table, v, "does not fit a 64-bit integer column")),
                    },
                    None => Err(self.refuse(table, v, "is not an integer")),
                },
                Value::String(s) => match (s.parse::<i64>(), s.parse::<u64>()) {
                    (Ok(i), _) => Ok(Cell::Int(i)),
                    (_, Ok(u)) => Ok(Cell::UInt(u)),
                    _ => Err(self.refuse(table, v, "is not an integer")),
                },
                Value::Bool(b) => Ok(Cell::Int(i64::from(*b))),
                _ => Err(self.refuse(table, v, "is not an integer")),
            }
            .and_then(|c| match c {
                Cell::Int(i) if self.unsigned && i < 0 => Err(self.refuse(table, v, "is negative (unsigned column)")),
                c => Ok(c),
            }),
            Storage::Boolean => match v {
                Value::Bool(b) => Ok(Cell::Bool(*b)),
                Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                    Ok(Cell::Bool(n.as_u64() == Some(1)))
                }
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" => Ok(Cell::Bool(true)),
                    "false" | "f" | "0" => Ok(Cell::Bool(false)),
                    _ => Err(self.refuse(table, v, "is not a boolean")),
                },
                _ => Err(self.refuse(table, v, "is not a boolean")),
            },
            Storage::Float => match v {
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => Ok(Cell::Int(i)),
                    (_, Some(u), _) => Ok(Cell::UInt(u)),
                    (_, _, Some(f)) => Ok(Cell::Float(f)),
                    _ => Err(self.refuse(table, v, "is not a number")),
                },
                Value::String(s) => match s.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => Ok(Cell::Float(f)),
                    _ => Err(self.refuse(table, v, "is not a number")),
                },
                _ => Err(self.refuse(table, v, "is not a number")),
            },
            // Exact text: the server parses it into the column's precision.
            Storage::Decimal => match v {
                Value::Number(n) => Ok(Cell::Text(Cow::Owned(crate::number::exact_text(n)))),
                Value::String(s) => Ok(Cell::Text(Cow::Borrowed(s))),
                _ => Err(self.refuse(table, v, "is not a number")),
            },
            Storage::Text | Storage::Enum | Storage::Other => Ok(Cell::Text(text_of(v))),
        }
    }
}

impl Prepare for ColumnPlan<'_> {
    type Cell<'v> = Cell<'v>;

    fn name(&self) -> &str {
        self.name
    }

    fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        ColumnPlan::cell(self, value, table)
    }

    fn key_cell<'v>(&self, key: &'v str, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        // Through the column's own conversion (an integer key column gets an integer).
        let value = Value::String(key.to_owned());
        ColumnPlan::cell(self, Some(&value), table).map(Cell::into_owned)
    }

    fn key<'c>(cell: &'c Self::Cell<'_>) -> KeyPart<'c> {
        match cell {
            Cell::Null => KeyPart::Null,
            Cell::Text(s) => KeyPart::Text(s),
            Cell::Int(i) => KeyPart::Int(i128::from(*i)),
            Cell::UInt(u) => KeyPart::Int(i128::from(*u)),
            Cell::Float(f) => KeyPart::Float(f.to_bits()),
            Cell::Bool(b) => KeyPart::Bool(*b),
        }
    }
}

impl Cell<'_> {
    /// The same value, owning its text.
    pub(super) fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Text(s) => Cell::Text(Cow::Owned(s.into_owned())),
            Cell::Int(i) => Cell::Int(i),
            Cell::UInt(u) => Cell::UInt(u),
            Cell::Float(f) => Cell::Float(f),
            Cell::Bool(b) => Cell::Bool(b),
        }
    }
}

/// A value as text for a text column (see [`crate::sql::text_of`]).
fn text_of(v: &Value) -> Cow<'_, str> {
    crate::sql::text_of(v, false)
}

/// [`text_of`], owned.
#[cfg(test)]
pub(super) fn value_text(v: &Value) -> String {
    text_of(v).into_owned()
}

#[cfg(test)]
pub(super) use crate::number::column_text as number_text;

/// 1970-01-01T00:00:00, the origin of [`parse_datetime`]'s microseconds.
const UNIX_EPOCH: jiff::civil::DateTime = jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0);

/// Microseconds since 1970-01-01T00:00:00Z of an ISO-8601 date-time (see [`crate::sql::datetime`];
/// `24:00` is the end of the day), rounded half up to the microsecond. `None` for anything else —
/// words such as `now` or `yesterday`, impossible dates; nothing panics.
pub(super) fn parse_datetime(s: &str) -> Option<i64> {
    let utc = datetime::parse(s, datetime::EndOfDay::Accept).ok()?;
    let utc = datetime::round(utc, 1_000).ok()?;
    i64::try_from(utc.duration_since(UNIX_EPOCH).as_micros()).ok()
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) of microseconds since the epoch; `None` outside the years
/// 0000–9999.
pub(super) fn format_micros(micros: i64) -> Option<String> {
    let dt = UNIX_EPOCH.checked_add(jiff::SignedDuration::from_micros(micros)).ok()?;
    if !(0..=9999).contains(&dt.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 1_000
    ))
}

/// An ISO-8601 date-time (`YYYY-MM-DD[THH:MM[:SS[.fraction]]]` with `Z`, an offset such as
/// `+05:30`, or nothing for UTC) as MySQL's `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, converted here
/// rather than by the server (whose reading depends on its version and `sql_mode`). Dates before
/// 1970 are kept as they are (EDS clamped them). `None` for anything that is not such a date-time,
/// words such as `now` included (the server's reading of those would change on a replay).
pub fn datetime_text(value: &str) -> Option<String> {
    parse_datetime(value).and_then(format_micros)
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
                let actions = self.migration_actions(&mut conn, schema, &info).await?;
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

    /// The ALTER TABLE actions that bring an existing table up to `schema`: every missing column
    /// added (nullable), and NOT NULL dropped from every non-key column the schema lacks or does
    /// not declare NOT NULL — by `MODIFY COLUMN` with the column's own definition from `SHOW
    /// CREATE TABLE` (type, character set, collation, default, comment kept), or with its
    /// `column_type` when that cannot be read. Never drops or retypes anything.
    async fn migration_actions(
        &self,
        conn: &mut MySqlConnection,
        schema: &Schema,
        info: &TableInfo,
    ) -> Result<Vec<String>, DriverError> {
        let mut actions = Vec::new();
        for c in schema.columns().iter().filter(|c| !info.columns.contains_key(&c.name.to_lowercase())) {
            actions.push(format!("ADD COLUMN {} {}", quote_ident(&c.name)?, ddl_type(&c.kind, c.primary_key)));
        }
        let by_name: HashMap<String, &crate::schema::Column> =
            schema.columns().iter().map(|c| (c.name.to_lowercase(), c)).collect();
        let mut loosen: Vec<&DestColumn> = info
            .columns
            .iter()
            .filter(|(key, dest)| {
                dest.not_null
                    && !info.primary_key.contains(*key)
                    && by_name.get(*key).is_none_or(|c| !c.primary_key && !c.not_null_in_ddl())
            })
            .map(|(_, dest)| dest)
            .collect();
        if loosen.is_empty() {
            return Ok(actions);
        }
        loosen.sort_by(|a, b| a.name.cmp(&b.name));
        let table = &info.name;
        let sql = format!("SHOW CREATE TABLE {}", quote_ident(table)?);
        let row: (Vec<u8>, Vec<u8>) = sqlx::query_as(&sql)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sql_error(&format!("reading the definition of table {table:?}"), e))?;
        let create = text(row.1);
        for dest in loosen {
            let def = loosened_definition(&create, &dest.name).unwrap_or_else(|| format!("{} NULL", dest.column_type));
            actions.push(format!("MODIFY COLUMN {} {def}", quote_ident(&dest.name)?));
        }
        Ok(actions)
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

/// Fails with [`ErrorClass::Config`] when `info` is not a base table, or for the first schema
/// column whose destination column cannot hold its type.
fn check_table(schema: &Schema, info: &TableInfo) -> Result<(), DriverError> {
    if !info.base_table {
        return Err(DriverError::new(
            ErrorClass::Config,
            format!("MySQL: {:?} exists in the database but is not a table", schema.table()),
        ));
    }
    for c in schema.columns() {
        if let Some(dest) = info.columns.get(&c.name.to_lowercase()) {
            if !dest.storage.holds(&c.kind) {
                return Err(DriverError::new(
                    ErrorClass::Config,
                    format!(
                        "MySQL: column {} of table {} is {} at the destination but the schema says {}",
                        c.name,
                        schema.table(),
                        dest.display(),
                        c.kind
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` with every schema column in EDS order (spec §7.2, minus the DROP):
/// InnoDB, utf8mb4, and the database's default collation when that is a utf8mb4 one (else the
/// server's default for utf8mb4).
fn create_table_sql(quoted_table: &str, schema: &Schema, collation: Option<&str>) -> Result<String, DriverError> {
    let mut lines = Vec::with_capacity(schema.columns().len() + 1);
    for c in schema.columns() {
        let not_null = if c.not_null_in_ddl() { " NOT NULL" } else { "" };
        lines.push(format!("\t{} {}{not_null}", quote_ident(&c.name)?, ddl_type(&c.kind, c.primary_key)));
    }
    let keys = schema.primary_keys().iter().map(|k| quote_ident(k)).collect::<Result<Vec<_>, _>>()?;
    lines.push(format!("\tPRIMARY KEY ({})", keys.join(", ")));
    let collate = collation
        .filter(|c| c.starts_with("utf8mb4_") && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|c| format!(" COLLATE={c}"))
        .unwrap_or_default();
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {quoted_table} (\n{}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4{collate}",
        lines.join(",\n")
    ))
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
}
