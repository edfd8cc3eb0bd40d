//! What the MySQL driver reads about the destination — the server (MariaDB or MySQL,
//! `max_allowed_packet`, the database's collation) and each table's columns, unique indexes and
//! MariaDB `JSON` checks from `information_schema` — and the DDL it writes.
//!
//! New tables: InnoDB, `DEFAULT CHARSET=utf8mb4` (4-byte UTF-8 such as emoji), types by
//! [`ddl_type`], and the database's default collation when it is a utf8mb4 one, else the server's
//! default for utf8mb4 — eds picks none of its own, so an operator decides by the database's
//! collation. With the usual case-insensitive defaults (`utf8mb4_general_ci`,
//! `utf8mb4_0900_ai_ci`) two keys that differ only in case or trailing spaces are one row;
//! Shopmonkey's ids are lower-case hex, so this does not arise; a database created with
//! `utf8mb4_bin` compares keys byte for byte.

use super::sink::{quote_ident, sql_error};
use crate::driver::{DriverError, ErrorClass};
use crate::schema::{ColumnType, Schema};
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The `max_allowed_packet` assumed until the server has told its own (MariaDB's default; MySQL
/// 8's is 64 MiB).
pub(super) const ASSUMED_MAX_PACKET: usize = 16 << 20;

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
pub(super) struct DestColumn {
    /// The name as the table spells it.
    pub(super) name: String,
    /// The full type (`varchar(64)`, `tinyint(1)`), for messages and to loosen NOT NULL.
    pub(super) column_type: String,
    pub(super) storage: Storage,
    pub(super) not_null: bool,
    /// `ON UPDATE current_timestamp()`: the server overwrites it on any update that does not set
    /// it (the first `TIMESTAMP` column of tables made with `explicit_defaults_for_timestamp=OFF`).
    pub(super) on_update: bool,
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
pub(super) struct TableInfo {
    /// The table's name as the server spells it.
    pub(super) name: String,
    /// A base table (not a view).
    pub(super) base_table: bool,
    pub(super) columns: HashMap<String, DestColumn>,
    /// The primary key's columns (lower-cased).
    pub(super) primary_key: BTreeSet<String>,
    /// Column sets (lower-cased) of the unique indexes without prefix lengths, the primary key
    /// included.
    pub(super) unique_keys: Vec<BTreeSet<String>>,
    /// Names of the unique indexes other than the primary key (prefixed or functional ones too):
    /// `ON DUPLICATE KEY UPDATE` would fire on any of them and update another row.
    pub(super) other_unique: Vec<String>,
}

/// What the server says about itself, read once.
#[derive(Debug, Clone)]
pub(super) struct ServerInfo {
    pub(super) mariadb: bool,
    pub(super) max_packet: usize,
    /// The database's default collation.
    pub(super) collation: Option<String>,
}

/// Bytes as text (catalog strings are read as bytes: MySQL 8 flags some of them binary).
pub(super) fn text(bytes: Vec<u8>) -> String {
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

pub(super) async fn load_server(conn: &mut MySqlConnection) -> Result<ServerInfo, sqlx::Error> {
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
pub(super) async fn load_table(
    conn: &mut MySqlConnection,
    table: &str,
    mariadb: bool,
) -> Result<Option<TableInfo>, sqlx::Error> {
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

/// The ALTER TABLE actions that bring an existing table up to `schema`: every missing column
/// added (nullable), and NOT NULL dropped from every non-key column the schema lacks or does
/// not declare NOT NULL — by `MODIFY COLUMN` with the column's own definition from `SHOW
/// CREATE TABLE` (type, character set, collation, default, comment kept), or with its
/// `column_type` when that cannot be read. Never drops or retypes anything.
pub(super) async fn migration_actions(
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

/// Fails with [`ErrorClass::Config`] when `info` is not a base table, or for the first schema
/// column whose destination column cannot hold its type.
pub(super) fn check_table(schema: &Schema, info: &TableInfo) -> Result<(), DriverError> {
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
pub(super) fn create_table_sql(
    quoted_table: &str,
    schema: &Schema,
    collation: Option<&str>,
) -> Result<String, DriverError> {
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
