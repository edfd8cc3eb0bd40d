//! PostgreSQL for the fault campaign: a schema of the test's own on the shared server
//! (127.0.0.1:5432, database `test`, trust), or a private cluster the test creates, crashes
//! (`pg_ctl stop -m immediate`) and starts again; and tables read back as [`Rows`].
#![allow(dead_code, clippy::unwrap_used)]

use super::model::Rows;
use super::{free_port, unique_suffix};
use serde_json::Value;
use sqlx::{Connection, Executor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The shared PostgreSQL server of the tests.
pub const SHARED: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A PostgreSQL identifier, quoted.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A schema of the test's own on the shared server, dropped (CASCADE) on drop.
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub async fn create(prefix: &str) -> Schema {
        let name = format!("{prefix}_{}", unique_suffix());
        let mut admin =
            sqlx::PgConnection::connect(SHARED).await.expect("PostgreSQL at 127.0.0.1:5432 (database test)");
        admin.execute(format!("CREATE SCHEMA {}", ident(&name)).as_str()).await.unwrap();
        let _ = admin.close().await;
        Schema { name }
    }

    /// The destination URL of this schema.
    pub fn url(&self, dest: &str) -> String {
        format!("postgres://postgres@127.0.0.1:5432/test?name={dest}&options=-c%20search_path%3D{}", self.name)
    }

    /// Rows of `table` in this schema.
    pub async fn rows(&self, table: &str) -> Rows {
        rows(SHARED, &self.name, table).await
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread of its own: this may run inside the test's runtime, or while it unwinds.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut c = sqlx::PgConnection::connect(SHARED).await?;
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

/// Rows of `schema.table` at `url` as JSON objects by id; date-times in the events' format
/// (`YYYY-MM-DDThh:mm:ss.mmmZ`). A missing table reads as no rows.
pub async fn rows(url: &str, schema: &str, table: &str) -> Rows {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    c.execute("SET statement_timeout = '30s'").await.unwrap();
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    if columns.is_empty() {
        return out;
    }
    let exprs: Vec<String> = columns
        .iter()
        .map(|(name, kind)| match kind.as_str() {
            "timestamp with time zone" => {
                format!(r#"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS {c}"#, c = ident(name))
            }
            _ => ident(name),
        })
        .collect();
    let sql = format!(
        "SELECT to_jsonb(t)::text FROM (SELECT {} FROM {}.{}) t",
        exprs.join(", "),
        ident(schema),
        ident(table)
    );
    for text in sqlx::query_scalar::<_, String>(&sql).fetch_all(&mut c).await.unwrap() {
        let Value::Object(row) = serde_json::from_str::<Value>(&text).unwrap() else { unreachable!() };
        let id = row["id"].as_str().unwrap().to_owned();
        assert!(out.insert(id.clone(), row).is_none(), "two rows with id {id:?} in {table}");
    }
    let _ = c.close().await;
    out
}

/// The directory of PostgreSQL's server programs (the newest installed).
pub fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server programs: /usr/lib/postgresql is missing (apt-get install postgresql)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    dirs.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Run a PostgreSQL program: as the `postgres` user when we are root (initdb and the server
/// refuse to run as root). Panics with its output when it fails.
fn run_pg(program: &Path, args: &[&str]) {
    let quoted: Vec<String> = std::iter::once(program.to_str().unwrap())
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = if running_as_root() {
        Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &quoted.join(" ")]).output().unwrap()
    } else {
        Command::new(program).args(args).output().unwrap()
    };
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private PostgreSQL cluster (initdb in a temp dir, a free port, trust auth, user
/// `postgres`), stopped at once (immediate mode, no waiting on anything) on drop.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        if running_as_root() {
            // The server runs as `postgres`: it must reach its directory.
            let ok = Command::new("chown").args(["-R", "postgres:postgres", dir.path().to_str().unwrap()]).status();
            assert!(ok.unwrap().success(), "chown of the private cluster's directory to postgres");
        }
        let data = dir.path().join("pgdata");
        run_pg(&bin.join("initdb"), &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        let cluster = Cluster { port: free_port(), bin, data, _dir: dir };
        cluster.resume().await;
        cluster
    }

    /// Start the (stopped) server and wait until it takes connections.
    pub async fn resume(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=50",
            self.port,
            self.data.display()
        );
        let log = self.data.join("log");
        run_pg(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while sqlx::PgConnection::connect(&self.admin_url()).await.is_err() {
            assert!(Instant::now() < deadline, "private PostgreSQL cluster did not take connections within 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Crash the server: `pg_ctl stop -m immediate` (no checkpoint; the next start recovers).
    pub fn crash(&self) {
        run_pg(&self.bin.join("pg_ctl"), &["-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    /// The `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A destination URL for the `postgres` database's `public` schema.
    pub fn url(&self, dest: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?name={dest}", self.port)
    }

    pub async fn rows(&self, table: &str) -> Rows {
        rows(&self.admin_url(), "public", table).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data.to_str().unwrap().to_owned();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        // Already stopped is fine: nothing to report.
        let quoted = format!("'{}' -D '{data}' -m immediate stop", pg_ctl.display());
        let _ = if running_as_root() {
            Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &quoted]).output()
        } else {
            Command::new(&pg_ctl).args(args).output()
        };
    }
}
