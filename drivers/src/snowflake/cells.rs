//! How a JSON value becomes the text bound for a Snowflake column, and the SQL expression that
//! reads it back as the column's type.
//!
//! Every value is bound as `TEXT` and converted by an explicit cast in the statement
//! (`CAST(? AS INTEGER)`, `PARSE_JSON(?)`…), so a NULL of any type binds the same way and the
//! rows of a multi-row statement all have the same types. Values are checked here first, so the
//! server's conversions only ever see what they accept: integers exactly as decimal digits (never
//! through f64), floats in their shortest form, booleans `true`/`false`, JSON documents as compact
//! JSON (`PARSE_JSON` of text eds wrote itself), date-times converted to UTC here and bound as
//! `YYYY-MM-DD HH:MM:SS.fffffffff`. A value a column cannot take is a
//! [`ErrorClass::Rejected`] error naming the column and table.

use crate::driver::{DriverError, ErrorClass};
use crate::schema::{Column, ColumnType};
use crate::sql::datetime::{self, EndOfDay};
use crate::sql::plan::{KeyPart, Prepare};
use serde_json::Value;
use std::borrow::Cow;

/// The Snowflake storage of a schema column (spec §6.2, with objects and arrays as VARIANT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `STRING` (text, enums, unknown types).
    Text,
    /// `TIMESTAMP_NTZ`, holding UTC.
    Timestamp,
    /// `INTEGER` (`NUMBER(38,0)`).
    Integer,
    /// `FLOAT`.
    Float,
    /// `BOOLEAN`.
    Boolean,
    /// `VARIANT` (objects and arrays).
    Variant,
}

impl Storage {
    /// The storage of a schema column type.
    pub fn of(kind: &ColumnType) -> Storage {
        match kind {
            ColumnType::Text | ColumnType::Enum { .. } | ColumnType::Unknown(_) => Storage::Text,
            ColumnType::DateTime => Storage::Timestamp,
            ColumnType::Integer => Storage::Integer,
            ColumnType::Number => Storage::Float,
            ColumnType::Boolean => Storage::Boolean,
            ColumnType::Object | ColumnType::Array { .. } => Storage::Variant,
        }
    }

    /// The column type in DDL.
    pub fn ddl(self) -> &'static str {
        match self {
            Storage::Text => "STRING",
            Storage::Timestamp => "TIMESTAMP_NTZ",
            Storage::Integer => "INTEGER",
            Storage::Float => "FLOAT",
            Storage::Boolean => "BOOLEAN",
            Storage::Variant => "VARIANT",
        }
    }

    /// The expression that reads a bound text placeholder as this type.
    pub fn read(self) -> &'static str {
        match self {
            Storage::Text => "CAST(? AS STRING)",
            Storage::Timestamp => "CAST(? AS TIMESTAMP_NTZ)",
            Storage::Integer => "CAST(? AS INTEGER)",
            Storage::Float => "CAST(? AS FLOAT)",
            Storage::Boolean => "CAST(? AS BOOLEAN)",
            Storage::Variant => "PARSE_JSON(?)",
        }
    }
}

/// A bound value: its text, or NULL.
pub type Cell<'v> = Option<Cow<'v, str>>;

/// How one schema column is written.
#[derive(Debug)]
pub struct ColumnPlan<'s> {
    /// The column (property) name.
    pub name: &'s str,
    /// The name quoted.
    pub quoted: String,
    /// Its storage.
    pub storage: Storage,
    /// JSON default for a missing or null value (`{}`/`[]`) of a not-null object or array.
    pub default: Option<&'static str>,
}

impl<'s> ColumnPlan<'s> {
    /// The plan of a schema column; a name Snowflake cannot hold is rejected.
    pub fn new(column: &'s Column) -> Result<ColumnPlan<'s>, DriverError> {
        Ok(ColumnPlan {
            name: &column.name,
            quoted: super::sink::quote_ident(&column.name)?,
            storage: Storage::of(&column.kind),
            default: crate::sql::plan::json_default(column),
        })
    }

    fn refuse(&self, table: &str, v: &Value, why: &str) -> DriverError {
        let mut shown = match v {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        if shown.len() > 120 {
            let mut end = 117;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        DriverError::new(
            ErrorClass::Rejected,
            format!("Snowflake: column {:?} of table {table:?}: {shown} {why}", self.name),
        )
    }

    /// The value as the column's text, or why the column cannot take it.
    pub fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Cell<'v>, DriverError> {
        let v = match value {
            None | Some(Value::Null) => return Ok(self.default.map(Cow::Borrowed)),
            Some(v) => v,
        };
        match self.storage {
            Storage::Variant => Ok(Some(Cow::Owned(v.to_string()))),
            Storage::Text => Ok(Some(crate::sql::text_of(v, false))),
            Storage::Timestamp => {
                let Value::String(s) = v else {
                    return Err(self.refuse(table, v, "is not an ISO-8601 date-time"));
                };
                let dt = datetime::parse(s, EndOfDay::Accept)
                    .map_err(|_| self.refuse(table, v, "is not an ISO-8601 date-time"))?;
                if dt.year() < 1 {
                    return Err(self.refuse(table, v, "is before the year 1, which TIMESTAMP_NTZ cannot hold"));
                }
                Ok(Some(Cow::Owned(format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:09}",
                    dt.year(),
                    dt.month(),
                    dt.day(),
                    dt.hour(),
                    dt.minute(),
                    dt.second(),
                    dt.subsec_nanosecond()
                ))))
            }
            Storage::Integer => {
                let digits = match v {
                    Value::Number(n) => crate::number::integer_text(n),
                    Value::String(s) => s.trim().parse::<i128>().ok().map(|i| i.to_string()),
                    Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
                    _ => None,
                };
                match digits {
                    // NUMBER(38,0): at most 38 digits.
                    Some(d) if d.trim_start_matches('-').len() <= 38 => Ok(Some(Cow::Owned(d))),
                    Some(_) => Err(self.refuse(table, v, "has more than 38 digits (INTEGER is NUMBER(38,0))")),
                    None => Err(self.refuse(table, v, "is not an integer")),
                }
            }
            Storage::Float => match v {
                Value::Number(n) => match n.as_f64() {
                    Some(f) if f.is_finite() => Ok(Some(Cow::Owned(crate::number::exact_text(n)))),
                    _ => Err(self.refuse(table, v, "is not a finite number")),
                },
                Value::String(s) => match s.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => Ok(Some(Cow::Owned(format!("{f:?}")))),
                    _ => Err(self.refuse(table, v, "is not a number")),
                },
                _ => Err(self.refuse(table, v, "is not a number")),
            },
            Storage::Boolean => match v {
                Value::Bool(b) => Ok(Some(Cow::Borrowed(if *b { "true" } else { "false" }))),
                Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                    Ok(Some(Cow::Borrowed(if n.as_u64() == Some(1) { "true" } else { "false" })))
                }
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" => Ok(Some(Cow::Borrowed("true"))),
                    "false" | "f" | "0" => Ok(Some(Cow::Borrowed("false"))),
                    _ => Err(self.refuse(table, v, "is not a boolean")),
                },
                _ => Err(self.refuse(table, v, "is not a boolean")),
            },
        }
    }
}

impl Prepare for ColumnPlan<'_> {
    type Cell<'v> = Cell<'v>;

    fn name(&self) -> &str {
        self.name
    }

    fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        ColumnPlan::cell(self, value, table)
    }

    fn key_cell<'v>(&self, key: &'v str, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        let value = Value::String(key.to_owned());
        ColumnPlan::cell(self, Some(&value), table).map(|c| c.map(|t| Cow::Owned(t.into_owned())))
    }

    fn key<'c>(cell: &'c Self::Cell<'_>) -> KeyPart<'c> {
        match cell {
            None => KeyPart::Null,
            Some(t) => KeyPart::Text(t),
        }
    }
}
