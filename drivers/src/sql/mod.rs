//! What the SQL destinations share: the state planner (`plan`), the text a text-taking column
//! gets (`text_of`) and, for the dialects that convert date-times themselves, one ISO-8601
//! reader ([`datetime`]). A dialect renders SQL and binds values; it plans nothing and parses no
//! calendar of its own.

use serde_json::Value;
use std::borrow::Cow;

#[cfg(any(feature = "mysql", feature = "sqlserver", feature = "snowflake"))]
pub mod datetime;
pub(crate) mod plan;

/// `name` between `open` and `close`, every `close` inside doubled: the one quoting of table and
/// column names every SQL dialect uses. A name that is empty, holds a NUL byte, or has the
/// dialect's own `problem` (its length limit, characters it cannot hold) is an
/// [`ErrorClass::Rejected`](crate::driver::ErrorClass::Rejected) error naming it.
pub(crate) fn quote_identifier(
    dialect: &str,
    name: &str,
    (open, close): (char, char),
    problem: impl FnOnce(&str) -> Option<&'static str>,
) -> Result<String, crate::driver::DriverError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        problem(name)
    };
    if let Some(problem) = problem {
        return Err(crate::driver::DriverError::new(
            crate::driver::ErrorClass::Rejected,
            format!("{dialect}: the name {name:?} {problem}, so it cannot be a table or column name"),
        ));
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push(open);
    for ch in name.chars() {
        if ch == close {
            out.push(close);
        }
        out.push(ch);
    }
    out.push(close);
    Ok(out)
}

/// A JSON value as the text a text-taking column stores: strings as they are (borrowed),
/// booleans `true`/`false`, numbers digit for digit as the event carried them (a whole value for
/// an integer column as an integer, see [`crate::number::column_text`]), objects and arrays as
/// compact JSON.
pub(crate) fn text_of(v: &Value, integer_column: bool) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Number(n) => Cow::Owned(crate::number::column_text(n, integer_column)),
        _ => Cow::Owned(v.to_string()),
    }
}
