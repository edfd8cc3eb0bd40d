//! `eds server --url file://…`: events flow from NATS through the WAL to a destination.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use std::path::Path;
use std::time::Duration;

const C1: &str = "6287a4154d1a72cc5ce091bb";

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(tables) = std::fs::read_dir(dir) {
        for t in tables {
            let t = t.unwrap().path();
            for f in std::fs::read_dir(&t).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|e| e == "tmp") {
                    continue; // being written
                }
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_file_destination_once_across_restarts() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    let url = format!("file://{}?name=archive&start=oldest", out.display());
    let mut expected = Vec::new();
    for n in 0..300u64 {
        if n == 150 {
            publish(&js, subject("order", "INSERT", C1), b"not an event".to_vec()).await;
        }
        publish(&js, subject("order", "UPDATE", C1), event(&format!("k{n}"), n)).await;
        expected.push(n);
    }
    let eds = Eds::start(data.path(), &nats, &["--restart", "--url", &url]);
    eventually("300 files", Duration::from_secs(30), || async { (files(&out).len() >= 300).then_some(()) }).await;
    // The files are there as soon as the driver wrote them; the cursor, figures and metrics follow.
    let status = eventually("the cursor past the last record", Duration::from_secs(10), || async {
        let s = eds.status().await;
        (s["destinations"][0]["cursor"] == 301).then_some(s)
    })
    .await;
    let (_, metrics) = eds.get("/metrics").await;
    assert!(metrics.contains(r#"eds_flush_count_count{destination="archive"}"#), "{metrics}");
    let d = &status["destinations"][0];
    assert_eq!((d["name"].as_str(), d["driver"].as_str()), (Some("archive"), Some("File")), "{status}");
    let (_, metrics) = eds.get("/metrics").await;
    for line in [r#"eds_destination_lag_records{destination="archive"} 0"#, "eds_pending_events 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing in\n{metrics}");
    }
    assert!(metrics.contains(r#"eds_processing_duration_seconds_count{destination="archive"}"#), "{metrics}");
    assert_eq!((d["delivered"].as_u64(), d["lag_records"].as_u64()), (Some(300), Some(0)), "{status}");
    assert_eq!(eds.stop(), 0);

    let got = files(&out);
    assert_eq!(got.len(), 300, "one file per event, the dead letter none");
    for n in expected {
        let ts = 1_795_749_176u64; // event(): timestamp 1795749176000 + n ms
        let secs = ts + n / 1000;
        let name = format!("order/{secs}-k{n}.json");
        let body = &got.iter().find(|(p, _)| *p == name).unwrap_or_else(|| panic!("{name} missing")).1;
        assert_eq!(body, &event(&format!("k{n}"), n));
    }
    let o = std::process::Command::new(eds_bin())
        .args(["wal", "cursor", "list", "--json", "-d", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "archive");
    assert_eq!(v[0]["position"], 301, "past every record, the dead-letter marker included");

    // Again: a restart replays nothing and delivers what is new.
    let eds = Eds::start(data.path(), &nats, &["--url", &url]);
    for n in 300..310u64 {
        publish(&js, subject("order", "UPDATE", C1), event(&format!("k{n}"), n)).await;
    }
    eventually("310 files", Duration::from_secs(30), || async { (files(&out).len() >= 310).then_some(()) }).await;
    assert_eq!(eds.stop(), 0);
    assert_eq!(files(&out).len(), 310);

    // The destination is renamed: its old cursor is now an orphan holding retention back, and
    // the read-only tools say so.
    let renamed = format!("file://{}?name=renamed", out.display());
    let eds = Eds::start(data.path(), &nats, &["--url", &renamed]);
    assert_eq!(eds.stop(), 0);
    let o = std::process::Command::new(eds_bin())
        .args(["wal", "inspect", "--json", "-d", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let of = |name: &str| {
        v["cursors"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["destination"].clone()
    };
    assert_eq!(of("renamed"), "File destination", "{v}");
    assert!(of("archive").as_str().unwrap().starts_with("orphaned"), "{v}");
}

/// A private NATS with 2,000 incompressible events, and `eds server` with a 2 MiB budget
/// delivering to `file://<data>/out?<query>`, where a file blocks the directory (every write
/// fails until the test removes it).
struct Blocked {
    nats: Nats,
    data: tempfile::TempDir,
    out: std::path::PathBuf,
    seqs: Vec<u64>,
    eds: Eds,
}

async fn blocked_destination(query: &str, mut seed: u64) -> Blocked {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    std::fs::write(&out, b"in the way").unwrap();
    let url = format!("file://{}?{query}", out.display());
    let mut seqs = Vec::new();
    for n in 0..2000u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), bulky_event(n, &mut seed)).await);
    }
    let eds = Eds::start(
        data.path(),
        &nats,
        &["--restart", "--ack-wait", "1s", "--wal-segment-size", "1MiB", "--wal-max-bytes", "2MiB", "--url", &url],
    );
    Blocked { nats, data, out, seqs, eds }
}

/// A destination that cannot take data holds its cursor; the disk budget fills and ingest
/// pauses; once the destination recovers, its cursor moves, retention frees segments and ingest
/// resumes by itself — in the same process, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_resumes_by_itself_when_a_destination_catches_up() {
    // Every field bound: the server, NATS and the temp dir live to the end of the test.
    let Blocked { nats: _nats, data: _data, out, seqs, eds } =
        blocked_destination("name=archive&start=oldest", 0x2545_F491_4F6C_DD1D).await;
    eventually("ingest to pause for disk", Duration::from_secs(30), || async {
        (eds.status().await["ingest"]["state"] == "paused_for_disk").then_some(())
    })
    .await;
    let status = eds.status().await;
    let d = &status["destinations"][0];
    assert_eq!(d["state"], "retrying", "{status}");
    assert!(d["last_error"].as_str().unwrap().contains("File exists"), "{status}");
    assert_eq!(d["cursor"], 0, "{status}");
    std::fs::remove_file(&out).unwrap();
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(60)).await;
    eventually("every event delivered", Duration::from_secs(60), || async {
        (files(&out).len() >= 2000).then_some(())
    })
    .await;
    assert_eq!(eds.status().await["ingest"]["state"], "running");
    assert_eq!(eds.stop(), 0);
    assert_eq!(files(&out).len(), 2000);
}

/// overflow=drop-oldest: a destination that stays down does not stop ingest when the budget is
/// full; its cursor jumps past the oldest segment and what it skipped is recorded as a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_lets_ingest_go_on_and_records_what_the_destination_skipped() {
    let Blocked { nats: _nats, data, out, seqs, eds } =
        blocked_destination("name=lossy&start=oldest&overflow=drop-oldest", 0x9E37_79B9_7F4A_7C15).await;
    // The destination never recovers, yet everything gets stored.
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(60)).await;
    let status = eds.status().await;
    let gaps = status["ingest"]["gaps"].as_array().unwrap();
    assert!(!gaps.is_empty(), "{status}");
    assert!(
        gaps[0]["reason"].as_str().unwrap().contains("destination lossy (overflow=drop-oldest) skipped WAL records"),
        "{status}"
    );
    assert!(status["destinations"][0]["cursor"].as_u64().unwrap() > 0, "the cursor jumped: {status}");
    let recorded = std::fs::read_to_string(data.path().join("gaps.jsonl")).unwrap();
    assert!(recorded.contains("destination lossy"), "{recorded}");
    // Once it is back, it delivers what it still has, none of what it skipped.
    std::fs::remove_file(&out).unwrap();
    eventually("the destination to catch up", Duration::from_secs(60), || async {
        let s = eds.status().await;
        (s["destinations"][0]["lag_records"] == 0 && s["destinations"][0]["state"] != "retrying").then_some(())
    })
    .await;
    assert_eq!(eds.stop(), 0);
    let delivered = files(&out).len();
    assert!(delivered > 0 && delivered < 2000, "delivered {delivered}");
}

/// An operator can hold one destination and release it; nothing is delivered meanwhile and
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_can_be_paused_and_resumed() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    let url = format!("file://{}?name=archive", out.display());
    // --restart: the consumer starts at the beginning, whenever it gets created.
    let eds = Eds::start(data.path(), &nats, &["--restart", "--url", &url]);
    let (code, body) = http_request(&eds.http, "POST", "/destinations/archive/pause").await;
    assert_eq!((code, body.as_str()), (200, r#"{"destination":"archive","paused":true}"#));
    assert_eq!(http_request(&eds.http, "POST", "/destinations/nope/pause").await.0, 404);
    let mut last = 0;
    for n in 0..20u64 {
        last = publish(&js, subject("order", "UPDATE", C1), event(&format!("k{n}"), n)).await;
    }
    eds.wait_stored(last, Duration::from_secs(20)).await;
    eventually("the paused destination to show its lag", Duration::from_secs(10), || async {
        let s = eds.status().await;
        let d = &s["destinations"][0];
        (d["state"] == "paused" && d["lag_records"] == 20 && d["paused"] == true).then_some(())
    })
    .await;
    // The lag in seconds grows while paused: an alert on it fires for a forgotten pause.
    let series = r#"eds_destination_lag_seconds{destination="archive"}"#;
    eventually("the paused destination's lag in seconds to grow past 1.5 s", Duration::from_secs(20), || async {
        (common::wait::metric(&eds, series).await >= 1.5).then_some(())
    })
    .await;
    assert!(files(&out).is_empty(), "nothing delivered while paused");
    let (code, _) = http_request(&eds.http, "POST", "/destinations/archive/resume").await;
    assert_eq!(code, 200);
    eventually("20 files", Duration::from_secs(20), || async { (files(&out).len() == 20).then_some(()) }).await;
    // Delivered: the lag in seconds falls back once the drain finds nothing more to read.
    eventually("the lag in seconds back to 0", Duration::from_secs(20), || async {
        (common::wait::metric(&eds, series).await == 0.0).then_some(())
    })
    .await;
    assert_eq!(eds.stop(), 0);
}

/// After a restart, `/status` shows each destination's cursor where the previous run left it, from
/// the first answer on: before the fix it said 0 until the first batch, and with nothing new to
/// deliver that lasted indefinitely (and the lag looked like the whole log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_cursor_after_a_restart_before_any_batch() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("out");
    let url = format!("file://{}?name=archive", out.display());
    for n in 0..5u64 {
        publish(&js, subject("order", "UPDATE", C1), event(&format!("k{n}"), n)).await;
    }
    let eds = Eds::start(data.path(), &nats, &["--restart", "--url", &url]);
    eventually("the cursor at the last record", Duration::from_secs(30), || async {
        let s = eds.status().await;
        (s["destinations"][0]["cursor"] == 5).then_some(())
    })
    .await;
    assert_eq!(eds.stop(), 0);

    // Nothing new: no batch will move the cursor, so the first answer already must show it.
    let eds = Eds::start(data.path(), &nats, &["--restart", "--url", &url]);
    let status = eds.status().await;
    let d = &status["destinations"][0];
    assert_eq!((d["name"].as_str(), d["cursor"].as_u64()), (Some("archive"), Some(5)), "{status}");
    assert_eq!(d["lag_records"].as_u64(), Some(0), "{status}");
    assert_eq!(eds.stop(), 0);
}
