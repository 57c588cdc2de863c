//! The ledger's cache of the accounts service's accounts, against the real broker and PostgreSQL
//! (the events are produced here as the accounts service would): an account opened by event is
//! known to the ledger and can be posted to; its freezes, closure and overdraft limit are
//! enforced on postings and holds with the contract's rule types; redelivered and reordered
//! events leave the newest version; interest is booked once per posting id, even when frozen.

use std::collections::HashMap;

use fintech_ledger::events::{ACCOUNT_CACHE_CONSUMER, INTEREST_CONSUMER};
use fintech_platform::telemetry;
use fintech_proto::accounts::{self, AccountState, FreezeKind};
use fintech_proto::ledger as pb;
use fintech_tests::ledger::{
    AccountsProducer, LedgerHarness, customer_account, hold_request, line, violation_types, wait_for_cached_version,
    wait_for_processed,
};
use tonic::Code;

fn ce() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn open_bank(harness: &LedgerHarness) -> pb::Account {
    harness
        .open_account(
            &format!("bank-{}", uuid::Uuid::new_v4().simple()),
            pb::AccountType::Asset,
            "EUR",
            pb::OverdraftPolicy::Unlimited,
            0,
        )
        .await
}

fn customer_line(account_id: &str, side: pb::Side, amount: i64) -> pb::EntryLine {
    pb::EntryLine {
        account_id: account_id.to_owned(),
        side: side as i32,
        amount,
        currency: "EUR".to_owned(),
    }
}

/// Money in (credit the customer) or out (debit the customer), against the bank.
async fn move_money(
    harness: &LedgerHarness,
    bank: &pb::Account,
    customer: &str,
    side: pb::Side,
    amount: i64,
) -> Result<pb::PostEntryResponse, tonic::Status> {
    let bank_side = if side == pb::Side::Credit {
        pb::Side::Debit
    } else {
        pb::Side::Credit
    };
    harness
        .client
        .clone()
        .post_entry(pb::PostEntryRequest {
            entry_id: format!("move-{}", uuid::Uuid::new_v4()),
            description: "move".to_owned(),
            metadata: HashMap::new(),
            lines: vec![line(bank, bank_side, amount), customer_line(customer, side, amount)],
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_opened_by_event_is_posted_to_and_its_freeze_is_enforced_in_its_direction() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start_with(|config| config.tax_consumer_enabled = false).await;
    let producer = AccountsProducer::new(&harness.prefix);
    let bank = open_bank(&harness).await;
    let id = uuid::Uuid::new_v4().to_string();

    // Unknown before its event: refused with the contract's rule.
    let unknown = move_money(&harness, &bank, &id, pb::Side::Credit, 100)
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    assert_eq!(violation_types(&unknown), ["account.unknown"]);

    producer
        .account(&customer_account(&id, 1, AccountState::Active, None, 0), &ce())
        .await;
    wait_for_cached_version(&harness.db, &id, 1).await;
    let known = harness
        .client
        .clone()
        .get_account(pb::GetAccountRequest {
            account_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("the ledger knows it")
        .into_inner();
    let account = known.account.expect("account");
    assert_eq!(account.code, format!("customer:{id}"));
    assert_eq!(account.customer_id, "cust-ledger-test");
    assert_eq!(account.r#type, pb::AccountType::Liability as i32);
    assert_eq!(account.overdraft_policy, pb::OverdraftPolicy::Forbidden as i32);

    move_money(&harness, &bank, &id, pb::Side::Credit, 1_000)
        .await
        .expect("money in");
    move_money(&harness, &bank, &id, pb::Side::Debit, 100)
        .await
        .expect("money out");
    let over = move_money(&harness, &bank, &id, pb::Side::Debit, 901)
        .await
        .expect_err("overdrawn");
    assert_eq!(violation_types(&over), ["account.overdraft_limit"]);

    // Frozen for debits: money out and holds refused, naming the rule; money in works.
    producer
        .account(
            &customer_account(&id, 2, AccountState::Active, Some(FreezeKind::Debits), 0),
            &ce(),
        )
        .await;
    wait_for_cached_version(&harness.db, &id, 2).await;
    let frozen = move_money(&harness, &bank, &id, pb::Side::Debit, 10)
        .await
        .expect_err("frozen");
    assert_eq!(frozen.code(), Code::FailedPrecondition);
    assert_eq!(violation_types(&frozen), ["account.frozen.debits"]);
    let hold = harness
        .client
        .clone()
        .place_hold(hold_request("frozen-hold", &id, 10))
        .await
        .expect_err("hold on a frozen account");
    assert_eq!(violation_types(&hold), ["account.frozen.debits"]);
    move_money(&harness, &bank, &id, pb::Side::Credit, 50)
        .await
        .expect("credit while debit-frozen");

    // Frozen for credits only: money in refused, money out works.
    producer
        .account(
            &customer_account(&id, 3, AccountState::Active, Some(FreezeKind::Credits), 0),
            &ce(),
        )
        .await;
    wait_for_cached_version(&harness.db, &id, 3).await;
    let credit = move_money(&harness, &bank, &id, pb::Side::Credit, 5)
        .await
        .expect_err("credit-frozen");
    assert_eq!(violation_types(&credit), ["account.frozen.credits"]);

    // Unfrozen, with an overdraft limit and dormant: debits work down to -limit.
    producer
        .account(&customer_account(&id, 4, AccountState::Dormant, None, 500), &ce())
        .await;
    wait_for_cached_version(&harness.db, &id, 4).await;
    move_money(&harness, &bank, &id, pb::Side::Debit, 950)
        .await
        .expect("debit after unfreeze");
    let balance = harness.balance(&id).await;
    assert_eq!((balance.balance, balance.available), (0, 500));
    harness
        .client
        .clone()
        .place_hold(hold_request("od-hold", &id, 500))
        .await
        .expect("a hold into the overdraft");
    let beyond = move_money(&harness, &bank, &id, pb::Side::Debit, 1)
        .await
        .expect_err("beyond the limit");
    assert_eq!(violation_types(&beyond), ["account.overdraft_limit"]);

    // Closed: refuses everything.
    harness
        .client
        .clone()
        .release_hold(pb::ReleaseHoldRequest {
            hold_id: "od-hold".to_owned(),
            reason: "done".to_owned(),
        })
        .await
        .expect("release");
    producer
        .account(&customer_account(&id, 5, AccountState::Closed, None, 0), &ce())
        .await;
    wait_for_cached_version(&harness.db, &id, 5).await;
    let closed = move_money(&harness, &bank, &id, pb::Side::Credit, 1)
        .await
        .expect_err("closed");
    assert_eq!(violation_types(&closed), ["account.closed"]);

    // Customer accounts are not created through CreateAccount.
    let created = harness
        .client
        .clone()
        .create_account(pb::CreateAccountRequest {
            code: format!("customer:{}", uuid::Uuid::new_v4()),
            name: "sneaky".to_owned(),
            r#type: pb::AccountType::Liability as i32,
            currency: "EUR".to_owned(),
            overdraft_policy: pb::OverdraftPolicy::Forbidden as i32,
            overdraft_limit: 0,
        })
        .await
        .expect_err("customer prefix");
    assert_eq!(created.code(), Code::InvalidArgument);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_reordered_account_events_leave_the_newest_version() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start_with(|config| config.tax_consumer_enabled = false).await;
    let producer = AccountsProducer::new(&harness.prefix);
    let id = uuid::Uuid::new_v4().to_string();
    let v1 = customer_account(&id, 1, AccountState::Active, None, 0);
    let v2 = customer_account(&id, 2, AccountState::Active, Some(FreezeKind::Both), 0);
    let v3 = customer_account(&id, 3, AccountState::Active, Some(FreezeKind::Debits), 200);
    let (e1, e2, e3) = (ce(), ce(), ce());
    // The update arrives before the opening (another topic), then everything again.
    producer.account(&v3, &e3).await;
    producer.account(&v2, &e2).await;
    producer.account(&v1, &e1).await;
    producer.account(&v3, &e3).await;
    producer.account(&v1, &e1).await;
    producer.account(&v2, &ce()).await;
    wait_for_processed(&harness.db, ACCOUNT_CACHE_CONSUMER, 4).await;
    wait_for_cached_version(&harness.db, &id, 3).await;
    let (state, freeze, limit): (String, String, i64) = sqlx::query_as(
        "SELECT customer_state, freeze_kind, overdraft_limit FROM ledger_accounts WHERE account_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&harness.db.pool)
    .await
    .expect("account row");
    assert_eq!((state.as_str(), freeze.as_str(), limit), ("active", "debits", 200));
    let streams: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_events WHERE stream_id = $1::uuid")
        .bind(&id)
        .fetch_one(&harness.db.pool)
        .await
        .expect("events");
    assert_eq!(streams, 1, "the stream was opened once");
    let account = harness
        .client
        .clone()
        .get_account(pb::GetAccountRequest {
            account_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("account")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(
        (account.overdraft_policy, account.overdraft_limit),
        (pb::OverdraftPolicy::Limited as i32, 200)
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_posted_twice_is_booked_once_even_on_a_frozen_account() {
    let _telemetry = telemetry::init("test");
    let harness = LedgerHarness::start_with(|config| config.tax_consumer_enabled = false).await;
    let producer = AccountsProducer::new(&harness.prefix);
    let id = uuid::Uuid::new_v4().to_string();
    producer
        .account(
            &customer_account(&id, 1, AccountState::Active, Some(FreezeKind::Both), 0),
            &ce(),
        )
        .await;
    wait_for_cached_version(&harness.db, &id, 1).await;
    let posting = accounts::InterestPosting {
        posting_id: format!("interest:{id}:2026-11"),
        account_id: id.clone(),
        customer_id: "cust-ledger-test".to_owned(),
        currency: "EUR".to_owned(),
        period: "2026-11".to_owned(),
        amount: 137,
        days: 30,
        posted_at: None,
    };
    producer.interest(&posting, &ce()).await;
    producer.interest(&posting, &ce()).await;
    wait_for_processed(&harness.db, INTEREST_CONSUMER, 2).await;
    let entry = harness
        .client
        .clone()
        .get_entry(pb::GetEntryRequest {
            entry_id: posting.posting_id.clone(),
        })
        .await
        .expect("the interest entry")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(entry.metadata.get("kind").map(String::as_str), Some("interest"));
    assert_eq!(entry.metadata.get("period").map(String::as_str), Some("2026-11"));
    assert_eq!(
        entry.metadata.get("source").map(String::as_str),
        Some("accounts.interest_posted")
    );
    let balance = harness.balance(&id).await;
    assert_eq!((balance.balance, balance.version), (137, 2), "booked once");
    let expense = harness
        .client
        .clone()
        .get_account(pb::GetAccountRequest {
            code: "system:interest-expense:EUR".to_owned(),
            ..Default::default()
        })
        .await
        .expect("expense account")
        .into_inner();
    assert_eq!(expense.balance.expect("balance").balance, 137);
    // PostEntry cannot use the interest namespace.
    let bank = open_bank(&harness).await;
    let reserved = harness
        .client
        .clone()
        .post_entry(pb::PostEntryRequest {
            entry_id: format!("interest:{id}:2026-12"),
            description: "fake".to_owned(),
            metadata: HashMap::from([("kind".to_owned(), "interest".to_owned())]),
            lines: vec![line(&bank, pb::Side::Debit, 5), customer_line(&id, pb::Side::Credit, 5)],
        })
        .await
        .expect_err("reserved");
    assert_eq!(reserved.code(), Code::PermissionDenied);
    for currency in harness.trial_balance().await {
        assert_eq!(currency.net, 0);
    }
    harness.stop().await;
}
