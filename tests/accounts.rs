//! Accounts against the real PostgreSQL and broker: commands publish the full account with its
//! version, bad input names the field, customers see only their own accounts, the projection of
//! the ledger's events (produced here, playing the ledger) is order- and duplicate-safe, closing
//! follows the money, dormancy and reactivation, and a month of savings interest to the minor unit.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use fintech_platform::telemetry;
use fintech_proto::accounts as pb;
use fintech_proto::accounts::accounts_service_client::AccountsServiceClient;
use fintech_proto::ledger as lpb;
use fintech_proto::topics;
use fintech_tests::accounts::{AccountsHarness, FakeLedger, entry, hold};
use fintech_tests::auth::customer_token;
use fintech_tests::service::connect_with_token;
use fintech_tests::{kafka_bootstrap, read_extra, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(30);

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

fn broken_rules(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .map(|failure| {
            failure
                .violations
                .into_iter()
                .map(|violation| violation.r#type)
                .collect()
        })
        .unwrap_or_default()
}

fn keyed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().expect("ascii"));
    request
}

fn open_request(customer_id: &str, product: pb::Product, overdraft_limit: i64) -> pb::OpenAccountRequest {
    pb::OpenAccountRequest {
        customer_id: customer_id.to_owned(),
        product: product as i32,
        currency: "EUR".to_owned(),
        overdraft_limit,
    }
}

async fn count(harness: &AccountsHarness, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&harness.db.pool)
        .await
        .expect("count")
}

/// Waits until the balance history of `account_id` holds `versions` stream versions.
async fn wait_for_history(harness: &AccountsHarness, account_id: &str, versions: i64) {
    let account = uuid::Uuid::parse_str(account_id).expect("account id");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_balance_history WHERE account_id = $1")
            .bind(account)
            .fetch_one(&harness.db.pool)
            .await
            .expect("history");
        if seen == versions {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history of {account_id} holds {seen} versions, never {versions}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Decoded `Account` values of `records`, in order.
fn accounts_of(records: &[rdkafka::message::OwnedMessage]) -> Vec<pb::Account> {
    records
        .iter()
        .map(|record| pb::Account::decode(record.payload().expect("value")).expect("an Account"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_publish_the_full_account_with_each_version_and_open_is_idempotent() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start().await;
    let opened = reader(&kafka_bootstrap(), &[&harness.topic("accounts.opened")]);
    let updated = reader(&kafka_bootstrap(), &[&harness.topic("accounts.updated")]);
    let mut client = harness.client.clone();

    // OpenAccount with a key twice: one account, the same answer.
    let request = open_request("cust-1", pb::Product::Current, 5_000);
    let first = client
        .open_account(keyed(request.clone(), "open-1"))
        .await
        .expect("open")
        .into_inner();
    let again = client
        .open_account(keyed(request.clone(), "open-1"))
        .await
        .expect("open again")
        .into_inner();
    assert_eq!(first, again, "the retry gets the first answer");
    let account = first.account.expect("account");
    assert_eq!(account.version, 1);
    assert_eq!(account.state, pb::AccountState::Active as i32);
    assert_eq!((account.overdraft_limit, account.currency.as_str()), (5_000, "EUR"));
    assert_eq!(count(&harness, "SELECT count(*) FROM accounts").await, 1);
    // The same key with another request is refused.
    let reused = client
        .open_account(keyed(open_request("cust-1", pb::Product::Savings, 0), "open-1"))
        .await
        .expect_err("key reused");
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");

    let savings = harness.open("cust-1", pb::Product::Savings, "EUR", 0).await;
    let read = harness.get(&account.account_id).await;
    assert_eq!(
        read.account.as_ref(),
        Some(&account),
        "GetAccount returns what OpenAccount returned"
    );
    let balances = read.balances.expect("balances");
    assert_eq!(
        (
            balances.ledger_balance,
            balances.held,
            balances.available,
            balances.ledger_version
        ),
        (0, 0, 5_000, 0)
    );
    assert!(balances.ledger_updated_at.is_none());

    // ListAccounts pages oldest first.
    let page = client
        .list_accounts(pb::ListAccountsRequest {
            customer_id: "cust-1".to_owned(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.accounts, std::slice::from_ref(&account));
    assert!(!page.next_page_token.is_empty());
    let rest = client
        .list_accounts(pb::ListAccountsRequest {
            customer_id: "cust-1".to_owned(),
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .expect("list rest")
        .into_inner();
    assert_eq!(rest.accounts, std::slice::from_ref(&savings));
    assert!(rest.next_page_token.is_empty());

    // Freeze, unfreeze, overdraft: versions 2, 3, 4.
    let frozen = client
        .freeze_account(pb::FreezeAccountRequest {
            account_id: account.account_id.clone(),
            kind: pb::FreezeKind::Debits as i32,
            reason: "case 4711".to_owned(),
        })
        .await
        .expect("freeze")
        .into_inner()
        .account
        .expect("account");
    let freeze = frozen.freeze.clone().expect("freeze");
    assert_eq!(
        (frozen.version, freeze.kind, freeze.reason.as_str()),
        (2, pb::FreezeKind::Debits as i32, "case 4711")
    );
    let unfrozen = client
        .unfreeze_account(pb::UnfreezeAccountRequest {
            account_id: account.account_id.clone(),
            reason: "case closed".to_owned(),
        })
        .await
        .expect("unfreeze")
        .into_inner()
        .account
        .expect("account");
    assert_eq!((unfrozen.version, unfrozen.freeze.is_none()), (3, true));
    let limited = client
        .set_overdraft_limit(pb::SetOverdraftLimitRequest {
            account_id: account.account_id.clone(),
            overdraft_limit: 7_500,
        })
        .await
        .expect("overdraft")
        .into_inner()
        .account
        .expect("account");
    assert_eq!((limited.version, limited.overdraft_limit), (4, 7_500));
    assert_eq!(harness.get(&account.account_id).await.account, Some(limited.clone()));
    let reasons: Vec<Option<String>> =
        sqlx::query_scalar("SELECT reason FROM account_changes WHERE account_id = $1::uuid ORDER BY version")
            .bind(&account.account_id)
            .fetch_all(&harness.db.pool)
            .await
            .expect("change log");
    assert_eq!(
        reasons,
        [None, Some("case 4711".to_owned()), Some("case closed".to_owned()), None]
    );

    // The broker carries the full state of each version, keyed by the account id.
    let records = read_records(&opened, 2, WAIT).await;
    let mut published = accounts_of(&records);
    published.sort_by(|left, right| {
        left.opened_at
            .as_ref()
            .map(|at| (at.seconds, at.nanos))
            .cmp(&right.opened_at.as_ref().map(|at| (at.seconds, at.nanos)))
    });
    assert_eq!(published, [account.clone(), savings.clone()]);
    for record in &records {
        let value = pb::Account::decode(record.payload().expect("value")).expect("account");
        assert_eq!(record.key(), Some(value.account_id.as_bytes()));
        assert_eq!(
            fintech_tests::header(record, "ce_type").as_deref(),
            Some("fintech.accounts.v1.account.opened")
        );
        assert_eq!(
            fintech_tests::header(record, "ce_source").as_deref(),
            Some("/fintech/accounts")
        );
    }
    let records = read_records(&updated, 3, WAIT).await;
    assert_eq!(accounts_of(&records), [frozen, unfrozen, limited]);
    assert!(
        records
            .iter()
            .all(|record| record.key() == Some(account.account_id.as_bytes()))
    );
    assert!(
        read_extra(&opened, Duration::from_millis(500)).await.is_empty(),
        "the retried open published once"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_or_rule_named() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start().await;
    let mut client = harness.client.clone();

    let status = client
        .open_account(pb::OpenAccountRequest {
            customer_id: "no spaces".to_owned(),
            product: 9,
            currency: "euro".to_owned(),
            overdraft_limit: -1,
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        ["customer_id", "product", "currency", "overdraft_limit"]
    );
    let status = client
        .open_account(open_request("cust-1", pb::Product::Savings, 100))
        .await
        .expect_err("savings overdraft");
    assert_eq!(bad_fields(&status), ["overdraft_limit"]);
    let status = client
        .open_account(open_request("cust-1", pb::Product::Unspecified, 0))
        .await
        .expect_err("no product");
    assert_eq!(bad_fields(&status), ["product"]);
    let status = client
        .open_account(open_request("cust-1", pb::Product::Current, 100_000_001))
        .await
        .expect_err("too large");
    assert_eq!(bad_fields(&status), ["overdraft_limit"]);

    let status = client
        .get_account(pb::GetAccountRequest {
            account_id: "nope".to_owned(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(
        (status.code(), bad_fields(&status)),
        (Code::InvalidArgument, vec!["account_id".to_owned()])
    );
    let status = client
        .get_account(pb::GetAccountRequest {
            account_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .list_accounts(pb::ListAccountsRequest {
            customer_id: String::new(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect_err("no customer");
    assert_eq!(bad_fields(&status), ["customer_id"]);
    let status = client
        .list_accounts(pb::ListAccountsRequest {
            customer_id: "cust-1".to_owned(),
            page_size: 501,
            page_token: "zz".to_owned(),
        })
        .await
        .expect_err("bad paging");
    assert_eq!(bad_fields(&status), ["page_size", "page_token"]);

    let current = harness.open("cust-1", pb::Product::Current, "EUR", 0).await;
    let savings = harness.open("cust-1", pb::Product::Savings, "EUR", 0).await;
    let status = client
        .freeze_account(pb::FreezeAccountRequest {
            account_id: current.account_id.clone(),
            kind: pb::FreezeKind::Unspecified as i32,
            reason: String::new(),
        })
        .await
        .expect_err("bad freeze");
    assert_eq!(bad_fields(&status), ["kind", "reason"]);
    let status = client
        .freeze_account(pb::FreezeAccountRequest {
            account_id: current.account_id.clone(),
            kind: pb::FreezeKind::Both as i32,
            reason: "r".repeat(501),
        })
        .await
        .expect_err("long reason");
    assert_eq!(bad_fields(&status), ["reason"]);
    let status = client
        .unfreeze_account(pb::UnfreezeAccountRequest {
            account_id: current.account_id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("no reason");
    assert_eq!(bad_fields(&status), ["reason"]);
    let status = client
        .unfreeze_account(pb::UnfreezeAccountRequest {
            account_id: current.account_id.clone(),
            reason: "nothing to lift".to_owned(),
        })
        .await
        .expect_err("not frozen");
    assert_eq!(
        (status.code(), broken_rules(&status)),
        (Code::FailedPrecondition, vec!["account.not_frozen".to_owned()])
    );
    let status = client
        .set_overdraft_limit(pb::SetOverdraftLimitRequest {
            account_id: savings.account_id.clone(),
            overdraft_limit: 100,
        })
        .await
        .expect_err("savings");
    assert_eq!(broken_rules(&status), ["account.product"]);
    let status = client
        .set_overdraft_limit(pb::SetOverdraftLimitRequest {
            account_id: current.account_id.clone(),
            overdraft_limit: -5,
        })
        .await
        .expect_err("negative");
    assert_eq!(bad_fields(&status), ["overdraft_limit"]);
    let status = client
        .close_account(pb::CloseAccountRequest {
            account_id: String::new(),
        })
        .await
        .expect_err("no id");
    assert_eq!(bad_fields(&status), ["account_id"]);
    // Nothing of that changed an account or published anything.
    assert_eq!(count(&harness, "SELECT count(*) FROM outbox").await, 2);
    assert_eq!(count(&harness, "SELECT max(version) FROM accounts").await, 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_token_acts_only_on_its_own_accounts() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start().await;
    let scopes = ["accounts.read", "accounts.write"];
    let mut alice =
        AccountsServiceClient::new(connect_with_token(&harness.address, &customer_token("alice", &scopes)).await);
    let bob_account = harness.open("bob", pb::Product::Current, "EUR", 0).await;

    let status = alice
        .open_account(open_request("bob", pb::Product::Current, 0))
        .await
        .expect_err("for bob");
    assert_eq!(status.code(), Code::PermissionDenied);
    let own = alice
        .open_account(keyed(open_request("alice", pb::Product::Savings, 0), "k1"))
        .await
        .expect("own account")
        .into_inner()
        .account
        .expect("account");
    // Keys are per caller: the operator's "k1" is another key.
    let operator_k1 = harness
        .client
        .clone()
        .open_account(keyed(open_request("alice", pb::Product::Current, 0), "k1"))
        .await
        .expect("operator with the same key")
        .into_inner()
        .account
        .expect("account");
    assert_ne!(operator_k1.account_id, own.account_id);

    let read = alice
        .get_account(pb::GetAccountRequest {
            account_id: own.account_id.clone(),
        })
        .await
        .expect("own")
        .into_inner();
    assert_eq!(read.account, Some(own.clone()));
    let status = alice
        .get_account(pb::GetAccountRequest {
            account_id: bob_account.account_id.clone(),
        })
        .await
        .expect_err("bob's");
    assert_eq!(
        status.code(),
        Code::NotFound,
        "another customer's account looks missing"
    );
    let status = alice
        .close_account(pb::CloseAccountRequest {
            account_id: bob_account.account_id.clone(),
        })
        .await
        .expect_err("close bob's");
    assert_eq!(status.code(), Code::NotFound);
    let status = alice
        .list_accounts(pb::ListAccountsRequest {
            customer_id: "bob".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("list bob's");
    assert_eq!(status.code(), Code::PermissionDenied);
    let listed = alice
        .list_accounts(pb::ListAccountsRequest {
            customer_id: "alice".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list own")
        .into_inner();
    assert_eq!(listed.accounts.len(), 2);
    // Operator-only methods refuse a customer token whatever its scopes.
    let mut admin_customer = AccountsServiceClient::new(
        connect_with_token(
            &harness.address,
            &customer_token("alice", &["accounts.read", "accounts.write", "accounts.admin"]),
        )
        .await,
    );
    let status = admin_customer
        .freeze_account(pb::FreezeAccountRequest {
            account_id: own.account_id.clone(),
            kind: pb::FreezeKind::Both as i32,
            reason: "self".to_owned(),
        })
        .await
        .expect_err("customer freeze");
    assert_eq!(status.code(), Code::PermissionDenied);
    // A customer closes its own (empty) account.
    let closed = alice
        .close_account(pb::CloseAccountRequest {
            account_id: own.account_id.clone(),
        })
        .await
        .expect("close own")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(closed.state, pb::AccountState::Closed as i32);
    let bob_still = harness.get(&bob_account.account_id).await.account.expect("account");
    assert_eq!(bob_still.version, 1, "bob's account is untouched");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lifecycle_refuses_illegal_transitions_over_rpc() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start().await;
    let mut client = harness.client.clone();
    let account = harness.open("cust-9", pb::Product::Current, "EUR", 0).await;
    client
        .freeze_account(pb::FreezeAccountRequest {
            account_id: account.account_id.clone(),
            kind: pb::FreezeKind::Credits as i32,
            reason: "aml review".to_owned(),
        })
        .await
        .expect("freeze");
    // Replacing a freeze is a change of its own.
    let replaced = client
        .freeze_account(pb::FreezeAccountRequest {
            account_id: account.account_id.clone(),
            kind: pb::FreezeKind::Both as i32,
            reason: "court order".to_owned(),
        })
        .await
        .expect("refreeze")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(
        (replaced.version, replaced.freeze.map(|freeze| freeze.kind)),
        (3, Some(pb::FreezeKind::Both as i32))
    );
    let status = client
        .close_account(pb::CloseAccountRequest {
            account_id: account.account_id.clone(),
        })
        .await
        .expect_err("frozen");
    assert_eq!(broken_rules(&status), ["account.frozen"]);
    client
        .unfreeze_account(pb::UnfreezeAccountRequest {
            account_id: account.account_id.clone(),
            reason: "released".to_owned(),
        })
        .await
        .expect("unfreeze");
    let closed = client
        .close_account(pb::CloseAccountRequest {
            account_id: account.account_id.clone(),
        })
        .await
        .expect("close")
        .into_inner()
        .account
        .expect("account");
    assert_eq!((closed.state, closed.version), (pb::AccountState::Closed as i32, 5));
    assert!(closed.closed_at.is_some() && closed.freeze.is_none());
    for status in [
        client
            .close_account(pb::CloseAccountRequest {
                account_id: account.account_id.clone(),
            })
            .await
            .expect_err("close again"),
        client
            .freeze_account(pb::FreezeAccountRequest {
                account_id: account.account_id.clone(),
                kind: pb::FreezeKind::Debits as i32,
                reason: "too late".to_owned(),
            })
            .await
            .expect_err("freeze closed"),
        client
            .set_overdraft_limit(pb::SetOverdraftLimitRequest {
                account_id: account.account_id.clone(),
                overdraft_limit: 10,
            })
            .await
            .expect_err("overdraft closed"),
    ] {
        assert_eq!(
            (status.code(), broken_rules(&status)),
            (Code::FailedPrecondition, vec!["account.closed".to_owned()])
        );
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_keeps_the_highest_ledger_version_and_closing_follows_the_money() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start().await;
    let ledger = FakeLedger::new(&harness.prefix);
    let mut client = harness.client.clone();
    let account = harness.open("cust-7", pb::Product::Current, "EUR", 1_000).await;
    let id = account.account_id.clone();
    // Microseconds: what PostgreSQL keeps.
    let t0 = fintech_types::time::now();
    let at = |seconds: i64| t0 + chrono::Duration::seconds(seconds);

    // Versions 3 before 2, a duplicate of 3, and an entry of an account that is not ours.
    let v3 = entry(&id, 3, 200, 300, 0, at(2));
    ledger.entry(&v3).await;
    ledger.entry(&entry(&id, 2, 100, 100, 0, at(1))).await;
    ledger.entry(&v3).await;
    ledger
        .entry(&entry(&uuid::Uuid::new_v4().to_string(), 2, 5, 5, 0, at(1)))
        .await;
    let read = harness
        .wait_for(&id, "at ledger version 3", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 3)
        })
        .await;
    let balances = read.balances.expect("balances");
    assert_eq!(
        (balances.ledger_balance, balances.held, balances.available),
        (300, 0, 300)
    );
    assert_eq!(balances.ledger_updated_at, Some(fintech_proto::time::timestamp(at(2))));
    // The late version 2 is in the history all the same, once.
    assert_eq!(count(&harness, "SELECT count(*) FROM ledger_balance_history").await, 2);

    let status = client
        .close_account(pb::CloseAccountRequest { account_id: id.clone() })
        .await
        .expect_err("money left");
    assert_eq!(broken_rules(&status), ["account.balance_not_zero"]);

    // A hold, then the money leaves: the hold still blocks closing.
    let placed = hold(&id, "hold-1", 1, lpb::HoldStatus::Active, 50, 4, 300, 50, at(3));
    ledger.hold(&topics::LEDGER_HOLD_PLACED, &placed).await;
    ledger.entry(&entry(&id, 5, -300, 0, 50, at(4))).await;
    let read = harness
        .wait_for(&id, "at version 5", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 5)
        })
        .await;
    let balances = read.balances.expect("balances");
    assert_eq!(
        (balances.ledger_balance, balances.held, balances.available),
        (0, 50, -50)
    );
    let status = client
        .close_account(pb::CloseAccountRequest { account_id: id.clone() })
        .await
        .expect_err("hold left");
    assert_eq!(broken_rules(&status), ["account.active_holds"]);

    // Overdrawn by 700 (holds included): the limit cannot go below that.
    ledger.entry(&entry(&id, 6, -650, -650, 50, at(5))).await;
    harness
        .wait_for(&id, "at version 6", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 6)
        })
        .await;
    let status = client
        .set_overdraft_limit(pb::SetOverdraftLimitRequest {
            account_id: id.clone(),
            overdraft_limit: 699,
        })
        .await
        .expect_err("below the overdrawn amount");
    assert_eq!(broken_rules(&status), ["account.overdrawn"]);
    client
        .set_overdraft_limit(pb::SetOverdraftLimitRequest {
            account_id: id.clone(),
            overdraft_limit: 700,
        })
        .await
        .expect("covers it");
    let status = client
        .close_account(pb::CloseAccountRequest { account_id: id.clone() })
        .await
        .expect_err("money and hold left");
    assert_eq!(
        broken_rules(&status),
        ["account.balance_not_zero", "account.active_holds"]
    );

    // Back to zero and the hold released (its release arrives before an older copy of the
    // placement): now the account closes.
    ledger.entry(&entry(&id, 7, 650, 0, 50, at(6))).await;
    let released = hold(&id, "hold-1", 2, lpb::HoldStatus::Released, 0, 8, 0, 0, at(7));
    ledger.hold(&topics::LEDGER_HOLD_RELEASED, &released).await;
    ledger.hold(&topics::LEDGER_HOLD_PLACED, &placed).await;
    harness
        .wait_for(&id, "at version 8", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 8)
        })
        .await;
    let status: String = sqlx::query_scalar("SELECT status FROM account_holds WHERE hold_id = 'hold-1'")
        .fetch_one(&harness.db.pool)
        .await
        .expect("hold");
    assert_eq!(status, "released", "the older placement did not bring the hold back");
    let closed = client
        .close_account(pb::CloseAccountRequest { account_id: id.clone() })
        .await
        .expect("close")
        .into_inner()
        .account
        .expect("account");
    assert_eq!(closed.state, pb::AccountState::Closed as i32);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_account_goes_dormant_and_a_customer_movement_reactivates_it() {
    let _telemetry = telemetry::init("test");
    let harness = AccountsHarness::start_with(|config| config.dormant_after = Duration::from_secs(1)).await;
    let updated = reader(&kafka_bootstrap(), &[&harness.topic("accounts.updated")]);
    let ledger = FakeLedger::new(&harness.prefix);
    let account = harness.open("cust-5", pb::Product::Current, "EUR", 0).await;
    let id = account.account_id.clone();

    let dormant = harness
        .wait_for(&id, "dormant", |answer| {
            answer
                .account
                .as_ref()
                .is_some_and(|account| account.state == pb::AccountState::Dormant as i32)
        })
        .await
        .account
        .expect("account");
    assert_eq!(dormant.version, 2);

    // Interest is not a customer movement: the account stays dormant.
    let mut interest = entry(&id, 2, 10, 10, 0, Utc::now());
    interest.metadata.insert("kind".to_owned(), "interest".to_owned());
    ledger.entry(&interest).await;
    harness
        .wait_for(&id, "at version 2", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 2)
        })
        .await;
    assert_eq!(
        harness.get(&id).await.account.map(|account| account.state),
        Some(pb::AccountState::Dormant as i32)
    );

    // A deposit is.
    let moved_at = Utc::now();
    ledger.entry(&entry(&id, 3, 100, 110, 0, moved_at)).await;
    let active = harness
        .wait_for(&id, "active again", |answer| {
            answer
                .account
                .as_ref()
                .is_some_and(|account| account.state == pb::AccountState::Active as i32)
        })
        .await
        .account
        .expect("account");
    assert_eq!(active.version, 3);
    let moved = fintech_proto::time::timestamp(moved_at);
    let shown = active.last_customer_movement_at.expect("movement");
    assert_eq!(
        (shown.seconds, shown.nanos / 1000),
        (moved.seconds, moved.nanos / 1000),
        "stamped with the movement (microseconds)"
    );
    let records = read_records(&updated, 2, WAIT).await;
    let published = accounts_of(&records);
    assert_eq!(published[0], dormant);
    assert_eq!(published[1], active);
    harness.stop().await;
}

fn first_of_month(day: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(day.year(), day.month(), 1).expect("date")
}

fn add_months(day: NaiveDate, months: u32) -> NaiveDate {
    day.checked_add_months(chrono::Months::new(months)).expect("date")
}

fn noon(day: NaiveDate, offset_days: u64) -> DateTime<Utc> {
    (day + chrono::Days::new(offset_days))
        .and_hms_opt(12, 0, 0)
        .expect("time")
        .and_utc()
}

/// 1/(10000*365) minor units per unit: a day accrues balance * rate_bps units.
const UNITS_PER_MINOR_UNIT: i128 = 3_650_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_daily_accruals_posts_the_hand_computed_interest_once() {
    let _telemetry = telemetry::init("test");
    // The kit's own interest job runs once at start and then waits; this test drives the clock.
    let harness = AccountsHarness::start_with(|config| config.interest_interval = Duration::from_secs(3600)).await;
    let app = harness.app(|_| {});
    let posted_topic = reader(&kafka_bootstrap(), &[&harness.topic("accounts.interest_posted")]);
    let ledger = FakeLedger::new(&harness.prefix);
    let account = harness.open("saver", pb::Product::Savings, "EUR", 0).await;
    let id = account.account_id.clone();
    let opened = fintech_proto::time::from_timestamp(account.opened_at.as_ref().expect("opened"))
        .expect("time")
        .date_naive();
    // A whole month after the opening one: M (days 1-9 at 1,000,000; 10-24 at 1,500,000; 25-end
    // at 1,200,000), then M+1 at 1,200,000 throughout.
    let month = add_months(first_of_month(opened), 2);
    let next_month = add_months(month, 1);
    let after_next = add_months(month, 2);
    let days_in_month = (next_month - month).num_days();
    let rate: i128 = 225; // EUR from 2027-01-01 in the embedded table
    assert!(
        month >= NaiveDate::from_ymd_opt(2027, 1, 1).expect("date"),
        "the 225 bps rate is in force"
    );

    // The ledger's events, out of order, one twice; a hold changes no balance.
    let events = [
        entry(&id, 5, -300_000, 1_200_000, 100, noon(month, 24)),
        entry(&id, 2, 1_000_000, 1_000_000, 0, noon(month, 0)),
        entry(&id, 3, 500_000, 1_500_000, 0, noon(month, 9)),
    ];
    for event in &events {
        ledger.entry(event).await;
    }
    ledger.entry(&events[2]).await;
    ledger
        .hold(
            &topics::LEDGER_HOLD_PLACED,
            &hold(
                &id,
                "h-1",
                1,
                lpb::HoldStatus::Active,
                100,
                4,
                1_500_000,
                100,
                noon(month, 19),
            ),
        )
        .await;
    ledger
        .hold(
            &topics::LEDGER_HOLD_RELEASED,
            &hold(
                &id,
                "h-1",
                2,
                lpb::HoldStatus::Released,
                0,
                6,
                1_200_000,
                0,
                noon(month, 25),
            ),
        )
        .await;
    let read = harness
        .wait_for(&id, "at ledger version 6", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 6)
        })
        .await;
    assert_eq!(read.balances.expect("balances").ledger_balance, 1_200_000);
    // The entries and the holds come on different topics: version 6 (a hold) can be shown before
    // versions 2 and 3 (entries) reached the history that interest reads.
    wait_for_history(&harness, &id, 5).await;

    // Halfway through M: days 1-15 accrued and shown (floor), nothing posted.
    let postings = app.run_interest(month + chrono::Days::new(15)).await.expect("interest");
    assert!(postings.is_empty());
    let half: i128 = rate * (9 * 1_000_000 + 6 * 1_500_000);
    let shown = harness.get(&id).await.balances.expect("balances").accrued_interest;
    assert_eq!(i128::from(shown), half / UNITS_PER_MINOR_UNIT);

    // The whole month, twice: one posting.
    let full: i128 = rate * (9 * 1_000_000 + 15 * 1_500_000 + i128::from(days_in_month - 24) * 1_200_000);
    let expected = i64::try_from(full / UNITS_PER_MINOR_UNIT).expect("fits");
    if month == NaiveDate::from_ymd_opt(2027, 2, 1).expect("date") {
        // By hand: 225 * (9*1,000,000 + 15*1,500,000 + 4*1,200,000) = 8,167,500,000 units
        // = 2,237 minor units and 2,450,000 units carried.
        assert_eq!((expected, full % UNITS_PER_MINOR_UNIT), (2_237, 2_450_000));
    }
    let postings = app.run_interest(next_month).await.expect("interest");
    assert_eq!(postings.len(), 1, "{postings:?}");
    let posting = &postings[0];
    let period = format!("{:04}-{:02}", month.year(), month.month());
    assert_eq!(posting.posting_id, format!("interest:{id}:{period}"));
    assert_eq!(
        (posting.amount, posting.days, posting.period.as_str()),
        (expected, i32::try_from(days_in_month).expect("days"), period.as_str())
    );
    assert_eq!(
        (posting.customer_id.as_str(), posting.currency.as_str()),
        ("saver", "EUR")
    );
    assert!(
        app.run_interest(next_month).await.expect("again").is_empty(),
        "a second run posts nothing"
    );
    assert_eq!(count(&harness, "SELECT count(*) FROM interest_postings").await, 1);
    let records = read_records(&posted_topic, 1, WAIT).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        pb::InterestPosting::decode(records[0].payload().expect("value")).expect("posting"),
        *posting
    );
    assert_eq!(records[0].key(), Some(id.as_bytes()));
    assert_eq!(
        harness.get(&id).await.balances.expect("balances").accrued_interest,
        0,
        "the remainder is not shown"
    );

    // Posted but not booked by the ledger yet, with money on it: closing names both.
    let status = harness
        .client
        .clone()
        .close_account(pb::CloseAccountRequest { account_id: id.clone() })
        .await
        .expect_err("not closable");
    assert_eq!(
        broken_rules(&status),
        ["account.balance_not_zero", "account.interest_unposted"]
    );

    // M+1 with credits frozen: nothing posted, all carried (remainder of M included) into M+2.
    harness
        .client
        .clone()
        .freeze_account(pb::FreezeAccountRequest {
            account_id: id.clone(),
            kind: pb::FreezeKind::Credits as i32,
            reason: "investigation".to_owned(),
        })
        .await
        .expect("freeze");
    assert!(app.run_interest(after_next).await.expect("frozen month").is_empty());
    let carried = full % UNITS_PER_MINOR_UNIT + rate * i128::from((after_next - next_month).num_days()) * 1_200_000;
    let shown = harness.get(&id).await.balances.expect("balances").accrued_interest;
    assert_eq!(i128::from(shown), carried / UNITS_PER_MINOR_UNIT);
    harness
        .client
        .clone()
        .unfreeze_account(pb::UnfreezeAccountRequest {
            account_id: id.clone(),
            reason: "cleared".to_owned(),
        })
        .await
        .expect("unfreeze");
    let month_after = add_months(month, 3);
    let postings = app.run_interest(month_after).await.expect("after the freeze");
    let both = carried + rate * i128::from((month_after - after_next).num_days()) * 1_200_000;
    assert_eq!(postings.len(), 1);
    assert_eq!(i128::from(postings[0].amount), both / UNITS_PER_MINOR_UNIT);
    let period = format!("{:04}-{:02}", after_next.year(), after_next.month());
    assert_eq!(postings[0].period, period);
    let stored: String = sqlx::query_scalar("SELECT carry_units::text FROM interest_state WHERE account_id = $1::uuid")
        .bind(&id)
        .fetch_one(&harness.db.pool)
        .await
        .expect("carry");
    assert_eq!(
        stored,
        (both % UNITS_PER_MINOR_UNIT).to_string(),
        "the remainder is carried on"
    );

    // The ledger books the first posting: it is no longer in flight, and it is not a movement.
    let mut booked = entry(&id, 7, expected, 1_200_000 + expected, 0, noon(after_next, 1));
    booked.entry_id = posting.posting_id.clone();
    booked.metadata.insert("kind".to_owned(), "interest".to_owned());
    ledger.entry(&booked).await;
    harness
        .wait_for(&id, "at ledger version 7", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|balances| balances.ledger_version == 7)
        })
        .await;
    let unbooked = count(
        &harness,
        "SELECT count(*) FROM interest_postings WHERE booked_at IS NULL",
    )
    .await;
    assert_eq!(unbooked, 1, "only the second posting is still in flight");
    harness.stop().await;
}
