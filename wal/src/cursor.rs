//! Cursor files: the persisted position of one named reader (one per destination).
//!
//! Invariant: a cursor file is replaced atomically (write a temp file, fsync it, rename it over
//! the old one, fsync the directory), so after any crash it holds either the old or the new
//! position, never a mix; its checksum catches anything else.
//!
//! A position is the LSN of the last record the cursor's owner has finished with: records with a
//! greater LSN are still to be read. Position 0 means nothing has been consumed.
//!
//! # File layout (`cursors/<name>.cursor`, little-endian)
//!
//! ```text
//! offset size field
//!      0    8 magic          "EDSCUR\0\n"
//!      8    2 version        1
//!     10    2 name_len       bytes of the name
//!     12    8 position       LSN of the last consumed record
//!     20    8 updated_at     unix microseconds when persisted
//!     28    n name           UTF-8, must equal the file name's stem
//!   28+n    4 crc32          over every byte before it
//! ```

use thiserror::Error;

/// Magic at the start of a cursor file.
pub const CURSOR_MAGIC: [u8; 8] = *b"EDSCUR\0\n";
/// Cursor file format version.
pub const CURSOR_VERSION: u16 = 1;
/// Suffix of cursor file names.
pub const CURSOR_SUFFIX: &str = ".cursor";
/// Longest cursor name accepted.
pub const MAX_CURSOR_NAME: usize = 128;

/// Why a cursor file cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CursorFileError {
    /// Shorter than its fields.
    #[error("cursor file truncated")]
    Truncated,
    /// Wrong magic.
    #[error("not a cursor file (bad magic)")]
    BadMagic,
    /// Unknown version.
    #[error("unsupported cursor file version {version}")]
    Version {
        /// Version found.
        version: u16,
    },
    /// Checksum mismatch.
    #[error("cursor file checksum mismatch")]
    Checksum,
    /// The stored name is not the file's name.
    #[error("cursor file holds name {stored:?}, file is named {file:?}")]
    NameMismatch {
        /// Name inside the file.
        stored: String,
        /// Name from the file name.
        file: String,
    },
}

/// A decoded cursor file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRecord {
    /// Cursor name.
    pub name: String,
    /// LSN of the last consumed record.
    pub position: u64,
    /// Unix microseconds when persisted.
    pub updated_at: u64,
}

/// Check that `name` can be a cursor (and a file name): 1 to 128 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("name is empty");
    }
    if name.len() > MAX_CURSOR_NAME {
        return Err("name is longer than 128 characters");
    }
    if name.starts_with('.') {
        return Err("name starts with a dot");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("name may only hold letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Serialise a cursor record.
pub fn encode(record: &CursorRecord) -> Vec<u8> {
    let name = record.name.as_bytes();
    let mut b = Vec::with_capacity(32 + name.len());
    b.extend_from_slice(&CURSOR_MAGIC);
    b.extend_from_slice(&CURSOR_VERSION.to_le_bytes());
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(&record.position.to_le_bytes());
    b.extend_from_slice(&record.updated_at.to_le_bytes());
    b.extend_from_slice(name);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], CursorFileError> {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes.get(at..at + N).ok_or(CursorFileError::Truncated)?);
    Ok(out)
}

/// Parse a cursor file whose file name stem is `file_name`.
pub fn decode(bytes: &[u8], file_name: &str) -> Result<CursorRecord, CursorFileError> {
    if bytes.get(0..8).ok_or(CursorFileError::Truncated)? != CURSOR_MAGIC {
        return Err(CursorFileError::BadMagic);
    }
    let name_len = u16::from_le_bytes(field(bytes, 10)?) as usize;
    let end = 28 + name_len;
    let crc = u32::from_le_bytes(field(bytes, end)?);
    if bytes.len() != end + 4 {
        return Err(CursorFileError::Checksum);
    }
    if crc32fast::hash(bytes.get(..end).ok_or(CursorFileError::Truncated)?) != crc {
        return Err(CursorFileError::Checksum);
    }
    let version = u16::from_le_bytes(field(bytes, 8)?);
    if version != CURSOR_VERSION {
        return Err(CursorFileError::Version { version });
    }
    let name = std::str::from_utf8(bytes.get(28..end).ok_or(CursorFileError::Truncated)?)
        .map_err(|_| CursorFileError::NameMismatch { stored: String::from("<not UTF-8>"), file: file_name.to_owned() })?
        .to_owned();
    if name != file_name {
        return Err(CursorFileError::NameMismatch { stored: name, file: file_name.to_owned() });
    }
    Ok(CursorRecord {
        name,
        position: u64::from_le_bytes(field(bytes, 12)?),
        updated_at: u64::from_le_bytes(field(bytes, 20)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> CursorRecord {
        CursorRecord { name: "postgres-main".into(), position: 12345, updated_at: 99 }
    }

    #[test]
    fn roundtrip() {
        let b = encode(&rec());
        assert_eq!(decode(&b, "postgres-main").unwrap(), rec());
    }

    #[test]
    fn any_flip_or_truncation_is_caught() {
        let b = encode(&rec());
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, "postgres-main").is_err(), "flip at {i}");
            assert!(decode(&b[..i], "postgres-main").is_err(), "truncated to {i}");
        }
    }

    #[test]
    fn name_must_match_file() {
        let b = encode(&rec());
        assert!(matches!(decode(&b, "other"), Err(CursorFileError::NameMismatch { .. })));
    }

    #[test]
    fn names() {
        validate_name("pg-main_1.x").unwrap();
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
