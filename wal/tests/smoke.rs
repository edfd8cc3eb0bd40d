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

/// Frames written under large options (big segments, big batches) are not "too large" for a
/// process reopening the log with small ones: nothing is cut as a torn tail, everything reads,
/// `verify` is clean, and appending goes on.
#[test]
fn a_log_written_with_larger_frames_reads_whole_under_smaller_options() {
    let d = tempfile::tempdir().unwrap();
    let big = Options { segment_size: 4 << 20, max_frame_bytes: 2 << 20, ..Options::default() };
    let wal = Wal::open(d.path(), big).unwrap();
    // Incompressible records, so the stored frames are as large as the raw ones.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let batches: Vec<Vec<Vec<u8>>> = vec![
        (0..4).map(|_| noise(200_000)).collect(), // one frame of 800 KB
        vec![noise(10)],
        (0..2).map(|_| noise(300_000)).collect(), // the last frame: 600 KB
    ];
    for b in &batches {
        wal.append(b).unwrap();
    }
    wal.close().unwrap();
    let expected: Vec<Vec<u8>> = batches.into_iter().flatten().collect();

    let small = Options { segment_size: 64 << 10, max_frame_bytes: 16 << 10, ..Options::default() };
    let ro = Wal::open_read_only(d.path(), small.clone()).unwrap();
    let v = ro.verify().unwrap();
    assert!(v.problems.is_empty(), "{v:?}");
    drop(ro);
    let wal = Wal::open(d.path(), small).unwrap();
    assert!(wal.recovery().cut.is_none(), "{:?}", wal.recovery());
    assert_eq!(wal.durable_lsn(), expected.len() as u64);
    let mut r = wal.reader(1).unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        got.push(rec.data.to_vec());
    }
    assert!(got == expected, "every record reads back as written");
    drop(r);
    assert_eq!(wal.append(&[b"after".to_vec()]).unwrap().first_lsn, expected.len() as u64 + 1);
}
