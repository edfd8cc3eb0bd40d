//! The expected state of a destination table: what it holds after a sequence of events, and the
//! comparison of rows read back (by each test's own dialect, as JSON objects by id) with it.
#![allow(dead_code, clippy::unwrap_used)]

use super::events::Ev;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Rows of a table as JSON objects, by id.
pub type Rows = BTreeMap<String, Map<String, Value>>;

/// Whether a value read back equals a value sent: numbers by value, the rest exactly.
pub fn same_value(got: &Value, sent: &Value) -> bool {
    match (got, sent) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == sent,
    }
}

/// Every property of `object` is a column of `row` with the same value; with `rest_null`, the
/// row's other columns are NULL.
pub fn assert_row(row: &Map<String, Value>, object: &Map<String, Value>, rest_null: bool, what: &str) {
    for (k, v) in object {
        let got = row.get(k).unwrap_or_else(|| panic!("{what}: column {k:?} missing in {row:?}"));
        assert!(same_value(got, v), "{what}: column {k:?} is {}, sent {}\nrow: {row:?}", short(got), short(v));
    }
    if rest_null {
        for (k, v) in row.iter().filter(|(k, _)| !object.contains_key(*k)) {
            assert!(v.is_null(), "{what}: column {k:?} not in the event is {v}, not NULL");
        }
    }
}

/// A value for a message: long ones cut.
pub fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= 200 {
        return text;
    }
    let cut = (0..=200).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// The final state of a table after `events`, by id: the last full row image of each key that
/// is not deleted (the generators give every UPDATE a diff naming each column it changes).
pub fn expected_state(events: &[Ev]) -> Rows {
    let mut state: Rows = BTreeMap::new();
    for e in events {
        match e.op {
            "DELETE" => {
                state.remove(&e.pk());
            }
            "INSERT" => {
                state.insert(e.pk(), e.object().clone());
            }
            _ => {
                let row = state.entry(e.pk()).or_insert_with(|| e.object().clone());
                for c in e.diff.as_deref().unwrap_or_default() {
                    row.insert((*c).to_owned(), e.object().get(*c).cloned().unwrap_or(Value::Null));
                }
            }
        }
    }
    state
}

/// The table holds exactly `expected` (every column the events name, the others NULL).
pub fn assert_table(got: &Rows, expected: &Rows) {
    let missing: Vec<&String> = expected.keys().filter(|id| !got.contains_key(*id)).collect();
    let extra: Vec<&String> = got.keys().filter(|id| !expected.contains_key(*id)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rows missing: {missing:?}; rows that should not be there: {extra:?}"
    );
    for (id, want) in expected {
        assert_row(&got[id], want, true, &format!("row {id}"));
    }
}
