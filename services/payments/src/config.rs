//! Payments settings: only the shared platform variables (see `fintech_platform::config`).

use fintech_platform::config::PlatformConfig;

/// Default gRPC port of payments.
pub const DEFAULT_PORT: u16 = 50051;

/// Everything payments reads at start-up.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
}

impl AsRef<PlatformConfig> for PaymentsConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
