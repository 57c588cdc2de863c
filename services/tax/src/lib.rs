//! Tax: calculates VAT for every transaction from the order state payments' events carried here
//! (Event-Carried State Transfer: it never calls payments and never reads its database).
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`][]: the `fintech.tax.v1.TaxService` handlers;
//! - [`domain`]: the VAT engine and the per-transaction decision (pure);
//! - [`storage`]: order cache, parked transactions, results, failures (SQL);
//! - [`events`]: the consumer handler, the deadline sweeper, what goes to `tax.calculated` /
//!   `tax.failed`;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod proto;
pub mod storage;

use std::time::Duration;

use fintech_platform::grpc::Readiness;
use fintech_platform::kafka::EventProducer;
use fintech_platform::kafka::consumer::{ConsumerSettings, run_consumer};
use fintech_platform::{CancellationToken, db, outbox};
use fintech_proto::tax::tax_service_server::TaxServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::TaxConfig;

/// The tax tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/tax");

/// Full name of the service, as health and reflection report it.
pub const SERVICE_NAME: &str = "fintech.tax.v1.TaxService";

/// Runs tax on `listener` until `shutdown` fires: migrates, starts the consumer, the deadline
/// sweeper and the outbox relays, serves gRPC; on shutdown drains requests, finishes the record in
/// hand, then stops the rest.
pub async fn run(config: TaxConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let platform = &config.platform;
    let pool = db::connect(
        &platform.database_url,
        platform.database_max_connections,
        Duration::from_secs(30),
    )
    .await?;
    db::migrate(&pool, &MIGRATOR).await?;

    let topics = events::Topics::with_prefix(&config.topic_prefix);
    let processor = events::Processor::new(topics.clone(), domain::vat::RateTable::embedded(), config.park_deadline);
    let background = CancellationToken::new();
    let mut tasks = Vec::new();

    tasks.extend(outbox::spawn_relays(
        &pool,
        platform,
        config.outbox_relays,
        &background,
    )?);
    tasks.push(tokio::spawn(events::run_deadline_sweeper(
        pool.clone(),
        processor.clone(),
        config.sweep_interval,
        background.clone(),
    )));
    let mut consumer_settings = ConsumerSettings::new(
        platform.kafka_bootstrap_servers.clone(),
        format!("{}{}", config.topic_prefix, events::CONSUMER),
        events::INPUT_TOPICS.iter().map(|topic| topics.name(topic)).collect(),
        topics.name(events::TAX_DLQ),
    );
    consumer_settings.group_instance_id = platform.kafka_group_instance_id.clone();
    consumer_settings.lanes = platform.kafka_consumer_lanes;
    consumer_settings.max_batch = platform.kafka_consumer_max_batch;
    consumer_settings.fetch_wait_max = platform.kafka_fetch_wait_max;
    let dead_letters = EventProducer::new(
        &platform.kafka_bootstrap_servers,
        "tax-dead-letters",
        outbox::RELAY_DELIVERY_TIMEOUT,
    )?;
    let consumer_stop = CancellationToken::new();
    let consumer = tokio::spawn(run_consumer(
        consumer_settings,
        events::handler(pool.clone(), processor.clone(), topics.clone()),
        dead_letters,
        consumer_stop.clone(),
    ));

    let server = TaxServiceServer::new(grpc::Tax::new(pool.clone(), processor))
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

    // Stop taking records (the one in hand is finished and committed), then the background work.
    consumer_stop.cancel();
    match consumer.await {
        Ok(Err(error)) => tracing::error!(%error, "tax consumer failed"),
        Err(error) => tracing::error!(%error, "tax consumer task panicked"),
        Ok(Ok(())) => {}
    }
    background.cancel();
    for task in tasks {
        let _ = task.await;
    }
    pool.close().await;
    served?;
    Ok(())
}
