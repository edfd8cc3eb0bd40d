//! Validation of a change event at ingest, with the drains' own decoder.
//!
//! Invariant: a message that passes here decodes in every drain ([`eds_drivers::event::validate`]
//! is `Ok` exactly when [`ChangeEvent::from_json`] is), so an event that could never be delivered
//! is dead-lettered at the door, with its reason, instead of reaching a destination. The rules
//! follow EDS (§5 of the behaviour spec): a JSON object; `operation` one of INSERT, UPDATE,
//! DELETE; a `table`; `before`/`after`, when present and not null, JSON objects; fields of their
//! types (`null` reads as absent); a non-empty primary key (the last element of `key`, else the
//! `id` of the row).
//!
//! [`ChangeEvent::from_json`]: eds_drivers::event::ChangeEvent::from_json

pub use eds_drivers::event::Checked;

/// Validate one message body; the error is the reason recorded with the dead letter.
pub fn check(payload: &[u8]) -> Result<Checked, String> {
    eds_drivers::event::validate(payload).map_err(|e| eds_wal::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use eds_drivers::event::{ChangeEvent, Operation};
    use proptest::prelude::*;

    #[test]
    fn valid_events_pass() {
        let c = check(br#"{"operation":"UPDATE","table":"order","key":["gcp-us-west1","abc"],"after":{"id":"abc"},"before":null}"#).unwrap();
        assert_eq!(c, Checked { table: "order".into(), operation: Operation::Update });
        // Escaped strings need the owned path of Cow.
        check(br#"{"operation":"INSERT","table":"or\"der","key":[],"after":{"id":"x\u00e9"}}"#).unwrap();
        check(br#"  {"operation":"DELETE","table":"order","key":["k"],"before":{"id":"k"}}"#).unwrap();
        // `null` reads as absent, as Go's decoder (EDS's) reads it.
        check(br#"{"operation":"INSERT","table":"t","key":null,"modelVersion":null,"timestamp":null,"id":null,"after":{"id":"r"}}"#).unwrap();
        assert!(crate::sample::order_event(3).len() > 100);
        check(&crate::sample::order_event(3)).unwrap();
    }

    #[test]
    fn each_rule_has_its_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"operation\":", "invalid change event"),
            (br#"{"table":"order","key":["k"]}"#, "has no operation"),
            (br#"{"operation":"UPSERT","table":"order","key":["k"]}"#, "unknown operation \"UPSERT\""),
            (br#"{"operation":"INSERT","key":["k"]}"#, "has no table"),
            (br#"{"operation":"INSERT","table":"","key":["k"]}"#, "has no table"),
            (br#"{"operation":"INSERT","table":"t","key":["k"],"after":[1]}"#, "invalid type: sequence"),
            (br#"{"operation":"INSERT","table":"t","key":["k"],"before":"x"}"#, "invalid type: string"),
            (br#"{"operation":"INSERT","table":"t","key":[]}"#, "has no primary key"),
            (br#"{"operation":"INSERT","table":"t","key":[""],"after":{"name":"x"}}"#, "has no primary key"),
            (br#"{"operation":"INSERT","table":"t","after":{"id":""}}"#, "has no primary key"),
            (br#"{"operation":"INSERT","table":"t","key":["k"],"timestamp":1.5}"#, "invalid type: floating point"),
            (br#"{"operation":"INSERT","table":"t","key":["k"],"timestamp":"soon"}"#, "invalid type: string"),
            (br#"{"operation":"INSERT","table":"t","key":["k",null]}"#, "invalid type: null"),
        ];
        for (payload, want) in cases {
            let err = check(payload).unwrap_err();
            assert!(err.contains(want), "{:?}: got {err:?}, want {want:?}", String::from_utf8_lossy(payload));
        }
    }

    /// A JSON value of any of the types a field might wrongly carry.
    fn any_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::json;
        prop_oneof![
            Just(json!(null)),
            Just(json!("")),
            "[a-zA-Z0-9-]{1,8}".prop_map(serde_json::Value::String),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(1.5)),
            Just(json!(1_700_000_000_000.0)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(json!([])),
            Just(json!(["k"])),
            Just(json!(["r", "k"])),
            Just(json!(["r", null])),
            Just(json!({})),
            Just(json!({"id": "x"})),
            Just(json!({"id": 7, "n": 1})),
            Just(json!({"id": "", "n": [1]})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever ingest accepts, the drains decode — and whatever ingest refuses, they refuse.
        #[test]
        fn ingest_accepts_exactly_what_drivers_decode(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("operation"), Just("table"), Just("key"), Just("id"), Just("modelVersion"),
                    Just("before"), Just("after"), Just("diff"), Just("timestamp"), Just("mvccTimestamp"),
                    Just("imported"), Just("companyId"), Just("unknown"),
                ], any_value()),
                0..12,
            ),
            operation in prop_oneof![Just("INSERT"), Just("UPDATE"), Just("DELETE"), Just("MERGE")],
            with_operation in any::<bool>(),
        ) {
            let mut event = serde_json::Map::new();
            if with_operation {
                event.insert("operation".into(), serde_json::json!(operation));
                event.insert("table".into(), serde_json::json!("order"));
            }
            for (k, v) in fields {
                event.insert(k.into(), v);
            }
            let bytes = serde_json::Value::Object(event).to_string().into_bytes();
            let accepted = check(&bytes);
            let decoded = ChangeEvent::from_json(&bytes);
            prop_assert_eq!(accepted.is_ok(), decoded.is_ok(), "{} → {:?} / {:?}", String::from_utf8_lossy(&bytes), accepted, decoded.err());
        }
    }
}
