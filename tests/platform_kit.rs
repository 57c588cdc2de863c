//! The service kit's supervision and shutdown: a background task that fails, panics or ends on
//! its own stops the service with an error naming it (so the process exits non-zero and is
//! restarted), health turns NOT_SERVING, and a task that ignores its stop signal cannot hold the
//! shutdown beyond the grace period; a handler that panics fails the service, and after the
//! restart its record is applied exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::EventProducer;
use fintech_platform::kafka::consumer::{ConsumedEvent, HandlerError};
use fintech_platform::kafka::headers::EventMetadata;
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_platform::kit::Kit;
use fintech_tests::payments::{connect, platform_config};
use fintech_tests::{TestDb, kafka_bootstrap};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn config(db: &TestDb) -> PlatformConfig {
    PlatformConfig {
        outbox_relays: 0,
        shutdown_grace: Duration::from_millis(300),
        ..platform_config("kit-test", &db.url, &kafka_bootstrap())
    }
}

async fn serve(kit: Kit) -> (String, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kit.serve(listener, shutdown.clone()));
    (address, shutdown, task)
}

async fn outcome(task: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the service stops by itself")
        .expect("serve does not panic")
}

#[tokio::test]
async fn a_failing_job_stops_the_service_with_an_error_naming_it() {
    let db = TestDb::empty().await;
    let kit = Kit::start(&config(&db), &fintech_payments::MIGRATOR)
        .await
        .expect("kit starts")
        .job("steady", |stop| async move {
            stop.cancelled().await;
            Ok(())
        })
        .job("doomed", |_stop| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            anyhow::bail!("lost its way")
        });
    let (_address, _shutdown, task) = serve(kit).await;
    let error = outcome(task).await.expect_err("a failed task fails the service");
    let message = format!("{error:#}");
    assert!(message.contains("job-doomed"), "{message}");
    assert!(message.contains("lost its way"), "{message}");
}

#[tokio::test]
async fn a_panicking_job_and_a_job_that_ends_early_are_failures_too() {
    let db = TestDb::empty().await;
    let kit = Kit::start(&config(&db), &fintech_payments::MIGRATOR)
        .await
        .expect("kit starts")
        .job("panicky", |_stop| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!("boom");
        });
    let (_address, _shutdown, task) = serve(kit).await;
    let message = format!("{:#}", outcome(task).await.expect_err("a panic fails the service"));
    assert!(message.contains("job-panicky") && message.contains("boom"), "{message}");

    let kit = Kit::start(&config(&db), &fintech_payments::MIGRATOR)
        .await
        .expect("kit starts")
        .job("quitter", |_stop| async move { Ok(()) });
    let (_address, _shutdown, task) = serve(kit).await;
    let message = format!("{:#}", outcome(task).await.expect_err("an early end fails the service"));
    assert!(
        message.contains("job-quitter") && message.contains("before it was asked to stop"),
        "{message}"
    );
}

#[tokio::test]
async fn health_reports_each_task_and_a_stubborn_task_cannot_hold_the_shutdown() {
    let db = TestDb::empty().await;
    let kit = Kit::start(&config(&db), &fintech_payments::MIGRATOR)
        .await
        .expect("kit starts")
        .job("stubborn", |_stop| async move {
            // Ignores its stop signal.
            std::future::pending::<()>().await;
            Ok(())
        });
    let (address, shutdown, task) = serve(kit).await;
    let mut health = HealthClient::new(connect(&address).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let overall = health.check(HealthCheckRequest { service: String::new() }).await;
        let component = health
            .check(HealthCheckRequest {
                service: "job-stubborn".to_owned(),
            })
            .await;
        let serving = |response: &Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status>| {
            response
                .as_ref()
                .is_ok_and(|response| response.get_ref().status == ServingStatus::Serving as i32)
        };
        if serving(&overall) && serving(&component) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING: {overall:?} {component:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    outcome(task)
        .await
        .expect("a clean shutdown, even with a stubborn task");
}

/// Applies each event as an effect row; panics on the first event it ever sees (a handler bug).
#[derive(Debug)]
struct PanicsOnce {
    panicked: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl TransactionalHandler for PanicsOnce {
    fn consumer(&self) -> &str {
        "kit-panic"
    }

    async fn apply(&self, conn: &mut sqlx::PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(&event.valid_metadata()?.id)
            .execute(&mut *conn)
            .await?;
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("handler bug");
        }
        Ok(())
    }
}

/// Issue #14: a handler that panics stops the service with an error (the process exits non-zero
/// and is restarted); after the restart the record is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_the_service_and_the_restart_applies_the_record_once() {
    let db = TestDb::empty().await;
    let prefix = fintech_tests::payments::unique_prefix();
    let topic = format!("{prefix}things.happened");
    fintech_tests::create_topics(&kafka_bootstrap(), &[&topic, &format!("{prefix}things.dlq")], 1).await;
    let config = PlatformConfig {
        topic_prefix: prefix.clone(),
        ..config(&db)
    };
    let panicked = Arc::new(AtomicBool::new(false));
    let kit_with_consumer = async || {
        let kit = Kit::start(&config, &fintech_payments::MIGRATOR)
            .await
            .expect("kit starts");
        sqlx::query("CREATE TABLE IF NOT EXISTS effects (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL)")
            .execute(kit.pool())
            .await
            .expect("effects table");
        let handler = InTransaction::new(
            kit.pool().clone(),
            PanicsOnce {
                panicked: Arc::clone(&panicked),
            },
        );
        kit.consumer("kit-panic", &["things.happened"], "things.dlq", Arc::new(handler))
    };

    let (_address, _shutdown, task) = serve(kit_with_consumer().await).await;
    let producer = EventProducer::new(&kafka_bootstrap(), "kit-panic-test", Duration::from_secs(20)).expect("producer");
    let event = EventMetadata {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: "fintech.test.v1.thing.happened".to_owned(),
        source: "/fintech/tests".to_owned(),
        time: chrono::Utc::now(),
        subject: Some("thing-1".to_owned()),
        payload_type: "google.protobuf.Empty".to_owned(),
        trace: Default::default(),
    };
    producer.send_event(&topic, "thing-1", b"", &event).await.expect("send");
    let message = format!("{:#}", outcome(task).await.expect_err("a panic fails the service"));
    assert!(
        message.contains("consumer-kit-panic") && message.contains("handler bug"),
        "{message}"
    );
    assert!(panicked.load(Ordering::SeqCst));

    // The restart: same group, the handler bug "fixed" (it panics only once).
    let (_address, shutdown, task) = serve(kit_with_consumer().await).await;
    let count = |table: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while count("effects").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record was never applied after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a redelivery the time to show up, then check it did not apply twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count("effects").await, 1, "applied exactly once");
    assert_eq!(count("processed_events").await, 1);
    shutdown.cancel();
    outcome(task).await.expect("a clean shutdown");
}
