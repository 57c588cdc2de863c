//! Holds in the ledger against the real PostgreSQL and broker: the lifecycle (place, capture
//! partly and keep, capture the rest, release, expire), idempotency by hold id and entry id, the
//! database refusing a second terminal transition, postings counting held money, as-of balances
//! folding the hold events, and 100 concurrent placements on one account (also across a restart)
//! of which exactly the ones that fit succeed, with available never below zero at any point.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fintech_platform::telemetry;
use fintech_proto::ledger as pb;
use fintech_proto::ledger::get_balance_request::AsOf;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use fintech_tests::ledger::{LedgerHarness, LedgerInstance, all_events, hold_request, line, violation_types};
use fintech_tests::service::Channel;
use fintech_tests::{TestDb, kafka_bootstrap, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;
use tonic::Code;

struct Books {
    bank: pb::Account,
    wallet: pb::Account,
    merchant: pb::Account,
}

/// A funding bank (asset, unlimited), a wallet (liability, may not go below zero) funded with
/// `funds`, and a merchant (liability, unlimited).
async fn books(client: &LedgerServiceClient<Channel>, funds: i64) -> Books {
    let open = async |code: &str, kind: pb::AccountType, policy: pb::OverdraftPolicy| {
        client
            .clone()
            .create_account(pb::CreateAccountRequest {
                code: format!("{code}-{}", uuid::Uuid::new_v4().simple()),
                name: code.to_owned(),
                r#type: kind as i32,
                currency: "EUR".to_owned(),
                overdraft_policy: policy as i32,
                overdraft_limit: 0,
            })
            .await
            .expect("create account")
            .into_inner()
            .account
            .expect("account")
    };
    let bank = open("bank", pb::AccountType::Asset, pb::OverdraftPolicy::Unlimited).await;
    let wallet = open("wallet", pb::AccountType::Liability, pb::OverdraftPolicy::Forbidden).await;
    let merchant = open("merchant", pb::AccountType::Liability, pb::OverdraftPolicy::Unlimited).await;
    client
        .clone()
        .post_entry(pb::PostEntryRequest {
            entry_id: format!("fund-{}", uuid::Uuid::new_v4()),
            description: "funding".to_owned(),
            metadata: HashMap::new(),
            lines: vec![
                line(&bank, pb::Side::Debit, funds),
                line(&wallet, pb::Side::Credit, funds),
            ],
        })
        .await
        .expect("fund the wallet");
    Books { bank, wallet, merchant }
}

fn capture(
    hold_id: &str,
    entry_id: &str,
    books: &Books,
    amount: i64,
    remainder: pb::CaptureRemainder,
) -> pb::CaptureHoldRequest {
    pb::CaptureHoldRequest {
        hold_id: hold_id.to_owned(),
        amount,
        remainder: remainder as i32,
        entry_id: entry_id.to_owned(),
        description: "capture".to_owned(),
        metadata: HashMap::new(),
        lines: vec![
            line(&books.wallet, pb::Side::Debit, amount),
            line(&books.merchant, pb::Side::Credit, amount),
        ],
    }
}

async fn balance(client: &LedgerServiceClient<Channel>, account_id: &str, as_of: Option<AsOf>) -> pb::Balance {
    client
        .clone()
        .get_balance(pb::GetBalanceRequest {
            account_id: account_id.to_owned(),
            as_of,
        })
        .await
        .expect("balance")
        .into_inner()
        .balance
        .expect("balance")
}

/// Every account's projection equals the fold of its events (balance, held, available), its
/// stream verifies, and the trial balance nets to zero.
async fn assert_consistent(client: &LedgerServiceClient<Channel>, accounts: &[&pb::Account]) {
    for account in accounts {
        let current = balance(client, &account.account_id, None).await;
        let folded = balance(client, &account.account_id, Some(AsOf::AsOfVersion(current.version))).await;
        assert_eq!(
            (folded.balance, folded.held, folded.available, folded.version),
            (current.balance, current.held, current.available, current.version),
            "projection of {} equals the fold of its stream",
            account.code
        );
        assert!(current.available >= 0 || account.overdraft_policy == pb::OverdraftPolicy::Unlimited as i32);
        let verification = client
            .clone()
            .verify_stream(pb::VerifyStreamRequest {
                account_id: account.account_id.clone(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verification.valid, "{}: {}", account.code, verification.reason);
    }
    let trial = client
        .clone()
        .get_trial_balance(pb::GetTrialBalanceRequest::default())
        .await
        .expect("trial balance")
        .into_inner();
    for currency in trial.currencies {
        assert_eq!(currency.net, 0, "{currency:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_placed_captured_in_parts_and_released_each_once_and_idempotently() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start_with(|config| config.tax_consumer_enabled = false).await;
    let placed_topic = reader(&kafka_bootstrap(), &[&harness.topic("ledger.hold_placed")]);
    let client = harness.client.clone();
    let books = books(&client, 1_000).await;
    let wallet = books.wallet.account_id.clone();

    // Place 600: available 1000 -> 400.
    let hold = client
        .clone()
        .place_hold(hold_request("h-1", &wallet, 600))
        .await
        .expect("place")
        .into_inner()
        .hold
        .expect("hold");
    assert_eq!(hold.status, pb::HoldStatus::Active as i32);
    assert_eq!((hold.amount, hold.held, hold.version), (600, 600, 1));
    let after = hold.balance.clone().expect("balances");
    assert_eq!((after.balance, after.held, after.available), (1_000, 600, 400));

    // A retry returns the hold; the same id with other content is refused.
    let retried = client
        .clone()
        .place_hold(hold_request("h-1", &wallet, 600))
        .await
        .expect("retry")
        .into_inner()
        .hold
        .expect("hold");
    assert_eq!(retried, hold);
    let reused = client
        .clone()
        .place_hold(pb::PlaceHoldRequest {
            reason: "other".to_owned(),
            ..hold_request("h-1", &wallet, 600)
        })
        .await
        .expect_err("reused id");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(violation_types(&reused), ["HOLD_ID_REUSED"]);

    // More than available: refused, nothing changes.
    let too_much = client
        .clone()
        .place_hold(hold_request("h-2", &wallet, 401))
        .await
        .expect_err("over available");
    assert_eq!(too_much.code(), Code::FailedPrecondition);
    assert_eq!(violation_types(&too_much), ["LIMIT_EXCEEDED"]);
    // A posting counts held money too.
    let debit = client
        .clone()
        .post_entry(pb::PostEntryRequest {
            entry_id: format!("spend-{}", uuid::Uuid::new_v4()),
            description: "spend".to_owned(),
            metadata: HashMap::new(),
            lines: vec![
                line(&books.wallet, pb::Side::Debit, 401),
                line(&books.bank, pb::Side::Credit, 401),
            ],
        })
        .await
        .expect_err("a debit beyond available");
    assert_eq!(violation_types(&debit), ["LIMIT_EXCEEDED"]);
    assert_eq!(balance(&client, &wallet, None).await.available, 400);

    // Capture 200 and keep the rest, twice with the same entry id: once.
    let first = client
        .clone()
        .capture_hold(capture("h-1", "cap-1", &books, 200, pb::CaptureRemainder::Keep))
        .await
        .expect("capture")
        .into_inner();
    let again = client
        .clone()
        .capture_hold(capture("h-1", "cap-1", &books, 200, pb::CaptureRemainder::Keep))
        .await
        .expect("capture retried")
        .into_inner();
    assert_eq!(first, again);
    let kept = first.hold.clone().expect("hold");
    assert_eq!(
        (kept.status, kept.held, kept.captured, kept.version),
        (pb::HoldStatus::Active as i32, 400, 200, 2)
    );
    let kept_balance = kept.balance.clone().expect("balances");
    assert_eq!(
        (kept_balance.balance, kept_balance.held, kept_balance.available),
        (800, 400, 400)
    );
    let entry = first.entry.clone().expect("entry");
    let wallet_append = entry
        .appends
        .iter()
        .find(|append| append.account_id == wallet)
        .expect("wallet append");
    assert_eq!(
        (
            wallet_append.balance_after,
            wallet_append.held_after,
            wallet_append.available_after
        ),
        (800, 400, 400)
    );
    // The same entry id for other content is refused.
    let other = client
        .clone()
        .capture_hold(capture("h-1", "cap-1", &books, 100, pb::CaptureRemainder::Keep))
        .await
        .expect_err("entry id reused");
    assert_eq!(other.code(), Code::FailedPrecondition);
    // More than is held: refused.
    let beyond = client
        .clone()
        .capture_hold(capture("h-1", "cap-2", &books, 401, pb::CaptureRemainder::Keep))
        .await
        .expect_err("beyond held");
    assert_eq!(violation_types(&beyond), ["hold.capture_exceeds_held"]);
    // Lines that do not debit the held account by the amount: refused.
    let mut wrong = capture("h-1", "cap-3", &books, 100, pb::CaptureRemainder::Keep);
    wrong.amount = 50;
    assert_eq!(
        client
            .clone()
            .capture_hold(wrong)
            .await
            .expect_err("wrong lines")
            .code(),
        Code::InvalidArgument
    );

    // Capture 100 and release the rest (300): CAPTURED, nothing held.
    let done = client
        .clone()
        .capture_hold(capture("h-1", "cap-4", &books, 100, pb::CaptureRemainder::Release))
        .await
        .expect("final capture")
        .into_inner()
        .hold
        .expect("hold");
    assert_eq!(
        (done.status, done.held, done.captured),
        (pb::HoldStatus::Captured as i32, 0, 300)
    );
    assert_eq!(done.capture_entry_ids, ["cap-1", "cap-4"]);
    let now = balance(&client, &wallet, None).await;
    assert_eq!((now.balance, now.held, now.available), (700, 0, 700));
    // Captured: no more captures, no release.
    let late = client
        .clone()
        .capture_hold(capture("h-1", "cap-5", &books, 1, pb::CaptureRemainder::Keep))
        .await
        .expect_err("captured");
    assert_eq!(violation_types(&late), ["hold.not_active"]);
    let release = client
        .clone()
        .release_hold(pb::ReleaseHoldRequest {
            hold_id: "h-1".to_owned(),
            reason: "no".to_owned(),
        })
        .await
        .expect_err("release of a captured hold");
    assert_eq!(violation_types(&release), ["hold.not_active"]);

    // A second hold, released twice: once.
    client
        .clone()
        .place_hold(hold_request("h-3", &wallet, 700))
        .await
        .expect("place all");
    let released = client
        .clone()
        .release_hold(pb::ReleaseHoldRequest {
            hold_id: "h-3".to_owned(),
            reason: "order cancelled".to_owned(),
        })
        .await
        .expect("release")
        .into_inner()
        .hold
        .expect("hold");
    let released_again = client
        .clone()
        .release_hold(pb::ReleaseHoldRequest {
            hold_id: "h-3".to_owned(),
            reason: "again".to_owned(),
        })
        .await
        .expect("release again")
        .into_inner()
        .hold
        .expect("hold");
    assert_eq!(released, released_again);
    assert_eq!(
        (released.status, released.release_reason.as_str()),
        (pb::HoldStatus::Released as i32, "order cancelled")
    );
    let missing = client
        .clone()
        .get_hold(pb::GetHoldRequest {
            hold_id: "nope".to_owned(),
        })
        .await
        .expect_err("unknown hold");
    assert_eq!(missing.code(), Code::NotFound);

    // The database refuses a second ending and any change of a terminal hold.
    let update = sqlx::query("UPDATE ledger_holds SET held = 5, status = 'active' WHERE hold_id = 'h-3'")
        .execute(&harness.db.pool)
        .await;
    assert!(update.is_err(), "a released hold was changed");
    let ending = sqlx::query(
        "INSERT INTO ledger_hold_endings (hold_id, status, ended_at, version) VALUES ('h-3', 'expired', now(), 99)",
    )
    .execute(&harness.db.pool)
    .await;
    assert!(ending.is_err(), "a second ending was recorded");

    // ListHolds: newest first, paged.
    let page = client
        .clone()
        .list_holds(pb::ListHoldsRequest {
            account_id: wallet.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.holds.len(), 1);
    assert_eq!(page.holds[0].hold_id, "h-3");
    let rest = client
        .clone()
        .list_holds(pb::ListHoldsRequest {
            account_id: wallet.clone(),
            page_size: 10,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        rest.holds.iter().map(|hold| hold.hold_id.as_str()).collect::<Vec<_>>(),
        ["h-1"]
    );
    let captured_only = client
        .clone()
        .list_holds(pb::ListHoldsRequest {
            account_id: wallet.clone(),
            status: pb::HoldStatus::Released as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(captured_only.holds.len(), 1);

    // The stream: every hold change is an event; the capture's posting is right before it.
    let events = all_events(&client, &wallet).await;
    let kinds: Vec<&str> = events.iter().map(|event| event.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ledger.account.opened",
            "ledger.entry.posted",
            "ledger.hold.placed",
            "ledger.entry.posted",
            "ledger.hold.captured",
            "ledger.entry.posted",
            "ledger.hold.captured",
            "ledger.hold.placed",
            "ledger.hold.released",
        ]
    );
    // As of the first hold: balance 1000, 600 held, 400 available.
    let at_hold = balance(&client, &wallet, Some(AsOf::AsOfVersion(3))).await;
    assert_eq!((at_hold.balance, at_hold.held, at_hold.available), (1_000, 600, 400));
    let at_first_capture = balance(&client, &wallet, Some(AsOf::AsOfVersion(4))).await;
    assert_eq!(
        (
            at_first_capture.balance,
            at_first_capture.held,
            at_first_capture.available
        ),
        (800, 400, 400)
    );
    assert_consistent(&client, &[&books.bank, &books.wallet, &books.merchant]).await;

    // Full state on ledger.hold_placed, key = account id.
    let records = read_records(&placed_topic, 2, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record.key(), Some(wallet.as_bytes()));
        let published = pb::Hold::decode(record.payload().expect("payload")).expect("a Hold");
        assert_eq!(published.version, 1);
        assert!(published.balance.is_some());
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_job_releases_an_expired_hold_and_records_why() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start_with(|config| {
        config.tax_consumer_enabled = false;
        config.hold_expiry_interval = Duration::from_millis(100);
    })
    .await;
    let expired_topic = reader(&kafka_bootstrap(), &[&harness.topic("ledger.hold_expired")]);
    let client = harness.client.clone();
    let books = books(&client, 500).await;
    let wallet = books.wallet.account_id.clone();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    client
        .clone()
        .place_hold(pb::PlaceHoldRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: soon.timestamp(),
                nanos: i32::try_from(soon.timestamp_subsec_nanos()).expect("nanos"),
            }),
            ..hold_request("h-exp", &wallet, 300)
        })
        .await
        .expect("place");
    assert_eq!(balance(&client, &wallet, None).await.available, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let hold = loop {
        let hold = client
            .clone()
            .get_hold(pb::GetHoldRequest {
                hold_id: "h-exp".to_owned(),
            })
            .await
            .expect("get")
            .into_inner()
            .hold
            .expect("hold");
        if hold.status != pb::HoldStatus::Active as i32 {
            break hold;
        }
        assert!(tokio::time::Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((hold.status, hold.held), (pb::HoldStatus::Expired as i32, 0));
    assert!(
        hold.release_reason.starts_with("expired at "),
        "{}",
        hold.release_reason
    );
    assert_eq!(balance(&client, &wallet, None).await.available, 500);
    let events = all_events(&client, &wallet).await;
    let Some(pb::account_event::Body::HoldReleased(released)) = events.last().and_then(|event| event.body.clone())
    else {
        panic!("the last event is not a release: {events:?}");
    };
    assert!(released.expired);
    assert_eq!((released.amount, released.held_after), (300, 0));
    assert_eq!(released.reason, hold.release_reason);
    // An expired hold cannot be released any more.
    let release = client
        .clone()
        .release_hold(pb::ReleaseHoldRequest {
            hold_id: "h-exp".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("expired");
    assert_eq!(violation_types(&release), ["hold.not_active"]);
    let records = read_records(&expired_topic, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1);
    let published = pb::Hold::decode(records[0].payload().expect("payload")).expect("a Hold");
    assert_eq!(published.status, pb::HoldStatus::Expired as i32);
    assert_consistent(&client, &[&books.bank, &books.wallet, &books.merchant]).await;
    harness.stop().await;
}

/// Available after every event of the stream (from the balance and held the events record):
/// never below zero.
async fn assert_available_never_negative(client: &LedgerServiceClient<Channel>, account_id: &str) -> usize {
    let events = all_events(client, account_id).await;
    let mut placed = 0;
    for event in &events {
        let state = balance(client, account_id, Some(AsOf::AsOfVersion(event.version))).await;
        assert!(
            state.available >= 0,
            "available {} at version {}",
            state.available,
            event.version
        );
        assert_eq!(
            state.available,
            state.balance - state.held,
            "a wallet that may not go below zero"
        );
        if let Some(pb::account_event::Body::HoldPlaced(hold)) = &event.body {
            placed += 1;
            assert!(
                hold.held_after <= state.balance,
                "held beyond the balance at {}",
                event.version
            );
        }
    }
    placed
}

/// One expiry (a day ahead, whole seconds) shared by every placement of a test.
fn shared_expiry() -> i64 {
    chrono::Utc::now().timestamp() + 86_400
}

async fn place_many(
    client: &LedgerServiceClient<Channel>,
    wallet: &str,
    ids: std::ops::Range<usize>,
    expires: i64,
) -> Vec<(usize, Result<pb::Hold, tonic::Status>)> {
    let tasks: Vec<_> = ids
        .map(|index| {
            let mut client = client.clone();
            let wallet = wallet.to_owned();
            tokio::spawn(async move {
                // One expiry for every placement, so a retry is the same request.
                let request = pb::PlaceHoldRequest {
                    expires_at: Some(prost_types::Timestamp {
                        seconds: expires,
                        nanos: 0,
                    }),
                    ..hold_request(&format!("c-{index}"), &wallet, 100)
                };
                let outcome = client
                    .place_hold(request)
                    .await
                    .map(|response| response.into_inner().hold.expect("hold"));
                (index, outcome)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

fn tally(outcomes: &[(usize, Result<pb::Hold, tonic::Status>)]) -> (HashSet<usize>, usize) {
    let mut placed = HashSet::new();
    let mut refused = 0;
    for (index, outcome) in outcomes {
        match outcome {
            Ok(_) => {
                placed.insert(*index);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(violation_types(status), ["LIMIT_EXCEEDED"]);
                refused += 1;
            }
        }
    }
    (placed, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_holds_of_a_tenth_each_place_exactly_ten() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start_with(|config| config.tax_consumer_enabled = false).await;
    let client = harness.client.clone();
    let books = books(&client, 1_000).await;
    let outcomes = place_many(&client, &books.wallet.account_id, 0..100, shared_expiry()).await;
    let (placed, refused) = tally(&outcomes);
    assert_eq!((placed.len(), refused), (10, 90));
    let now = balance(&client, &books.wallet.account_id, None).await;
    assert_eq!((now.held, now.available), (1_000, 0));
    assert_eq!(
        assert_available_never_negative(&client, &books.wallet.account_id).await,
        10
    );
    assert_consistent(&client, &[&books.bank, &books.wallet, &books.merchant]).await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_holds_across_a_ledger_restart_place_exactly_ten() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::empty().await;
    let prefix = fintech_tests::service::unique_prefix();
    let first = LedgerInstance::start(&db, &prefix, |config| config.tax_consumer_enabled = false).await;
    let books = books(&first.client, 1_000).await;
    let wallet = books.wallet.account_id.clone();
    let expires = shared_expiry();
    let before = place_many(&first.client, &wallet, 0..50, expires).await;
    // The restart: stopped half way (gracefully: requests drain) and started again on the same
    // data; the second half goes to the new instance, and the first half is retried there (the
    // same hold ids: a placement is idempotent).
    first.stop().await;
    let second = LedgerInstance::start(&db, &prefix, |config| config.tax_consumer_enabled = false).await;
    let after = place_many(&second.client, &wallet, 50..100, expires).await;
    let retried = place_many(&second.client, &wallet, 0..50, expires).await;
    let (placed_before, _) = tally(&before);
    let (placed_after, _) = tally(&after);
    let (placed_retried, _) = tally(&retried);
    assert_eq!(placed_before.len() + placed_after.len(), 10);
    assert_eq!(
        placed_retried, placed_before,
        "retries after the restart return the holds placed before it and place no new one"
    );
    let now = balance(&second.client, &wallet, None).await;
    assert_eq!((now.held, now.available), (1_000, 0));
    assert_eq!(assert_available_never_negative(&second.client, &wallet).await, 10);
    assert_consistent(&second.client, &[&books.bank, &books.wallet, &books.merchant]).await;
    second.stop().await;
}
