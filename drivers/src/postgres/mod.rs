//! PostgreSQL destination: the current state of every table, kept by upserts and deletes. A state
//! destination.
//!
//! Invariant: one batch is one transaction — it is applied whole or not at all, so one rejected
//! row fails the batch with [`ErrorClass::Rejected`](crate::driver::ErrorClass::Rejected) and
//! leaves nothing behind — and applying a batch twice leaves the same rows as applying it once
//! (upserts by primary key, deletes by primary key). Tables are only ever created or widened:
//! never dropped, no column dropped or retyped.

mod catalog;
mod config;
mod fresh;
mod sink;
#[cfg(test)]
mod tests;

pub use catalog::ddl_type;
pub use config::{connect_options, redact, DESCRIPTION};
pub use sink::{classify, classify_sqlstate, quote_ident, PostgresDriver, COPY_THRESHOLD};

/// The PostgreSQL driver for a URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(PostgresDriver::new(url)?))
}
