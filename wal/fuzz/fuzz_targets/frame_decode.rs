//! Frames as read from a segment: `frame::decode`, `FrameHeader::parse` and the record iterator
//! must never panic, and whatever decodes must be self-consistent and survive a re-encode.
#![no_main]

use eds_wal::frame::{self, EncodeOptions, EncodedFrame, FrameHeader, RecordIter, FRAME_HEADER_LEN, RECORD_OVERHEAD};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // The header alone, also with a tiny limit so the size checks are reached.
    let _ = FrameHeader::parse(data, 64);
    let parsed = FrameHeader::parse(data, MAX_FRAME);

    // The body decoder on its own, past the checksum a mutated input rarely keeps: zstd and the
    // record layout checks see arbitrary bytes under an arbitrary (but parsed) header.
    if let Ok(h) = &parsed {
        let body = data.get(FRAME_HEADER_LEN..).unwrap_or(&[]);
        let body = body.get(..h.body_len as usize).unwrap_or(body);
        if let Ok(raw) = frame::decode_body(h, body) {
            assert_eq!(raw.len() as u64, u64::from(h.raw_len));
            let mut it = RecordIter::new(&raw, h.record_count);
            for _ in 0..h.record_count {
                it.next_record().expect("decode_body validated the layout");
            }
        }
    }

    // Walking an arbitrary body with an arbitrary count must fail cleanly, never panic.
    let count = data.first().map(|&b| u32::from(b)).unwrap_or(0);
    let mut it = RecordIter::new(data.get(1..).unwrap_or(&[]), count);
    while it.next_record().is_ok() {}

    let Ok((header, records)) = frame::decode(data, MAX_FRAME) else { return };
    let parsed = parsed.expect("decode succeeded, so the header parses");
    assert_eq!(parsed, header);
    assert_eq!(records.len() as u64, u64::from(header.record_count));
    let raw: u64 = records.iter().map(|r| (r.len() + RECORD_OVERHEAD) as u64).sum();
    assert_eq!(raw, u64::from(header.raw_len));
    assert!(FRAME_HEADER_LEN as u64 + u64::from(header.body_len) <= data.len() as u64);

    // Re-encode what was decoded: the same records must come back under the same header fields.
    let opts = EncodeOptions { compress_threshold: 64, zstd_level: 1, max_frame: MAX_FRAME };
    let mut again = EncodedFrame::encode(&records, opts).expect("a decoded frame re-encodes");
    let bytes = again.stamp(header.first_lsn, header.appended_at, header.synced_lsn).to_vec();
    let (h2, r2) = frame::decode(&bytes, MAX_FRAME).expect("a re-encoded frame decodes");
    assert_eq!(r2, records);
    assert_eq!(
        (h2.first_lsn, h2.record_count, h2.raw_len, h2.appended_at, h2.synced_lsn),
        (header.first_lsn, header.record_count, header.raw_len, header.appended_at, header.synced_lsn)
    );
});
