//! Tax settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TOPIC_PREFIX` | empty | prepended to every topic name (tests, shared brokers) |
//! | `TAX_PARK_DEADLINE_SECS` | `300` | how long a transaction waits for its order before `order_not_found` |
//! | `TAX_SWEEP_INTERVAL_MS` | `1000` | how often parked transactions are checked against their deadline |
//! | `OUTBOX_RELAYS` | `1` | relays publishing this instance's outbox |

use std::time::Duration;

use fintech_platform::config::{PlatformConfig, env_or, env_parse};

/// Default gRPC port of tax.
pub const DEFAULT_PORT: u16 = 50052;

/// Everything tax reads at start-up.
#[derive(Debug, Clone)]
pub struct TaxConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Prefix of every topic name.
    pub topic_prefix: String,
    /// Parking deadline.
    pub park_deadline: Duration,
    /// Sweeper interval.
    pub sweep_interval: Duration,
    /// Outbox relays to run in this process.
    pub outbox_relays: usize,
}

impl TaxConfig {
    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        let park_deadline = env_parse("TAX_PARK_DEADLINE_SECS", 300u64)?;
        if park_deadline == 0 {
            return Err(fintech_platform::Error::Config {
                variable: "TAX_PARK_DEADLINE_SECS".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(Self {
            platform: PlatformConfig::from_env("tax", DEFAULT_PORT)?,
            topic_prefix: env_or("TOPIC_PREFIX", ""),
            park_deadline: Duration::from_secs(park_deadline),
            sweep_interval: Duration::from_millis(env_parse("TAX_SWEEP_INTERVAL_MS", 1000u64)?.max(10)),
            outbox_relays: env_parse("OUTBOX_RELAYS", 1usize)?,
        })
    }
}
