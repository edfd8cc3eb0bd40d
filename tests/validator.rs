//! `--schema-validator <dir>` end to end: through NATS and `eds server` into a file destination.
//! A valid event lands under its rule's `path`, an invalid one is dead-lettered with the
//! validator's message, a table without a rule is skipped and counted, and a bad directory stops
//! the server at start with exit 2.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use serde_json::json;
use std::process::Command;

const C1: &str = "6287a4154d1a72cc5ce091bb";

fn validator_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("schemas")).unwrap();
    std::fs::write(
        d.join("config.json"),
        json!({
            "labor": {"schema": "schemas/labor.json", "path": "{{.table}}/received/{{.table}}_{{.mvccTimestamp}}_{{.id}}.json"},
            "order": {"schema": "schemas/order.json"}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("schemas/shared.json"),
        json!({"definitions": {"when": {"type": "string", "format": "date-time"}}}).to_string(),
    )
    .unwrap();
    for (table, required) in [("labor", "hours"), ("order", "number")] {
        std::fs::write(
            d.join(format!("schemas/{table}.json")),
            json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"after": {
                    "type": "object",
                    "required": [required],
                    "properties": {required: {"type": "number"}, "updatedDate": {"$ref": "shared.json#/definitions/when"}}
                }}
            })
            .to_string(),
        )
        .unwrap();
    }
    dir
}

fn event(table: &str, id: &str, key: &str, after: serde_json::Value) -> Vec<u8> {
    json!({"operation": "INSERT", "id": id, "table": table, "key": [key], "modelVersion": "v1",
        "companyId": C1, "after": after, "timestamp": 1_795_749_176_000u64, "mvccTimestamp": "1795749176000000000.0000000000"})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_events_land_at_their_path_invalid_ones_are_dead_lettered_unruled_ones_skipped() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let rules = validator_dir();
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    let url = format!("file://{}?name=files&start=oldest", out.display());
    let good_labor =
        event("labor", "ev1", "l1", json!({"id": "l1", "hours": 1.5, "updatedDate": "2026-12-03T10:00:00.000Z"}));
    let bad_labor = event("labor", "ev2", "l2", json!({"id": "l2", "hours": "many", "updatedDate": "tuesday"}));
    let order = event("order", "ev3", "o1", json!({"id": "o1", "number": 7}));
    let customer = event("customer", "ev4", "c1", json!({"id": "c1"}));
    for (table, e) in [
        ("labor", &good_labor),
        ("labor", &bad_labor),
        ("order", &order),
        ("customer", &customer),
        ("customer", &customer),
    ] {
        publish(&js, subject(table, "INSERT", C1), e.clone()).await;
    }
    let rules_dir = rules.path().to_str().unwrap();
    let eds = Eds::start(data.path(), &nats, &["--restart", "--url", &url, "--schema-validator", rules_dir]);
    let lsn = wait::stored(&eds, 5).await;
    wait::delivered(&eds, &["files"], lsn).await;

    let at_path = out.join("labor/received/labor_1795749176000000000.0000000000_ev1.json");
    assert_eq!(std::fs::read(&at_path).unwrap(), good_labor, "the valid labor event at its rendered path");
    assert_eq!(
        std::fs::read(out.join("order/1795749176-o1.json")).unwrap(),
        order,
        "a rule without a path: the usual name"
    );
    assert!(!out.join("customer").exists(), "no rule for customer: skipped");
    assert!(!out.join("labor/1795749176-l2.json").exists());
    let (_, metrics) = eds.get("/metrics").await;
    let line = r#"eds_validator_skipped_total{destination="files",table="customer"} 2"#;
    assert!(metrics.lines().any(|l| l == line), "{line} missing in\n{metrics}");
    let log = eds.log_tail(400);
    assert_eq!(log.matches("no rule for this table").count(), 1, "logged once per table:\n{log}");
    assert_eq!(eds.stop(), 0);

    let o = Command::new(eds_bin())
        .args(["wal", "dlq", "--destination", "files", "--json", "-d", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let letters = v.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{v}");
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("schema validation failed for table \"labor\""), "{reason}");
    assert!(reason.contains("/after/hours") && reason.contains("/after/updatedDate"), "{reason}");
}

#[test]
fn a_bad_validator_directory_stops_the_server_at_start() {
    let rules = validator_dir();
    std::fs::write(
        rules.path().join("config.json"),
        r#"{"labor": {"schema": "schemas/labor.json", "path": "{{range .x}}"}}"#,
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = format!("file://{}", data.path().join("out").display());
    let mut child = Command::new(eds_bin())
        .args(["server", "-d", data.path().to_str().unwrap(), "--url", &url, "--server", "nats://127.0.0.1:1"])
        .args(["--schema-validator", rules.path().to_str().unwrap(), "--no-restart", "--port", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that started after all would run on: it must have exited within the deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("eds server started with a bad validator directory (still running after 30s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--schema-validator") && err.contains("\"labor\"") && err.contains("{{range .x}}"), "{err}");
}
