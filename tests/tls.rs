//! TLS on the gRPC servers: a service configured with a certificate serves TLS only, clients that
//! trust its CA get through, plaintext and untrusting clients do not; with a client CA it also
//! requires a client certificate from that CA (mTLS); a certificate it cannot read stops the
//! start-up with the variable named. Certificates come from `deploy/local/certs`, the script the
//! local stack uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fintech_payments::Payments;
use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kit::Service as _;
use fintech_platform::tls::GrpcTls;
use fintech_tests::service::{create_prefixed_topics, platform_config, unique_prefix};
use fintech_tests::{TestDb, kafka_bootstrap, repo_root};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A development CA and its server and client certificates, in a temporary folder.
fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(repo_root().join("deploy/local/certs"))
        .arg(dir.path())
        .output()
        .expect("deploy/local/certs runs");
    assert!(
        output.status.success(),
        "certs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

struct Running {
    address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _db: TestDb,
}

async fn start_payments(tls: GrpcTls) -> Running {
    let db = TestDb::empty().await;
    let prefix = unique_prefix();
    let bootstrap = kafka_bootstrap();
    create_prefixed_topics(&bootstrap, &prefix, &fintech_payments::events::TOPICS).await;
    let platform = PlatformConfig {
        grpc_tls: Some(tls),
        topic_prefix: prefix,
        ..platform_config("payments", &db.url, &bootstrap)
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Payments::run(Payments::config(platform), listener, shutdown.clone()));
    Running {
        address,
        shutdown,
        task,
        _db: db,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("payments stops")
            .expect("payments task")
            .expect("payments returns Ok");
    }
}

/// A health check over a channel built by `endpoint`, or the error of the first step that failed.
async fn health_check(endpoint: Endpoint) -> Result<(), String> {
    let channel: Channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
        .map_err(|status| format!("check: {status:?}"))
}

fn tls_endpoint(address: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Endpoint {
    let read = |path: &Path| std::fs::read(path).expect("certificate file");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("client TLS config")
}

fn plaintext_endpoint(address: &str) -> Endpoint {
    Endpoint::from_shared(format!("http://{address}")).expect("endpoint")
}

/// Retries until the server has started (the listener is bound before the service serves).
async fn eventually_ok(endpoint: impl Fn() -> Endpoint) {
    let mut last = String::new();
    for _ in 0..60 {
        match health_check(endpoint()).await {
            Ok(()) => return,
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("a trusted TLS client never got through: {last}");
}

fn server_tls(dir: &Path, client_ca: Option<PathBuf>) -> GrpcTls {
    GrpcTls {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca,
    }
}

#[tokio::test]
async fn a_tls_server_answers_trusting_clients_only() {
    let certs = certificates();
    let other_ca = certificates();
    let running = start_payments(server_tls(certs.path(), None)).await;
    let address = running.address.clone();

    eventually_ok(|| tls_endpoint(&address, &certs.path().join("ca.pem"), None)).await;
    let plaintext = health_check(plaintext_endpoint(&address)).await;
    assert!(plaintext.is_err(), "plaintext must not be served: {plaintext:?}");
    let untrusting = health_check(tls_endpoint(&address, &other_ca.path().join("ca.pem"), None)).await;
    assert!(
        untrusting.is_err(),
        "a client trusting another CA must fail: {untrusting:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let certs = certificates();
    let other = certificates();
    let dir = certs.path();
    let running = start_payments(server_tls(dir, Some(dir.join("ca.pem")))).await;
    let address = running.address.clone();
    let ca = dir.join("ca.pem");

    let (cert, key) = (dir.join("client.pem"), dir.join("client-key.pem"));
    eventually_ok(|| tls_endpoint(&address, &ca, Some((&cert, &key)))).await;
    let anonymous = health_check(tls_endpoint(&address, &ca, None)).await;
    assert!(
        anonymous.is_err(),
        "no client certificate must be refused: {anonymous:?}"
    );
    let (foreign_cert, foreign_key) = (other.path().join("client.pem"), other.path().join("client-key.pem"));
    let foreign = health_check(tls_endpoint(&address, &ca, Some((&foreign_cert, &foreign_key)))).await;
    assert!(
        foreign.is_err(),
        "a client certificate of another CA must be refused: {foreign:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn an_unreadable_certificate_stops_the_start_up_naming_the_variable() {
    let running = start_payments(GrpcTls {
        cert: "/nonexistent/server.pem".into(),
        key: "/nonexistent/server-key.pem".into(),
        client_ca: None,
    })
    .await;
    let result = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("payments returns")
        .expect("payments task");
    let error = format!("{:#}", result.expect_err("start-up fails"));
    assert!(
        error.contains("GRPC_TLS_CERT") && error.contains("/nonexistent/server.pem"),
        "{error}"
    );
}
