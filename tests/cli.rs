//! The real `eds` binary against real data directories.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn eds(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eds")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sample(dir: &Path, records: u64, batch: u64) {
    let o = eds(&[
        "wal",
        "sample",
        "-d",
        dir.to_str().unwrap(),
        "--records",
        &records.to_string(),
        "--batch",
        &batch.to_string(),
    ]);
    assert!(o.status.success(), "sample failed: {}", stderr(&o));
    assert!(stdout(&o).contains(&format!("appended {records} sample order events")), "{}", stdout(&o));
}

#[test]
fn version_prints_the_package_version() {
    let o = eds(&["version"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let o = eds(&["wal", "dump", "--limit", "ten"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--limit"), "{}", stderr(&o));
    let o = eds(&["wal", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("frobnicate"), "{}", stderr(&o));
}

#[test]
fn missing_log_is_a_clear_failure() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    for cmd in [&["wal", "inspect"][..], &["wal", "verify"], &["wal", "dump"], &["wal", "cursor", "list"]] {
        let mut args = cmd.to_vec();
        args.extend(["-d", missing.to_str().unwrap()]);
        let o = eds(&args);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        assert!(stderr(&o).contains("no write-ahead log at"), "{cmd:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(missing.to_str().unwrap()), "{}", stderr(&o));
    }
    assert!(!missing.exists(), "read-only commands must not create the data directory");
}

#[test]
fn inspect_dump_and_verify_a_sample_log() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    sample(d.path(), 1000, 100);

    let o = eds(&["wal", "inspect", "-d", dir, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["oldest_lsn"], 1);
    assert_eq!(v["head_lsn"], 1000);
    assert_eq!(v["total_records"], 1000);
    let segs = v["segments"].as_array().unwrap();
    assert_eq!(segs[0]["frames"], 10);
    assert!(segs[0]["compression_ratio"].as_f64().unwrap() > 2.0, "{v}");

    let o = eds(&["wal", "dump", "-d", dir, "--from", "998"]);
    assert!(o.status.success());
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        let lsn = 998 + i as u64;
        let expected = String::from_utf8(eds::sample::order_event(lsn - 1)).unwrap();
        assert_eq!(line, &format!("{lsn}\ttext\t{expected}"));
    }
    let o = eds(&["wal", "dump", "-d", dir, "--limit", "2"]);
    assert_eq!(stdout(&o).lines().count(), 2);
    assert!(stdout(&o).starts_with("1\ttext\t{"));

    let o = eds(&["wal", "verify", "-d", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("10 frames, 1000 records: 0 problems"), "{}", stdout(&o));
}

#[test]
fn dump_prints_binary_records_as_hex() {
    let d = tempfile::tempdir().unwrap();
    let wal_dir = d.path().join("wal");
    let wal = eds_wal::Wal::open(&wal_dir, eds_wal::Options::default()).unwrap();
    wal.append(&[&[0xffu8, 0x00, 0x10][..], b"line\nbreak"]).unwrap();
    wal.close().unwrap();
    let o = eds(&["wal", "dump", "-d", d.path().to_str().unwrap()]);
    assert_eq!(stdout(&o), "1\thex\tff0010\n2\ttext\tline\\nbreak\n");
}

#[test]
fn dump_decodes_what_ingest_stored() {
    use eds::record::{Envelope, Kind};
    let d = tempfile::tempdir().unwrap();
    let event = br#"{"operation":"INSERT","table":"order","key":["k1"],"after":{"id":"k1","note":"a\tb"}}"#;
    let env = |kind: Kind, seq: u64, msg_id: &'static str, reason: &'static str, payload: &'static [u8]| {
        Envelope {
            kind,
            stream_seq: seq,
            received_at: 1_795_749_176_123_456,
            subject: "dbchange.order.INSERT.c1.l1.PUBLIC.2".into(),
            msg_id: msg_id.into(),
            reason: reason.into(),
            payload,
        }
        .encode()
    };
    // Ingest's dead letter (its reason lives in the dead-letter log) and its marker in the WAL.
    eds::dlq::DeadLetters::open(d.path())
        .unwrap()
        .append(&[env(Kind::DeadLetter, 8, "", "message is not a JSON object", b"nope")])
        .unwrap();
    let wal = eds_wal::Wal::open(d.path().join("wal"), eds_wal::Options::default()).unwrap();
    wal.append(&[env(Kind::Event, 7, "m-7", "", event), env(Kind::DeadLetterMarker, 8, "", "", b"")]).unwrap();
    wal.close().unwrap();
    let dir = d.path().to_str().unwrap();

    let o = eds(&["wal", "dump", "-d", dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One record per line: the dump escapes control characters and doubles backslashes.
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            r#"1	event	seq 7	2026-11-27T03:12:56.123456Z	dbchange.order.INSERT.c1.l1.PUBLIC.2	m-7	{"operation":"INSERT","table":"order","key":["k1"],"after":{"id":"k1","note":"a\\tb"}}"#,
            "2	dead-lettered	seq 8	2026-11-27T03:12:56.123456Z	dbchange.order.INSERT.c1.l1.PUBLIC.2	-	reason: message is not a JSON object",
        ]
    );
    let o = eds(&["wal", "dump", "-d", dir, "--json", "--limit", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["lsn"].as_u64(), v["stream_seq"].as_u64(), v["msg_id"].as_str()), (Some(1), Some(7), Some("m-7")));
    assert_eq!(v["event"]["after"]["note"], "a\tb");
    let o = eds(&["wal", "dump", "-d", dir, "--raw", "--limit", "1"]);
    assert!(stdout(&o).starts_with("1\thex\t01"), "{}", stdout(&o));
    let o = eds(&["wal", "dump", "-d", dir, "--raw", "--json"]);
    assert_eq!(o.status.code(), Some(2), "--raw and --json do not go together");
}

#[test]
fn verify_names_segment_and_offset_of_damage() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    sample(d.path(), 300, 100);
    let seg = d.path().join("wal").join("00000000000000000001.wal");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Second frame: the first starts after the 24-byte segment header.
    let first_len = 48 + u32::from_le_bytes(bytes[24 + 4..24 + 8].try_into().unwrap()) as usize;
    let second = 24 + first_len;
    bytes[second + 60] ^= 0x55;
    std::fs::write(&seg, &bytes).unwrap();

    let o = eds(&["wal", "verify", "-d", dir]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("problem: segment {} offset {second}:", seg.display())), "{out}");
    assert!(out.contains("checksum mismatch"), "{out}");
    assert!(out.contains(": 1 problems"), "{out}");

    let o = eds(&["wal", "verify", "-d", dir, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["offset"], second as u64);
}

#[test]
fn cursors_are_listed_with_lag_and_deleted_only_offline() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    sample(d.path(), 500, 50);
    let wal = eds_wal::Wal::open(d.path().join("wal"), eds_wal::Options::default()).unwrap();
    wal.create_cursor("postgres-main", eds_wal::CursorStart::Oldest).unwrap();
    wal.create_cursor("s3-archive", eds_wal::CursorStart::Head).unwrap();
    wal.advance_cursor("postgres-main", 120).unwrap();
    wal.persist_cursors().unwrap();

    // Read-only commands work while the writer holds the lock.
    let o = eds(&["wal", "cursor", "list", "-d", dir, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "postgres-main");
    assert_eq!(v[0]["position"], 120);
    assert_eq!(v[0]["lag_records"], 380);
    assert!(v[0]["lag_bytes"].as_u64().unwrap() > 0);
    assert!(v[0]["oldest_pending_at"].is_string());
    assert_eq!(v[1]["name"], "s3-archive");
    assert_eq!(v[1]["lag_records"], 0);
    assert_eq!(v[1]["lag_bytes"], 0);

    let o = eds(&["wal", "cursor", "delete", "postgres-main", "-d", dir]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stop the server before deleting a cursor"), "{}", stderr(&o));
    assert!(stderr(&o).contains("in use by another process"), "{}", stderr(&o));
    wal.close().unwrap();

    // Other tests of this binary spawn processes in parallel; a child forked while our lock file
    // was open holds the lock until it execs. Poll for the release with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let o = loop {
        let o = eds(&["wal", "cursor", "delete", "postgres-main", "-d", dir]);
        if o.status.success()
            || !stderr(&o).contains("in use by another process")
            || std::time::Instant::now() > deadline
        {
            break o;
        }
    };
    assert!(o.status.success(), "{}", stderr(&o));
    let o = eds(&["wal", "cursor", "list", "-d", dir]);
    let out = stdout(&o);
    assert!(!out.contains("postgres-main") && out.contains("s3-archive"), "{out}");
    let o = eds(&["wal", "cursor", "delete", "postgres-main", "-d", dir]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no cursor named \"postgres-main\""), "{}", stderr(&o));
}

#[test]
fn log_flags_shape_lines() {
    let d = tempfile::tempdir().unwrap();
    let o = eds(&["wal", "sample", "-d", d.path().to_str().unwrap(), "--records", "10", "-t", "--log-label", "edge-1"]);
    assert!(o.status.success());
    let line = stderr(&o);
    let first = line.lines().next().unwrap();
    // "2026/11/27 03:12:56 [edge-1] INFO  appended …"
    let (stamp, rest) = first.split_at(19);
    assert!(stamp.as_bytes()[4] == b'/' && stamp.as_bytes()[13] == b':', "{first}");
    assert!(rest.starts_with(" [edge-1] INFO  appended"), "{first}");
    let o = eds(&["wal", "sample", "-d", d.path().to_str().unwrap(), "--records", "10", "-s"]);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "", "silent prints no info lines");
}

#[test]
fn inspect_reports_stream_gaps_recorded_by_ingest() {
    let d = tempfile::tempdir().unwrap();
    sample(d.path(), 10, 10);
    std::fs::write(
        d.path().join("gaps.jsonl"),
        "{\"from_seq\":751,\"to_seq\":8749,\"missing\":2,\"reason\":\"never redelivered\",\"at\":\"2026-11-27T04:01:50.476884Z\"}\n",
    )
    .unwrap();
    let o = eds(&["wal", "inspect", "-d", d.path().to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stream_gaps"][0]["missing"], 2);
    let o = eds(&["wal", "inspect", "-d", d.path().to_str().unwrap()]);
    assert!(
        stdout(&o).contains("2 message(s) between stream sequences 751 and 8749, recorded 2026-11-27T04:01:50.476884Z: never redelivered"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn server_help_finds_drivers_by_scheme() {
    let o = eds(&["server", "help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("file         File                     file:///var/eds/out"), "{}", stdout(&o));
    assert!(stdout(&o).contains("postgres     PostgreSQL"), "{}", stdout(&o));
    let o = eds(&["server", "help", "postgresql"]);
    assert!(o.status.success(), "found by its alias");
    assert!(stdout(&o).starts_with("PostgreSQL (postgres://"), "{}", stdout(&o));
    // By scheme, any case (EDS compared the display name, so `server help s3` never worked).
    let o = eds(&["server", "help", "FILE"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("File (file://)\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("directory    directory, required"), "{}", stdout(&o));
    let o = eds(&["server", "help", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    // Every driver of this build, in registry order (the features decide which: `kafka` adds one).
    let known: Vec<&str> = eds_drivers::descriptions().iter().map(|d| d.scheme).collect();
    assert!(known.starts_with(&["file", "postgres", "mysql", "sqlserver"]), "{known:?}");
    let expected =
        format!("no driver for scheme \"nope\": no destination has this scheme (in this build: {})", known.join(", "));
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
}

/// At the top of `--rate`, one 50 ms tick generates more than a WAL frame holds (16 MiB): the
/// demo appends it in several frames instead of failing with "exceeds the maximum frame size".
#[test]
fn demo_at_its_highest_rate_appends_a_tick_in_several_frames() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("demo-data");
    let out = d.path().join("out");
    let url = format!("file://{}", out.display());
    let args = ["demo", "--events", "40000", "--rate", "1000000", "--port", "0", "-s", "--url", &url];
    let o = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(args)
        .args(["-d", data.to_str().unwrap()])
        .env_remove("PORT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("done: 40000 events generated and delivered"), "{}", stdout(&o));
    let o = eds(&["wal", "verify", "--json", "-d", data.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"], 40000, "{v}");
    assert!(v["frames"].as_u64().unwrap_or(0) >= 2, "{v}");
}

#[test]
fn demo_delivers_every_generated_event_and_keeps_off_server_data() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("demo-data");
    let out = d.path().join("out");
    let url = format!("file://{}", out.display());
    let o = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args([
            "demo",
            "--events",
            "1500",
            "--rate",
            "20000",
            "--port",
            "0",
            "--url",
            &url,
            "-d",
            data.to_str().unwrap(),
        ])
        .env_remove("PORT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("done: 1500 events generated and delivered"), "{}", stdout(&o));
    let mut files = 0;
    for table in std::fs::read_dir(&out).unwrap() {
        files += std::fs::read_dir(table.unwrap().path()).unwrap().count();
    }
    assert_eq!(files, 1500, "one file per generated event");
    // The log agrees: 1500 records, the destination's cursor at the end.
    let o = eds(&["wal", "cursor", "list", "--json", "-d", data.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["position"], 1500);
    assert_eq!(v[0]["lag_records"], 0);

    // A mistyped scheme is a usage error, not a destination that silently gets nothing.
    let bad = ["demo", "--events", "10", "--port", "0", "--url", "postgress://u:pw@db/x", "-d", data.to_str().unwrap()];
    let o = eds(&bad);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no destination has the scheme \"postgress\""), "{}", stderr(&o));
    assert!(!stderr(&o).contains("pw@"), "{}", stderr(&o));

    // A server's data directory is refused.
    let server = d.path().join("server");
    std::fs::create_dir_all(server.join("wal")).unwrap();
    let o = eds(&["demo", "--events", "10", "--port", "0", "-d", server.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("holds a write-ahead log the demo did not create"), "{}", stderr(&o));
}

#[test]
fn dlq_lists_a_destinations_dead_letters() {
    let d = tempfile::tempdir().unwrap();
    let dlq = eds::dlq::DeadLetters::open_for_destination(d.path(), "pg-main").unwrap();
    let rec = eds::record::Envelope {
        kind: eds::record::Kind::DeadLetter,
        stream_seq: 42,
        received_at: 0,
        subject: "dbchange.order.UPDATE.c.l.PUBLIC.2".into(),
        msg_id: "".into(),
        reason: "destination pg-main rejected it: value too long".into(),
        payload: br#"{"operation":"UPDATE"}"#,
    }
    .encode();
    dlq.append(&[rec]).unwrap();
    drop(dlq);
    let o = eds(&["wal", "dlq", "--destination", "pg-main", "--json", "-d", d.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["stream_seq"], 42);
    assert_eq!(v[0]["reason"], "destination pg-main rejected it: value too long");
    // Ingest's own dead letters are separate.
    let o = eds(&["wal", "dlq", "-d", d.path().to_str().unwrap()]);
    assert_eq!(stdout(&o), "no dead letters\n");
}

#[test]
fn dlq_replay_redelivers_a_destinations_dead_letters_once() {
    let d = tempfile::tempdir().unwrap();
    let dlq = eds::dlq::DeadLetters::open_for_destination(d.path(), "archive").unwrap();
    let payloads: Vec<String> = (1..=3)
        .map(|n| {
            format!(
                r#"{{"operation":"INSERT","table":"order","key":["k{n}"],"after":{{"id":"k{n}"}},"timestamp":{n}000}}"#
            )
        })
        .collect();
    let recs: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            eds::record::Envelope {
                kind: eds::record::Kind::DeadLetter,
                stream_seq: 10 + i as u64,
                received_at: 0,
                subject: "dbchange.order.INSERT.c.l.PUBLIC.2".into(),
                msg_id: "".into(),
                reason: "destination archive rejected it: disk full".into(),
                payload: p.as_bytes(),
            }
            .encode()
        })
        .collect();
    dlq.append(&recs).unwrap();
    drop(dlq);
    let out = d.path().join("out");
    let url = format!("file://{}", out.display());
    let dir = d.path().to_str().unwrap();
    let o = eds(&["dlq", "replay", "--destination", "archive", "--url", &url, "-d", dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "re-delivered 3 dead letter(s) of \"archive\"\n");
    for (n, p) in payloads.iter().enumerate() {
        let f = out.join("order").join(format!("{}-k{}.json", n + 1, n + 1));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), *p);
    }
    // Listed as replayed; a second replay has nothing left to do.
    let o = eds(&["dlq", "list", "--destination", "archive", "--json", "-d", dir]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().all(|l| l["replayed"] == true), "{v}");
    let o = eds(&["dlq", "replay", "--destination", "archive", "--url", &url, "-d", dir]);
    assert_eq!(stdout(&o), "re-delivered 0 dead letter(s) of \"archive\"\n");
}

/// A second `eds server` on a data dir whose tracker another process holds is refused before it
/// writes anything there: it used to replace `destinations.json` with its own (empty) list and
/// create dead-letter directories first, so `eds wal inspect` then called the live server's
/// cursor orphaned.
#[test]
fn a_refused_second_server_changes_nothing_in_the_data_dir() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let recorded = br#"[{"name":"files","scheme":"file"}]"#;
    std::fs::write(d.path().join(eds::drain::DESTINATIONS_FILE), recorded).unwrap();
    // The running server's lock, held here.
    let tracker = eds::tracker::Tracker::open(d.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("file://{}?name=second", out.path().display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_eds"))
        .args(["server", "-d", dir, "--url", &url, "--server", "nats://127.0.0.1:1", "--port", "0", "--no-restart"])
        .env_remove("SM_APIKEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the second server was not refused within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("is in use"), "{err}");
    assert_eq!(std::fs::read(d.path().join(eds::drain::DESTINATIONS_FILE)).unwrap(), recorded, "{err}");
    assert!(!d.path().join("dlq").join("second").exists(), "no dead-letter directory made for it");
    drop(tracker);
}
