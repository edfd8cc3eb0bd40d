//! Tests against a real PostgreSQL (`postgres://postgres@127.0.0.1:5432/test`, trust auth). Every
//! test works in its own PostgreSQL schema (named after the test and the process id, selected with
//! `search_path` in the URL's `options`), dropped at the end, so tests run in parallel.

#![allow(clippy::unwrap_used)]

use super::config::clean_url;
use super::sink::{copy_field, number_text, value_text, Storage};
use super::*;
use crate::conformance;
use crate::driver::{Batch, Driver, DriverError, ErrorClass, StateChange};
use crate::event::{fold, ChangeEvent, FoldedChange};
use crate::schema::{Column, ColumnType, Schema};
use serde_json::{json, Number, Value};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{Connection, Executor};
use std::time::Duration;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";
const ORDER: &str = include_str!("../../../../shared/fixtures/schema/order_schema_b041c12fbf8d1103.json");

/// How long any one database call of a test may take: a test fails, it never hangs.
const DEADLINE: Duration = Duration::from_secs(30);

/// `f`, or a panic naming `what` when it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

/// Runs `sql` in `schema` on a connection of its own, from a thread of its own with a 5 s lock
/// timeout, while the calling test's runtime waits blocked: whatever the driver left for a
/// background task of that runtime (such as a queued ROLLBACK) cannot happen meanwhile. Blocking
/// on purpose is also how `Db`'s cleanup runs. The server's error when it fails.
fn from_outside(schema: &str, sql: &str) -> Result<(), String> {
    let setup = format!("SET lock_timeout = '5s'; SET search_path = {}", quote_ident(schema).unwrap());
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let work = async {
                let mut c = PgConnection::connect(SERVER).await.map_err(|e| e.to_string())?;
                c.execute(setup.as_str()).await.map_err(|e| e.to_string())?;
                c.execute(sql.as_str()).await.map_err(|e| e.to_string())?;
                let _ = c.close().await;
                Ok(())
            };
            tokio::time::timeout(DEADLINE, work).await.unwrap_or_else(|_| Err(format!("no answer within {DEADLINE:?}")))
        })
    })
    .join()
    .unwrap()
}

/// A transaction of another session, on a thread of its own, holding the locks `lock` takes (run
/// in `schema`) until [`Holder::release`]: nothing of it needs the calling test's runtime.
struct Holder {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Holder {
    fn start(schema: &str, lock: &str) -> Holder {
        let setup = format!("SET search_path = {}", quote_ident(schema).unwrap());
        let lock = lock.to_owned();
        let (held_tx, held) = std::sync::mpsc::channel::<Result<(), String>>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let work = async {
                    let mut c = PgConnection::connect(SERVER).await.map_err(|e| e.to_string())?;
                    for sql in [setup.as_str(), "BEGIN", lock.as_str()] {
                        c.execute(sql).await.map_err(|e| e.to_string())?;
                    }
                    let _ = held_tx.send(Ok(()));
                    let _ = release_rx.recv_timeout(DEADLINE);
                    c.execute("COMMIT").await.map_err(|e| e.to_string())?;
                    let _ = c.close().await;
                    Ok::<(), String>(())
                };
                let done = tokio::time::timeout(DEADLINE, work).await.unwrap_or_else(|_| Err("timed out".into()));
                if let Err(e) = &done {
                    let _ = held_tx.send(Err(e.clone()));
                }
                done
            })
        });
        held.recv_timeout(DEADLINE).unwrap().unwrap();
        Holder { release, thread }
    }

    fn release(self) {
        let _ = self.release.send(());
        self.thread.join().unwrap().unwrap();
    }
}

/// One test's PostgreSQL schema, dropped when the value is dropped (also after a panic).
struct Db {
    name: String,
    url: String,
    pool: PgPool,
}

impl Db {
    async fn new(tag: &str) -> Db {
        let name = format!("eds_{tag}_{}", std::process::id());
        let quoted = quote_ident(&name).unwrap();
        within("creating the test schema", async {
            let mut admin = PgConnection::connect(SERVER).await.unwrap();
            let sql =
                format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS {quoted} CASCADE; CREATE SCHEMA {quoted}");
            admin.execute(sql.as_str()).await.unwrap();
            admin.close().await.unwrap();
        })
        .await;
        let url = format!("{SERVER}?options=-csearch_path%3D{name}&name=dest1&eds-x=1");
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(DEADLINE)
            .connect_with(connect_options(&url).unwrap())
            .await
            .unwrap();
        Db { name, url, pool }
    }

    fn driver(&self) -> PostgresDriver {
        PostgresDriver::new(&self.url).unwrap()
    }

    async fn exec(&self, sql: &str) {
        within(sql, sqlx::raw_sql(sql).execute(&self.pool)).await.unwrap();
    }

    /// The first column of every row, as text.
    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        within(sql, sqlx::query_scalar(sql).fetch_all(&self.pool)).await.unwrap()
    }

    /// The first column of the one row.
    async fn text(&self, sql: &str) -> Option<String> {
        let mut all = self.texts(sql).await;
        assert_eq!(all.len(), 1, "{sql}");
        all.remove(0)
    }

    /// Every row of `table` as text, sorted.
    async fn snapshot(&self, table: &str) -> Vec<String> {
        let sql = format!("SELECT t::text FROM {} t ORDER BY 1", quote_ident(table).unwrap());
        self.texts(&sql).await.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// (column, data type, nullable) of `table`, in column order.
    async fn columns(&self, table: &str) -> Vec<(String, String, String)> {
        let q = sqlx::query_as(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool);
        within("reading the columns", q).await.unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Cleanup never waits on a lock: a test that left one behind fails on its own.
        let _ = from_outside("public", &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&self.name).unwrap()));
    }
}

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

/// ensure_schema, then write the folded batch, as the drain does.
async fn apply(d: &PostgresDriver, schema: &Schema, folded: &[FoldedChange]) -> Result<(), DriverError> {
    apply_as(d, schema, folded, false).await
}

/// [`apply`] through `write_fresh` when `fresh`.
async fn apply_as(
    d: &PostgresDriver,
    schema: &Schema,
    folded: &[FoldedChange],
    fresh: bool,
) -> Result<(), DriverError> {
    within("ensure_schema", d.ensure_schema(schema)).await?;
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema }).collect();
    let write = if fresh { d.write_fresh(Batch::Folded(&batch)) } else { d.write(Batch::Folded(&batch)) };
    within("writing a batch", write).await
}

// ---------------------------------------------------------------------------------------------
// URL, quoting, values, classification

#[test]
fn url_defaults_follow_eds() {
    let o = connect_options("postgres://localhost").unwrap();
    assert_eq!((o.get_host(), o.get_port()), ("localhost", 5432));
    assert_eq!(o.get_application_name(), Some("eds"));
    assert!(matches!(o.get_ssl_mode(), PgSslMode::Disable), "localhost defaults to sslmode=disable");

    let o = connect_options("postgresql://u:secret@db.example.com/shop").unwrap();
    assert_eq!((o.get_host(), o.get_port(), o.get_username()), ("db.example.com", 5432, "u"));
    assert_eq!(o.get_database(), Some("shop"));
    assert!(matches!(o.get_ssl_mode(), PgSslMode::Prefer), "a remote host keeps sqlx's prefer");

    for local in ["postgres://127.0.0.1/d", "postgres://[::1]:5433/d", "postgres://LOCALHOST/d"] {
        assert!(matches!(connect_options(local).unwrap().get_ssl_mode(), PgSslMode::Disable), "{local}");
    }
    assert_eq!(connect_options("postgres://[::1]:5433/d").unwrap().get_port(), 5433);
}

#[test]
fn url_parameters_are_honoured_and_eds_parameters_removed() {
    let url = "postgres://u@db.example.com:6543/d?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=mine\
               &name=pg1&start=2024-01-01&overflow=block&eds-future=1";
    let o = connect_options(url).unwrap();
    assert_eq!(o.get_port(), 6543);
    assert_eq!(o.get_application_name(), Some("mine"));
    assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull));
    let clean = clean_url(url).unwrap();
    assert_eq!(
        clean.url,
        "postgres://u@db.example.com:6543/d?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=mine"
    );
    assert!(clean.has_port && clean.has_sslmode && clean.has_app_name);

    let o = connect_options("postgres://localhost/d?sslmode=require&port=7777").unwrap();
    assert!(matches!(o.get_ssl_mode(), PgSslMode::Require), "an explicit sslmode wins for localhost");
    assert_eq!(o.get_port(), 7777);
    let clean = clean_url("postgresql://h/d?name=x#frag").unwrap();
    assert_eq!(clean.url, "postgres://h/d");
    assert!(!clean.has_port && !clean.has_sslmode && !clean.has_app_name);
    let o = connect_options("postgres://h/d?options=-csearch_path%3Dshop").unwrap();
    assert_eq!(o.get_options(), Some("-csearch_path=shop -c idle_in_transaction_session_timeout=60s"));
}

#[test]
fn bad_urls_are_config_errors_without_the_password() {
    for bad in [
        "mysql://u:hunter2@h/d",
        "postgres://u:hunter2@h:notaport/d",
        "u:hunter2@h/d",
        "postgres://u:hunter2@h/d?sslmode=sometimes",
    ] {
        let err = connect_options(bad).unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{bad}");
        assert!(!err.message.contains("hunter2"), "{bad}: {}", err.message);
        assert!(err.message.starts_with("invalid PostgreSQL URL"), "{}", err.message);
    }
    assert!(connect_options("mysql://h/d").unwrap_err().message.contains("postgres or postgresql"));
    assert!(connect_options("postgres://h:99999/d").is_err());
    assert_eq!(redact("postgres://u:hunter2@h:5432/d?x=1"), "postgres://u:***@h:5432/d?x=1");
    assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    assert_eq!(redact("postgres://h/d"), "postgres://h/d");
    assert!(PostgresDriver::new("postgres://u:hunter2@h:x/d").unwrap_err().message.contains("u:***@"));
}

#[test]
fn identifiers_are_always_quoted() {
    assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
    assert_eq!(quote_ident("updatedDate").unwrap(), "\"updatedDate\"");
    assert_eq!(quote_ident("order").unwrap(), "\"order\"");
    assert_eq!(quote_ident("x\"; DROP TABLE y; --").unwrap(), "\"x\"\"; DROP TABLE y; --\"");
    assert_eq!(quote_ident(&"a".repeat(63)).unwrap().len(), 65);
    for bad in ["", "a\0b", &"a".repeat(64)] {
        assert_eq!(quote_ident(bad).unwrap_err().class, ErrorClass::Rejected, "{bad:?}");
    }
}

#[test]
fn values_become_exact_text() {
    let n = |v: Value| match v {
        Value::Number(n) => n,
        _ => unreachable!(),
    };
    assert_eq!(number_text(&Number::from(i64::MAX), false), "9223372036854775807");
    assert_eq!(number_text(&Number::from(i64::MIN), true), "-9223372036854775808");
    assert_eq!(number_text(&Number::from(u64::MAX), true), "18446744073709551615");
    assert_eq!(number_text(&n(json!(0.1)), false), "0.1");
    assert_eq!(number_text(&n(json!(1e21)), false), "1000000000000000000000");
    assert_eq!(number_text(&n(json!(3.0)), true), "3", "a whole float for an integer column");
    assert_eq!(number_text(&n(json!(3.0)), false), "3.0", "as the event wrote it");
    assert_eq!(number_text(&n(json!(2.5)), true), "2.5", "a fraction is left for PostgreSQL to refuse");
    let big: Value = serde_json::from_str("9223372036854775807").unwrap();
    assert_eq!(value_text(&big, Storage::Text), "9223372036854775807");
    assert_eq!(value_text(&json!("x'y"), Storage::Text), "x'y");
    assert_eq!(value_text(&json!("x'y"), Storage::Json), "\"x'y\"", "a string in a JSON column is a JSON string");
    assert_eq!(value_text(&json!(true), Storage::Boolean), "true");
    assert_eq!(value_text(&json!({"a": [1, "b"]}), Storage::Text), r#"{"a":[1,"b"]}"#);
    assert_eq!(value_text(&json!([1, 2]), Storage::Json), "[1,2]");
}

#[test]
fn copy_text_format_escapes() {
    let mut out = Vec::new();
    copy_field(&mut out, Some("a\\b\tc\nd\re\\N"));
    out.push(b'|');
    copy_field(&mut out, None);
    out.push(b'|');
    copy_field(&mut out, Some(""));
    assert_eq!(String::from_utf8(out).unwrap(), "a\\\\b\\tc\\nd\\re\\\\N|\\N|");
}

#[test]
fn sqlstates_are_classified() {
    use ErrorClass::*;
    for (code, class) in [
        ("08006", Transient),
        ("08001", Transient),
        ("40001", Transient),
        ("40P01", Transient),
        ("53300", Transient),
        ("53100", Transient),
        ("57P01", Transient),
        ("57P03", Transient),
        ("28P01", Config),
        ("28000", Config),
        ("3D000", Config),
        ("42501", Config),
        ("3F000", Config),
        ("42P10", Config),
        ("22P02", Rejected),
        ("22003", Rejected),
        ("22021", Rejected),
        ("22001", Rejected),
        ("22007", Rejected),
        ("23502", Rejected),
        ("23514", Rejected),
        ("23503", Rejected),
        ("21000", Rejected),
        // A trigger's RAISE EXCEPTION, an index row too large: the row, never retried forever.
        ("P0001", Rejected),
        ("P0004", Rejected),
        ("09000", Rejected),
        ("54000", Rejected),
        ("40002", Rejected),
        ("25006", Config),
        ("42883", Config),
        ("55P03", Transient),
        ("42703", Transient),
        ("42P01", Transient),
        ("XX000", Unknown),
        ("0A000", Unknown),
    ] {
        assert_eq!(classify_sqlstate(code), class, "{code}");
    }
    assert_eq!(classify(&sqlx::Error::PoolTimedOut), Transient);
    assert_eq!(classify(&sqlx::Error::Io(std::io::Error::other("reset"))), Transient);
}

#[test]
fn ddl_types_follow_the_spec() {
    assert_eq!(ddl_type(&ColumnType::Text), "TEXT");
    assert_eq!(ddl_type(&ColumnType::DateTime), "TIMESTAMP WITH TIME ZONE");
    assert_eq!(ddl_type(&ColumnType::Integer), "BIGINT");
    assert_eq!(ddl_type(&ColumnType::Number), "DOUBLE PRECISION");
    assert_eq!(ddl_type(&ColumnType::Boolean), "BOOLEAN");
    assert_eq!(ddl_type(&ColumnType::Object), "JSONB");
    assert_eq!(ddl_type(&ColumnType::Enum { values: vec![] }), "VARCHAR(64)");
    assert_eq!(ddl_type(&ColumnType::Array { items: None }), "JSONB");
    assert_eq!(ddl_type(&ColumnType::Unknown("uuid".into())), "TEXT");
}

#[tokio::test]
async fn registered_and_described() {
    assert_eq!(crate::find("postgresql").map(|d| d.name), Some("PostgreSQL"));
    assert_eq!(crate::find("POSTGRES").map(|d| d.name), Some("PostgreSQL"));
    assert!(crate::descriptions().iter().any(|d| d.scheme == "postgres"));
    let d = PostgresDriver::new(SERVER).unwrap();
    conformance::description_is_complete(&d).unwrap();
    assert_eq!(d.limits().max_rows, 10_000);
    assert_eq!(d.limits().max_bytes, 2 << 20, "batches bounded for memory (README: drain figures)");
    assert_eq!(d.limits().max_bind_params, 65_535);
    assert!(d.describe().needs_schema);
    let err = d.write(Batch::Events(&[])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
}

#[test]
fn the_driver_can_be_made_outside_a_runtime() {
    let d = PostgresDriver::new("postgres://u:pw@h/d").unwrap();
    assert!(!format!("{d:?}").contains("pw"));
}

// ---------------------------------------------------------------------------------------------
// Schema handling

fn sample(c: &Column) -> Value {
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

#[tokio::test]
async fn creates_the_order_table_from_the_fixture() {
    let db = Db::new("order_fixture").await;
    let d = db.driver();
    let order = Schema::from_json(ORDER.as_bytes()).unwrap();
    d.ensure_schema(&order).await.unwrap();
    d.ensure_schema(&order).await.unwrap();
    let cols = db.columns("order").await;
    assert_eq!(cols.len(), 98);
    assert_eq!(cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), order.column_names().collect::<Vec<_>>());
    let col = |name: &str| cols.iter().find(|c| c.0 == name).map(|c| (c.1.as_str(), c.2.as_str())).unwrap();
    assert_eq!(col("id"), ("text", "NO"));
    assert_eq!(col("updatedDate"), ("timestamp with time zone", "YES"));
    assert_eq!(col("createdDate"), ("timestamp with time zone", "NO"));
    assert_eq!(col("number"), ("text", "NO"));
    assert_eq!(col("inspectionCount"), ("bigint", "NO"));
    assert_eq!(col("mileageIn"), ("double precision", "YES"));
    assert_eq!(col("paid"), ("boolean", "NO"));
    assert_eq!(col("labels"), ("jsonb", "NO"));
    assert_eq!(col("customFields"), ("jsonb", "YES"));
    assert_eq!(col("appointmentDates"), ("jsonb", "NO"));
    assert_eq!(col("status"), ("character varying", "NO"));
    assert_eq!(
        db.text("SELECT character_maximum_length::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'order' AND column_name = 'status'").await.as_deref(),
        Some("64")
    );
    let pk = db
        .text(
            "SELECT string_agg(k.column_name, ',') FROM information_schema.table_constraints c \
             JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) \
             WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema() AND c.table_name = 'order'",
        )
        .await;
    assert_eq!(pk.as_deref(), Some("id"));

    // A realistic full row, and one without its not-null JSON columns (EDS's `{}`/`[]` defaults).
    let mut full = serde_json::Map::new();
    for c in order.columns() {
        full.insert(c.name.clone(), sample(c));
    }
    full.insert("id".into(), json!("o1"));
    let mut sparse = full.clone();
    sparse.insert("id".into(), json!("o2"));
    for gone in ["labels", "appointmentDates", "assignedTechnicianIds", "customFields"] {
        sparse.remove(gone);
    }
    let batch = changes(&[
        ins("order", Value::Object(full)),
        json!({"operation": "INSERT", "table": "order", "key": ["gcp-us-west1", "o2"], "modelVersion": "b041c12fbf8d1103", "after": Value::Object(sparse)}),
    ]);
    apply(&d, &order, &batch).await.unwrap();
    assert_eq!(db.text("SELECT count(*)::text FROM \"order\"").await.as_deref(), Some("2"));
    assert_eq!(
        db.texts("SELECT concat_ws('|', labels::text, \"appointmentDates\"::text, \"assignedTechnicianIds\"::text, coalesce(\"customFields\"::text, 'NULL'), status, \"inspectionCount\"::text) FROM \"order\" ORDER BY id").await,
        vec![
            Some(r#"{"k": "v"}|["a"]|["a"]|{"k": "v"}|Estimate|42"#.to_string()),
            Some("{}|[]|[]|NULL|Estimate|42".to_string())
        ]
    );
}

fn things(version: &str, extra: Value) -> Schema {
    let mut properties = json!({
        "id": {"type": "string"},
        "name": {"type": "string", "nullable": true},
        "n": {"type": "integer", "nullable": true},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true},
        "doc": {"type": "object", "nullable": true}
    });
    if let (Some(p), Some(extra)) = (properties.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    schema(
        json!({"table": "things", "modelVersion": version, "primaryKeys": ["id"], "required": ["id"], "properties": properties}),
    )
}

async fn round_trip(tag: &str, copy_threshold: usize) -> Vec<String> {
    let db = Db::new(tag).await;
    let d = db.driver().with_copy_threshold(copy_threshold);
    let s = things("v1", json!({}));
    let t = "things";
    apply(
        &d,
        &s,
        &changes(&[
            ins(t, json!({"id": "k1", "name": "a", "n": 1, "updatedDate": "2024-01-02T03:04:05Z", "doc": {"x": 1}})),
            ins(t, json!({"id": "k2", "name": "b", "n": 2})),
            ins(t, json!({"id": "k3", "name": "c", "n": 3})),
        ]),
    )
    .await
    .unwrap();
    // A column only the destination has: never written, so it keeps its value.
    db.exec("ALTER TABLE things ADD COLUMN local_note TEXT; UPDATE things SET local_note = 'mine'").await;

    // A partial update writes only its changed columns; a full one every schema column.
    apply(
        &d,
        &s,
        &changes(&[
            upd(t, json!({"id": "k1", "name": "a2", "n": 999, "updatedDate": "2024-01-02T03:04:05Z"}), Some(&["name"])),
            upd(t, json!({"id": "k2", "name": "b2"}), None),
            upd(t, json!({"id": "k4", "name": "new"}), Some(&["name"])),
        ]),
    )
    .await
    .unwrap();
    let row = |id: &str| {
        format!(
            "SELECT concat_ws('|', name, coalesce(n::text, 'NULL'), coalesce(\"updatedDate\"::text, 'NULL'), \
             coalesce(doc::text, 'NULL'), coalesce(local_note, 'NULL')) FROM things WHERE id = '{id}'"
        )
    };
    assert_eq!(db.text(&row("k1")).await.as_deref(), Some(r#"a2|1|2024-01-02 03:04:05+00|{"x": 1}|mine"#));
    assert_eq!(db.text(&row("k2")).await.as_deref(), Some("b2|NULL|NULL|NULL|mine"));
    assert_eq!(
        db.text(&row("k4")).await.as_deref(),
        Some("new|NULL|NULL|NULL|NULL"),
        "an update of a missing row inserts it"
    );

    // A diff column missing from the row image is set to NULL explicitly (EDS emitted invalid SQL).
    apply(&d, &s, &changes(&[upd(t, json!({"id": "k1", "name": "a3"}), Some(&["n", "unknown"]))])).await.unwrap();
    assert_eq!(db.text(&row("k1")).await.as_deref(), Some(r#"a2|NULL|2024-01-02 03:04:05+00|{"x": 1}|mine"#));

    // An update with nothing to set (only the key changed, or nothing known) inserts or does nothing.
    apply(&d, &s, &changes(&[upd(t, json!({"id": "k1", "name": "zzz"}), Some(&["id"]))])).await.unwrap();
    assert_eq!(db.text(&row("k1")).await.as_deref(), Some(r#"a2|NULL|2024-01-02 03:04:05+00|{"x": 1}|mine"#));

    // Insert, update and delete of different keys in one batch; a key inserted then deleted.
    apply(
        &d,
        &s,
        &changes(&[
            del(t, &["k2"], Some(json!({"id": "k2"}))),
            ins(t, json!({"id": "k5", "name": "five"})),
            ins(t, json!({"id": "k6", "name": "six"})),
            del(t, &["k6"], None),
            upd(t, json!({"id": "k3", "name": "c2", "n": 33}), Some(&["name", "n"])),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(db.texts("SELECT id FROM things ORDER BY id").await, ["k1", "k3", "k4", "k5"].map(|s| Some(s.into())));
    assert_eq!(db.text(&row("k3")).await.as_deref(), Some("c2|33|NULL|NULL|mine"));
    db.snapshot(t).await
}

#[tokio::test]
async fn upserts_and_deletes_round_trip_unnest() {
    round_trip("rt_unnest", usize::MAX).await;
}

#[tokio::test]
async fn upserts_and_deletes_round_trip_copy() {
    round_trip("rt_copy", 0).await;
}

#[tokio::test]
async fn both_paths_leave_identical_tables() {
    let (a, b) = tokio::join!(round_trip("same_unnest", usize::MAX), round_trip("same_copy", 1));
    assert_eq!(a, b);
    assert_eq!(a.len(), 4);
}

#[tokio::test]
async fn region_prefixed_keys_delete_the_right_row() {
    let db = Db::new("region").await;
    let d = db.driver();
    let s = things("v1", json!({}));
    // A row whose id is the region: EDS's positional zip would delete it instead of "abc".
    apply(
        &d,
        &s,
        &changes(&[
            ins("things", json!({"id": "abc", "name": "a"})),
            ins("things", json!({"id": "gcp-us-west1", "name": "decoy"})),
            ins("things", json!({"id": "def", "name": "d"})),
        ]),
    )
    .await
    .unwrap();
    apply(
        &d,
        &s,
        &changes(&[
            del("things", &["gcp-us-west1", "abc"], None),
            del("things", &["gcp-us-west1", "def"], Some(json!({"id": "def"}))),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(db.texts("SELECT id FROM things ORDER BY id").await, vec![Some("gcp-us-west1".to_string())]);

    // A composite key takes its values from the row image by name.
    let c = schema(json!({"table": "loc_things", "modelVersion": "v1", "primaryKeys": ["locationId", "id"],
        "properties": {"locationId": {"type": "string"}, "id": {"type": "string"}, "v": {"type": "integer", "nullable": true}}}));
    let ev = |op: &str, loc: &str, v: i64| {
        json!({"operation": op, "table": "loc_things", "key": ["gcp-us-west1", "abc"], "modelVersion": "v1",
               "after": {"locationId": loc, "id": "abc", "v": v}, "before": {"locationId": loc, "id": "abc"}})
    };
    apply(&d, &c, &changes(&[ev("INSERT", "L1", 1)])).await.unwrap();
    apply(&d, &c, &changes(&[ev("INSERT", "L2", 2)])).await.unwrap();
    apply(&d, &c, &changes(&[ev("DELETE", "L1", 0)])).await.unwrap();
    assert_eq!(db.snapshot("loc_things").await, ["(L2,abc,2)"]);
    // A composite key without a row image cannot be resolved: the change is rejected.
    let err = apply(&d, &c, &changes(&[del("loc_things", &["gcp-us-west1", "abc"], None)])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected);
    assert!(err.message.contains("locationId"), "{}", err.message);
}

#[tokio::test]
async fn the_same_id_under_two_key_arrays_is_applied_in_order() {
    let db = Db::new("dup_key").await;
    let d = db.driver();
    let s = things("v1", json!({}));
    let e = |region: &str, name: &str| json!({"operation": "INSERT", "table": "things", "key": [region, "k"], "modelVersion": "v1", "after": {"id": "k", "name": name}});
    let delete = json!({"operation": "DELETE", "table": "things", "key": ["r3", "k"], "before": {"id": "k"}});
    let batch = changes(&[e("r1", "first"), e("r2", "second")]);
    assert_eq!(batch.len(), 2, "two folded changes share one primary key");
    apply(&d, &s, &batch).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["(k,,,second,)"]);
    apply(&d, &s, &changes(&[e("r1", "third"), delete.clone()])).await.unwrap();
    assert!(db.snapshot("things").await.is_empty());
    apply(&d, &s, &changes(&[delete, e("r1", "fourth")])).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["(k,,,fourth,)"]);
}

fn vals_schema() -> Schema {
    schema(json!({"table": "vals", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id"], "properties": {
        "id": {"type": "string"},
        "s": {"type": "string", "nullable": true},
        "j": {"type": "object", "nullable": true},
        "jreq": {"type": "object"},
        "ja": {"type": "array", "items": {"type": "object"}},
        "big": {"type": "integer", "nullable": true},
        "f": {"type": "number", "nullable": true},
        "b": {"type": "boolean", "nullable": true},
        "ts": {"type": "string", "format": "date-time", "nullable": true},
        "st": {"type": "array", "items": {"type": "enum", "enum": ["A", "B"]}, "nullable": true}
    }}))
}

const HOSTILE: &str = "it's \"quoted\" \\back\\slash\\ $_H_$ '); DROP TABLE x; -- 😀 tab\there\nnew\r\nline \\N \\. é";

async fn hostile(tag: &str, copy_threshold: usize, fresh: bool) -> Vec<String> {
    let db = Db::new(tag).await;
    let d = db.driver().with_copy_threshold(copy_threshold);
    let s = vals_schema();
    let long: String = "ab\\\t😀'\"\n".repeat(512 * 1024 / 8);
    let nested = json!({"a": [1, {"b": null, "c": "é\u{1F600}", "q": "'\"\\"}], "n": 12.5, "deep": {"x": {"y": []}}});
    let rows = [
        json!({"id": "h1", "s": HOSTILE, "ts": "2024-03-01T10:00:00+05:30"}),
        json!({"id": "h2", "s": long, "ts": "2024-03-01T10:00:00Z"}),
        json!({"id": "h3", "j": nested, "jreq": {"r": 1}, "ja": [{"x": 1}, [], "s", null], "ts": "1901-12-13T20:45:52Z"}),
        json!({"id": "h4", "j": null, "ts": "1969-07-20T20:17:40.123456Z", "st": "B"}),
        json!({"id": "h5", "big": 9223372036854775807i64, "f": 0.1, "b": true, "ts": "2100-01-01T00:00:00Z", "j": "a string"}),
        json!({"id": "h6", "big": -9223372036854775808i64, "f": -1.2345678901234567e-7, "b": false, "jreq": null}),
        json!({"id": "x\"; DROP TABLE vals; --", "s": ""}),
    ];
    let events: Vec<Value> = rows.iter().map(|r| ins("vals", r.clone())).collect();
    apply_as(&d, &s, &changes(&events), fresh).await.unwrap();

    let get = |id: &str, expr: &str| format!("SELECT {expr} FROM vals WHERE id = '{}'", id.replace('\'', "''"));
    assert_eq!(db.text(&get("h1", "s")).await.as_deref(), Some(HOSTILE));
    assert_eq!(db.text(&get("h2", "s")).await, Some(long));
    assert_eq!(db.text(&get("x\"; DROP TABLE vals; --", "s")).await.as_deref(), Some(""));
    let json_of = |t: Option<String>| t.map(|t| serde_json::from_str::<Value>(&t).unwrap());
    assert_eq!(json_of(db.text(&get("h3", "j::text")).await), Some(nested));
    assert_eq!(json_of(db.text(&get("h3", "ja::text")).await), Some(json!([{"x": 1}, [], "s", null])));
    assert_eq!(json_of(db.text(&get("h3", "jreq::text")).await), Some(json!({"r": 1})));
    // JSON null and a missing value: NULL in a nullable column, `{}`/`[]` in not-null JSON columns.
    assert_eq!(db.text(&get("h4", "j::text")).await, None);
    assert_eq!(db.text(&get("h1", "j::text")).await, None);
    assert_eq!(db.text(&get("h4", "jreq::text")).await.as_deref(), Some("{}"));
    assert_eq!(db.text(&get("h6", "jreq::text")).await.as_deref(), Some("{}"), "an explicit null too");
    assert_eq!(db.text(&get("h4", "ja::text")).await.as_deref(), Some("[]"));
    assert_eq!(db.text(&get("h4", "st")).await.as_deref(), Some("B"));
    assert_eq!(db.text(&get("h1", "st")).await, None, "an enum gets no JSON default");
    assert_eq!(db.text(&get("h5", "j::text")).await.as_deref(), Some("\"a string\""));
    assert_eq!(db.text(&get("h5", "big::text")).await.as_deref(), Some("9223372036854775807"));
    assert_eq!(db.text(&get("h6", "big::text")).await.as_deref(), Some("-9223372036854775808"));
    assert_eq!(db.text(&get("h5", "f::text")).await.as_deref(), Some("0.1"));
    let f: f64 = db.text(&get("h6", "f::text")).await.unwrap().parse().unwrap();
    assert_eq!(f, -1.2345678901234567e-7);
    assert_eq!(db.text(&get("h5", "b::text")).await.as_deref(), Some("true"));
    assert_eq!(db.text(&get("h6", "b::text")).await.as_deref(), Some("false"));
    let utc = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";
    for (id, expect) in [
        ("h1", "2024-03-01T04:30:00.000000Z"),
        ("h2", "2024-03-01T10:00:00.000000Z"),
        ("h3", "1901-12-13T20:45:52.000000Z"),
        ("h4", "1969-07-20T20:17:40.123456Z"),
        ("h5", "2100-01-01T00:00:00.000000Z"),
    ] {
        assert_eq!(db.text(&get(id, utc)).await.as_deref(), Some(expect), "{id}");
    }
    // A replay changes nothing.
    let before = db.snapshot("vals").await;
    apply_as(&d, &s, &changes(&events), fresh).await.unwrap();
    assert_eq!(db.snapshot("vals").await, before);
    before
}

#[tokio::test]
async fn hostile_values_are_stored_exactly_unnest() {
    hostile("hostile_unnest", usize::MAX, false).await;
}

#[tokio::test]
async fn hostile_values_are_stored_exactly_copy_and_identically() {
    let (a, b) = tokio::join!(hostile("hostile_copy_a", usize::MAX, false), hostile("hostile_copy_b", 0, false));
    assert_eq!(a, b);
}

#[tokio::test]
async fn hostile_values_are_stored_exactly_and_identically_into_a_fresh_table() {
    let (a, b) =
        tokio::join!(hostile("hostile_fresh_a", usize::MAX, false), hostile("hostile_fresh_b", usize::MAX, true));
    assert_eq!(a, b);
}

/// Makes every row inserted into `table` note the first word of the statement that inserted it
/// (`COPY` or `INSERT`) in table `seen`.
async fn note_inserts(db: &Db, table: &str) {
    let t = quote_ident(table).unwrap();
    db.exec(&format!(
        "CREATE TABLE seen (n serial, q text); \
         CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN \
         INSERT INTO seen (q) VALUES (upper(split_part(ltrim(current_query()), ' ', 1))); RETURN NEW; END $f$; \
         CREATE TRIGGER noting BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION note()"
    ))
    .await;
}

/// The statements `note_inserts` saw since the last call, in order, and forgets them.
async fn seen(db: &Db) -> Vec<String> {
    let got = db.texts("SELECT q FROM seen ORDER BY n").await.into_iter().map(Option::unwrap_or_default).collect();
    db.exec("DELETE FROM seen").await;
    got
}

#[tokio::test]
async fn fresh_writes_copy_into_the_table_and_fall_back_to_the_upsert_for_keys_already_there() {
    let (fresh_db, plain_db) = (Db::new("fresh_keys").await, Db::new("fresh_keys_plain").await);
    let (fresh, plain) = (fresh_db.driver(), plain_db.driver());
    let s = things("v1", json!({}));
    within("ensure_schema", fresh.ensure_schema(&s)).await.unwrap();
    note_inserts(&fresh_db, "things").await;
    let e = |id: &str, name: &str| ins("things", json!({"id": id, "name": name}));
    let batches = [
        vec![e("k1", "one"), e("k2", "two")],
        // k2 is in the table already: the COPY is refused, the upsert writes the batch.
        vec![e("k2", "two again"), e("k3", "three")],
        // All new again.
        vec![e("k4", "four")],
        // A replay of the first batch.
        vec![e("k1", "one"), e("k2", "two")],
    ];
    let mut statements = Vec::new();
    for batch in &batches {
        apply_as(&fresh, &s, &changes(batch), true).await.unwrap();
        apply(&plain, &s, &changes(batch)).await.unwrap();
        statements.push(seen(&fresh_db).await);
        assert_eq!(fresh_db.snapshot("things").await, plain_db.snapshot("things").await, "after {batch:?}");
    }
    assert_eq!(
        statements,
        [vec!["COPY", "COPY"], vec!["INSERT", "INSERT"], vec!["COPY"], vec!["INSERT", "INSERT"]],
        "a refused COPY leaves nothing behind (rolled back to its savepoint, the noting too)"
    );
    // `write` never takes the COPY road into the table.
    apply(&fresh, &s, &changes(&[e("k5", "five")])).await.unwrap();
    assert_eq!(seen(&fresh_db).await, ["INSERT"]);
}

#[tokio::test]
async fn fresh_writes_into_a_timestamp_without_time_zone_convert_it_as_the_upsert_does() {
    let db = Db::new("fresh_ts").await;
    db.exec(
        "CREATE TABLE \"order\" (\"id\" TEXT NOT NULL PRIMARY KEY, \"name\" TEXT, \"updatedDate\" TIMESTAMP, \
         \"number\" BIGINT, \"amount\" DOUBLE PRECISION, \"meta\" JSONB, \"status\" TEXT)",
    )
    .await;
    note_inserts(&db, "order").await;
    let d = db.driver();
    let s = order_lite("v1");
    let row = json!({"id": "a", "name": "n", "updatedDate": "2024-03-01T10:00:00+05:30"});
    apply_as(&d, &s, &changes(&[ins("order", row)]), true).await.unwrap();
    assert_eq!(db.snapshot("order").await, [r#"(a,n,"2024-03-01 04:30:00",,,,)"#]);
    assert_eq!(seen(&db).await, ["INSERT"]);
}

#[tokio::test]
async fn hostile_table_and_column_names() {
    let db = Db::new("names").await;
    let d = db.driver();
    db.exec("CREATE TABLE y (v int); INSERT INTO y VALUES (1)").await;
    let table = "x\"; DROP TABLE y; --";
    let s = schema(json!({"table": table, "modelVersion": "v1", "primaryKeys": ["Id Key"], "properties": {
        "Id Key": {"type": "string"},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true},
        "with space": {"type": "string", "nullable": true},
        "quo\"te": {"type": "integer", "nullable": true},
        "x\"; DROP TABLE y; --": {"type": "string", "nullable": true},
        "UPPER": {"type": "boolean", "nullable": true}
    }}));
    let e = |op: &str, v: i64| {
        json!({"operation": op, "table": table, "key": ["K1"], "modelVersion": "v1", "after": {
            "Id Key": "K1", "updatedDate": "2024-01-01T00:00:00Z", "with space": "s", "quo\"te": v,
            "x\"; DROP TABLE y; --": "evil", "UPPER": true}, "before": {"Id Key": "K1"}})
    };
    apply(&d, &s, &changes(&[e("INSERT", 1)])).await.unwrap();
    apply(&d, &s, &changes(&[e("UPDATE", 2)])).await.unwrap();
    let cols: Vec<String> = db.columns(table).await.into_iter().map(|c| c.0).collect();
    assert_eq!(cols, ["Id Key", "UPPER", "quo\"te", "updatedDate", "with space", "x\"; DROP TABLE y; --"]);
    assert_eq!(db.snapshot(table).await, [r#"(K1,t,2,"2024-01-01 00:00:00+00",s,evil)"#]);
    assert_eq!(db.text("SELECT count(*)::text FROM y").await.as_deref(), Some("1"), "y survives");
    apply(&d, &s, &changes(&[e("DELETE", 0)])).await.unwrap();
    assert!(db.snapshot(table).await.is_empty());
}

fn order_lite(version: &str) -> Schema {
    schema(json!({"table": "order", "modelVersion": version, "primaryKeys": ["id"], "required": ["id"], "properties": {
        "id": {"type": "string"},
        "name": {"type": "string", "nullable": true},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true},
        "number": {"type": "integer", "nullable": true},
        "amount": {"type": "number", "nullable": true},
        "meta": {"type": "object", "nullable": true},
        "status": {"type": "array", "items": {"type": "enum", "enum": ["Estimate", "Invoice"]}, "nullable": true}
    }}))
}

#[tokio::test]
async fn a_table_made_by_eds_import_is_kept_and_written() {
    let db = Db::new("eds_ddl").await;
    db.exec(
        "CREATE TABLE \"order\" (\n\t\"id\" TEXT NOT NULL,\n\t\"name\" TEXT,\n\t\"updatedDate\" TIMESTAMP WITH TIME ZONE,\n\
         \t\"number\" BIGINT,\n\t\"amount\" DOUBLE PRECISION,\n\t\"meta\" JSONB,\n\tPRIMARY KEY (\"id\")\n);\n\
         INSERT INTO \"order\" VALUES ('old', 'kept', '2020-01-01T00:00:00Z', 7, 1.5, '{\"a\": 1}')",
    )
    .await;
    let d = db.driver();
    let s = order_lite("v1");
    apply(
        &d,
        &s,
        &changes(&[
            ins("order", json!({"id": "new", "name": "n", "updatedDate": "2024-03-01T10:00:00+05:30", "number": 8, "status": "Invoice"})),
            upd("order", json!({"id": "old", "name": "renamed", "number": 70}), Some(&["name"])),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        db.snapshot("order").await,
        [
            r#"(new,n,"2024-03-01 04:30:00+00",8,,,Invoice)"#,
            r#"(old,renamed,"2020-01-01 00:00:00+00",7,1.5,"{""a"": 1}",)"#
        ]
    );
    let status = db.columns("order").await.into_iter().find(|c| c.0 == "status").unwrap();
    assert_eq!((status.1.as_str(), status.2.as_str()), ("character varying", "YES"), "the missing column was added");
}

#[tokio::test]
async fn a_hand_made_table_is_written_by_its_own_types() {
    let db = Db::new("own_types").await;
    db.exec(
        "CREATE TABLE \"order\" (\"id\" VARCHAR(64) NOT NULL PRIMARY KEY, \"name\" VARCHAR(20), \
         \"updatedDate\" TIMESTAMP, \"number\" INTEGER, \"amount\" NUMERIC(12,2), \"meta\" JSON, \"status\" VARCHAR(64), \
         \"localOnly\" TEXT NOT NULL DEFAULT 'x');\
         INSERT INTO \"order\" (id, name) VALUES ('old', 'kept')",
    )
    .await;
    let d = db.driver();
    let s = order_lite("v1");
    let row = json!({"id": "a", "name": "short", "updatedDate": "2024-03-01T10:00:00+05:30", "number": 42,
                     "amount": 12.345, "meta": {"k": [1, 2]}, "status": "Estimate"});
    apply(&d, &s, &changes(&[ins("order", row)])).await.unwrap();
    assert_eq!(
        db.snapshot("order").await,
        [r#"(a,short,"2024-03-01 04:30:00",42,12.35,"{""k"":[1,2]}",Estimate,x)"#, "(old,kept,,,,,,x)"]
    );
    // The destination-only NOT NULL column lost its NOT NULL (the schema does not have it).
    let local = db.columns("order").await.into_iter().find(|c| c.0 == "localOnly").unwrap();
    assert_eq!(local.2, "YES");
    // Values the column cannot hold are rejected, not cut or wrapped.
    for bad in [json!({"id": "b", "name": "longer than twenty characters"}), json!({"id": "c", "number": 1i64 << 40})] {
        let err = apply(&d, &s, &changes(&[ins("order", bad.clone())])).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{bad}: {}", err.message);
    }
    assert_eq!(db.snapshot("order").await.len(), 2);
}

fn versioned(version: &str, properties: Value, required: &[&str]) -> Schema {
    schema(
        json!({"table": "mig", "modelVersion": version, "primaryKeys": ["id"], "required": required, "properties": properties}),
    )
}

#[tokio::test]
async fn migrations_only_widen() {
    let db = Db::new("migrate").await;
    let d = db.driver();
    let v1 = versioned(
        "v1",
        json!({"id": {"type": "string"}, "a": {"type": "string"}, "b": {"type": "string", "nullable": true}}),
        &["id", "a"],
    );
    let v2 = versioned(
        "v2",
        json!({"id": {"type": "string"}, "b": {"type": "string", "nullable": true}, "c": {"type": "integer"}}),
        &["id", "c"],
    );
    apply(&d, &v1, &changes(&[ins("mig", json!({"id": "r1", "a": "A", "b": "B"}))])).await.unwrap();
    assert_eq!(
        db.columns("mig").await,
        [("id", "text", "NO"), ("a", "text", "NO"), ("b", "text", "YES")].map(|(a, b, c)| (
            a.to_string(),
            b.to_string(),
            c.to_string()
        ))
    );
    d.ensure_schema(&v2).await.unwrap();
    let after_v2 = db.columns("mig").await;
    assert_eq!(
        after_v2,
        [("id", "text", "NO"), ("a", "text", "YES"), ("b", "text", "YES"), ("c", "bigint", "YES")].map(|(a, b, c)| (
            a.to_string(),
            b.to_string(),
            c.to_string()
        )),
        "c is added nullable although required; a, gone from the schema, lost its NOT NULL"
    );
    let mut events = changes(&[
        json!({"operation": "INSERT", "table": "mig", "key": ["r2"], "modelVersion": "v2", "after": {"id": "r2", "c": 5}}),
    ]);
    apply(&d, &v2, &events).await.unwrap();

    // The older schema afterwards changes nothing, and rows of it can still be written.
    let fresh = db.driver();
    fresh.ensure_schema(&v1).await.unwrap();
    d.ensure_schema(&v1).await.unwrap();
    assert_eq!(db.columns("mig").await, after_v2);
    apply(&fresh, &v1, &changes(&[ins("mig", json!({"id": "r3", "a": "A3"}))])).await.unwrap();
    assert_eq!(db.snapshot("mig").await, ["(r1,A,B,)", "(r2,,,5)", "(r3,A3,,)"]);

    // A column made nullable in a newer schema loses its NOT NULL.
    let v3 =
        versioned("v3", json!({"id": {"type": "string"}, "a": {"type": "string", "nullable": true}}), &["id", "a"]);
    db.exec("UPDATE mig SET a = '-' WHERE a IS NULL; ALTER TABLE mig ALTER COLUMN a SET NOT NULL").await;
    let fresh = db.driver();
    fresh.ensure_schema(&v3).await.unwrap();
    assert_eq!(db.columns("mig").await, after_v2);

    // A type the destination column cannot hold is a configuration error naming both types.
    let v4 = versioned("v4", json!({"id": {"type": "string"}, "c": {"type": "boolean"}}), &["id"]);
    let err = fresh.ensure_schema(&v4).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(
        err.message.contains("column c of table mig is bigint at the destination but the schema says boolean"),
        "{}",
        err.message
    );
    // Text holds anything.
    let v5 = versioned("v5", json!({"id": {"type": "string"}, "b": {"type": "integer", "nullable": true}}), &["id"]);
    fresh.ensure_schema(&v5).await.unwrap();
    events = changes(&[
        json!({"operation": "INSERT", "table": "mig", "key": ["r4"], "modelVersion": "v5", "after": {"id": "r4", "b": 12}}),
    ]);
    apply(&fresh, &v5, &events).await.unwrap();
    assert_eq!(db.text("SELECT b FROM mig WHERE id = 'r4'").await.as_deref(), Some("12"));
    assert_eq!(db.columns("mig").await, after_v2, "never a DROP, never a retype");
}

#[tokio::test]
async fn a_table_without_the_schemas_key_or_a_view_is_a_config_error() {
    let db = Db::new("no_key").await;
    db.exec("CREATE TABLE things (id TEXT, name TEXT)").await;
    let err = db.driver().ensure_schema(&things("v1", json!({}))).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(err.message.contains("no primary key or unique index"), "{}", err.message);

    db.exec("CREATE VIEW viewed AS SELECT 'x'::text AS id").await;
    let s = schema(
        json!({"table": "viewed", "modelVersion": "v1", "primaryKeys": ["id"], "properties": {"id": {"type": "string"}}}),
    );
    let err = db.driver().ensure_schema(&s).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(err.message.contains("is not a table"), "{}", err.message);
}

#[tokio::test]
async fn a_table_dropped_behind_our_back_is_recreated_on_retry() {
    let db = Db::new("dropped").await;
    let d = db.driver();
    let s = things("v1", json!({}));
    apply(&d, &s, &changes(&[ins("things", json!({"id": "a"}))])).await.unwrap();
    db.exec("DROP TABLE things").await;
    // The ensured schema is cached: ensure is a lookup and does not notice.
    d.ensure_schema(&s).await.unwrap();
    let batch = changes(&[ins("things", json!({"id": "b"}))]);
    let err = apply(&d, &s, &batch).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(err.message.contains("42P01") && err.message.contains("things"), "{}", err.message);
    apply(&d, &s, &batch).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["(b,,,,)"]);
}

#[tokio::test]
async fn drop_table_drops_the_current_schemas_table_only_and_the_next_write_recreates_it() {
    let db = Db::new("drop").await;
    let other = Db::new("drop_later").await;
    other.exec("CREATE TABLE things (id text PRIMARY KEY); INSERT INTO things VALUES ('keep')").await;
    // `other` is further along the search path: a bare DROP TABLE would find its table.
    let url = format!("{SERVER}?options=-csearch_path%3D{}%2C{}&name=dest1", db.name, other.name);
    let d = PostgresDriver::new(&url).unwrap();
    within("drop", d.drop_table("things")).await.unwrap();
    assert_eq!(other.snapshot("things").await, ["(keep)"], "another schema's table is never dropped");

    let s = things("v1", json!({}));
    apply(&d, &s, &changes(&[ins("things", json!({"id": "old"}))])).await.unwrap();
    db.exec("ALTER TABLE things ADD COLUMN stale int").await;
    within("drop", d.drop_table("things")).await.unwrap();
    // The driver forgot the table: the next write creates it afresh, without the stale column.
    apply(&d, &s, &changes(&[ins("things", json!({"id": "new"}))])).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["(new,,,,)"]);
    assert!(!db.columns("things").await.iter().any(|c| c.0 == "stale"));
    assert_eq!(other.snapshot("things").await, ["(keep)"]);

    let hostile = "x\"; DROP TABLE y; --";
    db.exec(&format!("CREATE TABLE y (v int); CREATE TABLE {} (v int)", quote_ident(hostile).unwrap())).await;
    within("drop", d.drop_table(hostile)).await.unwrap();
    assert!(db.columns(hostile).await.is_empty(), "the hostile name is the table dropped");
    assert_eq!(db.columns("y").await.len(), 1, "y survives");

    db.exec("CREATE VIEW things_view AS SELECT id FROM things").await;
    let err = within("drop", d.drop_table("things")).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
    assert!(err.message.contains("2BP01") && err.message.contains("things"), "{}", err.message);
    assert_eq!(db.snapshot("things").await, ["(new,,,,)"], "nothing is dropped with it");
}

async fn rejected(tag: &str, copy_threshold: usize, fresh: bool) {
    let db = Db::new(tag).await;
    let d = db.driver().with_copy_threshold(copy_threshold);
    let s = schema(json!({"table": "strict", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id", "name"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                       "ts": {"type": "string", "format": "date-time", "nullable": true},
                       "n": {"type": "integer", "nullable": true}}}));
    apply(&d, &s, &changes(&[ins("strict", json!({"id": "pre", "name": "existing"}))])).await.unwrap();
    let good = ins("strict", json!({"id": "g1", "name": "fine"}));
    let update = upd("strict", json!({"id": "pre", "name": "changed"}), None);
    for (bad, sqlstate) in [
        (ins("strict", json!({"id": "b1"})), "23502"),
        (ins("strict", json!({"id": "b2", "name": "x", "ts": "20x6-01-01T00:00:00Z"})), "22007"),
        (ins("strict", json!({"id": "b5", "name": "x", "ts": "yesterday"})), "not an ISO-8601 date-time"),
        (ins("strict", json!({"id": "b3", "name": "x", "n": "12abc"})), "22P02"),
        (ins("strict", json!({"id": "b4", "name": "nul\u{0}byte"})), "22021"),
    ] {
        let err = apply_as(&d, &s, &changes(&[good.clone(), update.clone(), bad.clone()]), fresh).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{bad}: {}", err.message);
        assert!(err.message.contains(sqlstate) && err.message.contains("strict"), "{}", err.message);
        // The failed batch's transaction is over when `write` returns: DDL (which needs every
        // lock on the table) goes through at once, without this runtime running anything.
        from_outside(&db.name, "ALTER TABLE strict ALTER COLUMN n DROP DEFAULT")
            .unwrap_or_else(|e| panic!("DDL after the rejected batch {bad}: {e}"));
        assert_eq!(db.snapshot("strict").await, ["(pre,,existing,)"], "the whole batch was rolled back");
    }
    // The good rows alone go through (what the drain's bisection ends with).
    apply_as(&d, &s, &changes(&[good, update]), fresh).await.unwrap();
    assert_eq!(db.snapshot("strict").await, ["(g1,,fine,)", "(pre,,changed,)"]);
}

#[tokio::test]
async fn a_write_cancelled_half_way_leaves_no_transaction_open() {
    let db = Db::new("cancelled").await;
    let d = db.driver();
    let s = schema(json!({"table": "strict", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string", "nullable": true},
                       "n": {"type": "integer", "nullable": true}}}));
    apply(&d, &s, &changes(&[ins("strict", json!({"id": "pre", "name": "existing"}))])).await.unwrap();
    // Another session holds the row: the batch's upsert waits for it, holding the table.
    let holder = Holder::start(&db.name, "SELECT * FROM strict WHERE id = 'pre' FOR UPDATE");
    let batch = changes(&[upd("strict", json!({"id": "pre", "name": "changed"}), None)]);
    let write = apply(&d, &s, &batch);
    // A deadline (the drain's) gives up on the write half-way.
    assert!(tokio::time::timeout(Duration::from_millis(500), write).await.is_err(), "the write waited for the row");
    // From here this runtime runs nothing until the DDL is through: the cancelled write's
    // transaction must already be on its way out, not waiting for a background task.
    holder.release();
    from_outside(&db.name, "ALTER TABLE strict ALTER COLUMN n DROP DEFAULT")
        .unwrap_or_else(|e| panic!("DDL after the cancelled write: {e}"));
    assert_eq!(db.snapshot("strict").await, ["(pre,,existing)"], "nothing of the cancelled write stayed");
}

#[tokio::test]
async fn one_rejected_row_rolls_back_the_batch_unnest() {
    rejected("rejected_unnest", usize::MAX, false).await;
}

#[tokio::test]
async fn one_rejected_row_rolls_back_the_batch_copy() {
    rejected("rejected_copy", 0, false).await;
}

#[tokio::test]
async fn one_rejected_row_rolls_back_the_batch_fresh() {
    rejected("rejected_fresh", usize::MAX, true).await;
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let d = PostgresDriver::new("postgres://postgres:pw@127.0.0.1:1/test").unwrap();
    let err = d.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(err.message.contains("127.0.0.1:1") && !err.message.contains("pw@"), "{}", err.message);
}

#[tokio::test]
async fn a_wrong_database_or_schema_is_a_config_error() {
    let d = PostgresDriver::new("postgres://postgres@127.0.0.1:5432/eds_no_such_database").unwrap();
    let err = d.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
    assert!(err.message.contains("3D000"), "{}", err.message);
    let err = d.ensure_schema(&things("v1", json!({}))).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);

    let d = PostgresDriver::new(&format!("{SERVER}?options=-csearch_path%3Deds_no_such_schema")).unwrap();
    let err = d.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);
    let err = d.ensure_schema(&things("v1", json!({}))).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{}", err.message);

    PostgresDriver::new(SERVER).unwrap().test().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_replay_is_harmless() {
    let db = Db::new("conformance").await;
    let d = db.driver();
    let s = things("v1", json!({}));
    apply(
        &d,
        &s,
        &changes(&[ins("things", json!({"id": "gone", "name": "x"})), ins("things", json!({"id": "k1", "n": 1}))]),
    )
    .await
    .unwrap();
    let folded = changes(&[
        ins("things", json!({"id": "k2", "name": "two", "doc": {"a": [1]}})),
        upd("things", json!({"id": "k1", "name": "one", "n": 5}), Some(&["name"])),
        del("things", &["gone"], None),
        upd("things", json!({"id": "k3", "n": 3}), None),
    ]);
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema: &s }).collect();
    let handle = tokio::runtime::Handle::current();
    let snapshot = || tokio::task::block_in_place(|| handle.block_on(db.snapshot("things")));
    conformance::replay_is_harmless(&d, Batch::Folded(&batch), snapshot).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["(k1,,1,one,)", r#"(k2,"{""a"": [1]}",,two,)"#, "(k3,,3,,)"]);
    conformance::description_is_complete(&d).unwrap();
    d.test().await.unwrap();
    // An empty batch is fine too.
    d.write(Batch::Folded(&[])).await.unwrap();
}

#[tokio::test]
async fn big_integers_and_long_decimals_are_stored_exactly_or_refused() {
    let db = Db::new("exact").await;
    db.exec(r#"CREATE TABLE nums (id TEXT PRIMARY KEY, big NUMERIC(40,0), "dec" NUMERIC(45,30), n BIGINT, f DOUBLE PRECISION)"#)
        .await;
    let d = db.driver();
    let s = schema(json!({"table": "nums", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id"],
        "properties": {"id": {"type": "string"}, "big": {"type": "integer", "nullable": true},
                       "dec": {"type": "number", "nullable": true}, "n": {"type": "integer", "nullable": true},
                       "f": {"type": "number", "nullable": true}}}));
    // Parsed from text: json!() would go through f64.
    let ev = |after: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"operation":"INSERT","table":"nums","key":["x"],"modelVersion":"v1","after":{after}}}"#
        ))
        .unwrap()
    };
    let exact = ev(
        r#"{"id":"a","big":123456789012345678901234567890,"dec":0.123456789012345678901234567890,"n":9223372036854775807,"f":0.1}"#,
    );
    apply(&d, &s, &changes(&[exact])).await.unwrap();
    assert_eq!(
        db.snapshot("nums").await,
        ["(a,123456789012345678901234567890,0.123456789012345678901234567890,9223372036854775807,0.1)"]
    );
    // 18 significant digits and an exponent, into NUMERIC: still exact.
    apply(&d, &s, &changes(&[ev(r#"{"id":"b","dec":12345.6789012345678,"big":1.5e21}"#)])).await.unwrap();
    assert_eq!(
        db.text("SELECT \"dec\"::text FROM nums WHERE id = 'b'").await.as_deref(),
        Some("12345.678901234567800000000000000000")
    );
    assert_eq!(db.text("SELECT big::text FROM nums WHERE id = 'b'").await.as_deref(), Some("1500000000000000000000"));
    // Beyond 64 bits into BIGINT: refused with the reason (a dead letter), never rounded.
    let err = apply(&d, &s, &changes(&[ev(r#"{"id":"c","n":123456789012345678901234567890}"#)])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert!(err.message.contains("22003") && err.message.contains("out of range"), "{}", err.message);
    assert_eq!(db.snapshot("nums").await.len(), 2);
}

/// `rows` through the fresh encoder and `write_encoded` into `db`'s table of `s`; what
/// `write_encoded` said, or `None` when a row was declined.
async fn write_encoded_rows(d: &PostgresDriver, s: &Schema, rows: &[Value]) -> Option<bool> {
    within("ensure_schema", d.ensure_schema(s)).await.unwrap();
    let mut encoder = d.fresh_encoder(s).expect("an encoder for a table keyed by id");
    let mut data = Vec::new();
    for r in rows {
        if !encoder.encode(&r.to_string(), &mut data) {
            return None;
        }
    }
    Some(within("write_encoded", d.write_encoded(s, &data)).await.unwrap())
}

#[tokio::test]
async fn encoded_rows_store_what_the_fresh_events_store_and_a_refused_copy_leaves_nothing() {
    let (enc_db, ev_db) = (Db::new("encoded_rows").await, Db::new("encoded_rows_events").await);
    let (enc, ev) = (enc_db.driver(), ev_db.driver());
    let s = vals_schema();
    let long: String = "ab\\\t😀'\"\n".repeat(4096);
    let rows = [
        json!({"id": "h1", "s": HOSTILE, "ts": "2024-03-01T10:00:00+05:30", "unknown": "dropped"}),
        json!({"id": "h2", "s": long, "ts": "2024-03-01T10:00:00Z"}),
        json!({"id": "h3", "j": {"a": [1, {"b": null, "c": "é\u{1F600}"}], "n": 12.5}, "jreq": {"r": 1}, "ja": [{"x": 1}, [], "s", null]}),
        json!({"id": "h4", "j": null, "ts": "1969-07-20T20:17:40.123456Z", "st": "B"}),
        json!({"id": "h5", "big": 9223372036854775807i64, "f": 0.1, "b": true, "j": "a string"}),
        json!({"id": "h6", "big": -9223372036854775808i64, "f": -1.2345678901234567e-7, "b": false, "jreq": null}),
        json!({"id": "x\"; DROP TABLE vals; --", "s": ""}),
    ];
    assert_eq!(write_encoded_rows(&enc, &s, &rows).await, Some(true));
    let events: Vec<Value> = rows.iter().map(|r| ins("vals", r.clone())).collect();
    apply_as(&ev, &s, &changes(&events), true).await.unwrap();
    let written = enc_db.snapshot("vals").await;
    assert_eq!(written.len(), rows.len());
    assert_eq!(written, ev_db.snapshot("vals").await);

    // A key already there: the COPY is refused, rolled back whole, and says so.
    let again = [json!({"id": "new1", "s": "n"}), json!({"id": "h1", "s": "changed"})];
    assert_eq!(write_encoded_rows(&enc, &s, &again).await, Some(false));
    assert_eq!(enc_db.snapshot("vals").await, written, "nothing of a refused COPY stays");
    // A value the column refuses alike.
    assert_eq!(write_encoded_rows(&enc, &s, &[json!({"id": "e1", "big": "not a number"})]).await, Some(false));
    assert_eq!(enc_db.snapshot("vals").await, written);
}

#[tokio::test]
async fn no_encoder_for_a_table_keyed_other_than_by_id() {
    let db = Db::new("encoder_keys").await;
    let d = db.driver();
    let s = schema(json!({"table": "pairs", "modelVersion": "v1", "primaryKeys": ["a", "b"], "required": ["a", "b"],
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "id": {"type": "string"}}}));
    within("ensure_schema", d.ensure_schema(&s)).await.unwrap();
    assert!(d.fresh_encoder(&s).is_none());
    assert!(d.fresh_encoder(&vals_schema()).is_none(), "nor for a table not made sure of");
}
