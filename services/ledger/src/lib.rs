//! Ledger: an event-sourced double-entry ledger. Serves `fintech.ledger.v1.LedgerService`, posts
//! the entry of every `tax.calculated` event, and publishes every posted entry on
//! `ledger.entry_posted` through the transactional outbox.
//!
//! ```text
//!  PostEntry ──┐                      one transaction per attempt
//!              ├─▶ posting::Ledger ──▶ lock streams (ordered) ─▶ read heads + balances
//!  tax.calculated ─▶ events::TaxPostingHandler       ─▶ domain::plan_posting (rules)
//!                                                    ─▶ append events @ expected version
//!                                                    ─▶ balances, entry, outbox, idempotency
//!  reads (GetBalance as of, ListAccountEvents, VerifyStream, trial balance) ─▶ storage
//! ```
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service (decode, call, encode) and the one error-to-status mapping;
//! - [`posting`]: the posting protocol (transaction, ordered locks, expected versions, retries);
//! - [`domain`]: accounts, entries and their rules, streams, hash chain, folds, tax postings
//!   (no I/O);
//! - [`storage`]: the SQL;
//! - [`events`]: topics, the published entry, the `tax.calculated` consumer;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod posting;
pub mod proto;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use fintech_platform::grpc::Readiness;
use fintech_platform::idempotency::IdempotencyStore;
use fintech_platform::kafka::EventProducer;
use fintech_platform::kafka::consumer::{ConsumerSettings, run_consumer};
use fintech_platform::{CancellationToken, db, outbox};
use fintech_proto::ledger::ledger_service_server::LedgerServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::LedgerConfig;

/// The ledger tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/ledger");

/// Full name of the service, as health and reflection report it.
pub const SERVICE_NAME: &str = "fintech.ledger.v1.LedgerService";

/// Runs the ledger on `listener` until `shutdown` fires: migrates the database, starts the outbox
/// relays and the `tax.calculated` consumer, and serves gRPC; on shutdown drains requests and the
/// record in hand, then stops the relays.
pub async fn run(config: LedgerConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let platform = &config.platform;
    let pool = db::connect(
        &platform.database_url,
        platform.database_max_connections,
        Duration::from_secs(30),
    )
    .await?;
    db::migrate(&pool, &MIGRATOR).await?;
    let topics = events::Topics::with_prefix(&config.topic_prefix);

    let relays_stop = CancellationToken::new();
    let relays = outbox::spawn_relays(&pool, platform, config.outbox_relays, &relays_stop)?;

    let idempotency = IdempotencyStore::new(platform.redis_url.as_deref())?;
    let ledger = Arc::new(posting::Ledger::new(
        pool.clone(),
        idempotency,
        topics.clone(),
        config.posting.clone(),
    ));

    let consumer = if config.tax_consumer_enabled {
        let mut settings = ConsumerSettings::new(
            platform.kafka_bootstrap_servers.clone(),
            topics.tax_consumer_group(),
            vec![topics.name(events::TAX_CALCULATED), topics.name(events::TAX_REVERSED)],
            topics.name(events::DEAD_LETTER),
        );
        settings.group_instance_id = platform.kafka_group_instance_id.clone();
        settings.lanes = platform.kafka_consumer_lanes;
        settings.max_batch = platform.kafka_consumer_max_batch;
        settings.fetch_wait_max = platform.kafka_fetch_wait_max;
        let dead_letters = EventProducer::new(
            &platform.kafka_bootstrap_servers,
            "ledger-dead-letters",
            outbox::RELAY_DELIVERY_TIMEOUT,
        )?;
        let handler = Arc::new(events::TaxPostingHandler::new(ledger.clone()));
        Some(tokio::spawn(run_consumer(
            settings,
            handler,
            dead_letters,
            shutdown.clone(),
        )))
    } else {
        None
    };

    let server = LedgerServiceServer::new(grpc::LedgerGrpc::new(ledger))
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
        shutdown.clone(),
    )
    .await;

    // Requests are drained; the consumer finishes its record, then the relays their round.
    shutdown.cancel();
    let consumed = match consumer {
        Some(task) => task.await.map_err(anyhow::Error::from).and_then(|result| Ok(result?)),
        None => Ok(()),
    };
    relays_stop.cancel();
    for relay in relays {
        let _ = relay.await;
    }
    pool.close().await;
    served?;
    consumed?;
    Ok(())
}
