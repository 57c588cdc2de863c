//! Runs the accounts service in-process on a free port, with its own database and its own topics
//! (`test.<uuid>.accounts.opened`, `test.<uuid>.ledger.entry_posted`, …) on the shared broker,
//! and plays the ledger: produces the `Entry` and `Hold` events the projection consumes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fintech_accounts::{Accounts, AccountsConfig};
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::kit::Service as _;
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::accounts as pb;
use fintech_proto::accounts::accounts_service_client::AccountsServiceClient;
use fintech_proto::ledger as lpb;
use fintech_proto::topics::{self, Topic};
use prost::{Message as _, Name as _};

use crate::service::{Channel, ServiceHarness, platform_env, unique_prefix};
use crate::{TestDb, kafka_bootstrap};

/// A running accounts service.
pub type AccountsHarness = ServiceHarness<AccountsServiceClient<Channel>>;

/// Every topic accounts reads and writes.
fn topics() -> Vec<&'static str> {
    fintech_accounts::events::INPUT_TOPICS
        .iter()
        .chain(fintech_accounts::events::OUTPUT_TOPICS.iter())
        .copied()
        .collect()
}

/// Accounts' settings in a test: the test platform settings on the topics of `prefix`, the
/// default dormancy period (a year, so no test account goes dormant unless a test asks) and jobs
/// every 200 ms.
pub fn config(platform: PlatformConfig, _db: &TestDb, prefix: &str) -> AccountsConfig {
    AccountsConfig {
        dormancy_interval: Duration::from_millis(200),
        interest_interval: Duration::from_millis(200),
        accrual_lag: Duration::ZERO,
        ..Accounts::config(PlatformConfig {
            topic_prefix: prefix.to_owned(),
            ..platform
        })
    }
}

/// `config` as the environment of an accounts process (see [`crate::process`]).
pub fn env(config: &AccountsConfig) -> Vec<(&'static str, String)> {
    let AccountsConfig {
        platform,
        dormant_after,
        dormancy_interval,
        interest_interval,
        accrual_lag,
    } = config;
    let ms = |duration: &Duration| format!("{}ms", duration.as_millis());
    let mut env = platform_env(platform);
    env.push(("ACCOUNTS_DORMANT_AFTER", ms(dormant_after)));
    env.push(("ACCOUNTS_DORMANCY_INTERVAL", ms(dormancy_interval)));
    env.push(("ACCOUNTS_INTEREST_INTERVAL", ms(interest_interval)));
    env.push(("ACCOUNTS_ACCRUAL_LAG", ms(accrual_lag)));
    env
}

impl AccountsHarness {
    /// Starts accounts with a fresh database and fresh topics, test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts accounts after `configure` adjusted its settings; returns once it answers (so its
    /// migrations have run).
    pub async fn start_with(configure: impl FnOnce(&mut AccountsConfig)) -> Self {
        let harness = Self::launch(
            "accounts",
            &unique_prefix(),
            &topics(),
            |platform, db, prefix| {
                let mut config = config(platform, db, prefix);
                configure(&mut config);
                config
            },
            Accounts::run,
            AccountsServiceClient::new,
        )
        .await;
        // Any answer (NOT_FOUND) means the service is up and migrated.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = harness
                .client
                .clone()
                .get_account(pb::GetAccountRequest {
                    account_id: uuid::Uuid::nil().to_string(),
                })
                .await;
            match answer {
                Err(status) if status.code() == tonic::Code::NotFound => break,
                _ => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "accounts never answered: {answer:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        harness
    }

    /// The application of this instance over its database, to drive its jobs with a test clock.
    pub fn app(&self, configure: impl FnOnce(&mut AccountsConfig)) -> fintech_accounts::app::AccountsApp {
        let mut settings = config(
            crate::service::platform_config("accounts", &self.db.url, &kafka_bootstrap()),
            &self.db,
            &self.prefix,
        );
        configure(&mut settings);
        Accounts::app(&settings, self.db.pool.clone()).expect("accounts app")
    }

    /// Opens an account with an operator token.
    pub async fn open(
        &self,
        customer_id: &str,
        product: pb::Product,
        currency: &str,
        overdraft_limit: i64,
    ) -> pb::Account {
        self.client
            .clone()
            .open_account(pb::OpenAccountRequest {
                customer_id: customer_id.to_owned(),
                product: product as i32,
                currency: currency.to_owned(),
                overdraft_limit,
            })
            .await
            .unwrap_or_else(|status| panic!("open account: {status:?}"))
            .into_inner()
            .account
            .expect("account")
    }

    /// Reads an account and its balances with an operator token.
    pub async fn get(&self, account_id: &str) -> pb::GetAccountResponse {
        self.client
            .clone()
            .get_account(pb::GetAccountRequest {
                account_id: account_id.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("get account: {status:?}"))
            .into_inner()
    }

    /// Waits until `check` holds for the account's GetAccount answer; returns that answer.
    pub async fn wait_for(
        &self,
        account_id: &str,
        what: &str,
        check: impl Fn(&pb::GetAccountResponse) -> bool,
    ) -> pb::GetAccountResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.get(account_id).await;
            if check(&answer) {
                return answer;
            }
            assert!(tokio::time::Instant::now() < deadline, "never {what}: {answer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Plays the ledger: produces its events on the topics of a prefix.
#[derive(Debug)]
pub struct FakeLedger {
    producer: EventProducer,
    prefix: String,
}

impl FakeLedger {
    /// A producer on the topics of `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            producer: EventProducer::new(&kafka_bootstrap(), "test-fake-ledger", Duration::from_secs(20))
                .expect("producer"),
            prefix: prefix.to_owned(),
        }
    }

    async fn send(&self, topic: &Topic, key: &str, payload: Vec<u8>, payload_type: String) {
        let metadata = EventMetadata {
            id: uuid::Uuid::new_v4().to_string(),
            event_type: topic.ce_type().to_owned(),
            source: "/fintech/ledger".to_owned(),
            time: Utc::now(),
            subject: Some(key.to_owned()),
            payload_type,
            trace: TraceHeaders::default(),
        };
        self.producer
            .send_event(&format!("{}{}", self.prefix, topic.name), key, &payload, &metadata)
            .await
            .expect("produce");
    }

    /// Publishes `entry` on `ledger.entry_posted`.
    pub async fn entry(&self, entry: &lpb::Entry) {
        self.send(
            &topics::LEDGER_ENTRY_POSTED,
            &entry.entry_id,
            entry.encode_to_vec(),
            lpb::Entry::full_name(),
        )
        .await;
    }

    /// Publishes `hold` on the topic of its status (`hold_placed` for ACTIVE version 1, …).
    pub async fn hold(&self, topic: &Topic, hold: &lpb::Hold) {
        self.send(topic, &hold.account_id, hold.encode_to_vec(), lpb::Hold::full_name())
            .await;
    }
}

/// An entry crediting (amount > 0) or debiting `account_id` against a system account, with the
/// account's stream at `version` and `balance_after` afterwards, posted at `at`.
pub fn entry(
    account_id: &str,
    version: i64,
    amount: i64,
    balance_after: i64,
    held_after: i64,
    at: DateTime<Utc>,
) -> lpb::Entry {
    let side = if amount >= 0 {
        lpb::Side::Credit
    } else {
        lpb::Side::Debit
    };
    let contra = if amount >= 0 {
        lpb::Side::Debit
    } else {
        lpb::Side::Credit
    };
    lpb::Entry {
        entry_id: format!("test:{}", uuid::Uuid::new_v4()),
        description: "test entry".to_owned(),
        metadata: Default::default(),
        lines: vec![
            lpb::EntryLine {
                account_id: account_id.to_owned(),
                side: side as i32,
                amount: amount.abs(),
                currency: "EUR".to_owned(),
            },
            lpb::EntryLine {
                account_id: "system:settlement:EUR".to_owned(),
                side: contra as i32,
                amount: amount.abs(),
                currency: "EUR".to_owned(),
            },
        ],
        posted_at: Some(fintech_proto::time::timestamp(at)),
        appends: vec![
            lpb::StreamAppend {
                account_id: account_id.to_owned(),
                version,
                hash: "00".repeat(32),
                balance_after,
                held_after,
                available_after: balance_after - held_after,
            },
            lpb::StreamAppend {
                account_id: "system:settlement:EUR".to_owned(),
                version: version + 1000,
                hash: "11".repeat(32),
                balance_after: -balance_after,
                held_after: 0,
                available_after: -balance_after,
            },
        ],
    }
}

/// A hold on `account_id` in `status`, the account's stream at `stream_version` afterwards.
#[allow(clippy::too_many_arguments)]
pub fn hold(
    account_id: &str,
    hold_id: &str,
    hold_version: i64,
    status: lpb::HoldStatus,
    held: i64,
    stream_version: i64,
    balance: i64,
    account_held: i64,
    at: DateTime<Utc>,
) -> lpb::Hold {
    lpb::Hold {
        hold_id: hold_id.to_owned(),
        account_id: account_id.to_owned(),
        currency: "EUR".to_owned(),
        amount: held.max(1),
        held,
        captured: 0,
        status: status as i32,
        reason: "test hold".to_owned(),
        expires_at: Some(fintech_proto::time::timestamp(at + chrono::Duration::days(7))),
        placed_at: Some(fintech_proto::time::timestamp(at)),
        updated_at: Some(fintech_proto::time::timestamp(at)),
        release_reason: String::new(),
        capture_entry_ids: Vec::new(),
        balance: Some(lpb::Balance {
            account_id: account_id.to_owned(),
            currency: "EUR".to_owned(),
            balance,
            version: stream_version,
            updated_at: Some(fintech_proto::time::timestamp(at)),
            held: account_held,
            available: balance - account_held,
        }),
        version: hold_version,
    }
}
