//! The platform crate's error type.

/// Errors of the shared plumbing. Services map them to `tonic::Status` through
/// [`crate::grpc::status::failure`]; details are logged, not sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration variable is missing or invalid; the message names it.
    #[error("invalid configuration: {variable}: {reason}")]
    Config {
        /// The environment variable at fault.
        variable: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// PostgreSQL failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The Kafka client failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Redis failed (only ever on the optional fast path).
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Telemetry could not be set up.
    #[error("telemetry error: {0}")]
    Telemetry(String),
    /// Server reflection could not be built from the descriptor sets.
    #[error("reflection error: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("grpc transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A dead-letter replay could not go on; the message says where it stopped.
    #[error("dead-letter replay: {0}")]
    Replay(String),
    /// An I/O error (binding a socket, reading a file).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with the platform [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
