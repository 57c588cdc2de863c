//! Tax settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TAX_PARK_DEADLINE_SECS` | `300` | how long a transaction waits for its order version before `order_not_found` (on the database's clock; an order that arrives later still re-taxes it, ADR 0017) |
//! | `TAX_SWEEP_INTERVAL_MS` | `1000` | how often parked transactions are checked against their deadline |

use std::time::Duration;

use fintech_platform::config::{PlatformConfig, env_parse};

/// Default gRPC port of tax.
pub const DEFAULT_PORT: u16 = 50052;

/// Everything tax reads at start-up.
#[derive(Debug, Clone)]
pub struct TaxConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Parking deadline.
    pub park_deadline: Duration,
    /// Sweeper interval.
    pub sweep_interval: Duration,
}

impl TaxConfig {
    /// The defaults on top of `platform`.
    pub fn defaults(platform: PlatformConfig) -> Self {
        Self {
            platform,
            park_deadline: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(1),
        }
    }

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
            park_deadline: Duration::from_secs(park_deadline),
            sweep_interval: Duration::from_millis(env_parse("TAX_SWEEP_INTERVAL_MS", 1000u64)?.max(10)),
        })
    }
}

impl AsRef<PlatformConfig> for TaxConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
