//! The fold the drains apply to a batch before a state destination writes it
//! (`eds_drivers::event::fold` / `fold_taking`), on event sequences the input describes. The
//! events are what a consistent source emits (each `after` the source row after the change, each
//! `diff` naming what changed), decoded by `ChangeEvent::from_json`. Checked:
//! - the module's invariant: writing the folded changes leaves a destination holding the same
//!   rows as writing every event in order (an upsert writes the row's columns, or only
//!   `changed`, over an existing row);
//! - one change per (table, key array, primary key), in the order of their first events, with
//!   every event's position once, in order, and the last event's model version;
//! - `fold` and `fold_taking` give the same changes.
#![no_main]

use eds_drivers::event::{fold, fold_taking, ChangeEvent, Folded, FoldedChange, Operation, Row};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

type Id = (String, Vec<String>, String);
type Table = BTreeMap<Id, Row>;

const COLUMNS: [&str; 4] = ["a", "b", "c", "d"];

/// An upsert as a state destination applies it.
fn upsert(dest: &mut Table, id: &Id, row: &Row, changed: Option<&BTreeSet<String>>) {
    match dest.get_mut(id) {
        None => {
            dest.insert(id.clone(), row.clone());
        }
        Some(old) => {
            for (k, v) in row {
                if changed.is_none_or(|c| c.contains(k)) {
                    old.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

fn id_of(e: &ChangeEvent) -> Id {
    (e.table.clone(), e.key.clone(), e.primary_key().to_owned())
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, steps)) = data.split_first() else { return };
    let mut source = Table::new();
    let key_of = |b: u8| {
        let table = if b & 1 == 0 { "t" } else { "u" };
        let pk = ["k1", "k2", "k3", "k4"][usize::from((b >> 1) & 3)];
        let key = if b & 8 == 0 { vec![pk.to_owned()] } else { vec!["gcp-us-west1".to_owned(), pk.to_owned()] };
        (table.to_owned(), key, pk.to_owned())
    };
    // Rows present before the batch, in the source and the destination alike.
    for b in 0..16u8 {
        if seed & (1 << (b % 8)) != 0 && b % 3 == 0 {
            let id = key_of(b);
            let row: Row =
                json!({"id": id.2, "a": -1, "b": null, "c": null, "d": null}).as_object().cloned().unwrap_or_default();
            source.insert(id, row);
        }
    }
    let mut dest = source.clone();
    let mut events = Vec::new();
    for (n, step) in steps.chunks_exact(3).take(64).enumerate() {
        let id = key_of(step[0]);
        let (table, key, pk) = id.clone();
        let operation = ["INSERT", "UPDATE", "DELETE"][usize::from(step[1] % 3)];
        let model_version = if step[1] & 8 == 0 { "v1" } else { "v2" };
        let changed: Vec<&str> =
            COLUMNS.iter().enumerate().filter(|(i, _)| step[2] & (1 << i) != 0).map(|(_, c)| *c).collect();
        // Full row images, as a changefeed sends them: every column, null when unset.
        let mut row = source.get(&id).cloned().unwrap_or_else(|| {
            json!({"a": null, "b": null, "c": null, "d": null}).as_object().cloned().unwrap_or_default()
        });
        row.insert("id".into(), Value::from(pk.clone()));
        let event = if operation == "DELETE" {
            source.remove(&id);
            json!({"operation": operation, "table": table, "key": key, "before": row, "modelVersion": model_version})
        } else {
            for c in &changed {
                // A value that differs per event, some of them long decimal text.
                let v: Value = if step[2] & 0x80 == 0 { json!(n) } else { json!(format!("{n}.{}", step[2])) };
                row.insert((*c).to_owned(), v);
            }
            source.insert(id.clone(), row.clone());
            let diff = (step[1] & 4 != 0).then_some(&changed);
            json!({"operation": operation, "table": table, "key": key, "after": row, "diff": diff, "modelVersion": model_version})
        };
        let e = ChangeEvent::from_json(event.to_string().as_bytes()).expect("a generated event decodes");
        events.push((n as u64 * 10 + 5, e));
    }
    // Every event in order.
    for (_, e) in &events {
        let id = id_of(e);
        match e.operation {
            Operation::Delete => {
                dest.remove(&id);
            }
            Operation::Insert => upsert(&mut dest, &id, e.object().expect("an after image"), None),
            Operation::Update => {
                let diff: Option<BTreeSet<String>> = e.diff.as_ref().map(|d| d.iter().cloned().collect());
                upsert(&mut dest, &id, e.object().expect("an after image"), diff.as_ref())
            }
        }
    }
    assert_eq!(dest, source, "the model destination follows the source");
    // The folded changes.
    let folded = fold(events.iter().map(|(p, e)| (*p, e)));
    let mut from_fold = {
        let mut t = dest.clone();
        t.clear();
        t
    };
    // Same starting rows as above.
    for b in 0..16u8 {
        if seed & (1 << (b % 8)) != 0 && b % 3 == 0 {
            let id = key_of(b);
            let row: Row =
                json!({"id": id.2, "a": -1, "b": null, "c": null, "d": null}).as_object().cloned().unwrap_or_default();
            from_fold.insert(id, row);
        }
    }
    for c in &folded {
        let id = (c.table.clone(), c.key.clone(), c.primary_key.clone());
        match &c.change {
            Folded::Delete { .. } => {
                from_fold.remove(&id);
            }
            Folded::Upsert { row, changed } => upsert(&mut from_fold, &id, row, changed.as_ref()),
        }
    }
    assert_eq!(from_fold, dest, "the folded changes leave other rows than the events in order");
    // Shape: one change per key in first-seen order, every position once.
    let mut seen: Vec<Id> = Vec::new();
    for (p, e) in &events {
        let id = id_of(e);
        if !seen.contains(&id) {
            seen.push(id.clone());
        }
        let _ = p;
    }
    let ids: Vec<Id> = folded.iter().map(|c| (c.table.clone(), c.key.clone(), c.primary_key.clone())).collect();
    assert_eq!(ids, seen);
    for c in &folded {
        let id = (c.table.clone(), c.key.clone(), c.primary_key.clone());
        let mine: Vec<&(u64, ChangeEvent)> = events.iter().filter(|(_, e)| id_of(e) == id).collect();
        let positions: Vec<u64> = mine.iter().map(|(p, _)| *p).collect();
        assert_eq!(c.positions, positions);
        assert_eq!(
            (c.first_pos, c.last_pos, c.events),
            (positions[0], positions[positions.len() - 1], positions.len())
        );
        assert_eq!(c.model_version, mine[mine.len() - 1].1.model_version);
    }
    // Taking the images out gives the same changes.
    let mut owned: Vec<(u64, ChangeEvent)> = events.clone();
    let taken: Vec<FoldedChange> = fold_taking(owned.iter_mut().map(|(p, e)| (*p, e)));
    assert_eq!(taken, folded);
});
