//! `eds-wal`: a segmented, compressed, checksummed write-ahead log of opaque records with named
//! cursors. Synchronous std I/O; it knows nothing of CDC, NATS or destinations.
//!
//! ```text
//! <dir>/00000000000000000001.wal   segments, named by their first LSN (see `segment`)
//! <dir>/00000000000000052113.wal
//! <dir>/cursors/<name>.cursor      one file per cursor (see `cursor`)
//! <dir>/holes                      skipped damage, only with RecoveryMode::RecordHoles
//! <dir>/LOCK                       advisory lock held by the one writer
//! ```
//!
//! The guarantee: when [`Wal::append`] returns `Ok` under [`Durability::Always`], every record of
//! the batch survives a crash or power loss, in order, under the LSNs returned. Readers never see
//! a record that is not durable yet. A write or fsync failure poisons the handle; reopening
//! recovers from what is on disk.

#![warn(missing_docs)]

pub mod cursor;
mod error;
pub mod frame;
pub mod holes;
mod inspect;
mod log;
mod options;
mod reader;
pub mod segment;
pub mod storage;

pub use error::{Error, Result};
pub use holes::Hole;
pub use inspect::{CursorReport, Inspection, Problem, SegmentReport, Verification};
pub use log::{
    Appended, CursorInfo, CursorStart, Cut, Damage, Position, Recovery, Stats, Wal, CURSOR_DIR, HOLES_FILE, LOCK_FILE,
};
pub use options::{CursorPersist, Durability, Options, RecoveryMode};
pub use reader::{Reader, Record};
pub use storage::{FaultyStorage, StdStorage, Storage, StorageFile};

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
