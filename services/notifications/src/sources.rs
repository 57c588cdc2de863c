//! What notifications consumes and publishes.
//!
//! # In: the platform's topics
//! [`SOURCES`] maps each topic to its public event type, one row per topic; only the rows whose
//! topic is in `proto/topics.json` are subscribed ([`input_topics`]), so a producer's topics need
//! nothing here but their row. The payload becomes JSON generically: the record's CloudEvents
//! `ce_dataschema` names the protobuf message, which is looked up in the descriptor set the proto
//! crate embeds and rendered in the protobuf JSON mapping (every field, defaults included).
//!
//! Each record is applied in one transaction with its inbox row ([`InTransaction`]): the event is
//! stored once and one message per endpoint that wants it is created once; a redelivered record
//! creates nothing. A record that cannot be read goes to `notifications.dlq`.
//!
//! # Out
//! `notifications.endpoint_disabled` (`EndpointDisabled`) when the service disables an endpoint
//! by itself, through the outbox.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use fintech_platform::kafka::TopicNames;
use fintech_platform::kafka::consumer::{BatchFailure, ConsumedEvent, EventHandler, HandlerError};
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_proto::topics;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use sqlx::{PgConnection, PgPool};

use crate::domain::MAX_BODY;

/// CloudEvents source of what notifications publishes.
pub const SOURCE: &str = "/fintech/notifications";
/// Consumer group (and inbox name).
pub const CONSUMER: &str = "notifications";
/// Where unreadable records go.
pub const NOTIFICATIONS_DLQ: &str = topics::NOTIFICATIONS_DLQ.name;
/// Topics notifications writes.
pub const OUTPUT_TOPICS: [&str; 2] = [topics::NOTIFICATIONS_ENDPOINT_DISABLED.name, NOTIFICATIONS_DLQ];
/// Public type of the events `SendTestEvent` creates.
pub const TEST_EVENT_TYPE: &str = "notifications.test";

/// Platform topic → public event type. A topic not (yet) in `proto/topics.json` is skipped.
pub const SOURCES: &[(&str, &str)] = &[
    ("orders.created", "order.created"),
    ("orders.updated", "order.updated"),
    ("transactions.created", "transaction.created"),
    ("transactions.updated", "transaction.updated"),
    ("tax.calculated", "tax.calculated"),
    ("tax.failed", "tax.failed"),
    ("tax.reversed", "tax.reversed"),
    ("ledger.entry_posted", "ledger.entry.posted"),
    ("ledger.hold_placed", "ledger.hold.placed"),
    ("ledger.hold_captured", "ledger.hold.captured"),
    ("ledger.hold_released", "ledger.hold.released"),
    ("ledger.hold_expired", "ledger.hold.expired"),
    ("accounts.opened", "account.opened"),
    ("accounts.updated", "account.updated"),
    ("accounts.interest_posted", "account.interest.posted"),
    ("transfers.created", "transfer.created"),
    ("transfers.completed", "transfer.completed"),
    ("transfers.failed", "transfer.failed"),
    ("transfers.cancelled", "transfer.cancelled"),
];

/// The topics of [`SOURCES`] that exist, unprefixed.
pub fn input_topics() -> Vec<&'static str> {
    SOURCES
        .iter()
        .filter(|(topic, _)| topics::Topic::named(topic).is_some_and(|topic| topic.payload.is_some()))
        .map(|(topic, _)| *topic)
        .collect()
}

/// The public event type of an (unprefixed) topic.
pub fn public_type(topic: &str) -> Option<&'static str> {
    SOURCES
        .iter()
        .find(|(name, _)| *name == topic)
        .map(|(_, public)| *public)
}

/// The contracts, for the JSON mapping of any payload.
static DESCRIPTORS: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(fintech_proto::FILE_DESCRIPTOR_SET).map_err(|error| error.to_string()));

/// Checks at start-up that the contracts load and name every payload of the subscribed topics.
pub fn check_descriptors() -> anyhow::Result<()> {
    let pool = DESCRIPTORS
        .as_ref()
        .map_err(|error| anyhow::anyhow!("the embedded descriptor set: {error}"))?;
    for topic in input_topics() {
        let payload = topics::Topic::named(topic)
            .and_then(|topic| topic.payload)
            .unwrap_or_default();
        if pool.get_message_by_name(payload).is_none() {
            anyhow::bail!("topic {topic}: payload {payload} is not in the descriptor set");
        }
    }
    Ok(())
}

/// The protobuf JSON mapping of `payload`, a `message` (full name); every field is written.
pub fn payload_json(message: &str, payload: &[u8]) -> Result<serde_json::Value, String> {
    let pool = DESCRIPTORS.as_ref().map_err(Clone::clone)?;
    let descriptor = pool
        .get_message_by_name(message)
        .ok_or_else(|| format!("{message} is no message of the contracts"))?;
    let decoded =
        DynamicMessage::decode(descriptor, payload).map_err(|error| format!("not a valid {message}: {error}"))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    decoded
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|error| format!("{message} as JSON: {error}"))
}

/// The webhook body: `{"type", "timestamp", "data"}`. An entity that would make it larger than
/// [`MAX_BODY`] is left out (`"data": null, "data_omitted": true`, with the subject) so the
/// receiver can fetch it; bodies stay under 20 kB.
pub fn body(
    event_type: &str,
    timestamp: chrono::DateTime<chrono::Utc>,
    subject: &str,
    data: serde_json::Value,
) -> String {
    let timestamp = timestamp.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let full = serde_json::json!({"type": event_type, "timestamp": timestamp, "data": data}).to_string();
    if full.len() <= MAX_BODY {
        return full;
    }
    serde_json::json!({
        "type": event_type,
        "timestamp": timestamp,
        "data": null,
        "data_omitted": true,
        "subject": fintech_platform::auth::short(subject),
    })
    .to_string()
}

/// Stores each consumed event and creates its messages, in the inbox transaction.
/// Longest subject (an entity id) notifications stores.
pub const MAX_SUBJECT: usize = 256;

/// The subject of an event: `ce_subject`, else the record key, else empty; refused (a permanent
/// failure: the record is dead-lettered with this reason) when it holds a control character such
/// as NUL (which PostgreSQL text cannot store) or is longer than [`MAX_SUBJECT`] bytes. The
/// platform's producers only ever send entity ids here.
pub fn subject(ce_subject: Option<&str>, key: Option<&str>) -> Result<String, String> {
    let (subject, field) = match (ce_subject, key) {
        (Some(subject), _) => (subject, "ce_subject"),
        (None, Some(key)) => (key, "the record key"),
        (None, None) => return Ok(String::new()),
    };
    if subject.len() > MAX_SUBJECT {
        return Err(format!(
            "{field} is {} bytes long, more than {MAX_SUBJECT}",
            subject.len()
        ));
    }
    if let Some(bad) = subject.chars().find(|character| character.is_control()) {
        return Err(format!("{field} holds the control character {:?}", bad));
    }
    Ok(subject.to_owned())
}

#[derive(Debug, Clone)]
pub struct SourceHandler {
    topics: TopicNames,
}

#[async_trait]
impl TransactionalHandler for SourceHandler {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let metadata = event.valid_metadata()?;
        let topic = self.topics.unprefixed(&event.topic);
        let event_type = public_type(topic)
            .ok_or_else(|| HandlerError::permanent(format!("notifications does not consume {topic}")))?;
        let payload = event
            .payload
            .as_deref()
            .ok_or_else(|| HandlerError::permanent("record has no value"))?;
        let data = payload_json(&metadata.payload_type, payload).map_err(HandlerError::permanent)?;
        let subject = subject(metadata.subject.as_deref(), event.key_str()).map_err(HandlerError::permanent)?;
        let body = body(event_type, metadata.time, &subject, data);
        let event_id = uuid::Uuid::new_v4();
        let (sequence, messages) =
            crate::storage::insert_event(conn, event_id, event_type, &subject, metadata.time, &body, None)
                .await
                .map_err(HandlerError::classified)?;
        tracing::debug!(%event_id, sequence, event_type, messages = messages.len(), "event stored");
        Ok(())
    }
}

/// The consumer's handler: [`SourceHandler`] in the inbox transaction, and after each commit a
/// wake-up of the delivery worker and of the live streams.
#[derive(Debug)]
pub struct Sources {
    inner: InTransaction<SourceHandler>,
    wake: crate::app::Wake,
}

impl Sources {
    /// The handler on `pool`, reading the topics of `topics`' prefix.
    pub fn handler(pool: PgPool, topics: TopicNames, wake: crate::app::Wake) -> Arc<dyn EventHandler> {
        Arc::new(Self {
            inner: InTransaction::new(pool, SourceHandler { topics }),
            wake,
        })
    }
}

#[async_trait]
impl EventHandler for Sources {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let result = self.inner.handle(event).await;
        self.wake.wake();
        result
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    async fn handle_batch(&self, events: &[ConsumedEvent]) -> Result<(), BatchFailure> {
        let result = self.inner.handle_batch(events).await;
        self.wake.wake();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn the_subject_is_ce_subject_else_the_key_and_refuses_control_characters_and_overlong_ids() {
        assert_eq!(subject(Some("order-1"), Some("key-1")), Ok("order-1".to_owned()));
        assert_eq!(subject(None, Some("key-1")), Ok("key-1".to_owned()));
        assert_eq!(subject(None, None), Ok(String::new()));
        let nul = subject(Some("order\u{0}1"), None).expect_err("NUL");
        assert!(nul.contains("ce_subject") && nul.contains("control"), "{nul}");
        let key = subject(None, Some("key\n1")).expect_err("newline");
        assert!(key.contains("record key"), "{key}");
        let long = "x".repeat(MAX_SUBJECT + 1);
        assert!(subject(Some(&long), None).expect_err("too long").contains("257 bytes"));
        assert!(subject(Some(&"x".repeat(MAX_SUBJECT)), None).is_ok());
    }

    #[test]
    fn every_existing_source_topic_is_subscribed_and_only_those() {
        let subscribed = input_topics();
        assert!(subscribed.contains(&"tax.calculated"));
        assert!(subscribed.contains(&"ledger.entry_posted"));
        assert!(subscribed.contains(&"accounts.opened"));
        assert!(subscribed.contains(&"transfers.completed"));
        assert_eq!(
            subscribed.len(),
            SOURCES.len(),
            "every source row names a topic of proto/topics.json"
        );
        for topic in &subscribed {
            assert!(topics::Topic::named(topic).is_some());
        }
        check_descriptors().expect("descriptors");
    }

    #[test]
    fn payloads_render_in_the_protobuf_json_mapping() {
        let account = fintech_proto::accounts::Account {
            account_id: "a-1".to_owned(),
            customer_id: "c-1".to_owned(),
            currency: "EUR".to_owned(),
            overdraft_limit: 500,
            version: 3,
            ..Default::default()
        };
        let json = payload_json("fintech.accounts.v1.Account", &account.encode_to_vec()).expect("json");
        assert_eq!(json["accountId"], "a-1");
        assert_eq!(json["overdraftLimit"], "500", "int64 is a string in the JSON mapping");
        assert_eq!(json["state"], "ACCOUNT_STATE_UNSPECIFIED", "defaults are written");
        assert!(payload_json("fintech.nothing.v1.X", &[]).is_err());

        let transfer = fintech_proto::transfers::Transfer {
            transfer_id: "t-1".to_owned(),
            amount: 12_000,
            version: 4,
            ..Default::default()
        };
        let json = payload_json("fintech.transfers.v1.Transfer", &transfer.encode_to_vec()).expect("json");
        assert_eq!(json["transferId"], "t-1");
        assert_eq!(json["amount"], "12000");
    }

    #[test]
    fn large_entities_are_left_out_of_the_body() {
        let now = chrono::Utc::now();
        let small = body("t.x", now, "s", serde_json::json!({"a": 1}));
        assert!(small.contains("\"data\":{\"a\":1}"));
        let large = body("t.x", now, "s", serde_json::json!({"a": "x".repeat(30_000)}));
        assert!(large.len() < MAX_BODY);
        assert!(large.contains("\"data_omitted\":true"));
    }
}
