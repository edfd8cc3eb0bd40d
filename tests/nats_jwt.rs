//! `eds server` against a nats-server in JWT (operator) mode, with credentials carrying exactly
//! the permissions HQ grants a session (behaviour spec §3.4): the server id and the companies come
//! from the credentials, and eds asks NATS for nothing those permissions refuse.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::nats_jwt::JwtNats;
use common::*;
use std::path::Path;
use std::time::Duration;

const C: &str = "6287a4154d1a72cc5ce091bb";
const D: &str = "5f2a1b3c4d5e6f708192a3b4";
const SERVER_ID: &str = "0d6f1c52-7a43-4f8e-9b1e-2c3d4e5f6a7b";
const SESSION: &str = "4641e7c5-0f86-4576-89ca-15db401aea56";

/// The file destination's files under `dir`: (table/name, bytes), sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(dir).into_iter().flatten() {
        let t = t.unwrap().path();
        for f in std::fs::read_dir(&t).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                out.push((p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The file `event(key, n)` becomes.
fn file_of(key: &str, n: u64) -> String {
    format!("order/{}-{key}.json", 1_795_749_176u64 + n / 1000)
}

fn server_args(data: &Path, nats: &JwtNats, creds: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["server", "-d", data.to_str().unwrap(), "--server", &nats.url(), "--port", "0"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(["--creds".to_owned(), creds.to_str().unwrap().to_owned(), "-v".to_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// eds's log lines that tell of a refused permission.
fn refusals(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("Permissions Violation") || l.contains("permissions violation")).collect()
}

/// The test server really is in JWT mode and really enforces the session's permissions: the
/// session user may talk on its own session's subjects, not on another session's, and may not
/// read the stream's info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_enforces_exactly_the_session_permissions() {
    let nats = JwtNats::start().await;
    nats.create_stream().await;
    let text = nats.session_creds(SERVER_ID, SESSION, &[C]);
    let parsed = eds::hq::creds::SessionCreds::parse(&text).unwrap();
    assert_eq!(
        (parsed.server_id.as_str(), parsed.company_ids.as_slice(), parsed.session_id.as_deref()),
        (SERVER_ID, [C.to_owned()].as_slice(), Some(SESSION))
    );

    let (tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_credentials(&text)
        .unwrap()
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    let other = "9b1e2c3d-0000-4f8e-9b1e-2c3d4e5f6a7b";
    // Allowed: nothing comes back.
    client.publish(format!("eds.client.{SESSION}.heartbeat"), "ok".into()).await.unwrap();
    let _own = client.subscribe(format!("eds.notify.{SESSION}.>")).await.unwrap();
    client.flush().await.unwrap();
    // Refused, one after the other so each error is known by its subject.
    client.publish(format!("eds.client.{other}.heartbeat"), "no".into()).await.unwrap();
    client.flush().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), errors.recv()).await.unwrap().unwrap();
    assert!(e.contains("Permissions Violation for Publish") && e.contains(other), "{e}");
    let _theirs = client.subscribe(format!("eds.notify.{other}.>")).await.unwrap();
    client.flush().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), errors.recv()).await.unwrap().unwrap();
    assert!(e.contains("Permissions Violation for Subscription") && e.contains(other), "{e}");
    // The stream's info is not for a session (eds must not ask for it).
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream_no_info("dbchange").await.unwrap();
    assert!(stream.get_info().await.is_err());
    let e = tokio::time::timeout(Duration::from_secs(10), errors.recv()).await.unwrap().unwrap();
    assert!(e.contains("$JS.API.STREAM.INFO.dbchange"), "{e}");
    // Events of another company cannot be subscribed to either.
    let _d = client.subscribe(format!("dbchange.*.*.{D}.*.PUBLIC.>")).await.unwrap();
    client.flush().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), errors.recv()).await.unwrap().unwrap();
    assert!(e.contains("Permissions Violation for Subscription") && e.contains(D), "{e}");
    assert!(errors.try_recv().is_err(), "the allowed subjects were refused");
    // The server logs them as the eds test below looks for them.
    eventually("the violations in the server's log", Duration::from_secs(10), || async {
        (nats.violations().len() >= 4).then_some(())
    })
    .await;
}

/// eds with HQ's session credentials for company C: the server id and the company filter come
/// from the credentials, exactly C's events reach the destination (D's, published in between,
/// never), nothing eds does is refused, and a restart resumes the same durable consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_consumes_exactly_its_companies_within_the_session_permissions() {
    let nats = JwtNats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let creds = data.path().join("session.creds");
    std::fs::write(&creds, nats.session_creds(SERVER_ID, SESSION, &[C])).unwrap();
    let out = data.path().join("out");
    let url = format!("file://{}", out.display());
    let durable = format!("eds-{SERVER_ID}");

    let mut mine = Vec::new();
    for n in 0..40u64 {
        let company = if n % 2 == 0 { C } else { D };
        publish(&js, subject("order", "UPDATE", company), event(&format!("k{n}"), n)).await;
        if company == C {
            mine.push(n);
        }
    }
    let eds = Eds::start_args(&server_args(data.path(), &nats, &creds, &["--restart", "--url", &url]));
    // The last event of the stream is C's: once it is there, every D event before it was passed over.
    let last = publish(&js, subject("order", "UPDATE", C), event("k40", 40)).await;
    mine.push(40);
    eds.wait_stored(last, Duration::from_secs(30)).await;
    wait::until(&eds, "every C event in a file", Duration::from_secs(30), || async {
        (files(&out).len() >= mine.len()).then_some(())
    })
    .await;
    let status = wait::status(&eds).await;
    assert_eq!(status["ingest"]["state"], "running", "{status}");
    assert_eq!(status["ingest"]["received"], mine.len(), "{status}");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(refusals(&log).is_empty(), "eds was refused something:\n{log}");
    assert!(log.contains("do not allow reading the stream's info"), "the degraded check is announced:\n{log}");

    let got: Vec<String> = files(&out).into_iter().map(|(name, _)| name).collect();
    let mut want: Vec<String> = mine.iter().map(|n| file_of(&format!("k{n}"), *n)).collect();
    want.sort();
    assert_eq!(got, want, "exactly C's events");
    for (name, body) in files(&out) {
        let n: u64 = name.rsplit_once("-k").unwrap().1.trim_end_matches(".json").parse().unwrap();
        assert_eq!(body, event(&format!("k{n}"), n), "{name}");
    }
    let stream = js.get_stream("dbchange").await.unwrap();
    let info = stream.consumer_info(&durable).await.unwrap();
    assert_eq!(info.config.filter_subject, format!("dbchange.*.*.{C}.*.PUBLIC.>"));
    assert_eq!((info.num_ack_pending, info.ack_floor.stream_sequence), (0, last));

    // A restart resumes the same durable: nothing replayed, new C events delivered, D's not.
    let eds = Eds::start_args(&server_args(data.path(), &nats, &creds, &["--url", &url]));
    let mut seq = 0;
    for n in 41..50u64 {
        let company = if n % 2 == 0 { C } else { D };
        seq = publish(&js, subject("order", "UPDATE", company), event(&format!("k{n}"), n)).await;
        if company == C {
            mine.push(n);
        }
    }
    let last = publish(&js, subject("order", "UPDATE", C), event("k50", 50)).await;
    assert!(last > seq);
    mine.push(50);
    eds.wait_stored(last, Duration::from_secs(30)).await;
    wait::until(&eds, "the new C events in files", Duration::from_secs(30), || async {
        (files(&out).len() >= mine.len()).then_some(())
    })
    .await;
    let status = wait::status(&eds).await;
    assert_eq!(status["ingest"]["received"], 5, "only the new C events, nothing replayed: {status}");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(refusals(&log).is_empty(), "eds was refused something:\n{log}");
    let mut want: Vec<String> = mine.iter().map(|n| file_of(&format!("k{n}"), *n)).collect();
    want.sort();
    assert_eq!(files(&out).into_iter().map(|(name, _)| name).collect::<Vec<_>>(), want);
    let mut names = js.get_stream("dbchange").await.unwrap().consumer_names();
    let mut consumers = Vec::new();
    while let Some(name) = futures_util::StreamExt::next(&mut names).await {
        consumers.push(name.unwrap());
    }
    assert_eq!(consumers, std::slice::from_ref(&durable), "one durable, the same across the restart");
    let info = js.get_stream("dbchange").await.unwrap().consumer_info(&durable).await.unwrap();
    assert_eq!((info.num_ack_pending, info.ack_floor.stream_sequence), (0, last));
    let wal: Vec<u64> = wal_envelopes(data.path()).iter().map(|e| e.0).collect();
    assert_eq!(wal.len(), mine.len(), "each C event once in the WAL");
    assert!(nats.violations().is_empty(), "the server refused something:\n{}", nats.violations().join("\n"));
}

/// Without stream info, a recreated stream is still recognised (by the consumer eds creates
/// after its last stored sequence), and accepting it works as with full permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_is_recognised_without_reading_the_streams_info() {
    let nats = JwtNats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let creds = data.path().join("session.creds");
    std::fs::write(&creds, nats.session_creds(SERVER_ID, SESSION, &[C])).unwrap();
    for n in 0..5u64 {
        publish(&js, subject("order", "UPDATE", C), event("k", n)).await;
    }
    let eds = Eds::start_args(&server_args(data.path(), &nats, &creds, &["--restart"]));
    eds.wait_stored(5, Duration::from_secs(20)).await;
    assert_eq!(eds.stop(), 0);
    js.delete_stream("dbchange").await.unwrap();
    let js = nats.create_stream().await;
    for n in 0..3u64 {
        publish(&js, subject("order", "UPDATE", C), event("new", n)).await;
    }

    let eds = Eds::start_args(&server_args(data.path(), &nats, &creds, &[]));
    let status = wait::until(&eds, "ingest to stop on the reset", Duration::from_secs(20), || async {
        let s = wait::status(&eds).await;
        (s["ingest"]["state"] == "stream_reset").then_some(s)
    })
    .await;
    let err = status["ingest"]["last_error"].as_str().unwrap();
    assert!(err.contains("recreated") && err.contains("--accept-stream-reset 5"), "{err}");
    assert_eq!(status["ingest"]["stream_sequence"], 5, "nothing of the new stream was taken: {status}");
    assert_eq!(eds.stop(), 0);
    let stream = js.get_stream("dbchange").await.unwrap();
    assert!(stream.consumer_info(format!("eds-{SERVER_ID}")).await.is_err(), "the misplaced consumer is gone");

    let eds = Eds::start_args(&server_args(data.path(), &nats, &creds, &["--accept-stream-reset", "5"]));
    // Five old events, the reset marker, three new ones.
    wait::until(&eds, "the new stream's messages stored", Duration::from_secs(20), || async {
        (wait::status(&eds).await["wal"]["durable_lsn"] == 9).then_some(())
    })
    .await;
    assert_eq!(wait::status(&eds).await["ingest"]["stream_sequence"], 3);
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    let kinds: Vec<(u64, u8)> = wal_envelopes(data.path()).iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(kinds, [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (0, 4), (1, 1), (2, 1), (3, 1)]);
    assert!(nats.violations().is_empty(), "the server refused something:\n{}", nats.violations().join("\n"));
}

/// `--companyIds` may narrow the credentials' companies, never widen them; the server id comes
/// from the credentials when `--eds-id` is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn company_ids_only_narrow_the_credentials() {
    let nats = JwtNats::start().await;
    let js = nats.create_stream().await;
    let data = tempfile::tempdir().unwrap();
    let creds = data.path().join("session.creds");
    std::fs::write(&creds, nats.session_creds(SERVER_ID, SESSION, &[C, D])).unwrap();
    let other = "0123456789abcdef01234567";
    let out = std::process::Command::new(eds_bin())
        .args(server_args(data.path(), &nats, &creds, &["--companyIds", &format!("{C},{other}")]))
        .env_remove("PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("provided company ID {other} not in credentials")), "{err}");
    std::fs::write(data.path().join("broken.creds"), "-----BEGIN NATS USER JWT-----\nx.y\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\nSUAX\n------END USER NKEY SEED------\n").unwrap();
    let out = std::process::Command::new(eds_bin())
        .args(server_args(data.path(), &nats, &data.path().join("broken.creds"), &[]))
        .env_remove("PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.creds") && err.contains("malformed"), "{err}");

    // Narrowed to D: only D's events, on the durable named after the credentials' server.
    let eds = Eds::start_args(&server_args(data.path(), &nats, &creds, &["--restart", "--companyIds", D]));
    publish(&js, subject("order", "UPDATE", C), event("c", 1)).await;
    let last = publish(&js, subject("order", "UPDATE", D), event("d", 2)).await;
    eds.wait_stored(last, Duration::from_secs(20)).await;
    assert_eq!(wait::status(&eds).await["ingest"]["received"], 1);
    assert_eq!(eds.stop(), 0);
    let info = js.get_stream("dbchange").await.unwrap().consumer_info(format!("eds-{SERVER_ID}")).await.unwrap();
    assert_eq!(info.config.filter_subject, format!("dbchange.*.*.{D}.*.PUBLIC.>"));
}
