//! Ledger settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TAX_CONSUMER_ENABLED` | `true` | post the entries of `tax.calculated` and `tax.reversed` events |
//! | `CASH_CONSUMER_ENABLED` | `true` | post captures and refunds from `transactions.created` / `transactions.updated` (ADR 0016) |
//! | `ACCOUNTS_CONSUMER_ENABLED` | `true` | keep the cache of `accounts.opened` / `accounts.updated` (opens customer streams, enforces their controls) |
//! | `INTEREST_CONSUMER_ENABLED` | `true` | book `accounts.interest_posted` |
//! | `HOLD_EXPIRY_INTERVAL_MS` | `1000` | how often the expiry job releases holds past their `expires_at` |
//! | `LEDGER_MAX_POST_ATTEMPTS` | `8` | attempts of one posting under contention before `ABORTED` |
//! | `LEDGER_LOCK_STREAMS` | `true` | lock affected streams in order before reading them (`false`: pure optimistic, retry on conflict; see ADR 0004) |
//! | `LEDGER_LOCK_TIMEOUT_MS` | `2000` | longest wait for one stream lock before the attempt is retried |

use std::time::Duration;

use fintech_platform::config::{PlatformConfig, env_parse};
use fintech_platform::error::Error;

use crate::app::posting::PostingSettings;

/// Default gRPC port of the ledger.
pub const DEFAULT_PORT: u16 = 50053;

/// Everything the ledger reads at start-up.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Whether to consume `tax.calculated`.
    pub tax_consumer_enabled: bool,
    /// Whether to consume payments' transaction events for the cash they moved.
    pub cash_consumer_enabled: bool,
    /// Whether to consume the accounts service's account events into the cache.
    pub accounts_consumer_enabled: bool,
    /// Whether to book `accounts.interest_posted`.
    pub interest_consumer_enabled: bool,
    /// Interval of the hold expiry job.
    pub hold_expiry_interval: Duration,
    /// How postings retry and lock.
    pub posting: PostingSettings,
}

impl LedgerConfig {
    /// The defaults on top of `platform`.
    pub fn defaults(platform: PlatformConfig) -> Self {
        Self {
            platform,
            tax_consumer_enabled: true,
            cash_consumer_enabled: true,
            accounts_consumer_enabled: true,
            interest_consumer_enabled: true,
            hold_expiry_interval: Duration::from_secs(1),
            posting: PostingSettings::default(),
        }
    }

    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        let max_attempts = env_parse("LEDGER_MAX_POST_ATTEMPTS", 8u32)?;
        if !(1..=100).contains(&max_attempts) {
            return Err(Error::Config {
                variable: "LEDGER_MAX_POST_ATTEMPTS".to_owned(),
                reason: "must be between 1 and 100".to_owned(),
            });
        }
        let lock_timeout_ms = env_parse("LEDGER_LOCK_TIMEOUT_MS", 2000u64)?;
        if lock_timeout_ms == 0 {
            return Err(Error::Config {
                variable: "LEDGER_LOCK_TIMEOUT_MS".to_owned(),
                reason: "must be at least 1 (0 would wait forever)".to_owned(),
            });
        }
        let hold_expiry_ms = env_parse("HOLD_EXPIRY_INTERVAL_MS", 1000u64)?;
        if hold_expiry_ms == 0 {
            return Err(Error::Config {
                variable: "HOLD_EXPIRY_INTERVAL_MS".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(Self {
            platform: PlatformConfig::from_env("ledger", DEFAULT_PORT)?,
            accounts_consumer_enabled: env_parse("ACCOUNTS_CONSUMER_ENABLED", true)?,
            interest_consumer_enabled: env_parse("INTEREST_CONSUMER_ENABLED", true)?,
            hold_expiry_interval: Duration::from_millis(hold_expiry_ms),
            tax_consumer_enabled: env_parse("TAX_CONSUMER_ENABLED", true)?,
            cash_consumer_enabled: env_parse("CASH_CONSUMER_ENABLED", true)?,
            posting: PostingSettings {
                max_attempts,
                lock_streams: env_parse("LEDGER_LOCK_STREAMS", true)?,
                lock_timeout: Duration::from_millis(lock_timeout_ms),
            },
        })
    }
}

impl AsRef<PlatformConfig> for LedgerConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
