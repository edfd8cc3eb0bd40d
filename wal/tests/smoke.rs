//! Smoke test on real files: appends across segments, a reader, a cursor, retention, reopen.

#![allow(clippy::unwrap_used)]

use eds_wal::*;

#[test]
fn smoke() {
    let d = tempfile::tempdir().unwrap();
    let opts = Options { segment_size: 4096, compress_threshold: 64, ..Options::default() };
    let wal = Wal::open(d.path(), opts.clone()).unwrap();
    let mut n = 0u64;
    for b in 0..50 {
        let recs: Vec<Vec<u8>> =
            (0..(b % 7 + 1)).map(|i| format!("rec-{b}-{i}-{}", "x".repeat(b * 3)).into_bytes()).collect();
        let a = wal.append(&recs).unwrap();
        assert_eq!(a.first_lsn, n + 1);
        n = a.last_lsn;
    }
    wal.create_cursor("c", CursorStart::Oldest).unwrap();
    let mut r = wal.reader(1).unwrap();
    let mut count = 0;
    while let Some(rec) = r.next().unwrap() {
        count += 1;
        assert_eq!(rec.lsn, count);
    }
    assert_eq!(count, n);
    let st = wal.stats();
    assert!(st.segments > 1, "{st:?}");
    wal.advance_cursor("c", n).unwrap();
    wal.persist_cursors().unwrap();
    assert_eq!(wal.stats().segments, 1);
    drop(r);
    wal.close().unwrap();
    let wal = Wal::open(d.path(), opts).unwrap();
    assert_eq!(wal.durable_lsn(), n);
    assert_eq!(wal.cursor("c").unwrap().position, n);
    let v = wal.verify().unwrap();
    assert!(v.problems.is_empty(), "{v:?}");
}
