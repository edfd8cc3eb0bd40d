//! Streaming readers. A reader holds one decoded frame at a time, so replaying a week of backlog
//! needs memory for one frame, not for the log.
//!
//! Invariant: a reader never returns a record above the durable LSN.

use crate::error::{Error, Result};
use crate::frame::{FrameError, RecordIter};
use crate::log::{read, wait_durable, Inner};
use crate::segment::{FrameScanner, ScanError, SEGMENT_HEADER_LEN};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its LSN.
    pub lsn: u64,
    /// Unix microseconds when its batch was appended.
    pub appended_at: u64,
    /// The bytes appended.
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct CurrentFrame {
    first_lsn: u64,
    count: u32,
    appended_at: u64,
    raw: Vec<u8>,
    index: u32,
    offset: usize,
}

#[derive(Debug)]
struct OpenSegment {
    first: u64,
    scanner: FrameScanner,
    /// LSN the next frame of this segment must start with.
    expected: u64,
}

/// Reads records in LSN order from a starting LSN. Not `Sync`: one reader per consumer.
#[derive(Debug)]
pub struct Reader {
    inner: Arc<Inner>,
    next_lsn: u64,
    segment: Option<OpenSegment>,
    frame: Option<CurrentFrame>,
}

impl Reader {
    pub(crate) fn new(inner: Arc<Inner>, next_lsn: u64) -> Reader {
        Reader { inner, next_lsn, segment: None, frame: None }
    }

    /// LSN of the record the next successful [`Reader::next`] returns.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Block until a record at or after [`Reader::next_lsn`] is durable, or `timeout` passes.
    /// Returns whether one is available.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        wait_durable(&self.inner, self.next_lsn, timeout)
    }

    /// The next durable record, or `None` when the reader has caught up.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some(f) = &mut self.frame {
                while f.index < f.count {
                    let lsn = f.first_lsn + u64::from(f.index);
                    // Resume where the last call stopped without re-walking the body.
                    let mut it = RecordIter::resume(&f.raw, f.count, f.offset, f.index);
                    let data = match it.next_record() {
                        Ok(d) => d,
                        Err(reason) => {
                            // Unreachable in practice: decode_body validated the layout.
                            let segment = self.segment.as_ref().map(|s| s.first).unwrap_or(0);
                            let offset = self.segment.as_ref().map(|s| s.scanner.offset()).unwrap_or(0);
                            return Err(Error::Corrupt { segment: self.inner.segment_path(segment), offset, reason });
                        }
                    };
                    f.offset = it.offset();
                    f.index += 1;
                    if lsn >= self.next_lsn {
                        self.next_lsn = lsn + 1;
                        return Ok(Some(Record { lsn, appended_at: f.appended_at, data: data.to_vec() }));
                    }
                }
                self.frame = None;
            }
            if !self.load_frame()? {
                return Ok(None);
            }
        }
    }

    /// Load the next frame holding `next_lsn` or later. False when caught up.
    fn load_frame(&mut self) -> Result<bool> {
        loop {
            let durable = self.inner.durable();
            if self.next_lsn > durable.lsn {
                if self.inner.is_poisoned() {
                    return Err(self.inner_poison());
                }
                return Ok(false);
            }
            if self.segment.is_none() {
                self.open_segment_for(self.next_lsn)?;
            }
            let Some(seg) = self.segment.as_mut() else { return Ok(false) };
            let sealed = seg.first != durable.segment;
            let end = if sealed {
                // A sealed segment never changes again: read it to its final length.
                read(&self.inner.segments).get(&seg.first).map(|m| m.bytes)
            } else {
                Some(durable.offset)
            };
            match end {
                Some(end) => seg.scanner.set_end(end),
                None => return Err(Error::LsnBelowOldest { lsn: self.next_lsn, oldest: self.inner.oldest_lsn() }),
            }
            let offset = seg.scanner.offset();
            if let Some(h) = read(&self.inner.holes).iter().find(|h| h.segment == seg.first && h.offset == offset) {
                seg.scanner.seek(offset + h.len);
                seg.expected = h.last_lsn + 1;
                self.next_lsn = self.next_lsn.max(h.last_lsn + 1);
                continue;
            }
            let path = self.inner.segment_path(seg.first);
            let header_only = seg.scanner.next_frame(false);
            let found = match header_only {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if !sealed {
                        // Durable position is in this segment and we reached it.
                        return Ok(false);
                    }
                    let after = seg.first;
                    let expected = seg.expected;
                    self.segment = None;
                    self.next_segment(after, expected)?;
                    continue;
                }
                Err(ScanError::Frame { offset, reason }) => {
                    return Err(Error::Corrupt { segment: path, offset, reason })
                }
                Err(ScanError::Io { source, .. }) => return Err(Error::Io { op: "read", path, source }),
            };
            if found.header.first_lsn != seg.expected {
                return Err(Error::Corrupt {
                    segment: path,
                    offset: found.offset,
                    reason: FrameError::LsnMismatch { expected: seg.expected, found: found.header.first_lsn },
                });
            }
            seg.expected = found.header.last_lsn() + 1;
            if found.header.last_lsn() < self.next_lsn {
                continue; // skip without reading the body
            }
            seg.scanner.seek(found.offset);
            let with_body = seg.scanner.next_frame(true).and_then(|f| {
                let f = f.ok_or(ScanError::Frame {
                    offset: found.offset,
                    reason: FrameError::Truncated { needed: found.header.frame_len(), available: 0 },
                })?;
                seg.scanner.decode(&f).map(|raw| (f, raw))
            });
            let (f, raw) = match with_body {
                Ok(v) => v,
                Err(ScanError::Frame { offset, reason }) => {
                    return Err(Error::Corrupt { segment: path, offset, reason })
                }
                Err(ScanError::Io { source, .. }) => return Err(Error::Io { op: "read", path, source }),
            };
            self.frame = Some(CurrentFrame {
                first_lsn: f.header.first_lsn,
                count: f.header.record_count,
                appended_at: f.header.appended_at,
                raw,
                index: 0,
                offset: 0,
            });
            return Ok(true);
        }
    }

    /// The failure that poisoned the log, as every other call reports it.
    fn inner_poison(&self) -> Error {
        match self.inner.check_poison() {
            Err(e) => e,
            Ok(()) => Error::Poisoned { op: "write", path: self.inner.dir.clone(), cause: "an earlier failure".into() },
        }
    }

    fn open_segment_for(&mut self, lsn: u64) -> Result<()> {
        let first = {
            let segs = read(&self.inner.segments);
            let oldest = segs.keys().next().copied().unwrap_or(1);
            if lsn < oldest {
                return Err(Error::LsnBelowOldest { lsn, oldest });
            }
            match segs.range(..=lsn).next_back() {
                Some((&first, _)) => first,
                None => return Err(Error::LsnBelowOldest { lsn, oldest }),
            }
        };
        self.open(first, first)
    }

    fn next_segment(&mut self, after: u64, expected: u64) -> Result<()> {
        let next = read(&self.inner.segments).range((Bound::Excluded(after), Bound::Unbounded)).next().map(|(k, _)| *k);
        match next {
            Some(first) if first == expected => self.open(first, first),
            Some(first) => Err(Error::SegmentGap {
                segment: self.inner.segment_path(first),
                found: first,
                expected_after: expected - 1,
            }),
            None => {
                let oldest = self.inner.oldest_lsn();
                Err(Error::LsnBelowOldest { lsn: self.next_lsn, oldest })
            }
        }
    }

    fn open(&mut self, first: u64, expected: u64) -> Result<()> {
        let path = self.inner.segment_path(first);
        let file = match self.inner.storage.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Deleted by retention between the lookup and the open.
                let oldest = self.inner.oldest_lsn();
                return Err(Error::LsnBelowOldest { lsn: self.next_lsn, oldest });
            }
            Err(e) => return Err(Error::Io { op: "open", path, source: e }),
        };
        let len = file.len().map_err(|source| Error::Io { op: "stat", path: path.clone(), source })?;
        let mut header = vec![0u8; SEGMENT_HEADER_LEN.min(len) as usize];
        file.read_exact_at(&mut header, 0).map_err(|source| Error::Io { op: "read", path: path.clone(), source })?;
        crate::segment::check_header(&header, first)
            .map_err(|reason| Error::SegmentHeader { segment: path.clone(), reason })?;
        let scanner = FrameScanner::new(file, SEGMENT_HEADER_LEN, len, crate::frame::MAX_FRAME_BYTES);
        self.segment = Some(OpenSegment { first, scanner, expected });
        Ok(())
    }
}
