//! What the SQL destinations share: the state planner (`plan`) and, for the dialects that
//! convert date-times themselves, one ISO-8601 reader ([`datetime`]). A dialect renders SQL and
//! binds values; it plans nothing and parses no calendar of its own.

#[cfg(any(feature = "mysql", feature = "sqlserver"))]
pub mod datetime;
pub(crate) mod plan;
