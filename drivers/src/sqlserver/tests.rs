//! Tests of the SQL Server destination. No real SQL Server can run on these machines, so:
//!
//! 1. Statement tests pin the exact SQL and parameter lists built for every operation, type and
//!    strategy, and for CREATE/ALTER, from catalog rows as SQL Server would report them — with
//!    hostile names and values, which must only ever appear as parameters.
//! 2. Wire tests start `mssql-mock-tds` (a TDS mock: login, `SELECT 1`, TLS) on a free port and run
//!    the driver's connectivity check and connection handling against it. They fail when the mock
//!    is not installed (`cargo install mssql-mock-tds --locked`; `scripts/test.sh` does it).
//! 3. `real_server_conformance` runs the conformance checks and round trips against a real SQL
//!    Server. It is `#[ignore]`d (nextest lists it as ignored); run it with
//!    `EDS_TEST_SQLSERVER_URL=sqlserver://sa:pw@host:1433/db cargo nextest run -p eds-drivers
//!    --run-ignored ignored-only sqlserver`. It fails if run without the variable.

#![allow(clippy::unwrap_used)]

use super::catalog::{
    check_types, create_table_sql, migration_sql, table_info, type_sql, CatalogRow, Storage, TableInfo, CATALOG_SQL,
};
use super::cells::{column_plans, ColumnPlan};
use super::sink::{
    batch_sql, create_stage_sql, drop_table_sql, open, plan, run_batch, settle, stage_inserts, Client, Rollback,
};
use super::*;
use crate::conformance;
use crate::driver::{Batch, Driver, DriverError, ErrorClass, StateChange};
use crate::event::{fold, ChangeEvent, FoldedChange};
use crate::schema::{ColumnType, Schema};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant as Clock};
use tiberius::{ColumnData, ToSql};

const ORDER: &str = include_str!("../../../../shared/fixtures/schema/order_schema_b041c12fbf8d1103.json");
const COLLATION: &str = "SQL_Latin1_General_CP1_CI_AS";

fn schema(v: Value) -> Schema {
    Schema::from_json(v.to_string().as_bytes()).unwrap()
}

/// Folds events (positions 1, 2, …) as the drain does.
fn changes(events: &[Value]) -> Vec<FoldedChange> {
    let events: Vec<ChangeEvent> =
        events.iter().map(|v| ChangeEvent::from_json(v.to_string().as_bytes()).unwrap()).collect();
    fold(events.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)))
}

fn ins(table: &str, after: Value) -> Value {
    let id = after["id"].clone();
    json!({"operation": "INSERT", "table": table, "key": [id], "modelVersion": "v1", "after": after})
}

fn upd(table: &str, after: Value, diff: Option<&[&str]>) -> Value {
    let id = after["id"].clone();
    let mut e = json!({"operation": "UPDATE", "table": table, "key": [id], "modelVersion": "v1", "after": after});
    if let Some(diff) = diff {
        e["diff"] = json!(diff);
    }
    e
}

fn del(table: &str, key: &[&str], before: Option<Value>) -> Value {
    json!({"operation": "DELETE", "table": table, "key": key, "modelVersion": "v1", "before": before})
}

fn things() -> Schema {
    schema(json!({"table": "things", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id"], "properties": {
        "id": {"type": "string"},
        "name": {"type": "string", "nullable": true},
        "n": {"type": "integer", "nullable": true},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true},
        "doc": {"type": "object", "nullable": true}
    }}))
}

/// A catalog row as `CATALOG_SQL` returns it.
fn cat(name: &str, ty: &str, len: Option<i32>, nullable: bool, pk: bool) -> CatalogRow {
    let text = matches!(ty, "nvarchar" | "varchar" | "nchar" | "char" | "ntext" | "text");
    CatalogRow {
        name: name.to_owned(),
        data_type: ty.to_owned(),
        char_len: len,
        precision: match ty {
            "bigint" => Some(19),
            "float" => Some(53),
            "decimal" => Some(12),
            _ => None,
        },
        scale: if ty == "decimal" { Some(2) } else { None },
        datetime_precision: match ty {
            "datetimeoffset" | "datetime2" => Some(7),
            "datetime" => Some(3),
            _ => None,
        },
        collation: text.then(|| COLLATION.to_owned()),
        nullable,
        is_table: true,
        primary_key: pk,
    }
}

/// What the catalog reports for a table made by `create_table_sql(schema)`.
fn created(schema: &Schema) -> TableInfo {
    let rows = schema
        .columns()
        .iter()
        .map(|c| {
            let (ty, len) = match ddl_type(&c.kind, c.primary_key) {
                "NVARCHAR(255)" => ("nvarchar", Some(255)),
                "NVARCHAR(64)" => ("nvarchar", Some(64)),
                "NVARCHAR(MAX)" => ("nvarchar", Some(-1)),
                "DATETIMEOFFSET(7)" => ("datetimeoffset", None),
                "BIGINT" => ("bigint", None),
                "FLOAT" => ("float", None),
                "BIT" => ("bit", None),
                other => panic!("unexpected DDL type {other}"),
            };
            cat(&c.name, ty, len, !(c.primary_key || c.not_null_in_ddl()), c.primary_key)
        })
        .collect();
    table_info(rows).unwrap()
}

/// Every group's statements for `events` written to `info`'s table with `schema`, as `write`
/// builds them.
fn statements_for(schema: &Schema, info: &TableInfo, folded: &[FoldedChange]) -> Result<Vec<GroupSql>, DriverError> {
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema }).collect();
    let mut plans: HashMap<(&str, &str), Vec<ColumnPlan<'_>>> = HashMap::new();
    plans.insert((schema.table(), schema.model_version()), column_plans(schema, info)?);
    batch_sql(&plan(&batch, &plans)?, &plans)
}

fn statements(schema: &Schema, events: &[Value]) -> Vec<GroupSql> {
    statements_for(schema, &created(schema), &changes(events)).unwrap()
}

fn text(s: &str) -> Param {
    Param::Text(Some(s.to_owned()))
}

/// The instant of a UTC date and time (test helper, days from `python3 datetime`).
fn at(days: u32, h: u64, m: u64, s: u64, ticks: u64) -> Param {
    Param::DateTime(Some(Instant { days, ticks: ((h * 60 + m) * 60 + s) * 10_000_000 + ticks }))
}

const THINGS_STAGE: &str = "IF OBJECT_ID(N'tempdb..#eds_stage_0') IS NOT NULL DROP TABLE #eds_stage_0;\nCREATE TABLE \
#eds_stage_0 ([c0] nvarchar(255) COLLATE SQL_Latin1_General_CP1_CI_AS NULL, [c1] NVARCHAR(MAX) NULL, [c2] BIGINT NULL, \
[c3] NVARCHAR(MAX) NULL, [c4] DATETIMEOFFSET(7) NULL)";

// ---------------------------------------------------------------------------------------------
// Statements for each operation

#[test]
fn insert_all_is_one_staged_merge_updating_every_column() {
    let s = things();
    assert_eq!(s.column_names().collect::<Vec<_>>(), ["id", "doc", "n", "name", "updatedDate"]);
    let groups = statements(
        &s,
        &[
            ins(
                "things",
                json!({"id": "k1", "name": "a", "n": 1, "updatedDate": "2024-01-02T03:04:05Z", "doc": {"x": 1}}),
            ),
            ins("things", json!({"id": "k2", "name": "b"})),
        ],
    );
    assert_eq!(groups.len(), 1, "one MERGE per (table, column set)");
    let g = &groups[0];
    assert_eq!(g.what, "upserting 2 rows into table \"things\"");
    assert_eq!(g.create, THINGS_STAGE);
    assert_eq!(g.inserts.len(), 1);
    assert_eq!(
        g.inserts[0].sql,
        "INSERT INTO #eds_stage_0 ([c0], [c1], [c2], [c3], [c4]) VALUES (@P1, @P2, @P3, @P4, @P5), (@P6, @P7, @P8, @P9, @P10)"
    );
    assert_eq!(
        g.inserts[0].params,
        [
            text("k1"),
            text(r#"{"x":1}"#),
            Param::BigInt(Some(1)),
            text("a"),
            at(738_886, 3, 4, 5, 0),
            text("k2"),
            Param::Text(None),
            Param::BigInt(None),
            text("b"),
            Param::DateTime(None),
        ]
    );
    assert_eq!(
        g.apply,
        "MERGE INTO [things] WITH (HOLDLOCK) AS t USING #eds_stage_0 AS s ON t.[id] = s.[c0] \
         WHEN MATCHED THEN UPDATE SET t.[doc] = s.[c1], t.[n] = s.[c2], t.[name] = s.[c3], t.[updatedDate] = s.[c4] \
         WHEN NOT MATCHED BY TARGET THEN INSERT ([id], [doc], [n], [name], [updatedDate]) \
         VALUES (s.[c0], s.[c1], s.[c2], s.[c3], s.[c4]);"
    );
    assert_eq!(g.drop, "DROP TABLE #eds_stage_0");
}

#[test]
fn standard_update_sets_only_the_diff_and_whole_row_updates_set_everything() {
    let s = things();
    let groups = statements(
        &s,
        &[
            upd("things", json!({"id": "k1", "name": "a2", "n": 999}), Some(&["name"])),
            upd("things", json!({"id": "k2", "name": "b2"}), None),
            upd("things", json!({"id": "k3", "name": "c"}), Some(&["name"])),
            upd("things", json!({"id": "k4", "n": 4}), Some(&["n", "unknown"])),
            upd("things", json!({"id": "k5", "name": "only key"}), Some(&["id"])),
        ],
    );
    let applies: Vec<&str> = groups.iter().map(|g| g.apply.as_str()).collect();
    let insert = " WHEN NOT MATCHED BY TARGET THEN INSERT ([id], [doc], [n], [name], [updatedDate]) \
                  VALUES (s.[c0], s.[c1], s.[c2], s.[c3], s.[c4]);";
    let head = "MERGE INTO [things] WITH (HOLDLOCK) AS t USING #eds_stage_{} AS s ON t.[id] = s.[c0]";
    let merge = |n: usize, set: &str| format!("{}{set}{insert}", head.replace("{}", &n.to_string()));
    assert_eq!(
        applies,
        [
            merge(0, " WHEN MATCHED THEN UPDATE SET t.[name] = s.[c3]"),
            merge(
                1,
                " WHEN MATCHED THEN UPDATE SET t.[doc] = s.[c1], t.[n] = s.[c2], t.[name] = s.[c3], t.[updatedDate] = s.[c4]"
            ),
            merge(2, " WHEN MATCHED THEN UPDATE SET t.[n] = s.[c2]"),
            merge(3, ""),
        ],
        "groups by column set; a diff naming only the key (or nothing known) has no update clause"
    );
    assert_eq!(groups[0].what, "upserting 2 rows into table \"things\"", "k1 and k3 share the column set");
    assert_eq!(
        groups[0].inserts[0].params[..5],
        [text("k1"), Param::Text(None), Param::BigInt(Some(999)), text("a2"), Param::DateTime(None)]
    );
    // A diff column missing from the row image is staged as NULL and so set to NULL explicitly.
    assert_eq!(
        groups[2].inserts[0].params,
        [text("k4"), Param::Text(None), Param::BigInt(Some(4)), Param::Text(None), Param::DateTime(None)]
    );
}

#[test]
fn deletes_stage_the_keys_and_join() {
    let s = things();
    let groups = statements(
        &s,
        &[
            del("things", &["k1"], Some(json!({"id": "k1", "name": "x", "n": "not even a number"}))),
            del("things", &["k2"], None),
        ],
    );
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g.what, "deleting 2 rows from table \"things\"");
    assert_eq!(
        g.create,
        "IF OBJECT_ID(N'tempdb..#eds_stage_0') IS NOT NULL DROP TABLE #eds_stage_0;\nCREATE TABLE #eds_stage_0 \
         ([c0] nvarchar(255) COLLATE SQL_Latin1_General_CP1_CI_AS NULL)"
    );
    assert_eq!(g.inserts[0].sql, "INSERT INTO #eds_stage_0 ([c0]) VALUES (@P1), (@P2)");
    assert_eq!(g.inserts[0].params, [text("k1"), text("k2")], "only key values are converted");
    assert_eq!(g.apply, "DELETE t FROM [things] AS t INNER JOIN #eds_stage_0 AS s ON t.[id] = s.[c0]");
    assert_eq!(g.drop, "DROP TABLE #eds_stage_0");
}

fn loc_things() -> Schema {
    schema(json!({"table": "loc_things", "modelVersion": "v1", "primaryKeys": ["locationId", "id"],
        "properties": {"locationId": {"type": "string"}, "id": {"type": "string"}, "v": {"type": "integer", "nullable": true}}}))
}

#[test]
fn composite_keys_come_from_the_row_by_name() {
    let s = loc_things();
    let ev = |op: &str, loc: &str, v: i64| {
        json!({"operation": op, "table": "loc_things", "key": ["gcp-us-west1", "abc"], "modelVersion": "v1",
               "after": {"v": v, "id": "abc", "locationId": loc}, "before": {"id": "abc", "locationId": loc}})
    };
    let groups = statements(&s, &[ev("INSERT", "L1", 1)]);
    assert_eq!(
        groups[0].apply,
        "MERGE INTO [loc_things] WITH (HOLDLOCK) AS t USING #eds_stage_0 AS s ON t.[locationId] = s.[c0] AND t.[id] = s.[c1] \
         WHEN MATCHED THEN UPDATE SET t.[v] = s.[c2] WHEN NOT MATCHED BY TARGET THEN INSERT ([locationId], [id], [v]) \
         VALUES (s.[c0], s.[c1], s.[c2]);"
    );
    assert_eq!(groups[0].inserts[0].params, [text("L1"), text("abc"), Param::BigInt(Some(1))]);
    let groups = statements(&s, &[ev("DELETE", "L2", 0)]);
    assert_eq!(
        groups[0].apply,
        "DELETE t FROM [loc_things] AS t INNER JOIN #eds_stage_0 AS s ON t.[locationId] = s.[c0] AND t.[id] = s.[c1]"
    );
    assert_eq!(groups[0].inserts[0].params, [text("L2"), text("abc")], "never the region from `key`");
    assert_eq!(
        groups[0].create,
        "IF OBJECT_ID(N'tempdb..#eds_stage_0') IS NOT NULL DROP TABLE #eds_stage_0;\nCREATE TABLE #eds_stage_0 \
         ([c0] nvarchar(255) COLLATE SQL_Latin1_General_CP1_CI_AS NULL, [c1] nvarchar(255) COLLATE SQL_Latin1_General_CP1_CI_AS NULL)"
    );
    // A composite key without a row image cannot be resolved: the change is rejected.
    let err =
        statements_for(&s, &created(&s), &changes(&[del("loc_things", &["gcp-us-west1", "abc"], None)])).unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected);
    assert!(err.message.contains("\"locationId\"") && err.message.contains("loc_things"), "{}", err.message);
}

#[test]
fn region_prefixed_keys_use_the_primary_key_not_the_region() {
    let s = things();
    let groups = statements(
        &s,
        &[
            del("things", &["gcp-us-west1", "abc"], None),
            del("things", &["gcp-us-west1", "def"], Some(json!({"id": "def"}))),
            json!({"operation": "INSERT", "table": "things", "key": ["gcp-us-west1", "ghi"], "modelVersion": "v1", "after": {"name": "no id in the row"}}),
        ],
    );
    assert_eq!(groups[0].inserts[0].params, [text("abc"), text("def")]);
    assert_eq!(groups[1].inserts[0].params[0], text("ghi"));
}

#[test]
fn the_same_key_twice_goes_to_a_later_round_and_deletes_come_first_in_a_round() {
    let s = things();
    let e = |region: &str, name: &str| json!({"operation": "INSERT", "table": "things", "key": [region, "k"], "modelVersion": "v1", "after": {"id": "k", "name": name}});
    let groups = statements(
        &s,
        &[e("r1", "first"), del("things", &["gone"], None), e("r2", "second"), ins("things", json!({"id": "other"}))],
    );
    let what: Vec<&str> = groups.iter().map(|g| g.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "deleting 1 rows from table \"things\"",
            "upserting 2 rows into table \"things\"",
            "upserting 1 rows into table \"things\""
        ]
    );
    assert_eq!(groups[1].inserts[0].params[0], text("k"));
    assert_eq!(groups[1].inserts[0].params[3], text("first"));
    assert_eq!(groups[1].inserts[0].params[5], text("other"));
    assert_eq!(groups[2].inserts[0].params[3], text("second"), "the later change of the key is applied later");
    let stages: Vec<&str> = groups.iter().map(|g| g.drop.as_str()).collect();
    assert_eq!(stages, ["DROP TABLE #eds_stage_0", "DROP TABLE #eds_stage_1", "DROP TABLE #eds_stage_2"]);
}

#[test]
fn a_98_column_table_is_staged_under_the_parameter_limit() {
    let order = Schema::from_json(ORDER.as_bytes()).unwrap();
    assert_eq!(order.columns().len(), 98);
    let events: Vec<Value> = (0..50).map(|i| ins("order", json!({"id": format!("o{i}")}))).collect();
    let groups = statements(&order, &events);
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    // 2,000 / 98 = 20 rows per statement.
    let rows: Vec<usize> = g.inserts.iter().map(|st| st.params.len() / 98).collect();
    assert_eq!(rows, [20, 20, 10]);
    for st in &g.inserts {
        assert!(st.params.len() <= MAX_STATEMENT_PARAMS && st.params.len() < 2_100);
        assert_eq!(st.sql.matches("@P").count(), st.params.len());
        assert!(st.sql.ends_with(&format!("@P{})", st.params.len())), "numbering restarts in each statement");
    }
    assert_eq!(g.apply.matches("WITH (HOLDLOCK)").count(), 1);
    assert!(!g.apply.contains("@P"), "the MERGE itself has no parameters");

    // A one-column delete stages at most 1,000 rows per INSERT (the row constructor limit).
    let deletes: Vec<Value> = (0..2_500).map(|i| del("things", &[&format!("k{i}")], None)).collect();
    let groups = statements(&things(), &deletes);
    let rows: Vec<usize> = groups[0].inserts.iter().map(|st| st.params.len()).collect();
    assert_eq!(rows, [1_000, 1_000, 500]);
    assert_eq!(MAX_INSERT_ROWS, 1_000);
}

#[test]
fn stage_inserts_chunk_and_number_parameters() {
    let rows = vec![
        vec![text("a"), Param::BigInt(Some(1))],
        vec![text("b"), Param::BigInt(None)],
        vec![text("c"), Param::Bit(Some(true))],
    ];
    let st = stage_inserts("#s", 2, &rows);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].sql, "INSERT INTO #s ([c0], [c1]) VALUES (@P1, @P2), (@P3, @P4), (@P5, @P6)");
    assert_eq!(st[0].params.len(), 6);
    let wide: Vec<Vec<Param>> = (0..3).map(|_| vec![Param::BigInt(Some(1)); 1_500]).collect();
    let st = stage_inserts("#s", 1_500, &wide);
    assert_eq!(st.iter().map(|s| s.params.len()).collect::<Vec<_>>(), [1_500, 1_500, 1_500], "one row per statement");
    assert_eq!(
        create_stage_sql("#s", &["BIGINT", "BIT"]),
        "IF OBJECT_ID(N'tempdb..#s') IS NOT NULL DROP TABLE #s;\nCREATE TABLE #s ([c0] BIGINT NULL, [c1] BIT NULL)"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile names and values

const HOSTILE: &str = "it's \"quoted\" \\back\\slash\\ $_H_$ '); DROP TABLE x; -- 😀 tab\there\nnew\r\nline \\N é ]]";

#[test]
fn identifiers_are_always_bracketed() {
    assert_eq!(quote_ident("a]b").unwrap(), "[a]]b]");
    assert_eq!(quote_ident("updatedDate").unwrap(), "[updatedDate]");
    assert_eq!(quote_ident("order").unwrap(), "[order]");
    assert_eq!(quote_ident("x\"; DROP TABLE y; --").unwrap(), "[x\"; DROP TABLE y; --]");
    assert_eq!(quote_ident("x]; DROP TABLE y; --").unwrap(), "[x]]; DROP TABLE y; --]");
    assert_eq!(quote_ident("it's").unwrap(), "[it's]");
    assert_eq!(quote_ident("[a]").unwrap(), "[[a]]]");
    assert_eq!(quote_ident(&"😀".repeat(64)).unwrap().chars().count(), 66, "64 emoji are 128 UTF-16 units");
    for bad in ["", "a\0b", &"a".repeat(129), &"😀".repeat(65)] {
        assert_eq!(quote_ident(bad).unwrap_err().class, ErrorClass::Rejected, "{bad:?}");
    }
}

#[test]
fn a_dropped_table_is_named_with_the_logins_schema() {
    assert_eq!(drop_table_sql("dbo", "order").unwrap(), "DROP TABLE IF EXISTS [dbo].[order]");
    assert_eq!(
        drop_table_sql("sales]x", "x]; DROP TABLE y; --").unwrap(),
        "DROP TABLE IF EXISTS [sales]]x].[x]]; DROP TABLE y; --]"
    );
    assert_eq!(drop_table_sql("dbo", "").unwrap_err().class, ErrorClass::Rejected);
}

#[test]
fn hostile_names_are_quoted_everywhere() {
    let table = "x]; DROP TABLE y; --";
    let s = schema(json!({"table": table, "modelVersion": "v1", "primaryKeys": ["Id Key"], "properties": {
        "Id Key": {"type": "string"},
        "quo\"te": {"type": "integer", "nullable": true},
        "a]b": {"type": "string", "nullable": true},
        "it's": {"type": "boolean", "nullable": true}
    }}));
    let create = create_table_sql(&s).unwrap();
    assert_eq!(
        create,
        "CREATE TABLE [x]]; DROP TABLE y; --] (\n\t[Id Key] NVARCHAR(255) NOT NULL,\n\t[a]]b] NVARCHAR(MAX) NULL,\n\
         \t[it's] BIT NULL,\n\t[quo\"te] BIGINT NULL,\n\tPRIMARY KEY ([Id Key])\n)"
    );
    let e = json!({"operation": "UPDATE", "table": table, "key": ["K1"], "modelVersion": "v1", "diff": ["a]b", "it's"],
        "after": {"Id Key": "K1", "quo\"te": 2, "a]b": "v", "it's": false}});
    let groups = statements(&s, &[e]);
    assert_eq!(
        groups[0].apply,
        "MERGE INTO [x]]; DROP TABLE y; --] WITH (HOLDLOCK) AS t USING #eds_stage_0 AS s ON t.[Id Key] = s.[c0] \
         WHEN MATCHED THEN UPDATE SET t.[a]]b] = s.[c1], t.[it's] = s.[c2] \
         WHEN NOT MATCHED BY TARGET THEN INSERT ([Id Key], [a]]b], [it's], [quo\"te]) VALUES (s.[c0], s.[c1], s.[c2], s.[c3]);"
    );
    assert_eq!(groups[0].inserts[0].params, [text("K1"), text("v"), Param::Bit(Some(false)), Param::BigInt(Some(2))]);
    let groups = statements(&s, &[del(table, &["K1"], None)]);
    assert_eq!(
        groups[0].apply,
        "DELETE t FROM [x]]; DROP TABLE y; --] AS t INNER JOIN #eds_stage_0 AS s ON t.[Id Key] = s.[c0]"
    );
}

#[test]
fn hostile_values_are_only_ever_parameters() {
    let s = things();
    let long: String = "ab\\\t😀'\"\n".repeat(512 * 1024 / 8);
    let values = [
        HOSTILE,
        "'); DROP TABLE x; --",
        "$_H_$",
        "\\'\\\\",
        "😀🇺🇸",
        "x'; DELETE FROM things; SELECT '",
        long.as_str(),
    ];
    let mut events = Vec::new();
    for (i, v) in values.iter().enumerate() {
        events.push(ins("things", json!({"id": format!("{v}{i}"), "name": v, "doc": {"q": v}})));
    }
    events.push(upd("things", json!({"id": HOSTILE, "name": HOSTILE}), Some(&["name"])));
    events.push(del("things", &[HOSTILE], None));
    let groups = statements(&s, &events);
    let all_sql: Vec<&str> = groups
        .iter()
        .flat_map(|g| {
            [g.create.as_str(), g.apply.as_str(), g.drop.as_str()]
                .into_iter()
                .chain(g.inserts.iter().map(|s| s.sql.as_str()))
        })
        .collect();
    for sql in &all_sql {
        for v in &values {
            assert!(!sql.contains(v), "a value reached SQL text: {sql}");
        }
        assert!(
            !sql.contains("DROP TABLE x") && !sql.contains("$_H_$") && !sql.contains('😀') && !sql.contains('\\'),
            "{sql}"
        );
    }
    let params: Vec<&Param> = groups.iter().flat_map(|g| g.inserts.iter().flat_map(|s| s.params.iter())).collect();
    for (i, v) in values.iter().enumerate() {
        assert!(params.contains(&&text(v)), "{v:?} is bound exactly");
        assert!(params.contains(&&text(&format!("{v}{i}"))));
        assert!(params.contains(&&text(&json!({"q": v}).to_string())), "JSON text of {v:?}");
    }
    assert!(params.contains(&&text(HOSTILE)));
    // The backslashes stay as they are (EDS escaped them and SQL Server stored the escapes).
    assert!(params.contains(&&text("\\'\\\\")));
}

// ---------------------------------------------------------------------------------------------
// Types and values

fn vals() -> Schema {
    schema(
        json!({"table": "vals", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id", "reqN"], "properties": {
            "id": {"type": "string"},
            "s": {"type": "string", "nullable": true},
            "j": {"type": "object", "nullable": true},
            "jreq": {"type": "object"},
            "ja": {"type": "array", "items": {"type": "object"}},
            "big": {"type": "integer", "nullable": true},
            "reqN": {"type": "integer"},
            "f": {"type": "number", "nullable": true},
            "b": {"type": "boolean", "nullable": true},
            "ts": {"type": "string", "format": "date-time", "nullable": true},
            "st": {"type": "array", "items": {"type": "enum", "enum": ["A", "B"]}, "nullable": true},
            "u": {"nullable": true}
        }}),
    )
}

/// The staged values of one inserted row, by column name.
fn staged(schema: &Schema, info: &TableInfo, row: Value) -> Result<HashMap<String, Param>, DriverError> {
    let groups = statements_for(schema, info, &changes(&[ins(schema.table(), row)]))?;
    let params = groups[0].inserts[0].params.clone();
    Ok(schema.column_names().map(str::to_owned).zip(params).collect())
}

#[test]
fn ddl_types_follow_the_issue() {
    assert_eq!(ddl_type(&ColumnType::Text, false), "NVARCHAR(MAX)");
    assert_eq!(ddl_type(&ColumnType::Text, true), "NVARCHAR(255)", "a primary key cannot be MAX");
    assert_eq!(ddl_type(&ColumnType::DateTime, false), "DATETIMEOFFSET(7)");
    assert_eq!(ddl_type(&ColumnType::Integer, false), "BIGINT");
    assert_eq!(ddl_type(&ColumnType::Integer, true), "BIGINT");
    assert_eq!(ddl_type(&ColumnType::Number, false), "FLOAT");
    assert_eq!(ddl_type(&ColumnType::Boolean, false), "BIT");
    assert_eq!(ddl_type(&ColumnType::Object, false), "NVARCHAR(MAX)");
    assert_eq!(ddl_type(&ColumnType::Array { items: None }, false), "NVARCHAR(MAX)");
    assert_eq!(ddl_type(&ColumnType::Enum { values: vec![] }, false), "NVARCHAR(64)");
    assert_eq!(ddl_type(&ColumnType::Unknown("uuid".into()), false), "NVARCHAR(MAX)");
    assert_eq!(ddl_type(&ColumnType::Unknown(String::new()), true), "NVARCHAR(255)");
}

#[test]
fn values_are_converted_in_rust_by_column_type() {
    let s = vals();
    let info = created(&s);
    let v = staged(
        &s,
        &info,
        json!({"id": "a", "s": "text", "j": {"a": [1, "b"]}, "jreq": {"r": 1}, "ja": [{"x": 1}, [], "s", null],
               "big": 9223372036854775807i64, "reqN": -9223372036854775808i64, "f": 0.1, "b": true,
               "ts": "2024-03-01T10:00:00+05:30", "st": "B", "u": {"any": "thing"}}),
    )
    .unwrap();
    assert_eq!(v["s"], text("text"));
    assert_eq!(v["j"], text(r#"{"a":[1,"b"]}"#));
    assert_eq!(v["jreq"], text(r#"{"r":1}"#));
    assert_eq!(v["ja"], text(r#"[{"x":1},[],"s",null]"#));
    assert_eq!(v["big"], Param::BigInt(Some(i64::MAX)));
    assert_eq!(v["reqN"], Param::BigInt(Some(i64::MIN)));
    assert_eq!(v["f"], Param::Float(Some(0.1)));
    assert_eq!(v["b"], Param::Bit(Some(true)));
    assert_eq!(v["ts"], at(738_945, 4, 30, 0, 0), "the offset is honoured: stored as the UTC instant");
    assert_eq!(v["st"], text("B"));
    assert_eq!(v["u"], text(r#"{"any":"thing"}"#), "unknown types are text");

    // Missing values: NULL for nullable booleans and integers (EDS forced 0), `{}`/`[]` for
    // not-null JSON columns, no default for enums.
    let v = staged(&s, &info, json!({"id": "b", "j": null, "jreq": null})).unwrap();
    assert_eq!(v["b"], Param::Bit(None));
    assert_eq!(v["big"], Param::BigInt(None));
    assert_eq!(v["reqN"], Param::BigInt(None), "left for NOT NULL to reject, never 0");
    assert_eq!(v["j"], Param::Text(None));
    assert_eq!(v["jreq"], text("{}"));
    assert_eq!(v["ja"], text("[]"));
    assert_eq!(v["st"], Param::Text(None));
    assert_eq!(v["ts"], Param::DateTime(None));

    // Lenient but exact conversions.
    let v =
        staged(&s, &info, json!({"id": "c", "big": 3.0, "reqN": "12", "f": "2.5", "b": 0, "j": "a string"})).unwrap();
    assert_eq!((v["big"].clone(), v["reqN"].clone()), (Param::BigInt(Some(3)), Param::BigInt(Some(12))));
    assert_eq!(v["f"], Param::Float(Some(2.5)));
    assert_eq!(v["b"], Param::Bit(Some(false)));
    assert_eq!(v["j"], text("\"a string\""), "an object column always holds JSON text");
    let v = staged(&s, &info, json!({"id": "d", "b": "TRUE", "f": 7})).unwrap();
    assert_eq!((v["b"].clone(), v["f"].clone()), (Param::Bit(Some(true)), Param::Float(Some(7.0))));

    // What the column cannot hold is rejected, naming column, table and value.
    for (row, column, value) in [
        (json!({"id": "e", "big": 18446744073709551615u64}), "big", "18446744073709551615"),
        (json!({"id": "e", "big": 2.5}), "big", "2.5"),
        (json!({"id": "e", "big": "12abc"}), "big", "\"12abc\""),
        (json!({"id": "e", "big": true}), "big", "true"),
        (json!({"id": "e", "f": "NaN"}), "f", "\"NaN\""),
        (json!({"id": "e", "b": 2}), "b", "2"),
        (json!({"id": "e", "b": "yes please"}), "b", "\"yes please\""),
        (json!({"id": "e", "ts": "now"}), "ts", "\"now\""),
        (json!({"id": "e", "ts": "yesterday"}), "ts", "\"yesterday\""),
        (json!({"id": "e", "ts": "2024-02-30T00:00:00Z"}), "ts", "\"2024-02-30T00:00:00Z\""),
        (json!({"id": "e", "ts": 1720732611}), "ts", "1720732611"),
        (json!({"id": "e", "ts": "0001-01-01T00:00:00+01:00"}), "ts", "years 1 to 9999"),
    ] {
        let err = staged(&s, &info, row.clone()).unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{row}");
        assert!(
            err.message.contains(&format!("column \"{column}\" of table \"vals\"")) && err.message.contains(value),
            "{row}: {}",
            err.message
        );
    }
}

#[test]
fn an_eds_made_table_is_written_by_its_own_types() {
    // EDS: VARCHAR(64) key, NVARCHAR(MAX) date-times and JSON, BIT, BIGINT, FLOAT, VARCHAR(64) enum.
    let s = vals();
    let info = table_info(vec![
        cat("id", "varchar", Some(64), false, true),
        cat("s", "nvarchar", Some(-1), true, false),
        cat("j", "nvarchar", Some(-1), true, false),
        cat("jreq", "nvarchar", Some(-1), false, false),
        cat("ja", "nvarchar", Some(-1), false, false),
        cat("big", "bigint", None, true, false),
        cat("reqN", "int", None, false, false),
        cat("f", "decimal", None, true, false),
        cat("b", "bit", None, true, false),
        cat("ts", "nvarchar", Some(-1), true, false),
        cat("st", "varchar", Some(64), true, false),
        cat("u", "nvarchar", Some(-1), true, false),
    ])
    .unwrap();
    check_types(&s, &info).unwrap();
    let v = staged(
        &s,
        &info,
        json!({"id": "a", "ts": "2024-07-11T21:16:51.708Z", "f": 12.345, "big": 5, "reqN": 6, "b": false}),
    )
    .unwrap();
    assert_eq!(v["ts"], text("2024-07-11T21:16:51.708Z"), "a text date-time column gets the text as it came");
    assert_eq!(v["f"], text("12.345"), "a decimal column gets exact decimal text");
    assert_eq!(
        v["reqN"],
        Param::BigInt(Some(6)),
        "an INT column is bound as BIGINT; overflow is SQL Server's error 8115"
    );
    let groups = statements_for(&s, &info, &changes(&[ins("vals", json!({"id": "a"}))])).unwrap();
    assert!(
        groups[0]
            .create
            .contains("([c0] varchar(64) COLLATE SQL_Latin1_General_CP1_CI_AS NULL, [c1] BIT NULL, [c2] BIGINT NULL"),
        "the staged key has the key's own type and collation, so the MERGE seeks the primary key: {}",
        groups[0].create
    );
    // Even a date-time word is only text here (nothing evaluates it).
    assert_eq!(staged(&s, &info, json!({"id": "a", "ts": "now"})).unwrap()["ts"], text("now"));
}

#[test]
fn storage_and_type_compatibility() {
    assert_eq!(Storage::of("NVARCHAR"), Storage::Text);
    assert_eq!(Storage::of("datetime2"), Storage::DateTime);
    assert_eq!(Storage::of("geography"), Storage::Other);
    let s = vals();
    let mut info = created(&s);
    check_types(&s, &info).unwrap();
    info.columns.get_mut("b").unwrap().storage = Storage::Integer;
    info.columns.get_mut("b").unwrap().type_sql = Some("int".into());
    let err = check_types(&s, &info).unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert_eq!(err.message, "SQL Server: column b of table vals is int at the destination but the schema says boolean");
    for (kind, storage, holds) in [
        (ColumnType::DateTime, Storage::DateTime, true),
        (ColumnType::DateTime, Storage::Integer, false),
        (ColumnType::Integer, Storage::Decimal, true),
        (ColumnType::Number, Storage::Integer, false),
        (ColumnType::Object, Storage::Json, true),
        (ColumnType::Enum { values: vec![] }, Storage::Text, true),
        (ColumnType::Text, Storage::Uuid, true),
        (ColumnType::Boolean, Storage::Other, false),
    ] {
        assert_eq!(storage.holds(&kind), holds, "{kind} in {storage:?}");
    }
}

#[test]
fn date_times_are_parsed_exactly() {
    let p = |s: &str| parse_datetime(s).unwrap();
    let i = |days: u32, secs: u64, ticks: u64| Instant { days, ticks: secs * 10_000_000 + ticks };
    assert_eq!(p("2024-01-02T03:04:05Z"), i(738_886, 11_045, 0));
    assert_eq!(p("2024-01-02 03:04:05"), i(738_886, 11_045, 0), "no offset is UTC; a space may separate");
    assert_eq!(p("2024-01-02T03:04:05.1234567+00:00"), i(738_886, 11_045, 1_234_567));
    assert_eq!(p("2024-01-02T03:04:05.12345675Z"), i(738_886, 11_045, 1_234_568), "rounded to 100 ns");
    assert_eq!(p("2024-01-02T03:04:05.5Z"), i(738_886, 11_045, 5_000_000));
    assert_eq!(p("2024-01-02T03:04Z"), i(738_886, 11_040, 0));
    assert_eq!(p("2024-01-02"), i(738_886, 0, 0));
    assert_eq!(p("2024-03-01T01:00:00+05:30"), i(738_944, 70_200, 0), "back over a leap day");
    assert_eq!(p("2024-03-01T01:00:00 +0530"), p("2024-03-01T01:00:00+05:30"));
    assert_eq!(p("2023-12-31T23:00:00-02"), i(738_885, 3_600, 0), "into the next year");
    assert_eq!(p("1969-07-20T20:17:40.123456Z"), i(718_997, 73_060, 1_234_560), "before 1970");
    assert_eq!(p("1901-12-13T20:45:52Z"), i(694_306, 74_752, 0));
    assert_eq!(p("2100-01-01T00:00:00Z"), i(766_644, 0, 0), "after 2038");
    assert_eq!(p("2016-12-31T23:59:60Z"), p("2017-01-01T00:00:00Z"), "a leap second rolls over");
    assert_eq!(p("0001-01-01T00:00:00Z"), i(0, 0, 0));
    assert_eq!(p("9999-12-31T23:59:59.9999999Z"), i(3_652_058, 86_399, 9_999_999));
    assert_eq!(p("2024-01-02t03:04:05z"), p("2024-01-02T03:04:05Z"));
    for bad in [
        "now",
        "today",
        "yesterday",
        "epoch",
        "infinity",
        "",
        "2024",
        "2024-1-02",
        "2024-13-01",
        "2024-02-30",
        "2023-02-29",
        "2024-01-02T24:00:00Z",
        "2024-01-02T03:60Z",
        "2024-01-02T03:04:05.Z",
        "2024-01-02T03:04:05+5",
        "2024-01-02T03:04:05Zjunk",
        "2024-01-02T",
        "20240102T030405Z",
        " 2024-01-02",
        "2024-01-02T03:04:05+24:00",
    ] {
        assert_eq!(parse_datetime(bad), Err(DateTimeError::NotIso8601), "{bad:?}");
    }
    for far in [
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59.99999995Z",
        "9999-12-31T23:00:00-01:00",
        "0000-12-31T00:00:00Z",
    ] {
        assert_eq!(parse_datetime(far), Err(DateTimeError::OutOfRange), "{far:?}");
    }
}

#[test]
fn params_become_tiberius_values() {
    assert!(matches!(text("x").to_sql(), ColumnData::String(Some(s)) if s == "x"));
    assert!(matches!(Param::Text(None).to_sql(), ColumnData::String(None)));
    assert!(matches!(Param::BigInt(Some(-1)).to_sql(), ColumnData::I64(Some(-1))));
    assert!(matches!(Param::Float(None).to_sql(), ColumnData::F64(None)));
    assert!(matches!(Param::Bit(Some(true)).to_sql(), ColumnData::Bit(Some(true))));
    match at(738_886, 3, 4, 5, 7).to_sql() {
        ColumnData::DateTimeOffset(Some(dto)) => {
            assert_eq!(dto.offset(), 0);
            assert_eq!(dto.datetime2().date().days(), 738_886);
            assert_eq!(dto.datetime2().time().increments(), 110_450_000_007);
            assert_eq!(dto.datetime2().time().scale(), 7);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(Param::DateTime(None).to_sql(), ColumnData::DateTimeOffset(None)));
}

// ---------------------------------------------------------------------------------------------
// DDL

#[test]
fn create_table_follows_the_schema() {
    let s = vals();
    assert_eq!(
        create_table_sql(&s).unwrap(),
        "CREATE TABLE [vals] (\n\t[id] NVARCHAR(255) NOT NULL,\n\t[b] BIT NULL,\n\t[big] BIGINT NULL,\n\t[f] FLOAT NULL,\n\
         \t[j] NVARCHAR(MAX) NULL,\n\t[ja] NVARCHAR(MAX) NULL,\n\t[jreq] NVARCHAR(MAX) NULL,\n\t[reqN] BIGINT NOT NULL,\n\
         \t[s] NVARCHAR(MAX) NULL,\n\t[st] NVARCHAR(64) NULL,\n\t[ts] DATETIMEOFFSET(7) NULL,\n\t[u] NVARCHAR(MAX) NULL,\n\
         \tPRIMARY KEY ([id])\n)"
    );
    let order = Schema::from_json(ORDER.as_bytes()).unwrap();
    let sql = create_table_sql(&order).unwrap();
    assert!(sql.starts_with("CREATE TABLE [order] (\n\t[id] NVARCHAR(255) NOT NULL,\n"), "{sql}");
    assert!(sql.ends_with("\tPRIMARY KEY ([id])\n)"));
    assert_eq!(sql.lines().count(), 98 + 3);
    for line in [
        "\t[updatedDate] DATETIMEOFFSET(7) NULL,",
        "\t[createdDate] DATETIMEOFFSET(7) NOT NULL,",
        "\t[paid] BIT NOT NULL,",
        "\t[inspectionCount] BIGINT NOT NULL,",
        "\t[mileageIn] FLOAT NULL,",
        "\t[labels] NVARCHAR(MAX) NOT NULL,",
        "\t[status] NVARCHAR(64) NOT NULL,",
        "\t[customFields] NVARCHAR(MAX) NULL,",
    ] {
        assert!(sql.contains(line), "{line}");
    }
    // A composite key: every key column NOT NULL, even when the schema says nullable.
    let c = schema(json!({"table": "c", "modelVersion": "v1", "primaryKeys": ["a", "b"], "properties": {
        "a": {"type": "string", "nullable": true}, "b": {"type": "integer"}}}));
    assert_eq!(
        create_table_sql(&c).unwrap(),
        "CREATE TABLE [c] (\n\t[a] NVARCHAR(255) NOT NULL,\n\t[b] BIGINT NOT NULL,\n\tPRIMARY KEY ([a], [b])\n)"
    );
}

#[test]
fn migrations_only_add_columns_and_drop_not_null_keeping_type_and_collation() {
    let v1 = schema(
        json!({"table": "mig", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id", "a", "k"], "properties": {
        "id": {"type": "string"}, "a": {"type": "string"}, "k": {"type": "string"}}}),
    );
    let info = table_info(vec![
        cat("id", "varchar", Some(64), false, true),
        cat("a", "varchar", Some(64), false, false),
        cat("k", "nvarchar", Some(-1), false, false),
        cat("localOnly", "decimal", None, false, false),
        cat("loose", "bigint", None, true, false),
    ])
    .unwrap();
    assert!(migration_sql(&v1, &info).unwrap()[0].starts_with("ALTER TABLE [mig] ALTER COLUMN [localOnly]"));
    let v2 = schema(
        json!({"table": "mig", "modelVersion": "v2", "primaryKeys": ["id"], "required": ["id", "c", "k"], "properties": {
        "id": {"type": "string"}, "a": {"type": "string", "nullable": true}, "k": {"type": "string"},
        "c": {"type": "integer"}, "d]x": {"type": "string", "format": "date-time"}}}),
    );
    assert_eq!(
        migration_sql(&v2, &info).unwrap(),
        [
            "ALTER TABLE [mig] ADD [c] BIGINT NULL, [d]]x] DATETIMEOFFSET(7) NULL",
            "ALTER TABLE [mig] ALTER COLUMN [a] varchar(64) COLLATE SQL_Latin1_General_CP1_CI_AS NULL",
            "ALTER TABLE [mig] ALTER COLUMN [localOnly] decimal(12,2) NULL",
        ],
        "added columns are nullable even when required; the key and still-required k keep NOT NULL; never a DROP"
    );
    let same = created(&v2);
    assert!(migration_sql(&v2, &same).unwrap().is_empty());
    // A NOT NULL column whose type eds would not put into SQL cannot be loosened: configuration.
    let mut odd = info.clone();
    odd.columns.get_mut("a").unwrap().type_sql = None;
    let err = migration_sql(&v2, &odd).unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(err.message.contains("\"a\""), "{}", err.message);
}

#[test]
fn catalog_rows_describe_the_table() {
    assert_eq!(type_sql("nvarchar", Some(-1), None, None, None).as_deref(), Some("nvarchar(max)"));
    assert_eq!(type_sql("VARCHAR", Some(64), None, None, None).as_deref(), Some("varchar(64)"));
    assert_eq!(type_sql("decimal", None, Some(12), Some(2), None).as_deref(), Some("decimal(12,2)"));
    assert_eq!(type_sql("datetime2", None, None, None, Some(3)).as_deref(), Some("datetime2(3)"));
    assert_eq!(type_sql("datetime", None, None, None, Some(3)).as_deref(), Some("datetime"));
    assert_eq!(type_sql("bigint", None, Some(19), Some(0), None).as_deref(), Some("bigint"));
    assert_eq!(type_sql("my type); DROP TABLE x; --", None, None, None, None), None);
    assert!(table_info(vec![]).is_none());
    let mut view = cat("id", "nvarchar", Some(10), true, false);
    view.is_table = false;
    let info = table_info(vec![view]).unwrap();
    assert!(!info.is_table && info.primary_key.is_empty());
    let mut odd = cat("id", "nvarchar", Some(10), true, true);
    odd.collation = Some("Latin1'; DROP".into());
    let info = table_info(vec![odd]).unwrap();
    assert_eq!(info.columns["id"].collation, None, "a collation name that is not plain is never used");
    assert!(info.primary_key.contains("id"));
    assert!(CATALOG_SQL.contains("TABLE_CATALOG = DB_NAME()") && CATALOG_SQL.contains("TABLE_SCHEMA = SCHEMA_NAME()"));
    assert!(CATALOG_SQL.contains("TABLE_NAME = @P1"), "the table name is a parameter");
}

// ---------------------------------------------------------------------------------------------
// URL, classification, description

#[test]
fn url_defaults_follow_eds() {
    let s = connect_spec("sqlserver://sa:pw@localhost/shop").unwrap();
    assert_eq!((s.host.as_str(), s.port, s.database.as_deref()), ("localhost", 1433, Some("shop")));
    assert_eq!((s.user.as_str(), s.password.as_str(), s.app_name.as_str()), ("sa", "pw", "eds"));
    assert_eq!(s.encryption, Encryption::Disable, "localhost: encrypt=disable");
    assert_eq!(s.trust, Trust::System);
    for local in ["mssql://u:p@127.0.0.1:1444/d", "sqlserver://u@[::1]:1444/d", "SQLSERVER://u@LOCALHOST/d"] {
        assert_eq!(connect_spec(local).unwrap().encryption, Encryption::Disable, "{local}");
    }
    let s = connect_spec("mssql://u@[::1]:1444/d").unwrap();
    assert_eq!((s.host.as_str(), s.port), ("::1", 1444));
    let s = connect_spec("sqlserver://u:p%40ss%3Aw0rd@db.example.com/my%20db").unwrap();
    assert_eq!(s.encryption, Encryption::Required, "any other host: encryption required");
    assert_eq!((s.password.as_str(), s.database.as_deref()), ("p@ss:w0rd", Some("my db")));
    assert_eq!(DEFAULT_PORT, 1433);
}

#[test]
fn url_parameters_are_honoured_and_eds_parameters_removed() {
    let s = connect_spec(
        "sqlserver://u:p@db.example.com:1500?database=shop&encrypt=disable&app+name=mine&name=ss1&start=2024-01-01\
         &overflow=block&eds-future=1&connection+timeout=30",
    )
    .unwrap();
    assert_eq!((s.port, s.database.as_deref(), s.app_name.as_str()), (1500, Some("shop"), "mine"));
    assert_eq!(s.encryption, Encryption::Disable);
    let s = connect_spec("sqlserver://u@localhost/d?encrypt=true&TrustServerCertificate=true&database=other").unwrap();
    assert_eq!((s.encryption, s.trust.clone(), s.database.as_deref()), (Encryption::Required, Trust::Any, Some("d")));
    let s = connect_spec("sqlserver://u@h/d?encrypt=false&certificate=/etc/ca.pem&App%20Name=x").unwrap();
    assert_eq!(
        (s.encryption, s.trust.clone(), s.app_name.as_str()),
        (Encryption::LoginOnly, Trust::CaFile("/etc/ca.pem".into()), "x")
    );
    assert_eq!(connect_spec("sqlserver://u@h/d?trustServerCertificate=false").unwrap().trust, Trust::System);
    assert_eq!(connect_spec("sqlserver://u@h?").unwrap().database, None, "no database: the login's default");
    // The tiberius configuration can be built for every combination (tiberius panics on some).
    for url in
        ["sqlserver://u@h/d", "sqlserver://u@h/d?trustServerCertificate=true", "sqlserver://u@h/d?certificate=/x"]
    {
        let spec = connect_spec(url).unwrap();
        assert_eq!(spec.tiberius_config("h", 1).get_addr(), "h:1");
    }
}

#[test]
fn bad_urls_are_config_errors_without_the_password() {
    for (bad, problem) in [
        ("postgres://u:hunter2@h/d", "sqlserver or mssql"),
        ("sqlserver://u:hunter2@h:notaport/d", "invalid port"),
        ("sqlserver://u:hunter2@h:0/d", "invalid port"),
        ("u:hunter2@h/d", "expected sqlserver://"),
        ("sqlserver://u:hunter2@h/d?encrypt=sometimes", "encrypt must be"),
        ("sqlserver://u:hunter2@h/d?encrypt=strict", "TDS 8"),
        ("sqlserver://u:hunter2@h/d?trustServerCertificate=maybe", "trustServerCertificate"),
        ("sqlserver://u:hunter2@h/d?trustServerCertificate=true&certificate=/x", "not both"),
        ("sqlserver://u:hunter2@h/d?failoverPartner=x", "unknown parameter"),
        ("sqlserver://u:hunter2@h/d?password=hunter2", "unknown parameter"),
        ("sqlserver://:hunter2@h/d", "no user name"),
        ("sqlserver://h/d", "no user name"),
        ("sqlserver://u:hunter2@h\\SQLEXPRESS/d", "named instances"),
        ("sqlserver://u:hunter2@/d", "no host"),
        ("sqlserver://u:hunter2@h/d/e", "just the database"),
        ("sqlserver://u:hunter2%zz@h/d", "not well escaped"),
    ] {
        let err = connect_spec(bad).unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{bad}");
        assert!(!err.message.contains("hunter2"), "{bad}: {}", err.message);
        assert!(err.message.starts_with("invalid SQL Server URL"), "{}", err.message);
        assert!(err.message.contains(problem), "{bad}: {}", err.message);
    }
    assert_eq!(redact("sqlserver://u:hunter2@h:1433/d?x=1"), "sqlserver://u:***@h:1433/d?x=1");
    assert_eq!(redact("sqlserver://u@h/d?Password=hunter2&pwd=x&a=b"), "sqlserver://u@h/d?Password=***&pwd=***&a=b");
    assert_eq!(redact("sqlserver://h/d"), "sqlserver://h/d");
    assert!(SqlServerDriver::new("sqlserver://u:hunter2@h:x/d").unwrap_err().message.contains("u:***@"));
}

#[test]
fn error_numbers_are_classified() {
    use ErrorClass::*;
    for (number, class) in [
        (1205, Transient),
        (1222, Transient),
        (40613, Transient),
        (18456, Config),
        (4060, Config),
        (229, Config),
        (262, Config),
        (515, Rejected),
        (2627, Rejected),
        (2601, Rejected),
        (8152, Rejected),
        (2628, Rejected),
        (241, Rejected),
        (242, Rejected),
        (245, Rejected),
        (8114, Rejected),
        (8115, Rejected),
        (547, Rejected),
        (8672, Rejected),
        (8003, TooLarge),
        (8623, TooLarge),
        (207, Transient),
        (208, Transient),
        // A trigger's RAISERROR/THROW, its ROLLBACK: the row.
        (50000, Rejected),
        (51234, Rejected),
        (3609, Rejected),
        // Anything unplaced: retried, and the backstop decides about a change that keeps failing.
        (9999, Unknown),
    ] {
        assert_eq!(classify_number(number), class, "{number}");
    }
    let io = tiberius::error::Error::Io { kind: std::io::ErrorKind::ConnectionReset, message: "reset".into() };
    assert_eq!(classify(&io), Transient);
    assert_eq!(classify(&tiberius::error::Error::Protocol("bad".into())), Transient);
    assert_eq!(classify(&tiberius::error::Error::Tls("unknown issuer".into())), Config);
    assert_eq!(classify(&tiberius::error::Error::Routing { host: "h".into(), port: 1 }), Transient);
}

#[tokio::test]
async fn registered_and_described() {
    assert_eq!(crate::find("mssql").map(|d| d.name), Some("Microsoft SQL Server"));
    assert_eq!(crate::find("SQLServer").map(|d| d.name), Some("Microsoft SQL Server"));
    assert!(crate::descriptions().iter().any(|d| d.scheme == "sqlserver"));
    let d = SqlServerDriver::new("sqlserver://u:pw@localhost:1433/database").unwrap();
    conformance::description_is_complete(&d).unwrap();
    assert_eq!(DESCRIPTION.example_url, "sqlserver://user:password@localhost:1433/database");
    assert_eq!(DESCRIPTION.aliases, ["mssql"]);
    assert_eq!(
        DESCRIPTION.fields.iter().map(|f| f.name).collect::<Vec<_>>(),
        ["Database", "Username", "Password", "Hostname", "Port"]
    );
    assert_eq!(DESCRIPTION.fields[4].default, Some("1433"));
    assert!(d.describe().needs_schema && d.describe().kind == crate::driver::Kind::State);
    assert_eq!((d.limits().max_rows, d.limits().max_bytes, d.limits().max_bind_params), (5_000, 8 << 20, 2_100));
    let err = d.write(Batch::Events(&[])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    // An empty batch needs no connection (nothing listens on this port).
    d.write(Batch::Folded(&[])).await.unwrap();
}

#[test]
fn the_driver_can_be_made_outside_a_runtime() {
    let d = SqlServerDriver::new("sqlserver://u:pw@h/d").unwrap();
    let debug = format!("{d:?}");
    assert!(!debug.contains("pw\"") && !debug.contains("password"), "{debug}");
}

// ---------------------------------------------------------------------------------------------
// Against the TDS mock (mssql-mock-tds)

/// The `mssql-mock-tds` binary: on PATH, else in `~/.cargo/bin`. Missing is a failure, never a skip.
fn mock_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("mssql-mock-tds")).collect::<Vec<_>>())
        .unwrap_or_default();
    let in_cargo = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/mssql-mock-tds"));
    on_path.into_iter().chain(in_cargo).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "mssql-mock-tds is not installed (not on PATH, not in ~/.cargo/bin): run \
             `cargo install mssql-mock-tds --locked` (scripts/test.sh does)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `mssql-mock-tds`, killed when dropped.
struct Mock {
    child: Child,
    port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Mock {
    fn start(extra: &[&str]) -> Mock {
        Mock::start_in(extra, None)
    }

    fn start_in(extra: &[&str], dir: Option<tempfile::TempDir>) -> Mock {
        let port = free_port();
        let child = Command::new(mock_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut mock = Mock { child, port, _dir: dir };
        // Ready when the port accepts connections.
        let deadline = Clock::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = mock.child.try_wait().unwrap() {
                panic!("mssql-mock-tds exited before listening on {port}: {status}");
            }
            assert!(Clock::now() < deadline, "mssql-mock-tds did not listen on {port} within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        mock
    }

    /// A mock speaking TLS (TDS 7.4: the handshake inside PRELOGIN packets) with a throwaway
    /// self-signed certificate for localhost/127.0.0.1.
    fn start_tls() -> Mock {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("mock.crt"), dir.path().join("mock.key"));
        std::fs::write(&cert, TEST_CERT).unwrap();
        std::fs::write(&key, TEST_KEY).unwrap();
        let (cert, key) = (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned());
        Mock::start_in(&["--tls-mode", "optional", "--cert", &cert, "--key", &key], Some(dir))
    }

    fn url(&self, query: &str) -> String {
        format!("sqlserver://sa:Secret-pw1@127.0.0.1:{}/eds{query}", self.port)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn wire_test_logs_in_and_selects_one() {
    let mock = Mock::start(&[]);
    let d = SqlServerDriver::new(&mock.url("?name=ss1&app+name=eds-test")).unwrap();
    d.test().await.unwrap();
    d.test().await.unwrap();
    // The alias and localhost (encrypt=disable by default) too.
    let d = SqlServerDriver::new(&format!("mssql://sa:pw@localhost:{}/eds", mock.port)).unwrap();
    d.test().await.unwrap();
}

#[tokio::test]
async fn wire_unreachable_server_is_transient() {
    let port = free_port();
    let d = SqlServerDriver::new(&format!("sqlserver://sa:Secret-pw1@127.0.0.1:{port}/eds")).unwrap();
    let err = d.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(
        err.message.contains(&format!("127.0.0.1:{port}")) && !err.message.contains("Secret-pw1"),
        "{}",
        err.message
    );
    // The lazy connection of a write fails the same way.
    let err = d.ensure_schema(&things()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
}

#[tokio::test]
async fn wire_tls_handshake_failures_are_errors_not_panics() {
    // The mock wraps its TLS handshake answers in TabularResult (0x04) packets where tiberius (and
    // SQL Server) use PreLogin (0x12) packets; tiberius asserts on that. So encryption cannot be
    // proven against this mock — but the driver must turn the panic into an error.
    let mock = Mock::start_tls();
    // A server that requires encryption gets it even with encrypt=disable (tiberius negotiates it).
    for query in ["?encrypt=true&trustServerCertificate=true", "?encrypt=true", "?encrypt=false", "?encrypt=disable"] {
        let d = SqlServerDriver::new(&mock.url(query)).unwrap();
        let err = d.test().await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{query}: {}", err.message);
        assert!(err.message.contains("could not follow the server"), "{query}: {}", err.message);
        assert!(!err.message.contains("Secret-pw1"), "{}", err.message);
        let err = d.ensure_schema(&things()).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{query}: {}", err.message);
    }
}

#[tokio::test]
async fn wire_required_encryption_against_a_server_without_tls_fails() {
    let mock = Mock::start(&[]);
    let d = SqlServerDriver::new(&mock.url("?encrypt=true&trustServerCertificate=true")).unwrap();
    let err = d.test().await.unwrap_err();
    assert!(!err.message.contains("Secret-pw1"), "{}", err.message);
    assert!(err.message.contains("SQL Server:"), "{}", err.message);
}

#[tokio::test]
async fn wire_redirection_is_followed() {
    let target = Mock::start(&[]);
    let port = target.port.to_string();
    let gateway = Mock::start(&["--redirect-host", "127.0.0.1", "--redirect-port", &port]);
    let d = SqlServerDriver::new(&gateway.url("")).unwrap();
    d.test().await.unwrap();
    drop(target);
    let err = d.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
}

#[tokio::test]
async fn wire_catalog_query_and_ddl_go_over_the_wire() {
    // The mock answers every RPC with an empty result, so the catalog never shows the table: the
    // driver reads it (a parameterised RPC), sends CREATE TABLE (a batch), reads it again, and
    // stops with the configuration error for "the name is taken by something that is not a
    // table". Proves the statements travel and their answers decode; not SQL semantics.
    let mock = Mock::start(&[]);
    let d = SqlServerDriver::new(&mock.url("")).unwrap();
    let err = d.ensure_schema(&things()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
    assert!(err.message.contains("\"things\"") && err.message.contains("not a table"), "{}", err.message);
    // The connection stayed usable (a driver-level error does not drop it).
    d.test().await.unwrap();
}

/// A throwaway self-signed certificate (CN=localhost, SAN localhost and 127.0.0.1, valid to 2126)
/// for the mock's TLS mode. Test-only: it protects nothing.
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDJzCCAg+gAwIBAgIUW3rlXjHgjairUMGi4wDpIjU7RhMwDQYJKoZIhvcNAQEL
BQAwFDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNzA2NTAyMloYDzIxMjYx
MTAzMDY1MDIyWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwggEiMA0GCSqGSIb3DQEB
AQUAA4IBDwAwggEKAoIBAQC98GzfFOtdfACcx1UKXp8c6dObS79bxumVVdQD6hFd
yB0Gptv6MrcyZAfYl1OEv2eljFBxhD2BSK4wwVbah4+KbPAGKKbHJap2Up1mZKij
OUFLXmthvf0kPrCDgxOomTt1SQT0Lf9L188UO7AH1KyKh96AzSVicSGan0YdYFa2
hHG2Umqoui/ZZPeXIRGHk+AmeYILSzXISAzQ0MvsQlsf5KKcgyzRwqYLJ/sQ8gEH
E02mGw2YkAVQkIuSSv3anEMn9WZy2+QkVG/yqQrB5eNuVCw7AhZ9y3QzopJ71rw6
kVG48TuyrPuCUxTM0P/6fVgLkNDW2gUkE2onizIz3GQBAgMBAAGjbzBtMB0GA1Ud
DgQWBBTSSG5fET7nEjgrJ4vcb9jRaQ02BjAfBgNVHSMEGDAWgBTSSG5fET7nEjgr
J4vcb9jRaQ02BjAPBgNVHRMBAf8EBTADAQH/MBoGA1UdEQQTMBGCCWxvY2FsaG9z
dIcEfwAAATANBgkqhkiG9w0BAQsFAAOCAQEAGYRw+ap0yKgP21svzP59U+oJ+IOL
NxF8uS8cN/7uUKu5sbxvpqDHMN9ES21gIoCPK2xBlxj6ugQY0YiJJCGwFvoP/qmv
9sXC/faAPEOsLlaK3oPkoyZj4Oktc8Wq9JGvn6V+STHqitgoiEd9K+1qPJzJosrV
9Ia/PSAelNrkUGcRQvHyG5LHC0TPucZj1GV2276B5xGnAQrBoKrJfWvbq/bXHKOY
gmYnBoJTe1FhVtWY/D8j4CRAQnEZrpH8SU74nVSBsKoZE8xXtyDZFqT9xcweQCdS
hC5WvDuCK4T2lmUQGVMonyrWSvuOZnzTL4JKF8HxOLwu+7BRwEprpksEOA==
-----END CERTIFICATE-----
";

/// The test certificate's private key.
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC98GzfFOtdfACc
x1UKXp8c6dObS79bxumVVdQD6hFdyB0Gptv6MrcyZAfYl1OEv2eljFBxhD2BSK4w
wVbah4+KbPAGKKbHJap2Up1mZKijOUFLXmthvf0kPrCDgxOomTt1SQT0Lf9L188U
O7AH1KyKh96AzSVicSGan0YdYFa2hHG2Umqoui/ZZPeXIRGHk+AmeYILSzXISAzQ
0MvsQlsf5KKcgyzRwqYLJ/sQ8gEHE02mGw2YkAVQkIuSSv3anEMn9WZy2+QkVG/y
qQrB5eNuVCw7AhZ9y3QzopJ71rw6kVG48TuyrPuCUxTM0P/6fVgLkNDW2gUkE2on
izIz3GQBAgMBAAECggEAB/2GRvg1UpB14iKMlEwYu3mmukC8gxriFrMuoR+GrYBO
oEoCtQrPJCKLJfRvwgTfUlqNw8jBYZ/yHAD2K2lKg5NDoa6yHWybODEPiBAx+/Pb
qFUHhWwdqxmsCUxJVm1jz/JLcA5DUCh7AKnmJN4wh/9hP9/hc7u4oy2SIIg9/Z2Q
GWA9vGWkjsXYvImIC3qHkMELpFLeLBqZq35NlhS++sJCgG2vDpmgTPdzrsLtARM0
w9joUhNgx9kEwrTs1+POZFBU+CU9wxteW1kY0fuyR5yfJg65aun8mui7/wDupRqv
KKK6b51vuoUfbawkjPWtuISlrSFeU9Zgw0oIxFJy8QKBgQDz4Y1KaCQ7SYh+7/6e
3QivxBNkae9vEcPJWghVaQlabszZyS5B6MuOzS6CnVUYvhGZK1VRQZW9V9UD783R
deDtTdtPH/PqcmXzypTd9ZN0xshyngRgfu8E9rtSMwduFAO5k65c9VIOKAC3JW3L
cJa7Zw6nOa28/5PgP+kJFYALZQKBgQDHYKuUofR8RtcJ13ymA4mzAR+aNPMtCpI2
dKZgv7ukuAjnT43K2U1cpGqBz2O7EJ/Z5R8L0yb1H9fLQiKW0mzwoR1oV2+8wAiI
t95NwQnjb9ecBb4nf1WPvyWQuIU9bvL3kgEfVaYDvByD1gpSnTF7easX5j7PaZv9
QtXgGhHCbQKBgHw9COdAykRRn3Fa/VEctNIlhuN+e/UPDbhDXz9zdMpW65B+xkvZ
NemXaPws/i7OlNR8mMf+KzP7zI5m2Wi9Lkp1gSV715w1ju504wV3lxjEM1UAXqZx
w325249yY3SWSZd+PjMo3hZMFqE2NgqPXpo1U+eooHNJl6GDrUltZH9pAoGAAR3S
eCecBeIjrCNvyEI20DDOa3+maPcpMHLgx6PrOhXpvtncMmmbHEyzZ/ywU0jZjE/T
J67MBg1imPnK1cth3ssYLhBnSMhOg+17qjXNh1+F9pK1qOT2prJsVG4kGN75L1e6
9+Dz6AtyoW5eam4E6+sXgS/B5El0HSv1pKaguNUCgYBXsYKgB/ID60fhdKDyEX7F
0IfZXUv9kL+MLAP7bnuPEYi80srPaI0FYcgDFIaVPLiwXSwgXpR4pq1ow71lKEw1
OuDRElxvPTQF16nP1OkhVuMQtM/IO2lHt/CSC/CE1VTOeU0IxLQy+8jwBUo6d0+I
EUkCOTeplR+OzkPu+mVaDA==
-----END PRIVATE KEY-----
";

/// A connection double that records ROLLBACKs and answers them as told.
struct Recorder {
    rollbacks: usize,
    answers: bool,
}

impl Rollback for Recorder {
    fn rollback(&mut self) -> crate::driver::BoxFuture<'_, bool> {
        self.rollbacks += 1;
        let answer = self.answers;
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn a_failed_batch_is_rolled_back_or_its_connection_closed() {
    // A server error (a rejected row; the connection is fine): ROLLBACK first, then keep it.
    let kept = settle(Recorder { rollbacks: 0, answers: true }, true).await;
    assert_eq!(kept.map(|c| c.rollbacks), Some(1));
    // The ROLLBACK does not get through: the connection is closed, never reused mid-transaction.
    assert!(settle(Recorder { rollbacks: 0, answers: false }, true).await.is_none());
    // An error that may have broken the connection: closed without trying.
    assert!(settle(Recorder { rollbacks: 0, answers: true }, false).await.is_none());
}

// ---------------------------------------------------------------------------------------------
// Against a real SQL Server (EDS_TEST_SQLSERVER_URL)

/// A test's tables on the real server (names carry the process id), dropped at the start and end.
struct RealDb {
    url: String,
    prefix: String,
    admin: tokio::sync::Mutex<Client>,
}

impl RealDb {
    async fn new() -> RealDb {
        let url = std::env::var("EDS_TEST_SQLSERVER_URL").unwrap_or_else(|_| {
            panic!("set EDS_TEST_SQLSERVER_URL=sqlserver://user:password@host:1433/database to run this test")
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let admin = open(&connect_spec(&url).unwrap(), "the test server", deadline).await.unwrap();
        let db = RealDb { url, prefix: format!("eds_t{}_", std::process::id()), admin: tokio::sync::Mutex::new(admin) };
        db.drop_tables().await;
        db
    }

    fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn exec(&self, sql: &str) {
        run_batch(&mut *self.admin.lock().await, sql).await.unwrap();
    }

    async fn drop_tables(&self) {
        for t in ["things", "vals", "loc", "order"] {
            self.exec(&format!("DROP TABLE IF EXISTS {}", quote_ident(&self.table(t)).unwrap())).await;
        }
    }

    /// Every row of `sql`, each cell as text (NULL as "NULL").
    async fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let mut admin = self.admin.lock().await;
        let rows = admin.simple_query(sql).await.unwrap().into_first_result().await.unwrap();
        rows.iter().map(|r| (0..r.len()).map(|i| r.get::<&str, _>(i).unwrap_or("NULL").to_owned()).collect()).collect()
    }

    /// `things` as text, sorted by id (every column cast to NVARCHAR so it reads as text).
    async fn things(&self) -> Vec<Vec<String>> {
        let t = quote_ident(&self.table("things")).unwrap();
        self.rows(&format!(
            "SELECT [id], [name], CAST([n] AS NVARCHAR(40)), CONVERT(NVARCHAR(40), [updatedDate], 127), [doc] \
             FROM {t} ORDER BY [id]"
        ))
        .await
    }
}

fn real_things(db: &RealDb) -> Schema {
    schema(json!({"table": db.table("things"), "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id"],
        "properties": {
        "id": {"type": "string"}, "name": {"type": "string", "nullable": true}, "n": {"type": "integer", "nullable": true},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true}, "doc": {"type": "object", "nullable": true}
    }}))
}

/// A value of the column's type (as the PostgreSQL tests use).
fn sample(c: &crate::schema::Column) -> Value {
    match &c.kind {
        ColumnType::Text | ColumnType::Unknown(_) => json!(format!("{}-value", c.name)),
        ColumnType::DateTime => json!("2024-07-11T21:16:51.708Z"),
        ColumnType::Integer => json!(42),
        ColumnType::Number => json!(1.5),
        ColumnType::Boolean => json!(true),
        ColumnType::Object => json!({"k": "v"}),
        ColumnType::Enum { values } => json!(values.first().cloned().unwrap_or_default()),
        ColumnType::Array { .. } => json!(["a"]),
    }
}

/// ensure_schema, then write the folded batch, as the drain does.
async fn apply(d: &SqlServerDriver, schema: &Schema, folded: &[FoldedChange]) -> Result<(), DriverError> {
    d.ensure_schema(schema).await?;
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema }).collect();
    d.write(Batch::Folded(&batch)).await
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs EDS_TEST_SQLSERVER_URL (a real SQL Server)"]
async fn real_server_conformance() {
    let db = RealDb::new().await;
    let d = SqlServerDriver::new(&db.url).unwrap();
    d.test().await.unwrap();
    conformance::description_is_complete(&d).unwrap();
    let s = real_things(&db);
    let t = s.table().to_owned();

    // Round trip: inserts, a destination-only column, partial and whole-row updates, deletes.
    apply(
        &d,
        &s,
        &changes(&[
            ins(
                &t,
                json!({"id": "k1", "name": "a", "n": 1, "updatedDate": "2024-01-02T03:04:05+01:00", "doc": {"x": 1}}),
            ),
            ins(&t, json!({"id": "k2", "name": "b", "n": 2})),
            ins(&t, json!({"id": "k3", "name": "c", "n": 3, "updatedDate": "1969-07-20T20:17:40.1234567Z"})),
        ]),
    )
    .await
    .unwrap();
    apply(
        &d,
        &s,
        &changes(&[
            upd(&t, json!({"id": "k1", "name": "a2", "n": 999}), Some(&["name"])),
            upd(&t, json!({"id": "k2", "name": "b2"}), None),
            upd(&t, json!({"id": "k4", "name": "new"}), Some(&["name"])),
            del(&t, &["gcp-us-west1", "k3"], None),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        db.things().await,
        [
            row(&["k1", "a2", "1", "2024-01-02T02:04:05Z", r#"{"x":1}"#]),
            row(&["k2", "b2", "NULL", "NULL", "NULL"]),
            row(&["k4", "new", "NULL", "NULL", "NULL"]),
        ]
    );

    // Hostile values are stored exactly.
    apply(&d, &s, &changes(&[ins(&t, json!({"id": HOSTILE, "name": HOSTILE, "doc": {"q": HOSTILE}}))])).await.unwrap();
    let stored = db.things().await.into_iter().find(|r| r[0] == HOSTILE).unwrap();
    assert_eq!(stored[1], HOSTILE);
    assert_eq!(serde_json::from_str::<Value>(&stored[4]).unwrap(), json!({"q": HOSTILE}));

    // A rejected row rolls the whole batch back, and is classified.
    let before = db.things().await;
    let err = apply(&d, &s, &changes(&[ins(&t, json!({"id": "g1"})), ins(&t, json!({"id": "x".repeat(300)}))]))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert_eq!(db.things().await, before);

    // Replaying a batch changes nothing.
    let folded = changes(&[
        ins(&t, json!({"id": "k5", "name": "five", "doc": {"a": [1]}})),
        upd(&t, json!({"id": "k1", "name": "one", "n": 5}), Some(&["name"])),
        del(&t, &["k2"], None),
        upd(&t, json!({"id": "k6", "n": 6}), None),
    ]);
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema: &s }).collect();
    let handle = tokio::runtime::Handle::current();
    let snapshot = || tokio::task::block_in_place(|| handle.block_on(db.things()));
    conformance::replay_is_harmless(&d, Batch::Folded(&batch), snapshot).await.unwrap();

    // The 98-column order table (one MERGE per column set), and a migration that widens it.
    let mut order_json: Value = serde_json::from_str(ORDER).unwrap();
    order_json["table"] = json!(db.table("order"));
    let order = schema(order_json.clone());
    let rows: Vec<Value> = (0..30)
        .map(|i| {
            let mut full = serde_json::Map::new();
            for c in order.columns() {
                full.insert(c.name.clone(), sample(c));
            }
            full.insert("id".into(), json!(format!("o{i}")));
            ins(order.table(), Value::Object(full))
        })
        .collect();
    apply(&d, &order, &changes(&rows)).await.unwrap();
    let order_table = quote_ident(order.table()).unwrap();
    let count = format!("SELECT CAST(COUNT(*) AS NVARCHAR(10)) FROM {order_table}");
    assert_eq!(db.rows(&count).await, [row(&["30"])]);
    apply(&d, &order, &changes(&rows)).await.unwrap();
    assert_eq!(db.rows(&count).await, [row(&["30"])], "a replay upserts");
    order_json["properties"]["edsNewColumn"] = json!({"type": "integer", "nullable": true});
    order_json["modelVersion"] = json!("v2");
    d.ensure_schema(&schema(order_json)).await.unwrap();
    let columns = format!(
        "SELECT CAST(COUNT(*) AS NVARCHAR(10)) FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME = N'{}'",
        db.table("order")
    );
    assert_eq!(db.rows(&columns).await, [row(&["99"])]);

    // The catalog is re-read after the table is dropped behind the driver's back.
    db.exec(&format!("DROP TABLE {}", quote_ident(&t).unwrap())).await;
    let again = changes(&[ins(&t, json!({"id": "z"}))]);
    let first = apply(&d, &s, &again).await;
    if first.is_err() {
        apply(&d, &s, &again).await.unwrap();
    }
    assert_eq!(db.things().await, [row(&["z", "NULL", "NULL", "NULL", "NULL"])]);

    db.drop_tables().await;
}

#[test]
fn numbers_reach_decimal_columns_digit_for_digit() {
    let n = |text: &str| -> serde_json::Number { serde_json::from_str(text).unwrap() };
    // SQL Server reads no exponent when it converts text to DECIMAL: plain notation, every digit.
    assert_eq!(super::cells::number_text(&n("123456789012345678901234567890")), "123456789012345678901234567890");
    assert_eq!(super::cells::number_text(&n("0.123456789012345678901234567890")), "0.123456789012345678901234567890");
    assert_eq!(super::cells::number_text(&n("1.5e21")), "1500000000000000000000");
    assert_eq!(super::cells::number_text(&n("-2E-3")), "-0.002");
}
