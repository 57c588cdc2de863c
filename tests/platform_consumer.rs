//! The shared consumer loop against the real broker and PostgreSQL: poison records go to the
//! dead-letter topic without blocking their partition, a crash before the commit redelivers
//! without a second effect, the producer's trace continues in the handler, and transient failures
//! are retried until they pass, never skipped, a stuck partition holds up no other, and records
//! waiting in a lane are applied in one transaction without letting a poison record spoil it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fintech_platform::CancellationToken;
use fintech_platform::kafka::EventProducer;
use fintech_platform::kafka::consumer::{
    ConsumedEvent, ConsumerSettings, EventHandler, HandlerError, mark_processed, run_consumer,
};
use fintech_platform::kafka::headers::{
    DEAD_LETTER_OFFSET, DEAD_LETTER_PARTITION, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC, EventMetadata,
};
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_platform::telemetry::{TraceHeaders, current_trace_id};
use fintech_proto::payments::Order;
use fintech_tests::{TestDb, create_topics, header, kafka_bootstrap, read_extra, read_records, reader, unique_topic};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for anything the broker has to do (group join, delivery, commit).
const WAIT: Duration = Duration::from_secs(60);

fn order(order_id: &str, amount: i64) -> Order {
    Order {
        order_id: order_id.to_owned(),
        customer_id: "customer-1".to_owned(),
        country: "DE".to_owned(),
        currency: "EUR".to_owned(),
        amount,
        product_type: "standard".to_owned(),
        ..Default::default()
    }
}

fn metadata(subject: &str, trace: TraceHeaders) -> EventMetadata {
    EventMetadata {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: "fintech.payments.v1.order.created".to_owned(),
        source: "/fintech/tests".to_owned(),
        time: chrono::Utc::now(),
        subject: Some(subject.to_owned()),
        payload_type: "fintech.payments.v1.Order".to_owned(),
        trace,
    }
}

fn producer() -> EventProducer {
    EventProducer::new(&kafka_bootstrap(), "test-producer", Duration::from_secs(20)).expect("producer")
}

fn settings(topic: &str, dead_letter_topic: &str, group: &str) -> ConsumerSettings {
    let mut settings = ConsumerSettings::new(kafka_bootstrap(), group, vec![topic.to_owned()], dead_letter_topic);
    settings.max_backoff = Duration::from_millis(400);
    settings
}

fn unique_group(prefix: &str) -> String {
    format!("test-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn start(
    settings: ConsumerSettings,
    handler: Arc<dyn EventHandler>,
) -> (JoinHandle<fintech_platform::Result<()>>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_consumer(settings, handler, producer(), shutdown.clone()));
    (task, shutdown)
}

/// Cancels the consumer and checks it returns `Ok` promptly.
async fn stop(task: JoinHandle<fintech_platform::Result<()>>, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("consumer stops after shutdown")
        .expect("consumer task does not panic")
        .expect("consumer returns Ok");
}

async fn next<T>(receiver: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("handler channel open")
}

/// The offset `group` committed for `topic`/`partition`, as the broker reports it (`None` also
/// when the broker did not answer).
async fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    probe_committed_offset(group, topic, partition).await.ok().flatten()
}

/// The offset `group` committed for `topic`/`partition`: `Ok(None)` only when the broker answered
/// that there is none.
async fn probe_committed_offset(group: &str, topic: &str, partition: i32) -> Result<Option<i64>, String> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("broker.address.family", "v4")
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset probe consumer");
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&topic, partition);
        let committed = consumer
            .committed_offsets(partitions, Duration::from_secs(5))
            .map_err(|error| error.to_string())?;
        let element = committed
            .find_partition(&topic, partition)
            .ok_or_else(|| "partition missing from the answer".to_owned())?;
        Ok(match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        })
    })
    .await
    .expect("offset probe task")
}

/// Waits until the broker reports `expected` as `group`'s committed offset.
async fn wait_for_commit(group: &str, topic: &str, partition: i32, expected: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let committed = committed_offset(group, topic, partition).await;
        if committed == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed offset of {group} on {topic}[{partition}] is {committed:?}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records every order it decodes.
#[derive(Debug)]
struct Collect {
    handled: mpsc::UnboundedSender<(i64, Order)>,
}

#[async_trait]
impl EventHandler for Collect {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let order: Order = event.decode()?;
        self.handled.send((event.offset, order)).expect("test listens");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_next_record_is_handled() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.poison");
    let dead_letter_topic = unique_topic("consumer.poison.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 3).await;

    let producer = producer();
    let key = "order-poison-1";
    // 1) no CloudEvents headers at all, value not protobuf.
    let garbage = b"\xff\xfenot a protobuf".to_vec();
    let first = producer
        .send_raw(&topic, key.as_bytes(), &garbage, OwnedHeaders::new())
        .await
        .expect("send garbage");
    // 2) valid headers, value not an `Order`.
    let undecodable = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let undecodable_metadata = metadata(key, TraceHeaders::default());
    let second = producer
        .send_event(&topic, key, &undecodable, &undecodable_metadata)
        .await
        .expect("send undecodable");
    // 3) a good event behind them on the same partition.
    let good = order(key, 1999);
    let third = producer
        .send_event(
            &topic,
            key,
            &good.encode_to_vec(),
            &metadata(key, TraceHeaders::default()),
        )
        .await
        .expect("send good");
    assert_eq!(
        (first.partition, second.partition),
        (third.partition, third.partition),
        "same key, same partition"
    );

    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    let group = unique_group("poison");
    let (task, shutdown) = start(
        settings(&topic, &dead_letter_topic, &group),
        Arc::new(Collect { handled }),
    );

    let (offset, order) = next(&mut handled_rx, "the good record").await;
    assert_eq!(offset, third.offset);
    assert_eq!(order, good);
    wait_for_commit(&group, &topic, third.partition, third.offset + 1).await;

    let dead_letters = reader(&kafka_bootstrap(), &[&dead_letter_topic]);
    let records = read_records(&dead_letters, 2, WAIT).await;
    assert_eq!(records.len(), 2, "both poison records are dead-lettered");
    let partition = third.partition.to_string();

    let no_headers = &records[0];
    assert_eq!(no_headers.payload(), Some(&garbage[..]));
    assert_eq!(no_headers.key(), Some(key.as_bytes()));
    let reason = header(no_headers, DEAD_LETTER_REASON).expect("dlq_reason");
    assert!(reason.contains("missing header"), "{reason}");
    assert_eq!(header(no_headers, DEAD_LETTER_TOPIC).as_deref(), Some(topic.as_str()));
    assert_eq!(header(no_headers, DEAD_LETTER_PARTITION), Some(partition.clone()));
    assert_eq!(header(no_headers, DEAD_LETTER_OFFSET), Some(first.offset.to_string()));

    let bad_value = &records[1];
    assert_eq!(bad_value.payload(), Some(&undecodable[..]));
    assert_eq!(
        header(bad_value, "ce_id"),
        Some(undecodable_metadata.id.clone()),
        "original headers kept"
    );
    let reason = header(bad_value, DEAD_LETTER_REASON).expect("dlq_reason");
    assert!(reason.contains("not a valid"), "{reason}");
    assert_eq!(header(bad_value, DEAD_LETTER_OFFSET), Some(second.offset.to_string()));

    stop(task, shutdown).await;
    assert!(handled_rx.try_recv().is_err(), "the handler saw only the good record");
}

/// Applies each order once: an effect row and the inbox row in one transaction. On the event
/// whose id is `crash_on`, it commits and then hangs like a process killed before the offset commit.
#[derive(Debug)]
struct ApplyOnce {
    pool: PgPool,
    crash_on: Option<String>,
    crashed: AtomicBool,
    /// (offset, whether this delivery applied the effect)
    handled: mpsc::UnboundedSender<(i64, bool)>,
}

#[async_trait]
impl EventHandler for ApplyOnce {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let order: Order = event.decode()?;
        let event_id = event.valid_metadata()?.id.clone();
        let mut tx = self.pool.begin().await?;
        let first_time = mark_processed(&mut tx, "test-ledger", &event_id).await?;
        if first_time {
            sqlx::query("INSERT INTO effects (event_id, order_id, amount) VALUES ($1, $2, $3)")
                .bind(&event_id)
                .bind(&order.order_id)
                .bind(order.amount)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.handled.send((event.offset, first_time)).expect("test listens");
        if self.crash_on.as_deref() == Some(event_id.as_str()) && !self.crashed.swap(true, Ordering::SeqCst) {
            // The effect is committed; the offset never will be by this consumer.
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_redelivers_without_a_second_effect() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let db = TestDb::with_platform_tables().await;
    // No unique constraint on purpose: only the inbox may prevent a second effect.
    sqlx::query("CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, order_id TEXT NOT NULL, amount BIGINT NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("create effects");
    let topic = unique_topic("consumer.crash");
    let dead_letter_topic = unique_topic("consumer.crash.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 1).await;

    let producer = producer();
    let before = metadata("order-a", TraceHeaders::default());
    let crashing = metadata("order-b", TraceHeaders::default());
    producer
        .send_event(&topic, "order-a", &order("order-a", 100).encode_to_vec(), &before)
        .await
        .expect("send first");
    let crash_delivery = producer
        .send_event(&topic, "order-b", &order("order-b", 250).encode_to_vec(), &crashing)
        .await
        .expect("send second");

    let group = unique_group("crash");
    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    let handler = ApplyOnce {
        pool: db.pool.clone(),
        crash_on: Some(crashing.id.clone()),
        crashed: AtomicBool::new(false),
        handled: handled.clone(),
    };
    let (task, _shutdown) = start(settings(&topic, &dead_letter_topic, &group), Arc::new(handler));
    assert_eq!(next(&mut handled_rx, "first event").await, (0, true));
    assert_eq!(
        next(&mut handled_rx, "second event").await,
        (crash_delivery.offset, true)
    );
    // The first offset reaches the broker; the second is never committed. Then the process dies.
    wait_for_commit(&group, &topic, 0, crash_delivery.offset).await;
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    // Still the first offset after the crash (polled: a busy broker may time a single probe out).
    wait_for_commit(&group, &topic, 0, crash_delivery.offset).await;

    // Restart in the same group: only the uncommitted event comes again, and changes nothing.
    let handler = ApplyOnce {
        pool: db.pool.clone(),
        crash_on: None,
        crashed: AtomicBool::new(false),
        handled,
    };
    let (task, shutdown) = start(settings(&topic, &dead_letter_topic, &group), Arc::new(handler));
    assert_eq!(
        next(&mut handled_rx, "redelivery").await,
        (crash_delivery.offset, false)
    );
    wait_for_commit(&group, &topic, 0, crash_delivery.offset + 1).await;
    stop(task, shutdown).await;
    assert!(handled_rx.try_recv().is_err(), "no other delivery");

    let effects: Vec<(String, i64)> = sqlx::query_as("SELECT order_id, amount FROM effects ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("read effects");
    assert_eq!(effects, [("order-a".to_owned(), 100), ("order-b".to_owned(), 250)]);
    let crashed_effects: i64 = sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
        .bind(&crashing.id)
        .fetch_one(&db.pool)
        .await
        .expect("count effects");
    assert_eq!(crashed_effects, 1, "exactly one effect for the redelivered event");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = 'test-ledger'")
        .fetch_one(&db.pool)
        .await
        .expect("count inbox");
    assert_eq!(inbox, 2);
}

/// Reports the trace id the handler runs in.
#[derive(Debug)]
struct TraceProbe {
    seen: mpsc::UnboundedSender<Option<String>>,
}

#[async_trait]
impl EventHandler for TraceProbe {
    async fn handle(&self, _event: &ConsumedEvent) -> Result<(), HandlerError> {
        self.seen.send(current_trace_id()).expect("test listens");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_runs_in_the_producers_trace() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.trace");
    let dead_letter_topic = unique_topic("consumer.trace.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 1).await;

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let trace = TraceHeaders {
        traceparent: Some(format!("00-{trace_id}-00f067aa0ba902b7-01")),
        tracestate: None,
    };
    producer()
        .send_event(
            &topic,
            "order-t",
            &order("order-t", 5).encode_to_vec(),
            &metadata("order-t", trace),
        )
        .await
        .expect("send");

    let (seen, mut seen_rx) = mpsc::unbounded_channel();
    let group = unique_group("trace");
    let (task, shutdown) = start(
        settings(&topic, &dead_letter_topic, &group),
        Arc::new(TraceProbe { seen }),
    );
    assert_eq!(next(&mut seen_rx, "the traced event").await, Some(trace_id));
    stop(task, shutdown).await;
}

/// Fails transiently on its first `failures` attempts, then succeeds; reports every attempt.
#[derive(Debug)]
struct Flaky {
    failures: u32,
    attempts: AtomicU32,
    /// (offset, whether the attempt succeeded)
    attempted: mpsc::UnboundedSender<(i64, bool)>,
}

#[async_trait]
impl EventHandler for Flaky {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        let succeeded = attempt >= self.failures;
        self.attempted.send((event.offset, succeeded)).expect("test listens");
        if succeeded {
            Ok(())
        } else {
            Err(HandlerError::transient("database unavailable"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_the_event_is_handled() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.transient");
    let dead_letter_topic = unique_topic("consumer.transient.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 1).await;
    let producer = producer();
    for id in ["order-x", "order-y"] {
        producer
            .send_event(
                &topic,
                id,
                &order(id, 42).encode_to_vec(),
                &metadata(id, TraceHeaders::default()),
            )
            .await
            .expect("send");
    }

    let (attempted, mut attempted_rx) = mpsc::unbounded_channel();
    let group = unique_group("transient");
    let handler = Flaky {
        failures: 4,
        attempts: AtomicU32::new(0),
        attempted,
    };
    let (task, shutdown) = start(settings(&topic, &dead_letter_topic, &group), Arc::new(handler));

    let mut attempts = Vec::new();
    for _ in 0..6 {
        attempts.push(next(&mut attempted_rx, "an attempt").await);
    }
    // The first event is retried in place (never skipped) until it passes; only then the second.
    assert_eq!(
        attempts,
        [(0, false), (0, false), (0, false), (0, false), (0, true), (1, true)]
    );
    wait_for_commit(&group, &topic, 0, 2).await;
    stop(task, shutdown).await;
    assert!(attempted_rx.try_recv().is_err(), "no further attempts");

    let dead_letters = reader(&kafka_bootstrap(), &[&dead_letter_topic]);
    assert!(
        read_extra(&dead_letters, Duration::from_secs(3)).await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_retrying_leaves_the_event_uncommitted() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.shutdown");
    let dead_letter_topic = unique_topic("consumer.shutdown.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 1).await;
    let producer = producer();
    for id in ["order-1", "order-2"] {
        producer
            .send_event(
                &topic,
                id,
                &order(id, 7).encode_to_vec(),
                &metadata(id, TraceHeaders::default()),
            )
            .await
            .expect("send");
    }

    // Succeeds once (offset 0), then fails forever (offset 1).
    struct FirstOnly {
        attempted: mpsc::UnboundedSender<(i64, bool)>,
    }
    impl std::fmt::Debug for FirstOnly {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("FirstOnly")
        }
    }
    #[async_trait]
    impl EventHandler for FirstOnly {
        async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
            let succeeded = event.offset == 0;
            self.attempted.send((event.offset, succeeded)).expect("test listens");
            if succeeded {
                Ok(())
            } else {
                Err(HandlerError::transient("still down"))
            }
        }
    }

    let (attempted, mut attempted_rx) = mpsc::unbounded_channel();
    let group = unique_group("shutdown");
    let (task, shutdown) = start(
        settings(&topic, &dead_letter_topic, &group),
        Arc::new(FirstOnly { attempted }),
    );
    assert_eq!(next(&mut attempted_rx, "first event").await, (0, true));
    assert_eq!(next(&mut attempted_rx, "second event").await, (1, false));
    assert_eq!(next(&mut attempted_rx, "a retry").await, (1, false));
    stop(task, shutdown).await;
    // The finished event is committed (synchronously on shutdown at the latest); the failing one is not.
    assert_eq!(committed_offset(&group, &topic, 0).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_does_not_hold_up_the_others_and_each_stays_in_order() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.lanes");
    let dead_letter_topic = unique_topic("consumer.lanes.dlq");
    create_topics(&kafka_bootstrap(), &[&topic], 4).await;
    create_topics(&kafka_bootstrap(), &[&dead_letter_topic], 1).await;
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("broker.address.family", "v4")
        .create()
        .expect("producer");
    const PER_PARTITION: i64 = 5;
    let produce = async |partitions: std::ops::Range<i32>| {
        for partition in partitions {
            for n in 0..PER_PARTITION {
                let id = format!("order-{partition}-{n}");
                let value = order(&id, 10 + n).encode_to_vec();
                let record = rdkafka::producer::FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&id)
                    .payload(&value)
                    .headers(metadata(&id, TraceHeaders::default()).to_headers());
                producer.send(record, WAIT).await.expect("send");
            }
        }
    };

    // Partition 0's first record fails until the test lets it through; everything else passes.
    struct Gate {
        open: AtomicBool,
        stuck: mpsc::UnboundedSender<()>,
        handled: mpsc::UnboundedSender<(i32, i64)>,
    }
    impl std::fmt::Debug for Gate {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("Gate")
        }
    }
    #[async_trait]
    impl EventHandler for Gate {
        async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
            if event.partition == 0 && !self.open.load(Ordering::SeqCst) {
                let _ = self.stuck.send(());
                return Err(HandlerError::transient("partition 0 is stuck"));
            }
            self.handled
                .send((event.partition, event.offset))
                .expect("test listens");
            Ok(())
        }
    }

    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    let (stuck, mut stuck_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        stuck,
        handled,
    });
    let group = unique_group("lanes");
    let mut consumer_settings = settings(&topic, &dead_letter_topic, &group);
    consumer_settings.lanes = 4;
    let (task, shutdown) = start(consumer_settings, Arc::clone(&gate) as Arc<dyn EventHandler>);

    // Partition 0 first, until its first record is being retried; only then the other three.
    produce(0..1).await;
    next(&mut stuck_rx, "partition 0 stuck on its first record").await;
    produce(1..4).await;

    // While partition 0 is stuck on its first record, the other three are handled completely,
    // each in offset order.
    let mut seen: std::collections::BTreeMap<i32, Vec<i64>> = std::collections::BTreeMap::new();
    for _ in 0..3 * PER_PARTITION {
        let (partition, offset) = next(&mut handled_rx, "a record of partitions 1-3").await;
        seen.entry(partition).or_default().push(offset);
    }
    let in_order: Vec<i64> = (0..PER_PARTITION).collect();
    assert_eq!(
        seen,
        (1..4).map(|partition| (partition, in_order.clone())).collect(),
        "partitions 1-3 handled in order while partition 0 waits"
    );
    for partition in 1..4 {
        wait_for_commit(&group, &topic, partition, PER_PARTITION).await;
    }
    let mut probe = probe_committed_offset(&group, &topic, 0).await;
    for _ in 0..5 {
        if probe.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        probe = probe_committed_offset(&group, &topic, 0).await;
    }
    assert_eq!(
        probe.expect("the broker answers the offset probe"),
        None,
        "nothing of the stuck partition is committed"
    );

    // Released, partition 0 is handled from its first record on, in order, nothing skipped.
    gate.open.store(true, Ordering::SeqCst);
    let mut stuck = Vec::new();
    for _ in 0..PER_PARTITION {
        let (partition, offset) = next(&mut handled_rx, "a record of partition 0").await;
        assert_eq!(partition, 0);
        stuck.push(offset);
    }
    assert_eq!(stuck, in_order);
    wait_for_commit(&group, &topic, 0, PER_PARTITION).await;
    stop(task, shutdown).await;
    assert!(handled_rx.try_recv().is_err(), "each record handled once");
}

/// Applies each order as an effect row that records the database transaction it ran in.
#[derive(Debug)]
struct TransactionProbe;

#[async_trait]
impl TransactionalHandler for TransactionProbe {
    fn consumer(&self) -> &str {
        "test-batches"
    }

    async fn apply(&self, conn: &mut sqlx::PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let order: Order = event.decode()?;
        sqlx::query("INSERT INTO effects (order_id, amount, txid) VALUES ($1, $2, txid_current())")
            .bind(&order.order_id)
            .bind(order.amount)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_records_share_a_transaction_and_a_poison_record_among_them_is_dead_lettered_alone() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let db = TestDb::with_platform_tables().await;
    // No unique constraint on purpose: only the inbox and the all-or-nothing batch may prevent a
    // second effect.
    sqlx::query(
        "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, order_id TEXT NOT NULL, amount BIGINT NOT NULL, txid BIGINT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("create effects");
    let topic = unique_topic("consumer.batches");
    let dead_letter_topic = unique_topic("consumer.batches.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 1).await;

    // All records are on the broker before the consumer starts, so they wait in its lane.
    const RECORDS: i64 = 40;
    const POISON: i64 = 17;
    const MAX_BATCH: usize = 8;
    let producer = producer();
    let mut poison_id = String::new();
    for n in 0..RECORDS {
        let id = format!("order-{n:02}");
        let event = metadata(&id, TraceHeaders::default());
        let value = if n == POISON {
            poison_id = event.id.clone();
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]
        } else {
            order(&id, 100 + n).encode_to_vec()
        };
        producer
            .send_event(&topic, "one-key", &value, &event)
            .await
            .expect("send");
    }

    let group = unique_group("batches");
    let mut consumer_settings = settings(&topic, &dead_letter_topic, &group);
    consumer_settings.max_batch = MAX_BATCH;
    let handler = InTransaction::new(db.pool.clone(), TransactionProbe);
    let (task, shutdown) = start(consumer_settings, Arc::new(handler));
    wait_for_commit(&group, &topic, 0, RECORDS).await;
    stop(task, shutdown).await;

    // Every good record applied exactly once, in offset order; the poison one never.
    let effects: Vec<(String, i64, i64)> = sqlx::query_as("SELECT order_id, amount, txid FROM effects ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("read effects");
    let expected: Vec<(String, i64)> = (0..RECORDS)
        .filter(|n| *n != POISON)
        .map(|n| (format!("order-{n:02}"), 100 + n))
        .collect();
    assert_eq!(
        effects
            .iter()
            .map(|(id, amount, _)| (id.clone(), *amount))
            .collect::<Vec<_>>(),
        expected
    );
    // Batched: fewer transactions than records, none larger than the limit.
    let mut per_transaction: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for (_, _, txid) in &effects {
        *per_transaction.entry(*txid).or_default() += 1;
    }
    assert!(
        per_transaction.len() < effects.len(),
        "records waiting in the lane were applied together: {per_transaction:?}"
    );
    assert!(
        per_transaction.values().all(|count| *count <= MAX_BATCH),
        "no batch above {MAX_BATCH}: {per_transaction:?}"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = 'test-batches'")
        .fetch_one(&db.pool)
        .await
        .expect("count inbox");
    assert_eq!(
        inbox,
        RECORDS - 1,
        "the poison record's rolled-back inbox row is not kept"
    );

    let dead_letters = reader(&kafka_bootstrap(), &[&dead_letter_topic]);
    let records = read_records(&dead_letters, 1, WAIT).await;
    assert_eq!(records.len(), 1);
    assert_eq!(header(&records[0], "ce_id"), Some(poison_id));
    assert_eq!(header(&records[0], DEAD_LETTER_OFFSET), Some(POISON.to_string()));
    let reason = header(&records[0], DEAD_LETTER_REASON).expect("dlq_reason");
    assert!(reason.contains("not a valid"), "{reason}");
    assert!(
        read_extra(&dead_letters, Duration::from_secs(2)).await.is_empty(),
        "only the poison record"
    );
}

/// Applies orders as effect rows (`customer_id` is a TEXT column, so a NUL byte in it is a data
/// exception); orders whose id starts with `flaky-` fail transiently `flaky_failures` times first,
/// `always-busy-` ones always.
#[derive(Debug)]
struct Effects {
    flaky_failures: u32,
    attempts: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Effects {
    fn attempts(&self, order_id: &str) -> u32 {
        self.attempts.lock().expect("lock").get(order_id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl TransactionalHandler for Effects {
    fn consumer(&self) -> &str {
        "test-poison"
    }

    async fn apply(&self, conn: &mut sqlx::PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let order: Order = event.decode()?;
        let attempt = {
            let mut attempts = self.attempts.lock().expect("lock");
            let attempt = attempts.entry(order.order_id.clone()).or_default();
            *attempt += 1;
            *attempt
        };
        if order.order_id.starts_with("always-busy-") {
            return Err(HandlerError::transient("could not serialize access (test)"));
        }
        if order.order_id.starts_with("flaky-") && attempt <= self.flaky_failures {
            return Err(HandlerError::transient("could not serialize access (test)"));
        }
        sqlx::query("INSERT INTO effects (order_id, customer_id, partition) VALUES ($1, $2, $3)")
            .bind(&order.order_id)
            .bind(&order.customer_id)
            .bind(event.partition)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

async fn effects_table(db: &TestDb) {
    sqlx::query(
        "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, order_id TEXT NOT NULL, customer_id TEXT NOT NULL, partition INT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .expect("create effects");
}

async fn effect_count(pool: &PgPool, order_id_like: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE order_id LIKE $1")
        .bind(order_id_like)
        .fetch_one(pool)
        .await
        .expect("count effects")
}

/// Issue #14's poison acceptance: a NUL byte in `ce_id`, a 10 kB `ce_id` and a NUL byte in a
/// payload string reach the dead-letter topic, classified, without a retry; a record failing
/// transiently three times is applied once; one that never stops failing is dead-lettered after
/// `max_attempts`; and 1,000 records on the other partitions are applied meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_classified_and_dead_lettered_while_other_partitions_flow() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let db = TestDb::with_platform_tables().await;
    effects_table(&db).await;
    let topic = unique_topic("consumer.classify");
    let dead_letter_topic = unique_topic("consumer.classify.dlq");
    create_topics(&kafka_bootstrap(), &[&topic], 4).await;
    create_topics(&kafka_bootstrap(), &[&dead_letter_topic], 1).await;
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("broker.address.family", "v4")
        .create()
        .expect("producer");
    let send = async |partition: i32, order: &Order, event: &EventMetadata| {
        let value = order.encode_to_vec();
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .partition(partition)
            .key(&order.order_id)
            .payload(&value)
            .headers(event.to_headers());
        producer.send(record, WAIT).await.expect("send");
    };

    let handler = Arc::new(Effects {
        flaky_failures: 3,
        attempts: Default::default(),
    });
    let group = unique_group("classify");
    let mut consumer_settings = settings(&topic, &dead_letter_topic, &group);
    consumer_settings.lanes = 4;
    consumer_settings.max_attempts = 5;
    consumer_settings.max_retry = Duration::from_secs(60);
    consumer_settings.max_backoff = Duration::from_millis(200);
    // One record at a time, so the handler's attempt counts are the consumer's.
    consumer_settings.max_batch = 1;
    let (task, shutdown) = start(
        consumer_settings,
        Arc::new(InTransaction::new(db.pool.clone(), HandlerRef(Arc::clone(&handler)))),
    );

    // Once the consumer applies a first record, the poison ones go to partition 0.
    send(0, &order("warm-up", 1), &metadata("warm-up", TraceHeaders::default())).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while effect_count(&db.pool, "warm-up").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never applied a record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut nul_id = metadata("nul-id", TraceHeaders::default());
    nul_id.id = format!("{}\0tail", nul_id.id);
    send(0, &order("nul-id", 2), &nul_id).await;
    let mut huge_id = metadata("huge-id", TraceHeaders::default());
    huge_id.id = "x".repeat(10_000);
    send(0, &order("huge-id", 3), &huge_id).await;
    let nul_customer = Order {
        customer_id: "customer\0with-nul".to_owned(),
        ..order("nul-customer", 4)
    };
    let nul_customer_event = metadata("nul-customer", TraceHeaders::default());
    send(0, &nul_customer, &nul_customer_event).await;
    let flaky = metadata("flaky-1", TraceHeaders::default());
    send(0, &order("flaky-1", 5), &flaky).await;
    let busy = metadata("always-busy-1", TraceHeaders::default());
    send(0, &order("always-busy-1", 6), &busy).await;
    const OTHERS: usize = 1000;
    for n in 0..OTHERS {
        let id = format!("other-{n:04}");
        send(
            1 + (n % 3) as i32,
            &order(&id, 7),
            &metadata(&id, TraceHeaders::default()),
        )
        .await;
    }

    // The three bad records are dead-lettered, classified, and the handler saw only the one whose
    // headers were valid, once. (The wait is the reader's: a fresh consumer joining its group on a
    // loaded machine. A budget counted from the poison records, which sending the others above
    // could use up, failed here once with every dead letter already published.)
    let dead_letters = reader(&kafka_bootstrap(), &[&dead_letter_topic]);
    let first = read_records(&dead_letters, 3, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 3, "three poison records dead-lettered");
    let classified: Vec<(Option<String>, Option<String>, Option<String>)> = first
        .iter()
        .map(|record| {
            (
                header(record, "dlq_class"),
                header(record, "dlq_attempts"),
                header(record, DEAD_LETTER_OFFSET),
            )
        })
        .collect();
    assert_eq!(
        classified,
        [
            (Some("invalid".to_owned()), Some("0".to_owned()), Some("1".to_owned())),
            (Some("invalid".to_owned()), Some("0".to_owned()), Some("2".to_owned())),
            (Some("permanent".to_owned()), Some("1".to_owned()), Some("3".to_owned())),
        ]
    );
    let reasons: Vec<String> = first
        .iter()
        .map(|record| header(record, DEAD_LETTER_REASON).expect("dlq_reason"))
        .collect();
    assert!(reasons[0].contains("U+0000"), "{}", reasons[0]);
    assert!(reasons[1].contains("10000 bytes"), "{}", reasons[1]);
    assert!(reasons[2].contains("database rejected"), "{}", reasons[2]);
    assert_eq!(header(&first[2], "ce_id"), Some(nul_customer_event.id.clone()));
    assert_eq!(handler.attempts("nul-customer"), 1, "a data exception is not retried");
    assert_eq!(
        handler.attempts("nul-id") + handler.attempts("huge-id"),
        0,
        "invalid ids never reach the handler"
    );

    // The record that never stops failing: dead-lettered after max_attempts, as exhausted.
    let exhausted = read_records(&dead_letters, 1, WAIT).await;
    assert_eq!(exhausted.len(), 1, "the always-failing record is dead-lettered");
    assert_eq!(header(&exhausted[0], "ce_id"), Some(busy.id.clone()));
    assert_eq!(header(&exhausted[0], "dlq_class").as_deref(), Some("exhausted"));
    assert_eq!(header(&exhausted[0], "dlq_attempts").as_deref(), Some("5"));
    assert_eq!(handler.attempts("always-busy-1"), 5);

    // Everything on partitions 1-3 applied, and partition 0 finished: nothing is stuck.
    wait_for_commit(&group, &topic, 0, 6).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while effect_count(&db.pool, "other-%").await < OTHERS as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "other partitions did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(task, shutdown).await;
    assert_eq!(
        effect_count(&db.pool, "other-%").await,
        OTHERS as i64,
        "each applied once"
    );
    assert_eq!(
        effect_count(&db.pool, "flaky-1").await,
        1,
        "the flaky record applied once"
    );
    assert_eq!(handler.attempts("flaky-1"), 4, "three transient failures, then success");
    assert_eq!(effect_count(&db.pool, "nul-customer").await, 0);
    assert!(
        read_extra(&dead_letters, Duration::from_secs(1)).await.is_empty(),
        "nothing else dead-lettered"
    );
    let dead_lettered =
        fintech_platform::metrics::value(fintech_platform::metrics::CONSUMER_DEAD_LETTERS, &[("group", &group)]);
    assert_eq!(dead_lettered, Some(4.0), "dead letters counted");
    let retries = fintech_platform::metrics::value(fintech_platform::metrics::CONSUMER_RETRIES, &[("group", &group)]);
    assert_eq!(
        retries,
        Some(3.0 + 4.0),
        "retries counted: 3 of the flaky record, 4 of the busy one"
    );
}

/// Lets a test keep a handle on a handler it gives to the consumer.
#[derive(Debug)]
struct HandlerRef<H>(Arc<H>);

#[async_trait]
impl<H: TransactionalHandler> TransactionalHandler for HandlerRef<H> {
    fn consumer(&self) -> &str {
        self.0.consumer()
    }

    async fn apply(&self, conn: &mut sqlx::PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        self.0.apply(conn, event).await
    }
}

/// A lane stuck on one record with far more records queued behind it than a lane holds: the loop
/// pauses that partition and keeps fetching for the others; once the record passes, its partition
/// resumes from where it was, in order, nothing skipped and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_pauses_its_partition_and_the_others_keep_flowing() {
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.pause");
    let dead_letter_topic = unique_topic("consumer.pause.dlq");
    create_topics(&kafka_bootstrap(), &[&topic], 2).await;
    create_topics(&kafka_bootstrap(), &[&dead_letter_topic], 1).await;
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("broker.address.family", "v4")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    const PER_PARTITION: i64 = 400;
    let produce = async |partition: i32| {
        let sends = (0..PER_PARTITION).map(|n| {
            let id = format!("order-{partition}-{n}");
            let value = order(&id, n).encode_to_vec();
            let headers = metadata(&id, TraceHeaders::default()).to_headers();
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let record = rdkafka::producer::FutureRecord::to(&topic)
                    .partition(partition)
                    .key(&id)
                    .payload(&value)
                    .headers(headers);
                producer.send(record, WAIT).await.expect("send");
            }
        });
        futures::future::join_all(sends).await;
    };

    struct Gate {
        open: AtomicBool,
        stuck: mpsc::UnboundedSender<()>,
        handled: mpsc::UnboundedSender<(i32, i64)>,
    }
    impl std::fmt::Debug for Gate {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("Gate")
        }
    }
    #[async_trait]
    impl EventHandler for Gate {
        async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
            if event.partition == 0 && !self.open.load(Ordering::SeqCst) {
                let _ = self.stuck.send(());
                return Err(HandlerError::Unavailable("partition 0 waits for the test".to_owned()));
            }
            self.handled
                .send((event.partition, event.offset))
                .expect("test listens");
            Ok(())
        }
    }
    let (handled, mut handled_rx) = mpsc::unbounded_channel();
    let (stuck, mut stuck_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        open: AtomicBool::new(false),
        stuck,
        handled,
    });
    let group = unique_group("pause");
    let mut consumer_settings = settings(&topic, &dead_letter_topic, &group);
    consumer_settings.lanes = 2;
    consumer_settings.max_batch = 1;
    let components = fintech_platform::grpc::Components::default();
    consumer_settings.health = Some(components.component("consumer-pause"));
    let consumer_health = || {
        components
            .snapshot()
            .into_iter()
            .find(|(name, _)| name == "consumer-pause")
            .map(|(_, healthy)| healthy)
    };
    let (task, shutdown) = start(consumer_settings, Arc::clone(&gate) as Arc<dyn EventHandler>);

    produce(0).await;
    next(&mut stuck_rx, "partition 0 stuck on its first record").await;
    produce(1).await;
    let mut partition_one = Vec::new();
    while partition_one.len() < PER_PARTITION as usize {
        let (partition, offset) = next(&mut handled_rx, "a record of partition 1").await;
        assert_eq!(partition, 1, "partition 0 is still stuck");
        partition_one.push(offset);
    }
    assert_eq!(partition_one, (0..PER_PARTITION).collect::<Vec<_>>());
    assert_eq!(
        consumer_health(),
        Some(false),
        "a consumer retrying a record reports it"
    );

    gate.open.store(true, Ordering::SeqCst);
    let mut partition_zero = Vec::new();
    while partition_zero.len() < PER_PARTITION as usize {
        let (partition, offset) = next(&mut handled_rx, "a record of partition 0").await;
        assert_eq!(partition, 0);
        partition_zero.push(offset);
    }
    assert_eq!(
        partition_zero,
        (0..PER_PARTITION).collect::<Vec<_>>(),
        "in order, none skipped"
    );
    wait_for_commit(&group, &topic, 0, PER_PARTITION).await;
    wait_for_commit(&group, &topic, 1, PER_PARTITION).await;
    assert_eq!(consumer_health(), Some(true), "healthy again once the record passed");
    stop(task, shutdown).await;
    assert!(handled_rx.try_recv().is_err(), "each record handled once");
}

/// The operator's replay (`fintech-ops dlq replay`): dead letters go back to the topic they came
/// from with their key, value and original headers (the `dlq_*` ones removed); a second replay
/// finds nothing new; a record that cannot say where it came from stops the replay, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_is_replayed_to_the_original_topics_once() {
    use fintech_platform::kafka::dead_letters::{ReplaySettings, replay};
    let _telemetry = fintech_platform::telemetry::init("test").expect("telemetry");
    let topic = unique_topic("consumer.replay");
    let dead_letter_topic = unique_topic("consumer.replay.dlq");
    create_topics(&kafka_bootstrap(), &[&topic, &dead_letter_topic], 1).await;
    let producer = producer();
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = format!("order-{n}");
        let event = metadata(&id, TraceHeaders::default());
        ids.push(event.id.clone());
        let headers = event
            .to_headers()
            .insert(rdkafka::message::Header {
                key: DEAD_LETTER_TOPIC,
                value: Some(topic.as_str()),
            })
            .insert(rdkafka::message::Header {
                key: DEAD_LETTER_REASON,
                value: Some("database unavailable for too long"),
            })
            .insert(rdkafka::message::Header {
                key: "dlq_class",
                value: Some("exhausted"),
            });
        producer
            .send_raw(
                &dead_letter_topic,
                id.as_bytes(),
                &order(&id, n).encode_to_vec(),
                headers,
            )
            .await
            .expect("dead letter");
    }

    let settings = ReplaySettings::new(kafka_bootstrap(), &dead_letter_topic);
    let report = replay(&settings).await.expect("replay");
    assert_eq!(report.total(), 3);
    assert_eq!(report.replayed.get(&topic), Some(&3));
    let original = reader(&kafka_bootstrap(), &[&topic]);
    let records = read_records(&original, 3, WAIT).await;
    assert_eq!(
        records.iter().map(|record| header(record, "ce_id")).collect::<Vec<_>>(),
        ids.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record.key(), Some(format!("order-{n}").as_bytes()));
        assert_eq!(
            Order::decode(record.payload().expect("value")).expect("decodes"),
            order(&format!("order-{n}"), n as i64)
        );
        assert_eq!(
            header(record, "ce_type").as_deref(),
            Some("fintech.payments.v1.order.created")
        );
        assert_eq!(header(record, DEAD_LETTER_TOPIC), None, "dead-letter headers removed");
        assert_eq!(header(record, DEAD_LETTER_REASON), None);
        assert_eq!(header(record, "dlq_class"), None);
    }

    // Nothing new: the replay group's offsets were committed.
    assert_eq!(replay(&settings).await.expect("second replay").total(), 0);
    assert!(read_extra(&original, Duration::from_secs(1)).await.is_empty());

    // A dead letter without its origin stops the replay with an error naming it.
    producer
        .send_raw(&dead_letter_topic, b"k", b"v", OwnedHeaders::new())
        .await
        .expect("dead letter without origin");
    let error = replay(&settings).await.expect_err("no origin, no target");
    assert!(error.to_string().contains("dlq_original_topic"), "{error}");
}
