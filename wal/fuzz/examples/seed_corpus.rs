//! Writes a small seed corpus of valid inputs for every fuzz target into `corpus/<target>/`.
//! Run from wal/fuzz: `cargo run --example seed_corpus`.

use eds_wal::cursor::{self, CursorRecord};
use eds_wal::frame::{EncodeOptions, EncodedFrame};
use eds_wal::holes::{self, Hole};
use std::fs;
use std::path::Path;

fn frame(records: &[Vec<u8>], threshold: usize, first_lsn: u64, synced: u64) -> Vec<u8> {
    let opts = EncodeOptions { compress_threshold: threshold, zstd_level: 1, max_frame: 1 << 20 };
    EncodedFrame::encode(records, opts).expect("encode").stamp(first_lsn, 1_700_000_000_000_000, synced).to_vec()
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let json = |i: u32| {
        format!(
            r#"{{"operation":"UPDATE","table":"order","key":["{i:08x}"],"after":{{"status":"Invoice","number":{i}}}}}"#
        )
        .into_bytes()
    };
    let small = vec![b"a".to_vec(), Vec::new(), b"hello".to_vec()];
    let many: Vec<Vec<u8>> = (0..40).map(json).collect();
    let frames = [
        ("plain", frame(&small, 1 << 20, 1, 0)),
        ("zstd", frame(&many, 64, 7, 6)),
        ("single", frame(&[json(1)], 1 << 20, 42, 41)),
    ];
    for (name, bytes) in &frames {
        put("frame_decode", name, bytes);
    }

    // Segments for recover_segment: flag byte 1 (the target prepends the header) then frames.
    let mut seg = vec![1u8];
    let mut lsn = 1;
    for batch in [&small, &many, &vec![json(9)]] {
        seg.extend_from_slice(&frame(batch, 64, lsn, lsn - 1));
        lsn += batch.len() as u64;
    }
    put("recover_segment", "three_frames", &seg);
    let mut torn = seg.clone();
    torn.truncate(seg.len() - 10);
    put("recover_segment", "torn_tail", &torn);
    let mut holes_mode = seg.clone();
    holes_mode[0] = 3;
    put("recover_segment", "record_holes", &holes_mode);
    let mut after_sealed = vec![5u8];
    after_sealed.extend_from_slice(&frame(&small, 1 << 20, 4, 3));
    put("recover_segment", "after_sealed", &after_sealed);

    let c = CursorRecord { name: "x".into(), position: 12345, updated_at: 99 };
    put("cursor_decode", "x", &cursor::encode(&c));
    let c = CursorRecord { name: "postgres-main".into(), position: 1, updated_at: 2 };
    put("cursor_decode", "postgres-main", &cursor::encode(&c));

    put("holes_decode", "empty", &holes::encode(&[]));
    let h = Hole { segment: 1, offset: 24, len: 100, first_lsn: 5, last_lsn: 9 };
    put("holes_decode", "two", &holes::encode(&[h, Hole { offset: 200, ..h }]));
    println!("seed corpus written to corpus/");
}
