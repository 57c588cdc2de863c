//! Transactional outbox: an event is written to the `outbox` table in the same PostgreSQL
//! transaction as the business change it describes, and a relay publishes it to Kafka afterwards.
//!
//! # Guarantees
//! - **Nothing lost**: the event commits if and only if the change commits; a row stays until the
//!   broker acknowledged it (`acks=all`, idempotent producer). A relay killed between the publish
//!   and the `published_at` update publishes the row again on restart: delivery is at-least-once
//!   and consumers deduplicate on `ce_id` (the row's `event_id`).
//! - **Several relays at once**: a relay claims rows in a short transaction of its own
//!   (`FOR UPDATE SKIP LOCKED`, then a lease: `not_before` = now + [`RelaySettings::lease`] and a
//!   `claim_token`), commits, and only then publishes; no transaction stays open across broker
//!   round trips. Two relays never publish the same row in the same round: a leased row is not
//!   claimable until it is marked or its lease runs out, or at once when the relay that holds it
//!   died (its liveness lock, a session-level advisory lock, is gone); the row is then published
//!   again, at least once.
//! - **Order per key**: a relay only claims the *oldest* unpublished row of each record key, so the
//!   events of one aggregate reach the broker in commit order even with several relays (the next
//!   row of a key becomes eligible once the previous one is marked published). A parked row keeps
//!   its key's later rows back until an operator re-queues it (ADR 0013).
//! - **Broker down**: sends fail after the producer's delivery timeout; the rows stay unpublished
//!   (`last_error` records the failure, the attempt does not count against the row) and the relay
//!   backs off exponentially up to `max_backoff`, reports itself `NOT_SERVING`, then resumes by
//!   itself.
//! - **Poison rows are parked**: a row the broker rejects for what it is (too large, invalid
//!   topic, not authorized, …) counts an attempt, waits before its next one (exponential per row)
//!   and after [`RelaySettings::max_attempts`] is parked (`parked_at`): never claimed again until
//!   [`requeue_parked`]. Other keys keep flowing meanwhile, and the relay does not back off for it.
//! - **Wakes on commit**: the outbox's insert trigger notifies `fintech_outbox` (delivered when
//!   the writing transaction commits, migrations/platform/0006); an idle relay waits for that
//!   notification or [`RelaySettings::poll_interval`], whichever comes first, so a lone command's
//!   event leaves at once instead of after half a poll on average. The poll stays as the fallback:
//!   rows whose lease or backoff ran out, a listener connection lost (reconnected later), or
//!   [`RelaySettings::wake_on_commit`] off (ADR 0029).
//! - **Trace context**: the `traceparent` of the request that wrote the row is stored with it; the
//!   relay publishes inside a span that is a child of it, so consumers continue the same trace.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::Result;
use crate::grpc::Component;
use crate::kafka::{EventMetadata, EventProducer};
use crate::telemetry::{self, TraceHeaders};

/// An event to publish, as the business code describes it.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Kafka topic, e.g. `orders.created`.
    pub topic: String,
    /// Record key: the aggregate id.
    pub key: String,
    /// CloudEvents type, e.g. `fintech.payments.v1.order.created`.
    pub event_type: String,
    /// Protobuf full name of the payload, e.g. `fintech.payments.v1.Order`.
    pub payload_type: String,
    /// The encoded protobuf payload (the whole entity).
    pub payload: Vec<u8>,
    /// When the change happened.
    pub occurred_at: DateTime<Utc>,
}

impl OutboxEvent {
    /// An event carrying `message` encoded as protobuf.
    pub fn protobuf(
        topic: impl Into<String>,
        key: impl Into<String>,
        event_type: impl Into<String>,
        payload_type: impl Into<String>,
        message: &impl prost::Message,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            event_type: event_type.into(),
            payload_type: payload_type.into(),
            payload: message.encode_to_vec(),
            occurred_at,
        }
    }
}

impl OutboxEvent {
    /// An event of `topic` (from the platform's topic list) carrying `message`, on the topic named
    /// `<prefix><topic>`: the CloudEvents type and the payload's protobuf full name come from the
    /// list and the contract, never from a literal.
    pub fn of<M: prost::Name>(
        prefix: &str,
        topic: &fintech_proto::topics::Topic,
        key: impl Into<String>,
        message: &M,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        let payload_type = M::full_name();
        debug_assert_eq!(
            topic.payload,
            Some(payload_type.as_str()),
            "topic {} does not carry {payload_type}",
            topic.name
        );
        Self {
            topic: format!("{prefix}{}", topic.name),
            key: key.into(),
            event_type: topic.ce_type().to_owned(),
            payload_type,
            payload: message.encode_to_vec(),
            occurred_at,
        }
    }
}

/// The outbox columns an event fills, in the order [`OutboxRow::bind`] binds them.
pub const COLUMNS: &str = "event_id, topic, record_key, event_type, event_source, payload_type, payload, traceparent, tracestate, occurred_at";

/// The insert of one outbox row, `$1..$10` in [`COLUMNS`] order: a part of a larger
/// [`Statement`](crate::sql::Statement), or the whole of [`enqueue`].
pub fn insert_statement() -> String {
    format!(
        "INSERT INTO outbox ({COLUMNS}) VALUES ({})",
        crate::sql::placeholders(COLUMNS.split(',').count())
    )
}

/// The insert of many outbox rows in one statement, `$1..$10` arrays in [`COLUMNS`] order
/// ([`bind_many`]): a part of a larger [`Statement`](crate::sql::Statement). The rows get their
/// `id`s (the relay's order per key) in the order of the arrays.
pub fn insert_many_statement() -> String {
    format!(
        "INSERT INTO outbox ({COLUMNS}) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::bytea[], $8::text[], $9::text[], $10::timestamptz[])"
    )
}

/// Binds `rows` to `query` as the ten arrays of [`insert_many_statement`].
pub fn bind_many<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    rows: &[OutboxRow<'_>],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn column<T>(rows: &[OutboxRow<'_>], value: impl Fn(&OutboxRow<'_>) -> T) -> Vec<T> {
        rows.iter().map(value).collect()
    }
    query
        .bind(column(rows, |row| row.event_id))
        .bind(column(rows, |row| row.event.topic.clone()))
        .bind(column(rows, |row| row.event.key.clone()))
        .bind(column(rows, |row| row.event.event_type.clone()))
        .bind(column(rows, |row| row.source.to_owned()))
        .bind(column(rows, |row| row.event.payload_type.clone()))
        .bind(column(rows, |row| row.event.payload.clone()))
        .bind(column(rows, |row| row.trace.traceparent.clone()))
        .bind(column(rows, |row| row.trace.tracestate.clone()))
        .bind(column(rows, |row| row.event.occurred_at))
}

/// An outbox row about to be written: the event with its id and the trace context of the current
/// span. [`enqueue`] writes one on its own; a service that folds the insert into a larger statement
/// (to save round trips while it holds locks) uses [`insert_statement`] (or [`COLUMNS`]) as a part of a
/// [`Statement`](crate::sql::Statement) and [`OutboxRow::bind`], so the row is the same either way.
#[derive(Debug, Clone)]
pub struct OutboxRow<'a> {
    /// The event id (`ce_id`).
    pub event_id: Uuid,
    source: &'a str,
    event: &'a OutboxEvent,
    trace: TraceHeaders,
}

impl<'a> OutboxRow<'a> {
    /// The row of `event` from `source`, with a new id and the current span's trace context.
    pub fn new(source: &'a str, event: &'a OutboxEvent) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            source,
            event,
            trace: TraceHeaders::current(),
        }
    }

    /// The row of `event` from `source`, with a new id and the trace context `trace` (captured
    /// where the request's span was current: a command applied by a group commit is written by
    /// another task, [`crate::batch`]).
    pub fn traced(source: &'a str, event: &'a OutboxEvent, trace: TraceHeaders) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            source,
            event,
            trace,
        }
    }

    /// Binds the row's values to `query`, in [`COLUMNS`] order.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.event_id)
            .bind(&self.event.topic)
            .bind(&self.event.key)
            .bind(&self.event.event_type)
            .bind(self.source)
            .bind(&self.event.payload_type)
            .bind(&self.event.payload)
            .bind(&self.trace.traceparent)
            .bind(&self.trace.tracestate)
            .bind(self.event.occurred_at)
    }
}

/// Writes `event` into the outbox inside the caller's open transaction, with the trace context of
/// the current span. Returns the event id (`ce_id`).
#[tracing::instrument(skip(conn, event), fields(topic = %event.topic, key = %event.key))]
pub async fn enqueue(conn: &mut PgConnection, source: &str, event: &OutboxEvent) -> Result<Uuid> {
    let row = OutboxRow::new(source, event);
    let sql = insert_statement();
    row.bind(sqlx::query(&sql)).execute(conn).await?;
    Ok(row.event_id)
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Rows not yet published.
    pub unpublished: i64,
    /// Age of the oldest unpublished row (`None` when there is none).
    pub oldest_age: Option<Duration>,
}

/// The outbox backlog: count and age of the oldest unpublished row (parked rows included).
pub async fn backlog(pool: &PgPool) -> Result<Backlog> {
    let row = sqlx::query(
        "SELECT count(*) AS unpublished, \
         EXTRACT(EPOCH FROM (now() - min(occurred_at)))::float8 AS oldest_seconds \
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let oldest_seconds: Option<f64> = row.try_get("oldest_seconds")?;
    Ok(Backlog {
        unpublished: row.try_get("unpublished")?,
        oldest_age: oldest_seconds.map(|seconds| Duration::from_secs_f64(seconds.max(0.0))),
    })
}

/// A parked row, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedRow {
    /// The row's id (what [`requeue_parked`] takes).
    pub id: i64,
    /// Its event id (`ce_id`).
    pub event_id: Uuid,
    /// Its topic.
    pub topic: String,
    /// Its record key.
    pub record_key: String,
    /// Failed publishes.
    pub attempts: i32,
    /// The broker's last answer.
    pub last_error: Option<String>,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// Rows parked after too many failed publishes, oldest first.
pub async fn parked(pool: &PgPool) -> Result<Vec<ParkedRow>> {
    let rows = sqlx::query(
        "SELECT id, event_id, topic, record_key, attempts, last_error, parked_at FROM outbox \
         WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(ParkedRow {
                id: row.try_get("id")?,
                event_id: row.try_get("event_id")?,
                topic: row.try_get("topic")?,
                record_key: row.try_get("record_key")?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                parked_at: row.try_get("parked_at")?,
            })
        })
        .collect()
}

/// How many rows are parked.
pub async fn parked_count(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Puts parked rows back in line (all of them, or only `ids`) with a fresh attempt budget;
/// returns how many. The operator's command after fixing the cause (`fintech-ops outbox requeue`).
pub async fn requeue_parked(pool: &PgPool, ids: Option<&[i64]>) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE outbox SET parked_at = NULL, attempts = 0, not_before = NULL, claim_token = NULL \
         WHERE parked_at IS NOT NULL AND published_at IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1))",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes published rows older than `age` (retention); returns how many.
pub async fn purge_published(pool: &PgPool, age: Duration) -> Result<u64> {
    let seconds = age.as_secs_f64();
    let done = sqlx::query(
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)",
    )
    .bind(seconds)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Settings of a relay.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Rows claimed per round.
    pub batch_size: i64,
    /// Wait after a claim that found nothing.
    pub poll_interval: Duration,
    /// Wait after a round that was not full before the next claim (zero: claim again at once):
    /// the window in which new rows gather into one round, i.e. one produce request per
    /// partition and one commit for all of them.
    pub gather: Duration,
    /// Rounds whose sends may be awaiting the broker's acknowledgement at once (at least 1); each
    /// holds a pooled connection while it waits.
    pub rounds_in_flight: usize,
    /// Longest wait between rounds while the broker fails.
    pub max_backoff: Duration,
    /// Failed publishes the broker rejected a row for before it is parked (at least 1).
    pub max_attempts: i32,
    /// How long a claim keeps a row from other relays: longer than the producer's delivery
    /// timeout, so only a relay that died mid-round loses its claim.
    pub lease: Duration,
    /// Wait before a rejected row's next attempt: doubles per attempt up to `max_backoff * 6`.
    pub row_backoff: Duration,
    /// Listen for the commit of new rows (`LISTEN fintech_outbox`) instead of only polling.
    pub wake_on_commit: bool,
    /// Where the relay reports whether it can publish (`NOT_SERVING` while the broker fails).
    pub health: Option<Component>,
    /// Label of the relay's metrics (the service name).
    pub service: String,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll_interval: Duration::from_millis(100),
            gather: Duration::ZERO,
            rounds_in_flight: 1,
            max_backoff: Duration::from_secs(10),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            lease: RELAY_DELIVERY_TIMEOUT * 2,
            row_backoff: Duration::from_millis(500),
            wake_on_commit: true,
            health: None,
            service: String::new(),
        }
    }
}

/// Rejected publishes before a row is parked unless configured otherwise (`OUTBOX_MAX_ATTEMPTS`).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;

/// Publishes outbox rows to Kafka. Run one or more per database.
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    producer: EventProducer,
    settings: RelaySettings,
    owner: Owner,
}

/// Advisory-lock class of the relays' liveness locks (`pg_advisory_lock(RELAY_LOCK_CLASS, key)`).
const RELAY_LOCK_CLASS: i32 = 0x0B0C_0001;

/// This relay's liveness: a session-level advisory lock on `(RELAY_LOCK_CLASS, key)`, held on a
/// connection of its own (never inside a transaction). The rows a round claims record `key`; while
/// the lock is held nobody takes them before their lease ends, and when the relay's process dies
/// its connection closes, the lock disappears and any relay may take the rows at once instead of
/// waiting for the lease (ADR 0013).
#[derive(Debug, Clone, Default)]
struct Owner(std::sync::Arc<tokio::sync::Mutex<Option<(i32, PgConnection)>>>);

impl Owner {
    /// The key of the lock this relay holds, taking one first if it holds none.
    async fn key(&self, pool: &PgPool) -> Result<i32> {
        let mut owner = self.0.lock().await;
        if let Some((key, _)) = owner.as_ref() {
            return Ok(*key);
        }
        let mut conn = pool.acquire().await?.detach();
        loop {
            let key = rand::random_range(1..i32::MAX);
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(RELAY_LOCK_CLASS)
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if taken {
                *owner = Some((key, conn));
                return Ok(key);
            }
        }
    }

    /// Forgets the lock after a database error: its connection may be gone with the lock, so the
    /// next round takes a new one (rows claimed under the old key may be published again by
    /// another relay meanwhile: at least once).
    async fn forget(&self) {
        self.0.lock().await.take();
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Rows published and marked.
    pub published: usize,
    /// Rows whose send failed for a reason that is not theirs (broker down or slow); left
    /// unpublished, retried at once, their attempts not counted.
    pub failed: usize,
    /// Rows the broker rejected for what they are; each counted an attempt.
    pub rejected: usize,
    /// Rejected rows that used up their attempts and were parked.
    pub parked: usize,
}

struct ClaimedRow {
    id: i64,
    event_id: Uuid,
    topic: String,
    record_key: String,
    event_type: String,
    event_source: String,
    payload_type: String,
    payload: Vec<u8>,
    trace: TraceHeaders,
    occurred_at: DateTime<Utc>,
}

impl OutboxRelay {
    /// A relay over `pool` publishing through `producer`.
    pub fn new(pool: PgPool, producer: EventProducer, settings: RelaySettings) -> Self {
        Self {
            pool,
            producer,
            settings,
            owner: Owner::default(),
        }
    }

    /// Runs rounds until `shutdown` fires; backs off while the broker or the database fails, and
    /// replaces its producer after a failed send (see [`EventProducer::renewed`]).
    ///
    /// With [`RelaySettings::rounds_in_flight`] above 1, rounds overlap: once a round's rows are
    /// claimed and handed to the producer, the next claim does not wait for their
    /// acknowledgements. Per-key order still holds, because a round only claims the oldest
    /// *unpublished* row of a key, and a row in flight stays unpublished until its round commits
    /// after the broker acknowledged it. ADR 0010 has the measurements behind the defaults (one
    /// round at a time, the next claim at once).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut in_flight: JoinSet<Result<RoundOutcome>> = JoinSet::new();
        let poll_interval = self.settings.poll_interval;
        let max_in_flight = self.settings.rounds_in_flight.max(1);
        let mut backoff = poll_interval;
        let mut failing = false;
        let mut wake = Wake::new(&self.pool, self.settings.wake_on_commit);
        let health = self.settings.health.clone();
        let report = move |working: bool| {
            if let Some(health) = &health {
                health.report(working);
            }
        };
        // A settled round resets the backoff, or marks the relay failing.
        let note = |ok: bool, failing: &mut bool, backoff: &mut Duration| {
            report(ok);
            if ok {
                *backoff = poll_interval;
            } else {
                *failing = true;
            }
        };
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            while let Some(joined) = in_flight.try_join_next() {
                note(settle(joined, backoff), &mut failing, &mut backoff);
            }
            if !failing && in_flight.len() >= max_in_flight {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(joined) = in_flight.join_next() => note(settle(joined, backoff), &mut failing, &mut backoff),
                }
            }
            if failing {
                // No claims until every round has settled; then a fresh producer, after a backoff.
                while let Some(joined) = in_flight.join_next().await {
                    settle(joined, backoff);
                }
                failing = false;
                self.renew_producer();
                let wait = next_backoff(&mut backoff, self.settings.max_backoff);
                if sleep_or_shutdown(wait, &shutdown).await {
                    break;
                }
                continue;
            }
            // Notifications of commits before this claim are answered by it.
            wake.forget_pending();
            let mut idle = false;
            let wait = match self.claim().await {
                Ok(Some(round)) => {
                    let full = round.rows.len() as i64 >= self.settings.batch_size;
                    in_flight.spawn(round.publish(self.producer.clone(), self.settings.clone()));
                    if max_in_flight == 1
                        && let Some(joined) = in_flight.join_next().await
                    {
                        // One round at a time: the next claim follows its acknowledgements.
                        note(settle(joined, backoff), &mut failing, &mut backoff);
                    }
                    if failing || full {
                        Duration::ZERO
                    } else {
                        self.settings.gather
                    }
                }
                Ok(None) => {
                    idle = true;
                    poll_interval
                }
                Err(error) => {
                    if let Some(health) = &self.settings.health {
                        health.report(false);
                    }
                    tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "outbox claim failed, backing off");
                    next_backoff(&mut backoff, self.settings.max_backoff)
                }
            };
            let stop = if idle {
                wake.wait(wait, &shutdown).await
            } else {
                !wait.is_zero() && sleep_or_shutdown(wait, &shutdown).await
            };
            if stop {
                break;
            }
        }
        // Rounds already handed to the producer finish (bounded by its delivery timeout), so
        // what the broker acknowledged is marked and not published again after a restart.
        while let Some(joined) = in_flight.join_next().await {
            settle(joined, backoff);
        }
        tracing::info!("outbox relay stopped");
    }

    fn renew_producer(&mut self) {
        match self.producer.renewed() {
            Ok(producer) => self.producer = producer,
            Err(error) => tracing::warn!(%error, "cannot create a new producer, keeping the old one"),
        }
    }

    /// One round: claim up to `batch_size` rows (the oldest unpublished row of each key), publish
    /// them, mark the acknowledged ones, record the failures on the others.
    pub async fn publish_round(&self) -> Result<RoundOutcome> {
        match self.claim().await? {
            Some(round) => round.publish(self.producer.clone(), self.settings.clone()).await,
            None => Ok(RoundOutcome::default()),
        }
    }

    /// Claims up to `batch_size` rows, each the oldest unpublished row of its key and neither
    /// parked, leased (to a relay that is alive) nor waiting for its next attempt, and leases them
    /// to this round in one statement (its own short transaction); `None` if there is none.
    async fn claim(&self) -> Result<Option<ClaimedRound>> {
        let claimed = self.claim_as_owner().await;
        if claimed.is_err() {
            self.owner.forget().await;
        }
        claimed
    }

    async fn claim_as_owner(&self) -> Result<Option<ClaimedRound>> {
        let started = std::time::Instant::now();
        let owner = self.owner.key(&self.pool).await?;
        let token = Uuid::new_v4();
        let rows = sqlx::query(
            "WITH claimable AS ( \
                 SELECT o.id FROM outbox o \
                 WHERE o.published_at IS NULL AND o.parked_at IS NULL \
                   AND (o.not_before IS NULL OR o.not_before <= now() \
                        OR (o.claim_token IS NOT NULL AND NOT EXISTS ( \
                            SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                              AND l.classid = $5::oid AND l.objid = o.claimed_by::oid AND l.objsubid = 2))) \
                   AND NOT EXISTS (SELECT 1 FROM outbox older \
                                   WHERE older.record_key = o.record_key \
                                     AND older.published_at IS NULL AND older.id < o.id) \
                 ORDER BY o.id \
                 LIMIT $1 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE outbox o SET not_before = now() + make_interval(secs => $2), claim_token = $3, claimed_by = $4 \
             FROM claimable WHERE o.id = claimable.id \
             RETURNING o.id, o.event_id, o.topic, o.record_key, o.event_type, o.event_source, o.payload_type, \
                       o.payload, o.traceparent, o.tracestate, o.occurred_at",
        )
        // Not a cached prepared statement: after a few rounds on a nearly empty outbox PostgreSQL
        // would keep a generic plan whose anti-join scans the whole key index per row, 1000x
        // slower exactly when a backlog has to drain (measured by bench/). Planned per round, it
        // uses the partial indexes.
        .persistent(false)
        .bind(self.settings.batch_size)
        .bind(self.settings.lease.as_secs_f64())
        .bind(token)
        .bind(owner)
        .bind(RELAY_LOCK_CLASS)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut rows = rows
            .into_iter()
            .map(|row| -> Result<ClaimedRow> {
                Ok(ClaimedRow {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    topic: row.try_get("topic")?,
                    record_key: row.try_get("record_key")?,
                    event_type: row.try_get("event_type")?,
                    event_source: row.try_get("event_source")?,
                    payload_type: row.try_get("payload_type")?,
                    payload: row.try_get("payload")?,
                    trace: TraceHeaders {
                        traceparent: row.try_get("traceparent")?,
                        tracestate: row.try_get("tracestate")?,
                    },
                    occurred_at: row.try_get("occurred_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // RETURNING has no order; rows go to the producer in commit order.
        rows.sort_by_key(|row| row.id);
        Ok(Some(ClaimedRound {
            pool: self.pool.clone(),
            token,
            rows,
            started,
            claimed: started.elapsed(),
        }))
    }
}

/// Rows leased to one round (by `claim_token`), no transaction open.
struct ClaimedRound {
    pool: PgPool,
    token: Uuid,
    rows: Vec<ClaimedRow>,
    /// When the claim began, and how long it took (for the round's debug log).
    started: std::time::Instant,
    claimed: Duration,
}

impl ClaimedRound {
    /// Publishes the rows concurrently, then marks the acknowledged ones published and records
    /// the failures on the others (releasing their lease; a rejected row waits before its next
    /// attempt and is parked after `max_attempts`). Rows another relay took over after this
    /// round's lease ran out are left to it.
    async fn publish(self, producer: EventProducer, settings: RelaySettings) -> Result<RoundOutcome> {
        let sends = self.rows.iter().map(|row| publish_row(&producer, row));
        let results = futures::future::join_all(sends).await;
        let acknowledged = self.started.elapsed();

        let mut published = Vec::new();
        let mut failed = Vec::new();
        let mut rejected = Vec::new();
        for (row, result) in self.rows.iter().zip(results) {
            match result {
                Ok(()) => published.push(row.id),
                Err(error) if rejects_the_record(&error) => rejected.push((row.id, error.to_string())),
                Err(error) => failed.push((row.id, error.to_string())),
            }
        }
        if !published.is_empty() {
            // `clock_timestamp()`, not `now()`: `published_at` says when the broker had
            // acknowledged the rows.
            sqlx::query(
                "UPDATE outbox SET published_at = clock_timestamp(), attempts = attempts + 1, last_error = NULL, \
                 not_before = NULL, claim_token = NULL \
                 WHERE id = ANY($1) AND claim_token = $2 AND published_at IS NULL",
            )
            .bind(&published)
            .bind(self.token)
            .execute(&self.pool)
            .await?;
        }
        if !failed.is_empty() {
            let (ids, errors): (Vec<i64>, Vec<String>) = failed.iter().cloned().unzip();
            // Not the rows' fault: no attempt counted, claimable again at once (the relay backs off).
            sqlx::query(
                "UPDATE outbox o SET last_error = f.error, not_before = NULL, claim_token = NULL \
                 FROM unnest($1::bigint[], $2::text[]) AS f(id, error) \
                 WHERE o.id = f.id AND o.claim_token = $3",
            )
            .bind(&ids)
            .bind(&errors)
            .bind(self.token)
            .execute(&self.pool)
            .await?;
        }
        let mut parked = 0;
        if !rejected.is_empty() {
            let (ids, errors): (Vec<i64>, Vec<String>) = rejected.iter().cloned().unzip();
            let cap = settings.max_backoff.saturating_mul(6).max(settings.row_backoff);
            let parked_ids: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(
                "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error, claim_token = NULL, \
                   not_before = now() + make_interval(secs => least($4, $5 * power(2, least(o.attempts, 30)))), \
                   parked_at = CASE WHEN o.attempts + 1 >= $6 THEN clock_timestamp() END \
                 FROM unnest($1::bigint[], $2::text[]) AS f(id, error) \
                 WHERE o.id = f.id AND o.claim_token = $3 \
                 RETURNING CASE WHEN o.parked_at IS NOT NULL THEN o.id END",
            )
            .bind(&ids)
            .bind(&errors)
            .bind(self.token)
            .bind(cap.as_secs_f64())
            .bind(settings.row_backoff.as_secs_f64())
            .bind(settings.max_attempts.max(1))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .flatten()
            .collect();
            for (id, error) in &rejected {
                if parked_ids.contains(id) {
                    tracing::error!(outbox_id = id, %error, max_attempts = settings.max_attempts,
                        "outbox row parked: the broker keeps rejecting it; fix the cause, then re-queue it");
                } else {
                    tracing::warn!(outbox_id = id, %error, "the broker rejected an outbox row; it is retried later");
                }
            }
            parked = parked_ids.len();
        }
        let failures = (failed.len() + rejected.len()) as u64;
        if failures > 0 {
            crate::metrics::add(
                crate::metrics::OUTBOX_PUBLISH_FAILURES,
                &[("service", settings.service.as_str())],
                failures,
            );
        }
        tracing::debug!(
            rows = self.rows.len(),
            failed = failed.len(),
            rejected = rejected.len(),
            claim_ms = self.claimed.as_secs_f64() * 1000.0,
            acks_ms = (acknowledged - self.claimed).as_secs_f64() * 1000.0,
            mark_ms = (self.started.elapsed() - acknowledged).as_secs_f64() * 1000.0,
            "outbox round"
        );
        Ok(RoundOutcome {
            published: published.len(),
            failed: failed.len(),
            rejected: rejected.len(),
            parked,
        })
    }
}

/// Whether the broker (or the producer, before sending) refused the record itself, so that sending
/// it again as it is cannot succeed: too large, an invalid or unknown topic, not authorized, a
/// policy violation. Time-outs and transport errors say nothing about the record.
fn rejects_the_record(error: &crate::Error) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    let crate::Error::Kafka(KafkaError::MessageProduction(code)) = error else {
        return false;
    };
    matches!(
        code,
        Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidMessage
            | Code::InvalidRecord
            | Code::InvalidTopic
            | Code::UnknownTopic
            | Code::UnknownTopicOrPartition
            | Code::TopicAuthorizationFailed
            | Code::PolicyViolation
    )
}

async fn publish_row(producer: &EventProducer, row: &ClaimedRow) -> Result<()> {
    let span = tracing::info_span!(
        "outbox.publish",
        otel.kind = "producer",
        topic = %row.topic,
        ce_id = %row.event_id,
        ce_type = %row.event_type,
    );
    telemetry::set_remote_parent(&span, &row.trace);
    async {
        // The publish span is a child of the request's span: same trace id, its own span id.
        let trace = match TraceHeaders::current() {
            headers if headers.traceparent.is_some() => headers,
            _ => row.trace.clone(),
        };
        let metadata = EventMetadata {
            id: row.event_id.to_string(),
            event_type: row.event_type.clone(),
            source: row.event_source.clone(),
            time: row.occurred_at,
            subject: Some(row.record_key.clone()),
            payload_type: row.payload_type.clone(),
            trace,
        };
        producer
            .send_event(&row.topic, &row.record_key, &row.payload, &metadata)
            .await
            .map(|_| ())
    }
    .instrument(span)
    .await
}

/// Logs what a finished round did; `false` if the relay could not publish (sends failed for
/// reasons that are not the rows', or the database failed). Rejected rows do not count: the relay
/// works, those rows are poison.
fn settle(joined: std::result::Result<Result<RoundOutcome>, tokio::task::JoinError>, backoff: Duration) -> bool {
    match joined {
        Ok(Ok(outcome)) if outcome.failed == 0 => true,
        Ok(Ok(outcome)) => {
            tracing::warn!(
                failed = outcome.failed,
                published = outcome.published,
                backoff_ms = backoff.as_millis() as u64,
                "outbox publish failed, backing off"
            );
            false
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "outbox round failed, backing off");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "outbox round task did not finish");
            false
        }
    }
}

/// The channel the outbox's insert trigger notifies (migrations/platform/0006_outbox_wake.sql).
pub const WAKE_CHANNEL: &str = "fintech_outbox";

/// Pause before a lost or refused listener connection is tried again (polling meanwhile).
const WAKE_RETRY: Duration = Duration::from_secs(5);

/// An idle relay's wait: the poll interval, cut short by a commit that wrote outbox rows.
///
/// The listener has a connection of its own, outside the service's pool (which it would
/// otherwise hold a connection of for good), opened with the pool's settings. When it cannot
/// connect or loses its connection the relay polls, and tries again after [`WAKE_RETRY`].
struct Wake {
    options: Option<sqlx::postgres::PgConnectOptions>,
    listener: Option<sqlx::postgres::PgListener>,
    retry_at: Option<tokio::time::Instant>,
}

impl Wake {
    fn new(pool: &PgPool, enabled: bool) -> Self {
        Self {
            options: enabled.then(|| (*pool.connect_options()).clone()),
            listener: None,
            retry_at: None,
        }
    }

    /// Drops the notifications already received.
    fn forget_pending(&mut self) {
        if let Some(listener) = self.listener.as_mut() {
            while listener.next_buffered().is_some() {}
        }
    }

    /// Waits `timeout` or until a commit notifies, whichever comes first; `true` if `shutdown`
    /// fired. Returns early too when the listener has just (re)connected: commits made while it
    /// was not listening notified nobody, so the relay claims once more before it waits.
    async fn wait(&mut self, timeout: Duration, shutdown: &CancellationToken) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            if self.connect(deadline - now).await {
                return false;
            }
            if let Some(listener) = self.listener.as_mut() {
                tokio::select! {
                    _ = shutdown.cancelled() => return true,
                    _ = tokio::time::sleep_until(deadline) => return false,
                    received = listener.try_recv() => match received {
                        Ok(Some(_)) => return false,
                        // The connection was lost (a database restart): poll until it is back.
                        Ok(None) | Err(_) => {
                            tracing::debug!("outbox listener lost its connection; polling meanwhile");
                            self.listener = None;
                            self.retry_at = Some(tokio::time::Instant::now() + WAKE_RETRY);
                        }
                    },
                }
            } else {
                let until = match (&self.options, self.retry_at) {
                    (Some(_), Some(retry_at)) => retry_at.min(deadline),
                    _ => deadline,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return true,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }

    /// Opens the listener if it is enabled, closed, and not waiting for its next attempt; `true`
    /// if it opened one now.
    async fn connect(&mut self, timeout: Duration) -> bool {
        let Some(options) = &self.options else {
            return false;
        };
        if self.listener.is_some() || self.retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
            return false;
        }
        let listen = async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(options.clone());
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.eager_reconnect(false);
            listener.listen(WAKE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(timeout.clamp(Duration::from_secs(1), WAKE_RETRY), listen).await {
            Ok(Ok(listener)) => {
                self.listener = Some(listener);
                self.retry_at = None;
                true
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "outbox listener cannot connect; polling meanwhile");
                self.retry_at = Some(tokio::time::Instant::now() + WAKE_RETRY);
                false
            }
            Err(_) => {
                tracing::debug!("outbox listener timed out connecting; polling meanwhile");
                self.retry_at = Some(tokio::time::Instant::now() + WAKE_RETRY);
                false
            }
        }
    }
}

/// Sleeps `wait`; `true` if `shutdown` fired first.
async fn sleep_or_shutdown(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

/// How long a relay's send may wait for the broker before it counts as failed, unless configured
/// otherwise (`OUTBOX_DELIVERY_TIMEOUT_MS`). Generous, because a timed-out send makes the
/// idempotent producer bump its epoch, which a loaded broker handles worst.
pub const RELAY_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Relay number `index` over `pool` with the settings of `config` and its own idempotent producer
/// (client id `<service>-outbox-<index>`); the service kit runs `OUTBOX_RELAYS` of them.
pub fn relay(
    pool: &PgPool,
    config: &crate::config::PlatformConfig,
    index: usize,
    health: Option<Component>,
) -> Result<OutboxRelay> {
    let settings = RelaySettings {
        batch_size: config.outbox_batch_size,
        poll_interval: config.outbox_poll_interval,
        gather: config.outbox_gather,
        rounds_in_flight: config.outbox_rounds_in_flight,
        wake_on_commit: config.outbox_wake_on_commit,
        max_attempts: config.outbox_max_attempts,
        lease: config.outbox_delivery_timeout * 2,
        health,
        service: config.service_name.clone(),
        ..RelaySettings::default()
    };
    let producer = EventProducer::new(
        &config.kafka_bootstrap_servers,
        &format!("{}-outbox-{index}", config.service_name),
        config.outbox_delivery_timeout,
    )?;
    Ok(OutboxRelay::new(pool.clone(), producer, settings))
}

fn next_backoff(backoff: &mut Duration, max: Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(max);
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Duration::from_millis(100);
        let waits: Vec<_> = (0..6)
            .map(|_| next_backoff(&mut backoff, Duration::from_millis(1000)))
            .collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis).to_vec()
        );
    }
}
