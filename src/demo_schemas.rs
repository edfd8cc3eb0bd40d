//! Embedded schemas for `eds demo`: the tables the demo generator ([`crate::sample::Traffic`])
//! emits — `order`, `customer`, `vehicle`, `labor` — at its two model versions, so the demo can
//! feed destinations that create tables without asking HQ.
//!
//! Invariant: every row image the generator emits has a schema for its `(table, modelVersion)`
//! whose properties cover every key of the row, with a type that fits the value (checked by this
//! module's tests). Change the generator and these documents together.

use crate::registry::{SchemaSource, SourceError};
use eds_drivers::driver::BoxFuture;
use eds_drivers::schema::{LatestSchemas, Schema};
use serde_json::{json, Map, Value};

/// The generator's first model version (the first half of its events).
pub const FIRST_VERSION: &str = crate::sample::ORDER_MODEL_VERSION;

/// The generator's second model version, which adds a nullable `locationName` text column to
/// every table (the second half of its events).
pub const SECOND_VERSION: &str = "c7f1e2d3a4b5c6d7";

/// The demo's tables.
pub const TABLES: [&str; 4] = ["order", "customer", "vehicle", "labor"];

/// A [`SchemaSource`] answering from the demo's embedded schema documents (EDS format). The
/// latest list holds every table at [`SECOND_VERSION`], keyed by table name (which is also the
/// object name).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbeddedSchemas;

impl EmbeddedSchemas {
    /// The embedded source.
    pub fn new() -> EmbeddedSchemas {
        EmbeddedSchemas
    }
}

/// The schema document of `table` at `version`, if embedded.
pub fn document(table: &str, version: &str) -> Option<Value> {
    if version != FIRST_VERSION && version != SECOND_VERSION {
        return None;
    }
    let string = json!({"type": "string"});
    let integer = json!({"type": "integer"});
    let mut properties: Map<String, Value> = match table {
        "order" => [
            ("id", string.clone()),
            ("number", integer.clone()),
            (
                "status",
                json!({"type": "array", "items": {"type": "enum", "enum": ["Estimate", "RepairOrder", "Invoice"]}}),
            ),
            ("totalCostCents", integer),
            ("updatedDate", json!({"type": "string", "format": "date-time"})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        "customer" => [
            ("id", string.clone()),
            ("firstName", string.clone()),
            ("lastName", string.clone()),
            ("email", string),
            ("marketingOptIn", json!({"type": "boolean"})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        "vehicle" => [
            ("id", string.clone()),
            ("make", string.clone()),
            ("model", string),
            ("year", integer.clone()),
            ("mileage", integer),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        "labor" => [
            ("id", string.clone()),
            ("name", string),
            ("hours", json!({"type": "number"})),
            ("rateCents", integer),
            ("completed", json!({"type": "boolean"})),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        _ => return None,
    };
    if version == SECOND_VERSION {
        properties.insert("locationName".into(), json!({"type": "string", "nullable": true}));
    }
    Some(json!({
        "properties": properties,
        "required": ["id"],
        "primaryKeys": ["id"],
        "table": table,
        "modelVersion": version,
    }))
}

fn what(table: &str, version: &str) -> String {
    format!("embedded demo schema {table}/{version}")
}

impl SchemaSource for EmbeddedSchemas {
    fn latest(&self) -> BoxFuture<'_, Result<LatestSchemas, SourceError>> {
        Box::pin(async move {
            let list: Map<String, Value> = TABLES
                .iter()
                .filter_map(|&table| document(table, SECOND_VERSION).map(|doc| (table.to_owned(), doc)))
                .collect();
            LatestSchemas::from_json(Value::Object(list).to_string().as_bytes())
                .map_err(|source| SourceError::Invalid { url: what("*", SECOND_VERSION), source })
        })
    }

    fn version<'a>(&'a self, object: &'a str, version: &'a str) -> BoxFuture<'a, Result<Option<Schema>, SourceError>> {
        Box::pin(async move {
            let Some(doc) = document(object, version) else { return Ok(None) };
            Schema::from_json(doc.to_string().as_bytes())
                .map(Some)
                .map_err(|source| SourceError::Invalid { url: what(object, version), source })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::sample::Traffic;
    use eds_drivers::schema::ColumnType;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[tokio::test]
    async fn every_generated_row_fits_its_schema() {
        let registry = Registry::new(Arc::new(EmbeddedSchemas::new()), None);
        let mut seen = HashSet::new();
        for bytes in Traffic::new(7, 400) {
            let event: Value = serde_json::from_slice(&bytes).unwrap();
            let table = event["table"].as_str().unwrap();
            let version = event["modelVersion"].as_str().unwrap();
            let schema = registry.schema(table, version).await.unwrap();
            assert_eq!((schema.table(), schema.model_version()), (table, version));
            seen.insert((table.to_owned(), version.to_owned()));
            for image in ["before", "after"] {
                let Some(row) = event[image].as_object() else { continue };
                for (key, value) in row {
                    let column = schema.column(key).unwrap_or_else(|| panic!("{table}@{version} has no column {key}"));
                    let fits = match &column.kind {
                        ColumnType::Text | ColumnType::DateTime => value.is_string(),
                        ColumnType::Integer => value.is_i64() || value.is_u64(),
                        ColumnType::Number => value.is_number(),
                        ColumnType::Boolean => value.is_boolean(),
                        ColumnType::Enum { values } => value.as_str().is_some_and(|v| values.iter().any(|e| e == v)),
                        other => panic!("unexpected column type {other}"),
                    };
                    assert!(fits, "{table}@{version}: {key} = {value} does not fit {}", column.kind);
                }
                for required in schema.required() {
                    assert!(row.contains_key(required), "{table}@{version}: row lacks {required}");
                }
            }
        }
        assert_eq!(seen.len(), 8, "both versions of all four tables were generated: {seen:?}");
    }

    #[tokio::test]
    async fn latest_is_the_second_version_of_every_table() {
        let latest = EmbeddedSchemas::new().latest().await.unwrap();
        assert_eq!(latest.tables().collect::<Vec<_>>(), ["customer", "labor", "order", "vehicle"]);
        for table in TABLES {
            let schema = latest.get(table).unwrap();
            assert_eq!(schema.model_version(), SECOND_VERSION);
            assert_eq!(latest.object_name(table), table);
            assert_eq!(schema.primary_keys(), ["id"]);
            let location = schema.column("locationName").unwrap();
            assert!(location.nullable && location.kind == ColumnType::Text);
        }
    }

    #[tokio::test]
    async fn versions_are_answered_and_others_are_not_found() {
        let source = EmbeddedSchemas::new();
        let first = source.version("order", FIRST_VERSION).await.unwrap().unwrap();
        assert!(first.column("locationName").is_none());
        assert_eq!(
            first.column_names().collect::<Vec<_>>(),
            ["id", "number", "status", "totalCostCents", "updatedDate"]
        );
        assert_eq!(first.column("updatedDate").unwrap().kind, ColumnType::DateTime);
        let diff = first.diff(&source.version("order", SECOND_VERSION).await.unwrap().unwrap());
        assert_eq!(diff.added.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["locationName"]);
        assert!(diff.removed.is_empty() && diff.type_changed.is_empty());
        assert_eq!(
            source.version("labor", SECOND_VERSION).await.unwrap().unwrap().column("hours").unwrap().kind,
            ColumnType::Number
        );
        assert!(source.version("order", "fff000111").await.unwrap().is_none());
        assert!(source.version("invoice", FIRST_VERSION).await.unwrap().is_none());
    }
}
