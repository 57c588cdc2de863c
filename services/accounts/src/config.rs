//! Accounts settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `ACCOUNTS_DORMANT_AFTER` | `365d` | an ACTIVE account without customer movement for this long becomes DORMANT (`500ms`, `30s`, `15m`, `24h`, `365d`) |
//! | `ACCOUNTS_DORMANCY_INTERVAL` | `1h` | how often the dormancy job looks for such accounts |
//! | `ACCOUNTS_INTEREST_INTERVAL` | `1h` | how often the interest job accrues completed days and posts completed months |
//! | `ACCOUNTS_ACCRUAL_LAG` | `1h` | a day is accrued only this long after its midnight (UTC), so its late ledger events are in |

use std::time::Duration;

use fintech_platform::config::{PlatformConfig, env_duration};

/// Default gRPC port of accounts.
pub const DEFAULT_PORT: u16 = 50054;
/// Default dormancy period: a year.
pub const DEFAULT_DORMANT_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything accounts reads at start-up.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Dormancy period.
    pub dormant_after: Duration,
    /// Dormancy job interval.
    pub dormancy_interval: Duration,
    /// Interest job interval.
    pub interest_interval: Duration,
    /// Accrual lag after midnight.
    pub accrual_lag: Duration,
}

impl AccountsConfig {
    /// The defaults on top of `platform`.
    pub fn defaults(platform: PlatformConfig) -> Self {
        Self {
            platform,
            dormant_after: DEFAULT_DORMANT_AFTER,
            dormancy_interval: Duration::from_secs(3600),
            interest_interval: Duration::from_secs(3600),
            accrual_lag: Duration::from_secs(3600),
        }
    }

    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        let positive = |name: &str, value: Duration| {
            if value.is_zero() {
                Err(fintech_platform::Error::Config {
                    variable: name.to_owned(),
                    reason: "must be longer than 0".to_owned(),
                })
            } else {
                Ok(value)
            }
        };
        let defaults = Self::defaults(PlatformConfig::from_env("accounts", DEFAULT_PORT)?);
        Ok(Self {
            dormant_after: positive(
                "ACCOUNTS_DORMANT_AFTER",
                env_duration("ACCOUNTS_DORMANT_AFTER", defaults.dormant_after)?,
            )?,
            dormancy_interval: positive(
                "ACCOUNTS_DORMANCY_INTERVAL",
                env_duration("ACCOUNTS_DORMANCY_INTERVAL", defaults.dormancy_interval)?,
            )?,
            interest_interval: positive(
                "ACCOUNTS_INTEREST_INTERVAL",
                env_duration("ACCOUNTS_INTEREST_INTERVAL", defaults.interest_interval)?,
            )?,
            accrual_lag: env_duration("ACCOUNTS_ACCRUAL_LAG", defaults.accrual_lag)?,
            ..defaults
        })
    }
}

impl AsRef<PlatformConfig> for AccountsConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
