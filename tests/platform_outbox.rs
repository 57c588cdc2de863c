//! Transactional outbox against the real PostgreSQL and the real broker: the round trip keeps key,
//! payload, CloudEvents headers and trace id; two relays, and one relay with overlapping rounds,
//! publish every row exactly once and in key order; a broker outage loses nothing; a row the broker
//! always rejects is parked without holding up the others.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fintech_devkit::broker::PrivateBroker;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::EventProducer;
use fintech_platform::kit::Kit;
use fintech_platform::outbox::{self, OutboxEvent, OutboxRelay, RelaySettings};
use fintech_platform::{metrics, telemetry};
use fintech_proto::payments::Order;
use fintech_tests::{TestDb, create_topics, header, kafka_bootstrap, read_extra, read_records, reader, unique_topic};
use prost::Message as _;
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn order(key: &str, version: i64) -> Order {
    Order {
        order_id: key.to_owned(),
        customer_id: "cust-1".to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount: 1000 + version,
        product_type: "standard".to_owned(),
        created_at: None,
        updated_at: None,
        version,
    }
}

async fn enqueue_orders(db: &TestDb, topic: &str, keys: usize, versions: i64) {
    enqueue_versions(db, topic, keys, 1..=versions).await;
}

/// Versions `versions` of orders `order-0` … `order-<keys - 1>`, in one transaction.
async fn enqueue_versions(db: &TestDb, topic: &str, keys: usize, versions: std::ops::RangeInclusive<i64>) {
    let mut tx = db.pool.begin().await.expect("begin");
    for version in versions {
        for key in 0..keys {
            let key = format!("order-{key}");
            let event = OutboxEvent::protobuf(
                topic,
                &key,
                "fintech.payments.v1.order.updated",
                "fintech.payments.v1.Order",
                &order(&key, version),
                chrono::Utc::now(),
            );
            outbox::enqueue(&mut tx, "/fintech/test", &event)
                .await
                .expect("enqueue");
        }
    }
    tx.commit().await.expect("commit");
}

/// Reads `topic` from the beginning: `total` records, each row exactly once, keys in order.
async fn assert_topic_once_and_in_key_order(bootstrap: &str, topic: &str, total: usize) {
    let consumer = reader(bootstrap, &[topic]);
    let mut records = read_records(&consumer, total, Duration::from_secs(30)).await;
    records.extend(read_extra(&consumer, Duration::from_secs(2)).await);
    assert_once_and_in_key_order(&records, total);
}

/// Every row published exactly once (by `ce_id`), and each key's versions in ascending order.
fn assert_once_and_in_key_order(records: &[rdkafka::message::OwnedMessage], total: usize) {
    let mut seen = HashSet::new();
    for record in records {
        assert!(
            seen.insert(header(record, "ce_id").expect("ce_id")),
            "a row was published twice"
        );
    }
    assert_eq!(seen.len(), total, "every row published exactly once");

    // Records of one key share a partition; read in partition order their versions must ascend.
    let mut last_version: HashMap<Vec<u8>, i64> = HashMap::new();
    for record in records {
        let version = Order::decode(record.payload().expect("payload"))
            .expect("decodes")
            .version;
        let key = record.key().expect("key").to_vec();
        let previous = last_version.insert(key.clone(), version).unwrap_or(0);
        assert_eq!(
            version,
            previous + 1,
            "key {:?} out of order",
            String::from_utf8_lossy(&key)
        );
    }
}

async fn wait_for_empty_backlog(db: &TestDb, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let backlog = outbox::backlog(&db.pool).await.expect("backlog");
        if backlog.unpublished == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog still {backlog:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn round_trip_keeps_key_payload_cloudevents_headers_and_trace_id() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let bootstrap = kafka_bootstrap();
    let topic = unique_topic("outbox");
    create_topics(&bootstrap, &[&topic], 3).await;

    let payload = order("order-42", 1);
    let request_span = tracing::info_span!("request");
    telemetry::set_remote_parent(
        &request_span,
        &telemetry::TraceHeaders {
            traceparent: Some(format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
            tracestate: None,
        },
    );
    let event_id = async {
        let mut tx = db.pool.begin().await.expect("begin");
        let event = OutboxEvent::protobuf(
            &topic,
            "order-42",
            "fintech.payments.v1.order.created",
            "fintech.payments.v1.Order",
            &payload,
            chrono::Utc::now(),
        );
        let id = outbox::enqueue(&mut tx, "/fintech/payments", &event)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        id
    }
    .instrument(request_span)
    .await;

    let backlog = outbox::backlog(&db.pool).await.expect("backlog");
    assert_eq!(backlog.unpublished, 1);
    assert!(backlog.oldest_age.is_some());

    let producer = EventProducer::new(&bootstrap, "test-relay", Duration::from_secs(10)).expect("producer");
    let relay = OutboxRelay::new(db.pool.clone(), producer, RelaySettings::default());
    let outcome = relay.publish_round().await.expect("round");
    assert_eq!((outcome.published, outcome.failed), (1, 0));
    assert_eq!(outbox::backlog(&db.pool).await.expect("backlog").unpublished, 0);

    let consumer = reader(&bootstrap, &[&topic]);
    let records = read_records(&consumer, 1, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "the event reached the topic");
    let record = &records[0];
    assert_eq!(record.key(), Some(&b"order-42"[..]));
    assert_eq!(
        Order::decode(record.payload().expect("payload")).expect("decodes"),
        payload
    );
    assert_eq!(header(record, "ce_id"), Some(event_id.to_string()));
    assert_eq!(
        header(record, "ce_type").as_deref(),
        Some("fintech.payments.v1.order.created")
    );
    assert_eq!(header(record, "ce_source").as_deref(), Some("/fintech/payments"));
    assert_eq!(header(record, "ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header(record, "content-type").as_deref(), Some("application/protobuf"));
    assert_eq!(
        header(record, "ce_dataschema").as_deref(),
        Some("type.googleapis.com/fintech.payments.v1.Order")
    );
    let ce_time = header(record, "ce_time").expect("ce_time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&ce_time).is_ok(),
        "ce_time is RFC 3339: {ce_time}"
    );
    let traceparent = header(record, "traceparent").expect("traceparent header");
    assert_eq!(
        telemetry::trace_id_of(&traceparent),
        Some(TRACE_ID),
        "same trace as the request"
    );
    assert!(
        read_extra(&consumer, Duration::from_secs(1)).await.is_empty(),
        "exactly one record"
    );
}

#[tokio::test]
async fn two_relays_publish_every_row_exactly_once_and_in_key_order() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let bootstrap = kafka_bootstrap();
    let topic = unique_topic("outbox-relays");
    create_topics(&bootstrap, &[&topic], 3).await;
    let (keys, versions) = (20, 10);
    enqueue_orders(&db, &topic, keys, versions).await;
    let total = keys * versions as usize;

    let shutdown = CancellationToken::new();
    let settings = RelaySettings {
        batch_size: 7,
        poll_interval: Duration::from_millis(10),
        ..RelaySettings::default()
    };
    let relays: Vec<_> = (0..2)
        .map(|index| {
            let producer = EventProducer::new(&bootstrap, &format!("test-relay-{index}"), Duration::from_secs(10))
                .expect("producer");
            let relay = OutboxRelay::new(db.pool.clone(), producer, settings.clone());
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();
    wait_for_empty_backlog(&db, Duration::from_secs(60)).await;
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("relay task");
    }

    assert_topic_once_and_in_key_order(&bootstrap, &topic, total).await;
}

#[tokio::test]
async fn overlapping_rounds_keep_key_order_while_rows_keep_arriving() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let bootstrap = kafka_bootstrap();
    let topic = unique_topic("outbox-overlap");
    create_topics(&bootstrap, &[&topic], 3).await;
    let (keys, versions) = (15, 12);
    let total = keys * versions as usize;

    // One relay, small rounds, four of them awaiting acknowledgements at once, claiming again a
    // millisecond after each: the next version of a key is committed while its previous one is
    // in flight.
    let shutdown = CancellationToken::new();
    let settings = RelaySettings {
        batch_size: 5,
        poll_interval: Duration::from_millis(5),
        gather: Duration::from_millis(1),
        rounds_in_flight: 4,
        ..RelaySettings::default()
    };
    let producer = EventProducer::new(&bootstrap, "test-relay-overlap", Duration::from_secs(10)).expect("producer");
    let relay = tokio::spawn(OutboxRelay::new(db.pool.clone(), producer, settings).run(shutdown.clone()));
    for version in 1..=versions {
        enqueue_versions(&db, &topic, keys, version..=version).await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    wait_for_empty_backlog(&db, Duration::from_secs(60)).await;
    shutdown.cancel();
    relay.await.expect("relay task");

    assert_topic_once_and_in_key_order(&bootstrap, &topic, total).await;
}

#[tokio::test]
async fn broker_outage_loses_nothing_and_the_relay_resumes_by_itself() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let mut broker = PrivateBroker::start().await.expect("private broker starts");
    let bootstrap = broker.bootstrap().to_owned();
    let topic = unique_topic("outbox-outage");
    create_topics(&bootstrap, &[&topic], 1).await;

    let shutdown = CancellationToken::new();
    let producer = EventProducer::new(&bootstrap, "test-relay-outage", Duration::from_secs(2)).expect("producer");
    let settings = RelaySettings {
        batch_size: 50,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        ..RelaySettings::default()
    };
    let relay = tokio::spawn(OutboxRelay::new(db.pool.clone(), producer, settings).run(shutdown.clone()));

    broker.kill();
    enqueue_orders(&db, &topic, 5, 4).await;

    // While the broker is down the rows stay, and the failures are recorded on them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE last_error IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        if failed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never tried while the broker was down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        outbox::backlog(&db.pool).await.expect("backlog").unpublished,
        20,
        "nothing marked while down"
    );

    broker.start_again().await.expect("private broker starts again");
    wait_for_empty_backlog(&db, Duration::from_secs(90)).await;
    shutdown.cancel();
    relay.await.expect("relay task");

    let consumer = reader(&bootstrap, &[&topic]);
    let records = read_records(&consumer, 20, Duration::from_secs(30)).await;
    let ids: HashSet<_> = records.iter().filter_map(|record| header(record, "ce_id")).collect();
    let expected: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM outbox")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    assert_eq!(expected.len(), 20);
    for id in &expected {
        assert!(ids.contains(id), "event {id} lost");
    }
}

#[tokio::test]
async fn a_stalled_broker_times_sends_out_and_the_relay_recovers_without_losing_anything() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let broker = PrivateBroker::start().await.expect("private broker starts");
    let bootstrap = broker.bootstrap().to_owned();
    let topic = unique_topic("outbox-stall");
    create_topics(&bootstrap, &[&topic], 1).await;

    let shutdown = CancellationToken::new();
    let producer = EventProducer::new(&bootstrap, "test-relay-stall", Duration::from_secs(2)).expect("producer");
    let settings = RelaySettings {
        batch_size: 50,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        ..RelaySettings::default()
    };
    let relay = tokio::spawn(OutboxRelay::new(db.pool.clone(), producer, settings).run(shutdown.clone()));
    enqueue_orders(&db, &topic, 5, 1).await;
    wait_for_empty_backlog(&db, Duration::from_secs(30)).await;

    // In-flight sends time out while the broker is frozen: the idempotent producer would bump its
    // epoch on the next send, so the relay must carry on with a fresh producer.
    broker.freeze().expect("broker frozen");
    enqueue_orders(&db, &topic, 5, 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.thaw().expect("broker thawed");
    wait_for_empty_backlog(&db, Duration::from_secs(90)).await;
    shutdown.cancel();
    relay.await.expect("relay task");

    assert!(
        fintech_platform::kafka::broker_reachable(&bootstrap, Duration::from_secs(5)).await,
        "the broker still serves metadata"
    );
    // Requests the frozen broker had already read are applied when it thaws, so some events may
    // arrive twice (at-least-once; consumers drop repeats by ce_id). None may be missing.
    let expected: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM outbox")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    assert_eq!(expected.len(), 15);
    let consumer = reader(&bootstrap, &[&topic]);
    let mut ids = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while expected.iter().any(|id| !ids.contains(id)) && tokio::time::Instant::now() < deadline {
        for record in read_records(&consumer, 1, Duration::from_secs(2)).await {
            ids.insert(header(&record, "ce_id").expect("ce_id"));
        }
    }
    let missing: Vec<_> = expected.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(missing.is_empty(), "events lost: {missing:?}");
}

/// Health of `service` as the server reports it (`None` while it does not know the name yet).
async fn health_of(channel: &fintech_tests::service::Channel, service: &str) -> Option<ServingStatus> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Issue #14's parking acceptance: one row the broker always rejects (a record larger than the
/// producer's `message.max.bytes`) among 5,000 rows. The other 4,999 are published exactly once
/// and in key order, the bad one is parked after `OUTBOX_MAX_ATTEMPTS` with its error, and the
/// parked count shows in health (the `outbox` component, while the service stays SERVING) and in
/// the metrics; re-queued, it gets a fresh budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_broker_always_rejects_is_parked_and_the_other_rows_flow_in_key_order() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::empty().await;
    let bootstrap = kafka_bootstrap();
    let topic = unique_topic("outbox-parking");
    create_topics(&bootstrap, &[&topic], 3).await;
    let service = format!("parking-{}", uuid::Uuid::new_v4().simple());
    let config = PlatformConfig {
        outbox_relays: 1,
        outbox_max_attempts: 3,
        shutdown_grace: Duration::from_millis(500),
        ..fintech_tests::payments::platform_config(&service, &db.url, &bootstrap)
    };
    let kit = Kit::start(&config, &fintech_payments::MIGRATOR)
        .await
        .expect("kit starts");

    // 1,000 keys x 5 versions, with the poison row (its own key) committed in the middle.
    enqueue_versions(&db, &topic, 1000, 1..=2).await;
    let mut tx = db.pool.begin().await.expect("begin");
    let poison = OutboxEvent {
        topic: topic.clone(),
        key: "poison".to_owned(),
        event_type: "fintech.payments.v1.order.updated".to_owned(),
        payload_type: "fintech.payments.v1.Order".to_owned(),
        payload: vec![7; 2 * 1024 * 1024],
        occurred_at: chrono::Utc::now(),
    };
    let poison_id = outbox::enqueue(&mut tx, "/fintech/test", &poison)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    enqueue_versions(&db, &topic, 1000, 3..=4).await;
    enqueue_versions(&db, &topic, 999, 5..=5).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kit.serve(listener, shutdown.clone()));
    let channel = fintech_tests::payments::connect(&address).await;

    // Everything but the poison row published; the poison row parked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let backlog = outbox::backlog(&db.pool).await.expect("backlog");
        let parked = outbox::parked(&db.pool).await.expect("parked");
        if backlog.unpublished == 1 && parked.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog {backlog:?}, parked {parked:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let parked = outbox::parked(&db.pool).await.expect("parked");
    assert_eq!(parked[0].event_id, poison_id);
    assert_eq!(parked[0].attempts, 3, "parked after OUTBOX_MAX_ATTEMPTS");
    let error = parked[0].last_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("too large"), "{error}");
    assert_topic_once_and_in_key_order(&bootstrap, &topic, 4999).await;

    // Health and metrics show it: the outbox component is NOT_SERVING, the service and its relay
    // are SERVING (they work; one row is poison).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let outbox_health = health_of(&channel, "outbox").await;
        let parked_metric = metrics::value(metrics::OUTBOX_PARKED, &[("service", &service)]);
        if outbox_health == Some(ServingStatus::NotServing) && parked_metric == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox health {outbox_health:?}, parked metric {parked_metric:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health_of(&channel, "").await, Some(ServingStatus::Serving));
    assert_eq!(health_of(&channel, "relay-0").await, Some(ServingStatus::Serving));
    assert_eq!(
        metrics::value(metrics::OUTBOX_BACKLOG, &[("service", &service)]),
        Some(1.0),
        "the backlog gauge counts the parked row"
    );
    assert!(
        metrics::value(metrics::OUTBOX_PUBLISH_FAILURES, &[("service", &service)]) >= Some(3.0),
        "each rejected publish counted"
    );

    // Re-queued, the row gets a fresh budget (and, still too large, is parked again).
    assert_eq!(
        outbox::requeue_parked(&db.pool, Some(&[parked[0].id]))
            .await
            .expect("requeue"),
        1
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM outbox WHERE event_id = $1")
        .bind(poison_id)
        .fetch_one(&db.pool)
        .await
        .expect("attempts");
    assert!(attempts < 3, "a fresh budget: {attempts}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while outbox::parked_count(&db.pool).await.expect("parked") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never parked again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the service stops")
        .expect("serve task")
        .expect("a clean shutdown");
}

/// A row leased by a relay that died (its liveness lock is gone) is claimable at once, not after
/// its lease; a row leased by a relay that is alive (it holds its lock) is left to it (ADR 0013).
#[tokio::test]
async fn rows_of_a_dead_relay_are_taken_over_at_once_and_a_live_relays_rows_are_left_alone() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let bootstrap = kafka_bootstrap();
    let topic = unique_topic("outbox-lease");
    create_topics(&bootstrap, &[&topic], 1).await;
    enqueue_versions(&db, &topic, 2, 1..=1).await;
    // order-0 leased for an hour by relay key 11 (dead: nobody holds its lock), order-1 by relay
    // key 12, whose lock a live session holds.
    let mut live = db.pool.acquire().await.expect("connection");
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(185335809, 12)")
        .fetch_one(&mut *live)
        .await
        .expect("lock");
    assert!(held);
    sqlx::query(
        "UPDATE outbox SET not_before = now() + interval '1 hour', claim_token = gen_random_uuid(), \
         claimed_by = CASE record_key WHEN 'order-0' THEN 11 ELSE 12 END",
    )
    .execute(&db.pool)
    .await
    .expect("lease the rows");

    let producer = EventProducer::new(&bootstrap, "test-relay-lease", Duration::from_secs(10)).expect("producer");
    let relay = OutboxRelay::new(db.pool.clone(), producer, RelaySettings::default());
    let outcome = relay.publish_round().await.expect("round");
    assert_eq!(outcome.published, 1, "only the dead relay's row");
    let unpublished: Vec<String> = sqlx::query_scalar("SELECT record_key FROM outbox WHERE published_at IS NULL")
        .fetch_all(&db.pool)
        .await
        .expect("unpublished");
    assert_eq!(unpublished, ["order-1"]);

    // The live relay's session ends: its row is taken over at once.
    sqlx::query("SELECT pg_advisory_unlock(185335809, 12)")
        .execute(&mut *live)
        .await
        .expect("unlock");
    let outcome = relay.publish_round().await.expect("round");
    assert_eq!(outcome.published, 1);
    assert_topic_once_and_in_key_order(&bootstrap, &topic, 2).await;
}

/// The backend pid of the relay's listener once it listens (its last statement is the LISTEN).
async fn wait_for_listener(db: &TestDb, other_than: Option<i32>) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM $1",
        )
        .bind(other_than)
        .fetch_optional(&db.pool)
        .await
        .expect("pg_stat_activity");
        if let Some(pid) = pid {
            return pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_idle_relay_wakes_on_commit_and_listens_again_after_losing_its_connection() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::with_platform_tables().await;
    let bootstrap = kafka_bootstrap();
    let topic = unique_topic("outbox-wake");
    create_topics(&bootstrap, &[&topic], 1).await;
    let consumer = reader(&bootstrap, &[&topic]);

    // A poll of an hour: after its first empty claim only a notification makes this relay claim.
    let shutdown = CancellationToken::new();
    let settings = RelaySettings {
        poll_interval: Duration::from_secs(3600),
        ..RelaySettings::default()
    };
    let producer = EventProducer::new(&bootstrap, "test-relay-wake", Duration::from_secs(10)).expect("producer");
    let relay = tokio::spawn(OutboxRelay::new(db.pool.clone(), producer, settings.clone()).run(shutdown.clone()));
    let listener = wait_for_listener(&db, None).await;

    // Each commit is published, one after the other.
    for version in 1..=3 {
        enqueue_versions(&db, &topic, 1, version..=version).await;
        let records = read_records(&consumer, 1, Duration::from_secs(30)).await;
        assert_eq!(records.len(), 1, "commit {version} woke the relay");
    }

    // The listener's connection dies (a database restart, say) and a commit lands meanwhile:
    // the relay listens again and claims what it missed.
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .fetch_one(&db.pool)
        .await
        .expect("terminate");
    assert!(terminated);
    enqueue_versions(&db, &topic, 1, 4..=4).await;
    let records = read_records(&consumer, 1, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 1, "the commit made while nobody listened is published");
    let again = wait_for_listener(&db, Some(listener)).await;
    assert_ne!(again, listener);
    enqueue_versions(&db, &topic, 1, 5..=5).await;
    assert_eq!(read_records(&consumer, 1, Duration::from_secs(30)).await.len(), 1);
    shutdown.cancel();
    relay.await.expect("relay task");
    wait_for_empty_backlog(&db, Duration::from_secs(5)).await;
}
