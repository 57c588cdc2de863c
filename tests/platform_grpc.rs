//! gRPC bootstrap: health reports NOT_SERVING until the database answers (the broker is a component
//! of its own), reflection
//! works for grpcurl (v1alpha) and tonic clients (v1), and shutdown drains and returns.

use std::time::Duration;

use fintech_platform::grpc::{self, Readiness};
use fintech_platform::telemetry;
use fintech_tests::{TestDb, kafka_bootstrap, venv_tool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Running {
    address: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<fintech_platform::Result<()>>,
}

async fn start(db: &TestDb, kafka_bootstrap_servers: String) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    let readiness = Readiness {
        pool: db.pool.clone(),
        kafka_bootstrap_servers,
        interval: Duration::from_millis(200),
        components: Default::default(),
    };
    // Authentication on (this process's test keys): health stays open without a token.
    let authenticator = fintech_platform::auth::Authenticator::new(
        &fintech_tests::auth::auth_config(),
        fintech_platform::auth::Policy::default(),
    )
    .await
    .expect("test keys load");
    let server = tokio::spawn(grpc::serve(
        listener,
        tonic::service::Routes::default(),
        &["fintech.test.v1.TestService"],
        readiness,
        authenticator,
        grpc::ServerOptions::default(),
        shutdown.clone(),
    ));
    Running {
        address,
        shutdown,
        server,
    }
}

async fn health(address: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health check answers");
    ServingStatus::try_from(response.into_inner().status).expect("known status")
}

async fn wait_for_health(address: &str, service: &str, expected: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = health(address, service).await;
        if status == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health of {service:?} stayed {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_serves_once_database_and_broker_answer_and_reflection_lists_services() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::empty().await;
    let running = start(&db, kafka_bootstrap()).await;
    wait_for_health(&running.address, "", ServingStatus::Serving).await;
    wait_for_health(&running.address, "fintech.test.v1.TestService", ServingStatus::Serving).await;

    // grpcurl 1.8 uses reflection v1alpha; its `list` must show health and both reflection services.
    let address = running.address.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(venv_tool("grpcurl"))
            .args(["-plaintext", &address, "list"])
            .output()
            .expect("grpcurl runs (scripts/install-tools installs it)")
    })
    .await
    .expect("grpcurl task");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpcurl list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|line| line == service),
            "{service} missing from:\n{listed}"
        );
    }
    assert!(
        !listed.contains("fintech.payments.v1.PaymentsService"),
        "only served services are advertised:\n{listed}"
    );

    running.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.server)
        .await
        .expect("server stops after shutdown")
        .expect("server task")
        .expect("server returns Ok");
}

/// The broker is not needed to answer RPCs (commands go to the outbox): the service stays
/// SERVING and the `broker` component says what is wrong (issue #14, ADR 0013).
#[tokio::test]
async fn an_unreachable_broker_is_reported_as_its_own_component_and_the_service_keeps_serving() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::empty().await;
    // A loopback port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_broker = closed.local_addr().expect("address").to_string();
    drop(closed);
    let running = start(&db, dead_broker).await;
    wait_for_health(&running.address, "", ServingStatus::Serving).await;
    // The probe that found the database also tried the broker.
    assert_eq!(health(&running.address, "broker").await, ServingStatus::NotServing);
    assert_eq!(health(&running.address, "database").await, ServingStatus::Serving);
    assert_eq!(health(&running.address, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&running.address, "fintech.test.v1.TestService").await,
        ServingStatus::Serving
    );
    running.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), running.server).await;
}
