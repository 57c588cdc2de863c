//! Runs the notifications service in-process on a free port with its own database and topics,
//! plays the platform's producers (source events on the prefixed topics), and provides real HTTP
//! receivers on loopback: a scriptable one ([`Receiver`], answers as the test says and records
//! every request) and the independent verifier (`deploy/local/webhook-receiver`, the official
//! Python `standardwebhooks` library, [`PythonReceiver`]).

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use fintech_notifications::domain::ssrf::{Network, SsrfPolicy};
use fintech_notifications::{Notifications, NotificationsConfig};
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::{EventMetadata, EventProducer};
use fintech_platform::kit::Service as _;
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::notifications as pb;
use fintech_proto::notifications::notifications_service_client::NotificationsServiceClient;
use fintech_proto::topics::Topic;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use crate::service::{Channel, ServiceHarness, platform_env, unique_prefix};
use crate::{TestDb, kafka_bootstrap, repo_root};

/// A running notifications service.
pub type NotificationsHarness = ServiceHarness<NotificationsServiceClient<Channel>>;

/// Every topic notifications reads and writes.
fn topics() -> Vec<&'static str> {
    fintech_notifications::sources::input_topics()
        .into_iter()
        .chain(fintech_notifications::sources::OUTPUT_TOPICS)
        .collect()
}

/// The test schedule: the eight attempts, scaled down to 300 ms apart.
pub fn scaled_schedule() -> Vec<Duration> {
    let mut schedule = vec![Duration::ZERO];
    schedule.extend(std::iter::repeat_n(Duration::from_millis(300), 7));
    schedule
}

/// Notifications' settings in a test: the topics of `prefix`, plain http and loopback allowed
/// (the receivers run on 127.0.0.1 and ::1), the scaled schedule without jitter, the queue
/// polled every 20 ms.
pub fn config(platform: PlatformConfig, _db: &TestDb, prefix: &str) -> NotificationsConfig {
    NotificationsConfig {
        schedule: scaled_schedule(),
        jitter_percent: 0,
        lease: Duration::from_secs(20),
        ssrf: loopback_allowed(),
        poll_interval: Duration::from_millis(20),
        ..Notifications::config(PlatformConfig {
            topic_prefix: prefix.to_owned(),
            ..platform
        })
    }
}

/// http and the loopback networks allowed.
pub fn loopback_allowed() -> SsrfPolicy {
    SsrfPolicy {
        allow_http: true,
        allowed: vec![
            Network::parse("127.0.0.0/8").expect("cidr"),
            Network::parse("::1/128").expect("cidr"),
        ],
    }
}

/// `config` as the environment of a notifications process (see [`crate::process`]).
pub fn env(config: &NotificationsConfig) -> Vec<(&'static str, String)> {
    let ms = |duration: &Duration| format!("{}ms", duration.as_millis());
    let mut env = platform_env(&config.platform);
    env.push((
        "NOTIFICATIONS_RETRY_SCHEDULE",
        config.schedule.iter().map(ms).collect::<Vec<_>>().join(","),
    ));
    env.push(("NOTIFICATIONS_RETRY_JITTER_PERCENT", config.jitter_percent.to_string()));
    env.push(("NOTIFICATIONS_ATTEMPT_TIMEOUT", ms(&config.attempt_timeout)));
    env.push(("NOTIFICATIONS_LEASE", ms(&config.lease)));
    env.push(("NOTIFICATIONS_DISABLE_AFTER", ms(&config.disable_after)));
    env.push(("NOTIFICATIONS_ROTATION_OVERLAP", ms(&config.rotation_overlap)));
    env.push(("NOTIFICATIONS_ALLOW_HTTP", config.ssrf.allow_http.to_string()));
    env.push(("NOTIFICATIONS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128".to_owned()));
    env.push(("NOTIFICATIONS_WORKERS", config.workers.to_string()));
    env.push(("NOTIFICATIONS_PER_ENDPOINT", config.per_endpoint.to_string()));
    env.push(("NOTIFICATIONS_POLL_INTERVAL", ms(&config.poll_interval)));
    env
}

impl NotificationsHarness {
    /// Starts notifications with test defaults.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts notifications after `configure` adjusted its settings; returns once it answers.
    pub async fn start_with(configure: impl FnOnce(&mut NotificationsConfig)) -> Self {
        let harness = Self::launch(
            "notifications",
            &unique_prefix(),
            &topics(),
            |platform, db, prefix| {
                let mut config = config(platform, db, prefix);
                configure(&mut config);
                config
            },
            Notifications::run,
            NotificationsServiceClient::new,
        )
        .await;
        harness.wait_until_up().await;
        harness
    }

    /// Waits until the service answers (so its migrations have run).
    pub async fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = self
                .client
                .clone()
                .list_endpoints(pb::ListEndpointsRequest::default())
                .await;
            match answer {
                Ok(_) => return,
                Err(status) => {
                    assert!(Instant::now() < deadline, "notifications never answered: {status:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Creates an endpoint for `url` and `types`; returns its id and secret.
    pub async fn endpoint(&self, url: &str, types: &[&str]) -> (String, String) {
        let created = self
            .client
            .clone()
            .create_endpoint(pb::CreateEndpointRequest {
                url: url.to_owned(),
                event_types: types.iter().map(|kind| (*kind).to_owned()).collect(),
                description: "test".to_owned(),
                rate_limit_per_second: 0,
            })
            .await
            .expect("create endpoint")
            .into_inner();
        let endpoint = created.endpoint.expect("endpoint");
        (endpoint.endpoint_id, created.secret)
    }

    /// The messages of an endpoint (newest first, up to 500).
    pub async fn messages(&self, endpoint_id: &str) -> Vec<pb::Message> {
        self.client
            .clone()
            .list_messages(pb::ListMessagesRequest {
                endpoint_id: endpoint_id.to_owned(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .expect("list messages")
            .into_inner()
            .messages
    }

    /// The attempts of a message (newest first).
    pub async fn attempts(&self, message_id: &str) -> Vec<pb::Attempt> {
        self.client
            .clone()
            .list_attempts(pb::ListAttemptsRequest {
                message_id: message_id.to_owned(),
                endpoint_id: String::new(),
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .expect("list attempts")
            .into_inner()
            .attempts
    }

    /// An endpoint as listed.
    pub async fn endpoint_state(&self, endpoint_id: &str) -> pb::Endpoint {
        self.client
            .clone()
            .list_endpoints(pb::ListEndpointsRequest {
                page_size: 500,
                page_token: String::new(),
            })
            .await
            .expect("list endpoints")
            .into_inner()
            .endpoints
            .into_iter()
            .find(|endpoint| endpoint.endpoint_id == endpoint_id)
            .expect("endpoint listed")
    }
}

/// Publishes source events on the topics of a prefix, as the platform's producers do.
#[derive(Debug)]
pub struct Platform {
    producer: EventProducer,
    prefix: String,
}

impl Platform {
    /// A producer on the topics of `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            producer: EventProducer::new(&kafka_bootstrap(), "test-platform", Duration::from_secs(20))
                .expect("producer"),
            prefix: prefix.to_owned(),
        }
    }

    /// Publishes `payload` on `topic` keyed by `key`; returns the CloudEvents id.
    pub async fn publish<M: prost::Name>(&self, topic: &Topic, key: &str, payload: &M) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let metadata = EventMetadata {
            id: id.clone(),
            event_type: topic.ce_type().to_owned(),
            source: format!("/fintech/{}", topic.producer),
            time: Utc::now(),
            subject: Some(key.to_owned()),
            payload_type: M::full_name(),
            trace: TraceHeaders::default(),
        };
        self.producer
            .send_event(
                &format!("{}{}", self.prefix, topic.name),
                key,
                &payload.encode_to_vec(),
                &metadata,
            )
            .await
            .expect("produce");
        id
    }

    /// Publishes the same record (same CloudEvents id) again: a redelivery.
    pub async fn republish<M: prost::Name>(&self, topic: &Topic, key: &str, payload: &M, id: &str) {
        let metadata = EventMetadata {
            id: id.to_owned(),
            event_type: topic.ce_type().to_owned(),
            source: format!("/fintech/{}", topic.producer),
            time: Utc::now(),
            subject: Some(key.to_owned()),
            payload_type: M::full_name(),
            trace: TraceHeaders::default(),
        };
        self.producer
            .send_event(
                &format!("{}{}", self.prefix, topic.name),
                key,
                &payload.encode_to_vec(),
                &metadata,
            )
            .await
            .expect("produce");
    }
}

/// An account in the state accounts publishes.
pub fn account(account_id: &str) -> fintech_proto::accounts::Account {
    fintech_proto::accounts::Account {
        account_id: account_id.to_owned(),
        customer_id: "customer-1".to_owned(),
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

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived (fully read).
    pub at: Instant,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: String,
}

impl Received {
    /// A header.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// How a [`Receiver`] answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// `status` at once.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// A real HTTP/1.1 server on 127.0.0.1 answering the n-th request (0-based) as `script` says and
/// recording every request.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Receiver")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// Starts a receiver.
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve(script, true).await
    }

    /// Starts a receiver that records every request as it arrives but answers none (200) until
    /// [`Receiver::release`]: an endpoint whose attempts stay in flight as long as the test wants.
    pub async fn holding() -> Self {
        Self::serve(|_| Reply::status(200), false).await
    }

    /// Lets a [`Receiver::holding`] receiver answer what it holds and everything after.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn serve(script: impl Fn(usize) -> Reply + Send + Sync + 'static, open: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answered: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let gate = Arc::new(tokio::sync::watch::Sender::new(open));
        let script: Script = Arc::new(script);
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, answers, opened) = (received.clone(), answered.clone(), gate.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (log, script, counter, answers) = (log.clone(), script.clone(), counter.clone(), answers.clone());
                let mut opened = opened.subscribe();
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let index = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    log.lock().expect("log").push(request);
                    let reply = script(index);
                    tokio::time::sleep(reply.delay).await;
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let mut answer = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: 2\r\nconnection: close\r\n",
                        reply.status
                    );
                    for (name, value) in &reply.headers {
                        answer.push_str(&format!("{name}: {value}\r\n"));
                    }
                    answer.push_str("\r\nok");
                    if socket.write_all(answer.as_bytes()).await.is_ok() {
                        answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            url,
            received,
            answered,
            gate,
        }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("log").clone()
    }

    /// Waits until `count` requests arrived (or panics after `timeout`).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} got {} requests, expected {count}",
                self.url,
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Received> {
    let request = fintech_devkit::http::read_request(socket).await?;
    Some(Received {
        at: Instant::now(),
        headers: request.headers,
        body: request.body,
    })
}

/// The independent verifier: `deploy/local/webhook-receiver` (Python, the official
/// `standardwebhooks` library) with some secrets, logging every delivery as a JSON line.
#[derive(Debug)]
pub struct PythonReceiver {
    /// `http://127.0.0.1:<port>/`.
    pub url: String,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PythonReceiver {
    /// Starts the receiver with `secrets`.
    pub fn start(secrets: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("deliveries.jsonl");
        let mut command = Command::new(crate::venv_tool("python"));
        command
            .arg(repo_root().join("deploy/local/webhook_receiver.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for secret in secrets {
            command.args(["--secret", secret]);
        }
        let mut child = command
            .spawn()
            .expect("python receiver starts (.tools/venv with standardwebhooks)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().expect("a first line").expect("readable");
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned()
            + "/";
        // Keep draining stdout so the receiver never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            url,
            log,
            child,
            _dir: dir,
        }
    }

    /// Every delivery it logged.
    pub fn deliveries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    /// Waits until `count` deliveries were logged.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let deliveries = self.deliveries();
            if deliveries.len() >= count {
                return deliveries;
            }
            assert!(
                Instant::now() < deadline,
                "the python receiver logged {} deliveries, expected {count}",
                deliveries.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs `body` with the given webhook headers to the receiver; returns the status.
    pub async fn post(&self, headers: &[(&str, &str)], body: &str) -> u16 {
        let client = reqwest::Client::new();
        let mut request = client.post(&self.url).body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .send()
            .await
            .expect("post to the python receiver")
            .status()
            .as_u16()
    }
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
