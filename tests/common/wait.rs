//! eds watched through `/status` and `/metrics`: waits with deadlines that fail with `/status`
//! and eds's log, and the steps of the end-to-end tests (publish, then wait for delivery).
#![allow(dead_code, clippy::unwrap_used)]

use super::events::Ev;
use super::{publish, Eds};
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long a step may take to reach every destination.
pub const DELIVERY: Duration = Duration::from_secs(60);

/// GET that returns `None` instead of panicking when eds does not answer.
pub async fn try_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// `/status`, or a panic that shows eds's log.
pub async fn status(eds: &Eds) -> Value {
    match try_get(&eds.http, "/status").await {
        Some((200, body)) => serde_json::from_str(&body).unwrap(),
        other => panic!("GET /status: {other:?}\neds log:\n{}", eds.log_tail(100)),
    }
}

/// Poll `f` until it returns Some; on timeout fail with `/status` and eds's log.
pub async fn until<T, F, Fut>(eds: &Eds, what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            let s = try_get(&eds.http, "/status").await;
            panic!("timed out after {timeout:?} waiting for {what}\n/status: {s:?}\neds log:\n{}", eds.log_tail(100));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the `/metrics` sample `series` (name and labels), 0 when absent.
pub async fn metric(eds: &Eds, series: &str) -> f64 {
    let (_, text) = try_get(&eds.http, "/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The destination `name` in a `/status` document.
pub fn destination<'s>(status: &'s Value, name: &str) -> &'s Value {
    status["destinations"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no destination {name:?} in {status}"))
}

/// Wait until ingest stored stream sequence `seq`; the WAL's durable LSN then.
pub async fn stored(eds: &Eds, seq: u64) -> u64 {
    until(eds, &format!("stream sequence {seq} stored"), DELIVERY, || async {
        let s = status(eds).await;
        (s["ingest"]["stream_sequence"].as_u64().unwrap_or(0) >= seq).then(|| s["wal"]["durable_lsn"].as_u64().unwrap())
    })
    .await
}

/// Wait until every destination in `names` has its cursor at `lsn` or beyond; the status then.
pub async fn delivered(eds: &Eds, names: &[&str], lsn: u64) -> Value {
    until(eds, &format!("{names:?} delivered through LSN {lsn}"), DELIVERY, || async {
        let s = status(eds).await;
        names.iter().all(|n| destination(&s, n)["cursor"].as_u64().unwrap_or(0) >= lsn).then_some(s)
    })
    .await
}

/// Publish `ev` and wait until it is stored and delivered to `names`; its bytes.
pub async fn step(js: &async_nats::jetstream::Context, eds: &Eds, names: &[&str], ev: &Ev) -> Vec<u8> {
    let bytes = ev.bytes();
    let seq = publish(js, ev.subject(), bytes.clone()).await;
    let lsn = stored(eds, seq).await;
    delivered(eds, names, lsn).await;
    bytes
}
