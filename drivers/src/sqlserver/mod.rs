//! SQL Server destination: the current state of every table, kept by MERGE upserts and deletes.
//! A state destination.
//!
//! Invariant: one batch is one transaction — it is applied whole or not at all, so one rejected
//! row fails the batch with [`ErrorClass::Rejected`](crate::driver::ErrorClass::Rejected) and
//! leaves nothing behind — and applying a batch twice leaves the same rows as applying it once
//! (upserts and deletes by primary key). Tables are only ever created or widened: never dropped,
//! no column dropped or retyped. No value is ever put into SQL text.

mod catalog;
mod cells;
mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use catalog::ddl_type;
pub use cells::{parse_datetime, DateTimeError, Instant, Param};
pub use config::{connect_spec, redact, ConnectSpec, Encryption, Trust, DEFAULT_PORT, DESCRIPTION};
pub use sink::{
    classify, classify_number, quote_ident, GroupSql, SqlServerDriver, Statement, MAX_INSERT_ROWS, MAX_STATEMENT_PARAMS,
};

/// The SQL Server driver for a URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(SqlServerDriver::new(url)?))
}
