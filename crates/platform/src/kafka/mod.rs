//! Kafka plumbing on rdkafka (bundled librdkafka): an idempotent producer, a consumer loop that
//! commits only finished records, and a dead-letter path, and the CloudEvents + W3C trace-context headers both use;
//! [`transactional`] runs a consumer's database effect and its inbox row in one transaction per
//! record or per batch.
//!
//! Everything here speaks the Kafka protocol only; nothing depends on which broker answers.

pub mod consumer;
pub mod headers;
pub mod producer;
pub mod transactional;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub use headers::EventMetadata;
pub use producer::EventProducer;

/// Topic names with an optional prefix (`TOPIC_PREFIX`), so tests and shared brokers can run
/// several isolated copies of the system side by side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    /// Topics named `<prefix><topic>`.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The full name of `topic`.
    pub fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The unprefixed name of a full topic name (itself when it lacks the prefix).
    pub fn unprefixed<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(self.prefix.as_str()).unwrap_or(topic)
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A client configuration with the bootstrap servers, a client id and the `KAFKA_PROPERTY_*`
/// pass-through properties (TLS, SASL; [`crate::tls::KafkaProperties`]) set. The address family
/// is librdkafka's default (IPv4 and IPv6); `KAFKA_PROPERTY_BROKER_ADDRESS_FAMILY=v4` narrows it.
pub fn client_config(bootstrap_servers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", client_id);
    // A service validated these at start-up (`PlatformConfig::from_env`); other callers (tools,
    // tests) get a logged refusal instead of a client that silently ignores them.
    match crate::tls::KafkaProperties::from_env() {
        Ok(properties) => {
            for (name, value) in properties.iter() {
                config.set(name, value);
            }
        }
        Err(error) => tracing::error!(%error, "ignoring the KAFKA_PROPERTY_* settings"),
    }
    config
}

/// Whether a broker answers a metadata request within `timeout` (used by health checks).
pub async fn broker_reachable(bootstrap_servers: &str, timeout: Duration) -> bool {
    let bootstrap_servers = bootstrap_servers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: Result<BaseConsumer, _> = client_config(&bootstrap_servers, "fintech-health-probe")
            .set("log_level", "0")
            .create();
        match consumer {
            Ok(consumer) => consumer.fetch_metadata(None, timeout).is_ok(),
            Err(_) => false,
        }
    })
    .await
    .unwrap_or(false)
}
