//! Import benchmark: figures, never pass/fail. Run with `cargo bench --bench import_pg`.
//!
//! "1M exported rows into PostgreSQL through `eds import`'s loader vs a direct COPY": N rows of
//! Shopmonkey's `order` table (21 of the fixture's columns — text ids, a name and a complaint
//! with hostile values such as `\N`, tabs, newlines, quotes, backslashes and emoji, a nullable
//! text, integers, doubles, booleans, timestamps, an enum array and an object) are generated once
//! and written as gzipped NDJSON export files named as CockroachDB names them (setup, untimed).
//! The schema is the fixture's (`shared/fixtures/schema/order_schema_b041c12fbf8d1103.json`) cut
//! to those columns, served by the HQ double (`tests/common/hq.rs`). Then, in the same run and
//! from the same files, each of these loads every row into its own fresh PostgreSQL schema
//! (`impbench_<run>_<pid>`, chosen with `options=-c search_path=…` in the URL, dropped at the end):
//!
//! - `direct`: what a competent engineer would write without eds, with sqlx on one connection:
//!   per file, gunzip and read it line by line, parse each line with serde_json, append the row's
//!   columns to a buffer in COPY's text format (escaped; objects and arrays as JSON text) and send
//!   it every 1 MiB into one `COPY "order" (…) FROM STDIN` per file, straight into the table (no
//!   staging, no upsert: the fastest load there is, into an empty table). The table is created
//!   beforehand (untimed) by the eds driver's `ensure_schema` from the same schema, so both sides
//!   write the same column types and primary key.
//! - `eds`: `eds::import::load::load` on a destination made as `eds import` makes it
//!   (`parse_destination`, HQ's schema registry over HTTP to the double), as into tables the
//!   import has just dropped and created (`fresh`, which they are: the schema is new): the
//!   driver's fresh encoder turns each line into COPY text on the reading thread, and each batch
//!   of the driver's limits is one `COPY` into the table in a transaction of its own (a batch the
//!   table refuses would go the event way: INSERT events through the drain's write path, fold,
//!   upserts). Timed including its DDL.
//!
//! The default runs are `direct,eds,eds`: the second eds run shows how much the figures move on
//! this machine. Before each run (untimed) the catalogs eds's staging tables churn are vacuumed
//! and a CHECKPOINT is taken. Afterwards (untimed) every run's table is compared with the first
//! run's: row count and an md5 of the rows ordered by id; MATCH or a loud MISMATCH.
//!
//! Per run: wall time, rows/s, CPU µs per row of this process and of every `postgres` process
//! (from /proc, so PostgreSQL must run on this machine for that column to mean anything), and the
//! load average. Then each eds run's rows/s as a ratio of the direct run's.
//!
//! Knobs: `EDS_BENCH_QUICK=1` (100,000 rows); `EDS_BENCH_EVENTS` (rows, default 1,000,000);
//! `EDS_BENCH_FILES` (export files, default 8); `EDS_BENCH_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`); `EDS_BENCH_SEED` (default 7); `EDS_BENCH_RUNS`
//! (comma-separated, any of `direct`, `eds`, repeated as wished; default `direct,eds,eds`);
//! `EDS_BENCH_DIR` (parent of the temporary directory, default `target/`).

#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use common::procs::{clk_tck, load, pids_named, ticks_of, Probe};
use common::runs::Config;
use eds::import::files::ExportFile;
use eds_drivers::driver::Driver;
use eds_drivers::postgres::PostgresDriver;
use eds_drivers::schema::Schema;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{describe_fs, hex24, iso, mix, STATUSES};

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const RUNS: [&str; 3] = ["direct", "eds", "eds"];
const TABLE: &str = "order";
const FIXTURE: &str = include_str!("../../shared/fixtures/schema/order_schema_b041c12fbf8d1103.json");
/// The fixture's columns the generated rows carry.
const COLUMNS: [&str; 21] = [
    "id",
    "publicId",
    "companyId",
    "locationId",
    "number",
    "name",
    "complaint",
    "status",
    "customerId",
    "vehicleId",
    "totalCostCents",
    "laborCents",
    "partsCents",
    "discountPercent",
    "totalLaborHours",
    "authorized",
    "paid",
    "archived",
    "createdDate",
    "updatedDate",
    "labels",
];
/// Values a text column must survive (PostgreSQL's text holds no NUL byte, so none here).
const HOSTILE: [&str; 10] = [
    "it's",
    r#"say "hi""#,
    r"back\slash \\ \n",
    r"\N",
    "'); DROP TABLE x; --",
    "emoji 😀🚗 ünïcödé",
    "tab\tnew\nline\r\n",
    "",
    "{\"looks\": [\"like json\"]}",
    "a,b;c|d",
];
/// How much COPY data the direct side buffers before sending it.
const COPY_CHUNK: usize = 1 << 20;
/// The catalogs a temporary staging table adds rows to (and dropping it leaves dead).
const VACUUM_CATALOG: &str =
    "VACUUM pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_type, pg_catalog.pg_depend";
/// A run that takes longer than this is reported as stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// `base` with `search_path` set to `schema` through the `options` startup parameter.
fn url_with_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// CPU ticks of every `postgres` process, by pid.
fn postgres_ticks() -> HashMap<String, u64> {
    ticks_of(&pids_named(&["postgres"]))
}

// ---------------------------------------------------------------------------------------------
// Setup: the schema and the export files.

/// The fixture's `order` schema document cut to [`COLUMNS`].
fn schema_document() -> Value {
    let mut doc: Value = serde_json::from_str(FIXTURE).unwrap();
    let keep = |k: &str| COLUMNS.contains(&k);
    doc["properties"].as_object_mut().unwrap().retain(|k, _| keep(k));
    let required: Vec<Value> =
        doc["required"].as_array().unwrap().iter().filter(|v| v.as_str().is_some_and(keep)).cloned().collect();
    doc["required"] = Value::Array(required);
    doc
}

/// Row `i` of the export: an order as Shopmonkey's export holds it.
fn order_row(i: u64) -> Value {
    let r = mix(i);
    let total = 5_000 + r % 250_000;
    let labor = total * 2 / 5;
    let created = 1_795_749_176_000 + i * 173;
    let hostile = |salt: u64| HOSTILE[(mix(i ^ salt) % HOSTILE.len() as u64) as usize];
    let name = if r.is_multiple_of(10) { format!("{} #{i}", hostile(1)) } else { format!("Brake job #{i}") };
    let complaint = match r % 7 {
        0 => Value::Null,
        1 => Value::String(hostile(2).to_owned()),
        _ => Value::String(format!("Customer states noise from the front left wheel at {} mph", 20 + r % 50)),
    };
    let statuses = ["Estimate", "RepairOrder", "Invoice"];
    json!({
        "id": hex24(i),
        "publicId": format!("{:08x}", mix(i ^ 0x5EED) as u32),
        "companyId": hex24(i % 50 + 1_000_000),
        "locationId": hex24(i % 200 + 2_000_000),
        "number": (10_000 + i).to_string(),
        "name": name,
        "complaint": complaint,
        "status": [statuses[(r % 3) as usize]],
        "customerId": if r.is_multiple_of(5) { Value::Null } else { Value::String(hex24(i ^ 0xC0FFEE)) },
        "vehicleId": hex24(i ^ 0xCA7),
        "totalCostCents": total,
        "laborCents": labor,
        "partsCents": total - labor,
        "discountPercent": (r % 20) as f64 / 4.0,
        "totalLaborHours": (r % 97) as f64 / 8.0,
        "authorized": r.is_multiple_of(2),
        "paid": STATUSES[(r % 4) as usize] == "Paid",
        "archived": r.is_multiple_of(50),
        "createdDate": iso(created),
        "updatedDate": iso(created + r % 86_400_000),
        "labels": {"priority": r % 3, "tag": if r.is_multiple_of(11) { hostile(3) } else { "fleet" }},
    })
}

/// Writes `rows` rows as `files` gzipped NDJSON export files under `dir`; returns the bytes of
/// row data (uncompressed) and on disk.
fn write_export(dir: &Path, rows: u64, files: u64) -> Result<(u64, u64)> {
    let (mut raw, mut disk) = (0u64, 0u64);
    let per_file = rows.div_ceil(files);
    for n in 0..files {
        let (from, to) = (n * per_file, ((n + 1) * per_file).min(rows));
        if from >= to {
            break;
        }
        let name =
            format!("20261201120000{:09}0000000000-c7274317e9a4a9cb-1-651-00000000-{TABLE}-{n}.ndjson.gz", n + 1);
        let path = dir.join(name);
        let file = std::fs::File::create(&path)?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
        let mut line = Vec::with_capacity(1024);
        for i in from..to {
            line.clear();
            serde_json::to_writer(&mut line, &order_row(i))?;
            line.push(b'\n');
            raw += line.len() as u64;
            gz.write_all(&line)?;
        }
        gz.finish()?.flush()?;
        disk += std::fs::metadata(&path)?.len();
    }
    Ok((raw, disk))
}

// ---------------------------------------------------------------------------------------------
// The direct side.

/// Appends `v` as a COPY text-format field: `\N` for null, backslash, tab, newline and CR escaped;
/// objects and arrays as JSON text.
fn copy_field(out: &mut Vec<u8>, v: Option<&Value>) {
    let text: std::borrow::Cow<'_, str> = match v {
        None | Some(Value::Null) => {
            out.extend_from_slice(b"\\N");
            return;
        }
        Some(Value::String(s)) => s.as_str().into(),
        Some(Value::Bool(b)) => if *b { "true" } else { "false" }.into(),
        Some(Value::Number(n)) => n.to_string().into(),
        Some(other) => other.to_string().into(),
    };
    for &b in text.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Loads every file with one COPY per file; returns (rows, seconds spent reading and encoding).
async fn run_direct(url: &str, files: &[ExportFile]) -> Result<(u64, f64)> {
    let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
    let names = COLUMNS.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let sql = format!("COPY {} ({names}) FROM STDIN", quote(TABLE));
    let (mut rows, mut reading) = (0u64, Duration::ZERO);
    for file in files {
        let f = std::fs::File::open(&file.path)?;
        let reader = std::io::BufReader::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f)));
        let mut copy = conn.copy_in_raw(&sql).await?;
        let mut buf = Vec::with_capacity(COPY_CHUNK + 8192);
        let mut at = Instant::now();
        for line in reader.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let Value::Object(row) = serde_json::from_str::<Value>(&line)? else { bail!("a line is not an object") };
            for (i, c) in COLUMNS.iter().enumerate() {
                if i > 0 {
                    buf.push(b'\t');
                }
                copy_field(&mut buf, row.get(*c));
            }
            buf.push(b'\n');
            rows += 1;
            if buf.len() >= COPY_CHUNK {
                reading += at.elapsed();
                copy.send(std::mem::take(&mut buf)).await?;
                buf.reserve(COPY_CHUNK + 8192);
                at = Instant::now();
            }
        }
        reading += at.elapsed();
        if !buf.is_empty() {
            copy.send(buf).await?;
        }
        copy.finish().await?;
    }
    let _ = conn.close().await;
    Ok((rows, reading.as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------
// The eds side.

async fn run_eds(url: &str, hq: &str, files: &[ExportFile], version: &str) -> Result<eds::import::load::Loaded> {
    let mut dest = eds::drain::parse_destination(&format!("{url}&name=import-bench"))?
        .context("this build has no PostgreSQL driver (feature postgres)")?;
    let source = Arc::new(eds::registry::HqSchemas::new(hq)?);
    dest.registry = Some(Arc::new(eds::registry::Registry::new(source, None)));
    let tables: BTreeSet<String> = [TABLE.to_owned()].into();
    let versions: HashMap<String, String> = [(TABLE.to_owned(), version.to_owned())].into();
    let loaded =
        tokio::time::timeout(RUN_TIMEOUT, eds::import::load::load(&dest, files, &tables, &versions, true, &|_, _| {}))
            .await
            .context("the load did not finish in time")??;
    if !loaded.rejected.is_empty() {
        bail!("{} rows rejected, the first: {:?}", loaded.rejected.len(), loaded.rejected[0]);
    }
    Ok(loaded)
}

// ---------------------------------------------------------------------------------------------
// Comparison.

/// (rows, md5 of every row ordered by id) of the table in `schema`.
async fn digest(conn: &mut PgConnection, schema: &str) -> Result<(i64, String)> {
    let list = COLUMNS.iter().map(|c| format!("x.{}", quote(c))).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT count(*), md5(coalesce(string_agg(row({list})::text, E'\\n' ORDER BY x.\"id\"), '')) FROM {}.{} x",
        quote(schema),
        quote(TABLE)
    );
    Ok(sqlx::query_as(&sql).fetch_one(&mut *conn).await?)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    common::runs::main("import_pg", async |base| run(&Config::from_env("EDS_BENCH_PG", DEFAULT_PG, &RUNS), base).await);
}

struct Done {
    run: String,
    schema: String,
    rows: u64,
    wall: f64,
}

async fn run(cfg: &Config, base: &Path) -> Result<()> {
    println!(
        "eds import benchmark: export rows into PostgreSQL, eds's loader vs a direct COPY{}",
        if cfg.quick { " (quick)" } else { "" }
    );
    let files_n = std::env::var("EDS_BENCH_FILES").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(8).max(1);
    let rows = cfg.events;
    let mut admin = match PgConnection::connect_with(&PgConnectOptions::from_str(&cfg.url)?).await {
        Ok(c) => c,
        Err(e) => {
            println!(
                "  PostgreSQL at {} is not reachable ({e}); nothing measured",
                eds_drivers::postgres::redact(&cfg.url)
            );
            return Ok(());
        }
    };
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut admin).await?;
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut admin).await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&mut admin).await?;
    let buffers: String = sqlx::query_scalar("SHOW shared_buffers").fetch_one(&mut admin).await?;
    println!(
        "  env:    dir {} — {}; PostgreSQL {version} at {} (synchronous_commit {sync}, fsync {fsync}, shared_buffers \
         {buffers}); {} cpus available (shared by PostgreSQL and this process); load average {:.1}",
        base.display(),
        describe_fs(base),
        eds_drivers::postgres::redact(&cfg.url),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );

    // Setup (untimed): the HQ double, the schema, the files.
    let doc = schema_document();
    let model_version = doc["modelVersion"].as_str().context("the fixture has no modelVersion")?.to_owned();
    let schema = Schema::from_json(doc.to_string().as_bytes())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hq_url = format!("http://{}", listener.local_addr()?);
    let served = doc.clone();
    let routes: common::hq::Routes = Arc::new(move |path: &str| {
        if path == "/v3/schema" {
            return (200, json!({ TABLE: served }).to_string());
        }
        match path.strip_prefix("/v3/schema/").and_then(|rest| rest.split_once('/')) {
            Some((TABLE, _)) => (200, served.to_string()),
            _ => common::hq::not_found(),
        }
    });
    let hq = tokio::spawn(common::hq::serve_schemas(listener, routes));
    let started = Instant::now();
    let dir = base.join("export");
    std::fs::create_dir_all(&dir)?;
    let (raw_bytes, disk_bytes) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || write_export(&dir, rows, files_n)).await??
    };
    let files = eds::import::files::list(&dir)?;
    let limits = PostgresDriver::new(&cfg.url)?.limits();
    println!(
        "  rows:   {rows} `order` rows ({} columns of the fixture {model_version}; {:.0} bytes of JSON on average) in \
         {} gzipped NDJSON files, {:.1} MiB ({:.1} MiB on disk); setup {:.1} s",
        COLUMNS.len(),
        raw_bytes as f64 / rows as f64,
        files.len(),
        raw_bytes as f64 / (1 << 20) as f64,
        disk_bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  batch:  eds delivers batches of the PostgreSQL driver's limits: {} rows or {} MiB of events",
        limits.max_rows,
        limits.max_bytes >> 20
    );

    let pid = std::process::id();
    let tck = clk_tck();
    let mut done: Vec<Done> = Vec::new();
    let mut created: Vec<String> = Vec::new();
    println!();
    println!(
        "  {:<10} {:>9} {:>9} {:>10} {:>12} {:>13} {:>6}",
        "run", "rows", "wall", "rows/s", "cpu µs/row", "pg cpu µs/row", "load"
    );
    let mut result = Ok(());
    for (n, run) in cfg.runs.iter().enumerate() {
        let db_schema = format!("impbench_{}_{n}_{pid}", run.replace('-', "_"));
        admin
            .execute(format!("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}", quote(&db_schema)).as_str())
            .await?;
        created.push(db_schema.clone());
        let url = url_with_schema(&cfg.url, &db_schema);
        if run == "direct" {
            // Untimed: the table, as eds makes it.
            let driver = PostgresDriver::new(&url)?;
            driver.ensure_schema(&schema).await?;
            drop(driver);
        }
        // Untimed: no run pays for the previous runs' dead catalog rows or for writing out their pages.
        if let Err(e) = admin.execute(VACUUM_CATALOG).await {
            println!("  note: {VACUUM_CATALOG:?} failed ({e}); later runs may pay for earlier runs' catalog churn");
        }
        let _ = admin.execute("CHECKPOINT").await;
        let probe = Probe::now(&postgres_ticks);
        let outcome: Result<(u64, String)> = match run.as_str() {
            "direct" => run_direct(&url, &files).await.map(|(rows, reading)| {
                (rows, format!("one COPY per file; {reading:.2} s gunzip, parse and encode between sends"))
            }),
            "eds" => run_eds(&url, &hq_url, &files, &model_version).await.map(|l| {
                (
                    l.rows.values().sum(),
                    format!("eds::import::load::load; {:.1} MiB of row data read", l.bytes as f64 / (1 << 20) as f64),
                )
            }),
            other => Err(anyhow::anyhow!("unknown run {other:?} (known: direct, eds)")),
        };
        let (wall, cpu, server_cpu) = probe.since(tck);
        let (loaded, note) = match outcome {
            Ok(o) => o,
            Err(e) => {
                println!("  {run:<10} FAILED: {e:#}");
                result = Err(e);
                break;
            }
        };
        let secs = wall.as_secs_f64();
        let per_row = |cpu: f64| cpu * 1e6 / loaded.max(1) as f64;
        println!(
            "  {run:<10} {loaded:>9} {secs:>7.2} s {:>10.0} {:>12.1} {:>13.1} {:>6.1}\n  {:<10} {note}{}",
            loaded as f64 / secs,
            per_row(cpu),
            per_row(server_cpu),
            load(),
            "",
            if loaded == rows { String::new() } else { format!(" — only {loaded} of {rows} rows loaded!") },
        );
        done.push(Done { run: run.clone(), schema: db_schema, rows: loaded, wall: secs });
    }

    println!();
    let rate = |d: &Done| d.rows as f64 / d.wall;
    if let Some(direct) = done.iter().find(|d| d.run == "direct") {
        for (i, e) in done.iter().filter(|d| d.run == "eds").enumerate() {
            println!(
                "  eds run {}: {:.0} rows/s against direct COPY's {:.0}: ratio eds/direct {:.2}",
                i + 1,
                rate(e),
                rate(direct),
                rate(e) / rate(direct)
            );
        }
    }
    if let Some(first) = done.first() {
        let reference = digest(&mut admin, &first.schema).await?;
        println!("  contents (untimed), every run against {} ({} rows):", first.run, reference.0);
        for d in done.iter().skip(1) {
            match digest(&mut admin, &d.schema).await {
                Ok(got) if got == reference => println!("   {:<10} MATCH (row count and md5 of the rows)", d.run),
                Ok(got) => println!("   {:<10} !!!!!!!! MISMATCH !!!!!!!! {} rows, md5 {}", d.run, got.0, got.1),
                Err(e) => println!("   {:<10} !!!!!!!! comparison failed: {e:#}", d.run),
            }
        }
    }

    for s in &created {
        if let Err(e) = admin.execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(s)).as_str()).await {
            println!("  note: dropping schema {s} failed: {e}");
        }
    }
    let _ = admin.close().await;
    hq.abort();
    println!("(figures only; nothing here is asserted on time)");
    result
}
