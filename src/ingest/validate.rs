//! Just-enough validation of a change event at ingest: a borrowed parse, no DOM.
//!
//! Invariant: a message that passes here can be decoded by every later stage (drains), so an
//! event that could never be delivered is dead-lettered at the door instead of blocking a
//! destination. The rules follow EDS (§5 of the behaviour spec): a JSON object; `operation` one of
//! INSERT, UPDATE, DELETE; a `table`; `before`/`after`, when present and not null, JSON objects;
//! a non-empty primary key (the last element of `key`, else the `id` of the row).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(borrow)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
}

/// Only the row's `id`; serde skips every other field without building values.
#[derive(Deserialize)]
struct RowId<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// What validation learned about a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Table name.
    pub table: String,
    /// INSERT, UPDATE or DELETE.
    pub operation: &'static str,
}

fn object<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<&'a RawValue>, String> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if r.get().starts_with('{') => Ok(Some(r)),
        Some(_) => Err(format!("`{field}` is not a JSON object")),
    }
}

/// Validate one message body; the error is the reason recorded with the dead letter.
pub fn check(payload: &[u8]) -> Result<Checked, String> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("message is not a JSON object".into());
    }
    let view: EventView<'_> = serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    let operation = match view.operation.as_deref() {
        Some("INSERT") => "INSERT",
        Some("UPDATE") => "UPDATE",
        Some("DELETE") => "DELETE",
        Some(other) => return Err(format!("unknown operation {other:?} (expected INSERT, UPDATE or DELETE)")),
        None => return Err("missing `operation`".into()),
    };
    let table = match view.table {
        Some(t) if !t.is_empty() => t.into_owned(),
        _ => return Err("missing or empty `table`".into()),
    };
    let before = object(view.before, "before")?;
    let after = object(view.after, "after")?;
    let from_key = view.key.as_ref().and_then(|k| k.last()).filter(|k| !k.is_empty()).is_some();
    if !from_key {
        // EDS: primary key = last element of `key`, else the `id` of the row (after, else before).
        let row = after.or(before).ok_or_else(|| "no primary key: `key` is empty and there is no row".to_string())?;
        let id: RowId<'_> = serde_json::from_str(row.get()).map_err(|e| format!("invalid row: {e}"))?;
        if id.id.as_deref().is_none_or(str::is_empty) {
            return Err("no primary key: `key` is empty and the row has no `id`".into());
        }
    }
    Ok(Checked { table, operation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_events_pass() {
        let c = check(br#"{"operation":"UPDATE","table":"order","key":["gcp-us-west1","abc"],"after":{"id":"abc"},"before":null}"#).unwrap();
        assert_eq!(c, Checked { table: "order".into(), operation: "UPDATE" });
        // Escaped strings need the owned path of Cow.
        check(br#"{"operation":"INSERT","table":"or\"der","key":[],"after":{"id":"x\u00e9"}}"#).unwrap();
        check(br#"  {"operation":"DELETE","table":"order","key":["k"],"before":{"id":"k"}}"#).unwrap();
        assert!(crate::sample::order_event(3).len() > 100);
        check(&crate::sample::order_event(3)).unwrap();
    }

    #[test]
    fn each_rule_has_its_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a JSON object"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"operation\":", "invalid JSON"),
            (br#"{"table":"order","key":["k"]}"#, "missing `operation`"),
            (br#"{"operation":"UPSERT","table":"order","key":["k"]}"#, "unknown operation \"UPSERT\""),
            (br#"{"operation":"INSERT","key":["k"]}"#, "missing or empty `table`"),
            (br#"{"operation":"INSERT","table":"","key":["k"]}"#, "missing or empty `table`"),
            (br#"{"operation":"INSERT","table":"t","key":["k"],"after":[1]}"#, "`after` is not a JSON object"),
            (br#"{"operation":"INSERT","table":"t","key":["k"],"before":"x"}"#, "`before` is not a JSON object"),
            (br#"{"operation":"INSERT","table":"t","key":[]}"#, "`key` is empty and there is no row"),
            (br#"{"operation":"INSERT","table":"t","key":[""],"after":{"name":"x"}}"#, "row has no `id`"),
            (br#"{"operation":"INSERT","table":"t","after":{"id":""}}"#, "row has no `id`"),
        ];
        for (payload, want) in cases {
            let err = check(payload).unwrap_err();
            assert!(err.contains(want), "{:?}: got {err:?}, want {want:?}", String::from_utf8_lossy(payload));
        }
    }
}
