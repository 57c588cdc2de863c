//! Payments against the real PostgreSQL and broker: commands publish the full entity with
//! CloudEvents headers and the caller's trace, retries are idempotent, bad input changes nothing.

use std::time::Duration;

use fintech_platform::telemetry;
use fintech_proto::payments as pb;
use fintech_tests::payments::PaymentsHarness;
use fintech_tests::{header, read_extra, read_records, reader};
use prost::Message as _;
use rdkafka::Message as _;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

fn traced<T>(message: T, idempotency_key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-b7ad6b7169203331-01").parse().expect("ascii"),
    );
    if let Some(key) = idempotency_key {
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().expect("ascii"));
    }
    request
}

fn new_order() -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        customer_id: "cust-42".to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount: 12_345,
        product_type: "standard".to_owned(),
    }
}

async fn count_rows(harness: &PaymentsHarness) -> (i64, i64, i64) {
    let count = |table: &'static str| {
        let pool = harness.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    (
        count("orders").await,
        count("transactions").await,
        count("outbox").await,
    )
}

#[tokio::test]
async fn create_order_and_transaction_publish_their_full_state_with_the_callers_trace() {
    let _telemetry = telemetry::init("test");
    let mut harness = PaymentsHarness::start().await;
    let orders_topic = harness.topic("orders.created");
    let transactions_topic = harness.topic("transactions.created");
    let orders = reader(&fintech_tests::kafka_bootstrap(), &[&orders_topic]);
    let transactions = reader(&fintech_tests::kafka_bootstrap(), &[&transactions_topic]);

    let order = harness
        .client
        .create_order(traced(new_order(), None))
        .await
        .expect("create order")
        .into_inner();
    let order = order.order.expect("order");
    assert_eq!(order.version, 1);
    assert_eq!(
        (order.amount, order.currency.as_str(), order.country.as_str()),
        (12_345, "EUR", "DE")
    );
    let transaction = harness
        .client
        .create_transaction(traced(
            pb::CreateTransactionRequest {
                order_id: order.order_id.clone(),
                amount: 12_345,
                currency: "EUR".to_owned(),
                status: pb::TransactionStatus::Pending as i32,
            },
            None,
        ))
        .await
        .expect("create transaction")
        .into_inner()
        .transaction
        .expect("transaction");

    let read_order = harness
        .client
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(read_order, order, "GetOrder returns what CreateOrder returned");
    let read_transaction = harness
        .client
        .get_transaction(pb::GetTransactionRequest {
            transaction_id: transaction.transaction_id.clone(),
        })
        .await
        .expect("get transaction")
        .into_inner()
        .transaction
        .expect("transaction");
    assert_eq!(read_transaction, transaction);

    for (consumer, expected_type, key, value) in [
        (
            &orders,
            "fintech.payments.v1.order.created",
            &order.order_id,
            read_order.encode_to_vec(),
        ),
        (
            &transactions,
            "fintech.payments.v1.transaction.created",
            &order.order_id,
            read_transaction.encode_to_vec(),
        ),
    ] {
        let records = read_records(consumer, 1, Duration::from_secs(20)).await;
        assert_eq!(records.len(), 1, "one {expected_type} record");
        let record = &records[0];
        assert_eq!(record.key(), Some(key.as_bytes()), "record key is the order id");
        assert_eq!(
            record.payload(),
            Some(value.as_slice()),
            "the value is the full entity as read back"
        );
        assert_eq!(header(record, "ce_type").as_deref(), Some(expected_type));
        assert_eq!(header(record, "ce_source").as_deref(), Some("/fintech/payments"));
        assert_eq!(header(record, "ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(header(record, "content-type").as_deref(), Some("application/protobuf"));
        assert!(header(record, "ce_id").is_some() && header(record, "ce_time").is_some());
        let traceparent = header(record, "traceparent").expect("traceparent");
        assert_eq!(
            telemetry::trace_id_of(&traceparent),
            Some(TRACE_ID),
            "trace id of the gRPC call"
        );
        assert!(
            read_extra(consumer, Duration::from_millis(500)).await.is_empty(),
            "exactly one {expected_type}"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn a_retried_create_transaction_returns_the_same_transaction_and_emits_no_second_event() {
    let _telemetry = telemetry::init("test");
    let mut harness = PaymentsHarness::start().await;
    let transactions = reader(
        &fintech_tests::kafka_bootstrap(),
        &[&harness.topic("transactions.created")],
    );
    let order = harness
        .client
        .create_order(traced(new_order(), Some("order-key-1")))
        .await
        .expect("create");
    let order_id = order.into_inner().order.expect("order").order_id;
    let request = pb::CreateTransactionRequest {
        order_id: order_id.clone(),
        amount: 500,
        currency: "EUR".to_owned(),
        status: pb::TransactionStatus::Succeeded as i32,
    };
    let first = harness
        .client
        .create_transaction(traced(request.clone(), Some("txn-key-1")))
        .await
        .expect("first")
        .into_inner();
    let retry = harness
        .client
        .create_transaction(traced(request.clone(), Some("txn-key-1")))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, retry, "the retry gets the stored response");

    let other = pb::CreateTransactionRequest { amount: 501, ..request };
    let status = harness
        .client
        .create_transaction(traced(other, Some("txn-key-1")))
        .await
        .expect_err("reused key");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("txn-key-1"), "{}", status.message());

    let records = read_records(&transactions, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1);
    assert!(
        read_extra(&transactions, Duration::from_secs(2)).await.is_empty(),
        "no second event"
    );
    assert_eq!(
        count_rows(&harness).await,
        (1, 1, 2),
        "one order, one transaction, two outbox rows"
    );
    harness.stop().await;
}

fn bad_field(status: &tonic::Status) -> Vec<String> {
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

#[tokio::test]
async fn every_rejected_input_is_named_and_leaves_no_row_and_no_event() {
    let _telemetry = telemetry::init("test");
    let mut harness = PaymentsHarness::start().await;
    let valid = new_order();
    let cases: Vec<(pb::CreateOrderRequest, &str)> = vec![
        (
            pb::CreateOrderRequest {
                country: "XX".to_owned(),
                ..valid.clone()
            },
            "country",
        ),
        (
            pb::CreateOrderRequest {
                country: "de".to_owned(),
                ..valid.clone()
            },
            "country",
        ),
        (
            pb::CreateOrderRequest {
                currency: "EURO".to_owned(),
                ..valid.clone()
            },
            "currency",
        ),
        (
            pb::CreateOrderRequest {
                currency: "ABC".to_owned(),
                ..valid.clone()
            },
            "currency",
        ),
        (
            pb::CreateOrderRequest {
                amount: 0,
                ..valid.clone()
            },
            "amount",
        ),
        (
            pb::CreateOrderRequest {
                amount: -5,
                ..valid.clone()
            },
            "amount",
        ),
        (
            pb::CreateOrderRequest {
                customer_id: String::new(),
                ..valid.clone()
            },
            "customer_id",
        ),
        (
            pb::CreateOrderRequest {
                customer_id: "c".repeat(65),
                ..valid.clone()
            },
            "customer_id",
        ),
        (
            pb::CreateOrderRequest {
                product_type: "x".repeat(65),
                ..valid.clone()
            },
            "product_type",
        ),
        (
            pb::CreateOrderRequest {
                product_type: "Crypto".to_owned(),
                ..valid.clone()
            },
            "product_type",
        ),
    ];
    for (request, field) in cases {
        let status = harness
            .client
            .create_order(request.clone())
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert_eq!(bad_field(&status), [field], "{request:?}: {}", status.message());
    }

    let order_id = harness
        .client
        .create_order(valid)
        .await
        .expect("valid order")
        .into_inner()
        .order
        .expect("o")
        .order_id;
    let before = count_rows(&harness).await;
    let transaction_cases: Vec<(pb::CreateTransactionRequest, Code, Option<&str>)> = vec![
        (
            pb::CreateTransactionRequest {
                order_id: String::new(),
                amount: 1,
                currency: "EUR".into(),
                status: 0,
            },
            Code::InvalidArgument,
            Some("order_id"),
        ),
        (
            pb::CreateTransactionRequest {
                order_id: "not-a-uuid".into(),
                amount: 1,
                currency: "EUR".into(),
                status: 0,
            },
            Code::InvalidArgument,
            Some("order_id"),
        ),
        (
            pb::CreateTransactionRequest {
                order_id: order_id.clone(),
                amount: 0,
                currency: "EUR".into(),
                status: 0,
            },
            Code::InvalidArgument,
            Some("amount"),
        ),
        (
            pb::CreateTransactionRequest {
                order_id: order_id.clone(),
                amount: 1,
                currency: "EU".into(),
                status: 0,
            },
            Code::InvalidArgument,
            Some("currency"),
        ),
        (
            pb::CreateTransactionRequest {
                order_id: order_id.clone(),
                amount: 1,
                currency: "EUR".into(),
                status: 99,
            },
            Code::InvalidArgument,
            Some("status"),
        ),
        (
            pb::CreateTransactionRequest {
                order_id: order_id.clone(),
                amount: 1,
                currency: "EUR".into(),
                status: pb::TransactionStatus::Refunded as i32,
            },
            Code::InvalidArgument,
            Some("status"),
        ),
        (
            pb::CreateTransactionRequest {
                order_id: uuid::Uuid::new_v4().to_string(),
                amount: 1,
                currency: "EUR".into(),
                status: 0,
            },
            Code::NotFound,
            None,
        ),
        (
            pb::CreateTransactionRequest {
                order_id: order_id.clone(),
                amount: 1,
                currency: "USD".into(),
                status: 0,
            },
            Code::FailedPrecondition,
            None,
        ),
    ];
    for (request, code, field) in transaction_cases {
        let status = harness
            .client
            .create_transaction(request.clone())
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), code, "{request:?}: {}", status.message());
        if let Some(field) = field {
            assert_eq!(bad_field(&status), [field], "{request:?}");
        }
    }
    let status = harness
        .client
        .get_order(pb::GetOrderRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    let status = harness
        .client
        .get_order(pb::GetOrderRequest {
            order_id: String::new(),
        })
        .await
        .expect_err("empty");
    assert_eq!(bad_field(&status), ["order_id"]);
    let mut bad_key = Request::new(new_order());
    bad_key
        .metadata_mut()
        .insert("idempotency-key", "".parse().expect("ascii"));
    let status = harness.client.create_order(bad_key).await.expect_err("bad key");
    assert_eq!(bad_field(&status), ["idempotency-key"]);

    assert_eq!(count_rows(&harness).await, before, "rejected requests wrote nothing");
    assert_eq!(before, (1, 0, 1));
    harness.stop().await;
}

#[tokio::test]
async fn updates_use_optimistic_versions_and_the_transaction_lifecycle() {
    let _telemetry = telemetry::init("test");
    let mut harness = PaymentsHarness::start().await;
    let updates = reader(&fintech_tests::kafka_bootstrap(), &[&harness.topic("orders.updated")]);
    let order = harness
        .client
        .create_order(new_order())
        .await
        .expect("create")
        .into_inner()
        .order
        .expect("order");

    let updated = harness
        .client
        .update_order(pb::UpdateOrderRequest {
            order_id: order.order_id.clone(),
            expected_version: 1,
            amount: Some(999),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(
        (updated.version, updated.amount, updated.created_at),
        (2, 999, order.created_at)
    );
    let stale = harness
        .client
        .update_order(pb::UpdateOrderRequest {
            order_id: order.order_id.clone(),
            expected_version: 1,
            amount: Some(5),
            ..Default::default()
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted, "{}", stale.message());
    let records = read_records(&updates, 1, Duration::from_secs(20)).await;
    assert_eq!(
        pb::Order::decode(records[0].payload().expect("payload")).expect("order"),
        updated
    );

    let transaction = harness
        .client
        .create_transaction(pb::CreateTransactionRequest {
            order_id: order.order_id.clone(),
            amount: 999,
            currency: "EUR".to_owned(),
            status: 0,
        })
        .await
        .expect("create")
        .into_inner()
        .transaction
        .expect("transaction");
    assert_eq!(
        transaction.status,
        pb::TransactionStatus::Pending as i32,
        "unspecified means pending"
    );
    let change = |version: i64, status: pb::TransactionStatus| pb::UpdateTransactionStatusRequest {
        transaction_id: transaction.transaction_id.clone(),
        expected_version: version,
        status: status as i32,
    };
    let illegal = harness
        .client
        .update_transaction_status(change(1, pb::TransactionStatus::Refunded))
        .await
        .expect_err("pending cannot be refunded");
    assert_eq!(illegal.code(), Code::FailedPrecondition);
    let succeeded = harness
        .client
        .update_transaction_status(change(1, pb::TransactionStatus::Succeeded))
        .await
        .expect("succeed")
        .into_inner()
        .transaction
        .expect("transaction");
    assert_eq!(
        (succeeded.version, succeeded.status),
        (2, pb::TransactionStatus::Succeeded as i32)
    );
    let refunded = harness
        .client
        .update_transaction_status(change(2, pb::TransactionStatus::Refunded))
        .await
        .expect("refund")
        .into_inner()
        .transaction
        .expect("transaction");
    assert_eq!(refunded.version, 3);
    let after_terminal = harness
        .client
        .update_transaction_status(change(3, pb::TransactionStatus::Succeeded))
        .await
        .expect_err("refunded is terminal");
    assert_eq!(after_terminal.code(), Code::FailedPrecondition);
    harness.stop().await;
}

#[tokio::test]
async fn lists_are_paginated_and_tokens_are_validated() {
    let _telemetry = telemetry::init("test");
    let mut harness = PaymentsHarness::start().await;
    let mut created = Vec::new();
    for amount in 1..=5 {
        let order = harness
            .client
            .create_order(pb::CreateOrderRequest { amount, ..new_order() })
            .await
            .expect("create")
            .into_inner()
            .order
            .expect("order");
        created.push(order.order_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = harness
            .client
            .list_orders(pb::ListOrdersRequest {
                customer_id: "cust-42".to_owned(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.orders.len() <= 2);
        seen.extend(page.orders.into_iter().map(|order| order.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    created.reverse();
    assert_eq!(seen, created, "every order once, newest first");
    let bad = harness
        .client
        .list_orders(pb::ListOrdersRequest {
            customer_id: "cust-42".to_owned(),
            page_size: 2,
            page_token: "nope".to_owned(),
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad_field(&bad), ["page_token"]);
    harness.stop().await;
}
