//! Against a real broker: tansu (a Kafka-compatible broker), started per test on a free port
//! from `TANSU_BIN` (scripts/test.sh installs it). Tests without a broker check the URL, the
//! hashes and the settings handed to librdkafka.

use super::tansu::{consume_all, Consumed, Tansu};
use super::*;
use crate::conformance;
use crate::driver::{Batch, Delivery, ErrorClass};
use crate::event::ChangeEvent;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long reading a topic back may take.
const READ: Duration = Duration::from_secs(30);

fn event(raw: &str) -> ChangeEvent {
    ChangeEvent::from_json(raw.as_bytes()).unwrap()
}

const A: &str = r#"{"operation":"UPDATE","id":"ev-a","table":"order","key":["gcp-us-west1","k1"],"companyId":"c1","locationId":"l1","after":{"id":"k1","note":"a<b"},"timestamp":1795749176123,"region":"kept"}"#;
const B: &str = r#"{"operation":"INSERT","id":"ev-b","table":"customer","key":["c9"],"after":{"id":"c9","companyId":"row-company"},"timestamp":1795749176999}"#;
const C: &str = r#"{"operation":"DELETE","id":"ev-c","table":"vehicle","key":["v/2 ü"],"locationId":"l2","before":{"id":"v/2 ü"},"timestamp":1795749177000}"#;

#[test]
fn hashes_match_eds_vectors() {
    // §6.5: Hash concatenates its values as Go's %+v prints them.
    for (text, hex) in [
        ("", "ef46db3751d8e999"),
        ("hello", "26c7827d889f6da3"),
        ("hello42true", "d481b75d0fa4abff"),
        ("hello42true<nil>", "a668199a6b3fc355"),
        ("<nil>", "7c5b4e400f80bf7c"),
    ] {
        assert_eq!(hash(text), hex, "Hash({text:?})");
    }
    for (text, n, m) in [("", 10, 1), ("1", 1, 0), ("1", 2, 0), ("1", 3, 1), ("1 2 3 4", 10, 5)] {
        assert_eq!(modulo(text, n), m, "Modulo({text:?}, {n})");
    }
}

#[test]
fn partitions_are_chosen_as_eds_chose_them() {
    let key = "order.c1.l1.k1";
    assert_eq!(partition_for(key, 1), 0);
    assert_eq!(partition_for(key, 0), 0, "no partitions known: 0, never a division by zero");
    for n in [2, 3, 7, 64] {
        let p = partition_for(key, n);
        assert_eq!(p, i32::try_from(modulo(&hash(key), u32::try_from(n).unwrap())).unwrap());
        assert!((0..n).contains(&p));
    }
    // Spread: 300 keys over 3 partitions use each.
    let mut seen = [0; 3];
    for i in 0..300 {
        seen[usize::try_from(partition_for(&format!("order.c1.l1.k{i}"), 3)).unwrap()] += 1;
    }
    assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
}

#[test]
fn keys_and_partition_keys_use_the_envelope_or_none() {
    let (a, b, c) = (event(A), event(B), event(C));
    assert_eq!(message_key(&a), "dbchange.order.UPDATE.c1.l1.ev-a");
    assert_eq!(partition_key(&a), "order.c1.l1.k1");
    // The row's companyId is not the envelope's: NONE.
    assert_eq!(message_key(&b), "dbchange.customer.INSERT.NONE.NONE.ev-b");
    assert_eq!(partition_key(&b), "customer.NONE.NONE.c9");
    assert_eq!(message_key(&c), "dbchange.vehicle.DELETE.NONE.l2.ev-c");
    assert_eq!(partition_key(&c), "vehicle.NONE.l2.v/2 ü");
    // Empty is NONE too, as EDS had it (else key and partition would differ from EDS's).
    let d = ChangeEvent::from_json(
        br#"{"operation":"INSERT","id":"ev-d","table":"t","key":["k"],"companyId":"","locationId":"","after":{"id":"k"}}"#,
    )
    .unwrap();
    assert_eq!(message_key(&d), "dbchange.t.INSERT.NONE.NONE.ev-d");
    assert_eq!(partition_key(&d), "t.NONE.NONE.k");
}

#[test]
fn urls_parse_with_defaults_and_options() {
    let c = parse("kafka://kafka/topic").unwrap();
    assert_eq!((c.brokers, c.topic.as_str()), (vec!["kafka:9092".to_owned()], "topic"));
    assert_eq!((c.tls, c.sasl, c.timeout, c.compression), (false, None, DEFAULT_TIMEOUT, Compression::None));
    assert_eq!(c.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    let c = parse("kafka://a:19092,b,[::1]:9093/eds.events-1?name=k&start=now&eds-x=1&timeout=1500ms&compression=lz4&max-message-bytes=5000").unwrap();
    assert_eq!(c.brokers, ["a:19092", "b:9092", "[::1]:9093"]);
    assert_eq!(c.topic, "eds.events-1");
    assert_eq!((c.timeout, c.compression, c.max_message_bytes), (Duration::from_millis(1500), Compression::Lz4, 5000));
    let c = parse("kafka://u%40x:p%3Ass@k:9092/t?tls=true&ca=/etc/ca.pem&sasl-mechanism=SCRAM-SHA-512").unwrap();
    let sasl = c.sasl.clone().unwrap();
    assert_eq!(
        (sasl.mechanism, sasl.username.as_str(), sasl.password.as_str()),
        (SaslMechanism::ScramSha512, "u@x", "p:ss")
    );
    assert_eq!((c.tls, c.ca.as_deref()), (true, Some(std::path::Path::new("/etc/ca.pem"))));
    assert_eq!(c.security_protocol(), "sasl_ssl");
    assert!(!format!("{c:?}").contains("p:ss"), "Debug hides the password");
    let c = parse("kafka://k/t?sasl-username=me&sasl-password=s3+cr%2Bet%20").unwrap();
    let sasl = c.sasl.unwrap();
    assert_eq!(sasl.mechanism, SaslMechanism::Plain);
    assert_eq!(sasl.password, "s3+cr+et ", "a plus stays a plus; escapes are decoded");
}

#[test]
fn bad_urls_are_configuration_errors_naming_the_problem_without_secrets() {
    for (url, says) in [
        ("kafka://k:9092", "no topic"),
        ("kafka://k:9092/", "no topic"),
        ("kafka:///t", "no broker"),
        ("postgres://k/t", "scheme"),
        ("kafka://k:99999/t", "port"),
        ("kafka://k:0/t", "port"),
        ("kafka://:9092/t", "no host"),
        ("kafka://k/bad%20topic", "not a Kafka topic name"),
        ("kafka://k/t?acks=1", "unknown option \"acks\""),
        ("kafka://k/t?timeout=forever", "timeout"),
        ("kafka://k/t?timeout=0s", "timeout"),
        ("kafka://k/t?timeout=5m", "timeout"),
        ("kafka://k/t?timeout=51s", "timeout"),
        ("kafka://k/t?compression=brotli", "compression"),
        ("kafka://k/t?max-message-bytes=10", "max-message-bytes"),
        ("kafka://k/t?tls=maybe", "tls"),
        ("kafka://k/t?sasl-mechanism=GSSAPI&sasl-username=u&sasl-password=s3cret", "sasl-mechanism"),
        ("kafka://k/t?sasl-mechanism=PLAIN", "needs a user name"),
        ("kafka://u:s3cret@k/t?sasl-mechanism=PLAIN&bogus=1", "bogus"),
        ("kafka://k/t?sasl-password=s3cret", "without a user name"),
        ("kafka://k/t?ca=/x.pem", "need tls=true"),
    ] {
        let e = parse(url).unwrap_err();
        assert_eq!(e.class, ErrorClass::Config, "{url}");
        assert!(e.message.contains(says), "{url}: {}", e.message);
        assert!(!e.message.contains("s3cret"), "{url}: the password is printed: {}", e.message);
    }
}

#[test]
fn hq_forms_become_urls_the_driver_reads() {
    use crate::form::url_from_form;
    let form = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let url = url_from_form(
        &DESCRIPTION,
        &form(serde_json::json!({"Brokers": "a:9092, b:9093", "Topic": "eds", "Username": "me", "Password": "p@ss:/", "TLS": "true"})),
    )
    .unwrap();
    assert_eq!(url, "kafka://me:p%40ss%3A%2F@a:9092,b:9093/eds?tls=true");
    let c = parse(&url).unwrap();
    assert_eq!((c.brokers.len(), c.tls), (2, true));
    assert_eq!(c.sasl.map(|s| (s.mechanism, s.password)), Some((SaslMechanism::Plain, "p@ss:/".to_owned())));
    let url = url_from_form(&DESCRIPTION, &form(serde_json::json!({"Brokers": "kafka", "Topic": "t"}))).unwrap();
    assert_eq!(parse(&url).unwrap().brokers, ["kafka:9092"]);
    let errors = url_from_form(&DESCRIPTION, &form(serde_json::json!({"Username": "me", "TLS": "maybe"}))).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["Brokers", "Topic", "Password", "TLS"], "{errors:?}");
}

#[test]
fn librdkafka_gets_the_idempotent_producer_and_the_security_settings() {
    let c =
        parse("kafka://u:s3cret@a:1,b:2/t?tls=true&insecure-skip-verify=true&sasl-mechanism=SCRAM-SHA-256&timeout=7s")
            .unwrap();
    let cc = client_config(&c);
    let get = |k: &str| cc.get(k).unwrap_or_else(|| panic!("{k} not set")).to_owned();
    assert_eq!(get("bootstrap.servers"), "a:1,b:2");
    assert_eq!((get("enable.idempotence"), get("acks")), ("true".into(), "all".into()));
    assert_eq!(get("message.timeout.ms"), "7000");
    assert_eq!((get("security.protocol"), get("sasl.mechanism")), ("sasl_ssl".into(), "SCRAM-SHA-256".into()));
    assert_eq!((get("sasl.username"), get("sasl.password")), ("u".into(), "s3cret".into()));
    assert_eq!(get("enable.ssl.certificate.verification"), "false");
    // librdkafka accepts every setting (SCRAM and TLS are built in).
    KafkaDriver::new(c).unwrap();
}

#[test]
fn errors_are_classified_for_the_drain() {
    use rdkafka::error::RDKafkaErrorCode as C;
    for code in [C::MessageTimedOut, C::LeaderNotAvailable, C::NotEnoughReplicas, C::QueueFull, C::AllBrokersDown] {
        assert_eq!(classify(code), ErrorClass::Transient, "{code:?}");
    }
    for code in [C::BrokerTransportFailure, C::RequestTimedOut, C::NotLeaderForPartition, C::Fatal] {
        assert_eq!(classify(code), ErrorClass::Transient, "{code:?}");
    }
    for code in [C::SaslAuthenticationFailed, C::Authentication, C::TopicAuthorizationFailed, C::InvalidTimestamp] {
        assert_eq!(classify(code), ErrorClass::Config, "{code:?}");
    }
    // Retriable in Kafka's protocol: a corrupt message on the way, a topic or partition unknown
    // while brokers restart (a missing topic is found by the metadata check).
    for code in [C::InvalidMessage, C::UnknownTopicOrPartition] {
        assert_eq!(classify(code), ErrorClass::Transient, "{code:?}");
    }
    assert_eq!(classify(C::MessageSizeTooLarge), ErrorClass::Rejected);
}

/// Each event of `raws` at LSN 100, 101, ….
fn deliveries<'a>(events: &'a [ChangeEvent], raws: &'a [&'a str]) -> Vec<Delivery<'a>> {
    events.iter().zip(raws).zip(100..).map(|((event, raw), lsn)| Delivery { lsn, event, raw: raw.as_bytes() }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_eds_key_headers_partition_and_the_event_as_received() {
    let tansu = Tansu::start();
    tansu.create_topic("layout", 3);
    let driver = open(&tansu.url("layout", "?name=k")).unwrap();
    driver.test().await.unwrap();
    conformance::description_is_complete(driver.as_ref()).unwrap();
    let raws = [A, B, C];
    let events: Vec<ChangeEvent> = raws.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &raws);
    driver.write(Batch::Events(&batch)).await.unwrap();
    let mut got = consume_all(&tansu.addr(), "layout", READ);
    got.sort_by_key(Consumed::lsn);
    assert_eq!(got.len(), 3, "{got:?}");
    for (m, (d, raw)) in got.iter().zip(batch.iter().zip(raws)) {
        assert_eq!(m.key, message_key(d.event).into_bytes());
        let pk = partition_key(d.event);
        assert_eq!(
            m.headers,
            [
                (PARTITION_KEY_HEADER.to_owned(), pk.clone().into_bytes()),
                (LSN_HEADER.to_owned(), d.lsn.to_string().into_bytes())
            ]
        );
        assert_eq!(m.partition, partition_for(&pk, 3), "{pk}");
        assert_eq!(m.value, raw.as_bytes(), "the value is the event exactly as received");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_and_a_replay_repeats_each_exactly() {
    let tansu = Tansu::start();
    tansu.create_topic("replay", 3);
    let driver = open(&tansu.url("replay", "")).unwrap();
    let raws: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"operation":"UPDATE","id":"e{i}","table":"order","key":["k{}"],"companyId":"c{}","after":{{"id":"k{}","n":{i}}},"timestamp":{i}}}"#,
                i % 37,
                i % 3,
                i % 37
            )
        })
        .collect();
    let refs: Vec<&str> = raws.iter().map(String::as_str).collect();
    let events: Vec<ChangeEvent> = refs.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &refs);
    // Harmless for Kafka (append-only): a replay sends the same messages again, each with the same
    // eds-lsn, key, partition, headers and value, so a consumer that drops an eds-lsn it has seen
    // reads exactly what it read once. The snapshot is that consumer's view; a second, different
    // message with a seen eds-lsn would show as a conflict.
    let address = tansu.addr();
    let deduplicated = || {
        let mut view: BTreeMap<u64, Consumed> = BTreeMap::new();
        let mut conflicts = Vec::new();
        for m in consume_all(&address, "replay", READ) {
            let (lsn, m) = (m.lsn(), m.without_offset());
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
    let all = consume_all(&address, "replay", READ);
    assert_eq!(all.len(), 1000, "every message twice: once, then its replay");
    let (view, conflicts) = deduplicated();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(view.len(), 500);
    for (d, raw) in batch.iter().zip(&refs) {
        let m = &view[&d.lsn];
        assert_eq!((m.key.as_slice(), m.value.as_slice()), (message_key(d.event).as_bytes(), raw.as_bytes()));
        assert_eq!(m.partition, partition_for(&partition_key(d.event), 3));
    }
    // Each partition holds its messages in log order, then the replay in the same order.
    for p in 0..3 {
        let lsns: Vec<u64> = all.iter().filter(|m| m.partition == p).map(Consumed::lsn).collect();
        let (once, again) = lsns.split_at(lsns.len() / 2);
        assert!(!once.is_empty() && once.windows(2).all(|w| w[0] < w[1]), "partition {p}: {lsns:?}");
        assert_eq!(once, again, "partition {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_rejected_naming_its_size_and_the_limit_and_nothing_is_sent() {
    let tansu = Tansu::start();
    tansu.create_topic("big", 3);
    let driver = open(&tansu.url("big", "?max-message-bytes=2000")).unwrap();
    let big = format!(
        r#"{{"operation":"INSERT","id":"big","table":"order","key":["k"],"after":{{"id":"k","blob":"{}"}},"timestamp":1}}"#,
        "x".repeat(3000)
    );
    let raws = [A, big.as_str(), C];
    let events: Vec<ChangeEvent> = raws.iter().map(|r| event(r)).collect();
    let batch = deliveries(&events, &raws);
    let e = driver.write(Batch::Events(&batch)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Rejected, "{e}");
    let size = big.len() + message_key(&events[1]).len();
    assert!(e.message.contains("LSN 101") && e.message.contains("max-message-bytes=2000"), "{e}");
    let said: usize = e.message.split(" is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(said > size && said < size + 300, "{said} bytes for a {size}-byte key and value: {e}");
    // Alone it is refused the same way; the rest of the batch goes through.
    let e = driver.write(Batch::Events(&batch[1..2])).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Rejected);
    assert!(consume_all(&tansu.addr(), "big", READ).is_empty(), "nothing of a refused batch is sent");
    driver.write(Batch::Events(&[batch[0], batch[2]])).await.unwrap();
    assert_eq!(consume_all(&tansu.addr(), "big", READ).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_is_a_transient_error_within_the_timeout() {
    let mut tansu = Tansu::start();
    tansu.create_topic("outage", 3);
    let driver = open(&tansu.url("outage", "?timeout=3s")).unwrap();
    let a = event(A);
    let one = [Delivery { lsn: 1, event: &a, raw: A.as_bytes() }];
    driver.write(Batch::Events(&one)).await.unwrap();
    tansu.child.kill().unwrap();
    tansu.child.wait().unwrap();
    let started = Instant::now();
    let e = driver.write(Batch::Events(&one)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    // Bounded by the URL's 3 s (a metadata request and a delivery at most), well under the
    // default 30 s; generous for a loaded machine.
    assert!(took < Duration::from_secs(25), "took {took:?}, not bounded by the 3 s timeout: {e}");
    assert!(e.message.contains("not acknowledged") || e.message.contains("asking Kafka"), "{e}");
    // `test` says so too, within the timeout.
    let started = Instant::now();
    assert_eq!(driver.test().await.unwrap_err().class, ErrorClass::Transient);
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_batches_are_refused_as_a_configuration_error() {
    let driver = open("kafka://127.0.0.1:1/t").unwrap();
    assert_eq!(driver.write(Batch::Folded(&[])).await.unwrap_err().class, ErrorClass::Config);
    driver.write(Batch::Events(&[])).await.unwrap();
}

/// A missing topic, when brokers may not create it (`create-topic=false`), is a configuration
/// error naming it — at `test` and at `write`; once it exists, both go through. (Brokers that
/// create topics, as tansu does by default, get it created at the first write.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_configuration_error_naming_it() {
    let tansu = Tansu::start();
    let driver = open(&tansu.url("absent", "?timeout=3s&create-topic=false")).unwrap();
    let e = driver.test().await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Config, "{e}");
    assert!(e.message.contains("\"absent\"") && e.message.contains("Unknown topic"), "{e}");
    let a = event(A);
    let one = [Delivery { lsn: 1, event: &a, raw: A.as_bytes() }];
    let e = driver.write(Batch::Events(&one)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Config, "{e}");
    tansu.create_topic("absent", 2);
    driver.test().await.unwrap();
    driver.write(Batch::Events(&one)).await.unwrap();
    let got = consume_all(&tansu.addr(), "absent", READ);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].partition, partition_for(&partition_key(&a), 2));
}
