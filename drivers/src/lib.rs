//! Destination drivers for eds.
//!
//! This crate will hold the change-event model, the schema model, the `Driver` trait and one
//! module per destination, each behind a cargo feature of the same name. It never depends on
//! `eds-wal`: drivers see decoded change events, not log records.
//!
//! The WAL issue only creates the crate so the workspace has its final shape; the delivery
//! issue fills it.
