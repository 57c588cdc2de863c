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
//!   database round trips. A record whose handler fails with [`HandlerError::Transient`] or
//!   [`HandlerError::Unavailable`] is retried (backoff from 100 ms doubling up to
//!   [`ConsumerSettings::max_backoff`]); its partition waits for it, the other lanes go on: once a
//!   lane's queue is full, records for it are held back in order and, beyond [`HOLD_LIMIT`], their
//!   partitions paused, so the loop keeps fetching for the other lanes (ADR 0012).
//! - **Retry budget.** A transient failure is retried at most [`ConsumerSettings::max_attempts`]
//!   times and for at most [`ConsumerSettings::max_retry`]; then the record is dead-lettered as
//!   `exhausted`. An unavailable database does not use up the budget (every record would fail).
//! - **Poison records never block a partition.** A record without valid CloudEvents headers (a
//!   `ce_id` must be 1-128 bytes of visible ASCII), or whose handler says
//!   [`HandlerError::Permanent`], goes to [`ConsumerSettings::dead_letter_topic`]
//!   with its original key, value and headers plus `dlq_reason`, `dlq_class`, `dlq_attempts`,
//!   `dlq_consumer_group`, `dlq_original_topic`, `dlq_original_partition` and
//!   `dlq_original_offset`; then its offset is committed. If the
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
//! - While one record is retried, the loop keeps polling (paused partitions return nothing), so
//!   the member stays in its group. Records of a revoked partition still queued or held for a
//!   lane are handled anyway (idempotently) and their offsets are not stored.
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
    DEAD_LETTER_ATTEMPTS, DEAD_LETTER_CLASS, DEAD_LETTER_GROUP, DEAD_LETTER_HEADERS, DEAD_LETTER_OFFSET,
    DEAD_LETTER_PARTITION, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC, EventMetadata, header_str,
};
use super::producer::{Delivery, EventProducer};
use crate::db::DbFault;
use crate::error::Result;
use crate::grpc::Component;
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
/// Records queued per lane; beyond that records are held back for the lane (see [`run_consumer`]).
const LANE_QUEUE: usize = 64;
/// Records held back for a full lane before the partitions they come from are paused.
const HOLD_LIMIT: usize = 4 * LANE_QUEUE;
/// Handler attempts at a transiently failing record unless configured otherwise
/// (`KAFKA_MAX_ATTEMPTS`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Longest retrying of a transiently failing record unless configured otherwise
/// (`KAFKA_MAX_RETRY_SECS`).
pub const DEFAULT_MAX_RETRY: Duration = Duration::from_secs(120);
/// How often records held back for a full lane are offered to it again.
const OVERFLOW_RETRY: Duration = Duration::from_millis(20);
/// How often librdkafka reports its statistics (consumer lag).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Copies a record out of the consumer's buffer and reads its CloudEvents attributes. A
    /// header whose key is not UTF-8 is left out and makes the attributes invalid (the record is
    /// dead-lettered as `invalid`, without that header).
    pub fn from_message(message: &impl Message) -> Self {
        let (headers, unreadable) = message.headers().map(copy_headers).unzip();
        let unreadable = unreadable.unwrap_or_default();
        let metadata = if unreadable > 0 {
            Err(format!("{unreadable} header key(s) are not UTF-8"))
        } else {
            EventMetadata::from_headers(headers.as_ref())
        };
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

/// A copy of `headers` and how many were left out because their key is not UTF-8. rdkafka's
/// `Headers::try_get` panics on such a key (`CStr::to_str().unwrap()`), which any producer can
/// send: without this, one such record would end the consumer, and again after every restart (a
/// poison record). The panic is caught here, in safe code; its message still reaches the panic
/// hook (stderr).
fn copy_headers<H: Headers + ?Sized>(headers: &H) -> (OwnedHeaders, usize) {
    let mut owned = OwnedHeaders::new_with_capacity(headers.count());
    let mut unreadable = 0;
    for index in 0..headers.count() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| headers.try_get(index))) {
            Ok(Some(header)) => {
                owned = owned.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
            Ok(None) => {}
            Err(_) => unreadable += 1,
        }
    }
    (owned, unreadable)
}

/// Why a handler could not process an event; decides between dead-lettering and retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The event can never succeed (undecodable, invalid): it is dead-lettered.
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// The event may succeed later (a serialization failure, a deadlock, a timeout): it is
    /// retried with capped exponential backoff, and dead-lettered once
    /// [`ConsumerSettings::max_attempts`] or [`ConsumerSettings::max_retry`] is used up.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Something the handler needs is unreachable (the database is down or restarting): the
    /// record is not at fault, every record would fail the same way. It is retried with capped
    /// exponential backoff for as long as it takes, without using up its retry budget, so an
    /// outage never fills the dead-letter topic (ADR 0012).
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
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

    /// Classifies a database error through [`DbFault`]: the data at fault (SQLSTATE classes 22,
    /// 23 and 54) is permanent, an unreachable server is unavailable, anything else (conflicts,
    /// timeouts, 57014, unknown errors) is transient.
    pub fn of_database(error: &sqlx::Error) -> Self {
        Self::of_fault(&DbFault::of(error), error)
    }

    /// Classifies any error by the first database error in its chain of sources (see
    /// [`of_database`](Self::of_database)); an error without one is transient.
    pub fn of_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        match DbFault::in_chain(error) {
            Some(fault) => Self::of_fault(&fault, &message),
            None => Self::Transient(message),
        }
    }

    /// [`of_error`](Self::of_error) for anything that converts into an `anyhow::Error` (an
    /// `anyhow::Error` itself, a `sqlx::Error`, …): `.map_err(HandlerError::classified)`.
    pub fn classified(error: impl Into<anyhow::Error>) -> Self {
        let error: anyhow::Error = error.into();
        let error: &(dyn std::error::Error + 'static) = &*error;
        Self::of_error(error)
    }

    /// [`Unavailable`](Self::Unavailable) when `error`'s chain says the database is unreachable,
    /// [`Transient`](Self::Transient) otherwise: for a handler that has judged its permanent
    /// failures itself and wants no SQLSTATE to override that judgement.
    pub fn unavailable_or_transient(error: impl Into<anyhow::Error>) -> Self {
        match Self::classified(error) {
            Self::Permanent(reason) => Self::Transient(reason),
            other => other,
        }
    }

    fn of_fault(fault: &DbFault, error: &dyn fmt::Display) -> Self {
        if fault.is_permanent() {
            Self::Permanent(format!("database rejected the event's data: {error}"))
        } else if fault.is_unavailable() {
            Self::Unavailable(error.to_string())
        } else {
            Self::Transient(error.to_string())
        }
    }

    /// The message, whatever the class.
    pub fn reason(&self) -> &str {
        match self {
            Self::Permanent(reason) | Self::Transient(reason) | Self::Unavailable(reason) => reason,
        }
    }
}

/// Database errors are classified by [`HandlerError::of_database`].
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::of_database(&error)
    }
}

/// Database failures of the shared plumbing are classified like [`sqlx::Error`]; the others
/// (broker, …) are transient.
impl From<crate::Error> for HandlerError {
    fn from(error: crate::Error) -> Self {
        match &error {
            crate::Error::Database(database) => Self::of_database(database),
            _ => Self::Transient(error.to_string()),
        }
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
    /// Handler attempts at a record failing with [`HandlerError::Transient`] before it is
    /// dead-lettered (at least 1; `KAFKA_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Longest time a record failing with [`HandlerError::Transient`] is retried before it is
    /// dead-lettered, counted from its first failure (`KAFKA_MAX_RETRY_SECS`).
    pub max_retry: Duration,
    /// Where the consumer reports whether it is keeping up: `NOT_SERVING` while a record is being
    /// retried, `SERVING` again once it finished.
    pub health: Option<Component>,
}

impl ConsumerSettings {
    /// Settings with defaults: client id = group id, backoff capped at 30 s, session timeout
    /// 10 s, max poll interval 5 min, [`DEFAULT_LANES`] lanes, batches of up to
    /// [`DEFAULT_MAX_BATCH`], fetches held at most [`DEFAULT_FETCH_WAIT_MAX`], transient failures
    /// retried [`DEFAULT_MAX_ATTEMPTS`] times within [`DEFAULT_MAX_RETRY`].
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
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_retry: DEFAULT_MAX_RETRY,
            health: None,
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
        // Statistics carry each partition's consumer lag (see LoggingContext::stats).
        .set("statistics.interval.ms", STATISTICS_INTERVAL.as_millis().to_string())
        .create_with_context(LoggingContext {
            group: settings.group_id.clone(),
        })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let consumer = Arc::new(consumer);
    let settings = Arc::new(settings);
    tracing::info!(group = %settings.group_id, topics = ?settings.topics, lanes = settings.lanes.max(1),
        max_batch = settings.max_batch.max(1), "consumer started");

    // Stops the lanes: on shutdown, or when one of them ended early.
    let lanes_stop = shutdown.child_token();
    let retrying = Retrying {
        lanes: Arc::default(),
        health: settings.health.clone(),
    };
    retrying.publish();
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
            retrying.clone(),
        ));
    }

    // The lane of each partition seen so far: dealt in turn, then fixed for the life of the consumer.
    let mut lane_of: HashMap<(String, i32), usize> = HashMap::new();
    // Records received for a lane whose queue was full, in arrival order, and the partitions
    // paused meanwhile: a lane stuck on one record never stops the loop from fetching for the
    // others (and the loop keeps polling, so the group does not drop this member).
    let mut held: Vec<Held> = (0..queues.len()).map(|_| Held::default()).collect();
    let mut offer_again = tokio::time::interval(OVERFLOW_RETRY);
    offer_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A lane that ends while the loop runs has panicked: the loop stops at once (not only when
    // the next record for that lane arrives), and the panic is resumed below.
    let mut ended_early = None;
    'receive: loop {
        let holding = held.iter().any(|held| !held.records.is_empty());
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(ended) = lanes.join_next() => {
                ended_early = Some(ended);
                break;
            }
            _ = offer_again.tick(), if holding => {
                for (lane, held) in held.iter_mut().enumerate() {
                    if held.offer(&queues[lane], consumer.as_ref()).is_err() {
                        break 'receive;
                    }
                }
                continue;
            }
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
        if held[lane]
            .hold_or_send(event, &queues[lane], consumer.as_ref())
            .is_err()
        {
            // The lane ended (a handler panicked): stop; the panic is resumed below.
            break;
        }
    }
    // Lanes finish the record in hand and stop; queued records stay uncommitted.
    lanes_stop.cancel();
    drop(queues);

    let mut finished: HashMap<(String, i32), i64> = HashMap::new();
    let mut panic = None;
    let mut ended = ended_early.into_iter();
    loop {
        let lane = match ended.next() {
            Some(lane) => lane,
            None => match lanes.join_next().await {
                Some(lane) => lane,
                None => break,
            },
        };
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

/// Records held back for one lane while its queue is full, and the partitions paused meanwhile.
#[derive(Debug, Default)]
struct Held {
    records: std::collections::VecDeque<ConsumedEvent>,
    paused: std::collections::BTreeSet<(String, i32)>,
}

/// The lane's queue is closed: the lane ended.
#[derive(Debug)]
struct LaneClosed;

impl Held {
    /// Sends `event` to the lane, or holds it (behind what is already held, so each partition
    /// stays in order) and pauses its partition when the lane is full.
    fn hold_or_send<C: ConsumerContext>(
        &mut self,
        event: ConsumedEvent,
        queue: &tokio::sync::mpsc::Sender<ConsumedEvent>,
        consumer: &StreamConsumer<C>,
    ) -> std::result::Result<(), LaneClosed> {
        let event = if self.records.is_empty() {
            match queue.try_send(event) {
                Ok(()) => return Ok(()),
                Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => event,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(LaneClosed),
            }
        } else {
            event
        };
        let partition = (event.topic.clone(), event.partition);
        self.records.push_back(event);
        // Held records are cheap; a pause is not (librdkafka drops what it prefetched for the
        // partition and fetches it again on resume). Pause only once a lane is far behind.
        if self.records.len() >= HOLD_LIMIT && !self.paused.contains(&partition) {
            let mut list = TopicPartitionList::with_capacity(1);
            list.add_partition(&partition.0, partition.1);
            match consumer.pause(&list) {
                Ok(()) => tracing::debug!(topic = %partition.0, partition = partition.1, "lane full; partition paused"),
                Err(error) => {
                    tracing::warn!(%error, topic = %partition.0, partition = partition.1, "cannot pause a partition")
                }
            }
            self.paused.insert(partition);
        }
        Ok(())
    }

    /// Moves held records into the lane while it has room; resumes the paused partitions once
    /// fewer than [`LANE_QUEUE`] are held (what arrives for them meanwhile queues behind the held
    /// ones, so each partition stays in order).
    fn offer<C: ConsumerContext>(
        &mut self,
        queue: &tokio::sync::mpsc::Sender<ConsumedEvent>,
        consumer: &StreamConsumer<C>,
    ) -> std::result::Result<(), LaneClosed> {
        while let Some(event) = self.records.pop_front() {
            match queue.try_send(event) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => {
                    self.records.push_front(event);
                    break;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Err(LaneClosed),
            }
        }
        if self.records.len() < LANE_QUEUE && !self.paused.is_empty() {
            let mut list = TopicPartitionList::with_capacity(self.paused.len());
            for (topic, partition) in &self.paused {
                list.add_partition(topic, *partition);
            }
            // A partition revoked meanwhile cannot be resumed, and needs not be.
            if let Err(error) = consumer.resume(&list) {
                tracing::debug!(%error, "cannot resume every paused partition");
            }
            self.paused.clear();
        }
        Ok(())
    }
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
    retrying: Retrying,
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
            match process(
                &event,
                handler.as_ref(),
                &mut dead_letters,
                &settings,
                &shutdown,
                &retrying,
            )
            .await
            {
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

/// Why a record goes to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeadLetterClass {
    /// Its CloudEvents headers are missing or invalid (the handler never saw it).
    Invalid,
    /// The handler said it can never succeed.
    Permanent,
    /// Transient failures used up its retry budget.
    Exhausted,
}

impl DeadLetterClass {
    fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
        }
    }
}

/// Why and after how many handler attempts a record is dead-lettered.
#[derive(Debug, Clone)]
struct DeadLetter {
    class: DeadLetterClass,
    reason: String,
    attempts: u32,
}

/// The retry budget of one record: transient failures count, unavailable ones do not.
#[derive(Debug)]
struct Budget {
    attempts: u32,
    first_transient: Option<std::time::Instant>,
}

impl Budget {
    /// Counts one transient failure; `true` when the budget is used up.
    fn exhausted_after_failure(&mut self, settings: &ConsumerSettings) -> bool {
        let first = *self.first_transient.get_or_insert_with(std::time::Instant::now);
        self.attempts >= settings.max_attempts.max(1) || first.elapsed() >= settings.max_retry
    }
}

/// Handles one record inside its `kafka.consume` span: retries transient and unavailable
/// failures with backoff, dead-letters permanent ones at once and transient ones once their
/// budget is used up.
async fn process(
    event: &ConsumedEvent,
    handler: &dyn EventHandler,
    dead_letters: &mut EventProducer,
    settings: &ConsumerSettings,
    shutdown: &CancellationToken,
    retrying: &Retrying,
) -> Outcome {
    async {
        let group = settings.group_id.as_str();
        // Once a record is judged, only the dead-lettering is retried, not the handler.
        let mut dead_letter = event.valid_metadata().err().map(|error| DeadLetter {
            class: DeadLetterClass::Invalid,
            reason: error.reason().to_owned(),
            attempts: 0,
        });
        let mut budget = Budget {
            attempts: 0,
            first_transient: None,
        };
        let mut failures: u32 = 0;
        let mut retrying = RetryingGuard::new(retrying);
        loop {
            let failure = match &dead_letter {
                Some(letter) => {
                    match send_dead_letter(event, letter, group, dead_letters, &settings.dead_letter_topic).await {
                        Ok(delivery) => {
                            crate::metrics::add(
                                crate::metrics::CONSUMER_DEAD_LETTERS,
                                &[("group", group), ("class", letter.class.as_str())],
                                1,
                            );
                            tracing::warn!(reason = %letter.reason, class = letter.class.as_str(),
                                attempts = letter.attempts, dead_letter_topic = %settings.dead_letter_topic,
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
                None => {
                    let result = handler.handle(event).await;
                    if !matches!(result, Err(HandlerError::Unavailable(_))) {
                        budget.attempts = budget.attempts.saturating_add(1);
                    }
                    match result {
                        Ok(()) => return Outcome::Finished,
                        Err(HandlerError::Permanent(reason)) => {
                            dead_letter = Some(DeadLetter {
                                class: DeadLetterClass::Permanent,
                                reason,
                                attempts: budget.attempts,
                            });
                            continue;
                        }
                        Err(HandlerError::Transient(reason)) => {
                            if budget.exhausted_after_failure(settings) {
                                dead_letter = Some(DeadLetter {
                                    class: DeadLetterClass::Exhausted,
                                    reason: format!("gave up after {} attempts: {reason}", budget.attempts),
                                    attempts: budget.attempts,
                                });
                                continue;
                            }
                            reason
                        }
                        Err(HandlerError::Unavailable(reason)) => reason,
                    }
                }
            };
            retrying.mark();
            crate::metrics::add(crate::metrics::CONSUMER_RETRIES, &[("group", group)], 1);
            let delay = backoff_delay(failures, settings.max_backoff);
            failures = failures.saturating_add(1);
            tracing::warn!(error = %failure, attempt = budget.attempts, retry_in_ms = delay.as_millis() as u64,
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

/// How many lanes are retrying a record right now; the consumer's health component is
/// `NOT_SERVING` while any is.
#[derive(Debug, Clone, Default)]
struct Retrying {
    lanes: Arc<std::sync::atomic::AtomicUsize>,
    health: Option<Component>,
}

impl Retrying {
    fn publish(&self) {
        if let Some(health) = &self.health {
            health.report(self.lanes.load(std::sync::atomic::Ordering::SeqCst) == 0);
        }
    }
}

/// Counts one record as retrying from its first failure until it finished (or the lane stopped).
#[derive(Debug)]
struct RetryingGuard {
    retrying: Retrying,
    counted: bool,
}

impl RetryingGuard {
    fn new(retrying: &Retrying) -> Self {
        Self {
            retrying: retrying.clone(),
            counted: false,
        }
    }

    fn mark(&mut self) {
        if !self.counted {
            self.counted = true;
            self.retrying.lanes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.retrying.publish();
        }
    }
}

impl Drop for RetryingGuard {
    fn drop(&mut self) {
        if self.counted {
            self.retrying.lanes.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.retrying.publish();
        }
    }
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

/// Writes `event` to the dead-letter topic with its original key, value and headers.
async fn send_dead_letter(
    event: &ConsumedEvent,
    letter: &DeadLetter,
    group: &str,
    dead_letters: &EventProducer,
    dead_letter_topic: &str,
) -> Result<Delivery> {
    dead_letters
        .send_raw(
            dead_letter_topic,
            event.key.as_deref().unwrap_or_default(),
            event.payload.as_deref().unwrap_or_default(),
            dead_letter_headers(event, letter, group),
        )
        .await
}

/// The original headers (minus the dead-letter headers of an earlier round, when a replayed
/// record fails again) plus where the record came from, why it was dead-lettered and after how
/// many attempts.
fn dead_letter_headers(event: &ConsumedEvent, letter: &DeadLetter, group: &str) -> OwnedHeaders {
    let partition = event.partition.to_string();
    let offset = event.offset.to_string();
    let attempts = letter.attempts.to_string();
    // Header values are bytes; a reason is cut at a character boundary to stay a small header.
    let reason = truncate(&letter.reason, 1024);
    without_dead_letter_headers(event.headers.as_ref())
        .insert(Header {
            key: DEAD_LETTER_REASON,
            value: Some(reason),
        })
        .insert(Header {
            key: DEAD_LETTER_CLASS,
            value: Some(letter.class.as_str()),
        })
        .insert(Header {
            key: DEAD_LETTER_ATTEMPTS,
            value: Some(attempts.as_str()),
        })
        .insert(Header {
            key: DEAD_LETTER_GROUP,
            value: Some(group),
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

/// `headers` without the ones dead-lettering adds.
pub fn without_dead_letter_headers(headers: Option<&OwnedHeaders>) -> OwnedHeaders {
    let Some(headers) = headers else {
        return OwnedHeaders::new();
    };
    headers
        .iter()
        .filter(|header| !DEAD_LETTER_HEADERS.contains(&header.key))
        .fold(OwnedHeaders::new_with_capacity(headers.count()), |owned, header| {
            owned.insert(Header {
                key: header.key,
                value: header.value,
            })
        })
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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

/// Logs rebalances and failed asynchronous commits, which librdkafka otherwise reports nowhere,
/// and turns librdkafka's statistics into the consumer-lag gauge.
struct LoggingContext {
    group: String,
}

impl ClientContext for LoggingContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        // `consumer_lag` is -1 for partitions this member does not consume (or not yet).
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag >= 0)
            .map(|partition| partition.consumer_lag)
            .sum();
        crate::metrics::set_gauge(crate::metrics::CONSUMER_LAG, &[("group", &self.group)], lag as f64);
    }
}

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

    /// Headers as rdkafka reads a record whose second header key is not UTF-8: its `try_get`
    /// panics there (`CStr::to_str().unwrap()`), as `BorrowedHeaders` does.
    struct NonUtf8Key;

    impl Headers for NonUtf8Key {
        fn count(&self) -> usize {
            3
        }

        fn try_get(&self, index: usize) -> Option<Header<'_, &[u8]>> {
            let key = match index {
                0 => "ce_id",
                // rdkafka's unwrap of an invalid key, at run time (black_box: not a lint on a literal)
                1 => std::str::from_utf8(std::hint::black_box(b"\xff".as_slice())).unwrap(),
                _ => "ce_type",
            };
            Some(Header {
                key,
                value: Some(b"value".as_slice()),
            })
        }
    }

    /// Found while writing the `cloudevents_headers` fuzz target (the fuzzer cannot make such a
    /// key through rdkafka's safe API): one header key that is not UTF-8 panicked the consumer.
    #[test]
    fn a_header_key_that_is_not_utf8_is_left_out_not_a_panic() {
        let (copied, unreadable) = copy_headers(&NonUtf8Key);
        assert_eq!(unreadable, 1);
        let keys: Vec<&str> = copied.iter().map(|header| header.key).collect();
        assert_eq!(keys, ["ce_id", "ce_type"]);
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
        let letter = DeadLetter {
            class: DeadLetterClass::Permanent,
            reason: "value is not a valid Order".to_owned(),
            attempts: 1,
        };
        let headers = dead_letter_headers(&consumed, &letter, "group-1");
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

        assert_eq!(header_str(&headers, DEAD_LETTER_CLASS).as_deref(), Some("permanent"));
        assert_eq!(header_str(&headers, DEAD_LETTER_ATTEMPTS).as_deref(), Some("1"));
        assert_eq!(header_str(&headers, DEAD_LETTER_GROUP).as_deref(), Some("group-1"));

        let bare = dead_letter_headers(&event(None, None), &letter, "group-1");
        assert_eq!(bare.count(), DEAD_LETTER_HEADERS.len());

        // A replayed record that fails again carries one set of dead-letter headers, not two.
        let again = event(Some(b"x".to_vec()), Some(headers));
        let twice = dead_letter_headers(&again, &letter, "group-1");
        assert_eq!(
            twice.iter().filter(|header| header.key == DEAD_LETTER_REASON).count(),
            1
        );
        assert_eq!(header_str(&twice, "ce_id").as_deref(), Some("event-1"));
    }

    #[test]
    fn database_errors_are_classified_by_their_sqlstate_class() {
        assert!(matches!(
            HandlerError::from(sqlx::Error::PoolTimedOut),
            HandlerError::Unavailable(_)
        ));
        assert!(matches!(
            HandlerError::from(crate::Error::Database(sqlx::Error::PoolClosed)),
            HandlerError::Unavailable(_)
        ));
        assert!(matches!(
            HandlerError::from(sqlx::Error::RowNotFound),
            HandlerError::Transient(_)
        ));
        let wrapped = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("apply");
        assert!(matches!(
            HandlerError::of_error(wrapped.as_ref()),
            HandlerError::Unavailable(reason) if reason.contains("apply")
        ));
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate(&"x".repeat(2000), 1024).len(), 1024);
    }
}
