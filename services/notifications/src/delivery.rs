//! The delivery worker: claims due messages from the PostgreSQL queue and attempts them over
//! HTTP, to the Standard Webhooks specification (ADR 0026).
//!
//! # Guarantees
//! - **At least once, one id**: a message is leased while attempted and its outcome is recorded
//!   with the attempt in one transaction; a crash before that leaves the lease to expire and the
//!   message is attempted again with the same `webhook-id` (receivers deduplicate on it).
//! - **Isolation**: at most `per_endpoint` attempts to one endpoint are in flight (and at most
//!   its rate limit per second are started), out of `workers` in all; the claim skips endpoints
//!   that are full, so a slow or dead endpoint holds its own slots only and never delays others.
//! - **What counts**: a 2xx within the timeout is delivered; anything else (3xx included: no
//!   redirect is followed) fails and is retried on the schedule; `410 Gone` disables the endpoint;
//!   `429` / `503` wait at least their `Retry-After`; an endpoint failing for `disable_after` is
//!   disabled. Disabling publishes `notifications.endpoint_disabled`.
//! - **SSRF**: every attempt checks the URL, resolves its host through [`SsrfResolver`] (which
//!   refuses non-public addresses that are not allowlisted) and connects only to the addresses
//!   it checked; connections are not pooled, so every attempt resolves and checks anew.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use fintech_platform::CancellationToken;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::app::{NotificationsApp, Wake};
use crate::domain::signing::signature_header;
use crate::domain::ssrf::SsrfPolicy;
use crate::domain::{self, SNIPPET_BYTES};
use crate::storage::{self, AttemptRow, Claimed, Next};

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Delay before each attempt.
    pub schedule: Vec<Duration>,
    /// Jitter in percent.
    pub jitter_percent: u32,
    /// Attempt timeout.
    pub attempt_timeout: Duration,
    /// Lease of a claimed message.
    pub lease: Duration,
    /// Failing this long disables an endpoint.
    pub disable_after: Duration,
    /// Destination rules.
    pub policy: SsrfPolicy,
    /// Attempts in flight, all endpoints.
    pub workers: usize,
    /// Attempts in flight per endpoint.
    pub per_endpoint: usize,
    /// Queue poll interval.
    pub poll_interval: Duration,
}

/// Resolves names for the HTTP client and refuses any that reaches a non-public address.
#[derive(Debug, Clone)]
pub struct SsrfResolver {
    policy: SsrfPolicy,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resolves `host` and checks every address; the addresses are the ones the connection uses.
async fn resolve_checked(policy: SsrfPolicy, host: String) -> Result<Addrs, BoxError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
    if addresses.is_empty() {
        return Err(format!("{host} resolves to no address").into());
    }
    for address in &addresses {
        policy
            .check_address(address.ip())
            .map_err(|refusal| format!("destination refused: {host} resolves to {refusal}"))?;
    }
    Ok(Box::new(addresses.into_iter()))
}

impl Resolve for SsrfResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(resolve_checked(self.policy.clone(), name.as_str().to_owned()))
    }
}

/// The HTTP client of the attempts: rustls, no redirects, no proxy, the attempt timeout, no
/// connection reuse, names resolved through [`SsrfResolver`].
pub fn http_client(settings: &DeliverySettings) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.attempt_timeout)
        .pool_max_idle_per_host(0)
        .user_agent(concat!("fintech-notifications/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(SsrfResolver {
            policy: settings.policy.clone(),
        }))
        .build()
        .context("build the webhook HTTP client")
}

/// What one HTTP attempt came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The status answered, if any.
    pub status: Option<u16>,
    /// Its `Retry-After`, if it had a readable one.
    pub retry_after: Option<Duration>,
    /// The start of the body.
    pub snippet: String,
    /// Why it failed; empty on a 2xx.
    pub error: String,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Self {
            error,
            ..Self::default()
        }
    }

    fn success(&self) -> bool {
        self.status.is_some_and(|status| (200..300).contains(&status)) && self.error.is_empty()
    }
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

/// Sends one signed request and reads at most [`SNIPPET_BYTES`] of the answer.
pub async fn send(
    client: &reqwest::Client,
    policy: &SsrfPolicy,
    url: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Outcome {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(error) => return Outcome::failed(format!("invalid URL: {error}")),
    };
    // Literal addresses never reach the resolver: checked here.
    if let Err(reason) = domain::check_url(&parsed, policy) {
        return Outcome::failed(format!("destination refused: {reason}"));
    }
    let mut request = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::failed(chain(&error)),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| domain::parse_retry_after(value, Utc::now()));
    let mut snippet = Vec::new();
    let mut error = String::new();
    while snippet.len() < SNIPPET_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => snippet.extend_from_slice(&chunk[..chunk.len().min(SNIPPET_BYTES - snippet.len())]),
            Ok(None) => break,
            Err(failure) => {
                error = format!("reading the answer: {}", chain(&failure));
                break;
            }
        }
    }
    if error.is_empty() && !(200..300).contains(&status) {
        error = format!("answered {status}");
    }
    Outcome {
        status: Some(status),
        retry_after,
        snippet: String::from_utf8_lossy(&snippet).into_owned(),
        error,
    }
}

/// Slots in use per endpoint and the earliest next start of rate-limited ones.
#[derive(Debug, Default)]
struct Slots {
    in_flight: HashMap<Uuid, usize>,
    next_start: HashMap<Uuid, Instant>,
}

/// The worker.
#[derive(Debug, Clone)]
pub struct Deliverer {
    app: NotificationsApp,
    client: reqwest::Client,
    settings: Arc<DeliverySettings>,
    wake: Wake,
    slots: Arc<Mutex<Slots>>,
}

impl Deliverer {
    /// A worker for `app`'s queue.
    pub fn new(app: NotificationsApp, settings: DeliverySettings, wake: Wake) -> anyhow::Result<Self> {
        Ok(Self {
            app,
            client: http_client(&settings)?,
            settings: Arc::new(settings),
            wake,
            slots: Arc::default(),
        })
    }

    /// Runs until `stop`; attempts in flight then finish (each within the timeout).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let global = Arc::new(Semaphore::new(self.settings.workers));
        let mut attempts = JoinSet::new();
        while !stop.is_cancelled() {
            let free = global.available_permits();
            let mut again = false;
            if free > 0 {
                match self.claim(free).await {
                    Ok((claimed, passed_over)) => {
                        // Passed-over candidates of full endpoints are excluded next time: claim
                        // again at once so a backlog of one endpoint never hides another's.
                        again = passed_over && !claimed.is_empty();
                        for message in claimed {
                            let permit = global.clone().acquire_owned().await.context("the worker semaphore")?;
                            let worker = self.clone();
                            attempts.spawn(async move {
                                let endpoint_id = message.endpoint_id;
                                if let Err(error) = worker.attempt(message).await {
                                    // The lease runs out and the message is attempted again.
                                    tracing::warn!(error = format!("{error:#}"), %endpoint_id, "attempt not recorded");
                                }
                                worker.release(endpoint_id);
                                drop(permit);
                                worker.wake.wake_worker();
                            });
                        }
                    }
                    Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot read the delivery queue"),
                }
            }
            if again {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.worker_woken() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(_) = attempts.join_next() => {}
            }
        }
        while attempts.join_next().await.is_some() {}
        Ok(())
    }

    async fn claim(&self, free: usize) -> anyhow::Result<(Vec<Claimed>, bool)> {
        let per_endpoint = self.settings.per_endpoint;
        let now = Instant::now();
        let (in_flight, next_start) = {
            let slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (slots.in_flight.clone(), slots.next_start.clone())
        };
        let full: Vec<Uuid> = in_flight
            .iter()
            .filter(|(_, taken)| **taken >= per_endpoint)
            .map(|(endpoint_id, _)| *endpoint_id)
            .chain(
                next_start
                    .iter()
                    .filter(|(_, next)| **next > now)
                    .map(|(endpoint_id, _)| *endpoint_id),
            )
            .collect();
        let mut tentative: HashMap<Uuid, (usize, Option<Instant>)> = HashMap::new();
        let (claimed, passed_over) = storage::claim(
            self.app.pool(),
            i64::try_from(free).unwrap_or(i64::MAX),
            self.settings.lease,
            &full,
            |endpoint_id, rate| {
                let (taken, next) = tentative.entry(endpoint_id).or_insert_with(|| {
                    (
                        in_flight.get(&endpoint_id).copied().unwrap_or(0),
                        next_start.get(&endpoint_id).copied(),
                    )
                });
                if *taken >= per_endpoint {
                    return false;
                }
                if rate > 0 {
                    let start = next.map_or(now, |next| next.max(now));
                    if start > now {
                        return false;
                    }
                    *next = Some(start + Duration::from_secs_f64(1.0 / f64::from(rate)));
                }
                *taken += 1;
                true
            },
        )
        .await?;
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for message in &claimed {
            *slots.in_flight.entry(message.endpoint_id).or_insert(0) += 1;
        }
        for (endpoint_id, (_, next)) in tentative {
            if let Some(next) = next {
                slots.next_start.insert(endpoint_id, next);
            }
        }
        slots.next_start.retain(|_, next| *next > now);
        Ok((claimed, passed_over))
    }

    fn release(&self, endpoint_id: Uuid) {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = slots.in_flight.get_mut(&endpoint_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                slots.in_flight.remove(&endpoint_id);
            }
        }
    }

    /// One attempt of a claimed message, recorded with the message's next state.
    async fn attempt(&self, message: Claimed) -> anyhow::Result<()> {
        let secrets = storage::secrets_in_force(self.app.pool(), message.endpoint_id).await?;
        if secrets.is_empty() {
            anyhow::bail!("endpoint {} has no secret in force", message.endpoint_id);
        }
        let webhook_id = domain::public_id("msg", message.message_id);
        let timestamp = Utc::now().timestamp();
        let headers = [
            ("webhook-id", webhook_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature_header(&secrets, &webhook_id, timestamp, &message.body),
            ),
        ];
        let started_at = domain::now();
        let clock = Instant::now();
        let outcome = send(
            &self.client,
            &self.settings.policy,
            &message.url,
            &headers,
            &message.body,
        )
        .await;
        let latency_ms = i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX);
        let success = outcome.success();
        let gone = outcome.status == Some(410);
        let next = if success {
            Next::Delivered
        } else if gone {
            Next::Failed
        } else {
            let index = usize::try_from(message.retry_index)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            match domain::retry_delay(&self.settings.schedule, index, self.settings.jitter_percent) {
                None => Next::Failed,
                Some(delay) => {
                    let honoured = match (outcome.status, outcome.retry_after) {
                        (Some(429 | 503), Some(after)) => delay.max(after),
                        _ => delay,
                    };
                    Next::RetryIn(honoured)
                }
            }
        };
        let attempt = AttemptRow {
            attempt_id: Uuid::now_v7(),
            message_id: message.message_id,
            endpoint_id: message.endpoint_id,
            attempt_number: message.attempts.saturating_add(1),
            url: message.url.clone(),
            status_code: outcome.status.map_or(0, i32::from),
            latency_ms,
            response_snippet: outcome.snippet.clone(),
            error: outcome.error.clone(),
            success,
            started_at,
        };
        let failing_since = storage::finish_attempt(self.app.pool(), &attempt, next).await?;
        tracing::debug!(%webhook_id, status = attempt.status_code, success, ?next, "attempt");
        if gone {
            self.app
                .auto_disable(message.endpoint_id, "the endpoint answered 410 Gone")
                .await?;
        } else if let Some(since) = failing_since {
            let limit = chrono::Duration::from_std(self.settings.disable_after).unwrap_or(chrono::Duration::MAX);
            if Utc::now() - since >= limit {
                self.app
                    .auto_disable(
                        message.endpoint_id,
                        &format!("every attempt failed since {}", since.to_rfc3339()),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}
