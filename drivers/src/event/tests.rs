//! Tests of change events: parsing, keys, and folding a batch per row.

use super::*;
use serde_json::json;

fn ev(v: serde_json::Value) -> ChangeEvent {
    ChangeEvent::from_json(v.to_string().as_bytes()).unwrap()
}

fn row(v: serde_json::Value) -> Row {
    v.as_object().unwrap().clone()
}

#[test]
fn decodes_a_shopmonkey_event() {
    let e = ev(json!({
        "operation": "UPDATE", "id": "53d366bd86032a5a", "table": "order",
        "key": ["gcp-us-west1", "abc"], "modelVersion": "b041c12fbf8d1103",
        "companyId": "c1", "locationId": "l1",
        "before": {"id": "abc", "number": 1}, "after": {"id": "abc", "number": 2},
        "diff": ["number"], "timestamp": 1795749176000i64,
        "mvccTimestamp": "1720732611708587506.0000000000", "region": "ignored"
    }));
    assert_eq!(e.operation, Operation::Update);
    assert_eq!(e.primary_key(), "abc");
    assert_eq!((e.table.as_str(), e.model_version.as_str()), ("order", "b041c12fbf8d1103"));
    assert_eq!(e.company_id.as_deref(), Some("c1"));
    assert_eq!(e.user_id, None);
    assert_eq!(e.diff.as_deref(), Some(&["number".to_string()][..]));
    assert_eq!(e.object().unwrap()["number"], 2);
    assert!(!e.imported);
}

#[test]
fn primary_key_falls_back_to_the_row_id() {
    let e = ev(json!({"operation": "DELETE", "table": "t", "key": [], "before": {"id": "r1"}}));
    assert_eq!(e.primary_key(), "r1");
    let e = ev(json!({"operation": "INSERT", "table": "t", "after": {}, "before": {"id": "r2"}}));
    assert_eq!(e.primary_key(), "r2", "an empty after falls back to before");
}

#[test]
fn bad_events_name_what_is_wrong() {
    let err = |v: serde_json::Value| ChangeEvent::from_json(v.to_string().as_bytes()).unwrap_err().to_string();
    assert_eq!(
        err(json!({"operation": "MERGE", "table": "t", "key": ["k"]})),
        "unknown operation \"MERGE\" in an event of table \"t\" (expected INSERT, UPDATE or DELETE)"
    );
    assert_eq!(err(json!({"operation": "INSERT", "id": "e1", "key": ["k"]})), "event \"e1\" has no table");
    assert_eq!(
        err(json!({"operation": "INSERT", "id": "e2", "table": "t", "key": [""], "after": {"x": 1}})),
        "event \"e2\" of table \"t\" has no primary key (`key` is empty and the row has no `id`)"
    );
    assert_eq!(err(json!({"operation": "INSERT", "key": ["k"]})), "the event has no table");
    assert!(matches!(ChangeEvent::from_json(b"[]"), Err(EventError::NotAnObject)));
    assert!(matches!(ChangeEvent::from_json(b"{\"after\": 3}"), Err(EventError::Json { .. })));
}

/// The state decoder accepts and refuses what the full decoder does (with the same message),
/// and differs only in leaving out a `before` image no state destination writes.
#[test]
fn the_state_decoder_agrees_with_the_full_one_and_builds_before_only_when_written() {
    let cases = [
        r#"{"operation":"UPDATE","table":"t","key":["k"],"before":{"id":"k","a":1},"after":{"id":"k","a":2}}"#,
        r#"{"operation":"UPDATE","table":"t","key":["k"],"before":{"id":"k","a":1},"after":{}}"#,
        r#"{"operation":"UPDATE","table":"t","key":[""],"before":{"id":"b"},"after":null}"#,
        r#"{"operation":"DELETE","table":"t","key":["k"],"before":{"id":"k","a":1},"after":{"id":"k"}}"#,
        r#"{"operation":"DELETE","table":"t","key":["k"],"before":null}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"before": 3,"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"before":[1],"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"before":{"x":1,},"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","table":"t","key":[""],"before":{"id":"b"},"after":{"a":1}}"#,
        r#"{"operation":"INSERT","table":"t","key":[""],"before":{"id":"b"},"after":{}}"#,
        r#"{"operation":"UPSERT","table":"t","key":["k"],"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","key":["k"],"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"before":{"id":"\ud800"},"after":{"id":"k"}}"#,
        r#"{"operation":"UPDATE","table":"t","key":["k"],"before":{"x":"\ud800"},"after":{"id":"k"}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"after":{"id":"k","x":["\udc00"]}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"after":{"id":"k","x":{"\ud800":1}}}"#,
        r#"{"operation":"INSERT","table":"t","key":["k"],"after":{"id":"k","x":"\ud83d\ude00"}}"#,
    ];
    for text in cases {
        let full = ChangeEvent::from_json(text.as_bytes());
        let lean = ChangeEvent::from_json_for_state(text.as_bytes());
        // Ingest's validation agrees too (it let a lone surrogate outside `id` pass).
        assert_eq!(validate(text.as_bytes()).is_ok(), full.is_ok(), "validate vs from_json on {text}");
        match (full, lean) {
            (Ok(full), Ok(lean)) => {
                let written = full.operation == Operation::Delete || full.after.as_ref().is_none_or(Row::is_empty);
                let expected = ChangeEvent { before: if written { full.before.clone() } else { None }, ..full };
                assert_eq!(lean, expected, "{text}");
            }
            (Err(full), Err(lean)) => assert_eq!(lean.to_string(), full.to_string(), "{text}"),
            (full, lean) => panic!("the decoders disagree on {text}: full {full:?}, state {lean:?}"),
        }
    }
}

/// The three decoders' answers on one event: all accept or all refuse (the two building ones
/// with the same message), and the state decoder's event is the full one's less an unwritten
/// `before`.
fn decoders_agree(text: &str) -> Result<ChangeEvent, String> {
    let full = ChangeEvent::from_json(text.as_bytes());
    let lean = ChangeEvent::from_json_for_state(text.as_bytes());
    assert_eq!(validate(text.as_bytes()).is_ok(), full.is_ok(), "validate vs from_json on {text}: {full:?}");
    match (full, lean) {
        (Ok(full), Ok(lean)) => {
            let written = full.operation == Operation::Delete || full.after.as_ref().is_none_or(Row::is_empty);
            let expected = ChangeEvent { before: if written { full.before.clone() } else { None }, ..full.clone() };
            assert_eq!(lean, expected, "{text}");
            Ok(full)
        }
        (Err(full), Err(lean)) => {
            assert_eq!(lean.to_string(), full.to_string(), "{text}");
            Err(format!("{:?}", std::error::Error::source(&full).map(ToString::to_string)))
        }
        (full, lean) => panic!("the decoders disagree on {text}: full {full:?}, state {lean:?}"),
    }
}

/// serde_json's `Value` reads an object whose first key is one of its private tokens as a
/// number or as parsed JSON; validation read it as an object. Every key of the event's text
/// is data, in every decoder; the parser's own numbers keep their text.
#[test]
fn serde_json_private_keys_are_row_data_in_every_decoder() {
    for (inner, op, read) in [
        (r#"{"$serde_json::private::Number": "12"}"#, "INSERT", r#"{"$serde_json::private::Number":"12"}"#),
        (r#"{"$serde_json::private::Number": "x"}"#, "INSERT", r#"{"$serde_json::private::Number":"x"}"#),
        (r#"{"$serde_json::private::Number": 5, "b": [1]}"#, "DELETE", r#"{"$serde_json::private::Number":5,"b":[1]}"#),
        (r#"{"$serde_json::private::RawValue": "[1]"}"#, "INSERT", r#"{"$serde_json::private::RawValue":"[1]"}"#),
        (r#"{"$serde_json::private::RawValue": "{"}"#, "DELETE", r#"{"$serde_json::private::RawValue":"{"}"#),
        (r#"{"\u0024serde_json::private::Number": "1"}"#, "INSERT", r#"{"$serde_json::private::Number":"1"}"#),
        (
            r#"[{"$serde_json::private::Number": {"$serde_json::private::RawValue": 2.50}}]"#,
            "DELETE",
            r#"[{"$serde_json::private::Number":{"$serde_json::private::RawValue":2.50}}]"#,
        ),
    ] {
        let image = format!(r#"{{"id": "k", "n": 1.50, "x": {inner}}}"#);
        let text = if op == "DELETE" {
            format!(r#"{{"operation":"DELETE","table":"t","key":["k"],"before":{image}}}"#)
        } else {
            format!(r#"{{"operation":"INSERT","table":"t","key":["k"],"after":{image},"before":{image}}}"#)
        };
        let e = decoders_agree(&text).unwrap_or_else(|e| panic!("refused {text}: {e}"));
        let row = e.object().unwrap();
        // What was read is the object of the text, key for key: it encodes back to the same
        // JSON (with the token as a key), and numbers keep their text.
        assert_eq!(row["x"].to_string(), read, "{text}");
        assert_eq!(row["n"].to_string(), "1.50");
        assert!(row["n"].is_number());
    }
}

/// An event nested just within serde_json's limit (128) is read by every decoder, one level
/// deeper by none: the state decoder reads its raw `before` one level down, as the full
/// decoder does (alone it allowed one level more).
#[test]
fn every_decoder_has_the_same_nesting_limit() {
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    for shape in [
        r#"{"operation":"DELETE","table":"t","key":["k"],"before":{"id":"k","x":NEST}}"#,
        r#"{"operation":"UPDATE","table":"t","key":["k"],"before":{"id":"k","x":NEST},"after":{"id":"k"}}"#,
    ] {
        let at = |levels: usize| shape.replace("NEST", &deep(levels));
        let deepest = (100..200).take_while(|&n| ChangeEvent::from_json(at(n).as_bytes()).is_ok()).last();
        let deepest = deepest.expect("some depth within 100..200 is accepted");
        assert!(deepest < 199, "no depth was refused");
        assert!(decoders_agree(&at(deepest)).is_ok());
        let refused = decoders_agree(&at(deepest + 1)).unwrap_err();
        assert!(refused.contains("recursion limit"), "{refused}");
    }
}

fn at(pos: u64, e: &ChangeEvent) -> (u64, &ChangeEvent) {
    (pos, e)
}

#[test]
fn insert_then_updates_is_one_full_upsert() {
    let a = ev(json!({"operation": "INSERT", "table": "t", "key": ["k"], "after": {"id": "k", "n": 1}}));
    let b = ev(json!({"operation": "UPDATE", "table": "t", "key": ["k"], "after": {"id": "k", "n": 2}, "diff": ["n"]}));
    let f = fold([at(1, &a), at(2, &b)]);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].change, Folded::Upsert { row: row(json!({"id": "k", "n": 2})), changed: None });
    assert_eq!((f[0].first_pos, f[0].last_pos, f[0].events), (1, 2, 2));
}

#[test]
fn updates_merge_their_diffs_with_the_latest_image() {
    let a = ev(
        json!({"operation": "UPDATE", "table": "t", "key": ["k"], "after": {"id": "k", "a": 1, "b": 0}, "diff": ["a"]}),
    );
    let b = ev(
        json!({"operation": "UPDATE", "table": "t", "key": ["k"], "after": {"id": "k", "a": 1, "b": 2}, "diff": ["b"]}),
    );
    let f = fold([at(5, &a), at(6, &b)]);
    let changed: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    assert_eq!(f[0].change, Folded::Upsert { row: row(json!({"id": "k", "a": 1, "b": 2})), changed: Some(changed) });
    // An update that does not say what changed writes the whole row, and stays so.
    let c = ev(json!({"operation": "UPDATE", "table": "t", "key": ["k"], "after": {"id": "k", "a": 3, "b": 2}}));
    let f = fold([at(5, &a), at(6, &c), at(7, &b)]);
    assert!(matches!(&f[0].change, Folded::Upsert { changed: None, .. }));
}

#[test]
fn anything_then_delete_is_a_delete_and_delete_then_insert_a_full_upsert() {
    let i = ev(json!({"operation": "INSERT", "table": "t", "key": ["k"], "after": {"id": "k"}}));
    let d = ev(json!({"operation": "DELETE", "table": "t", "key": ["k"], "before": {"id": "k"}}));
    assert_eq!(fold([at(1, &i), at(2, &d)])[0].change, Folded::Delete { before: Some(row(json!({"id": "k"}))) });
    let u = ev(json!({"operation": "UPDATE", "table": "t", "key": ["k"], "after": {"id": "k", "n": 9}, "diff": ["n"]}));
    assert_eq!(
        fold([at(1, &d), at(2, &u)])[0].change,
        Folded::Upsert { row: row(json!({"id": "k", "n": 9})), changed: None },
        "after a delete the row may be gone: write all of it"
    );
    assert!(matches!(fold([at(1, &d), at(2, &i)])[0].change, Folded::Upsert { changed: None, .. }));
}

#[test]
fn keys_are_table_and_full_key_array_in_first_seen_order() {
    let mk = |t: &str, k: &[&str]| {
        ev(json!({"operation": "INSERT", "table": t, "key": k, "after": {"id": k.last().unwrap_or(&"x")}}))
    };
    let (a, b, c, d) = (mk("t", &["r1", "k"]), mk("t", &["r2", "k"]), mk("u", &["r1", "k"]), mk("t", &["r1", "k"]));
    let f = fold([at(1, &a), at(2, &b), at(3, &c), at(4, &d)]);
    let ids: Vec<(&str, Vec<String>, usize)> = f.iter().map(|c| (c.table.as_str(), c.key.clone(), c.events)).collect();
    assert_eq!(
        ids,
        vec![
            ("t", vec!["r1".to_string(), "k".to_string()], 2),
            ("t", vec!["r2".to_string(), "k".to_string()], 1),
            ("u", vec!["r1".to_string(), "k".to_string()], 1),
        ]
    );
}
