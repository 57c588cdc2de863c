//! Tax against the real PostgreSQL and broker, driven through payments where possible: results
//! carry the caller's trace, out-of-order events are parked then calculated, missing orders fail
//! after the deadline, duplicates change nothing, malformed records are dead-lettered, failures
//! can be listed and retried, quotes store nothing.

use std::collections::HashMap;
use std::time::Duration;

use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::telemetry::{self, TraceHeaders};
use fintech_proto::{payments, tax as pb};
use fintech_tests::payments::{PaymentsHarness, unique_prefix};
use fintech_tests::tax::TaxHarness;
use fintech_tests::{header, kafka_bootstrap, read_extra, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;
use tonic::{Code, Request};

const TRACE_ID: &str = "5e1b5f3f9a2d4c7e8b6a0d1c2f3e4a5b";

fn traced<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-1111111111111111-01").parse().expect("ascii"),
    );
    request
}

fn order(order_id: &str, country: &str, product_type: &str, version: i64) -> payments::Order {
    let now = prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 0,
    };
    payments::Order {
        order_id: order_id.to_owned(),
        customer_id: "cust-7".to_owned(),
        country: country.to_owned(),
        currency: "EUR".to_owned(),
        amount: 10_000,
        product_type: product_type.to_owned(),
        created_at: Some(now),
        updated_at: Some(now),
        version,
    }
}

fn transaction(transaction_id: &str, order_id: &str, amount: i64) -> payments::Transaction {
    // 2026-09-21: a 2026 tax date.
    let at = prost_types::Timestamp {
        seconds: 1_790_000_100,
        nanos: 0,
    };
    payments::Transaction {
        transaction_id: transaction_id.to_owned(),
        order_id: order_id.to_owned(),
        customer_id: "cust-7".to_owned(),
        amount,
        status: payments::TransactionStatus::Pending as i32,
        created_at: Some(at),
        updated_at: Some(at),
        version: 1,
        currency: "EUR".to_owned(),
        // No version: taxed on the latest cached order, as events written before the field were.
        order_version: 0,
    }
}

/// Publishes an event the way payments' outbox relay does (same headers), with a chosen `ce_id`.
async fn publish(
    producer: &EventProducer,
    topic: &str,
    key: &str,
    event_type: &str,
    payload: &impl prost::Message,
    id: &str,
) {
    let payload_type = if event_type.contains("order") {
        "fintech.payments.v1.Order"
    } else {
        "fintech.payments.v1.Transaction"
    };
    let metadata = EventMetadata {
        id: id.to_owned(),
        event_type: event_type.to_owned(),
        source: "/fintech/payments".to_owned(),
        time: chrono::Utc::now(),
        subject: Some(key.to_owned()),
        payload_type: payload_type.to_owned(),
        trace: TraceHeaders {
            traceparent: Some(format!("00-{TRACE_ID}-2222222222222222-01")),
            tracestate: None,
        },
    };
    producer
        .send_event(topic, key, &payload.encode_to_vec(), &metadata)
        .await
        .expect("publish");
}

fn producer() -> EventProducer {
    EventProducer::new(&kafka_bootstrap(), "tax-test-producer", Duration::from_secs(10)).expect("producer")
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn an_order_and_transaction_through_payments_yield_one_tax_calculated_on_the_same_trace() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let mut tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let mut payments = PaymentsHarness::start_with_prefix(&prefix).await;
    let calculated = reader(&kafka_bootstrap(), &[&tax.topic("tax.calculated")]);

    let created = payments
        .client
        .create_order(traced(payments::CreateOrderRequest {
            customer_id: "cust-9".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 12_345,
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
            order_id: created.order_id.clone(),
            amount: 12_345,
            currency: "EUR".to_owned(),
            status: payments::TransactionStatus::Succeeded as i32,
        }))
        .await
        .expect("transaction")
        .into_inner()
        .transaction
        .expect("transaction");

    let records = read_records(&calculated, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1, "one tax.calculated");
    let record = &records[0];
    let published = pb::TaxedTransaction::decode(record.payload().expect("payload")).expect("decodes");
    assert_eq!(published.transaction_id, transaction.transaction_id);
    // The amount is gross (ADR 0016): DE 19% VAT inside 123.45 EUR = 12345 * 19 / 119 = 19.7105
    // -> 19.71 (half away from zero), 103.74 net.
    assert_eq!(
        (published.base_amount, published.tax_applied, published.total_amount),
        (10_374, 1_971, 12_345)
    );
    assert_eq!(published.order_version, 1, "taxed on the order version it paid for");
    assert_eq!(
        (published.tax_rate_bps, published.reason),
        (1900, pb::TaxReason::StandardRate as i32)
    );
    assert_eq!((published.country.as_str(), published.currency.as_str()), ("DE", "EUR"));
    assert_eq!(record.key(), Some(created.order_id.as_bytes()));
    assert_eq!(
        header(record, "ce_type").as_deref(),
        Some("fintech.tax.v1.tax.calculated")
    );
    let traceparent = header(record, "traceparent").expect("traceparent");
    assert_eq!(
        telemetry::trace_id_of(&traceparent),
        Some(TRACE_ID),
        "trace of the CreateTransaction call"
    );

    let stored = tax
        .client
        .get_taxed_transaction(pb::GetTaxedTransactionRequest {
            transaction_id: transaction.transaction_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .taxed_transaction
        .expect("stored");
    assert_eq!(stored, published, "GetTaxedTransaction returns what was published");
    let listed = tax
        .client
        .list_taxed_transactions(pb::ListTaxedTransactionsRequest {
            customer_id: "cust-9".to_owned(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.taxed_transactions, [published]);
    assert!(
        read_extra(&calculated, Duration::from_secs(1)).await.is_empty(),
        "exactly one"
    );
    payments.stop().await;
    tax.stop().await;
}

#[tokio::test]
async fn a_transaction_before_its_order_is_parked_then_calculated_and_an_orphan_fails_after_the_deadline() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let mut tax = TaxHarness::start(&prefix, Duration::from_secs(3)).await;
    let calculated = reader(&kafka_bootstrap(), &[&tax.topic("tax.calculated")]);
    let failed = reader(&kafka_bootstrap(), &[&tax.topic("tax.failed")]);
    let producer = producer();

    let (order_id, transaction_id) = (new_id(), new_id());
    let orphan_order_id = new_id();
    let orphan_id = new_id();
    let txn_topic = tax.topic("transactions.created");
    publish(
        &producer,
        &txn_topic,
        &order_id,
        "fintech.payments.v1.transaction.created",
        &transaction(&transaction_id, &order_id, 10_000),
        &new_id(),
    )
    .await;
    publish(
        &producer,
        &txn_topic,
        &orphan_order_id,
        "fintech.payments.v1.transaction.created",
        &transaction(&orphan_id, &orphan_order_id, 500),
        &new_id(),
    )
    .await;

    // Both wait, durably, for their orders.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_transactions")
            .fetch_one(&tax.db.pool)
            .await
            .expect("count");
        if parked == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "transactions were not parked ({parked})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    publish(
        &producer,
        &tax.topic("orders.created"),
        &order_id,
        "fintech.payments.v1.order.created",
        &order(&order_id, "FR", "standard", 1),
        &new_id(),
    )
    .await;
    let records = read_records(&calculated, 1, Duration::from_secs(20)).await;
    assert_eq!(
        records.len(),
        1,
        "the parked transaction was calculated once its order arrived"
    );
    let taxed = pb::TaxedTransaction::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(
        (taxed.transaction_id.as_str(), taxed.tax_applied, taxed.tax_rate_bps),
        (transaction_id.as_str(), 1_667, 2000)
    );
    assert_eq!(
        telemetry::trace_id_of(&header(&records[0], "traceparent").expect("traceparent")),
        Some(TRACE_ID)
    );

    let records = read_records(&failed, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "the orphan failed after the deadline");
    let failure = pb::TaxFailure::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(failure.transaction_id, orphan_id);
    assert_eq!(failure.reason, pb::TaxFailureReason::OrderNotFound as i32);
    assert_eq!(failure.attempts, 1);
    assert_eq!(
        payments::Transaction::decode(failure.original_event.as_slice()).expect("original event"),
        transaction(&orphan_id, &orphan_order_id, 500)
    );

    // The order turns up late: the failure is re-taxed when it arrives (ADR 0017), and an
    // operator has nothing left to retry.
    let listed = tax
        .client
        .list_failed(pb::ListFailedRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.failures.len(), 1);
    publish(
        &producer,
        &tax.topic("orders.created"),
        &orphan_order_id,
        "fintech.payments.v1.order.created",
        &order(&orphan_order_id, "IT", "standard", 1),
        &new_id(),
    )
    .await;
    let records = read_records(&calculated, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "the late order re-taxed its failed transaction");
    let retaxed = pb::TaxedTransaction::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(
        (retaxed.transaction_id.as_str(), retaxed.tax_applied),
        (orphan_id.as_str(), 90),
        "IT 22% inside 500: 500 * 22 / 122 = 90.16"
    );
    let retried = tax
        .client
        .retry_failed(pb::RetryFailedRequest {
            transaction_id: orphan_id.clone(),
        })
        .await
        .expect_err("nothing to retry");
    assert_eq!(retried.code(), Code::NotFound);
    let listed = tax
        .client
        .list_failed(pb::ListFailedRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.failures.is_empty(),
        "the re-taxed transaction is no longer failed"
    );
    tax.stop().await;
}

#[tokio::test]
async fn events_delivered_twice_yield_one_result_and_malformed_records_are_dead_lettered() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let calculated = reader(&kafka_bootstrap(), &[&tax.topic("tax.calculated")]);
    let dead = reader(&kafka_bootstrap(), &[&tax.topic("tax.dlq")]);
    let producer = producer();
    let order_id = new_id();
    let order_event_id = new_id();
    let orders_topic = tax.topic("orders.created");
    let txn_topic = tax.topic("transactions.created");

    // A malformed record on each input topic, ahead of the good ones on the same key/partition.
    producer
        .send_raw(
            &orders_topic,
            order_id.as_bytes(),
            b"\xff\xff not protobuf",
            rdkafka::message::OwnedHeaders::new(),
        )
        .await
        .expect("garbage order");
    publish(
        &producer,
        &txn_topic,
        &order_id,
        "fintech.payments.v1.transaction.created",
        &payments::Order::default(),
        &new_id(),
    )
    .await;

    publish(
        &producer,
        &orders_topic,
        &order_id,
        "fintech.payments.v1.order.created",
        &order(&order_id, "AT", "standard", 1),
        &order_event_id,
    )
    .await;
    publish(
        &producer,
        &orders_topic,
        &order_id,
        "fintech.payments.v1.order.created",
        &order(&order_id, "AT", "standard", 1),
        &order_event_id,
    )
    .await;
    let transaction_ids: Vec<String> = (0..3).map(|_| new_id()).collect();
    for transaction_id in &transaction_ids {
        let event_id = new_id();
        let event = transaction(transaction_id, &order_id, 1_000);
        publish(
            &producer,
            &txn_topic,
            &order_id,
            "fintech.payments.v1.transaction.created",
            &event,
            &event_id,
        )
        .await;
        publish(
            &producer,
            &txn_topic,
            &order_id,
            "fintech.payments.v1.transaction.created",
            &event,
            &event_id,
        )
        .await;
    }
    // The same transaction again under a new event id (e.g. a replayed outbox row) changes nothing.
    publish(
        &producer,
        &txn_topic,
        &order_id,
        "fintech.payments.v1.transaction.created",
        &transaction(&transaction_ids[0], &order_id, 1_000),
        &new_id(),
    )
    .await;

    let records = read_records(&calculated, 3, Duration::from_secs(30)).await;
    let mut extra = read_extra(&calculated, Duration::from_secs(3)).await;
    let mut all = records;
    all.append(&mut extra);
    let mut per_transaction: HashMap<String, usize> = HashMap::new();
    for record in &all {
        let taxed = pb::TaxedTransaction::decode(record.payload().expect("payload")).expect("decodes");
        assert_eq!(taxed.tax_applied, 167, "AT 20% inside 1000: 1000 * 20 / 120 = 166.67");
        *per_transaction.entry(taxed.transaction_id).or_default() += 1;
    }
    assert_eq!(per_transaction.len(), 3);
    assert!(per_transaction.values().all(|count| *count == 1), "{per_transaction:?}");

    let dead_letters = read_records(&dead, 2, Duration::from_secs(20)).await;
    assert_eq!(dead_letters.len(), 2, "one dead letter per malformed record");
    for record in &dead_letters {
        assert!(header(record, "dlq_reason").is_some_and(|reason| !reason.is_empty()));
    }
    tax.stop().await;
}

#[tokio::test]
async fn unsupported_countries_fail_with_a_reason_and_quotes_store_nothing() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let mut tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let failed = reader(&kafka_bootstrap(), &[&tax.topic("tax.failed")]);
    let producer = producer();
    let (order_id, transaction_id) = (new_id(), new_id());
    publish(
        &producer,
        &tax.topic("orders.created"),
        &order_id,
        "fintech.payments.v1.order.created",
        &order(&order_id, "US", "standard", 1),
        &new_id(),
    )
    .await;
    publish(
        &producer,
        &tax.topic("transactions.created"),
        &order_id,
        "fintech.payments.v1.transaction.created",
        &transaction(&transaction_id, &order_id, 700),
        &new_id(),
    )
    .await;
    let records = read_records(&failed, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    let failure = pb::TaxFailure::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(
        failure.reason,
        pb::TaxFailureReason::UnsupportedCountry as i32,
        "never a silent zero"
    );
    let retried = tax
        .client
        .retry_failed(pb::RetryFailedRequest {
            transaction_id: transaction_id.clone(),
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.failure.expect("still failing").attempts, 2);

    let quote = tax
        .client
        .quote_tax(pb::QuoteTaxRequest {
            country: "NL".to_owned(),
            product_type: "standard".to_owned(),
            amount: 1_000,
            currency: "EUR".to_owned(),
            tax_date: None,
        })
        .await
        .expect("quote")
        .into_inner();
    assert_eq!(
        (quote.tax_applied, quote.total_amount, quote.tax_rate_bps),
        (210, 1_210, 2100)
    );
    let exempt = tax
        .client
        .quote_tax(pb::QuoteTaxRequest {
            country: "NL".to_owned(),
            product_type: "crypto".to_owned(),
            amount: 1_000,
            currency: "EUR".to_owned(),
            tax_date: None,
        })
        .await
        .expect("quote")
        .into_inner();
    assert_eq!((exempt.tax_applied, exempt.reason), (0, pb::TaxReason::Exempt as i32));
    let unsupported = tax
        .client
        .quote_tax(pb::QuoteTaxRequest {
            country: "US".to_owned(),
            product_type: "standard".to_owned(),
            amount: 1_000,
            currency: "USD".to_owned(),
            tax_date: None,
        })
        .await
        .expect_err("no rule");
    assert_eq!(unsupported.code(), Code::InvalidArgument);
    let bad = tax
        .client
        .quote_tax(pb::QuoteTaxRequest {
            country: "ZZ".to_owned(),
            amount: -1,
            ..Default::default()
        })
        .await
        .expect_err("bad input");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM taxed_transactions")
        .fetch_one(&tax.db.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0, "quotes and failures store no result");
    tax.stop().await;
}

#[tokio::test]
async fn a_refund_reverses_the_vat_once_and_a_failure_before_creation_voids_the_transaction() {
    let _telemetry = telemetry::init("test");
    let prefix = unique_prefix();
    let tax = TaxHarness::start(&prefix, Duration::from_secs(60)).await;
    let mut payments = PaymentsHarness::start_with_prefix(&prefix).await;
    let calculated = reader(&kafka_bootstrap(), &[&tax.topic("tax.calculated")]);
    let reversed = reader(&kafka_bootstrap(), &[&tax.topic("tax.reversed")]);

    // Through payments: succeeded, taxed, then refunded (twice delivered changes nothing).
    let created_order = payments
        .client
        .create_order(payments::CreateOrderRequest {
            customer_id: "cust-refund".to_owned(),
            country: "BE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 5_000,
            product_type: "standard".to_owned(),
        })
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order");
    let refunded = payments
        .client
        .create_transaction(payments::CreateTransactionRequest {
            order_id: created_order.order_id.clone(),
            amount: 5_000,
            currency: "EUR".to_owned(),
            status: payments::TransactionStatus::Succeeded as i32,
        })
        .await
        .expect("transaction")
        .into_inner()
        .transaction
        .expect("transaction");
    let records = read_records(&calculated, 1, Duration::from_secs(30)).await;
    let taxed = pb::TaxedTransaction::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(taxed.tax_applied, 868, "BE 21% inside 5000: 5000 * 21 / 121 = 867.77");
    payments
        .client
        .update_transaction_status(payments::UpdateTransactionStatusRequest {
            transaction_id: refunded.transaction_id.clone(),
            expected_version: 1,
            status: payments::TransactionStatus::Refunded as i32,
        })
        .await
        .expect("refund");
    let records = read_records(&reversed, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1, "one tax.reversed");
    let reversal = pb::TaxReversal::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(reversal.transaction_id, refunded.transaction_id);
    assert_eq!(
        (reversal.base_amount, reversal.tax_reversed, reversal.total_amount),
        (4_132, 868, 5_000)
    );
    assert_eq!(reversal.reason, pb::TaxReversalReason::TransactionRefunded as i32);
    assert_eq!(reversal.transaction_version, 2);

    // Out of order: the failure arrives before the creation; the transaction is never taxed.
    let producer = producer();
    let (order_id, transaction_id) = (new_id(), new_id());
    let mut failed = transaction_event_with_status(&transaction_id, &order_id, payments::TransactionStatus::Failed);
    failed.version = 2;
    publish(
        &producer,
        &tax.topic("transactions.updated"),
        &order_id,
        "fintech.payments.v1.transaction.updated",
        &failed,
        &new_id(),
    )
    .await;
    // Topics are not ordered with each other: wait until the failure was handled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let voided_query = format!("SELECT count(*) FROM tax_reversals WHERE transaction_id = '{transaction_id}'");
    while sqlx::query_scalar::<_, i64>(&voided_query)
        .fetch_one(&tax.db.pool)
        .await
        .expect("count")
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the failure was never handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(
        &producer,
        &tax.topic("orders.created"),
        &order_id,
        "fintech.payments.v1.order.created",
        &order(&order_id, "DE", "standard", 1),
        &new_id(),
    )
    .await;
    publish(
        &producer,
        &tax.topic("transactions.created"),
        &order_id,
        "fintech.payments.v1.transaction.created",
        &transaction(&transaction_id, &order_id, 800),
        &new_id(),
    )
    .await;
    // A later, unrelated transaction on the same order proves the stream was processed past it.
    let marker_id = new_id();
    publish(
        &producer,
        &tax.topic("transactions.created"),
        &order_id,
        "fintech.payments.v1.transaction.created",
        &transaction(&marker_id, &order_id, 100),
        &new_id(),
    )
    .await;
    let records = read_records(&calculated, 1, Duration::from_secs(30)).await;
    let marker = pb::TaxedTransaction::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(
        marker.transaction_id, marker_id,
        "the voided transaction produced no tax.calculated"
    );
    assert!(read_extra(&calculated, Duration::from_secs(1)).await.is_empty());
    assert!(
        read_extra(&reversed, Duration::from_secs(1)).await.is_empty(),
        "nothing to reverse for a voided one"
    );
    payments.stop().await;
    tax.stop().await;
}

fn transaction_event_with_status(
    transaction_id: &str,
    order_id: &str,
    status: payments::TransactionStatus,
) -> payments::Transaction {
    payments::Transaction {
        status: status as i32,
        ..transaction(transaction_id, order_id, 800)
    }
}
