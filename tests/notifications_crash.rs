//! SIGKILL of the notifications process in the middle of 500 deliveries: after a restart every
//! message is delivered at least once, none was created twice, and a message delivered twice
//! (attempted when the process died) carries the same `webhook-id` and body both times.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use fintech_proto::notifications as pb;
use fintech_proto::notifications::notifications_service_client::NotificationsServiceClient;
use fintech_proto::topics;
use fintech_tests::TestDb;
use fintech_tests::notifications::{Platform, Receiver, Reply, account, config, env};
use fintech_tests::process::{ServiceProcess, service_binary};
use fintech_tests::service::{connect, create_prefixed_topics, platform_config, unique_prefix};

const EVENTS: usize = 500;

fn free_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .to_string()
}

async fn wait_up(address: &str) -> NotificationsServiceClient<fintech_tests::service::Channel> {
    let client = NotificationsServiceClient::new(connect(address).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .clone()
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "notifications never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
}

#[tokio::test]
#[expect(clippy::print_stderr, reason = "the measurement is reported in the test output")]
async fn killed_during_500_deliveries_every_message_arrives_none_is_created_twice() {
    let binary = service_binary("fintech-notifications", "notifications");
    let db = TestDb::empty().await;
    let prefix = unique_prefix();
    let bootstrap = fintech_tests::kafka_bootstrap();
    let mut all_topics = fintech_notifications::sources::input_topics();
    all_topics.extend(fintech_notifications::sources::OUTPUT_TOPICS);
    create_prefixed_topics(&bootstrap, &prefix, &all_topics).await;
    let address = free_address();
    let mut settings = config(platform_config("notifications", &db.url, &bootstrap), &db, &prefix);
    settings.platform.grpc_listen_addr = address.parse().expect("address");
    // Static membership, as in the local stack: the restarted process takes over the dead one's
    // partitions at once instead of waiting for the broker to expire it.
    settings.platform.kafka_group_instance_id = Some(format!("{prefix}notifications-0"));
    // A short lease, so the messages the killed process held are taken again soon.
    settings.attempt_timeout = Duration::from_secs(2);
    settings.lease = Duration::from_secs(3);
    let env = env(&settings);
    let log = tempfile::NamedTempFile::new().expect("log");

    // Each answer takes 20 ms, so deliveries are in flight when the process dies.
    let receiver = Receiver::start(|_| Reply {
        status: 200,
        headers: Vec::new(),
        delay: Duration::from_millis(20),
    })
    .await;
    let mut service = ServiceProcess::spawn(&binary, &env, log.path());
    let client = wait_up(&address).await;
    client
        .clone()
        .create_endpoint(pb::CreateEndpointRequest {
            url: receiver.url.clone(),
            ..Default::default()
        })
        .await
        .expect("endpoint");

    let platform = Platform::new(&prefix);
    for _ in 0..EVENTS {
        let id = uuid::Uuid::new_v4().to_string();
        platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
    }
    receiver.wait_for(EVENTS / 5, Duration::from_secs(60)).await;
    service.kill();
    let at_kill = receiver.received().len();
    assert!(at_kill < EVENTS, "killed mid-way ({at_kill} delivered)");

    let _restarted = ServiceProcess::spawn(&binary, &env, log.path());
    wait_up(&address).await;
    // Generous: the new consumer waits out the dead member's session before the group rebalances,
    // and the leases of the messages the dead process held expire first (3 s).
    let deadline = Instant::now() + Duration::from_secs(240);
    let by_id = loop {
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for request in receiver.received() {
            by_id
                .entry(request.header("webhook-id").to_owned())
                .or_default()
                .push(request.body.clone());
        }
        if by_id.len() >= EVENTS {
            break by_id;
        }
        if Instant::now() >= deadline {
            let states: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT status, count(*), count(*) FILTER (WHERE lease_until > now()) FROM notification_messages GROUP BY status",
            )
            .fetch_all(&db.pool)
            .await
            .expect("states");
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_events")
                .fetch_one(&db.pool)
                .await
                .expect("events");
            let _ = std::fs::copy(log.path(), std::env::temp_dir().join("notifications-crash.log"));
            panic!(
                "{} of {EVENTS} messages delivered after the restart; {events} events stored; messages (status, count, leased): {states:?}",
                by_id.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(by_id.len(), EVENTS, "one webhook-id per event");
    for (id, bodies) in &by_id {
        assert!(
            bodies.iter().all(|body| body == &bodies[0]),
            "{id}: a duplicate carries the same body"
        );
    }
    let duplicates: usize = by_id.values().map(|bodies| bodies.len() - 1).sum();
    eprintln!("killed after {at_kill} deliveries; {duplicates} delivered twice or more, with the same webhook-id");

    let (events, messages): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notification_events), (SELECT count(DISTINCT (endpoint_id, event_sequence)) FROM notification_messages)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM notification_messages")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(events, EVENTS as i64, "each event stored once");
    assert_eq!(total, EVENTS as i64, "each message created once");
    assert_eq!(messages, total);
}
