//! Runs the ledger service in-process on a free port, with its own database and its own topics
//! (`test.<uuid>.tax.calculated`, `test.<uuid>.ledger.entry_posted`, …) on the shared broker.

use std::time::Duration;

use fintech_ledger::{LedgerConfig, LedgerService};
use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::kit::Service as _;
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::accounts;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use prost::Message as _;

use crate::service::Channel;
use crate::service::{ServiceHarness, platform_env, unique_prefix};
use crate::{TestDb, kafka_bootstrap};

/// A running ledger service.
pub type LedgerHarness = ServiceHarness<LedgerServiceClient<Channel>>;

/// The ledger's settings in a test: the test platform settings on the topics of `prefix`, the
/// `tax.calculated` consumer on, default posting settings.
pub fn config(platform: PlatformConfig, _db: &TestDb, prefix: &str) -> LedgerConfig {
    LedgerService::config(PlatformConfig {
        topic_prefix: prefix.to_owned(),
        ..platform
    })
}

/// `config` as the environment of a ledger process (see [`crate::process`]).
pub fn env(config: &LedgerConfig) -> Vec<(&'static str, String)> {
    // Destructured in full so that a new setting does not compile until it is written here too.
    let LedgerConfig {
        platform,
        tax_consumer_enabled,
        cash_consumer_enabled,
        accounts_consumer_enabled,
        interest_consumer_enabled,
        hold_expiry_interval,
        posting,
    } = config;
    let fintech_ledger::posting::PostingSettings {
        max_attempts,
        lock_streams,
        lock_timeout,
    } = posting;
    let mut env = platform_env(platform);
    env.extend([
        ("TAX_CONSUMER_ENABLED", tax_consumer_enabled.to_string()),
        ("CASH_CONSUMER_ENABLED", cash_consumer_enabled.to_string()),
        ("ACCOUNTS_CONSUMER_ENABLED", accounts_consumer_enabled.to_string()),
        ("INTEREST_CONSUMER_ENABLED", interest_consumer_enabled.to_string()),
        ("HOLD_EXPIRY_INTERVAL_MS", hold_expiry_interval.as_millis().to_string()),
        ("LEDGER_MAX_POST_ATTEMPTS", max_attempts.to_string()),
        ("LEDGER_LOCK_STREAMS", lock_streams.to_string()),
        ("LEDGER_LOCK_TIMEOUT_MS", lock_timeout.as_millis().to_string()),
    ]);
    env
}

impl LedgerHarness {
    /// Starts the ledger with a fresh database and fresh topics, default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the ledger after `configure` adjusted its settings.
    pub async fn start_with(configure: impl FnOnce(&mut LedgerConfig)) -> Self {
        Self::start_on(&unique_prefix(), configure).await
    }

    /// Starts the ledger on the topics of `prefix` (shared with other harnesses, so it consumes
    /// the `tax.calculated` a tax harness on the same prefix publishes).
    pub async fn start_on(prefix: &str, configure: impl FnOnce(&mut LedgerConfig)) -> Self {
        Self::launch(
            "ledger",
            prefix,
            &fintech_ledger::events::TOPICS,
            |platform, db, prefix| {
                let mut config = config(platform, db, prefix);
                configure(&mut config);
                config
            },
            LedgerService::run,
            LedgerServiceClient::new,
        )
        .await
    }

    /// Opens an account and returns it.
    pub async fn open_account(
        &self,
        code: &str,
        account_type: pb::AccountType,
        currency: &str,
        overdraft: pb::OverdraftPolicy,
        overdraft_limit: i64,
    ) -> pb::Account {
        self.client
            .clone()
            .create_account(pb::CreateAccountRequest {
                code: code.to_owned(),
                name: format!("account {code}"),
                r#type: account_type as i32,
                currency: currency.to_owned(),
                overdraft_policy: overdraft as i32,
                overdraft_limit,
            })
            .await
            .unwrap_or_else(|status| panic!("create account {code}: {status}"))
            .into_inner()
            .account
            .expect("account")
    }

    /// The current balance of an account (the projection).
    pub async fn balance(&self, account_id: &str) -> pb::Balance {
        self.balance_as_of(account_id, None).await
    }

    /// The balance of an account as of a point of its stream (folded from the events).
    pub async fn balance_as_of(&self, account_id: &str, as_of: Option<pb::get_balance_request::AsOf>) -> pb::Balance {
        self.client
            .clone()
            .get_balance(pb::GetBalanceRequest {
                account_id: account_id.to_owned(),
                as_of,
            })
            .await
            .unwrap_or_else(|status| panic!("get balance of {account_id}: {status}"))
            .into_inner()
            .balance
            .expect("balance")
    }

    /// The trial balance of every currency.
    pub async fn trial_balance(&self) -> Vec<pb::CurrencyTrialBalance> {
        self.client
            .clone()
            .get_trial_balance(pb::GetTrialBalanceRequest::default())
            .await
            .expect("trial balance")
            .into_inner()
            .currencies
    }
}

/// A line of an entry.
pub fn line(account: &pb::Account, side: pb::Side, amount: i64) -> pb::EntryLine {
    pb::EntryLine {
        account_id: account.account_id.clone(),
        side: side as i32,
        amount,
        currency: account.currency.clone(),
    }
}

/// A ledger run on a database the test owns (so it can be stopped and started again on the same
/// data: a restart).
#[derive(Debug)]
pub struct LedgerInstance {
    /// A connected client.
    pub client: LedgerServiceClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LedgerInstance {
    /// Starts the ledger on `db` and the topics of `prefix` (created if missing).
    pub async fn start(db: &TestDb, prefix: &str, configure: impl FnOnce(&mut LedgerConfig)) -> Self {
        let bootstrap = kafka_bootstrap();
        crate::service::create_prefixed_topics(&bootstrap, prefix, &fintech_ledger::events::TOPICS).await;
        let mut config = config(
            crate::service::platform_config("ledger", &db.url, &bootstrap),
            db,
            prefix,
        );
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(LedgerService::run(config, listener, shutdown.clone()));
        let client = LedgerServiceClient::new(crate::service::connect(&address).await);
        Self { client, shutdown, task }
    }

    /// Stops it gracefully; panics unless it returns `Ok` within 30 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("ledger stops within 30s")
            .expect("ledger task")
            .expect("ledger returns Ok");
    }
}

/// The accounts service's state of a customer account, as `accounts.opened` / `accounts.updated`
/// carry it.
pub fn customer_account(
    account_id: &str,
    version: i64,
    state: accounts::AccountState,
    freeze: Option<accounts::FreezeKind>,
    overdraft_limit: i64,
) -> accounts::Account {
    let now = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp(),
        nanos: 0,
    };
    accounts::Account {
        account_id: account_id.to_owned(),
        customer_id: "cust-ledger-test".to_owned(),
        product: accounts::Product::Current as i32,
        currency: "EUR".to_owned(),
        state: state as i32,
        freeze: freeze.map(|kind| accounts::Freeze {
            kind: kind as i32,
            reason: "case 42".to_owned(),
            frozen_at: Some(now),
        }),
        overdraft_limit,
        opened_at: Some(now),
        updated_at: Some(now),
        closed_at: None,
        version,
        last_customer_movement_at: None,
    }
}

/// Produces events to the ledger's topics as the accounts service would (CloudEvents headers,
/// record key = account id).
#[derive(Debug)]
pub struct AccountsProducer {
    producer: EventProducer,
    prefix: String,
}

impl AccountsProducer {
    /// A producer onto the topics of `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            producer: EventProducer::new(&kafka_bootstrap(), "test-accounts", Duration::from_secs(20))
                .expect("producer"),
            prefix: prefix.to_owned(),
        }
    }

    async fn send(
        &self,
        topic: &fintech_proto::topics::Topic,
        key: &str,
        payload: &[u8],
        type_name: &str,
        ce_id: &str,
    ) {
        let metadata = EventMetadata {
            id: ce_id.to_owned(),
            event_type: topic.ce_type().to_owned(),
            source: "/fintech/accounts".to_owned(),
            time: chrono::Utc::now(),
            subject: Some(key.to_owned()),
            payload_type: type_name.to_owned(),
            trace: TraceHeaders::default(),
        };
        self.producer
            .send_event(&format!("{}{}", self.prefix, topic.name), key, payload, &metadata)
            .await
            .expect("produce");
    }

    /// Publishes `account` on `accounts.opened` (version 1) or `accounts.updated`, under the event
    /// id `ce_id`.
    pub async fn account(&self, account: &accounts::Account, ce_id: &str) {
        let topic = if account.version == 1 {
            &fintech_proto::topics::ACCOUNTS_OPENED
        } else {
            &fintech_proto::topics::ACCOUNTS_UPDATED
        };
        self.send(
            topic,
            &account.account_id,
            &account.encode_to_vec(),
            "fintech.accounts.v1.Account",
            ce_id,
        )
        .await;
    }

    /// Publishes `posting` on `accounts.interest_posted` under the event id `ce_id`.
    pub async fn interest(&self, posting: &accounts::InterestPosting, ce_id: &str) {
        self.send(
            &fintech_proto::topics::ACCOUNTS_INTEREST_POSTED,
            &posting.account_id,
            &posting.encode_to_vec(),
            "fintech.accounts.v1.InterestPosting",
            ce_id,
        )
        .await;
    }
}

/// Waits (up to 60 s) until the ledger's cache holds `version` of `account_id`.
pub async fn wait_for_cached_version(db: &TestDb, account_id: &str, version: i64) {
    let id: uuid::Uuid = account_id.parse().expect("uuid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // An error before the service migrated its tables: not there yet.
        let cached: Option<i64> = sqlx::query_scalar("SELECT version FROM ledger_account_cache WHERE account_id = $1")
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap_or_default();
        if cached == Some(version) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "account {account_id} never reached version {version} in the cache (at {cached:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 60 s) until consumer `consumer` recorded `count` events.
pub async fn wait_for_processed(db: &TestDb, consumer: &str, count: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = $1")
            .bind(consumer)
            .fetch_one(&db.pool)
            .await
            .unwrap_or_default();
        if processed >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{consumer} processed {processed} of {count} events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The precondition types of a FAILED_PRECONDITION status.
pub fn violation_types(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_precondition_failure()
        .map(|failure| {
            failure
                .violations
                .into_iter()
                .map(|violation| violation.r#type)
                .collect()
        })
        .unwrap_or_default()
}

/// A PlaceHold request expiring in an hour.
pub fn hold_request(hold_id: &str, account: &str, amount: i64) -> pb::PlaceHoldRequest {
    pb::PlaceHoldRequest {
        hold_id: hold_id.to_owned(),
        account_id: account.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        expires_at: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 3600,
            nanos: 0,
        }),
        reason: format!("test hold {hold_id}"),
    }
}

/// Every event of an account's stream, oldest first.
pub async fn all_events(client: &LedgerServiceClient<Channel>, account_id: &str) -> Vec<pb::AccountEvent> {
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .clone()
            .list_account_events(pb::ListAccountEventsRequest {
                account_id: account_id.to_owned(),
                page_size: 500,
                page_token: token,
            })
            .await
            .expect("list events")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        token = page.next_page_token;
    }
}
