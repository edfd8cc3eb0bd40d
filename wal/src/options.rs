//! Options of the log. Every size is an option so tests can make them tiny.

use std::time::Duration;

/// When appended frames are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before `append` returns (concurrent appends share one fsync). The default: eds acks
    /// upstream only after an append returns.
    Always,
    /// fsync at most this often, checked at each append; `append` may return before its frame is
    /// durable. Readers still only see durable records. There is no background thread: an owner
    /// whose appends can stop must call [`crate::Wal::sync`] on its own timer, or the last records
    /// stay invisible (and not durable) until the next append.
    Interval(Duration),
    /// Never fsync; written records count as durable. For tests and benchmarks only.
    Never,
}

/// What recovery does with damage to acknowledged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open, naming the segment and byte offset. The default.
    Strict,
    /// Record the damaged range as a hole (kept in the `holes` file, reported by `inspect`),
    /// skip it, and keep going.
    RecordHoles,
}

/// When cursor positions are written to disk. Advances are in memory until then; retention only
/// trusts persisted positions, so a crash replays at most this much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorPersist {
    /// Persist a cursor when its last persist is at least this old.
    pub interval: Duration,
    /// Persist a cursor when it moved at least this many records since its last persist.
    pub records: u64,
}

impl Default for CursorPersist {
    fn default() -> Self {
        CursorPersist { interval: Duration::from_secs(1), records: 10_000 }
    }
}

/// Options of [`crate::Wal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// A segment is sealed and a new one started before a frame that would make it larger.
    pub segment_size: u64,
    /// Largest frame (header plus uncompressed body) this process writes; larger batches are
    /// refused. Reading accepts any frame up to the format's [`crate::frame::MAX_FRAME_BYTES`].
    pub max_frame_bytes: u64,
    /// Bodies of at least this many bytes are zstd-compressed.
    pub compress_threshold: usize,
    /// zstd level; 1 favours speed, negative levels are faster still.
    pub zstd_level: i32,
    /// When frames are fsynced.
    pub durability: Durability,
    /// Disk budget for all segments (and the [`Options::outside_bytes`]); `None` for no limit.
    pub max_bytes: Option<u64>,
    /// Bytes kept outside this log that count against its budget (dead-letter logs on the same
    /// disk): appends are refused when the segments and these together would pass `max_bytes`.
    pub outside_bytes: Option<SharedBytes>,
    /// When cursors are persisted.
    pub cursor_persist: CursorPersist,
    /// What recovery does with damage to acknowledged data.
    pub recovery: RecoveryMode,
}

/// A byte count shared between logs, for [`Options::outside_bytes`]. Cheap to clone; clones share
/// the count. Equal when shared.
#[derive(Debug, Clone, Default)]
pub struct SharedBytes(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedBytes {}

impl SharedBytes {
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Add `n` (saturating).
    pub fn add(&self, n: u64) {
        let _ = self.0.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |v| {
            Some(v.saturating_add(n))
        });
    }

    /// Subtract `n` (saturating at 0).
    pub fn sub(&self, n: u64) {
        let _ = self.0.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: 64 << 20,
            max_frame_bytes: 16 << 20,
            compress_threshold: 1024,
            zstd_level: 1,
            durability: Durability::Always,
            max_bytes: None,
            outside_bytes: None,
            cursor_persist: CursorPersist::default(),
            recovery: RecoveryMode::Strict,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let min_segment = crate::segment::SEGMENT_HEADER_LEN + crate::frame::FRAME_HEADER_LEN as u64 + 8;
        if self.segment_size < min_segment {
            return Err(format!("segment_size {} is below the minimum of {min_segment} bytes", self.segment_size));
        }
        if self.max_frame_bytes < 64 {
            return Err(format!("max_frame_bytes {} is below the minimum of 64 bytes", self.max_frame_bytes));
        }
        if self.max_frame_bytes > crate::frame::MAX_FRAME_BYTES {
            return Err(format!(
                "max_frame_bytes {} is above the format's limit of {} bytes",
                self.max_frame_bytes,
                crate::frame::MAX_FRAME_BYTES
            ));
        }
        if let Some(budget) = self.max_bytes {
            if budget < self.segment_size {
                return Err(format!("max_bytes {budget} is smaller than one segment ({} bytes)", self.segment_size));
            }
        }
        Ok(())
    }
}
