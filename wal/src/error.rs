//! Errors of the log. Every variant names what failed and where (segment file, byte offset,
//! cursor), so an operator can act on the message alone.

use crate::cursor::CursorFileError;
use crate::frame::{EncodeError, FrameError};
use crate::segment::SegmentHeaderError;
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the log.
#[derive(Debug, Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path} failed")]
    Io {
        /// What was being done ("write", "fsync", "open", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process holds the directory's lock.
    #[error("wal directory {dir} is in use by another process (lock file {dir}/LOCK is held)")]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// An earlier write or fsync failed; the handle refuses all work until the log is reopened.
    #[error("wal is unusable after an earlier {op} failure on {path} ({cause}); reopen it")]
    Poisoned {
        /// The operation that failed.
        op: &'static str,
        /// The file it failed on.
        path: PathBuf,
        /// Why it failed (e.g. "No space left on device"), so the cause stays in sight.
        cause: String,
    },
    /// Appending would exceed the disk budget. Nothing was written.
    #[error("wal disk budget is full: {used} bytes used, {needed} more needed, budget {budget} bytes")]
    Full {
        /// Bytes the log occupies, with the bytes outside it that count against its budget.
        used: u64,
        /// Bytes the append needed.
        needed: u64,
        /// The budget.
        budget: u64,
    },
    /// The batch could not be encoded (empty, too large, compressor failure).
    #[error("batch rejected")]
    Batch(#[from] EncodeError),
    /// Stored bytes of a frame are damaged: acknowledged data is affected.
    #[error("corrupt frame in segment {segment} at byte offset {offset}")]
    Corrupt {
        /// Segment file.
        segment: PathBuf,
        /// Byte offset of the frame in it.
        offset: u64,
        /// What is wrong.
        #[source]
        reason: FrameError,
    },
    /// A segment header is damaged or of an unknown version.
    #[error("bad header in segment {segment}")]
    SegmentHeader {
        /// Segment file.
        segment: PathBuf,
        /// What is wrong.
        #[source]
        reason: SegmentHeaderError,
    },
    /// Segments do not continue each other: one is missing.
    #[error("segment {segment} starts at LSN {found}, but the previous segment ends at LSN {expected_after}")]
    SegmentGap {
        /// The segment after the gap.
        segment: PathBuf,
        /// Its first LSN.
        found: u64,
        /// The previous segment's last LSN.
        expected_after: u64,
    },
    /// A cursor file is damaged.
    #[error("cursor file {path} is unreadable")]
    CursorFile {
        /// The cursor file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        reason: CursorFileError,
    },
    /// A cursor is positioned after the last record in the log.
    #[error("cursor {cursor:?} is at LSN {position}, beyond the log's last record {head}")]
    CursorBeyondHead {
        /// Cursor name.
        cursor: String,
        /// Its position.
        position: u64,
        /// Last LSN in the log.
        head: u64,
    },
    /// A cursor needs records that retention or an operator already deleted.
    #[error("cursor {cursor:?} needs LSN {needed}, but the oldest record kept is {oldest}")]
    CursorBelowOldest {
        /// Cursor name.
        cursor: String,
        /// First LSN it still needs.
        needed: u64,
        /// Oldest LSN in the log.
        oldest: u64,
    },
    /// A read starts below the oldest record kept.
    #[error("LSN {lsn} is no longer in the log (oldest is {oldest})")]
    LsnBelowOldest {
        /// The LSN asked for.
        lsn: u64,
        /// Oldest LSN kept.
        oldest: u64,
    },
    /// An LSN after the durable head was given.
    #[error("LSN {lsn} is beyond the durable head {head}")]
    LsnBeyondHead {
        /// The LSN given.
        lsn: u64,
        /// The durable head.
        head: u64,
    },
    /// No cursor has this name.
    #[error("no cursor named {cursor:?}")]
    CursorNotFound {
        /// The name.
        cursor: String,
    },
    /// A cursor with this name already exists.
    #[error("cursor {cursor:?} already exists")]
    CursorExists {
        /// The name.
        cursor: String,
    },
    /// An advance would move a cursor backwards.
    #[error("cursor {cursor:?} is at LSN {position}; advancing to {requested} would move it backwards")]
    CursorBackwards {
        /// The name.
        cursor: String,
        /// Its position.
        position: u64,
        /// The LSN asked for.
        requested: u64,
    },
    /// The name cannot be a cursor name.
    #[error("invalid cursor name {name:?}: {reason}")]
    InvalidCursorName {
        /// The name given.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The log was opened read-only.
    #[error("wal was opened read-only")]
    ReadOnly,
    /// Options contradict each other.
    #[error("invalid wal options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// The holes file is damaged.
    #[error("holes file {path} is unreadable")]
    HolesFile {
        /// The file.
        path: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// The file or directory the error is about, when it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. } | Error::Poisoned { path, .. } | Error::HolesFile { path } => Some(path),
            Error::Locked { dir } => Some(dir),
            _ => None,
        }
    }

    /// True when the error means "no space" (the budget, or ENOSPC from the file system).
    pub fn is_full(&self) -> bool {
        match self {
            Error::Full { .. } => true,
            Error::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}
