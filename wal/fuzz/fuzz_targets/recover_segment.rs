//! Recovery and reading of damaged segments: open a log whose last segment holds arbitrary bytes
//! (in memory, through `FaultyStorage`), then read it all, verify and inspect it. Errors are
//! expected; a panic, a hang or a reader returning non-contiguous LSNs is a bug.
//!
//! Input: byte 0 holds flags (bit 0: prepend a valid segment header, so the scanner gets past it;
//! bit 1: `RecoveryMode::RecordHoles`; bit 2: put a valid sealed segment before the fuzzed one),
//! the rest is the fuzzed segment's content.
#![no_main]

use eds_wal::frame::{EncodeOptions, EncodedFrame};
use eds_wal::segment::{encode_header, segment_name};
use eds_wal::{Durability, FaultyStorage, Options, RecoveryMode, Storage, Wal};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

/// FaultyStorage's files point back at the storage (`MemFile::shared`), a reference cycle that
/// leaks every file. Removing all files when the input is done breaks it, so long runs do not
/// run out of memory.
struct RemoveAllFiles(FaultyStorage);

impl Drop for RemoveAllFiles {
    fn drop(&mut self) {
        for dir in [Path::new("/wal/cursors"), Path::new("/wal")] {
            for name in self.0.list(dir).unwrap_or_default() {
                let _ = self.0.remove(&dir.join(name));
            }
            let _ = self.0.sync_dir(dir);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let storage = FaultyStorage::new();
    let _cleanup = RemoveAllFiles(storage.clone());
    let dir = Path::new("/wal");
    storage.create_dir_all(&dir.join("cursors")).expect("in-memory mkdir");

    let mut first = 1u64;
    if flags & 4 != 0 {
        // A sealed segment holding LSNs 1..=3, so the fuzzed one starts at 4.
        let mut seg = encode_header(1).to_vec();
        let opts = EncodeOptions { compress_threshold: 1 << 20, zstd_level: 1, max_frame: 1 << 20 };
        let mut f = EncodedFrame::encode(&[&b"a"[..], b"bb", b"ccc"], opts).expect("encode");
        seg.extend_from_slice(f.stamp(1, 1, 0));
        storage.write_file(&dir.join(segment_name(1)), &seg);
        first = 4;
    }
    let mut seg = Vec::with_capacity(body.len() + 24);
    if flags & 1 != 0 {
        seg.extend_from_slice(&encode_header(first));
    }
    seg.extend_from_slice(body);
    storage.write_file(&dir.join(segment_name(first)), &seg);

    let opts = Options {
        segment_size: 1 << 20,
        max_frame_bytes: 1 << 20,
        durability: Durability::Never,
        recovery: if flags & 2 != 0 { RecoveryMode::RecordHoles } else { RecoveryMode::Strict },
        ..Options::default()
    };
    let Ok(wal) = Wal::open_with(Arc::new(storage), dir, opts) else { return };
    let head = wal.durable_lsn();
    assert!(head + 1 >= wal.oldest_lsn());
    let contiguous = wal.holes().is_empty();
    if let Ok(mut reader) = wal.reader(wal.oldest_lsn()) {
        let mut last = wal.oldest_lsn() - 1;
        while let Ok(Some(rec)) = reader.next() {
            assert!(rec.lsn <= head, "reader returned LSN {} above the durable {head}", rec.lsn);
            assert!(rec.lsn > last, "reader went backwards: {last} then {}", rec.lsn);
            if contiguous {
                assert_eq!(rec.lsn, last + 1, "LSNs skip without a recorded hole");
            }
            last = rec.lsn;
        }
    }
    let _ = wal.verify();
    let _ = wal.inspect();
    // The recovered log must take new appends.
    if let Ok(a) = wal.append(&[b"after recovery"]) {
        assert_eq!(a.first_lsn, head + 1);
    }
});
