//! Runs the payments service in-process on a free port, with its own database and its own topics
//! (`test.<uuid>.orders.created`, …) on the shared broker.

use fintech_payments::{Payments, PaymentsConfig};
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::Service as _;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;

use crate::TestDb;
use crate::service::Channel;
use crate::service::{ServiceHarness, platform_env};
pub use crate::service::{connect, platform_config, unique_prefix};

/// A running payments service.
pub type PaymentsHarness = ServiceHarness<PaymentsServiceClient<Channel>>;

/// Payments' settings in a test: the test platform settings on the topics of `prefix`.
pub fn config(platform: PlatformConfig, _db: &TestDb, prefix: &str) -> PaymentsConfig {
    Payments::config(PlatformConfig {
        topic_prefix: prefix.to_owned(),
        ..platform
    })
}

/// `config` as the environment of a payments process (see [`crate::process`]).
pub fn env(config: &PaymentsConfig) -> Vec<(&'static str, String)> {
    let PaymentsConfig { platform, group_commit } = config;
    let mut env = platform_env(platform);
    env.push(("PAYMENTS_GROUP_COMMIT", group_commit.enabled.to_string()));
    env.push(("PAYMENTS_GROUP_COMMIT_WORKERS", group_commit.workers.to_string()));
    env.push(("PAYMENTS_GROUP_COMMIT_MAX_BATCH", group_commit.max_batch.to_string()));
    env
}

impl PaymentsHarness {
    /// Starts payments with a fresh database and fresh topics.
    pub async fn start() -> Self {
        Self::start_with_prefix(&unique_prefix()).await
    }

    /// Starts payments writing to the topics of `prefix` (shared with other harnesses).
    pub async fn start_with_prefix(prefix: &str) -> Self {
        Self::launch(
            "payments",
            prefix,
            &fintech_payments::events::TOPICS,
            config,
            Payments::run,
            PaymentsServiceClient::new,
        )
        .await
    }
}
