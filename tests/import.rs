//! `eds import` end to end against a double of HQ (schemas, the bulk export job, the pre-signed
//! files) and a real PostgreSQL: the rows arrive, the import timestamps are recorded for the
//! destination, and every documented refusal says what to do.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::events::HOSTILE;
use common::hq::{self as double, FullHandler};
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

fn gz(lines: &[String]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for l in lines {
        writeln!(e, "{l}").unwrap();
    }
    e.finish().unwrap()
}

/// HQ with `order` and `customer` schemas and one export job: pending at the first poll, then
/// complete with one file per table (or with `customer` failed).
struct Hq {
    url: String,
    polls: Arc<AtomicUsize>,
    expected: BTreeMap<String, String>,
}

async fn hq(rows: u32, fail_customer: bool) -> Hq {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut expected = BTreeMap::new();
    let orders: Vec<String> = (0..rows)
        .map(|i| {
            let (id, name) =
                (format!("o{i}"), format!("{} #{i}", HOSTILE[i as usize % HOSTILE.len()].replace('\0', "")));
            expected.insert(id.clone(), name.clone());
            serde_json::json!({"id": id, "name": name, "updatedDate": "2026-12-01T12:00:00.000Z"}).to_string()
        })
        .collect();
    let customers: Vec<String> =
        (0..50).map(|i| serde_json::json!({"id": format!("c{i}"), "name": "Ada"}).to_string()).collect();
    let files: HashMap<String, Vec<u8>> = [
        ("/files/202612011200000000000000000000001-c7-1-651-0-order-1.ndjson.gz".to_owned(), gz(&orders)),
        ("/files/202612011100000000000000000000001-c7-1-651-0-customer-1.ndjson.gz".to_owned(), gz(&customers)),
    ]
    .into();
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let base = url.clone();
    let handler: FullHandler = Arc::new(move |parts, _body| {
        let path = parts.uri.path();
        if let Some(bytes) = files.get(path) {
            return (200, bytes.clone());
        }
        let json = |v: serde_json::Value| (200, v.to_string().into_bytes());
        match (parts.method.as_str(), path) {
            ("GET", "/v3/schema") => json(
                serde_json::json!({"order": double::order("fff000111", false), "customer": double::customer("fff000111")}),
            ),
            ("POST", "/v3/export/bulk") => json(serde_json::json!({"success": true, "data": {"jobId": "job-1"}})),
            ("GET", "/v3/export/bulk/job-1") => {
                let done = p.fetch_add(1, Ordering::SeqCst) > 0;
                let customer = if fail_customer {
                    serde_json::json!({"status": "Failed", "error": "boom"})
                } else {
                    serde_json::json!({"status": if done {"Completed"} else {"Pending"},
                        "urls": [format!("{base}/files/202612011100000000000000000000001-c7-1-651-0-customer-1.ndjson.gz?sig=s3cret")]})
                };
                json(serde_json::json!({"success": true, "data": {"completed": done && !fail_customer, "tables": {
                    "order": {"status": "Completed", "urls": [format!("{base}/files/202612011200000000000000000000001-c7-1-651-0-order-1.ndjson.gz?sig=s3cret")]},
                    "customer": customer}}}))
            }
            _ => {
                let (status, body) = double::e2e_routes(path);
                (status, body.into_bytes())
            }
        }
    });
    tokio::spawn(double::serve_full(listener, handler, Some("application/json")));
    Hq { url, polls, expected }
}

fn eds(args: &[&str]) -> Output {
    Command::new(common::eds_bin()).args(args).env_remove("SM_APIKEY").output().unwrap()
}

/// `eds args` with `input` on its stdin.
fn eds_answering(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(common::eds_bin())
        .args(args)
        .env_remove("SM_APIKEY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The child may end without reading (a refusal): a broken pipe here is not the test's concern.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A PostgreSQL schema of the test's own; its destination URL.
async fn pg_schema() -> (String, String) {
    let schema = format!("import_{}", common::unique_suffix());
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    admin.execute(format!("CREATE SCHEMA \"{schema}\"").as_str()).await.unwrap();
    let url = format!("{PG}?name=pg&options=-c%20search_path%3D{schema}");
    (schema, url)
}

async fn orders(schema: &str) -> BTreeMap<String, String> {
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT id, name FROM \"{schema}\".\"order\"")).fetch_all(&mut admin).await.unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_job_is_downloaded_loaded_and_its_timestamps_recorded() {
    let rows = 100_000;
    let hq = hq(rows, false).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let common = ["import", "-d", d, "--url", &url, "--api-key", "k", "--api-url", &hq.url, "--poll-interval", "10ms"];

    // The default drops tables, which is asked first: with nobody to answer, it refuses.
    let o = eds(&common);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--no-confirm") && text(&o).contains("--no-delete"), "{}", text(&o));
    assert_eq!(hq.polls.load(Ordering::SeqCst), 0, "asked before any export job");

    let o = eds(&[&common[..], &["--no-delete", "--dry-run"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&format!("checked 2 tables, {} rows", rows + 50)), "{}", text(&o));
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
            .bind(&schema)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert!(tables.is_empty(), "a dry run creates no table and writes no row: {tables:?}");
    {
        let t = eds::tracker::Tracker::open(data.path()).unwrap();
        assert_eq!(t.get("table-export").unwrap(), None, "nor any import timestamp");
    }

    let o = eds(&[&common[..], &["--no-delete"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&format!("loaded 2 tables, {} rows", rows + 50)), "{}", text(&o));
    assert!(!text(&o).contains("s3cret"), "pre-signed signatures stay out of the output: {}", text(&o));
    assert!(hq.polls.load(Ordering::SeqCst) >= 2, "the job was polled until complete");
    assert_eq!(orders(&schema).await, hq.expected, "every row, every value as exported");
    let t = eds::tracker::Tracker::open(data.path()).unwrap();
    let stamps = eds::import::timestamps::decode(&t.get("table-export:pg").unwrap().unwrap()).unwrap();
    let stamps: BTreeMap<String, String> = stamps.into_iter().map(|e| (e.table, e.timestamp)).collect();
    assert_eq!(stamps["order"], "2026-12-01T12:00:00Z");
    assert_eq!(stamps["customer"], "2026-12-01T11:00:00Z");
    drop(t);
    assert!(!data.path().join("import-job-1").exists(), "the download is cleaned up");
    admin.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_and_exit_as_eds() {
    let hq = hq(10, true).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();

    let o = eds(&["import", "-d", d, "--url", &url, "--api-key", "k", "--api-url", &hq.url, "--validate-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = eds(&[
        "import",
        "-d",
        d,
        "--url",
        "postgres://postgres@127.0.0.1:1/test",
        "--api-key",
        "k",
        "--api-url",
        &hq.url,
    ]);
    assert_eq!(o.status.code(), Some(3), "an unreachable destination: {}", text(&o));
    let o = eds(&["import", "-d", d, "--url", &url, "--api-url", &hq.url, "--no-delete"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no API key"), "{}", text(&o));
    let o =
        eds(&["import", "-d", d, "--url", &url, "--api-key", "k", "--api-url", &hq.url, "--timeOffset", "yesterday"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--timeOffset"), "{}", text(&o));
    let args = [
        "import",
        "-d",
        d,
        "--url",
        &url,
        "--api-key",
        "k",
        "--api-url",
        &hq.url,
        "--no-delete",
        "--poll-interval",
        "10ms",
    ];
    let o = eds(&[&args[..], &["--only", "nope"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = eds(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("error exporting table customer: boom"), "{}", text(&o));
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    admin.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_refuses_a_data_dir_a_running_server_holds() {
    let hq = hq(10, false).await;
    let nats = common::Nats::start().await;
    nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let files = format!("file://{}", data.path().join("out").display());
    let server = common::Eds::start(data.path(), &nats, &["--url", &files]);
    let d = data.path().to_str().unwrap();
    let o =
        eds(&["import", "-d", d, "--url", &files, "--api-key", "k", "--api-url", &hq.url, "--poll-interval", "10ms"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("in use by a running eds server"), "{}", text(&o));
    assert_eq!(server.stop(), 0);
    // Stopped, the same import runs (a file destination keeps no tables: nothing to drop).
    let o =
        eds(&["import", "-d", d, "--url", &files, "--api-key", "k", "--api-url", &hq.url, "--poll-interval", "10ms"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("loaded 2 tables, 60 rows"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_import_drops_and_recreates_the_tables_once_the_operator_says_yes() {
    let hq = hq(10, false).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let common = ["import", "-d", d, "--url", &url, "--api-key", "k", "--api-url", &hq.url, "--poll-interval", "10ms"];
    let o = eds(&[&common[..], &["--no-delete"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(orders(&schema).await, hq.expected);

    // Rows and columns the export does not have: a row under another key, a column of its own.
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    let damage = format!(
        "UPDATE \"{schema}\".\"order\" SET id = 'stale' WHERE id = 'o1'; \
         ALTER TABLE \"{schema}\".\"order\" ADD COLUMN IF NOT EXISTS stale_col int DEFAULT 7"
    );
    admin.execute(damage.as_str()).await.unwrap();
    let damaged = orders(&schema).await;
    assert!(damaged.contains_key("stale") && !damaged.contains_key("o1"));
    let stale_col = async || -> bool {
        let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND column_name = 'stale_col'",
        )
        .bind(&schema)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        n > 0
    };

    // --no-delete upserts: the stale row stays. A dry run says what it would drop and drops nothing.
    let o = eds(&[&common[..], &["--dry-run"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("would drop and recreate up to 2 tables"), "{}", text(&o));
    // "no" cancels with nothing changed (exit 0, as EDS's Cancel).
    let o = eds_answering(&common, "no\n");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("cancelled: nothing was changed"), "{}", text(&o));
    let question = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(question.contains("DROPS 2 tables") && question.contains("customer, order"), "{question}");
    assert!(!question.contains("s3cret"), "{question}");
    assert_eq!(orders(&schema).await, damaged);
    assert!(stale_col().await);

    // "yes": both tables dropped and loaded afresh from the export.
    let o = eds_answering(&common, "yes\n");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("dropped 2 tables"), "{}", text(&o));
    assert_eq!(orders(&schema).await, hq.expected, "the stale row is gone, the exported one back");
    assert!(!stale_col().await, "the table is the schema's again");

    // --no-confirm drops without asking (what HQ-started imports use).
    admin.execute(format!("UPDATE \"{schema}\".\"order\" SET id = 'stale' WHERE id = 'o2'").as_str()).await.unwrap();
    let o = eds(&[&common[..], &["--no-confirm", "--only", "order"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("dropped 1 table to"), "{}", text(&o));
    assert_eq!(orders(&schema).await, hq.expected);
    admin.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str()).await.unwrap();
}
