//! Health that means something (issue #14, ADR 0013): with its broker down, payments keeps taking
//! commands and stays SERVING (its outbox holds their events) while its relay reports NOT_SERVING;
//! once the broker is back, the relay is SERVING again and every acknowledged command's event is
//! published.

use std::collections::HashSet;
use std::time::Duration;

use fintech_devkit::broker::PrivateBroker;
use fintech_payments::Payments;
use fintech_platform::CancellationToken;
use fintech_platform::kit::Service as _;
use fintech_platform::{outbox, telemetry};
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use fintech_tests::payments::{connect, platform_config, unique_prefix};
use fintech_tests::service::Channel;
use fintech_tests::service::create_prefixed_topics;
use fintech_tests::{TestDb, header, read_records, reader};
use rdkafka::Message as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health_of(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_for(channel: &Channel, service: &str, expected: ServingStatus, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = health_of(channel, service).await;
        if status == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health of {service:?} is {status:?}, not {expected:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_takes_commands_while_the_broker_is_down_and_publishes_every_event_once_it_is_back() {
    let _telemetry = telemetry::init("test");
    let mut broker = PrivateBroker::start().await.expect("private broker starts");
    let bootstrap = broker.bootstrap().to_owned();
    let prefix = unique_prefix();
    create_prefixed_topics(&bootstrap, &prefix, &fintech_payments::events::TOPICS).await;
    let db = TestDb::empty().await;
    let mut platform = platform_config("payments", &db.url, &bootstrap);
    platform.topic_prefix = prefix.clone();
    // Sends to a dead broker fail after 2 s instead of 30 s, so the relay notices soon.
    platform.outbox_delivery_timeout = Duration::from_secs(2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Payments::run(Payments::config(platform), listener, shutdown.clone()));
    let channel = connect(&address).await;
    wait_for(&channel, "", ServingStatus::Serving, Duration::from_secs(30)).await;
    wait_for(&channel, "relay-0", ServingStatus::Serving, Duration::from_secs(30)).await;

    broker.kill();
    let mut client = PaymentsServiceClient::new(channel.clone());
    let mut orders = HashSet::new();
    for n in 0..20 {
        let mut request = tonic::Request::new(pb::CreateOrderRequest {
            customer_id: format!("customer-{n}"),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 1_000 + n,
            product_type: "standard".to_owned(),
        });
        request
            .metadata_mut()
            .insert("idempotency-key", format!("broker-down-{n}").parse().expect("ascii"));
        let order = client
            .create_order(request)
            .await
            .expect("a command is acknowledged while the broker is down")
            .into_inner()
            .order
            .expect("the created order");
        orders.insert(order.order_id);
    }
    // The relay cannot publish: its component says so, the service keeps serving.
    wait_for(&channel, "relay-0", ServingStatus::NotServing, Duration::from_secs(60)).await;
    wait_for(&channel, "broker", ServingStatus::NotServing, Duration::from_secs(30)).await;
    assert_eq!(health_of(&channel, "").await, Some(ServingStatus::Serving));
    assert_eq!(
        health_of(&channel, "fintech.payments.v1.PaymentsService").await,
        Some(ServingStatus::Serving)
    );
    assert_eq!(
        outbox::parked_count(&db.pool).await.expect("parked"),
        0,
        "an outage parks nothing"
    );

    broker.start_again().await.expect("private broker starts again");
    wait_for(&channel, "relay-0", ServingStatus::Serving, Duration::from_secs(90)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while outbox::backlog(&db.pool).await.expect("backlog").unpublished > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let topic = format!("{prefix}orders.created");
    let consumer = reader(&bootstrap, &[&topic]);
    let mut published = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while published.len() < orders.len() && tokio::time::Instant::now() < deadline {
        for record in read_records(&consumer, 1, Duration::from_secs(2)).await {
            assert!(header(&record, "ce_id").is_some());
            published.insert(String::from_utf8_lossy(record.key().expect("key")).into_owned());
        }
    }
    let missing: Vec<_> = orders.difference(&published).collect();
    assert!(
        missing.is_empty(),
        "orders whose event was never published: {missing:?}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("payments stops")
        .expect("payments task")
        .expect("payments stops cleanly");
}
