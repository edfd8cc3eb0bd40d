//! Segment files: a header followed by whole frames. A frame never spans two segments.
//!
//! Invariant: a segment's file name is its first LSN, zero-padded to 20 digits, and the header
//! repeats it, so a renamed or misplaced file is noticed.
//!
//! # Header layout (24 bytes, little-endian)
//!
//! ```text
//! offset size field
//!      0    8 magic           "EDSWAL\0\n"
//!      8    2 format_version  1
//!     10    2 reserved        zero
//!     12    8 first_lsn       LSN of the segment's first record (equals the file name)
//!     20    4 crc32           crc32 over bytes 0..20
//! ```

use crate::frame::{decode_body, FrameError, FrameHeader, FRAME_HEADER_LEN};
use crate::storage::StorageFile;
use std::io;
use std::sync::Arc;
use thiserror::Error;

/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"EDSWAL\0\n";
/// The segment format this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// Why a segment header is not acceptable.
#[derive(Debug, Error)]
pub enum SegmentHeaderError {
    /// The file is shorter than a header.
    #[error("segment header truncated ({len} bytes)")]
    Truncated {
        /// File length.
        len: u64,
    },
    /// The magic bytes are wrong: not a segment file.
    #[error("not a segment file (bad magic)")]
    BadMagic,
    /// The checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
    /// A format version this code does not know.
    #[error("unsupported segment format version {version} (this build reads {FORMAT_VERSION})")]
    Version {
        /// The version found.
        version: u16,
    },
    /// The header's first LSN differs from the file name.
    #[error("segment header says first LSN {header}, file name says {name}")]
    NameMismatch {
        /// First LSN in the header.
        header: u64,
        /// First LSN from the name.
        name: u64,
    },
}

/// File name of the segment whose first LSN is `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// First LSN from a segment file name, `None` for other files.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header bytes of a segment starting at `first_lsn`.
pub fn encode_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Check a segment header read from a file named for `name_lsn`.
pub fn check_header(bytes: &[u8], name_lsn: u64) -> Result<(), SegmentHeaderError> {
    let h =
        bytes.get(..SEGMENT_HEADER_LEN as usize).ok_or(SegmentHeaderError::Truncated { len: bytes.len() as u64 })?;
    if h.get(0..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err(SegmentHeaderError::BadMagic);
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(h.get(20..24).unwrap_or(&[0; 4]));
    if crc32fast::hash(h.get(0..20).unwrap_or(&[])) != u32::from_le_bytes(crc) {
        return Err(SegmentHeaderError::Checksum);
    }
    let mut v = [0u8; 2];
    v.copy_from_slice(h.get(8..10).unwrap_or(&[0; 2]));
    let version = u16::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(SegmentHeaderError::Version { version });
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(h.get(12..20).unwrap_or(&[0; 8]));
    let header = u64::from_le_bytes(l);
    if header != name_lsn {
        return Err(SegmentHeaderError::NameMismatch { header, name: name_lsn });
    }
    Ok(())
}

/// What went wrong while scanning frames.
#[derive(Debug, Error)]
pub enum ScanError {
    /// The bytes at this offset are not a valid frame.
    #[error("bad frame at byte offset {offset}")]
    Frame {
        /// Byte offset of the frame in the segment.
        offset: u64,
        /// What is wrong.
        #[source]
        reason: FrameError,
    },
    /// Reading failed.
    #[error("read failed at byte offset {offset}")]
    Io {
        /// Byte offset.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// A frame found by a [`FrameScanner`].
#[derive(Debug, Clone, Copy)]
pub struct FoundFrame {
    /// Byte offset of the frame in the segment.
    pub offset: u64,
    /// Its header.
    pub header: FrameHeader,
}

/// Reads frames of one segment in order, one frame in memory at a time.
#[derive(Debug)]
pub struct FrameScanner {
    file: Arc<dyn StorageFile>,
    offset: u64,
    end: u64,
    max_frame: u64,
    header_buf: [u8; FRAME_HEADER_LEN],
    body: Vec<u8>,
}

impl FrameScanner {
    /// Scan `file` from `offset` up to byte `end` (exclusive).
    pub fn new(file: Arc<dyn StorageFile>, offset: u64, end: u64, max_frame: u64) -> FrameScanner {
        FrameScanner { file, offset, end, max_frame, header_buf: [0; FRAME_HEADER_LEN], body: Vec::new() }
    }

    /// Offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Move to `offset` (to skip a recorded hole or resume after a bad frame).
    pub fn seek(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Raise the end, for a segment still being written.
    pub fn set_end(&mut self, end: u64) {
        self.end = end;
    }

    /// The next frame with its checksum verified and its stored body kept for
    /// [`FrameScanner::decode`]; `None` at `end`. When `with_body` is false only the header is
    /// read (fast skipping) and the checksum is not checked.
    pub fn next_frame(&mut self, with_body: bool) -> Result<Option<FoundFrame>, ScanError> {
        let offset = self.offset;
        if offset >= self.end {
            return Ok(None);
        }
        let available = self.end - offset;
        if available < FRAME_HEADER_LEN as u64 {
            return Err(ScanError::Frame {
                offset,
                reason: FrameError::Truncated { needed: FRAME_HEADER_LEN as u64, available },
            });
        }
        self.file.read_exact_at(&mut self.header_buf, offset).map_err(|source| ScanError::Io { offset, source })?;
        let header = FrameHeader::parse(&self.header_buf, self.max_frame)
            .map_err(|reason| ScanError::Frame { offset, reason })?;
        if header.frame_len() > available {
            return Err(ScanError::Frame {
                offset,
                reason: FrameError::Truncated { needed: header.frame_len(), available },
            });
        }
        if with_body {
            self.body.resize(header.body_len as usize, 0);
            self.file
                .read_exact_at(&mut self.body, offset + FRAME_HEADER_LEN as u64)
                .map_err(|source| ScanError::Io { offset, source })?;
            header.verify(&self.header_buf, &self.body).map_err(|reason| ScanError::Frame { offset, reason })?;
        }
        self.offset = offset + header.frame_len();
        Ok(Some(FoundFrame { offset, header }))
    }

    /// Decode the body of the frame last returned with its body.
    pub fn decode(&self, frame: &FoundFrame) -> Result<Vec<u8>, ScanError> {
        decode_body(&frame.header, &self.body).map_err(|reason| ScanError::Frame { offset: frame.offset, reason })
    }

    /// Stored body bytes of the frame last read with its body.
    pub fn stored_body(&self) -> &[u8] {
        &self.body
    }

    /// Search forward from `from` for the next offset where a complete frame with a valid
    /// checksum starts. Used to tell a torn tail from damage in the middle of a segment.
    pub fn find_valid_frame(&mut self, from: u64) -> Result<Option<FoundFrame>, ScanError> {
        const CHUNK: usize = 1 << 16;
        let magic = crate::frame::FRAME_MAGIC.to_le_bytes();
        let mut buf = vec![0u8; CHUNK + 3];
        let mut pos = from;
        while pos < self.end {
            let want = ((self.end - pos) as usize).min(buf.len());
            let n = self.file.read_at(&mut buf[..want], pos).map_err(|source| ScanError::Io { offset: pos, source })?;
            if n == 0 {
                break;
            }
            let window = &buf[..n];
            for i in 0..window.len().saturating_sub(3) {
                if window.get(i..i + 4) == Some(&magic[..]) {
                    let candidate = pos + i as u64;
                    let saved = self.offset;
                    self.offset = candidate;
                    match self.next_frame(true) {
                        Ok(Some(found)) if self.decode(&found).is_ok() => {
                            self.offset = saved;
                            return Ok(Some(found));
                        }
                        Err(ScanError::Io { offset, source }) => return Err(ScanError::Io { offset, source }),
                        _ => self.offset = saved,
                    }
                }
            }
            if n < 4 {
                break;
            }
            pos += (n - 3) as u64;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_sort() {
        assert_eq!(segment_name(42), "00000000000000000042.wal");
        assert_eq!(parse_segment_name("00000000000000000042.wal"), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn header_checks() {
        let h = encode_header(77);
        check_header(&h, 77).unwrap();
        assert!(matches!(check_header(&h, 78), Err(SegmentHeaderError::NameMismatch { header: 77, name: 78 })));
        assert!(matches!(check_header(&h[..10], 77), Err(SegmentHeaderError::Truncated { len: 10 })));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(matches!(check_header(&bad, 77), Err(SegmentHeaderError::Checksum)));
        let mut bad = h;
        bad[0] = b'X';
        assert!(matches!(check_header(&bad, 77), Err(SegmentHeaderError::BadMagic)));
        let mut v2 = h;
        v2[8] = 2;
        let crc = crc32fast::hash(&v2[0..20]);
        v2[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(check_header(&v2, 77), Err(SegmentHeaderError::Version { version: 2 })));
    }
}
