//! Retention (ADR 0014): the job deletes published outbox rows, idempotency keys and inbox rows
//! older than their windows, in small batches, and nothing younger, nothing unpublished and
//! nothing parked.

use std::time::Duration;

use fintech_platform::CancellationToken;
use fintech_platform::retention::{self, Deleted, RetentionSettings};
use fintech_tests::TestDb;

const DAY: Duration = Duration::from_secs(86_400);

/// Inserts an outbox row of key `key` that occurred `occurred_days` ago, published
/// `published_days` ago (`None`: unpublished), parked if `parked`.
async fn outbox_row(db: &TestDb, key: &str, occurred_days: f64, published_days: Option<f64>, parked: bool) {
    sqlx::query(
        "INSERT INTO outbox (event_id, topic, record_key, event_type, event_source, payload_type, payload, \
                             occurred_at, published_at, parked_at) \
         VALUES ($1, 'test.retention', $2, 't', '/test', 'p', '\\x00', \
                 now() - make_interval(secs => $3), now() - make_interval(secs => $4), \
                 CASE WHEN $5 THEN now() END)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(key)
    .bind(occurred_days * DAY.as_secs_f64())
    .bind(published_days.map(|days| days * DAY.as_secs_f64()))
    .bind(parked)
    .execute(&db.pool)
    .await
    .expect("insert outbox row");
}

async fn key_row(db: &TestDb, key: &str, age_days: f64) {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idempotency_key, request_fingerprint, response, created_at) \
         VALUES ('/test/Command', $1, 'f', '\\x01', now() - make_interval(secs => $2))",
    )
    .bind(key)
    .bind(age_days * DAY.as_secs_f64())
    .execute(&db.pool)
    .await
    .expect("insert key");
}

async fn inbox_row(db: &TestDb, event_id: &str, age_days: f64) {
    sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at) \
         VALUES ('test-consumer', $1, now() - make_interval(secs => $2))",
    )
    .bind(event_id)
    .bind(age_days * DAY.as_secs_f64())
    .execute(&db.pool)
    .await
    .expect("insert inbox row");
}

async fn remaining(db: &TestDb, sql: &str) -> Vec<String> {
    sqlx::query_scalar(sql).fetch_all(&db.pool).await.expect("read rows")
}

fn settings(batch: i64) -> RetentionSettings {
    RetentionSettings {
        outbox: 7 * DAY,
        idempotency_keys: 7 * DAY,
        inbox: 30 * DAY,
        batch,
        interval: Duration::from_millis(50),
    }
}

#[tokio::test]
async fn retention_deletes_what_is_past_its_window_and_nothing_younger() {
    let db = TestDb::with_platform_tables().await;
    // Outbox: five published long ago (more than one batch), one published just inside the
    // window, one unpublished for weeks (a backlog is never deleted), one parked for weeks.
    for n in 0..5 {
        outbox_row(&db, &format!("old-published-{n}"), 9.0, Some(8.0), false).await;
    }
    outbox_row(&db, "young-published", 9.0, Some(6.9), false).await;
    outbox_row(&db, "old-unpublished", 30.0, None, false).await;
    outbox_row(&db, "old-parked", 30.0, None, true).await;
    for n in 0..3 {
        key_row(&db, &format!("old-key-{n}"), 7.5).await;
    }
    key_row(&db, "young-key", 6.5).await;
    for n in 0..4 {
        inbox_row(&db, &format!("old-event-{n}"), 31.0).await;
    }
    inbox_row(&db, "young-event", 29.0).await;

    let deleted = retention::pass(&db.pool, &settings(2), &CancellationToken::new())
        .await
        .expect("retention pass");
    assert_eq!(
        deleted,
        Deleted {
            outbox: 5,
            idempotency_keys: 3,
            inbox: 4,
        }
    );
    assert_eq!(
        remaining(&db, "SELECT record_key FROM outbox ORDER BY record_key").await,
        ["old-parked", "old-unpublished", "young-published"]
    );
    assert_eq!(
        remaining(&db, "SELECT idempotency_key FROM idempotency_keys").await,
        ["young-key"]
    );
    assert_eq!(
        remaining(&db, "SELECT event_id FROM processed_events").await,
        ["young-event"]
    );

    // A second pass finds nothing more.
    let again = retention::pass(&db.pool, &settings(2), &CancellationToken::new())
        .await
        .expect("second pass");
    assert_eq!(again, Deleted::default());
}

#[tokio::test]
async fn retention_skips_rows_another_transaction_holds_and_never_waits_for_them() {
    let db = TestDb::with_platform_tables().await;
    inbox_row(&db, "held", 40.0).await;
    inbox_row(&db, "free", 40.0).await;
    // A transaction of the hot path holds one old row.
    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM processed_events WHERE event_id = 'held' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock the row");

    let deleted = tokio::time::timeout(
        Duration::from_secs(10),
        retention::pass(&db.pool, &settings(100), &CancellationToken::new()),
    )
    .await
    .expect("the pass does not wait for the lock")
    .expect("retention pass");
    assert_eq!(deleted.inbox, 1, "only the free row");
    holder.rollback().await.expect("rollback");
    assert_eq!(remaining(&db, "SELECT event_id FROM processed_events").await, ["held"]);

    let later = retention::pass(&db.pool, &settings(100), &CancellationToken::new())
        .await
        .expect("later pass");
    assert_eq!(later.inbox, 1, "the next pass takes it");
}

/// The inbox window is what keeps deduplication sound (ADR 0014): a configuration in which an
/// event could be redelivered after its inbox row was deleted is refused at start-up.
#[test]
fn an_inbox_window_not_longer_than_the_broker_retention_is_refused() {
    // `set_var` is unsafe in a multi-threaded test binary: the check runs in a child process
    // (this binary, the test below) with the environment set.
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_reads_an_inbox_window_shorter_than_the_log",
            "--nocapture",
        ])
        .env("FINTECH_RETENTION_CHILD", "1")
        .env("INBOX_RETENTION", "7d")
        .env("KAFKA_LOG_RETENTION", "7d")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("child checked the config"), "{stdout}");
}

#[test]
fn child_reads_an_inbox_window_shorter_than_the_log() {
    if std::env::var("FINTECH_RETENTION_CHILD").is_err() {
        return;
    }
    let error = fintech_platform::config::PlatformConfig::from_env("test", 1).expect_err("refused");
    let message = error.to_string();
    assert!(message.contains("INBOX_RETENTION"), "{message}");
    assert!(message.contains("KAFKA_LOG_RETENTION"), "{message}");
    #[allow(clippy::print_stdout)]
    {
        println!("child checked the config");
    }
}
