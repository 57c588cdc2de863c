//! Timeouts everywhere (ADR 0017), against the real PostgreSQL: a request's `grpc-timeout` bounds
//! its database work (DEADLINE_EXCEEDED, and PostgreSQL stops waiting too), a lock wait past the
//! pool's `lock_timeout` is ABORTED, a statement past `statement_timeout` is DEADLINE_EXCEEDED, and
//! in every case nothing was written: no new order version, no outbox row, no stored answer under
//! the idempotency key (a retry with the same key then succeeds).

use std::time::Duration;

use fintech_payments::Payments;
use fintech_platform::db::DbTimeouts;
use fintech_platform::kit::Service as _;
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use fintech_tests::payments::{PaymentsHarness, config, unique_prefix};
use sqlx::{Connection, PgConnection};
use tonic::{Code, Request};

async fn start(timeouts: DbTimeouts) -> PaymentsHarness {
    PaymentsHarness::launch(
        "payments",
        &unique_prefix(),
        &fintech_payments::events::TOPICS,
        |platform, db, prefix| {
            let mut config = config(platform, db, prefix);
            config.platform.database_timeouts = timeouts;
            config
        },
        Payments::run,
        PaymentsServiceClient::new,
    )
    .await
}

async fn create_order(payments: &PaymentsHarness) -> pb::Order {
    payments
        .client
        .clone()
        .create_order(pb::CreateOrderRequest {
            customer_id: "cust-timeouts".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 5_000,
            product_type: "standard".to_owned(),
        })
        .await
        .expect("create order")
        .into_inner()
        .order
        .expect("order")
}

fn update(order: &pb::Order, key: &str, timeout: Option<Duration>) -> Request<pb::UpdateOrderRequest> {
    let mut request = Request::new(pb::UpdateOrderRequest {
        order_id: order.order_id.clone(),
        expected_version: order.version,
        country: None,
        amount: Some(6_000),
        product_type: None,
    });
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().expect("ascii"));
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Holds the row lock of `order` on a connection of its own until the returned connection's
/// transaction ends.
async fn lock_order(payments: &PaymentsHarness, order: &pb::Order) -> PgConnection {
    let mut holder = PgConnection::connect(&payments.db.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut holder).await.expect("begin");
    sqlx::query("SELECT 1 FROM orders WHERE order_id = $1::uuid FOR UPDATE")
        .bind(&order.order_id)
        .execute(&mut holder)
        .await
        .expect("lock the order row");
    holder
}

async fn count(payments: &PaymentsHarness, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&payments.db.pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Nothing of the refused update is stored: version 1, one outbox row (the creation), no answer.
async fn assert_nothing_written(payments: &PaymentsHarness, order: &pb::Order) {
    let stored = payments
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order");
    assert_eq!((stored.version, stored.amount), (1, 5_000), "the order is unchanged");
    assert_eq!(
        count(payments, "SELECT count(*) FROM outbox").await,
        1,
        "only the creation's event"
    );
    assert_eq!(
        count(
            payments,
            "SELECT count(*) FROM idempotency_keys WHERE scope LIKE '%UpdateOrder'"
        )
        .await,
        0,
        "no answer stored under the key"
    );
}

/// Statements of the service still waiting for a lock in its database.
async fn lock_waiters(payments: &PaymentsHarness) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    )
    .bind(&payments.db.name)
    .fetch_one(&payments.db.pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deadline_bounds_its_lock_wait_in_the_database_and_writes_nothing() {
    // The pool's own limits are far away: only the request's deadline can end the wait.
    let payments = start(DbTimeouts {
        statement: Duration::from_secs(120),
        lock: Duration::from_secs(120),
        idle_in_transaction: Duration::from_secs(120),
    })
    .await;
    let order = create_order(&payments).await;
    let mut holder = lock_order(&payments, &order).await;

    let status = payments
        .client
        .clone()
        .update_order(update(&order, "deadline-1", Some(Duration::from_millis(800))))
        .await
        .expect_err("the update cannot get the lock");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // PostgreSQL stopped waiting for the lock too (statement_timeout from the deadline), long
    // before the pool's 120 s limits: nothing of the request lives on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while lock_waiters(&payments).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update still waits in PostgreSQL after its deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("release");
    assert_nothing_written(&payments, &order).await;

    // The key was not used up: the same request now succeeds.
    let updated = payments
        .client
        .clone()
        .update_order(update(&order, "deadline-1", Some(Duration::from_secs(10))))
        .await
        .expect("the retry succeeds")
        .into_inner()
        .order
        .expect("order");
    assert_eq!((updated.version, updated.amount), (2, 6_000));
    payments.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_past_lock_timeout_is_aborted_and_writes_nothing() {
    let payments = start(DbTimeouts {
        lock: Duration::from_millis(300),
        ..DbTimeouts::default()
    })
    .await;
    let order = create_order(&payments).await;
    let mut holder = lock_order(&payments, &order).await;
    let status = payments
        .client
        .clone()
        .update_order(update(&order, "lock-1", None))
        .await
        .expect_err("the lock is held");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("release");
    assert_nothing_written(&payments, &order).await;
    payments.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_statement_timeout_is_deadline_exceeded_and_writes_nothing() {
    let payments = start(DbTimeouts {
        statement: Duration::from_millis(300),
        lock: Duration::from_secs(60),
        ..DbTimeouts::default()
    })
    .await;
    let order = create_order(&payments).await;
    let mut holder = lock_order(&payments, &order).await;
    let status = payments
        .client
        .clone()
        .update_order(update(&order, "statement-1", None))
        .await
        .expect_err("the statement runs too long");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.expect("release");
    assert_nothing_written(&payments, &order).await;
    payments.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tax_handler_waiting_for_an_order_lock_gives_up_retries_and_applies_once_the_lock_is_free() {
    use fintech_platform::kafka::{EventMetadata, EventProducer};
    use fintech_tests::kafka_bootstrap;
    use fintech_tests::tax::TaxHarness;
    use prost::Message as _;

    let tax = TaxHarness::start_with(&unique_prefix(), |config| {
        config.platform.database_timeouts.lock = Duration::from_millis(300);
    })
    .await;
    let order_id = uuid::Uuid::new_v4().to_string();
    // Another session holds the order's advisory lock (the lock tax serializes an order's work with).
    let mut holder = PgConnection::connect(&tax.db.url).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1::uuid::text, 7))")
        .bind(&order_id)
        .execute(&mut holder)
        .await
        .expect("take the order's lock");

    let at = prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 0,
    };
    let order = pb::Order {
        order_id: order_id.clone(),
        customer_id: "cust-lock".to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount: 1_000,
        product_type: "standard".to_owned(),
        created_at: Some(at),
        updated_at: Some(at),
        version: 1,
    };
    let metadata = EventMetadata {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: "fintech.payments.v1.order.created".to_owned(),
        source: "/fintech/payments".to_owned(),
        time: chrono::Utc::now(),
        subject: Some(order_id.clone()),
        payload_type: "fintech.payments.v1.Order".to_owned(),
        trace: Default::default(),
    };
    EventProducer::new(&kafka_bootstrap(), "test-lock", Duration::from_secs(20))
        .expect("producer")
        .send_event(
            &tax.topic("orders.created"),
            &order_id,
            &order.encode_to_vec(),
            &metadata,
        )
        .await
        .expect("produce");

    // While the lock is held the handler's waits keep ending (lock_timeout) and it retries: no
    // session of tax waits on a lock for long, and nothing is applied.
    let mut saw_a_wait = false;
    for _ in 0..30 {
        let (waiting, long_waiting): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE now() - query_start > interval '3 seconds') \
             FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&tax.db.name)
        .fetch_one(&tax.db.pool)
        .await
        .expect("pg_stat_activity");
        saw_a_wait |= waiting > 0;
        assert_eq!(long_waiting, 0, "a tax session waits on the advisory lock for ever");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_a_wait, "the handler did try to take the order's lock");
    let cached = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM order_cache WHERE id = $1::uuid")
            .bind(&order_id)
            .fetch_one(&tax.db.pool)
            .await
            .expect("count")
    };
    assert_eq!(cached().await, 0, "nothing applied while the lock is held");

    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut holder)
        .await
        .expect("release");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cached().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the order was never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tax.stop().await;
}
