use super::*;
use crate::conformance;
use crate::driver::{Batch, Delivery, Driver, ErrorClass};
use crate::event::ChangeEvent;
use crate::naming::escape;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn event(raw: &str) -> ChangeEvent {
    ChangeEvent::from_json(raw.as_bytes()).unwrap()
}

/// Every file below `dir` (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

const A: &str = r#"{"operation":"UPDATE","table":"order","key":["gcp","k1"],"after":{"id":"k1","note":"a<b"},"timestamp":1795749176123,"region":"unknown-field-kept"}"#;
const B: &str = r#"{"operation":"UPDATE","table":"order","key":["gcp","k1"],"after":{"id":"k1","note":"second"},"timestamp":1795749176999}"#;
const C: &str =
    r#"{"operation":"DELETE","table":"customer","key":["gcp","c9"],"before":{"id":"c9"},"timestamp":1795749177000}"#;

#[tokio::test]
async fn writes_each_event_as_received_in_eds_layout() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FileDriver::new(dir.path());
    let (a, b, c) = (event(A), event(B), event(C));
    let batch = [
        Delivery { lsn: 7, event: &a, raw: A.as_bytes() },
        Delivery { lsn: 8, event: &b, raw: B.as_bytes() },
        Delivery { lsn: 9, event: &c, raw: C.as_bytes() },
    ];
    driver.write(Batch::Events(&batch)).await.unwrap();
    let files = snapshot(dir.path());
    let expect: BTreeMap<PathBuf, Vec<u8>> = [
        ("order/1795749176-k1.json", A),
        // Same key, same second, another event: its own file, named by LSN.
        ("order/1795749176-k1+8.json", B),
        ("customer/1795749177-c9.json", C),
    ]
    .iter()
    .map(|(p, raw)| (PathBuf::from(p), raw.as_bytes().to_vec()))
    .collect();
    assert_eq!(files, expect);
    // Bytes as received: the unknown field and the `<` are untouched.
    let written = String::from_utf8(files[Path::new("order/1795749176-k1.json")].clone()).unwrap();
    assert!(written.contains(r#""region":"unknown-field-kept""#) && written.contains("a<b"));
}

#[tokio::test]
async fn a_replayed_batch_writes_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FileDriver::new(dir.path());
    let (a, b) = (event(A), event(B));
    let batch = [Delivery { lsn: 7, event: &a, raw: A.as_bytes() }, Delivery { lsn: 8, event: &b, raw: B.as_bytes() }];
    conformance::replay_is_harmless(&driver, Batch::Events(&batch), || snapshot(dir.path())).await.unwrap();
    assert_eq!(snapshot(dir.path()).len(), 2);
    conformance::description_is_complete(&driver).unwrap();
}

#[tokio::test]
async fn hostile_names_stay_inside_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let driver = FileDriver::new(&out);
    let raw =
        r#"{"operation":"INSERT","table":"../../etc","key":["../../../passwd"],"after":{"id":"x"},"timestamp":1000}"#;
    let e = event(raw);
    driver.write(Batch::Events(&[Delivery { lsn: 1, event: &e, raw: raw.as_bytes() }])).await.unwrap();
    let files = snapshot(dir.path());
    assert_eq!(files.keys().collect::<Vec<_>>(), vec![Path::new("out/%2E.%2F..%2Fetc/1-%2E.%2F..%2F..%2Fpasswd.json")]);
    assert_eq!(escape(""), "%00");
    assert_eq!(escape("order"), "order");
    assert_eq!(escape("é"), "%C3%A9");
}

#[tokio::test]
async fn folded_batches_are_refused_as_a_configuration_error() {
    let driver = FileDriver::new("unused");
    let err = driver.write(Batch::Folded(&[])).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Config);
}

#[test]
fn urls_relative_and_absolute() {
    assert_eq!(directory_from_url("file:///var/eds/out").unwrap(), PathBuf::from("/var/eds/out"));
    assert_eq!(directory_from_url("file://folder").unwrap(), PathBuf::from("folder"), "EDS's own example works");
    assert_eq!(directory_from_url("file://./out?name=archive").unwrap(), PathBuf::from("./out"));
    for bad in ["file://", "file:///", "s3://bucket"] {
        assert_eq!(directory_from_url(bad).unwrap_err().class, ErrorClass::Config, "{bad}");
    }
}

#[tokio::test]
async fn test_checks_the_directory_is_writable() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FileDriver::new(dir.path().join("new"));
    driver.test().await.unwrap();
    assert!(dir.path().join("new").is_dir());
    assert!(snapshot(&dir.path().join("new")).is_empty(), "the probe file is removed");
}

#[cfg(unix)]
#[tokio::test]
async fn files_and_directories_get_eds_modes_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // eds runs with umask 077 (its data dir is private); the destination's output keeps EDS's
    // modes. (nextest runs every test in a process of its own.)
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").join("deeper");
    let driver = FileDriver::new(&out);
    let a = event(A);
    let written = driver.write(Batch::Events(&[Delivery { lsn: 1, event: &a, raw: A.as_bytes() }])).await;
    rustix::process::umask(old);
    written.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out.join("order/1795749176-k1.json")), 0o644);
    for d in [dir.path().join("out"), out.clone(), out.join("order")] {
        assert_eq!(mode(&d), 0o755, "{}", d.display());
    }
}

#[tokio::test]
async fn a_validator_path_names_the_file_below_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FileDriver::new(dir.path());
    let (mut a, mut b, mut c) = (event(A), event(B), event(C));
    a.path = Some("order/received/order_1_e1.json".into());
    b.path = Some("order/received/order_1_e1.json".into());
    c.path = Some("flat.json".into());
    let batch = [
        Delivery { lsn: 7, event: &a, raw: A.as_bytes() },
        Delivery { lsn: 8, event: &b, raw: B.as_bytes() },
        Delivery { lsn: 9, event: &c, raw: C.as_bytes() },
    ];
    driver.write(Batch::Events(&batch)).await.unwrap();
    driver.write(Batch::Events(&batch)).await.unwrap();
    let expect: BTreeMap<PathBuf, Vec<u8>> =
        [("order/received/order_1_e1.json", A), ("order/received/order_1_e1+8.json", B), ("flat.json", C)]
            .iter()
            .map(|(p, raw)| (PathBuf::from(p), raw.as_bytes().to_vec()))
            .collect();
    assert_eq!(snapshot(dir.path()), expect);
}

#[tokio::test]
async fn a_name_that_cannot_be_a_file_is_the_events_fault() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FileDriver::new(dir.path());
    std::fs::create_dir_all(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    for (path, what) in [("taken", "a directory"), ("file/below.json", "below a file"), (&*"n".repeat(300), "too long")]
    {
        let mut a = event(A);
        a.path = Some(path.to_owned());
        let batch = [Delivery { lsn: 7, event: &a, raw: A.as_bytes() }];
        let e = driver.write(Batch::Events(&batch)).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Rejected, "{what}: {e}");
    }
    // The +<lsn> name holding another event's file is never overwritten.
    let (mut a, mut b) = (event(A), event(B));
    a.path = Some("same.json".into());
    b.path = Some("same.json".into());
    std::fs::write(dir.path().join("same+8.json"), b"someone else").unwrap();
    let batch = [Delivery { lsn: 7, event: &a, raw: A.as_bytes() }, Delivery { lsn: 8, event: &b, raw: B.as_bytes() }];
    let e = driver.write(Batch::Events(&batch)).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Rejected, "{e}");
    assert_eq!(std::fs::read(dir.path().join("same+8.json")).unwrap(), b"someone else");
}
