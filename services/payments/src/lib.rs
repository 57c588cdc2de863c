//! Payments: owns Orders and Transactions, serves `fintech.payments.v1.PaymentsService`, and
//! publishes every change with the entity's full state through the transactional outbox.
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service (decode, call the domain in one transaction, encode) and the one
//!   error-to-status mapping;
//! - [`domain`]: orders, transactions, validation, lifecycle (no I/O);
//! - [`storage`]: the SQL;
//! - [`events`]: topics and the outbox events;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod proto;
pub mod storage;

use std::time::Duration;

use fintech_platform::grpc::Readiness;
use fintech_platform::idempotency::IdempotencyStore;
use fintech_platform::{CancellationToken, db, outbox};
use fintech_proto::payments::payments_service_server::PaymentsServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::PaymentsConfig;

/// The payments tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/payments");

/// Full name of the service, as health and reflection report it.
pub const SERVICE_NAME: &str = "fintech.payments.v1.PaymentsService";

/// Runs payments on `listener` until `shutdown` fires: migrates the database, starts the outbox
/// relays and serves gRPC; on shutdown drains requests, then stops the relays.
pub async fn run(config: PaymentsConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let platform = &config.platform;
    let pool = db::connect(
        &platform.database_url,
        platform.database_max_connections,
        Duration::from_secs(30),
    )
    .await?;
    db::migrate(&pool, &MIGRATOR).await?;

    let relays_stop = CancellationToken::new();
    let relays = outbox::spawn_relays(&pool, platform, config.outbox_relays, &relays_stop)?;

    let idempotency = IdempotencyStore::new(platform.redis_url.as_deref())?;
    let service = grpc::Payments::new(
        pool.clone(),
        idempotency,
        events::Topics::with_prefix(&config.topic_prefix),
    );
    let server = PaymentsServiceServer::new(service)
        .max_decoding_message_size(platform.grpc_max_message_bytes)
        .max_encoding_message_size(platform.grpc_max_message_bytes);
    let readiness = Readiness {
        pool: pool.clone(),
        kafka_bootstrap_servers: platform.kafka_bootstrap_servers.clone(),
        interval: Duration::from_secs(5),
    };
    let served = fintech_platform::grpc::serve(
        listener,
        tonic::service::Routes::new(server),
        &[SERVICE_NAME],
        readiness,
        shutdown,
    )
    .await;

    // Requests are drained; the relays finish their round and stop.
    relays_stop.cancel();
    for relay in relays {
        let _ = relay.await;
    }
    pool.close().await;
    served?;
    Ok(())
}
