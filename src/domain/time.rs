//! Event time: an instant with nanosecond precision, parsed from RFC 3339.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// An instant (seconds and nanoseconds since the Unix epoch), compared as an instant
/// whatever UTC offset it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// Parses RFC 3339 with a mandatory offset (`Z` or `+hh:mm`).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let dt = DateTime::parse_from_rfc3339(text).ok()?;
        Some(Timestamp {
            secs: dt.timestamp(),
            nanos: dt.timestamp_subsec_nanos(),
        })
    }

    /// Formats in UTC with `Z`, keeping sub-second digits only when present.
    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp(self.secs, self.nanos) {
            Some(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            // Unreachable for parsed timestamps; keep a faithful fallback anyway.
            None => format!("{}.{:09}", self.secs, self.nanos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_instant_in_other_offset_is_equal() {
        let a = Timestamp::parse_rfc3339("2026-11-18T11:06:49Z").unwrap();
        let b = Timestamp::parse_rfc3339("2026-11-18T15:06:49+04:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_rfc3339(), "2026-11-18T11:06:49Z");
    }

    #[test]
    fn missing_offset_is_rejected() {
        assert!(Timestamp::parse_rfc3339("2026-11-25T10:00:00").is_none());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn fractional_seconds_are_kept() {
        let t = Timestamp::parse_rfc3339("2026-11-18T11:06:49.123Z").unwrap();
        assert_eq!(t.nanos, 123_000_000);
        assert_eq!(t.to_rfc3339(), "2026-11-18T11:06:49.123Z");
    }
}
