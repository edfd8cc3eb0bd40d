//! What the SQL Server driver reads about the destination (each table's columns, their types,
//! collations and nullability, and its primary key, from `INFORMATION_SCHEMA`), and the DDL it
//! writes: `CREATE TABLE`, and `ALTER TABLE` that only ever adds columns or drops a NOT NULL.

use super::cells::ValueKind;
use super::sink::{quote_ident, Client};
use crate::driver::{DriverError, ErrorClass};
use crate::schema::{ColumnType, Schema};
use std::collections::{BTreeSet, HashMap};

/// How a destination column stores values, from its catalog type (`DATA_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// `nvarchar`, `varchar`, `nchar`, `char`, `ntext`, `text`.
    Text,
    /// `datetimeoffset`: the instant, offset normalised to UTC.
    DateTimeOffset,
    /// `datetime2`, `datetime`, `smalldatetime`, `date`: written as UTC wall-clock time.
    DateTime,
    /// `bigint`, `int`, `smallint`, `tinyint`.
    Integer,
    /// `decimal`, `numeric`, `money`, `smallmoney`: written as exact decimal text.
    Decimal,
    /// `float`, `real`.
    Float,
    /// `bit`.
    Bit,
    /// `json` (SQL Server 2025).
    Json,
    /// `uniqueidentifier`.
    Uuid,
    /// Anything else (binary, xml, time, spatial…): holds no schema type.
    Other,
}

impl Storage {
    pub(super) fn of(data_type: &str) -> Storage {
        match data_type.to_ascii_lowercase().as_str() {
            "nvarchar" | "varchar" | "nchar" | "char" | "ntext" | "text" | "sysname" => Storage::Text,
            "datetimeoffset" => Storage::DateTimeOffset,
            "datetime2" | "datetime" | "smalldatetime" | "date" => Storage::DateTime,
            "bigint" | "int" | "smallint" | "tinyint" => Storage::Integer,
            "decimal" | "numeric" | "money" | "smallmoney" => Storage::Decimal,
            "float" | "real" => Storage::Float,
            "bit" => Storage::Bit,
            "json" => Storage::Json,
            "uniqueidentifier" => Storage::Uuid,
            _ => Storage::Other,
        }
    }

    /// Whether a column stored this way can hold the schema's type. Text columns hold anything;
    /// otherwise:
    ///
    /// | schema type | destination types accepted besides text |
    /// |---|---|
    /// | string | uniqueidentifier |
    /// | date-time string | datetimeoffset, datetime2, datetime, smalldatetime, date |
    /// | integer | bigint, int, smallint, tinyint, decimal, numeric, money, float, real |
    /// | number | float, real, decimal, numeric, money |
    /// | boolean | bit |
    /// | object, array | json |
    /// | enum | — |
    /// | unknown | — |
    pub(super) fn holds(self, kind: &ColumnType) -> bool {
        matches!(
            (kind, self),
            (_, Storage::Text)
                | (ColumnType::Text, Storage::Uuid)
                | (ColumnType::DateTime, Storage::DateTimeOffset | Storage::DateTime)
                | (ColumnType::Integer, Storage::Integer | Storage::Decimal | Storage::Float)
                | (ColumnType::Number, Storage::Float | Storage::Decimal)
                | (ColumnType::Boolean, Storage::Bit)
                | (ColumnType::Object | ColumnType::Array { .. }, Storage::Json)
        )
    }

    /// The kind of value bound for a column stored this way.
    pub(super) fn value_kind(self) -> ValueKind {
        match self {
            Storage::DateTimeOffset | Storage::DateTime => ValueKind::DateTime,
            Storage::Integer => ValueKind::BigInt,
            Storage::Float => ValueKind::Float,
            Storage::Bit => ValueKind::Bit,
            Storage::Text | Storage::Decimal | Storage::Json | Storage::Uuid | Storage::Other => ValueKind::Text,
        }
    }
}

/// The column type CREATE TABLE and ALTER TABLE ADD use for a schema type. Strings are
/// `NVARCHAR(MAX)`, but a primary key cannot be a MAX type: key columns of string-like types are
/// `NVARCHAR(255)`. Date-times are `DATETIMEOFFSET(7)`, which keeps the instant (values are
/// normalised to UTC) at 100 ns precision over years 1–9999.
pub fn ddl_type(kind: &ColumnType, primary_key: bool) -> &'static str {
    match kind {
        ColumnType::Text | ColumnType::Unknown(_) | ColumnType::Object | ColumnType::Array { .. } if primary_key => {
            "NVARCHAR(255)"
        }
        ColumnType::Text | ColumnType::Unknown(_) | ColumnType::Object | ColumnType::Array { .. } => "NVARCHAR(MAX)",
        ColumnType::DateTime => "DATETIMEOFFSET(7)",
        ColumnType::Integer => "BIGINT",
        ColumnType::Number => "FLOAT",
        ColumnType::Boolean => "BIT",
        ColumnType::Enum { .. } => "NVARCHAR(64)",
    }
}

/// Whether a name read from the catalog (a type or a collation) is safe to put into SQL.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The full type of a catalog column as SQL (`varchar(64)`, `nvarchar(max)`, `decimal(12,2)`,
/// `datetime2(3)`), or `None` when the type name is not plain.
pub(super) fn type_sql(
    data_type: &str,
    char_len: Option<i32>,
    precision: Option<i32>,
    scale: Option<i32>,
    datetime_precision: Option<i32>,
) -> Option<String> {
    if !is_plain_name(data_type) {
        return None;
    }
    let t = data_type.to_ascii_lowercase();
    Some(match (t.as_str(), char_len, precision, scale, datetime_precision) {
        ("char" | "varchar" | "nchar" | "nvarchar" | "binary" | "varbinary", Some(-1), ..) => format!("{t}(max)"),
        ("char" | "varchar" | "nchar" | "nvarchar" | "binary" | "varbinary", Some(n), ..) => format!("{t}({n})"),
        ("decimal" | "numeric", _, Some(p), Some(s), _) => format!("{t}({p},{s})"),
        ("datetime2" | "datetimeoffset" | "time", _, _, _, Some(p)) => format!("{t}({p})"),
        _ => t,
    })
}

/// One column of a destination table, as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct DestColumn {
    /// The full type, for messages and for ALTER COLUMN (`varchar(64)`); `None` when not plain.
    pub(super) type_sql: Option<String>,
    /// The catalog's `DATA_TYPE`, for messages when `type_sql` is `None`.
    pub(super) data_type: String,
    /// The collation of a string column, when its name is plain.
    pub(super) collation: Option<String>,
    pub(super) storage: Storage,
    pub(super) not_null: bool,
}

impl DestColumn {
    fn display(&self) -> &str {
        self.type_sql.as_deref().unwrap_or(&self.data_type)
    }
}

/// A destination table, as the catalog describes it.
#[derive(Debug, Clone, Default)]
pub(super) struct TableInfo {
    pub(super) columns: HashMap<String, DestColumn>,
    /// The primary key's columns.
    pub(super) primary_key: BTreeSet<String>,
    /// A base table (not a view).
    pub(super) is_table: bool,
}

/// Every column of one table of the current database and the login's default schema, with
/// whether it belongs to the primary key. `@P1` is the table name.
pub(super) const CATALOG_SQL: &str = "SELECT c.COLUMN_NAME, c.DATA_TYPE, CAST(c.CHARACTER_MAXIMUM_LENGTH AS INT), \
CAST(c.NUMERIC_PRECISION AS INT), CAST(c.NUMERIC_SCALE AS INT), CAST(c.DATETIME_PRECISION AS INT), c.COLLATION_NAME, \
c.IS_NULLABLE, t.TABLE_TYPE, CASE WHEN EXISTS (SELECT * FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS tc \
JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE k ON k.CONSTRAINT_CATALOG = tc.CONSTRAINT_CATALOG \
AND k.CONSTRAINT_SCHEMA = tc.CONSTRAINT_SCHEMA AND k.CONSTRAINT_NAME = tc.CONSTRAINT_NAME \
WHERE tc.CONSTRAINT_TYPE = 'PRIMARY KEY' AND tc.TABLE_CATALOG = c.TABLE_CATALOG AND tc.TABLE_SCHEMA = c.TABLE_SCHEMA \
AND tc.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME) THEN 1 ELSE 0 END \
FROM INFORMATION_SCHEMA.COLUMNS c JOIN INFORMATION_SCHEMA.TABLES t ON t.TABLE_CATALOG = c.TABLE_CATALOG \
AND t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
WHERE c.TABLE_CATALOG = DB_NAME() AND c.TABLE_SCHEMA = SCHEMA_NAME() AND c.TABLE_NAME = @P1 \
ORDER BY c.ORDINAL_POSITION";

/// One row of [`CATALOG_SQL`], decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CatalogRow {
    pub(super) name: String,
    pub(super) data_type: String,
    pub(super) char_len: Option<i32>,
    pub(super) precision: Option<i32>,
    pub(super) scale: Option<i32>,
    pub(super) datetime_precision: Option<i32>,
    pub(super) collation: Option<String>,
    pub(super) nullable: bool,
    pub(super) is_table: bool,
    pub(super) primary_key: bool,
}

/// The table the catalog rows describe; `None` when there are none (no such table).
pub(super) fn table_info(rows: Vec<CatalogRow>) -> Option<TableInfo> {
    if rows.is_empty() {
        return None;
    }
    let mut info = TableInfo { is_table: true, ..TableInfo::default() };
    for r in rows {
        info.is_table &= r.is_table;
        if r.primary_key {
            info.primary_key.insert(r.name.clone());
        }
        let column = DestColumn {
            type_sql: type_sql(&r.data_type, r.char_len, r.precision, r.scale, r.datetime_precision),
            storage: Storage::of(&r.data_type),
            data_type: r.data_type,
            collation: r.collation.filter(|c| is_plain_name(c)),
            not_null: !r.nullable,
        };
        info.columns.insert(r.name, column);
    }
    Some(info)
}

fn catalog_row(row: &tiberius::Row) -> Result<CatalogRow, tiberius::error::Error> {
    let text = |i: usize| row.try_get::<&str, _>(i).map(|v| v.map(str::to_owned));
    let int = |i: usize| row.try_get::<i32, _>(i);
    Ok(CatalogRow {
        name: text(0)?.unwrap_or_default(),
        data_type: text(1)?.unwrap_or_default(),
        char_len: int(2)?,
        precision: int(3)?,
        scale: int(4)?,
        datetime_precision: int(5)?,
        collation: text(6)?,
        nullable: text(7)?.is_some_and(|v| v.eq_ignore_ascii_case("YES")),
        is_table: text(8)?.is_some_and(|v| v.eq_ignore_ascii_case("BASE TABLE")),
        primary_key: int(9)? == Some(1),
    })
}

/// Reads `table` of the current database and default schema from the catalog.
pub(super) async fn load_table(client: &mut Client, table: &str) -> Result<Option<TableInfo>, tiberius::error::Error> {
    let rows = client.query(CATALOG_SQL, &[&table]).await?.into_first_result().await?;
    let rows = rows.iter().map(catalog_row).collect::<Result<Vec<_>, _>>()?;
    Ok(table_info(rows))
}

// ---------------------------------------------------------------------------------------------
// DDL (pure)

/// `CREATE TABLE [t] (…)` with every schema column in EDS order: key columns `NOT NULL` (a
/// primary key cannot be nullable), others `NOT NULL` when required and not nullable, else `NULL`.
pub(super) fn create_table_sql(schema: &Schema) -> Result<String, DriverError> {
    let mut lines = Vec::with_capacity(schema.columns().len() + 1);
    for c in schema.columns() {
        let null = if c.primary_key || c.not_null_in_ddl() { "NOT NULL" } else { "NULL" };
        lines.push(format!("\t{} {} {null}", quote_ident(&c.name)?, ddl_type(&c.kind, c.primary_key)));
    }
    let keys = schema.primary_keys().iter().map(|k| quote_ident(k)).collect::<Result<Vec<_>, _>>()?;
    lines.push(format!("\tPRIMARY KEY ({})", keys.join(", ")));
    Ok(format!("CREATE TABLE {} (\n{}\n)", quote_ident(schema.table())?, lines.join(",\n")))
}

/// The statements that bring an existing table up to `schema`: one `ALTER TABLE … ADD` with every
/// missing column (nullable), and one `ALTER TABLE … ALTER COLUMN … NULL` (keeping type and
/// collation) per non-key column that is NOT NULL at the destination but absent from, or not
/// NOT NULL in, `schema`. Never drops or retypes anything.
pub(super) fn migration_sql(schema: &Schema, info: &TableInfo) -> Result<Vec<String>, DriverError> {
    let table = quote_ident(schema.table())?;
    let mut out = Vec::new();
    let added = schema
        .columns()
        .iter()
        .filter(|c| !info.columns.contains_key(&c.name))
        .map(|c| Ok(format!("{} {} NULL", quote_ident(&c.name)?, ddl_type(&c.kind, c.primary_key))))
        .collect::<Result<Vec<_>, DriverError>>()?;
    if !added.is_empty() {
        out.push(format!("ALTER TABLE {table} ADD {}", added.join(", ")));
    }
    let mut loosen: Vec<(&String, &DestColumn)> = info
        .columns
        .iter()
        .filter(|(name, dest)| {
            dest.not_null
                && !info.primary_key.contains(*name)
                && !schema.primary_keys().contains(name)
                && schema.column(name).is_none_or(|c| !c.not_null_in_ddl())
        })
        .collect();
    loosen.sort_by_key(|(name, _)| *name);
    for (name, dest) in loosen {
        let Some(t) = &dest.type_sql else {
            return Err(DriverError::new(
                ErrorClass::Config,
                format!(
                    "SQL Server: column {name:?} of table {:?} is NOT NULL with type {:?}, which eds does not put into \
                     SQL, so its NOT NULL cannot be dropped",
                    schema.table(),
                    dest.data_type
                ),
            ));
        };
        let collate = dest.collation.as_ref().map(|c| format!(" COLLATE {c}")).unwrap_or_default();
        out.push(format!("ALTER TABLE {table} ALTER COLUMN {} {t}{collate} NULL", quote_ident(name)?));
    }
    Ok(out)
}

/// Fails with [`ErrorClass::Config`] for the first schema column whose destination column cannot
/// hold its type.
pub(super) fn check_types(schema: &Schema, info: &TableInfo) -> Result<(), DriverError> {
    for c in schema.columns() {
        if let Some(dest) = info.columns.get(&c.name) {
            if !dest.storage.holds(&c.kind) {
                return Err(DriverError::new(
                    ErrorClass::Config,
                    format!(
                        "SQL Server: column {} of table {} is {} at the destination but the schema says {}",
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
