//! CloudEvents binary-mode headers of a consumed record (`ConsumedEvent::from_message` →
//! `EventMetadata::from_headers`). Attributes that are accepted carry a valid `ce_id`, write back
//! to headers that read back to the same attributes, and are what the last header of each name
//! said; the dead-letter path keeps every original header but its own. A header key that is not
//! UTF-8 (rdkafka panics reading one) makes the record invalid, never a panic.
#![no_main]

use fintech_platform::kafka::EventMetadata;
use fintech_platform::kafka::consumer::without_dead_letter_headers;
use fintech_platform::kafka::headers::{DEAD_LETTER_HEADERS, SPEC_VERSION, header_str, validate_event_id};
use libfuzzer_sys::fuzz_target;
use rdkafka::message::Headers;

// Input: the record's headers, one per line, `key:value` (a line without `:` is a header with
// no value); keys are raw bytes, as on the wire.
fuzz_target!(|data: &[u8]| {
    fintech_fuzz::tolerate_caught_rdkafka_panics();
    let headers: Vec<(&[u8], Option<&[u8]>)> = data
        .split(|byte| *byte == b'\n')
        .map(|line| match line.iter().position(|byte| *byte == b':') {
            Some(colon) => (&line[..colon], Some(&line[colon + 1..])),
            None => (line, None),
        })
        .collect();
    // librdkafka keeps a key up to its first NUL byte; the rest is invisible to everyone.
    let unreadable = headers
        .iter()
        .filter(|(key, _)| std::str::from_utf8(key.split(|byte| *byte == 0).next().unwrap_or_default()).is_err())
        .count();
    let event = fintech_fuzz::consumed_raw("fuzz.topic", &headers);
    if unreadable > 0 {
        // Not a panic: the record is refused as invalid (dead-lettered), those headers left out.
        assert!(event.metadata.is_err(), "{unreadable} non-UTF-8 keys accepted");
        assert_eq!(
            event.headers.as_ref().map_or(0, |headers| headers.count()),
            headers.len() - unreadable
        );
        return;
    }
    let headers = event.headers.as_ref().expect("the record has headers");
    match &event.metadata {
        Ok(metadata) => {
            validate_event_id(&metadata.id).expect("an accepted ce_id is valid");
            assert_eq!(header_str(headers, "ce_specversion").as_deref(), Some(SPEC_VERSION));
            assert_eq!(header_str(headers, "ce_id").as_deref(), Some(metadata.id.as_str()));
            assert_eq!(
                header_str(headers, "ce_type").as_deref(),
                Some(metadata.event_type.as_str())
            );
            assert_eq!(header_str(headers, "ce_subject"), metadata.subject);
            assert_eq!(header_str(headers, "traceparent"), metadata.trace.traceparent);
            // What a producer writes from these attributes reads back to them.
            let written = metadata.to_headers();
            let reread = EventMetadata::from_headers(Some(&written)).expect("written headers read back");
            assert_eq!(&reread, metadata);
        }
        Err(reason) => {
            assert!(!reason.is_empty());
            assert!(event.valid_metadata().is_err());
        }
    }
    // A dead letter (and a replay) carries every original header except the dead-letter ones.
    let kept = without_dead_letter_headers(Some(headers));
    let originals = headers
        .iter()
        .filter(|header| !DEAD_LETTER_HEADERS.contains(&header.key))
        .count();
    assert_eq!(kept.count(), originals);
    assert!(kept.iter().all(|header| !DEAD_LETTER_HEADERS.contains(&header.key)));
});
