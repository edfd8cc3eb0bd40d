//! Tests against a real MySQL or MariaDB (`mysql://root@127.0.0.1:3306/test`, no password). Every
//! test works in its own database (`eds_t_<tag>_<random>`, made with CREATE DATABASE), dropped at
//! the end — also after a panic — so tests run in parallel. Nothing here changes a global server
//! setting: the time-zone test proves the driver's session setting with a second connection whose
//! own session zone differs.

#![allow(clippy::unwrap_used)]

use super::catalog::{loosened_definition, Storage};
use super::cells::{format_micros, number_text, parse_datetime, value_text, Cell, ColumnPlan};
use super::config::clean_url;
use super::sink::chunks;
use super::*;
use crate::conformance;
use crate::driver::{Batch, Driver, DriverError, ErrorClass, StateChange};
use crate::event::{fold, ChangeEvent, FoldedChange};
use crate::schema::{Column, ColumnType, Schema};
use serde_json::{json, Number, Value};
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::{Connection, Executor};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Four text columns of a row, as bytes (MySQL 8 flags some catalog strings binary).
type Bytes4 = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

const SERVER: &str = "mysql://root@127.0.0.1:3306/test";
const ORDER: &str = include_str!("../../../../shared/fixtures/schema/order_schema_b041c12fbf8d1103.json");

/// How long any one database call of a test may take: a test fails, it never hangs.
const DEADLINE: Duration = Duration::from_secs(30);

/// `f`, or a panic naming `what` when it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f).await.unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
}

/// Runs `sql` in `database` on a connection of its own, from a thread of its own with a 5 s
/// lock-wait timeout, while the calling test's runtime waits blocked: whatever the driver left for
/// a background task of that runtime (such as a queued ROLLBACK) cannot happen meanwhile.
/// Blocking on purpose is also how `Db`'s cleanup runs. The server's error when it fails.
fn from_outside(database: &str, sql: &str) -> Result<(), String> {
    let setup = format!("SET SESSION lock_wait_timeout = 5; USE {}", quote_ident(database).unwrap());
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let work = async {
                let mut c = MySqlConnection::connect(SERVER).await.map_err(|e| e.to_string())?;
                sqlx::raw_sql(&setup).execute(&mut c).await.map_err(|e| e.to_string())?;
                sqlx::raw_sql(&sql).execute(&mut c).await.map_err(|e| e.to_string())?;
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
/// in `database`) until [`Holder::release`]: nothing of it needs the calling test's runtime.
struct Holder {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Holder {
    fn start(database: &str, lock: &str) -> Holder {
        let setup = format!("USE {}", quote_ident(database).unwrap());
        let lock = lock.to_owned();
        let (held_tx, held) = std::sync::mpsc::channel::<Result<(), String>>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let work = async {
                    let mut c = MySqlConnection::connect(SERVER).await.map_err(|e| e.to_string())?;
                    for sql in [setup.as_str(), "BEGIN", lock.as_str()] {
                        sqlx::raw_sql(sql).execute(&mut c).await.map_err(|e| e.to_string())?;
                    }
                    let _ = held_tx.send(Ok(()));
                    let _ = release_rx.recv_timeout(DEADLINE);
                    sqlx::raw_sql("COMMIT").execute(&mut c).await.map_err(|e| e.to_string())?;
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

/// One test's database, dropped when the value is dropped (also after a panic).
struct Db {
    name: String,
    url: String,
    pool: MySqlPool,
}

fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

impl Db {
    async fn new(tag: &str) -> Db {
        let name = format!("eds_t_{tag}_{:08x}", random() as u32);
        within("creating the test database", async {
            let mut admin = MySqlConnection::connect(SERVER).await.unwrap();
            admin.execute(format!("CREATE DATABASE {}", quote_ident(&name).unwrap()).as_str()).await.unwrap();
            admin.close().await.unwrap();
        })
        .await;
        let url = format!("mysql://root@127.0.0.1:3306/{name}?name=dest1&eds-x=1&start=2024-01-01&overflow=block");
        let pool = MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(DEADLINE)
            .connect_with(connect_options(&url).unwrap())
            .await
            .unwrap();
        Db { name, url, pool }
    }

    fn driver(&self) -> MysqlDriver {
        MysqlDriver::new(&self.url).unwrap()
    }

    async fn exec(&self, sql: &str) {
        within(sql, sqlx::raw_sql(sql).execute(&self.pool)).await.unwrap();
    }

    /// The first column of every row, as text.
    async fn texts(&self, sql: &str) -> Vec<Option<String>> {
        let rows: Vec<Option<Vec<u8>>> = within(sql, sqlx::query_scalar(sql).fetch_all(&self.pool)).await.unwrap();
        rows.into_iter().map(|r| r.map(|b| String::from_utf8(b).unwrap())).collect()
    }

    /// The first column of the one row.
    async fn text(&self, sql: &str) -> Option<String> {
        let mut all = self.texts(sql).await;
        assert_eq!(all.len(), 1, "{sql}");
        all.remove(0)
    }

    /// Every row of `table` as `a|b|…` text (`NULL` for NULL), sorted.
    async fn snapshot(&self, table: &str) -> Vec<String> {
        let cols: Vec<String> = self.columns(table).await.into_iter().map(|c| c.0).collect();
        let exprs: Vec<String> =
            cols.iter().map(|c| format!("COALESCE(CAST({} AS CHAR), 'NULL')", quote_ident(c).unwrap())).collect();
        let sql =
            format!("SELECT CONCAT_WS('|', {}) FROM {} ORDER BY 1", exprs.join(", "), quote_ident(table).unwrap());
        self.texts(&sql).await.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// (column, column type, nullable) of `table`, in column order.
    async fn columns(&self, table: &str) -> Vec<(String, String, String)> {
        let q = sqlx::query_as(
            "SELECT table_name, column_name, column_type, is_nullable FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool);
        let rows: Vec<Bytes4> = within("reading the columns", q).await.unwrap();
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
        rows.into_iter().filter(|r| r.0 == table.as_bytes()).map(|(_, c, t, n)| (s(c), s(t), s(n))).collect()
    }

    /// (column type, nullable) of one column.
    async fn column(&self, table: &str, column: &str) -> (String, String) {
        let c = self.columns(table).await.into_iter().find(|c| c.0 == column);
        let c = c.unwrap_or_else(|| panic!("no column {column} in {table}"));
        (c.1, c.2)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Cleanup never waits on a lock for long: a test that left one behind fails on its own.
        let _ = from_outside("mysql", &format!("DROP DATABASE IF EXISTS {}", quote_ident(&self.name).unwrap()));
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
async fn apply(d: &MysqlDriver, schema: &Schema, folded: &[FoldedChange]) -> Result<(), DriverError> {
    within("ensure_schema", d.ensure_schema(schema)).await?;
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema }).collect();
    within("writing a batch", d.write(Batch::Folded(&batch))).await
}

// ---------------------------------------------------------------------------------------------
// URL, quoting, values, classification

#[test]
fn url_defaults_follow_eds() {
    let o = connect_options("mysql://localhost/d").unwrap();
    assert_eq!((o.get_host(), o.get_port(), o.get_database()), ("localhost", 3306, Some("d")));
    assert_eq!(o.get_charset(), "utf8mb4");
    assert!(matches!(o.get_ssl_mode(), MySqlSslMode::Disabled), "localhost defaults to ssl-mode=DISABLED");

    let o = connect_options("mariadb://u:secret@db.example.com/shop").unwrap();
    assert_eq!((o.get_host(), o.get_port(), o.get_username()), ("db.example.com", 3306, "u"));
    assert_eq!(o.get_database(), Some("shop"));
    assert!(matches!(o.get_ssl_mode(), MySqlSslMode::Preferred), "a remote host keeps sqlx's PREFERRED");

    for local in ["mysql://127.0.0.1/d", "mysql://[::1]:3307/d", "MYSQL://LOCALHOST/d", "mysql://h/d?socket=/run/s"] {
        assert!(matches!(connect_options(local).unwrap().get_ssl_mode(), MySqlSslMode::Disabled), "{local}");
    }
    assert_eq!(connect_options("mysql://[::1]:3307/d").unwrap().get_port(), 3307);
    // The session time zone is forced to UTC whatever the URL says (sqlx sets it at connect).
    let o = connect_options("mysql://h/d?timezone=%2B09:00&charset=latin1").unwrap();
    assert!(format!("{o:?}").contains("timezone: Some(\"+00:00\")"), "{o:?}");
    assert_eq!(o.get_charset(), "utf8mb4");
}

#[test]
fn url_parameters_are_honoured_and_eds_parameters_removed() {
    let url = "mysql://u@db.example.com:3307/d?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem\
               &name=my1&start=2024-01-01&overflow=block&eds-future=1";
    let o = connect_options(url).unwrap();
    assert_eq!(o.get_port(), 3307);
    assert!(matches!(o.get_ssl_mode(), MySqlSslMode::VerifyIdentity));
    let clean = clean_url(url).unwrap();
    assert_eq!(clean.url, "mysql://u@db.example.com:3307/d?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem");
    assert!(clean.has_ssl_mode);

    let o = connect_options("mysql://localhost/d?ssl-mode=required").unwrap();
    assert!(matches!(o.get_ssl_mode(), MySqlSslMode::Required), "an explicit ssl-mode wins for localhost");
    let o = connect_options("mysql://localhost/d?sslmode=PREFERRED").unwrap();
    assert!(matches!(o.get_ssl_mode(), MySqlSslMode::Preferred));
    let clean = clean_url("mariadb://h/d?name=x#frag").unwrap();
    assert_eq!(clean.url, "mysql://h/d");
    assert!(!clean.has_ssl_mode);
    let o = connect_options("mysql://us%40er:p%40ss@h/my%20db").unwrap();
    assert_eq!((o.get_username(), o.get_database()), ("us@er", Some("my db")));
}

#[test]
fn bad_urls_are_config_errors_without_the_password() {
    for bad in [
        "postgres://u:hunter2@h/d",
        "mysql://u:hunter2@h:notaport/d",
        "u:hunter2@h/d",
        "mysql://u:hunter2@h/d?ssl-mode=sometimes",
        "mysql://u:hunter2@h",
        "mysql://u:hunter2@h/",
    ] {
        let err = connect_options(bad).unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{bad}");
        assert!(!err.message.contains("hunter2"), "{bad}: {}", err.message);
        assert!(err.message.starts_with("invalid MySQL URL"), "{}", err.message);
    }
    assert!(connect_options("postgres://h/d").unwrap_err().message.contains("mysql or mariadb"));
    assert!(connect_options("mysql://h/").unwrap_err().message.contains("must name the database"));
    assert!(connect_options("mysql://h:99999/d").is_err());
    assert_eq!(redact("mysql://u:hunter2@h:3306/d?x=1"), "mysql://u:***@h:3306/d?x=1");
    assert_eq!(redact("mysql://u@h/d"), "mysql://u@h/d");
    assert_eq!(redact("mysql://h/d"), "mysql://h/d");
    assert!(MysqlDriver::new("mysql://u:hunter2@h:x/d").unwrap_err().message.contains("u:***@"));
}

#[test]
fn identifiers_are_always_quoted() {
    assert_eq!(quote_ident("a`b").unwrap(), "`a``b`");
    assert_eq!(quote_ident("updatedDate").unwrap(), "`updatedDate`");
    assert_eq!(quote_ident("order").unwrap(), "`order`");
    assert_eq!(quote_ident("with space").unwrap(), "`with space`");
    assert_eq!(quote_ident("x`; DROP TABLE y; --").unwrap(), "`x``; DROP TABLE y; --`");
    assert_eq!(quote_ident("it's \"q\"").unwrap(), "`it's \"q\"`");
    assert_eq!(quote_ident(&"é".repeat(64)).unwrap().chars().count(), 66);
    for bad in ["", "a\0b", &"a".repeat(65), "trailing ", "emoji😀"] {
        assert_eq!(quote_ident(bad).unwrap_err().class, ErrorClass::Rejected, "{bad:?}");
    }
}

#[test]
fn iso_8601_date_times_become_utc_microseconds() {
    let t = |s: &str| datetime_text(s);
    assert_eq!(t("2024-03-01T10:00:00+05:30").as_deref(), Some("2024-03-01 04:30:00.000000"));
    assert_eq!(t("2024-03-01T10:00:00Z").as_deref(), Some("2024-03-01 10:00:00.000000"));
    assert_eq!(t("2024-03-01t10:00:00z").as_deref(), Some("2024-03-01 10:00:00.000000"));
    assert_eq!(t("2024-03-01 10:00:00-08:00").as_deref(), Some("2024-03-01 18:00:00.000000"));
    assert_eq!(t("2024-03-01T10:00:00+0530").as_deref(), Some("2024-03-01 04:30:00.000000"));
    assert_eq!(t("2024-03-01T10:00:00+05").as_deref(), Some("2024-03-01 05:00:00.000000"));
    assert_eq!(t("2024-03-01T10:00:00").as_deref(), Some("2024-03-01 10:00:00.000000"), "no offset is UTC");
    assert_eq!(t("2024-03-01T10:00").as_deref(), Some("2024-03-01 10:00:00.000000"));
    assert_eq!(t("2024-03-01").as_deref(), Some("2024-03-01 00:00:00.000000"));
    assert_eq!(t("2024-07-11T21:16:51.708Z").as_deref(), Some("2024-07-11 21:16:51.708000"));
    assert_eq!(t("2024-07-11T21:16:51.708587506Z").as_deref(), Some("2024-07-11 21:16:51.708588"), "rounded");
    assert_eq!(t("2024-12-31T23:59:59.9999996Z").as_deref(), Some("2025-01-01 00:00:00.000000"), "carried");
    assert_eq!(t("2024-03-01T00:30:00+05:30").as_deref(), Some("2024-02-29 19:00:00.000000"), "leap day");
    assert_eq!(t("1901-12-13T20:45:52Z").as_deref(), Some("1901-12-13 20:45:52.000000"), "not clamped");
    assert_eq!(t("1969-07-20T20:17:40.123456Z").as_deref(), Some("1969-07-20 20:17:40.123456"));
    assert_eq!(t("1969-12-31T23:59:59.999999Z").as_deref(), Some("1969-12-31 23:59:59.999999"));
    assert_eq!(t("2100-01-01T00:00:00Z").as_deref(), Some("2100-01-01 00:00:00.000000"));
    assert_eq!(t("2016-12-31T23:59:60Z").as_deref(), Some("2017-01-01 00:00:00.000000"), "leap second");
    assert_eq!(t("2024-01-01T24:00:00Z").as_deref(), Some("2024-01-02 00:00:00.000000"));
    assert_eq!(t("0001-01-01T00:00:00Z").as_deref(), Some("0001-01-01 00:00:00.000000"));
    assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_datetime("1970-01-01T00:00:00.000001+00:00"), Some(1));
    assert_eq!(parse_datetime("1969-12-31T23:59:59.999999Z"), Some(-1));
    assert_eq!(format_micros(-1).as_deref(), Some("1969-12-31 23:59:59.999999"));
    for bad in [
        "",
        "now",
        "yesterday",
        "today",
        "epoch",
        "infinity",
        "20x6-01-01T00:00:00Z",
        "2024-13-01",
        "2023-02-29",
        "2024-04-31",
        "2024-00-10",
        "2024-01-00",
        "2024-01-01T25:00:00Z",
        "2024-01-01T24:00:01Z",
        "2024-01-01T10:60",
        "2024-01-01T10:00:61",
        "2024-01-01T10:00:00+24:00",
        "2024-01-01T10:00:00+05:3",
        "2024-01-01T10:00:00 UTC",
        "2024-01-01T10:00:00.Z",
        "2024-01-01T",
        "2024-1-1",
        "+2024-01-01",
        "2024-01-01T10:00:00Zjunk",
        "0000-01-01T00:00:00+01:00",
        "9999-12-31T23:00:00-01:00",
        "1 day",
        "٢٠٢٤-01-01",
        "2024-01-01T10:00:00+5:30",
    ] {
        assert_eq!(t(bad), None, "{bad:?}");
    }
}

fn plan(storage: Storage, unsigned: bool, default: Option<&'static str>) -> ColumnPlan<'static> {
    ColumnPlan { name: "c", quoted: "`c`".into(), storage, unsigned, default, on_update: false }
}

#[test]
fn values_are_converted_by_the_destination_type() {
    let cell = |storage: Storage, v: Value| plan(storage, false, None).cell(Some(&v), "t").map(Cell::into_owned);
    let big: Value = serde_json::from_str("9223372036854775807").unwrap();
    let huge: Value = serde_json::from_str("18446744073709551615").unwrap();
    assert_eq!(cell(Storage::Integer, big.clone()).unwrap(), Cell::Int(i64::MAX));
    assert_eq!(cell(Storage::Integer, json!(i64::MIN)).unwrap(), Cell::Int(i64::MIN));
    assert_eq!(cell(Storage::Integer, huge.clone()).unwrap(), Cell::UInt(u64::MAX));
    assert_eq!(cell(Storage::Integer, json!(3.0)).unwrap(), Cell::Int(3), "a whole float is an integer");
    assert_eq!(cell(Storage::Integer, json!("-42")).unwrap(), Cell::Int(-42));
    assert_eq!(cell(Storage::Integer, json!(true)).unwrap(), Cell::Int(1));
    for bad in [json!(2.5), json!("12abc"), json!({"a": 1}), json!(1e300)] {
        let err = cell(Storage::Integer, bad.clone()).unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{bad}");
        assert!(err.message.contains("column \"c\" of table \"t\""), "{}", err.message);
    }
    let err = plan(Storage::Integer, true, None).cell(Some(&json!(-1)), "t").unwrap_err();
    assert!(err.message.contains("unsigned"), "{}", err.message);
    assert_eq!(cell(Storage::Float, json!(0.1)).unwrap(), Cell::Float(0.1));
    assert_eq!(cell(Storage::Float, big.clone()).unwrap(), Cell::Int(i64::MAX), "the server converts exactly");
    assert_eq!(cell(Storage::Float, json!("1.5")).unwrap(), Cell::Float(1.5));
    assert_eq!(cell(Storage::Decimal, json!(12.345)).unwrap(), Cell::Text("12.345".into()));
    assert_eq!(cell(Storage::Decimal, huge).unwrap(), Cell::Text("18446744073709551615".into()));
    assert_eq!(cell(Storage::Boolean, json!(true)).unwrap(), Cell::Bool(true));
    assert_eq!(cell(Storage::Boolean, json!(0)).unwrap(), Cell::Bool(false));
    assert_eq!(cell(Storage::Boolean, json!("TRUE")).unwrap(), Cell::Bool(true));
    assert_eq!(cell(Storage::Boolean, json!(2)).unwrap_err().class, ErrorClass::Rejected);
    assert_eq!(cell(Storage::Text, json!("x'y")).unwrap(), Cell::Text("x'y".into()));
    assert_eq!(cell(Storage::Text, big).unwrap(), Cell::Text("9223372036854775807".into()));
    assert_eq!(cell(Storage::Text, json!({"a": [1, "b"]})).unwrap(), Cell::Text(r#"{"a":[1,"b"]}"#.into()));
    assert_eq!(cell(Storage::Json, json!("x'y")).unwrap(), Cell::Text("\"x'y\"".into()), "a JSON string");
    assert_eq!(cell(Storage::Json, json!([1, 2])).unwrap(), Cell::Text("[1,2]".into()));
    assert_eq!(
        cell(Storage::DateTime, json!("2024-01-01T00:00:00+01:00")).unwrap(),
        Cell::Text("2023-12-31 23:00:00.000000".into())
    );
    for bad in [json!("now"), json!(1_700_000_000), json!("2024-02-30")] {
        let err = cell(Storage::DateTime, bad.clone()).unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected);
        assert!(
            err.message.contains("is not an ISO-8601 date-time") && err.message.contains("\"c\""),
            "{}",
            err.message
        );
    }
    assert_eq!(
        cell(Storage::Timestamp, json!("1970-01-01T00:00:01Z")).unwrap(),
        Cell::Text("1970-01-01 00:00:01.000000".into())
    );
    assert_eq!(
        cell(Storage::Timestamp, json!("2038-01-19T03:14:07.999999Z")).unwrap(),
        Cell::Text("2038-01-19 03:14:07.999999".into())
    );
    for bad in ["1970-01-01T00:00:00Z", "1969-07-20T20:17:40Z", "2038-01-19T03:14:08Z", "2100-01-01T00:00:00Z"] {
        let err = cell(Storage::Timestamp, json!(bad)).unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{bad}");
        assert!(err.message.contains("TIMESTAMP") && err.message.contains(bad), "{}", err.message);
    }
    // Missing and null values: NULL, or the JSON default of a not-null object/array column.
    assert_eq!(plan(Storage::Json, false, None).cell(None, "t").unwrap(), Cell::Null);
    assert_eq!(plan(Storage::Json, false, Some("{}")).cell(None, "t").unwrap(), Cell::Text("{}".into()));
    assert_eq!(plan(Storage::Json, false, Some("[]")).cell(Some(&Value::Null), "t").unwrap(), Cell::Text("[]".into()));
    // A long value is cut in the message.
    let err = cell(Storage::Integer, json!("x".repeat(10_000))).unwrap_err();
    assert!(err.message.len() < 300, "{}", err.message);

    let n = |v: Value| match v {
        Value::Number(n) => n,
        _ => unreachable!(),
    };
    assert_eq!(number_text(&Number::from(u64::MAX), true), "18446744073709551615");
    assert_eq!(number_text(&n(json!(1e21)), false), "1000000000000000000000");
    assert_eq!(number_text(&n(json!(3.0)), true), "3");
    assert_eq!(value_text(&json!(false)), "false");
}

#[test]
fn not_null_is_loosened_keeping_the_rest_of_the_definition() {
    let create = "CREATE TABLE `t` (\n  `id` varchar(64) NOT NULL,\n  `a` varchar(10) NOT NULL DEFAULT 'NOT NULL' COMMENT 'x NOT NULL',\n  \
                  `b``q` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL CHECK (json_valid(`b``q`)),\n  \
                  `c` int(11) GENERATED ALWAYS AS (`x` IS NOT NULL) VIRTUAL,\n  `d` timestamp NOT NULL DEFAULT current_timestamp() ON UPDATE current_timestamp(),\n  \
                  `e` enum('NOT NULL','b') NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
    assert_eq!(
        loosened_definition(create, "a").as_deref(),
        Some("varchar(10) NULL DEFAULT 'NOT NULL' COMMENT 'x NOT NULL'")
    );
    assert_eq!(
        loosened_definition(create, "b`q").as_deref(),
        Some("longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL CHECK (json_valid(`b``q`))")
    );
    assert_eq!(loosened_definition(create, "c"), None, "IS NOT NULL inside parentheses is not the column's");
    assert_eq!(
        loosened_definition(create, "d").as_deref(),
        Some("timestamp NULL DEFAULT current_timestamp() ON UPDATE current_timestamp()")
    );
    assert_eq!(loosened_definition(create, "e").as_deref(), Some("enum('NOT NULL','b') NULL"));
    assert_eq!(loosened_definition(create, "missing"), None);
}

#[test]
fn rows_are_cut_by_placeholders_and_bytes() {
    let row = |s: &str| vec![Cell::Text("id".into()), Cell::Text(s.to_owned().into()), Cell::Int(1)];
    let rows: Vec<Vec<Cell>> = (0..10).map(|_| row("x")).collect();
    assert_eq!(chunks(&rows, 60_000, 1 << 20).unwrap(), vec![0..10]);
    assert_eq!(chunks(&rows, 9, 1 << 20).unwrap(), vec![0..3, 3..6, 6..9, 9..10]);
    assert_eq!(chunks(&rows, 2, 1 << 20).unwrap().len(), 10, "at least one row per statement");
    // Each row is (2 + 12) + (1 + 12) + 12 = 39 bytes.
    assert_eq!(chunks(&rows, 60_000, 100).unwrap(), vec![0..2, 2..4, 4..6, 6..8, 8..10]);
    let mut rows = rows;
    rows.insert(4, row(&"y".repeat(200)));
    assert_eq!(chunks(&rows, 60_000, 100).unwrap_err(), 4, "a row larger than a statement");
    assert!(chunks(&[], 10, 10).unwrap().is_empty());
}

#[test]
fn error_numbers_are_classified() {
    use ErrorClass::*;
    for (number, state, class) in [
        (1205, "HY000", Transient),
        (1213, "40001", Transient),
        (2006, "HY000", Transient),
        (2013, "HY000", Transient),
        (1040, "08004", Transient),
        (1927, "70100", Transient),
        (1146, "42S02", Transient),
        (1054, "42S22", Transient),
        (1045, "28000", Config),
        (1044, "42000", Config),
        (1049, "42000", Config),
        (1142, "42000", Config),
        (1290, "HY000", Config),
        (1048, "23000", Rejected),
        (1264, "22003", Rejected),
        (1292, "22007", Rejected),
        (1366, "22007", Rejected),
        (1406, "22001", Rejected),
        (1265, "01000", Rejected),
        (3140, "22032", Rejected),
        (4025, "23000", Rejected),
        (1452, "23000", Rejected),
        (1451, "23000", Rejected),
        (1153, "08S01", TooLarge),
        (1390, "HY000", TooLarge),
        (1197, "HY000", TooLarge),
        (9999, "08S01", Transient),
        (9999, "28000", Config),
        (9999, "22012", Rejected),
        (9999, "HY000", Unknown),
        // A trigger's SIGNAL: the row.
        (1644, "45000", Rejected),
        (9999, "45001", Rejected),
    ] {
        assert_eq!(classify_number(number, state), class, "{number} {state}");
    }
    assert_eq!(classify(&sqlx::Error::PoolTimedOut), Transient);
    assert_eq!(classify(&sqlx::Error::Io(std::io::Error::other("reset"))), Transient);
    assert_eq!(classify(&sqlx::Error::Configuration("bad".into())), Config);
}

#[test]
fn ddl_types_follow_the_spec() {
    assert_eq!(ddl_type(&ColumnType::Text, false), "LONGTEXT");
    assert_eq!(ddl_type(&ColumnType::Text, true), "VARCHAR(255)");
    assert_eq!(ddl_type(&ColumnType::DateTime, false), "DATETIME(6)");
    assert_eq!(ddl_type(&ColumnType::Integer, true), "BIGINT");
    assert_eq!(ddl_type(&ColumnType::Number, false), "DOUBLE");
    assert_eq!(ddl_type(&ColumnType::Boolean, false), "BOOLEAN");
    assert_eq!(ddl_type(&ColumnType::Object, false), "JSON");
    assert_eq!(ddl_type(&ColumnType::Enum { values: vec![] }, false), "VARCHAR(64)");
    assert_eq!(ddl_type(&ColumnType::Array { items: None }, false), "JSON");
    assert_eq!(ddl_type(&ColumnType::Unknown("uuid".into()), false), "LONGTEXT");
    assert_eq!(ddl_type(&ColumnType::Unknown("uuid".into()), true), "VARCHAR(255)");
}

#[tokio::test]
async fn registered_and_described() {
    assert_eq!(crate::find("mysql").map(|d| d.name), Some("MySQL"));
    assert_eq!(crate::find("MariaDB").map(|d| d.name), Some("MySQL"));
    assert!(crate::descriptions().iter().any(|d| d.scheme == "mysql"));
    let d = MysqlDriver::new(SERVER).unwrap();
    conformance::description_is_complete(&d).unwrap();
    assert_eq!(d.limits().max_rows, 5_000);
    assert_eq!(d.limits().max_bytes, 2 << 20, "batches bounded for memory (README: drain figures)");
    assert_eq!(d.limits().max_bind_params, 60_000);
    assert!(d.describe().needs_schema);
    assert_eq!(d.describe().fields.iter().find(|f| f.name == "Port").and_then(|f| f.default), Some("3306"));
    let err = d.write(Batch::Events(&[])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
}

#[test]
fn the_driver_can_be_made_outside_a_runtime() {
    let d = MysqlDriver::new("mysql://u:pw@h/d").unwrap();
    assert!(!format!("{d:?}").contains("pw"));
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[tokio::test]
async fn sessions_run_in_utc_with_a_strict_sql_mode_and_utf8mb4() {
    let db = Db::new("session").await;
    let d = db.driver();
    d.test().await.unwrap();
    let (tz, mode, charset): (Vec<u8>, Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT CAST(@@session.time_zone AS CHAR), CAST(@@session.sql_mode AS CHAR), \
         CAST(@@session.character_set_connection AS CHAR)",
    )
    .fetch_one(&d.pool)
    .await
    .unwrap();
    assert_eq!(String::from_utf8(tz).unwrap(), "+00:00");
    let mode = String::from_utf8(mode).unwrap();
    for m in ["STRICT_ALL_TABLES", "NO_ZERO_DATE", "NO_ZERO_IN_DATE", "ERROR_FOR_DIVISION_BY_ZERO"] {
        assert!(mode.split(',').any(|x| x == m), "{m} missing from {mode}");
    }
    assert_eq!(String::from_utf8(charset).unwrap(), "utf8mb4");
}

/// Without changing the server's global zone (which would disturb every other test): the driver
/// writes through its UTC session, and a second connection whose session zone is +09:00 reads the
/// instants back as epoch seconds and as +09:00 wall-clock time.
#[tokio::test]
async fn timestamps_are_stored_as_the_right_instant_whatever_the_session_zone() {
    let db = Db::new("tz").await;
    db.exec("CREATE TABLE tz (id VARCHAR(64) NOT NULL PRIMARY KEY, ts TIMESTAMP(6) NULL, dt DATETIME(6) NULL)").await;
    let d = db.driver();
    let s = schema(json!({"table": "tz", "modelVersion": "v1", "primaryKeys": ["id"], "properties": {
        "id": {"type": "string"},
        "ts": {"type": "string", "format": "date-time", "nullable": true},
        "dt": {"type": "string", "format": "date-time", "nullable": true}}}));
    apply(
        &d,
        &s,
        &changes(&[
            ins("tz", json!({"id": "a", "ts": "2024-03-01T10:00:00+05:30", "dt": "2024-03-01T10:00:00+05:30"})),
            ins("tz", json!({"id": "b", "ts": "2024-07-11T21:16:51.708587Z", "dt": "1969-07-20T20:17:40.123456Z"})),
        ]),
    )
    .await
    .unwrap();
    let mut tokyo = MySqlConnection::connect_with(&connect_options(&db.url).unwrap().timezone(None)).await.unwrap();
    tokyo.execute("SET time_zone = '+09:00'").await.unwrap();
    let rows: Vec<Bytes4> = sqlx::query_as(
        "SELECT id, CAST(UNIX_TIMESTAMP(ts) AS CHAR), CAST(ts AS CHAR), CAST(dt AS CHAR) FROM tz ORDER BY id",
    )
    .fetch_all(&mut tokyo)
    .await
    .unwrap();
    let rows: Vec<[String; 4]> =
        rows.into_iter().map(|(a, b, c, d)| [a, b, c, d].map(|x| String::from_utf8(x).unwrap())).collect();
    assert_eq!(
        rows,
        [
            // 2024-03-01T04:30:00Z is 1709267400.
            ["a", "1709267400.000000", "2024-03-01 13:30:00.000000", "2024-03-01 04:30:00.000000"],
            ["b", "1720732611.708587", "2024-07-12 06:16:51.708587", "1969-07-20 20:17:40.123456"],
        ]
        .map(|r| r.map(String::from))
    );
    tokyo.close().await.unwrap();
    // The driver's own sessions see UTC.
    assert_eq!(
        db.text("SELECT CAST(ts AS CHAR) FROM tz WHERE id = 'a'").await.as_deref(),
        Some("2024-03-01 04:30:00.000000")
    );
    // Outside TIMESTAMP's range: rejected with a clear message, not stored as zeros.
    let err =
        apply(&d, &s, &changes(&[ins("tz", json!({"id": "c", "ts": "2100-01-01T00:00:00Z"}))])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected);
    assert!(err.message.contains("TIMESTAMP") && err.message.contains("\"ts\""), "{}", err.message);
    assert_eq!(db.snapshot("tz").await.len(), 2);
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
    MysqlDriver::new(&db.url).unwrap().ensure_schema(&order).await.unwrap();
    let cols = db.columns("order").await;
    assert_eq!(cols.len(), 98);
    assert_eq!(cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), order.column_names().collect::<Vec<_>>());
    let col = |name: &str| cols.iter().find(|c| c.0 == name).map(|c| (c.1.as_str(), c.2.as_str())).unwrap();
    assert_eq!(col("id"), ("varchar(255)", "NO"));
    assert_eq!(col("updatedDate"), ("datetime(6)", "YES"));
    assert_eq!(col("createdDate"), ("datetime(6)", "NO"));
    assert_eq!(col("number"), ("longtext", "NO"));
    assert!(col("inspectionCount").0.starts_with("bigint") && col("inspectionCount").1 == "NO");
    assert_eq!(col("mileageIn"), ("double", "YES"));
    assert_eq!(col("paid"), ("tinyint(1)", "NO"));
    assert_eq!(col("status"), ("varchar(64)", "NO"));
    for json_col in ["labels", "appointmentDates"] {
        assert_eq!(col(json_col).1, "NO");
        assert!(matches!(col(json_col).0, "json" | "longtext"), "{json_col}: {:?}", col(json_col));
    }
    assert_eq!(col("customFields").1, "YES");
    let pk = db
        .text(
            "SELECT CAST(GROUP_CONCAT(column_name ORDER BY seq_in_index) AS CHAR) FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = 'order' AND index_name = 'PRIMARY'",
        )
        .await;
    assert_eq!(pk.as_deref(), Some("id"));
    let (engine, collation) = sqlx::query_as::<_, (Vec<u8>, Vec<u8>)>(
        "SELECT engine, table_collation FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'order'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(engine, b"InnoDB");
    assert!(collation.starts_with(b"utf8mb4_"), "{}", String::from_utf8_lossy(&collation));

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
    assert_eq!(db.text("SELECT CAST(count(*) AS CHAR) FROM `order`").await.as_deref(), Some("2"));
    assert_eq!(
        db.texts(
            "SELECT CONCAT_WS('|', CAST(labels AS CHAR), CAST(appointmentDates AS CHAR), CAST(assignedTechnicianIds AS CHAR), \
             COALESCE(CAST(customFields AS CHAR), 'NULL'), status, CAST(inspectionCount AS CHAR), CAST(paid AS CHAR), \
             CAST(createdDate AS CHAR)) FROM `order` ORDER BY id"
        )
        .await,
        vec![
            Some(r#"{"k":"v"}|["a"]|["a"]|{"k":"v"}|Estimate|42|1|2024-07-11 21:16:51.708000"#.to_string()),
            Some("{}|[]|[]|NULL|Estimate|42|1|2024-07-11 21:16:51.708000".to_string())
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

#[tokio::test]
async fn upserts_and_deletes_round_trip() {
    let db = Db::new("round_trip").await;
    let d = db.driver();
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
            "SELECT CONCAT_WS('|', name, COALESCE(CAST(n AS CHAR), 'NULL'), COALESCE(CAST(updatedDate AS CHAR), 'NULL'), \
             COALESCE(CAST(doc AS CHAR), 'NULL'), COALESCE(local_note, 'NULL')) FROM things WHERE id = '{id}'"
        )
    };
    assert_eq!(db.text(&row("k1")).await.as_deref(), Some(r#"a2|1|2024-01-02 03:04:05.000000|{"x":1}|mine"#));
    assert_eq!(db.text(&row("k2")).await.as_deref(), Some("b2|NULL|NULL|NULL|mine"));
    assert_eq!(
        db.text(&row("k4")).await.as_deref(),
        Some("new|NULL|NULL|NULL|NULL"),
        "an update of a missing row inserts it"
    );

    // A diff column missing from the row image is set to NULL explicitly (EDS emitted invalid SQL).
    apply(&d, &s, &changes(&[upd(t, json!({"id": "k1", "name": "a3"}), Some(&["n", "unknown"]))])).await.unwrap();
    assert_eq!(db.text(&row("k1")).await.as_deref(), Some(r#"a2|NULL|2024-01-02 03:04:05.000000|{"x":1}|mine"#));

    // An update with nothing to set (only the key changed, or nothing known) inserts or does nothing.
    apply(&d, &s, &changes(&[upd(t, json!({"id": "k1", "name": "zzz"}), Some(&["id"]))])).await.unwrap();
    assert_eq!(db.text(&row("k1")).await.as_deref(), Some(r#"a2|NULL|2024-01-02 03:04:05.000000|{"x":1}|mine"#));
    apply(&d, &s, &changes(&[upd(t, json!({"id": "k9", "name": "nine"}), Some(&["id"]))])).await.unwrap();
    assert_eq!(db.text(&row("k9")).await.as_deref(), Some("nine|NULL|NULL|NULL|NULL"));

    // Insert, update and delete of different keys in one batch; a key inserted then deleted.
    apply(
        &d,
        &s,
        &changes(&[
            del(t, &["k2"], Some(json!({"id": "k2"}))),
            del(t, &["k9"], None),
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
    apply(&d, &c, &changes(&[ev("INSERT", "L3", 3)])).await.unwrap();
    apply(&d, &c, &changes(&[ev("DELETE", "L1", 0)])).await.unwrap();
    assert_eq!(db.snapshot("loc_things").await, ["L2|abc|2", "L3|abc|3"]);
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
    let e = |region: &str, name: &str| {
        json!({"operation": "INSERT", "table": "things", "key": [region, "k"], "modelVersion": "v1",
               "after": {"id": "k", "name": name}})
    };
    let delete = json!({"operation": "DELETE", "table": "things", "key": ["r3", "k"], "before": {"id": "k"}});
    let batch = changes(&[e("r1", "first"), e("r2", "second")]);
    assert_eq!(batch.len(), 2, "two folded changes share one primary key");
    apply(&d, &s, &batch).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["k|NULL|NULL|second|NULL"]);
    apply(&d, &s, &changes(&[e("r1", "third"), delete.clone()])).await.unwrap();
    assert!(db.snapshot("things").await.is_empty());
    apply(&d, &s, &changes(&[delete, e("r1", "fourth")])).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["k|NULL|NULL|fourth|NULL"]);
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

const HOSTILE: &str =
    "it's \"quoted\" \\back\\slash\\ $_H_$ '); DROP TABLE x; -- 😀 tab\there\nnew\r\nline \\N \\0 \0nul \u{1a} é`tick`";

#[tokio::test]
async fn hostile_values_are_stored_exactly() {
    let db = Db::new("hostile").await;
    let d = db.driver();
    let s = vals_schema();
    let long: String = "ab\\\t😀'\"\n".repeat(512 * 1024 / 8);
    assert!(long.len() > 512 * 1024);
    let nested = json!({"a": [1, {"b": null, "c": "é\u{1F600}", "q": "'\"\\"}], "n": 12.5, "deep": {"x": {"y": []}}});
    let rows = [
        json!({"id": "h1", "s": HOSTILE, "ts": "2024-03-01T10:00:00+05:30"}),
        json!({"id": "h2", "s": long, "ts": "2024-03-01T10:00:00Z"}),
        json!({"id": "h3", "j": nested, "jreq": {"r": 1}, "ja": [{"x": 1}, [], "s", null], "ts": "1901-12-13T20:45:52Z"}),
        json!({"id": "h4", "j": null, "ts": "1969-07-20T20:17:40.123456Z", "st": "B"}),
        json!({"id": "h5", "big": 9223372036854775807i64, "f": 0.1, "b": true, "ts": "2100-01-01T00:00:00Z", "j": "a string"}),
        json!({"id": "h6", "big": -9223372036854775807i64, "f": -1.2345678901234567e-7, "b": false, "jreq": null}),
        json!({"id": "x`; DROP TABLE vals; --", "s": ""}),
        json!({"id": "😀 é", "s": "four-byte key"}),
    ];
    let events: Vec<Value> = rows.iter().map(|r| ins("vals", r.clone())).collect();
    apply(&d, &s, &changes(&events)).await.unwrap();

    let get = |id: &'static str, expr: &'static str| {
        let pool = db.pool.clone();
        async move {
            let sql = format!("SELECT {expr} FROM vals WHERE id = ?");
            let v: Option<Vec<u8>> = sqlx::query_scalar(&sql).bind(id).fetch_one(&pool).await.unwrap();
            v.map(|b| String::from_utf8(b).unwrap())
        }
    };
    assert_eq!(get("h1", "CAST(s AS CHAR)").await.as_deref(), Some(HOSTILE));
    assert_eq!(get("h2", "CAST(s AS CHAR)").await, Some(long));
    assert_eq!(get("x`; DROP TABLE vals; --", "CAST(s AS CHAR)").await.as_deref(), Some(""));
    assert_eq!(get("😀 é", "CAST(s AS CHAR)").await.as_deref(), Some("four-byte key"));
    let json_of = |t: Option<String>| t.map(|t| serde_json::from_str::<Value>(&t).unwrap());
    assert_eq!(json_of(get("h3", "CAST(j AS CHAR)").await), Some(nested));
    assert_eq!(json_of(get("h3", "CAST(ja AS CHAR)").await), Some(json!([{"x": 1}, [], "s", null])));
    assert_eq!(json_of(get("h3", "CAST(jreq AS CHAR)").await), Some(json!({"r": 1})));
    // JSON null and a missing value: NULL in a nullable column, `{}`/`[]` in not-null JSON columns.
    assert_eq!(get("h4", "CAST(j AS CHAR)").await, None);
    assert_eq!(get("h1", "CAST(j AS CHAR)").await, None);
    assert_eq!(get("h4", "CAST(jreq AS CHAR)").await.as_deref(), Some("{}"));
    assert_eq!(get("h6", "CAST(jreq AS CHAR)").await.as_deref(), Some("{}"), "an explicit null too");
    assert_eq!(get("h4", "CAST(ja AS CHAR)").await.as_deref(), Some("[]"));
    assert_eq!(get("h4", "st").await.as_deref(), Some("B"));
    assert_eq!(get("h1", "st").await, None, "an enum gets no JSON default");
    assert_eq!(json_of(get("h5", "CAST(j AS CHAR)").await), Some(json!("a string")));
    assert_eq!(get("h5", "CAST(big AS CHAR)").await.as_deref(), Some("9223372036854775807"));
    assert_eq!(get("h6", "CAST(big AS CHAR)").await.as_deref(), Some("-9223372036854775807"));
    assert_eq!(get("h5", "CAST(big = 9223372036854775807 AS CHAR)").await.as_deref(), Some("1"));
    let f: f64 = get("h5", "CAST(f AS CHAR)").await.unwrap().parse().unwrap();
    assert_eq!(f, 0.1);
    let f: f64 = get("h6", "CAST(f AS CHAR)").await.unwrap().parse().unwrap();
    assert_eq!(f, -1.2345678901234567e-7);
    assert_eq!(get("h5", "CAST(b AS CHAR)").await.as_deref(), Some("1"));
    assert_eq!(get("h6", "CAST(b AS CHAR)").await.as_deref(), Some("0"));
    let utc = "DATE_FORMAT(ts, '%Y-%m-%dT%H:%i:%s.%fZ')";
    for (id, expect) in [
        ("h1", "2024-03-01T04:30:00.000000Z"),
        ("h2", "2024-03-01T10:00:00.000000Z"),
        ("h3", "1901-12-13T20:45:52.000000Z"),
        ("h4", "1969-07-20T20:17:40.123456Z"),
        ("h5", "2100-01-01T00:00:00.000000Z"),
    ] {
        assert_eq!(get(id, utc).await.as_deref(), Some(expect), "{id}");
    }
    // A replay changes nothing.
    let before = db.snapshot("vals").await;
    apply(&d, &s, &changes(&events)).await.unwrap();
    assert_eq!(db.snapshot("vals").await, before);
    assert_eq!(before.len(), 8);
}

#[tokio::test]
async fn hostile_table_and_column_names() {
    let db = Db::new("names").await;
    let d = db.driver();
    db.exec("CREATE TABLE y (v int); INSERT INTO y VALUES (1)").await;
    let table = "x`; DROP TABLE y; --";
    let s = schema(json!({"table": table, "modelVersion": "v1", "primaryKeys": ["Id Key"], "properties": {
        "Id Key": {"type": "string"},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true},
        "with space": {"type": "string", "nullable": true},
        "quo`te": {"type": "integer", "nullable": true},
        "x`; DROP TABLE y; --": {"type": "string", "nullable": true},
        "UPPER": {"type": "boolean", "nullable": true},
        "Doc `x` y": {"type": "object", "nullable": true}
    }}));
    let e = |op: &str, v: i64| {
        json!({"operation": op, "table": table, "key": ["K1"], "modelVersion": "v1", "after": {
            "Id Key": "K1", "updatedDate": "2024-01-01T00:00:00Z", "with space": "s", "quo`te": v,
            "x`; DROP TABLE y; --": "evil", "UPPER": true, "Doc `x` y": "plain"}, "before": {"Id Key": "K1"}})
    };
    apply(&d, &s, &changes(&[e("INSERT", 1)])).await.unwrap();
    apply(&d, &s, &changes(&[e("UPDATE", 2)])).await.unwrap();
    let cols: Vec<String> = db.columns(table).await.into_iter().map(|c| c.0).collect();
    assert_eq!(cols, ["Id Key", "Doc `x` y", "UPPER", "quo`te", "updatedDate", "with space", "x`; DROP TABLE y; --"]);
    // The JSON column is known as one (on MariaDB by its json_valid check): a string in it is a
    // JSON string.
    assert_eq!(db.snapshot(table).await, [r#"K1|"plain"|1|2|2024-01-01 00:00:00.000000|s|evil"#]);
    assert_eq!(db.text("SELECT CAST(count(*) AS CHAR) FROM y").await.as_deref(), Some("1"), "y survives");
    apply(&d, &s, &changes(&[e("DELETE", 0)])).await.unwrap();
    assert!(db.snapshot(table).await.is_empty());

    // Capitals and spaces in a table name are kept exactly.
    let mixed = schema(json!({"table": "Mixed Case", "modelVersion": "v1", "primaryKeys": ["id"], "properties": {
        "id": {"type": "string"}, "Name": {"type": "string", "nullable": true}}}));
    apply(&d, &mixed, &changes(&[ins("Mixed Case", json!({"id": "m", "Name": "N"}))])).await.unwrap();
    assert_eq!(db.snapshot("Mixed Case").await, ["m|N"]);
    // A name MySQL cannot hold is rejected before any SQL runs.
    let bad = schema(
        json!({"table": "bad ", "modelVersion": "v1", "primaryKeys": ["id"], "properties": {"id": {"type": "string"}}}),
    );
    assert_eq!(d.ensure_schema(&bad).await.unwrap_err().class, ErrorClass::Rejected);
}

fn order_lite(version: &str) -> Schema {
    schema(json!({"table": "order", "modelVersion": version, "primaryKeys": ["id"], "required": ["id"], "properties": {
        "id": {"type": "string"},
        "name": {"type": "string", "nullable": true},
        "updatedDate": {"type": "string", "format": "date-time", "nullable": true},
        "number": {"type": "integer", "nullable": true},
        "amount": {"type": "number", "nullable": true},
        "meta": {"type": "object", "nullable": true},
        "paid": {"type": "boolean", "nullable": true},
        "status": {"type": "array", "items": {"type": "enum", "enum": ["Estimate", "Invoice"]}, "nullable": true},
        "note": {"type": "string", "nullable": true}
    }}))
}

/// The DDL EDS's MySQL driver ran (spec §7.2): backticks, TIMESTAMP, a VARCHAR(64) key, FLOAT,
/// BOOLEAN, JSON, `) CHARACTER SET=utf8mb4;`.
const EDS_ORDER_DDL: &str = "CREATE TABLE IF NOT EXISTS `order` (\n\t`id` VARCHAR(64) NOT NULL,\n\t`amount` FLOAT,\n\
\t`meta` JSON,\n\t`name` TEXT,\n\t`number` BIGINT,\n\t`paid` BOOLEAN,\n\t`status` VARCHAR(64),\n\t`updatedDate` TIMESTAMP,\n\
\tPRIMARY KEY (`id`)\n) CHARACTER SET=utf8mb4;\n\
REPLACE INTO `order` (`id`,`amount`,`meta`,`name`,`number`,`paid`,`status`,`updatedDate`) VALUES \
('old',1.5,'{\\\"a\\\":1}','kept',7,1,'Estimate','2020-01-01 00:00:00');\n";

#[tokio::test]
async fn a_table_made_by_eds_is_kept_and_written() {
    let db = Db::new("eds_ddl").await;
    db.exec(EDS_ORDER_DDL).await;
    let before = db.snapshot("order").await;
    assert_eq!(before, [r#"old|1.5|{"a":1}|kept|7|1|Estimate|2020-01-01 00:00:00"#]);
    let d = db.driver();
    let s = order_lite("v1");
    apply(
        &d,
        &s,
        &changes(&[
            ins(
                "order",
                json!({"id": "new", "name": "n", "updatedDate": "2024-03-01T10:00:00+05:30", "number": 9223372036854775807i64,
                       "amount": 0.25, "meta": {"k": [1, "x"]}, "paid": false, "status": "Invoice", "note": "added"}),
            ),
            upd("order", json!({"id": "old", "name": "renamed", "number": 70}), Some(&["name"])),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        db.snapshot("order").await,
        [
            r#"new|0.25|{"k":[1,"x"]}|n|9223372036854775807|0|Invoice|2024-03-01 04:30:00|added"#,
            r#"old|1.5|{"a":1}|renamed|7|1|Estimate|2020-01-01 00:00:00|NULL"#
        ]
    );
    assert_eq!(
        db.column("order", "note").await,
        ("longtext".to_string(), "YES".to_string()),
        "the missing column was added"
    );
    assert_eq!(db.column("order", "updatedDate").await.0, "timestamp", "never retyped");
    assert_eq!(db.column("order", "id").await.0, "varchar(64)");
    // TIMESTAMP's range is checked before the server sees the value.
    let err = apply(&d, &s, &changes(&[ins("order", json!({"id": "moon", "updatedDate": "1969-07-20T20:17:40Z"}))]))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected);
    assert!(err.message.contains("TIMESTAMP") && err.message.contains("updatedDate"), "{}", err.message);
    // The key is a VARCHAR(64): a longer id is refused by the server, not cut.
    let err = apply(&d, &s, &changes(&[ins("order", json!({"id": "k".repeat(65)}))])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert!(err.message.contains("1406"), "{}", err.message);
    assert_eq!(db.snapshot("order").await.len(), 2);
}

#[tokio::test]
async fn a_hand_made_table_is_written_by_its_own_types() {
    let db = Db::new("own_types").await;
    db.exec(
        "CREATE TABLE `order` (`id` VARCHAR(64) NOT NULL PRIMARY KEY, `name` VARCHAR(20), `updatedDate` DATETIME, \
         `number` INT, `amount` DECIMAL(12,2), `meta` JSON, `paid` TINYINT(1), `status` ENUM('Estimate','Invoice'), \
         `note` MEDIUMTEXT, `localOnly` VARCHAR(10) NOT NULL DEFAULT 'x' COMMENT 'NOT NULL here') DEFAULT CHARSET=utf8mb4;\
         INSERT INTO `order` (id, name) VALUES ('old', 'kept')",
    )
    .await;
    let d = db.driver();
    let s = order_lite("v1");
    let row = json!({"id": "a", "name": "short", "updatedDate": "2024-03-01T10:00:00.4+05:30", "number": 42,
                     "amount": 12.345, "meta": {"k": [1, 2]}, "paid": true, "status": "Estimate"});
    apply(&d, &s, &changes(&[ins("order", row)])).await.unwrap();
    assert_eq!(
        db.snapshot("order").await,
        [
            r#"a|short|2024-03-01 04:30:00|42|12.35|{"k":[1,2]}|1|Estimate|NULL|x"#,
            "old|kept|NULL|NULL|NULL|NULL|NULL|NULL|NULL|x"
        ]
    );
    // The destination-only NOT NULL column lost its NOT NULL (the schema does not have it), and
    // kept its type, default and comment.
    assert_eq!(db.column("order", "localOnly").await, ("varchar(10)".to_string(), "YES".to_string()));
    assert_eq!(
        db.text(
            "SELECT CONCAT_WS('|', column_default, column_comment) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'order' AND column_name = 'localOnly'"
        )
        .await
        .as_deref(),
        Some("'x'|NOT NULL here")
    );
    // Values the column cannot hold are rejected, not cut, wrapped or rounded.
    for (bad, why) in [
        (json!({"id": "b", "name": "longer than twenty characters"}), "1406"),
        (json!({"id": "c", "number": 1i64 << 40}), "1264"),
        (json!({"id": "d", "status": "Bogus"}), "1265"),
        (json!({"id": "e", "number": 2.5}), "is not an integer"),
        (json!({"id": "f", "amount": "abc"}), "1366"),
        (json!({"id": "g", "paid": 7}), "is not a boolean"),
    ] {
        let err = apply(&d, &s, &changes(&[ins("order", bad.clone())])).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{bad}: {}", err.message);
        assert!(err.message.contains(why) && err.message.contains("order"), "{bad}: {}", err.message);
    }
    assert_eq!(db.snapshot("order").await.len(), 2);
}

fn versioned(version: &str, properties: Value, required: &[&str]) -> Schema {
    schema(
        json!({"table": "mig", "modelVersion": version, "primaryKeys": ["id"], "required": required, "properties": properties}),
    )
}

fn cols(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    list.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
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
        cols(&[("id", "varchar(255)", "NO"), ("a", "longtext", "NO"), ("b", "longtext", "YES")])
    );
    d.ensure_schema(&v2).await.unwrap();
    let after_v2 = db.columns("mig").await;
    let bigint = db.column("mig", "c").await.0;
    assert!(bigint.starts_with("bigint"), "{bigint}");
    assert_eq!(
        after_v2,
        cols(&[
            ("id", "varchar(255)", "NO"),
            ("a", "longtext", "YES"),
            ("b", "longtext", "YES"),
            ("c", &bigint, "YES")
        ]),
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
    assert_eq!(db.snapshot("mig").await, ["r1|A|B|NULL", "r2|NULL|NULL|5", "r3|A3|NULL|NULL"]);

    // A column made nullable in a newer schema loses its NOT NULL.
    let v3 =
        versioned("v3", json!({"id": {"type": "string"}, "a": {"type": "string", "nullable": true}}), &["id", "a"]);
    db.exec("UPDATE mig SET a = '-' WHERE a IS NULL; ALTER TABLE mig MODIFY a LONGTEXT NOT NULL").await;
    assert_eq!(db.column("mig", "a").await.1, "NO");
    let fresh = db.driver();
    fresh.ensure_schema(&v3).await.unwrap();
    assert_eq!(db.columns("mig").await, after_v2);

    // A type the destination column cannot hold is a configuration error naming both types.
    let v4 = versioned("v4", json!({"id": {"type": "string"}, "c": {"type": "boolean"}}), &["id"]);
    let err = fresh.ensure_schema(&v4).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(
        err.message
            .contains(&format!("column c of table mig is {bigint} at the destination but the schema says boolean")),
        "{}",
        err.message
    );
    let v4b = versioned("v4b", json!({"id": {"type": "string"}, "b": {"type": "object", "nullable": true}}), &["id"]);
    fresh.ensure_schema(&v4b).await.unwrap();
    // Text holds anything.
    let v5 = versioned("v5", json!({"id": {"type": "string"}, "b": {"type": "integer", "nullable": true}}), &["id"]);
    fresh.ensure_schema(&v5).await.unwrap();
    events = changes(&[
        json!({"operation": "INSERT", "table": "mig", "key": ["r4"], "modelVersion": "v5", "after": {"id": "r4", "b": 12}}),
    ]);
    apply(&fresh, &v5, &events).await.unwrap();
    assert_eq!(db.text("SELECT b FROM mig WHERE id = 'r4'").await.as_deref(), Some("12"));
    assert_eq!(db.columns("mig").await, after_v2, "never a DROP, never a retype");
    // A JSON column holds objects but not a plain string schema.
    db.exec("ALTER TABLE mig ADD COLUMN doc JSON").await;
    let v6 = versioned("v6", json!({"id": {"type": "string"}, "doc": {"type": "string", "nullable": true}}), &["id"]);
    let err = db.driver().ensure_schema(&v6).await.unwrap_err();
    assert!(
        err.message.contains("column doc of table mig is json at the destination but the schema says string"),
        "{}",
        err.message
    );
    // A NOT NULL JSON column loosened keeps its JSON check (MariaDB's JSON is a checked LONGTEXT).
    db.exec("ALTER TABLE mig ADD COLUMN js JSON NOT NULL DEFAULT '{}'").await;
    let with_js = versioned("v6b", json!({"id": {"type": "string"}, "js": {"type": "object"}}), &["id", "js"]);
    db.driver().ensure_schema(&with_js).await.unwrap();
    assert_eq!(db.column("mig", "js").await.1, "NO", "the schema keeps it NOT NULL");
    db.driver().ensure_schema(&v5).await.unwrap();
    assert_eq!(db.column("mig", "js").await.1, "YES");
    let err = sqlx::raw_sql("INSERT INTO mig (id, js) VALUES ('bad', 'not json')").execute(&db.pool).await.unwrap_err();
    assert!(matches!(classify(&err), ErrorClass::Rejected), "{err}");
    let r5 = json!({"operation": "INSERT", "table": "mig", "key": ["r5"], "modelVersion": "v6b",
                    "after": {"id": "r5", "js": "text"}});
    apply(&db.driver(), &with_js, &changes(&[r5])).await.unwrap();
    assert_eq!(db.text("SELECT CAST(js AS CHAR) FROM mig WHERE id = 'r5'").await.as_deref(), Some("\"text\""));
    // Column names are matched as MySQL does, regardless of case.
    let v7 = versioned("v7", json!({"id": {"type": "string"}, "B": {"type": "string", "nullable": true}}), &["id"]);
    db.driver().ensure_schema(&v7).await.unwrap();
    assert_eq!(db.columns("mig").await.len(), 6);
}

#[tokio::test]
async fn a_table_without_the_schemas_key_or_a_view_is_a_config_error() {
    let db = Db::new("no_key").await;
    db.exec("CREATE TABLE things (id VARCHAR(10), name TEXT)").await;
    let err = db.driver().ensure_schema(&things("v1", json!({}))).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
    assert!(err.message.contains("no primary key or unique index"), "{}", err.message);
    // A unique index on exactly the key will do.
    db.exec("DELETE FROM things; ALTER TABLE things ADD UNIQUE INDEX by_id (id)").await;
    let d = db.driver();
    apply(&d, &things("v1", json!({})), &changes(&[ins("things", json!({"id": "u", "name": "1"}))])).await.unwrap();
    apply(&d, &things("v1", json!({})), &changes(&[ins("things", json!({"id": "u", "name": "2"}))])).await.unwrap();
    assert_eq!(db.texts("SELECT name FROM things").await, [Some("2".to_string())]);

    db.exec("CREATE VIEW viewed AS SELECT 'x' AS id").await;
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
    assert!(err.message.contains("1146") && err.message.contains("things"), "{}", err.message);
    apply(&d, &s, &batch).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["b|NULL|NULL|NULL|NULL"]);
}

#[tokio::test]
async fn drop_table_drops_the_databases_table_and_the_next_write_recreates_it() {
    let db = Db::new("drop").await;
    let d = db.driver();
    let s = things("v1", json!({}));
    apply(&d, &s, &changes(&[ins("things", json!({"id": "old"}))])).await.unwrap();
    db.exec("ALTER TABLE things ADD COLUMN stale int").await;
    within("drop", d.drop_table("things")).await.unwrap();
    // The driver forgot the table: the next write creates it afresh, without the stale column.
    apply(&d, &s, &changes(&[ins("things", json!({"id": "new"}))])).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["new|NULL|NULL|NULL|NULL"]);
    assert!(!db.columns("things").await.iter().any(|c| c.0 == "stale"));
    // A table that is not there is no error; a hostile name is quoted.
    within("drop", d.drop_table("never_made")).await.unwrap();
    let hostile = "x`; DROP TABLE y; --";
    db.exec(&format!("CREATE TABLE y (v int); CREATE TABLE {} (v int)", quote_ident(hostile).unwrap())).await;
    within("drop", d.drop_table(hostile)).await.unwrap();
    assert!(db.columns(hostile).await.is_empty(), "the hostile name is the table dropped");
    assert_eq!(db.columns("y").await.len(), 1, "y survives");
}

fn strict() -> Schema {
    schema(json!({"table": "strict", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id", "name"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                       "ts": {"type": "string", "format": "date-time", "nullable": true},
                       "n": {"type": "integer", "nullable": true},
                       "code": {"type": "array", "items": {"type": "enum", "enum": ["A"]}, "nullable": true}}}))
}

#[tokio::test]
async fn a_write_cancelled_half_way_leaves_no_transaction_open() {
    let db = Db::new("cancelled").await;
    let d = db.driver();
    let s = strict();
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
    from_outside(&db.name, "ALTER TABLE strict COMMENT = 'eds test'")
        .unwrap_or_else(|e| panic!("DDL after the cancelled write: {e}"));
    assert_eq!(db.snapshot("strict").await, ["pre|NULL|NULL|existing|NULL"], "nothing of the cancelled write stayed");
}

#[tokio::test]
async fn one_rejected_row_rolls_back_the_batch() {
    let db = Db::new("rejected").await;
    let d = db.driver();
    let s = strict();
    apply(&d, &s, &changes(&[ins("strict", json!({"id": "pre", "name": "existing"}))])).await.unwrap();
    let good = ins("strict", json!({"id": "g1", "name": "fine"}));
    let update = upd("strict", json!({"id": "pre", "name": "changed"}), None);
    let huge: Value = serde_json::from_str("18446744073709551615").unwrap();
    for (bad, why) in [
        (ins("strict", json!({"id": "b1"})), "1048"),
        (ins("strict", json!({"id": "b2", "name": "x", "ts": "20x6-01-01T00:00:00Z"})), "not an ISO-8601 date-time"),
        (ins("strict", json!({"id": "b5", "name": "x", "ts": "yesterday"})), "not an ISO-8601 date-time"),
        (ins("strict", json!({"id": "b3", "name": "x", "n": "12abc"})), "is not an integer"),
        (ins("strict", json!({"id": "b4", "name": "x", "n": huge})), "1264"),
        (ins("strict", json!({"id": "b6", "name": "x", "code": "C".repeat(65)})), "1406"),
    ] {
        let err = apply(&d, &s, &changes(&[good.clone(), update.clone(), bad.clone()])).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Rejected, "{bad}: {}", err.message);
        assert!(err.message.contains(why) && err.message.contains("strict"), "{}", err.message);
        // The failed batch's transaction is over when `write` returns: DDL (which needs the
        // table's metadata lock) goes through at once, without this runtime running anything.
        from_outside(&db.name, "ALTER TABLE strict COMMENT = 'eds test'")
            .unwrap_or_else(|e| panic!("DDL after the rejected batch {bad}: {e}"));
        assert_eq!(db.snapshot("strict").await, ["pre|NULL|NULL|existing|NULL"], "the whole batch was rolled back");
    }
    // The good rows alone go through (what the drain's bisection ends with).
    apply(&d, &s, &changes(&[good, update])).await.unwrap();
    assert_eq!(db.snapshot("strict").await, ["g1|NULL|NULL|fine|NULL", "pre|NULL|NULL|changed|NULL"]);
}

#[tokio::test]
async fn big_batches_are_cut_into_statements_of_one_transaction() {
    let db = Db::new("chunks").await;
    // 5 columns per row and at most 12 placeholders: 2 rows per statement.
    let d = db.driver().with_max_bind_params(12);
    assert_eq!(d.limits().max_bind_params, 12);
    let s = strict();
    let rows: Vec<Value> = (0..25).map(|i| ins("strict", json!({"id": format!("r{i:02}"), "name": "n"}))).collect();
    apply(&d, &s, &changes(&rows)).await.unwrap();
    assert_eq!(d.executed.load(Ordering::Relaxed), 13);
    assert_eq!(db.texts("SELECT CAST(count(*) AS CHAR) FROM strict").await, [Some("25".to_string())]);

    // A failure in the last statement undoes the earlier ones: one transaction.
    let mut batch: Vec<Value> =
        (0..25).map(|i| upd("strict", json!({"id": format!("r{i:02}"), "name": "changed"}), None)).collect();
    batch.extend((0..20).map(|i| ins("strict", json!({"id": format!("new{i:02}"), "name": "n"}))));
    batch.push(ins("strict", json!({"id": "zz-bad"})));
    let before = d.executed.load(Ordering::Relaxed);
    let err = apply(&d, &s, &changes(&batch)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert_eq!(d.executed.load(Ordering::Relaxed) - before, 22, "every statement but the failing last one ran");
    assert_eq!(
        db.texts("SELECT CAST(count(*) AS CHAR) FROM strict WHERE name = 'changed' OR id LIKE 'new%'").await,
        [Some("0".to_string())]
    );

    // Deletes are cut too, and a statement-size limit cuts by bytes.
    let d = db.driver().with_max_bind_params(3).with_statement_bytes(2_000);
    let deletes: Vec<Value> = (0..25).map(|i| del("strict", &[&format!("r{i:02}")], None)).collect();
    apply(&d, &s, &changes(&deletes)).await.unwrap();
    assert_eq!(d.executed.load(Ordering::Relaxed), 9);
    assert!(db.snapshot("strict").await.is_empty());
    let wide: Vec<Value> =
        (0..10).map(|i| ins("strict", json!({"id": format!("w{i}"), "name": "x".repeat(500)}))).collect();
    let d = db.driver().with_statement_bytes(2_000);
    apply(&d, &s, &changes(&wide)).await.unwrap();
    assert_eq!(d.executed.load(Ordering::Relaxed), 4, "3 rows of ~570 bytes per 2,000-byte statement");
    // A row larger than any statement may carry is rejected before anything is written.
    let err =
        apply(&d, &s, &changes(&[ins("strict", json!({"id": "w-big", "name": "x".repeat(3_000)}))])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected);
    assert!(err.message.contains("more than one statement may carry"), "{}", err.message);
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let d = MysqlDriver::new("mysql://root:pw@127.0.0.1:1/test").unwrap();
    let err = d.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
    assert!(err.message.contains("127.0.0.1:1") && !err.message.contains("pw@"), "{}", err.message);
    let err = d.ensure_schema(&things("v1", json!({}))).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
}

#[tokio::test]
async fn a_wrong_password_user_or_database_is_a_config_error() {
    for (url, number) in [
        ("mysql://root:wrong-secret@127.0.0.1:3306/test", "1045"),
        ("mysql://eds_no_such_user:wrong-secret@127.0.0.1:3306/test", "1045"),
        ("mysql://root@127.0.0.1:3306/eds_no_such_database", "1049"),
    ] {
        let d = MysqlDriver::new(url).unwrap();
        let err = d.test().await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{url}: {}", err.message);
        assert!(err.message.contains(number) && !err.message.contains("wrong-secret"), "{}", err.message);
        let err = d.ensure_schema(&things("v1", json!({}))).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{url}: {}", err.message);
        assert!(!err.message.contains("wrong-secret"), "{}", err.message);
    }
    MysqlDriver::new(SERVER).unwrap().test().await.unwrap();
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
        ins("things", json!({"id": "k2", "name": "two", "doc": {"a": [1]}, "updatedDate": "2024-01-01T00:00:00.5Z"})),
        upd("things", json!({"id": "k1", "name": "one", "n": 5}), Some(&["name"])),
        del("things", &["gone"], None),
        upd("things", json!({"id": "k3", "n": 3}), None),
    ]);
    let batch: Vec<StateChange<'_>> = folded.iter().map(|change| StateChange { change, schema: &s }).collect();
    let handle = tokio::runtime::Handle::current();
    let snapshot = || tokio::task::block_in_place(|| handle.block_on(db.snapshot("things")));
    conformance::replay_is_harmless(&d, Batch::Folded(&batch), snapshot).await.unwrap();
    assert_eq!(
        db.snapshot("things").await,
        ["k1|NULL|1|one|NULL", r#"k2|{"a":[1]}|NULL|two|2024-01-01 00:00:00.500000"#, "k3|NULL|3|NULL|NULL"]
    );
    conformance::description_is_complete(&d).unwrap();
    d.test().await.unwrap();
    // An empty batch is fine too.
    d.write(Batch::Folded(&[])).await.unwrap();
}

#[tokio::test]
async fn another_unique_key_never_makes_an_upsert_touch_another_row() {
    let db = Db::new("uniq").await;
    // A hand-made table with a unique index besides the primary key.
    db.exec(
        "CREATE TABLE `things` (`id` VARCHAR(64) NOT NULL PRIMARY KEY, `name` VARCHAR(100), `n` BIGINT, \
         `doc` JSON, `updatedDate` DATETIME(6), UNIQUE KEY `things_name` (`name`)) DEFAULT CHARSET=utf8mb4;\
         INSERT INTO `things` (id, name, n) VALUES ('a', 'x', 1), ('b', 'y', 2)",
    )
    .await;
    let d = db.driver();
    let s = things("v1", json!({}));
    // A new row whose `name` is row a's: ON DUPLICATE KEY UPDATE would have rewritten row a.
    let err = apply(&d, &s, &changes(&[ins("things", json!({"id": "c", "name": "x", "n": 3}))])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert!(err.message.contains("1062") && err.message.contains("things_name"), "{}", err.message);
    // An update of row b to row a's name: refused the same way, row a untouched.
    let err =
        apply(&d, &s, &changes(&[upd("things", json!({"id": "b", "name": "x"}), Some(&["name"]))])).await.unwrap_err();
    assert!(err.message.contains("things_name"), "{}", err.message);
    assert_eq!(db.snapshot("things").await, ["a|x|1|NULL|NULL", "b|y|2|NULL|NULL"]);
    // Upserts that collide with nothing go through, by primary key: an update, a new row, a full
    // re-write of an existing row.
    let batch = changes(&[
        upd("things", json!({"id": "a", "n": 10}), Some(&["n"])),
        ins("things", json!({"id": "d", "name": "z", "n": 4})),
        ins("things", json!({"id": "b", "name": "y2", "n": 20})),
    ]);
    apply(&d, &s, &batch).await.unwrap();
    assert_eq!(db.snapshot("things").await, ["a|x|10|NULL|NULL", "b|y2|20|NULL|NULL", "d|z|4|NULL|NULL"]);
    // Replayed, it changes nothing.
    apply(&d, &s, &batch).await.unwrap();
    assert_eq!(db.snapshot("things").await.len(), 3);
}

#[tokio::test]
async fn big_integers_and_long_decimals_are_stored_exactly_or_refused() {
    let db = Db::new("exact").await;
    db.exec(
        "CREATE TABLE nums (id VARCHAR(64) NOT NULL PRIMARY KEY, big DECIMAL(40,0), `dec` DECIMAL(45,30), n BIGINT, \
         f DOUBLE) DEFAULT CHARSET=utf8mb4",
    )
    .await;
    let d = db.driver();
    let s = schema(json!({"table": "nums", "modelVersion": "v1", "primaryKeys": ["id"], "required": ["id"],
        "properties": {"id": {"type": "string"}, "big": {"type": "integer", "nullable": true},
                       "dec": {"type": "number", "nullable": true}, "n": {"type": "integer", "nullable": true},
                       "f": {"type": "number", "nullable": true}}}));
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
        ["a|123456789012345678901234567890|0.123456789012345678901234567890|9223372036854775807|0.1"]
    );
    apply(&d, &s, &changes(&[ev(r#"{"id":"b","dec":12345.6789012345678,"big":1.5e21}"#)])).await.unwrap();
    assert_eq!(
        db.text("SELECT CAST(`dec` AS CHAR) FROM nums WHERE id = 'b'").await.as_deref(),
        Some("12345.678901234567800000000000000000")
    );
    assert_eq!(
        db.text("SELECT CAST(big AS CHAR) FROM nums WHERE id = 'b'").await.as_deref(),
        Some("1500000000000000000000")
    );
    // Beyond 64 bits into BIGINT: refused with the reason (a dead letter), never rounded.
    let err = apply(&d, &s, &changes(&[ev(r#"{"id":"c","n":123456789012345678901234567890}"#)])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Rejected, "{}", err.message);
    assert!(err.message.contains("does not fit a 64-bit integer column"), "{}", err.message);
    assert_eq!(db.snapshot("nums").await.len(), 2);
}
