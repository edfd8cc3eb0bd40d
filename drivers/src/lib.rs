//! Destination drivers for eds.
//!
//! This crate holds the change-event model ([`event`]), the schema model ([`schema`]), and —
//! as the delivery issue lands — the `Driver` trait and one module per destination, each behind a
//! cargo feature of the same name. It never depends on `eds-wal`: drivers see decoded change
//! events, not log records.

pub mod conformance;
pub mod driver;
pub mod event;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod number;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod schema;
#[cfg(feature = "sqlserver")]
pub mod sqlserver;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod sqltx;
pub mod url;

/// Every driver compiled into this build, in a stable order.
pub fn descriptions() -> Vec<&'static driver::Description> {
    let all: &[&'static driver::Description] = &[
        #[cfg(feature = "file")]
        &file::DESCRIPTION,
        #[cfg(feature = "postgres")]
        &postgres::DESCRIPTION,
        #[cfg(feature = "mysql")]
        &mysql::DESCRIPTION,
        #[cfg(feature = "sqlserver")]
        &sqlserver::DESCRIPTION,
    ];
    all.to_vec()
}

/// The driver for a URL scheme or one of its aliases (case-insensitive).
pub fn find(scheme: &str) -> Option<&'static driver::Description> {
    descriptions()
        .into_iter()
        .find(|d| d.scheme.eq_ignore_ascii_case(scheme) || d.aliases.iter().any(|a| a.eq_ignore_ascii_case(scheme)))
}
