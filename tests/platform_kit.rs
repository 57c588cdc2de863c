//! The service kit's supervision and shutdown: a background task that fails, panics or ends on
//! its own stops the service with an error naming it (so the process exits non-zero and is
//! restarted), health turns NOT_SERVING, and a task that ignores its stop signal cannot hold the
//! shutdown beyond the grace period.

use std::time::Duration;

use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
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
