//! The transfers stack of a test: a private Temporal dev server, the accounts service, the ledger
//! and the transfers service, in-process on one topic prefix of the shared broker, each with its
//! own database. The ledger runs on a fixed port so a test can stop it and start it again on the
//! same data (an outage); the transfers service calls it with its own service token (scopes
//! `ledger.post ledger.read ledger.transfers`, from a token file, as in production).
//!
//! Accounts are opened through the accounts service and reach the ledger and the transfers cache
//! only through `accounts.opened` / `accounts.updated`; [`TransfersStack::open_funded`] waits for
//! both.

use std::path::PathBuf;
use std::time::Duration;

use fintech_devkit::auth::Claims;
use fintech_devkit::temporal::TemporalServer;
use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::Service as _;
use fintech_proto::accounts as apb;
use fintech_proto::ledger as lpb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use fintech_proto::transfers as pb;
use fintech_proto::transfers::transfers_service_client::TransfersServiceClient;
use fintech_transfers::{Transfers, TransfersConfig};
use tonic::metadata::MetadataValue;

use crate::accounts::AccountsHarness;
use crate::service::{Channel, ServiceHarness, platform_env};
use crate::{TestDb, kafka_bootstrap};

/// A running transfers service.
pub type TransfersHarness = ServiceHarness<TransfersServiceClient<Channel>>;

/// Every topic transfers reads and writes.
pub fn topics() -> Vec<&'static str> {
    fintech_transfers::events::INPUT_TOPICS
        .iter()
        .chain(fintech_transfers::events::OUTPUT_TOPICS.iter())
        .copied()
        .collect()
}

/// A service token file for transfers: scopes it needs and nothing else, valid for an hour.
pub fn service_token_file() -> PathBuf {
    let dir = std::env::temp_dir().join("fintech-test-transfers");
    std::fs::create_dir_all(&dir).expect("token dir");
    let path = dir.join(format!("{}.token", uuid::Uuid::new_v4().simple()));
    let token = crate::auth::token(&Claims::new(
        "svc:transfers",
        &["ledger.post", "ledger.read", "ledger.transfers"],
        Duration::from_secs(3600),
    ));
    std::fs::write(&path, token).expect("token written");
    path
}

/// Transfers' settings in a test.
pub fn config(
    platform: PlatformConfig,
    prefix: &str,
    temporal: &TemporalServer,
    task_queue: &str,
    ledger_url: &str,
) -> TransfersConfig {
    TransfersConfig {
        temporal_url: temporal.url(),
        temporal_namespace: temporal.namespace().to_owned(),
        task_queue: task_queue.to_owned(),
        ledger_url: ledger_url.to_owned(),
        service_token_file: service_token_file(),
        approval_threshold: 1_000_000,
        approval_timeout: Duration::from_secs(120),
        hold_ttl: Duration::from_secs(3600),
        ..Transfers::config(PlatformConfig {
            topic_prefix: prefix.to_owned(),
            ..platform
        })
    }
}

/// `config` as the environment of a transfers process.
pub fn env(config: &TransfersConfig) -> Vec<(&'static str, String)> {
    let TransfersConfig {
        platform,
        temporal_url,
        temporal_namespace,
        task_queue,
        worker,
        ledger_url,
        service_token_file,
        approval_threshold,
        approval_timeout,
        hold_ttl,
    } = config;
    let ms = |duration: &Duration| format!("{}ms", duration.as_millis());
    let mut env = platform_env(platform);
    env.push(("TEMPORAL_ADDRESS", temporal_url.clone()));
    env.push(("TEMPORAL_NAMESPACE", temporal_namespace.clone()));
    env.push(("TEMPORAL_TASK_QUEUE", task_queue.clone()));
    env.push(("TRANSFERS_WORKER", worker.to_string()));
    env.push(("LEDGER_ADDRESS", ledger_url.clone()));
    env.push(("TRANSFERS_SERVICE_TOKEN_FILE", service_token_file.display().to_string()));
    env.push(("TRANSFERS_APPROVAL_THRESHOLD", approval_threshold.to_string()));
    env.push(("TRANSFERS_APPROVAL_TIMEOUT", ms(approval_timeout)));
    env.push(("TRANSFERS_HOLD_TTL", ms(hold_ttl)));
    env
}

/// A ledger on a fixed port and its own database, stoppable and startable again.
#[derive(Debug)]
pub struct OutageLedger {
    /// Its database (kept across restarts).
    pub db: TestDb,
    /// `127.0.0.1:<port>`.
    pub address: String,
    prefix: String,
    running: Option<(CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl OutageLedger {
    /// Starts a ledger on a free port and the topics of `prefix`.
    pub async fn start(prefix: &str) -> Self {
        let db = TestDb::empty().await;
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = probe.local_addr().expect("address").to_string();
        drop(probe);
        let mut ledger = Self {
            db,
            address,
            prefix: prefix.to_owned(),
            running: None,
        };
        ledger.resume().await;
        ledger
    }

    /// Starts it (again) on its port and database.
    pub async fn resume(&mut self) {
        assert!(self.running.is_none(), "the ledger is running");
        let bootstrap = kafka_bootstrap();
        crate::service::create_prefixed_topics(&bootstrap, &self.prefix, &fintech_ledger::events::TOPICS).await;
        let config = crate::ledger::config(
            crate::service::platform_config("ledger", &self.db.url, &bootstrap),
            &self.db,
            &self.prefix,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let listener = loop {
            match tokio::net::TcpListener::bind(&self.address).await {
                Ok(listener) => break listener,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "rebind {}: {error}",
                        self.address
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fintech_ledger::LedgerService::run(config, listener, shutdown.clone()));
        self.running = Some((shutdown, task));
    }

    /// Stops it gracefully.
    pub async fn pause(&mut self) {
        let (shutdown, task) = self.running.take().expect("the ledger runs");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("ledger stops within 30s")
            .expect("ledger task")
            .expect("ledger returns Ok");
    }

    /// A client (operator token).
    pub async fn client(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(crate::service::connect(&self.address).await)
    }
}

/// Temporal, accounts, the ledger and transfers, on one prefix.
#[derive(Debug)]
pub struct TransfersStack {
    /// The private Temporal dev server.
    pub temporal: TemporalServer,
    /// Accounts.
    pub accounts: AccountsHarness,
    /// The ledger.
    pub ledger: OutageLedger,
    /// Operator client of the ledger.
    pub ledger_client: LedgerServiceClient<Channel>,
    /// The ledger's cash account (the other side of the funding entries).
    pub cash: lpb::Account,
    /// Transfers.
    pub transfers: TransfersHarness,
    /// The task queue of this test.
    pub task_queue: String,
}

impl TransfersStack {
    /// Starts everything; `configure` adjusts the transfers settings.
    pub async fn start(configure: impl FnOnce(&mut TransfersConfig)) -> Self {
        let temporal = TemporalServer::start().await.expect("temporal dev server");
        Self::start_on(temporal, configure).await
    }

    /// Starts everything on `temporal`.
    pub async fn start_on(temporal: TemporalServer, configure: impl FnOnce(&mut TransfersConfig)) -> Self {
        let accounts = AccountsHarness::start().await;
        let prefix = accounts.prefix.clone();
        let ledger = OutageLedger::start(&prefix).await;
        let ledger_client = ledger.client().await;
        let cash = ledger_client
            .clone()
            .create_account(lpb::CreateAccountRequest {
                code: "cash-eur".to_owned(),
                name: "cash".to_owned(),
                r#type: lpb::AccountType::Asset as i32,
                currency: "EUR".to_owned(),
                overdraft_policy: lpb::OverdraftPolicy::Unlimited as i32,
                overdraft_limit: 0,
            })
            .await
            .expect("cash account")
            .into_inner()
            .account
            .expect("account");
        let task_queue = format!("transfers-test-{}", uuid::Uuid::new_v4().simple());
        let ledger_url = format!("http://{}", ledger.address);
        let transfers = TransfersHarness::launch(
            "transfers",
            &prefix,
            &topics(),
            |platform, _db, prefix| {
                let mut config = config(platform, prefix, &temporal, &task_queue, &ledger_url);
                configure(&mut config);
                config
            },
            Transfers::run,
            TransfersServiceClient::new,
        )
        .await;
        Self {
            temporal,
            accounts,
            ledger,
            ledger_client,
            cash,
            transfers,
            task_queue,
        }
    }

    /// The settings of this stack's transfers instance (for a process on the same database).
    pub fn transfers_config(&self) -> TransfersConfig {
        let mut config = config(
            crate::service::platform_config("transfers", &self.transfers.db.url, &kafka_bootstrap()),
            &self.transfers.prefix,
            &self.temporal,
            &self.task_queue,
            &format!("http://{}", self.ledger.address),
        );
        config.platform.topic_prefix = self.transfers.prefix.clone();
        config
    }

    /// Opens an EUR current account for `customer` with `overdraft_limit`, funds it with
    /// `funding` from cash, and waits until the ledger and the transfers cache know it.
    pub async fn open_funded(&self, customer: &str, funding: i64, overdraft_limit: i64) -> apb::Account {
        let account = self
            .accounts
            .open(customer, apb::Product::Current, "EUR", overdraft_limit)
            .await;
        self.wait_known(&account.account_id, account.version).await;
        if funding > 0 {
            self.ledger_client
                .clone()
                .post_entry(lpb::PostEntryRequest {
                    entry_id: format!("fund-{}", account.account_id),
                    description: "funding".to_owned(),
                    metadata: Default::default(),
                    lines: vec![
                        lpb::EntryLine {
                            account_id: self.cash.account_id.clone(),
                            side: lpb::Side::Debit as i32,
                            amount: funding,
                            currency: "EUR".to_owned(),
                        },
                        lpb::EntryLine {
                            account_id: account.account_id.clone(),
                            side: lpb::Side::Credit as i32,
                            amount: funding,
                            currency: "EUR".to_owned(),
                        },
                    ],
                })
                .await
                .expect("funding entry");
        }
        account
    }

    /// Waits until the ledger and the transfers cache hold `version` of the account.
    pub async fn wait_known(&self, account_id: &str, version: i64) {
        crate::ledger::wait_for_cached_version(&self.ledger.db, account_id, version).await;
        let id: uuid::Uuid = account_id.parse().expect("account id");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let cached: Option<i64> = sqlx::query_scalar("SELECT version FROM account_cache WHERE account_id = $1")
                .bind(id)
                .fetch_optional(&self.transfers.db.pool)
                .await
                .ok()
                .flatten();
            if cached.is_some_and(|cached| cached >= version) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transfers never cached version {version} of {account_id}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A transfers client carrying `token`.
    pub async fn client_with_token(&self, token: &str) -> TransfersServiceClient<Channel> {
        TransfersServiceClient::new(crate::service::connect_with_token(&self.transfers.address, token).await)
    }

    /// A client of `customer` with the customer scopes of transfers.
    pub async fn customer_client(&self, customer: &str) -> TransfersServiceClient<Channel> {
        self.client_with_token(&crate::auth::customer_token(
            customer,
            &["transfers.read", "transfers.write"],
        ))
        .await
    }

    /// The ledger balance of an account.
    pub async fn balance(&self, account_id: &str) -> lpb::Balance {
        self.ledger_client
            .clone()
            .get_balance(lpb::GetBalanceRequest {
                account_id: account_id.to_owned(),
                as_of: None,
            })
            .await
            .expect("balance")
            .into_inner()
            .balance
            .expect("balance")
    }

    /// Reads a transfer (operator).
    pub async fn get(&self, transfer_id: &str) -> pb::Transfer {
        self.transfers
            .client
            .clone()
            .get_transfer(pb::GetTransferRequest {
                transfer_id: transfer_id.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("get transfer: {status:?}"))
            .into_inner()
            .transfer
            .expect("transfer")
    }

    /// Waits (up to `within`) until the transfer satisfies `check`.
    pub async fn wait_for(
        &self,
        transfer_id: &str,
        what: &str,
        within: Duration,
        check: impl Fn(&pb::Transfer) -> bool,
    ) -> pb::Transfer {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let transfer = self.get(transfer_id).await;
            if check(&transfer) {
                return transfer;
            }
            assert!(tokio::time::Instant::now() < deadline, "never {what}: {transfer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the transfer has `status`.
    pub async fn wait_status(&self, transfer_id: &str, status: pb::TransferStatus) -> pb::Transfer {
        self.wait_for(
            transfer_id,
            &format!("{status:?}"),
            Duration::from_secs(60),
            |transfer| transfer.status == status as i32,
        )
        .await
    }

    /// The number of events of `topic` that the outbox holds for a transfer.
    pub async fn outbox_count(&self, topic: &str, transfer_id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1 AND record_key = $2")
            .bind(self.transfers.topic(topic))
            .bind(transfer_id)
            .fetch_one(&self.transfers.db.pool)
            .await
            .expect("outbox count")
    }

    /// Every currency of the trial balance nets to zero.
    pub async fn assert_trial_balance_zero(&self) {
        let trial = self
            .ledger_client
            .clone()
            .get_trial_balance(lpb::GetTrialBalanceRequest::default())
            .await
            .expect("trial balance")
            .into_inner();
        for currency in trial.currencies {
            assert_eq!(currency.net, 0, "trial balance of {}: {currency:?}", currency.currency);
        }
    }
}

/// A CreateTransfer request.
pub fn request(from: &str, to: &str, amount: i64) -> tonic::Request<pb::CreateTransferRequest> {
    tonic::Request::new(pb::CreateTransferRequest {
        from_account_id: from.to_owned(),
        to_account_id: to.to_owned(),
        amount,
        currency: "EUR".to_owned(),
        reference: "test".to_owned(),
    })
}

/// `request` with an `idempotency-key`.
pub fn keyed(key: &str, from: &str, to: &str, amount: i64) -> tonic::Request<pb::CreateTransferRequest> {
    let mut request = request(from, to, amount);
    request
        .metadata_mut()
        .insert("idempotency-key", MetadataValue::try_from(key).expect("ascii key"));
    request
}

/// The fields of a status's `google.rpc.BadRequest`, in order.
pub fn violation_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|violation| violation.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Fetches the recorded history of a transfer's workflow from the Temporal server and replays it
/// against the current workflow code (a nondeterminism fails); returns the history as JSON.
pub async fn replay_recorded(stack: &TransfersStack, transfer_id: &str) -> Vec<u8> {
    use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};

    let url: Url = stack.temporal.url().parse().expect("temporal url");
    let connection = Connection::connect(ConnectionOptions::new(url).build())
        .await
        .expect("connect to temporal");
    let client = Client::new(
        connection,
        ClientOptions::new(stack.temporal.namespace().to_owned()).build(),
    )
    .expect("temporal client");
    let history = client
        .get_workflow_handle::<fintech_transfers::saga::TransferWorkflow>(format!("transfer-{transfer_id}"))
        .fetch_history(Default::default());
    let json = history.to_json().await.expect("history as json");
    replay_json(&json).await;
    json
}

/// Replays a recorded history (JSON, as `temporal workflow show --output json` writes it) against
/// the current workflow code; panics on a nondeterminism or any other replay failure.
pub async fn replay_json(json: &[u8]) {
    use temporalio_client::WorkflowHistory;
    use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};
    let replayer = WorkflowReplayer::new(
        WorkflowReplayerOptions::new()
            .register_workflow::<fintech_transfers::saga::TransferWorkflow>()
            .expect("register the workflow")
            .build(),
    )
    .expect("replayer");
    let history = WorkflowHistory::from_json(json).expect("history json");
    replayer
        .replay_workflow(history)
        .await
        .expect("the recorded history replays");
}
