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
pub mod schema;
