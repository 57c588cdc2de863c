//! A property test of holds on the running ledger: random sequences of place / capture partly
//! (keep or release the rest) / capture fully / release / expire / post (money in and out) on
//! one account with an overdraft limit. After every step the service agrees with a simple model:
//! available = balance + overdraft limit - active holds, never below zero, each hold ends at most
//! once; at the end the trial balance nets to zero, every stream verifies and every projection
//! equals the fold of its stream.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use fintech_platform::telemetry;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::get_balance_request::AsOf;
use fintech_tests::ledger::{LedgerHarness, all_events, hold_request, line, violation_types};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;

const LIMIT: i64 = 100;

#[derive(Debug, Clone)]
enum Op {
    Place(i64),
    Capture { hold: usize, amount: i64, keep: bool },
    CaptureFull(usize),
    Release(usize),
    Expire(usize),
    MoneyIn(i64),
    MoneyOut(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1i64..400).prop_map(Op::Place),
        2 => (0usize..8, 1i64..300, any::<bool>()).prop_map(|(hold, amount, keep)| Op::Capture { hold, amount, keep }),
        1 => (0usize..8).prop_map(Op::CaptureFull),
        1 => (0usize..8).prop_map(Op::Release),
        1 => (0usize..8).prop_map(Op::Expire),
        2 => (1i64..400).prop_map(Op::MoneyIn),
        2 => (1i64..400).prop_map(Op::MoneyOut),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active(i64),
    Ended,
}

#[derive(Debug, Default)]
struct Model {
    balance: i64,
    holds: Vec<(String, Status)>,
}

impl Model {
    fn held(&self) -> i64 {
        self.holds
            .iter()
            .map(|(_, status)| match status {
                Status::Active(held) => *held,
                Status::Ended => 0,
            })
            .sum()
    }
    fn available(&self) -> i64 {
        self.balance + LIMIT - self.held()
    }
}

struct World<'a> {
    harness: &'a LedgerHarness,
    bank: pb::Account,
    wallet: pb::Account,
    merchant: pb::Account,
    next: &'a Cell<u64>,
}

impl World<'_> {
    fn id(&self, kind: &str) -> String {
        self.next.set(self.next.get() + 1);
        format!("{kind}-{}", self.next.get())
    }

    async fn hold(&self, hold_id: &str) -> pb::Hold {
        self.harness
            .client
            .clone()
            .get_hold(pb::GetHoldRequest {
                hold_id: hold_id.to_owned(),
            })
            .await
            .expect("get hold")
            .into_inner()
            .hold
            .expect("hold")
    }

    async fn capture(&self, hold_id: &str, amount: i64, keep: bool) -> Result<pb::CaptureHoldResponse, tonic::Status> {
        let remainder = if keep {
            pb::CaptureRemainder::Keep
        } else {
            pb::CaptureRemainder::Release
        };
        self.harness
            .client
            .clone()
            .capture_hold(pb::CaptureHoldRequest {
                hold_id: hold_id.to_owned(),
                amount,
                remainder: remainder as i32,
                entry_id: self.id("capture"),
                description: "capture".to_owned(),
                metadata: HashMap::new(),
                lines: vec![
                    line(&self.wallet, pb::Side::Debit, amount),
                    line(&self.merchant, pb::Side::Credit, amount),
                ],
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn post(&self, side: pb::Side, amount: i64) -> Result<pb::PostEntryResponse, tonic::Status> {
        let bank_side = if side == pb::Side::Credit {
            pb::Side::Debit
        } else {
            pb::Side::Credit
        };
        self.harness
            .client
            .clone()
            .post_entry(pb::PostEntryRequest {
                entry_id: self.id("post"),
                description: "post".to_owned(),
                metadata: HashMap::new(),
                lines: vec![line(&self.bank, bank_side, amount), line(&self.wallet, side, amount)],
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn refused(outcome: Result<impl std::fmt::Debug, tonic::Status>, rule: &str) -> Result<(), TestCaseError> {
    match outcome {
        Err(status) if status.code() == Code::FailedPrecondition => {
            prop_assert_eq!(violation_types(&status), [rule]);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("expected {rule}, got {other:?}"))),
    }
}

async fn step(world: &World<'_>, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let pick = |index: usize| -> Option<(String, Status)> {
        (!model.holds.is_empty()).then(|| model.holds[index % model.holds.len()].clone())
    };
    match op {
        Op::Place(amount) => {
            let hold_id = world.id("hold");
            let outcome = world
                .harness
                .client
                .clone()
                .place_hold(hold_request(&hold_id, &world.wallet.account_id, *amount))
                .await;
            if model.available() - amount >= 0 {
                prop_assert!(outcome.is_ok(), "{:?}", outcome);
                model.holds.push((hold_id, Status::Active(*amount)));
            } else {
                refused(outcome, "LIMIT_EXCEEDED")?;
            }
        }
        Op::Capture { hold, amount, keep } => {
            let Some((hold_id, status)) = pick(*hold) else {
                return Ok(());
            };
            let outcome = world.capture(&hold_id, *amount, *keep).await;
            match status {
                Status::Active(held) if *amount <= held => {
                    let response = outcome.map_err(|status| TestCaseError::fail(format!("{status:?}")))?;
                    model.balance -= amount;
                    let rest = if *keep { held - amount } else { 0 };
                    let after = if rest == 0 { Status::Ended } else { Status::Active(rest) };
                    model.holds.iter_mut().find(|(id, _)| *id == hold_id).expect("hold").1 = after;
                    prop_assert_eq!(response.hold.expect("hold").held, rest);
                }
                Status::Active(_) => refused(outcome, "hold.capture_exceeds_held")?,
                Status::Ended => refused(outcome, "hold.not_active")?,
            }
        }
        Op::CaptureFull(hold) => {
            let Some((hold_id, status)) = pick(*hold) else {
                return Ok(());
            };
            match status {
                Status::Active(held) => {
                    world
                        .capture(&hold_id, held, false)
                        .await
                        .map_err(|status| TestCaseError::fail(format!("{status:?}")))?;
                    model.balance -= held;
                    model.holds.iter_mut().find(|(id, _)| *id == hold_id).expect("hold").1 = Status::Ended;
                }
                Status::Ended => refused(world.capture(&hold_id, 1, false).await, "hold.not_active")?,
            }
        }
        Op::Release(hold) => {
            let Some((hold_id, status)) = pick(*hold) else {
                return Ok(());
            };
            let before = world.hold(&hold_id).await;
            let outcome = world
                .harness
                .client
                .clone()
                .release_hold(pb::ReleaseHoldRequest {
                    hold_id: hold_id.clone(),
                    reason: "property".to_owned(),
                })
                .await;
            match (status, before.status) {
                (Status::Active(_), _) => {
                    prop_assert!(outcome.is_ok(), "{:?}", outcome);
                    model.holds.iter_mut().find(|(id, _)| *id == hold_id).expect("hold").1 = Status::Ended;
                }
                (Status::Ended, status) if status == pb::HoldStatus::Released as i32 => {
                    let hold = outcome.map_err(|status| TestCaseError::fail(format!("{status:?}")))?;
                    prop_assert_eq!(
                        hold.into_inner().hold.expect("hold"),
                        before,
                        "a release of a released hold changes nothing"
                    );
                }
                (Status::Ended, _) => refused(outcome, "hold.not_active")?,
            }
        }
        Op::Expire(hold) => {
            let Some((hold_id, Status::Active(_))) = pick(*hold) else {
                return Ok(());
            };
            // Test-only shortcut: move the hold's expiry into the past, then wait for the job.
            sqlx::query("UPDATE ledger_holds SET expires_at = now() - interval '1 second' WHERE hold_id = $1")
                .bind(&hold_id)
                .execute(&world.harness.db.pool)
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let hold = world.hold(&hold_id).await;
                if hold.status == pb::HoldStatus::Expired as i32 {
                    prop_assert!(hold.release_reason.starts_with("expired at "));
                    break;
                }
                prop_assert!(tokio::time::Instant::now() < deadline, "hold {} never expired", hold_id);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            model.holds.iter_mut().find(|(id, _)| *id == hold_id).expect("hold").1 = Status::Ended;
        }
        Op::MoneyIn(amount) => {
            world
                .post(pb::Side::Credit, *amount)
                .await
                .map_err(|status| TestCaseError::fail(format!("{status:?}")))?;
            model.balance += amount;
        }
        Op::MoneyOut(amount) => {
            let outcome = world.post(pb::Side::Debit, *amount).await;
            if model.available() - amount >= 0 {
                prop_assert!(outcome.is_ok(), "{:?}", outcome);
                model.balance -= amount;
            } else {
                refused(outcome, "LIMIT_EXCEEDED")?;
            }
        }
    }
    Ok(())
}

async fn check_sequence(world: &World<'_>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Every case starts from the wallet as it is, with nothing held (a failed case may have
    // left holds: they are released first).
    let active = world
        .harness
        .client
        .clone()
        .list_holds(pb::ListHoldsRequest {
            account_id: world.wallet.account_id.clone(),
            status: pb::HoldStatus::Active as i32,
            page_size: 500,
            page_token: String::new(),
        })
        .await
        .map_err(|status| TestCaseError::fail(format!("{status:?}")))?
        .into_inner();
    for hold in active.holds {
        world
            .harness
            .client
            .clone()
            .release_hold(pb::ReleaseHoldRequest {
                hold_id: hold.hold_id,
                reason: "left by a failed case".to_owned(),
            })
            .await
            .map_err(|status| TestCaseError::fail(format!("{status:?}")))?;
    }
    let start = world.harness.balance(&world.wallet.account_id).await;
    prop_assert_eq!(start.held, 0);
    let mut model = Model {
        balance: start.balance,
        holds: Vec::new(),
    };
    for op in &ops {
        step(world, &mut model, op).await?;
        let now = world.harness.balance(&world.wallet.account_id).await;
        prop_assert_eq!(
            (now.balance, now.held, now.available),
            (model.balance, model.held(), model.available()),
            "after {:?}",
            op
        );
        prop_assert!(now.available >= 0, "available below zero after {:?}", op);
    }
    // End every hold still active (the next case starts from nothing held).
    for (hold_id, status) in &model.holds {
        if let Status::Active(_) = status {
            world
                .harness
                .client
                .clone()
                .release_hold(pb::ReleaseHoldRequest {
                    hold_id: hold_id.clone(),
                    reason: "end of case".to_owned(),
                })
                .await
                .map_err(|status| TestCaseError::fail(format!("{status:?}")))?;
        }
    }
    // No hold ended twice: replaying the stream's hold events, nothing happens to a hold after
    // it ended (nothing held any more, or released).
    let mut held: HashMap<String, Option<i64>> = HashMap::new();
    for event in all_events(&world.harness.client, &world.wallet.account_id).await {
        match event.body {
            Some(pb::account_event::Body::HoldPlaced(placed)) => {
                prop_assert!(
                    held.insert(placed.hold_id, Some(placed.amount)).is_none(),
                    "placed twice"
                );
            }
            Some(pb::account_event::Body::HoldCaptured(captured)) => {
                let entry = held.entry(captured.hold_id.clone()).or_default();
                let Some(left) = *entry else {
                    return Err(TestCaseError::fail(format!(
                        "hold {} captured after it ended",
                        captured.hold_id
                    )));
                };
                let rest = left - captured.amount - captured.released;
                prop_assert!(rest >= 0);
                *entry = (rest > 0).then_some(rest);
            }
            Some(pb::account_event::Body::HoldReleased(released)) => {
                let entry = held.entry(released.hold_id.clone()).or_default();
                prop_assert!(entry.is_some(), "hold {} released after it ended", released.hold_id);
                *entry = None;
            }
            _ => {}
        }
    }
    let ended_twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT hold_id FROM ledger_hold_endings GROUP BY hold_id HAVING count(*) > 1) twice",
    )
    .fetch_one(&world.harness.db.pool)
    .await
    .map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(ended_twice, 0);
    Ok(())
}

async fn check_books(world: &World<'_>) {
    for account in [&world.bank, &world.wallet, &world.merchant] {
        let current = world.harness.balance(&account.account_id).await;
        let folded = world
            .harness
            .balance_as_of(&account.account_id, Some(AsOf::AsOfVersion(current.version)))
            .await;
        assert_eq!(
            (folded.balance, folded.held, folded.available),
            (current.balance, current.held, current.available),
            "{}",
            account.code
        );
        let verification = world
            .harness
            .client
            .clone()
            .verify_stream(pb::VerifyStreamRequest {
                account_id: account.account_id.clone(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verification.valid, "{}: {}", account.code, verification.reason);
    }
    // Available never below zero at any point of the wallet's stream.
    let version = world.harness.balance(&world.wallet.account_id).await.version;
    for at in 1..=version {
        let state = world
            .harness
            .balance_as_of(&world.wallet.account_id, Some(AsOf::AsOfVersion(at)))
            .await;
        assert!(state.available >= 0, "available {} at version {at}", state.available);
    }
    for currency in world.harness.trial_balance().await {
        assert_eq!(currency.net, 0, "{currency:?}");
    }
}

#[test]
fn random_hold_sequences_keep_available_exact_and_never_below_zero() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _telemetry = runtime.block_on(async { telemetry::init("test") });
    let harness = runtime.block_on(LedgerHarness::start_with(|config| {
        config.tax_consumer_enabled = false;
        config.hold_expiry_interval = Duration::from_millis(20);
    }));
    let (bank, wallet, merchant) = runtime.block_on(async {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        (
            harness
                .open_account(
                    &format!("bank-{suffix}"),
                    pb::AccountType::Asset,
                    "EUR",
                    pb::OverdraftPolicy::Unlimited,
                    0,
                )
                .await,
            harness
                .open_account(
                    &format!("wallet-{suffix}"),
                    pb::AccountType::Liability,
                    "EUR",
                    pb::OverdraftPolicy::Limited,
                    LIMIT,
                )
                .await,
            harness
                .open_account(
                    &format!("merchant-{suffix}"),
                    pb::AccountType::Liability,
                    "EUR",
                    pb::OverdraftPolicy::Unlimited,
                    0,
                )
                .await,
        )
    });
    let next = Cell::new(0u64);
    let world = World {
        harness: &harness,
        bank,
        wallet,
        merchant,
        next: &next,
    };
    // Few cases of short sequences: each step is a real gRPC call and PostgreSQL transaction.
    let mut runner = TestRunner::new(Config {
        cases: 12,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..16), |ops| {
        runtime.block_on(check_sequence(&world, ops))
    });
    if result.is_ok() {
        runtime.block_on(check_books(&world));
    }
    runtime.block_on(harness.stop());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
