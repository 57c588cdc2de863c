//! Tax: calculates VAT for every transaction from the order state payments' events carried here
//! (Event-Carried State Transfer: it never calls payments and never reads its database).
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`][]: the `fintech.tax.v1.TaxService` handlers (decode, call [`app`], encode) and the
//!   one error-to-status mapping;
//! - [`app`]: the use cases: calculate, park, fail, reverse, sweep, retry;
//! - [`domain`]: the VAT engine and the per-transaction decision (pure);
//! - [`storage`]: order cache, parked transactions, results, failures (SQL);
//! - [`events`]: the consumer handler (decode, call [`app`]) and the topics;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod app;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod proto;
pub mod storage;

use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::{Kit, Service};
use fintech_proto::tax::tax_service_server::TaxServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::TaxConfig;

/// The tax tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/tax");

/// Full name of the gRPC service, as health and reflection report it.
pub const SERVICE_NAME: &str = <TaxServiceServer<grpc::TaxGrpc> as tonic::server::NamedService>::NAME;

/// The tax service, as the kit runs it.
#[derive(Debug)]
pub struct Tax;

impl Service for Tax {
    const NAME: &'static str = "tax";
    const DEFAULT_PORT: u16 = config::DEFAULT_PORT;
    type Config = TaxConfig;

    fn config(platform: PlatformConfig) -> TaxConfig {
        TaxConfig::defaults(platform)
    }

    fn config_from_env() -> fintech_platform::Result<TaxConfig> {
        TaxConfig::from_env()
    }

    /// Runs tax on `listener` until `shutdown` fires: the consumer of the payments topics, the
    /// deadline sweeper, the outbox relays and the gRPC service.
    async fn run(config: TaxConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let kit = Kit::start(&config.platform, &MIGRATOR).await?;
        let pool = kit.pool().clone();
        let topics = events::Topics::with_prefix(&config.platform.topic_prefix);
        let processor = app::Processor::new(topics.clone(), domain::vat::RateTable::embedded(), config.park_deadline);
        let sweeper = {
            let (pool, processor, interval) = (pool.clone(), processor.clone(), config.sweep_interval);
            move |stop| app::run_deadline_sweeper(pool, processor, interval, stop)
        };
        kit.consumer(
            events::CONSUMER,
            &events::INPUT_TOPICS,
            events::TAX_DLQ,
            events::handler(pool.clone(), processor.clone(), topics),
        )
        .job("deadline-sweeper", sweeper)
        .grpc(TaxServiceServer::new(grpc::TaxGrpc::new(pool, processor)))
        .serve(listener, shutdown)
        .await
    }
}
