//! An idempotent Kafka producer (`enable.idempotence=true`, `acks=all`): a retried send never
//! duplicates or reorders records within a partition.

use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::client_config;
use super::headers::EventMetadata;
use crate::error::Result;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// A cheap-to-clone idempotent producer.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
    bootstrap_servers: String,
    client_id: String,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("EventProducer").finish_non_exhaustive()
    }
}

impl EventProducer {
    /// Creates a producer; `delivery_timeout` bounds how long one send may wait for the broker
    /// (librdkafka `message.timeout.ms`), after which the send fails and the caller retries later.
    pub fn new(bootstrap_servers: &str, client_id: &str, delivery_timeout: Duration) -> Result<Self> {
        let inner = client_config(bootstrap_servers, client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "2")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .create()?;
        Ok(Self {
            inner,
            bootstrap_servers: bootstrap_servers.to_owned(),
            client_id: client_id.to_owned(),
            delivery_timeout,
        })
    }

    /// A new producer with the same settings (a new producer id). Callers replace a producer
    /// whose sends failed: after a timed-out send librdkafka bumps the producer epoch, which some
    /// brokers mishandle (Tansu 0.6's storage panics on it); a fresh producer id avoids the bump.
    pub fn renewed(&self) -> Result<Self> {
        Self::new(&self.bootstrap_servers, &self.client_id, self.delivery_timeout)
    }

    /// Sends one event: key = aggregate id, value = protobuf payload, CloudEvents + trace headers.
    pub async fn send_event(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        metadata: &EventMetadata,
    ) -> Result<Delivery> {
        self.send_raw(topic, key.as_bytes(), payload, metadata.to_headers())
            .await
    }

    /// Sends a record with headers given as they are (dead-lettering keeps the original ones).
    pub async fn send_raw(&self, topic: &str, key: &[u8], payload: &[u8], headers: OwnedHeaders) -> Result<Delivery> {
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        match self.inner.send(record, Timeout::Never).await {
            Ok(delivery) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _message)) => Err(error.into()),
        }
    }

    /// Waits until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(Timeout::After(timeout))?;
        Ok(())
    }
}
