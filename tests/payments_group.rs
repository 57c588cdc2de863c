//! Group commit of payments' create commands (ADR 0030), against the real PostgreSQL and broker:
//! commands that queue up while a group transaction runs are committed together (one PostgreSQL
//! transaction: one `xmin`), a failing command in a group fails alone, a group interrupted by
//! `kill -9` loses no acknowledged command and applies none twice, and per-order event order
//! holds under 64 concurrent clients.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fintech_payments::Payments;
use fintech_platform::kit::Service as _;
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use fintech_tests::TestDb;
use fintech_tests::payments::{PaymentsHarness, connect, platform_config, unique_prefix};
use fintech_tests::process::{ServiceProcess, service_binary};
use fintech_tests::service::Channel;
use prost::Message as _;
use sqlx::Row as _;
use tonic::{Code, Request};

type Client = PaymentsServiceClient<Channel>;

fn keyed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("idempotency-key", key.parse().expect("ascii"));
    request
}

fn order_request(customer: &str, amount: i64) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        customer_id: customer.to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount,
        product_type: "standard".to_owned(),
    }
}

fn transaction_request(order_id: &str, currency: &str) -> pb::CreateTransactionRequest {
    pb::CreateTransactionRequest {
        order_id: order_id.to_owned(),
        amount: 500,
        currency: currency.to_owned(),
        status: 0,
    }
}

/// Payments with one group worker, so that commands sent while its transaction waits queue up
/// behind it and form the next group.
async fn one_worker() -> PaymentsHarness {
    PaymentsHarness::launch(
        "payments",
        &unique_prefix(),
        &fintech_payments::events::TOPICS,
        |platform, db, prefix| {
            let mut config = fintech_tests::payments::config(platform, db, prefix);
            config.group_commit.workers = 1;
            config
        },
        Payments::run,
        PaymentsServiceClient::new,
    )
    .await
}

/// Waits until a backend of the service waits for a row lock (the group blocked behind the
/// test's lock).
async fn wait_for_lock_waiter(pool: &sqlx::PgPool, database: &str) {
    for _ in 0..300 {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'")
                .bind(database)
                .fetch_one(pool)
                .await
                .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the group transaction never waited for the locked order");
}

async fn database_name(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("database name")
}

#[tokio::test]
async fn commands_queued_behind_a_group_commit_together_and_a_failing_one_fails_alone() {
    let harness = one_worker().await;
    let mut client = harness.client.clone();
    let pool = harness.db.pool.clone();

    // Set-up, one command at a time: an order to block on, an order in USD, a key already used.
    let blocker = client
        .create_order(order_request("cust-group", 1_000))
        .await
        .expect("blocker order")
        .into_inner()
        .order
        .expect("order");
    let usd = client
        .create_order(pb::CreateOrderRequest {
            currency: "USD".to_owned(),
            ..order_request("cust-group", 2_000)
        })
        .await
        .expect("usd order")
        .into_inner()
        .order
        .expect("order");
    let earlier = client
        .create_order(keyed(order_request("cust-group", 3_000), "group-earlier"))
        .await
        .expect("earlier keyed order")
        .into_inner();

    // Hold the blocker order's row lock: the next group (a transaction on it) waits behind it.
    let mut lock = pool.begin().await.expect("lock transaction");
    sqlx::query("SELECT 1 FROM orders WHERE order_id = $1 FOR UPDATE")
        .bind(uuid::Uuid::parse_str(&blocker.order_id).expect("uuid"))
        .execute(&mut *lock)
        .await
        .expect("lock the order");
    let first = {
        let mut client = client.clone();
        let order_id = blocker.order_id.clone();
        tokio::spawn(async move {
            client
                .create_transaction(keyed(transaction_request(&order_id, "EUR"), "group-first"))
                .await
        })
    };
    wait_for_lock_waiter(&pool, &database_name(&pool).await).await;

    // Everything sent now queues behind the waiting group and forms the next one.
    let mut valid = Vec::new();
    for index in 0..6 {
        let mut client = client.clone();
        valid.push(tokio::spawn(async move {
            client
                .create_order(keyed(
                    order_request("cust-group", 100 + index),
                    &format!("group-valid-{index}"),
                ))
                .await
        }));
    }
    let valid_transaction = {
        let mut client = client.clone();
        let order_id = usd.order_id.clone();
        tokio::spawn(async move {
            client
                .create_transaction(keyed(transaction_request(&order_id, "USD"), "group-valid-usd"))
                .await
        })
    };
    let mismatch = {
        let mut client = client.clone();
        let order_id = usd.order_id.clone();
        tokio::spawn(async move {
            client
                .create_transaction(keyed(transaction_request(&order_id, "EUR"), "group-mismatch"))
                .await
        })
    };
    let unknown = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .create_transaction(keyed(
                    transaction_request(&uuid::Uuid::new_v4().to_string(), "EUR"),
                    "group-unknown",
                ))
                .await
        })
    };
    let reused = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .create_order(keyed(order_request("cust-group", 9_999), "group-earlier"))
                .await
        })
    };
    let replayed = {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .create_order(keyed(order_request("cust-group", 3_000), "group-earlier"))
                .await
        })
    };
    let twins: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .create_order(keyed(order_request("cust-group", 4_242), "group-twin"))
                    .await
            })
        })
        .collect();
    // The requests reach the queue in microseconds; give a starved machine ample time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    lock.rollback().await.expect("release the lock");

    let first = first.await.expect("task").expect("the blocked transaction commits");
    assert!(first.into_inner().transaction.is_some());
    let mut valid_ids = Vec::new();
    for task in valid {
        let order = task
            .await
            .expect("task")
            .expect("valid order")
            .into_inner()
            .order
            .expect("order");
        valid_ids.push(order.order_id);
    }
    let valid_transaction = valid_transaction
        .await
        .expect("task")
        .expect("valid transaction")
        .into_inner()
        .transaction
        .expect("transaction");
    let mismatch = mismatch.await.expect("task").expect_err("currency mismatch");
    assert_eq!(mismatch.code(), Code::FailedPrecondition, "{mismatch:?}");
    assert!(mismatch.message().contains("currency"), "{mismatch:?}");
    let unknown = unknown.await.expect("task").expect_err("unknown order");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let reused = reused.await.expect("task").expect_err("key reused");
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    assert!(reused.message().contains("group-earlier"), "{reused:?}");
    let replayed = replayed.await.expect("task").expect("replay").into_inner();
    assert_eq!(replayed, earlier, "the earlier key's response, byte for byte");
    let mut twin_answers = Vec::new();
    for task in twins {
        twin_answers.push(task.await.expect("task").expect("twin").into_inner());
    }
    assert_eq!(
        twin_answers[0], twin_answers[1],
        "one key sent twice at once: one answer"
    );

    // The valid commands of the second group committed in one PostgreSQL transaction.
    // (The twins' second copy waited for the group and replayed its answer.)
    let mut grouped: Vec<String> = valid_ids.clone();
    grouped.push(twin_answers[0].order.as_ref().expect("order").order_id.clone());
    let xmins: HashSet<String> = sqlx::query_scalar(
        "SELECT xmin::text FROM orders WHERE order_id::text = ANY($1) \
         UNION ALL SELECT xmin::text FROM transactions WHERE transaction_id::text = $2",
    )
    .bind(&grouped)
    .bind(&valid_transaction.transaction_id)
    .fetch_all(&pool)
    .await
    .expect("xmins")
    .into_iter()
    .collect();
    assert_eq!(
        xmins.len(),
        1,
        "the queued commands were one group transaction: {xmins:?}"
    );

    // What failed left nothing: no row, no event, no key; what succeeded is there once.
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .expect("orders");
    assert_eq!(
        orders,
        3 + 6 + 1,
        "set-up orders, the six valid ones and the twins' one"
    );
    let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await
        .expect("transactions");
    assert_eq!(transactions, 2, "the blocked one and the valid USD one");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("outbox");
    assert_eq!(
        events,
        orders + transactions,
        "one event per row written, none for a failure"
    );
    let keys: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM idempotency_keys ORDER BY 1")
        .fetch_all(&pool)
        .await
        .expect("keys");
    let mut expected: Vec<String> = (0..6).map(|index| format!("group-valid-{index}")).collect();
    expected.extend(["group-earlier", "group-first", "group-twin", "group-valid-usd"].map(str::to_owned));
    expected.sort();
    assert_eq!(keys, expected, "the failed commands' claims were released");

    // A failed command's key is free: fixed, the same key runs.
    let retried = client
        .create_transaction(keyed(transaction_request(&usd.order_id, "EUR"), "group-mismatch"))
        .await
        .expect_err("still a mismatch: the command ran again, nothing was stored");
    assert_eq!(retried.code(), Code::FailedPrecondition);
    harness.stop().await;
}

fn free_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .to_string()
}

/// Sends `request` under `key` until it is answered, across a service that dies and comes back.
async fn until_answered<T, R>(
    address: &str,
    key: &str,
    request: &T,
    call: impl AsyncFn(&mut Client, Request<T>) -> Result<R, tonic::Status>,
) -> R
where
    T: Clone,
{
    for _ in 0..600 {
        let mut client = PaymentsServiceClient::new(connect(address).await);
        match call(&mut client, keyed(request.clone(), key)).await {
            Ok(response) => return response,
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Aborted | Code::Cancelled | Code::Internal
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{key}: {status:?}"),
        }
    }
    panic!("{key} was never answered");
}

#[tokio::test]
async fn a_group_killed_mid_flight_loses_no_acknowledged_command_and_applies_none_twice() {
    let db = TestDb::empty().await;
    let bootstrap = fintech_tests::kafka_bootstrap();
    let prefix = unique_prefix();
    fintech_tests::service::create_prefixed_topics(&bootstrap, &prefix, &fintech_payments::events::TOPICS).await;
    let binary = service_binary("fintech-payments", "payments");
    let address = free_address();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut platform = platform_config("payments", &db.url, &bootstrap);
    platform.grpc_listen_addr = address.parse().expect("address");
    let env = fintech_tests::payments::env(&fintech_tests::payments::config(platform, &db, &prefix));
    let mut service = ServiceProcess::spawn(&binary, &env, log.path());
    let _ = PaymentsServiceClient::new(connect(&address).await);

    // 32 clients, each 12 orders with a transaction each, every command under its own key; the
    // service is killed after 80 acknowledged pairs and started again; each client retries
    // whatever was not answered, under the same key, until it is.
    const CLIENTS: usize = 32;
    const PAIRS: usize = 12;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (address, acknowledged) = (address.clone(), Arc::clone(&acknowledged));
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for pair in 0..PAIRS {
                let key = format!("kill-{client}-{pair}");
                let order = until_answered(
                    &address,
                    &format!("{key}-order"),
                    &order_request(&format!("cust-{client}"), 100 + pair as i64),
                    async |client, request| client.create_order(request).await,
                )
                .await
                .into_inner()
                .order
                .expect("order");
                let transaction = until_answered(
                    &address,
                    &format!("{key}-transaction"),
                    &transaction_request(&order.order_id, "EUR"),
                    async |client, request| client.create_transaction(request).await,
                )
                .await
                .into_inner()
                .transaction
                .expect("transaction");
                acknowledged.fetch_add(1, Ordering::SeqCst);
                answers.push((order, transaction));
            }
            answers
        }));
    }
    while acknowledged.load(Ordering::SeqCst) < 80 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service.kill();
    let killed_at = acknowledged.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _restarted = ServiceProcess::spawn(&binary, &env, log.path());
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await.expect("client"));
    }
    assert_eq!(answered.len(), CLIENTS * PAIRS);
    assert!(killed_at < CLIENTS * PAIRS, "the kill came in the middle of the load");

    // Every answer is the row that exists, and there is one row per command: none twice.
    let orders: HashMap<String, (String, i64)> = sqlx::query("SELECT order_id::text, customer_id, amount FROM orders")
        .fetch_all(&db.pool)
        .await
        .expect("orders")
        .into_iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    let transactions: HashMap<String, String> =
        sqlx::query("SELECT transaction_id::text, order_id::text FROM transactions")
            .fetch_all(&db.pool)
            .await
            .expect("transactions")
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
    assert_eq!(orders.len(), CLIENTS * PAIRS, "one order per CreateOrder key");
    assert_eq!(
        transactions.len(),
        CLIENTS * PAIRS,
        "one transaction per CreateTransaction key"
    );
    for (order, transaction) in &answered {
        assert_eq!(
            orders.get(&order.order_id),
            Some(&(order.customer_id.clone(), order.amount)),
            "an acknowledged order is stored as answered"
        );
        assert_eq!(transactions.get(&transaction.transaction_id), Some(&order.order_id));
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .expect("outbox");
    assert_eq!(events as usize, 2 * CLIENTS * PAIRS, "one event per command");

    // The load did go through groups: some transactions committed several commands.
    let largest: i64 =
        sqlx::query_scalar("SELECT max(n) FROM (SELECT count(*) AS n FROM orders GROUP BY xmin::text) g")
            .fetch_one(&db.pool)
            .await
            .expect("group sizes");
    assert!(
        largest > 1,
        "32 concurrent clients were grouped (largest group {largest})"
    );
}

#[tokio::test]
async fn per_order_event_order_holds_under_64_concurrent_clients() {
    let harness = PaymentsHarness::start().await;
    let pool = harness.db.pool.clone();
    const CLIENTS: usize = 64;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let mut payments = harness.client.clone();
        tasks.push(tokio::spawn(async move {
            let order = payments
                .create_order(order_request(&format!("cust-{client}"), 1_000))
                .await
                .expect("order")
                .into_inner()
                .order
                .expect("order");
            // Updates of the order (the single path) race with transactions on it (groups).
            let updates = {
                let mut payments = payments.clone();
                let order = order.clone();
                tokio::spawn(async move {
                    let mut version = order.version;
                    for step in 0..3 {
                        let updated = payments
                            .update_order(pb::UpdateOrderRequest {
                                order_id: order.order_id.clone(),
                                expected_version: version,
                                amount: Some(2_000 + step),
                                ..Default::default()
                            })
                            .await
                            .expect("update")
                            .into_inner()
                            .order
                            .expect("order");
                        version = updated.version;
                    }
                })
            };
            for _ in 0..3 {
                payments
                    .create_transaction(transaction_request(&order.order_id, "EUR"))
                    .await
                    .expect("transaction");
            }
            updates.await.expect("updates");
            order.order_id
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }

    // Per record key (the order), in outbox order: order versions 1, 2, 3, 4, and each
    // transaction after the order version it was created on and before the next one.
    let rows = sqlx::query("SELECT record_key, payload_type, payload FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("outbox");
    let mut per_key: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for row in rows {
        per_key
            .entry(row.get::<String, _>("record_key"))
            .or_default()
            .push((row.get("payload_type"), row.get("payload")));
    }
    assert_eq!(per_key.len(), CLIENTS);
    for (key, events) in per_key {
        let mut version = 0;
        let mut transactions = 0;
        for (payload_type, payload) in events {
            if payload_type.ends_with(".Order") {
                let order = pb::Order::decode(payload.as_slice()).expect("order");
                assert_eq!(order.version, version + 1, "{key}: order versions in order");
                version = order.version;
            } else {
                let transaction = pb::Transaction::decode(payload.as_slice()).expect("transaction");
                assert_eq!(
                    transaction.order_version, version,
                    "{key}: a transaction follows the order version it was created on"
                );
                transactions += 1;
            }
        }
        assert_eq!((version, transactions), (4, 3), "{key}: every event once");
    }
    harness.stop().await;
}
