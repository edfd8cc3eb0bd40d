//! How a JSON value becomes the cell bound for a MySQL or MariaDB column, and how cells are bound.
//!
//! Values are converted in Rust by the destination column's real type as `information_schema`
//! reports it, so tables made earlier by EDS or by hand (`TIMESTAMP`, `VARCHAR(64)`, `TINYINT(1)`,
//! `FLOAT`, `DECIMAL`…) are written by their own types: integers exactly as `i64`/`u64` (never
//! through `f64`), floats as `f64`, booleans as `bool`, JSON as its text, ISO-8601 date-times as
//! `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, parsed here rather than by the server (see
//! [`datetime_text`]).

use super::catalog::Storage;
use crate::driver::{DriverError, ErrorClass};
use crate::sql::datetime;
use crate::sql::plan::{KeyPart, Prepare};
use serde_json::Value;
use sqlx::mysql::{MySql, MySqlArguments};
use sqlx::query::Query;
use std::borrow::Cow;

/// The first and last instant a `TIMESTAMP` column holds, in microseconds since the epoch:
/// `1970-01-01 00:00:01` and `2038-01-19 03:14:07.999999` UTC (MySQL 8; MariaDB before 11.5).
const TIMESTAMP_RANGE: (i64, i64) = (1_000_000, 2_147_483_647_999_999);

/// A value ready to bind; text borrows the event's strings where it can.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell<'v> {
    Null,
    Text(Cow<'v, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
}

impl Cell<'_> {
    /// An upper bound of the bytes the value takes in a COM_STMT_EXECUTE packet (type, length
    /// prefix, data, null bitmap).
    pub(super) fn wire_bytes(&self) -> usize {
        match self {
            Cell::Text(s) => s.len() + 12,
            _ => 12,
        }
    }
}

pub(super) fn bind_cell<'q>(
    q: Query<'q, MySql, MySqlArguments>,
    cell: &'q Cell<'_>,
) -> Query<'q, MySql, MySqlArguments> {
    match cell {
        Cell::Null => q.bind(None::<&str>),
        Cell::Text(s) => q.bind(s.as_ref()),
        Cell::Int(i) => q.bind(*i),
        Cell::UInt(u) => q.bind(*u),
        Cell::Float(f) => q.bind(*f),
        Cell::Bool(b) => q.bind(*b),
    }
}

/// How one schema column is written: its destination column and value conversion.
#[derive(Debug)]
pub(super) struct ColumnPlan<'s> {
    pub(super) name: &'s str,
    pub(super) quoted: String,
    pub(super) storage: Storage,
    /// Integer columns: the column is unsigned.
    pub(super) unsigned: bool,
    /// JSON default for a missing or null value (`{}`/`[]`), as EDS writes for not-null object
    /// and array columns.
    pub(super) default: Option<&'static str>,
    /// The server would overwrite it on update (`ON UPDATE current_timestamp()`): a partial
    /// update must set it to itself, or an event's date would be replaced by the clock.
    pub(super) on_update: bool,
}

/// A JSON value for messages, cut to a readable length.
fn preview(v: &Value) -> String {
    let mut s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if s.len() > 120 {
        let mut end = 117;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

impl ColumnPlan<'_> {
    fn refuse(&self, table: &str, v: &Value, why: &str) -> DriverError {
        DriverError::new(
            ErrorClass::Rejected,
            format!("MySQL: column {:?} of table {table:?}: {} {why}", self.name, preview(v)),
        )
    }

    /// The value converted for the column's storage, or why the column cannot take it.
    pub(super) fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Cell<'v>, DriverError> {
        let v = match value {
            None | Some(Value::Null) => return Ok(self.default.map_or(Cell::Null, |d| Cell::Text(Cow::Borrowed(d)))),
            Some(v) => v,
        };
        match self.storage {
            Storage::Json => Ok(Cell::Text(Cow::Owned(v.to_string()))),
            Storage::DateTime | Storage::Timestamp => {
                let Value::String(s) = v else {
                    return Err(self.refuse(table, v, "is not an ISO-8601 date-time"));
                };
                let micros = parse_datetime(s).ok_or_else(|| self.refuse(table, v, "is not an ISO-8601 date-time"))?;
                if self.storage == Storage::Timestamp && !(TIMESTAMP_RANGE.0..=TIMESTAMP_RANGE.1).contains(&micros) {
                    return Err(self.refuse(
                        table,
                        v,
                        "is outside what a TIMESTAMP column holds (1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC)",
                    ));
                }
                format_micros(micros)
                    .map(|t| Cell::Text(Cow::Owned(t)))
                    .ok_or_else(|| self.refuse(table, v, "is outside the years 0000 to 9999"))
            }
            Storage::Integer => match v {
                // A whole value (`3.0`, `1e3`) is the integer, exactly; never through f64.
                Value::Number(n) => match crate::number::integer_text(n) {
                    Some(t) => match (t.parse::<i64>(), t.parse::<u64>()) {
                        (Ok(i), _) => Ok(Cell::Int(i)),
                        (_, Ok(u)) => Ok(Cell::UInt(u)),
                        _ => Err(self.refuse(table, v, "does not fit a 64-bit integer column")),
                    },
                    None => Err(self.refuse(table, v, "is not an integer")),
                },
                Value::String(s) => match (s.parse::<i64>(), s.parse::<u64>()) {
                    (Ok(i), _) => Ok(Cell::Int(i)),
                    (_, Ok(u)) => Ok(Cell::UInt(u)),
                    _ => Err(self.refuse(table, v, "is not an integer")),
                },
                Value::Bool(b) => Ok(Cell::Int(i64::from(*b))),
                _ => Err(self.refuse(table, v, "is not an integer")),
            }
            .and_then(|c| match c {
                Cell::Int(i) if self.unsigned && i < 0 => Err(self.refuse(table, v, "is negative (unsigned column)")),
                c => Ok(c),
            }),
            Storage::Boolean => match v {
                Value::Bool(b) => Ok(Cell::Bool(*b)),
                Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                    Ok(Cell::Bool(n.as_u64() == Some(1)))
                }
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" => Ok(Cell::Bool(true)),
                    "false" | "f" | "0" => Ok(Cell::Bool(false)),
                    _ => Err(self.refuse(table, v, "is not a boolean")),
                },
                _ => Err(self.refuse(table, v, "is not a boolean")),
            },
            Storage::Float => match v {
                Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => Ok(Cell::Int(i)),
                    (_, Some(u), _) => Ok(Cell::UInt(u)),
                    (_, _, Some(f)) => Ok(Cell::Float(f)),
                    _ => Err(self.refuse(table, v, "is not a number")),
                },
                Value::String(s) => match s.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => Ok(Cell::Float(f)),
                    _ => Err(self.refuse(table, v, "is not a number")),
                },
                _ => Err(self.refuse(table, v, "is not a number")),
            },
            // Exact text: the server parses it into the column's precision.
            Storage::Decimal => match v {
                Value::Number(n) => Ok(Cell::Text(Cow::Owned(crate::number::exact_text(n)))),
                Value::String(s) => Ok(Cell::Text(Cow::Borrowed(s))),
                _ => Err(self.refuse(table, v, "is not a number")),
            },
            Storage::Text | Storage::Enum | Storage::Other => Ok(Cell::Text(text_of(v))),
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
        // Through the column's own conversion (an integer key column gets an integer).
        let value = Value::String(key.to_owned());
        ColumnPlan::cell(self, Some(&value), table).map(Cell::into_owned)
    }

    fn key<'c>(cell: &'c Self::Cell<'_>) -> KeyPart<'c> {
        match cell {
            Cell::Null => KeyPart::Null,
            Cell::Text(s) => KeyPart::Text(s),
            Cell::Int(i) => KeyPart::Int(i128::from(*i)),
            Cell::UInt(u) => KeyPart::Int(i128::from(*u)),
            Cell::Float(f) => KeyPart::Float(f.to_bits()),
            Cell::Bool(b) => KeyPart::Bool(*b),
        }
    }
}

impl Cell<'_> {
    /// The same value, owning its text.
    pub(super) fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Text(s) => Cell::Text(Cow::Owned(s.into_owned())),
            Cell::Int(i) => Cell::Int(i),
            Cell::UInt(u) => Cell::UInt(u),
            Cell::Float(f) => Cell::Float(f),
            Cell::Bool(b) => Cell::Bool(b),
        }
    }
}

/// A value as text for a text column (see [`crate::sql::text_of`]).
fn text_of(v: &Value) -> Cow<'_, str> {
    crate::sql::text_of(v, false)
}

/// [`text_of`], owned.
#[cfg(test)]
pub(super) fn value_text(v: &Value) -> String {
    text_of(v).into_owned()
}

#[cfg(test)]
pub(super) use crate::number::column_text as number_text;

/// 1970-01-01T00:00:00, the origin of [`parse_datetime`]'s microseconds.
const UNIX_EPOCH: jiff::civil::DateTime = jiff::civil::date(1970, 1, 1).at(0, 0, 0, 0);

/// Microseconds since 1970-01-01T00:00:00Z of an ISO-8601 date-time (see [`crate::sql::datetime`];
/// `24:00` is the end of the day), rounded half up to the microsecond. `None` for anything else —
/// words such as `now` or `yesterday`, impossible dates; nothing panics.
pub(super) fn parse_datetime(s: &str) -> Option<i64> {
    let utc = datetime::parse(s, datetime::EndOfDay::Accept).ok()?;
    let utc = datetime::round(utc, 1_000).ok()?;
    i64::try_from(utc.duration_since(UNIX_EPOCH).as_micros()).ok()
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) of microseconds since the epoch; `None` outside the years
/// 0000–9999.
pub(super) fn format_micros(micros: i64) -> Option<String> {
    let dt = UNIX_EPOCH.checked_add(jiff::SignedDuration::from_micros(micros)).ok()?;
    if !(0..=9999).contains(&dt.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 1_000
    ))
}

/// An ISO-8601 date-time (`YYYY-MM-DD[THH:MM[:SS[.fraction]]]` with `Z`, an offset such as
/// `+05:30`, or nothing for UTC) as MySQL's `YYYY-MM-DD HH:MM:SS.ffffff` in UTC, converted here
/// rather than by the server (whose reading depends on its version and `sql_mode`). Dates before
/// 1970 are kept as they are (EDS clamped them). `None` for anything that is not such a date-time,
/// words such as `now` included (the server's reading of those would change on a replay).
pub fn datetime_text(value: &str) -> Option<String> {
    parse_datetime(value).and_then(format_micros)
}
