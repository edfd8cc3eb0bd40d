//! End to end: NATS JetStream → `eds server` → MySQL / MariaDB, with a mock HQ schema registry.
//! The MariaDB twin of `tests/e2e.rs` (the same harness, in tests/common).
//!
//! Every test works in a database of its own (`e2e_<random>`, dropped at the end, also after a
//! panic) on the server at 127.0.0.1:3306 (user root, no password); the time-zone test starts a
//! private MariaDB server whose global time zone is +09:00, so no global setting of the shared
//! server is ever changed.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::{churn, date, Ev};
use common::model::{assert_row, assert_table, expected_state, Rows};
use common::proxy::Proxy;
use common::setup::{publish_all, setup};
use common::wait::{delivered, destination, metric, status, step, stored, until, DELIVERY};
use common::*;
use serde_json::{json, Map, Number, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::{Connection, Executor, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The shared MariaDB server of the tests (user root, no password).
const MY: &str = "127.0.0.1:3306";

// ---------------------------------------------------------------------------------------------
// MariaDB databases and a private MariaDB server; the rest of the harness is in tests/common
// (events, model, proxy, setup, wait).
// ---------------------------------------------------------------------------------------------

/// Options for root at `server` (`host:port`), no database: utf8mb4, no TLS, session in UTC.
fn root_options(server: &str) -> MySqlConnectOptions {
    MySqlConnectOptions::from_str(&format!("mysql://root@{server}"))
        .unwrap()
        .ssl_mode(MySqlSslMode::Disabled)
        .charset("utf8mb4")
        .timezone(Some("+00:00".to_owned()))
}

/// A MySQL identifier, in backticks.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A database of the test's own on `server`, and a pool (sessions in UTC) using it. Dropped on
/// drop, also when the test fails.
struct MyDb {
    server: String,
    name: String,
    pool: MySqlPool,
}

/// (name, data type, column type) of a column.
type ColumnInfo = (String, String, String);

/// Four text columns of a row, as bytes (MySQL 8 flags some catalog strings binary).
type Bytes4 = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

impl MyDb {
    async fn create() -> MyDb {
        MyDb::create_on(MY).await
    }

    async fn create_on(server: &str) -> MyDb {
        let name = format!("e2e_{}", unique_suffix());
        let mut admin = MySqlConnection::connect_with(&root_options(server))
            .await
            .unwrap_or_else(|e| panic!("MariaDB at {server} (user root, no password): {e}"));
        admin.execute(format!("CREATE DATABASE {}", ident(&name)).as_str()).await.unwrap();
        let _ = admin.close().await;
        // Every helper query has a deadline of its own: the server ends it (and never waits on a
        // lock for long), and taking a connection times out too.
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION max_statement_time = 30, lock_wait_timeout = 20").await?;
                    Ok(())
                })
            })
            .connect_with(root_options(server).database(&name))
            .await
            .unwrap();
        MyDb { server: server.to_owned(), name, pool }
    }

    /// The destination URL of this database: `mysql://root@…/<db>?name=<dest><extra>`.
    fn url(&self, dest: &str, extra: &str) -> String {
        self.url_at(&self.server, dest, extra)
    }

    /// As [`MyDb::url`], through `host_port` (a proxy).
    fn url_at(&self, host_port: &str, dest: &str, extra: &str) -> String {
        format!("mysql://root@{host_port}/{}?name={dest}{extra}", self.name)
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of every row of `sql` (with `binds`), as text.
    async fn texts(&self, sql: &str, binds: &[&str]) -> Vec<Option<String>> {
        let mut q = sqlx::query_scalar::<_, Option<Vec<u8>>>(sql);
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter().map(|r| r.map(|b| String::from_utf8(b).unwrap())).collect()
    }

    /// The one value of `sql` (with `binds`), as text.
    async fn text(&self, sql: &str, binds: &[&str]) -> Option<String> {
        let mut all = self.texts(sql, binds).await;
        assert_eq!(all.len(), 1, "{sql} {binds:?}: {all:?}");
        all.remove(0)
    }

    /// Columns of `table` in column order.
    async fn columns(&self, table: &str) -> Vec<ColumnInfo> {
        let rows: Vec<Bytes4> = sqlx::query_as(
            "SELECT table_name, column_name, data_type, column_type FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
        rows.into_iter().filter(|r| r.0 == table.as_bytes()).map(|(_, n, d, t)| (s(n), s(d), s(t))).collect()
    }

    async fn column_names(&self, table: &str) -> Vec<String> {
        self.columns(table).await.into_iter().map(|c| c.0).collect()
    }

    /// (column, column type) of `table`.
    async fn column_types(&self, table: &str) -> Vec<(String, String)> {
        self.columns(table).await.into_iter().map(|(n, _, t)| (n, t)).collect()
    }

    async fn tables(&self) -> Vec<String> {
        let names = self
            .texts(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY table_name",
                &[],
            )
            .await;
        names.into_iter().map(Option::unwrap).collect()
    }

    /// Rows of `table` (that with `id = only`, bound, when given) as JSON objects by id:
    /// date-times as `YYYY-MM-DDThh:mm:ss.mmmZ` (read in a UTC session, cut to milliseconds: the
    /// events' own format), numbers as JSON numbers, everything else as text.
    async fn rows(&self, table: &str, only: Option<&str>) -> Rows {
        let cols = self.columns(table).await;
        assert!(!cols.is_empty(), "table {table:?} does not exist in {}", self.name);
        let exprs: Vec<String> = cols
            .iter()
            .map(|(name, data_type, _)| match data_type.as_str() {
                "datetime" | "timestamp" => format!("DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%s.%fZ')", ident(name)),
                _ => format!("CAST({} AS CHAR)", ident(name)),
            })
            .collect();
        let filter = if only.is_some() { " WHERE `id` = ?" } else { "" };
        let sql = format!("SELECT {} FROM {}{filter}", exprs.join(", "), ident(table));
        let mut q = sqlx::query(&sql);
        if let Some(id) = only {
            q = q.bind(id);
        }
        let mut out = BTreeMap::new();
        for row in q.fetch_all(&self.pool).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
            let mut object = Map::new();
            for (i, (name, data_type, _)) in cols.iter().enumerate() {
                let raw: Option<Vec<u8>> = row.try_get(i).unwrap();
                let value = match raw.map(|b| String::from_utf8(b).unwrap()) {
                    None => Value::Null,
                    Some(text) => match data_type.as_str() {
                        "datetime" | "timestamp" => Value::String(millis(&text)),
                        "double" | "float" | "decimal" | "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => {
                            Value::Number(Number::from_str(&text).unwrap_or_else(|e| panic!("{name} = {text:?}: {e}")))
                        }
                        _ => Value::String(text),
                    },
                };
                object.insert(name.clone(), value);
            }
            let id = object["id"].as_str().unwrap().to_owned();
            assert!(out.insert(id.clone(), object).is_none(), "two rows with id {id:?} in {table}");
        }
        out
    }
}

/// `YYYY-MM-DDThh:mm:ss.ffffffZ` (DATE_FORMAT's `%f` is microseconds) cut to milliseconds.
fn millis(micros: &str) -> String {
    assert!(micros.len() == 27 && micros.ends_with('Z'), "not a date-time: {micros:?}");
    format!("{}Z", &micros[..23])
}

impl Drop for MyDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // A thread of its own: this may run inside the test's runtime, or while it unwinds.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut c = MySqlConnection::connect_with(&root_options(&server)).await?;
                c.execute("SET SESSION lock_wait_timeout = 20").await?;
                c.execute(format!("DROP DATABASE IF EXISTS {}", ident(&name)).as_str()).await?;
                c.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop MariaDB database {} on {}: {dropped:?}", self.name, self.server);
        }
    }
}

/// A MariaDB server of the test's own (`mariadb-install-db`, then `mariadbd` on a free port,
/// data and socket in a temp dir, extra server options such as its default time zone); killed
/// on drop.
struct PrivateMariadb {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// The first of `names` found on PATH or in the usual sbin/bin directories.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> =
        path.split(':').chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]).collect();
    names.iter().flat_map(|n| dirs.iter().map(move |d| Path::new(d).join(n))).find(|p| p.is_file())
}

impl PrivateMariadb {
    async fn start(server_options: &[&str]) -> PrivateMariadb {
        let install = find_program(&["mariadb-install-db", "mysql_install_db"])
            .expect("mariadb-install-db not found (apt-get install mariadb-server)");
        let mariadbd =
            find_program(&["mariadbd", "mysqld"]).expect("mariadbd not found (apt-get install mariadb-server)");
        let dir = tempfile::Builder::new().prefix("eds-mariadb-").tempdir().unwrap();
        let data = dir.path().join("data");
        // mariadbd refuses to run as root unless told to; as anyone else --user is not needed.
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let as_root = user == "root";
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal".into(),
            "--skip-test-db".into(),
        ];
        if as_root {
            args.push("--user=root".into());
        }
        let installed = tokio::task::spawn_blocking(move || Command::new(install).args(&args).output())
            .await
            .unwrap()
            .expect("running mariadb-install-db");
        assert!(
            installed.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&installed.stdout),
            String::from_utf8_lossy(&installed.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("mariadbd.log")).unwrap();
        let mut args: Vec<String> = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--port={port}"),
            format!("--socket={}", dir.path().join("sock").display()),
            format!("--pid-file={}", dir.path().join("pid").display()),
            format!("--tmpdir={}", dir.path().display()),
            "--bind-address=127.0.0.1".into(),
            "--innodb-buffer-pool-size=32M".into(),
        ];
        if as_root {
            args.push("--user=root".into());
        }
        args.extend(server_options.iter().map(|s| s.to_string()));
        let child = Command::new(mariadbd)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mariadbd");
        let mut server = PrivateMariadb { child, port, dir };
        // Ready when root can connect over TCP; a server that exits instead fails at once.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if MySqlConnection::connect_with(&root_options(&server.addr())).await.is_ok() {
                break;
            }
            if let Some(exit) = server.child.try_wait().unwrap() {
                panic!("mariadbd exited ({exit}) before accepting connections:\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "mariadbd did not accept connections in 60 s:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mariadbd.log")).unwrap_or_default()
    }
}

/// Every row of `sql` (three columns) as text, on `conn`.
async fn read3(conn: &mut MySqlConnection, sql: &str) -> Vec<[String; 3]> {
    let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> =
        sqlx::query_as(sql).fetch_all(conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|(a, b, c)| [a, b, c].map(|x| String::from_utf8(x).unwrap())).collect()
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// EDS's end-to-end scenario (spec §9.2), all eight steps, to MariaDB: after each step the row
/// (`SELECT * FROM t WHERE id = ?`) is gone after a DELETE, else it is one row with the object's
/// values; `order` gains `age` at step 6 and nothing is ever dropped. SIGINT stops eds cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_e2e_scenario_mysql() {
    let db = MyDb::create().await;
    let s = setup().await;
    let eds = s.eds(&[db.url("my", "")], &[]);
    let my = ["my"];

    let order = |name: &str| json!({"id": "12345", "name": name, "updatedDate": "2026-02-02T12:00:00.000Z"});
    let order_aged =
        |name: &str| json!({"id": "12345", "name": name, "updatedDate": "2026-02-02T12:00:00.000Z", "age": 1});
    let customer = |name: &str| json!({"id": "12345", "name": name, "updatedDate": "2026-02-02T12:00:00.000Z"});
    let steps: Vec<(&str, Ev)> = vec![
        ("1 INSERT order@fff000111", Ev::insert("order", "fff000111", order("test"))),
        ("2 INSERT customer@fff000111 (new table)", Ev::insert("customer", "fff000111", customer("test"))),
        ("3 UPDATE order@fff000111", Ev::update("order", "fff000111", order("test"), order("test2"), &["name"])),
        ("4 DELETE order", Ev::delete("order", "fff000111", order("test2"))),
        ("5 INSERT customer@fff000112-update", Ev::insert("customer", "fff000112-update", customer("test5"))),
        (
            "6 INSERT order@fff000112-update (new column age)",
            Ev::insert("order", "fff000112-update", order_aged("test6")),
        ),
        (
            "7 UPDATE order@fff000113-update (version bump, no new column)",
            Ev::update("order", "fff000113-update", order_aged("test6"), order_aged("test7"), &["name"]),
        ),
        ("8 INSERT customer@fff000112-update", Ev::insert("customer", "fff000112-update", customer("test8"))),
    ];
    for (n, (what, ev)) in steps.iter().enumerate() {
        step(&s.js, &eds, &my, ev).await;
        let rows = db.rows(ev.table, Some("12345")).await;
        if ev.op == "DELETE" {
            assert!(rows.is_empty(), "step {what}: the row is still there: {rows:?}");
        } else {
            assert_eq!(rows.len(), 1, "step {what}: {rows:?}");
            assert_row(&rows["12345"], ev.object(), ev.op == "INSERT", &format!("step {what}"));
        }
        // `age` arrives with the version that has it (step 6), not before.
        if ev.table == "order" {
            let want: &[&str] =
                if n < 5 { &["id", "name", "updatedDate"] } else { &["id", "name", "updatedDate", "age"] };
            assert_eq!(db.column_names("order").await, want, "step {what}");
        }
    }

    // Names exactly as the schema spells them; order gained age, nothing was dropped.
    assert_eq!(db.tables().await, ["customer", "order"]);
    let typed = |cols: &[(&str, &str)]| cols.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        db.column_types("order").await,
        typed(&[("id", "varchar(255)"), ("name", "longtext"), ("updatedDate", "datetime(6)"), ("age", "double")])
    );
    assert_eq!(
        db.column_types("customer").await,
        typed(&[("id", "varchar(255)"), ("name", "longtext"), ("updatedDate", "datetime(6)")])
    );
    // The exact stored instant, not only its millisecond text: 2026-02-02T12:00:00Z.
    assert_eq!(
        db.text("SELECT CAST(UNIX_TIMESTAMP(`updatedDate`) AS CHAR) FROM `customer` WHERE `id` = ?", &["12345"])
            .await
            .as_deref(),
        Some("1770033600.000000")
    );
    let st = status(&eds).await;
    let d = destination(&st, "my");
    assert_eq!(d["driver"], "MySQL", "{st}");
    assert!(d["last_error"].is_null(), "{st}");
    assert_eq!(d["cursor"], 8, "{st}");
    assert_eq!(d["delivered"], 8, "{st}");
    assert_eq!(st["destinations"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(eds.stop_with("INT"), 0);
}

/// The DDL EDS's MySQL driver ran (spec §7.2) for `order` at the version without `age`:
/// backticks, `TIMESTAMP`, a `VARCHAR(64)` key, `TEXT`, `) CHARACTER SET=utf8mb4;`, and a row it
/// wrote with `REPLACE INTO` (date-times as UTC wall-clock text).
const EDS_ORDER_DDL: &str = "CREATE TABLE IF NOT EXISTS `order` (\n\t`id` VARCHAR(64) NOT NULL,\n\t`name` TEXT,\n\
\t`updatedDate` TIMESTAMP,\n\tPRIMARY KEY (`id`)\n) CHARACTER SET=utf8mb4;\n\
REPLACE INTO `order` (`id`,`name`,`updatedDate`) VALUES ('old','kept','2025-01-01 00:00:00');\n";

/// A table EDS created before (EDS's DDL, a row in it) is kept: no drop, no re-create, no
/// retyping; it gains the new version's column and the new row, the `TIMESTAMP` column holding
/// the right instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_by_eds_ddl_is_kept() {
    let db = MyDb::create().await;
    db.exec(EDS_ORDER_DDL).await;
    // Marks a re-created table would not have: a comment and a row added by hand.
    db.exec("ALTER TABLE `order` COMMENT = 'made by EDS, kept by hand'").await;
    db.exec("INSERT INTO `order` (`id`, `name`) VALUES ('manual', 'by hand')").await;
    let types_before = db.column_types("order").await;
    assert_eq!(
        types_before,
        [("id", "varchar(64)"), ("name", "text"), ("updatedDate", "timestamp")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let s = setup().await;
    let eds = s.eds(&[db.url("my", "")], &[]);

    // Whole seconds: a TIMESTAMP (no fraction) holds no milliseconds.
    let new = Ev::insert(
        "order",
        "fff000112-update",
        json!({"id": "new", "name": "fresh", "updatedDate": "2026-02-02T12:00:01.000Z", "age": 1.5}),
    );
    step(&s.js, &eds, &["my"], &new).await;
    let comment =
        "SELECT table_comment FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?";
    assert_eq!(
        db.text(comment, &["order"]).await.as_deref(),
        Some("made by EDS, kept by hand"),
        "the table was dropped and created again"
    );
    let mut types = types_before.clone();
    types.push(("age".into(), "double".into()));
    assert_eq!(db.column_types("order").await, types, "age added, nothing retyped");
    let rows = db.rows("order", None).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["manual", "new", "old"], "{rows:?}");
    let old = json!({"id": "old", "name": "kept", "updatedDate": "2025-01-01T00:00:00.000Z"});
    assert_row(&rows["old"], old.as_object().unwrap(), true, "the old row");
    assert_row(&rows["manual"], json!({"id": "manual", "name": "by hand"}).as_object().unwrap(), true, "manual");
    assert_row(&rows["new"], new.object(), true, "the new row");
    // The TIMESTAMP holds the instant 2026-02-02T12:00:01Z, whatever session reads it.
    assert_eq!(
        db.text("SELECT CAST(UNIX_TIMESTAMP(`updatedDate`) AS CHAR) FROM `order` WHERE `id` = ?", &["new"])
            .await
            .as_deref(),
        Some("1770033601")
    );

    // An event at the older version (no age) leaves the column where it is; an UPDATE that
    // names only `name` leaves the rest of the old row alone.
    let older = Ev::insert(
        "order",
        "fff000111",
        json!({"id": "older", "name": "no age", "updatedDate": "2026-02-02T12:00:02.000Z"}),
    );
    let touch = Ev::update(
        "order",
        "fff000111",
        json!({"id": "old", "name": "kept"}),
        json!({"id": "old", "name": "renamed"}),
        &["name"],
    );
    step(&s.js, &eds, &["my"], &older).await;
    step(&s.js, &eds, &["my"], &touch).await;
    assert_eq!(db.column_types("order").await, types);
    assert_eq!(db.text(comment, &["order"]).await.as_deref(), Some("made by EDS, kept by hand"));
    let rows = db.rows("order", None).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["manual", "new", "old", "older"]);
    assert_row(&rows["older"], older.object(), true, "the row at the older version");
    let renamed = json!({"id": "old", "name": "renamed", "updatedDate": "2025-01-01T00:00:00.000Z"});
    assert_row(&rows["old"], renamed.as_object().unwrap(), true, "the old row, renamed");
    assert_row(&rows["new"], new.object(), true, "the new row");
    assert_eq!(eds.stop(), 0);
}

/// MariaDB goes away (every connection closed, new ones dropped) in the middle of a stream:
/// ingest goes on acknowledging, the destination reports retrying with the error, and once the
/// server is back the table converges to exactly the published state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_through_a_proxy_loses_nothing() {
    const N: u64 = 500;
    let db = MyDb::create().await;
    let proxy = Proxy::start(MY).await;
    let s = setup().await;
    let events = churn(N, 50, "fff000112-update");
    let eds = s.eds(&[db.url_at(&format!("127.0.0.1:{}", proxy.port), "my", "")], &[]);

    let (before, after) = events.split_at(200);
    let lsn = stored(&eds, publish_all(&s.js, before).await).await;
    delivered(&eds, &["my"], lsn).await;
    assert_table(&db.rows("order", None).await, &expected_state(before));

    proxy.set_up(false);
    let last = publish_all(&s.js, after).await;
    let err = until(&eds, "the destination to report retrying with an error", DELIVERY, || async {
        let st = status(&eds).await;
        let d = destination(&st, "my");
        (d["state"] == "retrying").then(|| d["last_error"].as_str().map(str::to_owned)).flatten()
    })
    .await;
    assert!(!err.is_empty());
    // Down for a while: several failed attempts, with backoff.
    until(&eds, "three failed attempts", DELIVERY, || async {
        let retries = metric(&eds, r#"eds_destination_retries_total{destination="my"}"#).await;
        (retries >= 3.0).then_some(())
    })
    .await;
    // Ingest keeps storing and acknowledging while the destination is down.
    let lsn = stored(&eds, last).await;
    let stream = s.js.get_stream("dbchange").await.unwrap();
    until(&eds, "every message acknowledged upstream", DELIVERY, || async {
        let info = stream.consumer_info("eds-dev").await.unwrap();
        (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == last).then_some(())
    })
    .await;
    let st = status(&eds).await;
    assert_eq!(st["ingest"]["received"], N, "{st}");
    let d = destination(&st, "my");
    assert!(d["cursor"].as_u64().unwrap() < lsn, "delivered while MariaDB was away? {st}");
    assert_ne!(d["state"], "delivering", "{st}");

    proxy.set_up(true);
    let st = delivered(&eds, &["my"], lsn).await;
    assert!(destination(&st, "my")["last_error"].is_null(), "{st}");
    assert_table(&db.rows("order", None).await, &expected_state(&events));
    assert_eq!(eds.stop(), 0);
}

/// Quotes, backslashes, dollar quotes, SQL, 4-byte emoji, `<`, control characters, the empty
/// string and a 100 KiB string, in values and keys, reach MariaDB exactly — also in big batches
/// of multi-row statements; the table the SQL names survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_survive_end_to_end_mysql() {
    let db = MyDb::create().await;
    db.exec("CREATE TABLE `x` (`v` INT); INSERT INTO `x` VALUES (1)").await;
    let s = setup().await;
    let big: String = "0123456789abcdef\\'\"😀\t\n".chars().cycle().take(100 * 1024).collect();
    assert!(big.len() > 100 * 1024);
    let hostile: Vec<String> = [
        "it's",
        r#"say "hi""#,
        r"back\slash \\ \n \N \0",
        "$_H_$ dollar $$ quoted $_H_$",
        "'); DROP TABLE x; --",
        "emoji 😀🚗 ünïcödé 𝄞",
        "<script>&amp;</script>",
        "tab\tnew\nline\r\n",
        "",
        "{\"looks\": [\"like json\"]}",
        "`backtick`; DROP TABLE `x`; -- ",
        big.as_str(),
    ]
    .map(str::to_owned)
    .to_vec();
    // Keys too (at most one 4-byte character: utf8mb4_general_ci ranks them all alike).
    let hostile_ids = ["it's \"odd\"", r"a\b", "$_H_$", "'); DROP TABLE x; --", "😀", "<id>", "tab\tid", "`id`"];
    let mut events = Vec::new();
    for (i, h) in hostile.iter().enumerate() {
        let id = format!("h{i}");
        events.push(Ev::insert(
            "order",
            "fff000112-update",
            json!({"id": id, "name": h, "updatedDate": date(i as i64), "age": i}),
        ));
    }
    for (i, id) in hostile_ids.iter().enumerate() {
        events.push(Ev::insert(
            "order",
            "fff000112-update",
            json!({"id": id, "name": hostile[i], "updatedDate": date(0)}),
        ));
    }
    // Many in one go: big batches, multi-row statements.
    for i in 0..2500u64 {
        let h = &hostile[i as usize % (hostile.len() - 1)];
        events.push(Ev::insert(
            "order",
            "fff000112-update",
            json!({"id": format!("bulk{i}"), "name": format!("{h}{i}{h}"), "updatedDate": date((i % 1000) as i64)}),
        ));
    }
    let seq = publish_all(&s.js, &events).await;
    let eds = s.eds(&[db.url("my", "")], &[]);
    let lsn = stored(&eds, seq).await;
    let st = delivered(&eds, &["my"], lsn).await;
    let d = destination(&st, "my");
    assert!(d["last_error"].is_null(), "{st}");
    assert_eq!(d["delivered"], events.len(), "{st}");
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="my"}"#).await, 0.0);

    assert_table(&db.rows("order", None).await, &expected_state(&events));
    // Exactly, byte for byte, found by a bound key.
    for e in &events[..hostile.len() + hostile_ids.len()] {
        let id = e.pk();
        let want = e.object()["name"].as_str().unwrap();
        let got = db.text("SELECT CAST(`name` AS CHAR) FROM `order` WHERE `id` = ?", &[&id]).await;
        assert!(got.as_deref() == Some(want), "WHERE id = {id:?}: {:?}", got.as_deref().map(|g| g.len()));
    }
    assert_eq!(
        db.text("SELECT CAST(LENGTH(`name`) AS CHAR) FROM `order` WHERE `id` = ?", &["h11"]).await,
        Some(big.len().to_string())
    );
    assert_eq!(
        db.text("SELECT CAST(`name` = '' AS CHAR) FROM `order` WHERE `id` = 'h8'", &[]).await.as_deref(),
        Some("1")
    );
    assert_eq!(db.tables().await, ["order", "x"], "no table was dropped or made by a value");
    assert_eq!(db.text("SELECT CAST(COUNT(*) AS CHAR) FROM `x`", &[]).await.as_deref(), Some("1"));
    assert_eq!(eds.stop(), 0);
}

/// On a server whose global time zone is +09:00 (a private MariaDB, so the shared server's
/// settings stay as they are), eds stores the right instants: in the `DATETIME(6)` columns it
/// creates (UTC wall-clock time) and in an EDS-made `TIMESTAMP` column, which a session at the
/// server's own zone reads as 21:00 local time — for a `Z` date-time and a `+05:30` one alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_time_zone_is_not_utc() {
    let server = PrivateMariadb::start(&["--default-time-zone=+09:00"]).await;
    let db = MyDb::create_on(&server.addr()).await;
    // A session that keeps the server's zone (sqlx would set +00:00 by itself).
    let tokyo_options = root_options(&server.addr()).database(&db.name).timezone(None);
    let mut tokyo = MySqlConnection::connect_with(&tokyo_options).await.unwrap();
    let zones: (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT CAST(@@global.time_zone AS CHAR), CAST(@@session.time_zone AS CHAR)")
            .fetch_one(&mut tokyo)
            .await
            .unwrap();
    assert_eq!((zones.0.as_slice(), zones.1.as_slice()), (&b"+09:00"[..], &b"+09:00"[..]), "the server's zone");

    // `customer` made by EDS (TIMESTAMP), with a row a client in Tokyo wrote in local time.
    db.exec(
        "CREATE TABLE IF NOT EXISTS `customer` (\n\t`id` VARCHAR(64) NOT NULL,\n\t`name` TEXT,\n\t`updatedDate` TIMESTAMP,\n\
         \tPRIMARY KEY (`id`)\n) CHARACTER SET=utf8mb4;",
    )
    .await;
    tokyo.execute("INSERT INTO `customer` VALUES ('local', 'written in Tokyo', '2026-02-02 21:00:00')").await.unwrap();

    let s = setup().await;
    let eds = s.eds(&[db.url("my", "")], &[]);
    let row = |id: &str, at: &str| json!({"id": id, "name": id, "updatedDate": at});
    let events = [
        Ev::insert("order", "fff000111", row("z", "2026-02-02T12:00:00.000Z")),
        Ev::insert("order", "fff000111", row("ist", "2026-02-02T17:30:00.000+05:30")),
        Ev::insert("customer", "fff000111", row("z", "2026-02-02T12:00:00.000Z")),
        Ev::insert("customer", "fff000111", row("ist", "2026-02-02T17:30:00.000+05:30")),
    ];
    let lsn = stored(&eds, publish_all(&s.js, &events).await).await;
    let st = delivered(&eds, &["my"], lsn).await;
    assert!(destination(&st, "my")["last_error"].is_null(), "{st}");
    assert_eq!(destination(&st, "my")["delivered"], 4, "{st}");
    assert_eq!(db.column_types("order").await[2], ("updatedDate".into(), "datetime(6)".into()));

    let strings = |rows: &[[&str; 3]]| rows.iter().map(|r| r.map(str::to_owned)).collect::<Vec<[String; 3]>>();
    let q = |table: &str| {
        format!(
            "SELECT id, CAST(UNIX_TIMESTAMP(`updatedDate`) AS CHAR), CAST(`updatedDate` AS CHAR) FROM {} ORDER BY id",
            ident(table)
        )
    };
    // TIMESTAMP: the instant 1770033600 (12:00Z) for every writer; 21:00 local time at +09:00.
    assert_eq!(
        read3(&mut tokyo, &q("customer")).await,
        strings(&[
            ["ist", "1770033600", "2026-02-02 21:00:00"],
            ["local", "1770033600", "2026-02-02 21:00:00"],
            ["z", "1770033600", "2026-02-02 21:00:00"],
        ])
    );
    // DATETIME(6) made by eds: UTC wall-clock time, whatever the session's zone; as an instant
    // in a UTC session, 1770033600; a Tokyo session converts it to 21:00 local time.
    let mut utc = db.pool.acquire().await.unwrap();
    assert_eq!(
        read3(&mut utc, &q("order")).await,
        strings(&[
            ["ist", "1770033600.000000", "2026-02-02 12:00:00.000000"],
            ["z", "1770033600.000000", "2026-02-02 12:00:00.000000"],
        ])
    );
    drop(utc);
    let local = "SELECT id, CAST(`updatedDate` AS CHAR), \
                 CAST(CONVERT_TZ(`updatedDate`, '+00:00', @@session.time_zone) AS CHAR) FROM `order` ORDER BY id";
    assert_eq!(
        read3(&mut tokyo, local).await,
        strings(&[
            ["ist", "2026-02-02 12:00:00.000000", "2026-02-02 21:00:00.000000"],
            ["z", "2026-02-02 12:00:00.000000", "2026-02-02 21:00:00.000000"],
        ])
    );
    // And as the harness reads every other test's rows.
    let rows = db.rows("customer", None).await;
    for id in ["z", "ist", "local"] {
        assert_eq!(rows[id]["updatedDate"], "2026-02-02T12:00:00.000Z", "{id}: {rows:?}");
    }
    let _ = tokyo.close().await;
    assert_eq!(eds.stop(), 0);
    drop(db);
    drop(server);
}

/// EDS's DDL run where `explicit_defaults_for_timestamp` is OFF (MySQL 5.7, MariaDB before
/// 10.10) makes the table's first `TIMESTAMP` column `NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE
/// CURRENT_TIMESTAMP`. EDS wrote whole rows (REPLACE INTO), so the clause never fired; an UPDATE
/// whose diff does not name that column must still leave the event's value there, not the
/// server's clock.
/// eds's partial upsert sets such a column to itself (`updatedDate = updatedDate`), which stops
/// the server's `ON UPDATE CURRENT_TIMESTAMP` from replacing the event's date with the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_update_timestamp_column_of_an_eds_table_keeps_the_events_value() {
    let db = MyDb::create().await;
    let mut c = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!("SET SESSION explicit_defaults_for_timestamp = 0;\n{EDS_ORDER_DDL}"))
        .execute(&mut *c)
        .await
        .unwrap();
    drop(c);
    let extra = "SELECT CAST(LOWER(extra) AS CHAR) FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = 'order' AND column_name = 'updatedDate'";
    let on_update = db.text(extra, &[]).await.unwrap_or_default();
    assert!(on_update.contains("on update current_timestamp"), "not the legacy table: {on_update:?}");
    let s = setup().await;
    let eds = s.eds(&[db.url("my", "")], &[]);
    let old = json!({"id": "old", "name": "kept", "updatedDate": "2025-01-01T00:00:00.000Z"});
    let renamed = json!({"id": "old", "name": "renamed", "updatedDate": "2025-01-01T00:00:00.000Z"});
    step(&s.js, &eds, &["my"], &Ev::update("order", "fff000111", old, renamed.clone(), &["name"])).await;
    let rows = db.rows("order", None).await;
    assert_row(&rows["old"], renamed.as_object().unwrap(), true, "the renamed row");
    assert_eq!(eds.stop(), 0);
}
