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
pub use options::{CursorPersist, Durability, Options, RecoveryMode, SharedBytes};
pub use reader::{Reader, Record};
pub use storage::{FaultyStorage, StdStorage, Storage, StorageFile};

/// An error and its causes on one line, `outer: inner: innermost`, each cause said once: a cause
/// whose text the line already holds is left out, and so is a wrapper that only repeats its own
/// cause behind a generic prefix (`error returned from database: <the cause>`) once that cause
/// is said.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut texts = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        texts.push(c.to_string());
        cause = c.source();
    }
    let mut s = e.to_string();
    for (i, text) in texts.iter().enumerate() {
        let said = |t: &str| !t.is_empty() && s.contains(t);
        let repeats_next = texts.get(i + 1).is_some_and(|next| text.ends_with(next.as_str()) && said(next));
        if text.is_empty() || said(text) || repeats_next {
            continue;
        }
        s.push_str(": ");
        s.push_str(text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct E(String, Option<Box<E>>);

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn chain(texts: &[&str]) -> E {
        texts
            .iter()
            .rev()
            .fold(None, |inner, t| Some(E((*t).to_owned(), inner.map(Box::new))))
            .unwrap_or(E(String::new(), None))
    }

    #[test]
    fn each_cause_is_said_once() {
        // A driver error that already quotes the database's message, over sqlx's wrapper of it.
        let e = chain(&[
            "PostgreSQL: upserting 1 rows into table \"t\" failed: SQLSTATE P0001: refused by a trigger",
            "error returned from database: refused by a trigger",
            "refused by a trigger",
        ]);
        assert_eq!(
            error_chain(&e),
            "PostgreSQL: upserting 1 rows into table \"t\" failed: SQLSTATE P0001: refused by a trigger"
        );
        // Context over a cause that says something new keeps both.
        let e = chain(&["opening the WAL at /x", "permission denied (os error 13)"]);
        assert_eq!(error_chain(&e), "opening the WAL at /x: permission denied (os error 13)");
        let e = chain(&["reading a", "reading a", "disk: EIO"]);
        assert_eq!(error_chain(&e), "reading a: disk: EIO");
    }
}
