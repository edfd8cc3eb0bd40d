//! How a JSON value becomes the parameter bound for a SQL Server column.
//!
//! Values are converted in Rust to the kind the destination column needs — text, `BIGINT`,
//! `FLOAT`, `BIT` or `DATETIMEOFFSET(7)` — by the column's real type as `INFORMATION_SCHEMA.COLUMNS`
//! reports it, so tables made earlier by EDS (`NVARCHAR(MAX)` date-times, `VARCHAR(64)` keys) or by
//! hand are written by their own types.

use super::catalog::{Storage, TableInfo};
use super::sink::quote_ident;
use crate::driver::{DriverError, ErrorClass};
use crate::schema::{ColumnType, Schema};
use crate::sql::plan::{self, KeyPart, Prepare};
use serde_json::Value;
use std::borrow::Cow;
use tiberius::time::{Date, DateTime2, DateTimeOffset, Time};
use tiberius::{ColumnData, ToSql};

/// An instant as SQL Server's `datetime2`/`datetimeoffset` store it: days since 0001-01-01 and
/// 100-ns ticks since midnight, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    /// Days since 0001-01-01 (0 ..= 3,652,058).
    pub days: u32,
    /// 100-ns ticks since midnight (0 .. 864,000,000,000).
    pub ticks: u64,
}

const TICKS_PER_DAY: i128 = 86_400 * 10_000_000;
/// 0001-01-01T00:00:00, the origin of [`Instant`].
const DAY_ZERO: jiff::civil::DateTime = jiff::civil::date(1, 1, 1).at(0, 0, 0, 0);

pub use crate::sql::datetime::DateTimeError;

/// Parses an ISO-8601 date-time (see [`crate::sql::datetime`]: `YYYY-MM-DD`, optionally `T` or a
/// space and `hh:mm[:ss[.fraction]]`, optionally `Z` or an offset, one space before it allowed).
/// Without an offset the time is UTC. Fractions are rounded to 100 ns; a leap second (`:60`) rolls
/// into the next minute; `24:00` is refused, as SQL Server refuses it. Words (`now`, `today`,
/// `infinity`) are refused: they would make a replay store something else.
pub fn parse_datetime(text: &str) -> Result<Instant, DateTimeError> {
    let utc = crate::sql::datetime::parse(text, crate::sql::datetime::EndOfDay::Refuse)?;
    let utc = crate::sql::datetime::round(utc, 100)?;
    if utc.year() < 1 {
        return Err(DateTimeError::OutOfRange);
    }
    let total = utc.duration_since(DAY_ZERO).as_nanos() / 100;
    let days = u32::try_from(total / TICKS_PER_DAY).map_err(|_| DateTimeError::OutOfRange)?;
    let ticks = u64::try_from(total % TICKS_PER_DAY).map_err(|_| DateTimeError::OutOfRange)?;
    Ok(Instant { days, ticks })
}

/// What kind of value a column takes, which is also its staging column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ValueKind {
    /// `NVARCHAR`.
    Text,
    /// `BIGINT`.
    BigInt,
    /// `FLOAT`.
    Float,
    /// `BIT`.
    Bit,
    /// `DATETIMEOFFSET(7)`, UTC.
    DateTime,
}

impl ValueKind {
    fn stage_type(self) -> &'static str {
        match self {
            ValueKind::Text => "NVARCHAR(MAX)",
            ValueKind::BigInt => "BIGINT",
            ValueKind::Float => "FLOAT",
            ValueKind::Bit => "BIT",
            ValueKind::DateTime => "DATETIMEOFFSET(7)",
        }
    }

    fn null(self) -> Param {
        match self {
            ValueKind::Text => Param::Text(None),
            ValueKind::BigInt => Param::BigInt(None),
            ValueKind::Float => Param::Float(None),
            ValueKind::Bit => Param::Bit(None),
            ValueKind::DateTime => Param::DateTime(None),
        }
    }
}

/// One bound value. Strings travel as `NVARCHAR` (UTF-16), so any Unicode text is exact.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `NVARCHAR`.
    Text(Option<String>),
    /// `BIGINT`.
    BigInt(Option<i64>),
    /// `FLOAT`.
    Float(Option<f64>),
    /// `BIT`.
    Bit(Option<bool>),
    /// `DATETIMEOFFSET(7)` with offset 0.
    DateTime(Option<Instant>),
}

impl ToSql for Param {
    fn to_sql(&self) -> ColumnData<'_> {
        match self {
            Param::Text(v) => ColumnData::String(v.as_deref().map(Cow::Borrowed)),
            Param::BigInt(v) => ColumnData::I64(*v),
            Param::Float(v) => ColumnData::F64(*v),
            Param::Bit(v) => ColumnData::Bit(*v),
            Param::DateTime(v) => ColumnData::DateTimeOffset(
                v.map(|i| DateTimeOffset::new(DateTime2::new(Date::new(i.days), Time::new(i.ticks, 7)), 0)),
            ),
        }
    }
}

/// A number as exact decimal text, digit for digit, in plain notation (SQL Server's conversion
/// to DECIMAL does not read exponents); see [`crate::number`].
#[cfg(test)]
pub(super) fn number_text(n: &serde_json::Number) -> String {
    crate::number::exact_text(n)
}

/// A value as the text a text-like column stores: strings as they are, booleans `true`/`false`,
/// numbers exactly, objects and arrays as compact JSON. A column whose schema type is object or
/// array, or whose destination type is `json`, always gets JSON text (a string becomes a JSON
/// string), so it stays valid JSON for `OPENJSON`/`JSON_VALUE`.
pub(super) fn value_text(v: &Value, json: bool) -> String {
    if json {
        return v.to_string();
    }
    crate::sql::text_of(v, false).into_owned()
}

fn integer_of(v: &Value) -> Option<i64> {
    match v {
        // A whole value (`3.0`, `1e3`) is the integer, exactly; it must fit in i64.
        Value::Number(n) => crate::number::integer_text(n).and_then(|t| t.parse().ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn bit_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// How one schema column is written: its destination column, value conversion and staging type.
#[derive(Debug)]
pub(super) struct ColumnPlan<'s> {
    pub(super) name: &'s str,
    pub(super) quoted: String,
    pub(super) kind: ValueKind,
    /// JSON text is written (schema object/array, or a `json` column).
    pub(super) json: bool,
    /// The type of this column in the staging table: the destination's own type (and collation)
    /// for primary-key columns, so the MERGE join compares like with like; the value kind's type
    /// otherwise.
    pub(super) stage_type: String,
    /// JSON default for a missing or null value (`{}`/`[]`), as EDS writes for not-null object
    /// and array columns.
    pub(super) default: Option<&'static str>,
}

impl ColumnPlan<'_> {
    fn rejected(&self, table: &str, v: &Value, what: &str) -> DriverError {
        DriverError::new(
            ErrorClass::Rejected,
            format!("SQL Server: column {:?} of table {table:?}: {v} is not {what}", self.name),
        )
    }

    /// The value to bind, or why the column cannot take it. Booleans and integers stay NULL when
    /// missing (EDS wrote 0).
    pub(super) fn cell(&self, value: Option<&Value>, table: &str) -> Result<Param, DriverError> {
        let v = match value {
            None | Some(Value::Null) => {
                return Ok(match self.default {
                    Some(d) => Param::Text(Some(d.to_owned())),
                    None => self.kind.null(),
                })
            }
            Some(v) => v,
        };
        match self.kind {
            ValueKind::Text => Ok(Param::Text(Some(value_text(v, self.json)))),
            ValueKind::BigInt => {
                integer_of(v).map(|i| Param::BigInt(Some(i))).ok_or_else(|| self.rejected(table, v, "a 64-bit integer"))
            }
            ValueKind::Float => {
                float_of(v).map(|f| Param::Float(Some(f))).ok_or_else(|| self.rejected(table, v, "a number"))
            }
            ValueKind::Bit => {
                bit_of(v).map(|b| Param::Bit(Some(b))).ok_or_else(|| self.rejected(table, v, "a boolean"))
            }
            ValueKind::DateTime => match v {
                Value::String(s) => match parse_datetime(s) {
                    Ok(instant) => Ok(Param::DateTime(Some(instant))),
                    Err(DateTimeError::NotIso8601) => Err(self.rejected(table, v, "an ISO-8601 date-time")),
                    Err(DateTimeError::OutOfRange) => {
                        Err(self.rejected(table, v, "a date-time SQL Server can hold (years 1 to 9999)"))
                    }
                },
                _ => Err(self.rejected(table, v, "an ISO-8601 date-time")),
            },
        }
    }
}

impl Prepare for ColumnPlan<'_> {
    type Cell<'v> = Param;

    fn name(&self) -> &str {
        self.name
    }

    fn cell<'v>(&self, value: Option<&'v Value>, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        ColumnPlan::cell(self, value, table)
    }

    fn key_cell<'v>(&self, key: &'v str, table: &str) -> Result<Self::Cell<'v>, DriverError> {
        ColumnPlan::cell(self, Some(&Value::String(key.to_owned())), table)
    }

    fn key<'c>(cell: &'c Param) -> KeyPart<'c> {
        match cell {
            Param::Text(t) => t.as_deref().map_or(KeyPart::Null, KeyPart::Text),
            Param::BigInt(i) => i.map_or(KeyPart::Null, |i| KeyPart::Int(i128::from(i))),
            Param::Float(f) => f.map_or(KeyPart::Null, |f| KeyPart::Float(f.to_bits())),
            Param::Bit(b) => b.map_or(KeyPart::Null, KeyPart::Bool),
            Param::DateTime(d) => {
                d.map_or(KeyPart::Null, |d| KeyPart::Int(i128::from(d.days) * TICKS_PER_DAY + i128::from(d.ticks)))
            }
        }
    }
}

/// How each column of `schema` is written to `info`'s table, in schema column order. A column
/// missing at the destination is a [`ErrorClass::Transient`] error (the caller drops its cache).
pub(super) fn column_plans<'s>(schema: &'s Schema, info: &TableInfo) -> Result<Vec<ColumnPlan<'s>>, DriverError> {
    let table = schema.table();
    schema
        .columns()
        .iter()
        .map(|c| {
            let Some(dest) = info.columns.get(&c.name) else {
                return Err(DriverError::new(
                    ErrorClass::Transient,
                    format!("SQL Server: column {:?} of table {table:?} is missing at the destination", c.name),
                ));
            };
            let kind = dest.storage.value_kind();
            let stage_type = match (&dest.type_sql, c.primary_key) {
                (Some(t), true) => match &dest.collation {
                    Some(collation) => format!("{t} COLLATE {collation}"),
                    None => t.clone(),
                },
                _ => kind.stage_type().to_owned(),
            };
            let default = plan::json_default(c);
            let json = matches!(c.kind, ColumnType::Object | ColumnType::Array { .. }) || dest.storage == Storage::Json;
            Ok(ColumnPlan { name: &c.name, quoted: quote_ident(&c.name)?, kind, json, stage_type, default })
        })
        .collect()
}
