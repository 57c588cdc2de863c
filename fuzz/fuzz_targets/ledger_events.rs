//! The ledger's consumers: `accounts.opened`/`accounts.updated` (its account cache),
//! `accounts.interest_posted`, `tax.calculated`/`tax.reversed` and `transactions.*` (cash).
//! Each payload that decodes round-trips; whatever the handler's validation accepts builds the
//! entry the handler posts (the later step never refuses it) and that entry is balanced.
#![no_main]

use chrono::{DateTime, Utc};
use fintech_fuzz::{assert_balanced, assert_round_trip, storable, system_account_ids};
use fintech_ledger::domain::cash::CashStatus;
use fintech_ledger::domain::tax::{Direction, SystemAccount};
use fintech_ledger::events;
use fintech_proto::{accounts, payments, tax};
use libfuzzer_sys::fuzz_target;

// Input: one selector byte (the topic, and for tax the payload type), then the payload.
fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let now = DateTime::<Utc>::from_timestamp_micros(1_790_000_000_000_000).unwrap();
    match selector % 4 {
        0 => {
            let event = fintech_fuzz::event(events::ACCOUNTS_OPENED, None, payload);
            let Ok(wire) = event.decode::<accounts::Account>() else {
                return;
            };
            assert_round_trip(&wire);
            let Ok(account) = events::customer_account_of(&wire).validate() else {
                return;
            };
            assert!(account.version >= 1, "version {}", account.version);
            assert!(account.overdraft_limit >= 0, "overdraft {}", account.overdraft_limit);
            assert!(storable(&account.customer_id), "customer id {:?}", account.customer_id);
            let opened = account.account(now);
            assert_eq!(opened.account_id, account.account_id);
        }
        1 => {
            let event = fintech_fuzz::event(events::ACCOUNTS_INTEREST_POSTED, None, payload);
            let Ok(posting) = event.decode::<accounts::InterestPosting>() else {
                return;
            };
            assert_round_trip(&posting);
            let Ok(interest) = events::interest_input(posting.clone()).validate() else {
                return;
            };
            assert!(interest.amount > 0, "interest amount {}", interest.amount);
            let expense = SystemAccount::interest_expense(&interest.currency);
            let ids = system_account_ids(std::slice::from_ref(&expense));
            let entry = interest
                .entry(ids[&expense.code])
                .unwrap_or_else(|error| panic!("validated interest {posting:?} has no entry: {error}"));
            assert_balanced(&entry);
        }
        2 => {
            let schema = match selector / 4 % 3 {
                0 => None,
                1 => Some(events::TAXED_TRANSACTION),
                _ => Some(events::TAX_REVERSAL),
            };
            let event = fintech_fuzz::event(events::TAX_CALCULATED, schema, payload);
            let Ok(input) = events::tax_input(&event) else { return };
            if let Ok(sale) = event.decode::<tax::TaxedTransaction>() {
                assert_round_trip(&sale);
            }
            let Ok(result) = input.clone().validate() else { return };
            assert_eq!(result.base_amount + result.tax_applied, result.total_amount);
            assert!(result.total_amount > 0);
            if result.direction == Direction::Sale {
                let ids = system_account_ids(&result.system_accounts());
                let entry = result
                    .entry(&ids)
                    .unwrap_or_else(|error| panic!("validated {input:?} has no entry: {error}"));
                assert_balanced(&entry);
                assert_eq!(entry.entry_id, result.entry_id());
            } else {
                assert_ne!(result.entry_id(), result.sale_entry_id());
            }
        }
        _ => {
            let event = fintech_fuzz::event(events::TRANSACTIONS_UPDATED, None, payload);
            let Ok(transaction) = event.decode::<payments::Transaction>() else {
                return;
            };
            assert_round_trip(&transaction);
            let Ok(movement) = events::cash_movement(&transaction) else {
                return;
            };
            assert!(movement.amount > 0);
            let ids = system_account_ids(&movement.system_accounts());
            let entries = movement
                .entries(&ids)
                .unwrap_or_else(|error| panic!("validated {transaction:?} has no entries: {error}"));
            match movement.status {
                CashStatus::NotMoved => assert!(entries.is_empty()),
                CashStatus::Captured => assert_eq!(entries.len(), 1),
                CashStatus::Refunded => assert_eq!(entries.len(), 2),
            }
            for entry in &entries {
                assert_balanced(entry);
                let moved: i64 = entry
                    .lines
                    .iter()
                    .filter(|line| line.side == fintech_ledger::domain::Side::Debit)
                    .map(|line| line.amount)
                    .sum();
                assert_eq!(moved, movement.amount, "an entry moves the transaction's amount");
            }
        }
    }
});
