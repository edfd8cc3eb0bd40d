//! What the SQL destinations share: the state planner (`plan`), the text a text-taking column
//! gets (`text_of`) and, for the dialects that convert date-times themselves, one ISO-8601
//! reader ([`datetime`]). A dialect renders SQL and binds values; it plans nothing and parses no
//! calendar of its own.

use serde_json::Value;
use std::borrow::Cow;

#[cfg(any(feature = "mysql", feature = "sqlserver", feature = "snowflake"))]
pub mod datetime;
pub(crate) mod plan;

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
