//! Whole-log reports for operators: what `eds wal inspect` and `eds wal verify` print.
//! These read every frame header (inspect) or every frame (verify); the server never calls them.

use crate::error::{Error, Result};
use crate::frame::FrameHeader;
use crate::holes::Hole;
use crate::log::{read, Wal};
use crate::segment::{self, FrameScanner, ScanError, SEGMENT_HEADER_LEN};
use std::path::PathBuf;

/// One segment as inspect sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentReport {
    /// File name.
    pub name: String,
    /// First LSN (from the name).
    pub first_lsn: u64,
    /// Last LSN in it, `None` when it holds no record.
    pub last_lsn: Option<u64>,
    /// File bytes counted (up to the durable end for the active segment).
    pub bytes: u64,
    /// Frames.
    pub frames: u64,
    /// Records.
    pub records: u64,
    /// Record bytes before compression (bodies, including the 4-byte length prefixes).
    pub raw_bytes: u64,
    /// Body bytes as stored.
    pub stored_bytes: u64,
    /// Append time of the first frame, unix microseconds.
    pub first_appended_at: Option<u64>,
    /// Append time of the last frame, unix microseconds.
    pub last_appended_at: Option<u64>,
    /// Why the scan stopped early, if it did.
    pub problem: Option<String>,
}

impl SegmentReport {
    /// Raw bytes divided by stored bytes (1.0 when nothing is stored).
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            1.0
        } else {
            self.raw_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// One cursor as inspect sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorReport {
    /// Name.
    pub name: String,
    /// Position (LSN of the last consumed record): in memory for the handle's own cursors, as
    /// persisted for a read-only open.
    pub position: u64,
    /// Records not yet consumed.
    pub lag_records: u64,
    /// On-disk bytes of the frames holding unconsumed records.
    pub lag_bytes: u64,
    /// Append time of the oldest unconsumed record, unix microseconds.
    pub oldest_pending_at: Option<u64>,
}

/// A whole-log report.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    /// Log directory.
    pub dir: PathBuf,
    /// Oldest LSN kept.
    pub oldest_lsn: u64,
    /// Last durable LSN.
    pub head_lsn: u64,
    /// Segments, oldest first.
    pub segments: Vec<SegmentReport>,
    /// Cursors, by name.
    pub cursors: Vec<CursorReport>,
    /// Cursor files that could not be read.
    pub cursor_problems: Vec<String>,
    /// Recorded holes.
    pub holes: Vec<Hole>,
    /// An unsynced tail that a writable open would cut (or did cut).
    pub pending_cut: Option<crate::Cut>,
}

impl Inspection {
    /// Sum of segment bytes.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Sum of records.
    pub fn total_records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
}

/// A problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Segment file.
    pub segment: PathBuf,
    /// Byte offset.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Segments checked.
    pub segments: u64,
    /// Frames whose checksum and body were checked.
    pub frames: u64,
    /// Records in them.
    pub records: u64,
    /// Every problem, in log order.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Copy)]
struct FrameSummary {
    last_lsn: u64,
    bytes: u64,
    appended_at: u64,
}

fn chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

impl Wal {
    fn segment_list(&self) -> Vec<(u64, u64)> {
        read(&self.inner.segments).iter().map(|(k, m)| (*k, m.bytes)).collect()
    }

    fn scan_segment(&self, first: u64, end: u64) -> Result<FrameScanner> {
        let path = self.inner.segment_path(first);
        let file = self.inner.storage.open(&path, false).map_err(|source| Error::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        let mut header = vec![0u8; SEGMENT_HEADER_LEN.min(end) as usize];
        file.read_exact_at(&mut header, 0).map_err(|source| Error::Io { op: "read", path: path.clone(), source })?;
        segment::check_header(&header, first).map_err(|reason| Error::SegmentHeader { segment: path, reason })?;
        Ok(FrameScanner::new(file, SEGMENT_HEADER_LEN, end, crate::frame::MAX_FRAME_BYTES))
    }

    /// Report segments, cursors with their lag, holes and totals. Reads every frame header.
    pub fn inspect(&self) -> Result<Inspection> {
        let mut segments = Vec::new();
        let mut frames: Vec<FrameSummary> = Vec::new();
        for (first, bytes) in self.segment_list() {
            let mut rep = SegmentReport {
                name: segment::segment_name(first),
                first_lsn: first,
                last_lsn: None,
                bytes,
                frames: 0,
                records: 0,
                raw_bytes: 0,
                stored_bytes: 0,
                first_appended_at: None,
                last_appended_at: None,
                problem: None,
            };
            match self.scan_segment(first, bytes) {
                Err(e) => rep.problem = Some(chain(&e)),
                Ok(mut scanner) => loop {
                    match scanner.next_frame(false) {
                        Ok(Some(f)) => {
                            let h: FrameHeader = f.header;
                            rep.frames += 1;
                            rep.records += u64::from(h.record_count);
                            rep.raw_bytes += u64::from(h.raw_len);
                            rep.stored_bytes += u64::from(h.body_len);
                            rep.last_lsn = Some(h.last_lsn());
                            rep.first_appended_at.get_or_insert(h.appended_at);
                            rep.last_appended_at = Some(h.appended_at);
                            frames.push(FrameSummary {
                                last_lsn: h.last_lsn(),
                                bytes: h.frame_len(),
                                appended_at: h.appended_at,
                            });
                        }
                        Ok(None) => break,
                        Err(e) => {
                            rep.problem = Some(chain(&e));
                            break;
                        }
                    }
                },
            }
            segments.push(rep);
        }
        let head = self.durable_lsn();
        let cursors = self
            .cursors()
            .into_iter()
            .map(|c| {
                let (name, position) = (c.name, c.position);
                let pending = frames.iter().filter(|f| f.last_lsn > position);
                CursorReport {
                    name,
                    position,
                    lag_records: head.saturating_sub(position),
                    lag_bytes: pending.clone().map(|f| f.bytes).sum(),
                    oldest_pending_at: pending.clone().next().map(|f| f.appended_at),
                }
            })
            .collect();
        Ok(Inspection {
            dir: self.dir().to_path_buf(),
            oldest_lsn: self.oldest_lsn(),
            head_lsn: head,
            segments,
            cursors,
            cursor_problems: self.recovery().cursor_problems.clone(),
            holes: self.holes(),
            pending_cut: self.recovery().cut.clone(),
        })
    }

    /// Check every frame's checksum, body and LSN continuity, within and across segments.
    /// Keeps going after a problem (resuming at the next valid frame) so one run lists them all.
    pub fn verify(&self) -> Result<Verification> {
        let mut v = Verification::default();
        let holes = self.holes();
        let mut expected: Option<u64> = None;
        for (first, bytes) in self.segment_list() {
            v.segments += 1;
            let path = self.inner.segment_path(first);
            if let Some(e) = expected {
                if first != e {
                    v.problems.push(Problem {
                        segment: path.clone(),
                        offset: 0,
                        message: format!("segment starts at LSN {first}, previous segment ends at LSN {}", e - 1),
                    });
                }
            }
            expected = Some(first);
            let mut scanner = match self.scan_segment(first, bytes) {
                Ok(s) => s,
                Err(e) => {
                    v.problems.push(Problem { segment: path, offset: 0, message: chain(&e) });
                    expected = None;
                    continue;
                }
            };
            loop {
                let offset = scanner.offset();
                if let Some(h) = holes.iter().find(|h| h.segment == first && h.offset == offset) {
                    scanner.seek(offset + h.len);
                    expected = Some(h.last_lsn + 1);
                    continue;
                }
                let failure = match scanner.next_frame(true) {
                    Ok(None) => break,
                    Ok(Some(f)) => match scanner.decode(&f) {
                        Ok(_) => {
                            v.frames += 1;
                            v.records += u64::from(f.header.record_count);
                            if let Some(e) = expected {
                                if f.header.first_lsn != e {
                                    v.problems.push(Problem {
                                        segment: path.clone(),
                                        offset: f.offset,
                                        message: format!("frame starts at LSN {}, expected {e}", f.header.first_lsn),
                                    });
                                }
                            }
                            expected = Some(f.header.last_lsn() + 1);
                            continue;
                        }
                        Err(e) => e,
                    },
                    Err(e) => e,
                };
                match failure {
                    ScanError::Io { .. } => {
                        v.problems.push(Problem { segment: path.clone(), offset, message: chain(&failure) });
                        break;
                    }
                    ScanError::Frame { offset, ref reason } => {
                        v.problems.push(Problem { segment: path.clone(), offset, message: chain(reason) });
                        match scanner.find_valid_frame(offset + 1) {
                            Ok(Some(next)) => {
                                scanner.seek(next.offset);
                                expected = None;
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        Ok(v)
    }
}
