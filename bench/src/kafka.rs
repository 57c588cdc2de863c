//! Broker side of the benchmark: the run's topics, consumer-group lag, and the raw rdkafka
//! baselines (producer throughput and ack latency, consumer throughput, produce-to-consume latency)
//! with the same client settings, record key, payload size and headers the outbox relay sends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use fintech_platform::kafka::{EventMetadata, client_config};
use fintech_platform::telemetry::TraceHeaders;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::progress::Progress;
use crate::stats::{Live, Samples};

/// Partitions of every topic the benchmark creates (as `deploy/local/topics.py` does).
pub const PARTITIONS: i32 = 3;

/// `fetch.wait.max.ms` of the benchmark's own readers. Tansu 0.6.0 answers a fetch only after
/// sleeping half of the fetch's max wait even when records are there (`tansu-storage`
/// `service/fetch.rs`), so with librdkafka's default of 500 ms every hop costs 250-500 ms; a reader
/// that measures latency must not add that itself.
pub const INSTRUMENT_FETCH_WAIT_MS: u32 = 10;

/// Creates `topics` with the benchmark's partition count (an existing topic is fine).
pub async fn create_topics(bootstrap: &str, topics: &[String]) -> anyhow::Result<()> {
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    fintech_devkit::create_topics(bootstrap, &topics, PARTITIONS).await
}

/// Reads how far a consumer group is behind: the sum over partitions of (high watermark -
/// committed offset). Uses a client with the group's id that never joins the group.
#[derive(Clone)]
pub struct GroupLag {
    consumer: Arc<BaseConsumer>,
    topics: Vec<String>,
}

impl std::fmt::Debug for GroupLag {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GroupLag")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl GroupLag {
    /// A lag reader for `group` over `topics`.
    pub fn new(bootstrap: &str, group: &str, topics: Vec<String>) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = client_config(bootstrap, "fintech-bench-lag")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topics,
        })
    }

    /// Records the group has not committed yet (`None` if the broker did not answer in time).
    pub async fn lag(&self) -> Option<i64> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.lag_blocking().ok())
            .await
            .ok()
            .flatten()
    }

    fn lag_blocking(&self) -> anyhow::Result<i64> {
        let timeout = Duration::from_secs(2);
        let mut partitions = TopicPartitionList::new();
        for topic in &self.topics {
            for partition in 0..PARTITIONS {
                partitions.add_partition(topic, partition);
            }
        }
        let committed = self.consumer.committed_offsets(partitions, timeout)?;
        let mut lag = 0;
        for element in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(element.topic(), element.partition(), timeout)?;
            let position = match element.offset() {
                Offset::Offset(offset) => offset.max(low),
                _ => low,
            };
            lag += (high - position).max(0);
        }
        Ok(lag)
    }
}

/// The record the relay would send for an event of `payload_size` bytes: same key length (a
/// UUID), same CloudEvents and trace headers.
fn relay_like_headers(key: &str) -> OwnedHeaders {
    EventMetadata {
        id: uuid::Uuid::now_v7().to_string(),
        event_type: "fintech.payments.v1.transaction.created".to_owned(),
        source: "/fintech/payments".to_owned(),
        time: Utc::now(),
        subject: Some(key.to_owned()),
        payload_type: "fintech.payments.v1.Transaction".to_owned(),
        trace: TraceHeaders {
            traceparent: Some(format!(
                "00-{}-{}-01",
                uuid::Uuid::new_v4().simple(),
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            )),
            tracestate: None,
        },
    }
    .to_headers()
}

/// The producer configuration of `fintech_platform::kafka::EventProducer` (idempotent,
/// `acks=all`, 5 in flight, `linger.ms=2`).
fn producer(bootstrap: &str, client_id: &str) -> anyhow::Result<FutureProducer> {
    Ok(client_config(bootstrap, client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "10000")
        .create()?)
}

/// Sends one record like the relay's (a UUID key, the CloudEvents and trace headers) with
/// `payload` to `topic`; yields the time from the send to the acknowledgement.
fn send_record(
    producer: &FutureProducer,
    topic: &str,
    payload: Vec<u8>,
) -> impl Future<Output = (Duration, Result<(), String>)> + Send + 'static {
    let (producer, topic) = (producer.clone(), topic.to_owned());
    async move {
        let key = uuid::Uuid::new_v4().to_string();
        let headers = relay_like_headers(&key);
        let started = Instant::now();
        let record = FutureRecord::to(&topic).key(&key).payload(&payload).headers(headers);
        let result = producer.send(record, Timeout::Never).await;
        (
            started.elapsed(),
            result.map(|_| ()).map_err(|(error, _)| error.to_string()),
        )
    }
}

/// Counts one acknowledgement into `samples` (and into `live`, when given).
fn tally(samples: &mut Samples, live: Option<&Live>, (latency, result): (Duration, Result<(), String>)) {
    let ok = result.is_ok();
    match result {
        Ok(()) => samples.record(latency),
        Err(error) => samples.error(error),
    }
    match live {
        Some(live) if ok => live.ok(),
        Some(live) => live.failed(),
        None => {}
    }
}

/// Result of the producer baseline.
#[derive(Debug)]
pub struct ProduceRun {
    /// Ack latency of each record.
    pub samples: Samples,
    /// Measured time.
    pub elapsed: Duration,
}

/// Sends records of `payload_size` bytes to `topic` for `duration` (or until `limit` records),
/// keeping up to `window` unacknowledged (the relay sends a batch of up to 256 at once and waits
/// for all of them).
pub async fn produce_baseline(
    bootstrap: &str,
    topic: &str,
    payload_size: usize,
    window: usize,
    duration: Duration,
    limit: Option<u64>,
    label: &str,
) -> anyhow::Result<ProduceRun> {
    let producer = producer(bootstrap, "fintech-bench-produce")?;
    let live = Arc::new(Live::default());
    let _progress = Progress::start(label, duration, Arc::clone(&live), None);
    let mut samples = Samples::default();
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    let (deadline, limit) = (started + duration, limit.unwrap_or(u64::MAX));
    let mut sent = 0u64;
    loop {
        while in_flight.len() < window && Instant::now() < deadline && sent < limit {
            sent += 1;
            in_flight.push(send_record(&producer, topic, vec![0x5a_u8; payload_size]));
        }
        let Some(acknowledged) = in_flight.next().await else {
            break;
        };
        tally(&mut samples, Some(&live), acknowledged);
    }
    Ok(ProduceRun {
        samples,
        elapsed: started.elapsed(),
    })
}

/// Result of the consumer baseline.
#[derive(Debug)]
pub struct ConsumeRun {
    /// Records read.
    pub records: u64,
    /// From the reader's start to the last record.
    pub elapsed: Duration,
    /// From the reader's start to the first record.
    pub first_record: Option<Duration>,
}

/// Reads `expected` records of `topic` from the beginning, as fast as possible.
pub async fn consume_baseline(
    bootstrap: &str,
    topic: &str,
    expected: u64,
    timeout: Duration,
    label: &str,
) -> anyhow::Result<ConsumeRun> {
    let consumer = tokio::task::block_in_place(|| assigned_reader(bootstrap, topic, Start::Beginning, None))?;
    let live = Arc::new(Live::default());
    let _progress = Progress::start(label, timeout, Arc::clone(&live), None);
    let started = Instant::now();
    let deadline = started + timeout;
    let mut first = None;
    let mut last = started;
    let mut records = 0;
    while records < expected {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(Ok(message)) => {
                // Touch the payload as a consumer would.
                let _ = message.payload().map(<[u8]>::len);
                records += 1;
                last = Instant::now();
                first.get_or_insert(last);
                live.ok();
            }
            Ok(Err(_)) => live.failed(),
            Err(_) => break,
        }
    }
    Ok(ConsumeRun {
        records,
        elapsed: last - started,
        first_record: first.map(|first: Instant| first - started),
    })
}

/// Where an [`assigned_reader`] starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Offset 0: for the run's own topics, created empty. Asking the broker is not an option
    /// there: Tansu 0.6.0 does not answer offset requests for a partition that never held a
    /// record (librdkafka times out), which also keeps `Offset::Beginning` from resolving.
    Zero,
    /// The low watermark.
    Beginning,
    /// The high watermark (only what is produced from now on).
    End,
}

/// A reader assigned every partition of `topic` directly (no group join: joining a group makes the
/// broker's coordinator rebalance, which must not disturb the services' own groups), starting at
/// `start`. `fetch_wait_ms` overrides librdkafka's `fetch.wait.max.ms` (librdkafka default 500;
/// the platform consumer uses 50). Blocks while it asks for watermarks.
pub fn assigned_reader(
    bootstrap: &str,
    topic: &str,
    start: Start,
    fetch_wait_ms: Option<u32>,
) -> anyhow::Result<StreamConsumer> {
    let group = format!("fintech-bench-reader-{}", uuid::Uuid::new_v4().simple());
    let mut config = client_config(bootstrap, "fintech-bench-reader");
    config
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if let Some(wait) = fetch_wait_ms {
        config.set("fetch.wait.max.ms", wait.to_string());
    }
    let consumer: StreamConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let offset = match start {
            Start::Zero => Offset::Offset(0),
            Start::Beginning | Start::End => {
                // A busy broker may miss one deadline; three tries before giving up.
                let mut attempt = 0;
                let (low, high) = loop {
                    attempt += 1;
                    match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                        Ok(watermarks) => break watermarks,
                        Err(error) if attempt >= 3 => {
                            return Err(error).with_context(|| format!("watermarks of {topic}/{partition}"));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(500)),
                    }
                };
                Offset::Offset(if start == Start::End { high } else { low })
            }
        };
        assignment.add_partition_offset(topic, partition, offset)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// Result of a produce -> consume run.
#[derive(Debug)]
pub struct RoundtripRun {
    /// From just before the send to the arrival at the consumer (missing records are errors).
    pub arrival: Samples,
    /// From just before the send to the producer's acknowledgement.
    pub ack: Samples,
}

/// First 8 payload bytes of a warm-up record of [`roundtrip_baseline`] (not measured).
const WARM_UP_MARK: u64 = u64::MAX;

/// Produces at `rate` records/s for `duration`, after a second's worth of warm-up records, while a
/// consumer in the same process (with `fetch_wait_ms`, see [`assigned_reader`]) reads them.
pub async fn roundtrip_baseline(
    bootstrap: &str,
    topic: &str,
    payload_size: usize,
    rate: f64,
    duration: Duration,
    fetch_wait_ms: Option<u32>,
    label: &str,
) -> anyhow::Result<RoundtripRun> {
    // The topic is the run's own and empty: reading from offset 0 is reading from now.
    let consumer = assigned_reader(bootstrap, topic, Start::Zero, fetch_wait_ms)?;
    let base = Instant::now();
    let live = Arc::new(Live::default());
    // The payload starts with the send time (nanoseconds since `base`) or the warm-up mark.
    let payload = move |mark: u64| {
        let mut payload = vec![0x5a_u8; payload_size.max(8)];
        payload[..8].copy_from_slice(&mark.to_le_bytes());
        payload
    };

    // The reader runs first and must own its partitions before the first send, or early records
    // would wait for the group join.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let (live, expected) = (Arc::clone(&live), Arc::clone(&expected));
        tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut last_record = Instant::now();
            // Until every sent record arrived, or 5 s without a record once sending is over.
            while samples.count() < expected.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(250), consumer.recv()).await {
                    Ok(Ok(message)) => {
                        last_record = Instant::now();
                        let sent_nanos = message
                            .payload()
                            .and_then(|payload| payload.get(..8))
                            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                            .map(u64::from_le_bytes);
                        if let Some(sent_nanos) = sent_nanos.filter(|&nanos| nanos != WARM_UP_MARK) {
                            let arrived = base.elapsed().as_nanos() as u64;
                            samples.record(Duration::from_nanos(arrived.saturating_sub(sent_nanos)));
                            live.ok();
                        }
                    }
                    Ok(Err(error)) => samples.error(format!("{error}")),
                    Err(_) if expected.load(Ordering::Relaxed) != u64::MAX => {
                        if last_record.elapsed() > Duration::from_secs(5) {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            samples
        })
    };
    // A moment for the reader to connect and start fetching.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let producer = producer(bootstrap, "fintech-bench-roundtrip")?;
    // A new idempotent producer's first acknowledgements take up to half a second (producer id,
    // metadata, first write to each partition), measured on Tansu 0.6. The relays' producers
    // are long-lived, so the baseline measures a warmed-up producer: a second's worth of marked
    // records first, acknowledged before the clock starts, and skipped by the reader.
    let mut warming: FuturesUnordered<_> = (0..(rate as u64).max(10))
        .map(|_| send_record(&producer, topic, payload(WARM_UP_MARK)))
        .collect();
    while let Some((_, result)) = warming.next().await {
        result.map_err(anyhow::Error::msg).context("warm-up record")?;
    }
    let _progress = Progress::start(label, duration, Arc::clone(&live), None);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let started = Instant::now();
    let mut sends = FuturesUnordered::new();
    let mut sent = 0u64;
    let mut acks = Samples::default();
    while started.elapsed() < duration {
        tokio::time::sleep_until((started + interval.mul_f64(sent as f64)).into()).await;
        // A task of its own, so the acknowledgement is timed when it arrives, not when this loop
        // next looks (at a low rate that would add up to a whole send interval).
        let sent_nanos = base.elapsed().as_nanos() as u64;
        sends.push(tokio::spawn(send_record(&producer, topic, payload(sent_nanos))));
        sent += 1;
        // Reap finished sends without waiting.
        while let Some(Some(joined)) = futures::FutureExt::now_or_never(sends.next()) {
            tally(&mut acks, None, joined.context("send task")?);
        }
    }
    while let Some(joined) = sends.next().await {
        tally(&mut acks, None, joined.context("send task")?);
    }
    expected.store(sent, Ordering::Relaxed);
    let mut arrival = reader.await.context("round-trip reader")?;
    for _ in arrival.count()..sent {
        arrival.error("not consumed");
    }
    Ok(RoundtripRun { arrival, ack: acks })
}
