//! Runs the tax service in-process with its own database, reading the topics of a given prefix
//! (the same prefix a payments harness writes, for end-to-end tests).

use std::time::Duration;

use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::Service as _;
use fintech_proto::tax::tax_service_client::TaxServiceClient;
use fintech_tax::{Tax, TaxConfig};

use crate::service::Channel;
use crate::service::{ServiceHarness, create_prefixed_topics, platform_env};
use crate::{TestDb, kafka_bootstrap};

/// A running tax service.
pub type TaxHarness = ServiceHarness<TaxServiceClient<Channel>>;

/// Every topic tax reads and writes.
fn topics() -> Vec<&'static str> {
    fintech_tax::events::INPUT_TOPICS
        .iter()
        .chain(fintech_tax::events::OUTPUT_TOPICS.iter())
        .copied()
        .collect()
}

/// Creates every topic tax reads and writes under `prefix`.
pub async fn create_tax_topics(prefix: &str) {
    create_prefixed_topics(&kafka_bootstrap(), prefix, &topics()).await;
}

/// Tax's settings in a test: the test platform settings on the topics of `prefix`, the
/// sweeper every 200 ms and the default parking deadline (the harness sets its own).
pub fn config(platform: PlatformConfig, _db: &TestDb, prefix: &str) -> TaxConfig {
    TaxConfig {
        sweep_interval: Duration::from_millis(200),
        ..Tax::config(PlatformConfig {
            topic_prefix: prefix.to_owned(),
            ..platform
        })
    }
}

/// `config` as the environment of a tax process (see [`crate::process`]).
pub fn env(config: &TaxConfig) -> Vec<(&'static str, String)> {
    let TaxConfig {
        platform,
        park_deadline,
        sweep_interval,
    } = config;
    let mut env = platform_env(platform);
    env.push(("TAX_PARK_DEADLINE_SECS", park_deadline.as_secs().to_string()));
    env.push(("TAX_SWEEP_INTERVAL_MS", sweep_interval.as_millis().to_string()));
    env
}

impl TaxHarness {
    /// Starts tax on `prefix`'s topics with the given parking deadline; returns once it answers
    /// (so its migrations have run and tests may read its tables).
    pub async fn start(prefix: &str, park_deadline: Duration) -> Self {
        Self::start_with(prefix, |config| config.park_deadline = park_deadline).await
    }

    /// Starts tax on `prefix`'s topics after `configure` adjusted its settings; returns once it
    /// answers.
    pub async fn start_with(prefix: &str, configure: impl FnOnce(&mut TaxConfig)) -> Self {
        let harness = Self::launch(
            "tax",
            prefix,
            &topics(),
            |platform, db, prefix| {
                let mut config = config(platform, db, prefix);
                configure(&mut config);
                config
            },
            Tax::run,
            TaxServiceClient::new,
        )
        .await;
        harness
            .client
            .clone()
            .list_failed(fintech_proto::tax::ListFailedRequest::default())
            .await
            .expect("tax answers once started");
        harness
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
}
