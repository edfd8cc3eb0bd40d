//! Drain benchmark: figures, never pass/fail. Run with `cargo bench --bench drain`.
//!
//! "1M events into PostgreSQL vs direct COPY→merge": N change events of the demo traffic
//! (`eds::sample::Traffic`: tables order/customer/vehicle/labor, ~25 % INSERT, ~67 % UPDATE, ~8 %
//! DELETE, a schema change halfway) are wrapped in Event envelopes as ingest does and appended to a
//! WAL (`Durability::Never`; setup is not timed). The WAL is then read once, untimed, to warm the
//! page cache and to count what eds's per-batch fold (`eds_drivers::event::fold`) makes of it.
//! Then, in the same run and from the same WAL, each of these delivers every event into its own
//! fresh PostgreSQL schema (`bench_<run>_<pid>`, chosen with `options=-c search_path=…` in the
//! URL, dropped at the end):
//!
//! - `eds`: `drain::run` with the destination `parse_destination` makes of the URL (the PostgreSQL
//!   driver with its default COPY threshold, [`eds_drivers::postgres::COPY_THRESHOLD`] rows per
//!   upsert group) and the embedded demo schemas as registry. Timed from starting the drain until
//!   its cursor reaches the last LSN (polled every 5 ms). Includes the drain's DDL (4 CREATE
//!   TABLE, 4 ALTER TABLE at the schema change) and its schema look-ups.
//! - `eds-copy`, `eds-unnest`: the same with the driver's COPY threshold forced to 0 (every upsert
//!   group through COPY and a staging table) and to `usize::MAX` (every group one
//!   `INSERT … SELECT FROM unnest($1::text[], …)`).
//! - `direct`: what a competent engineer would write without eds, with sqlx on one connection:
//!   read the WAL with a plain `eds_wal::Reader` (not from memory, so both sides pay the same
//!   decompression), in batches cut like the drain's (the driver's `limits()`: 10,000 records or
//!   2 MiB), unwrap the envelope, parse the event with serde_json, keep the last change per
//!   (table, id) (deletes win as they come), then per table: `COPY` the upsert rows (text format,
//!   escaped) into a temporary all-text staging table, `INSERT INTO t (…) SELECT <casts> FROM
//!   staging ON CONFLICT (id) DO UPDATE SET <every column> = EXCLUDED.<column>`, and `DELETE …
//!   WHERE id = ANY($1)`; one transaction per batch. Its tables are created beforehand (untimed)
//!   by the eds driver's `ensure_schema` for both schema versions, so both sides write the same
//!   column types; the casts come from the catalog, read once before timing.
//! - `direct-diff`: the same, but honouring each UPDATE's `diff` as eds does (a key's UPDATEs
//!   write only the union of their diffs on conflict; an INSERT, or an UPDATE after a DELETE,
//!   writes the whole row; an empty set is `DO NOTHING`), one staging table and merge per
//!   (table, set of columns). The demo traffic's UPDATEs replace every column of the row image
//!   but declare `diff: ["updatedDate"]`, so `direct` (full row) ends with different contents than
//!   eds, while `direct-diff` must match it exactly: it is the content check of eds, and the
//!   like-for-like timing (on conflict, a `DO NOTHING` writes no new row version).
//!
//! Before each run (untimed) the catalogs that temporary staging tables churn are vacuumed and a
//! CHECKPOINT is taken, so no run pays for an earlier one (on a server without autovacuum, later
//! runs otherwise get slower and slower). Afterwards (untimed) every run's tables are compared
//! with the first run's: row counts and an md5 of the rows ordered by id, per table; MATCH, or a
//! loud MISMATCH with the rows only on one side and the rows differing, by column.
//!
//! Per run: wall time; events/s (the common unit); folded changes/s (upserts + deletes written);
//! for eds, the process's peak RSS during the run (`VmHWM`, reset just before it starts) next to
//! what was resident before;
//! CPU µs per event of this process (the drain or the direct path; the bench's polling is
//! negligible) and of every `postgres` process (from /proc, so PostgreSQL must run on this
//! machine for that column to mean anything); the load average, since on a shared machine wall
//! times move with it. eds's time is split into its flushes (`eds_flush_duration_seconds`: schema
//! look-up, fold, DDL, SQL) and the rest; the direct path's into SQL, decoding and folding, and
//! WAL reading.
//!
//! Knobs: `EDS_BENCH_QUICK=1` (100,000 events); `EDS_BENCH_EVENTS` (default 1,000,000);
//! `EDS_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432/test`); `EDS_BENCH_SEED` (traffic
//! seed, default 7); `EDS_BENCH_RUNS` (comma-separated runs in order, default
//! `eds,direct,eds-copy,eds-unnest,direct-diff`); `EDS_BENCH_DIR` (parent of the temporary
//! directory, default `target/`).

#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use common::backlog::{fold_pass, write_backlog};
use common::direct::{direct_pass, Change};
use common::procs::{clk_tck, load, pids_named, ticks_of, Probe};
use common::runs::{time_drain, Config, Outcome};
use eds::drain::{self, Destination, Start};
use eds::registry::SchemaSource;
use eds_drivers::driver::Driver;
use eds_drivers::postgres::PostgresDriver;
use eds_wal::Wal;
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::describe_fs;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const TABLES: [&str; 4] = eds::demo_schemas::TABLES;
/// Runs, in the default order.
const RUNS: [&str; 5] = ["eds", "direct", "eds-copy", "eds-unnest", "direct-diff"];
/// The catalogs a temporary staging table adds rows to (and dropping it leaves dead).
const VACUUM_CATALOG: &str =
    "VACUUM pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_type, pg_catalog.pg_depend";

/// `base` with `search_path` set to `schema` through the `options` startup parameter.
fn url_with_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

// ---------------------------------------------------------------------------------------------
// CPU, from /proc: this process (eds's drain or the direct path, and the bench's polling) and
// every `postgres` process (backends, WAL writer, checkpointer, autovacuum) on this machine.

/// CPU ticks of every `postgres` process, by pid.
fn postgres_ticks() -> HashMap<String, u64> {
    ticks_of(&pids_named(&["postgres"]))
}

// ---------------------------------------------------------------------------------------------
// The eds side.

async fn run_eds(
    wal: &Wal,
    base: &Path,
    url: &str,
    name: &str,
    threshold: Option<usize>,
    last: u64,
    tck: f64,
) -> Result<Outcome> {
    let dest = match threshold {
        None => drain::parse_destination(&format!("{url}&name={name}&start=oldest"))?
            .context("this build has no PostgreSQL driver (feature postgres)")?,
        Some(t) => Destination {
            name: name.to_owned(),
            driver: Arc::new(PostgresDriver::new(url)?.with_copy_threshold(t)),
            start: Start::Oldest,
            dead_letters: None,
            overflow: drain::Overflow::Block,
            registry: None,
            skip_before: HashMap::new(),
            unfinished_import: None,
            validator: None,
            retry: eds::drain::Retry::default(),
        },
    };
    let how = match threshold {
        None => format!("COPY from {} rows per upsert group", eds_drivers::postgres::COPY_THRESHOLD),
        Some(0) => "COPY for every upsert group".into(),
        Some(_) => "unnest for every upsert group".into(),
    };
    time_drain(wal, base, dest, last, &how, &postgres_ticks, tck).await
}

// ---------------------------------------------------------------------------------------------
// The direct side.

/// A destination table as the catalog describes it; `id` is the primary key.
struct DirectTable {
    quoted: String,
    /// (name, quoted, cast target, is json) in catalog order.
    columns: Vec<(String, String, String, bool)>,
}

async fn load_tables(conn: &mut PgConnection) -> Result<HashMap<String, DirectTable>> {
    let mut tables = HashMap::new();
    for t in TABLES {
        let cols: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        if cols.is_empty() {
            bail!("direct: table {t:?} does not exist");
        }
        let columns =
            cols.into_iter().map(|(n, ty)| (n.clone(), quote(&n), ty.clone(), ty == "jsonb" || ty == "json")).collect();
        tables.insert(t.to_owned(), DirectTable { quoted: quote(t), columns });
    }
    Ok(tables)
}

/// Appends `v` as a COPY text-format field: `\N` for null, backslash, tab, newline and CR escaped.
fn copy_field(out: &mut Vec<u8>, v: Option<&Value>, json: bool) {
    let text: std::borrow::Cow<'_, str> = match v {
        None | Some(Value::Null) => {
            out.extend_from_slice(b"\\N");
            return;
        }
        Some(v) if json => v.to_string().into(),
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

/// Upserts of one table that write the same columns on conflict: (those columns' indexes, rows).
type Group<'a> = (Vec<usize>, Vec<&'a Map<String, Value>>);

/// Writes one folded batch in one transaction; returns the number of changes written.
async fn write_batch(
    conn: &mut PgConnection,
    tables: &HashMap<String, DirectTable>,
    changes: &[(String, String, Change)],
) -> Result<u64> {
    let mut tx = conn.begin().await?;
    let mut written = 0u64;
    let mut stage = 0usize;
    for t in TABLES {
        let Some(table) = tables.get(t) else { continue };
        let deletes: Vec<String> = changes
            .iter()
            .filter(|(tt, _, c)| tt == t && matches!(c, Change::Delete))
            .map(|(_, id, _)| id.clone())
            .collect();
        if !deletes.is_empty() {
            written += deletes.len() as u64;
            // Not a prepared statement: a cached generic plan of `= ANY($1)` may scan the whole
            // table (seen: 350 ms instead of 3 ms per batch) where one planned for the array uses
            // the primary key.
            sqlx::query(&format!("DELETE FROM {} WHERE \"id\" = ANY($1)", table.quoted))
                .bind(deletes)
                .persistent(false)
                .execute(&mut *tx)
                .await?;
        }
        // Upserts grouped by the columns they write on conflict (one group when all are full rows).
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (tt, _, c) in changes {
            let Change::Upsert { row, changed } = c else { continue };
            if tt != t {
                continue;
            }
            let set: Vec<usize> = (0..table.columns.len())
                .filter(|&i| table.columns[i].0 != "id")
                .filter(|&i| changed.as_ref().is_none_or(|s| s.contains(&table.columns[i].0)))
                .collect();
            match groups.iter_mut().find(|g| g.0 == set) {
                Some(g) => g.1.push(row),
                None => groups.push((set, vec![row])),
            }
        }
        for (set, rows) in groups {
            written += rows.len() as u64;
            let name = format!("direct_stage_{stage}");
            stage += 1;
            let defs = (0..table.columns.len()).map(|i| format!("c{i} text")).collect::<Vec<_>>().join(", ");
            tx.execute(format!("CREATE TEMP TABLE {name} ({defs}) ON COMMIT DROP").as_str()).await?;
            let mut buf = Vec::with_capacity(rows.len() * 128);
            for row in &rows {
                for (i, (col, _, _, json)) in table.columns.iter().enumerate() {
                    if i > 0 {
                        buf.push(b'\t');
                    }
                    copy_field(&mut buf, row.get(col), *json);
                }
                buf.push(b'\n');
            }
            let mut copy = tx.copy_in_raw(&format!("COPY {name} FROM STDIN")).await?;
            copy.send(buf).await?;
            copy.finish().await?;
            let names = table.columns.iter().map(|c| c.1.as_str()).collect::<Vec<_>>().join(", ");
            let casts =
                table.columns.iter().enumerate().map(|(i, c)| format!("c{i}::{}", c.2)).collect::<Vec<_>>().join(", ");
            let action = if set.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                let sets = set
                    .iter()
                    .map(|&i| format!("{0} = EXCLUDED.{0}", table.columns[i].1))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("DO UPDATE SET {sets}")
            };
            let sql = format!(
                "INSERT INTO {} ({names}) SELECT {casts} FROM {name} ON CONFLICT (\"id\") {action}",
                table.quoted
            );
            tx.execute(sql.as_str()).await?;
        }
    }
    tx.commit().await?;
    Ok(written)
}

async fn run_direct(wal: &Wal, url: &str, honour_diff: bool, limits: (usize, usize), tck: f64) -> Result<Outcome> {
    let mut conn = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
    // Untimed: what the engineer knows before writing (the tables' column types).
    let tables = load_tables(&mut conn).await?;
    let probe = Probe::now(&postgres_ticks);
    let pass =
        direct_pass(wal, limits, honour_diff, async |folded| write_batch(&mut conn, &tables, folded).await).await?;
    let (wall, cpu, server_cpu) = probe.since(tck);
    let _ = conn.close().await;
    let note = format!(
        "{}; {} transactions, {:.2} s in SQL (COPY text, merge, delete, commit), {:.2} s decoding and \
         folding, {:.2} s reading the WAL",
        if honour_diff { "updates write their diff's columns" } else { "upserts write every column" },
        pass.batches,
        pass.writing.as_secs_f64(),
        pass.folding.as_secs_f64(),
        pass.reading.as_secs_f64()
    );
    Ok(Outcome { wall, cpu, server_cpu, delivered: pass.events, changes: Some(pass.changes), note })
}

// ---------------------------------------------------------------------------------------------
// Comparison.

async fn compare(conn: &mut PgConnection, reference: &str, other: &str) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for t in TABLES {
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 \
             ORDER BY column_name",
        )
        .bind(reference)
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        let list = |alias: &str| cols.iter().map(|c| format!("{alias}.{}", quote(c))).collect::<Vec<_>>().join(", ");
        let digest = |schema: &str| {
            format!(
                "SELECT count(*), md5(coalesce(string_agg(row({})::text, E'\\n' ORDER BY x.\"id\"), '')) FROM {}.{} x",
                list("x"),
                quote(schema),
                quote(t)
            )
        };
        let a: (i64, String) = sqlx::query_as(&digest(reference)).fetch_one(&mut *conn).await?;
        let b: (i64, String) = match sqlx::query_as(&digest(other)).fetch_one(&mut *conn).await {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{t}: cannot read it: {e}"));
                continue;
            }
        };
        if a == b {
            continue;
        }
        let per_col = cols
            .iter()
            .map(|c| {
                format!(
                    "count(*) FILTER (WHERE x.id IS NOT NULL AND y.id IS NOT NULL AND x.{0} IS DISTINCT FROM y.{0})",
                    quote(c)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT ARRAY[count(*) FILTER (WHERE y.id IS NULL), count(*) FILTER (WHERE x.id IS NULL), \
             count(*) FILTER (WHERE x.id IS NOT NULL AND y.id IS NOT NULL AND row({}) IS DISTINCT FROM row({})), \
             {per_col}] FROM {}.{t} x FULL JOIN {}.{t} y ON x.id = y.id",
            list("x"),
            list("y"),
            quote(reference),
            quote(other),
            t = quote(t)
        );
        let n: Vec<i64> = sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?;
        let by_col: Vec<String> =
            cols.iter().zip(&n[3..]).filter(|(_, k)| **k > 0).map(|(c, k)| format!("{c} {k}")).collect();
        problems.push(format!(
            "{t}: {} vs {} rows; only in the first run {}, only in this run {}, {} rows differ (by column: {})",
            a.0,
            b.0,
            n[0],
            n[1],
            n[2],
            if by_col.is_empty() { "none".into() } else { by_col.join(", ") }
        ));
    }
    Ok(problems)
}

async fn table_counts(conn: &mut PgConnection, schema: &str) -> String {
    let mut parts = Vec::new();
    for t in TABLES {
        let n: Result<i64, _> = sqlx::query_scalar(&format!("SELECT count(*) FROM {}.{}", quote(schema), quote(t)))
            .fetch_one(&mut *conn)
            .await;
        parts.push(format!("{t} {}", n.map_or_else(|_| "-".to_owned(), |n| n.to_string())));
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------------------------------

fn main() {
    common::runs::main("drain", async |base| run(&Config::from_env("EDS_BENCH_PG", DEFAULT_PG, &RUNS), base).await);
}

async fn run(cfg: &Config, base: &Path) -> Result<()> {
    println!(
        "eds drain benchmark: events into PostgreSQL, eds vs direct COPY→merge{}",
        if cfg.quick { " (quick)" } else { "" }
    );
    let admin_opts = PgConnectOptions::from_str(&cfg.url)?;
    let mut admin = match PgConnection::connect_with(&admin_opts).await {
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
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum").fetch_one(&mut admin).await?;
    println!(
        "  env:    dir {} — {}; PostgreSQL {version} at {} (synchronous_commit {sync}, fsync {fsync}, shared_buffers \
         {buffers}, autovacuum {autovacuum}); {} cpus available (shared by PostgreSQL and this process); load \
         average {:.1}",
        base.display(),
        describe_fs(base),
        eds_drivers::postgres::redact(&cfg.url),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );

    // Setup (untimed): the WAL, a warm read of it, eds's fold of it.
    let started = Instant::now();
    let (wal, last, payload_bytes) = write_backlog(base, cfg.seed, cfg.events).await?;
    let stats = wal.stats();
    let limits = PostgresDriver::new(&cfg.url)?.limits();
    let (max_rows, max_bytes) = (limits.max_rows.max(1), limits.max_bytes.max(1));
    let fold_stats = {
        let w = wal.clone();
        tokio::task::spawn_blocking(move || fold_pass(&w, max_rows, max_bytes, |_| {})).await??
    };
    println!(
        "  events: {} of eds::sample::Traffic (seed {}): {} INSERT, {} UPDATE, {} DELETE, {:.0} bytes on average; \
         LSNs 1..={last}",
        cfg.events,
        cfg.seed,
        fold_stats.ops[0],
        fold_stats.ops[1],
        fold_stats.ops[2],
        payload_bytes as f64 / cfg.events as f64,
    );
    println!(
        "  WAL:    {} segments, {:.1} MiB on disk (Durability::Never); setup {:.1} s (generate, append, one warm read)",
        stats.segments,
        stats.bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  batch:  the PostgreSQL driver's limits: {max_rows} records or {} MiB → {} batches; eds's fold makes {} \
         changes of them ({} upserts, {} deletes; {:.2} events per change)",
        max_bytes >> 20,
        fold_stats.batches,
        fold_stats.upserts + fold_stats.deletes,
        fold_stats.upserts,
        fold_stats.deletes,
        fold_stats.events as f64 / (fold_stats.upserts + fold_stats.deletes).max(1) as f64,
    );

    let pid = std::process::id();
    let schema_of = |run: &str| format!("bench_{}_{pid}", run.replace('-', "_").replace("eds", "drain"));
    let mut done: Vec<(String, String, Outcome)> = Vec::new();
    let mut created: Vec<String> = Vec::new();
    println!();
    println!(
        "  {:<12} {:>9} {:>10} {:>10} {:>10} {:>14} {:>14} {:>6}",
        "run", "events", "wall", "events/s", "changes/s", "cpu µs/event", "pg cpu µs/ev", "load"
    );
    let tck = clk_tck();
    let mut result = Ok(());
    for run in &cfg.runs {
        let schema = schema_of(run);
        admin.execute(format!("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}", quote(&schema)).as_str()).await?;
        // Untimed: no run pays for the previous runs' dead catalog rows (every COPY staging table
        // leaves some; this server may run without autovacuum) or for writing out their pages.
        if let Err(e) = admin.execute(VACUUM_CATALOG).await {
            println!("  note: {VACUUM_CATALOG:?} failed ({e}); later runs may pay for earlier runs' catalog churn");
        }
        let _ = admin.execute("CHECKPOINT").await;
        created.push(schema.clone());
        let url = url_with_schema(&cfg.url, &schema);
        let outcome = match run.as_str() {
            "eds" => run_eds(&wal, base, &url, "bench", None, last, tck).await,
            "eds-copy" => run_eds(&wal, base, &url, "bench-copy", Some(0), last, tck).await,
            "eds-unnest" => run_eds(&wal, base, &url, "bench-unnest", Some(usize::MAX), last, tck).await,
            "direct" | "direct-diff" => {
                // Untimed: the direct side's tables, made as eds makes them (both schema versions).
                let driver = PostgresDriver::new(&url)?;
                let source = eds::demo_schemas::EmbeddedSchemas::new();
                for version in [eds::demo_schemas::FIRST_VERSION, eds::demo_schemas::SECOND_VERSION] {
                    for t in TABLES {
                        let schema = source.version(t, version).await?.context("embedded schema")?;
                        driver.ensure_schema(&schema).await?;
                    }
                }
                drop(driver);
                run_direct(&wal, &url, run == "direct-diff", (max_rows, max_bytes), tck).await
            }
            other => Err(anyhow::anyhow!("unknown run {other:?} (known: {})", RUNS.join(", "))),
        };
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                println!("  {run:<12} FAILED: {e:#}");
                result = Err(e);
                break;
            }
        };
        let secs = o.wall.as_secs_f64();
        let changes = o.changes.unwrap_or(fold_stats.upserts + fold_stats.deletes);
        let per_event = |cpu: f64| cpu * 1e6 / o.delivered.max(1) as f64;
        println!(
            "  {run:<12} {:>9} {:>8.2} s {:>10.0} {:>10.0} {:>14.1} {:>14.1} {:>6.1}\n  {:<12} {}{}",
            o.delivered,
            secs,
            o.delivered as f64 / secs,
            changes as f64 / secs,
            per_event(o.cpu),
            per_event(o.server_cpu),
            load(),
            "",
            o.note,
            if o.delivered == cfg.events {
                String::new()
            } else {
                format!(" — only {} of {} events delivered!", o.delivered, cfg.events)
            },
        );
        done.push((run.clone(), schema, o));
    }

    if let Some((first, first_schema, _)) = done.first() {
        println!();
        if let Some((_, _, e)) = done.iter().find(|(r, _, _)| r == "eds") {
            for (run, _, o) in done.iter().filter(|(r, _, _)| r != "eds") {
                let r = e.wall.as_secs_f64() / o.wall.as_secs_f64();
                println!(
                    "  eds/{run}: {r:.2} — eds takes {r:.2}× the time of {run}; its events/s are {:.2}× {run}'s",
                    1.0 / r
                );
            }
        }
        println!(
            "  contents (untimed), every run against {first} ({first_schema}: {}):",
            table_counts(&mut admin, first_schema).await
        );
        for (run, schema, _) in done.iter().skip(1) {
            match compare(&mut admin, first_schema, schema).await {
                Ok(p) if p.is_empty() => println!("   {run:<12} MATCH (row counts and md5 of every table)"),
                Ok(p) => {
                    println!("   {run:<12} !!!!!!!! MISMATCH !!!!!!!!");
                    for line in p {
                        println!("      {line}");
                    }
                }
                Err(e) => println!("   {run:<12} !!!!!!!! comparison failed: {e:#}"),
            }
        }
    }

    for schema in &created {
        if let Err(e) = admin.execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", quote(schema)).as_str()).await {
            println!("  note: dropping schema {schema} failed: {e}");
        }
    }
    let _ = admin.close().await;
    let w = wal;
    tokio::task::spawn_blocking(move || w.close()).await??;
    println!("(figures only; nothing here is asserted on time)");
    result
}
