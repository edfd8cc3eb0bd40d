//! `eds integrationtest`: its events arrive on EDS's subjects of a private nats-server, and an
//! `eds server` stores and delivers them.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output};

fn eds(args: &[&str]) -> Output {
    Command::new(eds_bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every message of the `dbchange` stream: subject, `Nats-Msg-Id`, payload.
async fn stream_messages(nats: &Nats) -> Vec<(String, String, Value)> {
    let js = nats.js().await;
    let mut stream = js.get_stream("dbchange").await.unwrap();
    let n = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=n {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_default();
        out.push((m.subject.to_string(), id, serde_json::from_slice(&m.payload).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_random_events_arrive_and_a_server_stores_and_delivers_them() {
    let nats = Nats::start().await;
    let o = eds(&[
        "integrationtest",
        "loadtest-random",
        "--count",
        "60",
        "--delay-ms",
        "0",
        "--server",
        &nats.url(),
        "--create-stream",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("published 60 events"), "{}", text(&o));
    let got = stream_messages(&nats).await;
    assert_eq!(got.len(), 60);
    let mut ids = std::collections::HashSet::new();
    for (i, (subject, msg_id, event)) in got.iter().enumerate() {
        assert_eq!(subject, "dbchange.customer.UPDATE.28a6712e-83a0-4ede-97cb-c3f5201068dc.1.PUBLIC.2");
        assert_eq!(msg_id.len(), 16, "a 16-hex-digit message id: {msg_id:?}");
        assert!(ids.insert(msg_id.clone()), "message ids are unique");
        assert_eq!(event["table"], "customer");
        assert_eq!(event["key"][0], format!("customer{i}"));
        assert_eq!(event["diff"], serde_json::json!(["firstName", "lastName", "email"]));
    }

    // A paced run: the delay is between events.
    let o = eds(&["integrationtest", "loadtest-random", "--count", "3", "--delay-ms", "20", "--server", &nats.url()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stream_messages(&nats).await.len(), 63);

    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    let url = format!("file://{}?name=files&start=oldest", out.display());
    let server = Eds::start(data.path(), &nats, &["--restart", "--url", &url]);
    let lsn = wait::stored(&server, 63).await;
    wait::delivered(&server, &["files"], lsn).await;
    let files = std::fs::read_dir(out.join("customer")).unwrap().count();
    assert_eq!(files, 63, "one file per event");
    assert_eq!(server.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_file_data_publishes_a_recording() {
    let nats = Nats::start().await;
    nats.create_stream().await;
    let dir = tempfile::tempdir().unwrap();
    let line = |table: &str, op: &str, n: u64| {
        serde_json::json!({"operation": op, "id": format!("ev{n}"), "table": table, "key": [format!("k{n}")],
            "modelVersion": "v1", "companyId": "old", "locationId": "old",
            "after": {"id": format!("k{n}"), "companyId": "old", "note": "O'Brien \"quoted\" ünïcode"},
            "timestamp": 1_700_000_000_000u64 + n, "mvccTimestamp": "1.0"})
        .to_string()
    };
    let mut body = String::from("a header line\n");
    for n in 0..10 {
        body += &line(if n % 2 == 0 { "order" } else { "vehicle" }, "INSERT", n);
        body.push('\n');
    }
    let path = dir.path().join("output.jsonl.tar.gz");
    let enc = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(enc);
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "output.jsonl", body.as_bytes()).unwrap();
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();

    let file = path.to_str().unwrap();
    let args = ["integrationtest", "publish-file-data", "--file", file, "--server", &nats.url(), "--company-id", "C9"];
    let o = eds(&[&args[..], &["--only", "order", "--count", "4"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let got = stream_messages(&nats).await;
    assert_eq!(got.len(), 4, "--count 4 of the five order events");
    for (subject, _, event) in &got {
        assert!(subject.starts_with("dbchange.order.INSERT.C9."), "{subject}");
        assert_eq!((&event["companyId"], &event["after"]["companyId"]), (&Value::from("C9"), &Value::from("C9")));
        assert_eq!(event["after"]["note"], "O'Brien \"quoted\" ünïcode");
    }
    let o = eds(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Every run moves the recording to a day from its own start: new events, all published.
    assert_eq!(stream_messages(&nats).await.len(), 4 + 10);

    let missing = dir.path().join("nope.jsonl");
    let o =
        eds(&["integrationtest", "publish-file-data", "--file", missing.to_str().unwrap(), "--server", &nats.url()]);
    assert_eq!(o.status.code(), Some(2), "a bad flag value: {}", text(&o));
    assert!(text(&o).contains("--file") && text(&o).contains("nope.jsonl"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stream_or_a_server_the_error_says_what_to_do() {
    let nats = Nats::start().await;
    let o = eds(&["integrationtest", "loadtest-random", "--delay-ms", "0", "--server", &nats.url()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("captures dbchange.customer.UPDATE") && text(&o).contains("--create-stream"),
        "{}",
        text(&o)
    );

    let port = free_port();
    let url = format!("nats://user:s3cret@127.0.0.1:{port}");
    let o = eds(&["integrationtest", "loadtest-random", "--server", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("connecting to NATS at"), "{}", text(&o));
    assert!(!text(&o).contains("s3cret"), "the password is not printed: {}", text(&o));

    let o = eds(&["integrationtest", "loadtest-random", "--count", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
