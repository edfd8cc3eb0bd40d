//! ISO-8601 date-times of change events, read once for every SQL dialect that converts them
//! itself (MySQL, SQL Server) rather than leaving them to the server.
//!
//! The grammar is jiff's Temporal ISO-8601 reader, narrowed to what events carry and what a
//! replay can reproduce: `YYYY-MM-DD`, optionally followed by `T` (or `t`, or a space) and
//! `hh:mm[:ss[.fraction]]`, optionally followed by `Z` or a numeric offset (`±hh`, `±hhmm`,
//! `±hh:mm`; one space may precede it). No offset means UTC. Words such as `now`, `today` or
//! `infinity` are refused: the server's reading of them would change on a replay. So are the
//! basic format (`20240102T030405Z`), an hour without minutes, extended years (`+002024-…`),
//! bracketed time-zone annotations and offsets of a day or more.
//!
//! Two readings go beyond jiff's, both as PostgreSQL reads them: a leap second `:60` is the
//! first second of the next minute (jiff would clamp it to `:59`), and, where the dialect allows
//! it, `24:00` is the midnight ending the day. More than nine fraction digits are allowed and
//! cut to nine, which changes no result rounded to 100 ns or coarser.

use jiff::civil::{DateTime, Time};
use jiff::fmt::temporal::{Pieces, PiecesOffset};
use jiff::{RoundMode, SignedDuration, Unit};
use std::borrow::Cow;

/// Why a date-time string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateTimeError {
    /// Not an ISO-8601 date-time of the accepted shape (see the module docs), or not a real
    /// date or time.
    NotIso8601,
    /// A real date-time whose UTC reading falls outside the years -9999 to 9999.
    OutOfRange,
}

/// Whether `24:00[:00[.0…]]` (the end of the day) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfDay {
    /// `24:00` is midnight of the next day, as PostgreSQL and MySQL read it.
    Accept,
    /// `24:00` is refused, as SQL Server refuses it.
    Refuse,
}

/// The UTC civil date-time of an ISO-8601 date-time (see the module docs).
pub fn parse(text: &str, end_of_day: EndOfDay) -> Result<DateTime, DateTimeError> {
    use DateTimeError::NotIso8601;
    let b = text.as_bytes();
    // Extended format only: `YYYY-MM-DD`, and `hh:` after the separator.
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' || !b[..4].iter().all(u8::is_ascii_digit) {
        return Err(NotIso8601);
    }
    let timed = b.len() > 10;
    if timed && (!matches!(b[10], b'T' | b't' | b' ') || b.get(13) != Some(&b':')) {
        return Err(NotIso8601);
    }
    let hour_24 = timed && &b[11..13] == b"24";
    if hour_24 && end_of_day == EndOfDay::Refuse {
        return Err(NotIso8601);
    }
    let leap_second = timed && b.get(16) == Some(&b':') && b.get(17..19) == Some(b"60");
    let input = normalised(text, hour_24, leap_second);
    let pieces = Pieces::parse(input.as_ref()).map_err(|_| NotIso8601)?;
    if pieces.time_zone_annotation().is_some() {
        return Err(NotIso8601);
    }
    let time = pieces.time().unwrap_or(Time::midnight());
    if hour_24 && time != Time::midnight() {
        return Err(NotIso8601);
    }
    let offset = match pieces.offset() {
        None | Some(PiecesOffset::Zulu) => jiff::tz::Offset::UTC,
        Some(PiecesOffset::Numeric(n)) => n.offset(),
        Some(_) => return Err(NotIso8601),
    };
    if offset.seconds().unsigned_abs() >= 86_400 {
        return Err(NotIso8601);
    }
    let local = pieces.date().to_datetime(time);
    let utc = local
        .checked_sub(SignedDuration::from_secs(i64::from(offset.seconds())))
        .map_err(|_| DateTimeError::OutOfRange)?;
    let carry = SignedDuration::from_secs(if hour_24 { 86_400 } else { i64::from(leap_second) });
    utc.checked_add(carry).map_err(|_| DateTimeError::OutOfRange)
}

/// `text` as jiff reads it: `24` as `00` (the day is added back after), `60` seconds as `59`
/// (jiff's own reading, the second added back after), at most nine fraction digits, and no space
/// before an offset. Borrowed unless something had to change.
fn normalised(text: &str, hour_24: bool, leap_second: bool) -> Cow<'_, str> {
    let b = text.as_bytes();
    let long_fraction = b.get(19).is_some_and(|&c| c == b'.' || c == b',')
        && b.get(20..).is_some_and(|f| f.iter().take_while(|c| c.is_ascii_digit()).count() > 9);
    let spaced_offset = b.windows(2).skip(11).any(|w| w[0] == b' ' && matches!(w[1], b'+' | b'-'));
    if !(hour_24 || leap_second || long_fraction || spaced_offset) {
        return Cow::Borrowed(text);
    }
    let mut s = text.to_owned();
    if hour_24 {
        s.replace_range(11..13, "00");
    }
    if leap_second {
        s.replace_range(17..19, "59");
    }
    if long_fraction {
        let digits = s[20..].bytes().take_while(u8::is_ascii_digit).count();
        s.replace_range(29..20 + digits, "");
    }
    if spaced_offset {
        if let Some(at) = s.as_bytes().windows(2).skip(11).position(|w| w[0] == b' ' && matches!(w[1], b'+' | b'-')) {
            s.remove(at + 11);
        }
    }
    Cow::Owned(s)
}

/// `dt` rounded to a multiple of `nanos` (a divisor of a second), half up; `OutOfRange` when the
/// rounding would leave jiff's range.
pub fn round(dt: DateTime, nanos: i64) -> Result<DateTime, DateTimeError> {
    // jiff wants the increment in the largest unit it is a whole number of.
    let (unit, increment) = match nanos {
        n if n % 1_000_000 == 0 => (Unit::Millisecond, n / 1_000_000),
        n if n % 1_000 == 0 => (Unit::Microsecond, n / 1_000),
        n => (Unit::Nanosecond, n),
    };
    let rounding = jiff::civil::DateTimeRound::new().smallest(unit).mode(RoundMode::HalfExpand).increment(increment);
    dt.round(rounding).map_err(|_| DateTimeError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> String {
        parse(text, EndOfDay::Accept).map(|d| d.to_string()).unwrap_or_else(|e| format!("{e:?}"))
    }

    #[test]
    fn offsets_are_applied_and_no_offset_is_utc() {
        assert_eq!(utc("2024-03-01T10:00:00+05:30"), "2024-03-01T04:30:00");
        assert_eq!(utc("2024-03-01T10:00:00-08:00"), "2024-03-01T18:00:00");
        assert_eq!(utc("2024-03-01T10:00:00 +0530"), "2024-03-01T04:30:00");
        assert_eq!(utc("2024-03-01T10:00:00+05"), "2024-03-01T05:00:00");
        assert_eq!(utc("2024-03-01t10:00z"), "2024-03-01T10:00:00");
        assert_eq!(utc("2024-03-01 10:00:00"), "2024-03-01T10:00:00");
        assert_eq!(utc("2024-03-01"), "2024-03-01T00:00:00");
        assert_eq!(utc("2024-03-01T00:30:00+05:30"), "2024-02-29T19:00:00");
    }

    #[test]
    fn leap_seconds_end_of_day_and_long_fractions() {
        assert_eq!(utc("2016-12-31T23:59:60Z"), "2017-01-01T00:00:00");
        assert_eq!(utc("2016-12-31T23:59:60.5Z"), "2017-01-01T00:00:00.5");
        assert_eq!(utc("2024-01-01T24:00:00Z"), "2024-01-02T00:00:00");
        assert_eq!(utc("2024-01-01T24:00:01Z"), "NotIso8601");
        assert_eq!(parse("2024-01-01T24:00", EndOfDay::Refuse), Err(DateTimeError::NotIso8601));
        assert_eq!(utc("2024-01-01T10:00:00.1234567891234+01:00"), "2024-01-01T09:00:00.123456789");
        assert_eq!(utc("2024-01-01T10:00:00,25"), "2024-01-01T10:00:00.25");
    }

    #[test]
    fn refuses_what_a_replay_could_not_reproduce() {
        for bad in [
            "",
            "now",
            "infinity",
            "2024",
            "20240102T030405Z",
            "2024-01-02T030405Z",
            "2024-01-02T03Z",
            "+002024-01-02",
            "2024-01-02T03:04:05Z[Europe/Paris]",
            "2024-01-02T03:04:05+24:00",
            "2024-01-02T03:04:05+5",
            "2024-02-30",
            "2024-01-02T",
            "2024-01-02T03:04:05.Z",
            "2024-01-02T03:04:05Zjunk",
            "٢٠٢٤-01-01",
        ] {
            assert_eq!(utc(bad), "NotIso8601", "{bad:?}");
        }
        assert_eq!(utc("9999-12-31T23:00:00-01:00"), "OutOfRange");
    }

    #[test]
    fn rounding_is_half_up_and_carries() {
        let dt = |s: &str| parse(s, EndOfDay::Accept).unwrap_or_default();
        assert_eq!(
            round(dt("2024-07-11T21:16:51.708587506Z"), 1_000).map(|d| d.to_string()),
            Ok("2024-07-11T21:16:51.708588".into())
        );
        assert_eq!(
            round(dt("2024-12-31T23:59:59.9999996Z"), 1_000).map(|d| d.to_string()),
            Ok("2025-01-01T00:00:00".into())
        );
        assert_eq!(
            round(dt("2024-01-01T00:00:00.00000005Z"), 100).map(|d| d.to_string()),
            Ok("2024-01-01T00:00:00.0000001".into())
        );
        assert_eq!(round(dt("9999-12-31T23:59:59.99999995Z"), 100), Err(DateTimeError::OutOfRange));
    }
}
