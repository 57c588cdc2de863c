//! Payments settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TOPIC_PREFIX` | empty | prepended to every topic name (tests, shared brokers) |
//! | `OUTBOX_RELAYS` | `1` | relays publishing this instance's outbox (0 = another process does) |

use fintech_platform::config::{PlatformConfig, env_or, env_parse};

/// Default gRPC port of payments.
pub const DEFAULT_PORT: u16 = 50051;

/// Everything payments reads at start-up.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Prefix of every topic name.
    pub topic_prefix: String,
    /// Outbox relays to run in this process.
    pub outbox_relays: usize,
}

impl PaymentsConfig {
    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        Ok(Self {
            platform: PlatformConfig::from_env("payments", DEFAULT_PORT)?,
            topic_prefix: env_or("TOPIC_PREFIX", ""),
            outbox_relays: env_parse("OUTBOX_RELAYS", 1usize)?,
        })
    }
}
