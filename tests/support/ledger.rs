//! Runs the ledger service in-process on a free port, with its own database and its own topics
//! (`test.<uuid>.tax.calculated`, `test.<uuid>.ledger.entry_posted`, …) on the shared broker.

use std::time::Duration;

use fintech_ledger::LedgerConfig;
use fintech_ledger::posting::PostingSettings;
use fintech_platform::CancellationToken;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use tonic::transport::Channel;

use crate::payments::{connect, platform_config};
use crate::{TestDb, create_topics, kafka_bootstrap};

/// A running ledger service.
#[derive(Debug)]
pub struct LedgerHarness {
    /// Its database.
    pub db: TestDb,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Topic prefix of this instance.
    pub prefix: String,
    /// A connected client.
    pub client: LedgerServiceClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LedgerHarness {
    /// Starts the ledger with a fresh database and fresh topics, default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts the ledger after `configure` adjusted its settings.
    pub async fn start_with(configure: impl FnOnce(&mut LedgerConfig)) -> Self {
        Self::start_on(&format!("test.{}.", uuid::Uuid::new_v4().simple()), configure).await
    }

    /// Starts the ledger on the topics of `prefix` (shared with other harnesses, so it consumes
    /// the `tax.calculated` a tax harness on the same prefix publishes).
    pub async fn start_on(prefix: &str, configure: impl FnOnce(&mut LedgerConfig)) -> Self {
        let db = TestDb::empty().await;
        let prefix = prefix.to_owned();
        let bootstrap = kafka_bootstrap();
        let topics: Vec<String> = fintech_ledger::events::TOPICS
            .iter()
            .map(|topic| format!("{prefix}{topic}"))
            .collect();
        create_topics(&bootstrap, &topics.iter().map(String::as_str).collect::<Vec<_>>(), 3).await;

        let mut config = LedgerConfig {
            platform: fintech_platform::config::PlatformConfig {
                topic_prefix: prefix.clone(),
                ..platform_config("ledger", &db.url, &bootstrap)
            },
            tax_consumer_enabled: true,
            posting: PostingSettings::default(),
        };
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fintech_ledger::run(config, listener, shutdown.clone()));
        let client = LedgerServiceClient::new(connect(&address).await);
        Self {
            db,
            address,
            prefix,
            client,
            shutdown,
            task,
        }
    }

    /// The full name of one of the ledger's topics.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
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

    /// Stops the service gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("ledger stops within 30s")
            .expect("ledger task")
            .expect("ledger returns Ok");
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
