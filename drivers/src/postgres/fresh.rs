//! Writing into tables an import has just dropped and created again ([`Driver::write_fresh`],
//! [`Driver::fresh_encoder`], [`Driver::write_encoded`]): rows COPYed straight into the table,
//! with no staging table and no `ON CONFLICT`, inside a savepoint or a transaction of their own,
//! so a refusal leaves nothing behind and the caller takes the upsert way instead.
//!
//! The encoder reads an export line once, keeping each value's raw JSON text for the table's
//! columns, and writes the COPY line the upsert way would have sent for the row's INSERT event:
//! the same cell per column ([`ColumnPlan::cell`]), the same escaping ([`copy_field`]).
//! Whatever it is not sure to reproduce it declines (see [`CopyEncoder::encode`]).
//!
//! [`Driver::write_fresh`]: crate::driver::Driver::write_fresh
//! [`Driver::fresh_encoder`]: crate::driver::Driver::fresh_encoder
//! [`Driver::write_encoded`]: crate::driver::Driver::write_encoded

use super::sink::{copy_field, copy_rows, quote_ident, text_of, ColumnPlan, Storage, UpsertGroup, COPY_CHUNK};
use crate::driver::FreshEncoder;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::Executor;
use std::borrow::Cow;
use std::collections::HashMap;

/// Whether a COPY may write a group with `columns`: a COPY stores a value by the column's own
/// input function, which is what the upsert's cast to the column's type does — except for
/// `timestamp without time zone`, which the upsert converts through `timestamptz` to UTC.
pub(super) fn fresh_copy_fits(columns: &[ColumnPlan<'_>]) -> bool {
    columns.iter().all(|c| c.storage != Storage::Timestamp)
}

/// The fresh-table path of one upsert group: its rows COPYed straight into the table, inside a
/// savepoint. `Ok(false)` when the server refused the COPY (a key already in the table, a value a
/// column refuses…): the savepoint is rolled back and nothing of the group is written, for the
/// upsert path to write it — or refuse it with its own error.
pub(super) async fn copy_fresh(
    conn: &mut PgConnection,
    g: &UpsertGroup<'_>,
    columns: &[ColumnPlan<'_>],
) -> Result<bool, sqlx::Error> {
    let Ok(copy) = copy_statement(g.schema.table(), columns.iter().map(|c| c.quoted.as_str())) else {
        return Ok(false);
    };
    conn.execute("SAVEPOINT eds_fresh").await?;
    match copy_rows(conn, &copy, &g.rows).await {
        Ok(()) => {
            conn.execute("RELEASE SAVEPOINT eds_fresh").await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(_)) => {
            conn.execute("ROLLBACK TO SAVEPOINT eds_fresh").await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// `COPY <table> (<columns>) FROM STDIN`, the columns already quoted.
pub(super) fn copy_statement<'a>(
    table: &str,
    quoted_columns: impl Iterator<Item = &'a str>,
) -> Result<String, crate::driver::DriverError> {
    let names = quoted_columns.collect::<Vec<_>>().join(", ");
    Ok(format!("COPY {} ({names}) FROM STDIN", quote_ident(table)?))
}

/// Streams `data` (whole lines of COPY's text format) through `copy`, in chunks.
pub(super) async fn copy_data(conn: &mut PgConnection, copy: &str, data: &[u8]) -> Result<(), sqlx::Error> {
    let mut sink = conn.copy_in_raw(copy).await?;
    for chunk in data.chunks(COPY_CHUNK) {
        if let Err(e) = sink.send(chunk).await {
            let _ = sink.abort("eds: sending COPY data failed").await;
            return Err(e);
        }
    }
    sink.finish().await?;
    Ok(())
}

/// One column as the encoder writes it: what [`ColumnPlan`] knows, owned.
#[derive(Debug)]
struct EncColumn {
    name: String,
    storage: Storage,
    default: Option<&'static str>,
}

/// The PostgreSQL [`FreshEncoder`]: export lines to COPY text lines for one table whose primary
/// key is its `id` column alone.
#[derive(Debug)]
pub(super) struct CopyEncoder {
    columns: Vec<EncColumn>,
    /// Column index by name.
    index: HashMap<String, usize, foldhash::fast::RandomState>,
}

/// A row's raw values, by column index, and whether it may be encoded at all.
struct Slots<'de> {
    values: Vec<Option<&'de RawValue>>,
    /// The `id` property (what the event's primary key is made from).
    id: Option<&'de RawValue>,
    /// Something the encoder does not reproduce was seen: decline.
    unsure: bool,
}

/// A property name, borrowed from the line when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a property name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads a row's properties into [`Slots`].
struct RowVisitor<'a> {
    index: &'a HashMap<String, usize, foldhash::fast::RandomState>,
    width: usize,
}

impl<'de> Visitor<'de> for RowVisitor<'_> {
    type Value = Slots<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slots<'de>, A::Error> {
        let mut slots = Slots { values: vec![None; self.width], id: None, unsure: false };
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            // serde_json's own `Value` reads these names as numbers or raw values.
            if name.starts_with("$serde_json::private::") {
                slots.unsure = true;
            }
            if name == "id" {
                slots.id = Some(raw);
            }
            // The event way reads the whole line as one `Value`, nesting included; a value this
            // deep may pass on its own but not inside the row.
            if deep(raw.get()) {
                slots.unsure = true;
            }
            match self.index.get(name.as_ref()) {
                // A later duplicate wins, as in serde_json's map.
                Some(&i) => slots.values[i] = Some(raw),
                // Skipped by the event way too (not a column), but it must be valid JSON there:
                // skipping does not check what an escape stands for (a lone surrogate).
                None if raw.get().contains('\\') => {
                    slots.unsure |= serde_json::from_str::<Value>(raw.get()).is_err();
                }
                None => {}
            }
        }
        Ok(slots)
    }
}

/// Whether a raw value might nest near serde_json's limit (128 levels, counted from the row).
fn deep(raw: &str) -> bool {
    raw.len() > 64 && raw.bytes().filter(|b| matches!(b, b'[' | b'{')).nth(64).is_some()
}

/// The text of a raw JSON string value (quotes included), borrowed when it has no escapes;
/// `None` when it is not valid.
fn string_text(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

impl CopyEncoder {
    /// The encoder for a table written as `columns` (in schema order, as the upsert way writes
    /// them); `None` when the table's only primary-key column is not `id` (the event way folds
    /// rows by their `id`; a COPY refuses duplicates only of the table's key), or when a column
    /// is written in a way a COPY does not reproduce ([`fresh_copy_fits`]).
    pub(super) fn new(columns: &[ColumnPlan<'_>], primary_key_is_id: bool) -> Option<CopyEncoder> {
        if !primary_key_is_id || !fresh_copy_fits(columns) {
            return None;
        }
        let columns: Vec<EncColumn> = columns
            .iter()
            .map(|c| EncColumn { name: c.name.to_owned(), storage: c.storage, default: c.default })
            .collect();
        let index = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        Some(CopyEncoder { columns, index })
    }

    /// The COPY line of `line`, appended to `out`; `None` when declined. Declined: a line that
    /// is not one valid JSON object, a row without an `id` the event way accepts (a non-empty
    /// string or a number), a property name serde_json treats specially, a value a column refuses
    /// (the upsert way names it), and a row whose `id` column would be empty.
    fn line(&self, line: &str, out: &mut Vec<u8>) -> Option<()> {
        let mut de = serde_json::Deserializer::from_str(line);
        let slots = de.deserialize_map(RowVisitor { index: &self.index, width: self.columns.len() }).ok()?;
        de.end().ok()?;
        if slots.unsure {
            return None;
        }
        // The event's primary key: `id` as text, non-empty, or a number.
        let id = slots.id?.get();
        match id.as_bytes().first()? {
            b'"' if string_text(id)?.is_empty() => return None,
            b'"' | b'-' | b'0'..=b'9' => {}
            _ => return None,
        }
        for (i, (column, raw)) in self.columns.iter().zip(&slots.values).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let raw = raw.map(RawValue::get).filter(|r| *r != "null");
            let Some(raw) = raw else {
                copy_field(out, column.default);
                continue;
            };
            if raw.starts_with('"') {
                let s = string_text(raw)?;
                match column.storage {
                    Storage::TimestampTz if !s.starts_with(|c: char| c.is_ascii_digit()) => return None,
                    Storage::Json => copy_field(out, Some(&serde_json::to_string(s.as_ref()).ok()?)),
                    _ => copy_field(out, Some(&s)),
                }
            } else {
                let v: Value = serde_json::from_str(raw).ok()?;
                copy_field(out, Some(&text_of(&v, column.storage)));
            }
        }
        out.push(b'\n');
        Some(())
    }
}

impl FreshEncoder for CopyEncoder {
    fn encode(&mut self, line: &str, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        if self.line(line, out).is_some() {
            return true;
        }
        out.truncate(start);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings a row may hold that could trip up JSON reading and COPY's escaping.
    const NASTY: &[&str] = &[
        "",
        "plain",
        "\\N",
        "tab\there",
        "new\nline\r\n",
        "quote\" and 'single'",
        "back\\slash\\",
        "emoji 🚗💨 and é",
        "\u{1f}\u{7f}",
        "\u{2028}\u{2029}",
        "{\"json\": [1, 2]}",
        "null",
        "123",
        "2026-12-04T10:00:00Z",
        "now",
    ];

    fn plans() -> Vec<ColumnPlan<'static>> {
        let col = |name: &'static str, storage: Storage, default: Option<&'static str>| ColumnPlan {
            name,
            quoted: quote_ident(name).unwrap_or_default(),
            storage,
            cast: String::new(),
            default,
        };
        vec![
            col("id", Storage::Text, None),
            col("name", Storage::Text, None),
            col("n", Storage::Float, None),
            col("count", Storage::Integer, None),
            col("price", Storage::Numeric, None),
            col("ok", Storage::Boolean, None),
            col("when", Storage::TimestampTz, None),
            col("meta", Storage::Json, Some("{}")),
            col("tags", Storage::Json, Some("[]")),
            col("loose", Storage::Json, None),
            col("kind", Storage::PgEnum, None),
        ]
    }

    /// What the event way writes for `line`: serde_json's map of the row, each column's cell
    /// ([`ColumnPlan::cell`]) and COPY's escaping; `None` where it refuses the row.
    fn event_way(line: &str, plans: &[ColumnPlan<'_>]) -> Option<Vec<u8>> {
        let Ok(Value::Object(row)) = serde_json::from_str::<Value>(line) else { return None };
        match row.get("id") {
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(Value::Number(_)) => {}
            _ => return None,
        }
        let mut out = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let cell = p.cell(row.get(p.name), "t").ok()?;
            copy_field(&mut out, cell.as_deref());
        }
        out.push(b'\n');
        Some(out)
    }

    fn lines() -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in NASTY.iter().enumerate() {
            let q = serde_json::to_string(s).unwrap_or_default();
            out.push(format!(
                r#"{{"id":"r{i}","name":{q},{q}:{q},"n":{i}.50,"count":{i},"price":123456789012345678901234567890.5,"ok":true,"when":"2026-12-04T10:00:00.123+02:00","meta":{{"k":{q},"a":[{q},null,true,1.0]}},"tags":[],"loose":{q},"kind":{q}}}"#
            ));
            out.push(format!(r#"{{"id":{i},"name":{q},"when":{q},"meta":null,"n":-0.0,"count":3.0,"price":1e400}}"#));
            out.push(format!(r#" {{ "name" : {q} , "id" : "x{i}" , "loose" : [ 1 , {{ "b" : {q} }} ] }} "#));
        }
        out.extend(
            [
                r#"{"id":"dup","name":"first","name":"second","id":"dup2"}"#,
                r#"{"id":"esc\u0041ped","na\u006de":"escaped name","kind":"\ud83d\ude97"}"#,
                r#"{"id":"lone","other":"\ud800"}"#,
                r#"{"id":"lone2","name":"\udc00"}"#,
                r#"{"id":"","name":"empty id"}"#,
                r#"{"name":"no id"}"#,
                r#"{"id":null}"#,
                r#"{"id":true}"#,
                r#"{"id":["a"]}"#,
                r#"{"id":"t","when":"yesterday"}"#,
                r#"{"id":"t","when":""}"#,
                r#"{"id":"t","when":12}"#,
                r#"{"id":"t","ok":"maybe","count":"12"}"#,
                r#"{"id":"p","$serde_json::private::Number":"1"}"#,
                r#"{"$serde_json::private::Number":"1"}"#,
                r#"{"id":"x"} trailing"#,
                r#"{"id":"x"}{"id":"y"}"#,
                r#"["id"]"#,
                r#""id""#,
                r#"{"id":"deep","other":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
                r#"{"id":"shallow","other":[[[[1]]]],"more":{"a":{"b":"\\"}}}"#,
                r#"{"id":"k","name":1.5e3,"meta":"text in json","tags":{"x":[1,2]}}"#,
                r#"{"id":12345678901234567890123,"count":-7,"n":1e-7}"#,
                r#"{"id":"nul","name":"a\u0000b"}"#,
                r#"{}"#,
                r#"not json"#,
            ]
            .map(str::to_owned),
        );
        out
    }

    #[test]
    fn encoded_rows_are_what_the_event_way_writes_and_doubtful_ones_are_declined() {
        let plans = plans();
        let mut enc = CopyEncoder::new(&plans, true).expect("an encoder");
        let mut accepted = 0;
        // Declined though the event way takes them.
        let mut needless = Vec::new();
        for line in lines() {
            let mut out = b"before\n".to_vec();
            let took = enc.encode(&line, &mut out);
            let expected = event_way(&line, &plans);
            if took {
                accepted += 1;
                let got = out.get(7..).map(<[u8]>::to_vec);
                assert_eq!(got, expected, "line {line}");
            } else {
                assert_eq!(out, b"before\n", "a declined row leaves the buffer as it was: {line}");
            }
            // What the event way refuses is declined.
            if !took && expected.is_some() {
                needless.push(line.clone());
            }
            if expected.is_none() {
                assert!(!took, "the event way refuses {line}, the encoder took it");
            }
        }
        // Only a name serde_json reads specially (here harmlessly: it is not the first) is declined
        // needlessly; everything else the event way writes is encoded.
        assert_eq!(needless, [r#"{"id":"p","$serde_json::private::Number":"1"}"#], "declined needlessly");
        assert!(accepted >= 40, "only {accepted} rows encoded");
    }

    #[test]
    fn rows_the_event_way_treats_specially_are_declined() {
        let plans = plans();
        let mut enc = CopyEncoder::new(&plans, true).expect("an encoder");
        for line in [
            r#"{"id":"p","$serde_json::private::Number":"1"}"#,
            r#"{"id":"lone","other":"\ud800"}"#,
            r#"{"id":"t","when":"now"}"#,
            r#"{"id":"","name":"x"}"#,
        ] {
            assert!(!enc.encode(line, &mut Vec::new()), "{line}");
        }
    }

    #[test]
    fn no_encoder_without_an_id_key_or_for_timestamps_without_time_zone() {
        let mut plans = plans();
        assert!(CopyEncoder::new(&plans, false).is_none());
        plans[6].storage = Storage::Timestamp;
        assert!(CopyEncoder::new(&plans, true).is_none());
    }
}
