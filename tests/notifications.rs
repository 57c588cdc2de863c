//! Notifications against the real PostgreSQL, the real broker and real HTTP receivers on
//! loopback: signatures checked by the official Python `standardwebhooks` library, the retry
//! schedule with one `webhook-id`, 410, Retry-After, secret rotation, redelivery creating no
//! second message, SSRF refusals, slow and dead endpoints that do not delay a healthy one,
//! `WatchEvents` live and resumed, and bad input naming the field.

use std::time::{Duration, Instant};

use fintech_notifications::delivery;
use fintech_notifications::domain::signing::Secret;
use fintech_notifications::domain::ssrf::SsrfPolicy;
use fintech_proto::notifications as pb;
use fintech_proto::topics;
use fintech_tests::notifications::{NotificationsHarness, Platform, PythonReceiver, Receiver, Reply, account};
use fintech_tests::{kafka_bootstrap, read_records, reader};
use rdkafka::Message as _;
use tonic::Code;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(30);
/// An address nothing listens on: endpoints created on it first, before the real URL is known.
const PLACEHOLDER: &str = "http://127.0.0.1:9/placeholder";

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

async fn point_at(harness: &NotificationsHarness, endpoint_id: &str, url: &str, types: &[&str]) {
    harness
        .client
        .clone()
        .update_endpoint(pb::UpdateEndpointRequest {
            endpoint_id: endpoint_id.to_owned(),
            url: url.to_owned(),
            event_types: types.iter().map(|kind| (*kind).to_owned()).collect(),
            description: "test".to_owned(),
            rate_limit_per_second: 0,
        })
        .await
        .expect("update endpoint");
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_official_library_verifies_every_delivery_and_rejects_a_tampered_body_and_an_old_timestamp() {
    let harness = NotificationsHarness::start().await;
    let (endpoint_id, secret) = harness.endpoint(PLACEHOLDER, &["account.opened"]).await;
    assert!(secret.starts_with("whsec_"));
    let receiver = PythonReceiver::start(&[&secret]);
    point_at(&harness, &endpoint_id, &receiver.url, &["account.opened"]).await;

    let platform = Platform::new(&harness.prefix);
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for id in &ids {
        platform.publish(&topics::ACCOUNTS_OPENED, id, &account(id)).await;
    }
    // Not of the endpoint's types: never delivered to it.
    platform
        .publish(&topics::ACCOUNTS_UPDATED, &ids[0], &account(&ids[0]))
        .await;

    let deliveries = receiver.wait_for(3, WAIT).await;
    assert_eq!(deliveries.len(), 3);
    let mut seen = Vec::new();
    for delivery in &deliveries {
        assert_eq!(delivery["verified"], true, "standardwebhooks verified {delivery}");
        assert_eq!(delivery["type"], "account.opened");
        let body: serde_json::Value = serde_json::from_str(delivery["body"].as_str().expect("body")).expect("json");
        assert!(body["timestamp"].as_str().is_some_and(|time| time.ends_with('Z')));
        seen.push(
            body["data"]["accountId"]
                .as_str()
                .expect("the entity in the JSON mapping")
                .to_owned(),
        );
        assert_eq!(body["data"]["currency"], "EUR");
        let id = delivery["headers"]["webhook-id"].as_str().expect("id");
        assert!(id.starts_with("msg_"));
    }
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);

    // The receiver (not this project's code) rejects a tampered body with genuine headers ...
    let first = &deliveries[0];
    let header = |name: &str| first["headers"][name].as_str().expect("header").to_owned();
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let genuine = first["body"].as_str().expect("body");
    let tampered = genuine.replace("EUR", "USD");
    assert_ne!(tampered, genuine);
    let headers = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature.as_str()),
    ];
    assert_eq!(receiver.post(&headers, &tampered).await, 400, "tampered body rejected");
    assert_eq!(
        receiver.post(&headers, genuine).await,
        204,
        "the genuine one still verifies"
    );
    // ... and a correctly signed message whose timestamp is ten minutes old.
    let old = chrono::Utc::now().timestamp() - 600;
    let old_signature = Secret::parse(&secret).expect("secret").sign(&id, old, genuine);
    let old_text = old.to_string();
    let stale = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", old_text.as_str()),
        ("webhook-signature", old_signature.as_str()),
    ];
    assert_eq!(receiver.post(&stale, genuine).await, 400, "old timestamp rejected");
    let logged = receiver.deliveries();
    let last = logged.last().expect("logged");
    assert_eq!(last["verified"], false);
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("timestamp"),
        "rejected for its timestamp: {last}"
    );
    harness.stop().await;
}

#[tokio::test]
async fn three_500s_then_a_200_are_four_attempts_with_one_webhook_id_on_the_schedule() {
    let harness = NotificationsHarness::start().await;
    let receiver = Receiver::start(|index| Reply::status(if index < 3 { 500 } else { 200 })).await;
    let (endpoint_id, _) = harness.endpoint(&receiver.url, &[]).await;
    let platform = Platform::new(&harness.prefix);
    let account_id = uuid::Uuid::new_v4().to_string();
    let ce_id = platform
        .publish(&topics::ACCOUNTS_OPENED, &account_id, &account(&account_id))
        .await;

    let received = receiver.wait_for(4, WAIT).await;
    let ids: Vec<&str> = received.iter().map(|request| request.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one webhook-id: {ids:?}");
    // The scaled schedule is 300 ms between attempts: never sooner (lower bounds hold however
    // busy the machine is).
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(290), "retried after {gap:?}");
    }

    let deadline = Instant::now() + WAIT;
    let message = loop {
        let messages = harness.messages(&endpoint_id).await;
        if messages.len() == 1 && messages[0].status == pb::MessageStatus::Delivered as i32 {
            break messages[0].clone();
        }
        assert!(Instant::now() < deadline, "the message is delivered: {messages:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(message.message_id, ids[0]);
    assert_eq!(message.attempts, 4);
    let attempts = harness.attempts(&message.message_id).await;
    let codes: Vec<i32> = attempts.iter().rev().map(|attempt| attempt.status_code).collect();
    assert_eq!(codes, [500, 500, 500, 200]);
    let numbers: Vec<i32> = attempts.iter().rev().map(|attempt| attempt.attempt_number).collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert!(attempts[0].success && !attempts[1].success);
    assert_eq!(attempts[1].response_snippet, "ok");
    assert!(attempts[1].error.contains("500"));

    // A redelivery of the same record (same CloudEvents id) creates no second message.
    platform
        .republish(&topics::ACCOUNTS_OPENED, &account_id, &account(&account_id), &ce_id)
        .await;
    let other = uuid::Uuid::new_v4().to_string();
    platform
        .publish(&topics::ACCOUNTS_OPENED, &other, &account(&other))
        .await;
    receiver.wait_for(5, WAIT).await;
    let messages = harness.messages(&endpoint_id).await;
    assert_eq!(messages.len(), 2, "the redelivered event created nothing: {messages:?}");

    // ResendMessage: the same webhook-id once more.
    harness
        .client
        .clone()
        .resend_message(pb::ResendMessageRequest {
            message_id: message.message_id.clone(),
        })
        .await
        .expect("resend");
    let received = receiver.wait_for(6, WAIT).await;
    assert_eq!(received[5].header("webhook-id"), message.message_id);
    harness.stop().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint_tells_the_operators_and_messages_wait_for_enable() {
    let harness = NotificationsHarness::start().await;
    let receiver = Receiver::start(|index| Reply::status(if index == 0 { 410 } else { 200 })).await;
    let (endpoint_id, _) = harness.endpoint(&receiver.url, &[]).await;
    let operators = reader(
        &kafka_bootstrap(),
        &[&harness.topic(topics::NOTIFICATIONS_ENDPOINT_DISABLED.name)],
    );
    let platform = Platform::new(&harness.prefix);
    let first = uuid::Uuid::new_v4().to_string();
    platform
        .publish(&topics::ACCOUNTS_OPENED, &first, &account(&first))
        .await;
    receiver.wait_for(1, WAIT).await;
    let (h, id) = (&harness, endpoint_id.as_str());
    wait_until("the endpoint is disabled", || async move {
        h.endpoint_state(id).await.disabled
    })
    .await;
    let endpoint = harness.endpoint_state(&endpoint_id).await;
    assert!(endpoint.disabled_reason.contains("410"), "{}", endpoint.disabled_reason);

    let records = read_records(&operators, 1, WAIT).await;
    assert_eq!(records.len(), 1, "notifications.endpoint_disabled published");
    let disabled =
        <pb::EndpointDisabled as prost::Message>::decode(records[0].payload().expect("payload")).expect("decodes");
    assert_eq!(disabled.endpoint.expect("endpoint").endpoint_id, endpoint_id);

    // The 410'd message is failed, not retried; a new event waits while the endpoint is disabled.
    let second = uuid::Uuid::new_v4().to_string();
    platform
        .publish(&topics::ACCOUNTS_OPENED, &second, &account(&second))
        .await;
    wait_until("the second message exists", || async move {
        h.messages(id).await.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1, "nothing is sent to a disabled endpoint");
    let messages = harness.messages(&endpoint_id).await;
    assert_eq!(messages[1].status, pb::MessageStatus::Failed as i32);
    assert_eq!(messages[0].status, pb::MessageStatus::Pending as i32);

    harness
        .client
        .clone()
        .enable_endpoint(pb::EnableEndpointRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .expect("enable");
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received[1].header("webhook-id"), messages[0].message_id);

    // RecoverSince queues the failed one again (and the delivered one).
    let queued = harness
        .client
        .clone()
        .recover_since(pb::RecoverSinceRequest {
            endpoint_id: endpoint_id.clone(),
            since: Some(fintech_proto::time::timestamp(
                chrono::Utc::now() - chrono::Duration::hours(1),
            )),
        })
        .await
        .expect("recover")
        .into_inner()
        .queued;
    assert!(queued >= 1, "queued {queued}");
    let received = receiver
        .wait_for(2 + usize::try_from(queued).expect("small"), WAIT)
        .await;
    assert!(
        received
            .iter()
            .any(|request| request.header("webhook-id") == messages[1].message_id)
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_2_is_retried_no_sooner_than_2_seconds_later() {
    let harness = NotificationsHarness::start().await;
    let receiver = Receiver::start(|index| {
        if index == 0 {
            Reply {
                status: 429,
                headers: vec![("Retry-After".to_owned(), "2".to_owned())],
                delay: Duration::ZERO,
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    harness.endpoint(&receiver.url, &[]).await;
    let platform = Platform::new(&harness.prefix);
    let id = uuid::Uuid::new_v4().to_string();
    platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
    let received = receiver.wait_for(2, WAIT).await;
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?} (the schedule alone says 300 ms)"
    );
    assert_eq!(received[0].header("webhook-id"), received[1].header("webhook-id"));
    harness.stop().await;
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_and_either_verifies() {
    let harness = NotificationsHarness::start().await;
    let (endpoint_id, old_secret) = harness.endpoint(PLACEHOLDER, &[]).await;
    let rotated = harness
        .client
        .clone()
        .rotate_secret(pb::RotateSecretRequest {
            endpoint_id: endpoint_id.clone(),
            overlap_seconds: 3600,
        })
        .await
        .expect("rotate")
        .into_inner();
    assert!(rotated.secret.starts_with("whsec_"));
    assert_ne!(rotated.secret, old_secret);
    let old_only = PythonReceiver::start(&[&old_secret]);
    let new_only = PythonReceiver::start(&[&rotated.secret]);
    point_at(&harness, &endpoint_id, &old_only.url, &[]).await;

    let platform = Platform::new(&harness.prefix);
    let id = uuid::Uuid::new_v4().to_string();
    platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
    let deliveries = old_only.wait_for(1, WAIT).await;
    let delivery = &deliveries[0];
    assert_eq!(delivery["verified"], true, "the old secret verifies: {delivery}");
    let signature = delivery["headers"]["webhook-signature"].as_str().expect("signature");
    assert_eq!(signature.split(' ').count(), 2, "two signatures: {signature}");
    assert!(signature.split(' ').all(|part| part.starts_with("v1,")));

    // The same delivery, as sent, verifies with the new secret alone.
    let header = |name: &str| delivery["headers"][name].as_str().expect("header").to_owned();
    let (webhook_id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let headers = [
        ("webhook-id", webhook_id.as_str()),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", signature),
    ];
    assert_eq!(
        new_only.post(&headers, delivery["body"].as_str().expect("body")).await,
        204
    );
    assert_eq!(new_only.deliveries()[0]["verified"], true);

    // After the overlap only the new secret signs.
    harness
        .client
        .clone()
        .rotate_secret(pb::RotateSecretRequest {
            endpoint_id: endpoint_id.clone(),
            overlap_seconds: 1,
        })
        .await
        .expect("rotate again");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    harness
        .client
        .clone()
        .send_test_event(pb::SendTestEventRequest {
            endpoint_id: endpoint_id.clone(),
        })
        .await
        .expect("test event");
    let deliveries = old_only.wait_for(2, WAIT).await;
    let signature = deliveries[1]["headers"]["webhook-signature"]
        .as_str()
        .expect("signature");
    assert_eq!(
        signature.split(' ').count(),
        1,
        "one secret after the overlap: {signature}"
    );
    assert_eq!(deliveries[1]["verified"], false, "the first secret no longer signs");
    harness.stop().await;
}

#[tokio::test]
async fn destinations_on_loopback_private_link_local_or_metadata_addresses_are_refused_unless_allowlisted() {
    let strict = NotificationsHarness::start_with(|config| {
        config.ssrf = SsrfPolicy {
            allow_http: true,
            allowed: Vec::new(),
        };
    })
    .await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
        "http://[::ffff:10.0.0.1]/hook",
    ] {
        let status = strict
            .client
            .clone()
            .create_endpoint(pb::CreateEndpointRequest {
                url: url.to_owned(),
                ..Default::default()
            })
            .await
            .expect_err(url);
        assert_eq!(status.code(), Code::InvalidArgument, "{url}");
        assert_eq!(bad_fields(&status), ["url"], "{url}: {}", status.message());
    }
    strict.stop().await;

    // https only unless http is allowed.
    let https_only = NotificationsHarness::start_with(|config| config.ssrf = SsrfPolicy::default()).await;
    let status = https_only
        .client
        .clone()
        .create_endpoint(pb::CreateEndpointRequest {
            url: "http://hooks.example.com/x".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("http refused");
    assert_eq!(bad_fields(&status), ["url"]);
    https_only.stop().await;

    // Allowlisted loopback (the tests' and the local stack's setting): accepted; 10/8 still not.
    let allowlisted = NotificationsHarness::start().await;
    for url in ["http://127.0.0.1:8080/hook", "http://[::1]:8080/hook"] {
        allowlisted
            .client
            .clone()
            .create_endpoint(pb::CreateEndpointRequest {
                url: url.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("{url} allowlisted: {status:?}"));
    }
    let status = allowlisted
        .client
        .clone()
        .create_endpoint(pb::CreateEndpointRequest {
            url: "http://10.0.0.1/hook".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("private still refused");
    assert_eq!(bad_fields(&status), ["url"]);
    allowlisted.stop().await;

    // At delivery: a name resolved to loopback is refused by the resolver, a literal by the
    // check before it; a real receiver gets nothing. With the allowlist the same request lands.
    let receiver = Receiver::start(|_| Reply::status(200)).await;
    let port = receiver
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .to_owned();
    let settings = |policy: SsrfPolicy| delivery::DeliverySettings {
        schedule: vec![Duration::ZERO],
        jitter_percent: 0,
        attempt_timeout: Duration::from_secs(15),
        lease: Duration::from_secs(20),
        disable_after: Duration::from_secs(3600),
        policy,
        workers: 1,
        per_endpoint: 1,
        poll_interval: Duration::from_millis(20),
    };
    let refusing = SsrfPolicy {
        allow_http: true,
        allowed: Vec::new(),
    };
    let client = delivery::http_client(&settings(refusing.clone())).expect("client");
    for url in [format!("http://localhost:{port}/hook"), receiver.url.clone()] {
        let outcome = delivery::send(&client, &refusing, &url, &[], "{}").await;
        assert_eq!(outcome.status, None, "{url}");
        assert!(
            outcome.error.contains("destination refused"),
            "{url}: {}",
            outcome.error
        );
    }
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
    let allowing = fintech_tests::notifications::loopback_allowed();
    let client = delivery::http_client(&settings(allowing.clone())).expect("client");
    let outcome = delivery::send(&client, &allowing, &format!("http://localhost:{port}/hook"), &[], "{}").await;
    assert_eq!(outcome.status, Some(200), "{}", outcome.error);
    assert_eq!(receiver.received().len(), 1);
}

/// Isolation, shown by cause rather than by timing (the latency beside a dead and a slow endpoint
/// is measured by the bench's notifications scenario): a slow endpoint whose attempts never
/// finish keeps exactly its own slots, a dead one keeps failing and retrying, and a healthy
/// endpoint still gets every event, with only four workers in all.
#[tokio::test]
async fn a_dead_and_a_slow_endpoint_do_not_hold_up_a_healthy_one() {
    const WORKERS: usize = 4;
    const PER_ENDPOINT: usize = 2;
    let harness = NotificationsHarness::start_with(|config| {
        config.workers = WORKERS;
        config.per_endpoint = PER_ENDPOINT;
        // The slow endpoint's attempts stay in flight for the whole test.
        config.attempt_timeout = Duration::from_secs(240);
        config.lease = Duration::from_secs(300);
    })
    .await;
    let healthy = Receiver::start(|_| Reply::status(200)).await;
    let slow = Receiver::holding().await;
    let dead_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/hook", listener.local_addr().expect("address"))
    };
    harness.endpoint(&healthy.url, &[]).await;
    let (slow_id, _) = harness.endpoint(&slow.url, &[]).await;
    let (dead_id, _) = harness.endpoint(&dead_url, &[]).await;
    let platform = Platform::new(&harness.prefix);
    let publish = |count: usize| {
        let platform = &platform;
        async move {
            for _ in 0..count {
                let id = uuid::Uuid::new_v4().to_string();
                platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
            }
        }
    };

    // First the slow endpoint fills its slots and the dead one starts failing.
    let first = 5;
    publish(first).await;
    slow.wait_for(PER_ENDPOINT, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while !harness
        .messages(&dead_id)
        .await
        .iter()
        .any(|message| message.attempts >= 2)
    {
        assert!(Instant::now() < deadline, "the dead endpoint was never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Then, with both still stuck, every event reaches the healthy endpoint, once.
    let second = 20;
    publish(second).await;
    let received = healthy.wait_for(first + second, WAIT).await;
    let ids: std::collections::BTreeSet<&str> = received.iter().map(|request| request.header("webhook-id")).collect();
    assert_eq!((received.len(), ids.len()), (first + second, first + second));
    assert_eq!(
        (slow.received().len(), slow.answered()),
        (PER_ENDPOINT, 0),
        "the slow endpoint holds its own slots only, and none of them finished"
    );
    let dead = harness.messages(&dead_id).await;
    assert_eq!(
        dead.len(),
        first + second,
        "every event became a message for the dead endpoint too"
    );
    assert!(
        dead.iter()
            .all(|message| message.status() != pb::MessageStatus::Delivered),
        "nothing reached the dead endpoint: {dead:?}"
    );

    // Released, the slow endpoint gets everything that waited for it.
    slow.release();
    slow.wait_for(first + second, WAIT).await;
    let deadline = Instant::now() + WAIT;
    while harness
        .messages(&slow_id)
        .await
        .iter()
        .any(|message| message.status() != pb::MessageStatus::Delivered)
    {
        assert!(
            Instant::now() < deadline,
            "the slow endpoint's messages were not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn watch_events_streams_live_and_resumes_after_a_reconnect_without_gaps() {
    let harness = NotificationsHarness::start().await;
    let platform = Platform::new(&harness.prefix);
    let mut stream = harness
        .client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            event_types: vec!["account.opened".to_owned()],
            after_event_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut accounts = Vec::new();
    for _ in 0..3 {
        let id = uuid::Uuid::new_v4().to_string();
        platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
        // Filtered out of this stream.
        platform.publish(&topics::ACCOUNTS_UPDATED, &id, &account(&id)).await;
        accounts.push(id);
    }
    let mut live = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("an event")
            .event
            .expect("event");
        live.push(event);
    }
    drop(stream);
    let subjects: Vec<&str> = live.iter().map(|event| event.subject.as_str()).collect();
    let mut sorted = subjects.clone();
    sorted.sort_unstable();
    let mut expected: Vec<&str> = accounts.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(sorted, expected);
    assert!(live.iter().all(|event| event.event_type == "account.opened"));
    let body: serde_json::Value = serde_json::from_str(&live[0].payload_json).expect("json");
    assert_eq!(body["type"], "account.opened");

    // Disconnected: three more happen; a reconnect after the last one seen gets exactly those.
    for _ in 0..3 {
        let id = uuid::Uuid::new_v4().to_string();
        platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
        accounts.push(id);
    }
    let mut resumed = harness
        .client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            event_types: vec!["account.opened".to_owned()],
            after_event_id: live[2].event_id.clone(),
        })
        .await
        .expect("resume")
        .into_inner();
    let mut later = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(WAIT, resumed.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("an event")
            .event
            .expect("event");
        later.push(event.subject);
    }
    later.sort();
    let mut expected: Vec<String> = accounts[3..].to_vec();
    expected.sort();
    assert_eq!(later, expected, "the three missed, nothing else");
    // Nothing more (no duplicate of the first three).
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), resumed.message())
            .await
            .is_err()
    );
    drop(resumed);

    // From the first event: the other five in commit order.
    let mut replay = harness
        .client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            event_types: vec!["account.opened".to_owned()],
            after_event_id: live[0].event_id.clone(),
        })
        .await
        .expect("replay")
        .into_inner();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let event = tokio::time::timeout(WAIT, replay.message())
            .await
            .expect("in time")
            .expect("stream")
            .expect("an event")
            .event
            .expect("event");
        ids.push(event.event_id);
    }
    assert_eq!(&ids[..2], [live[1].event_id.clone(), live[2].event_id.clone()]);
    drop(replay);
    harness.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_changes_nothing() {
    let harness = NotificationsHarness::start().await;
    let mut client = harness.client.clone();
    let status = client
        .create_endpoint(pb::CreateEndpointRequest {
            url: "not a url".to_owned(),
            event_types: vec!["Bad Type".to_owned()],
            description: "x".repeat(501),
            rate_limit_per_second: -1,
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        bad_fields(&status),
        ["url", "event_types[0]", "description", "rate_limit_per_second"]
    );
    let status = client
        .create_endpoint(pb::CreateEndpointRequest::default())
        .await
        .expect_err("no url");
    assert_eq!(bad_fields(&status), ["url"]);
    let listed = client
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.endpoints.is_empty(), "nothing was created");

    let (endpoint_id, _) = harness.endpoint(PLACEHOLDER, &[]).await;
    let cases: Vec<(tonic::Status, &str)> = vec![
        (
            client
                .list_messages(pb::ListMessagesRequest {
                    endpoint_id: "nope".to_owned(),
                    ..Default::default()
                })
                .await
                .expect_err("bad id"),
            "endpoint_id",
        ),
        (
            client
                .list_messages(pb::ListMessagesRequest {
                    endpoint_id: endpoint_id.clone(),
                    page_size: 501,
                    page_token: String::new(),
                })
                .await
                .expect_err("page size"),
            "page_size",
        ),
        (
            client
                .list_attempts(pb::ListAttemptsRequest::default())
                .await
                .expect_err("neither"),
            "message_id",
        ),
        (
            client
                .recover_since(pb::RecoverSinceRequest {
                    endpoint_id: endpoint_id.clone(),
                    since: None,
                })
                .await
                .expect_err("no since"),
            "since",
        ),
        (
            client
                .rotate_secret(pb::RotateSecretRequest {
                    endpoint_id: endpoint_id.clone(),
                    overlap_seconds: -5,
                })
                .await
                .expect_err("overlap"),
            "overlap_seconds",
        ),
        (
            client
                .resend_message(pb::ResendMessageRequest {
                    message_id: "msg_zz".to_owned(),
                })
                .await
                .expect_err("message id"),
            "message_id",
        ),
        (
            client
                .watch_events(pb::WatchEventsRequest {
                    event_types: Vec::new(),
                    after_event_id: "evt_123".to_owned(),
                })
                .await
                .map(|_| ())
                .expect_err("event id"),
            "after_event_id",
        ),
        (
            client
                .update_endpoint(pb::UpdateEndpointRequest {
                    endpoint_id: endpoint_id.clone(),
                    url: "ftp://example.com/x".to_owned(),
                    ..Default::default()
                })
                .await
                .expect_err("scheme"),
            "url",
        ),
    ];
    for (status, field) in cases {
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(bad_fields(&status), [field], "{}", status.message());
    }
    // An unknown (well-formed) id is NOT_FOUND.
    let status = client
        .delete_endpoint(pb::DeleteEndpointRequest {
            endpoint_id: format!("ep_{}", uuid::Uuid::new_v4().simple()),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    // The rejected update changed nothing.
    assert_eq!(harness.endpoint_state(&endpoint_id).await.url, PLACEHOLDER);
    harness.stop().await;
}

#[tokio::test]
async fn endpoints_belong_to_their_creator() {
    use fintech_proto::notifications::notifications_service_client::NotificationsServiceClient;
    use fintech_tests::auth::scoped_token;
    use fintech_tests::service::connect_with_token;

    let harness = NotificationsHarness::start().await;
    let scopes = ["notifications.read", "notifications.write"];
    let mut alice =
        NotificationsServiceClient::new(connect_with_token(&harness.address, &scoped_token("alice", &scopes)).await);
    let mut bob =
        NotificationsServiceClient::new(connect_with_token(&harness.address, &scoped_token("bob", &scopes)).await);
    let created = alice
        .create_endpoint(pb::CreateEndpointRequest {
            url: PLACEHOLDER.to_owned(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .endpoint
        .expect("endpoint");
    assert_eq!(created.owner, "alice");
    let listed = bob
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.endpoints.is_empty(), "bob sees none of alice's");
    let status = bob
        .rotate_secret(pb::RotateSecretRequest {
            endpoint_id: created.endpoint_id.clone(),
            overlap_seconds: 0,
        })
        .await
        .expect_err("not bob's");
    assert_eq!(status.code(), Code::NotFound);
    // The operator (notifications.admin) sees every endpoint.
    let all = harness
        .client
        .clone()
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.endpoints.len(), 1);
    // A customer token may not call the service at all.
    let customer = fintech_tests::auth::customer_token("customer-1", &scopes);
    let mut as_customer = NotificationsServiceClient::new(connect_with_token(&harness.address, &customer).await);
    let status = as_customer
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .expect_err("customers refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    harness.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_longer_than_the_limit_is_disabled_with_an_operator_event() {
    // The 5 days, scaled to 1 s: a dead endpoint (connection refused) fails every 300 ms.
    let harness = NotificationsHarness::start_with(|config| config.disable_after = Duration::from_secs(1)).await;
    let dead_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/hook", listener.local_addr().expect("address"))
    };
    let (endpoint_id, _) = harness.endpoint(&dead_url, &[]).await;
    let operators = reader(
        &kafka_bootstrap(),
        &[&harness.topic(topics::NOTIFICATIONS_ENDPOINT_DISABLED.name)],
    );
    let platform = Platform::new(&harness.prefix);
    let id = uuid::Uuid::new_v4().to_string();
    platform.publish(&topics::ACCOUNTS_OPENED, &id, &account(&id)).await;
    let (h, endpoint) = (&harness, endpoint_id.as_str());
    wait_until("the endpoint is disabled", || async move {
        h.endpoint_state(endpoint).await.disabled
    })
    .await;
    let state = harness.endpoint_state(&endpoint_id).await;
    assert!(
        state.disabled_reason.contains("every attempt failed since"),
        "{}",
        state.disabled_reason
    );
    assert!(state.failing_since.is_some());
    let records = read_records(&operators, 1, WAIT).await;
    assert_eq!(records.len(), 1, "notifications.endpoint_disabled published");
    let message = &harness.messages(&endpoint_id).await[0];
    let attempts = harness.attempts(&message.message_id).await;
    assert!(attempts.len() >= 2, "failed more than once before: {}", attempts.len());
    assert!(
        attempts
            .iter()
            .all(|attempt| attempt.status_code == 0 && !attempt.error.is_empty())
    );
    harness.stop().await;
}
