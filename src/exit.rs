//! Exit codes, and the error that means "the command line is wrong" (exit code 2).
//!
//! 0 success, 1 failure (including `wal verify` finding damage), 2 usage error; 130 is a second
//! SIGINT/SIGTERM during `eds server`'s shutdown.

/// Exit code for a failure.
pub const FAILURE: u8 = 1;
/// Exit code for a usage error (bad flag or argument).
pub const USAGE: u8 = 2;

/// A usage error found after parsing (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit code of a worker that asks its supervisor to start it again at once (a restart or an
/// upgrade requested by HQ, a new configuration). Not a failure.
pub const RESTART: u8 = 4;
