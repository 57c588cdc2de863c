//! Kafka plumbing on rdkafka (bundled librdkafka): an idempotent producer, a consumer loop with
//! manual commits and a dead-letter path, and the CloudEvents + W3C trace-context headers both use.
//!
//! Everything here speaks the Kafka protocol only; nothing depends on which broker answers.

pub mod consumer;
pub mod headers;
pub mod producer;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub use headers::EventMetadata;
pub use producer::EventProducer;

/// A client configuration with the bootstrap servers and a client id set.
pub fn client_config(bootstrap_servers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", client_id)
        // Loopback brokers resolve to one address; never try IPv6 when IPv4 was given.
        .set("broker.address.family", "v4");
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
