//! Against a double of HQ's export routes and its pre-signed file URLs.
#![allow(clippy::unwrap_used)]

// The HQ test double (the registry's and the log upload's tests load it too).
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/common/hq.rs"]
mod hq;

use super::download::{check_gzip, download, file_name, missing, Retry};
use crate::hq::api::{ExportRequest, HqApi};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Three attempts, quickly.
const QUICK: Retry = Retry { attempts: 3, first_wait: std::time::Duration::from_millis(10) };

fn gz(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// Serves `files` (path → bytes) and counts GETs per path; `/broken` answers a cut-off gzip.
async fn file_server(files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let c = counts.clone();
    let handler: hq::BytesHandler = Arc::new(move |parts| {
        let path = parts.uri.path().to_owned();
        *c.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
        match files.get(&path) {
            Some(b) => (200, b.clone()),
            None => (404, b"no such key".to_vec()),
        }
    });
    tokio::spawn(hq::serve_bytes(listener, handler, "application/gzip"));
    (base, counts)
}

#[tokio::test]
async fn downloads_resume_and_refuse_damaged_files() {
    let a = "202407131650522808024600000000000-c1-1-order-0.ndjson.gz";
    let b = "202407131650522808024600000000000-c1-1-user-0.ndjson.gz";
    let whole = gz("{\"id\":\"1\"}\n");
    let files: HashMap<String, Vec<u8>> = [
        (format!("/bucket/{a}"), gz("{\"id\":\"o1\"}\n{\"id\":\"o2\"}\n")),
        (format!("/bucket/{b}"), whole.clone()),
        ("/bucket/cut.ndjson.gz".to_owned(), whole[..whole.len() - 6].to_vec()),
    ]
    .into();
    let (base, counts) = file_server(files).await;
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let urls = vec![format!("{base}/bucket/{a}?X-Amz-Signature=secret"), format!("{base}/bucket/{b}?sig=x")];
    let seen = AtomicUsize::new(0);
    let got = download(&http, &urls, dir.path(), 2, QUICK, &|n| {
        seen.fetch_add(n as usize, Ordering::Relaxed);
    })
    .await
    .unwrap();
    assert_eq!((got.fetched, got.kept, got.files.len()), (2, 0, 2));
    assert_eq!(got.bytes as usize, seen.load(Ordering::Relaxed));
    assert_eq!(check_gzip(&dir.path().join(a)).unwrap(), 24);
    assert!(!dir.path().join(format!("{a}.part")).exists());
    assert_eq!(missing(dir.path()).unwrap(), Vec::<String>::new(), "the manifest's files are all there");

    // A second run (a resume) fetches nothing again.
    let again = download(&http, &urls, dir.path(), 2, QUICK, &|_| {}).await.unwrap();
    assert_eq!((again.fetched, again.kept), (0, 2));
    assert!(counts.lock().unwrap().values().all(|&n| n == 1), "{:?}", counts.lock().unwrap());

    // A cut-off gzip is never renamed into place; a missing file fails at once, naming its path
    // but not the URL's signature.
    let e =
        download(&http, &[format!("{base}/bucket/cut.ndjson.gz")], dir.path(), 1, QUICK, &|_| {}).await.unwrap_err();
    assert!(format!("{e:#}").contains("not whole gzip"), "{e:#}");
    assert!(!dir.path().join("cut.ndjson.gz").exists());
    assert_eq!(missing(dir.path()).unwrap(), ["cut.ndjson.gz"], "an unfinished download shows");
    assert_eq!(missing(&dir.path().join("elsewhere")).unwrap(), Vec::<String>::new(), "no manifest, nothing known");
    assert_eq!(counts.lock().unwrap()["/bucket/cut.ndjson.gz"], 3, "tried again, then given up");
    let e = download(&http, &[format!("{base}/bucket/gone.ndjson.gz?sig=secret")], dir.path(), 1, QUICK, &|_| {})
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("/bucket/gone.ndjson.gz") && e.contains("404") && !e.contains("secret"), "{e}");
    assert!(file_name("https://x/a/").is_err() && file_name("https://x/..").is_err());
}

#[tokio::test]
async fn export_jobs_are_created_and_read_with_the_key() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b = bodies.clone();
    let handler: hq::FullHandler = Arc::new(move |parts, body| {
        let auth = parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
        if auth.as_deref() != Some("Bearer k3y") {
            return (401, br#"{"success":false,"message":"bad key"}"#.to_vec());
        }
        match (parts.method.as_str(), parts.uri.path()) {
            ("POST", "/v3/export/bulk") => {
                b.lock().unwrap().push(String::from_utf8(body.to_vec()).unwrap());
                (200, br#"{"success":true,"data":{"jobId":"job 1"}}"#.to_vec())
            }
            ("GET", "/v3/export/bulk/job%201") => (
                200,
                br#"{"success":true,"data":{"completed":false,"tables":{"order":{"status":"Completed","urls":["http://f/x.ndjson.gz"],"cursor":"1721851381585498856"},"user":{"status":"Pending"}}}}"#.to_vec(),
            ),
            _ => (404, br#"{"success":false,"message":"not found"}"#.to_vec()),
        }
    });
    tokio::spawn(hq::serve_full(listener, handler, Some("application/json")));
    let api = HqApi::new(&base, "k3y").unwrap();
    let job = api
        .create_export(&ExportRequest { tables: vec!["order".into()], time_offset: Some(5), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(job, "job 1");
    assert_eq!(bodies.lock().unwrap()[0], r#"{"timeOffset":5,"tables":["order"]}"#, "empty filters left out");
    let status = api.export_status(&job).await.unwrap();
    assert!(!status.completed);
    assert_eq!(status.tables["order"].urls, ["http://f/x.ndjson.gz"]);
    assert_eq!(status.tables["user"].status, "Pending");
    let e = HqApi::new(&base, "wrong").unwrap().export_status("job 1").await.unwrap_err();
    assert!(format!("{e:#}").contains("bad key"), "{e:#}");
}
