//! Payments: owns Orders and Transactions, serves `fintech.payments.v1.PaymentsService`, and
//! publishes every change with the entity's full state through the transactional outbox.
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service (decode, call [`app`], encode) and the one error-to-status
//!   mapping;
//! - [`app`]: the use cases (validate, one transaction with the outbox row and the stored answer);
//! - [`domain`]: orders, transactions, validation, lifecycle (no I/O);
//! - [`storage`]: the SQL;
//! - [`events`]: topics and the outbox events;
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
use fintech_proto::payments::payments_service_server::PaymentsServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::PaymentsConfig;

/// The payments tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/payments");

/// The payments service, as the kit runs it.
#[derive(Debug)]
pub struct Payments;

impl Service for Payments {
    const NAME: &'static str = "payments";
    const DEFAULT_PORT: u16 = config::DEFAULT_PORT;
    type Config = PaymentsConfig;

    fn config(platform: PlatformConfig) -> PaymentsConfig {
        PaymentsConfig {
            platform,
            group_commit: config::GroupCommitSettings::default(),
        }
    }

    fn config_from_env() -> fintech_platform::Result<PaymentsConfig> {
        PaymentsConfig::from_env()
    }

    /// Runs payments on `listener` until `shutdown` fires: the gRPC service and the outbox relays.
    async fn run(config: PaymentsConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let kit = Kit::start(&config.platform, &MIGRATOR).await?;
        let service = grpc::PaymentsGrpc::new(app::PaymentsApp::new(
            kit.pool().clone(),
            kit.idempotency()?,
            events::Topics::with_prefix(&config.platform.topic_prefix),
            config.group_commit,
        ));
        kit.grpc(PaymentsServiceServer::new(service))
            .serve(listener, shutdown)
            .await
    }
}

/// Full name of the gRPC service, as health and reflection report it.
pub const SERVICE_NAME: &str = <PaymentsServiceServer<grpc::PaymentsGrpc> as tonic::server::NamedService>::NAME;
