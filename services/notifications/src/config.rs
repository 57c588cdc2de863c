//! Notifications settings: the shared platform variables (see `fintech_platform::config`) plus
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `NOTIFICATIONS_RETRY_SCHEDULE` | `0s,5s,5m,30m,2h,5h,10h,10h` | delay before each attempt of a message (the first is the first attempt); after the last, the message fails |
//! | `NOTIFICATIONS_RETRY_JITTER_PERCENT` | `10` | each retry delay is moved by up to this share, either way (the first attempt never) |
//! | `NOTIFICATIONS_ATTEMPT_TIMEOUT` | `15s` | a 2xx must arrive (headers and body) within this |
//! | `NOTIFICATIONS_LEASE` | `45s` | a worker holds a message this long; after a crash another takes it (same `webhook-id`); longer than the timeout |
//! | `NOTIFICATIONS_DISABLE_AFTER` | `5d` | an endpoint whose every attempt failed for this long is disabled (`notifications.endpoint_disabled`) |
//! | `NOTIFICATIONS_ROTATION_OVERLAP` | `24h` | the previous secret keeps signing this long after `RotateSecret` (unless the request says) |
//! | `NOTIFICATIONS_ALLOW_HTTP` | `false` | accept `http://` endpoint URLs (the local stack) |
//! | `NOTIFICATIONS_ALLOWED_NETWORKS` | empty | comma-separated CIDRs (`127.0.0.0/8,::1/128`) that may be delivered to although loopback, private, link-local or metadata |
//! | `NOTIFICATIONS_WORKERS` | `64` | attempts in flight at once, all endpoints together |
//! | `NOTIFICATIONS_PER_ENDPOINT` | `4` | attempts in flight at once to one endpoint (a slow endpoint holds at most these) |
//! | `NOTIFICATIONS_POLL_INTERVAL` | `200ms` | how often the queue is read when nothing woke the worker |

use std::time::Duration;

use fintech_platform::config::{PlatformConfig, env_duration, env_opt, env_parse, parse_duration};

use crate::domain::ssrf::{Network, SsrfPolicy};

/// Default gRPC port of notifications.
pub const DEFAULT_PORT: u16 = 50056;
/// The retry schedule of the issue: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

/// Everything notifications reads at start-up.
#[derive(Debug, Clone)]
pub struct NotificationsConfig {
    /// Shared settings.
    pub platform: PlatformConfig,
    /// Delay before each attempt.
    pub schedule: Vec<Duration>,
    /// Jitter of each retry delay, in percent.
    pub jitter_percent: u32,
    /// Attempt timeout.
    pub attempt_timeout: Duration,
    /// How long a claimed message is held.
    pub lease: Duration,
    /// Failing this long disables an endpoint.
    pub disable_after: Duration,
    /// Default overlap of a rotated secret.
    pub rotation_overlap: Duration,
    /// Which destinations are allowed.
    pub ssrf: SsrfPolicy,
    /// Attempts in flight, all endpoints.
    pub workers: usize,
    /// Attempts in flight per endpoint.
    pub per_endpoint: usize,
    /// Queue poll interval.
    pub poll_interval: Duration,
}

/// Parses a schedule, `0s,5s,5m`.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let schedule = text.split(',').map(parse_duration).collect::<Result<Vec<_>, _>>()?;
    if schedule.is_empty() {
        return Err("needs at least one delay".to_owned());
    }
    Ok(schedule)
}

impl NotificationsConfig {
    /// The defaults on top of `platform`.
    pub fn defaults(platform: PlatformConfig) -> Self {
        Self {
            platform,
            schedule: parse_schedule(DEFAULT_SCHEDULE).unwrap_or_default(),
            jitter_percent: 10,
            attempt_timeout: Duration::from_secs(15),
            lease: Duration::from_secs(45),
            disable_after: Duration::from_secs(5 * 86_400),
            rotation_overlap: Duration::from_secs(86_400),
            ssrf: SsrfPolicy::default(),
            workers: 64,
            per_endpoint: 4,
            poll_interval: Duration::from_millis(200),
        }
    }

    /// Reads the environment; the error names the variable at fault.
    pub fn from_env() -> fintech_platform::Result<Self> {
        let config_error = |variable: &str, reason: String| fintech_platform::Error::Config {
            variable: variable.to_owned(),
            reason,
        };
        let defaults = Self::defaults(PlatformConfig::from_env("notifications", DEFAULT_PORT)?);
        let schedule = match env_opt("NOTIFICATIONS_RETRY_SCHEDULE") {
            Some(text) => {
                parse_schedule(&text).map_err(|reason| config_error("NOTIFICATIONS_RETRY_SCHEDULE", reason))?
            }
            None => defaults.schedule.clone(),
        };
        let allowed = match env_opt("NOTIFICATIONS_ALLOWED_NETWORKS") {
            Some(text) => text
                .split(',')
                .filter(|part| !part.trim().is_empty())
                .map(|part| Network::parse(part.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|reason| config_error("NOTIFICATIONS_ALLOWED_NETWORKS", reason))?,
            None => Vec::new(),
        };
        let attempt_timeout = env_duration("NOTIFICATIONS_ATTEMPT_TIMEOUT", defaults.attempt_timeout)?;
        let lease = env_duration("NOTIFICATIONS_LEASE", defaults.lease)?;
        if lease <= attempt_timeout {
            return Err(config_error(
                "NOTIFICATIONS_LEASE",
                "must be longer than NOTIFICATIONS_ATTEMPT_TIMEOUT".to_owned(),
            ));
        }
        let workers: usize = env_parse("NOTIFICATIONS_WORKERS", defaults.workers)?;
        let per_endpoint: usize = env_parse("NOTIFICATIONS_PER_ENDPOINT", defaults.per_endpoint)?;
        if workers == 0 || per_endpoint == 0 {
            return Err(config_error(
                "NOTIFICATIONS_WORKERS",
                "NOTIFICATIONS_WORKERS and NOTIFICATIONS_PER_ENDPOINT must be at least 1".to_owned(),
            ));
        }
        Ok(Self {
            schedule,
            jitter_percent: env_parse("NOTIFICATIONS_RETRY_JITTER_PERCENT", defaults.jitter_percent)?.min(100),
            attempt_timeout,
            lease,
            disable_after: env_duration("NOTIFICATIONS_DISABLE_AFTER", defaults.disable_after)?,
            rotation_overlap: env_duration("NOTIFICATIONS_ROTATION_OVERLAP", defaults.rotation_overlap)?,
            ssrf: SsrfPolicy {
                allow_http: env_parse("NOTIFICATIONS_ALLOW_HTTP", false)?,
                allowed,
            },
            workers,
            per_endpoint,
            poll_interval: env_duration("NOTIFICATIONS_POLL_INTERVAL", defaults.poll_interval)?,
            ..defaults
        })
    }
}

impl AsRef<PlatformConfig> for NotificationsConfig {
    fn as_ref(&self) -> &PlatformConfig {
        &self.platform
    }
}
