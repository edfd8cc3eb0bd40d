//! Snowflake drain benchmark: figures, never pass/fail. Run with `cargo bench --bench
//! drain_snowflake` (needs `FAKESNOW_SERVER`, which scripts/test.sh installs; without it nothing
//! is measured).
//!
//! "N events into fakesnow, eds vs the same statements sent directly": N change events of the
//! demo traffic (`eds::sample::Traffic`, as the other drain benchmarks) are appended to a WAL
//! (`Durability::Never`, untimed). Then, in the same run, against one fakesnow started for the
//! run, each of these delivers every event into its own database:
//!
//! - `eds`: `drain::run` with the destination `parse_destination` makes of the fakesnow URL
//!   (`eds_drivers::snowflake::SnowflakeDriver`: batches of the driver's limits, one multi-row
//!   MERGE per (table, version, columns to update) and one DELETE per table, values bound as
//!   text, `transaction=off` as fakesnow needs), timed from the start of the drain until its cursor
//!   reaches the last LSN. Includes the drain's DDL and schema look-ups.
//! - `direct`: eds's thin REST client (`eds_drivers::snowflake::client::Client`) issuing the same
//!   kind of statements without eds's drain: a plain WAL reader in batches of the driver's limits,
//!   the benchmarks' shared last-change-per-key fold, then per table one `DELETE … WHERE "id" IN
//!   (?, …)` and one multi-row MERGE per set of columns to update, values converted as the driver
//!   converts them. Tables made beforehand (untimed) by the driver's `ensure_schema`.
//!
//! Afterwards (untimed) the row count of every table of both databases is printed side by side.
//! Per run: wall time, events/s, CPU µs per event of this process and of fakesnow. The ratio is
//! eds's events/s ÷ direct's. fakesnow (Python, sqlglot, DuckDB) is far slower than a warehouse:
//! the figures say how much eds adds on top of the statements it sends, not how fast Snowflake is.
//!
//! Knobs: `EDS_BENCH_EVENTS` (default 20,000; `EDS_BENCH_QUICK=1`: 5,000), `EDS_BENCH_SEED`
//! (default 7), `EDS_BENCH_RUNS` (default `eds,direct`), `EDS_BENCH_DIR`.

#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use common::backlog::write_backlog;
use common::direct::{direct_pass, Change};
use common::procs::{clk_tck, load, ticks_of, Probe};
use common::runs::{time_drain, Config, Outcome};
use eds::drain;
use eds::registry::SchemaSource;
use eds_drivers::driver::Driver;
use eds_drivers::schema::Schema;
use eds_drivers::snowflake::cells::ColumnPlan;
use eds_drivers::snowflake::client::{Binding, Client};
use eds_drivers::snowflake::fakesnow::Fakesnow;
use eds_drivers::snowflake::{parse, quote_ident, SnowflakeDriver, DESCRIPTION, MAX_BIND_PARAMS};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

mod common;

const TABLES: [&str; 4] = eds::demo_schemas::TABLES;
const RUNS: [&str; 2] = ["eds", "direct"];

fn main() {
    common::runs::main("drain_snowflake", async |base| {
        let mut cfg = Config::from_env("EDS_BENCH_SNOWFLAKE_UNUSED", "", &RUNS);
        if std::env::var("EDS_BENCH_EVENTS").is_err() {
            cfg.events = if cfg.quick { 5_000 } else { 20_000 };
        }
        run(&cfg, base).await
    });
}

/// The latest embedded schema of every demo table.
async fn latest_schemas() -> Result<HashMap<String, Schema>> {
    let source = eds::demo_schemas::EmbeddedSchemas::new();
    let mut out = HashMap::new();
    for t in TABLES {
        let s = source.version(t, eds::demo_schemas::SECOND_VERSION).await?.context("embedded schema")?;
        out.insert(t.to_owned(), s);
    }
    Ok(out)
}

/// `(SELECT <read> AS c0, … UNION ALL SELECT …)` over `plans`, for `rows` rows.
fn rows_table(plans: &[ColumnPlan<'_>], rows: usize) -> String {
    let first = plans.iter().enumerate().map(|(i, p)| format!("{} AS c{i}", p.storage.read())).collect::<Vec<_>>();
    let rest = plans.iter().map(|p| p.storage.read()).collect::<Vec<_>>().join(", ");
    let mut s = format!("(SELECT {}", first.join(", "));
    for _ in 1..rows {
        s.push_str(" UNION ALL SELECT ");
        s.push_str(&rest);
    }
    s.push(')');
    s
}

/// Writes one folded batch with `client`: per table, a DELETE of the deleted ids, then a MERGE per
/// set of columns to update, cut under the driver's bind limit. Returns the changes written.
async fn write_direct(
    client: &Client,
    token: &str,
    schemas: &HashMap<String, Schema>,
    batch: &[(String, String, Change)],
) -> Result<u64> {
    let mut by_table: HashMap<&str, Vec<&(String, String, Change)>> = HashMap::new();
    for c in batch {
        by_table.entry(c.0.as_str()).or_default().push(c);
    }
    for (table, changes) in by_table {
        let schema = schemas.get(table).with_context(|| format!("no schema for {table}"))?;
        let quoted = quote_ident(table)?;
        let plans: Vec<ColumnPlan<'_>> = schema.columns().iter().map(ColumnPlan::new).collect::<Result<_, _>>()?;
        let deletes: Vec<&str> =
            changes.iter().filter(|c| matches!(c.2, Change::Delete)).map(|c| c.1.as_str()).collect();
        for chunk in deletes.chunks(MAX_BIND_PARAMS) {
            let sql = format!("DELETE FROM {quoted} WHERE \"id\" IN ({})", vec!["?"; chunk.len()].join(", "));
            let binds: Vec<Binding<'_>> = chunk.iter().map(|id| Binding { kind: "TEXT", value: Some(id) }).collect();
            client.query(token, &sql, &binds, "eds-bench-direct").await?;
        }
        let mut groups: HashMap<Option<&BTreeSet<String>>, Vec<Vec<Option<String>>>> = HashMap::new();
        for (_, id, change) in changes {
            if let Change::Upsert { row, changed } = change {
                let mut cells = Vec::with_capacity(plans.len());
                for p in &plans {
                    let v = if p.name == "id" && row.get("id").is_none() { None } else { row.get(p.name) };
                    cells.push(p.cell(v, table)?.map(|c| c.into_owned()));
                }
                if cells[0].is_none() {
                    cells[0] = Some(id.clone());
                }
                groups.entry(changed.as_ref()).or_default().push(cells);
            }
        }
        for (changed, rows) in groups {
            let sets: Vec<String> = plans
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, p)| changed.is_none_or(|c| c.contains(p.name)))
                .map(|(i, p)| format!("{} = src.c{i}", p.quoted))
                .collect();
            let names = plans.iter().map(|p| p.quoted.as_str()).collect::<Vec<_>>().join(", ");
            let values = (0..plans.len()).map(|i| format!("src.c{i}")).collect::<Vec<_>>().join(", ");
            for chunk in rows.chunks((MAX_BIND_PARAMS / plans.len()).max(1)) {
                let mut sql = format!(
                    "MERGE INTO {quoted} AS dst USING {} AS src ON dst.\"id\" = src.c0",
                    rows_table(&plans, chunk.len())
                );
                if !sets.is_empty() {
                    sql.push_str(&format!(" WHEN MATCHED THEN UPDATE SET {}", sets.join(", ")));
                }
                sql.push_str(&format!(" WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"));
                let binds: Vec<Binding<'_>> =
                    chunk.iter().flatten().map(|c| Binding { kind: "TEXT", value: c.as_deref() }).collect();
                client.query(token, &sql, &binds, "eds-bench-direct").await?;
            }
        }
    }
    Ok(batch.len() as u64)
}

async fn run(cfg: &Config, base: &Path) -> Result<()> {
    println!(
        "eds drain benchmark: events into fakesnow, eds vs the same MERGE/DELETE statements sent directly{}",
        if cfg.quick { " (quick)" } else { "" }
    );
    for run in &cfg.runs {
        if !RUNS.contains(&run.as_str()) {
            bail!("unknown run {run:?} (known: {})", RUNS.join(", "));
        }
    }
    if std::env::var("FAKESNOW_SERVER").is_err() {
        println!("  FAKESNOW_SERVER is not set (scripts/test.sh installs fakesnow); nothing measured");
        return Ok(());
    }
    let fake = tokio::task::spawn_blocking(Fakesnow::start).await?;
    let fake_pid = vec![fake.pid().to_string()];
    println!(
        "  env:    fakesnow (pid {}) at {}; {} cpus (shared by fakesnow and this process); load average {:.2}",
        fake.pid(),
        fake.endpoint(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load()
    );
    let (wal, last, payload_bytes) = write_backlog(base, cfg.seed, cfg.events).await?;
    let limits = SnowflakeDriver::new(&fake.url("X", "PUBLIC"), &DESCRIPTION)?.limits();
    println!(
        "  events: N = {} of eds::sample::Traffic (seed {}), {:.0} bytes on average; LSNs 1..={last}; batches of at \
         most {} records or {} MiB, statements of at most {} values",
        cfg.events,
        cfg.seed,
        payload_bytes as f64 / cfg.events as f64,
        limits.max_rows,
        limits.max_bytes >> 20,
        MAX_BIND_PARAMS
    );
    println!();
    println!(
        "  {:<8} {:>8} {:>10} {:>10} {:>14} {:>16} {:>6}",
        "run", "events", "wall", "events/s", "cpu µs/event", "fakesnow µs/ev", "load"
    );
    let tck = clk_tck();
    let server = || ticks_of(&fake_pid);
    let mut done: Vec<(String, String, Outcome)> = Vec::new();
    for run in &cfg.runs {
        let db = format!("BENCH_{}", run.to_uppercase());
        let url = fake.url(&db, "PUBLIC");
        let outcome = match run.as_str() {
            "eds" => {
                let dest = drain::parse_destination(&format!("{url}&name=bench&start=oldest"))?
                    .context("this build has no Snowflake driver (feature snowflake)")?;
                time_drain(&wal, base, dest, last, "SnowflakeDriver", &server, tck).await
            }
            _ => {
                // Untimed: the tables, made by the driver for both schema versions.
                let driver = SnowflakeDriver::new(&url, &DESCRIPTION)?;
                let source = eds::demo_schemas::EmbeddedSchemas::new();
                for version in [eds::demo_schemas::FIRST_VERSION, eds::demo_schemas::SECOND_VERSION] {
                    for t in TABLES {
                        let schema = source.version(t, version).await?.context("embedded schema")?;
                        driver.ensure_schema(&schema).await?;
                    }
                }
                let schemas = latest_schemas().await?;
                let client = Client::new(parse(&url, &|_| None)?)?;
                let token = client.session().await?;
                let probe = Probe::now(&server);
                let pass = direct_pass(&wal, (limits.max_rows, limits.max_bytes), true, async |batch| {
                    write_direct(&client, &token, &schemas, batch).await
                })
                .await;
                let (wall, cpu, server_cpu) = probe.since(tck);
                pass.map(|p| Outcome {
                    wall,
                    cpu,
                    server_cpu,
                    delivered: p.events,
                    changes: Some(p.changes),
                    note: format!(
                        "thin client; {} batches; {:.2} s writing, {:.2} s folding, {:.2} s reading",
                        p.batches,
                        p.writing.as_secs_f64(),
                        p.folding.as_secs_f64(),
                        p.reading.as_secs_f64()
                    ),
                })
            }
        };
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                println!("  {run:<8} FAILED: {e:#}");
                return Err(e);
            }
        };
        let secs = o.wall.as_secs_f64();
        let per_event = |cpu: f64| cpu * 1e6 / o.delivered.max(1) as f64;
        println!(
            "  {run:<8} {:>8} {:>8.2} s {:>10.0} {:>14.1} {:>16.1} {:>6.2}\n  {:<8} {}",
            o.delivered,
            secs,
            o.delivered as f64 / secs,
            per_event(o.cpu),
            per_event(o.server_cpu),
            load(),
            "",
            o.note
        );
        done.push((run.clone(), db, o));
    }
    println!();
    if let (Some(e), Some(d)) = (done.iter().find(|r| r.0 == "eds"), done.iter().find(|r| r.0 == "direct")) {
        let (er, dr) = (e.2.delivered as f64 / e.2.wall.as_secs_f64(), d.2.delivered as f64 / d.2.wall.as_secs_f64());
        println!("  ratio eds/direct = {er:.0} ÷ {dr:.0} events/s = {:.2}", er / dr);
    }
    // Untimed: row counts per table of every run's database.
    for t in TABLES {
        let counts: Vec<String> = done
            .iter()
            .map(|(run, db, _)| {
                let sql = format!("SELECT count(*) FROM {}", quote_ident(t).unwrap());
                let n = fake.rows(db, "PUBLIC", &sql).map(|r| r[0][0].to_string()).unwrap_or_else(|e| e);
                format!("{run} {n}")
            })
            .collect();
        println!("  rows in {t:<10} {}", counts.join(", "));
    }
    let w = wal;
    tokio::task::spawn_blocking(move || w.close()).await??;
    println!("(figures only; nothing here is asserted on time)");
    Ok(())
}
