//! Accounts and the ledger together, sharing nothing but the broker: an account opened by the
//! accounts service becomes known to the ledger through `accounts.opened` alone, the ledger
//! enforces its freezes, and the accounts service shows the ledger's balances from its own
//! projection of `ledger.entry_posted` and `ledger.hold_*`, stamped with the stream version.
//!
//! The test waits for the ledger's cache to hold an account version (reading the ledger's own
//! database) before it checks the rule that version brings.
//!
//! The ledger has no address of the accounts service in its configuration; to show that it never
//! needs one, the accounts service is stopped and the ledger goes on posting to and holding on the
//! account it learned about.

use std::time::Duration;

use fintech_proto::accounts as apb;
use fintech_proto::ledger as pb;
use fintech_tests::accounts::AccountsHarness;
use fintech_tests::ledger::{LedgerHarness, hold_request, violation_types, wait_for_cached_version};

/// Waits until the ledger has opened the customer account's stream from the accounts events.
async fn ledger_knows(ledger: &LedgerHarness, account_id: &str) -> pb::Account {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = ledger
            .client
            .clone()
            .get_account(pb::GetAccountRequest {
                account_id: account_id.to_owned(),
                code: String::new(),
            })
            .await;
        match answer {
            Ok(response) => return response.into_inner().account.expect("account"),
            Err(status) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the ledger never learned about {account_id}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn line(account_id: &str, side: pb::Side, amount: i64) -> pb::EntryLine {
    pb::EntryLine {
        account_id: account_id.to_owned(),
        side: side as i32,
        amount,
        currency: "EUR".to_owned(),
    }
}

/// An entry moving `amount` out of `from` into `to`.
fn transfer(entry_id: &str, from: &str, to: &str, amount: i64) -> pb::PostEntryRequest {
    pb::PostEntryRequest {
        entry_id: entry_id.to_owned(),
        description: "accounts and ledger together".to_owned(),
        metadata: Default::default(),
        lines: vec![line(from, pb::Side::Debit, amount), line(to, pb::Side::Credit, amount)],
    }
}

#[tokio::test]
async fn an_account_opened_by_accounts_is_enforced_by_the_ledger_and_shows_its_balance() {
    let accounts = AccountsHarness::start().await;
    let ledger = LedgerHarness::start_on(&accounts.prefix, |_| {}).await;
    // The other side of every entry: an internal account of the ledger.
    let cash = ledger
        .open_account(
            "cash-eur",
            pb::AccountType::Asset,
            "EUR",
            pb::OverdraftPolicy::Unlimited,
            0,
        )
        .await;

    let account = accounts.open("cust-7", apb::Product::Current, "EUR", 2_000).await;
    let known = ledger_knows(&ledger, &account.account_id).await;
    assert_eq!(known.customer_id, "cust-7");
    assert_eq!(known.r#type, pb::AccountType::Liability as i32);
    assert_eq!(known.overdraft_limit, 2_000);

    // Money in: a credit to the customer account.
    let deposit = ledger
        .client
        .clone()
        .post_entry(transfer("deposit-1", &cash.account_id, &account.account_id, 10_000))
        .await
        .expect("deposit")
        .into_inner();
    let append = deposit
        .entry
        .expect("entry")
        .appends
        .into_iter()
        .find(|append| append.account_id == account.account_id)
        .expect("the customer account was appended to");
    assert_eq!(
        (append.balance_after, append.held_after, append.available_after),
        (10_000, 0, 12_000)
    );

    // The accounts service shows it from its projection, with the ledger version it reflects.
    let shown = accounts
        .wait_for(&account.account_id, "shows the deposit", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|b| b.ledger_version >= append.version)
        })
        .await;
    let balances = shown.balances.expect("balances");
    assert_eq!(balances.ledger_version, append.version);
    assert_eq!(
        (balances.ledger_balance, balances.held, balances.available),
        (10_000, 0, 12_000)
    );

    // A hold lowers available in the ledger and, through hold_placed, in the projection.
    let placed = ledger
        .client
        .clone()
        .place_hold(hold_request("hold-1", &account.account_id, 3_000))
        .await
        .expect("hold")
        .into_inner()
        .hold
        .expect("hold");
    let after_hold = placed.balance.expect("balance after the hold");
    assert_eq!(
        (after_hold.balance, after_hold.held, after_hold.available),
        (10_000, 3_000, 9_000)
    );
    let shown = accounts
        .wait_for(&account.account_id, "shows the hold", |answer| {
            answer
                .balances
                .as_ref()
                .is_some_and(|b| b.ledger_version >= after_hold.version)
        })
        .await
        .balances
        .expect("balances");
    assert_eq!(
        (shown.ledger_balance, shown.held, shown.available),
        (10_000, 3_000, 9_000)
    );

    // Closing with money and a hold on the account is refused, naming both.
    let refused = accounts
        .client
        .clone()
        .close_account(apb::CloseAccountRequest {
            account_id: account.account_id.clone(),
        })
        .await
        .expect_err("close with a balance");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let rules = violation_types(&refused);
    assert!(rules.contains(&"account.balance_not_zero".to_owned()), "{rules:?}");
    assert!(rules.contains(&"account.active_holds".to_owned()), "{rules:?}");

    // Freeze debits: once the ledger has the new state, a debit is refused with the rule named and
    // a credit still works.
    let frozen = accounts
        .client
        .clone()
        .freeze_account(apb::FreezeAccountRequest {
            account_id: account.account_id.clone(),
            kind: apb::FreezeKind::Debits as i32,
            reason: "case 42".to_owned(),
        })
        .await
        .expect("freeze")
        .into_inner()
        .account
        .expect("account");
    wait_for_cached_version(&ledger.db, &account.account_id, frozen.version).await;
    let debit = transfer("withdrawal-1", &account.account_id, &cash.account_id, 1_000);
    let refused = ledger
        .client
        .clone()
        .post_entry(debit.clone())
        .await
        .expect_err("a debit of a debit-frozen account is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert_eq!(violation_types(&refused), ["account.frozen.debits"]);
    let hold_refused = ledger
        .client
        .clone()
        .place_hold(hold_request("hold-2", &account.account_id, 100))
        .await
        .expect_err("a hold is a debit");
    assert_eq!(violation_types(&hold_refused), ["account.frozen.debits"]);
    ledger
        .client
        .clone()
        .post_entry(transfer("deposit-2", &cash.account_id, &account.account_id, 500))
        .await
        .expect("a credit works while debits are frozen");

    // Unfreeze: debits work again.
    let unfrozen = accounts
        .client
        .clone()
        .unfreeze_account(apb::UnfreezeAccountRequest {
            account_id: account.account_id.clone(),
            reason: "case 42 closed".to_owned(),
        })
        .await
        .expect("unfreeze")
        .into_inner()
        .account
        .expect("account");
    wait_for_cached_version(&ledger.db, &account.account_id, unfrozen.version).await;
    ledger
        .client
        .clone()
        .post_entry(debit)
        .await
        .expect("the debit works after the unfreeze");

    // The ledger needs nothing from the accounts service to go on: stop it, and post and hold.
    accounts.stop().await;
    ledger
        .client
        .clone()
        .post_entry(transfer("deposit-3", &cash.account_id, &account.account_id, 700))
        .await
        .expect("posting with the accounts service down");
    ledger
        .client
        .clone()
        .place_hold(hold_request("hold-3", &account.account_id, 100))
        .await
        .expect("holding with the accounts service down");
    let balance = ledger.balance(&account.account_id).await;
    // 10000 + 500 - 1000 + 700; held 3000 + 100.
    assert_eq!(
        (balance.balance, balance.held, balance.available),
        (10_200, 3_100, 9_100)
    );
}
