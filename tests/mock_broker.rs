//! The private mock broker (`fintech_devkit::mock`, librdkafka's mock cluster in its own process)
//! supports what the services use: the platform's idempotent producer with CloudEvents headers,
//! consumer groups with manual commits that a new member resumes from, and rebalances when a
//! member joins and leaves. The hand-over after a SIGKILL is `tests/scale_out.rs`, on this broker.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::Utc;
use fintech_devkit::mock::MockBroker;
use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::telemetry::TraceHeaders;
use fintech_tests::groups::group_offsets;
use fintech_tests::process::service_binary;
use fintech_tests::{header, read_records, reader};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(30);

fn start() -> (MockBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("log folder");
    let binary = service_binary("fintech-devkit", "fintech-mock-broker");
    let broker = MockBroker::start(&binary, 1, &dir.path().join("mock-broker.log")).expect("mock broker starts");
    (broker, dir)
}

fn member(bootstrap: &str, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        // The group's rebalance timeout: how long the coordinator waits for every member to
        // rejoin before it assigns without the late ones (default 300 s, longer than any wait here;
        // seen once in CI: a join rebalance that had not finished after 30 s).
        .set("max.poll.interval.ms", "10000")
        .create()
        .expect("group member")
}

/// Polls `consumer` (which drives its group membership) until its assignment is `expected`
/// partitions of `topic`; returns what it read meanwhile.
async fn wait_for_assignment(consumer: &StreamConsumer, expected: usize) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut read = Vec::new();
    loop {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            read.push(message.detach());
        }
        let assigned = consumer.assignment().expect("assignment").count();
        if assigned == expected {
            return read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "assigned {assigned} partitions, never {expected}"
        );
    }
}

fn metadata(id: String, key: &str) -> EventMetadata {
    EventMetadata {
        id,
        event_type: "fintech.test.v1.thing.created".to_owned(),
        source: "/fintech/test".to_owned(),
        time: Utc::now(),
        subject: Some(key.to_owned()),
        payload_type: "fintech.test.v1.Thing".to_owned(),
        trace: TraceHeaders::default(),
    }
}

#[tokio::test]
async fn the_platform_producer_publishes_every_event_once_with_its_headers() {
    let (broker, _dir) = start();
    broker.create_topics(&["things"], 3).expect("topic");
    broker.create_topics(&["things"], 3).expect("an existing topic is fine");
    assert!(
        broker.create_topics(&["bad name"], 3).is_err(),
        "a name with a space is refused"
    );

    let producer = EventProducer::new(broker.bootstrap(), "test-mock", Duration::from_secs(10)).expect("producer");
    let mut sent = HashSet::new();
    for n in 0..30 {
        let id = uuid::Uuid::new_v4().to_string();
        let key = format!("key-{}", n % 7);
        producer
            .send_event(
                "things",
                &key,
                format!("payload-{n}").as_bytes(),
                &metadata(id.clone(), &key),
            )
            .await
            .expect("acknowledged");
        sent.insert((id, key, format!("payload-{n}")));
    }

    let consumer = reader(broker.bootstrap(), &["things"]);
    let records = read_records(&consumer, 31, Duration::from_secs(5)).await;
    let received: HashSet<(String, String, String)> = records
        .iter()
        .map(|record| {
            assert_eq!(
                header(record, "ce_type").as_deref(),
                Some("fintech.test.v1.thing.created")
            );
            assert_eq!(
                header(record, "ce_dataschema").as_deref(),
                Some("type.googleapis.com/fintech.test.v1.Thing")
            );
            (
                header(record, "ce_id").expect("ce_id"),
                String::from_utf8(record.key().expect("key").to_vec()).expect("utf-8 key"),
                String::from_utf8(record.payload().expect("value").to_vec()).expect("utf-8 value"),
            )
        })
        .collect();
    assert_eq!(records.len(), 30, "every event once, none twice");
    assert_eq!(received, sent);
    // One key, one partition: the order of a key's events holds.
    let partitions_of_key: BTreeSet<i32> = records
        .iter()
        .filter(|record| record.key() == Some(b"key-0".as_slice()))
        .map(OwnedMessage::partition)
        .collect();
    assert_eq!(partitions_of_key.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_rebalances_on_join_and_leave_and_resumes_from_its_manual_commits() {
    let (broker, _dir) = start();
    broker.create_topics(&["work"], 4).expect("topic");
    let producer = EventProducer::new(broker.bootstrap(), "test-mock", Duration::from_secs(10)).expect("producer");
    for n in 0..40 {
        let key = format!("key-{n}");
        producer
            .send_event("work", &key, b"x", &metadata(uuid::Uuid::new_v4().to_string(), &key))
            .await
            .expect("acknowledged");
    }
    let partitions: BTreeSet<(String, i32)> = (0..4).map(|partition| ("work".to_owned(), partition)).collect();

    // One member takes every partition; a second one joining splits them 2 + 2.
    let first = member(broker.bootstrap(), "workers");
    first.subscribe(&["work"]).expect("subscribe");
    wait_for_assignment(&first, 4).await;
    let second = member(broker.bootstrap(), "workers");
    second.subscribe(&["work"]).expect("subscribe");
    let (_, _) = tokio::join!(wait_for_assignment(&first, 2), wait_for_assignment(&second, 2));
    let mut owned: Vec<(String, i32)> = first
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .chain(second.assignment().expect("assignment").elements().iter())
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect();
    owned.sort();
    assert_eq!(
        owned.into_iter().collect::<BTreeSet<_>>(),
        partitions,
        "split, none twice"
    );

    // Manual commits: offset 3 on every partition, committed synchronously by whoever owns it.
    for consumer in [&first, &second] {
        let mut commit = TopicPartitionList::new();
        for element in consumer.assignment().expect("assignment").elements() {
            commit
                .add_partition_offset(element.topic(), element.partition(), Offset::Offset(3))
                .expect("offset");
        }
        consumer.commit(&commit, CommitMode::Sync).expect("commit");
    }
    let committed = tokio::task::block_in_place(|| group_offsets(broker.bootstrap(), "workers", &partitions));
    assert!(
        committed.values().all(|(offset, _)| *offset == Some(3)),
        "{committed:?}"
    );

    // The second leaves: the first owns all four again and resumes at the commits, not at 0.
    drop(second);
    wait_for_assignment(&first, 4).await;
    drop(first);
    let newcomer = member(broker.bootstrap(), "workers");
    newcomer.subscribe(&["work"]).expect("subscribe");
    let mut read = wait_for_assignment(&newcomer, 4).await;
    let expected: usize = committed
        .values()
        .map(|(_, end)| usize::try_from(end - 3).expect("end"))
        .sum();
    read.extend(read_records(&newcomer, expected.saturating_sub(read.len()), WAIT).await);
    assert_eq!(read.len(), expected, "everything after the commits, once");
    assert!(
        read.iter().all(|record| record.offset() >= 3),
        "nothing before a commit"
    );
}
