//! Notifications scenario: the benchmark plays the platform's producers (`accounts.opened` events
//! with their CloudEvents headers, on the environment's topics) and the outside world (real HTTP
//! receivers on loopback), and measures what a webhook subscriber sees:
//!
//! 1. **alone**: one healthy endpoint, events at a sustained rate: event → delivery p50/p99 (from
//!    the moment the event was handed to the producer to the moment the receiver had read the
//!    whole request);
//! 2. **beside a dead and a slow endpoint**: the same, with a second endpoint that refuses
//!    connections and a third that takes 10 s per answer, both subscribed to every event. The
//!    issue's target: the healthy endpoint's p99 moves by no more than 100 ms;
//! 3. **burst**: the dead and slow endpoints disabled, a burst of events published at once:
//!    deliveries/s from the first event to the last delivery;
//! 4. **raw consumer baseline**: produce → consume at the same rate on the same broker with the
//!    services' consumer settings — what any Kafka consumer of these events would see.
//!
//! Every delivery is checked against its event (by the account id in the body); a delivery that
//! never arrived is an error, a second delivery with the same `webhook-id` is counted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::notifications as pb;
use fintech_proto::notifications::notifications_service_client::NotificationsServiceClient;
use fintech_proto::topics;
use prost::{Message as _, Name as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use crate::kafka;
use crate::load::{Channel, connect, with_key};
use crate::procstat::Sampler;
use crate::progress::{say, step};
use crate::report::{Measured, NotificationsPhase, NotificationsResults};
use crate::stats::Samples;

/// How long the slow endpoint takes per answer (the issue's figure).
pub const SLOW_ANSWER: Duration = Duration::from_secs(10);

/// What the scenario needs.
#[derive(Debug)]
pub struct Setup<'a> {
    /// gRPC address of notifications.
    pub notifications: String,
    /// The environment's broker.
    pub bootstrap: String,
    /// The environment's topic prefix.
    pub prefix: String,
    /// Events per second of the sustained phases.
    pub rate: f64,
    /// Length of each sustained phase.
    pub duration: Duration,
    /// Events of the burst.
    pub burst: usize,
    /// Longest wait for a phase's deliveries after its last event.
    pub drain_timeout: Duration,
    /// Unique prefix for ids.
    pub run_id: &'a str,
}

/// Runs the four phases.
pub async fn run(setup: Setup<'_>, sampler: &Sampler) -> anyhow::Result<NotificationsResults> {
    let mut client = NotificationsServiceClient::new(connect(&setup.notifications).await?);
    let healthy = Receiver::start(Duration::ZERO).await?;
    let healthy_id = create_endpoint(&mut client, &healthy.url, "healthy").await?;
    let source = Source::new(&setup.bootstrap, &setup.prefix)?;

    // The first event waits for the service's consumer to join its group: not measured.
    step("notifications: warm-up (the consumer joins its group)");
    let warmup = source.publish(&healthy).await?;
    healthy.wait_for(&[warmup], Duration::from_secs(60)).await;

    step(format!(
        "notifications alone: {:.0} events/s to one endpoint",
        setup.rate
    ));
    let from = sampler.now();
    let alone = sustained(&setup, &source, &healthy).await?;
    sampler.sample_now();
    let alone_resources = sampler.usage(from, sampler.now());

    step("notifications beside a dead and a slow endpoint");
    let slow = Receiver::start(SLOW_ANSWER).await?;
    let dead_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}/hook", listener.local_addr()?)
    };
    let slow_id = create_endpoint(&mut client, &slow.url, "slow").await?;
    let dead_id = create_endpoint(&mut client, &dead_url, "dead").await?;
    let from = sampler.now();
    let beside = sustained(&setup, &source, &healthy).await?;
    sampler.sample_now();
    let beside_resources = sampler.usage(from, sampler.now());
    let slow_received = slow.received();

    step(format!("notifications burst: {} events at once", setup.burst));
    for endpoint_id in [&slow_id, &dead_id] {
        client
            .disable_endpoint(with_key(
                pb::DisableEndpointRequest {
                    endpoint_id: endpoint_id.clone(),
                    reason: "benchmark: burst phase".to_owned(),
                },
                &format!("{}-disable-{endpoint_id}", setup.run_id),
            ))
            .await
            .context("DisableEndpoint")?;
    }
    let from = sampler.now();
    let burst = burst(&setup, &source, &healthy).await?;
    sampler.sample_now();
    let burst_resources = sampler.usage(from, sampler.now());

    step(format!("notifications: raw produce -> consume at {:.0}/s", setup.rate));
    let payload_size = account("size").encoded_len();
    let roundtrip = kafka::roundtrip_baseline(
        &setup.bootstrap,
        &format!("{}baseline.roundtrip", setup.prefix),
        payload_size,
        setup.rate,
        setup.duration,
        // The services' own `fetch.wait.max.ms`.
        u32::try_from(fintech_platform::kafka::consumer::DEFAULT_FETCH_WAIT_MAX.as_millis()).ok(),
        "notifications raw consumer baseline",
    )
    .await?;

    let results = NotificationsResults {
        rate: setup.rate,
        seconds: setup.duration.as_secs_f64(),
        alone: alone.phase(alone_resources),
        beside: beside.phase(beside_resources),
        burst: burst.phase(burst_resources),
        raw_consumer: Measured::from(&roundtrip.arrival),
        p99_delay_beside_ms: beside.samples.latency().p99_ms - alone.samples.latency().p99_ms,
        slow_endpoint_requests: slow_received,
        healthy_endpoint_id: healthy_id,
    };
    say(format!(
        "    alone p50/p99 {:.0}/{:.0} ms; beside a dead and a slow endpoint {:.0}/{:.0} ms ({:+.0} ms at p99); \
         burst {:.0} deliveries/s; raw consumer p50/p99 {:.0}/{:.0} ms",
        results.alone.latency.latency.p50_ms,
        results.alone.latency.latency.p99_ms,
        results.beside.latency.latency.p50_ms,
        results.beside.latency.latency.p99_ms,
        results.p99_delay_beside_ms,
        results.burst.deliveries_per_second,
        results.raw_consumer.latency.p50_ms,
        results.raw_consumer.latency.p99_ms,
    ));
    Ok(results)
}

async fn create_endpoint(
    client: &mut NotificationsServiceClient<Channel>,
    url: &str,
    description: &str,
) -> anyhow::Result<String> {
    let response = client
        .create_endpoint(with_key(
            pb::CreateEndpointRequest {
                url: url.to_owned(),
                event_types: Vec::new(),
                description: format!("benchmark {description} endpoint"),
                rate_limit_per_second: 0,
            },
            &format!("bench-endpoint-{}", uuid::Uuid::new_v4().simple()),
        ))
        .await
        .with_context(|| format!("CreateEndpoint {url}"))?;
    (response.into_inner().endpoint)
        .map(|endpoint| endpoint.endpoint_id)
        .context("CreateEndpoint answered without an endpoint")
}

/// What one phase saw at the healthy endpoint.
#[derive(Debug, Default)]
struct PhaseRun {
    samples: Samples,
    sent: usize,
    delivered: usize,
    duplicates: usize,
    /// Events that became more than one message for the endpoint.
    second_messages: usize,
    /// First event handed to the producer → last delivery.
    span: Duration,
}

impl PhaseRun {
    fn phase(&self, resources: std::collections::BTreeMap<String, crate::procstat::Usage>) -> NotificationsPhase {
        NotificationsPhase {
            events: self.sent,
            delivered: self.delivered,
            duplicates: self.duplicates,
            second_messages: self.second_messages,
            deliveries_per_second: self.delivered as f64 / self.span.as_secs_f64().max(1e-3),
            latency: Measured::from(&self.samples),
            resources,
        }
    }
}

/// Events at `setup.rate` for `setup.duration`, then the wait for their deliveries.
async fn sustained(setup: &Setup<'_>, source: &Source, healthy: &Receiver) -> anyhow::Result<PhaseRun> {
    let interval = Duration::from_secs_f64(1.0 / setup.rate.max(0.1));
    let count = (setup.duration.as_secs_f64() * setup.rate).ceil().max(1.0) as usize;
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for index in 0..count {
        tokio::time::sleep_until((started + interval * index as u32).into()).await;
        let (source, healthy) = (source.clone(), healthy.clone());
        sends.spawn(async move { source.publish(&healthy).await });
    }
    collect(setup, healthy, sends, started).await
}

/// `setup.burst` events handed to the producer at once.
async fn burst(setup: &Setup<'_>, source: &Source, healthy: &Receiver) -> anyhow::Result<PhaseRun> {
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..setup.burst {
        let (source, healthy) = (source.clone(), healthy.clone());
        sends.spawn(async move { source.publish(&healthy).await });
    }
    collect(setup, healthy, sends, started).await
}

async fn collect(
    setup: &Setup<'_>,
    healthy: &Receiver,
    mut sends: tokio::task::JoinSet<anyhow::Result<String>>,
    started: Instant,
) -> anyhow::Result<PhaseRun> {
    let mut ids = Vec::new();
    while let Some(sent) = sends.join_next().await {
        ids.push(sent??);
    }
    let deliveries = healthy.wait_for(&ids, setup.drain_timeout).await;
    let mut run = PhaseRun {
        sent: ids.len(),
        ..PhaseRun::default()
    };
    for id in &ids {
        match deliveries.get(id) {
            Some(delivery) => {
                run.delivered += 1;
                run.duplicates += delivery.copies - 1;
                run.second_messages += usize::from(delivery.messages > 1);
                run.samples
                    .record(delivery.first.saturating_duration_since(delivery.sent));
                run.span = run.span.max(delivery.first.saturating_duration_since(started));
            }
            None => run.samples.error("not delivered within the drain timeout"),
        }
    }
    Ok(run)
}

/// An account in the state the accounts service publishes.
fn account(account_id: &str) -> fintech_proto::accounts::Account {
    fintech_proto::accounts::Account {
        account_id: account_id.to_owned(),
        customer_id: "bench-customer".to_owned(),
        product: fintech_proto::accounts::Product::Current as i32,
        currency: "EUR".to_owned(),
        state: fintech_proto::accounts::AccountState::Active as i32,
        overdraft_limit: 0,
        version: 1,
        opened_at: Some(fintech_proto::time::timestamp(Utc::now())),
        updated_at: Some(fintech_proto::time::timestamp(Utc::now())),
        ..Default::default()
    }
}

/// The benchmark as the accounts service: `accounts.opened` events with their CloudEvents
/// headers, one new account per event.
#[derive(Clone)]
struct Source {
    producer: Arc<EventProducer>,
    topic: String,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Source")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Source {
    fn new(bootstrap: &str, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            producer: Arc::new(EventProducer::new(
                bootstrap,
                "bench-notifications",
                Duration::from_secs(30),
            )?),
            topic: format!("{prefix}{}", topics::ACCOUNTS_OPENED.name),
        })
    }

    /// Publishes one event; tells `healthy` when it was handed over; returns the account id.
    async fn publish(&self, healthy: &Receiver) -> anyhow::Result<String> {
        let account_id = uuid::Uuid::new_v4().to_string();
        let account = account(&account_id);
        let metadata = EventMetadata {
            id: uuid::Uuid::new_v4().to_string(),
            event_type: topics::ACCOUNTS_OPENED.ce_type().to_owned(),
            source: format!("/fintech/{}", topics::ACCOUNTS_OPENED.producer),
            time: Utc::now(),
            subject: Some(account_id.clone()),
            payload_type: fintech_proto::accounts::Account::full_name(),
            trace: TraceHeaders::default(),
        };
        healthy.expect(&account_id);
        self.producer
            .send_event(&self.topic, &account_id, &account.encode_to_vec(), &metadata)
            .await
            .context("publish accounts.opened")?;
        Ok(account_id)
    }
}

/// A delivery of one event at a receiver.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    sent: Instant,
    first: Instant,
    /// Requests that carried it.
    copies: usize,
    /// Distinct `webhook-id`s among them (more than one: the event became two messages).
    messages: usize,
}

#[derive(Debug, Default)]
struct Log {
    /// Account id → when its event was handed to the producer.
    sent: HashMap<String, Instant>,
    /// Account id → its delivery.
    delivered: HashMap<String, Delivery>,
    webhook_ids: HashSet<String>,
    requests: usize,
}

/// A real HTTP/1.1 receiver on 127.0.0.1 that answers 200 after `delay` and records, per event,
/// when it was first fully received and how often.
#[derive(Debug, Clone)]
struct Receiver {
    url: String,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    async fn start(delay: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let log: Arc<Mutex<Log>> = Arc::default();
        let shared = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let log = Arc::clone(&shared);
                tokio::spawn(async move {
                    let Some((webhook_id, body)) = read_request(&mut socket).await else {
                        return;
                    };
                    let at = Instant::now();
                    record(&log, &webhook_id, &body, at);
                    tokio::time::sleep(delay).await;
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Ok(Self { url, log })
    }

    fn expect(&self, account_id: &str) {
        lock(&self.log).sent.insert(account_id.to_owned(), Instant::now());
    }

    fn received(&self) -> usize {
        lock(&self.log).requests
    }

    /// Waits until every one of `ids` was delivered, or `timeout`; returns what was.
    async fn wait_for(&self, ids: &[String], timeout: Duration) -> HashMap<String, Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = {
                let log = lock(&self.log);
                ids.iter().all(|id| log.delivered.contains_key(id))
            };
            if done || Instant::now() >= deadline {
                let log = lock(&self.log);
                return (ids.iter())
                    .filter_map(|id| Some((id.clone(), *log.delivered.get(id)?)))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records a request: the account id of its body's `data`, its `webhook-id`.
fn record(log: &Mutex<Log>, webhook_id: &str, body: &str, at: Instant) {
    let account_id = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json["data"]["accountId"].as_str().map(str::to_owned));
    let mut log = lock(log);
    log.requests += 1;
    let first_copy = log.webhook_ids.insert(webhook_id.to_owned());
    let Some(account_id) = account_id else { return };
    let Some(sent) = log.sent.get(&account_id).copied() else {
        return;
    };
    log.delivered
        .entry(account_id)
        .and_modify(|delivery| {
            delivery.copies += 1;
            delivery.messages += usize::from(first_copy);
        })
        .or_insert(Delivery {
            sent,
            first: at,
            copies: 1,
            messages: 1,
        });
}

/// Reads one request; returns its `webhook-id` and body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let request = fintech_devkit::http::read_request(socket).await?;
    Some((request.header("webhook-id").to_owned(), request.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_matched_to_its_event_and_a_redelivery_counted() {
        let log = Mutex::new(Log::default());
        let sent = Instant::now();
        lock(&log).sent.insert("a-1".to_owned(), sent);
        let body = r#"{"type":"account.opened","timestamp":"2026-12-03T00:00:00Z","data":{"accountId":"a-1"}}"#;
        let at = sent + Duration::from_millis(30);
        record(&log, "msg_1", body, at);
        record(&log, "msg_1", body, at + Duration::from_secs(1));
        record(&log, "msg_2", r#"{"data":{"accountId":"unknown"}}"#, at);
        record(&log, "msg_3", "not json", at);
        let log = lock(&log);
        assert_eq!(log.requests, 4);
        let delivery = log.delivered["a-1"];
        assert_eq!(
            (delivery.copies, delivery.messages),
            (2, 1),
            "the same webhook-id twice is a redelivery"
        );
        assert_eq!(delivery.first.duration_since(delivery.sent), Duration::from_millis(30));
        assert_eq!(log.delivered.len(), 1);
    }
}
