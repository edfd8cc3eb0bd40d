//! Test support: a private fakesnow server (Snowflake's REST API in front of DuckDB), shared by
//! this crate's tests, eds's end-to-end tests and the benchmark. The binary is `FAKESNOW_SERVER`
//! (`scripts/test.sh` installs `fakesnow[server]` with `snowflake-connector-python<5` into a venv
//! and sets it); without it the caller panics, it never skips.
//!
//! fakesnow answers queries in Arrow, which eds's client does not decode, so the tests read rows
//! back through the official Python connector of the same venv ([`Fakesnow::rows`]): what they
//! see is what a Snowflake user's client sees of the data.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// User, password and account the tests log in with (fakesnow accepts any).
pub const USER: &str = "eds_test";
/// The tests' password.
pub const PASSWORD: &str = "fake-Secret!";
/// The tests' account.
pub const ACCOUNT: &str = "testaccount";

/// A fakesnow server on a free port of 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct Fakesnow {
    child: Child,
    /// Its port.
    pub port: u16,
}

/// The fakesnow binary: `FAKESNOW_SERVER`, or a panic that says how to get it.
pub fn fakesnow_bin() -> String {
    match std::env::var("FAKESNOW_SERVER") {
        Ok(p) if std::path::Path::new(&p).is_file() => p,
        Ok(p) => panic!("FAKESNOW_SERVER={p} does not exist: run scripts/test.sh, which installs fakesnow[server]"),
        Err(_) => panic!(
            "FAKESNOW_SERVER is not set: the Snowflake tests need fakesnow (scripts/test.sh installs fakesnow[server] \
             into a venv and sets it)"
        ),
    }
}

/// The Python of fakesnow's venv (beside the binary), which has the Snowflake connector.
pub fn python() -> String {
    let bin = fakesnow_bin();
    let dir = std::path::Path::new(&bin).parent().expect("FAKESNOW_SERVER is a file in a directory");
    dir.join("python").to_string_lossy().into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// The server answers HTTP at all (`GET /` is a 404 from Starlette).
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 9];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

impl Fakesnow {
    /// Start fakesnow and wait (at most 60 s) until it answers.
    pub fn start() -> Fakesnow {
        let bin = fakesnow_bin();
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-s", "-p", &port.to_string(), "--host", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut fake = Fakesnow { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(port) {
            if let Ok(Some(status)) = fake.child.try_wait() {
                panic!("{bin} exited at start ({status}) on port {port}");
            }
            assert!(Instant::now() < deadline, "fakesnow on port {port} did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        fake
    }

    /// Its process id (for CPU figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `snowflake://` URL of `database`/`schema` at `endpoint` (fakesnow, or a proxy in front
    /// of it), with the tests' user and password, and `transaction=off` (fakesnow's MERGE fails
    /// inside a transaction: it writes its own catalog database, and DuckDB allows one database
    /// per transaction).
    pub fn url_at(endpoint: &str, database: &str, schema: &str) -> String {
        format!("snowflake://{USER}:{PASSWORD}@{ACCOUNT}/{database}/{schema}?endpoint={endpoint}&transaction=off")
    }

    /// [`Fakesnow::url_at`] this server.
    pub fn url(&self, database: &str, schema: &str) -> String {
        Fakesnow::url_at(&self.endpoint(), database, schema)
    }

    /// The rows of `sql` in `database`/`schema`, read through the official Python connector, each
    /// cell as JSON (text as strings, numbers as numbers, VARIANT as its JSON text, timestamps as
    /// `YYYY-MM-DD HH:MM:SS[.ffffff]`). `Err` carries the connector's error (a missing table…).
    pub fn rows(&self, database: &str, schema: &str, sql: &str) -> Result<Vec<Vec<serde_json::Value>>, String> {
        const SCRIPT: &str = r#"
import json, sys, datetime, decimal
import snowflake.connector
port, database, schema, sql = sys.argv[1], sys.argv[2], sys.argv[3], sys.stdin.read()
conn = snowflake.connector.connect(user="eds_test", password="x", account="testaccount", host="127.0.0.1",
                                   port=int(port), protocol="http", database=database, schema=schema)
def cell(v):
    if isinstance(v, datetime.datetime): return v.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, decimal.Decimal): return int(v) if v == int(v) else float(v)
    return v
try:
    cur = conn.cursor()
    cur.execute(sql)
    print(json.dumps([[cell(v) for v in row] for row in cur.fetchall()]))
except Exception as e:
    print(json.dumps({"error": str(e)}))
"#;
        use std::io::Write;
        let mut child = Command::new(python())
            .args(["-c", SCRIPT, &self.port.to_string(), database, schema])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting fakesnow's python: {e}"));
        child.stdin.take().expect("stdin").write_all(sql.as_bytes()).expect("writing the query to python");
        let out = child.wait_with_output().expect("python's output");
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<serde_json::Value>(text.trim()) {
            Ok(serde_json::Value::Array(rows)) => Ok(rows
                .into_iter()
                .map(|r| match r {
                    serde_json::Value::Array(cells) => cells,
                    other => vec![other],
                })
                .collect()),
            Ok(other) => Err(other["error"].as_str().unwrap_or("unknown error").to_owned()),
            Err(_) => panic!("python reading {sql:?} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr)),
        }
    }
}

impl Drop for Fakesnow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
