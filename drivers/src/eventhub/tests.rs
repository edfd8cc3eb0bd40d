//! Against the Event Hubs double (`double.py`, AMQP 1.0 on python-qpid-proton), started per test
//! on a free port from `EVENTHUB_DOUBLE` (scripts/test.sh installs it). Tests without it check
//! the URL, the keys and the classification of errors.

use super::double::{Double, Options, Received, KEY, KEY_NAME, NAMESPACE};
use super::*;
use crate::conformance;
use crate::driver::{Batch, Delivery, Driver, ErrorClass};
use crate::event::ChangeEvent;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the double may take to show what it received.
const READ: Duration = Duration::from_secs(30);

fn event(raw: &str) -> ChangeEvent {
    ChangeEvent::from_json(raw.as_bytes()).unwrap()
}

// The row's company and location, not the envelope's, make the partition key (§7.8).
const A: &str = r#"{"operation":"UPDATE","id":"ev-a","table":"order","key":["gcp-us-west1","k1"],"companyId":"env-c","locationId":"env-l","after":{"id":"k1","companyId":"c1","locationId":"l1","note":"a<b"},"timestamp":1795749176123,"region":"kept"}"#;
const B: &str = r#"{"operation":"INSERT","id":"ev-b","table":"customer","key":["c9"],"companyId":"env-c","after":{"id":"c9","companyId":"row-company","locationId":7},"timestamp":1795749176999}"#;
const C: &str = r#"{"operation":"DELETE","id":"ev-c","table":"vehicle","key":["v/2 ü"],"locationId":"l2","before":{"id":"v/2 ü","locationId":"row-l"},"timestamp":1795749177000}"#;

const URL: &str =
    "eventhub://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=s3cr+t/k=;EntityPath=my-hub";

#[test]
fn keys_come_from_the_row_object_or_none() {
    let (a, b, c) = (event(A), event(B), event(C));
    assert_eq!(partition_key(&a), "order.c1.l1.k1");
    assert_eq!(object_id(&a), "dbchange.order.UPDATE.c1.l1.k1");
    // A location that is not a string is NONE, as EDS's type assertion made it.
    assert_eq!(partition_key(&b), "customer.row-company.NONE.c9");
    assert_eq!(object_id(&b), "dbchange.customer.INSERT.row-company.NONE.c9");
    // A DELETE's row is its `before`.
    assert_eq!(partition_key(&c), "vehicle.NONE.row-l.v/2 ü");
    assert_eq!(object_id(&c), "dbchange.vehicle.DELETE.NONE.row-l.v/2 ü");
    let d = event(
        r#"{"operation":"INSERT","id":"ev-d","table":"t","key":["k"],"companyId":"x","after":{"id":"k","companyId":""}}"#,
    );
    assert_eq!(partition_key(&d), "t.NONE.NONE.k");
}

#[test]
fn urls_parse_as_eds_connection_strings_with_options() {
    let c = parse(URL).unwrap();
    assert_eq!((c.namespace.as_str(), c.hub.as_str()), ("ns.servicebus.windows.net", "my-hub"));
    assert_eq!(c.credential, Credential::Key { name: "send".into(), key: "s3cr+t/k=".into() });
    assert_eq!((c.endpoint.as_deref(), c.timeout), (None, DEFAULT_TIMEOUT));
    // The connection string is Endpoint=sb:// and the rest, the key as it was (no decoding).
    assert_eq!(
        c.connection_string(),
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=s3cr+t/k=;EntityPath=my-hub"
    );
    assert_eq!(c.address(), "amqps://ns.servicebus.windows.net");
    assert!(!format!("{c:?}").contains("s3cr"), "Debug hides the key: {c:?}");
    let c = parse(&format!("{URL}?name=e&start=oldest&eds-x=1&timeout=1500ms&endpoint=amqp://127.0.0.1:5672")).unwrap();
    assert_eq!((c.timeout, c.endpoint.as_deref()), (Duration::from_millis(1500), Some("amqp://127.0.0.1:5672")));
    assert_eq!(c.address(), "amqp://127.0.0.1:5672");
    let c = parse("EVENTHUB://h/;entitypath=e;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=send?endpoint=amqps://proxy")
        .unwrap();
    assert_eq!(c.credential, Credential::Signature("SharedAccessSignature sr=x&sig=y&se=1&skn=send".into()));
    assert!(!format!("{c:?}").contains("sig=y"));
    assert_eq!(c.endpoint.as_deref(), Some("amqps://proxy"));
}

#[test]
fn bad_urls_are_configuration_errors_naming_the_problem_without_secrets() {
    let base = "eventhub://ns/;SharedAccessKeyName=send;SharedAccessKey=s3cret;EntityPath=h";
    for (url, says) in [
        ("kafka://ns/;SharedAccessKeyName=send;SharedAccessKey=s3cret;EntityPath=h", "scheme"),
        ("eventhub:///;SharedAccessKeyName=send;SharedAccessKey=s3cret;EntityPath=h", "no namespace host"),
        ("eventhub://ns/;SharedAccessKeyName=send;SharedAccessKey=s3cret", "no EntityPath"),
        ("eventhub://ns/;SharedAccessKey=s3cret;EntityPath=h", "without a SharedAccessKeyName"),
        ("eventhub://ns/;SharedAccessKeyName=send;EntityPath=h", "without a SharedAccessKey"),
        ("eventhub://ns/;EntityPath=h", "no credential"),
        ("eventhub://ns/;SharedAccessKeyName=send;SharedAccessKey=s3cret;EntityPath=h/x", "not an Event Hub name"),
        ("eventhub://ns/;SharedAccessKeyName=send;s3cret;EntityPath=h", "not Name=value"),
        ("eventhub://ns/;SharedAccessKeyName=send;SharedAccessKey=s3cret;EntityPath=h;Bogus=1", "\"Bogus\""),
        ("eventhub://ns/;SharedAccessKeyName=send;SharedAccessKey=;EntityPath=h", "SharedAccessKey is empty"),
        ("eventhub://ns/;SharedAccessSignature=s3cret;EntityPath=h", "must start with"),
        (&format!("{base}?timeout=0s"), "timeout"),
        (&format!("{base}?timeout=51s"), "timeout"),
        (&format!("{base}?timeout=forever"), "timeout"),
        (&format!("{base}?endpoint=http://x:1"), "amqp://"),
        (&format!("{base}?endpoint=amqp://x:99999"), "port"),
        (&format!("{base}?endpoint=amqp://"), "host and a port"),
        (&format!("{base}?acks=1"), "unknown option \"acks\""),
    ] {
        let e = parse(url).unwrap_err();
        assert_eq!(e.class, ErrorClass::Config, "{url}");
        assert!(e.message.contains(says), "{url}: {}", e.message);
        assert!(!e.message.contains("s3cret"), "{url}: the key is printed: {}", e.message);
    }
}

#[test]
fn hq_forms_become_urls_the_driver_reads() {
    use crate::form::url_from_form;
    let form = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k+/=;EntityPath=hub";
    let url = url_from_form(&DESCRIPTION, &form(serde_json::json!({ "Connection String": cs }))).unwrap();
    assert_eq!(
        url,
        "eventhub://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k+/=;EntityPath=hub"
    );
    assert_eq!(parse(&url).unwrap().connection_string(), cs);
    for bad in ["sb://ns/;EntityPath=h", "Endpoint=ns;EntityPath=h"] {
        let errors = url_from_form(&DESCRIPTION, &form(serde_json::json!({ "Connection String": bad }))).unwrap_err();
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert!(errors[0].error.contains("Endpoint="), "{errors:?}");
    }
    let errors = url_from_form(&DESCRIPTION, &form(serde_json::json!({}))).unwrap_err();
    assert_eq!(errors[0].field, "Connection String");
}

#[test]
fn errors_are_classified_for_the_drain() {
    for (text, class) in [
        ("AMQP Error: ManagementStatusCode(401, Some(\"InvalidSignature: signature mismatch\"))", ErrorClass::Config),
        ("link detached: amqp:unauthorized-access Unauthorized access", ErrorClass::Config),
        ("amqp:not-found: The messaging entity 'x' could not be found.", ErrorClass::Config),
        ("AMQP Error: Management API returned status code: 404 (Not Found)", ErrorClass::Config),
        ("AMQP Error: Management API returned status code: 401 (Unauthorized)", ErrorClass::Config),
        ("AMQP Error: Management API returned status code: 503 (Service Unavailable)", ErrorClass::Transient),
        ("amqp:link:message-size-exceeded", ErrorClass::TooLarge),
        ("Connection refused (os error 111)", ErrorClass::Transient),
        ("amqp:internal-error: the test double rejects every transfer now", ErrorClass::Transient),
        ("no answer within the timeout", ErrorClass::Transient),
        ("Invalid argument (os error 22)", ErrorClass::Transient),
        ("link detached: amqp:invalid-field: the partition key is too long", ErrorClass::Unknown),
        ("amqp:decode-error: cannot decode", ErrorClass::Unknown),
    ] {
        assert_eq!(classify(text), class, "{text}");
    }
}

/// Each event of `raws` at LSN 100, 101, ….
fn deliveries<'a>(events: &'a [ChangeEvent], raws: &'a [&'a str]) -> Vec<Delivery<'a>> {
    events.iter().zip(raws).zip(100..).map(|((event, raw), lsn)| Delivery { lsn, event, raw: raw.as_bytes() }).collect()
}

/// Checks a received message against the delivery it came from: every part as EDS laid it out.
fn check(m: &Received, d: &Delivery<'_>) {
    assert_eq!(m.body, d.raw, "the body is the event exactly as received");
    assert_eq!(m.message_id, serde_json::json!(d.event.id));
    assert_eq!(m.content_type, serde_json::json!("application/json"));
    assert_eq!(m.partition_key, serde_json::json!(partition_key(d.event)));
    assert_eq!(m.partition, None, "sent to the hub, which places it by its partition key");
    let props: BTreeMap<String, serde_json::Value> = [
        (OBJECT_ID_PROPERTY.to_owned(), serde_json::json!(object_id(d.event))),
        (LSN_PROPERTY.to_owned(), serde_json::json!(d.lsn.to_string())),
    ]
    .into();
    assert_eq!(m.properties, props);
}

/// `test()` passing, with a passing error tried again as the drain would (at most three times):
/// fe2o3-amqp can lose an answer, and the operation then ends in its timeout (see the README).
/// The check reads only, so trying it again changes nothing.
async fn passes_test(driver: &dyn Driver) {
    let mut errors = Vec::new();
    for _ in 0..3 {
        match driver.test().await {
            Ok(()) => return,
            Err(e) if e.class == ErrorClass::Transient => errors.push(e.to_string()),
            Err(e) => panic!("test() failed: {e}"),
        }
    }
    panic!("test() failed three times: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_eds_properties_partition_key_and_the_event_as_received() {
    let double = Double::start();
    let driver = open(&double.url("name=e")).unwrap();
    passes_test(driver.as_ref()).await;
    conformance::description_is_complete(driver.as_ref()).unwrap();
    let raws = [A, B, C];
    let events: Vec<ChangeEvent> = raws.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &raws);
    driver.write(Batch::Events(&batch)).await.unwrap();
    let got = double.wait_for(3, READ);
    assert_eq!(got.len(), 3, "{got:?}");
    for d in &batch {
        let m = got.iter().find(|m| m.lsn() == d.lsn).unwrap_or_else(|| panic!("LSN {} missing: {got:?}", d.lsn));
        check(m, d);
        assert!(m.batch, "sent in a batch envelope: {m:?}");
    }
}

/// `n` UPDATE events over 37 keys in 3 companies.
fn many(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"operation":"UPDATE","id":"e{i}","table":"order","key":["k{}"],"after":{{"id":"k{}","companyId":"c{}","n":{i}}},"timestamp":{i}}}"#,
                i % 37,
                i % 37,
                i % 3,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_and_a_replay_repeats_each_exactly() {
    let double = Double::start();
    let driver = open(&double.url("")).unwrap();
    let raws = many(500);
    let refs: Vec<&str> = raws.iter().map(String::as_str).collect();
    let events: Vec<ChangeEvent> = refs.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &refs);
    // Harmless for a hub (append-only): a replay sends the same messages again, each with the same
    // eds-lsn, body, id, partition key and properties, so a consumer that drops an eds-lsn it has
    // seen reads exactly what it read once. A second, different message with a seen eds-lsn would
    // show as a conflict.
    let deduplicated = || {
        let mut view: BTreeMap<u64, Received> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for m in double.received() {
            let (lsn, m) = (m.lsn(), m.content());
            match view.get(&lsn) {
                Some(seen) if *seen != m => conflicts.push((lsn, m)),
                Some(_) => {}
                None => {
                    view.insert(lsn, m);
                }
            }
        }
        (view, conflicts)
    };
    conformance::replay_is_harmless(driver.as_ref(), Batch::Events(&batch), deduplicated).await.unwrap();
    let all = double.wait_for(1000, READ);
    assert_eq!(all.len(), 1000, "every message twice: once, then its replay");
    let (view, conflicts) = deduplicated();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(view.len(), 500);
    for d in &batch {
        check(&view[&d.lsn], d);
    }
    // One batch per partition key and write (111 keys: 37 rows in 3 companies; 2 writes); within
    // a key, log order.
    let transfers: std::collections::BTreeSet<u64> = all.iter().map(|m| m.transfer).collect();
    assert_eq!(transfers.len(), 2 * 111, "one batch per partition key and write");
    for t in transfers {
        let lsns: Vec<u64> = all.iter().filter(|m| m.transfer == t).map(Received::lsn).collect();
        let keys: std::collections::BTreeSet<String> =
            all.iter().filter(|m| m.transfer == t).map(|m| m.partition_key.to_string()).collect();
        assert_eq!(keys.len(), 1, "transfer {t} mixes partition keys: {keys:?}");
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "transfer {t} out of log order: {lsns:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_sized_by_the_links_maximum_message_size() {
    let double = Double::start_with(Options { max_message_size: 8192, ..Options::default() });
    let driver = open(&double.url("")).unwrap();
    // One key: 200 events of about 250 bytes do not fit one 8 KiB transfer.
    let raws: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"operation":"UPDATE","id":"e{i}","table":"order","key":["k"],"after":{{"id":"k","companyId":"c","pad":"{}"}},"timestamp":{i}}}"#,
                "p".repeat(100)
            )
        })
        .collect();
    let refs: Vec<&str> = raws.iter().map(String::as_str).collect();
    let events: Vec<ChangeEvent> = refs.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &refs);
    driver.write(Batch::Events(&batch)).await.unwrap();
    let got = double.wait_for(200, READ);
    let lsns: Vec<u64> = got.iter().map(Received::lsn).collect();
    assert_eq!(lsns, (100..300).collect::<Vec<u64>>(), "every event once, in log order");
    let mut per_transfer: BTreeMap<u64, usize> = BTreeMap::new();
    for m in &got {
        *per_transfer.entry(m.transfer).or_default() += m.body.len();
    }
    assert!(per_transfer.len() >= 6, "{per_transfer:?}");
    assert!(per_transfer.values().all(|bytes| *bytes < 8192), "{per_transfer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_rejected_naming_its_size_and_the_limit_and_nothing_is_sent() {
    let double = Double::start_with(Options { max_message_size: 4096, ..Options::default() });
    let driver = open(&double.url("")).unwrap();
    let big = format!(
        r#"{{"operation":"INSERT","id":"big","table":"order","key":["k"],"after":{{"id":"k","blob":"{}"}},"timestamp":1}}"#,
        "x".repeat(5000)
    );
    // Bigger than half the limit: too big for a batch of its own (the client counts the envelope
    // beside it), small enough for the link: sent alone.
    let middling = format!(
        r#"{{"operation":"INSERT","id":"mid","table":"order","key":["m"],"after":{{"id":"m","blob":"{}"}},"timestamp":1}}"#,
        "y".repeat(2500)
    );
    let raws = [A, big.as_str(), C, middling.as_str()];
    let events: Vec<ChangeEvent> = raws.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &raws);
    let e = driver.write(Batch::Events(&batch)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Rejected, "{e}");
    assert!(e.message.contains("LSN 101") && e.message.contains("4096 bytes"), "{e}");
    let said: usize = e.message.split(" is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(said > big.len() && said < big.len() + 400, "{said} bytes for a {}-byte event: {e}", big.len());
    // Alone it is refused the same way; the rest of the batch goes through.
    let e = driver.write(Batch::Events(&batch[1..2])).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Rejected);
    assert!(double.received().is_empty(), "nothing of a refused batch is sent");
    driver.write(Batch::Events(&[batch[0], batch[2], batch[3]])).await.unwrap();
    let got = double.wait_for(3, READ);
    assert_eq!(got.len(), 3);
    for d in [&batch[0], &batch[2], &batch[3]] {
        check(got.iter().find(|m| m.lsn() == d.lsn).unwrap(), d);
    }
    let alone = got.iter().find(|m| m.lsn() == 103).unwrap();
    assert!(!alone.batch, "the middling event went alone: {alone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_hub_is_a_transient_error_within_the_timeout_and_a_restarted_one_takes_the_batch() {
    let mut double = Double::start();
    let port = double.port;
    let driver = open(&double.url("timeout=3s")).unwrap();
    let a = event(A);
    let one = [Delivery { lsn: 1, event: &a, raw: A.as_bytes() }];
    driver.write(Batch::Events(&one)).await.unwrap();
    double.kill();
    let started = Instant::now();
    let e = driver.write(Batch::Events(&one)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(took < Duration::from_secs(20), "took {took:?}, not bounded by the 3 s timeout: {e}");
    assert!(e.message.contains("eds-hub"), "{e}");
    let started = Instant::now();
    assert_eq!(driver.test().await.unwrap_err().class, ErrorClass::Transient);
    assert!(started.elapsed() < Duration::from_secs(20));
    // The hub is back (on the same port): the same driver delivers again.
    let double = Double::start_with(Options { port, ..Options::default() });
    driver.write(Batch::Events(&one)).await.unwrap();
    check(&double.wait_for(1, READ)[0], &one[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_never_settles_is_a_transient_error_within_the_timeout() {
    let mut double = Double::start();
    let driver = open(&double.url("timeout=2s")).unwrap();
    let a = event(A);
    let one = [Delivery { lsn: 1, event: &a, raw: A.as_bytes() }];
    passes_test(driver.as_ref()).await;
    double.set_mode("hang");
    let started = Instant::now();
    let e = driver.write(Batch::Events(&one)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(e.message.contains("timeout"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    double.set_mode("reject");
    let e = driver.write(Batch::Events(&one)).await.unwrap_err();
    assert!(e.message.contains("InternalError") && e.message.contains("rejects every transfer"), "{e}");
    assert!(double.received().is_empty(), "{:?}", double.received());
    double.set_mode("accept");
    driver.write(Batch::Events(&one)).await.unwrap();
    assert_eq!(double.wait_for(1, READ).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_hub_is_a_configuration_error() {
    let double = Double::start();
    let a = event(A);
    let one = [Delivery { lsn: 1, event: &a, raw: A.as_bytes() }];
    let wrong_key = double.url("timeout=5s").replace(KEY, "d3JvbmcK");
    let driver = open(&wrong_key).unwrap();
    let e = driver.test().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Config, "{e}");
    assert!(!e.message.contains("d3JvbmcK"), "{e}");
    assert_eq!(driver.write(Batch::Events(&one)).await.unwrap_err().class, ErrorClass::Config);
    let wrong_hub = double.url("timeout=5s").replace("EntityPath=eds-hub", "EntityPath=other");
    let driver = open(&wrong_hub).unwrap();
    let e = driver.write(Batch::Events(&one)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Config, "{e}");
    assert!(double.received().is_empty());
    assert!(!crate::url::redact(&wrong_key).contains("d3JvbmcK"));
    assert!(wrong_key.contains(NAMESPACE) && wrong_key.contains(KEY_NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_batches_are_refused_as_a_configuration_error() {
    let driver = open(&format!("{URL}?endpoint=amqp://127.0.0.1:1")).unwrap();
    assert_eq!(driver.write(Batch::Folded(&[])).await.unwrap_err().class, ErrorClass::Config);
    driver.write(Batch::Events(&[])).await.unwrap();
}
