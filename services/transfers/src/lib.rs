//! Transfers: moves money between customer accounts as a saga on Temporal (validate against its
//! own cache of `accounts.*`, hold on the source in the ledger, capture into one entry, release
//! as compensation), serves `fintech.transfers.v1.TransfersService`, and publishes every
//! transfer's full state through the transactional outbox (docs/adr/0024-transfers-saga-on-temporal.md).
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service (decode, call [`app`], encode) and the one error-to-status
//!   mapping;
//! - [`app`]: the use cases (accept, read, list, cancel, decide) and the starter job;
//! - [`saga`]: the workflow and its activities;
//! - [`temporal`]: the Temporal client and the worker task;
//! - [`ledger`]: the ledger client with the service's own token;
//! - [`domain`]: transfers, refusals, derived ids, validation (no I/O);
//! - [`storage`]: the SQL;
//! - [`events`]: topics, the outbox events and the accounts cache consumer;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod app;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod ledger;
pub mod proto;
// The SDK's macros generate marker types (one per workflow method and activity) without `Debug`.
#[allow(missing_debug_implementations)]
pub mod saga;
pub mod storage;
pub mod temporal;

use std::time::Duration;

use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::{Kit, Service};
use fintech_proto::transfers::transfers_service_server::TransfersServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::TransfersConfig;

/// The transfers tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/transfers");

/// Full name of the gRPC service, as health and reflection report it.
pub const SERVICE_NAME: &str = <TransfersServiceServer<grpc::TransfersGrpc> as tonic::server::NamedService>::NAME;

/// How often the starter job looks for accepted transfers without a workflow, and how old they
/// must be (well past the time a CreateTransfer call takes from its insert to its start).
const STARTER_INTERVAL: Duration = Duration::from_secs(15);
const ORPHAN_AGE: Duration = Duration::from_secs(30);

/// The transfers service, as the kit runs it.
#[derive(Debug)]
pub struct Transfers;

impl Transfers {
    /// The Temporal settings of `config`.
    pub fn temporal(config: &TransfersConfig) -> temporal::TemporalSettings {
        temporal::TemporalSettings {
            url: config.temporal_url.clone(),
            namespace: config.temporal_namespace.clone(),
            task_queue: config.task_queue.clone(),
        }
    }

    /// The application `run` serves, on `pool`.
    pub fn app(config: &TransfersConfig, pool: sqlx::PgPool) -> app::TransfersApp {
        app::TransfersApp::new(
            pool,
            temporal::LazyClient::new(Self::temporal(config)),
            events::Topics::with_prefix(&config.platform.topic_prefix),
            app::Policy {
                approval_threshold: config.approval_threshold,
                approval_timeout: config.approval_timeout,
                hold_ttl: config.hold_ttl,
            },
        )
    }
}

impl Service for Transfers {
    const NAME: &'static str = "transfers";
    const DEFAULT_PORT: u16 = config::DEFAULT_PORT;
    type Config = TransfersConfig;

    fn config(platform: PlatformConfig) -> TransfersConfig {
        TransfersConfig::defaults(platform)
    }

    fn config_from_env() -> fintech_platform::Result<TransfersConfig> {
        TransfersConfig::from_env()
    }

    /// Runs transfers on `listener` until `shutdown` fires: the accounts cache consumer, the
    /// saga's worker (`job-temporal`), the starter job, the outbox relays and the gRPC service.
    async fn run(config: TransfersConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let kit = Kit::start(&config.platform, &MIGRATOR).await?;
        let topics = events::Topics::with_prefix(&config.platform.topic_prefix);
        let app = Transfers::app(&config, kit.pool().clone());
        let ledger = ledger::Ledger::new(
            &config.ledger_url,
            ledger::TokenSource::new(config.service_token_file.clone()),
        )?;
        let activities = saga::TransferActivities::new(kit.pool().clone(), ledger, topics.clone());
        let starter = {
            let app = app.clone();
            move |stop: CancellationToken| async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(STARTER_INTERVAL) => {}
                    }
                    match app.restart_orphans(ORPHAN_AGE).await {
                        Ok(0) => {}
                        Ok(started) => {
                            tracing::warn!(started, "started the workflows of accepted transfers that had none")
                        }
                        Err(error) => tracing::warn!(error = %error, "starter job round failed"),
                    }
                }
            }
        };
        let pool = kit.pool().clone();
        let mut kit = kit
            .consumer(
                events::CONSUMER,
                &events::INPUT_TOPICS,
                events::TRANSFERS_DLQ,
                events::handler(pool),
            )
            .job("starter", starter);
        if config.worker {
            let settings = Transfers::temporal(&config);
            kit = kit.job("temporal", move |stop| temporal::run_worker(settings, activities, stop));
        }
        kit.grpc(TransfersServiceServer::new(grpc::TransfersGrpc::new(app)))
            .serve(listener, shutdown)
            .await
    }
}
