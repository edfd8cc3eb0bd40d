//! The WAL record envelope: what ingest appends for each JetStream message.
//!
//! Invariant: the envelope carries the JetStream stream sequence, so the highest sequence in the
//! log (`S`) can always be recovered from the last record, and WAL order equals stream order.
//!
//! # Byte layout (little-endian), format version 1
//!
//! ```text
//! offset size field
//!      0    1 version        1
//!      1    1 kind           1 = change event, 2 = dead-lettered message (payload is the raw
//!                            message, reason says why), 3 = dead-letter marker (the message went
//!                            to the dead-letter log; payload empty), 4 = stream reset (the
//!                            operator accepted that the stream was recreated: stream sequences
//!                            start again after it; stream_seq 0, reason says what was accepted)
//!      2    8 stream_seq     JetStream stream sequence
//!     10    8 received_at    unix microseconds when eds received the message
//!     18    2 subject_len
//!     20    2 msg_id_len     length of the Nats-Msg-Id header (0 when absent)
//!     22    2 reason_len     0 for change events
//!     24      subject, msg_id, reason, then the payload to the end of the record
//! ```

use anyhow::Context;
use std::borrow::Cow;
use thiserror::Error;

/// Envelope format version written by this build.
pub const ENVELOPE_VERSION: u8 = 1;
const FIXED: usize = 24;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A validated change event, as received.
    Event,
    /// A message that failed validation, with its reason (kept in the dead-letter log).
    DeadLetter,
    /// Stands in the WAL for a dead-lettered message, so its stream sequence counts as stored.
    DeadLetterMarker,
    /// The stream was recreated upstream and the operator accepted it: stream sequences start
    /// again after this record (its own is 0).
    StreamReset,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Event => 1,
            Kind::DeadLetter => 2,
            Kind::DeadLetterMarker => 3,
            Kind::StreamReset => 4,
        }
    }
}

/// A decoded envelope borrowing from the record bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// What the record holds.
    pub kind: Kind,
    /// JetStream stream sequence.
    pub stream_seq: u64,
    /// Unix microseconds at receipt.
    pub received_at: u64,
    /// NATS subject.
    pub subject: Cow<'a, str>,
    /// `Nats-Msg-Id` header, empty when absent.
    pub msg_id: Cow<'a, str>,
    /// Why a message was dead-lettered; empty for events.
    pub reason: Cow<'a, str>,
    /// The message bytes as received.
    pub payload: &'a [u8],
}

/// Why a record is not a valid envelope.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than its fields.
    #[error("envelope truncated")]
    Truncated,
    /// Written by a newer eds.
    #[error("unknown envelope version {0}")]
    Version(u8),
    /// Unknown kind byte.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// A text field is not UTF-8.
    #[error("envelope {0} is not UTF-8")]
    Text(&'static str),
}

fn clip(s: &str) -> &str {
    // Fields are length-prefixed with u16; NATS subjects and ids are far shorter, a reason
    // could be long: cut at a character boundary.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Envelope<'_> {
    /// Serialise.
    pub fn encode(&self) -> Vec<u8> {
        let (subject, msg_id, reason) = (clip(&self.subject), clip(&self.msg_id), clip(&self.reason));
        let mut b = Vec::with_capacity(FIXED + subject.len() + msg_id.len() + reason.len() + self.payload.len());
        b.push(ENVELOPE_VERSION);
        b.push(self.kind.byte());
        b.extend_from_slice(&self.stream_seq.to_le_bytes());
        b.extend_from_slice(&self.received_at.to_le_bytes());
        for f in [subject, msg_id, reason] {
            b.extend_from_slice(&(f.len() as u16).to_le_bytes());
        }
        b.extend_from_slice(subject.as_bytes());
        b.extend_from_slice(msg_id.as_bytes());
        b.extend_from_slice(reason.as_bytes());
        b.extend_from_slice(self.payload);
        b
    }
}

fn u16_at(b: &[u8], at: usize) -> Result<usize, EnvelopeError> {
    let s = b.get(at..at + 2).ok_or(EnvelopeError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, EnvelopeError> {
    let s = b.get(at..at + 8).ok_or(EnvelopeError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn text<'a>(b: &'a [u8], from: usize, len: usize, what: &'static str) -> Result<Cow<'a, str>, EnvelopeError> {
    let bytes = b.get(from..from + len).ok_or(EnvelopeError::Truncated)?;
    std::str::from_utf8(bytes).map(Cow::Borrowed).map_err(|_| EnvelopeError::Text(what))
}

/// Parse a record.
pub fn decode(b: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let version = *b.first().ok_or(EnvelopeError::Truncated)?;
    if version != ENVELOPE_VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let kind = match *b.get(1).ok_or(EnvelopeError::Truncated)? {
        1 => Kind::Event,
        2 => Kind::DeadLetter,
        3 => Kind::DeadLetterMarker,
        4 => Kind::StreamReset,
        k => return Err(EnvelopeError::Kind(k)),
    };
    let stream_seq = u64_at(b, 2)?;
    let received_at = u64_at(b, 10)?;
    let (sl, ml, rl) = (u16_at(b, 18)?, u16_at(b, 20)?, u16_at(b, 22)?);
    let subject = text(b, FIXED, sl, "subject")?;
    let msg_id = text(b, FIXED + sl, ml, "msg id")?;
    let reason = text(b, FIXED + sl + ml, rl, "reason")?;
    let payload = b.get(FIXED + sl + ml + rl..).ok_or(EnvelopeError::Truncated)?;
    Ok(Envelope { kind, stream_seq, received_at, subject, msg_id, reason, payload })
}

/// Highest stream sequence stored in the WAL: from the last record's envelope.
pub fn last_stream_seq(wal: &eds_wal::Wal) -> anyhow::Result<u64> {
    let head = wal.durable_lsn();
    if head == 0 {
        return Ok(0);
    }
    let dir = wal.dir().display();
    let mut r =
        wal.reader(head).with_context(|| format!("reading the last record (LSN {head}) of the WAL at {dir}"))?;
    let rec = r
        .next()
        .with_context(|| format!("reading the last record (LSN {head}) of the WAL at {dir}"))?
        .with_context(|| format!("the last record (LSN {head}) of the WAL at {dir} is not readable"))?;
    let env = decode(&rec.data).with_context(|| format!("WAL record {} is not an eds envelope", rec.lsn))?;
    Ok(env.stream_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope<'static> {
        Envelope {
            kind: Kind::Event,
            stream_seq: 42,
            received_at: 1_795_749_176_000_000,
            subject: "dbchange.order.UPDATE.c1.l1.PUBLIC.2".into(),
            msg_id: "53d366bd86032a5a".into(),
            reason: "".into(),
            payload: br#"{"operation":"UPDATE"}"#,
        }
    }

    #[test]
    fn roundtrip() {
        let e = sample();
        let b = e.encode();
        assert_eq!(b[0], 1);
        assert_eq!(&b[2..10], &42u64.to_le_bytes());
        assert_eq!(decode(&b).unwrap(), e);
        let dl = Envelope { kind: Kind::DeadLetter, reason: "missing table".into(), payload: b"\xff\x00", ..sample() };
        assert_eq!(decode(&dl.encode()).unwrap(), dl);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let b = sample().encode();
        for len in 0..24 {
            assert_eq!(decode(&b[..len]), Err(EnvelopeError::Truncated), "len {len}");
        }
        let mut v = b.clone();
        v[0] = 9;
        assert_eq!(decode(&v), Err(EnvelopeError::Version(9)));
        let mut k = b.clone();
        k[1] = 7;
        assert_eq!(decode(&k), Err(EnvelopeError::Kind(7)));
        let mut s = b.clone();
        s[24] = 0xff;
        assert_eq!(decode(&s), Err(EnvelopeError::Text("subject")));
    }

    #[test]
    fn long_reasons_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(40_000);
        let e = Envelope { kind: Kind::DeadLetter, reason: long.into(), ..sample() };
        let d = decode(&e.encode()).unwrap().reason.into_owned();
        assert!(d.len() <= u16::MAX as usize && d.chars().all(|c| c == 'é'));
    }
}
