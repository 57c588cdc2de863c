//! A property test of the running ledger: random sequences of entries, valid and invalid (bad
//! amounts, unbalanced, unknown accounts, foreign currencies, over a limit), posted one after the
//! other. The service must accept exactly the entries a simple model accepts, move balances as the
//! model does, change nothing on a rejection, and keep the trial balance at zero.

use std::cell::Cell;
use std::collections::HashMap;

use fintech_platform::telemetry;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::get_balance_request::AsOf;
use fintech_tests::ledger::{LedgerHarness, line};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;

/// (type, currency, overdraft policy, limit) of the accounts the entries move money between.
const ACCOUNTS: [(pb::AccountType, &str, pb::OverdraftPolicy, i64); 6] = [
    (pb::AccountType::Asset, "EUR", pb::OverdraftPolicy::Forbidden, 0),
    (pb::AccountType::Asset, "EUR", pb::OverdraftPolicy::Limited, 200),
    (pb::AccountType::Liability, "EUR", pb::OverdraftPolicy::Forbidden, 0),
    (pb::AccountType::Revenue, "EUR", pb::OverdraftPolicy::Unlimited, 0),
    (pb::AccountType::Asset, "USD", pb::OverdraftPolicy::Unlimited, 0),
    (pb::AccountType::Liability, "USD", pb::OverdraftPolicy::Forbidden, 0),
];
/// Index that stands for an account that does not exist.
const UNKNOWN: usize = ACCOUNTS.len();

/// One attempted entry: balanced legs (debit, credit, amount) between accounts, then an optional
/// perturbation of one line's amount and an optional override of one line's currency.
#[derive(Debug, Clone)]
struct Attempt {
    legs: Vec<(usize, usize, i64)>,
    perturb: Option<(usize, i64)>,
    foreign_currency: Option<usize>,
}

/// One leg between two accounts of one currency (EUR mostly), now and then with an account that
/// does not exist on one side.
fn leg() -> impl Strategy<Value = (usize, usize, i64)> {
    (
        proptest::bool::weighted(0.25),
        0usize..4,
        0usize..4,
        1i64..150,
        proptest::option::weighted(0.05, any::<bool>()),
    )
        .prop_map(|(usd, debit, credit, amount, unknown)| {
            let pick = |index: usize| if usd { 4 + index % 2 } else { index };
            let (mut debit, mut credit) = (pick(debit), pick(credit));
            match unknown {
                Some(true) => debit = UNKNOWN,
                Some(false) => credit = UNKNOWN,
                None => {}
            }
            (debit, credit, amount)
        })
}

fn attempt() -> impl Strategy<Value = Attempt> {
    (
        proptest::collection::vec(leg(), 1..4),
        proptest::option::weighted(0.2, (0usize..8, -3i64..3)),
        proptest::option::weighted(0.1, 0usize..8),
    )
        .prop_map(|(legs, perturb, foreign_currency)| Attempt {
            legs,
            perturb,
            foreign_currency,
        })
}

/// What the model says about an entry.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Invalid,
    Refused,
    Accepted(HashMap<usize, i64>),
}

fn debit_normal(index: usize) -> bool {
    matches!(ACCOUNTS[index].0, pb::AccountType::Asset | pb::AccountType::Expense)
}

/// `(account index, is debit, amount, currency)` lines of an attempt.
fn lines_of(attempt: &Attempt) -> Vec<(usize, bool, i64, String)> {
    let currency = |index: usize| ACCOUNTS.get(index).map_or("EUR", |account| account.1).to_owned();
    let mut lines: Vec<(usize, bool, i64, String)> = attempt
        .legs
        .iter()
        .flat_map(|&(debit, credit, amount)| {
            [
                (debit, true, amount, currency(debit)),
                (credit, false, amount, currency(credit)),
            ]
        })
        .collect();
    let count = lines.len();
    if let Some((index, delta)) = attempt.perturb {
        lines[index % count].2 += delta;
    }
    if let Some(index) = attempt.foreign_currency {
        let line = &mut lines[index % count];
        line.3 = if line.3 == "EUR" {
            "USD".to_owned()
        } else {
            "EUR".to_owned()
        };
    }
    lines
}

fn model(lines: &[(usize, bool, i64, String)], balances: &[i64]) -> Verdict {
    if lines.iter().any(|line| line.2 <= 0) {
        return Verdict::Invalid;
    }
    let mut per_currency: HashMap<&str, i64> = HashMap::new();
    for (_, debit, amount, currency) in lines {
        *per_currency.entry(currency).or_default() += if *debit { *amount } else { -amount };
    }
    if per_currency.values().any(|net| *net != 0) {
        return Verdict::Invalid;
    }
    let mut changes: HashMap<usize, i64> = HashMap::new();
    for (index, debit, amount, currency) in lines {
        if *index == UNKNOWN || ACCOUNTS[*index].1 != currency {
            return Verdict::Refused;
        }
        *changes.entry(*index).or_default() += if *debit == debit_normal(*index) {
            *amount
        } else {
            -amount
        };
    }
    for (index, change) in &changes {
        let after = balances[*index] + change;
        let floor = match ACCOUNTS[*index].2 {
            pb::OverdraftPolicy::Forbidden => Some(0),
            pb::OverdraftPolicy::Limited => Some(-ACCOUNTS[*index].3),
            _ => None,
        };
        if floor.is_some_and(|floor| after < floor && *change < 0) {
            return Verdict::Refused;
        }
    }
    Verdict::Accepted(changes)
}

async fn balances(harness: &LedgerHarness, accounts: &[pb::Account]) -> Vec<i64> {
    let mut balances = Vec::with_capacity(accounts.len());
    for account in accounts {
        balances.push(harness.balance(&account.account_id).await.balance);
    }
    balances
}

async fn check_sequence(
    harness: &LedgerHarness,
    accounts: &[pb::Account],
    attempts: Vec<Attempt>,
    next_id: &Cell<u64>,
) -> Result<(), TestCaseError> {
    let unknown = pb::Account {
        account_id: uuid::Uuid::new_v4().to_string(),
        currency: "EUR".to_owned(),
        ..Default::default()
    };
    let mut client = harness.client.clone();
    for attempt in attempts {
        let before = balances(harness, accounts).await;
        let lines = lines_of(&attempt);
        let verdict = model(&lines, &before);
        next_id.set(next_id.get() + 1);
        let request = pb::PostEntryRequest {
            entry_id: format!("prop-{}", next_id.get()),
            description: "property".to_owned(),
            metadata: HashMap::new(),
            lines: lines
                .iter()
                .map(|(index, debit, amount, currency)| {
                    let side = if *debit { pb::Side::Debit } else { pb::Side::Credit };
                    let mut entry_line = line(accounts.get(*index).unwrap_or(&unknown), side, *amount);
                    entry_line.currency.clone_from(currency);
                    entry_line
                })
                .collect(),
        };
        let outcome = client.post_entry(request).await;
        let after = balances(harness, accounts).await;
        match (&verdict, outcome) {
            (Verdict::Accepted(changes), Ok(response)) => {
                let response = response.into_inner();
                for (index, balance) in after.iter().enumerate() {
                    prop_assert_eq!(*balance, before[index] + changes.get(&index).copied().unwrap_or(0));
                }
                prop_assert_eq!(response.balances.len(), changes.len());
            }
            (Verdict::Invalid, Err(status)) => {
                prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
                prop_assert_eq!(&after, &before, "a rejected entry changed a balance");
            }
            (Verdict::Refused, Err(status)) => {
                prop_assert_eq!(status.code(), Code::FailedPrecondition, "{:?}", status);
                prop_assert_eq!(&after, &before, "a rejected entry changed a balance");
            }
            (verdict, outcome) => {
                return Err(TestCaseError::fail(format!(
                    "model says {verdict:?} for {lines:?}, service answered {outcome:?}"
                )));
            }
        }
    }
    for currency in harness.trial_balance().await {
        prop_assert_eq!(currency.net, 0, "{:?}", currency);
    }
    for account in accounts {
        let current = harness.balance(&account.account_id).await;
        let folded = harness
            .balance_as_of(&account.account_id, Some(AsOf::AsOfVersion(current.version)))
            .await;
        prop_assert_eq!(
            folded.balance,
            current.balance,
            "projection equals fold for {}",
            account.code
        );
    }
    Ok(())
}

#[test]
fn random_entries_never_unbalance_the_ledger_and_rejections_change_nothing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _telemetry = runtime.block_on(async { telemetry::init("test") });
    let harness = runtime.block_on(LedgerHarness::start_with(|config| config.tax_consumer_enabled = false));
    let accounts: Vec<pb::Account> = runtime.block_on(async {
        let mut accounts = Vec::new();
        for (index, (account_type, currency, policy, limit)) in ACCOUNTS.into_iter().enumerate() {
            accounts.push(
                harness
                    .open_account(&format!("prop-{index}"), account_type, currency, policy, limit)
                    .await,
            );
        }
        accounts
    });

    // Few cases of short sequences: each step is a real gRPC call and PostgreSQL transaction.
    let mut runner = TestRunner::new(Config {
        cases: 16,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let next_id = Cell::new(0u64);
    let result = runner.run(&proptest::collection::vec(attempt(), 1..12), |attempts| {
        runtime.block_on(check_sequence(&harness, &accounts, attempts, &next_id))
    });
    runtime.block_on(harness.stop());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
