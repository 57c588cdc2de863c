//! Payments settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PAYMENTS_GROUP_COMMIT` | `true` | apply concurrent `CreateOrder` / `CreateTransaction` commands in shared transactions ([`crate::app::group`], ADR 0030); `false`: one transaction per command |
//! | `PAYMENTS_GROUP_COMMIT_WORKERS` | `4` | group transactions in flight at once (each holds one pooled connection while it runs; keep it below `DATABASE_MAX_CONNECTIONS`) |
//! | `PAYMENTS_GROUP_COMMIT_MAX_BATCH` | `64` | most commands in one group transaction |

use fintech_platform::config::{PlatformConfig, env_parse};

/// Default gRPC port of payments.
pub const DEFAULT_PORT: u16 = 50051;

/// How payments groups concurrent commands into shared transactions (ADR 0030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitSettings {
    /// Off: one transaction per command, as before ADR 0030.
    pub enabled: bool,
    /// Group transactions in flight at once.
    pub workers: usize,
    /// Most commands in one group transaction.
    pub max_batch: usize,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            workers: 4,
            max_batch: 64,
        }
    }
}

impl GroupCommitSettings {
    /// Reads `PAYMENTS_GROUP_COMMIT*`; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        let defaults = Self::default();
        let settings = Self {
            enabled: env_parse("PAYMENTS_GROUP_COMMIT", defaults.enabled)?,
            workers: env_parse("PAYMENTS_GROUP_COMMIT_WORKERS", defaults.workers)?,
            max_batch: env_parse("PAYMENTS_GROUP_COMMIT_MAX_BATCH", defaults.max_batch)?,
        };
        for (variable, value) in [
            ("PAYMENTS_GROUP_COMMIT_WORKERS", settings.workers),
            ("PAYMENTS_GROUP_COMMIT_MAX_BATCH", settings.max_batch),
        ] {
            if value == 0 {
                return Err(fintech_platform::Error::Config {
                    variable: variable.to_owned(),
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        Ok(settings)
    }
}

/// Everything payments reads at start-up.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Group commit of the create commands.
    pub group_commit: GroupCommitSettings,
}

impl PaymentsConfig {
    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        Ok(Self {
            platform: PlatformConfig::from_env("payments", DEFAULT_PORT)?,
            group_commit: GroupCommitSettings::from_env()?,
        })
    }
}

impl AsRef<PlatformConfig> for PaymentsConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
