//! Replaying a dead-letter topic: the operator's way back once the cause of the dead letters is
//! fixed (`fintech-ops dlq replay`, see the README).
//!
//! [`replay`] reads the dead-letter topic from where its replay group stopped up to the end the
//! topic had when the replay started, and publishes each record again, with its original key,
//! value and headers (the `dlq_*` headers removed), to the topic it came from
//! (`dlq_original_topic`) or to a topic the operator names.
//!
//! # Guarantees
//! - **Nothing lost, nothing skipped.** A record's offset is committed only after the broker
//!   acknowledged its copy (idempotent producer, `acks=all`); a replay that stops half-way
//!   resumes after the last acknowledged record. A record without `dlq_original_topic` (and no
//!   target given) stops the replay with an error naming its offset, before anything after it.
//! - **Safe to repeat.** A record replayed twice reaches its consumer twice with the same `ce_id`;
//!   the consumer's inbox applies it once. A record that fails again is dead-lettered again, with
//!   fresh `dlq_*` headers.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::without_dead_letter_headers;
use super::headers::{DEAD_LETTER_TOPIC, header_str};
use super::{EventProducer, client_config};
use crate::error::{Error, Result};

/// What to replay and where.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// The dead-letter topic to read.
    pub dead_letter_topic: String,
    /// Where the records go; `None`: each to its `dlq_original_topic`.
    pub target_topic: Option<String>,
    /// Consumer group of the replay; its committed offsets say where the next replay starts.
    pub group_id: String,
    /// Most records to replay in this run (`None`: all up to the end).
    pub limit: Option<u64>,
    /// Longest wait for the broker (metadata, a record, an acknowledgement).
    pub timeout: Duration,
}

impl ReplaySettings {
    /// Replays `dead_letter_topic` in group `fintech-ops-replay.<dead_letter_topic>`, each record
    /// to its original topic, with a 30 s broker timeout.
    pub fn new(bootstrap_servers: impl Into<String>, dead_letter_topic: impl Into<String>) -> Self {
        let dead_letter_topic = dead_letter_topic.into();
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: format!("fintech-ops-replay.{dead_letter_topic}"),
            dead_letter_topic,
            target_topic: None,
            limit: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records published again, per target topic.
    pub replayed: HashMap<String, u64>,
}

impl ReplayReport {
    /// Records published again in all.
    pub fn total(&self) -> u64 {
        self.replayed.values().sum()
    }
}

/// Replays the dead-letter topic (see the [module](self) docs).
pub async fn replay(settings: &ReplaySettings) -> Result<ReplayReport> {
    let consumer: StreamConsumer = client_config(&settings.bootstrap_servers, "fintech-ops-replay")
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let producer = EventProducer::new(&settings.bootstrap_servers, "fintech-ops-replay", settings.timeout)?;

    // The end of every partition now: the replay stops there, so records dead-lettered while it
    // runs (a replayed record failing again) wait for the next replay.
    let (topic, timeout) = (settings.dead_letter_topic.clone(), settings.timeout);
    let (consumer, ends) = tokio::task::spawn_blocking(move || -> Result<_> {
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|entry| entry.name() == topic)
            .flat_map(|entry| entry.partitions().iter().map(|partition| partition.id()))
            .collect();
        if partitions.is_empty() {
            return Err(Error::Replay(format!("{topic} does not exist or has no partitions")));
        }
        let mut assignment = TopicPartitionList::new();
        for partition in &partitions {
            assignment.add_partition(&topic, *partition);
        }
        let committed = consumer.committed_offsets(assignment.clone(), timeout)?;
        let mut ends = HashMap::new();
        for partition in &partitions {
            let (low, high) = consumer.fetch_watermarks(&topic, *partition, timeout)?;
            let start = match committed
                .find_partition(&topic, *partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(offset)) => offset.max(low),
                _ => low,
            };
            assignment.set_partition_offset(&topic, *partition, Offset::Offset(start))?;
            if start < high {
                ends.insert(*partition, high);
            }
        }
        consumer.assign(&assignment)?;
        Ok((consumer, ends))
    })
    .await
    .map_err(|error| Error::Replay(format!("set-up task: {error}")))??;

    let mut remaining = ends;
    let mut report = ReplayReport::default();
    while !remaining.is_empty() && settings.limit.is_none_or(|limit| report.total() < limit) {
        let message = tokio::time::timeout(settings.timeout, consumer.recv())
            .await
            .map_err(|_| {
                Error::Replay(format!(
                    "no record within {:?} although partitions {:?} have more",
                    settings.timeout,
                    remaining.keys().collect::<Vec<_>>()
                ))
            })??;
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = remaining.get(&partition) else {
            continue;
        };
        if offset >= end {
            remaining.remove(&partition);
            continue;
        }
        let headers = message.headers().map(|headers| {
            use rdkafka::message::{Header, Headers, OwnedHeaders};
            headers.iter().fold(OwnedHeaders::new(), |owned, header| {
                owned.insert(Header {
                    key: header.key,
                    value: header.value,
                })
            })
        });
        let target = match &settings.target_topic {
            Some(target) => target.clone(),
            None => headers
                .as_ref()
                .and_then(|headers| header_str(headers, DEAD_LETTER_TOPIC))
                .ok_or_else(|| {
                    Error::Replay(format!(
                        "{}[{partition}]@{offset} has no {DEAD_LETTER_TOPIC} header; name a target topic",
                        settings.dead_letter_topic
                    ))
                })?,
        };
        producer
            .send_raw(
                &target,
                message.key().unwrap_or_default(),
                message.payload().unwrap_or_default(),
                without_dead_letter_headers(headers.as_ref()),
            )
            .await?;
        let mut next = TopicPartitionList::with_capacity(1);
        next.add_partition_offset(&settings.dead_letter_topic, partition, Offset::Offset(offset + 1))?;
        consumer.commit(&next, CommitMode::Sync)?;
        *report.replayed.entry(target).or_default() += 1;
        if offset + 1 >= end {
            remaining.remove(&partition);
        }
    }
    tracing::info!(replayed = report.total(), dead_letter_topic = %settings.dead_letter_topic, "dead letters replayed");
    Ok(report)
}
