//! Folding a batch per key never changes what a state destination ends up holding: applying the
//! folded changes gives the same rows as applying every event in order.
#![allow(clippy::unwrap_used)]

use eds_drivers::event::{fold, fold_taking, ChangeEvent, Folded, Row};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const COLS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, [i64; 3]),
    Update(u8, Vec<usize>, [i64; 3], bool),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, any::<[i64; 3]>()).prop_map(|(k, v)| Op::Insert(k, v)),
        (0u8..4, proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3), any::<[i64; 3]>(), any::<bool>())
            .prop_map(|(k, c, v, d)| Op::Update(k, c, v, d)),
        (0u8..4).prop_map(Op::Delete),
    ]
}

type Table = BTreeMap<String, Row>;

/// Turn operations into the events a source database would publish, skipping impossible ones
/// (insert of an existing row, update or delete of a missing one).
fn events(initial: &Table, ops: &[Op]) -> Vec<ChangeEvent> {
    let mut source = initial.clone();
    let mut out = Vec::new();
    for op in ops {
        let v = match op {
            Op::Insert(k, vals) => {
                let k = format!("k{k}");
                if source.contains_key(&k) {
                    continue;
                }
                let mut r = Row::new();
                r.insert("id".into(), json!(k));
                for (c, v) in COLS.iter().zip(vals) {
                    r.insert((*c).into(), json!(v));
                }
                source.insert(k.clone(), r.clone());
                json!({"operation": "INSERT", "table": "t", "key": ["region", k], "after": r})
            }
            Op::Update(k, cols, vals, with_diff) => {
                let k = format!("k{k}");
                let Some(r) = source.get_mut(&k) else { continue };
                let before = r.clone();
                let diff: Vec<&str> = cols.iter().map(|&i| COLS[i]).collect();
                for &i in cols {
                    r.insert(COLS[i].into(), json!(vals[i]));
                }
                let mut e = json!({"operation": "UPDATE", "table": "t", "key": ["region", k], "before": before, "after": r.clone()});
                if *with_diff {
                    e["diff"] = json!(diff);
                }
                e
            }
            Op::Delete(k) => {
                let k = format!("k{k}");
                let Some(r) = source.remove(&k) else { continue };
                json!({"operation": "DELETE", "table": "t", "key": ["region", k], "before": r})
            }
        };
        out.push(ChangeEvent::from_json(v.to_string().as_bytes()).unwrap());
    }
    out
}

/// How a SQL destination applies one event: upsert keyed on the primary key; an UPDATE with a
/// diff writes only those columns when the row exists.
fn apply_event(dest: &mut Table, e: &ChangeEvent) {
    let k = e.primary_key().to_owned();
    match e.operation {
        eds_drivers::event::Operation::Delete => {
            dest.remove(&k);
        }
        eds_drivers::event::Operation::Insert => {
            dest.insert(k, e.after.clone().unwrap());
        }
        eds_drivers::event::Operation::Update => {
            let after = e.after.clone().unwrap();
            match (dest.get_mut(&k), &e.diff) {
                (Some(row), Some(diff)) => {
                    for c in diff {
                        row.insert(c.clone(), after.get(c).cloned().unwrap_or(Value::Null));
                    }
                }
                _ => {
                    dest.insert(k, after);
                }
            }
        }
    }
}

fn apply_folded(dest: &mut Table, k: &str, f: &Folded) {
    match f {
        Folded::Delete { .. } => {
            dest.remove(k);
        }
        Folded::Upsert { row, changed: None } => {
            dest.insert(k.to_owned(), row.clone());
        }
        Folded::Upsert { row, changed: Some(cols) } => match dest.get_mut(k) {
            Some(existing) => {
                for c in cols {
                    existing.insert(c.clone(), row.get(c).cloned().unwrap_or(Value::Null));
                }
            }
            None => {
                dest.insert(k.to_owned(), row.clone());
            }
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn folding_preserves_the_destination_state(
        present in proptest::collection::btree_set(0u8..4, 0..4),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        // Source rows, and a destination that has the same rows plus a column only it has
        // (so a partial update turned into a full write would show).
        let mut initial = Table::new();
        let mut dest0 = Table::new();
        for k in present {
            let k = format!("k{k}");
            let r = json!({"id": k, "a": 0, "b": 0, "c": 0});
            initial.insert(k.clone(), r.as_object().unwrap().clone());
            let mut d = r.as_object().unwrap().clone();
            d.insert("local".into(), json!("kept by partial updates"));
            dest0.insert(k, d);
        }
        let evs = events(&initial, &ops);
        let mut sequential = dest0.clone();
        for e in &evs {
            apply_event(&mut sequential, e);
        }
        let folded = fold(evs.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
        // Taking the images out of owned events folds to exactly the same changes.
        let mut owned = evs.clone();
        let taken = fold_taking(owned.iter_mut().enumerate().map(|(i, e)| (i as u64 + 1, e)));
        prop_assert_eq!(&taken, &folded);
        let mut at_once = dest0.clone();
        for f in &folded {
            apply_folded(&mut at_once, &f.primary_key, &f.change);
        }
        prop_assert_eq!(&at_once, &sequential);
        // One change per key, and the positions cover the events.
        let keys: std::collections::BTreeSet<_> = folded.iter().map(|f| f.primary_key.clone()).collect();
        prop_assert_eq!(keys.len(), folded.len());
        prop_assert_eq!(folded.iter().map(|f| f.events).sum::<usize>(), evs.len());
    }
}
