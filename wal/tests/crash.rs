//! Crash test: a real writer process is killed with SIGKILL at random moments, over and over, on
//! one log directory. After every kill the log is reopened and checked: every append that
//! returned `Ok` (and was reported on the child's stdout) is there, whole, in order, under the
//! LSNs it was given, with the right bytes; LSNs are contiguous from the oldest; `verify()` finds
//! nothing. The next round then appends to the same directory, so recovery after recovery is
//! exercised too.
//!
//! The writer is this very test binary, re-executed with a filter that runs only [`crash_child`]
//! and an environment variable naming the directory. Without that variable `crash_child` does
//! nothing, so it passes as a no-op under `cargo test` and `cargo nextest run` alike.
//!
//! Knobs: `EDS_CRASH_ROUNDS` (default 20) and `EDS_CRASH_SEED` (printed at start, to replay a
//! failing run).

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use eds_wal::{CursorStart, Durability, Options, Wal};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Name of the test function the parent re-executes.
const CHILD_TEST: &str = "crash_child";
/// Log directory for the child; its absence makes [`crash_child`] a no-op.
const ENV_DIR: &str = "EDS_CRASH_CHILD_DIR";
const ENV_ROUND: &str = "EDS_CRASH_CHILD_ROUND";
const ENV_THREADS: &str = "EDS_CRASH_CHILD_THREADS";
const ENV_SEED: &str = "EDS_CRASH_CHILD_SEED";
/// Every line the child reports starts with this, so libtest's own output is ignored.
const MARK: &str = "@crash ";
/// The child gives up on its own after this long, in case its parent died.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);
/// How long the parent waits for the child to start or to acknowledge something.
const PATIENCE: Duration = Duration::from_secs(30);
/// Retention keeps the log around this many segments so every round can check all of it.
const KEEP_SEGMENTS: usize = 24;
const CURSOR: &str = "crash-test";

fn options() -> Options {
    Options {
        // Small segments: rolls (seal, fsync, create, fsync dir) happen often, and get killed.
        segment_size: 256 << 10,
        compress_threshold: 512,
        zstd_level: 1,
        durability: Durability::Always,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic content.

/// splitmix64: a tiny seedable generator, good enough to pick sizes and fill payloads.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Which batch (and which record of it) a record is. Written at the start of every record, so
/// the parent can regenerate the expected bytes of any record it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RecordId {
    round: u32,
    thread: u32,
    seq: u64,
    index: u32,
    count: u32,
}

impl RecordId {
    fn batch(&self) -> BatchKey {
        (self.round, self.thread, self.seq)
    }
}

/// (round, writer thread, batch number of that thread).
type BatchKey = (u32, u32, u64);

const RECORD_MAGIC: [u8; 4] = *b"CRSH";
const RECORD_HEADER: usize = 4 + 4 + 4 + 8 + 4 + 4 + 4;

fn record(id: RecordId, payload_len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_HEADER + payload_len);
    b.extend_from_slice(&RECORD_MAGIC);
    b.extend_from_slice(&id.round.to_le_bytes());
    b.extend_from_slice(&id.thread.to_le_bytes());
    b.extend_from_slice(&id.seq.to_le_bytes());
    b.extend_from_slice(&id.index.to_le_bytes());
    b.extend_from_slice(&id.count.to_le_bytes());
    b.extend_from_slice(&(payload_len as u32).to_le_bytes());
    fill_payload(id, payload_len, &mut b);
    b
}

/// A payload that is a pure function of the record id and length: random bytes for some
/// records (incompressible, stored as is), JSON-like text for others (compresses well).
fn fill_payload(id: RecordId, len: usize, out: &mut Vec<u8>) {
    let mut rng = Rng::new(
        u64::from(id.round) << 48
            ^ u64::from(id.thread) << 40
            ^ id.seq << 16
            ^ u64::from(id.index)
            ^ 0x5EED_0000_0000_0000,
    );
    let start = out.len();
    if rng.chance(30) {
        while out.len() < start + len {
            out.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
    } else {
        while out.len() < start + len {
            let v = rng.next_u64();
            let line =
                format!("{{\"id\":\"{:016x}\",\"table\":\"order\",\"n\":{},\"ok\":{}}},", v, v % 1000, v & 1 == 0);
            out.extend_from_slice(line.as_bytes());
        }
    }
    out.truncate(start + len);
}

fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().unwrap()
}

/// Parse a record read back from the log and check every byte of it; panics naming the LSN.
fn check_record(lsn: u64, data: &[u8]) -> RecordId {
    assert!(data.len() >= RECORD_HEADER, "LSN {lsn}: record of {} bytes is shorter than its header", data.len());
    assert_eq!(data[0..4], RECORD_MAGIC, "LSN {lsn}: record does not start with the test magic");
    let id = RecordId {
        round: u32::from_le_bytes(field(data, 4)),
        thread: u32::from_le_bytes(field(data, 8)),
        seq: u64::from_le_bytes(field(data, 12)),
        index: u32::from_le_bytes(field(data, 20)),
        count: u32::from_le_bytes(field(data, 24)),
    };
    let payload_len = u32::from_le_bytes(field(data, 28)) as usize;
    assert!(id.index < id.count, "LSN {lsn}: {id:?} has an index beyond its batch");
    assert_eq!(data.len(), RECORD_HEADER + payload_len, "LSN {lsn}: {id:?} has the wrong length");
    let expected = record(id, payload_len);
    if expected != data {
        let at = expected.iter().zip(data).position(|(a, b)| a != b).unwrap_or(0);
        panic!("LSN {lsn}: {id:?} differs from what was appended, first at byte {at}");
    }
    id
}

/// Batch sizes: mostly single records and small batches, sometimes hundreds.
fn pick_count(rng: &mut Rng) -> u32 {
    let p = rng.range(0, 100);
    (match p {
        0..50 => 1,
        50..85 => rng.range(2, 17),
        85..98 => rng.range(17, 129),
        _ => rng.range(129, 513),
    }) as u32
}

/// Payload sizes: mostly small, a few large enough that one frame spans many pages (so a kill
/// can tear it) or nearly fills a segment.
fn pick_len(rng: &mut Rng) -> usize {
    let p = rng.range(0, 100);
    (match p {
        0..80 => rng.range(0, 300),
        80..98 => rng.range(300, 3000),
        _ => rng.range(3000, 40_000),
    }) as usize
}

// ---------------------------------------------------------------------------------------------
// The child: append forever, report each acknowledged batch.

fn say(line: &str) {
    // One write per line under the stdout lock, flushed, so lines from several threads never
    // interleave and the parent sees each acknowledgement as soon as it is made.
    let mut out = std::io::stdout().lock();
    out.write_all(format!("\n{MARK}{line}\n").as_bytes()).expect("write to stdout");
    out.flush().expect("flush stdout");
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The writer process. A no-op unless the parent test started this binary with [`ENV_DIR`].
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(ENV_DIR) else { return };
    let round = env_u64(ENV_ROUND) as u32;
    let threads = env_u64(ENV_THREADS) as u32;
    let seed = env_u64(ENV_SEED);
    let wal = Wal::open(PathBuf::from(dir), options()).unwrap_or_else(|e| panic!("open: {}", eds_wal::error_chain(&e)));
    say(&format!("ready {}", wal.durable_lsn()));
    std::thread::scope(|s| {
        for thread in 0..threads {
            let wal = wal.clone();
            s.spawn(move || child_writer(&wal, round, thread, seed));
        }
    });
}

fn child_writer(wal: &Wal, round: u32, thread: u32, seed: u64) {
    let mut rng = Rng::new(seed ^ u64::from(thread + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < CHILD_LIFETIME {
        let count = pick_count(&mut rng);
        let records: Vec<Vec<u8>> =
            (0..count).map(|index| record(RecordId { round, thread, seq, index, count }, pick_len(&mut rng))).collect();
        // Mostly `append`; sometimes the pipelined form (`append_nowait`, then `sync_through`),
        // which must give the same guarantee once `sync_through` returns.
        let appended = if rng.chance(20) {
            let a =
                wal.append_nowait(&records).unwrap_or_else(|e| panic!("append_nowait: {}", eds_wal::error_chain(&e)));
            wal.sync_through(a.last_lsn).unwrap_or_else(|e| panic!("sync_through: {}", eds_wal::error_chain(&e)));
            a
        } else {
            wal.append(&records).unwrap_or_else(|e| panic!("append: {}", eds_wal::error_chain(&e)))
        };
        assert_eq!(appended.last_lsn - appended.first_lsn + 1, u64::from(count));
        say(&format!("ack {round} {thread} {seq} {} {}", appended.first_lsn, appended.last_lsn));
        if seq % 16 == 15 {
            let st = wal.stats();
            say(&format!("stats {} {}", st.frames, st.fsyncs));
        }
        seq += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A batch the child reported as durable.
#[derive(Debug, Clone, Copy)]
struct Ack {
    key: BatchKey,
    first: u64,
    last: u64,
}

#[derive(Debug)]
enum Line {
    Ready(u64),
    Ack(Ack),
    Stats { frames: u64, fsyncs: u64 },
}

fn parse_line(line: &str) -> Option<Line> {
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let mut words = rest.split_whitespace();
    let kind = words.next()?;
    let nums: Vec<u64> = words.map(|w| w.parse().unwrap_or_else(|e| panic!("bad child line {line:?}: {e}"))).collect();
    Some(match (kind, nums.as_slice()) {
        ("ready", &[head]) => Line::Ready(head),
        ("ack", &[round, thread, seq, first, last]) => {
            Line::Ack(Ack { key: (round as u32, thread as u32, seq), first, last })
        }
        ("stats", &[frames, fsyncs]) => Line::Stats { frames, fsyncs },
        _ => panic!("bad child line {line:?}"),
    })
}

/// How the parent decides when to kill.
#[derive(Debug, Clone, Copy)]
enum KillAfter {
    /// This long after spawning, ready or not (may hit exec, open or recovery).
    Spawn(Duration),
    /// This long after the child said it opened the log.
    Ready(Duration),
    /// Right after this many acknowledgements.
    Acks(usize),
}

#[derive(Debug, Default)]
struct RoundOutcome {
    ready: Option<u64>,
    acks: Vec<Ack>,
    frames: u64,
    fsyncs: u64,
}

fn take_line(line: &str, out: &mut RoundOutcome) {
    match parse_line(line) {
        Some(Line::Ready(head)) => out.ready = Some(head),
        Some(Line::Ack(a)) => out.acks.push(a),
        Some(Line::Stats { frames, fsyncs }) => {
            out.frames = out.frames.max(frames);
            out.fsyncs = out.fsyncs.max(fsyncs);
        }
        None => {}
    }
}

/// Run one child and kill it per `plan`; every line it wrote before dying is collected.
fn run_child(dir: &Path, round: u32, threads: u32, seed: u64, plan: KillAfter) -> RoundOutcome {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([CHILD_TEST, "--exact", "--nocapture", "--include-ignored", "--test-threads=1"])
        .env(ENV_DIR, dir)
        .env(ENV_ROUND, round.to_string())
        .env(ENV_THREADS, threads.to_string())
        .env(ENV_SEED, seed.to_string())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let spawned = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut out = RoundOutcome::default();
    // Wait for the kill moment, consuming lines as they come. The child only ever stops by
    // being killed; a channel that closes early means it exited on its own (checked below).
    let mut kill_at = match plan {
        KillAfter::Spawn(d) => Some(spawned + d),
        _ => None,
    };
    loop {
        let now = Instant::now();
        if kill_at.is_some_and(|t| now >= t) {
            break;
        }
        if let KillAfter::Acks(n) = plan {
            if out.acks.len() >= n {
                break;
            }
        }
        let wait = kill_at.map(|t| t - now).unwrap_or(PATIENCE);
        match rx.recv_timeout(wait) {
            Ok(line) => {
                let was_ready = out.ready.is_some();
                take_line(&line, &mut out);
                if let (false, Some(_), KillAfter::Ready(d)) = (was_ready, out.ready, plan) {
                    kill_at = Some(Instant::now() + d);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if kill_at.is_some() => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("round {round}: child said nothing for {PATIENCE:?} ({plan:?})")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    // Lines written before the kill are acknowledgements too: drain the pipe to its end.
    reader.join().unwrap();
    for line in rx.try_iter() {
        take_line(&line, &mut out);
    }
    let stderr = err_reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "round {round}: the child was not killed but exited with {status}; its stderr:\n{stderr}"
    );
    out
}

/// What a scan of the whole log found: each complete batch and the LSNs it occupies.
#[derive(Debug, Default)]
struct Scan {
    batches: HashMap<BatchKey, (u64, u64)>,
    records: u64,
    oldest: u64,
    head: u64,
}

/// Read every record from the oldest, checking bytes, LSN contiguity and that every batch in the
/// log is whole (a frame is written all or nothing) and appears once.
fn scan(wal: &Wal) -> Scan {
    let oldest = wal.oldest_lsn();
    let head = wal.durable_lsn();
    let mut s = Scan { oldest, head, ..Scan::default() };
    let mut reader = wal.reader(oldest).unwrap();
    let mut expected_lsn = oldest;
    let mut open_batch: Option<(RecordId, u64)> = None;
    while let Some(rec) =
        reader.next().unwrap_or_else(|e| panic!("read at LSN {expected_lsn}: {}", eds_wal::error_chain(&e)))
    {
        assert_eq!(rec.lsn, expected_lsn, "LSNs are not contiguous");
        expected_lsn += 1;
        let id = check_record(rec.lsn, &rec.data);
        let first = match open_batch {
            Some((prev, first)) => {
                assert_eq!(
                    (id.batch(), id.index, id.count),
                    (prev.batch(), prev.index + 1, prev.count),
                    "LSN {}: batch {prev:?} is interrupted by {id:?}",
                    rec.lsn
                );
                first
            }
            None => {
                assert_eq!(id.index, 0, "LSN {}: {id:?} does not start its batch (missing records before it)", rec.lsn);
                rec.lsn
            }
        };
        if id.index + 1 == id.count {
            let before = s.batches.insert(id.batch(), (first, rec.lsn));
            assert!(
                before.is_none(),
                "batch {:?} is in the log twice: {before:?} and {:?}",
                id.batch(),
                (first, rec.lsn)
            );
            open_batch = None;
        } else {
            open_batch = Some((id, first));
        }
        s.records += 1;
    }
    assert!(open_batch.is_none(), "the log ends inside batch {open_batch:?}");
    assert_eq!(expected_lsn - 1, head, "records stop before the durable LSN");
    s
}

fn segment_firsts(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| eds_wal::segment::parse_segment_name(e.unwrap().file_name().to_str()?))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_append() {
    let rounds: u32 =
        std::env::var("EDS_CRASH_ROUNDS").ok().map(|v| v.parse().expect("EDS_CRASH_ROUNDS")).unwrap_or(20);
    let seed: u64 =
        std::env::var("EDS_CRASH_SEED").ok().map(|v| v.parse().expect("EDS_CRASH_SEED")).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    eprintln!("crash test: {rounds} rounds, EDS_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");

    let mut acked: Vec<Ack> = Vec::new();
    let mut max_acked = 0u64;
    let mut head_after_last_check = 0u64;
    let (mut cuts, mut unready, mut group_commits, mut checked_acks) = (0, 0, 0, 0u64);
    for round in 0..rounds {
        let threads = if rng.chance(50) { 1 } else { rng.range(2, 5) as u32 };
        let plan = match rng.range(0, 100) {
            0..15 => KillAfter::Spawn(Duration::from_micros(rng.range(0, 15_000))),
            15..55 => KillAfter::Ready(Duration::from_micros(rng.range(0, 300_000))),
            _ => KillAfter::Acks(rng.range(1, 300) as usize),
        };
        let out = run_child(&dir, round, threads, rng.next_u64(), plan);
        match out.ready {
            // The child's open must see exactly what the last check left.
            Some(head) => assert_eq!(head, head_after_last_check, "round {round}: the child opened at another head"),
            None => unready += 1,
        }
        if out.fsyncs > 0 && out.fsyncs < out.frames {
            group_commits += 1;
        }
        for a in &out.acks {
            assert!(
                a.first > head_after_last_check,
                "round {round}: {a:?} reuses an LSN at or below {head_after_last_check}"
            );
            max_acked = max_acked.max(a.last);
        }
        acked.extend_from_slice(&out.acks);

        let wal = Wal::open(&dir, options())
            .unwrap_or_else(|e| panic!("round {round}: reopen: {}", eds_wal::error_chain(&e)));
        let rec = wal.recovery().clone();
        if let Some(cut) = &rec.cut {
            cuts += 1;
            assert!(
                cut.first_lsn > max_acked,
                "round {round}: recovery cut acknowledged data: {cut:?}, acked up to {max_acked}"
            );
        }
        assert!(rec.new_holes.is_empty() && wal.holes().is_empty(), "round {round}: holes {:?}", wal.holes());
        assert!(
            wal.durable_lsn() >= max_acked,
            "round {round}: head {} is below the acknowledged {max_acked}",
            wal.durable_lsn()
        );

        let s = scan(&wal);
        for a in &acked {
            if a.last < s.oldest {
                continue; // retention removed it after an earlier round checked it
            }
            assert!(a.first >= s.oldest, "round {round}: {a:?} straddles the oldest LSN {}", s.oldest);
            assert_eq!(
                s.batches.get(&a.key),
                Some(&(a.first, a.last)),
                "round {round}: acknowledged batch {a:?} is missing or moved"
            );
            checked_acks += 1;
        }
        let v = wal.verify().unwrap();
        assert!(v.problems.is_empty(), "round {round}: verify found {:?}", v.problems);
        assert_eq!(v.records, s.head + 1 - s.oldest, "round {round}: verify counted other records than the reader");

        // Keep the log small so every round can afford to check all of it; this also has every
        // later child open a log whose oldest segments were deleted by retention.
        if wal.cursors().is_empty() {
            wal.create_cursor(CURSOR, CursorStart::Oldest).unwrap();
        }
        let firsts = segment_firsts(&dir);
        if firsts.len() > KEEP_SEGMENTS {
            wal.advance_cursor(CURSOR, firsts[firsts.len() - KEEP_SEGMENTS] - 1).unwrap();
            wal.persist_cursors().unwrap();
            acked.retain(|a| a.last >= wal.oldest_lsn());
        }
        head_after_last_check = wal.durable_lsn();
        wal.close().unwrap();
        eprintln!(
            "round {round:>3}: {threads} thread(s), {plan:?}, {} acks, head {}, oldest {}, cut {}",
            out.acks.len(),
            s.head,
            s.oldest,
            rec.cut
                .as_ref()
                .map(|c| format!("{} bytes at LSN {}", c.bytes, c.first_lsn))
                .unwrap_or_else(|| "none".into()),
        );
    }
    eprintln!(
        "crash test: {rounds} rounds, {checked_acks} acknowledged batches checked, {cuts} unsynced tails cut, \
         {unready} kills before the log was open, {group_commits} rounds with group commit seen"
    );
    assert!(max_acked > 0 || rounds < 3, "no round acknowledged anything: the test tested nothing");
}
