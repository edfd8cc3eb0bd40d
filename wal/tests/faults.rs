//! Group commit, poisoning after write and fsync failures, directory fsyncs, the disk budget,
//! the directory lock, read-only opens, durable-only reads, segment rolling and batch limits.
//! Mostly on [`FaultyStorage`], which counts fsyncs and simulates power loss; the lock and
//! read-only tests use real files.

#![allow(clippy::unwrap_used)]

use eds_wal::frame::{EncodeError, EncodeOptions, EncodedFrame};
use eds_wal::segment::{segment_name, SEGMENT_HEADER_LEN};
use eds_wal::storage::LockGuard;
use eds_wal::{CursorPersist, CursorStart, Cut, Durability, Error, FaultyStorage, Options, Storage, StorageFile, Wal};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const DIR: &str = "/wal";

fn opts() -> Options {
    Options {
        segment_size: 1 << 20,
        // Stored as is, so frame sizes are easy to predict.
        compress_threshold: usize::MAX,
        durability: Durability::Always,
        cursor_persist: CursorPersist { interval: Duration::from_secs(3600), records: 1 << 40 },
        ..Options::default()
    }
}

fn open(st: &FaultyStorage, opts: &Options) -> Wal {
    Wal::open_with(Arc::new(st.clone()), DIR, opts.clone()).unwrap()
}

fn seg(first: u64) -> PathBuf {
    Path::new(DIR).join(segment_name(first))
}

fn read_all(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(from).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        out.push((rec.lsn, rec.data));
    }
    out
}

/// Read a poisoned log to its durable end, where the reader reports the poisoning.
fn read_until_poisoned(wal: &Wal, op: &str, path: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(1).unwrap();
    let mut out = Vec::new();
    loop {
        match r.next() {
            Ok(Some(rec)) => out.push((rec.lsn, rec.data)),
            other => {
                expect_poisoned(other, op, path);
                return out;
            }
        }
    }
}

fn numbered(from: u64, recs: &[&str]) -> Vec<(u64, Vec<u8>)> {
    recs.iter().enumerate().map(|(i, r)| (from + i as u64, r.as_bytes().to_vec())).collect()
}

/// Bytes of the frame `records` encode to under `opts` (uncompressed there).
fn frame_len(records: &[&[u8]], opts: &Options) -> u64 {
    let enc =
        EncodeOptions { compress_threshold: opts.compress_threshold, zstd_level: 1, max_frame: opts.max_frame_bytes };
    EncodedFrame::encode(records, enc).unwrap().len()
}

/// Poll `cond` until it holds; fail after a generous deadline.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn expect_poisoned<T: std::fmt::Debug>(r: eds_wal::Result<T>, op: &str, path: &Path) {
    match r {
        Err(Error::Poisoned { op: o, path: p, .. }) => assert_eq!((o, p.as_path()), (op, path)),
        other => panic!("expected Poisoned {{ {op}, {} }}, got {other:?}", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Group commit.

/// A gate every segment fsync passes through: while closed, an fsync blocks (as a slow disk
/// would), so the test controls exactly which appends are written before the fsync finishes.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        if *closed {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *closed {
                closed = self.changed.wait(closed).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[derive(Debug, Clone)]
struct GatedStorage {
    inner: FaultyStorage,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync()
    }
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(GatedFile { inner: self.inner.create(path)?, gate: self.gate.clone() }))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(GatedFile { inner: self.inner.open(path, write)?, gate: self.gate.clone() }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        self.inner.lock(path)
    }
}

#[test]
fn concurrent_appends_share_fsyncs() {
    const THREADS: usize = 8;
    let st = FaultyStorage::new();
    let gate = Arc::new(Gate::default());
    let gated = GatedStorage { inner: st.clone(), gate: gate.clone() };
    let wal = Wal::open_with(Arc::new(gated), DIR, opts()).unwrap();
    let (syncs0, fsyncs0) = (st.sync_count(), wal.stats().fsyncs);

    gate.set(true);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                let recs = vec![format!("thread {t} first"), format!("thread {t} second")];
                let a = wal.append(&recs).unwrap();
                (recs, a)
            })
        })
        .collect();
    // Every frame is written and exactly one fsync is in flight; the other appenders wait for
    // it instead of starting their own.
    wait_for("all frames written", || wal.stats().written_lsn == 2 * THREADS as u64);
    wait_for("one fsync in flight", || gate.waiting.load(Ordering::SeqCst) == 1);
    // Nothing is durable yet, so nothing is readable.
    assert_eq!(wal.durable_lsn(), 0);
    assert_eq!(wal.reader(1).unwrap().next().unwrap(), None);
    gate.set(false);

    let mut results: Vec<(Vec<String>, eds_wal::Appended)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let syncs = st.sync_count() - syncs0;
    // The fsync in flight covered its own frame at least; one more covers everything written
    // while it ran.
    assert!((1..=2).contains(&syncs), "{syncs} fsyncs for {THREADS} appends");
    assert_eq!(wal.stats().fsyncs - fsyncs0, syncs);
    assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);

    results.sort_by_key(|(_, a)| a.first_lsn);
    let mut want = Vec::new();
    for (i, (recs, a)) in results.iter().enumerate() {
        assert_eq!((a.first_lsn, a.last_lsn), (2 * i as u64 + 1, 2 * i as u64 + 2));
        want.push((a.first_lsn, recs[0].clone().into_bytes()));
        want.push((a.last_lsn, recs[1].clone().into_bytes()));
    }
    assert_eq!(wal.durable_lsn(), 2 * THREADS as u64);
    assert_eq!(read_all(&wal, 1), want);
}

#[test]
fn many_concurrent_appends_are_all_readable_under_their_lsns() {
    const THREADS: usize = 4;
    const APPENDS: usize = 60;
    let st = FaultyStorage::new();
    let o = Options { segment_size: 4096, compress_threshold: 64, ..opts() };
    let wal = open(&st, &o);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                (0..APPENDS)
                    .map(|i| {
                        let recs: Vec<String> =
                            (0..(i % 3 + 1)).map(|r| format!("t{t} a{i} r{r} {}", "x".repeat(i))).collect();
                        let a = wal.append(&recs).unwrap();
                        // Acknowledged means durable, hence readable at once.
                        assert!(wal.durable_lsn() >= a.last_lsn);
                        (a, recs)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut appends = 0u64;
    for t in threads {
        for (a, recs) in t.join().unwrap() {
            appends += 1;
            assert_eq!(a.last_lsn - a.first_lsn + 1, recs.len() as u64);
            all.extend(recs.into_iter().enumerate().map(|(i, r)| (a.first_lsn + i as u64, r.into_bytes())));
        }
    }
    all.sort();
    assert_eq!(all.len() as u64, wal.durable_lsn());
    assert!(wal.stats().fsyncs <= appends + wal.stats().segments);
    assert!(wal.stats().segments > 1);
    assert_eq!(read_all(&wal, 1), all);
    drop(wal);
    st.power_loss();
    assert_eq!(read_all(&open(&st, &o), 1), all);
}

// ---------------------------------------------------------------------------------------------
// Poisoning.

#[test]
fn failed_write_poisons_and_reopen_recovers_everything_acknowledged() {
    let st = FaultyStorage::new();
    let o = opts();
    let wal = open(&st, &o);
    wal.create_cursor("c", CursorStart::Oldest).unwrap();
    let a = wal.append(&["one", "two"]).unwrap();
    let b = wal.append(&["three"]).unwrap();
    let end = SEGMENT_HEADER_LEN + a.frame_bytes + b.frame_bytes;

    st.fail_writes_after(0);
    match wal.append(&["torn"]) {
        Err(Error::Io { op: "write", path, source }) => {
            assert_eq!(path, seg(1));
            assert!(source.to_string().contains("injected write failure"), "{source}");
        }
        other => panic!("expected the write to fail, got {other:?}"),
    }
    assert!(wal.is_poisoned());
    st.heal();
    let writes = st.write_count();
    let syncs = st.sync_count();
    // Every later refusal still names the first failure's cause (ENOSPC, say), not only that
    // there was one: an operator reading only the latest error sees why.
    let later = wal.append(&["later"]).unwrap_err().to_string();
    assert!(later.contains("injected write failure") && later.contains("reopen it"), "{later}");
    expect_poisoned(wal.append(&["later"]), "write", &seg(1));
    expect_poisoned(wal.append_nowait(&["later"]), "write", &seg(1));
    expect_poisoned(wal.sync(), "write", &seg(1));
    expect_poisoned(wal.advance_cursor("c", 1), "write", &seg(1));
    expect_poisoned(wal.reset_cursor("c", 1), "write", &seg(1));
    expect_poisoned(wal.create_cursor("d", CursorStart::Head), "write", &seg(1));
    expect_poisoned(wal.delete_cursor("c"), "write", &seg(1));
    expect_poisoned(wal.persist_cursors(), "write", &seg(1));
    expect_poisoned(wal.apply_retention(), "write", &seg(1));
    // A reader that caught up reports the failure too, instead of waiting forever.
    let mut r = wal.reader(b.last_lsn + 1).unwrap();
    expect_poisoned(r.next(), "write", &seg(1));
    expect_poisoned(r.wait(Duration::from_secs(5)), "write", &seg(1));
    drop(r);
    assert_eq!((st.write_count(), st.sync_count()), (writes, syncs), "the poisoned log touched the disk");
    // Records acknowledged before the failure are still readable.
    assert_eq!(read_until_poisoned(&wal, "write", &seg(1)), numbered(1, &["one", "two", "three"]));
    assert_eq!(wal.durable_lsn(), 3);
    drop(wal);

    // The process restarts (the page cache survives): the torn half frame is cut and reported.
    let wal = open(&st, &o);
    let torn = frame_len(&[b"torn"], &o) / 2;
    assert_eq!(
        wal.recovery().cut,
        Some(Cut { segment: seg(1), offset: end, bytes: torn, first_lsn: 4, last_lsn_seen: None })
    );
    assert_eq!(wal.durable_lsn(), 3);
    assert_eq!(read_all(&wal, 1), numbered(1, &["one", "two", "three"]));
    assert_eq!(wal.cursor("c").unwrap().position, 0);
    let c = wal.append(&["four"]).unwrap();
    assert_eq!((c.first_lsn, c.last_lsn), (4, 4));
    drop(wal);
    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(read_all(&wal, 1), numbered(1, &["one", "two", "three", "four"]));
}

#[test]
fn failed_fsync_is_never_retried() {
    let st = FaultyStorage::new();
    let o = opts();
    let wal = open(&st, &o);
    wal.append(&["acked-1"]).unwrap();
    wal.append(&["acked-2", "acked-3"]).unwrap();
    let n = wal.append_nowait(&["only-written"]).unwrap();
    assert_eq!(n.first_lsn, 4);

    st.fail_syncs_after(0);
    match wal.sync() {
        Err(Error::Io { op: "fsync", path, source }) => {
            assert_eq!(path, seg(1));
            assert!(source.to_string().contains("injected sync failure"), "{source}");
        }
        other => panic!("expected the fsync to fail, got {other:?}"),
    }
    // Even with the disk healed, no later call fsyncs again: after a failed fsync the kernel
    // may have dropped the dirty pages, and a later "successful" fsync would lie.
    st.heal();
    let syncs = st.sync_count();
    expect_poisoned(wal.sync(), "fsync", &seg(1));
    expect_poisoned(wal.sync_through(n.last_lsn), "fsync", &seg(1));
    expect_poisoned(wal.append(&["later"]), "fsync", &seg(1));
    expect_poisoned(wal.advance_cursor("none", 0), "fsync", &seg(1));
    assert_eq!(st.sync_count(), syncs, "an fsync was retried");
    // The record that was only written never became visible.
    assert_eq!(wal.durable_lsn(), 3);
    assert_eq!(read_until_poisoned(&wal, "fsync", &seg(1)), numbered(1, &["acked-1", "acked-2", "acked-3"]));
    drop(wal);

    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(wal.durable_lsn(), 3);
    assert_eq!(wal.recovery().cut, None);
    assert_eq!(read_all(&wal, 1), numbered(1, &["acked-1", "acked-2", "acked-3"]));
    // LSN 4 was never visible, so giving it to other data is harmless.
    assert_eq!(wal.append(&["new-4"]).unwrap().first_lsn, 4);
}

#[test]
fn failed_fsync_of_an_always_append_loses_at_most_that_append() {
    let st = FaultyStorage::new();
    let o = opts();
    let wal = open(&st, &o);
    wal.append(&["acked"]).unwrap();
    st.fail_syncs_after(0);
    assert!(matches!(wal.append(&["failed"]), Err(Error::Io { op: "fsync", .. })));
    st.heal();
    drop(wal);
    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(read_all(&wal, 1), numbered(1, &["acked"]));
}

/// A frame the last process wrote but never fsynced is still in the page cache when the log is
/// reopened. Recovery keeps it and readers may see it, so it must be made durable right away:
/// otherwise a power loss after the reopen loses records readers were given.
#[test]
fn frames_recovered_without_fsync_are_made_durable_at_open() {
    let st = FaultyStorage::new();
    let o = opts();
    let wal = open(&st, &o);
    wal.append(&["acked"]).unwrap();
    let n = wal.append_nowait(&["written", "not synced"]).unwrap();
    drop(wal); // the process dies; the page cache keeps the frame

    let wal = open(&st, &o);
    assert_eq!(wal.durable_lsn(), n.last_lsn);
    let seen = read_all(&wal, 1);
    assert_eq!(seen, numbered(1, &["acked", "written", "not synced"]));
    drop(wal);

    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(read_all(&wal, 1), seen, "records handed to a reader were lost");
}

/// A segment whose creation failed after its file appeared (write or fsync of its header) is
/// still there when the process restarts, and recovery adopts it as the active segment. Its
/// directory entry was never fsynced: recovery must do it, or a power loss loses everything
/// appended to it afterwards.
#[test]
fn segment_left_by_a_failed_roll_is_made_durable_at_open() {
    for fail_write in [true, false] {
        let st = FaultyStorage::new();
        let rec = [b'r'; 100];
        let o = Options { segment_size: SEGMENT_HEADER_LEN + 2 * frame_len(&[&rec], &opts()), ..opts() };
        let wal = open(&st, &o);
        wal.append(&[&rec]).unwrap();
        wal.append(&[&rec]).unwrap();
        // The next append rolls: fsync the full segment, create segment 3 (write its header,
        // fsync it, fsync the directory), write the frame.
        if fail_write {
            st.fail_writes_after(0); // the header write tears
        } else {
            st.fail_syncs_after(1); // the old segment's fsync passes, the new header's fails
        }
        let err = wal.append(&[&rec]).unwrap_err();
        assert!(matches!(&err, Error::Io { path, .. } if *path == seg(3)), "{err:?}");
        assert!(st.read_file(&seg(3)).is_some(), "the new segment file should exist");
        st.heal();
        drop(wal);

        let wal = open(&st, &o);
        assert_eq!(wal.durable_lsn(), 2);
        assert_eq!(wal.stats().segments, 2);
        let a = wal.append(&["after the roll"]).unwrap();
        assert_eq!(a.first_lsn, 3);
        drop(wal);

        st.power_loss();
        let wal = open(&st, &o);
        let got = read_all(&wal, 1);
        assert_eq!(got.len(), 3, "fail_write={fail_write}: acknowledged record lost");
        assert_eq!(got[2], (3, b"after the roll".to_vec()));
    }
}

// ---------------------------------------------------------------------------------------------
// Directory fsyncs.

#[test]
fn directory_is_fsynced_after_segment_creation_and_deletion() {
    let st = FaultyStorage::new();
    let rec = [b'd'; 200];
    let o = Options { segment_size: 700, ..opts() };
    let wal = open(&st, &o);
    let mut rolls = 0;
    for i in 0..12 {
        let (segs, dirs) = (wal.stats().segments, st.dir_sync_count());
        wal.append(&[&rec]).unwrap();
        let created = wal.stats().segments - segs;
        assert_eq!(st.dir_sync_count() - dirs, created, "append {i}: one directory fsync per segment created");
        rolls += created;
    }
    assert!(rolls >= 3, "only {rolls} rolls");
    // Every segment created survives a power loss, with the records acknowledged in it.
    drop(wal);
    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(wal.durable_lsn(), 12);
    assert_eq!(wal.stats().segments, rolls + 1);

    let firsts: Vec<u64> = wal.inspect().unwrap().segments.iter().map(|s| s.first_lsn).collect();
    wal.create_cursor("c", CursorStart::Head).unwrap();
    let dirs = st.dir_sync_count();
    let deleted = wal.apply_retention().unwrap();
    assert_eq!(deleted as u64, rolls);
    assert_eq!(st.dir_sync_count() - dirs, 1, "one directory fsync after deleting segments");
    let dirs = st.dir_sync_count();
    assert_eq!(wal.apply_retention().unwrap(), 0);
    assert_eq!(st.dir_sync_count(), dirs, "nothing deleted, nothing to fsync");
    let oldest = wal.oldest_lsn();
    assert_eq!(oldest, *firsts.last().unwrap());
    drop(wal);

    // Deleted segments stay deleted after a power loss.
    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(wal.oldest_lsn(), oldest);
    assert_eq!(wal.stats().segments, 1);
    for &first in &firsts[..firsts.len() - 1] {
        assert_eq!(st.read_file(&seg(first)), None, "segment {first} came back");
    }
}

// ---------------------------------------------------------------------------------------------
// Disk budget.

#[test]
fn disk_budget_is_a_distinct_error_writes_nothing_and_frees_up_with_retention() {
    let st = FaultyStorage::new();
    let rec = [b'b'; 200];
    let f = frame_len(&[&rec], &opts());
    let per_segment = 3;
    let segment_size = SEGMENT_HEADER_LEN + per_segment * f;
    // Room for two full segments and a third holding one frame.
    let budget = 2 * segment_size + SEGMENT_HEADER_LEN + f + f / 2;
    let o = Options { segment_size, max_bytes: Some(budget), ..opts() };
    let wal = open(&st, &o);
    wal.create_cursor("slow", CursorStart::Oldest).unwrap();
    for _ in 0..2 * per_segment + 1 {
        wal.append(&[&rec]).unwrap();
    }
    let before = (wal.stats(), st.write_count(), st.sync_count());
    let used = 2 * segment_size + SEGMENT_HEADER_LEN + f;
    assert_eq!(before.0.bytes, used);

    let err = wal.append(&[&rec]).unwrap_err();
    assert!(err.is_full(), "{err:?}");
    match err {
        Error::Full { used: u, needed, budget: b } => assert_eq!((u, needed, b), (used, f, budget)),
        other => panic!("expected Error::Full, got {other:?}"),
    }
    assert!(matches!(wal.append_nowait(&[&rec]), Err(Error::Full { .. })));
    assert_eq!((wal.stats(), st.write_count(), st.sync_count()), before, "a refused append wrote something");
    assert!(!wal.is_poisoned(), "a full budget must not poison the log");

    // The cursor moves on; its persisted position still holds everything back until the next
    // append persists it, which lets retention free the two full segments.
    let head = wal.durable_lsn();
    wal.advance_cursor("slow", head).unwrap();
    assert_eq!(wal.cursor("slow").unwrap().persisted, 0);
    // The same size as the refused append: it only fits once segments are freed.
    let resumed = [b'r'; 200];
    let a = wal.append(&[&resumed]).unwrap();
    assert_eq!(a.first_lsn, head + 1);
    assert_eq!(wal.cursor("slow").unwrap().persisted, head);
    assert_eq!(wal.oldest_lsn(), 2 * per_segment + 1);
    assert_eq!(wal.stats().segments, 1);
    let got = read_all(&wal, wal.oldest_lsn());
    assert_eq!(got, vec![(head, rec.to_vec()), (head + 1, resumed.to_vec())]);
}

// ---------------------------------------------------------------------------------------------
// Lock and read-only opens (real files).

#[test]
fn second_writer_is_locked_out_and_read_only_open_sees_a_durable_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let o = opts();
    let wal = Wal::open(d.path(), o.clone()).unwrap();
    wal.create_cursor("c", CursorStart::Oldest).unwrap();
    wal.append(&["a", "b"]).unwrap();
    wal.append(&["c"]).unwrap();

    match Wal::open(d.path(), o.clone()) {
        Err(Error::Locked { dir }) => assert_eq!(dir, d.path()),
        other => panic!("expected Error::Locked, got {other:?}"),
    }

    let ro = Wal::open_read_only(d.path(), o.clone()).unwrap();
    assert_eq!(ro.durable_lsn(), 3);
    assert_eq!(read_all(&ro, 1), numbered(1, &["a", "b", "c"]));
    assert_eq!(ro.cursors().len(), 1);
    assert!(matches!(ro.append(&["x"]), Err(Error::ReadOnly)));
    assert!(matches!(ro.append_nowait(&["x"]), Err(Error::ReadOnly)));
    assert!(matches!(ro.advance_cursor("c", 1), Err(Error::ReadOnly)));
    assert!(matches!(ro.create_cursor("d", CursorStart::Head), Err(Error::ReadOnly)));
    assert!(matches!(ro.delete_cursor("c"), Err(Error::ReadOnly)));

    // The writer goes on; the read-only handle keeps the view it opened with.
    wal.append(&["d"]).unwrap();
    assert_eq!(ro.durable_lsn(), 3);
    assert_eq!(read_all(&ro, 1), numbered(1, &["a", "b", "c"]));
    assert_eq!(read_all(&ro, 4), vec![]);
    // A fresh read-only open sees the new record.
    let ro2 = Wal::open_read_only(d.path(), o.clone()).unwrap();
    assert_eq!(read_all(&ro2, 1), numbered(1, &["a", "b", "c", "d"]));

    // Read-only handles hold no lock; once the writer is gone another can open.
    drop(wal);
    let wal = Wal::open(d.path(), o).unwrap();
    assert_eq!(wal.durable_lsn(), 4);
    drop((ro, ro2));
}

// ---------------------------------------------------------------------------------------------
// Readers.

#[test]
fn readers_never_see_records_beyond_the_durable_lsn() {
    let st = FaultyStorage::new();
    let wal = open(&st, &opts());
    wal.append(&["durable"]).unwrap();
    let n = wal.append_nowait(&["pending-1", "pending-2"]).unwrap();
    assert_eq!((n.first_lsn, n.last_lsn), (2, 3));
    assert_eq!(wal.stats().written_lsn, 3);
    assert_eq!(wal.durable_lsn(), 1);

    let mut r = wal.reader(1).unwrap();
    assert_eq!(r.next().unwrap().map(|r| r.data), Some(b"durable".to_vec()));
    assert_eq!(r.next().unwrap(), None);
    assert_eq!(wal.reader(2).unwrap().next().unwrap(), None);
    assert!(!r.wait(Duration::from_millis(20)).unwrap(), "wait reported an unsynced record");

    wal.sync().unwrap();
    assert_eq!(wal.durable_lsn(), 3);
    assert!(r.wait(Duration::ZERO).unwrap());
    let rec = r.next().unwrap().unwrap();
    assert_eq!((rec.lsn, rec.data), (2, b"pending-1".to_vec()));
    let rec = r.next().unwrap().unwrap();
    assert_eq!((rec.lsn, rec.data), (3, b"pending-2".to_vec()));
    assert_eq!(r.next().unwrap(), None);

    match wal.sync_through(9) {
        Err(Error::LsnBeyondHead { lsn, head }) => assert_eq!((lsn, head), (9, 3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reader_wait_wakes_up_when_another_thread_appends() {
    let st = FaultyStorage::new();
    let wal = open(&st, &opts());
    wal.append(&["first"]).unwrap();
    let mut r = wal.reader(2).unwrap();
    assert!(!r.wait(Duration::from_millis(10)).unwrap());

    let (go, started) = mpsc::channel::<()>();
    let writer = {
        let wal = wal.clone();
        thread::spawn(move || {
            started.recv().unwrap();
            wal.append(&["second", "third"]).unwrap()
        })
    };
    go.send(()).unwrap();
    let t = Instant::now();
    assert!(r.wait(Duration::from_secs(60)).unwrap(), "wait timed out although a record was appended");
    assert!(t.elapsed() < Duration::from_secs(60));
    let a = writer.join().unwrap();
    assert_eq!((a.first_lsn, a.last_lsn), (2, 3));
    assert_eq!(r.next().unwrap().map(|r| (r.lsn, r.data)), Some((2, b"second".to_vec())));
    assert_eq!(r.next().unwrap().map(|r| (r.lsn, r.data)), Some((3, b"third".to_vec())));
    assert_eq!(r.next().unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Segments and batches.

#[test]
fn segment_rolls_before_a_frame_that_does_not_fit() {
    let st = FaultyStorage::new();
    let rec = [b's'; 100];
    let f = frame_len(&[&rec], &opts());
    let o = Options { segment_size: SEGMENT_HEADER_LEN + 3 * f, ..opts() };
    let wal = open(&st, &o);
    for lsn in 1..=3 {
        assert_eq!(wal.append(&[&rec]).unwrap().first_lsn, lsn);
    }
    // Exactly full, not over.
    assert_eq!(wal.stats().segments, 1);
    assert_eq!(st.read_file(&seg(1)).unwrap().len() as u64, o.segment_size);
    wal.append(&[&rec]).unwrap();
    assert_eq!(wal.stats().segments, 2);
    assert_eq!(st.read_file(&seg(4)).unwrap().len() as u64, SEGMENT_HEADER_LEN + f);

    // A frame larger than a segment gets a segment of its own.
    let big = vec![b'B'; 3 * o.segment_size as usize];
    let a = wal.append(&[&big]).unwrap();
    assert_eq!(a.first_lsn, 5);
    assert_eq!(st.read_file(&seg(5)).unwrap().len() as u64, SEGMENT_HEADER_LEN + a.frame_bytes);
    assert!(a.frame_bytes > o.segment_size);
    wal.append(&[&rec]).unwrap();
    assert_eq!(st.read_file(&seg(6)).unwrap().len() as u64, SEGMENT_HEADER_LEN + f);

    let insp = wal.inspect().unwrap();
    let layout: Vec<(u64, Option<u64>, u64)> =
        insp.segments.iter().map(|s| (s.first_lsn, s.last_lsn, s.frames)).collect();
    assert_eq!(layout, vec![(1, Some(3), 3), (4, Some(4), 1), (5, Some(5), 1), (6, Some(6), 1)]);
    let got = read_all(&wal, 1);
    assert_eq!(got.len(), 6);
    assert_eq!(got[4], (5, big));
    assert!(got.iter().enumerate().all(|(i, (lsn, d))| *lsn == i as u64 + 1 && (i == 4 || d[..] == rec[..])));
}

#[test]
fn empty_and_oversized_batches_are_refused_without_side_effects() {
    let st = FaultyStorage::new();
    let o = Options { max_frame_bytes: 256, ..opts() };
    let wal = open(&st, &o);
    let writes = st.write_count();

    match wal.append(&[vec![0u8; 300]]) {
        Err(Error::Batch(EncodeError::TooLarge { bytes, max })) => assert_eq!((bytes, max), (304, 256)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Limits count the 4-byte length prefix of every record.
    match wal.append_nowait(&[vec![1u8; 100], vec![2u8; 100], vec![3u8; 50]]) {
        Err(Error::Batch(EncodeError::TooLarge { bytes, max })) => assert_eq!((bytes, max), (262, 256)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(wal.append::<&[u8]>(&[]), Err(Error::Batch(EncodeError::Empty))));
    assert!(matches!(wal.append_nowait::<Vec<u8>>(&[]), Err(Error::Batch(EncodeError::Empty))));
    assert_eq!(st.write_count(), writes);
    assert!(!wal.is_poisoned());

    // No LSN was consumed; a batch exactly at the limit is fine, and so are empty records.
    let a = wal.append(&[vec![7u8; 252]]).unwrap();
    assert_eq!((a.first_lsn, a.last_lsn), (1, 1));
    let b = wal.append(&[Vec::new(), Vec::new()]).unwrap();
    assert_eq!((b.first_lsn, b.last_lsn), (2, 3));
    assert_eq!(read_all(&wal, 1), vec![(1, vec![7u8; 252]), (2, vec![]), (3, vec![])]);
}

#[test]
fn invalid_options_are_refused() {
    let st = FaultyStorage::new();
    for o in [
        Options { segment_size: 10, ..opts() },
        Options { max_frame_bytes: 10, ..opts() },
        Options { segment_size: 4096, max_bytes: Some(4095), ..opts() },
    ] {
        match Wal::open_with(Arc::new(st.clone()), DIR, o.clone()) {
            Err(Error::InvalidOptions { reason }) => assert!(!reason.is_empty()),
            other => panic!("{o:?}: expected InvalidOptions, got {other:?}"),
        }
    }
    assert_eq!(st.read_file(&seg(1)), None, "a refused open created a segment");
}

/// After a failed fsync the page cache may still show the frame the disk never got. A plain
/// reopen would recover it as data; `reopen` cuts everything after the last durable position
/// first, so nothing unacknowledged comes back and the next LSN follows the last durable one.
#[test]
fn reopen_after_a_failed_fsync_cuts_what_was_never_durable() {
    let st = FaultyStorage::new();
    let o = opts();
    let wal = open(&st, &o);
    wal.append(&[b"acked-1", b"acked-2"]).unwrap();
    let pending = wal.append_nowait(&[b"never-durable"]).unwrap();
    assert_eq!(pending.first_lsn, 3);
    st.fail_syncs_after(0);
    assert!(matches!(wal.sync_through(3), Err(Error::Io { op: "fsync", .. })));
    expect_poisoned(wal.sync_through(3), "fsync", &seg(1));
    st.heal();

    // What a plain reopen would see: the unsynced frame is still readable in "the cache".
    let file = st.read_file(&seg(1)).unwrap();
    assert!(file.windows(13).any(|w| w == b"never-durable"));

    let wal = wal.reopen().unwrap();
    assert_eq!(wal.durable_lsn(), 2);
    assert_eq!(read_all(&wal, 1), numbered(1, &["acked-1", "acked-2"]));
    let next = wal.append(&[b"after-reopen"]).unwrap();
    assert_eq!((next.first_lsn, next.last_lsn), (3, 3));
    assert_eq!(read_all(&wal, 3), numbered(3, &["after-reopen"]));
    // And it all holds across a power loss.
    drop(wal);
    st.power_loss();
    let wal = open(&st, &o);
    assert_eq!(read_all(&wal, 1), numbered(1, &["acked-1", "acked-2", "after-reopen"]));
}

#[test]
fn reopen_is_refused_while_another_clone_holds_the_log() {
    let st = FaultyStorage::new();
    let wal = open(&st, &opts());
    let other = wal.clone();
    assert!(matches!(wal.reopen(), Err(Error::Locked { .. })));
    drop(other);
    open(&st, &opts());
}

/// Retention never deletes the segment holding the last record, even when every cursor has
/// passed it and the active segment after it is empty (a roll whose first write failed): the
/// last record stays readable.
#[test]
fn retention_keeps_the_last_record_readable() {
    let st = FaultyStorage::new();
    let o = Options { segment_size: 256, ..opts() };
    let wal = open(&st, &o);
    wal.create_cursor("c", CursorStart::Oldest).unwrap();
    let big = [b'x'; 150];
    wal.append(&[&big[..]]).unwrap();
    let b = wal.append(&[&big[..]]).unwrap(); // rolls: lands in a segment of its own
    st.fail_writes_after(1); // the next roll writes its segment header, then the frame fails
    assert!(wal.append(&[&big[..]]).is_err());
    st.heal();
    drop(wal); // the process dies; a restart opens what is on disk
    let wal = open(&st, &o);
    assert_eq!(wal.stats().segments, 3, "the rolled-to segment exists, empty");
    assert_eq!(wal.durable_lsn(), b.last_lsn);
    wal.advance_cursor("c", b.last_lsn).unwrap();
    wal.persist_cursors().unwrap();
    assert_eq!(wal.stats().segments, 2, "only the first segment goes");
    assert_eq!(wal.oldest_lsn(), b.first_lsn);
    assert_eq!(read_all(&wal, b.first_lsn), vec![(b.first_lsn, big.to_vec())]);
}
