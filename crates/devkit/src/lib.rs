//! Helpers that the integration tests (`tests/`) and the benchmark (`bench/`) both need to run
//! their own databases, brokers and topics. Development only: no service depends on this crate.
//!
//! # Layout
//!
//! - this file: the Tansu binary and its storage preparation, free ports, topic creation
//! - [`auth`]: development signing keys, their JWKS and tokens (tests, bench, `deploy/local/token`)
//! - [`http`]: one HTTP/1.1 request read on the server side (the webhook receivers)
//! - [`broker`]: a private broker (Tansu) that a test may kill, freeze and restart, and that the
//!   benchmark runs on so that it neither measures nor disturbs its neighbours
//! - [`mock`]: a private in-memory broker (librdkafka's mock cluster in the `fintech-mock-broker`
//!   process) that rebalances consumer groups as Apache Kafka does, for the scale-out test and the
//!   benchmark's second broker
//! - [`postgres`]: a private PostgreSQL cluster that a test may stop, crash and restart
//! - [`temporal`]: a private Temporal server (the CLI's dev server on SQLite) that a test may
//!   kill and restart

pub mod auth;
pub mod broker;
pub mod http;
pub mod mock;
pub mod postgres;
pub mod temporal;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

pub mod process;

/// The Tansu binary: `TANSU_BIN`, else `~/.cargo/bin/tansu` (where `deploy/local/up` installs
/// it), else `tansu` on the `PATH`.
pub fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    let installed = PathBuf::from(home).join(".cargo/bin/tansu");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tansu")
    }
}

/// Indexes a Tansu SQLite file before the broker opens it, as `deploy/local/up` does, by running
/// `deploy/local/tansu_storage.py` (ADR 0008).
pub fn prepare_tansu_storage(database: &Path) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/tansu_storage.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(database)
        .output()
        .with_context(|| format!("run python3 {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Creates `topics` with `partitions` partitions each (replication 1); an existing topic is fine.
/// Topics are never deleted: on the local broker (Tansu 0.6.0) deleting one deletes them all.
pub async fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()
        .context("admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("create topics")?;
    for result in results {
        if let Err((topic, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("creating {topic} failed: {code:?}");
        }
    }
    Ok(())
}

pub use process::log_tail;

/// Every record of `topic`, from the first offset of each partition up to the high watermark read
/// when the call starts: the whole topic, so a duplicate anywhere in it is seen (a reader that
/// stops after the count it expects cannot see one). Fails when the end is not reached within
/// `timeout`. The integration tests and the fault campaign read their topics with it.
pub async fn read_to_end(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    use rdkafka::Message as _;
    use rdkafka::TopicPartitionList;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::topic_partition_list::Offset;

    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", format!("reader-{}-{nonce}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .context("reader consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|entry| entry.partitions().iter().map(|partition| partition.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut ends = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{partition}"))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let deadline = tokio::time::Instant::now() + timeout;
    while !ends.is_empty() {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => message,
            Ok(Err(_)) => continue,
            Err(_) => bail!(
                "{topic}: the end was not reached within {timeout:?} ({} partitions left)",
                ends.len()
            ),
        };
        let partition = message.partition();
        let next = message.offset() + 1;
        records.push(message.detach());
        if ends.get(&partition).is_some_and(|&end| next >= end) {
            ends.remove(&partition);
        }
    }
    Ok(records)
}
