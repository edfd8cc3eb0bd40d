//! eds: store-and-forward gateway for Shopmonkey change-data capture.
//!
//! The binary's logic lives here so integration tests can drive it; `main.rs` only maps the
//! outcome to an exit code. Dependency direction: this crate uses `eds-wal` and `eds-drivers`;
//! neither of them knows about it.

pub mod cli;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod demo_schemas;
pub mod dlq;
pub mod drain;
pub mod enroll;
pub mod exit;
pub mod hq;
pub mod http;
pub mod import;
pub mod ingest;
pub mod integrationtest;
pub mod logging;
pub mod metrics;
pub mod record;
pub mod registry;
pub mod sample;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod supervisor;
pub mod timefmt;
pub mod tracker;
pub mod upgrade;
pub mod validator;
mod wal_cmd;

/// The version string: `EDS_VERSION` from the build environment when set (release builds),
/// else the package version.
pub const VERSION: &str = match option_env!("EDS_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
