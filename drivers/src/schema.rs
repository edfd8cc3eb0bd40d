//! The schema model: what HQ's schema registry says a table looks like.
//!
//! Shopmonkey HQ describes every CDC table with a small JSON document (`properties`, `required`,
//! `primaryKeys`, `table`, `modelVersion`). [`Schema::from_json`] turns one document into a
//! [`Schema`] whose columns carry a resolved [`ColumnType`]; [`LatestSchemas::from_json`] reads the
//! `GET /v3/schema` answer (every table's latest schema). [`Schema::diff`] compares two versions of a
//! table so the drain can migrate a destination forward without ever dropping it.
//!
//! Invariant: [`Schema::columns`] is in EDS column order — the `primaryKeys` in the order given, then
//! every other property name sorted ascending by bytes. Every INSERT column list and CREATE TABLE
//! follows this order, so it must not change. Unknown JSON fields are ignored, so HQ may add some.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Errors from reading schema documents or from comparing schema versions.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The document is not JSON of the schema's shape (wrong JSON type for a known field, or not
    /// JSON at all). `table` is set when the document still names its table.
    #[error("invalid schema json{}", for_table(.table.as_deref()))]
    Json {
        /// The table named by the document, if it could be read.
        table: Option<String>,
        /// What the JSON parser rejected.
        #[source]
        source: serde_json::Error,
    },
    /// The document has no `table`, or an empty one.
    #[error("schema has no table name")]
    MissingTable,
    /// The document has no `modelVersion`, or an empty one.
    #[error("schema for table {table} has no model version")]
    MissingModelVersion {
        /// The table the document describes.
        table: String,
    },
    /// `primaryKeys` is missing or empty: rows could not be upserted or deleted by key.
    #[error("schema for table {table} has no primary keys")]
    NoPrimaryKeys {
        /// The table the document describes.
        table: String,
    },
    /// A `primaryKeys` entry names no property, so its type is unknown.
    #[error("schema for table {table} lists primary key {column} which is not a property")]
    MissingPrimaryKey {
        /// The table the document describes.
        table: String,
        /// The primary key without a property.
        column: String,
    },
    /// A `primaryKeys` entry appears twice, which would list the column twice.
    #[error("schema for table {table} lists primary key {column} twice")]
    DuplicatePrimaryKey {
        /// The table the document describes.
        table: String,
        /// The repeated primary key.
        column: String,
    },
    /// The `GET /v3/schema` body is not a JSON object.
    #[error("invalid schema list json")]
    ListJson {
        /// What the JSON parser rejected.
        #[source]
        source: serde_json::Error,
    },
    /// One entry of the `GET /v3/schema` body is not a valid schema.
    #[error("schema list entry {object} is invalid")]
    ListEntry {
        /// The entry's key (HQ's object name).
        object: String,
        /// Why its schema was rejected.
        #[source]
        source: Box<SchemaError>,
    },
    /// Two entries of the `GET /v3/schema` body describe the same table.
    #[error("schema list entries {first_object} and {second_object} both describe table {table}")]
    DuplicateTable {
        /// The table both entries name.
        table: String,
        /// The entry kept first (object names are read in ascending order).
        first_object: String,
        /// The entry that collided with it.
        second_object: String,
    },
    /// A newer schema changes a column's type in a way no destination column can absorb in place.
    #[error("column {column} of table {table} changed type from {from} to {to}")]
    TypeChanged {
        /// The table being migrated.
        table: String,
        /// The column whose type changed.
        column: String,
        /// Its type in the older schema.
        from: ColumnType,
        /// Its type in the newer schema.
        to: ColumnType,
    },
}

fn for_table(table: Option<&str>) -> String {
    table.map(|t| format!(" for table {t}")).unwrap_or_default()
}

/// The type of a column, resolved from a property's `type`, `format` and `items` (spec §6.1–6.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// `type: "string"` without `format: "date-time"`.
    Text,
    /// `type: "string"` with `format: "date-time"`.
    DateTime,
    /// `type: "integer"`.
    Integer,
    /// `type: "number"`.
    Number,
    /// `type: "boolean"`.
    Boolean,
    /// `type: "object"` (a JSON document).
    Object,
    /// An enum, which EDS encodes as `type: "array"` with `items.type: "enum"`; the value is a single
    /// string, one of `values`.
    Enum {
        /// The allowed values, in schema order (empty when the schema lists none).
        values: Vec<String>,
    },
    /// Any other `type: "array"`, stored as a JSON document.
    Array {
        /// The element type, when `items` is given.
        items: Option<Box<ColumnType>>,
    },
    /// A missing (empty string) or unrecognised `type`; destinations store it as text.
    Unknown(String),
}

impl ColumnType {
    /// Whether a destination column made for `self` can hold values of `other` without a type
    /// change: the same variant. Enum values and array item types do not matter — every destination
    /// stores enums as short text and arrays as JSON whatever they contain (spec §6.2).
    pub fn same_storage(&self, other: &ColumnType) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// Whether the schema JSON spelled this type `"array"` (enums included), the test EDS uses for
    /// JSON defaults.
    fn is_schema_array(&self) -> bool {
        matches!(self, ColumnType::Enum { .. } | ColumnType::Array { .. })
    }

    fn resolve(kind: Option<&str>, format: Option<&str>, items: Option<&RawItems>) -> ColumnType {
        match kind.unwrap_or("") {
            "string" if format == Some("date-time") => ColumnType::DateTime,
            "string" => ColumnType::Text,
            "integer" => ColumnType::Integer,
            "number" => ColumnType::Number,
            "boolean" => ColumnType::Boolean,
            "object" => ColumnType::Object,
            "array" => match items {
                Some(items) if items.kind.as_deref() == Some("enum") => {
                    ColumnType::Enum { values: items.values.clone().unwrap_or_default() }
                }
                Some(items) => ColumnType::Array {
                    items: Some(Box::new(ColumnType::resolve(items.kind.as_deref(), items.format.as_deref(), None))),
                },
                None => ColumnType::Array { items: None },
            },
            other => ColumnType::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Text => f.write_str("string"),
            ColumnType::DateTime => f.write_str("date-time string"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::Number => f.write_str("number"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Object => f.write_str("object"),
            ColumnType::Enum { values } => write!(f, "enum [{}]", values.join(", ")),
            ColumnType::Array { items: Some(items) } => write!(f, "array of {items}"),
            ColumnType::Array { items: None } => f.write_str("array"),
            ColumnType::Unknown(kind) if kind.is_empty() => f.write_str("missing type"),
            ColumnType::Unknown(kind) => write!(f, "unknown type {kind:?}"),
        }
    }
}

/// One column of a table, from one entry of the schema's `properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The property name, which is the column name.
    pub name: String,
    /// The resolved type.
    pub kind: ColumnType,
    /// `nullable: true` in the schema.
    pub nullable: bool,
    /// Listed in the schema's `required`.
    pub required: bool,
    /// Listed in the schema's `primaryKeys`.
    pub primary_key: bool,
    /// `deprecated: true` in the schema.
    pub deprecated: bool,
    /// The schema's `$comment`, if any.
    pub comment: Option<String>,
}

impl Column {
    /// Whether a missing or empty value needs a JSON default (`[]`, `{}`) rather than NULL: EDS's
    /// rule `!nullable || type == "array"` (spec §6.1). Enums are spelled `"array"` in the schema,
    /// so they count too; the driver decides which default, if any, suits the column's type.
    pub fn not_null_for_json_default(&self) -> bool {
        !self.nullable || self.kind.is_schema_array()
    }

    /// Whether CREATE TABLE declares the column `NOT NULL`: listed in `required` and not nullable.
    pub fn not_null_in_ddl(&self) -> bool {
        self.required && !self.nullable
    }
}

/// One version (`modelVersion`) of one table's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    table: String,
    model_version: String,
    columns: Vec<Column>,
    primary_keys: Vec<String>,
    required: Vec<String>,
    /// Column index by name, hashed fast: the drain looks up every property of every row.
    by_name: HashMap<String, usize, foldhash::fast::RandomState>,
}

/// A property as the schema JSON spells it. Every field may be missing or `null`, as Go's decoder
/// allows; serde treats a missing `Option` field as `None`.
#[derive(Deserialize)]
struct RawProperty {
    #[serde(rename = "type")]
    kind: Option<String>,
    format: Option<String>,
    nullable: Option<bool>,
    items: Option<RawItems>,
    #[serde(rename = "$comment")]
    comment: Option<String>,
    deprecated: Option<bool>,
}

#[derive(Deserialize)]
struct RawItems {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "enum")]
    values: Option<Vec<String>>,
    format: Option<String>,
}

#[derive(Deserialize)]
struct RawSchema {
    properties: Option<BTreeMap<String, RawProperty>>,
    required: Option<Vec<String>>,
    #[serde(rename = "primaryKeys")]
    primary_keys: Option<Vec<String>>,
    table: Option<String>,
    #[serde(rename = "modelVersion")]
    model_version: Option<String>,
}

/// Used only to name the table in the error for a document that failed to parse.
#[derive(Deserialize)]
struct TableProbe {
    table: String,
}

impl Schema {
    /// Parses one schema document, e.g. the body of `GET /v3/schema/<object>/<modelVersion>`.
    ///
    /// Rejects a document without a table name, model version or primary key, and one whose
    /// primary keys are not all properties. Unknown fields are ignored.
    pub fn from_json(json: &[u8]) -> Result<Schema, SchemaError> {
        let raw: RawSchema = serde_json::from_slice(json).map_err(|source| SchemaError::Json {
            table: serde_json::from_slice::<TableProbe>(json).ok().map(|probe| probe.table),
            source,
        })?;
        Schema::from_raw(raw)
    }

    fn from_raw(raw: RawSchema) -> Result<Schema, SchemaError> {
        let table = raw.table.filter(|t| !t.is_empty()).ok_or(SchemaError::MissingTable)?;
        let model_version = match raw.model_version.filter(|v| !v.is_empty()) {
            Some(version) => version,
            None => return Err(SchemaError::MissingModelVersion { table }),
        };
        let primary_keys = raw.primary_keys.unwrap_or_default();
        if primary_keys.is_empty() {
            return Err(SchemaError::NoPrimaryKeys { table });
        }
        let required = raw.required.unwrap_or_default();
        let mut properties = raw.properties.unwrap_or_default();

        let mut columns = Vec::with_capacity(properties.len());
        for key in &primary_keys {
            let Some(property) = properties.remove(key) else {
                return Err(if columns.iter().any(|c: &Column| &c.name == key) {
                    SchemaError::DuplicatePrimaryKey { table, column: key.clone() }
                } else {
                    SchemaError::MissingPrimaryKey { table, column: key.clone() }
                });
            };
            columns.push(column(key.clone(), property, &required, true));
        }
        // A BTreeMap iterates in ascending byte order of its keys, which is EDS's order.
        columns.extend(properties.into_iter().map(|(name, property)| column(name, property, &required, false)));

        let by_name = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        Ok(Schema { table, model_version, columns, primary_keys, required, by_name })
    }

    /// The table name (`table`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The version hash (`modelVersion`), e.g. `b041c12fbf8d1103`.
    pub fn model_version(&self) -> &str {
        &self.model_version
    }

    /// Every column in EDS column order: primary keys as given, then the rest ascending by name.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The primary key column names, in the order the schema gives them (never empty).
    pub fn primary_keys(&self) -> &[String] {
        &self.primary_keys
    }

    /// The schema's `required` list as given (it may name columns that are not properties).
    pub fn required(&self) -> &[String] {
        &self.required
    }

    /// The column called `name`, if the schema has one.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.by_name.get(name).and_then(|&i| self.columns.get(i))
    }

    /// The column names in EDS column order.
    pub fn column_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// What changed from `self` to `newer`, a later version of the same table. Only columns are
    /// compared; the table names are not checked.
    pub fn diff(&self, newer: &Schema) -> SchemaDiff {
        let mut diff = SchemaDiff::default();
        for old in &self.columns {
            match newer.column(&old.name) {
                None => diff.removed.push(old.name.clone()),
                Some(new) => {
                    if old.not_null_in_ddl() && !new.not_null_in_ddl() {
                        diff.made_nullable.push(old.name.clone());
                    }
                    if !old.kind.same_storage(&new.kind) {
                        diff.type_changed.push((old.name.clone(), old.kind.clone(), new.kind.clone()));
                    }
                }
            }
        }
        diff.added = newer.columns.iter().filter(|c| self.column(&c.name).is_none()).cloned().collect();
        diff
    }
}

fn column(name: String, property: RawProperty, required: &[String], primary_key: bool) -> Column {
    Column {
        kind: ColumnType::resolve(property.kind.as_deref(), property.format.as_deref(), property.items.as_ref()),
        nullable: property.nullable.unwrap_or(false),
        required: required.contains(&name),
        primary_key,
        deprecated: property.deprecated.unwrap_or(false),
        comment: property.comment,
        name,
    }
}

/// The column changes between two versions of a table, as [`Schema::diff`] finds them.
///
/// A migration applies it without dropping the table: `added` columns are added as nullable
/// columns, `removed` and `made_nullable` columns lose their NOT NULL constraint (old rows keep
/// their values; new rows leave removed columns NULL), and any `type_changed` entry is refused
/// ([`SchemaDiff::ensure_no_type_changes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaDiff {
    /// Columns only in the newer schema, in its column order.
    pub added: Vec<Column>,
    /// Names of columns only in the older schema, in its column order.
    pub removed: Vec<String>,
    /// Names of columns that were NOT NULL in DDL ([`Column::not_null_in_ddl`]) and no longer are.
    pub made_nullable: Vec<String>,
    /// Columns whose type changed storage ([`ColumnType::same_storage`]): name, old type, new type.
    pub type_changed: Vec<(String, ColumnType, ColumnType)>,
}

impl SchemaDiff {
    /// Whether the destination needs no change at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.made_nullable.is_empty()
            && self.type_changed.is_empty()
    }

    /// Fails with [`SchemaError::TypeChanged`] for the first column of `table` whose type changed.
    pub fn ensure_no_type_changes(&self, table: &str) -> Result<(), SchemaError> {
        match self.type_changed.first() {
            None => Ok(()),
            Some((column, from, to)) => Err(SchemaError::TypeChanged {
                table: table.to_owned(),
                column: column.clone(),
                from: from.clone(),
                to: to.clone(),
            }),
        }
    }
}

/// Every table's latest schema, from the `GET /v3/schema` answer (spec §3.5, §6.3).
///
/// The answer is a JSON object keyed by HQ's *object name*; each value is a schema document. Entries
/// are re-keyed by the schema's own `table`, and each table remembers its object name, which is the
/// path segment of `GET /v3/schema/<object>/<modelVersion>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatestSchemas {
    by_table: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    object: String,
    schema: Schema,
}

impl LatestSchemas {
    /// Parses the body of `GET /v3/schema`. Fails on the first entry that is not a valid schema
    /// (naming its object) and when two entries describe the same table.
    pub fn from_json(json: &[u8]) -> Result<LatestSchemas, SchemaError> {
        let entries: BTreeMap<String, &RawValue> =
            serde_json::from_slice(json).map_err(|source| SchemaError::ListJson { source })?;
        let mut by_table: BTreeMap<String, Entry> = BTreeMap::new();
        for (object, raw) in entries {
            let schema = match Schema::from_json(raw.get().as_bytes()) {
                Ok(schema) => schema,
                Err(source) => return Err(SchemaError::ListEntry { object, source: Box::new(source) }),
            };
            if let Some(first) = by_table.get(&schema.table) {
                return Err(SchemaError::DuplicateTable {
                    table: schema.table,
                    first_object: first.object.clone(),
                    second_object: object,
                });
            }
            by_table.insert(schema.table.clone(), Entry { object, schema });
        }
        Ok(LatestSchemas { by_table })
    }

    /// The latest schema of `table`.
    pub fn get(&self, table: &str) -> Option<&Schema> {
        self.by_table.get(table).map(|e| &e.schema)
    }

    /// HQ's object name for `table`, for `GET /v3/schema/<object>/<modelVersion>`; the table name
    /// itself when the list did not have the table.
    pub fn object_name<'a>(&'a self, table: &'a str) -> &'a str {
        self.by_table.get(table).map_or(table, |e| e.object.as_str())
    }

    /// The schemas, ascending by table name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Schema> + '_ {
        self.by_table.values().map(|e| &e.schema)
    }

    /// The table names, ascending.
    pub fn tables(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.by_table.keys().map(String::as_str)
    }

    /// How many tables the list holds.
    pub fn len(&self) -> usize {
        self.by_table.len()
    }

    /// Whether the list holds no table.
    pub fn is_empty(&self) -> bool {
        self.by_table.is_empty()
    }
}

#[cfg(test)]
mod tests;
