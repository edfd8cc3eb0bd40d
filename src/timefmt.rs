//! Time formatting without a calendar crate: unix time to UTC civil date and time.

use std::time::{SystemTime, UNIX_EPOCH};

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn parts(micros: u64) -> (i64, u32, u32, u64, u64, u64, u64) {
    let secs = (micros / 1_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u64;
    (y, m, d, sod / 3600, sod / 60 % 60, sod % 60, micros % 1_000_000)
}

/// RFC 3339 in UTC with microseconds: `2026-11-27T03:12:56.123456Z`.
pub fn rfc3339_micros(micros: u64) -> String {
    let (y, mo, d, h, mi, s, us) = parts(micros);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
}

/// RFC 3339 in UTC with milliseconds, as Shopmonkey's rows carry dates: `2026-11-27T03:12:56.123Z`.
pub fn rfc3339_millis(millis: u64) -> String {
    let (y, mo, d, h, mi, s, us) = parts(millis.saturating_mul(1_000));
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z", us / 1_000)
}

/// RFC 3339 in UTC as Go's `time.RFC3339Nano` writes it: nanoseconds without trailing zeros, and
/// no fraction at all on a whole second (`2026-11-27T03:12:56.1234Z`, `2026-11-27T03:12:56Z`).
pub fn rfc3339_nanos(secs: u64, nanos: u32) -> String {
    let (y, mo, d, h, mi, s, _) = parts(secs.saturating_mul(1_000_000));
    let mut out = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if nanos > 0 {
        let fraction = format!("{:09}", nanos.min(999_999_999));
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The Go standard logger's timestamp, `2026/11/27 03:12:56`, which EDS prints with `-t`.
pub fn go_log_stamp(micros: u64) -> String {
    let (y, mo, d, h, mi, s, _) = parts(micros);
    format!("{y:04}/{mo:02}/{d:02} {h:02}:{mi:02}:{s:02}")
}

/// Now, in unix microseconds.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A short human duration: `42s`, `3m07s`, `5h02m`, `12d03h`.
pub fn human_duration(micros: u64) -> String {
    let s = micros / 1_000_000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// Bytes with a binary unit: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.000789
        assert_eq!(rfc3339_micros(951_827_696_000_789), "2000-02-29T12:34:56.000789Z");
        assert_eq!(go_log_stamp(1_795_749_176_000_000), "2026/11/27 03:12:56");
        assert_eq!(rfc3339_micros(4_107_542_400_000_000), "2100-03-01T00:00:00.000000Z");
        assert_eq!(rfc3339_nanos(951_827_696, 789_000), "2000-02-29T12:34:56.000789Z");
        assert_eq!(rfc3339_nanos(951_827_696, 123_456_789), "2000-02-29T12:34:56.123456789Z");
        assert_eq!(rfc3339_nanos(951_827_696, 500_000_000), "2000-02-29T12:34:56.5Z");
        assert_eq!(rfc3339_nanos(951_827_696, 0), "2000-02-29T12:34:56Z");
    }

    #[test]
    fn humans() {
        assert_eq!(human_duration(59_000_000), "59s");
        assert_eq!(human_duration(187_000_000), "3m07s");
        assert_eq!(human_duration(90_061_000_000), "1d01h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
