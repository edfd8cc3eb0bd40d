//! Test harness, shared by this driver's tests, the end-to-end tests and the benchmark: a private
//! Event Hubs test double (`double.py` beside this file, an AMQP 1.0 listener on python-qpid-proton
//! that speaks as Event Hubs does) per test, and what it received. `EVENTHUB_DOUBLE` names the
//! Python interpreter that has python-qpid-proton (scripts/test.sh installs it); without it the
//! harness panics, it never skips. With `EVENTHUB_DOUBLE_DEBUG` set, the double logs each transfer
//! on the test's stderr.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use base64::Engine as _;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The namespace the double's URLs name (the audience of the client's tokens; never dialled: the
/// URL's `endpoint` option points at the double).
pub const NAMESPACE: &str = "eds-test.servicebus.windows.net";
/// The shared access policy the double accepts.
pub const KEY_NAME: &str = "send";
/// Its key: with `+`, `/` and `=`, as real keys have, which must reach the client as they are.
pub const KEY: &str = "c2VjcmV0K2tleS9mb3I9dGVzdHM+Lz0=";

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Python interpreter with python-qpid-proton, or a panic saying how to get it.
pub fn python() -> PathBuf {
    match std::env::var_os("EVENTHUB_DOUBLE") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "EVENTHUB_DOUBLE is not set: scripts/test.sh installs python-qpid-proton into a venv and exports its python"
        ),
    }
}

/// The double's script.
pub fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src/eventhub/double.py"))
}

/// How to start a double.
#[derive(Debug, Clone)]
pub struct Options {
    /// The hub's name.
    pub hub: String,
    /// Its partition count.
    pub partitions: u32,
    /// The maximum message size its links advertise.
    pub max_message_size: u64,
    /// The port to listen on (0: a free one).
    pub port: u16,
    /// How long the double waits before it settles a transfer, in milliseconds (see `double.py`).
    pub settle_delay_ms: f64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            hub: "eds-hub".to_owned(),
            partitions: 4,
            max_message_size: 1024 * 1024,
            port: 0,
            // Long enough that fe2o3-amqp has registered a transfer before its outcome comes back
            // even while the tests, four at a time on two cores, wait for a core (see double.py).
            settle_delay_ms: 20.0,
        }
    }
}

/// One message as the double received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The number of the transfer that carried it (a batch is one transfer).
    pub transfer: u64,
    /// Whether it came in a batch envelope.
    pub batch: bool,
    /// The partition of the link, when the sender named one.
    pub partition: Option<String>,
    pub body: Vec<u8>,
    pub message_id: serde_json::Value,
    pub content_type: serde_json::Value,
    pub partition_key: serde_json::Value,
    pub properties: BTreeMap<String, serde_json::Value>,
}

impl Received {
    /// An application property as text; a panic naming it when absent or not text.
    pub fn property(&self, name: &str) -> String {
        match self.properties.get(name) {
            Some(serde_json::Value::String(s)) => s.clone(),
            other => panic!("property {name}: {other:?} in {self:?}"),
        }
    }

    pub fn lsn(&self) -> u64 {
        self.property("eds-lsn").parse().unwrap()
    }

    /// Everything but the transfer number: what a replay repeats.
    pub fn content(&self) -> Received {
        Received { transfer: 0, ..self.clone() }
    }
}

/// A running double; killed on drop.
pub struct Double {
    /// The double's process.
    pub child: Child,
    /// Where it listens.
    pub port: u16,
    /// Its options.
    pub options: Options,
    stdin: Option<ChildStdin>,
    /// The double's acknowledgements (`mode <m>` lines of its standard output).
    acks: std::sync::mpsc::Receiver<String>,
    out: PathBuf,
}

impl Double {
    /// A double with the default options on a free port.
    pub fn start() -> Double {
        Double::start_with(Options::default())
    }

    pub fn start_with(mut options: Options) -> Double {
        if options.port == 0 {
            options.port = free_port();
        }
        let port = options.port;
        let out = std::env::temp_dir().join(format!("eds-eventhub-double-{}-{port}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&out);
        std::fs::write(&out, b"").unwrap();
        let mut child = Command::new(python())
            .arg(script())
            .args(["--port", &port.to_string(), "--hub", &options.hub])
            .args(["--partitions", &options.partitions.to_string()])
            .args(["--max-message-size", &options.max_message_size.to_string()])
            .args(["--key-name", KEY_NAME, "--key", KEY])
            .args(["--settle-delay-ms", &options.settle_delay_ms.to_string()])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("EVENTHUB_DOUBLE_DEBUG") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .spawn()
            .expect("starting the Event Hubs double");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, acks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut double = Double { child, port, options, stdin, acks, out };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the Event Hubs double did not listen on port {port} within 20 s");
            let exited = double.child.try_wait().unwrap();
            assert!(exited.is_none(), "the Event Hubs double exited at start on port {port}: {exited:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        double
    }

    /// A destination URL for this double's hub, dialled at `port` (the double's, or a proxy's in
    /// front of it), with `query` options (`&`-separated, without `?`).
    pub fn url_via(&self, port: u16, query: &str) -> String {
        let query = if query.is_empty() { String::new() } else { format!("&{query}") };
        format!(
            "eventhub://{NAMESPACE}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY};EntityPath={}?endpoint=amqp://127.0.0.1:{port}{query}",
            self.options.hub
        )
    }

    /// A destination URL for this double's hub.
    pub fn url(&self, query: &str) -> String {
        self.url_via(self.port, query)
    }

    /// `accept` (the default), `reject` (every transfer rejected) or `hang` (nothing settled).
    /// Returns once the double says the mode is set: a transfer sent after this call gets it.
    pub fn set_mode(&mut self, mode: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{mode}").unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(line) if line == format!("mode {mode}") => return,
                Ok(_) => {}
                Err(e) => panic!("the Event Hubs double did not acknowledge mode {mode} within 20 s: {e}"),
            }
        }
    }

    /// Every message received so far, in the order received.
    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.out).unwrap();
        // A line is written whole before its transfer is settled; a partial last line is one
        // being written now, of a transfer not yet accepted.
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).map(parse).collect()
    }

    /// The messages received once at least `n` have arrived, within `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} messages arrived within {timeout:?}", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the double (as a crashed or stopped service).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(v: serde_json::Value) -> Received {
    let text = |k: &str| v.get(k).cloned().unwrap_or(serde_json::Value::Null);
    Received {
        transfer: v["transfer"].as_u64().unwrap(),
        batch: v["batch"].as_bool().unwrap(),
        partition: v["partition"].as_str().map(str::to_owned),
        body: base64::engine::general_purpose::STANDARD.decode(v["body"].as_str().unwrap()).unwrap(),
        message_id: text("message_id"),
        content_type: text("content_type"),
        partition_key: text("partition_key"),
        properties: v["properties"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.out);
    }
}
