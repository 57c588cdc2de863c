//! Transfers scenario: `CreateTransfer` by N customers in a closed loop, each waiting for its
//! transfer to be COMPLETED before it sends the next, so the result is the saga's throughput and
//! its create → completed latency at that concurrency (hold, capture and the row's updates, all
//! through Temporal's workflow and activity tasks).
//!
//! Its baseline, on the same accounts, pairs and amounts, in the same environment: the ledger's
//! own `PlaceHold` + `CaptureHold` called directly, the two ledger calls the saga makes. The ratio
//! between the two is what orchestration costs here (Temporal's round trips, the service's row
//! updates and events). Temporal's published figure for its dev server is named beside it.
//!
//! Completion is observed from the transfers service's own table (one query every
//! [`POLL`] for every transfer a client waits on), not by polling `GetTransfer` per client, so
//! the observation does not load the service it measures; latencies are therefore up to one poll
//! interval late.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fintech_proto::accounts as apb;
use fintech_proto::accounts::accounts_service_client::AccountsServiceClient;
use fintech_proto::ledger as lpb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use fintech_proto::transfers as pb;
use fintech_proto::transfers::transfers_service_client::TransfersServiceClient;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::load::{self, Failure, connect, connect_as_customer, with_key};
use crate::procstat::Sampler;
use crate::progress::{say, step};
use crate::report::{Measured, TransfersLevel, TransfersResults};

/// How often the completion watcher reads the transfers table.
pub const POLL: Duration = Duration::from_millis(5);
/// Longest wait for one transfer to finish.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Balance every benchmark account starts with (EUR cents).
const FUNDING: i64 = 1_000_000_000;
/// What Temporal publishes for its development server, named beside the results.
pub const TEMPORAL_PUBLISHED: &str = "about 80–130 workflows/s (Temporal's figure for `temporal server start-dev`)";

/// What the scenario needs.
#[derive(Debug)]
pub struct Setup<'a> {
    /// gRPC address of accounts.
    pub accounts: String,
    /// gRPC address of the ledger.
    pub ledger: String,
    /// gRPC address of transfers.
    pub transfers: String,
    /// The transfers service's database (completion is read from it).
    pub transfers_db: PgPool,
    /// Client counts.
    pub levels: &'a [usize],
    /// Measured time of each run.
    pub duration: Duration,
    /// Unmeasured time before each.
    pub warmup: Duration,
    /// Unique prefix for keys and ids.
    pub run_id: &'a str,
}

/// One customer of the benchmark: its two accounts.
#[derive(Debug, Clone)]
struct Customer {
    id: String,
    accounts: [String; 2],
}

/// Runs the hold + capture baseline and the transfers at every level.
pub async fn run(setup: Setup<'_>, sampler: &Sampler) -> anyhow::Result<TransfersResults> {
    let clients = setup.levels.iter().copied().max().unwrap_or(1);
    step(format!("transfers: opening and funding {} accounts", 2 * clients));
    let customers = open_customers(&setup, clients).await?;
    let watcher = Watcher::start(setup.transfers_db.clone());
    let mut levels = Vec::new();
    for &clients in setup.levels {
        let customers = &customers[..clients];
        step(format!(
            "transfers at {clients} clients: ledger PlaceHold + CaptureHold directly"
        ));
        let from = sampler.now() + setup.warmup.as_secs_f64();
        let baseline = holds(&setup, customers).await?;
        sampler.sample_now();
        let baseline_resources = sampler.usage(from, sampler.now());

        step(format!(
            "transfers at {clients} clients: CreateTransfer until COMPLETED"
        ));
        let from = sampler.now() + setup.warmup.as_secs_f64();
        let run = transfers(&setup, customers, &watcher).await?;
        sampler.sample_now();
        let resources = sampler.usage(from, sampler.now());

        let per_second = |run: &load::ClosedLoopRun| run.samples[0].count() as f64 / run.elapsed.as_secs_f64();
        let (transfers_per_second, baseline_per_second) = (per_second(&run), per_second(&baseline));
        let level = TransfersLevel {
            concurrency: clients,
            transfers_per_second,
            create_to_completed: Measured::from(&run.samples[0]),
            create: Measured::from(&run.samples[1]),
            ack_to_completed: Measured::from(&run.samples[2]),
            baseline_per_second,
            baseline: Measured::from(&baseline.samples[0]),
            ratio_to_baseline: transfers_per_second / baseline_per_second.max(1e-9),
            resources,
            baseline_resources,
        };
        say(format!(
            "    {transfers_per_second:.1} transfers/s, create -> completed p50 {:.0} / p99 {:.0} ms ({} failed) vs \
             hold + capture {baseline_per_second:.0}/s (p99 {:.1} ms)",
            level.create_to_completed.latency.p50_ms,
            level.create_to_completed.latency.p99_ms,
            level.create_to_completed.errors,
            level.baseline.latency.p99_ms,
        ));
        levels.push(level);
    }
    watcher.stop();
    Ok(TransfersResults {
        levels,
        accounts: 2 * clients,
        poll_ms: POLL.as_millis() as u64,
        temporal_published: TEMPORAL_PUBLISHED.to_owned(),
    })
}

/// Opens two current accounts for each of `count` customers through the accounts service, funds
/// them from a cash account, and waits until the ledger and the transfers cache know them (both
/// learn of them only from `accounts.opened`).
async fn open_customers(setup: &Setup<'_>, count: usize) -> anyhow::Result<Vec<Customer>> {
    let mut accounts = AccountsServiceClient::new(connect(&setup.accounts).await?);
    let mut ledger = LedgerServiceClient::new(connect(&setup.ledger).await?);
    let cash = ledger
        .create_account(with_key(
            lpb::CreateAccountRequest {
                code: "bench-cash-eur".to_owned(),
                name: "benchmark cash".to_owned(),
                r#type: lpb::AccountType::Asset as i32,
                currency: "EUR".to_owned(),
                overdraft_policy: lpb::OverdraftPolicy::Unlimited as i32,
                overdraft_limit: 0,
            },
            "bench-cash-eur",
        ))
        .await
        .context("CreateAccount of the cash account")?
        .into_inner()
        .account
        .context("CreateAccount answered without an account")?;
    let mut customers = Vec::with_capacity(count);
    for index in 0..count {
        let id = format!("bench-customer-{index}");
        let mut opened = Vec::new();
        for side in 0..2 {
            let account = accounts
                .open_account(with_key(
                    apb::OpenAccountRequest {
                        customer_id: id.clone(),
                        product: apb::Product::Current as i32,
                        currency: "EUR".to_owned(),
                        overdraft_limit: 0,
                    },
                    &format!("{}-{id}-{side}", setup.run_id),
                ))
                .await
                .with_context(|| format!("OpenAccount for {id}"))?
                .into_inner()
                .account
                .context("OpenAccount answered without an account")?;
            opened.push(account.account_id);
        }
        let [first, second] = <[String; 2]>::try_from(opened).map_err(|_| anyhow::anyhow!("two accounts"))?;
        customers.push(Customer {
            id,
            accounts: [first, second],
        });
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for account_id in customers.iter().flat_map(|customer| customer.accounts.iter()) {
        // The ledger opens the account's stream when `accounts.opened` reaches it.
        let request = lpb::PostEntryRequest {
            entry_id: format!("bench-fund-{account_id}"),
            description: "benchmark funding".to_owned(),
            metadata: Default::default(),
            lines: vec![
                line(&cash.account_id, lpb::Side::Debit, FUNDING),
                line(account_id, lpb::Side::Credit, FUNDING),
            ],
        };
        loop {
            match ledger.post_entry(request.clone()).await {
                Ok(_) => break,
                // Not known yet (NOT_FOUND) until `accounts.opened` reached the ledger.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(status) => anyhow::bail!("funding {account_id}: the ledger never knew it ({status:?})"),
            }
        }
    }
    let ids: Vec<Uuid> = (customers.iter())
        .flat_map(|customer| customer.accounts.iter())
        .map(|id| id.parse())
        .collect::<Result<_, _>>()?;
    loop {
        let known: i64 = sqlx::query_scalar("SELECT count(*) FROM account_cache WHERE account_id = ANY ($1)")
            .bind(&ids)
            .fetch_one(&setup.transfers_db)
            .await?;
        if known == ids.len() as i64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "transfers cached {known} of {} accounts",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(customers)
}

fn line(account_id: &str, side: lpb::Side, amount: i64) -> lpb::EntryLine {
    lpb::EntryLine {
        account_id: account_id.to_owned(),
        side: side as i32,
        amount,
        currency: "EUR".to_owned(),
    }
}

/// The `n`-th operation of a customer moves money from one of its accounts to the other,
/// alternating, so balances never drift far.
fn direction(customer: &Customer, n: u64) -> (&str, &str) {
    let [a, b] = &customer.accounts;
    if n.is_multiple_of(2) { (a, b) } else { (b, a) }
}

/// The amount of the `n`-th operation.
fn amount(n: u64) -> i64 {
    100 + (n % 900) as i64
}

/// What the saga asks of the ledger, asked directly: `PlaceHold` on the source account, then
/// `CaptureHold` of all of it into the destination.
async fn holds(setup: &Setup<'_>, customers: &[Customer]) -> anyhow::Result<load::ClosedLoopRun> {
    let mut clients = Vec::with_capacity(customers.len());
    for customer in customers {
        let client = LedgerServiceClient::new(connect(&setup.ledger).await?);
        let customer = customer.clone();
        let prefix = format!("bench-{}-c{}-hold-{}", setup.run_id, customers.len(), customer.id);
        let expires_in = setup.warmup + setup.duration + Duration::from_secs(600);
        clients.push(move |n: u64| {
            let mut client = client.clone();
            let (from, to) = direction(&customer, n);
            let amount = amount(n);
            let hold_id = format!("{prefix}-{n}");
            let place = lpb::PlaceHoldRequest {
                hold_id: hold_id.clone(),
                account_id: from.to_owned(),
                amount,
                currency: "EUR".to_owned(),
                expires_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now() + expires_in)),
                reason: "benchmark transfer hold".to_owned(),
            };
            let capture = lpb::CaptureHoldRequest {
                hold_id: hold_id.clone(),
                amount,
                remainder: lpb::CaptureRemainder::Release as i32,
                entry_id: format!("{hold_id}-capture"),
                description: "benchmark transfer capture".to_owned(),
                metadata: Default::default(),
                lines: vec![
                    line(from, lpb::Side::Debit, amount),
                    line(to, lpb::Side::Credit, amount),
                ],
            };
            async move {
                client.place_hold(place).await.map_err(|status| Failure {
                    kind: format!("PlaceHold: {:?}", status.code()),
                    commits: 0,
                })?;
                client.capture_hold(capture).await.map_err(|status| Failure {
                    kind: format!("CaptureHold: {:?}", status.code()),
                    commits: 1,
                })?;
                Ok((Vec::new(), 2))
            }
        });
    }
    let label = format!("ledger hold + capture c={}", customers.len());
    load::closed_loop(clients, 0, setup.warmup, setup.duration, &label).await
}

/// `CreateTransfer` (as the customer, with an idempotency key), then the wait until the transfer
/// finished; anything but COMPLETED is a failure. Parts: the create call, ack → completed.
async fn transfers(
    setup: &Setup<'_>,
    customers: &[Customer],
    watcher: &Watcher,
) -> anyhow::Result<load::ClosedLoopRun> {
    let mut clients = Vec::with_capacity(customers.len());
    for customer in customers {
        let channel =
            connect_as_customer(&setup.transfers, &customer.id, &["transfers.read", "transfers.write"]).await?;
        let client = TransfersServiceClient::new(channel);
        let customer = customer.clone();
        let watcher = watcher.clone();
        let prefix = format!("bench-{}-c{}-{}", setup.run_id, customers.len(), customer.id);
        clients.push(move |n: u64| {
            let mut client = client.clone();
            let watcher = watcher.clone();
            let (from, to) = direction(&customer, n);
            let request = with_key(
                pb::CreateTransferRequest {
                    from_account_id: from.to_owned(),
                    to_account_id: to.to_owned(),
                    amount: amount(n),
                    currency: "EUR".to_owned(),
                    reference: "benchmark".to_owned(),
                },
                &format!("{prefix}-{n}"),
            );
            async move {
                let started = Instant::now();
                let transfer = client
                    .create_transfer(request)
                    .await
                    .map_err(|status| Failure {
                        kind: format!("CreateTransfer: {:?}", status.code()),
                        commits: 0,
                    })?
                    .into_inner()
                    .transfer
                    .ok_or_else(|| Failure {
                        kind: "CreateTransfer: no transfer in the answer".to_owned(),
                        commits: 1,
                    })?;
                let acknowledged = started.elapsed();
                let id: Uuid = transfer.transfer_id.parse().map_err(|_| Failure {
                    kind: "CreateTransfer: the transfer id is not a UUID".to_owned(),
                    commits: 1,
                })?;
                match watcher.finished(id).await {
                    Some(Finished { status, .. }) if status == "completed" => {}
                    Some(Finished { status, failure_code }) => {
                        return Err(Failure {
                            kind: format!("transfer {status} ({})", failure_code.unwrap_or_default()),
                            commits: 1,
                        });
                    }
                    None => {
                        return Err(Failure {
                            kind: format!("transfer not finished within {FINISH_TIMEOUT:?}"),
                            commits: 1,
                        });
                    }
                }
                Ok((vec![acknowledged, started.elapsed() - acknowledged], 1))
            }
        });
    }
    let label = format!("transfers c={}", customers.len());
    load::closed_loop(clients, 2, setup.warmup, setup.duration, &label).await
}

/// How a transfer ended.
#[derive(Debug, Clone)]
struct Finished {
    status: String,
    failure_code: Option<String>,
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<Finished>>>>;

/// Reads the transfers table every [`POLL`] for the transfers clients wait on and tells each
/// waiter when its transfer finished.
#[derive(Debug, Clone)]
struct Watcher {
    waiters: Waiters,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    fn start(db: PgPool) -> Self {
        let waiters: Waiters = Arc::default();
        let watched = Arc::clone(&waiters);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                let ids: Vec<Uuid> = lock(&watched).keys().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                let rows: Result<Vec<(Uuid, String, Option<String>)>, _> = sqlx::query_as(
                    "SELECT transfer_id, status, failure_code FROM transfers \
                     WHERE transfer_id = ANY ($1) AND finished_at IS NOT NULL",
                )
                .bind(&ids)
                .fetch_all(&db)
                .await;
                // A failed read is retried on the next round; a waiter gives up after its timeout.
                let Ok(rows) = rows else { continue };
                let mut waiters = lock(&watched);
                for (id, status, failure_code) in rows {
                    if let Some(waiter) = waiters.remove(&id) {
                        let _ = waiter.send(Finished { status, failure_code });
                    }
                }
            }
        });
        Self {
            waiters,
            task: Arc::new(task),
        }
    }

    /// How transfer `id` finished, or `None` after [`FINISH_TIMEOUT`].
    async fn finished(&self, id: Uuid) -> Option<Finished> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(id, sender);
        let finished = tokio::time::timeout(FINISH_TIMEOUT, receiver).await.ok()?.ok();
        lock(&self.waiters).remove(&id);
        finished
    }

    fn stop(&self) {
        self.task.abort();
    }
}

fn lock(waiters: &Waiters) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Finished>>> {
    waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_alternate_between_a_customers_two_accounts() {
        let customer = Customer {
            id: "c".to_owned(),
            accounts: ["a".to_owned(), "b".to_owned()],
        };
        assert_eq!(direction(&customer, 0), ("a", "b"));
        assert_eq!(direction(&customer, 1), ("b", "a"));
        assert!((0..2_000).map(amount).all(|amount| (100..1_000).contains(&amount)));
    }
}
