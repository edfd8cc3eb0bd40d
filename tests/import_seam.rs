//! The seam between an import and streaming: a new consumer starts at the earliest import
//! timestamp, and only the destination the import wrote skips, per table, events older than the
//! table's timestamp — every other destination still receives every event.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const C1: &str = "6287a4154d1a72cc5ce091bb";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn ev(table: &str, key: &str, ts: i64) -> Vec<u8> {
    json!({"operation": "UPDATE", "id": format!("ev-{key}"), "table": table, "key": [key], "modelVersion": "v1",
        "after": {"id": key}, "diff": ["id"], "timestamp": ts, "mvccTimestamp": "1.0"})
    .to_string()
    .into_bytes()
}

/// The keys of the files below `dir` (`<table>/<sec>-<key>.json`), sorted.
fn keys(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for table in std::fs::read_dir(dir).into_iter().flatten() {
        for f in std::fs::read_dir(table.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            out.push(name.trim_end_matches(".json").split_once('-').unwrap().1.to_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_takes_over_where_the_import_ended_for_its_destination_only() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    // Published before the import's time: no new consumer reads it.
    publish(&js, subject("order", "UPDATE", C1), ev("order", "before-import", now_ms() - 10_000)).await;
    // The import's time: a millisecond after the last one the first message can carry (the
    // consumer's start time has millisecond precision here), and passed before the next publish.
    let import_ms = now_ms() + 1;
    while now_ms() <= import_ms {
        std::hint::spin_loop();
    }
    // After: an order change older than the import (the import holds it), a newer one, and a
    // change of a table the import did not write.
    publish(&js, subject("order", "UPDATE", C1), ev("order", "older", import_ms - 5_000)).await;
    publish(&js, subject("order", "UPDATE", C1), ev("order", "newer", import_ms + 1_000)).await;
    let last = publish(&js, subject("customer", "UPDATE", C1), ev("customer", "other-table", import_ms - 5_000)).await;

    let data = tempfile::tempdir().unwrap();
    {
        let tracker = eds::tracker::Tracker::open(data.path()).unwrap();
        let stamp = eds::import::files::rfc3339_nanos(i128::from(import_ms) * 1_000_000);
        let exports = vec![eds::import::timestamps::TableExport { table: "order".into(), timestamp: stamp }];
        eds::import::timestamps::record(&tracker, "imported", &exports).await.unwrap();
    }
    let (out1, out2) = (data.path().join("imported"), data.path().join("other"));
    let url1 = format!("file://{}?name=imported&start=oldest", out1.display());
    let url2 = format!("file://{}?name=other&start=oldest", out2.display());
    let eds = Eds::start(data.path(), &nats, &["--url", &url1, "--url", &url2]);
    let lsn = wait::stored(&eds, last).await;
    wait::delivered(&eds, &["imported", "other"], lsn).await;
    assert_eq!(keys(&out1), ["newer", "other-table"], "the imported destination skips the older order change");
    assert_eq!(keys(&out2), ["newer", "older", "other-table"], "another destination gets every event");
    let log = eds.log_tail(400);
    assert!(log.contains("creating the consumer at the earliest import timestamp"), "{log}");
    assert_eq!(eds.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eds_data_dir_with_only_table_export_skips_at_every_destination() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let import_ms = now_ms() - 60_000;
    {
        let tracker = eds::tracker::Tracker::open(data.path()).unwrap();
        let stamp = eds::import::files::rfc3339_nanos(i128::from(import_ms) * 1_000_000);
        let value = format!(r#"[{{"Table":"order","Timestamp":"{stamp}"}}]"#);
        tracker.set("table-export", value.as_bytes()).await.unwrap();
    }
    publish(&js, subject("order", "UPDATE", C1), ev("order", "older", import_ms - 1)).await;
    let last = publish(&js, subject("order", "UPDATE", C1), ev("order", "newer", import_ms)).await;
    let out = data.path().join("out");
    let url = format!("file://{}?name=files&start=oldest", out.display());
    let eds = Eds::start(data.path(), &nats, &["--url", &url]);
    let lsn = wait::stored(&eds, last).await;
    wait::delivered(&eds, &["files"], lsn).await;
    assert_eq!(keys(&out), ["newer"], "strictly older is skipped, the import's own millisecond is not");
    assert_eq!(eds.stop(), 0);
}
