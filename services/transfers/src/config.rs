//! Transfers settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TEMPORAL_ADDRESS` | `127.0.0.1:7233` | the Temporal frontend (gRPC), `host:port` or a URL |
//! | `TEMPORAL_NAMESPACE` | `default` | the Temporal namespace of the workflows |
//! | `TEMPORAL_TASK_QUEUE` | `transfers` | the task queue the workflows and activities run on |
//! | `TRANSFERS_WORKER` | `true` | whether this process runs the saga's worker (ADR 0024) |
//! | `LEDGER_ADDRESS` | `http://127.0.0.1:50053` | the ledger's gRPC endpoint |
//! | `TRANSFERS_SERVICE_TOKEN_FILE` | `.local/auth/transfers.token` | the service's own bearer token for the ledger (a JWT; re-read before its `exp`) |
//! | `TRANSFERS_APPROVAL_THRESHOLD` | `1000000` | amounts above this (minor units) wait for ApproveTransfer |
//! | `TRANSFERS_APPROVAL_TIMEOUT` | `24h` | how long a transfer waits for approval before it is rejected |
//! | `TRANSFERS_HOLD_TTL` | `7d` | how long the ledger keeps a transfer's hold before it expires (longer than the approval timeout) |

use std::path::PathBuf;
use std::time::Duration;

use fintech_platform::config::{PlatformConfig, env_duration, env_or, env_parse};

/// Default gRPC port of transfers.
pub const DEFAULT_PORT: u16 = 50055;

/// Everything transfers reads at start-up.
#[derive(Debug, Clone)]
pub struct TransfersConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Temporal frontend URL (`http://host:port`).
    pub temporal_url: String,
    /// Temporal namespace.
    pub temporal_namespace: String,
    /// Task queue.
    pub task_queue: String,
    /// Run the worker in this process.
    pub worker: bool,
    /// The ledger's endpoint.
    pub ledger_url: String,
    /// The file holding the service token.
    pub service_token_file: PathBuf,
    /// Amounts above this wait for approval.
    pub approval_threshold: i64,
    /// Approval deadline.
    pub approval_timeout: Duration,
    /// Hold time to live.
    pub hold_ttl: Duration,
}

/// `host:port` or a URL, as a URL.
pub fn url_of(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

impl TransfersConfig {
    /// The defaults on top of `platform`.
    pub fn defaults(platform: PlatformConfig) -> Self {
        Self {
            platform,
            temporal_url: "http://127.0.0.1:7233".to_owned(),
            temporal_namespace: "default".to_owned(),
            task_queue: "transfers".to_owned(),
            worker: true,
            ledger_url: "http://127.0.0.1:50053".to_owned(),
            service_token_file: PathBuf::from(".local/auth/transfers.token"),
            approval_threshold: 1_000_000,
            approval_timeout: Duration::from_secs(24 * 3600),
            hold_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        let invalid = |variable: &str, reason: &str| fintech_platform::Error::Config {
            variable: variable.to_owned(),
            reason: reason.to_owned(),
        };
        let defaults = Self::defaults(PlatformConfig::from_env("transfers", DEFAULT_PORT)?);
        let config = Self {
            temporal_url: url_of(&env_or("TEMPORAL_ADDRESS", "127.0.0.1:7233")),
            temporal_namespace: env_or("TEMPORAL_NAMESPACE", &defaults.temporal_namespace),
            task_queue: env_or("TEMPORAL_TASK_QUEUE", &defaults.task_queue),
            worker: env_parse("TRANSFERS_WORKER", defaults.worker)?,
            ledger_url: url_of(&env_or("LEDGER_ADDRESS", "127.0.0.1:50053")),
            service_token_file: PathBuf::from(env_or(
                "TRANSFERS_SERVICE_TOKEN_FILE",
                &defaults.service_token_file.to_string_lossy(),
            )),
            approval_threshold: env_parse("TRANSFERS_APPROVAL_THRESHOLD", defaults.approval_threshold)?,
            approval_timeout: env_duration("TRANSFERS_APPROVAL_TIMEOUT", defaults.approval_timeout)?,
            hold_ttl: env_duration("TRANSFERS_HOLD_TTL", defaults.hold_ttl)?,
            ..defaults
        };
        if config.approval_threshold < 0 {
            return Err(invalid("TRANSFERS_APPROVAL_THRESHOLD", "must be at least 0"));
        }
        if config.approval_timeout.is_zero() {
            return Err(invalid("TRANSFERS_APPROVAL_TIMEOUT", "must be longer than 0"));
        }
        if config.hold_ttl <= config.approval_timeout || config.hold_ttl > Duration::from_secs(30 * 24 * 3600) {
            return Err(invalid(
                "TRANSFERS_HOLD_TTL",
                "must be longer than TRANSFERS_APPROVAL_TIMEOUT and at most 30 days (the ledger's limit)",
            ));
        }
        if config.task_queue.trim().is_empty() || config.temporal_namespace.trim().is_empty() {
            return Err(invalid(
                "TEMPORAL_TASK_QUEUE",
                "and TEMPORAL_NAMESPACE must not be empty",
            ));
        }
        Ok(config)
    }
}

impl AsRef<PlatformConfig> for TransfersConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
