//! Ledger scenarios: `PostEntry` of two-line entries (debit one account, credit another, same
//! amount) by N clients for a fixed time,
//!
//! - **spread**: both accounts drawn from a few hundred, so entries rarely wait for each other;
//! - **hot account**: every entry credits the same account, so every posting queues on that
//!   account's stream lock (ADR 0004: ordered locks, then an optimistic append).
//!
//! Each is compared with a pgbench **row-lock ceiling** on the same server: the same clients lock
//! the two stream rows in order (`SELECT .. ORDER BY id FOR UPDATE`), bump both and commit, with
//! nothing else (no events, hashes, projections, outbox or idempotency rows). It bounds what any
//! implementation of "one stream per account with ordered locks" can reach here.
//!
//! Then **holds** on the same accounts and the same pairs: each operation is a `PlaceHold` on the
//! debited account followed by a `CaptureHold` of the whole hold whose entry is the same two-line
//! entry as above, so its ratio to plain `PostEntry` is the price of reserving before moving.

use std::sync::Arc;
use std::time::Duration;

use crate::load::Channel;
use anyhow::Context as _;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use rand::Rng as _;
use sqlx::PgPool;

use crate::load::{self, Failure, connect, with_key};
use crate::pgbench;
use crate::procstat::Sampler;
use crate::progress::{say, step};
use crate::report::{HoldsRun, LedgerResults, LedgerRun, Measured};

/// Accounts of the spread scenario (full run).
pub const SPREAD_ACCOUNTS: usize = 200;

/// What the scenarios need.
#[derive(Debug)]
pub struct Setup<'a> {
    /// gRPC address of the ledger.
    pub address: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Accounts of the spread scenario.
    pub accounts: usize,
    /// Measured time of each scenario.
    pub duration: Duration,
    /// Unmeasured time before each.
    pub warmup: Duration,
    /// Unique prefix for account codes and entry ids.
    pub run_id: &'a str,
    /// The pgbench database (for the row-lock ceiling).
    pub pgbench_db: &'a PgPool,
    /// The pgbench binary.
    pub pgbench: &'a std::path::Path,
    /// libpq URL of the pgbench database.
    pub pgbench_url: &'a str,
    /// Where scripts and logs go.
    pub work_dir: &'a std::path::Path,
}

async fn open_account(
    client: &mut LedgerServiceClient<Channel>,
    code: &str,
    account_type: pb::AccountType,
) -> anyhow::Result<String> {
    let response = client
        .create_account(with_key(
            pb::CreateAccountRequest {
                code: code.to_owned(),
                name: format!("benchmark account {code}"),
                r#type: account_type as i32,
                currency: "EUR".to_owned(),
                overdraft_policy: pb::OverdraftPolicy::Unlimited as i32,
                overdraft_limit: 0,
            },
            code,
        ))
        .await
        .with_context(|| format!("CreateAccount {code}"))?;
    response
        .into_inner()
        .account
        .map(|account| account.account_id)
        .context("CreateAccount answered without an account")
}

/// Runs the row-lock ceilings and both ledger scenarios.
pub async fn run(setup: Setup<'_>, sampler: &Sampler) -> anyhow::Result<LedgerResults> {
    let mut client = LedgerServiceClient::new(connect(&setup.address).await?);
    let mut accounts = Vec::with_capacity(setup.accounts);
    for index in 0..setup.accounts {
        let code = format!("bench-{}-a{index}", setup.run_id);
        accounts.push(open_account(&mut client, &code, pb::AccountType::Liability).await?);
    }
    // Liability accounts (what a customer's account is) that may go below zero: holds reduce
    // their available balance without ever refusing the benchmark's load.
    let hot = open_account(
        &mut client,
        &format!("bench-{}-hot", setup.run_id),
        pb::AccountType::Liability,
    )
    .await?;
    let accounts = Arc::new(accounts);

    // Baseline table: one row per stream, plus row 0 as the hot one.
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_streams (id INT PRIMARY KEY, version BIGINT NOT NULL, balance BIGINT NOT NULL)")
        .execute(setup.pgbench_db)
        .await?;
    sqlx::query("INSERT INTO bench_streams SELECT g, 1, 0 FROM generate_series(0, $1) g ON CONFLICT DO NOTHING")
        .bind(i32::try_from(setup.accounts).unwrap_or(i32::MAX))
        .execute(setup.pgbench_db)
        .await?;

    let mut runs = Vec::new();
    for hot_account in [false, true] {
        let name = if hot_account { "hot" } else { "spread" };
        step(format!("ledger {name}: pgbench row-lock ceiling"));
        let script = setup.work_dir.join(format!("ledger-{name}.sql"));
        std::fs::write(&script, ceiling_script(setup.accounts, hot_account))?;
        let ceiling = pgbench::run(
            pgbench::Invocation {
                pgbench: setup.pgbench,
                conninfo: setup.pgbench_url,
                script: &script,
                clients: setup.clients,
                duration: setup.duration,
                log_dir: &setup.work_dir.join("pgbench"),
            },
            &format!("pgbench ledger {name}"),
        )
        .await?;

        step(format!("ledger {name}: PostEntry"));
        let from = sampler.now() + setup.warmup.as_secs_f64();
        let run = post_entries(&setup, Arc::clone(&accounts), hot_account.then(|| hot.clone()), name).await?;
        sampler.sample_now();
        let resources = sampler.usage(from, sampler.now());
        let entries_per_second = run.samples[0].count() as f64 / run.elapsed.as_secs_f64();
        let post = Measured::from(&run.samples[0]);
        say(format!(
            "    {entries_per_second:.0} entries/s (p99 {:.1} ms, {} errors) vs row-lock ceiling {:.0}/s (p99 {:.1} ms)",
            post.latency.p99_ms,
            post.errors,
            ceiling.tps,
            ceiling.samples.latency().p99_ms
        ));

        step(format!("ledger {name}: PlaceHold + CaptureHold"));
        let from = sampler.now() + setup.warmup.as_secs_f64();
        let holds_run = hold_and_capture(&setup, Arc::clone(&accounts), hot_account.then(|| hot.clone()), name).await?;
        sampler.sample_now();
        let holds_resources = sampler.usage(from, sampler.now());
        let holds_per_second = holds_run.samples[0].count() as f64 / holds_run.elapsed.as_secs_f64();
        let holds = HoldsRun {
            captured_per_second: holds_per_second,
            ratio_to_post_entry: holds_per_second / entries_per_second.max(1e-9),
            both: Measured::from(&holds_run.samples[0]),
            place: Measured::from(&holds_run.samples[1]),
            capture: Measured::from(&holds_run.samples[2]),
            resources: holds_resources,
        };
        say(format!(
            "    {holds_per_second:.0} holds placed and captured/s (p99 {:.1} ms, {} errors) = {:.2} of PostEntry",
            holds.both.latency.p99_ms, holds.both.errors, holds.ratio_to_post_entry
        ));
        runs.push((
            LedgerRun {
                entries_per_second,
                ceiling_per_second: ceiling.tps,
                ceiling: Measured::from(&ceiling.samples),
                ratio_to_ceiling: entries_per_second / ceiling.tps.max(1e-9),
                post,
                resources,
            },
            holds,
        ));
    }
    let (hot_run, hot_holds) = runs.pop().unwrap_or_default();
    let (spread, spread_holds) = runs.pop().unwrap_or_default();
    Ok(LedgerResults {
        concurrency: setup.clients,
        accounts: setup.accounts,
        hot_to_spread: hot_run.entries_per_second / spread.entries_per_second.max(1e-9),
        spread,
        hot: hot_run,
        holds_spread: Some(spread_holds),
        holds_hot: Some(hot_holds),
    })
}

/// The pgbench script of the row-lock ceiling.
fn ceiling_script(accounts: usize, hot: bool) -> String {
    let second = if hot {
        "\\set b 0\n".to_owned()
    } else {
        format!("\\set b random(1, {accounts})\n")
    };
    format!(
        "-- generated by fintech-bench: lock two stream rows in order, move both, commit\n\
         \\set a random(1, {accounts})\n{second}\
         BEGIN;\n\
         SELECT id, version, balance FROM bench_streams WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;\n\
         UPDATE bench_streams SET version = version + 1, balance = balance + 100 WHERE id = :a;\n\
         UPDATE bench_streams SET version = version + 1, balance = balance - 100 WHERE id = :b;\n\
         COMMIT;\n"
    )
}

/// A random (debit, credit) pair: two distinct accounts, or a random one and the `hot` one.
fn pick_pair(accounts: &[String], hot: Option<&String>) -> (String, String) {
    let mut rng = rand::rng();
    let debit = rng.random_range(0..accounts.len());
    let credit = match hot {
        Some(hot) => hot.clone(),
        None => {
            let credit = rng.random_range(0..accounts.len() - 1);
            accounts[if credit >= debit { credit + 1 } else { credit }].clone()
        }
    };
    (accounts[debit].clone(), credit)
}

/// A two-line entry's lines: `debit` and `credit` by `amount` EUR cents.
fn pair_lines(debit: String, credit: String, amount: i64) -> Vec<pb::EntryLine> {
    let line = |account_id, side: pb::Side| pb::EntryLine {
        account_id,
        side: side as i32,
        amount,
        currency: "EUR".to_owned(),
    };
    vec![line(debit, pb::Side::Debit), line(credit, pb::Side::Credit)]
}

/// `PlaceHold` then `CaptureHold` of all of it, by `setup.clients` clients in a closed loop, on the
/// pairs `post_entries` draws: parts are the place and the capture latencies.
async fn hold_and_capture(
    setup: &Setup<'_>,
    accounts: Arc<Vec<String>>,
    hot: Option<String>,
    name: &str,
) -> anyhow::Result<load::ClosedLoopRun> {
    let expires_in = setup.warmup + setup.duration + Duration::from_secs(600);
    let mut clients = Vec::with_capacity(setup.clients);
    for worker in 0..setup.clients {
        let client = LedgerServiceClient::new(connect(&setup.address).await?);
        let (accounts, hot) = (Arc::clone(&accounts), hot.clone());
        let prefix = format!("bench-{}-{name}-hold-{worker}", setup.run_id);
        clients.push(move |n: u64| {
            let mut client = client.clone();
            let (debit, credit) = pick_pair(&accounts, hot.as_ref());
            let amount = 100 + (n as i64 % 900);
            let hold_id = format!("{prefix}-{n}");
            let place = pb::PlaceHoldRequest {
                hold_id: hold_id.clone(),
                account_id: debit.clone(),
                amount,
                currency: "EUR".to_owned(),
                expires_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now() + expires_in)),
                reason: "benchmark hold".to_owned(),
            };
            let capture = pb::CaptureHoldRequest {
                hold_id: hold_id.clone(),
                amount,
                remainder: pb::CaptureRemainder::Release as i32,
                entry_id: format!("{hold_id}-capture"),
                description: "benchmark capture".to_owned(),
                metadata: Default::default(),
                lines: pair_lines(debit, credit, amount),
            };
            async move {
                let started = std::time::Instant::now();
                client.place_hold(place).await.map_err(|status| Failure {
                    kind: format!("PlaceHold: {:?}", status.code()),
                    commits: 0,
                })?;
                let placed = started.elapsed();
                client.capture_hold(capture).await.map_err(|status| Failure {
                    kind: format!("CaptureHold: {:?}", status.code()),
                    commits: 1,
                })?;
                Ok((vec![placed, started.elapsed() - placed], 2))
            }
        });
    }
    load::closed_loop(
        clients,
        2,
        setup.warmup,
        setup.duration,
        &format!("ledger {name} holds"),
    )
    .await
}

/// `PostEntry` by `setup.clients` clients in a closed loop: each entry debits a random account and
/// credits another, or the `hot` one.
async fn post_entries(
    setup: &Setup<'_>,
    accounts: Arc<Vec<String>>,
    hot: Option<String>,
    name: &str,
) -> anyhow::Result<load::ClosedLoopRun> {
    let mut clients = Vec::with_capacity(setup.clients);
    for worker in 0..setup.clients {
        let client = LedgerServiceClient::new(connect(&setup.address).await?);
        let (accounts, hot) = (Arc::clone(&accounts), hot.clone());
        let prefix = format!("bench-{}-{name}-{worker}", setup.run_id);
        clients.push(move |n: u64| {
            let mut client = client.clone();
            let (debit, credit) = pick_pair(&accounts, hot.as_ref());
            let amount = 100 + (n as i64 % 900);
            let request = pb::PostEntryRequest {
                entry_id: format!("{prefix}-{n}"),
                description: "benchmark entry".to_owned(),
                metadata: Default::default(),
                lines: pair_lines(debit, credit, amount),
            };
            async move {
                match client.post_entry(request).await {
                    Ok(_) => Ok((Vec::new(), 1)),
                    Err(status) => Err(Failure {
                        kind: format!("PostEntry: {:?}", status.code()),
                        commits: 0,
                    }),
                }
            }
        });
    }
    load::closed_loop(clients, 0, setup.warmup, setup.duration, &format!("ledger {name}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_script_always_locks_row_zero() {
        let hot = ceiling_script(200, true);
        assert!(hot.contains("\\set b 0\n"));
        assert!(hot.contains("ORDER BY id FOR UPDATE"));
        let spread = ceiling_script(200, false);
        assert!(spread.contains("\\set b random(1, 200)"));
    }
}
