//! Runs the tax service in-process with its own database, reading the topics of a given prefix
//! (the same prefix a payments harness writes, for end-to-end tests).

use std::time::Duration;

use fintech_platform::CancellationToken;
use fintech_proto::tax::tax_service_client::TaxServiceClient;
use fintech_tax::TaxConfig;
use tonic::transport::Channel;

use crate::payments::{connect, platform_config};
use crate::{TestDb, create_topics, kafka_bootstrap};

/// A running tax service.
#[derive(Debug)]
pub struct TaxHarness {
    /// Its database.
    pub db: TestDb,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Topic prefix.
    pub prefix: String,
    /// A connected client.
    pub client: TaxServiceClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Creates every topic tax reads and writes under `prefix`.
pub async fn create_tax_topics(prefix: &str) {
    let topics: Vec<String> = fintech_tax::events::INPUT_TOPICS
        .iter()
        .chain(fintech_tax::events::OUTPUT_TOPICS.iter())
        .map(|topic| format!("{prefix}{topic}"))
        .collect();
    create_topics(
        &kafka_bootstrap(),
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
        3,
    )
    .await;
}

impl TaxHarness {
    /// Starts tax on `prefix`'s topics with the given parking deadline.
    pub async fn start(prefix: &str, park_deadline: Duration) -> Self {
        let db = TestDb::empty().await;
        create_tax_topics(prefix).await;
        let config = TaxConfig {
            platform: fintech_platform::config::PlatformConfig {
                topic_prefix: prefix.to_owned(),
                ..platform_config("tax", &db.url, &kafka_bootstrap())
            },
            park_deadline,
            sweep_interval: Duration::from_millis(200),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fintech_tax::run(config, listener, shutdown.clone()));
        let client = TaxServiceClient::new(connect(&address).await);
        Self {
            db,
            address,
            prefix: prefix.to_owned(),
            client,
            shutdown,
            task,
        }
    }

    /// The full name of a topic under this prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Waits until `count` results are stored.
    pub async fn wait_for_taxed(&self, count: i64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM taxed_transactions")
                .fetch_one(&self.db.pool)
                .await
                .expect("count");
            if stored >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {stored} of {count} taxed after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops tax gracefully.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("tax stops within 30s")
            .expect("tax task")
            .expect("tax returns Ok");
    }
}
