//! Money as integer minor units (cents). Never floating point.

/// An amount in minor units (1.00 = 100).
pub type Minor = i64;

/// The largest amount one receipt may carry: 1,000,000.00.
pub const MAX_AMOUNT: Minor = 100_000_000;

/// Parses a plain decimal (`"12"`, `"12.3"`, `"12.34"`) into minor units.
///
/// Rejects signs, exponents, more than 2 decimals, empty parts, zero and
/// anything above [`MAX_AMOUNT`]. Returns `None` for every rejected form.
pub fn parse_amount(text: &str) -> Option<Minor> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = match frac {
        None => "",
        Some(f) if (1..=2).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => f,
        Some(_) => return None,
    };
    // Leading zeros are harmless, but a huge run of digits must not overflow.
    let int = int.trim_start_matches('0');
    if int.len() > 9 {
        return None;
    }
    let whole: Minor = if int.is_empty() { 0 } else { int.parse().ok()? };
    let cents: Minor = match frac.len() {
        0 => 0,
        1 => frac.parse::<Minor>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    let minor = whole.checked_mul(100)?.checked_add(cents)?;
    (minor > 0 && minor <= MAX_AMOUNT).then_some(minor)
}

/// Formats minor units as a decimal string with two decimals: `12345` -> `"123.45"`.
pub fn format_minor(minor: Minor) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Parses the output of [`format_minor`] (sign allowed, exactly 2 decimals).
pub fn parse_formatted(text: &str) -> Option<Minor> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (int, frac) = rest.split_once('.')?;
    if frac.len() != 2 || int.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = int
        .parse::<Minor>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac.parse::<Minor>().ok()?)?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_parse_to_cents() {
        assert_eq!(parse_amount("12.34"), Some(1234));
        assert_eq!(parse_amount("12.3"), Some(1230));
        assert_eq!(parse_amount("12"), Some(1200));
        assert_eq!(parse_amount("0.01"), Some(1));
        assert_eq!(parse_amount("1000000.00"), Some(MAX_AMOUNT));
        assert_eq!(parse_amount("007.50"), Some(750));
    }

    #[test]
    fn everything_else_is_rejected() {
        for bad in [
            "",
            "0",
            "0.00",
            "-1.00",
            "+1.00",
            "1e3",
            "1.0e2",
            "12.345",
            "1.",
            ".5",
            "abc",
            "NaN",
            "inf",
            "1000000.01",
            "99999999999999999999",
            " 1.00",
            "1,00",
            "1.2.3",
            "١٢",
        ] {
            assert_eq!(parse_amount(bad), None, "{bad:?} must be rejected");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for v in [0, 1, 99, 100, 12345, -5, -12345, MAX_AMOUNT] {
            assert_eq!(parse_formatted(&format_minor(v)), Some(v));
        }
        assert_eq!(format_minor(12345), "123.45");
        assert_eq!(format_minor(5), "0.05");
    }
}
