//! Idempotent commands against the real PostgreSQL and Redis: concurrent duplicates run the
//! command once and all get the same response; a reused key is rejected; a failed command leaves
//! nothing behind; a duplicate of a slow command is told to retry; Redis serves replays but
//! correctness never depends on it; bad metadata is rejected by name.
//!
//! Redis is `REDIS_URL`, default `redis://127.0.0.1:6379`. One that does not answer fails the
//! Redis tests; only with `REDIS_URL` unset and `FINTECH_TESTS_WITHOUT_REDIS=1` do they skip.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fintech_platform::idempotency::{
    self, Claim, IdempotencyError, IdempotencyKey, IdempotencyStore, METADATA_KEY, key_from_metadata,
};
use fintech_proto::payments::{CreateOrderRequest, CreateOrderResponse, Order};
use fintech_tests::TestDb;
use redis::aio::MultiplexedConnection;
use sqlx::{PgConnection, PgPool};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::StatusExt;

const SCOPE: &str = "/fintech.payments.v1.PaymentsService/CreateOrder";

/// A fresh database with the platform tables and a tiny business table.
async fn database() -> TestDb {
    let db = TestDb::with_platform_tables().await;
    sqlx::query("CREATE TABLE effects (id uuid PRIMARY KEY, customer_id text NOT NULL, amount bigint NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("create effects table");
    db
}

fn order_request(customer_id: &str, amount: i64) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer_id.to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount,
        product_type: "standard".to_owned(),
    }
}

fn key(value: &str) -> IdempotencyKey {
    IdempotencyKey::parse(value).expect("valid key")
}

/// A scope no other test (or earlier run) uses, for the Redis keys shared between tests.
fn unique_scope() -> String {
    format!("/test.idempotency.v1.Commands/Create{}", uuid::Uuid::new_v4().simple())
}

/// The command under test: counts its runs, writes one effect row, pauses, answers with a fresh id.
async fn create_order(
    conn: &mut PgConnection,
    request: &CreateOrderRequest,
    runs: &AtomicUsize,
    pause: Duration,
) -> Result<CreateOrderResponse, Status> {
    runs.fetch_add(1, Ordering::SeqCst);
    let order_id = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO effects (id, customer_id, amount) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(&request.customer_id)
        .bind(request.amount)
        .execute(&mut *conn)
        .await
        .map_err(|error| Status::internal(error.to_string()))?;
    tokio::time::sleep(pause).await;
    Ok(CreateOrderResponse {
        order: Some(Order {
            order_id: order_id.to_string(),
            customer_id: request.customer_id.clone(),
            country: request.country.clone(),
            currency: request.currency.clone(),
            amount: request.amount,
            product_type: request.product_type.clone(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            version: 1,
        }),
    })
}

async fn execute_create(
    store: &IdempotencyStore,
    pool: &PgPool,
    scope: &str,
    key: Option<IdempotencyKey>,
    request: &CreateOrderRequest,
    runs: &AtomicUsize,
    pause: Duration,
) -> Result<CreateOrderResponse, Status> {
    store
        .execute(pool, scope, key, request, async |conn| {
            create_order(conn, request, runs, pause).await
        })
        .await
}

async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// Runs `calls` concurrent `execute`s of the same request with one key, released together.
async fn concurrent_duplicates(
    store: &IdempotencyStore,
    pool: &PgPool,
    scope: &str,
    calls: usize,
    runs: &Arc<AtomicUsize>,
) -> Vec<Result<CreateOrderResponse, Status>> {
    let request = order_request("cust-concurrent", 4200);
    let start = Arc::new(tokio::sync::Barrier::new(calls));
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let (store, pool, scope, request) = (store.clone(), pool.clone(), scope.to_owned(), request.clone());
            let (start, runs) = (Arc::clone(&start), Arc::clone(runs));
            tokio::spawn(async move {
                start.wait().await;
                execute_create(
                    &store,
                    &pool,
                    &scope,
                    Some(key("concurrent-key")),
                    &request,
                    &runs,
                    Duration::from_millis(200),
                )
                .await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(calls);
    for task in tasks {
        results.push(task.await.expect("task does not panic"));
    }
    results
}

fn assert_exactly_once(results: &[Result<CreateOrderResponse, Status>], runs: &AtomicUsize) {
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran exactly once");
    let first = results[0].as_ref().expect("first call succeeds");
    for (index, result) in results.iter().enumerate() {
        let response = result
            .as_ref()
            .unwrap_or_else(|status| panic!("call {index} failed: {status:?}"));
        assert_eq!(response, first, "call {index} got another response");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn fifty_concurrent_duplicates_run_once_and_all_get_the_same_response() {
    let db = database().await;
    let store = IdempotencyStore::new(None).expect("store");
    let runs = Arc::new(AtomicUsize::new(0));

    let results = concurrent_duplicates(&store, &db.pool, SCOPE, 50, &runs).await;

    assert_exactly_once(&results, &runs);
    assert_eq!(count(&db.pool, "effects").await, 1);
    assert_eq!(count(&db.pool, "idempotency_keys").await, 1);
    let stored: Vec<u8> = sqlx::query_scalar("SELECT response FROM idempotency_keys")
        .fetch_one(&db.pool)
        .await
        .expect("stored response");
    assert_eq!(
        prost::Message::decode(stored.as_slice()),
        Ok(results[0].clone().expect("success")),
        "the stored bytes are the response"
    );
}

#[tokio::test]
async fn the_same_key_with_another_request_is_rejected_and_writes_nothing() {
    let db = database().await;
    let store = IdempotencyStore::new(None).expect("store");
    let runs = AtomicUsize::new(0);
    let first = order_request("cust-1", 1000);
    execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("reused-key")),
        &first,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("first request succeeds");

    let other = order_request("cust-1", 2000);
    let status = execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("reused-key")),
        &other,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect_err("another request with the same key is rejected");

    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("reused-key"),
        "names the key: {}",
        status.message()
    );
    assert!(status.message().contains("different request"), "{}", status.message());
    let violation = status
        .get_details_precondition_failure()
        .expect("precondition failure details");
    assert_eq!(violation.violations[0].subject, METADATA_KEY);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body did not run again");
    assert_eq!(count(&db.pool, "effects").await, 1);
    assert_eq!(count(&db.pool, "idempotency_keys").await, 1);

    // The same key in another scope is another command.
    execute_create(
        &store,
        &db.pool,
        "/fintech.payments.v1.PaymentsService/Other",
        Some(key("reused-key")),
        &other,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("keys are per scope");
    assert_eq!(count(&db.pool, "effects").await, 2);
}

#[tokio::test]
async fn a_failed_command_stores_nothing_and_its_retry_runs() {
    let db = database().await;
    let store = IdempotencyStore::new(None).expect("store");
    let request = order_request("cust-1", 1000);

    let status = store
        .execute(&db.pool, SCOPE, Some(key("retry-key")), &request, async |conn| {
            sqlx::query("INSERT INTO effects (id, customer_id, amount) VALUES ($1, 'doomed', 1)")
                .bind(uuid::Uuid::new_v4())
                .execute(&mut *conn)
                .await
                .map_err(|error| Status::internal(error.to_string()))?;
            Err::<CreateOrderResponse, _>(Status::unavailable("downstream is down"))
        })
        .await
        .expect_err("the body's error is returned");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "downstream is down",
        "the body's status passes through"
    );
    assert_eq!(count(&db.pool, "effects").await, 0, "the effect rolled back");
    assert_eq!(count(&db.pool, "idempotency_keys").await, 0, "no key was stored");

    let runs = AtomicUsize::new(0);
    let response = execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("retry-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("the retry runs and succeeds");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(count(&db.pool, "effects").await, 1);
    let replay = execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("retry-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("replay");
    assert_eq!(replay, response);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_of_a_command_slower_than_lock_wait_is_aborted() {
    let db = database().await;
    let store = IdempotencyStore::new(None)
        .expect("store")
        .with_lock_wait(Duration::from_millis(200));
    let request = order_request("cust-slow", 1000);
    let runs = Arc::new(AtomicUsize::new(0));
    let (started, body_started) = tokio::sync::oneshot::channel();

    let first = {
        let (store, pool, request, runs) = (store.clone(), db.pool.clone(), request.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            store
                .execute(&pool, SCOPE, Some(key("slow-key")), &request, async |conn| {
                    let _ = started.send(());
                    create_order(conn, &request, &runs, Duration::from_millis(1500)).await
                })
                .await
        })
    };
    body_started.await.expect("the first attempt reaches its body");

    let waited = std::time::Instant::now();
    let status = execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("slow-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect_err("the duplicate is told to retry");
    let waited = waited.elapsed();

    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("still being processed"),
        "{}",
        status.message()
    );
    assert!(
        waited >= Duration::from_millis(150),
        "it waited for lock_wait first: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1200),
        "and not for the first attempt: {waited:?}"
    );
    let response = first.await.expect("no panic").expect("the first attempt succeeds");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the duplicate did not run the body");

    let replay = execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("slow-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("a later retry replays");
    assert_eq!(replay, response);
    assert_eq!(count(&db.pool, "effects").await, 1);
}

#[tokio::test]
async fn without_a_key_the_body_runs_every_time_in_a_transaction() {
    let db = database().await;
    let store = IdempotencyStore::new(None).expect("store");
    let request = order_request("cust-1", 1000);
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        execute_create(&store, &db.pool, SCOPE, None, &request, &runs, Duration::ZERO)
            .await
            .expect("runs");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(count(&db.pool, "effects").await, 2);
    assert_eq!(count(&db.pool, "idempotency_keys").await, 0);

    let status = store
        .execute(&db.pool, SCOPE, None, &request, async |conn| {
            sqlx::query("INSERT INTO effects (id, customer_id, amount) VALUES ($1, 'doomed', 1)")
                .bind(uuid::Uuid::new_v4())
                .execute(&mut *conn)
                .await
                .map_err(|error| Status::internal(error.to_string()))?;
            Err::<CreateOrderResponse, _>(Status::invalid_argument("rejected"))
        })
        .await
        .expect_err("fails");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(count(&db.pool, "effects").await, 2, "a failed body rolls back");
}

#[tokio::test]
async fn claim_and_complete_compose_with_the_callers_transaction() {
    let db = database().await;
    let store = IdempotencyStore::new(None).expect("store");
    let print = idempotency::fingerprint(&order_request("cust-1", 1000));
    let key = key("manual-key");

    let mut transaction = db.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL lock_timeout = '1234ms'")
        .execute(&mut *transaction)
        .await
        .expect("the command's own lock_timeout");
    assert_eq!(
        store.claim(&mut transaction, SCOPE, &key, &print).await.expect("claim"),
        Claim::New
    );
    let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *transaction)
        .await
        .expect("show");
    assert_eq!(
        lock_timeout, "1234ms",
        "the claim's lock_timeout does not leak into the command: the caller's is restored"
    );
    store
        .complete(&mut transaction, SCOPE, &key, b"stored")
        .await
        .expect("complete");
    transaction.commit().await.expect("commit");

    let mut transaction = db.pool.begin().await.expect("begin");
    assert_eq!(
        store.claim(&mut transaction, SCOPE, &key, &print).await.expect("claim"),
        Claim::Replay(b"stored".to_vec())
    );
    let conflict = store
        .claim(&mut transaction, SCOPE, &key, &"0".repeat(64))
        .await
        .expect_err("another fingerprint");
    assert!(matches!(conflict, IdempotencyError::Conflict { .. }), "{conflict:?}");
    let not_claimed = store
        .complete(&mut transaction, SCOPE, &self::key("never-claimed"), b"x")
        .await
        .expect_err("complete without claim");
    assert!(
        matches!(not_claimed, IdempotencyError::NotClaimed { .. }),
        "{not_claimed:?}"
    );
}

#[tokio::test]
async fn purge_forgets_old_keys_only() {
    let db = database().await;
    let store = IdempotencyStore::new(None).expect("store");
    let request = order_request("cust-1", 1000);
    let runs = AtomicUsize::new(0);
    execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("old-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("runs");

    assert_eq!(
        idempotency::purge_older_than(&db.pool, Duration::from_secs(3600))
            .await
            .expect("purge"),
        0
    );
    assert_eq!(count(&db.pool, "idempotency_keys").await, 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        idempotency::purge_older_than(&db.pool, Duration::from_millis(10))
            .await
            .expect("purge"),
        1
    );
    assert_eq!(count(&db.pool, "idempotency_keys").await, 0);

    execute_create(
        &store,
        &db.pool,
        SCOPE,
        Some(key("old-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("runs again");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "a purged key no longer protects");
}

// ---- Redis fast path -------------------------------------------------------------------------

/// Set to `1` to let the Redis tests skip when `REDIS_URL` is unset and the default Redis does not
/// answer (a machine without Redis); without it they fail, so a missing Redis is never a silent pass.
const WITHOUT_REDIS: &str = "FINTECH_TESTS_WITHOUT_REDIS";

const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// A connection to the test Redis. Panics when it does not answer, unless `REDIS_URL` is unset and
/// `FINTECH_TESTS_WITHOUT_REDIS=1` opts out: then `None`, with a message in the test output.
#[expect(clippy::print_stderr, reason = "a skipped test must say so in the test output")]
async fn redis_or_skip(test: &str) -> Option<MultiplexedConnection> {
    let url = redis_url();
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await?;
        Ok::<_, redis::RedisError>(connection)
    };
    let problem = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(connection)) => return Some(connection),
        Ok(Err(error)) => format!("does not answer: {error}"),
        Err(_) => "did not answer within 2s".to_owned(),
    };
    if std::env::var_os("REDIS_URL").is_some() {
        panic!("{test}: Redis at REDIS_URL={url} {problem}");
    }
    if std::env::var(WITHOUT_REDIS).is_ok_and(|value| value == "1") {
        eprintln!("SKIPPED {test}: Redis at {url} (default; REDIS_URL unset) {problem}, and {WITHOUT_REDIS}=1");
        return None;
    }
    panic!(
        "{test}: Redis at {url} (default; REDIS_URL unset) {problem}; start it (deploy/local/up infra), \
         point REDIS_URL at one, or set {WITHOUT_REDIS}=1 to skip the Redis tests"
    );
}

async fn redis_get(connection: &mut MultiplexedConnection, redis_key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(redis_key)
        .query_async(connection)
        .await
        .expect("redis GET")
}

#[tokio::test]
async fn redis_serves_replays_and_rejects_reuse_without_postgres() {
    let Some(mut redis) = redis_or_skip("redis_serves_replays_and_rejects_reuse_without_postgres").await else {
        return;
    };
    let db = database().await;
    let store = IdempotencyStore::new(Some(&redis_url())).expect("store");
    let scope = unique_scope();
    let request = order_request("cust-redis", 1000);
    let runs = AtomicUsize::new(0);
    let response = execute_create(
        &store,
        &db.pool,
        &scope,
        Some(key("cached-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("first request");

    let cached = redis_get(&mut redis, &format!("idem:{scope}:cached-key"))
        .await
        .expect("the committed response is cached");
    assert!(cached.starts_with(idempotency::fingerprint(&request).as_bytes()));
    assert!(
        redis_get(&mut redis, &format!("idem-lock:{scope}:cached-key"))
            .await
            .is_none(),
        "the in-flight marker is released"
    );

    // A pool that can no longer reach PostgreSQL: whatever succeeds now came from Redis.
    let closed_pool = PgPool::connect(&db.url).await.expect("second pool");
    closed_pool.close().await;
    let replay = execute_create(
        &store,
        &closed_pool,
        &scope,
        Some(key("cached-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("replayed from redis");
    assert_eq!(replay, response);
    let status = execute_create(
        &store,
        &closed_pool,
        &scope,
        Some(key("cached-key")),
        &order_request("cust-redis", 9999),
        &runs,
        Duration::ZERO,
    )
    .await
    .expect_err("a different request is rejected from redis");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("cached-key"), "{}", status.message());

    // A new key on the closed pool must reach PostgreSQL, and says the database is unavailable.
    let status = execute_create(
        &store,
        &closed_pool,
        &scope,
        Some(key("fresh-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect_err("postgres is needed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(count(&db.pool, "effects").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn with_redis_fifty_concurrent_duplicates_run_once_and_a_flush_changes_nothing() {
    let Some(mut redis) =
        redis_or_skip("with_redis_fifty_concurrent_duplicates_run_once_and_a_flush_changes_nothing").await
    else {
        return;
    };
    let db = database().await;
    let store = IdempotencyStore::new(Some(&redis_url())).expect("store");
    let scope = unique_scope();
    let runs = Arc::new(AtomicUsize::new(0));

    let results = concurrent_duplicates(&store, &db.pool, &scope, 50, &runs).await;
    assert_exactly_once(&results, &runs);
    assert_eq!(count(&db.pool, "effects").await, 1);

    // "Flush" our keys (not FLUSHALL: other tests share this Redis): PostgreSQL still replays.
    let cache_key = format!("idem:{scope}:concurrent-key");
    redis::cmd("DEL")
        .arg(&cache_key)
        .query_async::<i64>(&mut redis)
        .await
        .expect("DEL");
    let again = concurrent_duplicates(&store, &db.pool, &scope, 10, &runs).await;
    assert_exactly_once(&[results, again].concat(), &runs);
    assert_eq!(count(&db.pool, "effects").await, 1);
    assert!(
        redis_get(&mut redis, &cache_key).await.is_some(),
        "the replay refilled the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn with_redis_duplicates_wait_on_redis_without_postgres_connections() {
    let Some(_redis) = redis_or_skip("with_redis_duplicates_wait_on_redis_without_postgres_connections").await else {
        return;
    };
    let db = database().await;
    let store = IdempotencyStore::new(Some(&redis_url()))
        .expect("store")
        .with_lock_wait(Duration::from_secs(3));
    let scope = unique_scope();
    let request = order_request("cust-redis", 1000);
    let runs = Arc::new(AtomicUsize::new(0));
    let (started, body_started) = tokio::sync::oneshot::channel();
    let first = {
        let (store, pool, scope, request, runs) = (
            store.clone(),
            db.pool.clone(),
            scope.clone(),
            request.clone(),
            Arc::clone(&runs),
        );
        tokio::spawn(async move {
            store
                .execute(&pool, &scope, Some(key("waited-key")), &request, async |conn| {
                    let _ = started.send(());
                    create_order(conn, &request, &runs, Duration::from_millis(500)).await
                })
                .await
        })
    };
    body_started
        .await
        .expect("the first attempt reaches its body (holding the marker)");

    // Duplicates on a pool that cannot reach PostgreSQL: they can only succeed by waiting in Redis.
    let closed_pool = PgPool::connect(&db.url).await.expect("second pool");
    closed_pool.close().await;
    let duplicates: Vec<_> = (0..20)
        .map(|_| {
            let (store, pool, scope, request, runs) = (
                store.clone(),
                closed_pool.clone(),
                scope.clone(),
                request.clone(),
                Arc::clone(&runs),
            );
            tokio::spawn(async move {
                execute_create(
                    &store,
                    &pool,
                    &scope,
                    Some(key("waited-key")),
                    &request,
                    &runs,
                    Duration::ZERO,
                )
                .await
            })
        })
        .collect();
    let mut results = vec![first.await.expect("no panic")];
    for duplicate in duplicates {
        results.push(duplicate.await.expect("no panic"));
    }
    assert_exactly_once(&results, &runs);
    assert_eq!(count(&db.pool, "effects").await, 1);

    // A duplicate of a command slower than lock_wait: lock_wait in Redis, lock_wait in PostgreSQL.
    let store = store.with_lock_wait(Duration::from_millis(200));
    let (started, body_started) = tokio::sync::oneshot::channel();
    let slow = {
        let (store, pool, scope, request, runs) = (
            store.clone(),
            db.pool.clone(),
            scope.clone(),
            request.clone(),
            Arc::clone(&runs),
        );
        tokio::spawn(async move {
            store
                .execute(&pool, &scope, Some(key("slow-key")), &request, async |conn| {
                    let _ = started.send(());
                    create_order(conn, &request, &runs, Duration::from_millis(1500)).await
                })
                .await
        })
    };
    body_started.await.expect("the slow attempt reaches its body");
    let waited = std::time::Instant::now();
    let status = execute_create(
        &store,
        &db.pool,
        &scope,
        Some(key("slow-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect_err("the duplicate is told to retry");
    let waited = waited.elapsed();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_millis(1200), "{waited:?}");
    slow.await.expect("no panic").expect("the slow attempt succeeds");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_redis_a_failed_command_releases_its_marker_and_a_stale_marker_only_delays() {
    let Some(mut redis) =
        redis_or_skip("with_redis_a_failed_command_releases_its_marker_and_a_stale_marker_only_delays").await
    else {
        return;
    };
    let db = database().await;
    let store = IdempotencyStore::new(Some(&redis_url()))
        .expect("store")
        .with_lock_wait(Duration::from_millis(300));
    let scope = unique_scope();
    let request = order_request("cust-redis", 1000);

    let status = store
        .execute(&db.pool, &scope, Some(key("failing-key")), &request, async |_conn| {
            Err::<CreateOrderResponse, _>(Status::unavailable("downstream is down"))
        })
        .await
        .expect_err("fails");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        redis_get(&mut redis, &format!("idem-lock:{scope}:failing-key"))
            .await
            .is_none()
    );
    assert!(
        redis_get(&mut redis, &format!("idem:{scope}:failing-key"))
            .await
            .is_none()
    );

    // A marker left by a crashed process: the next attempt waits lock_wait, then PostgreSQL decides.
    redis::cmd("SET")
        .arg(format!("idem-lock:{scope}:stale-key"))
        .arg("crashed-process")
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut redis)
        .await
        .expect("SET stale marker");
    let runs = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    execute_create(
        &store,
        &db.pool,
        &scope,
        Some(key("stale-key")),
        &request,
        &runs,
        Duration::ZERO,
    )
    .await
    .expect("runs despite the stale marker");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        redis_get(&mut redis, &format!("idem-lock:{scope}:stale-key"))
            .await
            .as_deref(),
        Some(&b"crashed-process"[..]),
        "a marker that is not ours is left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn with_redis_unreachable_duplicates_still_run_once() {
    // A port nobody listens on: bind one, then close it.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let db = database().await;
    let store = IdempotencyStore::new(Some(&format!("redis://127.0.0.1:{closed_port}"))).expect("store");
    let runs = Arc::new(AtomicUsize::new(0));

    let started = std::time::Instant::now();
    let results = concurrent_duplicates(&store, &db.pool, SCOPE, 50, &runs).await;
    assert_exactly_once(&results, &runs);
    assert_eq!(count(&db.pool, "effects").await, 1);
    let replay = concurrent_duplicates(&store, &db.pool, SCOPE, 5, &runs).await;
    assert_exactly_once(&[results, replay].concat(), &runs);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    assert!(
        IdempotencyStore::new(Some("not a url")).is_err(),
        "an unparsable URL is a configuration error"
    );
}

// ---- metadata --------------------------------------------------------------------------------

fn metadata_with(values: &[MetadataValue<tonic::metadata::Ascii>]) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for value in values {
        metadata.append(METADATA_KEY, value.clone());
    }
    metadata
}

fn assert_invalid_key(result: Result<Option<IdempotencyKey>, Status>, case: &str) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert!(
        status.message().contains("idempotency-key"),
        "{case}: {}",
        status.message()
    );
    let bad_request = status.get_details_bad_request().expect("bad request details");
    assert_eq!(bad_request.field_violations.len(), 1, "{case}");
    assert_eq!(bad_request.field_violations[0].field, "idempotency-key", "{case}");
    assert!(!bad_request.field_violations[0].description.is_empty(), "{case}");
}

#[test]
fn metadata_keys_are_validated_and_bad_ones_named() {
    assert_eq!(key_from_metadata(&MetadataMap::new()).expect("absent is fine"), None);
    let valid = "k".repeat(128);
    assert_eq!(
        key_from_metadata(&metadata_with(&[
            MetadataValue::try_from(valid.as_str()).expect("value")
        ]))
        .expect("valid")
        .map(|key| key.as_str().to_owned()),
        Some(valid)
    );
    assert_eq!(
        key_from_metadata(&metadata_with(&[MetadataValue::from_static("order-7f3a/1")]))
            .expect("valid")
            .expect("present")
            .as_str(),
        "order-7f3a/1"
    );

    assert_invalid_key(
        key_from_metadata(&metadata_with(&[MetadataValue::from_static("")])),
        "empty",
    );
    let too_long = "k".repeat(129);
    assert_invalid_key(
        key_from_metadata(&metadata_with(&[
            MetadataValue::try_from(too_long.as_str()).expect("value")
        ])),
        "129 characters",
    );
    assert_invalid_key(
        key_from_metadata(&metadata_with(&[MetadataValue::from_static("two words")])),
        "space",
    );
    assert_invalid_key(
        key_from_metadata(&metadata_with(&[MetadataValue::from_static("tab\there")])),
        "tab",
    );
    assert_invalid_key(
        key_from_metadata(&metadata_with(&[
            MetadataValue::try_from(&b"caf\xe9"[..]).expect("obs-text value")
        ])),
        "non-ASCII byte",
    );
    assert_invalid_key(
        key_from_metadata(&metadata_with(&[
            MetadataValue::from_static("first"),
            MetadataValue::from_static("second"),
        ])),
        "sent twice",
    );
}
