//! Ledger: an event-sourced double-entry ledger. Serves `fintech.ledger.v1.LedgerService`, posts
//! the entry of every `tax.calculated` event, and publishes every posted entry on
//! `ledger.entry_posted` through the transactional outbox. Holds reserve money in the account's
//! stream (placed, captured by an entry, released or expired, each at most once) and lower its
//! available balance; customer accounts are opened and controlled (freezes, closure, overdraft)
//! from the accounts service's events, kept in the ledger's own cache (ADR 0022).
//!
//! ```text
//!  PostEntry ──┐                      one transaction per attempt
//!              ├─▶ app::posting::Ledger ──▶ lock streams (ordered) ─▶ read heads + balances
//!  tax.calculated ─▶ events::TaxPostingHandler       ─▶ domain::plan_posting (rules)
//!                                                    ─▶ append events @ expected version
//!                                                    ─▶ balances, entry, outbox, idempotency
//!  reads (GetBalance as of, ListAccountEvents, VerifyStream, trial balance) ─▶ storage
//! ```
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service (decode, call, encode) and the one error-to-status mapping;
//! - [`app`]: the use cases; [`app::posting`] is the posting protocol (transaction, ordered locks,
//!   expected versions, retries) that gRPC and the consumers call, captures included;
//!   [`app::holds`] places, releases and expires holds on the same terms; [`app::accounts`] keeps
//!   the account cache;
//! - [`domain`]: accounts, entries and their rules, streams, hash chain, folds, tax postings
//!   (no I/O);
//! - [`storage`]: the SQL;
//! - [`events`]: topics, the published entry, the `tax.calculated` consumer;
//! - [`proto`]: protobuf <-> domain conversions.

pub mod app;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod proto;
pub mod storage;

/// The posting protocol, under the name it had before the application layer existed.
pub use app::posting;

use std::sync::Arc;

use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::transactional::InTransaction;
use fintech_platform::kit::{Kit, Service};
use fintech_proto::ledger::ledger_service_server::LedgerServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::LedgerConfig;

/// The ledger tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/ledger");

/// Full name of the gRPC service, as health and reflection report it.
pub const SERVICE_NAME: &str = <LedgerServiceServer<grpc::LedgerGrpc> as tonic::server::NamedService>::NAME;

/// The ledger service, as the kit runs it.
#[derive(Debug)]
pub struct LedgerService;

impl Service for LedgerService {
    const NAME: &'static str = "ledger";
    const DEFAULT_PORT: u16 = config::DEFAULT_PORT;
    type Config = LedgerConfig;

    fn config(platform: PlatformConfig) -> LedgerConfig {
        LedgerConfig::defaults(platform)
    }

    fn config_from_env() -> fintech_platform::Result<LedgerConfig> {
        LedgerConfig::from_env()
    }

    /// Runs the ledger on `listener` until `shutdown` fires: the gRPC service, the consumer of the
    /// tax results (unless `TAX_CONSUMER_ENABLED=false`), the consumer of payments' transactions
    /// for the cash they moved (unless `CASH_CONSUMER_ENABLED=false`), the account cache and the
    /// interest postings of the accounts service (`ACCOUNTS_CONSUMER_ENABLED`,
    /// `INTEREST_CONSUMER_ENABLED`), the hold expiry job and the outbox relays.
    async fn run(config: LedgerConfig, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut kit = Kit::start(&config.platform, &MIGRATOR).await?;
        let ledger = Arc::new(posting::Ledger::new(
            kit.pool().clone(),
            kit.idempotency()?,
            events::Topics::with_prefix(&config.platform.topic_prefix),
            config.posting.clone(),
        ));
        if config.tax_consumer_enabled {
            kit = kit.consumer(
                events::TAX_CONSUMER,
                &[events::TAX_CALCULATED, events::TAX_REVERSED],
                events::DEAD_LETTER,
                Arc::new(events::TaxPostingHandler::new(ledger.clone())),
            );
        }
        if config.cash_consumer_enabled {
            kit = kit.consumer(
                events::CASH_CONSUMER,
                &[events::TRANSACTIONS_CREATED, events::TRANSACTIONS_UPDATED],
                events::DEAD_LETTER,
                Arc::new(events::CashPostingHandler::new(ledger.clone())),
            );
        }
        if config.accounts_consumer_enabled {
            let pool = kit.pool().clone();
            kit = kit.consumer(
                events::ACCOUNT_CACHE_CONSUMER,
                &[events::ACCOUNTS_OPENED, events::ACCOUNTS_UPDATED],
                events::DEAD_LETTER,
                Arc::new(InTransaction::new(pool, events::AccountCacheHandler)),
            );
        }
        if config.interest_consumer_enabled {
            kit = kit.consumer(
                events::INTEREST_CONSUMER,
                &[events::ACCOUNTS_INTEREST_POSTED],
                events::DEAD_LETTER,
                Arc::new(events::InterestHandler::new(ledger.clone())),
            );
        }
        let expiry = {
            let (ledger, interval) = (ledger.clone(), config.hold_expiry_interval);
            move |stop| app::holds::run_expiry(ledger, interval, stop)
        };
        kit.job("hold-expiry", expiry)
            .grpc(LedgerServiceServer::new(grpc::LedgerGrpc::new(ledger)))
            .serve(listener, shutdown)
            .await
    }
}
