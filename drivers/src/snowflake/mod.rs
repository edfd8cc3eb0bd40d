//! Snowflake destinations: `snowflake://` (user and password, EDS's deprecated form) and
//! `snowflake-keypair://` (key pair, JWT). State destinations on the shared planner, over a thin
//! client of Snowflake's SQL REST protocol ([`client`]).
//!
//! Invariant: one batch is one transaction of the driver's session — applied whole or not at all
//! — and applying a batch twice leaves the same rows as applying it once (MERGE and DELETE by
//! primary key, each key once per statement). Tables are only ever created or widened: never
//! dropped or replaced, no column dropped or retyped. No value is ever part of SQL text.
//!
//! What the tests against fakesnow (DuckDB behind the connector's REST API) cannot prove: a real
//! warehouse's semantics (MERGE's non-determinism checks, transactions and locking, VARIANT and
//! TIMESTAMP_NTZ conversions, result chunking), authentication against a real account (fakesnow
//! accepts any password or token; the JWT is checked by the tests' own verification only), and
//! of the import's stage + `COPY INTO` ([`bulk`], [`stage`]): uploads to real cloud storage (fakesnow
//! takes them over plain HTTP through a GCS-style presigned URL and never asks for encryption;
//! the encryption is checked against the official connector's decryption and the S3 signature
//! against botocore's instead), tables of ten or more columns (fakesnow's CSV column names break
//! there), and how a real warehouse parses CSV into VARIANT and TIMESTAMP_NTZ columns.

pub mod bulk;
pub mod cells;
pub mod client;
pub mod config;
pub mod fakesnow;
pub mod keypair;
mod sink;
pub mod stage;
#[cfg(test)]
mod tests;

pub use config::{parse, Auth, SnowflakeConfig, DESCRIPTION, KEYPAIR_DESCRIPTION};
pub use sink::{create_table_sql, quote_ident, SnowflakeDriver, MAX_BIND_PARAMS};

/// The password Snowflake driver for a URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(SnowflakeDriver::new(url, &DESCRIPTION)?))
}

/// The key-pair Snowflake driver for a URL (the registry's entry point).
pub fn open_keypair(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(SnowflakeDriver::new(url, &KEYPAIR_DESCRIPTION)?))
}
