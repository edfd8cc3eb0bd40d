//! Holes: ranges of damaged acknowledged data that the operator chose to skip
//! ([`crate::RecoveryMode::RecordHoles`]). They are kept in a file so every reader skips them
//! and every tool reports them; they are never silently forgotten.
//!
//! # File layout (`holes`, little-endian, replaced atomically like cursor files)
//!
//! ```text
//! offset size field
//!      0    8 magic        "EDSHOLE\n"
//!      8    2 version      1
//!     10    4 count
//!     14  40n entries      segment first LSN u64, byte offset u64, byte length u64,
//!                          first lost LSN u64, last lost LSN u64
//! 14+40n    4 crc32        over every byte before it
//! ```

/// Magic of the holes file.
pub const HOLES_MAGIC: [u8; 8] = *b"EDSHOLE\n";

/// A skipped range of damaged bytes and the LSNs lost with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// First LSN of the segment holding the damage.
    pub segment: u64,
    /// Byte offset where the damage starts.
    pub offset: u64,
    /// Bytes skipped.
    pub len: u64,
    /// First LSN lost.
    pub first_lsn: u64,
    /// Last LSN lost.
    pub last_lsn: u64,
}

/// Serialise a list of holes.
pub fn encode(holes: &[Hole]) -> Vec<u8> {
    let mut b = Vec::with_capacity(18 + 40 * holes.len());
    b.extend_from_slice(&HOLES_MAGIC);
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&(holes.len() as u32).to_le_bytes());
    for h in holes {
        for v in [h.segment, h.offset, h.len, h.first_lsn, h.last_lsn] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parse a holes file; `None` when it is damaged.
pub fn decode(b: &[u8]) -> Option<Vec<Hole>> {
    if b.get(0..8)? != HOLES_MAGIC || b.get(8..10)? != [1, 0] {
        return None;
    }
    let count = u32::from_le_bytes(b.get(10..14)?.try_into().ok()?) as usize;
    let end = 14usize.checked_add(count.checked_mul(40)?)?;
    let crc = u32::from_le_bytes(b.get(end..end + 4)?.try_into().ok()?);
    if b.len() != end + 4 || crc32fast::hash(b.get(..end)?) != crc {
        return None;
    }
    (0..count)
        .map(|i| {
            let at = 14 + 40 * i;
            let hole = Hole {
                segment: u64_at(b, at)?,
                offset: u64_at(b, at + 8)?,
                len: u64_at(b, at + 16)?,
                first_lsn: u64_at(b, at + 24)?,
                last_lsn: u64_at(b, at + 32)?,
            };
            // A hole always covers bytes and at least one LSN; anything else would make a reader
            // skip nothing and loop, or wrap an LSN.
            let sane =
                hole.len > 0 && hole.first_lsn >= 1 && hole.first_lsn <= hole.last_lsn && hole.last_lsn < u64::MAX;
            sane.then_some(hole)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let holes = vec![Hole { segment: 1, offset: 24, len: 100, first_lsn: 5, last_lsn: 9 }];
        let b = encode(&holes);
        assert_eq!(decode(&b).unwrap(), holes);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_none(), "flip at {i}");
        }
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn degenerate_holes_are_refused() {
        let ok = Hole { segment: 1, offset: 24, len: 10, first_lsn: 1, last_lsn: 1 };
        assert!(decode(&encode(&[ok])).is_some());
        for bad in [
            Hole { len: 0, ..ok },
            Hole { first_lsn: 0, last_lsn: 0, ..ok },
            Hole { first_lsn: 5, last_lsn: 4, ..ok },
            Hole { last_lsn: u64::MAX, ..ok },
        ] {
            assert!(decode(&encode(&[bad])).is_none(), "{bad:?}");
        }
    }
}
