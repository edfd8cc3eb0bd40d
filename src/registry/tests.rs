//! The registry against a double of HQ's schema routes.

#[path = "../../tests/common/hq.rs"]
mod testing;

use super::hq::{random_below, status_reason};
use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use testing::Routes;

/// Requests seen by a mock server, by path.
#[derive(Default)]
struct Seen {
    paths: Mutex<Vec<String>>,
}

impl Seen {
    fn count(&self) -> usize {
        self.paths.lock().unwrap().len()
    }
    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

struct Mock {
    url: String,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn mock(routes: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    let routes: Routes = Arc::new(move |path: &str| {
        counted.paths.lock().unwrap().push(path.to_owned());
        routes(path)
    });
    let task = tokio::spawn(testing::serve_schemas(listener, routes));
    Mock { url, seen, task }
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        max_elapsed: Duration::from_secs(5),
        base_delay: Duration::from_millis(10),
        jitter_per_attempt: Duration::from_millis(10),
    }
}

fn hq(url: &str) -> Arc<dyn SchemaSource> {
    Arc::new(HqSchemas::new(url).unwrap().with_retry(fast()))
}

fn columns(schema: &Schema) -> Vec<&str> {
    schema.column_names().collect()
}

/// An address nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[tokio::test]
async fn lookups_are_cached_in_memory() {
    let hq_mock = mock(testing::e2e_routes).await;
    let registry = Registry::new(hq(&hq_mock.url), None);

    // The latest version comes with the list: one request.
    let order = registry.schema("order", "fff000111").await.unwrap();
    assert_eq!((order.table(), order.model_version()), ("order", "fff000111"));
    assert_eq!(columns(&order), ["id", "name", "updatedDate"]);
    assert_eq!(hq_mock.seen.paths(), ["/v3/schema"]);

    let newer = registry.schema("order", "fff000112-update").await.unwrap();
    assert_eq!(newer.model_version(), "fff000112-update");
    assert_eq!(columns(&newer), ["id", "age", "name", "updatedDate"]);
    let customer = registry.schema("customer", "fff000111").await.unwrap();
    assert_eq!(customer.table(), "customer");
    // `customer` is not in the list, which was fetched less than a minute ago: not fetched again.
    assert_eq!(
        hq_mock.seen.paths(),
        ["/v3/schema", "/v3/schema/order/fff000112-update", "/v3/schema/customer/fff000111"]
    );

    for _ in 0..3 {
        let again = registry.schema("order", "fff000112-update").await.unwrap();
        assert!(Arc::ptr_eq(&again, &newer), "the cached schema is shared");
        registry.schema("customer", "fff000111").await.unwrap();
        registry.clone().schema("order", "fff000111").await.unwrap();
    }
    assert_eq!(hq_mock.seen.count(), 3, "cache hits make no request");
}

#[tokio::test]
async fn the_tracker_keeps_schemas_across_registries() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(dir.path()).unwrap();
    {
        let hq_mock = mock(testing::e2e_routes).await;
        let registry = Registry::new(hq(&hq_mock.url), Some(tracker.clone()));
        registry.schema("order", "fff000112-update").await.unwrap();
        registry.schema("customer", "fff000111").await.unwrap();
    }
    let stored: Vec<String> = tracker.scan_prefix("registry:").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        stored,
        ["registry:customer-fff000111", "registry:order-fff000111", "registry:order-fff000112-update"],
        "fetched versions and the latest list are stored"
    );

    // HQ is gone; a new registry on the same tracker still answers.
    let registry = Registry::new(hq(&dead_url().await), Some(tracker.clone()));
    let order = registry.schema("order", "fff000112-update").await.unwrap();
    assert_eq!(columns(&order), ["id", "age", "name", "updatedDate"]);
    assert_eq!(registry.schema("order", "fff000111").await.unwrap().model_version(), "fff000111");
    assert_eq!(registry.schema("customer", "fff000111").await.unwrap().table(), "customer");
    let err = registry.schema("customer", "fff000999").await.unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");

    // A stored document for another table (the key is ambiguous) or a broken one is not used.
    tracker.set(&schema_key("order", "x"), testing::customer("x").to_string().as_bytes()).await.unwrap();
    tracker.set(&schema_key("order", "y"), b"{not json").await.unwrap();
    for v in ["x", "y"] {
        let err = registry.schema("order", v).await.unwrap_err();
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn transient_answers_are_retried_and_others_are_not() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let hq_mock = mock(move |path| match (path, c.fetch_add(1, Ordering::SeqCst)) {
        ("/v3/schema", 0) => (503, "upstream busy".into()),
        ("/v3/schema/order/bad", _) => (400, json!({"success": false, "message": "bad version"}).to_string()),
        (path, _) => testing::e2e_routes(path),
    })
    .await;
    let registry = Registry::new(hq(&hq_mock.url), None);
    registry.schema("order", "fff000111").await.unwrap();
    assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema"], "503 then 200");

    let err = registry.schema("order", "bad").await.unwrap_err();
    assert_eq!(hq_mock.seen.count(), 3, "a 400 is not retried");
    match &err {
        RegistryError::Unavailable { table, version, reason } => {
            assert_eq!((table.as_str(), version.as_str()), ("order", "bad"));
            assert!(reason.contains("bad version") && reason.contains("400"), "{reason}");
            assert!(reason.contains(&format!("{}/v3/schema/order/bad", hq_mock.url.trim_end_matches('/'))), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(err.to_string().contains("table order version bad"), "{err}");
}

#[tokio::test]
async fn retries_are_bounded() {
    let hq_mock = mock(|_| (503, "<html>down for maintenance</html>".repeat(20))).await;
    let err = HqSchemas::new(&hq_mock.url).unwrap().with_retry(fast()).latest().await.unwrap_err();
    assert_eq!(hq_mock.seen.count(), 3);
    let msg = err.to_string();
    assert!(msg.contains("HTTP 503") && msg.contains("after 3 attempts") && msg.contains("/v3/schema"), "{msg}");
    assert!(msg.len() < 400, "only the start of the body: {msg}");

    let hq_mock = mock(|_| (503, String::new())).await;
    let slow = RetryPolicy { max_elapsed: Duration::from_millis(1), ..fast() };
    HqSchemas::new(&hq_mock.url).unwrap().with_retry(slow).latest().await.unwrap_err();
    assert_eq!(hq_mock.seen.count(), 1, "no attempt beyond the time budget");
}

#[tokio::test]
async fn an_unknown_version_falls_back_to_the_latest_schema() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(dir.path()).unwrap();
    let hq_mock = mock(|path| match path {
        "/v3/schema/order/missing" => testing::not_found(),
        path => testing::e2e_routes(path),
    })
    .await;
    let registry = Registry::new(hq(&hq_mock.url), Some(tracker.clone()));
    let schema = registry.schema("order", "missing").await.unwrap();
    assert_eq!((schema.table(), schema.model_version()), ("order", "fff000111"));
    assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/order/missing"]);
    let again = registry.schema("order", "missing").await.unwrap();
    assert!(Arc::ptr_eq(&schema, &again));
    assert_eq!(hq_mock.seen.count(), 2, "the stand-in is remembered");
    assert_eq!(tracker.get(&schema_key("order", "missing")).unwrap(), None, "and never stored");

    // `.` and `..` cannot be asked for: they are versions HQ does not have.
    assert_eq!(registry.schema("order", "..").await.unwrap().model_version(), "fff000111");
    assert_eq!(hq_mock.seen.count(), 2);
}

#[tokio::test]
async fn an_answer_for_another_version_is_a_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::open(dir.path()).unwrap();
    let hq_mock = mock(|path| match path {
        "/v3/schema/order/old" => (200, testing::order("v2", true).to_string()),
        path => testing::e2e_routes(path),
    })
    .await;
    let registry = Registry::new(hq(&hq_mock.url), Some(tracker.clone()));
    let schema = registry.schema("order", "old").await.unwrap();
    assert_eq!(schema.model_version(), "v2");
    assert!(Arc::ptr_eq(&schema, &registry.schema("order", "v2").await.unwrap()));
    assert!(Arc::ptr_eq(&schema, &registry.schema("order", "old").await.unwrap()));
    assert_eq!(hq_mock.seen.count(), 2);
    assert_eq!(tracker.get(&schema_key("order", "old")).unwrap(), None);
    assert!(tracker.get(&schema_key("order", "v2")).unwrap().is_some());
}

#[tokio::test]
async fn a_table_hq_does_not_know_is_unknown() {
    let hq_mock = mock(testing::e2e_routes).await;
    let registry = Registry::new(hq(&hq_mock.url), None);
    let err = registry.schema("labor", "fff000111").await.unwrap_err();
    assert_eq!(err, RegistryError::Unknown { table: "labor".into(), version: "fff000111".into() });
    assert!(!err.is_transient());
    assert_eq!(err.to_string(), "no schema for table labor version fff000111: HQ does not know the table");
    assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/labor/fff000111"]);
    // Remembered for a while, and the list is not fetched again within a minute.
    registry.schema("labor", "fff000111").await.unwrap_err();
    registry.schema("labor", "other").await.unwrap_err();
    assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/labor/fff000111", "/v3/schema/labor/other"]);
}

#[tokio::test]
async fn the_list_is_refreshed_for_new_tables_at_most_every_interval() {
    let labor_listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listed = labor_listed.clone();
    let hq_mock = mock(move |path| match path {
        "/v3/schema" if listed.load(Ordering::SeqCst) => {
            let mut labor = testing::customer("l1");
            labor["table"] = json!("labor");
            (200, json!({"order": testing::order("fff000111", false), "Labor": labor}).to_string())
        }
        path => testing::e2e_routes(path),
    })
    .await;
    let every = Duration::from_millis(300);
    let registry = Registry::with_list_refresh(hq(&hq_mock.url), None, every);
    registry.schema("labor", "l1").await.unwrap_err();
    labor_listed.store(true, Ordering::SeqCst);
    registry.schema("labor", "l1").await.unwrap_err();
    assert_eq!(hq_mock.seen.count(), 2, "no refresh within the interval");
    tokio::time::sleep(every).await;
    let labor = registry.schema("labor", "l1").await.unwrap();
    assert_eq!(labor.table(), "labor");
    assert_eq!(hq_mock.seen.paths().last().map(String::as_str), Some("/v3/schema"));
    // Another version of labor is asked for under HQ's object name.
    registry.schema("labor", "l2").await.unwrap();
    assert_eq!(hq_mock.seen.paths().last().map(String::as_str), Some("/v3/schema/Labor/l2"));
}

#[tokio::test]
async fn an_unreachable_hq_is_unavailable() {
    let url = dead_url().await;
    let registry = Registry::new(hq(&url), None);
    let err = registry.schema("order", "fff000111").await.unwrap_err();
    match &err {
        RegistryError::Unavailable { table, version, reason } => {
            assert_eq!((table.as_str(), version.as_str()), ("order", "fff000111"));
            assert!(reason.contains(&format!("{url}/v3/schema")), "{reason}");
            assert!(reason.contains("after 3 attempts"), "connection refused is retried: {reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(err.to_string().starts_with("schema for table order version fff000111 is unavailable: "), "{err}");
}

#[tokio::test]
async fn path_segments_are_escaped() {
    let hq_mock = mock(|path| {
        let version = path.rsplit('/').next().map(testing::unescape).unwrap_or_default();
        (200, testing::order(&version, false).to_string())
    })
    .await;
    let source = HqSchemas::new(&hq_mock.url).unwrap();
    for (version, sent) in [
        ("fff000112-update", "fff000112-update"),
        ("a/../../b", "a%2F..%2F..%2Fb"),
        ("v?x=1#f", "v%3Fx%3D1%23f"),
        ("100%", "100%25"),
        ("é ü", "%C3%A9%20%C3%BC"),
    ] {
        let schema = source.version("order", version).await.unwrap().unwrap();
        assert_eq!(schema.model_version(), version);
        assert_eq!(hq_mock.seen.paths().last().cloned(), Some(format!("/v3/schema/order/{sent}")));
    }
    source.version("or/der", "v").await.unwrap();
    assert_eq!(hq_mock.seen.paths().last().map(String::as_str), Some("/v3/schema/or%2Fder/v"));
    let before = hq_mock.seen.count();
    for (object, version) in [("order", ""), ("order", "."), ("..", "v"), ("", "v")] {
        assert!(source.version(object, version).await.unwrap().is_none());
    }
    assert_eq!(hq_mock.seen.count(), before, "no request for names that are not a segment");
}

#[tokio::test]
async fn requests_carry_the_user_agent_and_no_authorization() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/", listener.local_addr().unwrap());
    let headers = Arc::new(Mutex::new(Vec::new()));
    let h = headers.clone();
    let task = tokio::spawn(testing::serve(
        listener,
        Arc::new(move |parts: &hyper::http::request::Parts| {
            h.lock().unwrap().push((parts.method.to_string(), parts.uri.path().to_owned(), parts.headers.clone()));
            (200, json!({"order": testing::order("v1", false)}).to_string())
        }),
    ));
    let latest = HqSchemas::new(&url).unwrap().latest().await.unwrap();
    assert_eq!(latest.tables().collect::<Vec<_>>(), ["order"]);
    let seen = headers.lock().unwrap().clone();
    let (method, path, headers) = &seen[0];
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/api/v3/schema"), "the trailing slash is tolerated");
    assert_eq!(headers.get("user-agent").unwrap(), concat!("eds/", env!("CARGO_PKG_VERSION")));
    assert!(headers.get("authorization").is_none());
    task.abort();
}

#[tokio::test]
async fn a_schema_of_another_table_is_refused() {
    let hq_mock = mock(|path| match path {
        "/v3/schema" => (200, "{}".into()),
        _ => (200, testing::customer("v1").to_string()),
    })
    .await;
    let registry = Registry::new(hq(&hq_mock.url), None);
    let err = registry.schema("order", "v1").await.unwrap_err();
    assert_eq!(err, RegistryError::Mismatch { table: "order".into(), version: "v1".into(), found: "customer".into() });
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        "schema for table order version v1: HQ answered with the schema of table customer instead"
    );
    registry.schema("order", "v1").await.unwrap_err();
    assert_eq!(hq_mock.seen.count(), 3, "not cached");
}

#[tokio::test]
async fn invalid_documents_are_unavailable_and_name_the_url() {
    let hq_mock = mock(|path| match path {
        "/v3/schema" => (200, "{}".into()),
        _ => (200, r#"{"table": "order", "modelVersion": "v1", "properties": {}}"#.into()),
    })
    .await;
    let registry = Registry::new(hq(&hq_mock.url), None);
    match registry.schema("order", "v1").await.unwrap_err() {
        RegistryError::Unavailable { reason, .. } => {
            assert!(reason.contains("/v3/schema/order/v1: the answer is not a valid schema"), "{reason}");
            assert!(reason.contains("has no primary keys"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let hq_mock = mock(|_| (200, "[]".into())).await;
    let err = Registry::new(hq(&hq_mock.url), None).schema("order", "v1").await.unwrap_err();
    assert!(err.to_string().contains("fetching the latest schema list"), "{err}");
}

#[tokio::test]
async fn concurrent_misses_make_one_request() {
    let hq_mock = mock(|path| {
        std::thread::sleep(Duration::from_millis(20));
        testing::e2e_routes(path)
    })
    .await;
    let registry = Registry::new(hq(&hq_mock.url), None);
    let lookups: Vec<_> = (0..16)
        .map(|_| {
            let r = registry.clone();
            tokio::spawn(async move { r.schema("customer", "c1").await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().unwrap().model_version(), "c1");
    }
    assert_eq!(hq_mock.seen.paths(), ["/v3/schema", "/v3/schema/customer/c1"]);
}

#[test]
fn bad_api_urls_are_refused() {
    for url in ["", "not a url", "ftp://host", "http://host/?q=1", "mailto:x@y"] {
        assert!(HqSchemas::new(url).is_err(), "{url}");
    }
    assert!(HqSchemas::new("https://api.shopmonkey.cloud").is_ok());
}

#[test]
fn stored_documents_round_trip() {
    let doc = json!({
        "properties": {
            "id": {"type": "string", "$comment": "key"},
            "when": {"type": "string", "format": "date-time", "nullable": true},
            "n": {"type": "integer"}, "x": {"type": "number", "deprecated": true},
            "b": {"type": "boolean"}, "o": {"type": "object", "additionalProperties": true},
            "status": {"type": "array", "items": {"type": "enum", "enum": ["A", "B"]}},
            "noValues": {"type": "array", "items": {"type": "enum"}},
            "dates": {"type": "array", "items": {"type": "string", "format": "date-time"}},
            "nested": {"type": "array", "items": {"type": "array"}},
            "untypedItems": {"type": "array", "items": {}},
            "bare": {"type": "array"}, "odd": {"type": "uuid"}, "untyped": {},
        },
        "required": ["id", "n", "ghost"], "primaryKeys": ["id", "n"], "table": "t", "modelVersion": "v1",
    });
    let schema = Schema::from_json(doc.to_string().as_bytes()).unwrap();
    let stored = schema_json(&schema).to_string();
    assert_eq!(Schema::from_json(stored.as_bytes()).unwrap(), schema);
    assert_eq!(schema_json(&schema).to_string(), stored, "deterministic");
}

#[test]
fn error_chains_and_reasons() {
    assert_eq!(status_reason(reqwest::StatusCode::BAD_GATEWAY, b""), "HTTP 502 Bad Gateway");
    assert_eq!(status_reason(reqwest::StatusCode::NOT_FOUND, br#"{"message":"nope"}"#), "HTTP 404 Not Found: nope");
    assert_eq!(
        status_reason(reqwest::StatusCode::NOT_FOUND, br#"{"message":""}"#),
        r#"HTTP 404 Not Found: {"message":""}"#
    );
    let long = "x".repeat(1000);
    assert_eq!(status_reason(reqwest::StatusCode::IM_A_TEAPOT, long.as_bytes()).matches('x').count(), 200);
    assert!(random_below(Duration::from_millis(5)) < Duration::from_millis(5));
    assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
    assert_eq!(testing::unescape("a%2Fb%zz%4"), "a/b%zz%4");
}

/// A JWT with `claims` as its payload (header and signature are not read).
fn key_with(claims: serde_json::Value) -> String {
    use base64::Engine;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJl")
}

#[test]
fn the_api_url_comes_from_the_flag_else_the_keys_issuer_else_production() {
    let sandbox = key_with(json!({"iss": "https://sandbox-api.shopmonkey.cloud/", "cid": "c1"}));
    assert_eq!(super::api_url_of_key(&sandbox).as_deref(), Some("https://sandbox-api.shopmonkey.cloud"));
    let legacy = key_with(json!({"iss": "https://shopmonkey.io"}));
    assert_eq!(super::api_url_of_key(&legacy).as_deref(), Some(super::DEFAULT_API_URL));
    for bad in [
        "not-a-jwt".to_owned(),
        "a.%%%.c".to_owned(),
        key_with(json!({"cid": "no issuer"})),
        key_with(json!({"iss": "ftp://example.com"})),
        key_with(json!({"iss": 7})),
    ] {
        assert_eq!(super::api_url_of_key(&bad), None, "{bad}");
    }
    assert_eq!(super::api_url(Some("http://127.0.0.1:9"), Some(&sandbox)), "http://127.0.0.1:9", "the flag wins");
    assert_eq!(super::api_url(None, Some(&sandbox)), "https://sandbox-api.shopmonkey.cloud");
    assert_eq!(super::api_url(None, Some("garbage")), super::DEFAULT_API_URL);
    assert_eq!(super::api_url(None, None), super::DEFAULT_API_URL);
}
