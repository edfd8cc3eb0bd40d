//! Loading rows into a table the import has just created: export lines become CSV, uploaded to
//! a temporary stage and loaded with one `COPY INTO` per batch — Snowflake's bulk way, instead of
//! a MERGE of bound rows.
//!
//! The encoder ([`CsvEncoder`]) writes each column's cell exactly as the MERGE way binds it
//! ([`ColumnPlan::cell`]), so both ways store the same values: text and JSON documents enclosed
//! in `"` (a `"` doubled), integers, floats, booleans and UTC date-times bare, NULL as a bare
//! `\N` (`NULL_IF = ('\\N')`; `EMPTY_FIELD_AS_NULL = FALSE`, so an enclosed empty string stays
//! an empty string). A JSON document goes into its VARIANT column as text, which `COPY` parses.
//!
//! Snowflake does not enforce primary keys, so `COPY` would store a repeated id twice: the
//! encoder declines a line whose `id` it has seen before (the import writes it as an event,
//! whose MERGE updates the row), and every line it cannot be sure of — not one JSON object, no
//! string `id`, a value a column refuses, a text that reads as NULL (`\N`) or holds a NUL byte,
//! names serde_json reads specially. Declined lines keep their order: the batch before them is
//! loaded first.
//!
//! Each batch: `PUT` (the server answers where the stage keeps files, see [`super::stage`]),
//! the gzipped file uploaded there (encrypted when the stage asks), then `COPY INTO "t" (…)
//! FROM @stage/file … ON_ERROR = ABORT_STATEMENT PURGE = TRUE`: the whole file or nothing, and
//! the file removed once loaded. A statement that fails leaves the table as it was, and the
//! import writes the batch's rows as events, which refuse bad rows one by one. A stage whose
//! storage is none eds uploads to (S3, GCS, Azure) makes every batch an error that says so, and
//! its rows are merged.

use super::cells::{ColumnPlan, Storage};
use crate::driver::{DriverError, ErrorClass, FreshEncoder};
use crate::schema::Schema;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::hash::BuildHasher;

/// One column the encoder writes.
#[derive(Debug)]
struct Column {
    name: String,
    storage: Storage,
    default: Option<&'static str>,
}

/// Export lines → CSV records for `COPY INTO` (see the module's documentation).
#[derive(Debug)]
pub struct CsvEncoder {
    table: String,
    columns: Vec<Column>,
    /// Hashes of the ids seen so far (a collision only declines a line needlessly).
    seen: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl CsvEncoder {
    /// The encoder of `schema`'s table, whose columns are written as `plans` say; `None` unless
    /// the table's only primary key is `id`.
    pub fn new(schema: &Schema, plans: &[ColumnPlan<'_>]) -> Option<CsvEncoder> {
        if schema.primary_keys() != ["id"] || !plans.iter().any(|p| p.name == "id") {
            return None;
        }
        Some(CsvEncoder {
            table: schema.table().to_owned(),
            columns: plans
                .iter()
                .map(|p| Column { name: p.name.to_owned(), storage: p.storage, default: p.default })
                .collect(),
            seen: HashSet::new(),
            hasher: Default::default(),
        })
    }

    fn record(&self, row: &Map<String, Value>, out: &mut Vec<u8>) -> bool {
        for (i, c) in self.columns.iter().enumerate() {
            let plan = ColumnPlan { name: &c.name, quoted: String::new(), storage: c.storage, default: c.default };
            let Ok(cell) = plan.cell(row.get(&c.name), &self.table) else { return false };
            if i > 0 {
                out.push(b',');
            }
            match cell {
                None => out.extend_from_slice(b"\\N"),
                Some(text) => {
                    if text.contains('\0') {
                        return false;
                    }
                    match c.storage {
                        Storage::Text | Storage::Variant => {
                            if text == "\\N" {
                                return false;
                            }
                            out.push(b'"');
                            for b in text.bytes() {
                                if b == b'"' {
                                    out.push(b'"');
                                }
                                out.push(b);
                            }
                            out.push(b'"');
                        }
                        // Digits, `true`/`false`, `YYYY-MM-DD HH:MM:SS.fffffffff`: nothing to enclose.
                        _ => out.extend_from_slice(text.as_bytes()),
                    }
                }
            }
        }
        out.push(b'\n');
        true
    }
}

impl FreshEncoder for CsvEncoder {
    fn encode(&mut self, line: &str, out: &mut Vec<u8>) -> bool {
        // serde_json reads these names as its own number and raw-value markers.
        if line.contains("$serde_json::private::") {
            return false;
        }
        let Ok(row) = serde_json::from_str::<Map<String, Value>>(line) else { return false };
        let Some(Value::String(id)) = row.get("id") else { return false };
        // Every id read counts as seen, written here or not: a later line with it must update
        // the row the event way wrote.
        if !self.seen.insert(self.hasher.hash_one(id.as_str())) {
            return false;
        }
        let start = out.len();
        if self.record(&row, out) {
            true
        } else {
            out.truncate(start);
            false
        }
    }
}

/// The number of CSV records in `data` (newlines outside enclosed fields).
pub fn records(data: &[u8]) -> usize {
    let mut inside = false;
    let mut n = 0;
    for &b in data {
        match b {
            b'"' => inside = !inside,
            b'\n' if !inside => n += 1,
            _ => {}
        }
    }
    n
}

/// `data` gzipped.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, DriverError> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), flate2::Compression::fast());
    gz.write_all(data)
        .and_then(|()| gz.finish())
        .map_err(|e| DriverError::caused(ErrorClass::Unknown, "Snowflake: compressing rows for the stage failed", e))
}

/// The `COPY INTO` of `file` on `stage` into `table`'s `columns` (all quoted already).
pub fn copy_sql(table: &str, columns: &[String], stage: &str, file: &str) -> String {
    format!(
        "COPY INTO {table} ({}) FROM @{stage}/{file} FILE_FORMAT = (TYPE = CSV \
         FIELD_OPTIONALLY_ENCLOSED_BY = '\"' COMPRESSION = GZIP NULL_IF = ('\\\\N') EMPTY_FIELD_AS_NULL = FALSE \
         ESCAPE_UNENCLOSED_FIELD = NONE) ON_ERROR = ABORT_STATEMENT PURGE = TRUE",
        columns.join(", ")
    )
}

/// Rows a `COPY INTO` reports loaded, and whether every file's status is `LOADED`; `None` when
/// the server did not answer in JSON.
pub fn loaded(result: &super::client::QueryResult) -> Option<(i64, bool)> {
    let rows = result.rows.as_ref()?;
    let col = |name: &str| result.columns.iter().position(|c| c.eq_ignore_ascii_case(name));
    let (status, count) = (col("status")?, col("rows_loaded")?);
    let mut total = 0;
    let mut all = true;
    for r in rows {
        all &= r.get(status).and_then(|s| s.as_deref()).is_some_and(|s| s.eq_ignore_ascii_case("LOADED"));
        total += r.get(count).and_then(|c| c.as_deref()).and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
    }
    Some((total, all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    fn schema() -> Schema {
        let v = json!({"table": "t", "modelVersion": "v1", "primaryKeys": ["id"], "properties": {
            "id": {"type": "string"},
            "name": {"type": "string", "nullable": true},
            "n": {"type": "integer", "nullable": true},
            "ok": {"type": "boolean", "nullable": true},
            "at": {"type": "string", "format": "date-time", "nullable": true},
            "doc": {"type": "object"},
        }});
        Schema::from_json(v.to_string().as_bytes()).unwrap()
    }

    fn encode(e: &mut CsvEncoder, line: &str) -> Option<String> {
        let mut out = Vec::new();
        e.encode(line, &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn lines_become_the_cells_the_merge_way_binds() {
        let s = schema();
        let plans: Vec<ColumnPlan<'_>> = s.columns().iter().map(|c| ColumnPlan::new(c).unwrap()).collect();
        let mut e = CsvEncoder::new(&s, &plans).unwrap();
        let names: Vec<&str> = plans.iter().map(|p| p.name).collect();
        let line = json!({"id": "a\"b,\nc", "name": "", "n": 12, "ok": true, "at": "2024-03-01T10:00:00.5+01:00",
            "doc": {"q": "\"x\""}, "extra": 1});
        let got = encode(&mut e, &line.to_string()).unwrap();
        // The cells, in the schema's column order, as ColumnPlan::cell gives them.
        let row = line.as_object().unwrap();
        let cells: Vec<Option<String>> =
            plans.iter().map(|p| p.cell(row.get(p.name), "t").unwrap().map(|c| c.into_owned())).collect();
        let mut want = Vec::new();
        for (p, c) in plans.iter().zip(&cells) {
            want.push(match (c, p.storage) {
                (None, _) => "\\N".to_owned(),
                (Some(t), Storage::Text | Storage::Variant) => format!("\"{}\"", t.replace('"', "\"\"")),
                (Some(t), _) => t.clone(),
            });
        }
        assert_eq!(got, format!("{}\n", want.join(",")), "columns {names:?}");
        assert!(got.contains(",\"\","), "an empty string is enclosed: {got}");
        assert!(got.contains("2024-03-01 09:00:00.500000000"), "{got}");
        assert_eq!(records(got.as_bytes()), 1, "the newline inside the id is enclosed");
        // Missing values: NULL, or the JSON default of a not-null object.
        let got = encode(&mut e, r#"{"id": "b"}"#).unwrap();
        let want: Vec<&str> = plans
            .iter()
            .map(|p| match p.name {
                "id" => "\"b\"",
                "doc" => "\"{}\"",
                _ => "\\N",
            })
            .collect();
        assert_eq!(got, format!("{}\n", want.join(",")));
    }

    #[test]
    fn what_copy_could_store_differently_is_declined() {
        let s = schema();
        let plans: Vec<ColumnPlan<'_>> = s.columns().iter().map(|c| ColumnPlan::new(c).unwrap()).collect();
        let mut e = CsvEncoder::new(&s, &plans).unwrap();
        for line in [
            "not json",
            "[1]",
            r#"{"name": "no id"}"#,
            r#"{"id": 7}"#,
            r#"{"id": "n1", "n": "twelve"}"#,
            r#"{"id": "n2", "name": "\\N"}"#,
            r#"{"id": "n3", "name": "a\u0000b"}"#,
            r#"{"id": "n4", "at": "yesterday"}"#,
            r#"{"id": "n5", "$serde_json::private::Number": "1"}"#,
        ] {
            assert_eq!(encode(&mut e, line), None, "{line}");
        }
        assert!(encode(&mut e, r#"{"id": "x"}"#).is_some());
        // A repeated id — also of a line declined for another reason.
        assert_eq!(encode(&mut e, r#"{"id": "x", "name": "later"}"#), None);
        assert_eq!(encode(&mut e, r#"{"id": "n1", "n": 1}"#), None);
        // Only a table keyed by `id` alone gets an encoder.
        let other = json!({"table": "u", "modelVersion": "v1", "primaryKeys": ["k"],
            "properties": {"k": {"type": "string"}, "id": {"type": "string"}}});
        let other = Schema::from_json(other.to_string().as_bytes()).unwrap();
        let plans: Vec<ColumnPlan<'_>> = other.columns().iter().map(|c| ColumnPlan::new(c).unwrap()).collect();
        assert!(CsvEncoder::new(&other, &plans).is_none());
    }

    #[test]
    fn copy_statements_name_columns_and_options() {
        let sql = copy_sql("\"t\"", &["\"id\"".into(), "\"a\"\"b\"".into()], "EDS_IMPORT_1_AB", "eds-1.csv.gz");
        assert_eq!(
            sql,
            "COPY INTO \"t\" (\"id\", \"a\"\"b\") FROM @EDS_IMPORT_1_AB/eds-1.csv.gz FILE_FORMAT = (TYPE = CSV \
             FIELD_OPTIONALLY_ENCLOSED_BY = '\"' COMPRESSION = GZIP NULL_IF = ('\\\\N') EMPTY_FIELD_AS_NULL = FALSE \
             ESCAPE_UNENCLOSED_FIELD = NONE) ON_ERROR = ABORT_STATEMENT PURGE = TRUE"
        );
        let r = super::super::client::QueryResult {
            columns: vec!["file".into(), "status".into(), "rows_parsed".into(), "rows_loaded".into()],
            rows: Some(vec![vec![Some("f".into()), Some("LOADED".into()), Some("3".into()), Some("3".into())]]),
            ..Default::default()
        };
        assert_eq!(loaded(&r), Some((3, true)));
        assert_eq!(loaded(&super::super::client::QueryResult::default()), None);
    }
}
