//! `google.protobuf.Timestamp` ⇄ `chrono::DateTime<Utc>`, the one conversion every service uses.

use chrono::{DateTime, Utc};

/// A protobuf timestamp.
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // Sub-second nanoseconds are below 2e9, so they fit; a leap second's 1e9+ stays valid.
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(999_999_999),
    }
}

/// A UTC time from a protobuf timestamp; `None` when out of range or negative in its nanos.
pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let now = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        assert_eq!(from_timestamp(&timestamp(now)), Some(now));
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: 0, nanos: -1 }), None);
    }
}
