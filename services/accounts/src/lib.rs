//! Accounts: owns customers' current and savings accounts (CASA), serves
//! `fintech.accounts.v1.AccountsService`, publishes every change with the account's full state
//! through the transactional outbox, projects the ledger's events into balances, and runs the
//! dormancy and savings-interest jobs (docs/adr/0023-accounts-service.md).
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service (decode, call [`app`], encode) and the one error-to-status
//!   mapping;
//! - [`app`]: the use cases (commands, the ledger projection, the jobs);
//! - [`domain`]: accounts, the lifecycle state machine, interest arithmetic and rates (no I/O);
//! - [`storage`]: the SQL;
//! - [`events`]: topics, the outbox events and the projection consumer;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod app;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod proto;
pub mod storage;

use std::sync::Arc;

use anyhow::Context as _;
use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::{Kit, Service};
use fintech_proto::accounts::accounts_service_server::AccountsServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::AccountsConfig;

/// The accounts tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/accounts");

/// Full name of the gRPC service, as health and reflection report it.
pub const SERVICE_NAME: &str = <AccountsServiceServer<grpc::AccountsGrpc> as tonic::server::NamedService>::NAME;

/// The accounts service, as the kit runs it.
#[derive(Debug)]
pub struct Accounts;

impl Accounts {
    /// The savings rate table shipped with the service, validated.
    pub fn rates() -> anyhow::Result<Arc<domain::interest::RateTable>> {
        Ok(Arc::new(
            domain::interest::RateTable::embedded().context("the embedded savings rate table")?,
        ))
    }

    /// The application `run` serves, on `pool` (tests drive its jobs with their own clock).
    pub fn app(config: &AccountsConfig, pool: sqlx::PgPool) -> anyhow::Result<app::AccountsApp> {
        let rates = Self::rates()?;
        Ok(app::AccountsApp::new(
            pool,
            fintech_platform::idempotency::IdempotencyStore::new(config.platform.redis_url.as_deref())
                .context("REDIS_URL")?,
            events::Topics::with_prefix(&config.platform.topic_prefix),
            rates,
            config.dormant_after,
        ))
    }
}

impl Service for Accounts {
    const NAME: &'static str = "accounts";
    const DEFAULT_PORT: u16 = config::DEFAULT_PORT;
    type Config = AccountsConfig;

    fn config(platform: PlatformConfig) -> AccountsConfig {
        AccountsConfig::defaults(platform)
    }

    fn config_from_env() -> fintech_platform::Result<AccountsConfig> {
        AccountsConfig::from_env()
    }

    /// Runs accounts on `listener` until `shutdown` fires: the ledger projection consumer, the
    /// dormancy and interest jobs, the outbox relays and the gRPC service.
    async fn run(config: AccountsConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        // The rate table is validated before anything starts: a bad table stops the start-up.
        Accounts::rates()?;
        let kit = Kit::start(&config.platform, &MIGRATOR).await?;
        let app = Accounts::app(&config, kit.pool().clone())?;
        let topics = events::Topics::with_prefix(&config.platform.topic_prefix);
        let dormancy = {
            let (app, interval) = (app.clone(), config.dormancy_interval);
            move |stop| app::jobs::run_dormancy_job(app, interval, stop)
        };
        let interest = {
            let (app, interval, lag) = (app.clone(), config.interest_interval, config.accrual_lag);
            move |stop| app::jobs::run_interest_job(app, interval, lag, stop)
        };
        kit.consumer(
            events::CONSUMER,
            &events::INPUT_TOPICS,
            events::ACCOUNTS_DLQ,
            events::handler(app.pool().clone(), topics),
        )
        .job("dormancy", dormancy)
        .job("interest", interest)
        .grpc(AccountsServiceServer::new(grpc::AccountsGrpc::new(app)))
        .serve(listener, shutdown)
        .await
    }
}
