//! The notifications consumer: any platform topic, its payload rendered generically through the
//! descriptor set (`ce_dataschema` names the message) into the webhook body. A payload that
//! renders is a JSON object; the body is valid JSON naming the public event type and stays within
//! `MAX_BODY` (or leaves the entity out and says so); a subject that reaches storage holds no NUL
//! and no more than `MAX_SUBJECT` bytes.
#![no_main]

use fintech_notifications::domain::MAX_BODY;
use fintech_notifications::sources::{MAX_SUBJECT, body, input_topics, payload_json, public_type, subject};
use fintech_proto::topics::Topic;
use libfuzzer_sys::fuzz_target;

// Input: a selector byte (the topic; 200 and up: no `ce_dataschema`), then the payload.
fuzz_target!(|data: &[u8]| {
    let Some((&choice, payload)) = data.split_first() else {
        return;
    };
    let topics = input_topics();
    let topic = topics[usize::from(choice) % topics.len()];
    let schema = if choice < 200 {
        Topic::named(topic).and_then(|topic| topic.payload)
    } else {
        None
    };
    let event = fintech_fuzz::event(topic, schema, payload);
    let Ok(metadata) = event.valid_metadata() else { return };
    let event_type = public_type(topic).expect("every input topic has a public type");
    let Some(payload) = event.payload.as_deref() else {
        return;
    };
    let Ok(data) = payload_json(&metadata.payload_type, payload) else {
        return;
    };
    assert!(data.is_object(), "{data}");
    let Ok(subject) = subject(metadata.subject.as_deref(), event.key_str()) else {
        return;
    };
    assert!(!subject.contains('\0') && subject.len() <= MAX_SUBJECT, "{subject:?}");
    let text = body(event_type, metadata.time, &subject, data.clone());
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("the body is JSON");
    assert_eq!(parsed["type"], event_type);
    if parsed["data_omitted"] == true {
        assert!(parsed["data"].is_null());
        assert!(text.len() <= MAX_BODY, "an omitted body of {} bytes", text.len());
    } else {
        assert!(text.len() <= MAX_BODY, "a body of {} bytes", text.len());
        assert_eq!(parsed["data"], data);
    }
});
