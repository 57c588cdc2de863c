//! Configuration from environment variables, with defaults that work on a developer machine.
//!
//! Every variable is read once at start-up; an invalid value stops the process with a message that
//! names the variable (`invalid configuration: KAFKA_BOOTSTRAP_SERVERS: must not be empty`).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `GRPC_LISTEN_ADDR` | per service (payments `127.0.0.1:50051`, …) | gRPC listen address |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/fintech_<service>` | the service's own database |
//! | `DATABASE_MAX_CONNECTIONS` | `16` | pool size |
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
//! | `OUTBOX_GATHER_MS` | `0` | wait of the relay after a round that was not full, so that new rows gather into the next one (0-1000; 0 = claim again at once) |
//! | `OUTBOX_ROUNDS_IN_FLIGHT` | `1` | rounds of one relay whose sends may await the broker at once (1-16; each holds a database connection meanwhile; ADR 0010) |
//! | `TOPIC_PREFIX` | empty | prepended to every topic and consumer-group name (tests, shared brokers) |
//! | `OUTBOX_RELAYS` | `1` | relays publishing this instance's outbox (0 = another process does) |
//! | `SHUTDOWN_GRACE_MS` | `10000` | longest drain of in-flight requests on shutdown, and again of the background tasks (100-600000) |
//! | `AUTH_MODE` | `jwt` | `jwt`: every RPC outside `AUTH_OPEN_SERVICES` needs a valid bearer token with the method's scope (crate::auth); `off`: nothing is checked (only to measure the cost of verification; logged as a warning) |
//! | `AUTH_JWKS` | `.local/auth/jwks.json` | JSON Web Key Set of the token issuer: a file path or an `https://` URL; read at start-up (the service does not start without a usable key) and again on an unknown `kid` |
//! | `AUTH_ISSUER` | `fintech-local` | required `iss` of tokens |
//! | `AUTH_AUDIENCE` | `fintech-platform` | audience `aud` must contain |
//! | `AUTH_ALGORITHMS` | `ES256,RS256,EdDSA` | allowed `alg`s, comma-separated; `none` and `HS*` are refused (RFC 8725) |
//! | `AUTH_LEEWAY_SECS` | `30` | clock skew tolerated on `exp` and `nbf` (0-300) |
//! | `AUTH_OPEN_SERVICES` | `grpc.health.v1.Health,grpc.reflection.v1.ServerReflection,grpc.reflection.v1alpha.ServerReflection` | gRPC services answered without a token; `none` for no open service |
//! | `AUTH_JWKS_REFRESH_MIN_MS` | `30000` | shortest interval between two fetches of the JWKS (an unknown `kid` triggers one) |
//! | `AUTH_JWKS_MAX_AGE_SECS` | `300` | keys older than this are fetched again (rotation) |
//! | `GRPC_TLS_CERT`, `GRPC_TLS_KEY`, `GRPC_TLS_CLIENT_CA` | unset (plaintext) | TLS and mTLS of the gRPC server ([`crate::tls`]) |
//! | `KAFKA_PROPERTY_<NAME>` | none | librdkafka properties passed through, e.g. `security.protocol`, SASL ([`crate::tls`]) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset (no export) | OTLP/gRPC collector for traces |
//! | `RUST_LOG` | `info` | log filter |
//! | `LOG_FORMAT` | `text` | `text` or `json` |

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::auth::{AuthConfig, AuthMode};
use crate::error::{Error, Result};

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
    /// Outbox relay rounds awaiting acknowledgements at once.
    pub outbox_rounds_in_flight: usize,
    /// Prefix of every topic and consumer-group name (isolated copies of the system on one broker).
    pub topic_prefix: String,
    /// Outbox relays this process runs (0 = another process publishes this database's outbox).
    pub outbox_relays: usize,
    /// Longest drain of in-flight requests on shutdown, and again of the background tasks.
    pub shutdown_grace: Duration,
    /// Who may call which RPC (`AUTH_*`).
    pub auth: AuthConfig,
    /// TLS of the gRPC server (`None`: plaintext, for loopback and meshes that add mTLS).
    pub grpc_tls: Option<crate::tls::GrpcTls>,
    /// librdkafka properties from `KAFKA_PROPERTY_*` (TLS, SASL); every client applies them.
    pub kafka_properties: crate::tls::KafkaProperties,
}

impl PlatformConfig {
    /// The documented defaults, without reading the environment (tests start from these).
    pub fn defaults(service_name: &str, default_port: u16) -> Self {
        Self {
            service_name: service_name.to_owned(),
            grpc_listen_addr: SocketAddr::from(([127, 0, 0, 1], default_port)),
            database_url: format!("postgres://postgres@127.0.0.1:5432/fintech_{service_name}"),
            database_max_connections: 16,
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
            outbox_rounds_in_flight: 1,
            topic_prefix: String::new(),
            outbox_relays: 1,
            shutdown_grace: Duration::from_secs(10),
            auth: AuthConfig::defaults(),
            grpc_tls: None,
            kafka_properties: crate::tls::KafkaProperties::default(),
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
        Ok(Self {
            service_name: service_name.to_owned(),
            grpc_listen_addr,
            database_url,
            database_max_connections,
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
            outbox_rounds_in_flight,
            topic_prefix: env_or("TOPIC_PREFIX", &defaults.topic_prefix),
            outbox_relays: env_parse("OUTBOX_RELAYS", defaults.outbox_relays)?,
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
            auth: auth_from_env(defaults.auth)?,
            grpc_tls: crate::tls::GrpcTls::from_env()?,
            kafka_properties: crate::tls::KafkaProperties::from_env()?,
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
    fn unset_variables_fall_back_to_defaults() {
        assert_eq!(env_or("FINTECH_TEST_SURELY_UNSET_VARIABLE", "fallback"), "fallback");
        assert_eq!(env_parse("FINTECH_TEST_SURELY_UNSET_VARIABLE", 7u16).unwrap(), 7);
    }
}
