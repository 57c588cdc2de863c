//! The notifications tables (`migrations/notifications/`). Functions take the connection or pool
//! they run on, so the consumer composes event and message inserts with its inbox row in one
//! transaction.
//!
//! # The queue
//! `notification_messages` is the delivery queue: a message is due when it is `pending`, its
//! `next_attempt_at` has passed, its lease (if any) has expired and its endpoint is enabled.
//! [`claim`] takes due messages with `FOR UPDATE SKIP LOCKED` (so several workers or instances
//! never take the same one) and leases them; the attempt's outcome ([`finish_attempt`]) clears the
//! lease. A worker that dies holding a lease leaves the message to the next claim after the lease,
//! with the same id: the `webhook-id` a receiver deduplicates on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::domain::signing::Secret;
use fintech_types::paging::{Cursor, PageRequest};

/// Serializes event inserts, so `notification_events.sequence` commits in order (see the table).
const EVENTS_LOCK: i64 = 0x6e6f_7469_6631;

/// An endpoint row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    /// Id.
    pub endpoint_id: Uuid,
    /// Creator's subject.
    pub owner: String,
    /// Destination.
    pub url: String,
    /// Types; empty: all.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: String,
    /// Per second; 0: none.
    pub rate_limit_per_second: i32,
    /// Paused.
    pub disabled: bool,
    /// Why.
    pub disabled_reason: String,
    /// Failing since.
    pub failing_since: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Changed.
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "endpoint_id, owner, url, event_types, description, rate_limit_per_second, disabled, \
     disabled_reason, failing_since, created_at, updated_at";

fn endpoint_from_row(row: &PgRow) -> sqlx::Result<EndpointRow> {
    Ok(EndpointRow {
        endpoint_id: row.try_get("endpoint_id")?,
        owner: row.try_get("owner")?,
        url: row.try_get("url")?,
        event_types: row.try_get("event_types")?,
        description: row.try_get("description")?,
        rate_limit_per_second: row.try_get("rate_limit_per_second")?,
        disabled: row.try_get("disabled")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row.try_get("failing_since")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Inserts an endpoint and its first secret.
pub async fn insert_endpoint(conn: &mut PgConnection, endpoint: &EndpointRow, secret: &Secret) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO notification_endpoints ({ENDPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(endpoint.endpoint_id)
    .bind(&endpoint.owner)
    .bind(&endpoint.url)
    .bind(&endpoint.event_types)
    .bind(&endpoint.description)
    .bind(endpoint.rate_limit_per_second)
    .bind(endpoint.disabled)
    .bind(&endpoint.disabled_reason)
    .bind(endpoint.failing_since)
    .bind(endpoint.created_at)
    .bind(endpoint.updated_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO notification_secrets (endpoint_id, secret, created_at) VALUES ($1, $2, $3)")
        .bind(endpoint.endpoint_id)
        .bind(secret.expose())
        .bind(endpoint.created_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// An endpoint that is not deleted, locked with `FOR UPDATE` when `lock`; `owner` limits it to
/// one owner (`None`: any).
pub async fn get_endpoint(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    owner: Option<&str>,
    lock: bool,
) -> sqlx::Result<Option<EndpointRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM notification_endpoints \
         WHERE endpoint_id = $1 AND NOT deleted AND ($2::text IS NULL OR owner = $2){}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(endpoint_id)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(endpoint_from_row).transpose()
}

/// Replaces an endpoint's changeable fields (URL, types, description, rate, disabled state).
pub async fn update_endpoint(conn: &mut PgConnection, endpoint: &EndpointRow) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notification_endpoints SET url = $2, event_types = $3, description = $4, rate_limit_per_second = $5, \
         disabled = $6, disabled_reason = $7, failing_since = $8, updated_at = $9 WHERE endpoint_id = $1",
    )
    .bind(endpoint.endpoint_id)
    .bind(&endpoint.url)
    .bind(&endpoint.event_types)
    .bind(&endpoint.description)
    .bind(endpoint.rate_limit_per_second)
    .bind(endpoint.disabled)
    .bind(&endpoint.disabled_reason)
    .bind(endpoint.failing_since)
    .bind(endpoint.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks an endpoint deleted; its pending messages fail.
pub async fn delete_endpoint(conn: &mut PgConnection, endpoint_id: Uuid, at: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query("UPDATE notification_endpoints SET deleted = true, updated_at = $2 WHERE endpoint_id = $1")
        .bind(endpoint_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE notification_messages SET status = 'failed', next_attempt_at = NULL, lease_until = NULL \
         WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(endpoint_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A page of endpoints, oldest first (`owner` `None`: every owner).
pub async fn list_endpoints(pool: &PgPool, owner: Option<&str>, page: &PageRequest) -> sqlx::Result<Vec<EndpointRow>> {
    let (after_at, after_id) = page.ascending_bound();
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM notification_endpoints WHERE NOT deleted AND ($1::text IS NULL OR owner = $1) \
         AND (created_at, endpoint_id) > ($2, $3) ORDER BY created_at, endpoint_id LIMIT $4"
    ))
    .bind(owner)
    .bind(after_at)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    rows.iter().map(endpoint_from_row).collect()
}

/// Adds a new current secret; the previous current one expires at `previous_expires_at`, one
/// still overlapping from an earlier rotation now.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    secret: &Secret,
    at: DateTime<Utc>,
    previous_expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    // At most two secrets sign at once: one still overlapping from an earlier rotation ends now,
    // the current one overlaps with the new one.
    sqlx::query("UPDATE notification_secrets SET expires_at = $2 WHERE endpoint_id = $1 AND expires_at > $2")
        .bind(endpoint_id)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE notification_secrets SET expires_at = $2 WHERE endpoint_id = $1 AND expires_at IS NULL")
        .bind(endpoint_id)
        .bind(previous_expires_at)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO notification_secrets (endpoint_id, secret, created_at) VALUES ($1, $2, $3)")
        .bind(endpoint_id)
        .bind(secret.expose())
        .bind(at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The secrets that sign now, newest first.
pub async fn secrets_in_force(pool: &PgPool, endpoint_id: Uuid) -> anyhow::Result<Vec<Secret>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT secret FROM notification_secrets WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now()) \
         ORDER BY secret_id DESC",
    )
    .bind(endpoint_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|text| {
            Secret::parse(text).ok_or_else(|| anyhow::anyhow!("a stored secret of endpoint {endpoint_id} is malformed"))
        })
        .collect()
}

/// A stored public event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Commit order.
    pub sequence: i64,
    /// Id.
    pub event_id: Uuid,
    /// Public type.
    pub event_type: String,
    /// Aggregate id.
    pub subject: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The webhook body.
    pub body: String,
}

fn event_from_row(row: &PgRow) -> sqlx::Result<EventRow> {
    Ok(EventRow {
        sequence: row.try_get("sequence")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        subject: row.try_get("subject")?,
        occurred_at: row.try_get("occurred_at")?,
        body: row.try_get("body")?,
    })
}

/// Stores an event and creates one pending message per endpoint that wants it (`only`: just that
/// endpoint, for test events); returns the sequence and the messages created. Inserts are
/// serialized until the transaction ends (see [`EVENTS_LOCK`]).
pub async fn insert_event(
    conn: &mut PgConnection,
    event_id: Uuid,
    event_type: &str,
    subject: &str,
    occurred_at: DateTime<Utc>,
    body: &str,
    only: Option<Uuid>,
) -> sqlx::Result<(i64, Vec<Uuid>)> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(EVENTS_LOCK)
        .execute(&mut *conn)
        .await?;
    let sequence: i64 = sqlx::query_scalar(
        "INSERT INTO notification_events (event_id, event_type, subject, occurred_at, body) VALUES ($1, $2, $3, $4, $5) \
         RETURNING sequence",
    )
    .bind(event_id)
    .bind(event_type)
    .bind(subject)
    .bind(occurred_at)
    .bind(body)
    .fetch_one(&mut *conn)
    .await?;
    let messages: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO notification_messages (message_id, endpoint_id, event_sequence, status, next_attempt_at, created_at) \
         SELECT gen_random_uuid(), endpoint_id, $1, 'pending', now(), now() FROM notification_endpoints \
         WHERE NOT deleted AND ($3::uuid IS NULL OR endpoint_id = $3) \
           AND ($3::uuid IS NOT NULL OR cardinality(event_types) = 0 OR $2 = ANY (event_types)) \
         RETURNING message_id",
    )
    .bind(sequence)
    .bind(event_type)
    .bind(only)
    .fetch_all(&mut *conn)
    .await?;
    Ok((sequence, messages))
}

/// The sequence of an event id.
pub async fn event_sequence(pool: &PgPool, event_id: Uuid) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT sequence FROM notification_events WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
}

/// The highest sequence stored (0 when none).
pub async fn last_sequence(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(max(sequence), 0) FROM notification_events")
        .fetch_one(pool)
        .await
}

/// Events after `after`, in order, of `types` (empty: all), at most `limit`.
pub async fn events_after(pool: &PgPool, after: i64, types: &[String], limit: i64) -> sqlx::Result<Vec<EventRow>> {
    let rows = sqlx::query(
        "SELECT sequence, event_id, event_type, subject, occurred_at, body FROM notification_events \
         WHERE sequence > $1 AND (cardinality($2::text[]) = 0 OR event_type = ANY ($2)) ORDER BY sequence LIMIT $3",
    )
    .bind(after)
    .bind(types)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// A message with what a listing shows of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// Id (the webhook-id).
    pub message_id: Uuid,
    /// Endpoint.
    pub endpoint_id: Uuid,
    /// Event.
    pub event_id: Uuid,
    /// Public type.
    pub event_type: String,
    /// `pending`, `delivered`, `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// Due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

const MESSAGE_SELECT: &str = "SELECT m.message_id, m.endpoint_id, e.event_id, e.event_type, m.status, m.attempts, \
     m.next_attempt_at, m.created_at, m.delivered_at FROM notification_messages m \
     JOIN notification_events e ON e.sequence = m.event_sequence \
     JOIN notification_endpoints p ON p.endpoint_id = m.endpoint_id";

fn message_from_row(row: &PgRow) -> sqlx::Result<MessageRow> {
    Ok(MessageRow {
        message_id: row.try_get("message_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

/// One message (`owner` limits it to one owner's endpoints).
pub async fn get_message(pool: &PgPool, message_id: Uuid, owner: Option<&str>) -> sqlx::Result<Option<MessageRow>> {
    let row = sqlx::query(&format!(
        "{MESSAGE_SELECT} WHERE m.message_id = $1 AND NOT p.deleted AND ($2::text IS NULL OR p.owner = $2)"
    ))
    .bind(message_id)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// A page of an endpoint's messages, newest first.
pub async fn list_messages(pool: &PgPool, endpoint_id: Uuid, page: &PageRequest) -> sqlx::Result<Vec<MessageRow>> {
    let (before_at, before_id) = page.descending_bound();
    let rows = sqlx::query(&format!(
        "{MESSAGE_SELECT} WHERE m.endpoint_id = $1 AND (m.created_at, m.message_id) < ($2, $3) \
         ORDER BY m.created_at DESC, m.message_id DESC LIMIT $4"
    ))
    .bind(endpoint_id)
    .bind(before_at)
    .bind(before_id)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    rows.iter().map(message_from_row).collect()
}

/// The cursor of a message in a listing.
pub fn message_cursor(message: &MessageRow) -> Cursor {
    Cursor {
        created_at: message.created_at,
        id: message.message_id,
    }
}

/// Queues a message again now with a fresh schedule.
pub async fn requeue_message(pool: &PgPool, message_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE notification_messages SET status = 'pending', retry_index = 0, next_attempt_at = now(), lease_until = NULL \
         WHERE message_id = $1",
    )
    .bind(message_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Queues again every message of the endpoint created since `since` and creates the missing ones
/// of its types for events stored since then; returns how many are queued.
pub async fn recover_since(conn: &mut PgConnection, endpoint: &EndpointRow, since: DateTime<Utc>) -> sqlx::Result<u64> {
    let requeued = sqlx::query(
        "UPDATE notification_messages SET status = 'pending', retry_index = 0, next_attempt_at = now(), lease_until = NULL \
         WHERE endpoint_id = $1 AND created_at >= $2 AND status <> 'pending'",
    )
    .bind(endpoint.endpoint_id)
    .bind(since)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let created = sqlx::query(
        "INSERT INTO notification_messages (message_id, endpoint_id, event_sequence, status, next_attempt_at, created_at) \
         SELECT gen_random_uuid(), $1, sequence, 'pending', now(), now() FROM notification_events \
         WHERE created_at >= $2 AND event_type <> 'notifications.test' \
           AND (cardinality($3::text[]) = 0 OR event_type = ANY ($3)) \
         ON CONFLICT (endpoint_id, event_sequence) DO NOTHING",
    )
    .bind(endpoint.endpoint_id)
    .bind(since)
    .bind(&endpoint.event_types)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(requeued + created)
}

/// An attempt row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    /// Id.
    pub attempt_id: Uuid,
    /// Message.
    pub message_id: Uuid,
    /// Endpoint.
    pub endpoint_id: Uuid,
    /// 1-based.
    pub attempt_number: i32,
    /// URL called.
    pub url: String,
    /// HTTP status; 0 without an answer.
    pub status_code: i32,
    /// Latency.
    pub latency_ms: i64,
    /// Start of the answer.
    pub response_snippet: String,
    /// Failure.
    pub error: String,
    /// Delivered.
    pub success: bool,
    /// Started.
    pub started_at: DateTime<Utc>,
}

fn attempt_from_row(row: &PgRow) -> sqlx::Result<AttemptRow> {
    Ok(AttemptRow {
        attempt_id: row.try_get("attempt_id")?,
        message_id: row.try_get("message_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        attempt_number: row.try_get("attempt_number")?,
        url: row.try_get("url")?,
        status_code: row.try_get("status_code")?,
        latency_ms: row.try_get("latency_ms")?,
        response_snippet: row.try_get("response_snippet")?,
        error: row.try_get("error")?,
        success: row.try_get("success")?,
        started_at: row.try_get("started_at")?,
    })
}

/// Which attempts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptsOf {
    /// Of one message.
    Message(Uuid),
    /// Of one endpoint.
    Endpoint(Uuid),
}

/// A page of attempts, newest first.
pub async fn list_attempts(pool: &PgPool, of: AttemptsOf, page: &PageRequest) -> sqlx::Result<Vec<AttemptRow>> {
    let (before_at, before_id) = page.descending_bound();
    let (column, id) = match of {
        AttemptsOf::Message(id) => ("message_id", id),
        AttemptsOf::Endpoint(id) => ("endpoint_id", id),
    };
    let rows = sqlx::query(&format!(
        "SELECT attempt_id, message_id, endpoint_id, attempt_number, url, status_code, latency_ms, response_snippet, \
         error, success, started_at FROM notification_attempts WHERE {column} = $1 \
         AND (started_at, attempt_id) < ($2, $3) ORDER BY started_at DESC, attempt_id DESC LIMIT $4"
    ))
    .bind(id)
    .bind(before_at)
    .bind(before_id)
    .bind(page.fetch_limit())
    .fetch_all(pool)
    .await?;
    rows.iter().map(attempt_from_row).collect()
}

/// A message claimed for one attempt, with what the attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The message (the webhook-id).
    pub message_id: Uuid,
    /// Its endpoint.
    pub endpoint_id: Uuid,
    /// Where to.
    pub url: String,
    /// The endpoint's rate limit.
    pub rate_limit_per_second: i32,
    /// Attempts made before this one.
    pub attempts: i32,
    /// Failures since it was last queued.
    pub retry_index: i32,
    /// The signed body.
    pub body: String,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
}

/// Claims due messages of endpoints not in `full`: at most `limit` in all and, per endpoint, what
/// `free(endpoint, rate)` says it can take now (concurrency and rate limit); leases them for
/// `lease`. Also returns whether a due candidate was passed over (the caller claims again at once
/// rather than waiting for its next poll).
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
    full: &[Uuid],
    mut free: impl FnMut(Uuid, i32) -> bool,
) -> sqlx::Result<(Vec<Claimed>, bool)> {
    let mut transaction = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT m.message_id, m.endpoint_id, p.url, p.rate_limit_per_second, m.attempts, m.retry_index, e.body, e.occurred_at \
         FROM notification_messages m \
         JOIN notification_endpoints p ON p.endpoint_id = m.endpoint_id \
         JOIN notification_events e ON e.sequence = m.event_sequence \
         WHERE m.status = 'pending' AND m.next_attempt_at <= now() AND (m.lease_until IS NULL OR m.lease_until < now()) \
           AND NOT p.disabled AND NOT p.deleted AND NOT (m.endpoint_id = ANY ($2)) \
         ORDER BY m.next_attempt_at LIMIT $1 FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(limit.saturating_mul(4))
    .bind(full)
    .fetch_all(&mut *transaction)
    .await?;
    let mut claimed = Vec::new();
    let mut passed_over = false;
    for row in &rows {
        if claimed.len() as i64 >= limit {
            passed_over = true;
            break;
        }
        let candidate = Claimed {
            message_id: row.try_get("message_id")?,
            endpoint_id: row.try_get("endpoint_id")?,
            url: row.try_get("url")?,
            rate_limit_per_second: row.try_get("rate_limit_per_second")?,
            attempts: row.try_get("attempts")?,
            retry_index: row.try_get("retry_index")?,
            body: row.try_get("body")?,
            occurred_at: row.try_get("occurred_at")?,
        };
        if free(candidate.endpoint_id, candidate.rate_limit_per_second) {
            claimed.push(candidate);
        } else {
            passed_over = true;
        }
    }
    let ids: Vec<Uuid> = claimed.iter().map(|message| message.message_id).collect();
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE notification_messages SET lease_until = now() + make_interval(secs => $2), attempts = attempts + 1 \
             WHERE message_id = ANY ($1)",
        )
        .bind(&ids)
        .bind(lease.as_secs_f64())
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok((claimed, passed_over))
}

/// What became of a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Delivered,
    /// Try again after this long.
    RetryIn(Duration),
    /// No more attempts (schedule used up, or 410).
    Failed,
}

/// Records an attempt and the message's next state in one transaction; tracks the endpoint's
/// failing streak and returns it (`Some(since)` while failing).
pub async fn finish_attempt(pool: &PgPool, attempt: &AttemptRow, next: Next) -> sqlx::Result<Option<DateTime<Utc>>> {
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "INSERT INTO notification_attempts (attempt_id, message_id, endpoint_id, attempt_number, url, status_code, \
         latency_ms, response_snippet, error, success, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(attempt.attempt_id)
    .bind(attempt.message_id)
    .bind(attempt.endpoint_id)
    .bind(attempt.attempt_number)
    .bind(&attempt.url)
    .bind(attempt.status_code)
    .bind(attempt.latency_ms)
    .bind(&attempt.response_snippet)
    .bind(&attempt.error)
    .bind(attempt.success)
    .bind(attempt.started_at)
    .execute(&mut *transaction)
    .await?;
    match next {
        Next::Delivered => {
            sqlx::query(
                "UPDATE notification_messages SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL, \
                 lease_until = NULL WHERE message_id = $1",
            )
            .bind(attempt.message_id)
            .execute(&mut *transaction)
            .await?;
        }
        Next::RetryIn(delay) => {
            sqlx::query(
                "UPDATE notification_messages SET retry_index = retry_index + 1, \
                 next_attempt_at = now() + make_interval(secs => $2), lease_until = NULL WHERE message_id = $1",
            )
            .bind(attempt.message_id)
            .bind(delay.as_secs_f64())
            .execute(&mut *transaction)
            .await?;
        }
        Next::Failed => {
            sqlx::query(
                "UPDATE notification_messages SET status = 'failed', retry_index = retry_index + 1, next_attempt_at = NULL, \
                 lease_until = NULL WHERE message_id = $1",
            )
            .bind(attempt.message_id)
            .execute(&mut *transaction)
            .await?;
        }
    }
    let failing_since: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE notification_endpoints SET failing_since = CASE WHEN $2 THEN NULL ELSE COALESCE(failing_since, $3) END \
         WHERE endpoint_id = $1 RETURNING failing_since",
    )
    .bind(attempt.endpoint_id)
    .bind(attempt.success)
    .bind(attempt.started_at)
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(failing_since)
}

/// The cursor of an attempt in a listing.
pub fn attempt_cursor(attempt: &AttemptRow) -> Cursor {
    Cursor {
        created_at: attempt.started_at,
        id: attempt.attempt_id,
    }
}

/// The cursor of an endpoint in a listing.
pub fn endpoint_cursor(endpoint: &EndpointRow) -> Cursor {
    Cursor {
        created_at: endpoint.created_at,
        id: endpoint.endpoint_id,
    }
}
