//! SIGKILL in the middle of work loses nothing and counts nothing twice: payments' outbox
//! publishes an acknowledged command after a restart, and tax yields exactly one
//! `tax.calculated` per transaction across a kill in the middle of 1,000 transactions.
//!
//! Both read their topic to its end after the producer's outbox drained (never stopping at the
//! count they expect) and count the producer's outbox rows, so a duplicate publish or a second
//! effect fails them.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::time::Duration;

use fintech_devkit::broker::PrivateBroker;
use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::telemetry::{self, TraceHeaders};
use fintech_proto::payments;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use fintech_tests::payments::{connect, platform_config, unique_prefix};
use fintech_tests::process::{ServiceProcess, service_binary};
use fintech_tests::tax::create_tax_topics;
use fintech_tests::{TestDb, create_topics, header, kafka_bootstrap, read_to_end, wait_outbox_drained};
use prost::Message as _;
use rdkafka::Message as _;

fn free_address() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .to_string()
}

#[tokio::test]
async fn payments_killed_right_after_an_acknowledged_command_publishes_it_after_restart() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::empty().await;
    let mut broker = PrivateBroker::start().await.expect("private broker starts");
    let prefix = unique_prefix();
    let topics: Vec<String> = fintech_payments::events::TOPICS
        .iter()
        .map(|topic| format!("{prefix}{topic}"))
        .collect();
    create_topics(
        broker.bootstrap(),
        &topics.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
    )
    .await;
    // The broker is down while the command is served, so nothing can be published before the kill.
    broker.kill();

    let binary = service_binary("fintech-payments", "payments");
    let address = free_address();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut platform = platform_config("payments", &db.url, broker.bootstrap());
    platform.grpc_listen_addr = address.parse().expect("address");
    let env = fintech_tests::payments::env(&fintech_tests::payments::config(platform, &db, &prefix));
    let mut service = ServiceProcess::spawn(&binary, &env, log.path());
    let mut client = PaymentsServiceClient::new(connect(&address).await);
    let order = client
        .create_order(payments::CreateOrderRequest {
            customer_id: "cust-crash".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 100,
            product_type: "standard".to_owned(),
        })
        .await
        .expect("acknowledged")
        .into_inner()
        .order
        .expect("order");
    service.kill();

    broker.start_again().await.expect("private broker starts again");
    let _service = ServiceProcess::spawn(&binary, &env, log.path());
    wait_outbox_drained(&db.pool, Duration::from_secs(60)).await;
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
        .bind(format!("{prefix}orders.created"))
        .fetch_one(&db.pool)
        .await
        .expect("outbox rows");
    assert_eq!(outbox_rows, 1, "one command, one outbox row");
    // The whole topic, not just the first record: a second publish would show here.
    let records = read_to_end(
        broker.bootstrap(),
        &format!("{prefix}orders.created"),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        records.len(),
        1,
        "the acknowledged order was published after the restart, once"
    );
    assert_eq!(
        payments::Order::decode(records[0].payload().expect("payload")).expect("order"),
        order
    );
}

#[tokio::test]
async fn tax_killed_in_the_middle_of_1000_transactions_yields_exactly_one_result_each() {
    let _telemetry = telemetry::init("test");
    let db = TestDb::empty().await;
    let prefix = unique_prefix();
    create_tax_topics(&prefix).await;
    let bootstrap = kafka_bootstrap();
    let producer = EventProducer::new(&bootstrap, "crash-test-producer", Duration::from_secs(30)).expect("producer");
    let created_at = prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 0,
    };
    let metadata = |event_type: &str, payload_type: &str, key: &str| EventMetadata {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: event_type.to_owned(),
        source: "/fintech/payments".to_owned(),
        time: chrono::Utc::now(),
        subject: Some(key.to_owned()),
        payload_type: payload_type.to_owned(),
        trace: TraceHeaders::default(),
    };

    let mut sends = Vec::new();
    let mut expected = HashSet::new();
    for _ in 0..50 {
        let order_id = uuid::Uuid::new_v4().to_string();
        let order = payments::Order {
            order_id: order_id.clone(),
            customer_id: "cust-load".to_owned(),
            country: "ES".to_owned(),
            currency: "EUR".to_owned(),
            amount: 1_000,
            product_type: "standard".to_owned(),
            created_at: Some(created_at),
            updated_at: Some(created_at),
            version: 1,
        };
        let order_metadata = metadata(
            "fintech.payments.v1.order.created",
            "fintech.payments.v1.Order",
            &order_id,
        );
        sends.push((
            format!("{prefix}orders.created"),
            order_id.clone(),
            order.encode_to_vec(),
            order_metadata,
        ));
        for _ in 0..20 {
            let transaction_id = uuid::Uuid::new_v4().to_string();
            expected.insert(transaction_id.clone());
            let transaction = payments::Transaction {
                transaction_id,
                order_id: order_id.clone(),
                customer_id: "cust-load".to_owned(),
                amount: 1_000,
                status: payments::TransactionStatus::Succeeded as i32,
                created_at: Some(created_at),
                updated_at: Some(created_at),
                version: 1,
                currency: "EUR".to_owned(),
                order_version: 1,
            };
            let transaction_metadata = metadata(
                "fintech.payments.v1.transaction.created",
                "fintech.payments.v1.Transaction",
                &order_id,
            );
            sends.push((
                format!("{prefix}transactions.created"),
                order_id.clone(),
                transaction.encode_to_vec(),
                transaction_metadata,
            ));
        }
    }
    for chunk in sends.chunks(100) {
        let batch = chunk
            .iter()
            .map(|(topic, key, payload, metadata)| producer.send_event(topic, key, payload, metadata));
        for result in futures::future::join_all(batch).await {
            result.expect("published");
        }
    }
    assert_eq!(expected.len(), 1_000);

    let binary = service_binary("fintech-tax", "tax");
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut platform = platform_config("tax", &db.url, &bootstrap);
    platform.grpc_listen_addr = free_address().parse().expect("address");
    // The restarted process is the same instance: static membership hands it the partitions at
    // once (without it the broker may keep them with the killed member until its session expires;
    // Tansu 0.6 keeps them for good when the new member joins before that).
    platform.kafka_group_instance_id = Some(format!("{prefix}tax-0"));
    let env = fintech_tests::tax::env(&fintech_tests::tax::config(platform, &db, &prefix));
    let taxed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM taxed_transactions")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0)
    };
    let mut service = ServiceProcess::spawn(&binary, &env, log.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while taxed().await < 150 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tax made no progress; log: {:?}",
            log.path()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.kill();
    let at_kill = taxed().await;
    assert!(
        at_kill < 1_000,
        "the kill must land in the middle of the stream (taxed {at_kill})"
    );

    let _service = ServiceProcess::spawn(&binary, &env, log.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while taxed().await < 1_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 1000 taxed after restart",
            taxed().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One effect per transaction: tax wrote exactly one tax.calculated outbox row for each (a
    // second processing of a redelivered transaction would add a row beside the first).
    wait_outbox_drained(&db.pool, Duration::from_secs(120)).await;
    let calculated_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
        .bind(format!("{prefix}tax.calculated"))
        .fetch_one(&db.pool)
        .await
        .expect("outbox rows");
    assert_eq!(calculated_rows, 1_000, "one tax.calculated outbox row per transaction");

    // Every transaction has exactly one tax.calculated event (one ce_id) in the whole topic, read
    // to its end after the outbox drained; a relay killed between publish and mark may repeat that
    // same event (same ce_id), which consumers drop.
    let records = read_to_end(&bootstrap, &format!("{prefix}tax.calculated"), Duration::from_secs(120)).await;
    let mut events: HashMap<String, HashSet<String>> = HashMap::new();
    for record in &records {
        let taxed = fintech_proto::tax::TaxedTransaction::decode(record.payload().expect("payload")).expect("decodes");
        events
            .entry(taxed.transaction_id)
            .or_default()
            .insert(header(record, "ce_id").expect("ce_id"));
    }
    assert!(
        records.len() >= 1_000,
        "{} records for 1000 transactions",
        records.len()
    );
    let keys: HashSet<&String> = events.keys().collect();
    assert_eq!(
        keys,
        expected.iter().collect::<HashSet<_>>(),
        "every transaction, and only those"
    );
    let repeated: Vec<_> = events.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(
        repeated.is_empty(),
        "transactions with more than one tax.calculated event: {repeated:?}"
    );
    assert_eq!(taxed().await, 1_000);
}
