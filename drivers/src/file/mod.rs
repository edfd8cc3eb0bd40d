//! File destination: every event as a JSON file, `<dir>/<table>/<unix seconds>-<primary key>.json`
//! (EDS's layout). A stream destination.
//!
//! Invariant: a file name is a pure function of the event and its LSN, and a file is only ever
//! created whole (written to a temporary name, then renamed), so replaying a batch writes nothing
//! new.

mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{directory_from_url, DESCRIPTION};
pub use sink::FileDriver;

/// The file driver for a `file://` URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(FileDriver::new(directory_from_url(url)?)))
}
