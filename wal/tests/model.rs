//! Model test: random sequences of appends, syncs, reads, cursor moves, retention, clean reopens,
//! power losses and injected write/fsync failures run against the log on [`FaultyStorage`] with
//! tiny options, and against a simple in-memory model of what must have survived.
//!
//! After every step the log must hold exactly what the model allows:
//! - every record whose append returned `Ok` (or that a reader could see) is there, under the
//!   same LSN, with the same bytes; records that were never durable may be lost only as a suffix;
//! - nothing above the durable LSN is readable, and the durable LSN never goes backwards;
//! - cursors come back at their persisted positions after a crash and at their in-memory
//!   positions after a clean close;
//! - retention never deletes a record a persisted cursor still needs
//!   (`oldest_lsn <= min(persisted) + 1`) and deletes nothing while there is no cursor;
//! - a failed write or fsync poisons the handle and reopening recovers.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256).

#![allow(clippy::unwrap_used)]

use eds_wal::{CursorInfo, CursorPersist, CursorStart, Durability, Error, FaultyStorage, Options, Wal};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const DIR: &str = "/wal";
const NAMES: [&str; 3] = ["a", "b", "c"];
/// A cursor is persisted by `advance_cursor` once it moved this many records.
const PERSIST_RECORDS: u64 = 6;

/// A record; its `Debug` is short so a shrunk failing case stays readable.
#[derive(Clone, PartialEq, Eq)]
struct Rec(Vec<u8>);

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head: Vec<u8> = self.0.iter().take(12).copied().collect();
        write!(f, "{}B\"{}\"", self.0.len(), head.escape_ascii())
    }
}

impl AsRef<[u8]> for Rec {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

type Batch = Vec<Rec>;

#[derive(Debug, Clone)]
enum Start {
    Head,
    Oldest,
    /// An LSN picked from `0..=durable + 2`, so both bounds get tried.
    Lsn(Index),
}

#[derive(Debug, Clone)]
enum Op {
    /// `append` under `Durability::Always`: acknowledged once it returns.
    Append(Batch),
    /// `append_nowait`: written, not synced.
    AppendNowait(Batch),
    Sync,
    /// Read from an LSN picked from `oldest..=durable + 1`.
    Read(Index),
    CursorRead(usize),
    Create(usize, Start),
    /// Advance a cursor. `valid`: an existing cursor (picked by the index) to an LSN from
    /// `position..=durable`; otherwise any name to any LSN from `0..=durable + 1` (backwards,
    /// beyond the head and unknown cursors included).
    Advance {
        name: Index,
        lsn: Index,
        valid: bool,
    },
    /// Reset to an LSN picked from `0..=durable + 1`.
    Reset(usize, Index),
    Delete(usize),
    Persist,
    Retention,
    /// `close`, then open again.
    Reopen,
    /// Drop the handle, lose power (keeping this many unsynced bytes of each file), reopen.
    PowerLoss(Option<u16>),
    /// Arm a write (`sync == false`) or fsync failure after `after` successes, append the
    /// batches (every call after the failure must be refused), then reopen, losing power or not.
    Fault {
        sync: bool,
        after: u8,
        batches: Vec<Batch>,
        power_loss: bool,
    },
    /// The same while persisting cursors.
    CursorFault {
        sync: bool,
        after: u8,
        power_loss: bool,
    },
}

fn json_record(id: u32, word: String, repeat: usize) -> Vec<u8> {
    format!(
        r#"{{"operation":"UPDATE","table":"order","id":{id},"name":"{word}","payload":"{}"}}"#,
        word.repeat(repeat * 4)
    )
    .into_bytes()
}

fn record() -> impl Strategy<Value = Rec> {
    prop_oneof![
        4 => (any::<u32>(), "[a-z]{1,10}", 0usize..8).prop_map(|(id, w, r)| Rec(json_record(id, w, r))),
        3 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Rec),
        1 => Just(Rec(Vec::new())),
    ]
}

fn batch() -> impl Strategy<Value = Batch> {
    prop_oneof![
        10 => prop::collection::vec(record(), 1..6),
        // Larger than a segment on its own: a frame alone in its segment.
        1 => prop::collection::vec(record(), 20..40),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let start = prop_oneof![Just(Start::Head), Just(Start::Oldest), any::<Index>().prop_map(Start::Lsn)];
    prop_oneof![
        10 => batch().prop_map(Op::Append),
        5 => batch().prop_map(Op::AppendNowait),
        2 => Just(Op::Sync),
        3 => any::<Index>().prop_map(Op::Read),
        2 => name.clone().prop_map(Op::CursorRead),
        3 => (name.clone(), start).prop_map(|(n, s)| Op::Create(n, s)),
        8 => (any::<Index>(), any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(name, lsn, valid)| Op::Advance { name, lsn, valid }),
        1 => (name.clone(), any::<Index>()).prop_map(|(n, i)| Op::Reset(n, i)),
        1 => name.prop_map(Op::Delete),
        2 => Just(Op::Persist),
        1 => Just(Op::Retention),
        2 => Just(Op::Reopen),
        3 => prop::option::of(0u16..600).prop_map(Op::PowerLoss),
        2 => (any::<bool>(), 0u8..4, prop::collection::vec(batch(), 1..5), any::<bool>())
            .prop_map(|(sync, after, batches, power_loss)| Op::Fault { sync, after, batches, power_loss }),
        1 => (any::<bool>(), 0u8..3, any::<bool>())
            .prop_map(|(sync, after, power_loss)| Op::CursorFault { sync, after, power_loss }),
    ]
}

/// What must be true of the log.
#[derive(Debug, Default)]
struct Model {
    /// Every record written and not lost since, LSN = index + 1.
    records: Vec<Vec<u8>>,
    /// Records up to this LSN were acknowledged or visible: they must survive anything.
    durable: u64,
    /// Oldest LSN last seen; it never goes backwards.
    oldest: u64,
    /// Cursor name → (position, persisted).
    cursors: BTreeMap<String, (u64, u64)>,
}

impl Model {
    fn written(&self) -> u64 {
        self.records.len() as u64
    }

    fn min_persisted(&self) -> Option<u64> {
        self.cursors.values().map(|&(_, p)| p).min()
    }

    /// Every cursor persisted at its in-memory position (what `persist_cursors` does).
    fn persist_all(&mut self) {
        for c in self.cursors.values_mut() {
            c.1 = c.0;
        }
    }

    /// After a crash only persisted positions survive.
    fn forget_unpersisted(&mut self) {
        for c in self.cursors.values_mut() {
            c.0 = c.1;
        }
    }
}

struct Harness {
    storage: FaultyStorage,
    opts: Options,
    wal: Option<Wal>,
    model: Model,
}

fn pick(i: &Index, lo: u64, hi: u64) -> u64 {
    assert!(lo <= hi);
    lo + i.index((hi - lo + 1) as usize) as u64
}

fn read_from(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut r = wal.reader(from).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next().unwrap() {
        out.push((rec.lsn, rec.data));
    }
    out
}

fn infos(model: &Model) -> Vec<CursorInfo> {
    model
        .cursors
        .iter()
        .map(|(n, &(position, persisted))| CursorInfo { name: n.clone(), position, persisted })
        .collect()
}

fn assert_poisoned<T: std::fmt::Debug>(r: eds_wal::Result<T>, what: &str) {
    match r {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("{what} on a poisoned log: expected Error::Poisoned, got {other:?}"),
    }
}

impl Harness {
    fn new(opts: Options) -> Harness {
        let mut h =
            Harness { storage: FaultyStorage::new(), opts, wal: None, model: Model { oldest: 1, ..Model::default() } };
        h.open();
        h
    }

    fn wal(&self) -> &Wal {
        self.wal.as_ref().unwrap()
    }

    fn open(&mut self) {
        let wal = Wal::open_with(Arc::new(self.storage.clone()), DIR, self.opts.clone()).unwrap();
        self.wal = Some(wal);
    }

    /// Reopened after losing whatever was not durable: recovery may keep a prefix of the
    /// records that were only written, never less than the durable ones.
    fn after_reopen(&mut self, clean: bool) {
        let wal = self.wal();
        let head = wal.durable_lsn();
        let rec = wal.recovery().clone();
        assert_eq!(rec.head, head);
        assert!(
            head >= self.model.durable,
            "recovery lost durable records: head {head}, durable {}",
            self.model.durable
        );
        assert!(
            head <= self.model.written(),
            "recovery invented records: head {head}, written {}",
            self.model.written()
        );
        if clean {
            assert_eq!(head, self.model.written(), "a clean close must keep everything written");
            assert_eq!(rec.cut, None, "nothing to cut after a clean close");
        }
        if let Some(cut) = &rec.cut {
            assert_eq!(cut.first_lsn, head + 1, "cut {cut:?}");
            assert!(cut.bytes > 0, "cut {cut:?}");
        }
        assert!(rec.cursor_problems.is_empty(), "{:?}", rec.cursor_problems);
        assert!(rec.new_holes.is_empty(), "{:?}", rec.new_holes);
        self.model.records.truncate(head as usize);
        self.model.durable = head;
    }

    /// Compare the whole log with the model.
    fn check(&mut self, had_cursors: bool) {
        let wal = self.wal.as_ref().unwrap();
        let m = &mut self.model;
        let durable = wal.durable_lsn();
        assert!(durable >= m.durable, "durable LSN went backwards: {durable} < {}", m.durable);
        assert!(durable <= m.written(), "durable {durable} beyond written {}", m.written());
        // Whatever is durable now has been visible to readers: it must never be lost.
        m.durable = durable;
        let st = wal.stats();
        assert_eq!(st.written_lsn, m.written());
        assert_eq!(st.durable_lsn, durable);

        let oldest = wal.oldest_lsn();
        assert_eq!(st.oldest_lsn, oldest);
        assert!(oldest >= m.oldest, "oldest LSN went backwards: {oldest} < {}", m.oldest);
        assert!(oldest <= durable + 1, "oldest {oldest} beyond durable {durable} + 1");
        if let Some(min) = m.min_persisted() {
            assert!(
                oldest <= min + 1,
                "retention deleted records a persisted cursor needs: oldest {oldest}, min persisted {min}"
            );
        }
        if !had_cursors && m.cursors.is_empty() {
            assert_eq!(oldest, m.oldest, "retention deleted segments while no cursor existed");
        }
        m.oldest = oldest;

        assert_eq!(wal.cursors(), infos(m));

        let got = read_from(wal, oldest);
        let want: Vec<(u64, Vec<u8>)> = (oldest..=durable).map(|l| (l, m.records[(l - 1) as usize].clone())).collect();
        assert_eq!(got.len(), want.len(), "records read from {oldest} (durable {durable})");
        assert!(got == want, "records read from {oldest} differ from the model");
        if oldest > 1 {
            match wal.reader(oldest - 1) {
                Err(Error::LsnBelowOldest { lsn, oldest: o }) => assert_eq!((lsn, o), (oldest - 1, oldest)),
                other => panic!("reader below oldest: {other:?}"),
            }
        }
    }

    fn append(&mut self, batch: &Batch, wait: bool) {
        let wal = self.wal();
        let a = if wait { wal.append(batch) } else { wal.append_nowait(batch) }.unwrap();
        let first = self.model.written() + 1;
        assert_eq!((a.first_lsn, a.last_lsn), (first, first + batch.len() as u64 - 1));
        self.model.records.extend(batch.iter().map(|r| r.0.clone()));
        if wait {
            self.model.durable = a.last_lsn;
        }
    }

    fn run(&mut self, op: &Op) {
        let had_cursors = !self.model.cursors.is_empty();
        match op {
            Op::Append(b) => self.append(b, true),
            Op::AppendNowait(b) => {
                self.append(b, false);
                // Not visible before it is durable.
                let durable = self.wal().durable_lsn();
                let mut r = self.wal().reader(durable + 1).unwrap();
                assert_eq!(r.next().unwrap(), None, "a reader saw a record beyond the durable LSN {durable}");
            }
            Op::Sync => {
                self.wal().sync().unwrap();
                assert_eq!(self.wal().durable_lsn(), self.model.written());
                self.model.durable = self.model.written();
            }
            Op::Read(i) => {
                let (oldest, durable) = (self.wal().oldest_lsn(), self.wal().durable_lsn());
                let from = pick(i, oldest, durable + 1);
                let got = read_from(self.wal(), from);
                let want: Vec<(u64, Vec<u8>)> =
                    (from..=durable).map(|l| (l, self.model.records[(l - 1) as usize].clone())).collect();
                assert!(got == want, "read from {from}: got {} records, want {}", got.len(), want.len());
            }
            Op::CursorRead(n) => {
                let name = NAMES[*n];
                match (self.wal().cursor_reader(name), self.model.cursors.get(name)) {
                    (Ok(mut r), Some(&(pos, _))) => {
                        assert_eq!(r.next_lsn(), pos + 1);
                        let durable = self.wal().durable_lsn();
                        for lsn in pos + 1..=durable {
                            let rec = r.next().unwrap().unwrap();
                            assert_eq!(rec.lsn, lsn);
                            assert!(rec.data == self.model.records[(lsn - 1) as usize], "cursor {name} record {lsn}");
                        }
                        assert_eq!(r.next().unwrap(), None);
                    }
                    (Err(Error::CursorNotFound { cursor }), None) => assert_eq!(cursor, name),
                    (other, m) => panic!("cursor_reader({name}): {other:?}, model {m:?}"),
                }
            }
            Op::Create(n, start) => {
                let name = NAMES[*n];
                let (oldest, head) = (self.wal().oldest_lsn(), self.wal().durable_lsn());
                let (start, expected) = match start {
                    Start::Head => (CursorStart::Head, Ok(head)),
                    Start::Oldest => (CursorStart::Oldest, Ok(oldest - 1)),
                    Start::Lsn(i) => {
                        let lsn = pick(i, 0, head + 2);
                        let e = if lsn < oldest {
                            Err(format!("below {lsn} {oldest}"))
                        } else if lsn > head + 1 {
                            Err(format!("beyond {} {head}", lsn - 1))
                        } else {
                            Ok(lsn - 1)
                        };
                        (CursorStart::Lsn(lsn), e)
                    }
                };
                let expected = if self.model.cursors.contains_key(name) { Err("exists".to_owned()) } else { expected };
                let got = self.wal().create_cursor(name, start);
                match (got, expected) {
                    (Ok(info), Ok(pos)) => {
                        assert_eq!(info, CursorInfo { name: name.to_owned(), position: pos, persisted: pos });
                        self.model.cursors.insert(name.to_owned(), (pos, pos));
                    }
                    (Err(Error::CursorExists { cursor }), Err(e)) if e == "exists" => assert_eq!(cursor, name),
                    (Err(Error::CursorBelowOldest { cursor, needed, oldest }), Err(e)) => {
                        assert_eq!(cursor, name);
                        assert_eq!(format!("below {needed} {oldest}"), e);
                    }
                    (Err(Error::CursorBeyondHead { cursor, position, head }), Err(e)) => {
                        assert_eq!(cursor, name);
                        assert_eq!(format!("beyond {position} {head}"), e);
                    }
                    (got, expected) => panic!("create_cursor({name}, {start:?}): got {got:?}, expected {expected:?}"),
                }
            }
            Op::Advance { name, lsn, valid } => {
                let head = self.wal().durable_lsn();
                let existing: Vec<(String, u64)> = self.model.cursors.iter().map(|(n, c)| (n.clone(), c.0)).collect();
                let (name, lsn) = match existing.get(name.index(existing.len().max(1))) {
                    Some((n, pos)) if *valid => (n.clone(), pick(lsn, *pos, head)),
                    _ => (NAMES[name.index(NAMES.len())].to_owned(), pick(lsn, 0, head + 1)),
                };
                let name = name.as_str();
                let got = self.wal().advance_cursor(name, lsn);
                match (got, self.model.cursors.get(name).copied()) {
                    (Err(Error::LsnBeyondHead { lsn: l, head: h }), _) => {
                        assert!(lsn > head, "LsnBeyondHead for {lsn} <= head {head}");
                        assert_eq!((l, h), (lsn, head));
                    }
                    (Err(Error::CursorNotFound { cursor }), None) => assert_eq!(cursor, name),
                    (Err(Error::CursorBackwards { cursor, position, requested }), Some((pos, _))) => {
                        assert_eq!((cursor.as_str(), position, requested), (name, pos, lsn));
                        assert!(lsn < pos);
                    }
                    (Ok(()), Some((pos, persisted))) => {
                        assert!(lsn >= pos && lsn <= head, "advance to {lsn} accepted: position {pos}, head {head}");
                        self.model.cursors.insert(name.to_owned(), (lsn, persisted));
                        if lsn != persisted && lsn - persisted >= PERSIST_RECORDS {
                            self.model.persist_all();
                        }
                    }
                    (got, m) => panic!("advance_cursor({name}, {lsn}) with head {head}: got {got:?}, model {m:?}"),
                }
            }
            Op::Reset(n, i) => {
                let name = NAMES[*n];
                let (oldest, head) = (self.wal().oldest_lsn(), self.wal().durable_lsn());
                let pos = pick(i, 0, head + 1);
                let got = self.wal().reset_cursor(name, pos);
                let exists = self.model.cursors.contains_key(name);
                match got {
                    Ok(()) => {
                        assert!(
                            exists && pos <= head && pos + 1 >= oldest,
                            "reset to {pos} accepted (oldest {oldest}, head {head})"
                        );
                        self.model.cursors.insert(name.to_owned(), (pos, pos));
                    }
                    Err(Error::CursorNotFound { cursor }) => assert!(!exists && cursor == name),
                    Err(Error::CursorBeyondHead { cursor, position, head: h }) => {
                        assert!(exists && cursor == name && pos > head);
                        assert_eq!((position, h), (pos, head));
                    }
                    Err(Error::CursorBelowOldest { cursor, needed, oldest: o }) => {
                        assert!(exists && cursor == name && pos + 1 < oldest);
                        assert_eq!((needed, o), (pos + 1, oldest));
                    }
                    Err(e) => panic!("reset_cursor({name}, {pos}): {e:?}"),
                }
            }
            Op::Delete(n) => {
                let name = NAMES[*n];
                match self.wal().delete_cursor(name) {
                    Ok(()) => assert!(self.model.cursors.remove(name).is_some(), "deleted a cursor the model lacks"),
                    Err(Error::CursorNotFound { cursor }) => {
                        assert!(cursor == name && !self.model.cursors.contains_key(name))
                    }
                    Err(e) => panic!("delete_cursor({name}): {e:?}"),
                }
            }
            Op::Persist => {
                self.wal().persist_cursors().unwrap();
                self.model.persist_all();
            }
            Op::Retention => {
                let before = self.wal().stats().segments;
                let deleted = self.wal().apply_retention().unwrap();
                assert_eq!(self.wal().stats().segments, before - deleted as u64);
                if self.model.cursors.is_empty() {
                    assert_eq!(deleted, 0, "retention without cursors deleted segments");
                }
            }
            Op::Reopen => {
                self.wal.take().unwrap().close().unwrap();
                self.model.durable = self.model.written();
                self.model.persist_all();
                self.open();
                self.after_reopen(true);
            }
            Op::PowerLoss(keep) => {
                drop(self.wal.take());
                match keep {
                    None => self.storage.power_loss(),
                    Some(k) => self.storage.power_loss_keeping(u64::from(*k)),
                }
                self.model.forget_unpersisted();
                self.open();
                self.after_reopen(false);
            }
            Op::Fault { sync, after, batches, power_loss } => {
                self.fault(*sync, u64::from(*after), batches, *power_loss)
            }
            Op::CursorFault { sync, after, power_loss } => self.cursor_fault(*sync, u64::from(*after), *power_loss),
        }
        self.check(had_cursors);
    }

    fn cursor_fault(&mut self, sync: bool, after: u64, power_loss: bool) {
        if sync {
            self.storage.fail_syncs_after(after);
        } else {
            self.storage.fail_writes_after(after);
        }
        let wal = self.wal.take().unwrap();
        let result = wal.persist_cursors();
        self.storage.heal();
        match result {
            Ok(()) => {
                self.model.persist_all();
                assert_eq!(wal.cursors(), infos(&self.model));
            }
            Err(Error::Io { op, source, .. }) => {
                assert_eq!(op, if sync { "fsync" } else { "write" }, "{source}");
                assert!(wal.is_poisoned());
                // Cursors persist one at a time: those before the failure are persisted.
                for c in wal.cursors() {
                    let m = self.model.cursors.get_mut(&c.name).unwrap();
                    assert_eq!(c.position, m.0);
                    assert!(c.persisted == m.1 || c.persisted == m.0, "{c:?} vs model {m:?}");
                    m.1 = c.persisted;
                }
                assert_poisoned(wal.persist_cursors(), "persist_cursors");
                assert_poisoned(wal.append(&[b"x"]), "append");
            }
            Err(e) => panic!("persist_cursors with a fault armed: {e:?}"),
        }
        drop(wal);
        self.model.forget_unpersisted();
        if power_loss {
            self.storage.power_loss();
        }
        self.open();
        self.after_reopen(false);
    }

    fn fault(&mut self, sync: bool, after: u64, batches: &[Batch], power_loss: bool) {
        if sync {
            self.storage.fail_syncs_after(after);
        } else {
            self.storage.fail_writes_after(after);
        }
        let mut failed = false;
        for b in batches {
            let wal = self.wal.as_ref().unwrap();
            let written = wal.stats().written_lsn;
            let r = wal.append(b);
            if failed {
                assert_poisoned(r, "append");
                continue;
            }
            match r {
                Ok(a) => {
                    assert_eq!(a.first_lsn, written + 1);
                    self.model.records.extend(b.iter().map(|r| r.0.clone()));
                    self.model.durable = a.last_lsn;
                }
                Err(Error::Io { op, source, .. }) => {
                    let expect = if sync { "fsync" } else { "write" };
                    assert_eq!(op, expect, "{source}");
                    assert!(source.to_string().contains("injected"), "{source}");
                    failed = true;
                    // The frame may have been written whole before its fsync failed: then it
                    // is there unsynced, and may or may not survive.
                    if wal.stats().written_lsn == written + b.len() as u64 {
                        self.model.records.extend(b.iter().map(|r| r.0.clone()));
                    } else {
                        assert_eq!(wal.stats().written_lsn, written, "a failed append half-counted its records");
                    }
                }
                Err(e) => panic!("append with a {} fault armed: {e:?}", if sync { "fsync" } else { "write" }),
            }
        }
        let wal = self.wal.take().unwrap();
        if failed {
            assert!(wal.is_poisoned());
            let syncs = self.storage.sync_count();
            self.storage.heal();
            assert_poisoned(wal.append(&[b"after".to_vec()]), "append");
            assert_poisoned(wal.append_nowait(&[b"after".to_vec()]), "append_nowait");
            assert_poisoned(wal.sync(), "sync");
            assert_poisoned(wal.advance_cursor("a", 0), "advance_cursor");
            assert_poisoned(wal.create_cursor("z", CursorStart::Head), "create_cursor");
            assert_poisoned(wal.persist_cursors(), "persist_cursors");
            assert_poisoned(wal.apply_retention(), "apply_retention");
            // Never retried: no fsync happened after the failure, even with faults healed.
            assert_eq!(self.storage.sync_count(), syncs, "an fsync ran after the log was poisoned");
            drop(wal);
            // Cursor moves since the last persist are gone either way.
            self.model.forget_unpersisted();
        } else {
            self.storage.heal();
            if power_loss {
                drop(wal);
                self.model.forget_unpersisted();
            } else {
                wal.close().unwrap();
                self.model.durable = self.model.written();
                self.model.persist_all();
            }
        }
        if power_loss {
            self.storage.power_loss();
        }
        self.open();
        self.after_reopen(!failed && !power_loss);
    }
}

fn options(segment_size: u64) -> Options {
    Options {
        segment_size,
        compress_threshold: 48,
        durability: Durability::Always,
        cursor_persist: CursorPersist { interval: Duration::from_secs(3600), records: PERSIST_RECORDS },
        ..Options::default()
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(segment_size in prop::sample::select(vec![1024u64, 2048, 4096]), ops in prop::collection::vec(op(), 1..60)) {
        let mut h = Harness::new(options(segment_size));
        h.check(false);
        for op in &ops {
            h.run(op);
        }
        // Whatever happened, a clean close and reopen keeps all of it.
        h.run(&Op::Reopen);
        let v = h.wal().verify().unwrap();
        prop_assert!(v.problems.is_empty(), "{:?}", v.problems);
    }
}

#[test]
fn model_sanity_both_codecs_and_rolls_occur() {
    // The options above must exercise what the model test claims: compressed and stored frames,
    // several segments, retention.
    let mut h = Harness::new(options(1024));
    h.run(&Op::Create(0, Start::Oldest));
    for i in 0..20u32 {
        let noise = (0..100u8).map(|b| b.wrapping_mul(97)).collect();
        h.run(&Op::Append(vec![Rec(json_record(i, "abc".into(), 5)), Rec(noise), Rec(vec![])]));
    }
    let insp = h.wal().inspect().unwrap();
    assert!(insp.segments.len() > 2, "{insp:?}");
    let stored: u64 = insp.segments.iter().map(|s| s.stored_bytes).sum();
    let raw: u64 = insp.segments.iter().map(|s| s.raw_bytes).sum();
    assert!(stored < raw, "nothing was compressed: {stored} >= {raw}");
    let head = h.wal().durable_lsn();
    h.wal().advance_cursor("a", head).unwrap();
    h.model.cursors.insert("a".to_owned(), (head, head));
    h.check(true);
    assert!(h.wal().oldest_lsn() > 1, "retention did not run");
}
