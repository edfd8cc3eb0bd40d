//! JSON numbers as exact decimal text, for the SQL drivers.
//!
//! Invariant: a number reaches a destination digit for digit as the event carried it — never
//! through `f64`. serde_json keeps each number's text (its `arbitrary_precision` feature, which
//! the workspace enables), so integers beyond 64 bits and decimals with more than 17 significant
//! digits go into NUMERIC/DECIMAL columns exactly; a column that cannot hold the value refuses
//! it, and the event is dead-lettered with that reason. Nothing is rounded on the way.

use serde_json::Number;

/// Exponents beyond this are not expanded: such a number fits no SQL column anyway, and the
/// destination refuses its text as written.
const MAX_EXPANSION: i64 = 1_000;

/// `n` in plain decimal notation (no exponent), exactly: `1.50` stays `1.50`, `1.5e3` is `1500`,
/// `-2E-3` is `-0.002`, `123456789012345678901234567890` stays as it is.
pub fn exact_text(n: &Number) -> String {
    let text = n.to_string();
    plain(&text).unwrap_or(text)
}

/// `n` as an integer's decimal text when its value is whole (`3.0` is `3`, `1e3` is `1000`);
/// `None` when it has a fraction.
pub fn integer_text(n: &Number) -> Option<String> {
    let text = exact_text(n);
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if !frac.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(if int == "-0" { "0".to_owned() } else { int.to_owned() })
}

/// `n` as exact decimal text for a column: a whole value headed for an integer column as an
/// integer (`3.0` → `3`, which integer input requires), anything else as [`exact_text`] (a
/// fraction is left for the destination to refuse).
pub fn column_text(n: &Number, integer_column: bool) -> String {
    match integer_column.then(|| integer_text(n)).flatten() {
        Some(integer) => integer,
        None => exact_text(n),
    }
}

/// JSON number text (`-?digits(.digits)?([eE][+-]?digits)?`) in plain notation; `None` when it is
/// not such text or its exponent is beyond [`MAX_EXPANSION`].
fn plain(text: &str) -> Option<String> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (text.get(..i)?, text.get(i + 1..)?.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (negative, unsigned) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if exp == 0 {
        return Some(text.to_owned());
    }
    if exp.abs() > MAX_EXPANSION {
        return None;
    }
    let digits = format!("{int}{frac}");
    // Where the decimal point goes, counted in digits from the left.
    let point = int.len() as i64 + exp;
    let mut out = String::with_capacity(digits.len() + exp.unsigned_abs() as usize + 3);
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', point.unsigned_abs() as usize));
        out.push_str(&digits);
    } else {
        let point = point as usize;
        let (whole, fraction) = if point >= digits.len() {
            (format!("{digits}{}", "0".repeat(point - digits.len())), "")
        } else {
            (digits.get(..point)?.to_owned(), digits.get(point..)?)
        };
        let whole = whole.trim_start_matches('0');
        out.push_str(if whole.is_empty() { "0" } else { whole });
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(fraction);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Number {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_keep_every_digit() {
        for (json, text) in [
            ("0", "0"),
            ("-7", "-7"),
            ("9223372036854775807", "9223372036854775807"),
            ("123456789012345678901234567890", "123456789012345678901234567890"),
            ("-123456789012345678901234567890", "-123456789012345678901234567890"),
            ("0.12345678901234567890123", "0.12345678901234567890123"),
            ("3.14159265358979323846264338327950288", "3.14159265358979323846264338327950288"),
            ("1.50", "1.50"),
            ("1.5e3", "1500"),
            ("15E+2", "1500"),
            ("-2E-3", "-0.002"),
            ("1.2345e2", "123.45"),
            ("0.5e1", "5"),
        ] {
            assert_eq!(exact_text(&num(json)), text, "{json}");
        }
        assert_eq!(exact_text(&num("1e400")), format!("1{}", "0".repeat(400)));
        // Beyond the expansion limit the text stays as serde_json keeps it (no column holds it).
        assert_eq!(exact_text(&num("1e5000")), "1e+5000");
    }

    #[test]
    fn integers_are_whole_values_only() {
        assert_eq!(integer_text(&num("3.0")).as_deref(), Some("3"));
        assert_eq!(integer_text(&num("1e3")).as_deref(), Some("1000"));
        assert_eq!(integer_text(&num("-0.0")).as_deref(), Some("0"));
        assert_eq!(
            integer_text(&num("123456789012345678901234567890")).as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(integer_text(&num("2.5")), None);
        assert_eq!(integer_text(&num("1e-3")), None);
    }
}
