//! MariaDB drain benchmark: figures, never pass/fail. Run with `cargo bench --bench drain_mysql`.
//!
//! "1M events into MariaDB vs a direct multi-row upsert": N change events of the demo traffic
//! (`eds::sample::Traffic`: tables order/customer/vehicle/labor, ~25 % INSERT, ~67 % UPDATE, ~8 %
//! DELETE, a schema change halfway that adds `locationName`) are wrapped in Event envelopes as
//! ingest does and appended to a WAL (`Durability::Never`; setup is not timed). The WAL is then
//! read once, untimed, to warm the page cache, to count what eds's per-batch fold
//! (`eds_drivers::event::fold`) makes of it, and to check that every UPDATE's `diff` names every
//! non-key column of its row image (the sample traffic draws every value afresh, so it must: then
//! honouring `diff` and writing the full row are the same statements). Then, in the same run and
//! from the same WAL, each of these delivers every event into its own fresh database
//! (`bench_<run>_<pid>`, `CHARACTER SET utf8mb4`, dropped at the end):
//!
//! - `eds`: `drain::run` with the destination `parse_destination` makes of
//!   `mysql://…/<db>?name=bench&start=oldest` (`eds_drivers::mysql::MysqlDriver`: batches of 5,000
//!   records or 2 MiB, multi-row `INSERT … ON DUPLICATE KEY UPDATE` cut under 60,000 placeholders
//!   and the packet size, `DELETE … IN (…)`, one transaction per batch) and the embedded demo
//!   schemas as registry. Timed from starting the drain until its cursor reaches the last LSN
//!   (polled every 5 ms). Includes the drain's DDL (4 CREATE TABLE, 4 ALTER TABLE at the schema
//!   change) and its schema look-ups.
//! - `direct`: what a competent engineer would write without eds, with sqlx on one connection
//!   (utf8mb4, `time_zone='+00:00'`, the same strict `sql_mode` and TLS setting as eds's
//!   sessions): read the WAL with a plain `eds_wal::Reader` (not from memory, so both sides pay the
//!   same decompression) in batches cut like the drain's (the driver's `limits()`), unwrap the
//!   envelope, parse the event with serde_json, keep the last change per (table, id) — an UPDATE
//!   writes the union of its key's diffs on conflict, an INSERT or an UPDATE after a DELETE the
//!   whole row, as eds's fold does — then per table `DELETE … WHERE id IN (…)` and, per set of
//!   columns, one multi-row `INSERT INTO t (…) VALUES (?, …), … ON DUPLICATE KEY UPDATE c =
//!   VALUES(c), …` cut under 60,000 placeholders and the server's `max_allowed_packet` (read once,
//!   untimed); one transaction per batch. Values are bound by the column's type as the catalog
//!   (read once, untimed) reports it: integers as i64, doubles as f64, booleans as bool, JSON as
//!   its text, date-times converted as eds does (`eds_drivers::mysql::datetime_text`). Its tables
//!   are created beforehand (untimed) by the eds driver's `ensure_schema` for both schema
//!   versions, so both sides write the same column types.
//! - `direct-full` (not run by default): the same, but every upsert writes every column the event
//!   carries, ignoring `diff` — a check that full-row and diff give the same contents here.
//!
//! Afterwards (untimed) every run's tables are compared with the first run's: row counts, an
//! order-independent digest of the rows (XOR of the MD5 of each row's quoted values) and `CHECKSUM
//! TABLE`, per table; MATCH, or a loud MISMATCH with the rows only on one side and the rows
//! differing, by column.
//!
//! Per run: wall time; events/s (the common unit); rows/s (folded changes written: upserts +
//! deletes); for eds, the process's peak RSS during the run (`VmHWM`, reset just before it
//! starts) next to what was resident before; CPU µs per event of this process (the drain or the direct path; the bench's polling is
//! negligible) and of the MariaDB server (the process named by `@@pid_file`, else every
//! `mariadbd`/`mysqld` process; from /proc, so the server must run on this machine for that column
//! to mean anything); the load average, since on a shared machine wall times move with it. eds's
//! time is split into its flushes (`eds_flush_duration_seconds`: schema look-up, fold, DDL, SQL)
//! and the rest; the direct path's into writing (conversion, statements, commit), decoding and
//! folding, and WAL reading. The ratio printed is eds's events/s ÷ direct's events/s (the issue's
//! goal: ≥ 0.8).
//!
//! Knobs: `EDS_BENCH_QUICK=1` (100,000 events); `EDS_BENCH_EVENTS` (default 1,000,000);
//! `EDS_BENCH_MYSQL` (default `mysql://root@127.0.0.1:3306`, no database: the bench creates its
//! own); `EDS_BENCH_SEED` (traffic seed, default 7); `EDS_BENCH_RUNS` (comma-separated runs in
//! order, default `eds,direct`; also `direct-full`); `EDS_BENCH_DIR` (parent of the temporary
//! directory, default `target/`).

#![allow(clippy::unwrap_used)]

use anyhow::{bail, Context, Result};
use common::backlog::{fold_pass, write_backlog, FoldStats};
use common::direct::{direct_pass, Change};
use common::procs::{clk_tck, load, named, pids_named, ticks_of, Probe};
use common::runs::{time_drain, Config, Outcome};
use eds::drain;
use eds::registry::SchemaSource;
use eds_drivers::driver::Driver;
use eds_drivers::event::{ChangeEvent, Operation};
use eds_drivers::mysql::{datetime_text, MysqlDriver, MAX_BIND_PARAMS, SESSION_SQL_MODE};
use eds_wal::Wal;
use serde_json::Value;
use sqlx::mysql::{MySql, MySqlArguments, MySqlConnectOptions, MySqlConnection, MySqlSslMode};
use sqlx::query::Query;
use sqlx::{Connection, Executor, Row};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

mod common;
use common::describe_fs;

const DEFAULT_MYSQL: &str = "mysql://root@127.0.0.1:3306";
const TABLES: [&str; 4] = eds::demo_schemas::TABLES;
/// Every run this bench knows.
const RUNS: [&str; 3] = ["eds", "direct", "direct-full"];
/// The runs made when `EDS_BENCH_RUNS` is not set.
const DEFAULT_RUNS: [&str; 2] = ["eds", "direct"];
/// Room left in a packet for a statement's own framing (as the eds driver leaves).
const PACKET_HEADROOM: usize = 64 << 10;
/// The names of a MariaDB or MySQL server's process.
const SERVER_NAMES: [&str; 2] = ["mariadbd", "mysqld"];

/// `base` (`mysql://user@host:port[/anything][?query]`) naming the database `db` instead.
fn url_with_database(base: &str, db: &str) -> String {
    let (head, query) = base.split_once('?').map_or((base, None), |(h, q)| (h, Some(q)));
    let (scheme, rest) = head.split_once("://").unwrap_or(("mysql", head));
    let authority = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(q) if !q.is_empty() => format!("{scheme}://{authority}/{db}?{q}"),
        _ => format!("{scheme}://{authority}/{db}"),
    }
}

/// `name` as a MySQL identifier, in backticks.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    eds_drivers::mysql::redact(url)
}

// ---------------------------------------------------------------------------------------------
// The backlog's UPDATEs.

/// How the UPDATEs' diffs look.
#[derive(Debug, Default)]
struct DiffStats {
    /// UPDATEs whose `diff` is exactly the non-key columns of their row image.
    full_diffs: u64,
    /// UPDATEs without a `diff`.
    no_diff: u64,
}

impl DiffStats {
    fn count(&mut self, e: &ChangeEvent) {
        if e.operation == Operation::Update {
            match (&e.diff, e.object()) {
                (None, _) => self.no_diff += 1,
                (Some(diff), Some(row)) => {
                    let diff: BTreeSet<&str> = diff.iter().map(String::as_str).collect();
                    let cols: BTreeSet<&str> = row.keys().map(String::as_str).filter(|k| *k != "id").collect();
                    if diff == cols {
                        self.full_diffs += 1;
                    }
                }
                (Some(_), None) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU, from /proc: this process (eds's drain or the direct path, and the bench's polling) and the
// MariaDB server.

/// The server's processes: the one `@@pid_file` names when it is a `mariadbd`/`mysqld` on this
/// machine, else every such process (other MariaDB servers, such as a test's private one, then
/// count too). Returns the pids and how they were found.
fn server_pids(pid_file: Option<&str>, datadir: Option<&str>) -> (Vec<String>, String) {
    if let Some(file) = pid_file.filter(|f| !f.is_empty()) {
        let path = match datadir {
            Some(d) if !file.starts_with('/') => Path::new(d).join(file),
            _ => PathBuf::from(file),
        };
        if let Ok(pid) = std::fs::read_to_string(&path) {
            let pid = pid.trim().to_owned();
            if named(&pid, &SERVER_NAMES) {
                return (vec![pid.clone()], format!("pid {pid} from {}", path.display()));
            }
        }
    }
    let all = pids_named(&SERVER_NAMES);
    let how = if all.is_empty() {
        "no mariadbd/mysqld process on this machine: server CPU is not measured".to_owned()
    } else {
        format!("every mariadbd/mysqld process ({})", all.join(", "))
    };
    (all, how)
}

// ---------------------------------------------------------------------------------------------
// The eds side.

async fn run_eds(wal: &Wal, base: &Path, url: &str, last: u64, server: &[String], tck: f64) -> Result<Outcome> {
    let name = "bench";
    let sep = if url.contains('?') { '&' } else { '?' };
    let dest = drain::parse_destination(&format!("{url}{sep}name={name}&start=oldest"))?
        .context("this build has no MySQL driver (feature mysql)")?;
    time_drain(wal, base, dest, last, "MysqlDriver", &|| ticks_of(server), tck).await
}

// ---------------------------------------------------------------------------------------------
// The direct side.

/// How a destination column takes values, from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Json,
    DateTime,
    Int,
    Float,
    Bool,
}

/// A destination table as the catalog describes it; `id` is the primary key.
struct DirectTable {
    quoted: String,
    /// (name, quoted, kind) in catalog order.
    columns: Vec<(String, String, Kind)>,
    /// Index of `id` in `columns`.
    id: usize,
}

/// Statement limits: placeholders and bytes of bound values per statement.
#[derive(Debug, Clone, Copy)]
struct StatementLimits {
    params: usize,
    bytes: usize,
}

async fn load_tables(conn: &mut MySqlConnection) -> Result<HashMap<String, DirectTable>> {
    let mut tables = HashMap::new();
    for t in TABLES {
        let cols: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT CAST(column_name AS CHAR), CAST(data_type AS CHAR), CAST(column_type AS CHAR) \
             FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? \
             ORDER BY ordinal_position",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await?;
        if cols.is_empty() {
            bail!("direct: table {t:?} does not exist");
        }
        // MariaDB's JSON is LONGTEXT with a `json_valid(col)` check named after the column (MySQL
        // has no table_name there, and a real json type).
        let json: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(constraint_name AS CHAR) FROM information_schema.check_constraints \
             WHERE constraint_schema = DATABASE() AND table_name = ? AND check_clause LIKE 'json_valid(%'",
        )
        .bind(t)
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
        let columns: Vec<(String, String, Kind)> = cols
            .into_iter()
            .map(|(name, data_type, column_type)| {
                let kind = match data_type.to_ascii_lowercase().as_str() {
                    "json" => Kind::Json,
                    _ if json.contains(&name) => Kind::Json,
                    "datetime" | "timestamp" => Kind::DateTime,
                    "tinyint" if column_type.to_ascii_lowercase().starts_with("tinyint(1)") => Kind::Bool,
                    "tinyint" | "smallint" | "mediumint" | "int" | "bigint" => Kind::Int,
                    "double" | "float" => Kind::Float,
                    _ => Kind::Text,
                };
                (name.clone(), quote(&name), kind)
            })
            .collect();
        let id = columns.iter().position(|c| c.0 == "id").context("direct: a table without an id column")?;
        tables.insert(t.to_owned(), DirectTable { quoted: quote(t), columns, id });
    }
    Ok(tables)
}

/// A value ready to bind.
enum Val {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Val {
    /// About the bytes it takes in an execute packet.
    fn wire_bytes(&self) -> usize {
        match self {
            Val::Text(s) => s.len() + 12,
            _ => 12,
        }
    }
}

/// `v` converted for a column of `kind`.
fn convert(kind: Kind, v: Option<&Value>, table: &str, column: &str) -> Result<Val> {
    let v = match v {
        None | Some(Value::Null) => return Ok(Val::Null),
        Some(v) => v,
    };
    let bad = || anyhow::anyhow!("direct: {table}.{column}: {v} does not fit a {kind:?} column");
    Ok(match (kind, v) {
        (Kind::Json, v) => Val::Text(v.to_string()),
        (Kind::DateTime, Value::String(s)) => Val::Text(datetime_text(s).ok_or_else(bad)?),
        (Kind::Int, Value::Number(n)) => Val::Int(n.as_i64().ok_or_else(bad)?),
        (Kind::Float, Value::Number(n)) => Val::Float(n.as_f64().ok_or_else(bad)?),
        (Kind::Bool, Value::Bool(b)) => Val::Bool(*b),
        (Kind::Text, Value::String(s)) => Val::Text(s.clone()),
        (Kind::Text, Value::Bool(b)) => Val::Text(b.to_string()),
        (Kind::Text, Value::Number(n)) => Val::Text(n.to_string()),
        (Kind::Text, other) => Val::Text(other.to_string()),
        _ => return Err(bad()),
    })
}

fn bind<'q>(q: Query<'q, MySql, MySqlArguments>, v: &'q Val) -> Query<'q, MySql, MySqlArguments> {
    match v {
        Val::Null => q.bind(None::<&str>),
        Val::Text(s) => q.bind(s.as_str()),
        Val::Int(i) => q.bind(*i),
        Val::Float(f) => q.bind(*f),
        Val::Bool(b) => q.bind(*b),
    }
}

/// Upserts of one table with the same columns and the same columns to update: (columns' indexes,
/// update columns' indexes, rows of values in column order).
type Group = (Vec<usize>, Vec<usize>, Vec<Vec<Val>>);

/// `rows` cut into runs of at most `limits.params` placeholders and `limits.bytes` of values.
fn chunks(rows: &[Vec<Val>], limits: StatementLimits) -> Vec<std::ops::Range<usize>> {
    let width = rows.first().map_or(1, Vec::len).max(1);
    let per_statement = (limits.params / width).max(1);
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, row) in rows.iter().enumerate() {
        let size: usize = row.iter().map(Val::wire_bytes).sum();
        if i > start && (i - start >= per_statement || bytes + size > limits.bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

/// `(?, ?, …)` for `n` values.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3 + 2);
    s.push('(');
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

/// Writes one folded batch in one transaction; returns the number of changes written.
async fn write_batch(
    conn: &mut MySqlConnection,
    tables: &HashMap<String, DirectTable>,
    changes: &[(String, String, Change)],
    limits: StatementLimits,
) -> Result<u64> {
    let mut tx = conn.begin().await?;
    let mut written = 0u64;
    for t in TABLES {
        let Some(table) = tables.get(t) else { continue };
        let deletes: Vec<&str> = changes
            .iter()
            .filter(|(tt, _, c)| tt == t && matches!(c, Change::Delete))
            .map(|(_, id, _)| id.as_str())
            .collect();
        written += deletes.len() as u64;
        for ids in deletes.chunks(limits.params.max(1)) {
            let sql = format!("DELETE FROM {} WHERE `id` IN {}", table.quoted, placeholders(ids.len()));
            let mut q = sqlx::query(&sql).persistent(false);
            for id in ids {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        // Upserts grouped by the columns they carry and the columns they update on conflict (one
        // group per schema version when updates name every column).
        let mut groups: Vec<Group> = Vec::new();
        for (tt, id, c) in changes {
            let Change::Upsert { row, changed } = c else { continue };
            if tt != t {
                continue;
            }
            let cols: Vec<usize> =
                (0..table.columns.len()).filter(|&i| i == table.id || row.contains_key(&table.columns[i].0)).collect();
            let set: Vec<usize> = cols
                .iter()
                .copied()
                .filter(|&i| i != table.id)
                .filter(|&i| changed.as_ref().is_none_or(|s| s.contains(&table.columns[i].0)))
                .collect();
            let mut values = Vec::with_capacity(cols.len());
            for &i in &cols {
                let (name, _, kind) = &table.columns[i];
                let v = match row.get(name) {
                    None if i == table.id => Val::Text(id.clone()),
                    v => convert(*kind, v, t, name)?,
                };
                values.push(v);
            }
            match groups.iter_mut().find(|g| g.0 == cols && g.1 == set) {
                Some(g) => g.2.push(values),
                None => groups.push((cols, set, vec![values])),
            }
        }
        for (cols, set, rows) in &groups {
            written += rows.len() as u64;
            let names = cols.iter().map(|&i| table.columns[i].1.as_str()).collect::<Vec<_>>().join(", ");
            let updates = if set.is_empty() {
                "`id` = `id`".to_owned()
            } else {
                set.iter().map(|&i| format!("{0} = VALUES({0})", table.columns[i].1)).collect::<Vec<_>>().join(", ")
            };
            let row = placeholders(cols.len());
            for range in chunks(rows, limits) {
                let rows = &rows[range];
                let sql = format!(
                    "INSERT INTO {} ({names}) VALUES {} ON DUPLICATE KEY UPDATE {updates}",
                    table.quoted,
                    vec![row.as_str(); rows.len()].join(", ")
                );
                // Not a cached prepared statement: the row count makes nearly every text unique.
                let mut q = sqlx::query(&sql).persistent(false);
                for v in rows.iter().flatten() {
                    q = bind(q, v);
                }
                q.execute(&mut *tx).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(written)
}

/// The direct side's session: what eds's sessions get (utf8mb4, UTC, TLS off for this machine,
/// strict sql_mode), set up by hand.
async fn direct_connection(url: &str) -> Result<MySqlConnection> {
    let mut options = MySqlConnectOptions::from_str(url)?.charset("utf8mb4").timezone(Some("+00:00".to_owned()));
    if matches!(options.get_host(), "localhost" | "127.0.0.1" | "::1") && !url.contains("ssl-mode") {
        options = options.ssl_mode(MySqlSslMode::Disabled);
    }
    let mut conn = MySqlConnection::connect_with(&options).await?;
    conn.execute(format!("SET SESSION sql_mode = '{SESSION_SQL_MODE}'").as_str()).await?;
    Ok(conn)
}

async fn run_direct(
    wal: &Wal,
    url: &str,
    honour_diff: bool,
    limits: (usize, usize),
    statement: StatementLimits,
    server: &[String],
    tck: f64,
) -> Result<Outcome> {
    let mut conn = direct_connection(url).await?;
    // Untimed: what the engineer knows before writing (the tables' column types).
    let tables = load_tables(&mut conn).await?;
    let ticks = || ticks_of(server);
    let probe = Probe::now(&ticks);
    let pass =
        direct_pass(wal, limits, honour_diff, async |folded| write_batch(&mut conn, &tables, folded, statement).await)
            .await?;
    let (wall, cpu, server_cpu) = probe.since(tck);
    let _ = conn.close().await;
    let note = format!(
        "{}; {} rows written in {} transactions, {:.2} s writing (convert, bind, upsert, delete, commit), {:.2} s decoding and \
         folding, {:.2} s reading the WAL",
        if honour_diff { "updates write their diff's columns" } else { "upserts write every column they carry" },
        pass.changes,
        pass.batches,
        pass.writing.as_secs_f64(),
        pass.folding.as_secs_f64(),
        pass.reading.as_secs_f64()
    );
    Ok(Outcome { wall, cpu, server_cpu, delivered: pass.events, changes: Some(pass.changes), note })
}

// ---------------------------------------------------------------------------------------------
// Comparison.

/// The columns of `db`.`table`, by name.
async fn columns_of(conn: &mut MySqlConnection, db: &str, table: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = ? AND table_name = ? \
         ORDER BY column_name",
    )
    .bind(db)
    .bind(table)
    .fetch_all(&mut *conn)
    .await?)
}

/// (rows, XOR of each row's MD5 as 32 hex digits, CHECKSUM TABLE) of `db`.`table` over `cols`.
async fn digest(conn: &mut MySqlConnection, db: &str, table: &str, cols: &[String]) -> Result<(i64, String, String)> {
    let row = cols.iter().map(|c| format!("QUOTE({})", quote(c))).collect::<Vec<_>>().join(", ");
    let md5 = format!("MD5(CONCAT_WS(',', {row}))");
    let half = |from: usize| format!("BIT_XOR(CAST(CONV(SUBSTRING({md5}, {from}, 16), 16, 10) AS UNSIGNED))");
    let sql = format!(
        "SELECT COUNT(*), CAST(LPAD(HEX(COALESCE({}, 0)), 16, '0') AS CHAR), \
         CAST(LPAD(HEX(COALESCE({}, 0)), 16, '0') AS CHAR) FROM {}.{}",
        half(1),
        half(17),
        quote(db),
        quote(table)
    );
    let (n, a, b): (i64, String, String) = sqlx::query_as(&sql).fetch_one(&mut *conn).await?;
    let row = sqlx::query(&format!("CHECKSUM TABLE {}.{}", quote(db), quote(table))).fetch_one(&mut *conn).await?;
    // The checksum's type differs between servers (unsigned on MariaDB); NULL for a missing table.
    let checksum = match (row.try_get::<Option<u64>, _>(1), row.try_get::<Option<i64>, _>(1)) {
        (Ok(Some(c)), _) => c.to_string(),
        (_, Ok(Some(c))) => c.to_string(),
        (Ok(None), _) | (_, Ok(None)) => "NULL".to_owned(),
        (Err(e), _) => format!("unreadable ({e})"),
    };
    Ok((n, format!("{a}{b}").to_ascii_lowercase(), checksum))
}

async fn compare(conn: &mut MySqlConnection, reference: &str, other: &str) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for t in TABLES {
        let cols = columns_of(conn, reference, t).await?;
        let other_cols = columns_of(conn, other, t).await?;
        if cols != other_cols {
            problems.push(format!("{t}: columns differ: {cols:?} vs {other_cols:?}"));
            continue;
        }
        let a = digest(conn, reference, t, &cols).await?;
        let b = digest(conn, other, t, &cols).await?;
        if a == b {
            continue;
        }
        let per_col = cols.iter().map(|c| format!("SUM(NOT (x.{0} <=> y.{0}))", quote(c))).collect::<Vec<_>>();
        let whole = cols.iter().map(|c| format!("x.{0} <=> y.{0}", quote(c))).collect::<Vec<_>>().join(" AND ");
        let (x, y) = (format!("{}.{}", quote(reference), quote(t)), format!("{}.{}", quote(other), quote(t)));
        let sql = format!(
            "SELECT CAST(COUNT(*) AS SIGNED), CAST(COALESCE(SUM(NOT ({whole})), 0) AS SIGNED), {} FROM {x} x JOIN {y} y \
             ON x.`id` = y.`id`",
            per_col.iter().map(|s| format!("CAST(COALESCE({s}, 0) AS SIGNED)")).collect::<Vec<_>>().join(", ")
        );
        let row = sqlx::query(&sql).fetch_one(&mut *conn).await?;
        let in_both: i64 = row.try_get(0)?;
        let differ: i64 = row.try_get(1)?;
        let mut by_col = Vec::new();
        for (i, c) in cols.iter().enumerate() {
            let k: i64 = row.try_get(i + 2)?;
            if k > 0 {
                by_col.push(format!("{c} {k}"));
            }
        }
        problems.push(format!(
            "{t}: {} vs {} rows ({} in both: only in the first run {}, only in this run {}), {differ} rows differ \
             (by column: {}); digest {} vs {}; CHECKSUM TABLE {} vs {}",
            a.0,
            b.0,
            in_both,
            a.0 - in_both,
            b.0 - in_both,
            if by_col.is_empty() { "none".into() } else { by_col.join(", ") },
            a.1,
            b.1,
            a.2,
            b.2
        ));
    }
    Ok(problems)
}

async fn table_summary(conn: &mut MySqlConnection, db: &str) -> String {
    let mut parts = Vec::new();
    for t in TABLES {
        let d = match columns_of(conn, db, t).await {
            Ok(cols) => digest(conn, db, t, &cols).await,
            Err(e) => Err(e),
        };
        parts.push(match d {
            Ok((n, md5, checksum)) => format!("{t} {n} rows, digest {}…, CHECKSUM {checksum}", &md5[..12]),
            Err(e) => format!("{t}: {e}"),
        });
    }
    parts.join("; ")
}

// ---------------------------------------------------------------------------------------------

fn main() {
    common::runs::main("drain_mysql", async |base| {
        run(&Config::from_env("EDS_BENCH_MYSQL", DEFAULT_MYSQL, &DEFAULT_RUNS), base).await
    });
}

async fn run(cfg: &Config, base: &Path) -> Result<()> {
    println!(
        "eds drain benchmark: events into MariaDB, eds vs direct multi-row INSERT … ON DUPLICATE KEY UPDATE{}",
        if cfg.quick { " (quick)" } else { "" }
    );
    for run in &cfg.runs {
        if !RUNS.contains(&run.as_str()) {
            bail!("unknown run {run:?} (known: {})", RUNS.join(", "));
        }
    }
    let mut admin = match direct_connection(&url_with_database(&cfg.url, "information_schema")).await {
        Ok(c) => c,
        Err(e) => {
            println!("  MariaDB at {} is not reachable ({e}); nothing measured", redact(&cfg.url));
            return Ok(());
        }
    };
    type ServerRow = (String, String, String, String, String, Option<String>, Option<String>);
    let (version, packet, flush, pool, binlog, pid_file, datadir): ServerRow = sqlx::query_as(
        "SELECT CAST(VERSION() AS CHAR), CAST(@@max_allowed_packet AS CHAR), \
         CAST(@@innodb_flush_log_at_trx_commit AS CHAR), CAST(@@innodb_buffer_pool_size AS CHAR), \
         CAST(@@log_bin AS CHAR), CAST(@@pid_file AS CHAR), CAST(@@datadir AS CHAR)",
    )
    .fetch_one(&mut admin)
    .await?;
    let max_packet: usize = packet.parse().unwrap_or(16 << 20);
    let (server, server_how) = server_pids(pid_file.as_deref(), datadir.as_deref());
    println!(
        "  env:    dir {} — {}; {version} at {} (innodb_flush_log_at_trx_commit {flush}, buffer pool {} MiB, log_bin \
         {binlog}, max_allowed_packet {} MiB); server CPU: {server_how}; {} cpus available (shared by MariaDB and \
         this process); load average {:.2}",
        base.display(),
        describe_fs(base),
        redact(&cfg.url),
        pool.parse::<u64>().unwrap_or(0) >> 20,
        max_packet >> 20,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        load(),
    );

    // Setup (untimed): the WAL, a warm read of it, eds's fold of it.
    let started = Instant::now();
    let (wal, last, payload_bytes) = write_backlog(base, cfg.seed, cfg.events).await?;
    let stats = wal.stats();
    let limits = MysqlDriver::new(&url_with_database(&cfg.url, "information_schema"))?.limits();
    let (max_rows, max_bytes) = (limits.max_rows.max(1), limits.max_bytes.max(1));
    let statement = StatementLimits {
        params: MAX_BIND_PARAMS,
        bytes: max_packet.saturating_sub(PACKET_HEADROOM).clamp(PACKET_HEADROOM, 64 << 20),
    };
    let (fold_stats, diffs) = {
        let w = wal.clone();
        tokio::task::spawn_blocking(move || {
            let mut diffs = DiffStats::default();
            let folds = fold_pass(&w, max_rows, max_bytes, |e| diffs.count(e))?;
            anyhow::Ok((folds, diffs))
        })
        .await??
    };
    println!(
        "  events: N = {} of eds::sample::Traffic (seed {}): {} INSERT, {} UPDATE, {} DELETE, {:.0} bytes on average; \
         LSNs 1..={last}",
        cfg.events,
        cfg.seed,
        fold_stats.ops[0],
        fold_stats.ops[1],
        fold_stats.ops[2],
        payload_bytes as f64 / cfg.events as f64,
    );
    let updates = fold_stats.ops[Operation::Update as usize];
    println!(
        "  diffs:  {} of {updates} UPDATEs name exactly every non-key column of their row image in diff ({} have no \
         diff){}",
        diffs.full_diffs,
        diffs.no_diff,
        if diffs.full_diffs == updates {
            " → honouring diff writes the same columns as writing the full row"
        } else {
            " → honouring diff and full-row writes differ: run direct-full to see by how much"
        }
    );
    println!(
        "  WAL:    {} segments, {:.1} MiB on disk (Durability::Never); setup {:.1} s (generate, append, one warm read)",
        stats.segments,
        stats.bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  batch:  the MySQL driver's limits: {max_rows} records or {} MiB → {} batches; eds's fold makes {} \
         changes (rows written) of them ({} upserts, {} deletes; {:.2} events per row); statements of at most {} \
         placeholders and {} MiB of values",
        max_bytes >> 20,
        fold_stats.batches,
        fold_stats.upserts + fold_stats.deletes,
        fold_stats.upserts,
        fold_stats.deletes,
        fold_stats.events as f64 / (fold_stats.upserts + fold_stats.deletes).max(1) as f64,
        statement.params,
        statement.bytes >> 20,
    );

    let mut created: Vec<String> = Vec::new();
    let result = measure(
        cfg,
        base,
        &mut admin,
        &wal,
        last,
        &fold_stats,
        (max_rows, max_bytes),
        statement,
        &server,
        &mut created,
    )
    .await;
    for db in &created {
        if let Err(e) = admin.execute(format!("DROP DATABASE IF EXISTS {}", quote(db)).as_str()).await {
            println!("  note: dropping database {db} failed: {e}");
        }
    }
    let _ = admin.close().await;
    let w = wal;
    tokio::task::spawn_blocking(move || w.close()).await??;
    println!("(figures only; nothing here is asserted on time)");
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    cfg: &Config,
    base: &Path,
    admin: &mut MySqlConnection,
    wal: &Wal,
    last: u64,
    fold_stats: &FoldStats,
    limits: (usize, usize),
    statement: StatementLimits,
    server: &[String],
    created: &mut Vec<String>,
) -> Result<()> {
    let pid = std::process::id();
    let mut done: Vec<(String, String, Outcome)> = Vec::new();
    println!();
    println!(
        "  {:<12} {:>9} {:>10} {:>10} {:>10} {:>14} {:>16} {:>6}",
        "run", "events", "wall", "events/s", "rows/s", "cpu µs/event", "mariadbd µs/ev", "load"
    );
    let tck = clk_tck();
    let mut result = Ok(());
    for run in &cfg.runs {
        let db = format!("bench_{}_{pid}", run.replace('-', "_"));
        admin.execute(format!("DROP DATABASE IF EXISTS {}", quote(&db)).as_str()).await?;
        admin.execute(format!("CREATE DATABASE {} CHARACTER SET utf8mb4", quote(&db)).as_str()).await?;
        created.push(db.clone());
        let url = url_with_database(&cfg.url, &db);
        let outcome = match run.as_str() {
            "eds" => run_eds(wal, base, &url, last, server, tck).await,
            "direct" | "direct-full" => {
                // Untimed: the direct side's tables, made as eds makes them (both schema versions).
                let prepared = async {
                    let driver = MysqlDriver::new(&url)?;
                    let source = eds::demo_schemas::EmbeddedSchemas::new();
                    for version in [eds::demo_schemas::FIRST_VERSION, eds::demo_schemas::SECOND_VERSION] {
                        for t in TABLES {
                            let schema = source.version(t, version).await?.context("embedded schema")?;
                            driver.ensure_schema(&schema).await?;
                        }
                    }
                    anyhow::Ok(())
                }
                .await;
                match prepared {
                    Ok(()) => run_direct(wal, &url, run == "direct", limits, statement, server, tck).await,
                    Err(e) => Err(e),
                }
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
            "  {run:<12} {:>9} {:>8.2} s {:>10.0} {:>10.0} {:>14.1} {:>16.1} {:>6.2}\n  {:<12} {}{}",
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
        done.push((run.clone(), db, o));
    }

    if let Some((first, first_db, _)) = done.first() {
        println!();
        if let Some((_, _, e)) = done.iter().find(|(r, _, _)| r == "eds") {
            let eds_rate = e.delivered as f64 / e.wall.as_secs_f64();
            for (run, _, o) in done.iter().filter(|(r, _, _)| r != "eds") {
                let rate = o.delivered as f64 / o.wall.as_secs_f64();
                let r = eds_rate / rate;
                println!(
                    "  ratio eds/{run} = eds's events/s ÷ {run}'s events/s = {eds_rate:.0} ÷ {rate:.0} = {r:.2} \
                     (eds takes {:.2}× the time of {run}; goal ≥ 0.8: {})",
                    1.0 / r,
                    if r >= 0.8 { "met" } else { "NOT met" }
                );
            }
        }
        println!("  contents (untimed), every run against {first} ({first_db}):");
        println!("   {first:<12} {}", table_summary(admin, first_db).await);
        for (run, db, _) in done.iter().skip(1) {
            match compare(admin, first_db, db).await {
                Ok(p) if p.is_empty() => {
                    println!("   {run:<12} MATCH (row counts, row digest and CHECKSUM TABLE of every table)")
                }
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
    result
}
