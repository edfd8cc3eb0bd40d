//! `eds import` interrupted and run again, end to end: the real binary against a double of HQ
//! (schemas, the bulk export job, pre-signed files it can hold back mid-body) and real PostgreSQL
//! and MariaDB. SIGKILL during the download or the load, then a re-run with `--job-id` or `--dir`,
//! ends with the tables equal to the files, fetches no finished file twice and creates no second
//! job; damaged files fail naming the file (never the signature) and record no import timestamp;
//! `--only` and `--schema-only` do what they say. Every run passes `--no-delete`.
#![allow(clippy::unwrap_used)]

use crate::common;

use bytes::Bytes;
use common::events::HOSTILE;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use sqlx::{Connection, Executor};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";
/// The pre-signed URLs' secret: never printed.
const SIG: &str = "s3cret";
/// How long a whole import may take here.
const RUN: Duration = Duration::from_secs(180);

/// Rows by id: the `name` of each.
type Rows = BTreeMap<String, String>;

/// An export file's name as CockroachDB gives it: the table's `n`th, at 2026-12-01 12:00 + `n` s.
fn name(table: &str, n: u32) -> String {
    format!("2026120112000{n}0000000000000000001-c7-1-651-0-{table}-{n}.ndjson.gz")
}

/// `rows` as a gzipped NDJSON file of `{"id", "name"}` objects, ids in order.
fn gz(rows: &Rows) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for (id, name) in rows {
        writeln!(e, "{}", serde_json::json!({"id": id, "name": name, "updatedDate": "2026-12-01T12:00:00.000Z"}))
            .unwrap();
    }
    e.finish().unwrap()
}

/// `count` rows `<prefix><i>` from `from`, their names hostile (NUL bytes kept only `with_nul`).
fn rows(prefix: &str, from: u32, count: u32, with_nul: bool) -> Rows {
    (from..from + count)
        .map(|i| {
            let h = HOSTILE[i as usize % HOSTILE.len()];
            let h = if with_nul { h.to_owned() } else { h.replace('\0', "") };
            (format!("{prefix}{i}"), format!("{h} #{i}"))
        })
        .collect()
}

/// One export: file name → (table, rows), and what each table then holds.
#[derive(Default, Clone)]
struct Export {
    files: BTreeMap<String, (String, Rows)>,
}

impl Export {
    fn add(&mut self, table: &str, n: u32, rows: Rows) -> String {
        let name = name(table, n);
        self.files.insert(name.clone(), (table.to_owned(), rows));
        name
    }

    fn table(&self, table: &str) -> Rows {
        self.files.values().filter(|(t, _)| t == table).flat_map(|(_, r)| r.clone()).collect()
    }

    /// Writes every file into `dir`.
    fn write(&self, dir: &Path) {
        for (name, (_, rows)) in &self.files {
            std::fs::write(dir.join(name), gz(rows)).unwrap();
        }
    }
}

/// What the double saw.
#[derive(Default)]
struct Seen {
    /// GETs per export file name.
    gets: HashMap<String, usize>,
    /// Bodies of `POST /v3/export/bulk`.
    posts: Vec<serde_json::Value>,
}

/// HQ: `order` and `customer` schemas, and export job `job-1` (pending at its first poll, then
/// complete) with the export's files at pre-signed URLs. The first GET of `hold` sends half the
/// file and then nothing until the process is gone; `damage` files are served cut in half (with a
/// matching length: a body that arrives whole but is no whole gzip).
struct Hq {
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl Hq {
    fn gets(&self, file: &str) -> usize {
        self.seen.lock().unwrap().gets.get(file).copied().unwrap_or(0)
    }

    fn posts(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().posts.clone()
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn hq(export: &Export, hold: Option<&str>, damage: &[&str]) -> Hq {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, (table, rows)) in &export.files {
        let mut bytes = gz(rows);
        if damage.contains(&name.as_str()) {
            bytes.truncate(bytes.len() / 2);
        }
        files.insert(name.clone(), bytes);
        tables.entry(table.clone()).or_default().push(format!("{url}/files/{name}?sig={SIG}"));
    }
    let state = Arc::new(Double {
        files,
        tables,
        hold: hold.map(str::to_owned),
        seen: Arc::new(Mutex::new(Seen::default())),
        polls: AtomicUsize::new(0),
        held: Mutex::new(Vec::new()),
    });
    let seen = state.seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        Ok::<_, Infallible>(state.answer(&parts, &body))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    Hq { url, seen }
}

struct Double {
    files: HashMap<String, Vec<u8>>,
    /// Table → its files' URLs.
    tables: BTreeMap<String, Vec<String>>,
    hold: Option<String>,
    seen: Arc<Mutex<Seen>>,
    polls: AtomicUsize,
    /// The senders of held bodies: kept, so the bodies stay open.
    held: Mutex<Vec<tokio::sync::mpsc::Sender<Bytes>>>,
}

impl Double {
    fn answer(&self, parts: &hyper::http::request::Parts, body: &[u8]) -> hyper::Response<Body> {
        let path = parts.uri.path();
        if let Some(file) = path.strip_prefix("/files/") {
            let Some(bytes) = self.files.get(file) else { return respond(404, b"{}".to_vec()) };
            let n = {
                let mut seen = self.seen.lock().unwrap();
                let n = seen.gets.entry(file.to_owned()).or_default();
                *n += 1;
                *n
            };
            if n == 1 && self.hold.as_deref() == Some(file) {
                return self.held_body(bytes);
            }
            return respond(200, bytes.clone());
        }
        let json = |v: serde_json::Value| respond(200, v.to_string().into_bytes());
        match (parts.method.as_str(), path) {
            ("GET", "/v3/schema") => json(
                serde_json::json!({"order": common::hq::order("fff000111", false), "customer": common::hq::customer("fff000111")}),
            ),
            ("POST", "/v3/export/bulk") => {
                self.seen.lock().unwrap().posts.push(serde_json::from_slice(body).unwrap_or_default());
                json(serde_json::json!({"success": true, "data": {"jobId": "job-1"}}))
            }
            ("GET", "/v3/export/bulk/job-1") => {
                let done = self.polls.fetch_add(1, Ordering::SeqCst) > 0;
                let tables: serde_json::Map<String, serde_json::Value> = self
                    .tables
                    .iter()
                    .map(|(t, urls)| {
                        let status = if done { "Completed" } else { "Pending" };
                        (t.clone(), serde_json::json!({"status": status, "urls": urls, "cursor": "1"}))
                    })
                    .collect();
                json(serde_json::json!({"success": true, "data": {"completed": done, "tables": tables}}))
            }
            _ => {
                let (status, body) = common::hq::e2e_routes(path);
                respond(status, body.into_bytes())
            }
        }
    }

    /// The first half of `bytes` under a header announcing all of them, then nothing.
    fn held_body(&self, bytes: &[u8]) -> hyper::Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tx.try_send(Bytes::copy_from_slice(&bytes[..bytes.len() / 2])).unwrap();
        self.held.lock().unwrap().push(tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut response = hyper::Response::new(StreamBody::new(stream).boxed_unsync());
        response.headers_mut().insert(hyper::header::CONTENT_LENGTH, bytes.len().into());
        response
    }
}

fn respond(status: u16, body: Vec<u8>) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}

/// An `eds import` child, its stdout and stderr in one log file; killed when dropped.
struct Import {
    child: Child,
    log: PathBuf,
}

impl Import {
    fn start(args: &[&str], log: &Path) -> Import {
        let out = File::create(log).unwrap();
        let child = Command::new(common::eds_bin())
            .arg("import")
            .args(args)
            .env_remove("SM_APIKEY")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Import { child, log: log.to_owned() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test when the child exited (it was meant to be killed mid-way).
    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("eds import exited ({status}) before {what}:\n{}", self.log());
        }
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Wait (within `timeout`) for the exit code and the log.
    async fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.log());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("eds import did not finish within {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `eds import args` to its end; exit code and output.
async fn run(args: &[&str], log: &Path) -> (Option<i32>, String) {
    Import::start(args, log).finish(RUN).await
}

/// The arguments every run here shares.
fn base<'a>(data: &'a str, url: &'a str, hq: &'a str) -> Vec<&'a str> {
    vec!["-d", data, "--url", url, "--api-key", "k", "--api-url", hq, "--no-delete", "--poll-interval", "10ms"]
}

/// A PostgreSQL schema of the test's own; its name and destination URL (`name=pg`).
async fn pg_schema() -> (String, String) {
    let schema = format!("import_resume_{}", common::unique_suffix());
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    admin.execute(format!("CREATE SCHEMA \"{schema}\"").as_str()).await.unwrap();
    (schema.clone(), format!("{PG}?name=pg&options=-c%20search_path%3D{schema}"))
}

/// Drop `schema`, best effort, never waiting on a lock for long.
async fn drop_pg_schema(schema: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(PG).await {
        let _ = admin.execute("SET lock_timeout = '2s'").await;
        let _ = admin.execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str()).await;
    }
}

/// The rows of `table` in `schema`, `None` while the table does not exist.
async fn pg_rows(schema: &str, table: &str) -> Option<Rows> {
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT id, name FROM \"{schema}\".\"{table}\"")).fetch_all(&mut admin).await.ok()?;
    Some(rows.into_iter().collect())
}

/// The tables in `schema`, sorted.
async fn pg_tables(schema: &str) -> Vec<String> {
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

/// The import timestamps recorded for destination `dest`: table → RFC 3339; `None` when none.
fn stamps(data: &Path, dest: &str) -> Option<BTreeMap<String, String>> {
    let t = eds::tracker::Tracker::open(data).unwrap();
    let value = t.get(&format!("table-export:{dest}")).unwrap()?;
    assert!(t.get("table-export").unwrap().is_some(), "EDS's key is written with the destination's");
    let list = eds::import::timestamps::decode(&value).unwrap();
    Some(list.into_iter().map(|e| (e.table, e.timestamp)).collect())
}

/// What the unfinished-import mark on destination `dest` says, when there is one.
fn unfinished(data: &Path, dest: &str) -> Option<String> {
    let t = eds::tracker::Tracker::open(data).unwrap();
    eds::import::timestamps::unfinished(&t, dest).unwrap().map(|u| u.to_string())
}

/// The names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_midway_resumes_with_job_id_fetching_only_what_was_missing() {
    let mut export = Export::default();
    let fast = [
        export.add("order", 1, rows("o", 0, 20_000, false)),
        export.add("order", 3, rows("o", 40_000, 20_000, false)),
        export.add("customer", 1, rows("c", 0, 500, false)),
    ];
    let slow = export.add("order", 2, rows("o", 20_000, 20_000, false));
    let hq = hq(&export, Some(&slow), &[]).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let args = base(d, &url, &hq.url);
    let download = data.path().join("import-job-1");

    let mut first = Import::start(&args, &data.path().join("first.log"));
    let part = download.join(format!("{slow}.part"));
    common::eventually("the held file begun and the others finished", Duration::from_secs(60), || {
        first.assert_running("the download was under way");
        let ready = part.exists() && fast.iter().all(|f| download.join(f).exists());
        async move { ready.then_some(()) }
    })
    .await;
    first.kill();
    assert_eq!(hq.gets(&slow), 1);
    assert!(part.exists() && !download.join(&slow).exists(), "{:?}", names(&download));
    assert_eq!(stamps(data.path(), "pg"), None, "a killed import records no timestamp");
    assert_eq!(unfinished(data.path(), "pg"), None, "killed before it dropped anything: the drain is not held");

    // Loading what is there would record the tables' timestamps over rows never loaded.
    let dir = download.to_str().unwrap();
    let (code, out) = run(&[&args[..], &["--dir", dir]].concat(), &data.path().join("dir.log")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("did not finish") && out.contains(&slow) && out.contains("--job-id"), "{out}");
    assert_eq!(pg_tables(&schema).await, Vec::<String>::new(), "nothing written");
    assert_eq!(stamps(data.path(), "pg"), None);

    let (code, out) = run(&[&args[..], &["--job-id", "job-1"]].concat(), &data.path().join("second.log")).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("downloaded 1 files") && out.contains("3 already there"), "{out}");
    for f in &fast {
        assert_eq!(hq.gets(f), 1, "{f} was whole before the kill: not fetched again");
    }
    assert_eq!(hq.gets(&slow), 2, "the interrupted file is fetched again");
    assert_eq!(hq.posts().len(), 1, "the resumed import polls the job it is given, it creates none");
    assert!(!out.contains(SIG), "{out}");
    assert_eq!(pg_rows(&schema, "order").await.unwrap(), export.table("order"));
    assert_eq!(pg_rows(&schema, "customer").await.unwrap(), export.table("customer"));
    let stamps = stamps(data.path(), "pg").unwrap();
    assert_eq!(stamps["order"], "2026-12-01T12:00:03Z", "the newest order file's time");
    assert_eq!(stamps["customer"], "2026-12-01T12:00:01Z");
    assert!(!download.exists(), "a finished import removes its download");
    drop_pg_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_killed_midway_resumes_from_the_download_dir() {
    let mut export = Export::default();
    export.add("order", 1, rows("o", 0, 100_000, false));
    export.add("order", 2, rows("o", 100_000, 100_000, false));
    export.add("customer", 1, rows("c", 0, 100, false));
    let total = export.table("order").len() as i64;
    let hq = hq(&export, None, &[]).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    // Dropping and recreating the tables (not --no-delete): a kill after the drops leaves them
    // half loaded, which the destination's mark must say.
    let args: Vec<&str> =
        base(d, &url, &hq.url).into_iter().map(|a| if a == "--no-delete" { "--no-confirm" } else { a }).collect();

    let mut first = Import::start(&args, &data.path().join("first.log"));
    let pool = sqlx::PgPool::connect(PG).await.unwrap();
    let count = format!("SELECT count(*) FROM \"{schema}\".\"order\"");
    let held = common::eventually("PostgreSQL holding some but not all orders", Duration::from_secs(120), || {
        first.assert_running("the load was under way");
        let (pool, count) = (pool.clone(), count.clone());
        async move {
            let n: i64 = sqlx::query_scalar(&count).fetch_one(&pool).await.ok()?;
            (n > 0 && n < total).then_some(n)
        }
    })
    .await;
    first.kill();
    let download = data.path().join("import-job-1");
    let mut whole: Vec<String> = export.files.keys().cloned().collect();
    whole.insert(0, eds::import::download::MANIFEST.to_owned());
    assert_eq!(names(&download), whole, "the download stays after a kill, every file whole");
    assert_eq!(stamps(data.path(), "pg"), None, "a killed import records no timestamp");
    let mark = unfinished(data.path(), "pg").expect("a load killed after the drops marks the destination");
    assert!(mark.contains("dropped 2 tables (customer, order) and did not finish"), "{mark}");

    let dir = download.to_str().unwrap();
    let (code, out) = run(&[&args[..], &["--dir", dir]].concat(), &data.path().join("second.log")).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("loaded 2 tables, {} rows", total + 100)), "{out}");
    assert_eq!(pg_rows(&schema, "order").await.unwrap(), export.table("order"), "killed at {held} of {total} rows");
    assert_eq!(pg_rows(&schema, "customer").await.unwrap(), export.table("customer"));
    assert_eq!(stamps(data.path(), "pg").unwrap()["order"], "2026-12-01T12:00:02Z");
    assert_eq!(unfinished(data.path(), "pg"), None, "the finished import clears the mark");
    assert!(download.exists(), "--dir keeps its files");
    assert_eq!(hq.posts().len(), 1, "--dir creates no job");
    pool.close().await;
    drop_pg_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_dir_imported_twice_gives_the_same_table_and_stays() {
    let mut export = Export::default();
    export.add("order", 1, rows("o", 0, 3_000, false));
    export.add("order", 2, rows("o", 2_000, 3_000, false).into_iter().map(|(k, v)| (k, format!("{v} v2"))).collect());
    export.add("customer", 1, rows("c", 0, 10, false));
    // Files later in time win: the second file's names for o2000..o2999.
    let mut expected = rows("o", 0, 3_000, false);
    expected.extend(export.files[&name("order", 2)].1.clone());
    let hq = hq(&export, None, &[]).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    export.write(files.path());
    let before = names(files.path());
    let d = data.path().to_str().unwrap();
    let args = [&base(d, &url, &hq.url)[..], &["--dir", files.path().to_str().unwrap()]].concat();

    for round in 1..=2 {
        let (code, out) = run(&args, &data.path().join(format!("{round}.log"))).await;
        assert_eq!(code, Some(0), "round {round}: {out}");
        assert!(out.contains("loaded 2 tables, 6010 rows"), "round {round}: {out}");
        assert_eq!(pg_rows(&schema, "order").await.unwrap(), expected, "round {round}");
        assert_eq!(pg_rows(&schema, "customer").await.unwrap(), export.table("customer"), "round {round}");
        assert_eq!(names(files.path()), before, "round {round}: the dir is left as it was");
    }
    assert_eq!(hq.posts().len(), 0, "--dir creates no export job");
    drop_pg_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_mariadb_keeps_hostile_values_byte_for_byte() {
    let mut export = Export::default();
    // NUL bytes too: MariaDB's text holds them (PostgreSQL's does not).
    export.add("order", 1, rows("o", 0, 5_000, true));
    export.add("order", 2, rows("o", 5_000, 5_000, true));
    export.add("customer", 1, rows("c", 0, 100, true));
    assert!(export.table("order").values().any(|v| v.contains('\0')));
    let hq = hq(&export, None, &[]).await;
    let db = format!("import_resume_{}", common::unique_suffix());
    let mut admin = sqlx::MySqlConnection::connect(MY).await.unwrap();
    admin.execute(format!("CREATE DATABASE `{db}`").as_str()).await.unwrap();
    let url = format!("mysql://root@127.0.0.1:3306/{db}?name=my");
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();

    let (code, out) = run(&base(d, &url, &hq.url), &data.path().join("import.log")).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("loaded 2 tables, 10100 rows"), "{out}");
    for table in ["order", "customer"] {
        let got: Vec<(String, String)> =
            sqlx::query_as(&format!("SELECT id, name FROM `{db}`.`{table}`")).fetch_all(&mut admin).await.unwrap();
        let got: Rows = got.into_iter().collect();
        let want = export.table(table);
        assert_eq!(got.len(), want.len(), "{table}");
        for (id, name) in &want {
            assert_eq!(got.get(id), Some(name), "{table} {id}: the value as exported, byte for byte");
        }
    }
    let stamps = stamps(data.path(), "my").unwrap();
    assert_eq!(stamps["order"], "2026-12-01T12:00:02Z");
    assert_eq!(stamps["customer"], "2026-12-01T12:00:01Z");
    assert!(!data.path().join("import-job-1").exists());
    let _ = admin.execute("SET SESSION lock_wait_timeout = 2").await;
    let _ = admin.execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_whole_gzip_fails_the_import_naming_the_file_not_its_signature() {
    let mut export = Export::default();
    export.add("order", 1, rows("o", 0, 2_000, false));
    let bad = export.add("order", 2, rows("o", 2_000, 2_000, false));
    export.add("customer", 1, rows("c", 0, 10, false));
    let hq = hq(&export, None, &[&bad]).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();

    // Two attempts (the default is 8 over about a minute): the damage is the same each time.
    let started = Instant::now();
    let args = [&base(d, &url, &hq.url)[..], &["--download-attempts", "2"]].concat();
    let (code, out) = run(&args, &data.path().join("download.log")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert!(out.contains(&bad) && out.contains("not whole gzip"), "{out}");
    assert!(!out.contains(SIG), "pre-signed signatures are never printed: {out}");
    assert_eq!(hq.gets(&bad), 2, "tried as often as told");
    assert_eq!(stamps(data.path(), "pg"), None, "a failed import records no timestamp");
    assert!(!data.path().join("import-job-1").join(&bad).exists(), "a damaged file is never taken as whole");
    assert_eq!(pg_rows(&schema, "order").await, None, "nothing loaded");
    assert_eq!(unfinished(data.path(), "pg"), None, "nothing was dropped: the drain is not held");

    // A truncated file in --dir: the load stops at it, naming it.
    let files = tempfile::tempdir().unwrap();
    export.write(files.path());
    let path = files.path().join(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() * 2 / 3);
    std::fs::write(&path, bytes).unwrap();
    let args = [&base(d, &url, &hq.url)[..], &["--dir", files.path().to_str().unwrap()]].concat();
    let (code, out) = run(&args, &data.path().join("dir.log")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&bad), "{out}");
    assert_eq!(stamps(data.path(), "pg"), None, "a failed import records no timestamp");
    assert_eq!(unfinished(data.path(), "pg"), None, "--no-delete drops nothing: there is nothing to hold");
    drop_pg_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loads_its_tables_and_schema_only_creates_empty_tables_stamped_now() {
    let mut export = Export::default();
    export.add("order", 1, rows("o", 0, 1_000, false));
    export.add("customer", 1, rows("c", 0, 10, false));
    let hq = hq(&export, None, &[]).await;
    let (schema, url) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();

    let args = [&base(d, &url, &hq.url)[..], &["--only", "order"]].concat();
    let (code, out) = run(&args, &data.path().join("only.log")).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(hq.posts(), [serde_json::json!({"tables": ["order"]})], "the job asks for the table only");
    assert_eq!(pg_tables(&schema).await, ["order"], "{out}");
    assert_eq!(pg_rows(&schema, "order").await.unwrap(), export.table("order"));
    assert_eq!(
        stamps(data.path(), "pg").unwrap(),
        BTreeMap::from([("order".to_owned(), "2026-12-01T12:00:01Z".to_owned())])
    );

    let (schema2, url2) = pg_schema().await;
    let data2 = tempfile::tempdir().unwrap();
    let d2 = data2.path().to_str().unwrap();
    let before = jiff::Timestamp::now();
    let args = [&base(d2, &url2, &hq.url)[..], &["--schema-only"]].concat();
    let (code, out) = run(&args, &data2.path().join("schema.log")).await;
    let after = jiff::Timestamp::now();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(hq.posts().len(), 1, "--schema-only creates no export job");
    assert_eq!(pg_tables(&schema2).await, ["customer", "order"]);
    assert_eq!(pg_rows(&schema2, "order").await.unwrap(), Rows::new());
    assert_eq!(pg_rows(&schema2, "customer").await.unwrap(), Rows::new());
    let stamps = stamps(data2.path(), "pg").unwrap();
    assert_eq!(stamps.keys().collect::<Vec<_>>(), ["customer", "order"]);
    for (table, stamp) in &stamps {
        let t: jiff::Timestamp = stamp.parse().unwrap();
        assert!(before <= t && t <= after, "{table}: {stamp} is not the time of the run ({before} – {after})");
    }
    drop_pg_schema(&schema).await;
    drop_pg_schema(&schema2).await;
}
