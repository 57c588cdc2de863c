//! Runs the ledger service in-process on a free port, with its own database and its own topics
//! (`test.<uuid>.tax.calculated`, `test.<uuid>.ledger.entry_posted`, …) on the shared broker.

use fintech_ledger::{LedgerConfig, LedgerService};
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::Service as _;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;

use crate::TestDb;
use crate::service::Channel;
use crate::service::{ServiceHarness, unique_prefix};

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
