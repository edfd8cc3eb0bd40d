//! End to end: NATS JetStream → `eds server` → PostgreSQL and files, with a mock HQ schema
//! registry. Every PostgreSQL test works in a schema of its own (`e2e_<random>`, dropped at the
//! end) on the server at 127.0.0.1:5432 (database `test`, user `postgres`, trust auth).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::{churn, date, Ev};
use common::model::{assert_row, assert_table, expected_state, Rows};
use common::proxy::Proxy;
use common::setup::{publish_all, setup, Hq};
use common::wait::{delivered, destination, metric, status, step, stored, try_get, until, DELIVERY};
use common::*;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The PostgreSQL server of the tests (trust auth).
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

// ---------------------------------------------------------------------------------------------
// PostgreSQL schemas and the file destination's files; the rest of the harness is in
// tests/common (events, model, proxy, setup, wait).
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL schema of the test's own, and a pool whose `search_path` is that schema.
/// Dropped (CASCADE) on drop, also when the test fails.
struct PgSchema {
    name: String,
    pool: PgPool,
}

impl PgSchema {
    async fn create() -> PgSchema {
        let name = format!("e2e_{}", unique_suffix());
        let mut admin = sqlx::PgConnection::connect(PG).await.expect("PostgreSQL at 127.0.0.1:5432 (database test)");
        admin.execute(format!("CREATE SCHEMA {}", ident(&name)).as_str()).await.unwrap();
        let _ = admin.close().await;
        // Every helper query has a deadline of its own: the server ends it (and never waits on a
        // lock for long), and taking a connection times out too.
        let options = PgConnectOptions::from_str(PG).unwrap().options([
            ("search_path", name.as_str()),
            ("statement_timeout", "30s"),
            ("lock_timeout", "20s"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .unwrap();
        PgSchema { name, pool }
    }

    /// The destination URL of this schema: `postgres://…/test?name=<dest>&options=…<extra>`.
    fn url(&self, dest: &str, extra: &str) -> String {
        self.url_at("127.0.0.1:5432", dest, extra)
    }

    /// As [`PgSchema::url`], through `host_port` (a proxy).
    fn url_at(&self, host_port: &str, dest: &str, extra: &str) -> String {
        format!("postgres://postgres@{host_port}/test?name={dest}&options=-c%20search_path%3D{}{extra}", self.name)
    }

    async fn exec(&self, sql: &str) {
        self.pool.execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Column names and types of `table`, in column order.
    async fn columns(&self, table: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn column_names(&self, table: &str) -> Vec<String> {
        self.columns(table).await.into_iter().map(|(n, _)| n).collect()
    }

    async fn tables(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// The OID of `table`: the same table, not one dropped and created again.
    async fn oid(&self, table: &str) -> u32 {
        let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("SELECT to_regclass(quote_ident($1))::oid")
            .bind(table)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        oid.0
    }

    /// Rows of `table` (those with `id = only` when given) as JSON objects by id; date-times as
    /// `YYYY-MM-DDThh:mm:ss.mmmZ` (UTC, millisecond precision, the events' own format).
    async fn rows(&self, table: &str, only: Option<&str>) -> Rows {
        let exprs: Vec<String> = self
            .columns(table)
            .await
            .iter()
            .map(|(name, kind)| match kind.as_str() {
                "timestamp with time zone" => format!(
                    r#"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS {c}"#,
                    c = ident(name)
                ),
                _ => ident(name),
            })
            .collect();
        assert!(!exprs.is_empty(), "table {table:?} does not exist in {}", self.name);
        let filter = if only.is_some() { r#" WHERE "id" = $1"# } else { "" };
        let sql =
            format!("SELECT to_jsonb(t)::text FROM (SELECT {} FROM {}{filter}) t", exprs.join(", "), ident(table));
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        if let Some(id) = only {
            q = q.bind(id);
        }
        let mut out = BTreeMap::new();
        for text in q.fetch_all(&self.pool).await.unwrap() {
            let Value::Object(row) = serde_json::from_str::<Value>(&text).unwrap() else { unreachable!() };
            let id = row["id"].as_str().unwrap().to_owned();
            assert!(out.insert(id.clone(), row).is_none(), "two rows with id {id:?} in {table}");
        }
        out
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread of its own: this may run inside the test's runtime, or while it unwinds.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut c = sqlx::PgConnection::connect(PG).await?;
                c.execute("SET lock_timeout = '20s'").await?;
                c.execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(&name)).as_str()).await?;
                c.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop PostgreSQL schema {}: {dropped:?}", self.name);
        }
    }
}

/// A PostgreSQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Files below `<dir>/<table>/` (finished ones), by name.
fn table_files(dir: &Path, table: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join(table)) else { return out };
    for f in entries {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".tmp") {
            out.insert(name, std::fs::read(&p).unwrap());
        }
    }
    out
}

/// The name of the file of `table` holding exactly `bytes`.
fn file_with(dir: &Path, table: &str, bytes: &[u8]) -> Option<String> {
    table_files(dir, table).into_iter().find(|(_, b)| b == bytes).map(|(n, _)| n)
}

fn file_url(dir: &Path, query: &str) -> String {
    format!("file://{}?{query}", dir.display())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// EDS's end-to-end scenario (spec §9.2), all eight steps, to PostgreSQL and files at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_e2e_scenario_postgres_and_file() {
    let pg = PgSchema::create().await;
    let s = setup().await;
    let out = s.out();
    let eds = s.eds(&[pg.url("pg", ""), file_url(&out, "name=files")], &[]);
    let both = ["pg", "files"];

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
    let mut sent_files: BTreeMap<&str, usize> = BTreeMap::new();
    for (what, ev) in &steps {
        let bytes = step(&s.js, &eds, &both, ev).await;
        // PostgreSQL.
        let rows = pg.rows(ev.table, Some("12345")).await;
        if ev.op == "DELETE" {
            assert!(rows.is_empty(), "step {what}: the row is still there: {rows:?}");
        } else {
            assert_eq!(rows.len(), 1, "step {what}: {rows:?}");
            assert_row(&rows["12345"], ev.object(), ev.op == "INSERT", &format!("step {what}"));
        }
        // Files: byte-identical, named <sec>-<pk>[+<lsn>].json.
        *sent_files.entry(ev.table).or_default() += 1;
        let name = file_with(&out, ev.table, &bytes)
            .unwrap_or_else(|| panic!("step {what}: no file of {} holds the event", ev.table));
        let sec = ev.timestamp / 1000;
        assert!(
            name == format!("{sec}-12345.json")
                || (name.starts_with(&format!("{sec}-12345+")) && name.ends_with(".json")),
            "step {what}: file name {name}"
        );
        assert_eq!(table_files(&out, ev.table).len(), sent_files[ev.table], "step {what}: one file per event");
    }

    // Names exactly as the schema spells them; order gained age, nothing was dropped.
    assert_eq!(pg.tables().await, ["customer", "order"]);
    let typed = |cols: &[(&str, &str)]| cols.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        pg.columns("order").await,
        typed(&[
            ("id", "text"),
            ("name", "text"),
            ("updatedDate", "timestamp with time zone"),
            ("age", "double precision")
        ])
    );
    assert_eq!(
        pg.columns("customer").await,
        typed(&[("id", "text"), ("name", "text"), ("updatedDate", "timestamp with time zone")])
    );
    let st = status(&eds).await;
    for (name, driver) in [("pg", "PostgreSQL"), ("files", "File")] {
        let d = destination(&st, name);
        assert_eq!(d["driver"], driver, "{st}");
        assert!(d["last_error"].is_null(), "{st}");
        assert_eq!(d["cursor"], 8, "{st}");
        assert_eq!(d["delivered"], 8, "{st}");
    }
    assert_eq!(st["destinations"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(eds.stop_with("INT"), 0);
}

/// A table EDS created before (EDS's DDL, a row in it) is kept: no drop, no re-create; it gains
/// the new version's column and the new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_by_eds_beforehand_is_kept() {
    let pg = PgSchema::create().await;
    pg.exec(
        r#"CREATE TABLE "order" ("id" TEXT NOT NULL, "name" TEXT, "updatedDate" TIMESTAMP WITH TIME ZONE, PRIMARY KEY ("id"))"#,
    )
    .await;
    pg.exec(r#"INSERT INTO "order" ("id", "name", "updatedDate") VALUES ('old', 'kept', '2025-01-01T00:00:00.123Z')"#)
        .await;
    let oid = pg.oid("order").await;
    let s = setup().await;
    let eds = s.eds(&[pg.url("pg", "")], &[]);

    let new = Ev::insert(
        "order",
        "fff000112-update",
        json!({"id": "new", "name": "fresh", "updatedDate": date(1), "age": 1.5}),
    );
    step(&s.js, &eds, &["pg"], &new).await;
    assert_eq!(pg.oid("order").await, oid, "the table was dropped and created again");
    assert_eq!(pg.column_names("order").await, ["id", "name", "updatedDate", "age"]);
    let rows = pg.rows("order", None).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let old = json!({"id": "old", "name": "kept", "updatedDate": "2025-01-01T00:00:00.123Z", "age": null});
    assert_row(&rows["old"], old.as_object().unwrap(), true, "the old row");
    assert_row(&rows["new"], new.object(), true, "the new row");

    // An event at the older version (no age) leaves the column where it is.
    let older = Ev::insert("order", "fff000111", json!({"id": "older", "name": "no age", "updatedDate": date(2)}));
    step(&s.js, &eds, &["pg"], &older).await;
    assert_eq!(pg.column_names("order").await, ["id", "name", "updatedDate", "age"]);
    assert_eq!(pg.oid("order").await, oid);
    let rows = pg.rows("order", None).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["new", "old", "older"]);
    assert_row(&rows["older"], older.object(), true, "the row at the older version");
    assert_row(&rows["old"], old.as_object().unwrap(), true, "the old row");
    assert_eq!(eds.stop(), 0);
}

/// A destination added to a running setup later (start=oldest) receives everything from the
/// oldest record and creates its own tables; the existing destination replays nothing and keeps
/// what was done to its tables by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_added_later_creates_its_tables_without_touching_others() {
    let a = PgSchema::create().await;
    let b = PgSchema::create().await;
    let s = setup().await;
    let row = |id: &str, name: &str| json!({"id": id, "name": name, "updatedDate": date(0)});
    let first = vec![
        Ev::insert("order", "fff000111", row("k1", "one")),
        Ev::insert("order", "fff000111", row("k2", "two")),
        Ev::insert("order", "fff000111", row("k3", "three")),
        Ev::insert("customer", "fff000111", row("c1", "customer one")),
    ];
    let eds = s.eds(&[a.url("pga", "")], &[]);
    let lsn = stored(&eds, publish_all(&s.js, &first).await).await;
    delivered(&eds, &["pga"], lsn).await;
    assert_eq!(eds.stop(), 0);

    // By hand, between runs: a column, a row, an edit.
    a.exec(r#"ALTER TABLE "order" ADD COLUMN "note" TEXT"#).await;
    a.exec(r#"INSERT INTO "order" ("id", "name", "note") VALUES ('manual', 'by hand', 'keep me')"#).await;
    a.exec(r#"UPDATE "order" SET "name" = 'edited by hand' WHERE "id" = 'k1'"#).await;
    let oids = (a.oid("order").await, a.oid("customer").await);

    let eds = s.eds(&[a.url("pga", ""), b.url("pgb", "&start=oldest")], &[]);
    let second = vec![
        Ev::update("order", "fff000111", row("k2", "two"), row("k2", "two v2"), &["name"]),
        Ev::insert("order", "fff000112-update", json!({"id": "k4", "name": "four", "updatedDate": date(4), "age": 4})),
    ];
    let lsn = stored(&eds, publish_all(&s.js, &second).await).await;
    let st = delivered(&eds, &["pga", "pgb"], lsn).await;
    assert_eq!(destination(&st, "pga")["delivered"], 2, "A replays nothing: {st}");
    assert_eq!(destination(&st, "pgb")["delivered"], 6, "B gets everything from the oldest record: {st}");

    // B: everything, in tables of its own.
    let all: Vec<Ev> = first.iter().chain(&second).cloned().collect();
    let orders: Vec<Ev> = all.iter().filter(|e| e.table == "order").cloned().collect();
    let customers: Vec<Ev> = all.iter().filter(|e| e.table == "customer").cloned().collect();
    assert_eq!(b.tables().await, ["customer", "order"]);
    assert_eq!(b.column_names("order").await, ["id", "name", "updatedDate", "age"]);
    assert_table(&b.rows("order", None).await, &expected_state(&orders));
    assert_table(&b.rows("customer", None).await, &expected_state(&customers));

    // A: the same tables, the hand-made changes kept, the new events applied.
    assert_eq!((a.oid("order").await, a.oid("customer").await), oids, "A's tables were created again");
    assert_eq!(a.column_names("order").await, ["id", "name", "updatedDate", "note", "age"]);
    let mut want = expected_state(&orders);
    want.get_mut("k1").unwrap().insert("name".into(), json!("edited by hand"));
    for r in want.values_mut() {
        r.insert("note".into(), Value::Null);
    }
    want.insert(
        "manual".into(),
        json!({"id": "manual", "name": "by hand", "note": "keep me", "updatedDate": null, "age": null})
            .as_object()
            .unwrap()
            .clone(),
    );
    assert_table(&a.rows("order", None).await, &want);
    assert_table(&a.rows("customer", None).await, &expected_state(&customers));
    assert_eq!(eds.stop(), 0);
}

/// PostgreSQL goes away (every connection closed, new ones dropped) in the middle of a stream:
/// ingest goes on acknowledging, the destination reports retrying with the error, and once the
/// server is back the table converges to exactly the published state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_through_a_proxy_loses_nothing() {
    const N: u64 = 500;
    let pg = PgSchema::create().await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let s = setup().await;
    let events = churn(N, 50, "fff000112-update");
    let eds = s.eds(&[pg.url_at(&format!("127.0.0.1:{}", proxy.port), "pg", "")], &[]);

    let (before, after) = events.split_at(200);
    let lsn = stored(&eds, publish_all(&s.js, before).await).await;
    delivered(&eds, &["pg"], lsn).await;
    assert_table(&pg.rows("order", None).await, &expected_state(before));

    proxy.set_up(false);
    let last = publish_all(&s.js, after).await;
    let err = until(&eds, "the destination to report retrying with an error", DELIVERY, || async {
        let st = status(&eds).await;
        let d = destination(&st, "pg");
        (d["state"] == "retrying").then(|| d["last_error"].as_str().map(str::to_owned)).flatten()
    })
    .await;
    assert!(!err.is_empty());
    // Down for a while: several failed attempts, with backoff.
    until(&eds, "three failed attempts", DELIVERY, || async {
        let retries = metric(&eds, r#"eds_destination_retries_total{destination="pg"}"#).await;
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
    let d = destination(&st, "pg");
    assert!(d["cursor"].as_u64().unwrap() < lsn, "delivered while PostgreSQL was away? {st}");
    assert_ne!(d["state"], "delivering", "{st}");

    proxy.set_up(true);
    let st = delivered(&eds, &["pg"], lsn).await;
    assert!(destination(&st, "pg")["last_error"].is_null(), "{st}");
    assert_table(&pg.rows("order", None).await, &expected_state(&events));
    assert_eq!(eds.stop(), 0);
}

/// eds is SIGKILLed while a batch is in flight at PostgreSQL (held up by a lock the test owns);
/// the restart on the same data dir replays from the persisted cursor and the table converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_then_restart_converges() {
    const N: u64 = 3000;
    let pg = PgSchema::create().await;
    let s = setup().await;
    let events = churn(N, 300, "fff000112-update");
    let url = pg.url("pg", "");
    let eds = s.eds(std::slice::from_ref(&url), &["--maxPendingBuffer", "100"]);
    let (first, rest) = events.split_at(N as usize / 2);
    let lsn = stored(&eds, publish_all(&s.js, first).await).await;
    delivered(&eds, &["pg"], lsn).await;

    // Hold writes to the table; the next batch blocks inside its transaction.
    let mut lock = pg.pool.begin().await.unwrap();
    let locker: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *lock).await.unwrap();
    sqlx::query(r#"LOCK TABLE "order" IN EXCLUSIVE MODE"#).execute(&mut *lock).await.unwrap();
    let last_lsn = stored(&eds, publish_all(&s.js, rest).await).await;
    until(&eds, "a batch of eds waiting on the test's lock", DELIVERY, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eds' AND $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(locker)
        .fetch_one(&pg.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
    let st = status(&eds).await;
    let cursor = destination(&st, "pg")["cursor"].as_u64().unwrap();
    assert!(cursor > 0 && cursor < last_lsn, "not mid-delivery: {st}");
    eds.kill();
    lock.rollback().await.unwrap();

    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let st = delivered(&eds, &["pg"], last_lsn).await;
    let d = destination(&st, "pg");
    assert!(d["last_error"].is_null(), "{st}");
    // At least everything past the cursor seen before the kill was (re)written.
    assert!(d["delivered"].as_u64().unwrap() >= last_lsn - cursor, "{st}");
    assert_table(&pg.rows("order", None).await, &expected_state(&events));
    assert_eq!(eds.stop(), 0);
}

/// Quotes, backslashes, dollar quotes, SQL, emoji, control characters and `<` in values and keys
/// reach PostgreSQL exactly and the file destination byte for byte — also through a big batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_survive_end_to_end() {
    let pg = PgSchema::create().await;
    let s = setup().await;
    let out = s.out();
    let hostile = [
        "it's",
        r#"say "hi""#,
        r"back\slash \\ \n",
        "$_H_$ dollar $$ quoted $_H_$",
        "'); DROP TABLE x; --",
        "emoji 😀🚗 ünïcödé",
        "<script>&amp;</script>",
        "tab\tnew\nline\r\n",
        "",
        "{\"looks\": [\"like json\"]}",
    ];
    let hostile_ids =
        ["it's \"odd\"", r"a\b", "$_H_$", "'); DROP TABLE x; --", "😀", "<id>", "../../etc/passwd", "a/b"];
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
    // Many in one go, so a batch may be big enough for COPY.
    for i in 0..2500u64 {
        let h = hostile[i as usize % hostile.len()];
        events.push(Ev::insert(
            "order",
            "fff000112-update",
            json!({"id": format!("bulk{i}"), "name": format!("{h}{i}{h}"), "updatedDate": date((i % 1000) as i64)}),
        ));
    }
    let bytes: Vec<Vec<u8>> = events.iter().map(Ev::bytes).collect();
    let mut seq = 0;
    for (e, b) in events.iter().zip(&bytes) {
        seq = publish(&s.js, e.subject(), b.clone()).await;
    }
    let eds = s.eds(&[pg.url("pg", ""), file_url(&out, "name=files")], &[]);
    let lsn = stored(&eds, seq).await;
    let st = delivered(&eds, &["pg", "files"], lsn).await;
    for name in ["pg", "files"] {
        assert!(destination(&st, name)["last_error"].is_null(), "{st}");
        assert_eq!(destination(&st, name)["delivered"], events.len(), "{st}");
    }
    assert_table(&pg.rows("order", None).await, &expected_state(&events));
    for id in hostile_ids {
        assert_eq!(pg.rows("order", Some(id)).await.len(), 1, "WHERE id = {id:?}");
    }
    let dirs: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(dirs, ["order"], "no key climbs out of its table directory");
    let files = table_files(&out, "order");
    assert_eq!(files.len(), events.len());
    let mut contents: Vec<&Vec<u8>> = files.values().collect();
    let mut sent: Vec<&Vec<u8>> = bytes.iter().collect();
    contents.sort();
    sent.sort();
    assert!(contents == sent, "the files are not the events byte for byte");
    assert_eq!(pg.tables().await, ["order"], "no table was dropped or made by a value");
    assert_eq!(eds.stop(), 0);
}

/// A row PostgreSQL refuses (a date-time that is no date) is dead-lettered for that destination
/// with the server's reason while the rest is delivered; after the operator widens the column,
/// `eds dlq replay` writes it (schemas from the data dir's tracker or HQ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_row_is_dead_lettered_and_replayed_after_a_fix() {
    let pg = PgSchema::create().await;
    let s = setup().await;
    let url = pg.url("pg", "");
    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let bad = Ev::insert("order", "fff000111", json!({"id": "bad", "name": "when?", "updatedDate": "yesterday"}));
    let good = Ev::insert("order", "fff000111", json!({"id": "good", "name": "fine", "updatedDate": date(3)}));
    publish_all(&s.js, &[bad, good.clone()]).await;
    until(&eds, "both events past the pg cursor", DELIVERY, || async {
        let st = status(&eds).await;
        (destination(&st, "pg")["cursor"] == 2).then_some(())
    })
    .await;
    let rows = pg.rows("order", None).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["good"], "{rows:?}");
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="pg"}"#).await, 1.0);
    assert_eq!(eds.stop(), 0);

    let dir = s.data.path().to_str().unwrap();
    let eds_cli = |args: &[&str]| std::process::Command::new(eds_bin()).args(args).output().unwrap();
    let listed = eds_cli(&["dlq", "list", "--destination", "pg", "-d", dir]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(text.contains("destination pg rejected it") && text.contains("yesterday"), "{text}");
    // PostgreSQL itself would read "yesterday" relative to the write (a replay would store another
    // date): the driver refuses every date-time that is not ISO-8601.
    assert!(text.contains("is not an ISO-8601 date-time"), "the reason: {text}");

    // Still refused before the fix: it stays for a later replay.
    let again = eds_cli(&["dlq", "replay", "--destination", "pg", "--url", &url, "--api-url", &s.hq.url, "-d", dir]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("still rejected"), "{again:?}");

    pg.exec(r#"ALTER TABLE "order" ALTER COLUMN "updatedDate" TYPE TEXT"#).await;
    let fixed = eds_cli(&["dlq", "replay", "--destination", "pg", "--url", &url, "--api-url", &s.hq.url, "-d", dir]);
    assert!(fixed.status.success(), "{fixed:?}");
    assert!(String::from_utf8_lossy(&fixed.stdout).contains("re-delivered 1 dead letter"), "{fixed:?}");
    let rows = pg.rows("order", None).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["bad", "good"]);
    assert_eq!(rows["bad"]["updatedDate"], "yesterday");
}

/// Rows that PostgreSQL refuses for reasons of its own — a trigger's `RAISE EXCEPTION` (SQLSTATE
/// P0001) and a unique index given a value too large for a btree entry (54000) — are
/// dead-lettered with their reasons, and every event before and after them is delivered: a single
/// row never blocks a destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_exception_and_an_oversized_index_entry_are_dead_lettered_not_retried_forever() {
    let pg = PgSchema::create().await;
    pg.exec(
        r#"CREATE TABLE "order" (id TEXT PRIMARY KEY, name TEXT, "updatedDate" TIMESTAMPTZ, age DOUBLE PRECISION);
           CREATE UNIQUE INDEX order_name ON "order" (name);
           CREATE FUNCTION refuse_forbidden() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.name = 'forbidden' THEN RAISE EXCEPTION 'the name % is refused by a trigger', NEW.name; END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_forbidden BEFORE INSERT OR UPDATE ON "order"
             FOR EACH ROW EXECUTE FUNCTION refuse_forbidden();"#,
    )
    .await;
    // 12 KB that do not compress: far beyond a btree entry's limit (about 2.7 KB).
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let huge: String = (0..12 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(seed % 62) as usize])
        })
        .collect();
    let s = setup().await;
    let eds = s.eds(&[pg.url("pg", "")], &[]);
    let v = "fff000111";
    let row = |id: &str, name: &str| json!({"id": id, "name": name, "updatedDate": date(1)});
    let events = [
        Ev::insert("order", v, row("a1", "first")),
        Ev::insert("order", v, row("t1", "forbidden")),
        Ev::insert("order", v, row("a2", "second")),
        Ev::insert("order", v, row("h1", &huge)),
        Ev::insert("order", v, row("a3", "third")),
        Ev::update("order", v, row("a1", "first"), row("a1", "first, changed"), &["name"]),
    ];
    let seq = publish_all(&s.js, &events).await;
    let lsn = stored(&eds, seq).await;
    let st = delivered(&eds, &["pg"], lsn).await;
    assert_ne!(destination(&st, "pg")["state"], "stopped", "{st}");
    let rows = pg.rows("order", None).await;
    let names: Vec<(&str, &str)> = rows.iter().map(|(id, r)| (id.as_str(), r["name"].as_str().unwrap())).collect();
    assert_eq!(names, [("a1", "first, changed"), ("a2", "second"), ("a3", "third")]);
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="pg"}"#).await, 2.0);
    assert_eq!(eds.stop(), 0);

    let dir = s.data.path().to_str().unwrap();
    let listed = std::process::Command::new(eds_bin())
        .args(["dlq", "list", "--destination", "pg", "--json", "-d", dir])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let letters: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let reasons: Vec<&str> = letters.as_array().unwrap().iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 2, "{letters}");
    assert!(reasons[0].contains("P0001") && reasons[0].contains("refused by a trigger"), "{}", reasons[0]);
    assert!(reasons[1].contains("54000") && reasons[1].contains("index row"), "{}", reasons[1]);
    // One clear message per cause: the database's words are not repeated down the chain.
    assert_eq!(reasons[0].matches("refused by a trigger").count(), 1, "{}", reasons[0]);
}

/// Passwords in the NATS URL and in destination URLs appear nowhere in what eds prints — a usage
/// error, the log of a running server at TRACE level (connection errors included), `/status` —
/// nor in the files it writes to the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_urls_never_reach_the_output() {
    const NATS_PW: &str = "n4tsS3cretPw";
    const PG_PW: &str = "pgS3cretPw";
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let leaks = |text: &str| [NATS_PW, PG_PW].into_iter().filter(|pw| text.contains(pw)).collect::<Vec<_>>();

    // A usage error about the URL's query: named, without the password.
    let nats_url = format!("nats://eds:{NATS_PW}@127.0.0.1:1");
    let bad = format!("postgres://postgres:{PG_PW}@127.0.0.1:5432/test?start=bogus");
    let o = std::process::Command::new(eds_bin())
        .args(["server", "-d", dir, "--server", &nats_url, "--url", &bad, "-v"])
        .output()
        .unwrap();
    let printed = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(2), "{printed}");
    assert!(printed.contains("start=\"bogus\"") && printed.contains("postgres:***@"), "{printed}");
    assert!(leaks(&printed).is_empty(), "{printed}");

    // A running server: NATS wants a password; one destination reaches PostgreSQL (trust auth
    // ignores the password), one never can (a closed port), so its errors are logged over and over.
    let nats =
        Nats::start_with_auth(nats_server_bin(), &["--user", "eds", "--pass", NATS_PW], &format!("eds:{NATS_PW}@"))
            .await;
    let js = nats.create_stream().await;
    let hq = Hq::start().await;
    let pg = PgSchema::create().await;
    let good = format!(
        "postgres://postgres:{PG_PW}@127.0.0.1:5432/test?name=pg&options=-c%20search_path%3D{}&password={PG_PW}",
        pg.name
    );
    let down = format!("postgres://postgres:{PG_PW}@127.0.0.1:1/test?name=down");
    let eds = Eds::start(data.path(), &nats, &["--restart", "--api-url", &hq.url, "--url", &good, "--url", &down]);
    let ev = Ev::insert("order", "fff000111", json!({"id": "p1", "name": "secret-free", "updatedDate": date(1)}));
    let seq = publish_all(&js, &[ev]).await;
    let lsn = stored(&eds, seq).await;
    delivered(&eds, &["pg"], lsn).await;
    until(&eds, "the unreachable destination to report its error", DELIVERY, || async {
        let st = status(&eds).await;
        destination(&st, "down")["last_error"].as_str().map(str::to_owned)
    })
    .await;
    let (_, status_body) = try_get(&eds.http, "/status").await.unwrap();
    assert!(leaks(&status_body).is_empty(), "{status_body}");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    drop(nats);
    assert!(log.contains("127.0.0.1:1"), "the unreachable destination is in the log:\n{log}");
    assert!(leaks(&log).is_empty(), "a password is in the log:\n{log}");
    for entry in walk(data.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(leaks(&String::from_utf8_lossy(&bytes)).is_empty(), "a password is in {}", entry.display());
    }
    // And what eds wrote there (the WAL, dead-letter logs, sled's tracker files, destinations.json)
    // is private: files 0600, directories 0700.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.path()), 0o700);
    for file in walk(data.path()) {
        assert_eq!(mode(&file) & 0o077, 0, "{} is mode {:o}", file.display(), mode(&file));
        for dir in file.ancestors().take_while(|d| d.starts_with(data.path()) && *d != data.path()).skip(1) {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
    }
    assert!(walk(data.path()).iter().any(|f| f.starts_with(data.path().join("tracker"))), "sled's files are there");
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `eds dlq replay` never rolls a row back: a dead letter whose row had a newer event delivered
/// since is reported as superseded and left pending; `--force` replays it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_skips_dead_letters_a_newer_event_superseded() {
    let pg = PgSchema::create().await;
    let s = setup().await;
    let url = pg.url("pg", "");
    let eds = s.eds(std::slice::from_ref(&url), &[]);
    let v = "fff000111";
    // One at a time: in one batch the drain would fold k's two events into one change.
    for ev in [
        Ev::insert("order", v, json!({"id": "k", "name": "old image", "updatedDate": "yesterday"})),
        Ev::insert("order", v, json!({"id": "k", "name": "newer", "updatedDate": date(5)})),
        Ev::insert("order", v, json!({"id": "j", "name": "only image", "updatedDate": "tomorrow"})),
    ] {
        step(&s.js, &eds, &["pg"], &ev).await;
    }
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="pg"}"#).await, 2.0);
    assert_eq!(eds.stop(), 0);
    let names = |rows: &Rows| -> Vec<(String, String)> {
        rows.iter().map(|(id, r)| (id.clone(), r["name"].as_str().unwrap().to_owned())).collect()
    };
    assert_eq!(names(&pg.rows("order", None).await), [("k".to_owned(), "newer".to_owned())]);

    pg.exec(r#"ALTER TABLE "order" ALTER COLUMN "updatedDate" TYPE TEXT"#).await;
    let dir = s.data.path().to_str().unwrap();
    let replay = |force: bool| {
        let mut args = vec!["dlq", "replay", "--destination", "pg", "--url", &url, "--api-url", &s.hq.url, "-d", dir];
        if force {
            args.push("--force");
        }
        std::process::Command::new(eds_bin()).args(&args).output().unwrap()
    };
    let o = replay(false);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{o:?}");
    assert!(text.contains("re-delivered 1 dead letter"), "{text}");
    assert!(text.contains("superseded: stream sequence 1") && text.contains("key \"k\""), "{text}");
    let rows = pg.rows("order", None).await;
    assert_eq!(
        names(&rows),
        [("j".to_owned(), "only image".to_owned()), ("k".to_owned(), "newer".to_owned())],
        "the newer row stays"
    );
    // It stays pending; --force replays it (and the operator asked for the older image).
    let o = replay(true);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && text.contains("re-delivered 2 dead letter") && !text.contains("superseded"),
        "{text}"
    );
    assert_eq!(pg.rows("order", Some("k")).await["k"]["name"], "old image");
}
