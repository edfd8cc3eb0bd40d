//! The change-event parser (`eds_drivers::event`) on arbitrary bytes. Beyond not panicking:
//! - ingest's `validate`, the drains' `from_json` and the state destinations'
//!   `from_json_for_state` accept exactly the same messages; the two building decoders refuse
//!   with the same message, and the state one differs only in leaving out an unwritten `before`;
//! - `validate` reports the operation and table `from_json` reads;
//! - an accepted event, encoded again as JSON, decodes to the same event (every field, the row
//!   images key for key and numbers by their text).
#![no_main]

use eds_drivers::event::{validate, ChangeEvent, Operation, Row};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// The event as JSON in its wire format (camelCase, as Shopmonkey publishes it).
fn encode(e: &ChangeEvent) -> String {
    let row = |r: &Option<Row>| r.clone().map_or(Value::Null, Value::Object);
    json!({
        "operation": e.operation.as_str(),
        "id": e.id,
        "table": e.table,
        "key": e.key,
        "modelVersion": e.model_version,
        "companyId": e.company_id,
        "locationId": e.location_id,
        "userId": e.user_id,
        "before": row(&e.before),
        "after": row(&e.after),
        "diff": e.diff,
        "timestamp": e.timestamp,
        "mvccTimestamp": e.mvcc_timestamp,
        "imported": e.imported,
    })
    .to_string()
}

fuzz_target!(|data: &[u8]| {
    let checked = validate(data);
    let full = ChangeEvent::from_json(data);
    let lean = ChangeEvent::from_json_for_state(data);
    assert_eq!(checked.is_ok(), full.is_ok(), "validate {checked:?} vs from_json {full:?}");
    match (full, lean) {
        (Ok(full), Ok(lean)) => {
            let checked = checked.expect("validate agreed");
            assert_eq!((checked.operation, checked.table.as_str()), (full.operation, full.table.as_str()));
            assert!(!full.primary_key().is_empty());
            let written = full.operation == Operation::Delete || full.after.as_ref().is_none_or(Row::is_empty);
            let mut expected = full.clone();
            if !written {
                expected.before = None;
            }
            assert_eq!(lean, expected, "the state decoder differs beyond an unwritten before");
            let text = encode(&full);
            let again = ChangeEvent::from_json(text.as_bytes())
                .unwrap_or_else(|e| panic!("the re-encoded event is refused: {e:?}\n{text}"));
            assert_eq!(again, full, "re-encoding changed the event\n{text}");
            // Numbers keep their text (the round trip above compares them as such).
            assert_eq!(encode(&again), text);
        }
        (Err(full), Err(lean)) => assert_eq!(lean.to_string(), full.to_string()),
        (full, lean) => panic!("the decoders disagree: full {full:?}, state {lean:?}"),
    }
});
