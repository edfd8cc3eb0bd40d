use super::*;
use serde_json::json;

const ORDER: &str = include_str!("../../../../shared/fixtures/schema/order_schema_b041c12fbf8d1103.json");

fn order() -> Schema {
    Schema::from_json(ORDER.as_bytes()).unwrap()
}

fn parse(value: serde_json::Value) -> Result<Schema, SchemaError> {
    Schema::from_json(&serde_json::to_vec(&value).unwrap())
}

/// A table `t` at version `v1` with primary key `id` and the given extra properties and
/// `required` list.
fn table(properties: serde_json::Value, required: &[&str]) -> Schema {
    let mut props = properties.as_object().unwrap().clone();
    props.insert("id".into(), json!({"type": "string"}));
    parse(json!({"properties": props, "required": required, "primaryKeys": ["id"], "table": "t", "modelVersion": "v1"}))
        .unwrap()
}

fn enum_of(values: &[&str]) -> ColumnType {
    ColumnType::Enum { values: values.iter().map(|v| v.to_string()).collect() }
}

#[test]
fn fixture_header_fields() {
    let s = order();
    assert_eq!(s.table(), "order");
    assert_eq!(s.model_version(), "b041c12fbf8d1103");
    assert_eq!(s.primary_keys(), ["id"]);
    assert_eq!(s.required().len(), 58);
    assert_eq!(s.required().first().map(String::as_str), Some("id"));
    assert_eq!(s.required().last().map(String::as_str), Some("status"));
}

#[test]
fn fixture_columns_are_primary_key_then_sorted() {
    let s = order();
    let names: Vec<&str> = s.column_names().collect();
    assert_eq!(names.len(), 98);
    assert_eq!(s.columns().len(), 98);
    assert_eq!(
        names[..6],
        [
            "id",
            "allowCollectPayment",
            "allowCustomerAuthorization",
            "allowCustomerViewActivity",
            "allowCustomerViewAuthorizations",
            "allowCustomerViewInspections"
        ]
    );
    assert_eq!(names[95..], ["workflowStatusDate", "workflowStatusId", "workflowStatusPosition"]);
    let rest = &names[1..];
    assert!(rest.windows(2).all(|w| w[0] < w[1]), "non-key columns must be strictly ascending");
    assert!(!rest.contains(&"id"));
    let keys: Vec<&str> = s.columns().iter().filter(|c| c.primary_key).map(|c| c.name.as_str()).collect();
    assert_eq!(keys, ["id"]);
}

#[test]
fn fixture_column_types() {
    let s = order();
    let kind = |name: &str| s.column(name).unwrap().kind.clone();
    assert_eq!(kind("status"), enum_of(&["Estimate", "RepairOrder", "Invoice"]));
    assert_eq!(kind("inspectionStatus"), enum_of(&["None", "Completed", "NotCompleted"]));
    assert_eq!(kind("createdDate"), ColumnType::DateTime);
    assert_eq!(kind("authorizedDate"), ColumnType::DateTime);
    assert_eq!(kind("customFields"), ColumnType::Object);
    assert_eq!(kind("labels"), ColumnType::Object);
    assert_eq!(kind("appointmentDates"), ColumnType::Array { items: Some(Box::new(ColumnType::DateTime)) });
    assert_eq!(kind("assignedTechnicianIds"), ColumnType::Array { items: Some(Box::new(ColumnType::Text)) });
    assert_eq!(kind("id"), ColumnType::Text);
    assert_eq!(kind("number"), ColumnType::Text);
    assert_eq!(kind("deferredServiceCount"), ColumnType::Integer);
    assert_eq!(kind("remainingCostCents"), ColumnType::Integer);
    assert_eq!(kind("mileageIn"), ColumnType::Number);
    assert_eq!(kind("archived"), ColumnType::Boolean);
}

#[test]
fn fixture_nullability_and_not_null_rules() {
    let s = order();
    let created = s.column("createdDate").unwrap();
    assert!(!created.nullable && created.required);
    assert!(created.not_null_in_ddl() && created.not_null_for_json_default());

    let authorized = s.column("authorizedDate").unwrap();
    assert!(authorized.nullable && !authorized.required);
    assert!(!authorized.not_null_in_ddl() && !authorized.not_null_for_json_default());

    let custom = s.column("customFields").unwrap();
    assert!(custom.nullable && !custom.not_null_for_json_default());
    let labels = s.column("labels").unwrap();
    assert!(!labels.nullable && labels.not_null_in_ddl() && labels.not_null_for_json_default());

    let id = s.column("id").unwrap();
    assert!(id.primary_key && id.required && !id.nullable && !id.deprecated && id.comment.is_none());

    let count = |f: fn(&Column) -> bool| s.columns().iter().filter(|c| f(c)).count();
    assert_eq!(count(|c| c.nullable), 40);
    assert_eq!(count(Column::not_null_in_ddl), 58);
    assert_eq!(count(Column::not_null_for_json_default), 58);
    assert_eq!(count(|c| c.primary_key), 1);
}

#[test]
fn column_lookup() {
    let s = order();
    assert_eq!(s.column("status").map(|c| c.name.as_str()), Some("status"));
    assert!(s.column("Status").is_none());
    assert!(s.column("nope").is_none());
}

#[test]
fn composite_keys_keep_given_order_then_bytewise_sort() {
    let s = parse(json!({
        "properties": {"zeta": {"type": "string"}, "id": {"type": "string"}, "Alpha": {"type": "integer"},
                       "beta": {"type": "number"}, "locationId": {"type": "string"}},
        "primaryKeys": ["locationId", "id"], "table": "t", "modelVersion": "v1"
    }))
    .unwrap();
    assert_eq!(s.column_names().collect::<Vec<_>>(), ["locationId", "id", "Alpha", "beta", "zeta"]);
    assert_eq!(s.primary_keys(), ["locationId", "id"]);
    assert!(s.column("locationId").unwrap().primary_key && s.column("id").unwrap().primary_key);
    assert!(!s.column("Alpha").unwrap().primary_key);
    assert!(s.required().is_empty());
}

#[test]
fn not_null_rules_follow_spec() {
    let s = table(
        json!({
            "tags": {"type": "array", "items": {"type": "string"}, "nullable": true},
            "state": {"type": "array", "items": {"type": "enum", "enum": ["A"]}, "nullable": true},
            "note": {"type": "string", "nullable": true},
            "both": {"type": "string", "nullable": true},
            "loose": {"type": "string"},
        }),
        &["id", "both"],
    );
    let c = |name: &str| s.column(name).unwrap().clone();
    // Arrays (enums included) take a JSON default even when nullable.
    assert!(c("tags").not_null_for_json_default() && !c("tags").not_null_in_ddl());
    assert!(c("state").not_null_for_json_default());
    assert!(!c("note").not_null_for_json_default());
    // NOT NULL in DDL needs both `required` and not nullable.
    assert!(c("both").required && !c("both").not_null_in_ddl());
    assert!(!c("loose").required && !c("loose").not_null_in_ddl() && c("loose").not_null_for_json_default());
    assert!(c("id").not_null_in_ddl());
}

#[test]
fn type_resolution_edge_cases_and_unknown_fields() {
    let s = parse(json!({
        "properties": {
            "id": {"type": "string", "$comment": "the key", "x-vendor": 1},
            "untyped": {"nullable": true},
            "odd": {"type": "null"},
            "email": {"type": "string", "format": "email"},
            "bare": {"type": "array"},
            "noValues": {"type": "array", "items": {"type": "enum"}},
            "objects": {"type": "array", "items": {"type": "object"}, "additionalProperties": true},
            "untypedItems": {"type": "array", "items": {}},
            "old": {"type": "boolean", "deprecated": true},
            "nulls": {"type": "integer", "nullable": null, "deprecated": null, "format": null}
        },
        "required": null, "primaryKeys": ["id"], "table": "t", "modelVersion": "v1",
        "description": "ignored", "$schema": "ignored too"
    }))
    .unwrap();
    let kind = |name: &str| s.column(name).unwrap().kind.clone();
    assert_eq!(kind("untyped"), ColumnType::Unknown(String::new()));
    assert_eq!(kind("odd"), ColumnType::Unknown("null".into()));
    assert_eq!(kind("email"), ColumnType::Text);
    assert_eq!(kind("bare"), ColumnType::Array { items: None });
    assert_eq!(kind("noValues"), ColumnType::Enum { values: vec![] });
    assert_eq!(kind("objects"), ColumnType::Array { items: Some(Box::new(ColumnType::Object)) });
    assert_eq!(kind("untypedItems"), ColumnType::Array { items: Some(Box::new(ColumnType::Unknown(String::new()))) });
    assert_eq!(kind("nulls"), ColumnType::Integer);
    assert!(!s.column("nulls").unwrap().nullable);
    assert_eq!(s.column("id").unwrap().comment.as_deref(), Some("the key"));
    assert!(s.column("old").unwrap().deprecated);
    assert!(!s.column("email").unwrap().deprecated);
}

#[test]
fn column_type_display() {
    assert_eq!(enum_of(&["A", "B"]).to_string(), "enum [A, B]");
    assert_eq!(
        ColumnType::Array { items: Some(Box::new(ColumnType::DateTime)) }.to_string(),
        "array of date-time string"
    );
    assert_eq!(ColumnType::Unknown(String::new()).to_string(), "missing type");
    assert_eq!(ColumnType::Unknown("uuid".into()).to_string(), "unknown type \"uuid\"");
}

#[test]
fn diff_of_identical_schemas_is_empty() {
    let s = order();
    let diff = s.diff(&s);
    assert!(diff.is_empty(), "{diff:?}");
    assert!(diff.ensure_no_type_changes("order").is_ok());
}

#[test]
fn diff_finds_added_columns_in_newer_order() {
    let old = table(json!({"name": {"type": "string"}}), &["id", "name"]);
    let new = table(
        json!({"name": {"type": "string"}, "zip": {"type": "string"}, "age": {"type": "number", "nullable": true},
               "tags": {"type": "array"}}),
        &["id", "name", "zip"],
    );
    let diff = old.diff(&new);
    let added: Vec<&str> = diff.added.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(added, ["age", "tags", "zip"]);
    let zip = diff.added.iter().find(|c| c.name == "zip").unwrap();
    assert!(zip.required && !zip.nullable && zip.not_null_in_ddl(), "added column keeps its schema flags");
    assert_eq!(diff.added.first().map(|c| c.kind.clone()), Some(ColumnType::Number));
    assert!(diff.removed.is_empty() && diff.made_nullable.is_empty() && diff.type_changed.is_empty());
    assert!(!diff.is_empty());
}

#[test]
fn diff_finds_removed_columns() {
    let old = table(json!({"a": {"type": "string"}, "b": {"type": "string"}, "c": {"type": "string"}}), &["id"]);
    let new = table(json!({"b": {"type": "string"}}), &["id"]);
    let diff = old.diff(&new);
    assert_eq!(diff.removed, ["a", "c"]);
    assert!(diff.added.is_empty() && diff.made_nullable.is_empty() && diff.type_changed.is_empty());
}

#[test]
fn diff_finds_columns_that_lost_not_null() {
    let old = table(
        json!({"flip": {"type": "string"}, "unrequire": {"type": "string"}, "stay": {"type": "string"},
               "loose": {"type": "string", "nullable": true}}),
        &["id", "flip", "unrequire", "stay", "loose"],
    );
    let new = table(
        json!({"flip": {"type": "string", "nullable": true}, "unrequire": {"type": "string"},
               "stay": {"type": "string"}, "loose": {"type": "string"}}),
        &["id", "flip", "stay", "loose"],
    );
    let diff = old.diff(&new);
    // `loose` became NOT NULL in the newer schema: never tightened, so not reported.
    assert_eq!(diff.made_nullable, ["flip", "unrequire"]);
    assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.type_changed.is_empty());
}

#[test]
fn diff_finds_type_changes_but_not_enum_or_item_changes() {
    let old = table(
        json!({"n": {"type": "string"}, "when": {"type": "string"},
               "state": {"type": "array", "items": {"type": "enum", "enum": ["A"]}},
               "list": {"type": "array", "items": {"type": "string"}}}),
        &["id"],
    );
    let new = table(
        json!({"n": {"type": "integer"}, "when": {"type": "string", "format": "date-time"},
               "state": {"type": "array", "items": {"type": "enum", "enum": ["A", "B"]}},
               "list": {"type": "array", "items": {"type": "number"}}}),
        &["id"],
    );
    let diff = old.diff(&new);
    assert_eq!(
        diff.type_changed,
        [
            ("n".to_string(), ColumnType::Text, ColumnType::Integer),
            ("when".to_string(), ColumnType::Text, ColumnType::DateTime)
        ]
    );
    assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.made_nullable.is_empty());
    match diff.ensure_no_type_changes("t") {
        Err(SchemaError::TypeChanged { table, column, from, to }) => {
            assert_eq!((table.as_str(), column.as_str(), from, to), ("t", "n", ColumnType::Text, ColumnType::Integer));
        }
        other => panic!("expected TypeChanged, got {other:?}"),
    }
    let err = diff.ensure_no_type_changes("t").unwrap_err();
    assert_eq!(err.to_string(), "column n of table t changed type from string to integer");
}

#[test]
fn primary_key_without_property_is_an_error() {
    let err = parse(json!({"properties": {"id": {"type": "string"}}, "primaryKeys": ["id", "companyId"],
                           "table": "t", "modelVersion": "v1"}))
    .unwrap_err();
    match &err {
        SchemaError::MissingPrimaryKey { table, column } => {
            assert_eq!((table.as_str(), column.as_str()), ("t", "companyId"))
        }
        other => panic!("expected MissingPrimaryKey, got {other:?}"),
    }
    assert_eq!(err.to_string(), "schema for table t lists primary key companyId which is not a property");
}

#[test]
fn missing_or_empty_primary_keys_are_an_error() {
    for keys in [json!([]), json!(null)] {
        let err = parse(json!({"properties": {"id": {"type": "string"}}, "primaryKeys": keys, "table": "t",
                               "modelVersion": "v1"}))
        .unwrap_err();
        assert!(matches!(&err, SchemaError::NoPrimaryKeys { table } if table == "t"), "{err:?}");
    }
    let err = parse(json!({"properties": {"id": {"type": "string"}}, "table": "t", "modelVersion": "v1"})).unwrap_err();
    assert!(matches!(&err, SchemaError::NoPrimaryKeys { table } if table == "t"), "{err:?}");
    assert_eq!(err.to_string(), "schema for table t has no primary keys");
}

#[test]
fn repeated_primary_key_is_an_error() {
    let err = parse(json!({"properties": {"id": {"type": "string"}}, "primaryKeys": ["id", "id"], "table": "t",
                           "modelVersion": "v1"}))
    .unwrap_err();
    assert!(
        matches!(&err, SchemaError::DuplicatePrimaryKey { table, column } if table == "t" && column == "id"),
        "{err:?}"
    );
}

#[test]
fn invalid_json_is_an_error_naming_the_table_when_possible() {
    let truncated = &ORDER.as_bytes()[..ORDER.len() / 2];
    let err = Schema::from_json(truncated).unwrap_err();
    assert!(matches!(&err, SchemaError::Json { table: None, .. }), "{err:?}");
    assert_eq!(err.to_string(), "invalid schema json");
    assert!(std::error::Error::source(&err).is_some());

    let err =
        parse(json!({"properties": {"id": {"type": 7}}, "primaryKeys": ["id"], "table": "t", "modelVersion": "v1"}))
            .unwrap_err();
    assert!(matches!(&err, SchemaError::Json { table: Some(t), .. } if t == "t"), "{err:?}");
    assert_eq!(err.to_string(), "invalid schema json for table t");

    let err = Schema::from_json(b"[1, 2]").unwrap_err();
    assert!(matches!(&err, SchemaError::Json { table: None, .. }), "{err:?}");
}

#[test]
fn missing_table_or_version_is_an_error() {
    let base = json!({"properties": {"id": {"type": "string"}}, "primaryKeys": ["id"]});
    let mut no_table = base.clone();
    no_table["modelVersion"] = json!("v1");
    assert!(matches!(parse(no_table.clone()), Err(SchemaError::MissingTable)));
    no_table["table"] = json!("");
    assert!(matches!(parse(no_table), Err(SchemaError::MissingTable)));

    let mut no_version = base;
    no_version["table"] = json!("t");
    let err = parse(no_version).unwrap_err();
    assert!(matches!(&err, SchemaError::MissingModelVersion { table } if table == "t"), "{err:?}");
}

fn list(entries: &[(&str, serde_json::Value)]) -> Result<LatestSchemas, SchemaError> {
    let map: serde_json::Map<String, serde_json::Value> =
        entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    LatestSchemas::from_json(&serde_json::to_vec(&map).unwrap())
}

fn small(table: &str) -> serde_json::Value {
    json!({"properties": {"id": {"type": "string"}}, "primaryKeys": ["id"], "table": table, "modelVersion": "v9"})
}

#[test]
fn schema_list_is_rekeyed_by_table() {
    let order_json: serde_json::Value = serde_json::from_str(ORDER).unwrap();
    let schemas = list(&[("orders", order_json), ("Customer", small("customer"))]).unwrap();
    assert_eq!(schemas.len(), 2);
    assert!(!schemas.is_empty());
    assert_eq!(schemas.tables().collect::<Vec<_>>(), ["customer", "order"]);
    assert_eq!(schemas.iter().map(|s| s.model_version()).collect::<Vec<_>>(), ["v9", "b041c12fbf8d1103"]);
    assert_eq!(schemas.get("order").unwrap(), &order());
    assert!(schemas.get("orders").is_none());
    assert_eq!(schemas.object_name("order"), "orders");
    assert_eq!(schemas.object_name("customer"), "Customer");
    assert_eq!(schemas.object_name("labor"), "labor", "unknown tables fall back to the table name");
}

#[test]
fn schema_list_errors_name_the_entry() {
    let mut bad = small("labor");
    bad["primaryKeys"] = json!(["laborId"]);
    let err = list(&[("customer", small("customer")), ("labor", bad)]).unwrap_err();
    match &err {
        SchemaError::ListEntry { object, source } => {
            assert_eq!(object, "labor");
            assert!(
                matches!(&**source, SchemaError::MissingPrimaryKey { table, column } if table == "labor" && column == "laborId")
            );
        }
        other => panic!("expected ListEntry, got {other:?}"),
    }
    assert_eq!(err.to_string(), "schema list entry labor is invalid");

    let err = list(&[("a", small("order")), ("b", small("order"))]).unwrap_err();
    assert!(
        matches!(&err, SchemaError::DuplicateTable { table, first_object, second_object }
            if table == "order" && first_object == "a" && second_object == "b"),
        "{err:?}"
    );

    let err = list(&[("order", json!(null))]).unwrap_err();
    assert!(matches!(&err, SchemaError::ListEntry { object, .. } if object == "order"), "{err:?}");

    for body in [&b"[]"[..], b"{\"order\": ", b""] {
        let err = LatestSchemas::from_json(body).unwrap_err();
        assert!(matches!(err, SchemaError::ListJson { .. }), "{err:?}");
    }
    assert!(LatestSchemas::from_json(b"{}").unwrap().is_empty());
}
