//! Frames: the unit of appending. One appended batch is one frame holding one or more records.
//!
//! Invariant: a frame on disk is self-checking. Its checksum covers every header field and the
//! stored body, so a torn or flipped frame is always detected before any record is handed out.
//!
//! # Byte layout (all integers little-endian)
//!
//! ```text
//! offset size field
//!      0    4 magic          0x3146_4445 ("EDF1" read as bytes)
//!      4    4 body_len       bytes of stored body that follow the header
//!      8    4 crc32          crc32 (crc32fast) over header bytes 0..8, 12..48 and the stored body
//!     12    1 codec          0 = stored as is, 1 = zstd
//!     13    3 reserved       zero
//!     16    8 first_lsn      LSN of the first record in the frame
//!     24    4 record_count   number of records, at least 1
//!     28    4 raw_len        length of the body once decompressed
//!     32    8 appended_at    unix time in microseconds when the batch was appended
//!     40    8 synced_lsn     highest LSN known durable when this frame was written
//!     48      body           `body_len` bytes, compressed when codec = 1
//! ```
//!
//! The decompressed body is `record_count` records, each a `u32` length followed by that many
//! bytes. Nothing else: lengths must add up to `raw_len` exactly.
//!
//! `synced_lsn` lets recovery tell a torn unsynced tail (which may be cut) from damage to data
//! that was already acknowledged (which must never be cut silently): if a valid frame after a bad
//! one says the bad frame's LSNs were already durable, the damage is corruption.

use thiserror::Error;

/// Size of the frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 48;
/// The first four bytes of every frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"EDF1");
/// Bytes of per-record framing inside a body.
pub const RECORD_OVERHEAD: usize = 4;
/// The largest frame (stored or raw) this format allows. Readers always accept frames up to this
/// size, whatever `Options::max_frame_bytes` says: that option bounds what a process *writes*, so
/// a log written with larger frames (an earlier run with a larger segment or batch size) still
/// reads whole after a restart with smaller options, and recovery never mistakes such a frame
/// for a torn tail.
pub const MAX_FRAME_BYTES: u64 = 1 << 30;

/// How a frame body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The body is stored as is.
    None,
    /// The body is one zstd frame.
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Codec> {
        match byte {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Short lowercase name for tools.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
        }
    }
}

/// Why bytes could not be decoded as a frame.
#[derive(Debug, Error)]
pub enum FrameError {
    /// Fewer bytes were available than the frame needs.
    #[error("frame truncated: needed {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the frame needs.
        needed: u64,
        /// Bytes that were there.
        available: u64,
    },
    /// The frame does not start with the frame magic.
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// The four bytes found, as a little-endian integer.
        found: u32,
    },
    /// The codec byte is not one this version knows.
    #[error("unknown codec {codec}")]
    UnknownCodec {
        /// The codec byte found.
        codec: u8,
    },
    /// Reserved header bytes are not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// A frame claims zero records.
    #[error("frame holds no records")]
    NoRecords,
    /// A length field exceeds the configured maximum frame size.
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length claimed.
        len: u64,
        /// The maximum allowed.
        max: u64,
    },
    /// The checksum stored in the header does not match the bytes.
    #[error("checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// Checksum stored in the header.
        expected: u32,
        /// Checksum computed over the bytes read.
        actual: u32,
    },
    /// The body could not be decompressed.
    #[error("body does not decompress")]
    Decompress {
        /// What the decompressor said.
        #[source]
        source: std::io::Error,
    },
    /// The decompressed body has another length than the header says.
    #[error("decompressed body is {actual} bytes, header says {expected}")]
    RawLength {
        /// Length from the header.
        expected: u64,
        /// Length obtained.
        actual: u64,
    },
    /// Record lengths inside the body do not add up.
    #[error("record {index} overruns the frame body")]
    RecordLayout {
        /// Zero-based index of the record that does not fit.
        index: u32,
    },
    /// The frame's LSNs do not continue the log.
    #[error("frame starts at LSN {found}, expected {expected}")]
    LsnMismatch {
        /// LSN the log expects next.
        expected: u64,
        /// First LSN in the frame.
        found: u64,
    },
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of stored body after the header.
    pub body_len: u32,
    /// Checksum stored in the header.
    pub crc: u32,
    /// How the body is stored.
    pub codec: Codec,
    /// LSN of the first record.
    pub first_lsn: u64,
    /// Number of records.
    pub record_count: u32,
    /// Decompressed body length.
    pub raw_len: u32,
    /// Unix microseconds at append.
    pub appended_at: u64,
    /// Highest LSN durable when the frame was written.
    pub synced_lsn: u64,
}

impl FrameHeader {
    /// Total bytes the frame occupies on disk.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// LSN of the last record in the frame.
    pub fn last_lsn(&self) -> u64 {
        self.first_lsn + u64::from(self.record_count) - 1
    }

    /// Parse and sanity-check a header. `max_frame` bounds both the stored and the raw length so
    /// a corrupt length can never make a reader allocate more than one legitimate frame.
    pub fn parse(bytes: &[u8], max_frame: u64) -> Result<FrameHeader, FrameError> {
        let h = bytes
            .get(..FRAME_HEADER_LEN)
            .ok_or(FrameError::Truncated { needed: FRAME_HEADER_LEN as u64, available: bytes.len() as u64 })?;
        let magic = le_u32(h, 0);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let codec_byte = h.get(12).copied().unwrap_or(u8::MAX);
        let codec = Codec::from_byte(codec_byte).ok_or(FrameError::UnknownCodec { codec: codec_byte })?;
        if h.get(13..16) != Some(&[0, 0, 0][..]) {
            return Err(FrameError::Reserved);
        }
        let header = FrameHeader {
            body_len: le_u32(h, 4),
            crc: le_u32(h, 8),
            codec,
            first_lsn: le_u64(h, 16),
            record_count: le_u32(h, 24),
            raw_len: le_u32(h, 28),
            appended_at: le_u64(h, 32),
            synced_lsn: le_u64(h, 40),
        };
        if header.record_count == 0 {
            return Err(FrameError::NoRecords);
        }
        for len in [u64::from(header.body_len), u64::from(header.raw_len)] {
            if len > max_frame {
                return Err(FrameError::TooLarge { len, max: max_frame });
            }
        }
        // Each record needs at least its length prefix.
        if u64::from(header.raw_len) < u64::from(header.record_count) * RECORD_OVERHEAD as u64 {
            return Err(FrameError::RecordLayout { index: 0 });
        }
        if header.first_lsn == 0 || header.first_lsn.checked_add(u64::from(header.record_count)).is_none() {
            return Err(FrameError::LsnMismatch { expected: 1, found: header.first_lsn });
        }
        Ok(header)
    }

    /// Check the stored checksum against the header bytes and the stored body.
    pub fn verify(&self, header_bytes: &[u8], body: &[u8]) -> Result<(), FrameError> {
        let actual = checksum(header_bytes, body);
        if actual != self.crc {
            return Err(FrameError::ChecksumMismatch { expected: self.crc, actual });
        }
        Ok(())
    }
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        buf.copy_from_slice(src);
    }
    u32::from_le_bytes(buf)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        buf.copy_from_slice(src);
    }
    u64::from_le_bytes(buf)
}

/// crc32 over header bytes 0..8 and 12..48 followed by the body.
fn checksum(header_bytes: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_bytes.get(0..8).unwrap_or(&[]));
    hasher.update(header_bytes.get(12..FRAME_HEADER_LEN).unwrap_or(&[]));
    hasher.update(body);
    hasher.finalize()
}

/// A frame body being built: records are laid out once, then the body is sealed (maybe
/// compressed) into the final frame bytes. Building happens outside the log's writer lock; only
/// [`EncodedFrame::stamp`], which needs the LSN, runs under it.
#[derive(Debug)]
pub struct EncodedFrame {
    /// Header placeholder followed by the stored body.
    bytes: Vec<u8>,
    codec: Codec,
    record_count: u32,
    raw_len: u32,
    /// crc32 state over the stored body, combined with the header at stamping.
    body_crc: crc32fast::Hasher,
}

/// Options for [`EncodedFrame::encode`].
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Bodies of at least this many bytes are compressed.
    pub compress_threshold: usize,
    /// zstd level (negative levels are faster and compress less).
    pub zstd_level: i32,
    /// Largest raw body accepted.
    pub max_frame: u64,
}

/// Why a batch could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The batch was empty.
    #[error("a batch must hold at least one record")]
    Empty,
    /// The batch does not fit one frame.
    #[error("batch of {bytes} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// Raw body bytes of the batch.
        bytes: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The compressor failed.
    #[error("compression failed")]
    Compress {
        /// What zstd said.
        #[source]
        source: std::io::Error,
    },
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

impl EncodedFrame {
    /// Lay out `records` as a frame body and compress it when it is large enough and compression
    /// pays off.
    pub fn encode<R: AsRef<[u8]>>(records: &[R], opts: EncodeOptions) -> Result<EncodedFrame, EncodeError> {
        if records.is_empty() {
            return Err(EncodeError::Empty);
        }
        let raw_len: u64 = records.iter().map(|r| (r.as_ref().len() + RECORD_OVERHEAD) as u64).sum();
        let max = opts.max_frame.min(u64::from(u32::MAX));
        if raw_len > max {
            return Err(EncodeError::TooLarge { bytes: raw_len, max });
        }
        let record_count = u32::try_from(records.len()).map_err(|_| EncodeError::TooLarge { bytes: raw_len, max })?;
        let raw_len32 = raw_len as u32;
        let raw_usize = raw_len as usize;
        let lay_out = |raw: &mut Vec<u8>| {
            raw.clear();
            raw.reserve(FRAME_HEADER_LEN + raw_usize);
            raw.resize(FRAME_HEADER_LEN, 0);
            for record in records {
                let r = record.as_ref();
                raw.extend_from_slice(&(r.len() as u32).to_le_bytes());
                raw.extend_from_slice(r);
            }
        };
        let (bytes, codec) = if raw_usize >= opts.compress_threshold {
            // The uncompressed body is only compressor input: lay it out in a per-thread buffer
            // that is reused, instead of faulting in fresh pages for every batch.
            SCRATCH.with(|cell| {
                let mut raw = cell.borrow_mut();
                lay_out(&mut raw);
                Ok::<_, EncodeError>(match compress(raw.get(FRAME_HEADER_LEN..).unwrap_or(&[]), opts.zstd_level)? {
                    Some(compressed) => (compressed, Codec::Zstd),
                    None => (raw.clone(), Codec::None),
                })
            })?
        } else {
            let mut raw = Vec::new();
            lay_out(&mut raw);
            (raw, Codec::None)
        };
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(bytes.get(FRAME_HEADER_LEN..).unwrap_or(&[]));
        Ok(EncodedFrame { bytes, codec, record_count, raw_len: raw_len32, body_crc })
    }

    /// Total bytes of the frame on disk.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Never true: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Decompressed body length.
    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }

    /// Codec chosen for the body.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Fill in the header for its place in the log and return the bytes to write.
    pub fn stamp(&mut self, first_lsn: u64, appended_at: u64, synced_lsn: u64) -> &[u8] {
        let body_len = (self.bytes.len() - FRAME_HEADER_LEN) as u32;
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&body_len.to_le_bytes());
        h[12] = self.codec.to_byte();
        h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
        h[24..28].copy_from_slice(&self.record_count.to_le_bytes());
        h[28..32].copy_from_slice(&self.raw_len.to_le_bytes());
        h[32..40].copy_from_slice(&appended_at.to_le_bytes());
        h[40..48].copy_from_slice(&synced_lsn.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h[0..8]);
        hasher.update(&h[12..FRAME_HEADER_LEN]);
        hasher.combine(&self.body_crc);
        h[8..12].copy_from_slice(&hasher.finalize().to_le_bytes());
        self.bytes[..FRAME_HEADER_LEN].copy_from_slice(&h);
        &self.bytes
    }
}

/// Compress `raw` into a buffer that starts with a header placeholder. `None` when compression
/// does not make the body smaller.
fn compress(raw: &[u8], level: i32) -> Result<Option<Vec<u8>>, EncodeError> {
    let bound = zstd::zstd_safe::compress_bound(raw.len());
    let mut out = std::io::Cursor::new(Vec::with_capacity(FRAME_HEADER_LEN + bound));
    out.get_mut().resize(FRAME_HEADER_LEN, 0);
    out.set_position(FRAME_HEADER_LEN as u64);
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let c = zstd::bulk::Compressor::new(level).map_err(|source| EncodeError::Compress { source })?;
            *slot = Some((level, c));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress_to_buffer(raw, &mut out).map_err(|source| EncodeError::Compress { source }),
            None => Ok(0),
        }
    })?;
    let out = out.into_inner();
    if out.len() - FRAME_HEADER_LEN >= raw.len() {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Decode a stored body into the raw record area, checking it against the header.
pub fn decode_body(header: &FrameHeader, stored: &[u8]) -> Result<Vec<u8>, FrameError> {
    let expected = u64::from(header.raw_len);
    let raw = match header.codec {
        Codec::None => stored.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(stored, header.raw_len as usize)
            .map_err(|source| FrameError::Decompress { source })?,
    };
    if raw.len() as u64 != expected {
        return Err(FrameError::RawLength { expected, actual: raw.len() as u64 });
    }
    // Validate the record layout once so iteration cannot fail later.
    let mut records = RecordIter::new(&raw, header.record_count);
    for _ in 0..header.record_count {
        records.next_record()?;
    }
    if records.offset != raw.len() {
        return Err(FrameError::RecordLayout { index: header.record_count.saturating_sub(1) });
    }
    Ok(raw)
}

/// Iterates the records of a decoded body.
#[derive(Debug)]
pub struct RecordIter<'a> {
    raw: &'a [u8],
    offset: usize,
    index: u32,
    count: u32,
}

impl<'a> RecordIter<'a> {
    /// Iterate `count` records in `raw`.
    pub fn new(raw: &'a [u8], count: u32) -> RecordIter<'a> {
        RecordIter { raw, offset: 0, index: 0, count }
    }

    /// Continue iterating from a position an earlier iterator reached
    /// (its [`RecordIter::offset`] and the number of records it returned).
    pub fn resume(raw: &'a [u8], count: u32, offset: usize, index: u32) -> RecordIter<'a> {
        RecordIter { raw, offset, index, count }
    }

    /// Byte offset of the next record's length prefix.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The next record, an error when the layout is broken, `None` after the last one.
    pub fn next_record(&mut self) -> Result<&'a [u8], FrameError> {
        let index = self.index;
        let err = FrameError::RecordLayout { index };
        if index >= self.count {
            return Err(err);
        }
        let len_bytes =
            self.raw.get(self.offset..self.offset + RECORD_OVERHEAD).ok_or(FrameError::RecordLayout { index })?;
        let len = le_u32(len_bytes, 0) as usize;
        let start = self.offset + RECORD_OVERHEAD;
        let record = start.checked_add(len).and_then(|end| self.raw.get(start..end)).ok_or(err)?;
        self.offset = start + len;
        self.index += 1;
        Ok(record)
    }
}

/// Decode one whole frame from `bytes` (header and body), returning its header and records.
/// This is the entry point fuzzing exercises: it must never panic, whatever the input.
pub fn decode(bytes: &[u8], max_frame: u64) -> Result<(FrameHeader, Vec<Vec<u8>>), FrameError> {
    let header = FrameHeader::parse(bytes, max_frame)?;
    let end = FRAME_HEADER_LEN as u64 + u64::from(header.body_len);
    let body = bytes
        .get(FRAME_HEADER_LEN..end as usize)
        .ok_or(FrameError::Truncated { needed: end, available: bytes.len() as u64 })?;
    header.verify(bytes, body)?;
    let raw = decode_body(&header, body)?;
    let mut it = RecordIter::new(&raw, header.record_count);
    let mut out = Vec::with_capacity(header.record_count as usize);
    for _ in 0..header.record_count {
        out.push(it.next_record()?.to_vec());
    }
    Ok((header, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(threshold: usize) -> EncodeOptions {
        EncodeOptions { compress_threshold: threshold, zstd_level: 1, max_frame: 1 << 20 }
    }

    fn roundtrip(records: &[&[u8]], threshold: usize) -> (FrameHeader, Vec<Vec<u8>>) {
        let mut f = EncodedFrame::encode(records, opts(threshold)).unwrap();
        let bytes = f.stamp(7, 1234, 3).to_vec();
        decode(&bytes, 1 << 20).unwrap()
    }

    #[test]
    fn roundtrip_uncompressed() {
        let (h, recs) = roundtrip(&[b"a", b"", b"hello"], 1 << 20);
        assert_eq!(h.codec, Codec::None);
        assert_eq!((h.first_lsn, h.record_count, h.appended_at, h.synced_lsn), (7, 3, 1234, 3));
        assert_eq!(h.last_lsn(), 9);
        assert_eq!(recs, vec![b"a".to_vec(), vec![], b"hello".to_vec()]);
    }

    #[test]
    fn roundtrip_compressed() {
        let rec = br#"{"operation":"UPDATE","table":"order","key":["abc"]}"#.repeat(20);
        let records: Vec<&[u8]> = vec![&rec; 10];
        let (h, recs) = roundtrip(&records, 16);
        assert_eq!(h.codec, Codec::Zstd);
        assert!(u64::from(h.body_len) < u64::from(h.raw_len) / 4, "json should compress well");
        assert_eq!(recs.len(), 10);
        assert!(recs.iter().all(|r| r == &rec));
    }

    #[test]
    fn incompressible_body_is_stored() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let (h, recs) = roundtrip(&[&noise], 16);
        assert_eq!(h.codec, Codec::None);
        assert_eq!(recs[0], noise);
    }

    #[test]
    fn layout_is_little_endian_as_documented() {
        let mut f = EncodedFrame::encode(&[b"xy"], opts(1 << 20)).unwrap();
        let b = f.stamp(0x0102_0304_0506_0708, 0x11, 0x22).to_vec();
        assert_eq!(&b[0..4], b"EDF1");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 6);
        assert_eq!(b[12], 0);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(b[28..32].try_into().unwrap()), 6);
        assert_eq!(&b[48..52], &2u32.to_le_bytes());
        assert_eq!(&b[52..54], b"xy");
        assert_eq!(b.len(), 54);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut f = EncodedFrame::encode(&[b"record-one", b"record-two"], opts(1 << 20)).unwrap();
        let good = f.stamp(1, 2, 0).to_vec();
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode(&bad, 1 << 20).is_err(), "flip of byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let mut f = EncodedFrame::encode(&[b"abcdef"], opts(1 << 20)).unwrap();
        let good = f.stamp(1, 2, 0).to_vec();
        for len in 0..good.len() {
            assert!(matches!(decode(&good[..len], 1 << 20), Err(FrameError::Truncated { .. })), "len {len}");
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut f = EncodedFrame::encode(&[b"abc"], opts(1 << 20)).unwrap();
        let mut b = f.stamp(1, 2, 0).to_vec();
        b[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(FrameHeader::parse(&b, 1 << 20), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn encode_limits() {
        assert!(matches!(EncodedFrame::encode::<&[u8]>(&[], opts(0)), Err(EncodeError::Empty)));
        let big = vec![0u8; 2 << 20];
        assert!(matches!(EncodedFrame::encode(&[&big], opts(0)), Err(EncodeError::TooLarge { .. })));
    }

    #[test]
    fn record_iter_rejects_overrun() {
        let raw = [5u8, 0, 0, 0, b'a'];
        let mut it = RecordIter::new(&raw, 1);
        assert!(matches!(it.next_record(), Err(FrameError::RecordLayout { index: 0 })));
    }
}
