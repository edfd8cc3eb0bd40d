//! The S3 driver against a private moto server (`MOTO_SERVER`, see [`super::moto`]), and its URL
//! parsing with a fake environment.

use super::moto::Moto;
use super::*;
use crate::conformance;
use crate::driver::{Batch, Delivery, Driver, ErrorClass};
use crate::event::ChangeEvent;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn event(raw: &str) -> ChangeEvent {
    ChangeEvent::from_json(raw.as_bytes()).unwrap()
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A fresh bucket on a fresh moto, and the driver for `bucket/prefix` with `extra` options.
async fn start(prefix: &str, extra: &str) -> (Moto, S3Driver) {
    let moto = Moto::start().await;
    moto.create_bucket("eds-test").await;
    let driver = S3Driver::new(parse(&moto.url("eds-test", prefix, extra), &no_env).unwrap());
    (moto, driver)
}

const A: &str = r#"{"operation":"UPDATE","table":"order","key":["gcp","k1"],"after":{"id":"k1","note":"a<b"},"timestamp":1795749176123,"region":"unknown-field-kept"}"#;
const B: &str = r#"{"operation":"UPDATE","table":"order","key":["gcp","k1"],"after":{"id":"k1","note":"second"},"timestamp":1795749176999}"#;
const C: &str =
    r#"{"operation":"DELETE","table":"customer","key":["gcp","c9"],"before":{"id":"c9"},"timestamp":1795749177000}"#;

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect()
}

#[test]
fn urls_eds_forms_endpoints_and_the_environment() {
    let env = |name: &str| match name {
        "AWS_REGION" => Some("eu-central-1".to_owned()),
        "AWS_ACCESS_KEY_ID" => Some("ENVKEY".to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_owned()),
        _ => None,
    };
    let only_default_region = |name: &str| (name == "AWS_DEFAULT_REGION").then(|| "ap-south-1".to_owned());

    // EDS's example: bucket = host, prefix = path with a trailing slash, keys from the URL.
    let c = parse("s3://bucket/folder?region=us-west-2&access-key-id=AKIA&secret-access-key=s%2Bc/r", &env).unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()), ("bucket", "folder/", "us-west-2"));
    assert_eq!((c.provider, c.endpoint.as_deref(), c.path_style), (Provider::Aws, None, false));
    let keys = c.keys.clone().unwrap();
    assert_eq!((keys.access_key_id.as_str(), keys.secret_access_key.as_str()), ("AKIA", "s+c/r"));
    assert!(!format!("{c:?}").contains("s+c/r"), "secrets never in Debug: {c:?}");
    assert_eq!((c.upload_tasks, c.format, c.timeout), (DEFAULT_UPLOAD_TASKS, Format::Json, DEFAULT_TIMEOUT));

    // The environment: region, then keys; then the credential chain (no keys).
    let c = parse("s3://bucket", &env).unwrap();
    assert_eq!((c.prefix.as_str(), c.region.as_str()), ("", "eu-central-1"));
    assert_eq!(c.keys.unwrap().access_key_id, "ENVKEY");
    let c = parse("s3://bucket/a/b/", &only_default_region).unwrap();
    assert_eq!((c.prefix.as_str(), c.region.as_str(), c.keys), ("a/b/", "ap-south-1", None));
    assert_eq!(parse("s3://bucket", &no_env).unwrap().region, DEFAULT_REGION);

    // Any S3-compatible store: endpoint, path-style by default there, and overridable.
    let c = parse("s3://bkt/p?endpoint=https://minio.local:9000&path-style=false&name=x&eds-batch=1", &no_env).unwrap();
    assert_eq!(
        (c.provider, c.endpoint.as_deref(), c.path_style),
        (Provider::Compatible, Some("https://minio.local:9000"), false)
    );
    let c = parse("s3://bkt/p?endpoint=http%3A%2F%2F10.0.0.5%3A9000", &no_env).unwrap();
    assert_eq!((c.endpoint.as_deref(), c.path_style), (Some("http://10.0.0.5:9000"), true));

    // EDS's LocalStack form: the bucket is the first path segment.
    let c = parse("s3://localhost:4566/bkt/deep/prefix", &no_env).unwrap();
    assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bkt", "deep/prefix/"));
    assert_eq!((c.endpoint.as_deref(), c.path_style), (Some("http://localhost:4566"), true));
    assert_eq!(parse("s3://127.0.0.1/bkt", &no_env).unwrap().endpoint.as_deref(), Some("http://127.0.0.1"));

    // GCS: region auto, its endpoint, virtual-hosted addressing.
    let c = parse("s3://storage.googleapis.com/gbucket/x?access-key-id=GOOG&secret-access-key=s", &env).unwrap();
    assert_eq!(
        (c.provider, c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
        (Provider::Gcs, "gbucket", "x/", "auto")
    );
    assert_eq!(c.endpoint.as_deref(), Some(GCS_ENDPOINT));

    // Options, EDS's spelling, EDS's options without effect.
    let c =
        parse("s3://bkt?upload-tasks=3&format=NDJSON&timeout=1500ms&max-retries=5&maxBatchSize=9", &no_env).unwrap();
    assert_eq!((c.upload_tasks, c.format, c.timeout), (3, Format::Ndjson, Duration::from_millis(1500)));
    assert_eq!(parse("s3://bkt?uploadTasks=7&timeout=2m", &no_env).unwrap().upload_tasks, 7);
    assert_eq!(parse("s3://bkt?timeout=2m", &no_env).unwrap().timeout, Duration::from_secs(120));
}

#[test]
fn bad_urls_are_config_errors_naming_what_without_secrets() {
    for (url, names) in [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("postgres://x", "s3://"),
        ("s3://bkt?colour=red&secret-access-key=hunter2", "unknown option \"colour\""),
        ("s3://Bad_Bucket!", "is not a bucket name"),
        ("s3://bkt?region=us%20west&secret-access-key=hunter2&access-key-id=a", "region \"us west\""),
        ("s3://bkt?endpoint=minio:9000&secret-access-key=hunter2&access-key-id=a", "endpoint \"minio:9000\""),
        ("s3://bkt?upload-tasks=0", "upload-tasks must be"),
        ("s3://bkt?format=csv", "format must be"),
        ("s3://bkt?timeout=soon", "timeout must be"),
        ("s3://bkt?path-style=maybe", "path-style must be"),
        ("s3://bkt?secret-access-key=hunter2", "without access-key-id"),
        ("s3://bkt?access-key-id=a", "without secret-access-key"),
        ("s3://bkt/%ZZ", "prefix is not well escaped"),
    ] {
        let err = parse(url, &no_env).unwrap_err();
        assert_eq!(err.class, ErrorClass::Config, "{url}");
        assert!(err.message.contains(names), "{url}: {err}");
        assert!(!err.message.contains("hunter2"), "{url}: a secret in {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_each_event_as_received_with_lsn_names_for_collisions_and_replays_are_harmless() {
    let (moto, driver) = start("out/", "").await;
    let (a, b, c) = (event(A), event(B), event(C));
    let batch = [
        Delivery { lsn: 7, event: &a, raw: A.as_bytes() },
        Delivery { lsn: 8, event: &b, raw: B.as_bytes() },
        Delivery { lsn: 9, event: &c, raw: C.as_bytes() },
    ];
    driver.write(Batch::Events(&batch)).await.unwrap();
    let want = expect(&[
        ("out/order/1795749176-k1.json", A),
        // Same key, same second, another event: its own object, named by LSN.
        ("out/order/1795749176-k1+8.json", B),
        ("out/customer/1795749177-c9.json", C),
    ]);
    assert_eq!(moto.objects("eds-test", "").await, want);
    let head = moto.client().await.head_object().bucket("eds-test").key("out/order/1795749176-k1.json").send().await;
    assert_eq!(head.unwrap().content_type(), Some("application/json"));

    // A replay (also of a part, also in another batch cut) writes nothing new.
    let snapshot = || {
        let moto = &moto;
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(moto.objects("eds-test", "")))
    };
    conformance::replay_is_harmless(&driver, Batch::Events(&batch), snapshot).await.unwrap();
    driver.write(Batch::Events(&batch[1..])).await.unwrap();
    assert_eq!(moto.objects("eds-test", "").await, want);
    conformance::description_is_complete(&driver).unwrap();
    driver.test().await.unwrap();
}

#[tokio::test]
async fn a_validator_path_names_the_object_below_the_prefix() {
    let (moto, driver) = start("out/", "").await;
    let (mut a, mut b, mut c) = (event(A), event(B), event(C));
    a.path = Some("order/received/order_1_e1.json".into());
    // Another event the template gives the same name: its own object, by LSN.
    b.path = Some("order/received/order_1_e1.json".into());
    c.path = Some("flat.json".into());
    let batch = [
        Delivery { lsn: 7, event: &a, raw: A.as_bytes() },
        Delivery { lsn: 8, event: &b, raw: B.as_bytes() },
        Delivery { lsn: 9, event: &c, raw: C.as_bytes() },
    ];
    driver.write(Batch::Events(&batch)).await.unwrap();
    driver.write(Batch::Events(&batch)).await.unwrap();
    let want = expect(&[
        ("out/order/received/order_1_e1.json", A),
        ("out/order/received/order_1_e1+8.json", B),
        ("out/flat.json", C),
    ]);
    assert_eq!(moto.objects("eds-test", "").await, want);
}

#[tokio::test]
async fn many_events_of_one_key_and_second_are_named_in_lsn_order_even_in_parallel() {
    let (moto, driver) = start("", "&upload-tasks=8").await;
    let raws: Vec<String> = (0..12)
        .map(|i| {
            format!(r#"{{"operation":"UPDATE","table":"t","key":["k"],"after":{{"id":"k","n":{i}}},"timestamp":5000}}"#)
        })
        .collect();
    let events: Vec<ChangeEvent> = raws.iter().map(|r| event(r)).collect();
    let batch: Vec<Delivery<'_>> = events
        .iter()
        .zip(&raws)
        .enumerate()
        .map(|(i, (e, r))| Delivery { lsn: 100 + i as u64, event: e, raw: r.as_bytes() })
        .collect();
    driver.write(Batch::Events(&batch)).await.unwrap();
    driver.write(Batch::Events(&batch)).await.unwrap();
    let mut want = BTreeMap::new();
    want.insert("t/5-k.json".to_owned(), raws[0].as_bytes().to_vec());
    for (i, r) in raws.iter().enumerate().skip(1) {
        want.insert(format!("t/5-k+{}.json", 100 + i), r.as_bytes().to_vec());
    }
    assert_eq!(moto.objects("eds-test", "").await, want);
}

#[tokio::test]
async fn hostile_tables_and_keys_stay_below_their_prefix_and_a_200_kib_event_arrives_whole() {
    let (moto, driver) = start("p", "").await;
    let hostile =
        r#"{"operation":"INSERT","table":"../../etc","key":["../../../passwd"],"after":{"id":"x"},"timestamp":1000}"#;
    let slashes = r#"{"operation":"INSERT","table":"a/b","key":["%2F é ?#"],"after":{"id":"y"},"timestamp":2500}"#;
    let big = format!(
        r#"{{"operation":"INSERT","table":"blob","key":["b1"],"after":{{"id":"b1","data":"{}"}},"timestamp":3000}}"#,
        "x".repeat(200 * 1024)
    );
    let (h, s, g) = (event(hostile), event(slashes), event(&big));
    let batch = [
        Delivery { lsn: 1, event: &h, raw: hostile.as_bytes() },
        Delivery { lsn: 2, event: &s, raw: slashes.as_bytes() },
        Delivery { lsn: 3, event: &g, raw: big.as_bytes() },
    ];
    driver.write(Batch::Events(&batch)).await.unwrap();
    let want = expect(&[
        ("p/%2E.%2F..%2Fetc/1-%2E.%2F..%2F..%2Fpasswd.json", hostile),
        ("p/a%2Fb/2-%252F%20%C3%A9%20%3F%23.json", slashes),
        ("p/blob/3-b1.json", &big),
    ]);
    assert_eq!(moto.objects("eds-test", "").await, want);
}

#[tokio::test]
async fn ndjson_writes_one_object_per_batch_one_event_per_line() {
    let (moto, driver) = start("nd", "&format=ndjson").await;
    let pretty =
        "{\"operation\":\"INSERT\",\r\n \"table\":\"t\",\n \"key\":[\"k\"],\"after\":{\"id\":\"k\"},\"timestamp\":1}";
    let (a, b, p) = (event(A), event(B), event(pretty));
    let batch = [
        Delivery { lsn: 41, event: &a, raw: A.as_bytes() },
        Delivery { lsn: 42, event: &b, raw: B.as_bytes() },
        Delivery { lsn: 43, event: &p, raw: pretty.as_bytes() },
    ];
    driver.write(Batch::Events(&batch)).await.unwrap();
    driver.write(Batch::Events(&batch)).await.unwrap();
    let objects = moto.objects("eds-test", "").await;
    let body = String::from_utf8(objects["nd/00000000000000000041-00000000000000000043.ndjson"].clone()).unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!((lines[0], lines[1]), (A, B));
    let third: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(third, serde_json::from_str::<serde_json::Value>(pretty).unwrap());
    assert!(body.ends_with('\n'));
    assert_eq!(driver.limits().max_rows, 10_000);
}

#[tokio::test]
async fn a_missing_bucket_is_a_named_configuration_error() {
    let moto = Moto::start().await;
    let driver = S3Driver::new(parse(&moto.url("no-such-bucket", "x", ""), &no_env).unwrap());
    let a = event(A);
    let err = driver.write(Batch::Events(&[Delivery { lsn: 1, event: &a, raw: A.as_bytes() }])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{err}");
    assert!(err.message.contains("bucket \"no-such-bucket\" does not exist"), "{err}");
    let err = driver.test().await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{err}");
    assert!(err.message.contains("no-such-bucket"), "{err}");
}

#[tokio::test]
async fn folded_batches_are_refused_as_a_configuration_error() {
    let driver = S3Driver::new(parse("s3://bkt", &no_env).unwrap());
    assert_eq!(driver.write(Batch::Folded(&[])).await.unwrap_err().class, ErrorClass::Config);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = Moto::url_at(&format!("http://127.0.0.1:{port}"), "bkt", "", "&timeout=5s");
    let driver = S3Driver::new(parse(&url, &no_env).unwrap());
    let a = event(A);
    let err = driver.write(Batch::Events(&[Delivery { lsn: 1, event: &a, raw: A.as_bytes() }])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{err}");
    assert!(err.message.contains("could not reach S3"), "{err}");
}

#[tokio::test]
async fn a_black_hole_is_transient_after_the_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let driver = S3Driver::new(parse(&Moto::url_at(&endpoint, "bkt", "", "&timeout=1s"), &no_env).unwrap());
    let a = event(A);
    let started = Instant::now();
    let err = driver.write(Batch::Events(&[Delivery { lsn: 1, event: &a, raw: A.as_bytes() }])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{err}");
    assert!(err.message.contains("timeout"), "{err}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "{took:?}");
    hole.abort();
}

#[tokio::test]
async fn unknown_credentials_are_a_configuration_error_when_the_server_checks_them() {
    // moto checks signatures only when told to (INITIAL_NO_AUTH_ACTION_COUNT); then keys it never
    // issued are refused as AWS refuses them.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).await;
    let driver = S3Driver::new(parse(&moto.url("eds-test", "", ""), &no_env).unwrap());
    let a = event(A);
    let err = driver.write(Batch::Events(&[Delivery { lsn: 1, event: &a, raw: A.as_bytes() }])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config, "{err}");
    assert!(err.message.contains("access denied to s3://eds-test/"), "{err}");
    assert!(!err.message.contains(moto::SECRET_ACCESS_KEY), "{err}");
}

#[test]
fn the_form_gives_an_s3_url_with_the_endpoint_as_an_option() {
    let form = serde_json::json!({"Bucket": "bkt", "Prefix": "a b/", "Region": "eu-west-1",
        "Access Key ID": "AKIA", "Secret Access Key": "s+/=", "Endpoint": "https://minio.local:9000"});
    let url = crate::form::url_from_form(&DESCRIPTION, form.as_object().unwrap()).unwrap();
    assert_eq!(
        url,
        "s3://bkt/a%20b/?access-key-id=AKIA&endpoint=https%3A%2F%2Fminio.local%3A9000&region=eu-west-1&secret-access-key=s%2B%2F%3D"
    );
    let c = parse(&url, &no_env).unwrap();
    assert_eq!((c.prefix.as_str(), c.endpoint.as_deref()), ("a b/", Some("https://minio.local:9000")));
    assert_eq!(c.keys.unwrap().secret_access_key, "s+/=");
    assert_eq!(crate::form::url_from_form(&DESCRIPTION, &serde_json::Map::new()).unwrap_err()[0].field, "Bucket");
    let bare = serde_json::json!({"Bucket": "bkt"});
    assert_eq!(crate::form::url_from_form(&DESCRIPTION, bare.as_object().unwrap()).unwrap(), "s3://bkt");
}
