//! The use cases: endpoints (owned by the token's subject), messages and attempts, replay, test
//! events, the live stream, and disabling an endpoint that cannot take webhooks any more.
//!
//! Ownership: every endpoint belongs to the subject that created it; a caller sees and changes
//! only its own (another's is NOT_FOUND, exactly like a missing one), unless its token carries
//! `notifications.admin`. Customers' tokens never get here (`customers: false` in the contract):
//! an endpoint receives every event of its types, across customers (ADR 0026).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fintech_platform::kafka::TopicNames;
use fintech_platform::outbox::{self, OutboxEvent};
use fintech_proto::notifications as pb;
use fintech_proto::topics;
use fintech_types::paging::PageRequest;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::domain::signing::Secret;
use crate::domain::ssrf::SsrfPolicy;
use crate::domain::{self, EndpointSpec, MAX_OVERLAP, MAX_TEXT, NotificationsError, Result, Violations};
use crate::storage::{self, AttemptRow, AttemptsOf, EndpointRow, EventRow, MessageRow};

/// Wakes the delivery worker (new messages, free slots) and the live streams (new events).
#[derive(Debug, Clone)]
pub struct Wake {
    worker: Arc<Notify>,
    events: Arc<watch::Sender<u64>>,
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            worker: Arc::new(Notify::new()),
            events: Arc::new(watch::channel(0).0),
        }
    }
}

impl Wake {
    /// Something changed: the worker looks at the queue, the streams at the events.
    pub fn wake(&self) {
        self.worker.notify_one();
        self.events.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Only the worker (a slot came free).
    pub fn wake_worker(&self) {
        self.worker.notify_one();
    }

    /// Resolves when the worker is woken.
    pub async fn worker_woken(&self) {
        self.worker.notified().await;
    }

    /// A receiver of the event wake-ups.
    pub fn events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's subject: owner of what it creates.
    pub subject: String,
    /// `notifications.admin`: sees every endpoint.
    pub admin: bool,
}

impl Actor {
    fn owner_filter(&self) -> Option<&str> {
        if self.admin { None } else { Some(&self.subject) }
    }
}

/// The application: its pool, rules and wake-ups.
#[derive(Debug, Clone)]
pub struct NotificationsApp {
    pool: PgPool,
    topics: TopicNames,
    policy: SsrfPolicy,
    rotation_overlap: Duration,
    wake: Wake,
}

/// Checks every address `url`'s host resolves to now; a name that does not resolve is accepted
/// (every attempt resolves and checks again).
pub async fn check_resolved(url: &url::Url, policy: &SsrfPolicy) -> std::result::Result<(), String> {
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let Ok(addresses) = tokio::net::lookup_host((host, port)).await else {
        return Ok(());
    };
    for address in addresses {
        let ip: IpAddr = address.ip();
        policy
            .check_address(ip)
            .map_err(|refusal| format!("{host} resolves to {refusal}"))?;
    }
    Ok(())
}

impl NotificationsApp {
    /// The application over `pool`.
    pub fn new(pool: PgPool, topics: TopicNames, policy: SsrfPolicy, rotation_overlap: Duration, wake: Wake) -> Self {
        Self {
            pool,
            topics,
            policy,
            rotation_overlap,
            wake,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn spec(&self, url: &str, event_types: &[String], description: &str, rate: i32) -> Result<EndpointSpec> {
        let spec = EndpointSpec::parse(url, event_types, description, rate, &self.policy)?;
        check_resolved(&spec.url, &self.policy)
            .await
            .map_err(|reason| Violations::single("url", reason))?;
        Ok(spec)
    }

    async fn owned(
        &self,
        conn: &mut sqlx::PgConnection,
        actor: &Actor,
        endpoint_id: Uuid,
        lock: bool,
    ) -> Result<EndpointRow> {
        storage::get_endpoint(conn, endpoint_id, actor.owner_filter(), lock)
            .await?
            .ok_or_else(|| NotificationsError::EndpointNotFound(domain::public_id("ep", endpoint_id)))
    }

    /// Creates an endpoint; returns it with its secret (shown this once).
    pub async fn create_endpoint(
        &self,
        actor: &Actor,
        request: &pb::CreateEndpointRequest,
    ) -> Result<(EndpointRow, Secret)> {
        let spec = self
            .spec(
                &request.url,
                &request.event_types,
                &request.description,
                request.rate_limit_per_second,
            )
            .await?;
        let now = domain::now();
        let endpoint = EndpointRow {
            endpoint_id: Uuid::now_v7(),
            owner: actor.subject.clone(),
            url: spec.url.to_string(),
            event_types: spec.event_types,
            description: spec.description,
            rate_limit_per_second: spec.rate_limit_per_second,
            disabled: false,
            disabled_reason: String::new(),
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        let secret = Secret::generate();
        let mut transaction = self.pool.begin().await?;
        storage::insert_endpoint(&mut transaction, &endpoint, &secret).await?;
        transaction.commit().await?;
        tracing::info!(endpoint_id = %endpoint.endpoint_id, owner = %endpoint.owner, "endpoint created");
        Ok((endpoint, secret))
    }

    /// Replaces an endpoint's URL, types, description and rate.
    pub async fn update_endpoint(&self, actor: &Actor, request: &pb::UpdateEndpointRequest) -> Result<EndpointRow> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", &request.endpoint_id)?;
        let spec = self
            .spec(
                &request.url,
                &request.event_types,
                &request.description,
                request.rate_limit_per_second,
            )
            .await?;
        let mut transaction = self.pool.begin().await?;
        let mut endpoint = self.owned(&mut transaction, actor, endpoint_id, true).await?;
        endpoint.url = spec.url.to_string();
        endpoint.event_types = spec.event_types;
        endpoint.description = spec.description;
        endpoint.rate_limit_per_second = spec.rate_limit_per_second;
        endpoint.updated_at = domain::now();
        storage::update_endpoint(&mut transaction, &endpoint).await?;
        transaction.commit().await?;
        Ok(endpoint)
    }

    /// A new secret; the previous one signs beside it until the returned time.
    pub async fn rotate_secret(
        &self,
        actor: &Actor,
        request: &pb::RotateSecretRequest,
    ) -> Result<(Secret, DateTime<Utc>)> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", &request.endpoint_id)?;
        let overlap = match request.overlap_seconds {
            0 => self.rotation_overlap,
            seconds if seconds > 0 && seconds.unsigned_abs() <= MAX_OVERLAP.as_secs() => {
                Duration::from_secs(seconds.unsigned_abs())
            }
            other => {
                return Err(Violations::single(
                    "overlap_seconds",
                    format!("must be between 0 and {}, got {other}", MAX_OVERLAP.as_secs()),
                )
                .into());
            }
        };
        let now = domain::now();
        let expires = now + chrono::Duration::from_std(overlap).map_err(anyhow::Error::from)?;
        let secret = Secret::generate();
        let mut transaction = self.pool.begin().await?;
        self.owned(&mut transaction, actor, endpoint_id, true).await?;
        storage::rotate_secret(&mut transaction, endpoint_id, &secret, now, expires).await?;
        transaction.commit().await?;
        tracing::info!(%endpoint_id, previous_expires_at = %expires, "secret rotated");
        Ok((secret, expires))
    }

    /// Disables or enables an endpoint.
    pub async fn set_disabled(
        &self,
        actor: &Actor,
        endpoint_id: &str,
        disabled: bool,
        reason: &str,
    ) -> Result<EndpointRow> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", endpoint_id)?;
        if reason.chars().count() > MAX_TEXT {
            return Err(Violations::single("reason", format!("must be at most {MAX_TEXT} characters")).into());
        }
        let mut transaction = self.pool.begin().await?;
        let mut endpoint = self.owned(&mut transaction, actor, endpoint_id, true).await?;
        endpoint.disabled = disabled;
        endpoint.disabled_reason = if disabled {
            if reason.is_empty() {
                format!("disabled by {}", actor.subject)
            } else {
                reason.to_owned()
            }
        } else {
            String::new()
        };
        if !disabled {
            // A fresh start: the failing streak of before does not count against it.
            endpoint.failing_since = None;
        }
        endpoint.updated_at = domain::now();
        storage::update_endpoint(&mut transaction, &endpoint).await?;
        transaction.commit().await?;
        self.wake.wake_worker();
        Ok(endpoint)
    }

    /// Disables an endpoint on the service's own decision (410, failing too long) and tells the
    /// operators on `notifications.endpoint_disabled`, in one transaction.
    pub async fn auto_disable(&self, endpoint_id: Uuid, reason: &str) -> anyhow::Result<()> {
        let mut transaction = self.pool.begin().await?;
        let Some(mut endpoint) = storage::get_endpoint(&mut transaction, endpoint_id, None, true).await? else {
            return Ok(());
        };
        if endpoint.disabled {
            return Ok(());
        }
        let now = domain::now();
        endpoint.disabled = true;
        endpoint.disabled_reason = reason.to_owned();
        endpoint.updated_at = now;
        storage::update_endpoint(&mut transaction, &endpoint).await?;
        let payload = pb::EndpointDisabled {
            endpoint: Some(crate::grpc::endpoint_pb(&endpoint)),
            disabled_at: Some(fintech_proto::time::timestamp(now)),
        };
        let event = OutboxEvent::of(
            self.topics.prefix(),
            &topics::NOTIFICATIONS_ENDPOINT_DISABLED,
            domain::public_id("ep", endpoint_id),
            &payload,
            now,
        );
        outbox::enqueue(&mut transaction, crate::sources::SOURCE, &event).await?;
        transaction.commit().await?;
        tracing::warn!(%endpoint_id, reason, "endpoint disabled");
        Ok(())
    }

    /// The caller's endpoints.
    pub async fn list_endpoints(&self, actor: &Actor, page: &PageRequest) -> Result<Vec<EndpointRow>> {
        Ok(storage::list_endpoints(&self.pool, actor.owner_filter(), page).await?)
    }

    /// Deletes an endpoint.
    pub async fn delete_endpoint(&self, actor: &Actor, endpoint_id: &str) -> Result<()> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", endpoint_id)?;
        let mut transaction = self.pool.begin().await?;
        self.owned(&mut transaction, actor, endpoint_id, true).await?;
        storage::delete_endpoint(&mut transaction, endpoint_id, domain::now()).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// An endpoint's messages.
    pub async fn list_messages(&self, actor: &Actor, endpoint_id: &str, page: &PageRequest) -> Result<Vec<MessageRow>> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", endpoint_id)?;
        let mut conn = self.pool.acquire().await?;
        self.owned(&mut conn, actor, endpoint_id, false).await?;
        drop(conn);
        Ok(storage::list_messages(&self.pool, endpoint_id, page).await?)
    }

    /// Attempts of a message or an endpoint (exactly one of the two).
    pub async fn list_attempts(
        &self,
        actor: &Actor,
        request: &pb::ListAttemptsRequest,
        page: &PageRequest,
    ) -> Result<Vec<AttemptRow>> {
        let of = match (request.message_id.is_empty(), request.endpoint_id.is_empty()) {
            (false, true) => {
                let message_id = domain::parse_public_id("message_id", "msg", &request.message_id)?;
                storage::get_message(&self.pool, message_id, actor.owner_filter())
                    .await?
                    .ok_or_else(|| NotificationsError::MessageNotFound(request.message_id.clone()))?;
                AttemptsOf::Message(message_id)
            }
            (true, false) => {
                let endpoint_id = domain::parse_public_id("endpoint_id", "ep", &request.endpoint_id)?;
                let mut conn = self.pool.acquire().await?;
                self.owned(&mut conn, actor, endpoint_id, false).await?;
                AttemptsOf::Endpoint(endpoint_id)
            }
            _ => {
                return Err(
                    Violations::single("message_id", "exactly one of message_id and endpoint_id is required").into(),
                );
            }
        };
        Ok(storage::list_attempts(&self.pool, of, page).await?)
    }

    /// Queues a message again now.
    pub async fn resend(&self, actor: &Actor, message_id: &str) -> Result<MessageRow> {
        let id = domain::parse_public_id("message_id", "msg", message_id)?;
        storage::get_message(&self.pool, id, actor.owner_filter())
            .await?
            .ok_or_else(|| NotificationsError::MessageNotFound(message_id.to_owned()))?;
        storage::requeue_message(&self.pool, id).await?;
        self.wake.wake_worker();
        storage::get_message(&self.pool, id, None)
            .await?
            .ok_or_else(|| NotificationsError::MessageNotFound(message_id.to_owned()))
    }

    /// Queues an endpoint's messages since `since` again.
    pub async fn recover_since(&self, actor: &Actor, request: &pb::RecoverSinceRequest) -> Result<u64> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", &request.endpoint_id)?;
        let since = request
            .since
            .as_ref()
            .and_then(fintech_proto::time::from_timestamp)
            .ok_or_else(|| Violations::single("since", "is required (a valid timestamp)"))?;
        let mut transaction = self.pool.begin().await?;
        let endpoint = self.owned(&mut transaction, actor, endpoint_id, true).await?;
        let queued = storage::recover_since(&mut transaction, &endpoint, since).await?;
        transaction.commit().await?;
        self.wake.wake_worker();
        Ok(queued)
    }

    /// Sends a `notifications.test` event to one endpoint.
    pub async fn send_test_event(&self, actor: &Actor, endpoint_id: &str) -> Result<MessageRow> {
        let endpoint_id = domain::parse_public_id("endpoint_id", "ep", endpoint_id)?;
        let now = domain::now();
        let body = crate::sources::body(
            crate::sources::TEST_EVENT_TYPE,
            now,
            "",
            serde_json::json!({"endpointId": domain::public_id("ep", endpoint_id), "message": "a test event"}),
        );
        let mut transaction = self.pool.begin().await?;
        self.owned(&mut transaction, actor, endpoint_id, false).await?;
        let (_, messages) = storage::insert_event(
            &mut transaction,
            Uuid::now_v7(),
            crate::sources::TEST_EVENT_TYPE,
            "",
            now,
            &body,
            Some(endpoint_id),
        )
        .await?;
        transaction.commit().await?;
        self.wake.wake();
        let message_id = messages
            .first()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("the test event created no message"))?;
        storage::get_message(&self.pool, message_id, None)
            .await?
            .ok_or_else(|| NotificationsError::MessageNotFound(domain::public_id("msg", message_id)))
    }

    /// Where a stream starts: after `after_event_id`, or after the newest event now.
    pub async fn watch_start(&self, after_event_id: &str) -> Result<i64> {
        if after_event_id.is_empty() {
            return Ok(storage::last_sequence(&self.pool).await?);
        }
        let event_id = domain::parse_public_id("after_event_id", "evt", after_event_id)?;
        storage::event_sequence(&self.pool, event_id)
            .await?
            .ok_or_else(|| NotificationsError::EventNotFound(after_event_id.to_owned()))
    }

    /// Events after `after` of `types`, at most `limit`.
    pub async fn events_after(&self, after: i64, types: &[String], limit: i64) -> Result<Vec<EventRow>> {
        Ok(storage::events_after(&self.pool, after, types, limit).await?)
    }

    /// The event wake-ups.
    pub fn event_wakeups(&self) -> watch::Receiver<u64> {
        self.wake.events()
    }
}
