//! Timestamps in the reference's shapes: EventBridge `time` strings
//! (`YYYY-MM-DDTHH:MM:SSZ`) and epoch seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Parses an RFC 3339 timestamp (as EventBridge writes `time`) to epoch seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SSZ`, the envelope's `time`.
pub fn format_event_time(epoch_ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(epoch_ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Wall-clock now in epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_reference_shape() {
        let secs = parse_rfc3339("2021-05-01T10:00:00Z").unwrap();
        assert_eq!(secs, 1_619_863_200);
        assert_eq!(format_event_time(secs * 1000 + 999), "2021-05-01T10:00:00Z");
    }

    #[test]
    fn accepts_fractions_and_offsets() {
        assert_eq!(
            parse_rfc3339("2021-05-01T10:00:00.250Z"),
            Some(1_619_863_200)
        );
        assert_eq!(
            parse_rfc3339("2021-05-01T12:00:00+02:00"),
            Some(1_619_863_200)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
