//! Runs the payments service in-process on a free port, with its own database and its own topics
//! (`test.<uuid>.orders.created`, …) on the shared broker.

use std::time::Duration;

use fintech_payments::PaymentsConfig;
use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use tonic::transport::Channel;

use crate::{TestDb, create_topics, kafka_bootstrap};

/// A running payments service.
#[derive(Debug)]
pub struct PaymentsHarness {
    /// Its database.
    pub db: TestDb,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Topic prefix of this instance.
    pub prefix: String,
    /// A connected client.
    pub client: PaymentsServiceClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A fresh topic prefix, `test.<uuid>.`.
pub fn unique_prefix() -> String {
    format!("test.{}.", uuid::Uuid::new_v4().simple())
}

/// The settings a test instance runs with.
pub fn platform_config(service: &str, database_url: &str, bootstrap: &str) -> PlatformConfig {
    PlatformConfig {
        grpc_listen_addr: "127.0.0.1:0".parse().expect("address"),
        database_url: database_url.to_owned(),
        database_max_connections: 20,
        kafka_bootstrap_servers: bootstrap.to_owned(),
        outbox_poll_interval: Duration::from_millis(20),
        ..PlatformConfig::defaults(service, 0)
    }
}

/// A client channel to `address`, waiting until it accepts connections.
pub async fn connect(address: &str) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("endpoint");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "service at {address} never answered: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl PaymentsHarness {
    /// Starts payments with a fresh database and fresh topics.
    pub async fn start() -> Self {
        Self::start_with_prefix(&unique_prefix()).await
    }

    /// Starts payments writing to the topics of `prefix` (shared with other harnesses).
    pub async fn start_with_prefix(prefix: &str) -> Self {
        let db = TestDb::empty().await;
        let prefix = prefix.to_owned();
        let bootstrap = kafka_bootstrap();
        let topics: Vec<String> = fintech_payments::events::TOPICS
            .iter()
            .map(|topic| format!("{prefix}{topic}"))
            .collect();
        create_topics(&bootstrap, &topics.iter().map(String::as_str).collect::<Vec<_>>(), 3).await;

        let config = PaymentsConfig {
            platform: PlatformConfig {
                topic_prefix: prefix.clone(),
                ..platform_config("payments", &db.url, &bootstrap)
            },
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fintech_payments::run(config, listener, shutdown.clone()));
        let client = PaymentsServiceClient::new(connect(&address).await);
        Self {
            db,
            address,
            prefix,
            client,
            shutdown,
            task,
        }
    }

    /// The full name of one of payments' topics.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("payments stops within 30s")
            .expect("payments task")
            .expect("payments returns Ok");
    }
}
