//! Configuration from environment variables, with defaults that work on a developer machine.
//!
//! Every variable is read once at start-up; an invalid value stops the process with a message that
//! names the variable (`invalid configuration: KAFKA_BOOTSTRAP_SERVERS: must not be empty`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `GRPC_LISTEN_ADDR` | per service (payments `127.0.0.1:50051`, …) | gRPC listen address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/fintech_<service>` | the service's own database |
//! | `DATABASE_MAX_CONNECTIONS` | `16` | pool size. A process holds up to this many connections + 1 per outbox relay (its liveness lock) + 1 more per relay when `OUTBOX_WAKE_ON_COMMIT` (its `LISTEN`): 16 + 2 = 18 with the defaults. Size PostgreSQL's `max_connections` for the sum over every process (README, "Connections to PostgreSQL") |
//! | `DATABASE_STATEMENT_TIMEOUT_MS` | `30000` | `statement_timeout` of every pooled session: longest one statement may run (1-3600000); a request's `grpc-timeout` lowers it for that request's transaction |
//! | `DATABASE_LOCK_TIMEOUT_MS` | `10000` | `lock_timeout`: longest one statement waits for a row or advisory lock (1-3600000; a wait that runs out answers ABORTED) |
//! | `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS` | `60000` | `idle_in_transaction_session_timeout`: longest a session may sit idle in an open transaction before PostgreSQL ends it (1-3600000) |
//! | `KAFKA_BOOTSTRAP_SERVERS` | `127.0.0.1:9092` | Kafka-protocol brokers |
//! | `REDIS_URL` | unset (no fast path) | optional Redis for the idempotency fast path |
//! | `KAFKA_GROUP_INSTANCE_ID` | unset (dynamic membership) | static consumer-group membership: a stable, unique id per instance (e.g. the pod name) so a restarted instance takes its partitions back at once |
//! | `KAFKA_CONSUMER_LANES` | `8` | partitions a consumer handles concurrently (1-64; each partition stays in order) |
//! | `KAFKA_FETCH_WAIT_MAX_MS` | `50` | longest time the broker may hold a consumer's fetch when it has nothing to return (`fetch.wait.max.ms`, 1-10000); lower means lower latency per hop on brokers that hold every fetch that long (Tansu 0.6) and more fetch requests when idle |
//! | `KAFKA_CONSUMER_MAX_BATCH` | `32` | most records already waiting in a lane that are handled together, e.g. in one database transaction (1-1024; 1 = one at a time) |
//! | `GRPC_MAX_MESSAGE_BYTES` | `4194304` | largest accepted and sent gRPC message |
//! | `GRPC_MAX_CONCURRENT_STREAMS` | `128` | concurrent requests (HTTP/2 streams) one client connection may have open (1-10000) |
//! | `GRPC_REQUEST_TIMEOUT_MS` | `30000` | longest a request may run on the server, whatever the client's `grpc-timeout` (100-600000); then `CANCELLED` |
//! | `OUTBOX_BATCH_SIZE` | `256` | rows one relay publishes per round |
//! | `OUTBOX_POLL_INTERVAL_MS` | `100` | wait of the relay after a claim that found nothing |
//! | `OUTBOX_WAKE_ON_COMMIT` | `true` | an idle relay waits for the commit of new outbox rows (`LISTEN fintech_outbox`, one connection per relay outside the pool) or the poll interval, whichever comes first; `false`: the poll alone (ADR 0029) |
//! | `OUTBOX_GATHER_MS` | `0` | wait of the relay after a round that was not full, so that new rows gather into the next one (0-1000; 0 = claim again at once) |
//! | `OUTBOX_ROUNDS_IN_FLIGHT` | `1` | rounds of one relay whose sends may await the broker at once (1-16; each holds a database connection meanwhile; ADR 0010) |
//! | `TOPIC_PREFIX` | empty | prepended to every topic and consumer-group name (tests, shared brokers) |
//! | `OUTBOX_RELAYS` | `1` | relays publishing this instance's outbox (0 = another process does) |
//! | `SHUTDOWN_GRACE_MS` | `10000` | longest drain of in-flight requests on shutdown, and again of the background tasks (100-600000) |
//! | `GRPC_TLS_CERT`, `GRPC_TLS_KEY`, `GRPC_TLS_CLIENT_CA` | unset (plaintext) | TLS and mTLS of the gRPC server ([`crate::tls`]) |
//! | `KAFKA_PROPERTY_<NAME>` | none | librdkafka properties passed through, e.g. `security.protocol`, SASL ([`crate::tls`]) |
//! | `AUTH_MODE` | `jwt` | `jwt`: every RPC outside `AUTH_OPEN_SERVICES` needs a valid bearer token with the method's scope (crate::auth); `off`: nothing is checked (only to measure the cost of verification; logged as a warning) |
//! | `AUTH_JWKS` | `.local/auth/jwks.json` | JSON Web Key Set of the token issuer: a file path or an `https://` URL; read at start-up (the service does not start without a usable key) and again on an unknown `kid` |
//! | `AUTH_ISSUER` | `fintech-local` | required `iss` of tokens |
//! | `AUTH_AUDIENCE` | `fintech-platform` | audience `aud` must contain |
//! | `AUTH_ALGORITHMS` | `ES256,RS256,EdDSA` | allowed `alg`s, comma-separated; `none` and `HS*` are refused (RFC 8725) |
//! | `AUTH_LEEWAY_SECS` | `30` | clock skew tolerated on `exp` and `nbf` (0-300) |
//! | `AUTH_OPEN_SERVICES` | `grpc.health.v1.Health,grpc.reflection.v1.ServerReflection,grpc.reflection.v1alpha.ServerReflection` | gRPC services answered without a token; `none` for no open service |
//! | `AUTH_JWKS_REFRESH_MIN_MS` | `30000` | shortest interval between two fetches of the JWKS (an unknown `kid` triggers one) |
//! | `AUTH_JWKS_MAX_AGE_SECS` | `300` | keys older than this are fetched again (rotation) |
//! | `KAFKA_MAX_ATTEMPTS` | `10` | handler attempts at a transiently failing record (serialization failure, deadlock, timeout) before it is dead-lettered (1-1000; an unreachable database does not count; ADR 0012) |
//! | `KAFKA_MAX_RETRY_SECS` | `120` | longest retrying of a transiently failing record before it is dead-lettered (1-86400) |
//! | `OUTBOX_MAX_ATTEMPTS` | `10` | publishes of an outbox row the broker rejects (too large, invalid topic, …) before the row is parked (1-1000; a broker outage does not count; ADR 0013) |
//! | `OUTBOX_DELIVERY_TIMEOUT_MS` | `30000` | longest wait of a relay's send for the broker's acknowledgement (1000-300000); a claimed row's lease is twice this |
//! | `OUTBOX_RETENTION` | `7d` | published outbox rows are deleted this long after publication (`30s`, `15m`, `24h`, `7d`, …; ADR 0014) |
//! | `IDEMPOTENCY_KEY_TTL` | `7d` | idempotency keys are deleted this long after their command (keep it above every client's retry horizon and the Redis cache TTL of 24 h) |
//! | `INBOX_RETENTION` | `30d` | consumer inbox rows (`processed_events`) are deleted this long after the event was applied; must exceed `KAFKA_LOG_RETENTION` (ADR 0014) |
//! | `KAFKA_LOG_RETENTION` | `7d` | the broker's `retention.ms` of the consumed topics: no record older than this can be delivered again, which is what lets the inbox forget |
//! | `RETENTION_INTERVAL` | `1m` | pause of the retention job between two passes |
//! | `RETENTION_BATCH` | `500` | rows one retention `DELETE` removes (1-100000); small, so it never holds many locks |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset (no export) | OTLP/gRPC collector for traces and metrics (outbox backlog and oldest age, parked rows, consumer lag, retries, dead letters) |
//! | `RUST_LOG` | `info` | log filter |
//! | `LOG_FORMAT` | `text` | `text` or `json` |

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::{AuthConfig, AuthMode};
use crate::error::{Error, Result};

const DAY: u64 = 86_400;

/// Reads `name`, or `default` when it is unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, or `default` when unset; a value that does not parse is an error that
/// names the variable.
pub fn env_parse<T>(name: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    parse_value(name, std::env::var(name).ok(), default)
}

fn parse_value<T>(name: &str, raw: Option<String>, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match raw {
        Some(value) if !value.trim().is_empty() => value.trim().parse().map_err(|error: T::Err| Error::Config {
            variable: name.to_owned(),
            reason: format!("cannot parse {value:?}: {error}"),
        }),
        _ => Ok(default),
    }
}

/// Parses a duration written as a number and a unit: `500ms`, `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|error| format!("{text:?}: {error}"))?;
    let unit_seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h or d)")),
    };
    number
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Reads the duration `name` (see [`parse_duration`]), or `default` when unset.
pub fn env_duration(name: &str, default: Duration) -> Result<Duration> {
    match env_opt(name) {
        None => Ok(default),
        Some(value) => parse_duration(&value).map_err(|reason| Error::Config {
            variable: name.to_owned(),
            reason,
        }),
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(name: &str, value: T, low: T, high: T) -> Result<T> {
    if value < low || value > high {
        return Err(Error::Config {
            variable: name.to_owned(),
            reason: format!("must be between {low} and {high}"),
        });
    }
    Ok(value)
}

/// Reads `name` if it is set to a non-empty value.
pub fn env_opt(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Short service name (`payments`), used as CloudEvents source, consumer group prefix and
    /// OpenTelemetry `service.name`.
    pub service_name: String,
    /// Where the gRPC server listens.
    pub grpc_listen_addr: SocketAddr,
    /// The service's own database.
    pub database_url: String,
    /// PostgreSQL pool size.
    pub database_max_connections: u32,
    /// Server-side limits of every pooled session (statement, lock wait, idle in transaction).
    pub database_timeouts: crate::db::DbTimeouts,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap_servers: String,
    /// Optional Redis for the idempotency fast path.
    pub redis_url: Option<String>,
    /// Static consumer-group membership id of this instance, if any.
    pub kafka_group_instance_id: Option<String>,
    /// Partitions a consumer handles concurrently (each partition stays in order).
    pub kafka_consumer_lanes: usize,
    /// `fetch.wait.max.ms` of the consumers.
    pub kafka_fetch_wait_max: Duration,
    /// Most records a consumer lane hands its handler at once (only records already waiting in
    /// the lane are batched, so a quiet lane never waits to fill a batch).
    pub kafka_consumer_max_batch: usize,
    /// Largest gRPC message accepted or sent.
    pub grpc_max_message_bytes: usize,
    /// Concurrent streams one connection may open (bounded work per client).
    pub grpc_max_concurrent_streams: u32,
    /// Longest a request runs on the server.
    pub grpc_request_timeout: Duration,
    /// Outbox relay batch size.
    pub outbox_batch_size: i64,
    /// Outbox relay idle poll interval.
    pub outbox_poll_interval: Duration,
    /// Outbox relay wait after a round that was not full.
    pub outbox_gather: Duration,
    /// Idle relays wake on the commit of new rows (LISTEN/NOTIFY), not only on the poll.
    pub outbox_wake_on_commit: bool,
    /// Outbox relay rounds awaiting acknowledgements at once.
    pub outbox_rounds_in_flight: usize,
    /// Prefix of every topic and consumer-group name (isolated copies of the system on one broker).
    pub topic_prefix: String,
    /// Outbox relays this process runs (0 = another process publishes this database's outbox).
    pub outbox_relays: usize,
    /// Longest drain of in-flight requests on shutdown, and again of the background tasks.
    pub shutdown_grace: Duration,
    /// TLS of the gRPC server (`None`: plaintext, for loopback and meshes that add mTLS).
    pub grpc_tls: Option<crate::tls::GrpcTls>,
    /// librdkafka properties from `KAFKA_PROPERTY_*` (TLS, SASL); every client applies them.
    pub kafka_properties: crate::tls::KafkaProperties,
    /// Who may call which RPC (`AUTH_*`).
    pub auth: AuthConfig,
    /// Handler attempts at a transiently failing record before it is dead-lettered.
    pub kafka_max_attempts: u32,
    /// Longest retrying of a transiently failing record before it is dead-lettered.
    pub kafka_max_retry: Duration,
    /// Rejected publishes of an outbox row before it is parked.
    pub outbox_max_attempts: i32,
    /// Longest wait of a relay's send for the broker.
    pub outbox_delivery_timeout: Duration,
    /// Age after publication at which outbox rows are deleted.
    pub outbox_retention: Duration,
    /// Age at which idempotency keys are deleted.
    pub idempotency_key_ttl: Duration,
    /// Age at which consumer inbox rows are deleted (longer than `kafka_log_retention`).
    pub inbox_retention: Duration,
    /// The broker's retention of the consumed topics.
    pub kafka_log_retention: Duration,
    /// Pause of the retention job between passes.
    pub retention_interval: Duration,
    /// Rows one retention `DELETE` removes.
    pub retention_batch: i64,
}

impl PlatformConfig {
    /// The documented defaults, without reading the environment (tests start from these).
    pub fn defaults(service_name: &str, default_port: u16) -> Self {
        Self {
            service_name: service_name.to_owned(),
            grpc_listen_addr: SocketAddr::from(([127, 0, 0, 1], default_port)),
            database_url: format!("postgres://postgres@127.0.0.1:5432/fintech_{service_name}"),
            database_max_connections: 16,
            database_timeouts: crate::db::DbTimeouts::default(),
            kafka_bootstrap_servers: "127.0.0.1:9092".to_owned(),
            redis_url: None,
            kafka_group_instance_id: None,
            kafka_consumer_lanes: crate::kafka::consumer::DEFAULT_LANES,
            kafka_fetch_wait_max: crate::kafka::consumer::DEFAULT_FETCH_WAIT_MAX,
            kafka_consumer_max_batch: crate::kafka::consumer::DEFAULT_MAX_BATCH,
            grpc_max_message_bytes: 4 * 1024 * 1024,
            grpc_max_concurrent_streams: 128,
            grpc_request_timeout: Duration::from_secs(30),
            outbox_batch_size: 256,
            outbox_poll_interval: Duration::from_millis(100),
            outbox_gather: Duration::ZERO,
            outbox_wake_on_commit: true,
            outbox_rounds_in_flight: 1,
            topic_prefix: String::new(),
            outbox_relays: 1,
            shutdown_grace: Duration::from_secs(10),
            grpc_tls: None,
            kafka_properties: crate::tls::KafkaProperties::default(),
            auth: AuthConfig::defaults(),
            kafka_max_attempts: crate::kafka::consumer::DEFAULT_MAX_ATTEMPTS,
            kafka_max_retry: crate::kafka::consumer::DEFAULT_MAX_RETRY,
            outbox_max_attempts: crate::outbox::DEFAULT_MAX_ATTEMPTS,
            outbox_delivery_timeout: crate::outbox::RELAY_DELIVERY_TIMEOUT,
            outbox_retention: Duration::from_secs(7 * DAY),
            idempotency_key_ttl: Duration::from_secs(7 * DAY),
            inbox_retention: Duration::from_secs(30 * DAY),
            kafka_log_retention: Duration::from_secs(7 * DAY),
            retention_interval: Duration::from_secs(60),
            retention_batch: 500,
        }
    }

    /// The full name of `topic` (`<TOPIC_PREFIX><topic>`).
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// Reads the shared settings from the environment, with `default_port` as the gRPC port.
    pub fn from_env(service_name: &str, default_port: u16) -> Result<Self> {
        let defaults = Self::defaults(service_name, default_port);
        let grpc_listen_addr = env_parse("GRPC_LISTEN_ADDR", defaults.grpc_listen_addr)?;
        let database_url = env_or("DATABASE_URL", &defaults.database_url);
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(Error::Config {
                variable: "DATABASE_URL".to_owned(),
                reason: "must be a postgres:// URL".to_owned(),
            });
        }
        let kafka_bootstrap_servers = env_or("KAFKA_BOOTSTRAP_SERVERS", &defaults.kafka_bootstrap_servers);
        let database_max_connections = env_parse("DATABASE_MAX_CONNECTIONS", defaults.database_max_connections)?;
        if database_max_connections == 0 {
            return Err(Error::Config {
                variable: "DATABASE_MAX_CONNECTIONS".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        let timeout = |variable: &str, default: Duration| -> Result<Duration> {
            let millis = env_parse(variable, default.as_millis() as u64)?;
            if !(1..=3_600_000).contains(&millis) {
                return Err(Error::Config {
                    variable: variable.to_owned(),
                    reason: "must be between 1 and 3600000 (0 would mean no limit)".to_owned(),
                });
            }
            Ok(Duration::from_millis(millis))
        };
        let database_timeouts = crate::db::DbTimeouts {
            statement: timeout("DATABASE_STATEMENT_TIMEOUT_MS", defaults.database_timeouts.statement)?,
            lock: timeout("DATABASE_LOCK_TIMEOUT_MS", defaults.database_timeouts.lock)?,
            idle_in_transaction: timeout(
                "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                defaults.database_timeouts.idle_in_transaction,
            )?,
        };
        let grpc_max_message_bytes = env_parse("GRPC_MAX_MESSAGE_BYTES", defaults.grpc_max_message_bytes)?;
        let grpc_max_concurrent_streams =
            env_parse("GRPC_MAX_CONCURRENT_STREAMS", defaults.grpc_max_concurrent_streams)?;
        if !(1..=10_000).contains(&grpc_max_concurrent_streams) {
            return Err(config_error(
                "GRPC_MAX_CONCURRENT_STREAMS",
                "must be between 1 and 10000",
            ));
        }
        let grpc_request_timeout_ms = env_parse(
            "GRPC_REQUEST_TIMEOUT_MS",
            defaults.grpc_request_timeout.as_millis() as u64,
        )?;
        if !(100..=600_000).contains(&grpc_request_timeout_ms) {
            return Err(config_error(
                "GRPC_REQUEST_TIMEOUT_MS",
                "must be between 100 and 600000",
            ));
        }
        let outbox_batch_size = env_parse("OUTBOX_BATCH_SIZE", defaults.outbox_batch_size)?;
        if !(1..=10_000).contains(&outbox_batch_size) {
            return Err(Error::Config {
                variable: "OUTBOX_BATCH_SIZE".to_owned(),
                reason: "must be between 1 and 10000".to_owned(),
            });
        }
        let outbox_poll_interval = Duration::from_millis(env_parse(
            "OUTBOX_POLL_INTERVAL_MS",
            defaults.outbox_poll_interval.as_millis() as u64,
        )?);
        let outbox_gather_ms = env_parse("OUTBOX_GATHER_MS", 0u64)?;
        if outbox_gather_ms > 1000 {
            return Err(Error::Config {
                variable: "OUTBOX_GATHER_MS".to_owned(),
                reason: "must be between 0 and 1000".to_owned(),
            });
        }
        let outbox_rounds_in_flight = env_parse("OUTBOX_ROUNDS_IN_FLIGHT", defaults.outbox_rounds_in_flight)?;
        if !(1..=16).contains(&outbox_rounds_in_flight) {
            return Err(Error::Config {
                variable: "OUTBOX_ROUNDS_IN_FLIGHT".to_owned(),
                reason: "must be between 1 and 16".to_owned(),
            });
        }
        let kafka_consumer_lanes = env_parse("KAFKA_CONSUMER_LANES", defaults.kafka_consumer_lanes)?;
        if !(1..=64).contains(&kafka_consumer_lanes) {
            return Err(Error::Config {
                variable: "KAFKA_CONSUMER_LANES".to_owned(),
                reason: "must be between 1 and 64".to_owned(),
            });
        }
        let kafka_fetch_wait_max_ms = env_parse(
            "KAFKA_FETCH_WAIT_MAX_MS",
            defaults.kafka_fetch_wait_max.as_millis() as u64,
        )?;
        if !(1..=10_000).contains(&kafka_fetch_wait_max_ms) {
            return Err(Error::Config {
                variable: "KAFKA_FETCH_WAIT_MAX_MS".to_owned(),
                reason: "must be between 1 and 10000".to_owned(),
            });
        }
        let kafka_consumer_max_batch = env_parse("KAFKA_CONSUMER_MAX_BATCH", defaults.kafka_consumer_max_batch)?;
        if !(1..=1024).contains(&kafka_consumer_max_batch) {
            return Err(Error::Config {
                variable: "KAFKA_CONSUMER_MAX_BATCH".to_owned(),
                reason: "must be between 1 and 1024".to_owned(),
            });
        }
        let shutdown_grace_ms = env_parse("SHUTDOWN_GRACE_MS", defaults.shutdown_grace.as_millis() as u64)?;
        if !(100..=600_000).contains(&shutdown_grace_ms) {
            return Err(Error::Config {
                variable: "SHUTDOWN_GRACE_MS".to_owned(),
                reason: "must be between 100 and 600000".to_owned(),
            });
        }
        let kafka_max_attempts = in_range(
            "KAFKA_MAX_ATTEMPTS",
            env_parse("KAFKA_MAX_ATTEMPTS", defaults.kafka_max_attempts)?,
            1,
            1000,
        )?;
        let kafka_max_retry_secs = in_range(
            "KAFKA_MAX_RETRY_SECS",
            env_parse("KAFKA_MAX_RETRY_SECS", defaults.kafka_max_retry.as_secs())?,
            1,
            86_400,
        )?;
        let outbox_max_attempts = in_range(
            "OUTBOX_MAX_ATTEMPTS",
            env_parse("OUTBOX_MAX_ATTEMPTS", defaults.outbox_max_attempts)?,
            1,
            1000,
        )?;
        let outbox_delivery_timeout_ms = in_range(
            "OUTBOX_DELIVERY_TIMEOUT_MS",
            env_parse(
                "OUTBOX_DELIVERY_TIMEOUT_MS",
                defaults.outbox_delivery_timeout.as_millis() as u64,
            )?,
            1000,
            300_000,
        )?;
        let inbox_retention = env_duration("INBOX_RETENTION", defaults.inbox_retention)?;
        let kafka_log_retention = env_duration("KAFKA_LOG_RETENTION", defaults.kafka_log_retention)?;
        if inbox_retention <= kafka_log_retention {
            return Err(Error::Config {
                variable: "INBOX_RETENTION".to_owned(),
                reason: format!(
                    "must exceed KAFKA_LOG_RETENTION ({kafka_log_retention:?}), or a redelivered event could be applied twice"
                ),
            });
        }
        let retention_batch = in_range(
            "RETENTION_BATCH",
            env_parse("RETENTION_BATCH", defaults.retention_batch)?,
            1,
            100_000,
        )?;
        Ok(Self {
            kafka_max_attempts,
            kafka_max_retry: Duration::from_secs(kafka_max_retry_secs),
            outbox_max_attempts,
            outbox_delivery_timeout: Duration::from_millis(outbox_delivery_timeout_ms),
            outbox_retention: env_duration("OUTBOX_RETENTION", defaults.outbox_retention)?,
            idempotency_key_ttl: env_duration("IDEMPOTENCY_KEY_TTL", defaults.idempotency_key_ttl)?,
            inbox_retention,
            kafka_log_retention,
            retention_interval: env_duration("RETENTION_INTERVAL", defaults.retention_interval)?,
            retention_batch,
            service_name: service_name.to_owned(),
            grpc_listen_addr,
            database_url,
            database_max_connections,
            database_timeouts,
            kafka_bootstrap_servers,
            redis_url: env_opt("REDIS_URL"),
            kafka_group_instance_id: env_opt("KAFKA_GROUP_INSTANCE_ID"),
            kafka_consumer_lanes,
            kafka_consumer_max_batch,
            kafka_fetch_wait_max: Duration::from_millis(kafka_fetch_wait_max_ms),
            grpc_max_message_bytes,
            grpc_max_concurrent_streams,
            grpc_request_timeout: Duration::from_millis(grpc_request_timeout_ms),
            outbox_batch_size,
            outbox_poll_interval,
            outbox_gather: Duration::from_millis(outbox_gather_ms),
            outbox_wake_on_commit: env_parse("OUTBOX_WAKE_ON_COMMIT", defaults.outbox_wake_on_commit)?,
            outbox_rounds_in_flight,
            topic_prefix: env_or("TOPIC_PREFIX", &defaults.topic_prefix),
            outbox_relays: env_parse("OUTBOX_RELAYS", defaults.outbox_relays)?,
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
            grpc_tls: crate::tls::GrpcTls::from_env()?,
            kafka_properties: crate::tls::KafkaProperties::from_env()?,
            auth: auth_from_env(defaults.auth)?,
        })
    }
}

fn config_error(variable: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        variable: variable.to_owned(),
        reason: reason.into(),
    }
}

/// The `AUTH_*` settings on top of `defaults`.
fn auth_from_env(defaults: AuthConfig) -> Result<AuthConfig> {
    let mode = match env_or("AUTH_MODE", "jwt").to_ascii_lowercase().as_str() {
        "jwt" => AuthMode::Jwt,
        "off" => AuthMode::Off,
        other => {
            return Err(config_error(
                "AUTH_MODE",
                format!("must be jwt or off, got {:?}", crate::auth::short(other)),
            ));
        }
    };
    let algorithms = match env_opt("AUTH_ALGORITHMS") {
        None => defaults.algorithms,
        Some(list) => list
            .split(',')
            .filter(|name| !name.trim().is_empty())
            .map(crate::auth::parse_algorithm)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|reason| config_error("AUTH_ALGORITHMS", reason))?,
    };
    if algorithms.is_empty() {
        return Err(config_error("AUTH_ALGORITHMS", "must name at least one algorithm"));
    }
    let leeway_secs = env_parse("AUTH_LEEWAY_SECS", defaults.leeway.as_secs())?;
    if leeway_secs > 300 {
        return Err(config_error("AUTH_LEEWAY_SECS", "must be between 0 and 300"));
    }
    let open_services = match env_opt("AUTH_OPEN_SERVICES") {
        None => defaults.open_services,
        Some(list) if list.eq_ignore_ascii_case("none") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let issuer = env_or("AUTH_ISSUER", &defaults.issuer);
    let audience = env_or("AUTH_AUDIENCE", &defaults.audience);
    Ok(AuthConfig {
        mode,
        jwks: env_or("AUTH_JWKS", &defaults.jwks),
        issuer,
        audience,
        algorithms,
        leeway: Duration::from_secs(leeway_secs),
        open_services,
        jwks_refresh_min: Duration::from_millis(env_parse(
            "AUTH_JWKS_REFRESH_MIN_MS",
            defaults.jwks_refresh_min.as_millis() as u64,
        )?),
        jwks_max_age: Duration::from_secs(env_parse("AUTH_JWKS_MAX_AGE_SECS", defaults.jwks_max_age.as_secs())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_does_not_parse_names_its_variable() {
        let error = parse_value("DATABASE_MAX_CONNECTIONS", Some("many".to_owned()), 16u32).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("DATABASE_MAX_CONNECTIONS"), "{message}");
        assert!(message.contains("many"), "{message}");
    }

    #[test]
    fn a_set_value_is_parsed_and_trimmed() {
        assert_eq!(parse_value("X", Some(" 42 ".to_owned()), 16u32).unwrap(), 42);
        assert_eq!(parse_value("X", Some(String::new()), 16u32).unwrap(), 16);
    }

    #[test]
    fn durations_have_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration(" 7d "), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("7").unwrap_err().contains("no unit"));
        assert!(parse_duration("7w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn the_defaults_keep_the_inbox_longer_than_the_log() {
        let defaults = PlatformConfig::defaults("x", 1);
        assert!(defaults.inbox_retention > defaults.kafka_log_retention);
    }

    #[test]
    fn unset_variables_fall_back_to_defaults() {
        assert_eq!(env_or("FINTECH_TEST_SURELY_UNSET_VARIABLE", "fallback"), "fallback");
        assert_eq!(env_parse("FINTECH_TEST_SURELY_UNSET_VARIABLE", 7u16).unwrap(), 7);
    }
}
