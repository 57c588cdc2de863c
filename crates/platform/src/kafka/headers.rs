//! CloudEvents Kafka protocol binding, binary mode: the event's attributes travel as `ce_*` record
//! headers, the protobuf payload is the record value, and W3C trace context rides along as
//! `traceparent` / `tracestate`.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::telemetry::TraceHeaders;

/// CloudEvents spec version written on every event.
pub const SPEC_VERSION: &str = "1.0";
/// `content-type` of every event: the value is a protobuf message.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";
/// Header that carries the reason a record was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "dlq_reason";
/// Headers that say where a dead-lettered record came from.
pub const DEAD_LETTER_TOPIC: &str = "dlq_original_topic";
/// Partition of the dead-lettered record.
pub const DEAD_LETTER_PARTITION: &str = "dlq_original_partition";
/// Offset of the dead-lettered record.
pub const DEAD_LETTER_OFFSET: &str = "dlq_original_offset";
/// How many times the handler was tried before the record was dead-lettered (0: never, its
/// headers were invalid).
pub const DEAD_LETTER_ATTEMPTS: &str = "dlq_attempts";
/// Why the record was dead-lettered: `invalid` (its CloudEvents headers), `permanent` (the handler
/// said it can never succeed) or `exhausted` (transient failures past `KAFKA_MAX_ATTEMPTS` or
/// `KAFKA_MAX_RETRY_SECS`).
pub const DEAD_LETTER_CLASS: &str = "dlq_class";
/// Group of the consumer that dead-lettered the record.
pub const DEAD_LETTER_GROUP: &str = "dlq_consumer_group";
/// Every header the dead-lettering adds; a replay removes them again.
pub const DEAD_LETTER_HEADERS: [&str; 7] = [
    DEAD_LETTER_REASON,
    DEAD_LETTER_TOPIC,
    DEAD_LETTER_PARTITION,
    DEAD_LETTER_OFFSET,
    DEAD_LETTER_ATTEMPTS,
    DEAD_LETTER_CLASS,
    DEAD_LETTER_GROUP,
];
/// Longest accepted `ce_id`, in bytes. Event ids are UUIDs (36 bytes) in this platform; the
/// bound keeps an id well inside a btree index entry of the consumer inbox.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// Checks a `ce_id` before it touches SQL: 1 to [`MAX_EVENT_ID_LEN`] bytes of visible ASCII
/// (`!` to `~`), so no NUL byte, control character or oversized value reaches the inbox. The error
/// describes the id without repeating it.
pub fn validate_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("invalid ce_id: empty".to_owned());
    }
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(format!("invalid ce_id: {} bytes, at most {MAX_EVENT_ID_LEN}", id.len()));
    }
    if let Some((position, character)) = id.char_indices().find(|(_, character)| !matches!(character, '!'..='~')) {
        return Err(format!(
            "invalid ce_id: character U+{:04X} at byte {position} (only visible ASCII is allowed)",
            character as u32
        ));
    }
    Ok(())
}

/// The attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// `ce_id`: unique per event; consumers deduplicate on it.
    pub id: String,
    /// `ce_type`, e.g. `fintech.payments.v1.order.created`.
    pub event_type: String,
    /// `ce_source`, e.g. `/fintech/payments`.
    pub source: String,
    /// `ce_time`: when the change happened.
    pub time: DateTime<Utc>,
    /// `ce_subject`: the aggregate id (also the record key).
    pub subject: Option<String>,
    /// Protobuf full name of the payload, sent as
    /// `ce_dataschema: type.googleapis.com/<name>`.
    pub payload_type: String,
    /// Trace context of the change that produced the event.
    pub trace: TraceHeaders,
}

impl EventMetadata {
    /// The record headers for this event.
    pub fn to_headers(&self) -> OwnedHeaders {
        let time = self.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let schema = format!("type.googleapis.com/{}", self.payload_type);
        let mut headers = OwnedHeaders::new_with_capacity(10)
            .insert(header("ce_id", &self.id))
            .insert(header("ce_type", &self.event_type))
            .insert(header("ce_source", &self.source))
            .insert(header("ce_specversion", SPEC_VERSION))
            .insert(header("ce_time", &time))
            .insert(header("ce_dataschema", &schema))
            .insert(header("content-type", CONTENT_TYPE_PROTOBUF));
        if let Some(subject) = &self.subject {
            headers = headers.insert(header("ce_subject", subject));
        }
        if let Some(traceparent) = &self.trace.traceparent {
            headers = headers.insert(header("traceparent", traceparent));
        }
        if let Some(tracestate) = &self.trace.tracestate {
            headers = headers.insert(header("tracestate", tracestate));
        }
        headers
    }

    /// Reads the attributes back from record headers; the error names the first missing or
    /// invalid attribute.
    pub fn from_headers(headers: Option<&impl Headers>) -> Result<Self, String> {
        let get = |name: &str| headers.and_then(|headers| header_str(headers, name));
        let required = |name: &str| get(name).ok_or_else(|| format!("missing header {name}"));
        let spec = required("ce_specversion")?;
        if spec != SPEC_VERSION {
            return Err(format!("unsupported ce_specversion {spec:?}"));
        }
        // At the precision events are written with (and PostgreSQL stores): a finer `ce_time`
        // would read back as another time once written again.
        let time = DateTime::parse_from_rfc3339(&required("ce_time")?)
            .map_err(|error| format!("invalid ce_time: {error}"))?
            .with_timezone(&Utc)
            .trunc_subsecs(6);
        let payload_type = get("ce_dataschema")
            .map(|schema| schema.trim_start_matches("type.googleapis.com/").to_owned())
            .unwrap_or_default();
        let id = required("ce_id")?;
        validate_event_id(&id)?;
        Ok(Self {
            id,
            event_type: required("ce_type")?,
            source: required("ce_source")?,
            time,
            subject: get("ce_subject"),
            payload_type,
            trace: TraceHeaders {
                traceparent: get("traceparent"),
                tracestate: get("tracestate"),
            },
        })
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// The UTF-8 value of the last header named `name`.
pub fn header_str(headers: &impl Headers, name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|header| header.key == name)
        .filter_map(|header| header.value)
        .filter_map(|value| std::str::from_utf8(value).ok())
        .last()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_headers() {
        let metadata = EventMetadata {
            id: "7d3b1c9e-3f4f-4a53-9f57-2f5d1b0b4c11".to_owned(),
            event_type: "fintech.payments.v1.order.created".to_owned(),
            source: "/fintech/payments".to_owned(),
            time: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            subject: Some("order-1".to_owned()),
            payload_type: "fintech.payments.v1.Order".to_owned(),
            trace: TraceHeaders {
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
                tracestate: None,
            },
        };
        let headers = metadata.to_headers();
        assert_eq!(
            header_str(&headers, "content-type").as_deref(),
            Some("application/protobuf")
        );
        assert_eq!(EventMetadata::from_headers(Some(&headers)).unwrap(), metadata);
    }

    #[test]
    fn event_ids_are_bounded_visible_ascii() {
        assert!(validate_event_id("7d3b1c9e-3f4f-4a53-9f57-2f5d1b0b4c11").is_ok());
        assert!(validate_event_id(&"x".repeat(MAX_EVENT_ID_LEN)).is_ok());
        assert!(validate_event_id("").unwrap_err().contains("empty"));
        let long = validate_event_id(&"x".repeat(10_000)).unwrap_err();
        assert!(long.contains("10000 bytes"), "{long}");
        let nul = validate_event_id("abc\0def").unwrap_err();
        assert!(nul.contains("U+0000 at byte 3"), "{nul}");
        assert!(validate_event_id("with space").is_err());
        assert!(validate_event_id("caf\u{e9}").is_err());

        let mut metadata = EventMetadata {
            id: "a\0b".to_owned(),
            event_type: "t".to_owned(),
            source: "s".to_owned(),
            time: Utc::now(),
            subject: None,
            payload_type: "p".to_owned(),
            trace: TraceHeaders::default(),
        };
        let error = EventMetadata::from_headers(Some(&metadata.to_headers())).unwrap_err();
        assert!(error.contains("invalid ce_id"), "{error}");
        metadata.id = "ok-id".to_owned();
        assert!(EventMetadata::from_headers(Some(&metadata.to_headers())).is_ok());
    }

    /// Found by the `cloudevents_headers` fuzz target: a `ce_time` with nanoseconds was kept at
    /// nanoseconds, so the attributes did not survive being written back (at microseconds).
    #[test]
    fn times_are_read_at_microseconds() {
        let headers = OwnedHeaders::new()
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_time", "2026-11-22T10:00:00.123456789Z"))
            .insert(header("ce_id", "id-1"))
            .insert(header("ce_type", "t"))
            .insert(header("ce_source", "s"));
        let metadata = EventMetadata::from_headers(Some(&headers)).unwrap();
        assert_eq!(metadata.time.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(
            EventMetadata::from_headers(Some(&metadata.to_headers())).unwrap(),
            metadata
        );
    }

    #[test]
    fn a_missing_attribute_is_named() {
        let headers = OwnedHeaders::new().insert(header("ce_specversion", "1.0"));
        let error = EventMetadata::from_headers(Some(&headers)).unwrap_err();
        assert!(error.contains("ce_time"), "{error}");
        let none: Option<&OwnedHeaders> = None;
        assert!(EventMetadata::from_headers(none).is_err());
    }
}
