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
