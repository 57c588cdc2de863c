//! One harness for every service: starts it in-process on a free port with a fresh database
//! ([`TestDb`]) and its topics created under a topic prefix on the shared broker, hands out a
//! connected client, and stops it gracefully.
//!
//! What differs between services is passed in: the topics, one function that builds the service's
//! config from the test platform settings ([`platform_config`]), the service's `run` and its client
//! constructor. The per-service modules (`payments`, `tax`, `ledger`, `accounts`) are those pieces
//! plus their helpers.
//!
//! The same config runs a service as a process ([`crate::process`]): [`platform_env`] writes a
//! [`PlatformConfig`] as the environment variables `PlatformConfig::from_env` reads back, and
//! `payments::env` / `tax::env` / `accounts::env` / `ledger::env` add their service's own.

use std::future::Future;
use std::time::Duration;

use fintech_platform::CancellationToken;
use fintech_platform::auth::{AuthConfig, AuthMode};
use fintech_platform::config::PlatformConfig;
use tokio::net::TcpListener;

pub use crate::auth::Channel;
use crate::{TestDb, create_topics, kafka_bootstrap};

/// How long a stopping service may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A service running in-process for one test.
#[derive(Debug)]
pub struct ServiceHarness<C> {
    /// Its database.
    pub db: TestDb,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Topic prefix of this instance (its topics are `<prefix><topic>`).
    pub prefix: String,
    /// A connected client.
    pub client: C,
    /// Names the service in failure messages.
    service: &'static str,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl<C> ServiceHarness<C> {
    /// Creates a fresh database and `topics` under `prefix`, builds the config with `config`
    /// (given the test platform settings on that database, the database and the prefix), runs
    /// `run` on a free port and connects `client` to it.
    pub async fn launch<Config, Fut>(
        service: &'static str,
        prefix: &str,
        topics: &[&str],
        config: impl FnOnce(PlatformConfig, &TestDb, &str) -> Config,
        run: impl FnOnce(Config, TcpListener, CancellationToken) -> Fut,
        client: impl FnOnce(Channel) -> C,
    ) -> Self
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let db = TestDb::empty().await;
        let bootstrap = kafka_bootstrap();
        create_prefixed_topics(&bootstrap, prefix, topics).await;
        let config = config(platform_config(service, &db.url, &bootstrap), &db, prefix);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, listener, shutdown.clone()));
        let client = client(connect(&address).await);
        Self {
            db,
            address,
            prefix: prefix.to_owned(),
            client,
            service,
            shutdown,
            task,
        }
    }

    /// The full name of `topic` under this instance's prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Stops the service gracefully and waits for it; panics unless it returns `Ok` in time.
    pub async fn stop(self) {
        let service = self.service;
        self.shutdown.cancel();
        tokio::time::timeout(STOP_TIMEOUT, self.task)
            .await
            .unwrap_or_else(|_| panic!("{service} stops within {}s", STOP_TIMEOUT.as_secs()))
            .unwrap_or_else(|error| panic!("{service} task: {error}"))
            .unwrap_or_else(|error| panic!("{service} returns Ok: {error:#}"));
    }
}

/// A fresh topic prefix, `test.<uuid>.`.
pub fn unique_prefix() -> String {
    format!("test.{}.", uuid::Uuid::new_v4().simple())
}

/// Creates `<prefix><topic>` for every topic, three partitions each (an existing one is fine).
pub async fn create_prefixed_topics(bootstrap: &str, prefix: &str, topics: &[&str]) {
    let names: Vec<String> = topics.iter().map(|topic| format!("{prefix}{topic}")).collect();
    create_topics(bootstrap, &names.iter().map(String::as_str).collect::<Vec<_>>(), 3).await;
}

/// The settings a test instance runs with: a pool a little larger than the default, the outbox
/// polled every 20 ms so tests do not wait on it, no Redis, no static group membership.
pub fn platform_config(service: &str, database_url: &str, bootstrap: &str) -> PlatformConfig {
    PlatformConfig {
        grpc_listen_addr: "127.0.0.1:0".parse().expect("address"),
        database_url: database_url.to_owned(),
        database_max_connections: 20,
        kafka_bootstrap_servers: bootstrap.to_owned(),
        outbox_poll_interval: Duration::from_millis(20),
        auth: crate::auth::auth_config(),
        ..PlatformConfig::defaults(service, 0)
    }
}

/// `config` as the environment variables `PlatformConfig::from_env` reads, for a service run as a
/// process. An unset option (`REDIS_URL`, `KAFKA_GROUP_INSTANCE_ID`) is left out; the process
/// runner removes inherited values of those (see [`crate::process::ServiceProcess::spawn`]).
pub fn platform_env(config: &PlatformConfig) -> Vec<(&'static str, String)> {
    // Destructured in full so that a new setting does not compile until it is written here too.
    let PlatformConfig {
        service_name: _,
        grpc_listen_addr,
        database_url,
        database_max_connections,
        database_timeouts,
        kafka_bootstrap_servers,
        redis_url,
        kafka_group_instance_id,
        kafka_consumer_lanes,
        kafka_fetch_wait_max,
        kafka_consumer_max_batch,
        grpc_max_message_bytes,
        grpc_max_concurrent_streams,
        grpc_request_timeout,
        outbox_batch_size,
        outbox_poll_interval,
        outbox_gather,
        outbox_wake_on_commit,
        outbox_rounds_in_flight,
        topic_prefix,
        outbox_relays,
        shutdown_grace,
        grpc_tls,
        kafka_properties,
        auth,
        kafka_max_attempts,
        kafka_max_retry,
        outbox_max_attempts,
        outbox_delivery_timeout,
        outbox_retention,
        idempotency_key_ttl,
        inbox_retention,
        kafka_log_retention,
        retention_interval,
        retention_batch,
    } = config;
    let duration = |duration: &Duration| format!("{}ms", duration.as_millis());
    let mut env = vec![
        ("GRPC_LISTEN_ADDR", grpc_listen_addr.to_string()),
        ("DATABASE_URL", database_url.clone()),
        ("DATABASE_MAX_CONNECTIONS", database_max_connections.to_string()),
        (
            "DATABASE_STATEMENT_TIMEOUT_MS",
            database_timeouts.statement.as_millis().to_string(),
        ),
        (
            "DATABASE_LOCK_TIMEOUT_MS",
            database_timeouts.lock.as_millis().to_string(),
        ),
        (
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            database_timeouts.idle_in_transaction.as_millis().to_string(),
        ),
        ("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap_servers.clone()),
        ("KAFKA_CONSUMER_LANES", kafka_consumer_lanes.to_string()),
        ("KAFKA_FETCH_WAIT_MAX_MS", kafka_fetch_wait_max.as_millis().to_string()),
        ("KAFKA_CONSUMER_MAX_BATCH", kafka_consumer_max_batch.to_string()),
        ("GRPC_MAX_MESSAGE_BYTES", grpc_max_message_bytes.to_string()),
        ("GRPC_MAX_CONCURRENT_STREAMS", grpc_max_concurrent_streams.to_string()),
        ("GRPC_REQUEST_TIMEOUT_MS", grpc_request_timeout.as_millis().to_string()),
        ("OUTBOX_BATCH_SIZE", outbox_batch_size.to_string()),
        ("OUTBOX_POLL_INTERVAL_MS", outbox_poll_interval.as_millis().to_string()),
        ("OUTBOX_GATHER_MS", outbox_gather.as_millis().to_string()),
        ("OUTBOX_WAKE_ON_COMMIT", outbox_wake_on_commit.to_string()),
        ("OUTBOX_ROUNDS_IN_FLIGHT", outbox_rounds_in_flight.to_string()),
        ("TOPIC_PREFIX", topic_prefix.clone()),
        ("OUTBOX_RELAYS", outbox_relays.to_string()),
        ("SHUTDOWN_GRACE_MS", shutdown_grace.as_millis().to_string()),
        ("KAFKA_MAX_ATTEMPTS", kafka_max_attempts.to_string()),
        ("KAFKA_MAX_RETRY_SECS", kafka_max_retry.as_secs().to_string()),
        ("OUTBOX_MAX_ATTEMPTS", outbox_max_attempts.to_string()),
        (
            "OUTBOX_DELIVERY_TIMEOUT_MS",
            outbox_delivery_timeout.as_millis().to_string(),
        ),
        ("OUTBOX_RETENTION", duration(outbox_retention)),
        ("IDEMPOTENCY_KEY_TTL", duration(idempotency_key_ttl)),
        ("INBOX_RETENTION", duration(inbox_retention)),
        ("KAFKA_LOG_RETENTION", duration(kafka_log_retention)),
        ("RETENTION_INTERVAL", duration(retention_interval)),
        ("RETENTION_BATCH", retention_batch.to_string()),
    ];
    env.extend(auth_env(auth));
    if let Some(url) = redis_url {
        env.push(("REDIS_URL", url.clone()));
    }
    if let Some(id) = kafka_group_instance_id {
        env.push(("KAFKA_GROUP_INSTANCE_ID", id.clone()));
    }
    if let Some(tls) = grpc_tls {
        env.push(("GRPC_TLS_CERT", tls.cert.display().to_string()));
        env.push(("GRPC_TLS_KEY", tls.key.display().to_string()));
        if let Some(ca) = &tls.client_ca {
            env.push(("GRPC_TLS_CLIENT_CA", ca.display().to_string()));
        }
    }
    // Passed through by name; a test process's own KAFKA_PROPERTY_* reach the child anyway.
    assert!(
        kafka_properties.is_empty(),
        "tests set no KAFKA_PROPERTY_* (they are read from the environment)"
    );
    env
}

/// `auth` as the `AUTH_*` environment variables.
pub fn auth_env(auth: &AuthConfig) -> Vec<(&'static str, String)> {
    let AuthConfig {
        mode,
        jwks,
        issuer,
        audience,
        algorithms,
        leeway,
        open_services,
        jwks_refresh_min,
        jwks_max_age,
    } = auth;
    let mode = match mode {
        AuthMode::Jwt => "jwt",
        AuthMode::Off => "off",
    };
    let algorithms: Vec<String> = algorithms.iter().map(|algorithm| format!("{algorithm:?}")).collect();
    vec![
        ("AUTH_MODE", mode.to_owned()),
        ("AUTH_JWKS", jwks.clone()),
        ("AUTH_ISSUER", issuer.clone()),
        ("AUTH_AUDIENCE", audience.clone()),
        ("AUTH_ALGORITHMS", algorithms.join(",")),
        ("AUTH_LEEWAY_SECS", leeway.as_secs().to_string()),
        (
            "AUTH_OPEN_SERVICES",
            if open_services.is_empty() {
                "none".to_owned()
            } else {
                open_services.join(",")
            },
        ),
        ("AUTH_JWKS_REFRESH_MIN_MS", jwks_refresh_min.as_millis().to_string()),
        ("AUTH_JWKS_MAX_AGE_SECS", jwks_max_age.as_secs().to_string()),
    ]
}

/// A client channel to `address` carrying an operator token with every scope, waiting until
/// the service accepts connections.
pub async fn connect(address: &str) -> Channel {
    crate::auth::with_token(connect_raw(address).await, &crate::auth::operator_token())
}

/// A client channel to `address` carrying `token`.
pub async fn connect_with_token(address: &str, token: &str) -> Channel {
    crate::auth::with_token(connect_raw(address).await, token)
}

/// A plain channel to `address` (no token), waiting until it accepts connections.
pub async fn connect_raw(address: &str) -> tonic::transport::Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("endpoint");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "service at {address} never answered: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
