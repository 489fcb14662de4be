//! Event time: timestamps and the durations that rules are written in.
//!
//! Time is always an argument in this crate. Nothing here reads a clock, so
//! every behaviour can be replayed and tested exactly.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in event time, in milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Parses an RFC 3339 timestamp such as `2026-03-01T12:00:00.250Z`.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        if let Some(t) = fast_rfc3339(text.as_bytes()) {
            return Ok(Timestamp(t));
        }
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp(t.timestamp_millis()))
            .map_err(|e| TimeError::Timestamp {
                text: truncate(text),
                reason: e.to_string(),
            })
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This time moved forward by `d`, saturating instead of overflowing.
    pub fn plus(self, d: Span) -> Self {
        Timestamp(self.0.saturating_add(d.0))
    }

    /// The span from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Span {
        Span(self.0.saturating_sub(earlier.0).max(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            None => write!(f, "@{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// A length of event time in milliseconds, written like Prometheus
/// durations: `0s`, `30s`, `5m`, `1h30m`, `250ms`, `1d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

impl Span {
    /// The zero span.
    pub const ZERO: Span = Span(0);

    /// A span of whole seconds.
    pub const fn seconds(s: i64) -> Span {
        Span(s * 1000)
    }

    /// Milliseconds in this span.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Seconds in this span, as a float (for rates).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// Parses `30s`, `5m`, `1h30m`, `250ms`, `2d`, `1w`. A bare `0` is allowed;
    /// any other number needs a unit, because `5` is ambiguous.
    pub fn parse(text: &str) -> Result<Span, TimeError> {
        let bad = |reason: &str| TimeError::Duration {
            text: truncate(text),
            reason: reason.to_string(),
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(bad("empty duration"));
        }
        if s == "0" {
            return Ok(Span::ZERO);
        }
        let bytes = s.as_bytes();
        let mut total: i64 = 0;
        let mut i = 0;
        let mut last_rank = usize::MAX;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(bad("expected a number, as in 30s, 5m or 1h30m"));
            }
            let number: i64 = s[start..i]
                .parse()
                .map_err(|_| bad("number out of range"))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &s[unit_start..i];
            // Largest unit first; each unit at most once, in order.
            let (rank, millis) = match unit {
                "w" => (0, 7 * 86_400_000),
                "d" => (1, 86_400_000),
                "h" => (2, 3_600_000),
                "m" => (3, 60_000),
                "s" => (4, 1000),
                "ms" => (5, 1),
                "" => return Err(bad("missing unit: use ms, s, m, h, d or w")),
                _ => return Err(bad("unknown unit: use ms, s, m, h, d or w")),
            };
            if last_rank != usize::MAX && rank <= last_rank {
                return Err(bad("units must go from largest to smallest, each once"));
            }
            last_rank = rank;
            total = number
                .checked_mul(millis)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| bad("duration too long"))?;
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 0 {
            f.write_str("-")?;
            ms = -ms;
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A timestamp or duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimeError {
    /// Not an RFC 3339 timestamp.
    #[error("invalid timestamp {text:?}: {reason}")]
    Timestamp {
        /// The offending text, shortened.
        text: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Not a duration such as `5m`.
    #[error("invalid duration {text:?}: {reason}")]
    Duration {
        /// The offending text, shortened.
        text: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, parsed
/// without allocation; anything else (or anything odd) goes to chrono.
fn fast_rfc3339(b: &[u8]) -> Option<i64> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        b[range].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |c: &u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let (hours, mins) = (d(h1)? * 10 + d(h2)?, d(m1)? * 10 + d(m2)?);
            // RFC 3339's time-numoffset: hours 00-23, minutes 00-59.
            if hours > 23 || mins > 59 {
                return None;
            }
            let minutes = hours * 60 + mins;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    // Leap seconds (60) and other rarities are left to chrono.
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    Some(secs * 1000 + millis)
}

/// Keeps error messages bounded when the input is huge.
fn truncate(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_prometheus() {
        let cases = [
            ("0s", 0),
            ("0", 0),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("1d", 86_400_000),
            ("1w", 604_800_000),
        ];
        for (text, ms) in cases {
            assert_eq!(Span::parse(text), Ok(Span(ms)), "{text}");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_a_reason() {
        for text in [
            "",
            "5",
            "5x",
            "m",
            "-5m",
            "5m1h",
            "1m1m",
            "1.5m",
            "99999999999999999w",
        ] {
            let err = Span::parse(text).expect_err(text);
            assert!(err.to_string().contains("invalid duration"), "{err}");
        }
    }

    #[test]
    fn spans_print_back_in_the_same_language() {
        for text in ["0s", "30s", "5m", "1h", "1h30m", "250ms", "1h0m1s"] {
            let span = Span::parse(text).unwrap();
            assert_eq!(Span::parse(&span.to_string()), Ok(span));
        }
        assert_eq!(Span(5_400_000).to_string(), "1h30m");
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_with_chrono(secs in 0i64..8_000_000_000, ms in 0i64..1000, digits in 0usize..10, off in -1439i64..1440) {
            let t = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            let frac = if digits == 0 { String::new() } else { format!(".{:0<width$}", format!("{ms:03}"), width = digits).chars().take(digits + 1).collect() };
            let zone = if off == 0 { "Z".to_string() } else { format!("{}{:02}:{:02}", if off > 0 { '+' } else { '-' }, off.abs() / 60, off.abs() % 60) };
            let text = format!("{}{frac}{zone}", t.format("%Y-%m-%dT%H:%M:%S"));
            let expected = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_millis();
            proptest::prop_assert_eq!(fast_rfc3339(text.as_bytes()), Some(expected), "{}", text);
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-03-01T12:00:00.250+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-03-01T11:00:00.250Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert!(Timestamp::parse_rfc3339("2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn offsets_out_of_range_are_rejected_not_read_as_something_else() {
        for text in [
            "2026-03-01T12:00:00+00:99",
            "2026-03-01T12:00:00+99:00",
            "2026-03-01T12:00:00-24:00",
            "2026-03-01T12:00:00.5+00:60",
        ] {
            let parsed = Timestamp::parse_rfc3339(text);
            assert!(parsed.is_err(), "{text} read as {parsed:?}");
        }
        // The edges of the range are fine, and mean what they say.
        let utc = Timestamp::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        let east = Timestamp::parse_rfc3339("2026-03-01T12:00:00+23:59").unwrap();
        assert_eq!(utc.millis() - east.millis(), (23 * 60 + 59) * 60_000);
        let west = Timestamp::parse_rfc3339("2026-03-01T12:00:00-00:30").unwrap();
        assert_eq!(west.millis() - utc.millis(), 30 * 60_000);
    }
}
