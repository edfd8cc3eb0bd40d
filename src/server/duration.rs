//! Durations as EDS (Go) writes them: `500ms`, `2s`, `5m`, `1h30m`, `1.5h`, `72h`.

use std::time::Duration;

/// Parse a Go-style duration. A bare `0` is zero; every other number needs a unit
/// (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {text:?}: negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}: expected a number at {rest:?}"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| format!("invalid duration {text:?}: bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("invalid duration {text:?}: missing unit (use ms, s, m or h)")),
            u => return Err(format!("invalid duration {text:?}: unknown unit {u:?} (use ns, us, ms, s, m or h)")),
        };
        total += value * nanos_per;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("invalid duration {text:?}: too large"));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Format like Go does for whole units: `5m0s` style is not needed by anyone; we print the
/// shortest exact form, e.g. `72h`, `5m`, `2s`, `250ms`.
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit, per) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
    {
        if ns >= per && ns.is_multiple_of(per) {
            return format!("{}{unit}", ns / per);
        }
    }
    format!("{ns}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("72h").unwrap(), Duration::from_secs(72 * 3600));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("10us").unwrap(), Duration::from_micros(10));
    }

    #[test]
    fn bad_forms_say_why() {
        assert!(parse("5").unwrap_err().contains("missing unit"));
        assert!(parse("5d").unwrap_err().contains("unknown unit \"d\""));
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("s").unwrap_err().contains("expected a number"));
    }

    #[test]
    fn format_is_shortest_exact() {
        assert_eq!(format(Duration::from_secs(72 * 3600)), "72h");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(300)), "5m");
    }
}
