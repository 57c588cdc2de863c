//! The consumer loop every service uses: at-least-once delivery (an offset is stored only after its
//! record finished), retries for transient failures, a dead-letter topic for events that can never
//! be processed, and the producer's trace context restored around the handler.
//!
//! # Guarantees
//! - **At least once.** A record's offset is committed only after its handler succeeded or after
//!   the record was written to the dead-letter topic (and the broker acknowledged it). A crash, a
//!   kill or a rebalance before that commit means the record is delivered again, so handlers must
//!   be idempotent: they apply their effect and [`mark_processed`] in one database transaction and
//!   skip the effect when the event id was already recorded.
//! - **Order per partition.** Each partition is handled by one of [`ConsumerSettings::lanes`]
//!   lanes (partitions are dealt to lanes in turn as they first appear, and keep their lane), one
//!   record at a time, in offset order; lanes run concurrently, so partitions do not wait for each other's
//!   database round trips. A record whose handler fails with [`HandlerError::Transient`] is retried
//!   (backoff from 100 ms doubling up to [`ConsumerSettings::max_backoff`]) and is never skipped:
//!   its partition waits for it (the other lanes go on until the one lane's queue is full).
//! - **Poison records never block a partition.** A record without valid CloudEvents headers, or
//!   whose handler says [`HandlerError::Permanent`], goes to [`ConsumerSettings::dead_letter_topic`]
//!   with its original key, value and headers plus `dlq_reason`, `dlq_original_topic`,
//!   `dlq_original_partition` and `dlq_original_offset`; then its offset is committed. If the
//!   dead letter cannot be written, that is a transient failure: retried, never dropped.
//! - **Trace context.** Each record is handled inside a `kafka.consume` span whose parent is the
//!   `traceparent` of the record, so the handler's trace id is the producer's.
//! - **Batches.** When several records are already waiting in a lane (the lane fell behind), up
//!   to [`ConsumerSettings::max_batch`] of them go to [`EventHandler::handle_batch`] at once if
//!   the handler takes batches ([`EventHandler::max_batch`]); a database-backed handler applies
//!   them in one transaction ([`super::transactional`]): one commit instead of one per record. A lane never waits to fill a batch, so a quiet lane still hands
//!   over each record as it arrives. If the batch fails, the records it did not finish (all of
//!   them, for a transaction that rolled back) are handled again one at a time, so a failing
//!   record is retried or dead-lettered on its own and the others are not held back by it.
//!
//! # Failure modes
//! - Shutdown (the [`CancellationToken`]) lets the record in hand of each lane finish (records
//!   queued behind it are left for the next run), commits the finished offsets synchronously and
//!   returns. A record still being retried at that moment is left
//!   uncommitted and is delivered again after the restart.
//! - A finished record's offset is stored at once and committed by the client every
//!   [`COMMIT_INTERVAL`] (and on a rebalance and at shutdown), not one commit request per record:
//!   on a broker that writes each commit to disk that per-record request was a large part of its
//!   load. A crash loses at most the commits of that interval, which only means redelivery of
//!   records that were already handled.
//! - While one record is retried, its lane's queue fills and then the loop stops polling the
//!   broker. If that lasts longer than [`ConsumerSettings::max_poll_interval`] the client leaves
//!   the group, its partitions move to another member, which handles the record again
//!   (idempotently), and this one rejoins when it polls again. Records of a revoked partition
//!   still queued in a lane are handled anyway (idempotently) and their offsets are not stored.
//! - A panic in a handler ends the consumer (the panic is resumed in its task) without committing
//!   the record in hand.
//! - A dead letter of a record without a key or value gets an empty key or value (the producer
//!   API takes byte slices).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client_config;
use super::headers::{
    DEAD_LETTER_OFFSET, DEAD_LETTER_PARTITION, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC, EventMetadata, header_str,
};
use super::producer::{Delivery, EventProducer};
use crate::error::Result;
use crate::telemetry::{TraceHeaders, set_remote_parent};

/// First delay after a transient failure; it doubles up to [`ConsumerSettings::max_backoff`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// How often the stored offsets of finished records are committed.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// Partitions handled concurrently unless configured otherwise (`KAFKA_CONSUMER_LANES`).
pub const DEFAULT_LANES: usize = 8;
/// `fetch.wait.max.ms` unless configured otherwise (`KAFKA_FETCH_WAIT_MAX_MS`). Some brokers hold a
/// fetch for all of it even when records are waiting (Tansu 0.6 does), so the librdkafka default
/// of 500 ms would cost up to a second per hop there (measured by bench/).
pub const DEFAULT_FETCH_WAIT_MAX: Duration = Duration::from_millis(50);
/// Records handed to a handler at once unless configured otherwise (`KAFKA_CONSUMER_MAX_BATCH`).
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Records queued per lane before the loop stops fetching.
const LANE_QUEUE: usize = 64;

/// One record as the handler sees it.
#[derive(Debug, Clone)]
pub struct ConsumedEvent {
    /// Topic the record was read from.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Record key (the aggregate id), if any.
    pub key: Option<Vec<u8>>,
    /// Record value (the protobuf payload), if any.
    pub payload: Option<Vec<u8>>,
    /// Record headers as received, kept whole so a dead letter carries them on.
    pub headers: Option<OwnedHeaders>,
    /// CloudEvents attributes; handlers only ever see `Ok` (records with invalid attributes are
    /// dead-lettered before the handler runs).
    pub metadata: Result<EventMetadata, String>,
}

impl ConsumedEvent {
    /// Copies a record out of the consumer's buffer and reads its CloudEvents attributes.
    pub fn from_message(message: &impl Message) -> Self {
        let headers = message.headers().map(|headers| {
            headers
                .iter()
                .fold(OwnedHeaders::new_with_capacity(headers.count()), |owned, header| {
                    owned.insert(Header {
                        key: header.key,
                        value: header.value,
                    })
                })
        });
        let metadata = EventMetadata::from_headers(headers.as_ref());
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
            metadata,
        }
    }

    /// Decodes the payload as `M`; an absent or malformed payload is a permanent error.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, HandlerError> {
        let payload = self
            .payload
            .as_deref()
            .ok_or_else(|| HandlerError::Permanent("record has no value".to_owned()))?;
        M::decode(payload).map_err(|error| {
            HandlerError::Permanent(format!("value is not a valid {}: {error}", std::any::type_name::<M>()))
        })
    }

    /// The CloudEvents attributes, or a permanent error naming what is wrong with them.
    pub fn valid_metadata(&self) -> Result<&EventMetadata, HandlerError> {
        self.metadata
            .as_ref()
            .map_err(|reason| HandlerError::Permanent(format!("invalid cloudevents headers: {reason}")))
    }

    /// The UTF-8 record key, if there is one.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|key| std::str::from_utf8(key).ok())
    }

    /// The trace context of the record (taken from the raw headers, so even a record with invalid
    /// CloudEvents attributes keeps its trace).
    fn trace_headers(&self) -> TraceHeaders {
        let get = |name: &str| self.headers.as_ref().and_then(|headers| header_str(headers, name));
        TraceHeaders {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }
}

/// Why a handler could not process an event; decides between dead-lettering and retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The event can never succeed (undecodable, invalid): it is dead-lettered.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The event may succeed later (e.g. the database is down): it is retried with capped
    /// exponential backoff, never skipped.
    #[error("transient failure: {0}")]
    Transient(String),
}

impl HandlerError {
    /// A permanent failure with `reason` as its message.
    pub fn permanent(reason: impl fmt::Display) -> Self {
        Self::Permanent(reason.to_string())
    }

    /// A transient failure with `reason` as its message.
    pub fn transient(reason: impl fmt::Display) -> Self {
        Self::Transient(reason.to_string())
    }
}

/// Database errors are treated as transient (connection lost, serialization failure); a handler
/// that knows better returns [`HandlerError::Permanent`] itself.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Transient(error.to_string())
    }
}

/// Failures of the shared plumbing (database, broker) are treated as transient.
impl From<crate::Error> for HandlerError {
    fn from(error: crate::Error) -> Self {
        Self::Transient(error.to_string())
    }
}

/// What a service does with each event it consumes.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event; must be idempotent (see [`mark_processed`]) because delivery is
    /// at-least-once.
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError>;

    /// Most records this handler takes at once through [`handle_batch`](Self::handle_batch); the
    /// consumer also caps it at [`ConsumerSettings::max_batch`]. The default, 1, means one record
    /// at a time, each offset stored as soon as its record finished.
    fn max_batch(&self) -> usize {
        1
    }

    /// Handles consecutive records of one lane (each partition's in offset order) together, e.g.
    /// in one database transaction. `Ok` finishes all of them. On `Err`, the first
    /// [`BatchFailure::finished`] records count as finished and the consumer hands each of the
    /// others to [`handle`](Self::handle) again, one at a time, so the one that failed is retried
    /// or dead-lettered alone. The default handles them one by one and stops at the first failure.
    async fn handle_batch(&self, events: &[ConsumedEvent]) -> Result<(), BatchFailure> {
        for (finished, event) in events.iter().enumerate() {
            if let Err(error) = self.handle(event).instrument(consume_span(event)).await {
                return Err(BatchFailure { finished, error });
            }
        }
        Ok(())
    }
}

/// How a batch failed: its first `finished` records are done, the rest are not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {finished} records of the batch)")]
pub struct BatchFailure {
    /// Records at the start of the batch that finished (their effects are committed).
    pub finished: usize,
    /// What went wrong with the next one (or with the batch as a whole).
    pub error: HandlerError,
}

/// Where and how a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Consumer group; committed offsets belong to it, so a restart resumes where it stopped.
    pub group_id: String,
    /// Client id shown in broker logs.
    pub client_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Where records that can never be processed go.
    pub dead_letter_topic: String,
    /// Upper bound of the delay between two attempts at a transiently failing record.
    pub max_backoff: Duration,
    /// How long the group waits for a silent member before moving its partitions.
    pub session_timeout: Duration,
    /// How long one record may be retried without polling before the client leaves the group.
    pub max_poll_interval: Duration,
    /// Static group membership (`group.instance.id`, KIP-345): a stable id per instance lets a
    /// restarted process take its partitions back at once instead of waiting for the old
    /// member's session to expire. Two live processes must never share one.
    pub group_instance_id: Option<String>,
    /// Partitions handled concurrently (at least 1); records of one partition always stay in
    /// order on one lane.
    pub lanes: usize,
    /// Most records already waiting in a lane handed to [`EventHandler::handle_batch`] at once
    /// (1 = one record at a time).
    pub max_batch: usize,
    /// Longest time the broker may hold a fetch that has nothing to return (`fetch.wait.max.ms`).
    pub fetch_wait_max: Duration,
}

impl ConsumerSettings {
    /// Settings with defaults: client id = group id, backoff capped at 30 s, session timeout
    /// 10 s, max poll interval 5 min, [`DEFAULT_LANES`] lanes, batches of up to
    /// [`DEFAULT_MAX_BATCH`], fetches held at most [`DEFAULT_FETCH_WAIT_MAX`].
    pub fn new(
        bootstrap_servers: impl Into<String>,
        group_id: impl Into<String>,
        topics: Vec<String>,
        dead_letter_topic: impl Into<String>,
    ) -> Self {
        let group_id = group_id.into();
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: group_id.clone(),
            group_id,
            topics,
            dead_letter_topic: dead_letter_topic.into(),
            max_backoff: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            group_instance_id: None,
            lanes: DEFAULT_LANES,
            max_batch: DEFAULT_MAX_BATCH,
            fetch_wait_max: DEFAULT_FETCH_WAIT_MAX,
        }
    }
}

/// Consumes `settings.topics` in `settings.group_id` until `shutdown` is cancelled, calling
/// `handler` for each record (see the module documentation for the guarantees). Returns an error
/// only when the consumer cannot be created or subscribed.
pub async fn run_consumer(
    settings: ConsumerSettings,
    handler: Arc<dyn EventHandler>,
    dead_letters: EventProducer,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut config = client_config(&settings.bootstrap_servers, &settings.client_id);
    if let Some(instance_id) = &settings.group_instance_id {
        config.set("group.instance.id", instance_id);
    }
    let consumer: StreamConsumer<LoggingContext> = config
        .set("group.id", &settings.group_id)
        // Only offsets stored explicitly after a record finished are committed (at least once),
        // in the background every COMMIT_INTERVAL, never the position librdkafka has fetched to.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", COMMIT_INTERVAL.as_millis().to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
        // Latency of a quiet partition (see DEFAULT_FETCH_WAIT_MAX).
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait_max.as_millis().max(1).to_string(),
        )
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval.as_millis().to_string(),
        )
        .create_with_context(LoggingContext)?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let consumer = Arc::new(consumer);
    let settings = Arc::new(settings);
    tracing::info!(group = %settings.group_id, topics = ?settings.topics, lanes = settings.lanes.max(1),
        max_batch = settings.max_batch.max(1), "consumer started");

    // Stops the lanes: on shutdown, or when one of them ended early.
    let lanes_stop = shutdown.child_token();
    let mut queues = Vec::with_capacity(settings.lanes.max(1));
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..settings.lanes.max(1) {
        let (queue, records) = tokio::sync::mpsc::channel(LANE_QUEUE);
        queues.push(queue);
        lanes.spawn(run_lane(
            records,
            Arc::clone(&handler),
            dead_letters.clone(),
            Arc::clone(&settings),
            Arc::clone(&consumer),
            lanes_stop.clone(),
        ));
    }

    // The lane of each partition seen so far: dealt in turn, then fixed for the life of the consumer.
    let mut lane_of: HashMap<(String, i32), usize> = HashMap::new();
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let event = match received {
            Ok(message) => ConsumedEvent::from_message(&message),
            Err(error) => {
                tracing::warn!(%error, group = %settings.group_id, "kafka consumer error");
                continue;
            }
        };
        let dealt = lane_of.len() % queues.len();
        let lane = *lane_of.entry((event.topic.clone(), event.partition)).or_insert(dealt);
        let sent = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            sent = queues[lane].send(event) => sent,
        };
        if sent.is_err() {
            // The lane ended (a handler panicked): stop; the panic is resumed below.
            break;
        }
    }
    // Lanes finish the record in hand and stop; queued records stay uncommitted.
    lanes_stop.cancel();
    drop(queues);

    let mut finished: HashMap<(String, i32), i64> = HashMap::new();
    let mut panic = None;
    while let Some(lane) = lanes.join_next().await {
        match lane {
            Ok(offsets) => finished.extend(offsets),
            Err(error) if error.is_panic() => panic = Some(error.into_panic()),
            Err(error) => tracing::warn!(%error, "consumer lane did not finish"),
        }
    }
    commit_finished(&consumer, &finished);
    tracing::info!(group = %settings.group_id, "consumer stopped");
    if let Some(panic) = panic {
        std::panic::resume_unwind(panic);
    }
    Ok(())
}

/// Handles the records of its partitions in order until its queue closes or shutdown; returns the
/// next offset to commit per partition it finished records of.
async fn run_lane(
    mut records: tokio::sync::mpsc::Receiver<ConsumedEvent>,
    handler: Arc<dyn EventHandler>,
    mut dead_letters: EventProducer,
    settings: Arc<ConsumerSettings>,
    consumer: Arc<StreamConsumer<LoggingContext>>,
    shutdown: CancellationToken,
) -> HashMap<(String, i32), i64> {
    let mut finished = HashMap::new();
    let max_batch = settings.max_batch.min(handler.max_batch()).max(1);
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = records.recv() => match event {
                Some(event) => event,
                None => break,
            },
        };
        batch.push(event);
        // Only what is already waiting: a batch never delays a record.
        while batch.len() < max_batch {
            match records.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let done = if batch.len() > 1 {
            handle_batch(&batch, handler.as_ref()).await
        } else {
            0
        };
        for event in batch.drain(..done) {
            finish(&consumer, &mut finished, event);
        }
        // One record, or what a failed batch left: each on its own, with retries and dead letters.
        for event in batch.drain(..) {
            if shutdown.is_cancelled() {
                // Like records still queued: left uncommitted, delivered again after the restart.
                return finished;
            }
            match process(&event, handler.as_ref(), &mut dead_letters, &settings, &shutdown).await {
                Outcome::Finished => finish(&consumer, &mut finished, event),
                // The rest of the batch stays uncommitted and is delivered again.
                Outcome::Interrupted => return finished,
            }
        }
    }
    finished
}

/// Runs `batch` through [`EventHandler::handle_batch`]; returns how many of its records finished.
async fn handle_batch(batch: &[ConsumedEvent], handler: &dyn EventHandler) -> usize {
    let span = tracing::info_span!("kafka.consume_batch", records = batch.len());
    match handler.handle_batch(batch).instrument(span).await {
        Ok(()) => batch.len(),
        Err(failure) => {
            tracing::info!(error = %failure.error, finished = failure.finished, records = batch.len(),
                "batch failed; handling the rest of its records one at a time");
            failure.finished.min(batch.len())
        }
    }
}

/// Stores the offset after the finished `event` for the next commit.
fn finish(consumer: &StreamConsumer<LoggingContext>, finished: &mut HashMap<(String, i32), i64>, event: ConsumedEvent) {
    let next = event.offset + 1;
    if let Err(error) = store(consumer, &event.topic, event.partition, next) {
        // The partition was revoked meanwhile: its new owner delivers the record again.
        tracing::warn!(%error, topic = %event.topic, partition = event.partition, offset = event.offset,
            "offset not stored; the record may be delivered again");
    }
    finished.insert((event.topic, event.partition), next);
}

/// Records that consumer `consumer` applied event `event_id`; `true` when it had not before.
/// Call it inside the transaction that applies the event's effect and skip the effect on `false`,
/// so a redelivered event changes nothing.
pub async fn mark_processed(conn: &mut sqlx::PgConnection, consumer: &str, event_id: &str) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// How the handling of one record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Handled or dead-lettered: its offset may be committed.
    Finished,
    /// Shutdown arrived while it was being retried: leave it uncommitted.
    Interrupted,
}

/// Handles one record inside its `kafka.consume` span, retrying transient failures.
async fn process(
    event: &ConsumedEvent,
    handler: &dyn EventHandler,
    dead_letters: &mut EventProducer,
    settings: &ConsumerSettings,
    shutdown: &CancellationToken,
) -> Outcome {
    async {
        // Once a record is judged permanent, only the dead-lettering is retried, not the handler.
        let mut dead_letter_reason = event.valid_metadata().err().map(|error| reason_of(&error));
        let mut attempt: u32 = 0;
        loop {
            let failure = match &dead_letter_reason {
                Some(reason) => {
                    match send_dead_letter(event, reason, dead_letters, &settings.dead_letter_topic).await {
                        Ok(delivery) => {
                            tracing::warn!(%reason, dead_letter_topic = %settings.dead_letter_topic,
                            dead_letter_partition = delivery.partition, dead_letter_offset = delivery.offset,
                            "event dead-lettered");
                            return Outcome::Finished;
                        }
                        Err(error) => {
                            // A timed-out idempotent send bumps the producer epoch on the next
                            // one; a fresh producer avoids that (see EventProducer::renewed).
                            if let Ok(renewed) = dead_letters.renewed() {
                                *dead_letters = renewed;
                            }
                            format!("dead-lettering failed: {error}")
                        }
                    }
                }
                None => match handler.handle(event).await {
                    Ok(()) => return Outcome::Finished,
                    Err(HandlerError::Permanent(reason)) => {
                        dead_letter_reason = Some(reason);
                        continue;
                    }
                    Err(HandlerError::Transient(reason)) => reason,
                },
            };
            let delay = backoff_delay(attempt, settings.max_backoff);
            attempt = attempt.saturating_add(1);
            tracing::warn!(error = %failure, attempt, retry_in_ms = delay.as_millis() as u64,
                "event handling failed, retrying");
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    tracing::info!("shutdown while retrying; the event stays uncommitted");
                    return Outcome::Interrupted;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
    .instrument(consume_span(event))
    .await
}

/// The `kafka.consume` span of one record: a child of the record's `traceparent`, so whatever
/// handles it continues the producer's trace. Handlers that take a batch open one per record.
pub fn consume_span(event: &ConsumedEvent) -> tracing::Span {
    let span = tracing::info_span!(
        "kafka.consume",
        topic = %event.topic,
        partition = event.partition,
        offset = event.offset,
        ce_type = tracing::field::Empty,
        ce_id = tracing::field::Empty,
    );
    if let Ok(metadata) = &event.metadata {
        span.record("ce_type", metadata.event_type.as_str());
        span.record("ce_id", metadata.id.as_str());
    }
    set_remote_parent(&span, &event.trace_headers());
    span
}

fn reason_of(error: &HandlerError) -> String {
    match error {
        HandlerError::Permanent(reason) | HandlerError::Transient(reason) => reason.clone(),
    }
}

/// Writes `event` to the dead-letter topic with its original key, value and headers.
async fn send_dead_letter(
    event: &ConsumedEvent,
    reason: &str,
    dead_letters: &EventProducer,
    dead_letter_topic: &str,
) -> Result<Delivery> {
    dead_letters
        .send_raw(
            dead_letter_topic,
            event.key.as_deref().unwrap_or_default(),
            event.payload.as_deref().unwrap_or_default(),
            dead_letter_headers(event, reason),
        )
        .await
}

/// The original headers plus where the record came from and why it was dead-lettered.
fn dead_letter_headers(event: &ConsumedEvent, reason: &str) -> OwnedHeaders {
    let partition = event.partition.to_string();
    let offset = event.offset.to_string();
    event
        .headers
        .clone()
        .unwrap_or_default()
        .insert(Header {
            key: DEAD_LETTER_REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: DEAD_LETTER_TOPIC,
            value: Some(event.topic.as_str()),
        })
        .insert(Header {
            key: DEAD_LETTER_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: DEAD_LETTER_OFFSET,
            value: Some(offset.as_str()),
        })
}

/// Delay before retry number `attempt` (0-based): 100 ms doubling, capped at `max`.
fn backoff_delay(attempt: u32, max: Duration) -> Duration {
    INITIAL_BACKOFF.saturating_mul(2u32.saturating_pow(attempt)).min(max)
}

/// Stores `next_offset` (the offset after the finished record) for the next commit.
fn store<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> KafkaResult<()> {
    let mut offsets = TopicPartitionList::with_capacity(1);
    offsets.add_partition_offset(topic, partition, Offset::Offset(next_offset))?;
    consumer.store_offsets(&offsets)
}

/// Synchronously commits the finished offsets of the partitions still assigned (a revoked
/// partition's offsets are another member's business now).
fn commit_finished<C: ConsumerContext>(consumer: &StreamConsumer<C>, finished: &HashMap<(String, i32), i64>) {
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::warn!(%error, "cannot read the assignment; skipping the final commit");
            return;
        }
    };
    let mut offsets = TopicPartitionList::with_capacity(finished.len());
    for ((topic, partition), next_offset) in finished {
        if assignment.find_partition(topic, *partition).is_none() {
            continue;
        }
        if let Err(error) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next_offset)) {
            tracing::warn!(%error, %topic, partition, "cannot add an offset to the final commit");
        }
    }
    if offsets.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
        tracing::warn!(%error, "final offset commit failed; finished records may be delivered again");
    }
}

/// Logs rebalances and failed asynchronous commits, which librdkafka otherwise reports nowhere.
struct LoggingContext;

impl ClientContext for LoggingContext {}

impl ConsumerContext for LoggingContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = ?partition_names(partitions), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = ?partition_names(partitions), "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = ?partition_names(offsets), "offsets committed"),
            Err(error) => {
                tracing::warn!(%error, offsets = ?partition_names(offsets), "offset commit failed")
            }
        }
    }
}

fn partition_names(partitions: &TopicPartitionList) -> Vec<String> {
    partitions
        .elements()
        .iter()
        .map(|element| format!("{}[{}]@{:?}", element.topic(), element.partition(), element.offset()))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn metadata() -> EventMetadata {
        EventMetadata {
            id: "event-1".to_owned(),
            event_type: "fintech.test.v1.thing.happened".to_owned(),
            source: "/fintech/test".to_owned(),
            time: Utc::now(),
            subject: Some("thing-1".to_owned()),
            payload_type: "google.protobuf.Timestamp".to_owned(),
            trace: TraceHeaders {
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
                tracestate: None,
            },
        }
    }

    fn event(payload: Option<Vec<u8>>, headers: Option<OwnedHeaders>) -> ConsumedEvent {
        let message = OwnedMessage::new(
            payload,
            Some(b"thing-1".to_vec()),
            "things.happened".to_owned(),
            Timestamp::NotAvailable,
            2,
            41,
            headers,
        );
        ConsumedEvent::from_message(&message)
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_the_cap() {
        let max = Duration::from_secs(1);
        let delays: Vec<u128> = (0..6).map(|attempt| backoff_delay(attempt, max).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_delay(u32::MAX, max), max);
        assert_eq!(backoff_delay(0, Duration::from_millis(50)), Duration::from_millis(50));
    }

    #[test]
    fn a_record_with_cloudevents_headers_has_its_metadata_and_decodes() {
        let timestamp = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        let event = event(
            Some(prost::Message::encode_to_vec(&timestamp)),
            Some(metadata().to_headers()),
        );
        assert_eq!(event.metadata.as_ref().unwrap().id, "event-1");
        assert_eq!(event.valid_metadata().unwrap().subject.as_deref(), Some("thing-1"));
        assert_eq!(event.key_str(), Some("thing-1"));
        assert_eq!(event.decode::<prost_types::Timestamp>().unwrap(), timestamp);
        assert_eq!(event.trace_headers(), metadata().trace);
    }

    #[test]
    fn garbage_and_missing_values_are_permanent_errors() {
        let garbage = event(Some(vec![0xff, 0xff, 0xff]), Some(metadata().to_headers()));
        assert!(matches!(
            garbage.decode::<prost_types::Timestamp>(),
            Err(HandlerError::Permanent(_))
        ));
        let tombstone = event(None, Some(metadata().to_headers()));
        assert_eq!(
            tombstone.decode::<prost_types::Timestamp>(),
            Err(HandlerError::Permanent("record has no value".to_owned()))
        );
    }

    #[test]
    fn a_record_without_cloudevents_headers_is_permanently_invalid() {
        let event = event(Some(b"x".to_vec()), None);
        let error = event.valid_metadata().unwrap_err();
        assert!(
            matches!(&error, HandlerError::Permanent(reason) if reason.contains("ce_specversion")),
            "{error}"
        );
    }

    #[test]
    fn dead_letter_headers_keep_the_originals_and_say_where_and_why() {
        let consumed = event(Some(b"x".to_vec()), Some(metadata().to_headers()));
        let headers = dead_letter_headers(&consumed, "value is not a valid Order");
        assert_eq!(header_str(&headers, "ce_id").as_deref(), Some("event-1"));
        assert_eq!(
            header_str(&headers, DEAD_LETTER_REASON).as_deref(),
            Some("value is not a valid Order")
        );
        assert_eq!(
            header_str(&headers, DEAD_LETTER_TOPIC).as_deref(),
            Some("things.happened")
        );
        assert_eq!(header_str(&headers, DEAD_LETTER_PARTITION).as_deref(), Some("2"));
        assert_eq!(header_str(&headers, DEAD_LETTER_OFFSET).as_deref(), Some("41"));

        let bare = dead_letter_headers(&event(None, None), "no headers");
        assert_eq!(bare.count(), 4);
    }
}
