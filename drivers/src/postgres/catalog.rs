//! The destination's own description of a table, and the DDL that keeps it in step with HQ's
//! schemas: the catalog read (column types, NOT NULL, unique keys), the check that each column can
//! hold its schema type, `CREATE TABLE`, and the `ALTER TABLE` actions of a migration (which never
//! drop or retype anything). Identifiers go through [`quote_ident`]; catalog type names are used
//! as cast targets only when [`is_plain_type_name`] says they are safe in SQL.

use super::sink::{quote_ident, Storage};
use crate::driver::{DriverError, ErrorClass};
use crate::schema::{ColumnType, Schema};
use sqlx::postgres::PgConnection;
use std::collections::{BTreeSet, HashMap};

/// The column type CREATE TABLE and ADD COLUMN use for a schema type (spec §6.2).
pub fn ddl_type(kind: &ColumnType) -> &'static str {
    match kind {
        ColumnType::Text | ColumnType::Unknown(_) => "TEXT",
        ColumnType::DateTime => "TIMESTAMP WITH TIME ZONE",
        ColumnType::Integer => "BIGINT",
        ColumnType::Number => "DOUBLE PRECISION",
        ColumnType::Boolean => "BOOLEAN",
        ColumnType::Object | ColumnType::Array { .. } => "JSONB",
        ColumnType::Enum { .. } => "VARCHAR(64)",
    }
}

/// Whether a type name read from the catalog is safe to put into SQL as a cast target.
fn is_plain_type_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '(' | ')' | ',' | '.' | '"' | '[' | ']'))
}

/// One column of a destination table, as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct DestColumn {
    /// The full type, for messages (`character varying(64)`).
    pub(super) display: String,
    /// The cast target (the type without its modifier), `None` when its name is not plain.
    pub(super) cast: Option<String>,
    pub(super) storage: Storage,
    pub(super) not_null: bool,
}

/// A destination table, as the catalog describes it.
#[derive(Debug, Clone, Default)]
pub(super) struct TableInfo {
    pub(super) columns: HashMap<String, DestColumn>,
    /// The primary key's columns.
    pub(super) primary_key: BTreeSet<String>,
    /// Column sets of the unique indexes usable as an ON CONFLICT target (primary key included).
    pub(super) unique_keys: Vec<BTreeSet<String>>,
}

const COLUMNS_SQL: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
format_type(a.atttypid, NULL), \
format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL), \
t.typcategory::text, a.attnotnull \
FROM pg_catalog.pg_attribute a \
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
WHERE n.nspname = current_schema() AND c.relname = $1 AND c.relkind IN ('r', 'p') \
AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

const KEYS_SQL: &str = "SELECT i.indisprimary, array_agg(a.attname::text) \
FROM pg_catalog.pg_index i \
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
WHERE n.nspname = current_schema() AND c.relname = $1 AND i.indisunique AND i.indimmediate \
AND i.indpred IS NULL AND i.indexprs IS NULL GROUP BY i.indexrelid, i.indisprimary";

/// Reads `table` of the current schema from the catalog; `None` when there is no such table.
pub(super) async fn load_table(conn: &mut PgConnection, table: &str) -> Result<Option<TableInfo>, sqlx::Error> {
    let rows: Vec<(String, String, String, String, String, bool)> =
        sqlx::query_as(COLUMNS_SQL).bind(table).fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut info = TableInfo::default();
    for (name, display, cast, base, category, not_null) in rows {
        let storage = Storage::of(&base, &category);
        let cast = is_plain_type_name(&cast).then_some(cast);
        info.columns.insert(name, DestColumn { display, cast, storage, not_null });
    }
    let keys: Vec<(bool, Vec<String>)> = sqlx::query_as(KEYS_SQL).bind(table).fetch_all(&mut *conn).await?;
    for (primary, columns) in keys {
        let columns: BTreeSet<String> = columns.into_iter().collect();
        if primary {
            info.primary_key = columns.clone();
        }
        info.unique_keys.push(columns);
    }
    Ok(Some(info))
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
                        "PostgreSQL: column {} of table {} is {} at the destination but the schema says {}",
                        c.name,
                        schema.table(),
                        dest.display,
                        c.kind
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` with every schema column in EDS order (spec §7.1, minus the DROP).
pub(super) fn create_table_sql(quoted_table: &str, schema: &Schema) -> Result<String, DriverError> {
    let mut lines = Vec::with_capacity(schema.columns().len() + 1);
    for c in schema.columns() {
        let not_null = if c.not_null_in_ddl() { " NOT NULL" } else { "" };
        lines.push(format!("\t{} {}{not_null}", quote_ident(&c.name)?, ddl_type(&c.kind)));
    }
    let keys = schema.primary_keys().iter().map(|k| quote_ident(k)).collect::<Result<Vec<_>, _>>()?;
    lines.push(format!("\tPRIMARY KEY ({})", keys.join(", ")));
    Ok(format!("CREATE TABLE IF NOT EXISTS {quoted_table} (\n{}\n)", lines.join(",\n")))
}

/// The ALTER TABLE actions that bring an existing table up to `schema`: every missing column
/// added (nullable), and NOT NULL dropped from every non-key column the schema lacks or does not
/// declare NOT NULL. Never drops or retypes anything.
pub(super) fn migration_actions(schema: &Schema, info: &TableInfo) -> Result<Vec<String>, DriverError> {
    let mut actions = Vec::new();
    for c in schema.columns().iter().filter(|c| !info.columns.contains_key(&c.name)) {
        actions.push(format!("ADD COLUMN IF NOT EXISTS {} {}", quote_ident(&c.name)?, ddl_type(&c.kind)));
    }
    let mut loosen: Vec<&String> = info
        .columns
        .iter()
        .filter(|(name, dest)| {
            dest.not_null
                && !info.primary_key.contains(*name)
                && !schema.primary_keys().contains(name)
                && schema.column(name).is_none_or(|c| !c.not_null_in_ddl())
        })
        .map(|(name, _)| name)
        .collect();
    loosen.sort();
    for name in loosen {
        actions.push(format!("ALTER COLUMN {} DROP NOT NULL", quote_ident(name)?));
    }
    Ok(actions)
}
