//! Damage on real files: torn tails, flipped bytes in frames, segment headers and cursor files,
//! recorded holes, cursors that no longer fit the log, and segments an operator deleted.
//! Every error must name the file and, for frames, the exact byte offset.

#![allow(clippy::unwrap_used)]

use eds_wal::cursor::{self, CursorFileError, CursorRecord};
use eds_wal::frame::{FrameError, FRAME_HEADER_LEN};
use eds_wal::segment::{encode_header, segment_name, SegmentHeaderError, SEGMENT_HEADER_LEN};
use eds_wal::{holes, Appended, CursorStart, Cut, Error, Hole, Options, RecoveryMode, Wal, CURSOR_DIR, HOLES_FILE};
use std::fs;
use std::path::{Path, PathBuf};

type Batch = Vec<Vec<u8>>;

fn opts() -> Options {
    Options { segment_size: 1 << 20, compress_threshold: 64, ..Options::default() }
}

fn holes_opts() -> Options {
    Options { recovery: RecoveryMode::RecordHoles, ..opts() }
}

fn seg(dir: &Path, first: u64) -> PathBuf {
    dir.join(segment_name(first))
}

/// A batch of `n` JSON-like records (compressible, so some frames are zstd) tagged with `tag`.
fn batch(tag: &str, n: usize) -> Batch {
    (0..n)
        .map(|i| {
            format!(r#"{{"op":"INSERT","table":"order","tag":"{tag}","i":{i},"pad":"{}"}}"#, tag.repeat(8)).into_bytes()
        })
        .collect()
}

fn read_all(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(from).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        out.push((rec.lsn, rec.data));
    }
    out
}

/// The records of `batches`, numbered from the LSNs their appends returned.
fn expected(batches: &[(&Batch, &Appended)]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for (b, a) in batches {
        assert_eq!(a.last_lsn - a.first_lsn + 1, b.len() as u64);
        out.extend(b.iter().enumerate().map(|(i, r)| (a.first_lsn + i as u64, r.clone())));
    }
    out
}

fn flip(path: &Path, at: u64, mask: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= mask;
    fs::write(path, bytes).unwrap();
}

/// A log of `n` acknowledged batches (of 2 + i records each), closed cleanly.
fn log_with_batches(dir: &Path, n: usize, o: &Options) -> (Vec<Batch>, Vec<Appended>) {
    let wal = Wal::open(dir, o.clone()).unwrap();
    let batches: Vec<Batch> = (0..n).map(|i| batch(&format!("b{i}"), 2 + i)).collect();
    let appended: Vec<Appended> = batches.iter().map(|b| wal.append(b).unwrap()).collect();
    wal.close().unwrap();
    (batches, appended)
}

/// Byte offset of frame `i` in the first segment.
fn frame_offset(appended: &[Appended], i: usize) -> u64 {
    SEGMENT_HEADER_LEN + appended[..i].iter().map(|a| a.frame_bytes).sum::<u64>()
}

// ---------------------------------------------------------------------------------------------
// Torn tail.

#[test]
fn truncated_last_frame_is_cut_and_reported() {
    let probe = tempfile::tempdir().unwrap();
    let c_len = {
        let wal = Wal::open(probe.path(), opts()).unwrap();
        wal.append_nowait(&batch("c", 3)).unwrap().frame_bytes
    };
    // Cut inside the header, at its end, inside the body, one byte short.
    for keep in [1, 20, FRAME_HEADER_LEN as u64 - 1, FRAME_HEADER_LEN as u64, FRAME_HEADER_LEN as u64 + 3, c_len - 1] {
        let d = tempfile::tempdir().unwrap();
        let path = seg(d.path(), 1);
        let wal = Wal::open(d.path(), opts()).unwrap();
        let (a, b, c) = (batch("a", 2), batch("b", 4), batch("c", 3));
        let aa = wal.append(&a).unwrap();
        let ab = wal.append(&b).unwrap();
        // The last frame is written, never synced: the process dies before its fsync, and the
        // disk kept only part of it.
        let ac = wal.append_nowait(&c).unwrap();
        assert_eq!(ac.frame_bytes, c_len);
        drop(wal);
        let end = frame_offset(&[aa, ab], 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), end + c_len);
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(end + keep).unwrap();

        let wal = Wal::open(d.path(), opts()).unwrap();
        let cut = Cut { segment: path.clone(), offset: end, bytes: keep, first_lsn: ac.first_lsn, last_lsn_seen: None };
        assert_eq!(wal.recovery().cut, Some(cut.clone()), "keep {keep}");
        assert_eq!(wal.inspect().unwrap().pending_cut, Some(cut));
        assert_eq!(wal.recovery().head, ab.last_lsn);
        assert_eq!(wal.durable_lsn(), ab.last_lsn);
        assert_eq!(fs::metadata(&path).unwrap().len(), end, "the torn bytes were not removed");
        assert_eq!(read_all(&wal, 1), expected(&[(&a, &aa), (&b, &ab)]));

        // The next append continues after the last acknowledged record.
        let e = batch("e", 2);
        let ae = wal.append(&e).unwrap();
        assert_eq!(ae.first_lsn, ab.last_lsn + 1);
        wal.close().unwrap();
        let wal = Wal::open(d.path(), opts()).unwrap();
        assert_eq!(wal.recovery().cut, None);
        assert_eq!(read_all(&wal, 1), expected(&[(&a, &aa), (&b, &ab), (&e, &ae)]));
        assert!(wal.verify().unwrap().problems.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Flipped bytes in acknowledged frames.

/// Flip one byte of frame 1 of 3 acknowledged frames (frame 2 was written after frame 1 was
/// synced, so its `synced_lsn` covers frame 1) and open: the open must fail naming the segment
/// and the frame's offset, and change nothing on disk.
fn open_with_flipped_frame(at_in_frame: u64, mask: u8) -> (PathBuf, u64, FrameError) {
    let d = tempfile::tempdir().unwrap();
    let (_, appended) = log_with_batches(d.path(), 3, &opts());
    let path = seg(d.path(), 1);
    let offset = frame_offset(&appended, 1);
    assert!(at_in_frame < appended[1].frame_bytes);
    flip(&path, offset + at_in_frame, mask);
    let before = fs::read(&path).unwrap();
    let err = Wal::open(d.path(), opts()).unwrap_err();
    assert_eq!(fs::read(&path).unwrap(), before, "a failed open changed the segment");
    match err {
        Error::Corrupt { segment, offset: o, reason } => {
            assert_eq!((&segment, o), (&path, offset), "byte {at_in_frame}: {reason}");
            (segment, o, reason)
        }
        other => panic!("byte {at_in_frame}: expected Error::Corrupt, got {other:?}"),
    }
}

#[test]
fn flipped_byte_in_a_frame_body_fails_open_with_segment_and_offset() {
    let body = FRAME_HEADER_LEN as u64;
    for at in [body, body + 1, body + 7] {
        let (_, _, reason) = open_with_flipped_frame(at, 0x01);
        assert!(matches!(reason, FrameError::ChecksumMismatch { .. }), "{reason:?}");
    }
}

#[test]
fn flipped_byte_in_a_frame_header_fails_open_with_segment_and_offset() {
    // Every header byte, whatever check catches it.
    for at in 0..FRAME_HEADER_LEN as u64 {
        open_with_flipped_frame(at, 0x01);
    }
    let (_, _, reason) = open_with_flipped_frame(0, 0x01);
    assert!(matches!(reason, FrameError::BadMagic { .. }), "{reason:?}");
    let (_, _, reason) = open_with_flipped_frame(12, 0x80);
    assert!(matches!(reason, FrameError::UnknownCodec { codec: 0x80 | 0x81 }), "{reason:?}");
    let (_, _, reason) = open_with_flipped_frame(13, 0x01);
    assert!(matches!(reason, FrameError::Reserved), "{reason:?}");
    let (_, _, reason) = open_with_flipped_frame(16, 0x01); // first_lsn
    assert!(matches!(reason, FrameError::ChecksumMismatch { .. }), "{reason:?}");
    let (_, _, reason) = open_with_flipped_frame(7, 0x80); // body_len's top byte
    assert!(matches!(reason, FrameError::TooLarge { .. }), "{reason:?}");
}

#[test]
fn damaged_frame_before_synced_frames_becomes_a_recorded_hole_when_asked() {
    let d = tempfile::tempdir().unwrap();
    let (batches, appended) = log_with_batches(d.path(), 4, &opts());
    let path = seg(d.path(), 1);
    let offset = frame_offset(&appended, 1);
    flip(&path, offset + FRAME_HEADER_LEN as u64 + 2, 0x10);

    // Strict (the default) refuses.
    match Wal::open(d.path(), opts()) {
        Err(Error::Corrupt { segment, offset: o, .. }) => assert_eq!((segment, o), (path.clone(), offset)),
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
    assert!(!d.path().join(HOLES_FILE).exists());

    let hole = Hole {
        segment: 1,
        offset,
        len: appended[1].frame_bytes,
        first_lsn: appended[1].first_lsn,
        last_lsn: appended[1].last_lsn,
    };
    let wal = Wal::open(d.path(), holes_opts()).unwrap();
    assert_eq!(wal.recovery().new_holes, vec![hole]);
    assert_eq!(wal.recovery().cut, None);
    assert_eq!(wal.holes(), vec![hole]);
    assert_eq!(holes::decode(&fs::read(d.path().join(HOLES_FILE)).unwrap()), Some(vec![hole]));
    assert_eq!(wal.durable_lsn(), appended[3].last_lsn);

    // Readers skip the hole's LSNs, from before it and from inside it.
    let survivors = [(&batches[0], &appended[0]), (&batches[2], &appended[2]), (&batches[3], &appended[3])];
    assert_eq!(read_all(&wal, 1), expected(&survivors));
    assert_eq!(read_all(&wal, hole.first_lsn + 1), expected(&survivors[1..]));
    wal.create_cursor("after-hole", CursorStart::Lsn(hole.first_lsn)).unwrap();
    assert_eq!(wal.cursor_reader("after-hole").unwrap().next().unwrap().unwrap().lsn, appended[2].first_lsn);
    assert_eq!(wal.inspect().unwrap().holes, vec![hole]);
    assert_eq!(wal.verify().unwrap().problems, vec![]);

    let e = batch("e", 1);
    let ae = wal.append(&e).unwrap();
    assert_eq!(ae.first_lsn, appended[3].last_lsn + 1);
    wal.close().unwrap();

    // The hole is remembered: even a strict open now skips it, and records nothing new.
    let wal = Wal::open(d.path(), opts()).unwrap();
    assert_eq!(wal.recovery().new_holes, vec![]);
    assert_eq!(wal.holes(), vec![hole]);
    let mut all = survivors.to_vec();
    all.push((&e, &ae));
    assert_eq!(read_all(&wal, 1), expected(&all));
    assert_eq!(wal.inspect().unwrap().holes, vec![hole]);
    wal.close().unwrap();
    let ro = Wal::open_read_only(d.path(), opts()).unwrap();
    assert_eq!(ro.holes(), vec![hole]);
    assert_eq!(read_all(&ro, 1), expected(&all));
    drop(ro);

    // A damaged holes file is not silently forgotten.
    let holes_path = d.path().join(HOLES_FILE);
    flip(&holes_path, 20, 0x01);
    match Wal::open(d.path(), holes_opts()) {
        Err(Error::HolesFile { path }) => assert_eq!(path, holes_path),
        other => panic!("expected Error::HolesFile, got {other:?}"),
    }
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_reported_by_readers_and_verify() {
    let d = tempfile::tempdir().unwrap();
    let o = Options { segment_size: 1024, ..opts() };
    let wal = Wal::open(d.path(), o.clone()).unwrap();
    let mut appended = Vec::new();
    let mut batches = Vec::new();
    while wal.stats().segments < 3 {
        let b = batch(&format!("s{}", batches.len()), 3);
        appended.push(wal.append(&b).unwrap());
        batches.push(b);
    }
    let frames = appended.len() as u64;
    let first_segment = wal.inspect().unwrap().segments[0].clone();
    assert!(first_segment.frames >= 3, "{first_segment:?}");
    wal.close().unwrap();

    // Frame 1 of segment 1, which is sealed: opening does not read it.
    let path = seg(d.path(), 1);
    let offset = frame_offset(&appended, 1);
    flip(&path, offset + FRAME_HEADER_LEN as u64 + 5, 0x04);

    let wal = Wal::open(d.path(), o).unwrap();
    assert_eq!(wal.durable_lsn(), appended.last().unwrap().last_lsn);
    for from in [1, appended[1].first_lsn] {
        let mut r = wal.reader(from).unwrap();
        let mut read = 0;
        let err = loop {
            match r.next() {
                Ok(Some(rec)) => {
                    assert!(rec.lsn < appended[1].first_lsn);
                    read += 1;
                }
                Ok(None) => panic!("read past the damage"),
                Err(e) => break e,
            }
        };
        assert_eq!(read, if from == 1 { batches[0].len() } else { 0 });
        match err {
            Error::Corrupt { segment, offset: o, reason } => {
                assert_eq!((segment, o), (path.clone(), offset));
                assert!(matches!(reason, FrameError::ChecksumMismatch { .. }), "{reason:?}");
            }
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }
    // Records after the damaged frame are still readable.
    let from = appended[2].first_lsn;
    let rest: Vec<(&Batch, &Appended)> = batches.iter().zip(&appended).skip(2).collect();
    assert_eq!(read_all(&wal, from), expected(&rest));

    let v = wal.verify().unwrap();
    assert_eq!(v.segments, 3);
    assert_eq!(v.frames, frames - 1);
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert_eq!((&v.problems[0].segment, v.problems[0].offset), (&path, offset));
    assert!(v.problems[0].message.contains("checksum"), "{}", v.problems[0].message);
}

// ---------------------------------------------------------------------------------------------
// Segment headers.

#[test]
fn torn_header_of_an_empty_last_segment_is_recovered() {
    let mut bad_crc = encode_header(0).to_vec();
    bad_crc[SEGMENT_HEADER_LEN as usize - 1] ^= 0xff;
    for torn in [Vec::new(), encode_header(0)[..10].to_vec(), encode_header(0)[..23].to_vec(), bad_crc, vec![0u8; 24]] {
        let d = tempfile::tempdir().unwrap();
        let (batches, appended) = log_with_batches(d.path(), 2, &opts());
        let head = appended[1].last_lsn;
        // A roll died while writing the new segment's header (with this segment's first LSN
        // where the header holds it, when that much was written).
        let mut bytes = torn.clone();
        if bytes.len() >= 20 {
            bytes[12..20].copy_from_slice(&(head + 1).to_le_bytes());
        }
        let path = seg(d.path(), head + 1);
        fs::write(&path, &bytes).unwrap();

        let wal = Wal::open(d.path(), opts()).unwrap();
        assert_eq!(wal.recovery().cut, None);
        assert_eq!(wal.recovery().segments, 2);
        assert_eq!(wal.durable_lsn(), head);
        assert_eq!(
            fs::read(&path).unwrap(),
            encode_header(head + 1),
            "header not rewritten ({} bytes torn)",
            torn.len()
        );
        let e = batch("e", 1);
        let ae = wal.append(&e).unwrap();
        assert_eq!(ae.first_lsn, head + 1);
        wal.close().unwrap();
        let wal = Wal::open(d.path(), opts()).unwrap();
        let all = [(&batches[0], &appended[0]), (&batches[1], &appended[1]), (&e, &ae)];
        assert_eq!(read_all(&wal, 1), expected(&all));
        assert!(wal.verify().unwrap().problems.is_empty());
    }
}

#[test]
fn damaged_header_of_a_segment_with_frames_is_refused() {
    let d = tempfile::tempdir().unwrap();
    log_with_batches(d.path(), 2, &opts());
    let path = seg(d.path(), 1);
    flip(&path, 14, 0x01); // first_lsn inside the header: checksum no longer matches
    match Wal::open(d.path(), opts()) {
        Err(Error::SegmentHeader { segment, reason }) => {
            assert_eq!(segment, path);
            assert!(matches!(reason, SegmentHeaderError::Checksum), "{reason:?}");
        }
        other => panic!("expected Error::SegmentHeader, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Cursor files.

#[test]
fn flipped_byte_in_a_cursor_file_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    let wal = Wal::open(d.path(), opts()).unwrap();
    wal.append(&batch("a", 3)).unwrap();
    wal.create_cursor("pg", CursorStart::Oldest).unwrap();
    wal.create_cursor("nats", CursorStart::Head).unwrap();
    wal.advance_cursor("pg", 2).unwrap();
    wal.close().unwrap();
    let path = d.path().join(CURSOR_DIR).join("pg.cursor");
    flip(&path, 12, 0x01); // the position

    match Wal::open(d.path(), opts()) {
        Err(Error::CursorFile { path: p, reason }) => {
            assert_eq!(p, path);
            assert_eq!(reason, CursorFileError::Checksum);
        }
        other => panic!("expected Error::CursorFile, got {other:?}"),
    }

    // A read-only open (for tools) lists it and loads the others.
    let ro = Wal::open_read_only(d.path(), opts()).unwrap();
    let problems = &ro.recovery().cursor_problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&path.display().to_string()), "{}", problems[0]);
    assert!(problems[0].contains("checksum"), "{}", problems[0]);
    assert_eq!(ro.cursors().iter().map(|c| (c.name.as_str(), c.position)).collect::<Vec<_>>(), vec![("nats", 3)]);
    assert_eq!(&ro.inspect().unwrap().cursor_problems, problems);
    drop(ro);

    // The operator removes it; the log opens again.
    Wal::remove_cursor_offline(d.path(), "pg").unwrap();
    let wal = Wal::open(d.path(), opts()).unwrap();
    assert_eq!(wal.cursors().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["nats"]);
}

#[test]
fn interrupted_cursor_persist_leaves_the_old_position() {
    let d = tempfile::tempdir().unwrap();
    let wal = Wal::open(d.path(), opts()).unwrap();
    wal.append(&batch("a", 5)).unwrap();
    wal.create_cursor("pg", CursorStart::Oldest).unwrap();
    wal.advance_cursor("pg", 3).unwrap();
    wal.close().unwrap();
    // A persist died after writing its temp file, before the rename.
    let tmp = d.path().join(CURSOR_DIR).join("pg.cursor.tmp");
    let newer = CursorRecord { name: "pg".into(), position: 5, updated_at: 0 };
    let mut bytes = cursor::encode(&newer);
    bytes.truncate(bytes.len() - 3);
    fs::write(&tmp, bytes).unwrap();

    let wal = Wal::open(d.path(), opts()).unwrap();
    assert_eq!(wal.cursor("pg").unwrap().position, 3);
    assert_eq!(wal.cursors().len(), 1);
    assert!(!tmp.exists(), "the temp file of an interrupted persist was left behind");
}

#[test]
fn cursor_beyond_the_recovered_head_names_the_cursor() {
    let d = tempfile::tempdir().unwrap();
    let (_, appended) = log_with_batches(d.path(), 1, &opts());
    let head = appended[0].last_lsn;
    // A cursor file from another log, or a log restored from an older backup.
    let rec = CursorRecord { name: "ahead".into(), position: head + 7, updated_at: 0 };
    fs::write(d.path().join(CURSOR_DIR).join("ahead.cursor"), cursor::encode(&rec)).unwrap();

    match Wal::open(d.path(), opts()) {
        Err(Error::CursorBeyondHead { cursor, position, head: h }) => {
            assert_eq!((cursor.as_str(), position, h), ("ahead", head + 7, head));
        }
        other => panic!("expected Error::CursorBeyondHead, got {other:?}"),
    }
    let ro = Wal::open_read_only(d.path(), opts()).unwrap();
    assert_eq!(ro.recovery().cursor_problems.len(), 1);
    assert!(ro.recovery().cursor_problems[0].contains("\"ahead\""), "{:?}", ro.recovery().cursor_problems);
    drop(ro);
    Wal::remove_cursor_offline(d.path(), "ahead").unwrap();
    assert_eq!(Wal::open(d.path(), opts()).unwrap().cursors(), vec![]);
}

// ---------------------------------------------------------------------------------------------
// Segments deleted behind the log's back.

fn log_with_segments(dir: &Path, o: &Options, segments: u64) -> Vec<u64> {
    let wal = Wal::open(dir, o.clone()).unwrap();
    wal.create_cursor("slow", CursorStart::Oldest).unwrap();
    let mut i = 0;
    while wal.stats().segments < segments {
        wal.append(&batch(&format!("x{i}"), 3)).unwrap();
        i += 1;
    }
    wal.append(&batch("last", 1)).unwrap();
    let firsts = wal.inspect().unwrap().segments.iter().map(|s| s.first_lsn).collect();
    wal.close().unwrap();
    firsts
}

#[test]
fn cursor_below_the_oldest_segment_after_an_operator_deleted_segments() {
    let d = tempfile::tempdir().unwrap();
    let o = Options { segment_size: 1024, ..opts() };
    let firsts = log_with_segments(d.path(), &o, 3);
    fs::remove_file(seg(d.path(), firsts[0])).unwrap();

    let wal = Wal::open(d.path(), o).unwrap();
    let oldest = firsts[1];
    assert_eq!(wal.oldest_lsn(), oldest);
    assert_eq!(wal.cursor("slow").unwrap().position, 0);
    match wal.cursor_reader("slow") {
        Err(Error::CursorBelowOldest { cursor, needed, oldest: o }) => {
            assert_eq!((cursor.as_str(), needed, o), ("slow", 1, oldest));
        }
        other => panic!("expected Error::CursorBelowOldest, got {other:?}"),
    }
    match wal.reader(1) {
        Err(Error::LsnBelowOldest { lsn, oldest: o }) => assert_eq!((lsn, o), (1, oldest)),
        other => panic!("expected Error::LsnBelowOldest, got {other:?}"),
    }
    // The operator accepts the loss and moves the cursor to what is left.
    wal.reset_cursor("slow", oldest - 1).unwrap();
    let mut r = wal.cursor_reader("slow").unwrap();
    assert_eq!(r.next().unwrap().unwrap().lsn, oldest);
}

#[test]
fn missing_middle_segment_is_a_gap_for_readers_and_verify() {
    let d = tempfile::tempdir().unwrap();
    let o = Options { segment_size: 1024, ..opts() };
    let firsts = log_with_segments(d.path(), &o, 3);
    fs::remove_file(seg(d.path(), firsts[1])).unwrap();

    let wal = Wal::open(d.path(), o).unwrap();
    let mut r = wal.reader(1).unwrap();
    let err = loop {
        match r.next() {
            Ok(Some(rec)) => assert!(rec.lsn < firsts[1]),
            Ok(None) => panic!("read across a missing segment"),
            Err(e) => break e,
        }
    };
    match err {
        Error::SegmentGap { segment, found, expected_after } => {
            assert_eq!((segment, found, expected_after), (seg(d.path(), firsts[2]), firsts[2], firsts[1] - 1));
        }
        other => panic!("expected Error::SegmentGap, got {other:?}"),
    }
    let v = wal.verify().unwrap();
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert_eq!((&v.problems[0].segment, v.problems[0].offset), (&seg(d.path(), firsts[2]), 0));
}
