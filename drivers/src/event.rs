//! The change-event model: a Shopmonkey CDC event as drivers see it, and the per-key fold that
//! state destinations (SQL databases, Snowflake) apply to a batch.
//!
//! Invariant: folding never changes what a destination ends up holding — applying the folded
//! changes gives the same rows as applying every event in order. (Set-based SQL needs the fold:
//! `ON CONFLICT` and `MERGE` fail on a key twice in one statement.)

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use thiserror::Error;

/// A row image: column name → JSON value.
pub type Row = Map<String, Value>;

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A new row.
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
}

impl Operation {
    /// As EDS writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "INSERT",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// Why an event could not be decoded.
#[derive(Debug, Error)]
pub enum EventError {
    /// The message is not a JSON object.
    #[error("the message is not a JSON object")]
    NotAnObject,
    /// The message is not UTF-8 (JSON text is).
    #[error("the message is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// Not JSON of the expected shape (a field of the wrong type, invalid JSON).
    #[error("invalid change event")]
    Json {
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// No `operation`.
    #[error("{} of table {table:?} has no operation", event_name(.id))]
    NoOperation {
        /// Event id.
        id: String,
        /// The event's table.
        table: String,
    },
    /// `operation` is not INSERT, UPDATE or DELETE.
    #[error("unknown operation {operation:?} in an event of table {table:?} (expected INSERT, UPDATE or DELETE)")]
    Operation {
        /// The value found.
        operation: String,
        /// The event's table.
        table: String,
    },
    /// No table.
    #[error("{} has no table", event_name(.id))]
    NoTable {
        /// Event id.
        id: String,
    },
    /// No primary key: `key` is empty and the row has no `id`.
    #[error("{} of table {table:?} has no primary key (`key` is empty and the row has no `id`)", event_name(.id))]
    NoPrimaryKey {
        /// Event id.
        id: String,
        /// Table.
        table: String,
    },
}

/// "event \"<id>\"", or "the event" when it has no id.
fn event_name(id: &str) -> String {
    if id.is_empty() {
        "the event".to_owned()
    } else {
        format!("event {id:?}")
    }
}

/// `null` reads as the field's default, as an absent field does (Go's decoder, which EDS uses,
/// does the same).
fn null_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// The wire format (spec §5), with the row images as `R`: whole rows when decoding, just enough
/// of them ([`RowView`]) when validating; `before` as `B` (its raw text when only a state
/// destination's image is needed). One definition, so validation accepts exactly what decoding
/// accepts.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<R, B = R> {
    #[serde(default, deserialize_with = "null_default")]
    operation: String,
    #[serde(default, deserialize_with = "null_default")]
    id: String,
    #[serde(default, deserialize_with = "null_default")]
    table: String,
    #[serde(default, deserialize_with = "null_default")]
    key: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    model_version: String,
    company_id: Option<String>,
    location_id: Option<String>,
    user_id: Option<String>,
    #[serde(default = "none")]
    before: Option<B>,
    #[serde(default = "none")]
    after: Option<R>,
    #[serde(default)]
    diff: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_default")]
    timestamp: i64,
    #[serde(default, deserialize_with = "null_default")]
    mvcc_timestamp: String,
    #[serde(default, deserialize_with = "null_default")]
    imported: bool,
}

fn none<R>() -> Option<R> {
    None
}

/// What the rules need of a row image.
trait RowImage {
    fn is_empty(&self) -> bool;
    fn id(&self) -> Option<&str>;
}

impl RowImage for RowData {
    fn is_empty(&self) -> bool {
        Map::is_empty(&self.0)
    }
    fn id(&self) -> Option<&str> {
        self.0.get("id").and_then(Value::as_str)
    }
}

/// A row image read without building it: any JSON object, of which only a string `id` and
/// whether it is empty are kept (every other value is skipped, not built).
#[derive(Debug, Default)]
struct RowView {
    empty: bool,
    id: Option<String>,
}

impl RowImage for RowView {
    fn is_empty(&self) -> bool {
        self.empty
    }
    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl<'de> Deserialize<'de> for RowView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RowView, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RowView;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object (a row image)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RowView, A::Error> {
                let mut view = RowView { empty: true, id: None };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    view.empty = false;
                    if key == "id" {
                        // Any value, as a whole row takes it; only a string is an id.
                        view.id = match map.next_value::<Cell>()?.0 {
                            Value::String(s) => Some(s),
                            _ => None,
                        };
                    } else {
                        map.next_value::<Skim>()?;
                    }
                }
                Ok(view)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Any JSON value read as strictly as building it would be — strings are unescaped, so a lone
/// surrogate (`"\ud800"`) is refused as [`Value`] refuses it, where `IgnoredAny` lets it pass —
/// but nothing is kept.
struct Skim;

impl<'de> Deserialize<'de> for Skim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Skim, D::Error> {
        d.deserialize_any(Skim)
    }
}

impl<'de> serde::de::Visitor<'de> for Skim {
    type Value = Skim;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_unit<E>(self) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_none<E>(self) -> Result<Skim, E> {
        Ok(Skim)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Skim, D::Error> {
        Skim::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skim, A::Error> {
        while seq.next_element::<Skim>()?.is_some() {}
        Ok(Skim)
    }
    // Objects, and numbers (serde_json's arbitrary precision hands them over as a one-entry map).
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Skim, A::Error> {
        while map.next_key::<Skim>()?.is_some() {
            map.next_value::<Skim>()?;
        }
        Ok(Skim)
    }
}

/// A row image checked as [`Row`] would be built (an object, every string valid) and dropped.
struct SkimRow;

impl<'de> Deserialize<'de> for SkimRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SkimRow, D::Error> {
        d.deserialize_map(Skim).map(|_| SkimRow)
    }
}

/// The key serde_json (built with `arbitrary_precision`, as the workspace builds it) gives a
/// number when it hands it to a visitor as a one-entry map, the number's text as its value.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A row image built as [`Row`], every object key read as data.
///
/// serde_json's own [`Value`] reads any object whose first key is `$serde_json::private::Number`
/// or `$serde_json::private::RawValue` as a number or as JSON parsed from the string value (the
/// encodings its `arbitrary_precision` and `raw_value` features use inside the parser): a row
/// column holding `{"$serde_json::private::Number": "12"}` became `12`, and one holding
/// `{"$serde_json::private::Number": "x"}` failed the whole event although ingest's validation
/// ([`Skim`]) had accepted it. Here a key that comes from the JSON text is always data; only the
/// parser's own numbers are numbers.
struct RowData(Row);

impl<'de> Deserialize<'de> for RowData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RowData, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RowData;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object (a row image)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RowData, A::Error> {
                let mut row = Row::new();
                while let Some((key, Cell(value))) = map.next_entry::<String, Cell>()? {
                    row.insert(key, value);
                }
                Ok(RowData(row))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// One JSON value of a row, built as [`Value`] except that every object key is data (see
/// [`RowData`]).
struct Cell(Value);

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cell, D::Error> {
        d.deserialize_any(CellVisitor).map(Cell)
    }
}

struct CellVisitor;

impl<'de> serde::de::Visitor<'de> for CellVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Cell::deserialize(d).map(|c| c.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Cell(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let first = match map.next_key_seed(KeyProbe)? {
            None => return Ok(Value::Object(Map::new())),
            Some(Key::Number) => {
                let text: String = map.next_value()?;
                return text.parse::<serde_json::Number>().map(Value::Number).map_err(A::Error::custom);
            }
            Some(Key::Data(key)) => key,
        };
        let mut object = Map::new();
        object.insert(first, map.next_value::<Cell>()?.0);
        while let Some((key, Cell(value))) = map.next_entry::<String, Cell>()? {
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The first key of a map: serde_json's number token, or a key of the JSON text.
enum Key {
    Number,
    Data(String),
}

/// Tells the two apart: asked for bytes, serde_json's parser gives an object key of the text as
/// bytes (unescaped, not yet checked as UTF-8), while the number's token is a string whatever is
/// asked for.
struct KeyProbe;

impl<'de> serde::de::DeserializeSeed<'de> for KeyProbe {
    type Value = Key;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyProbe {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, s: &str) -> Result<Key, E> {
        Ok(if s == NUMBER_TOKEN { Key::Number } else { Key::Data(s.to_owned()) })
    }
    fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Key, E> {
        // A lone surrogate escape (`"\ud800"`) arrives as bytes that are not UTF-8; a built
        // [`Value`] refuses it, and so does this.
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Key::Data(s.to_owned())),
            Err(_) => Err(E::custom("an object key is not valid Unicode (a lone surrogate escape)")),
        }
    }
}

/// What validation learned about an event that decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// INSERT, UPDATE or DELETE.
    pub operation: Operation,
    /// Table name.
    pub table: String,
}

impl<R: RowImage> Wire<R> {
    /// The rules every event must pass: an operation, a table, a primary key.
    fn check(&self) -> Result<(Operation, String), EventError> {
        let row = self.after.as_ref().filter(|r| !r.is_empty()).or(self.before.as_ref());
        self.rules(row)
    }
}

impl<R, B> Wire<R, B> {
    /// [`Wire::check`] with the row image (`after` when present and non-empty, else `before`)
    /// given.
    fn rules(&self, row: Option<&impl RowImage>) -> Result<(Operation, String), EventError> {
        let operation = match self.operation.as_str() {
            "INSERT" => Operation::Insert,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "" => return Err(EventError::NoOperation { id: self.id.clone(), table: self.table.clone() }),
            other => return Err(EventError::Operation { operation: other.to_owned(), table: self.table.clone() }),
        };
        if self.table.is_empty() {
            return Err(EventError::NoTable { id: self.id.clone() });
        }
        let primary_key = match self.key.last().filter(|k| !k.is_empty()) {
            Some(k) => k.clone(),
            None => row
                .and_then(RowImage::id)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| EventError::NoPrimaryKey { id: self.id.clone(), table: self.table.clone() })?,
        };
        Ok((operation, primary_key))
    }
}

fn wire<'a, R: Deserialize<'a>, B: Deserialize<'a>>(bytes: &'a [u8]) -> Result<Wire<R, B>, EventError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(EventError::NotAnObject);
    }
    // One UTF-8 check of the whole message, then a parser that need not check each string again
    // (serde_json refuses invalid UTF-8 either way; this is the faster road to the same answer).
    let text = std::str::from_utf8(bytes).map_err(|e| EventError::NotUtf8 { offset: e.valid_up_to() })?;
    serde_json::from_str(text).map_err(|source| EventError::Json { source })
}

/// A row image captured raw (the state decoder's `before`), read as the full decoder reads it:
/// one level below the event object, so that serde_json's nesting limit (128) counts that level
/// as it does there. (Read on its own, the image could nest one level deeper than the full
/// decoder allows.)
fn nested<T: serde::de::DeserializeOwned>(raw: &serde_json::value::RawValue) -> Result<T, serde_json::Error> {
    let text = format!("[{}]", raw.get());
    serde_json::from_str::<(T,)>(&text).map(|(v,)| v)
}

/// Check an event as [`ChangeEvent::from_json`] would decode it, without building its rows:
/// `Ok` exactly when decoding succeeds. Ingest validates with it, so nothing it stores is refused
/// by the drains' decoder.
pub fn validate(bytes: &[u8]) -> Result<Checked, EventError> {
    let w: Wire<RowView> = wire(bytes)?;
    let (operation, _) = w.check()?;
    Ok(Checked { operation, table: w.table })
}

/// What an import's synthesised INSERT event carries besides its row (see
/// [`ChangeEvent::imported_insert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedInsert {
    /// Event id.
    pub id: String,
    /// Table name.
    pub table: String,
    /// The row's primary key (the event's one `key` element).
    pub key: String,
    /// Schema version of the row.
    pub model_version: String,
    /// Company.
    pub company_id: Option<String>,
    /// Location.
    pub location_id: Option<String>,
    /// User.
    pub user_id: Option<String>,
    /// Event time, unix milliseconds.
    pub timestamp: i64,
    /// CockroachDB HLC timestamp, as a decimal string.
    pub mvcc_timestamp: String,
}

/// A decoded change event (behaviour spec §5). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// INSERT, UPDATE or DELETE.
    pub operation: Operation,
    /// Event id.
    pub id: String,
    /// Table name.
    pub table: String,
    /// Primary-key values; may carry a region prefix (`["gcp-us-west1", "<id>"]`).
    pub key: Vec<String>,
    /// Schema version of the row images.
    pub model_version: String,
    /// Company.
    pub company_id: Option<String>,
    /// Location.
    pub location_id: Option<String>,
    /// User.
    pub user_id: Option<String>,
    /// Row before (UPDATE, DELETE).
    pub before: Option<Row>,
    /// Row after (INSERT, UPDATE).
    pub after: Option<Row>,
    /// Changed columns (UPDATE); `None` when the event does not say.
    pub diff: Option<Vec<String>>,
    /// Event time, unix milliseconds.
    pub timestamp: i64,
    /// CockroachDB HLC timestamp, as a decimal string.
    pub mvcc_timestamp: String,
    /// Synthesised by an import.
    pub imported: bool,
    /// The object name the schema validator's `path` template gave it (set by the drain, not
    /// part of the event): the S3 and file destinations use it instead of their own naming.
    pub path: Option<String>,
    /// The primary key (last element of `key`, else the row's `id`).
    primary_key: String,
}

impl ChangeEvent {
    /// Decode an event as published by Shopmonkey (see [`validate`] for the rules).
    pub fn from_json(bytes: &[u8]) -> Result<ChangeEvent, EventError> {
        let mut w: Wire<RowData> = wire(bytes)?;
        let (operation, primary_key) = w.check()?;
        let before = w.before.take().map(|r| r.0);
        Ok(ChangeEvent::of(w, operation, primary_key, before))
    }

    /// [`ChangeEvent::from_json`] for a state destination, which writes one row image: `before`
    /// is built only when it is that image (a DELETE, or an event without a non-empty `after`);
    /// otherwise it is checked as JSON, not built, and left `None`. Accepts and refuses exactly
    /// what [`ChangeEvent::from_json`] does.
    pub fn from_json_for_state(bytes: &[u8]) -> Result<ChangeEvent, EventError> {
        let w: Wire<RowData, &serde_json::value::RawValue> = wire(bytes)?;
        let after = w.after.as_ref().filter(|r| !RowImage::is_empty(*r));
        let before: Option<RowData> = match w.before {
            Some(raw) if after.is_none() || w.operation == "DELETE" => match nested::<RowData>(raw) {
                Ok(row) => Some(row),
                // The full decoder names the place in the whole event.
                Err(_) => return ChangeEvent::from_json(bytes),
            },
            Some(raw) => match nested::<SkimRow>(raw) {
                Ok(SkimRow) => None,
                Err(_) => return ChangeEvent::from_json(bytes),
            },
            None => None,
        };
        let (operation, primary_key) = w.rules(after.or(before.as_ref()))?;
        Ok(ChangeEvent::of(w, operation, primary_key, before.map(|r| r.0)))
    }

    /// The INSERT event an import synthesises for `row`, built directly: equal to what
    /// [`ChangeEvent::from_json_for_state`] decodes from the JSON of the same event (operation
    /// `INSERT`, `key` `[meta.key]`, `imported` true, `after` the row, no `before` or `diff`),
    /// and refused for the same reasons (no table, no primary key), without writing and parsing
    /// that JSON.
    pub fn imported_insert(meta: ImportedInsert, row: Row) -> Result<ChangeEvent, EventError> {
        let w: Wire<RowData> = Wire {
            operation: "INSERT".to_owned(),
            id: meta.id,
            table: meta.table,
            key: vec![meta.key],
            model_version: meta.model_version,
            company_id: meta.company_id,
            location_id: meta.location_id,
            user_id: meta.user_id,
            before: None,
            after: Some(RowData(row)),
            diff: None,
            timestamp: meta.timestamp,
            mvcc_timestamp: meta.mvcc_timestamp,
            imported: true,
        };
        let (operation, primary_key) = w.rules(w.after.as_ref().filter(|r| !r.is_empty()))?;
        Ok(ChangeEvent::of(w, operation, primary_key, None))
    }

    /// The event of a checked wire record, with its `before` image.
    fn of<B>(w: Wire<RowData, B>, operation: Operation, primary_key: String, before: Option<Row>) -> ChangeEvent {
        ChangeEvent {
            operation,
            id: w.id,
            table: w.table,
            key: w.key,
            model_version: w.model_version,
            company_id: w.company_id,
            location_id: w.location_id,
            user_id: w.user_id,
            before,
            after: w.after.map(|r| r.0),
            diff: w.diff,
            timestamp: w.timestamp,
            mvcc_timestamp: w.mvcc_timestamp,
            imported: w.imported,
            path: None,
            primary_key,
        }
    }

    /// The primary key: the last element of `key`, else the row's `id`.
    pub fn primary_key(&self) -> &str {
        &self.primary_key
    }

    /// Why a state destination cannot apply this event, if it cannot: an INSERT or UPDATE
    /// without an `after` image (absent, `null` or `{}`) says nothing about the row's new state.
    /// Applying it would upsert NULLs over the row, or write the `before` image back into it;
    /// the drain dead-letters it with this reason instead. (Stream destinations still receive
    /// it as it came.)
    pub fn no_row_to_write(&self) -> Option<String> {
        let empty = self.after.as_ref().is_none_or(Row::is_empty);
        (self.operation != Operation::Delete && empty).then(|| {
            format!(
                "{} of table {:?} has no `after` image (absent, null or {{}}): there is no new row to write",
                self.operation.as_str(),
                self.table
            )
        })
    }

    /// The row image: `after` when present and non-empty, else `before`.
    pub fn object(&self) -> Option<&Row> {
        self.after.as_ref().filter(|r| !r.is_empty()).or(self.before.as_ref())
    }
}

/// What a state destination must do for one key after folding a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Folded {
    /// Insert the row, or update it if it exists. `changed` lists the columns an update must
    /// write (the union of the UPDATEs' diffs); `None` means the whole row.
    Upsert {
        /// The latest row image.
        row: Row,
        /// Columns to write on update; `None` = all.
        changed: Option<BTreeSet<String>>,
    },
    /// Delete the row.
    Delete {
        /// The row before deletion, when the event carried it.
        before: Option<Row>,
    },
}

/// The folded change of one (table, key).
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedChange {
    /// Table.
    pub table: String,
    /// The full `key` array of the events.
    pub key: Vec<String>,
    /// Primary key.
    pub primary_key: String,
    /// What to do.
    pub change: Folded,
    /// Position (caller's sequence, e.g. LSN) of the first event folded in.
    pub first_pos: u64,
    /// Position of the last event folded in.
    pub last_pos: u64,
    /// Positions of every event folded in, in order (so a rejection maps back to its events
    /// without a scan of the batch).
    pub positions: Vec<u64>,
    /// How many events were folded into this change.
    pub events: usize,
    /// The schema version (`modelVersion`) of the last event folded in: its row image is the
    /// one written.
    pub model_version: String,
}

/// What [`apply`] needs of an event, with its row images either borrowed (cloned when kept) or
/// taken out of the event (no copy).
trait Images {
    fn event(&self) -> &ChangeEvent;
    fn after(&mut self) -> Option<Row>;
    fn before(&mut self) -> Option<Row>;
}

impl Images for &ChangeEvent {
    fn event(&self) -> &ChangeEvent {
        self
    }
    fn after(&mut self) -> Option<Row> {
        self.after.clone()
    }
    fn before(&mut self) -> Option<Row> {
        self.before.clone()
    }
}

impl Images for &mut ChangeEvent {
    fn event(&self) -> &ChangeEvent {
        self
    }
    fn after(&mut self) -> Option<Row> {
        self.after.take()
    }
    fn before(&mut self) -> Option<Row> {
        self.before.take()
    }
}

fn apply(acc: Option<Folded>, mut e: impl Images) -> Folded {
    let operation = e.event().operation;
    match operation {
        Operation::Delete => Folded::Delete { before: e.before() },
        Operation::Insert => {
            Folded::Upsert { row: e.after().or_else(|| e.before()).unwrap_or_default(), changed: None }
        }
        Operation::Update => {
            let diff: Option<BTreeSet<String>> = e.event().diff.as_ref().map(|d| d.iter().cloned().collect());
            let row = e.after().or_else(|| e.before()).unwrap_or_default();
            match acc {
                None => Folded::Upsert { row, changed: diff },
                Some(Folded::Delete { .. }) => Folded::Upsert { row, changed: None },
                Some(Folded::Upsert { changed, .. }) => {
                    let changed = match (changed, diff) {
                        (Some(mut a), Some(b)) => {
                            a.extend(b);
                            Some(a)
                        }
                        _ => None,
                    };
                    Folded::Upsert { row, changed }
                }
            }
        }
    }
}

/// [`fold`], taking the row images out of the events instead of copying them (the events keep
/// everything else). For callers that own the batch and no longer need the images.
pub fn fold_taking<'a>(events: impl IntoIterator<Item = (u64, &'a mut ChangeEvent)>) -> Vec<FoldedChange> {
    fold_with(events)
}

fn fold_with<E: Images>(events: impl IntoIterator<Item = (u64, E)>) -> Vec<FoldedChange> {
    // Keyed by table, the full key array and the primary key (the key array may be empty, when
    // the primary key comes from the row's `id`).
    // Looked up by a hash of the borrowed parts (no copies per event): `first` holds the first
    // change of each hash, `next` chains the changes whose hashes collide.
    use std::hash::BuildHasher;
    let state = foldhash::fast::RandomState::default();
    let mut first: HashMap<u64, usize, foldhash::fast::RandomState> = HashMap::default();
    let mut next: Vec<Option<usize>> = Vec::new();
    let mut out: Vec<FoldedChange> = Vec::new();
    for (pos, event) in events {
        let e = event.event();
        let hash = state.hash_one((&e.table, &e.key, e.primary_key()));
        let mut at = first.get(&hash).copied();
        while let Some(i) = at {
            let c = &out[i];
            if c.table == e.table && c.key == e.key && c.primary_key == e.primary_key() {
                break;
            }
            at = next[i];
        }
        match at.and_then(|i| out.get_mut(i)) {
            Some(slot) => {
                if slot.model_version != e.model_version {
                    slot.model_version.clone_from(&e.model_version);
                }
                let prev = std::mem::replace(&mut slot.change, Folded::Delete { before: None });
                slot.change = apply(Some(prev), event);
                slot.last_pos = pos;
                slot.positions.push(pos);
                slot.events += 1;
            }
            None => {
                let model_version = e.model_version.clone();
                let (table, key, primary_key) = (e.table.clone(), e.key.clone(), e.primary_key().to_owned());
                next.push(first.insert(hash, out.len()));
                out.push(FoldedChange {
                    table,
                    key,
                    primary_key,
                    change: apply(None, event),
                    first_pos: pos,
                    last_pos: pos,
                    positions: vec![pos],
                    events: 1,
                    model_version,
                });
            }
        }
    }
    out
}

/// Fold a batch per (table, full key array), keeping per-key order. The result is ordered by
/// each key's first event. `pos` is any increasing position the caller tracks (the WAL's LSN).
pub fn fold<'a>(events: impl IntoIterator<Item = (u64, &'a ChangeEvent)>) -> Vec<FoldedChange> {
    fold_with(events)
}

#[cfg(test)]
mod tests;
