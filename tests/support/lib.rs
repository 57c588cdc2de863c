//! Shared helpers of the integration tests: a fresh database per test, unique topics on the real
//! broker, reading topics back, and where the repository and its tools are.
//!
//! Tests meet the real PostgreSQL (`DATABASE_URL`, default the local server) and the real
//! Kafka-protocol broker (`KAFKA_BOOTSTRAP_SERVERS`, default `127.0.0.1:9092`) that
//! `deploy/local/up infra` starts. Each test uses its own database and topics, so tests run in
//! parallel without seeing each other. Tests that stop or crash the broker or the database use the
//! private ones of `fintech_devkit` (`broker::PrivateBroker`, `postgres::PgCluster`).

pub mod accounts;
pub mod auth;
pub mod gateway;
pub mod groups;
pub mod ledger;
pub mod notifications;
pub mod payments;
pub mod process;
pub mod service;
pub mod tax;
pub mod transfers;

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::{Connection, PgConnection, PgPool};

/// The repository root (the folder holding the workspace `Cargo.toml`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A tool installed by `scripts/install-tools` (node tools under `tools/node_modules/.bin`).
pub fn node_tool(name: &str) -> PathBuf {
    repo_root().join("tools/node_modules/.bin").join(name)
}

/// A Python tool installed by `scripts/install-tools` into `.tools/venv/bin`.
pub fn venv_tool(name: &str) -> PathBuf {
    repo_root().join(".tools/venv/bin").join(name)
}

/// The broker the tests use.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn admin_database_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test, named `fintech_test_<uuid>`, dropped when the value is
/// dropped (`scripts/test` drops what killed runs left behind).
#[derive(Debug)]
pub struct TestDb {
    /// Connection URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates an empty database with the platform tables migrated.
    pub async fn with_platform_tables() -> Self {
        let db = Self::empty().await;
        fintech_platform::db::migrate_platform(&db.pool)
            .await
            .expect("platform migrations apply");
        db
    }

    /// Creates an empty database.
    pub async fn empty() -> Self {
        let name = format!("fintech_test_{}", uuid::Uuid::new_v4().simple());
        let admin_url = admin_database_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("admin connection to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .expect("url has a database");
        let url = format!("{base}/{name}");
        let pool = fintech_platform::db::connect(&url, 16, Duration::from_secs(10))
            .await
            .expect("connect to test database");
        Self { url, name, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop cannot await: a short-lived thread with its own runtime drops the database,
        // terminating whatever connections the test left open.
        let name = self.name.clone();
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Creates topics with `partitions` partitions on the broker at `bootstrap` (an existing one is fine).
pub async fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) {
    fintech_devkit::create_topics(bootstrap, topics, partitions)
        .await
        .expect("topics created");
}

/// A consumer in a fresh group that reads `topics` from the beginning.
pub fn reader(bootstrap: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    consumer.subscribe(topics).expect("subscribe");
    consumer
}

/// Reads records from `consumer` until `count` arrived or `timeout` passed; returns what arrived.
pub async fn read_records(consumer: &StreamConsumer, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < count {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => records.push(message.detach()),
            Ok(Err(error)) => tracing::warn!(%error, "reader error"),
            Err(_) => break,
        }
    }
    records
}

/// Reads for `quiet` more and returns whatever else arrives (to prove nothing extra was sent).
pub async fn read_extra(consumer: &StreamConsumer, quiet: Duration) -> Vec<OwnedMessage> {
    read_records(consumer, usize::MAX, quiet).await
}

/// Every record of `topic`, from the first offset of each partition up to the high watermark read
/// when the call starts (see [`fintech_devkit::read_to_end`]). Panics when the end is not reached
/// within `timeout`.
pub async fn read_to_end(bootstrap: &str, topic: &str, timeout: Duration) -> Vec<OwnedMessage> {
    fintech_devkit::read_to_end(bootstrap, topic, timeout)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"))
}

/// Waits until every outbox row of the database at `pool` is published (parked rows count as not
/// published: a test that reaches this expects none). Panics after `timeout`.
pub async fn wait_outbox_drained(pool: &PgPool, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await
            .unwrap_or(i64::MAX);
        if unpublished == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unpublished} outbox rows still unpublished after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The UTF-8 value of header `name` of a record.
pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    record
        .headers()
        .and_then(|headers| fintech_platform::kafka::headers::header_str(headers, name))
}
