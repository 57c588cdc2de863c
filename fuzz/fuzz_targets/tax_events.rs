//! Tax's consumer: `orders.*` (`Order` → the order cache) and `transactions.*` (`Transaction` →
//! a taxable transaction, a reversal). Each payload that decodes round-trips; what the
//! conversions accept is storable; a transaction decided on its order with the shipped rate
//! table gives a result whose base + VAT is exactly the amount paid, and the `tax.calculated` /
//! `tax.reversed` messages tax publishes from it are accepted by the ledger, which posts them
//! (a result the ledger would dead-letter is a bug here).
#![no_main]

use chrono::{DateTime, Utc};
use fintech_fuzz::{assert_balanced, assert_round_trip, storable, system_account_ids};
use fintech_proto::{payments, tax as pb};
use fintech_tax::domain::vat::RateTable;
use fintech_tax::domain::{Decision, ReversalReason, decide};
use fintech_tax::{events, proto};
use libfuzzer_sys::fuzz_target;

// Input: a flags byte, then the `Order` payload (u16 length first) and the `Transaction` payload.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (order_payload, transaction_payload) = fintech_fuzz::split_two(rest);
    let now = DateTime::<Utc>::from_timestamp_micros(1_790_000_000_000_000).unwrap();
    let order_event = fintech_fuzz::event(events::ORDERS_CREATED, None, order_payload);
    let transaction_event = fintech_fuzz::event(events::TRANSACTIONS_CREATED, None, transaction_payload);

    let order = match order_event.decode::<payments::Order>() {
        Ok(order) => {
            assert_round_trip(&order);
            proto::cached_order(&order).ok()
        }
        Err(_) => None,
    };
    if let Some(order) = &order {
        assert!(order.version >= 1);
        assert!(storable(&order.customer_id), "customer id {:?}", order.customer_id);
        assert!(storable(&order.product_type), "product type {:?}", order.product_type);
    }

    let Ok(transaction) = transaction_event.decode::<payments::Transaction>() else {
        return;
    };
    assert_round_trip(&transaction);
    let Ok(taxable) = proto::taxable_transaction(&transaction) else {
        return;
    };
    assert!(taxable.amount > 0 && taxable.order_version >= 0);
    assert!(storable(&taxable.customer_id), "customer id {:?}", taxable.customer_id);
    let reversal = proto::reversal_reason(&transaction);
    assert_eq!(taxable.taxable, reversal.is_none() && transaction.status != 0);

    let decision = decide(&taxable, order.as_ref(), RateTable::embedded(), now);
    let Decision::Taxed(taxed) = decision else { return };
    assert_eq!(taxed.base_amount + taxed.tax_applied, taxed.total_amount);
    assert_eq!(taxed.total_amount, taxable.amount, "the VAT is inside the amount paid");
    assert!(taxed.tax_applied >= 0 && taxed.base_amount >= 0);
    assert!((0..=10_000).contains(&taxed.tax_rate_bps));

    // What tax publishes, as the ledger reads it.
    let published = pb::TaxedTransaction::from(&taxed);
    let sale = fintech_ledger::events::input_of(published.clone())
        .validate()
        .unwrap_or_else(|error| panic!("the ledger refuses tax's {published:?}: {error}"));
    let entry = sale
        .entry(&system_account_ids(&sale.system_accounts()))
        .unwrap_or_else(|error| panic!("the ledger cannot post tax's {published:?}: {error}"));
    assert_balanced(&entry);

    let reason = if flags & 1 == 1 {
        ReversalReason::Refunded
    } else {
        ReversalReason::Failed
    };
    let reversed = proto::reversal(&taxed, reason, transaction.version, now);
    let reversal = fintech_ledger::events::reversal_input_of(reversed.clone())
        .validate()
        .unwrap_or_else(|error| panic!("the ledger refuses tax's {reversed:?}: {error}"));
    assert_eq!(reversal.sale_entry_id(), sale.entry_id());
});
