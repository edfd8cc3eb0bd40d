//! `eds server` under Shopmonkey HQ, against the HQ double (tests/common/hq_session.rs) and a
//! JWT-mode nats-server whose session users carry exactly HQ's permissions: the session start,
//! ingest with the issued credentials, heartbeats, every notification action with its exact
//! answer, renewal, the 409 wait, the enrollment prompt, and the end of the session with its
//! log upload.

#![allow(clippy::unwrap_used)]
use crate::common;

use common::hq_session::HqSession;
use common::nats_jwt::JwtNats;
use common::{eds_bin, eventually, wal_envelopes, Eds};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const SERVER: &str = "5e7e7000-0000-4000-8000-00000000abcd";
const COMPANY: &str = "c0ffee00-0000-4000-8000-000000000001";
const OTHER: &str = "0dd0dd00-0000-4000-8000-000000000002";
const WAIT: Duration = Duration::from_secs(30);

async fn setup() -> (Arc<JwtNats>, async_nats::jetstream::Context, HqSession) {
    let nats = Arc::new(JwtNats::start().await);
    let js = nats.create_stream().await;
    let issuer = nats.clone();
    let hq = HqSession::start(Arc::new(move |sid: &str| issuer.session_creds(SERVER, sid, &[COMPANY]))).await;
    (nats, js, hq)
}

fn args(data: &Path, nats: &JwtNats, extra: &[&str]) -> Vec<String> {
    args_on(data, nats, 0, extra)
}

/// `eds server` flags with the HTTP server on `port` (a supervised worker that restarts binds
/// it again).
fn args_on(data: &Path, nats: &JwtNats, port: u16, extra: &[&str]) -> Vec<String> {
    let port = port.to_string();
    let mut a: Vec<String> = ["server", "-d", data.to_str().unwrap(), "--server", &nats.url(), "--port", &port, "-v"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn event(company: &str, id: &str) -> (String, Vec<u8>) {
    let subject = format!("dbchange.order.INSERT.{company}.loc1.PUBLIC.2");
    let body = json!({"id": id, "operation": "INSERT", "table": "order", "key": [id], "modelVersion": "fff000111",
                      "companyId": company, "locationId": "loc1", "timestamp": 1_700_000_000_000u64,
                      "after": {"id": id, "name": "n"}});
    (subject, body.to_string().into_bytes())
}

/// The next message on `sub` within the deadline, decoded from msgpack when it says so.
async fn next(sub: &mut async_nats::Subscriber, what: &str) -> (async_nats::Message, Value) {
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
    let msgpack = msg.headers.as_ref().and_then(|h| h.get("content-encoding")).is_some_and(|v| v.as_str() == "msgpack");
    let value = if msgpack {
        let mut bytes = &msg.payload[..];
        eds::hq::wire::from_msgpack(&rmpv::decode::read_value(&mut bytes).unwrap())
    } else {
        serde_json::from_slice(&msg.payload).unwrap_or(Value::Null)
    };
    (msg, value)
}

/// Sends a notification as HQ does (JSON, unless `encoding` says otherwise).
async fn notify(client: &async_nats::Client, sid: &str, action: &str, data: Value) {
    let body = json!({"action": action, "data": data}).to_string();
    client.publish(format!("eds.notify.{sid}.{action}"), body.into()).await.unwrap();
    client.flush().await.unwrap();
}

/// Waits until the server listens to its session's notifications, pinging until a pong comes
/// back: a notification sent before its subscription is live is lost (as it would be from HQ).
async fn listening(admin: &async_nats::Client, sid: &str) {
    let inbox = format!("_INBOX.ready.{sid}");
    let mut pongs = admin.subscribe(inbox.clone()).await.unwrap();
    admin.flush().await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        notify(admin, sid, "ping", json!({"subject": inbox})).await;
        if tokio::time::timeout(Duration::from_millis(250), pongs.next()).await.is_ok() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "session {sid}'s notifications were never listened to");
    }
}

async fn ask(client: &async_nats::Client, sid: &str, action: &str, data: Value) -> Value {
    let body = json!({"action": action, "data": data}).to_string();
    let reply = tokio::time::timeout(WAIT, client.request(format!("eds.notify.{sid}.{action}"), body.into()))
        .await
        .unwrap_or_else(|_| panic!("no reply to {action}"))
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn config_toml(data: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(data.join("config.toml")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ingests_with_its_credentials_heartbeats_and_answers_every_notification() {
    let (nats, js, hq) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    // The key and the server id come from config.toml; the API URL from the key's issuer.
    std::fs::write(
        data.path().join("config.toml"),
        format!("token = \"{}\"\nserver_id = \"{SERVER}\"\nmine = \"kept\"\n", hq.token),
    )
    .unwrap();
    let url = format!("file://{}", out.path().display());
    let mut eds =
        Eds::start_args(&args(data.path(), &nats, &["--no-restart", "--url", &url, "--heartbeat-interval", "1s"]));
    let sid = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;

    // The session request, as §3.2 has it.
    let start = hq.requests("POST", "/v3/eds/internal").pop().unwrap();
    let body = start.json();
    assert_eq!(body["serverId"], SERVER, "{body}");
    assert_eq!(body["version"], eds_version());
    assert_eq!(body["driver"]["id"], "file");
    assert_eq!(body["machineId"].as_str().unwrap().len(), 64);
    assert!(body["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{body}");
    assert!(body["osinfo"]["host"]["kernelVersion"].as_str().is_some_and(|k| !k.is_empty()), "{body}");

    let admin = nats.admin().await;
    let mut client = admin.subscribe(format!("eds.client.{sid}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &sid).await;

    // Ingest with the session's credentials: this company's events only.
    for (i, company) in [COMPANY, OTHER, COMPANY].into_iter().enumerate() {
        let (subject, payload) = event(company, &format!("o{i}"));
        js.publish(subject, payload.into()).await.unwrap().await.unwrap();
    }
    eds.wait_stored(3, WAIT).await;

    // A heartbeat with EDS's fields and the real figures.
    let heartbeat = loop {
        let (msg, v) = next(&mut client, "a heartbeat").await;
        if msg.subject.as_str() == format!("eds.client.{sid}.heartbeat") && v["stats"]["metrics"]["totalEvents"] == 2 {
            let h = msg.headers.unwrap();
            assert!(h.get("Nats-Msg-Id").is_some_and(|id| id.as_str().len() == 36));
            break v;
        }
    };
    assert_eq!(heartbeat["sessionId"], sid.as_str());
    assert!(heartbeat["offset"].as_u64().is_some() && heartbeat["uptime"].as_u64().is_some(), "{heartbeat}");
    assert!(heartbeat["stats"]["metrics"]["pendingEvents"].as_i64().is_some(), "{heartbeat}");
    assert!(heartbeat["stats"]["memory"]["total"].as_u64().unwrap() > 0, "{heartbeat}");
    assert!(heartbeat["stats"]["load"]["load1"].as_f64().is_some(), "{heartbeat}");
    assert_eq!(heartbeat["wal"]["durableLsn"], 2, "{heartbeat}");
    assert!(heartbeat["destinations"][0]["name"].as_str().is_some(), "{heartbeat}");
    assert!(heartbeat.get("paused").is_none());
    let status = eds.status().await;
    assert_eq!(status["session"]["id"], sid.as_str(), "{status}");
    assert!(status["session"]["last_heartbeat"].is_string(), "{status}");

    // ping, in each of HQ's encodings.
    let mut pong = admin.subscribe("_INBOX.pong").await.unwrap();
    admin.flush().await.unwrap();
    notify(&admin, &sid, "ping", json!({"subject": "_INBOX.pong"})).await;
    let packed = eds::hq::wire::encode(&eds::hq::wire::to_msgpack(
        &json!({"action": "ping", "data": {"subject": "_INBOX.pong"}}),
    ));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("content-encoding", "msgpack");
    admin.publish_with_headers(format!("eds.notify.{sid}.ping"), headers, packed.into()).await.unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json!({"action": "ping", "data": {"subject": "_INBOX.pong"}}).to_string().as_bytes()).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("content-encoding", "gzip/json");
    admin.publish_with_headers(format!("eds.notify.{sid}.ping"), headers, gz.finish().unwrap().into()).await.unwrap();
    for n in 0..3 {
        let m = tokio::time::timeout(WAIT, pong.next()).await.unwrap_or_else(|_| panic!("pong {n}")).unwrap();
        assert_eq!(&m.payload[..], b"pong");
    }

    // Bad input never takes the server down: garbage, a missing action, a bad encoding.
    admin.publish(format!("eds.notify.{sid}.x"), "\u{0}not json".into()).await.unwrap();
    notify(&admin, &sid, "frobnicate", json!(null)).await;
    notify(&admin, &sid, "ping", json!({"subject": 12})).await;

    // pause / unpause: delivery held, the heartbeat says since when.
    notify(&admin, &sid, "pause", json!({})).await;
    let (_, r) = expect(&mut client, &sid, "pause-response").await;
    assert_eq!(r, json!({"success": true, "sessionId": sid, "action": "pause"}));
    eventually("destinations paused", WAIT, || async {
        (eds.status().await["destinations"][0]["paused"] == true).then_some(())
    })
    .await;
    let paused = loop {
        let (msg, v) = next(&mut client, "a paused heartbeat").await;
        if msg.subject.ends_with(".heartbeat") && msg.payload.windows(2).any(|w| w == [0xd7, 0xff]) {
            break v;
        }
    };
    assert!(paused.get("paused").is_some(), "{paused}");
    notify(&admin, &sid, "unpause", json!({})).await;
    let (_, r) = expect(&mut client, &sid, "unpause-response").await;
    assert_eq!(r["success"], true);

    // driverconfig and validate answer with JSON replies.
    let drivers = ask(&admin, &sid, "driverconfig", json!({})).await;
    assert_eq!(drivers["sessionId"], sid.as_str());
    assert!(drivers["drivers"]["file"]["metadata"]["exampleURL"].is_string(), "{drivers}");
    let ok = ask(&admin, &sid, "validate", json!({"driver": "postgres", "config": {"Database": "d", "Hostname": "h", "Username": "u", "Password": "p@ss"}})).await;
    assert_eq!(ok, json!({"success": true, "sessionId": sid, "url": "postgres://u:p%40ss@h:5432/d"}));
    let bad = ask(&admin, &sid, "validate", json!({"driver": "postgres", "config": {}})).await;
    assert_eq!(bad["success"], false);
    assert!(bad["messsage"].is_string() && bad["field_errors"][0]["field"] == "Database", "{bad}");

    // configure checks the destination and keeps it in config.toml (other keys kept).
    let other = tempfile::tempdir().unwrap();
    let new_url = format!("file://{}", other.path().display());
    let configured = ask(&admin, &sid, "configure", json!({"url": new_url, "backfill": false})).await;
    assert_eq!(configured["success"], true, "{configured}");
    assert_eq!(configured["backfill"], false);
    assert!(configured["maskedURL"].is_string(), "{configured}");
    let config = config_toml(data.path());
    assert_eq!(config["url"].as_str(), Some(new_url.as_str()));
    assert_eq!(config["mine"].as_str(), Some("kept"));
    let refused = ask(&admin, &sid, "configure", json!({"url": "bogus://x"})).await;
    assert_eq!(refused["success"], false, "{refused}");

    // upgrade without a version is refused in its status.
    notify(&admin, &sid, "upgrade", json!({})).await;
    let (_, r) = expect(&mut client, &sid, "upgrade-status").await;
    assert_eq!(r["success"], false, "{r}");

    // sendlogs: the log so far goes to HQ, gzipped; its path comes back.
    notify(&admin, &sid, "sendlogs", json!({})).await;
    let (_, r) = expect(&mut client, &sid, "sendlogs-response").await;
    let path = r["path"].as_str().unwrap().to_owned();
    assert!(path.starts_with(&format!("/upload/{sid}/")), "{r}");
    let uploads = hq.uploads();
    let (_, log) = uploads.iter().find(|(p, _)| *p == path).unwrap();
    let first: Value = serde_json::from_slice(log.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert!(first["timestamp"].is_string() && first["severity"].is_string(), "{first}");

    let metrics = eds.get("/metrics").await.1;
    // Three encodings, a bad one, and those that waited for the subscription.
    let pings: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("eds_hq_notifications_total{action=\"ping\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(pings >= 5, "{metrics}");
    assert!(metrics.contains("eds_hq_notifications_total{action=\"unknown\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("eds_hq_heartbeats_total ") && !l.ends_with(" 0")), "{metrics}");

    // shutdown (deleted): the server forgets its id, ends the session and uploads its last log.
    notify(&admin, &sid, "shutdown", json!({"message": "bye", "deleted": "true"})).await;
    let (status, log) = tokio::task::spawn_blocking(move || {
        let status = eds.child.wait().unwrap();
        let mut log = Vec::new();
        while let Ok(line) = eds.lines.recv_timeout(Duration::from_secs(10)) {
            log.push(line);
        }
        (status, log.join("\n"))
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    // Secrets never reach the log: the API key, the credential's seed, the upload signature.
    assert!(log.contains("HQ session ended"), "{log}");
    let creds = hq.book.lock().unwrap().credentials[0].clone();
    let seed = creds.lines().find(|l| l.starts_with("SU")).unwrap().to_owned();
    for secret in [hq.token.as_str(), seed.as_str(), "s3cr3t"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert_eq!(hq.ended(), vec![(sid.clone(), false)]);
    assert!(hq.uploads().iter().any(|(p, body)| p == &format!("/upload/{sid}/final.gz") && !body.is_empty()));
    assert_eq!(config_toml(data.path())["server_id"].as_str(), Some(""));
    assert_eq!(wal_envelopes(data.path()).iter().map(|e| e.0).collect::<Vec<_>>(), [1, 3]);
    assert!(nats.violations().is_empty(), "{:?}", nats.violations());
}

/// The next `eds.client.<sid>.<suffix>` message, skipping heartbeats and others.
async fn expect(sub: &mut async_nats::Subscriber, sid: &str, suffix: &str) -> (async_nats::Message, Value) {
    let subject = format!("eds.client.{sid}.{suffix}");
    loop {
        let (msg, v) = next(sub, &subject).await;
        if msg.subject.as_str() == subject {
            let h = msg.headers.as_ref().unwrap();
            assert_eq!(h.get("content-encoding").map(|v| v.as_str()), Some("msgpack"));
            return (msg, v);
        }
    }
}

fn eds_version() -> String {
    let out = Command::new(eds_bin()).arg("version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_is_waited_for_and_renewal_keeps_ingesting() {
    let (nats, js, hq) = setup().await;
    hq.book.lock().unwrap().conflicts = 2;
    let data = tempfile::tempdir().unwrap();
    let extra = [
        "--no-restart",
        "--api-key",
        &hq.token,
        "--eds-id",
        SERVER,
        "--session-conflict-retry",
        "100ms",
        "--renew-interval",
        "2s",
        "--log-upload-interval",
        "500ms",
    ];
    let eds = Eds::start_args(&args(data.path(), &nats, &extra));
    let first = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    assert_eq!(hq.requests("POST", "/v3/eds/internal").len(), 3, "two 409s, then the session");
    let second = eventually("a renewed session", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    assert_ne!(first, second);
    assert_eq!(hq.ended().first(), Some(&(first.clone(), false)));
    // The periodic upload ran within the first session, and its last log went at its end.
    let uploads: Vec<String> = hq.uploads().into_iter().map(|(p, _)| p).collect();
    assert!(uploads.iter().any(|p| p.starts_with(&format!("/upload/{first}/log-"))), "{uploads:?}");
    assert!(uploads.contains(&format!("/upload/{first}/final.gz")), "{uploads:?}");
    eventually("the status to show the renewal", WAIT, || async {
        let s = eds.status().await;
        (s["session"]["id"] == second.as_str() && s["session"]["renewals"] == 1).then_some(())
    })
    .await;
    // The renewed session's credentials carry ingest on.
    let (subject, payload) = event(COMPANY, "after-renewal");
    js.publish(subject, payload.into()).await.unwrap().await.unwrap();
    eds.wait_stored(1, WAIT).await;
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(hq.ended().iter().any(|(id, errored)| !errored && id != &first), "{:?}", hq.ended());
    assert!(nats.violations().is_empty(), "{:?}", nats.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_an_id_asks_for_the_code_and_enrolls_into_its_data_dir() {
    let (nats, _js, hq) = setup().await;
    hq.book.lock().unwrap().codes.insert("Lcode1".into(), (hq.token.clone(), SERVER.into()));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere");
    let extra = ["--no-restart", "--api-key", &hq.token, "--api-url", &hq.url];
    let mut child = Command::new(eds_bin())
        .args(args(&data, &nats, &extra))
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Lnope\nLcode1\n").unwrap();
    eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    // Written where --data-dir says (EDS wrote into ./data).
    let config = config_toml(&data);
    assert_eq!(config["server_id"].as_str(), Some(SERVER));
    assert!(!dir.path().join("data").exists());
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("Enter one-time enrollment code") && log.contains("invalid enrollment code"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hqs_restart_makes_the_supervisor_start_a_new_worker_and_session() {
    let (nats, _js, hq) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let a = args_on(data.path(), &nats, common::free_port(), &["--api-key", &hq.token, "--eds-id", SERVER]);
    let eds = Eds::start_args(&a);
    let first = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    let admin = nats.admin().await;
    let mut client = admin.subscribe(format!("eds.client.{first}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &first).await;
    notify(&admin, &first, "restart", json!({})).await;
    let (_, status) = expect(&mut client, &first, "restart-status").await;
    assert_eq!(status, json!({"success": true, "message": "", "sessionId": first, "action": "restart"}));
    let (_, response) = expect(&mut client, &first, "restart-response").await;
    assert_eq!(response["success"], true);
    let second = eventually("a new session", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    assert_ne!(first, second);
    assert_eq!(hq.ended().first(), Some(&(first, false)));
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("worker asked to be started again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_hq_is_verified_swapped_and_started_and_a_bad_signature_changes_nothing() {
    use common::release::{key, sign, tar_gz};
    use pgp::composed::ArmorOptions;
    use std::os::unix::fs::MetadataExt;
    let (nats, _js, hq) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // The server runs from a copy (the upgrade replaces the file it runs from).
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("eds");
    std::fs::copy(eds_bin(), &exe).unwrap();
    let before = std::fs::metadata(&exe).unwrap().ino();
    // The release: an `eds` that runs this build (so its `version` is right and the supervisor
    // can start it), signed with a key made here.
    let signer = key("Test Releases <releases@example.com>");
    let public = dir.path().join("release.asc");
    std::fs::write(&public, signer.to_public_key().to_armored_string(ArmorOptions::default()).unwrap()).unwrap();
    let script = format!("#!/bin/sh\nexec '{}' \"$@\"\n", eds_bin());
    let archive = tar_gz(&[("eds", script.as_bytes())]);
    let version = eds_version();
    let good = eds::upgrade::download::archive_url(&format!("{}/good", hq.url), &version).unwrap();
    let bad = eds::upgrade::download::archive_url(&format!("{}/bad", hq.url), &version).unwrap();
    {
        let mut book = hq.book.lock().unwrap();
        let path = |url: &str| url.strip_prefix(hq.url.as_str()).unwrap().to_owned();
        book.files.insert(path(&good), archive.clone());
        book.files.insert(format!("{}.sig", path(&good)), sign(&signer, &archive));
        book.files.insert(path(&bad), archive.clone());
        book.files.insert(format!("{}.sig", path(&bad)), sign(&key("Stranger <x@example.com>"), &archive));
    }

    // This machine may itself be a container: the probe looks at an empty root instead.
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let env =
        [("EDS_UPGRADE_PUBLIC_KEY_FILE", public.to_str().unwrap()), ("EDS_UPGRADE_PROBE_ROOT", root.to_str().unwrap())];
    let data = dir.path().join("data");
    let start = |release: &str| {
        let mut a = args(&data, &nats, &["--api-key", &hq.token, "--eds-id", SERVER, "--release-url", release]);
        a.insert(0, exe.to_str().unwrap().to_owned());
        a
    };
    // A bad signature: refused, nothing replaced, nothing restarted.
    let a = start(&format!("{}/bad", hq.url));
    let child = Eds::start_program(&a[0], &a[1..], &env);
    let sid = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    let admin = nats.admin().await;
    let mut client = admin.subscribe(format!("eds.client.{sid}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &sid).await;
    notify(&admin, &sid, "upgrade", json!({"version": version})).await;
    let (_, status) = expect(&mut client, &sid, "upgrade-status").await;
    assert_eq!(status["success"], true, "{status}");
    let (_, response) = expect(&mut client, &sid, "upgrade-response").await;
    assert_eq!(response["success"], false, "{response}");
    assert!(response["message"].as_str().unwrap().contains("signature"), "{response}");
    assert_eq!(std::fs::metadata(&exe).unwrap().ino(), before, "a refused release replaced the program");
    assert_eq!(hq.sessions().len(), 1);
    assert_eq!(child.stop(), 0);

    // A good one: installed in place of the program, and the supervisor starts it.
    let a = start(&format!("{}/good", hq.url));
    let child = Eds::start_program(&a[0], &a[1..], &env);
    let sid = eventually("a second session", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    let mut client = admin.subscribe(format!("eds.client.{sid}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &sid).await;
    notify(&admin, &sid, "upgrade", json!({"version": format!("v{version}")})).await;
    let (_, response) = expect(&mut client, &sid, "upgrade-response").await;
    assert_eq!(response, json!({"success": true, "sessionId": sid, "version": format!("v{version}")}));
    assert_eq!(std::fs::read(&exe).unwrap(), script.as_bytes());
    assert_eq!(std::fs::metadata(&exe).unwrap().mode() & 0o777, 0o755);
    eventually("the upgraded worker's session", WAIT, || async { hq.sessions().get(2).cloned() }).await;
    assert!(hq.ended().contains(&(sid, false)), "{:?}", hq.ended());
    let (code, log) = child.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("upgraded: the new version starts now") && log.contains("worker asked to be started again"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_then_import_applies_the_destination_through_a_restart() {
    let (nats, _js, hq) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = args_on(data.path(), &nats, common::free_port(), &["--api-key", &hq.token, "--eds-id", SERVER]);
    // No destination yet: the session says so (no `driver`).
    let eds = Eds::start_args(&a);
    let first = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    assert!(hq.requests("POST", "/v3/eds/internal")[0].json().get("driver").is_none());
    let admin = nats.admin().await;
    let mut client = admin.subscribe(format!("eds.client.{first}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &first).await;

    // import before configure: refused, nothing restarts.
    notify(&admin, &first, "import", json!({"backfill": false})).await;
    let (_, r) = expect(&mut client, &first, "import-response").await;
    assert_eq!(r["success"], false, "{r}");

    let url = format!("file://{}", out.path().display());
    let answer =
        ask(&admin, &first, "configure", json!({"url": url, "backfill": true, "updateStrategy": "after"})).await;
    assert_eq!(answer["success"], true, "{answer}");
    // The configured destination does not run in this worker yet: the import loads it anyway.
    let file = hq.export_file(EXPORT_FILE, &export_rows());
    hq.set_export(json!({"order": {"status": "Completed", "urls": [file]}}));
    notify(&admin, &first, "import", json!({"backfill": true})).await;
    let (_, status) = expect(&mut client, &first, "import-status").await;
    assert_eq!(status["success"], true);
    let (_, r) = expect(&mut client, &first, "import-response").await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["sessionId"], first.as_str());
    let loaded = event_ids(out.path());
    assert_eq!(loaded.len(), 3, "one file per exported row: {loaded:?}");

    // The new worker runs with the configured destination.
    eventually("a new session", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    let second = hq.requests("POST", "/v3/eds/internal").pop().unwrap().json();
    assert_eq!(second["driver"]["id"], "file", "{second}");
    let config = config_toml(data.path());
    assert_eq!(config["url"].as_str(), Some(url.as_str()));
    assert_eq!(config["update_strategy"].as_str(), Some("after"));
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
}

/// The export file of the import tests: `order` as of 2026-12-01T12:00:00Z ([`EXPORT_MS`]).
const EXPORT_FILE: &str = "202612011200000000000000000000001-c7-1-651-0-order-1.ndjson.gz";
/// 2026-12-01T12:00:00Z in unix milliseconds.
const EXPORT_MS: i64 = 1_796_126_400_000;
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The exported `order` rows: o1, o2, o3 named `export N`.
fn export_rows() -> Vec<String> {
    (1..=3)
        .map(|i| {
            json!({"id": format!("o{i}"), "name": format!("export {i}"), "updatedDate": "2026-12-01T11:00:00.000Z"})
                .to_string()
        })
        .collect()
}

/// A change of `order` row `id` to `name` at `ts` (unix ms); its event id is `ev-<id>-<name>`.
fn change(op: &str, id: &str, name: &str, ts: i64) -> (String, Vec<u8>) {
    let subject = format!("dbchange.order.{op}.{COMPANY}.loc1.PUBLIC.2");
    let mut body = json!({"id": format!("ev-{id}-{name}"), "operation": op, "table": "order", "key": [id],
        "modelVersion": "fff000111", "companyId": COMPANY, "locationId": "loc1", "timestamp": ts,
        "mvccTimestamp": format!("{ts}000000.0000000000"), "after": {"id": id, "name": name}});
    if op == "UPDATE" {
        body["diff"] = json!(["name"]);
    }
    (subject, body.to_string().into_bytes())
}

/// The event ids (`id`, or the imported row's `after.id`) in the files below `dir`, sorted.
fn event_ids(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let id = if v["imported"] == true { &v["after"]["id"] } else { &v["id"] };
                out.push(id.as_str().unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// A PostgreSQL schema of the test's own; its destination URL (destination `pg`).
async fn pg_schema() -> (String, String) {
    use sqlx::{Connection, Executor};
    let schema = format!("hqimport_{}", common::unique_suffix());
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    admin.execute(format!("CREATE SCHEMA \"{schema}\"").as_str()).await.unwrap();
    (schema.clone(), format!("{PG}?name=pg&options=-c%20search_path%3D{schema}"))
}

/// The `order` rows of `schema` (id → name); none while the table does not exist.
async fn pg_orders(schema: &str) -> Option<std::collections::BTreeMap<String, String>> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(PG).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SELECT id, name FROM \"{schema}\".\"order\"")).fetch_all(&mut admin).await.ok()?;
    Some(rows.into_iter().collect())
}

fn pg_status(status: &Value) -> Value {
    status["destinations"].as_array().unwrap().iter().find(|d| d["name"] == "pg").cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hqs_import_loads_postgres_inside_the_running_server_and_streaming_takes_over_where_it_ends() {
    let (nats, js, hq) = setup().await;
    let (schema, pg) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = format!("file://{}", out.path().display());
    let a = args_on(
        data.path(),
        &nats,
        common::free_port(),
        &["--api-key", &hq.token, "--eds-id", SERVER, "--url", &pg, "--url", &files],
    );
    let eds = Eds::start_args(&a);
    let first = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    let admin = nats.admin().await;
    let mut client = admin.subscribe(format!("eds.client.{first}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &first).await;

    // Streamed before the import: the import drops the table, and the export does not hold it.
    let hour = 3_600_000;
    let (subject, body) = change("INSERT", "early", "early", EXPORT_MS - hour);
    js.publish(subject, body.into()).await.unwrap().await.unwrap();
    eventually("the early row in PostgreSQL", WAIT, || async {
        pg_orders(&schema).await.filter(|o| o.contains_key("early"))
    })
    .await;

    // HQ configures PostgreSQL (one of the two destinations this server runs), then imports.
    let answer = ask(&admin, &first, "configure", json!({"url": pg, "backfill": true})).await;
    assert_eq!(answer["success"], true, "{answer}");
    let file = hq.export_file(EXPORT_FILE, &export_rows());
    hq.set_export(json!({"order": {"status": "Completed", "urls": [file]}}));
    notify(&admin, &first, "import", json!({"backfill": true})).await;
    let (_, status) = expect(&mut client, &first, "import-status").await;
    assert_eq!(status["success"], true, "{status}");
    let (_, r) = expect(&mut client, &first, "import-response").await;
    assert_eq!(r["success"], true, "{r}");
    assert!(r.get("message").is_none(), "{r}");
    assert_eq!(hq.book.lock().unwrap().exports_created.len(), 1);
    let loaded = pg_orders(&schema).await.unwrap();
    let export: std::collections::BTreeMap<String, String> =
        (1..=3).map(|i| (format!("o{i}"), format!("export {i}"))).collect();
    assert_eq!(loaded, export, "exactly the export's rows (the table was dropped and loaded)");

    // The worker restarts; changes published now reach it: PostgreSQL skips those older than
    // the export (it holds them), the file destination gets every event.
    eventually("the next session", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    for (op, id, name, ts) in [
        ("UPDATE", "o1", "stale", EXPORT_MS - hour),
        ("INSERT", "late", "late", EXPORT_MS + hour),
        ("UPDATE", "o2", "changed", EXPORT_MS + hour),
    ] {
        let (subject, body) = change(op, id, name, ts);
        js.publish(subject, body.into()).await.unwrap().await.unwrap();
    }
    let orders = eventually("the changes after the export in PostgreSQL", Duration::from_secs(60), || async {
        pg_orders(&schema).await.filter(|o| o.contains_key("late") && o.get("o2").is_some_and(|n| n == "changed"))
    })
    .await;
    let mut expected = export.clone();
    expected.insert("o2".into(), "changed".into());
    expected.insert("late".into(), "late".into());
    assert_eq!(orders, expected, "the export plus the changes after it; the stale change skipped");
    let all = ["ev-early-early", "ev-late-late", "ev-o1-stale", "ev-o2-changed"];
    let got = eventually("every event in the file destination", WAIT, || async {
        let ids = event_ids(out.path());
        (ids.len() >= all.len()).then_some(ids)
    })
    .await;
    assert_eq!(got, all, "the file destination received every event, and no import");
    let pg_now = eventually("PostgreSQL delivering again", WAIT, || async {
        let d = pg_status(&eds.status().await);
        (d["delivered"] == 2).then_some(d)
    })
    .await;
    assert!(["delivering", "idle"].contains(&pg_now["state"].as_str().unwrap()), "{pg_now}");
    assert_eq!(
        (&pg_now["paused"], &pg_now["importing"], &pg_now["last_error"]),
        (&json!(false), &json!(false), &Value::Null)
    );
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("skipping events older than this destination's import"), "{log}");

    // The import's timestamps are the destination's own (and EDS's key).
    let tracker = eds::tracker::Tracker::open(data.path()).unwrap();
    let own = String::from_utf8(tracker.get("table-export:pg").unwrap().unwrap()).unwrap();
    assert_eq!(own, r#"[{"Table":"order","Timestamp":"2026-12-01T12:00:00Z"}]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_from_hq_says_why_and_a_second_one_meanwhile_is_refused() {
    let (nats, _js, hq) = setup().await;
    let (schema, pg) = pg_schema().await;
    let data = tempfile::tempdir().unwrap();
    // PostgreSQL is this server's only destination: the import's target without a configure.
    let a =
        args_on(data.path(), &nats, common::free_port(), &["--api-key", &hq.token, "--eds-id", SERVER, "--url", &pg]);
    let eds = Eds::start_args(&a);
    let first = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    let admin = nats.admin().await;
    let mut client = admin.subscribe(format!("eds.client.{first}.>")).await.unwrap();
    admin.flush().await.unwrap();
    listening(&admin, &first).await;

    hq.set_export(json!({"order": {"status": "Pending"}}));
    notify(&admin, &first, "import", json!({"backfill": "true"})).await;
    let (_, status) = expect(&mut client, &first, "import-status").await;
    assert_eq!(status["success"], true, "{status}");
    eventually("the export job", WAIT, || async { (!hq.requests("POST", "/v3/export/bulk").is_empty()).then_some(()) })
        .await;
    // The destination is held while the import runs.
    let held = pg_status(&eds.status().await);
    assert_eq!((&held["importing"], &held["state"]), (&json!(true), &json!("paused")), "{held}");

    notify(&admin, &first, "import", json!({"backfill": true})).await;
    let (_, status) = expect(&mut client, &first, "import-status").await;
    assert_eq!(status["success"], false, "{status}");
    let (_, r) = expect(&mut client, &first, "import-response").await;
    assert_eq!((&r["success"], &r["message"]), (&json!(false), &json!("an import is already running")), "{r}");

    hq.set_export(json!({"order": {"status": "Failed", "error": "boom"}}));
    let (_, r) = expect(&mut client, &first, "import-response").await;
    assert_eq!(r["success"], false, "a failed import is no success (EDS said it was): {r}");
    let message = r["message"].as_str().unwrap();
    assert!(message.contains("error exporting table order: boom"), "{r}");
    // Nothing was dropped or loaded; the restart releases the destination.
    assert_eq!(pg_orders(&schema).await, None);
    eventually("the next session", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    let released = eventually("PostgreSQL released", WAIT, || async {
        let d = pg_status(&eds.status().await);
        (d["importing"] == false && d["paused"] == false && d["state"] != "pausing").then_some(d)
    })
    .await;
    assert_eq!(released["last_error"], Value::Null, "{released}");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("the restart releases the destination's drain"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_exits_2_at_once_and_an_hq_out_of_reach_is_waited_for() {
    let (nats, _js, hq) = setup().await;
    let data = tempfile::tempdir().unwrap();
    // HQ refuses the key (401): not retried, by the worker nor by its supervisor.
    let wrong = format!("{}.d3Jvbmc", hq.token.rsplit_once('.').unwrap().0);
    let out = Command::new(eds_bin())
        .args(args(data.path(), &nats, &["--api-key", &wrong, "--eds-id", SERVER]))
        .env_remove("PORT")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("starting the HQ session") && log.contains("unauthorized"), "{log}");
    assert_eq!(log.matches("worker started").count(), 1, "{log}");

    // HQ out of reach: the server waits for it (EDS's bounded-retry client gave up, and so
    // would a supervisor counting failures), and starts the session once HQ answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let later = format!("http://{addr}");
    let key = common::hq_session::api_key(&later);
    let eds = Eds::start_args(&args(data.path(), &nats, &["--no-restart", "--api-key", &key, "--eds-id", SERVER]));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let line = eds.lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).unwrap();
        if line.contains("no HQ session yet") {
            break;
        }
    }
    let issuer = nats.clone();
    let hq = HqSession::start_on(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        Arc::new(move |sid: &str| issuer.session_creds(SERVER, sid, &[COMPANY])),
    );
    assert_eq!(hq.token, key);
    eventually("a session once HQ answers", WAIT, || async { hq.sessions().first().cloned() }).await;
    eventually("ingest running", WAIT, || async { (eds.status().await["ingest"]["state"] == "running").then_some(()) })
        .await;
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_log_reaches_hq_from_the_next_session() {
    let (nats, _js, hq) = setup().await;
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let a = args_on(data.path(), &nats, port, &["--api-key", &hq.token, "--eds-id", SERVER]);
    let eds = Eds::start_args(&a);
    let first = eventually("a session", WAIT, || async { hq.sessions().first().cloned() }).await;
    let addr = format!("127.0.0.1:{port}");
    let worker = eventually("the worker's pid", WAIT, || async {
        let s = common::http_get(&addr, "/status").await.1;
        serde_json::from_str::<Value>(&s).ok()?["pid"].as_u64()
    })
    .await;
    // Killed: it cannot end its session or upload its log.
    Command::new("kill").args(["-KILL", &worker.to_string()]).status().unwrap();
    let second = eventually("a session of the new worker", WAIT, || async { hq.sessions().get(1).cloned() }).await;
    let upload = eventually("the killed worker's log, uploaded by the next session", WAIT, || async {
        hq.uploads().into_iter().find(|(p, _)| p.starts_with(&format!("/upload/{second}/log-")))
    })
    .await;
    let text = String::from_utf8_lossy(&upload.1).into_owned();
    assert!(text.contains(&first) && text.contains("HQ session started"), "{text}");
    assert!(!hq.ended().iter().any(|(id, _)| id == &first), "a killed worker ended its session?");
    let (code, log) = eds.stop_with_log();
    assert_eq!(code, 0, "{log}");
}
