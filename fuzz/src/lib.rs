//! Helpers the fuzz targets share: a Kafka record built from fuzz input (so every consumer target
//! goes through the platform's own `ConsumedEvent::from_message`, headers included), and the
//! round-trip check of a decoded protobuf message.

use fintech_platform::kafka::consumer::ConsumedEvent;
use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

/// The CloudEvents attributes of a well-formed record, so the consumer targets spend their time
/// in the payload (the `cloudevents_headers` target fuzzes the headers themselves).
pub const VALID_HEADERS: [(&str, &str); 6] = [
    ("ce_id", "0191d1c2-8f5e-7c3a-9b1d-3e5f7a9c1b2d"),
    ("ce_type", "fintech.fuzz.v1.event"),
    ("ce_source", "/fintech/fuzz"),
    ("ce_specversion", "1.0"),
    ("ce_time", "2026-11-22T10:00:00.123456Z"),
    ("content-type", "application/protobuf"),
];

/// A record on `topic` as the consumer reads it (`ConsumedEvent::from_message`), with `headers`.
pub fn consumed(
    topic: &str,
    headers: &[(&str, Option<&[u8]>)],
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> ConsumedEvent {
    let headers = headers.iter().fold(OwnedHeaders::new(), |owned, (key, value)| {
        owned.insert(Header { key, value: *value })
    });
    let message = OwnedMessage::new(
        payload.map(<[u8]>::to_vec),
        key.map(<[u8]>::to_vec),
        topic.to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(headers),
    );
    ConsumedEvent::from_message(&message)
}

/// A record on `topic` with raw header keys, added through librdkafka itself, so a key need not
/// be UTF-8 (as on the wire; rdkafka's safe API takes only `&str` keys).
pub fn consumed_raw(topic: &str, headers: &[(&[u8], Option<&[u8]>)]) -> ConsumedEvent {
    let owned = OwnedHeaders::new_with_capacity(headers.len());
    let native =
        owned.as_borrowed() as *const rdkafka::message::BorrowedHeaders as *mut rdkafka::bindings::rd_kafka_headers_t;
    for (key, value) in headers {
        let (value_ptr, value_len) = match value {
            Some(value) => (value.as_ptr().cast::<std::ffi::c_void>(), value.len() as isize),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `native` is the header list `owned` owns (its `as_borrowed` is that pointer);
        // librdkafka copies the key and the value.
        let error = unsafe {
            rdkafka::bindings::rd_kafka_header_add(
                native,
                key.as_ptr().cast(),
                key.len() as isize,
                value_ptr,
                value_len,
            )
        };
        assert_eq!(
            error,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
    }
    let message = OwnedMessage::new(None, None, topic.to_owned(), Timestamp::NotAvailable, 0, 0, Some(owned));
    ConsumedEvent::from_message(&message)
}

/// Lets a panic that the code under test catches (rdkafka's on a header key that is not UTF-8,
/// which `ConsumedEvent::from_message` catches) go by; any other panic still aborts, as
/// libFuzzer's hook does. Call once before the first input.
pub fn tolerate_caught_rdkafka_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if info
                .location()
                .is_some_and(|location| location.file().contains("rdkafka"))
            {
                return;
            }
            eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
            std::process::abort();
        }));
    });
}

/// A well-formed event on `topic` carrying `payload`, a `schema` message (`ce_dataschema`).
pub fn event(topic: &str, schema: Option<&str>, payload: &[u8]) -> ConsumedEvent {
    let schema = schema.map(|schema| format!("type.googleapis.com/{schema}"));
    let mut headers: Vec<(&str, Option<&[u8]>)> = VALID_HEADERS
        .iter()
        .map(|(key, value)| (*key, Some(value.as_bytes())))
        .collect();
    if let Some(schema) = &schema {
        headers.push(("ce_dataschema", Some(schema.as_bytes())));
    }
    consumed(topic, &headers, Some(b"fuzz-key"), Some(payload))
}

/// Splits `data` into two byte strings: a little-endian `u16` length, that many bytes, the rest.
pub fn split_two(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((length, rest)) = data.split_first_chunk::<2>() else {
        return (&[], data);
    };
    let length = usize::from(u16::from_le_bytes(*length)).min(rest.len());
    rest.split_at(length)
}

/// Asserts that a message decoded from bytes survives encode → decode unchanged and keeps its
/// encoded length (bytes may differ only in the order of map entries).
pub fn assert_round_trip<M: prost::Message + Default + PartialEq>(message: &M) {
    let encoded = message.encode_to_vec();
    let again = M::decode(encoded.as_slice()).expect("an encoded message decodes");
    assert!(&again == message, "decode(encode(m)) != m");
    assert_eq!(again.encoded_len(), encoded.len(), "the encoding changed length");
}

/// Whether PostgreSQL can store `text` in a `text` column (it cannot hold a NUL byte).
pub fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Ids for the system accounts a posting needs, by code, as the ledger would open them.
pub fn system_account_ids(
    accounts: &[fintech_ledger::domain::tax::SystemAccount],
) -> std::collections::BTreeMap<String, uuid::Uuid> {
    accounts
        .iter()
        .enumerate()
        .map(|(index, account)| (account.code.clone(), uuid::Uuid::from_u128(index as u128 + 1)))
        .collect()
}

/// Asserts what every entry the ledger builds from an event must be: an entry id PostEntry
/// would accept, two or more positive lines, debits equal to credits in every currency.
pub fn assert_balanced(entry: &fintech_ledger::domain::NewEntry) {
    use fintech_ledger::domain::Side;
    let mut violations = fintech_types::Violations::default();
    fintech_ledger::domain::entry::check_entry_id(&entry.entry_id, &mut violations);
    assert!(violations.is_empty(), "entry id {:?}: {violations}", entry.entry_id);
    assert!(entry.lines.len() >= 2, "{} lines", entry.lines.len());
    let mut sums: std::collections::BTreeMap<&str, (i128, i128)> = std::collections::BTreeMap::new();
    for line in &entry.lines {
        assert!(line.amount > 0, "line amount {}", line.amount);
        let sum = sums.entry(line.currency.as_str()).or_default();
        match line.side {
            Side::Debit => sum.0 += i128::from(line.amount),
            Side::Credit => sum.1 += i128::from(line.amount),
        }
    }
    for (currency, (debits, credits)) in sums {
        assert_eq!(debits, credits, "{currency} debits != credits");
    }
    for (key, value) in &entry.metadata {
        assert!(storable(key) && storable(value), "metadata {key:?} = {value:?}");
    }
    assert!(storable(&entry.description));
}
