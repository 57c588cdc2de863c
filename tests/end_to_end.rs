//! The whole chain on the real PostgreSQL and broker: a gRPC call to payments ends as a balanced
//! ledger entry, every hop on the trace of that call.

use std::time::Duration;

use fintech_platform::telemetry;
use fintech_proto::{ledger, payments};
use fintech_tests::ledger::LedgerHarness;
use fintech_tests::payments::{PaymentsHarness, unique_prefix};
use fintech_tests::tax::TaxHarness;
use fintech_tests::{header, kafka_bootstrap, read_extra, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;
use tonic::Request;

const TRACE_ID: &str = "9c2f6b1e0d3a4f5b8e7d6c5b4a392817";

fn traced<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-3333333333333333-01").parse().expect("ascii"),
    );
    request
}

#[tokio::test]
async fn a_payment_becomes_a_balanced_ledger_entry_on_the_trace_of_the_original_call() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let mut ledger = LedgerHarness::start_on(&prefix, |_| {}).await;
    let mut payments = PaymentsHarness::start_with_prefix(&prefix).await;
    let posted = reader(&kafka_bootstrap(), &[&ledger.topic("ledger.entry_posted")]);

    let order = payments
        .client
        .create_order(traced(payments::CreateOrderRequest {
            customer_id: "cust-e2e".to_owned(),
            country: "FR".to_owned(),
            currency: "EUR".to_owned(),
            amount: 10_000,
            product_type: "standard".to_owned(),
        }))
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    let transaction = payments
        .client
        .create_transaction(traced(payments::CreateTransactionRequest {
            order_id: order.order_id.clone(),
            amount: 10_000,
            currency: "EUR".to_owned(),
            status: payments::TransactionStatus::Succeeded as i32,
        }))
        .await
        .expect("transaction")
        .into_inner()
        .transaction
        .expect("transaction");

    // Two entries: the sale (from tax.calculated) and the capture (from transactions.created).
    let records = read_records(&posted, 2, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 2, "two ledger.entry_posted");
    let mut entries = Vec::new();
    for record in &records {
        let traceparent = header(record, "traceparent").expect("traceparent");
        assert_eq!(
            telemetry::trace_id_of(&traceparent),
            Some(TRACE_ID),
            "payments -> tax -> ledger on one trace"
        );
        entries.push(ledger::Entry::decode(record.payload().expect("payload")).expect("entry"));
    }
    entries.sort_by(|left, right| right.entry_id.cmp(&left.entry_id));
    let ids: Vec<&str> = entries.iter().map(|entry| entry.entry_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("tax:{}", transaction.transaction_id),
            format!("capture:{}", transaction.transaction_id)
        ],
        "the sale and its cash"
    );
    let entry = entries[0].clone();

    // FR 20% inside the 10,000 that moved: 1,667 VAT + 8,333 net, recognised on the receivable;
    // the capture moves the 10,000 to settlement (ADR 0016).
    let mut debits: Vec<i64> = Vec::new();
    let mut credits: Vec<i64> = Vec::new();
    for line in &entry.lines {
        assert_eq!(line.currency, "EUR");
        match ledger::Side::try_from(line.side).expect("side") {
            ledger::Side::Debit => debits.push(line.amount),
            ledger::Side::Credit => credits.push(line.amount),
            ledger::Side::Unspecified => panic!("unspecified side"),
        }
    }
    credits.sort_unstable();
    assert_eq!(debits, [10_000]);
    assert_eq!(credits, [1_667, 8_333]);
    let capture = &entries[1];
    assert_eq!(
        capture.lines.iter().map(|line| line.amount).collect::<Vec<_>>(),
        [10_000, 10_000],
        "the capture moves exactly the money that moved"
    );

    let stored = ledger
        .client
        .get_entry(ledger::GetEntryRequest {
            entry_id: entry.entry_id.clone(),
        })
        .await
        .expect("get entry")
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(stored.lines, entry.lines);
    for currency in ledger.trial_balance().await {
        assert_eq!(currency.net, 0, "trial balance nets to zero in {}", currency.currency);
    }
    assert!(
        read_extra(&posted, Duration::from_secs(1)).await.is_empty(),
        "posted once"
    );
    payments.stop().await;
    ledger.stop().await;
    tax.stop().await;
}

#[tokio::test]
async fn a_refund_is_reversed_through_tax_and_the_ledger_returns_to_zero() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let ledger = LedgerHarness::start_on(&prefix, |_| {}).await;
    let mut payments = PaymentsHarness::start_with_prefix(&prefix).await;
    let posted = reader(&kafka_bootstrap(), &[&ledger.topic("ledger.entry_posted")]);

    let order = payments
        .client
        .create_order(payments::CreateOrderRequest {
            customer_id: "cust-refund".to_owned(),
            country: "PT".to_owned(),
            currency: "EUR".to_owned(),
            amount: 2_000,
            product_type: "standard".to_owned(),
        })
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    let transaction = payments
        .client
        .create_transaction(payments::CreateTransactionRequest {
            order_id: order.order_id.clone(),
            amount: 2_000,
            currency: "EUR".to_owned(),
            status: payments::TransactionStatus::Succeeded as i32,
        })
        .await
        .expect("transaction")
        .into_inner()
        .transaction
        .expect("transaction");
    let sale = read_records(&posted, 2, Duration::from_secs(60)).await;
    assert_eq!(sale.len(), 2, "the sale and its capture were posted");
    payments
        .client
        .update_transaction_status(payments::UpdateTransactionStatusRequest {
            transaction_id: transaction.transaction_id.clone(),
            expected_version: 1,
            status: payments::TransactionStatus::Refunded as i32,
        })
        .await
        .expect("refund");
    // The VAT reversal (tax.reversed) and the cash refund (transactions.updated).
    let reversal = read_records(&posted, 2, Duration::from_secs(60)).await;
    assert_eq!(reversal.len(), 2, "the reversal and the refund were posted");
    let mut entries: Vec<ledger::Entry> = reversal
        .iter()
        .map(|record| ledger::Entry::decode(record.payload().expect("payload")).expect("entry"))
        .collect();
    entries.sort_by(|left, right| right.entry_id.cmp(&left.entry_id));
    assert_eq!(
        entries.iter().map(|entry| entry.entry_id.clone()).collect::<Vec<_>>(),
        [
            format!("tax-reversal:{}", transaction.transaction_id),
            format!("refund:{}", transaction.transaction_id)
        ]
    );
    let amounts: Vec<i64> = entries[0].lines.iter().map(|line| line.amount).collect();
    assert_eq!(
        amounts.iter().sum::<i64>(),
        2 * 2_000,
        "PT 23% inside 2,000 (1,626 + 374) on each side"
    );

    // Every system account the sale and its cash touched is back to zero.
    for line in entries.iter().flat_map(|entry| &entry.lines) {
        assert_eq!(
            ledger.balance(&line.account_id).await.balance,
            0,
            "account {} back to 0",
            line.account_id
        );
    }
    for currency in ledger.trial_balance().await {
        assert_eq!(currency.net, 0);
    }
    assert!(
        read_extra(&posted, Duration::from_secs(1)).await.is_empty(),
        "one sale, one capture, one reversal, one refund"
    );
    payments.stop().await;
    ledger.stop().await;
    tax.stop().await;
}
