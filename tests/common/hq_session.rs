//! A double of Shopmonkey HQ's session API (spec §3): enrollment, session start (409 while told
//! to conflict), session end, the log-upload URL, and the pre-signed upload target, plus EDS's
//! e2e schema routes and the bulk export of an import (one job, `job-1`, whose tables a test
//! sets; their files are served from [`Book::files`]). It checks what HQ checks (the Bearer key, the JSON content type, EDS's
//! User-Agent) and records every request so tests can assert on what eds sent. Uploads must be
//! gzip (`Content-Type: application/x-tgz`); the double keeps them gunzipped.
#![allow(dead_code, clippy::unwrap_used)]

use hyper::http::request::Parts;
use hyper::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// Issues the NATS credentials (a decorated `.creds` text) for a new session id.
pub type Issuer = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What the double has seen and will do.
#[derive(Default)]
pub struct Book {
    pub requests: Vec<Recorded>,
    /// Answer this many session starts with 409 first.
    pub conflicts: usize,
    /// Session ids started, in order.
    pub sessions: Vec<String>,
    /// Session ends: (session id, errored).
    pub ended: Vec<(String, bool)>,
    /// Uploads: (path, gunzipped body).
    pub uploads: Vec<(String, Vec<u8>)>,
    /// The credentials issued, in order (decorated `.creds` texts).
    pub credentials: Vec<String>,
    /// Enrollment codes: code → (token, server id).
    pub codes: HashMap<String, (String, String)>,
    /// Other files served on GET (release archives, signatures, export files): path → body.
    pub files: HashMap<String, Vec<u8>>,
    /// The `tables` of bulk export job `job-1` (`GET /v3/export/bulk/job-1`); none: no export
    /// can be made (`POST /v3/export/bulk` is refused).
    pub export: Option<Value>,
    /// Bulk export requests (their bodies).
    pub exports_created: Vec<Value>,
}

pub struct HqSession {
    pub url: String,
    /// The API key the double accepts.
    pub token: String,
    pub book: Arc<Mutex<Book>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HqSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An unsigned JWT whose `iss` is `iss` (eds reads only that claim; HQ verifies the key).
pub fn api_key(iss: &str) -> String {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(json!({"alg": "HS256", "typ": "JWT"})),
        b64(json!({"iss": iss, "cid": "c1", "sid": "s1"}))
    )
}

fn envelope(data: Value) -> (u16, String) {
    (200, json!({"success": true, "message": "", "data": data}).to_string())
}

fn refusal(status: u16, message: &str) -> (u16, String) {
    (status, json!({"success": false, "message": message}).to_string())
}

impl HqSession {
    /// A double on a free port that issues session credentials with `issuer`.
    pub async fn start(issuer: Issuer) -> HqSession {
        HqSession::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), issuer)
    }

    /// A double on `listener`.
    pub fn start_on(listener: TcpListener, issuer: Issuer) -> HqSession {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let token = api_key(&url);
        let book = Arc::new(Mutex::new(Book::default()));
        let (b, t, u) = (book.clone(), token.clone(), url.clone());
        let handler: super::hq::FullHandler = Arc::new(move |parts: &Parts, body: &[u8]| {
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let rec = Recorded {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                headers,
                body: body.to_vec(),
            };
            let served = (rec.method == "GET").then(|| b.lock().unwrap().files.get(&rec.path).cloned()).flatten();
            let (status, answer) = match served {
                Some(bytes) => (200, bytes),
                None => {
                    let (status, text) = answer(&rec, &b, &t, &u, &issuer);
                    (status, text.into_bytes())
                }
            };
            b.lock().unwrap().requests.push(rec);
            (status, answer)
        });
        let task = tokio::spawn(super::hq::serve_full(listener, handler, Some("application/json")));
        HqSession { url, token, book, task }
    }

    /// Requests to `path` with `method`.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.book.lock().unwrap().requests.iter().filter(|r| r.method == method && r.path == path).cloned().collect()
    }

    pub fn sessions(&self) -> Vec<String> {
        self.book.lock().unwrap().sessions.clone()
    }

    pub fn ended(&self) -> Vec<(String, bool)> {
        self.book.lock().unwrap().ended.clone()
    }

    pub fn uploads(&self) -> Vec<(String, Vec<u8>)> {
        self.book.lock().unwrap().uploads.clone()
    }

    /// Sets the tables of export job `job-1` (each `{status, urls?, error?}`).
    pub fn set_export(&self, tables: Value) {
        self.book.lock().unwrap().export = Some(tables);
    }

    /// Serves `lines` gzipped as export file `name` (`<33 digits>-…-<table>-<n>.ndjson.gz`); its
    /// URL (with a signature-like query, as HQ's pre-signed URLs have).
    pub fn export_file(&self, name: &str, lines: &[String]) -> String {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for l in lines {
            writeln!(e, "{l}").unwrap();
        }
        let path = format!("/files/{name}");
        self.book.lock().unwrap().files.insert(path.clone(), e.finish().unwrap());
        format!("{}{path}?X-Sig=s3cr3t", self.url)
    }
}

/// Session ids as HQ makes them (UUID-shaped, so the credentials' subjects match §3.4).
fn session_id(n: usize) -> String {
    format!("{n:08x}-5e55-4000-8000-{:012x}", n * 7919)
}

fn answer(rec: &Recorded, book: &Mutex<Book>, token: &str, base: &str, issuer: &Issuer) -> (u16, String) {
    let path = rec.path.as_str();
    if path.starts_with("/v3/export/bulk") {
        return export(rec, book, token);
    }
    if rec.method == Method::GET.as_str() {
        if let Some(code) = path.strip_prefix("/v3/eds/internal/enroll/") {
            return match book.lock().unwrap().codes.get(code) {
                Some((token, server_id)) => envelope(json!({"token": token, "serverId": server_id})),
                None => refusal(404, "enrollment code not found"),
            };
        }
        return super::hq::e2e_routes(path);
    }
    if rec.method == Method::PUT.as_str() && path.starts_with("/upload/") {
        if rec.headers.get("content-type").map(String::as_str) != Some("application/x-tgz") {
            return refusal(400, "uploads are application/x-tgz");
        }
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&rec.body[..]), &mut plain).is_err() {
            return refusal(400, "the upload is not gzip");
        }
        book.lock().unwrap().uploads.push((path.to_owned(), plain));
        return (200, String::new());
    }
    if rec.method != Method::POST.as_str() || !path.starts_with("/v3/eds/internal") {
        return refusal(404, "not found");
    }
    // HQ's authenticated routes: exactly these headers.
    let h = |k: &str| rec.headers.get(k).map(String::as_str).unwrap_or("");
    if h("authorization") != format!("Bearer {token}") {
        return refusal(401, "unauthorized");
    }
    if h("content-type") != "application/json" || !h("user-agent").starts_with("Shopmonkey EDS Server/") {
        return refusal(400, "bad headers");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&rec.body) else {
        return refusal(400, "the body is not JSON");
    };
    let mut b = book.lock().unwrap();
    if path == "/v3/eds/internal" {
        if b.conflicts > 0 {
            b.conflicts -= 1;
            return refusal(409, "another server is running");
        }
        let id = session_id(b.sessions.len() + 1);
        b.sessions.push(id.clone());
        drop(b);
        let creds = issuer(&id);
        book.lock().unwrap().credentials.push(creds.clone());
        use base64::Engine;
        let credential = base64::engine::general_purpose::STANDARD.encode(creds);
        return envelope(json!({"sessionId": id, "credential": credential}));
    }
    let rest = path.trim_start_matches("/v3/eds/internal/");
    match rest.split_once('/') {
        Some((id, "log")) => {
            let n = b.uploads.len() + b.requests.len();
            envelope(json!({"url": format!("{base}/upload/{id}/log-{n}.gz?X-Sig=s3cr3t"), "errorUrl": ""}))
        }
        None if b.sessions.iter().any(|s| s == rest) => {
            let errored = body.get("errored").and_then(Value::as_bool).unwrap_or(false);
            b.ended.push((rest.to_owned(), errored));
            envelope(json!({"url": format!("{base}/upload/{rest}/final.gz?X-Sig=s3cr3t"), "errorUrl": ""}))
        }
        _ => refusal(404, "no such session"),
    }
}

/// The bulk export routes (spec §3.6): `POST /v3/export/bulk` → job `job-1`, `GET
/// /v3/export/bulk/job-1` → its tables, completed once every table is.
fn export(rec: &Recorded, book: &Mutex<Book>, token: &str) -> (u16, String) {
    if rec.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {token}")) {
        return refusal(401, "unauthorized");
    }
    let mut b = book.lock().unwrap();
    let Some(tables) = b.export.clone() else {
        return refusal(500, "no export can be made");
    };
    match (rec.method.as_str(), rec.path.as_str()) {
        ("POST", "/v3/export/bulk") => {
            b.exports_created.push(rec.json());
            envelope(json!({"jobId": "job-1"}))
        }
        ("GET", "/v3/export/bulk/job-1") => {
            let completed = tables.as_object().unwrap().values().all(|t| t["status"] == "Completed");
            envelope(json!({"completed": completed, "tables": tables}))
        }
        _ => refusal(404, "no such export job"),
    }
}
