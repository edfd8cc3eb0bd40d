//! End to end: NATS JetStream → `eds server --url snowflake://…` → fakesnow (Snowflake's REST
//! API in front of DuckDB), with EDS's mock HQ schema registry. Every test starts its own
//! fakesnow (`FAKESNOW_SERVER`, installed by scripts/test.sh) and reads rows back through the
//! official Python connector of its venv.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::{churn, date, Ev};
use common::model::{assert_row, assert_table, expected_state, Rows};
use common::proxy::{Mode, Proxy};
use common::setup::{publish_all, setup, Setup};
use common::wait::{delivered, destination, metric, status, step, stored, until, DELIVERY};
use common::Eds;
use eds_drivers::snowflake::fakesnow::Fakesnow;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const DB: &str = "EDS_E2E";
const SCHEMA: &str = "PUBLIC";

/// A Snowflake identifier, double-quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The destination URL at `endpoint` (fakesnow or a proxy), named `sf`; a request fails after
/// 5 s (a black hole shows quickly).
fn url(endpoint: &str) -> String {
    format!("{}&name=sf&timeout=5", Fakesnow::url_at(endpoint, DB, SCHEMA))
}

/// Columns of `table` as (name, data type), by name.
fn columns(fake: &Fakesnow, table: &str) -> Vec<(String, String)> {
    let sql = format!(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '{SCHEMA}' \
         AND table_name = '{}' ORDER BY column_name",
        table.replace('\'', "''")
    );
    fake.rows(DB, SCHEMA, &sql)
        .unwrap()
        .into_iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_str().unwrap().to_owned()))
        .collect()
}

fn column_names(fake: &Fakesnow, table: &str) -> Vec<String> {
    columns(fake, table).into_iter().map(|c| c.0).collect()
}

/// `YYYY-MM-DD HH:MM:SS[.f…]` (DuckDB's text of a timestamp) as the events' `…T…mmmZ`.
fn millis(text: &str) -> String {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let ms: String = fraction.chars().chain("000".chars()).take(3).collect();
    format!("{}.{ms}Z", whole.replacen(' ', "T", 1))
}

/// Rows of `table` (that with `id = only` when given) as JSON objects by id: timestamps read as
/// text (the connector reads fakesnow's NULL timestamps as 1970) and written as the events
/// write them, numbers as numbers, the rest as text.
fn rows(fake: &Fakesnow, table: &str, only: Option<&str>) -> Rows {
    let cols = columns(fake, table);
    assert!(!cols.is_empty(), "table {table:?} does not exist");
    let exprs: Vec<String> = cols
        .iter()
        .map(|(name, t)| if t == "TIMESTAMP_NTZ" { format!("TO_VARCHAR({})", ident(name)) } else { ident(name) })
        .collect();
    let filter = only.map(|id| format!(" WHERE \"id\" = '{}'", id.replace('\'', "''"))).unwrap_or_default();
    let sql = format!("SELECT {} FROM {}{filter}", exprs.join(", "), ident(table));
    let mut out = BTreeMap::new();
    for row in fake.rows(DB, SCHEMA, &sql).unwrap_or_else(|e| panic!("{sql}: {e}")) {
        let mut object = Map::new();
        for ((name, t), v) in cols.iter().zip(row) {
            let v = match (t.as_str(), v) {
                ("TIMESTAMP_NTZ", Value::String(s)) => Value::String(millis(&s)),
                (_, v) => v,
            };
            object.insert(name.clone(), v);
        }
        let id = object["id"].as_str().unwrap().to_owned();
        assert!(out.insert(id.clone(), object).is_none(), "two rows with id {id:?} in {table}");
    }
    out
}

/// The destination reports retrying with an error, after at least `n` failed attempts.
async fn retrying(eds: &Eds, n: f64) -> String {
    let err = until(eds, "the destination to report retrying with an error", DELIVERY, || async {
        let st = status(eds).await;
        let d = destination(&st, "sf");
        (d["state"] == "retrying").then(|| d["last_error"].as_str().map(str::to_owned)).flatten()
    })
    .await;
    until(eds, &format!("{n} failed attempts"), DELIVERY, || async {
        (metric(eds, r#"eds_destination_retries_total{destination="sf"}"#).await >= n).then_some(())
    })
    .await;
    err
}

/// Ingest stores and acknowledges everything up to stream sequence `last` while the destination
/// is away, and the destination's cursor stays behind; the durable LSN.
async fn acked_while_away(s: &Setup, eds: &Eds, last: u64) -> u64 {
    let lsn = stored(eds, last).await;
    let stream = s.js.get_stream("dbchange").await.unwrap();
    until(eds, "every message acknowledged upstream", DELIVERY, || async {
        let info = stream.consumer_info("eds-dev").await.unwrap();
        (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence == last).then_some(())
    })
    .await;
    let st = status(eds).await;
    assert!(destination(&st, "sf")["cursor"].as_u64().unwrap() < lsn, "delivered while away? {st}");
    lsn
}

/// EDS's end-to-end scenario (spec §9.2), all eight steps, to Snowflake (fakesnow): after each
/// step the row (`SELECT … WHERE id = '12345'`) is gone after a DELETE, else it is one row with
/// the object's values; `order` gains `age` at step 6 and nothing is ever dropped. SIGINT stops
/// eds cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_e2e_scenario_snowflake() {
    let fake = Fakesnow::start();
    let s = setup().await;
    let eds = s.eds(&[url(&fake.endpoint())], &[]);
    let sf = ["sf"];

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
        step(&s.js, &eds, &sf, ev).await;
        let rows = rows(&fake, ev.table, Some("12345"));
        if ev.op == "DELETE" {
            assert!(rows.is_empty(), "step {what}: the row is still there: {rows:?}");
        } else {
            assert_eq!(rows.len(), 1, "step {what}: {rows:?}");
            assert_row(&rows["12345"], ev.object(), ev.op == "INSERT", &format!("step {what}"));
        }
        if ev.table == "order" {
            let want: &[&str] =
                if n < 5 { &["id", "name", "updatedDate"] } else { &["age", "id", "name", "updatedDate"] };
            assert_eq!(column_names(&fake, "order"), want, "step {what}");
        }
    }
    let typed = |cols: &[(&str, &str)]| cols.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        columns(&fake, "order"),
        typed(&[("age", "FLOAT"), ("id", "TEXT"), ("name", "TEXT"), ("updatedDate", "TIMESTAMP_NTZ")])
    );
    assert_eq!(
        columns(&fake, "customer"),
        typed(&[("id", "TEXT"), ("name", "TEXT"), ("updatedDate", "TIMESTAMP_NTZ")])
    );
    let st = status(&eds).await;
    let d = destination(&st, "sf");
    assert_eq!(d["driver"], "Snowflake", "{st}");
    assert!(d["last_error"].is_null(), "{st}");
    assert_eq!(d["cursor"], 8, "{st}");
    assert_eq!(d["delivered"], 8, "{st}");
    assert_eq!(eds.stop_with("INT"), 0);
}

/// Many updates, deletes and re-inserts of a few keys, with hostile values and keys, in big
/// batches: the table converges to exactly the published state, and the table the SQL in the
/// values names survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churning_stream_with_hostile_values_converges() {
    let fake = Fakesnow::start();
    let s = setup().await;
    let hostile = [
        "it's",
        r#"say "hi""#,
        r"back\slash \\ \n",
        "'); DROP TABLE x; --",
        "emoji 😀🚗 ünïcödé",
        "<script>&amp;</script>",
        "tab\tnew\nline\r\n\u{1f}",
        "",
        "{\"looks\": [\"like json\"]}",
        "$$ ? :1 %s",
    ];
    let hostile_ids = ["it's \"odd\"", r"a\b", "😀", "<id>", "../../etc/passwd", "a/b", "sp ace", "%2F", "."];
    let mut events = churn(1200, 60, "fff000112-update");
    for (i, id) in hostile_ids.iter().enumerate() {
        let h = hostile[i % hostile.len()];
        events.push(Ev::insert(
            "order",
            "fff000112-update",
            json!({"id": id, "name": h, "updatedDate": date(i as i64)}),
        ));
    }
    for (i, h) in hostile.iter().enumerate() {
        let row = json!({"id": format!("k{i}"), "name": h, "updatedDate": date(i as i64), "age": i});
        events.push(Ev::insert("order", "fff000112-update", row));
    }
    let seq = publish_all(&s.js, &events).await;
    let eds = s.eds(&[url(&fake.endpoint())], &[]);
    let lsn = stored(&eds, seq).await;
    let st = delivered(&eds, &["sf"], lsn).await;
    let d = destination(&st, "sf");
    assert!(d["last_error"].is_null(), "{st}");
    assert_eq!(metric(&eds, r#"eds_destination_dead_lettered_total{destination="sf"}"#).await, 0.0);
    assert_table(&rows(&fake, "order", None), &expected_state(&events));
    assert_eq!(eds.stop(), 0);
}

/// fakesnow goes away twice in the middle of a stream — connections refused, then a black hole
/// that answers nothing: ingest keeps acknowledging, the destination reports retrying, and once it
/// is back the table holds exactly the published state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_cut_then_black_hole_loses_nothing() {
    let fake = Fakesnow::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", fake.port)).await;
    let s = setup().await;
    let events = churn(600, 50, "fff000112-update");
    let eds = s.eds(&[url(&format!("http://{}", proxy.addr()))], &[]);
    let (first, rest) = events.split_at(200);
    let (second, third) = rest.split_at(200);

    let lsn = stored(&eds, publish_all(&s.js, first).await).await;
    delivered(&eds, &["sf"], lsn).await;
    assert_table(&rows(&fake, "order", None), &expected_state(first));

    for (mode, part) in [(Mode::Cut, second), (Mode::Blackhole, third)] {
        proxy.set(mode);
        let last = publish_all(&s.js, part).await;
        let before = metric(&eds, r#"eds_destination_retries_total{destination="sf"}"#).await;
        let err = retrying(&eds, before + 2.0).await;
        assert!(!err.is_empty(), "{mode:?}");
        let lsn = acked_while_away(&s, &eds, last).await;
        proxy.set(Mode::Up);
        let st = delivered(&eds, &["sf"], lsn).await;
        assert!(destination(&st, "sf")["last_error"].is_null(), "{mode:?}: {st}");
    }
    assert_eq!(status(&eds).await["ingest"]["received"], 600);
    assert_table(&rows(&fake, "order", None), &expected_state(&events));
    assert_eq!(eds.stop(), 0);
}

/// eds is SIGKILLed while a batch is in flight (fakesnow behind a black hole); the connections it
/// held die with it (the proxy is cut: nothing sent before the kill arrives late), and the
/// restart on the same data dir replays from the persisted cursor: the table converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_then_restart_converges() {
    let fake = Fakesnow::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", fake.port)).await;
    let s = setup().await;
    let events = churn(1000, 100, "fff000112-update");
    let dest = url(&format!("http://{}", proxy.addr()));
    let eds = s.eds(std::slice::from_ref(&dest), &["--maxPendingBuffer", "100"]);
    let (first, rest) = events.split_at(500);
    let lsn = stored(&eds, publish_all(&s.js, first).await).await;
    delivered(&eds, &["sf"], lsn).await;

    proxy.set(Mode::Blackhole);
    let last_lsn = stored(&eds, publish_all(&s.js, rest).await).await;
    until(&eds, "a batch in flight", DELIVERY, || async {
        let st = status(&eds).await;
        let d = destination(&st, "sf");
        let waiting = d["cursor"].as_u64().unwrap_or(0) < last_lsn && d["state"] != "retrying";
        (waiting && proxy.swallowed() > 0).then_some(())
    })
    .await;
    let st = status(&eds).await;
    let cursor = destination(&st, "sf")["cursor"].as_u64().unwrap();
    assert!(cursor < last_lsn, "not mid-delivery: {st}");
    eds.kill();
    proxy.set(Mode::Cut);
    proxy.set(Mode::Up);

    let eds = s.eds(std::slice::from_ref(&dest), &[]);
    let st = delivered(&eds, &["sf"], last_lsn).await;
    let d = destination(&st, "sf");
    assert!(d["last_error"].is_null(), "{st}");
    assert!(d["delivered"].as_u64().unwrap() >= last_lsn - cursor, "{st}");
    assert_table(&rows(&fake, "order", None), &expected_state(&events));
    assert_eq!(eds.stop(), 0);
}
