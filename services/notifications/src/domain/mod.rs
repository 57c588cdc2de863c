//! The notifications domain: ids, endpoint input rules, the retry schedule, signatures
//! ([`signing`]) and destination rules ([`ssrf`]). No I/O here.

pub mod signing;
pub mod ssrf;

use std::time::Duration;

use chrono::{DateTime, Utc};
pub use fintech_types::Violations;
use uuid::Uuid;

/// Longest endpoint URL.
pub const MAX_URL: usize = 2000;
/// Longest description or disable reason.
pub const MAX_TEXT: usize = 500;
/// Most event types of one endpoint.
pub const MAX_EVENT_TYPES: usize = 100;
/// Highest per-endpoint rate limit.
pub const MAX_RATE: i32 = 10_000;
/// Longest rotation overlap a request may ask for.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 86_400);
/// Largest webhook body: the entity is left out of larger ones (see [`crate::sources`]).
pub const MAX_BODY: usize = 20_000;
/// Most of a response body kept with an attempt.
pub const SNIPPET_BYTES: usize = 1024;

/// Everything that can go wrong in a notifications use case.
#[derive(Debug, thiserror::Error)]
pub enum NotificationsError {
    /// The request is invalid; nothing changed.
    #[error("invalid request: {0}")]
    Invalid(#[from] Violations),
    /// No such endpoint (or not the caller's).
    #[error("endpoint {0} not found")]
    EndpointNotFound(String),
    /// No such message (or not the caller's).
    #[error("message {0} not found")]
    MessageNotFound(String),
    /// No such event to resume after.
    #[error("event {0} not found")]
    EventNotFound(String),
    /// Anything else (the database, a bug).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for NotificationsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.into())
    }
}

/// Result of a use case.
pub type Result<T, E = NotificationsError> = std::result::Result<T, E>;

/// The public form of an id: `<prefix>_<32 hex digits>`.
pub fn public_id(prefix: &str, id: Uuid) -> String {
    format!("{prefix}_{}", id.simple())
}

/// Reads a public id of `prefix`, naming `field` when it is not one.
pub fn parse_public_id(field: &str, prefix: &str, text: &str) -> Result<Uuid, Violations> {
    let parsed = text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .filter(|hex| hex.len() == 32 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .and_then(|hex| Uuid::parse_str(hex).ok());
    parsed.ok_or_else(|| {
        Violations::single(
            field,
            format!(
                "must be {prefix}_ followed by 32 hex digits, got {:?}",
                fintech_platform::auth::short(text)
            ),
        )
    })
}

/// What an endpoint is asked to be (create and update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The parsed URL.
    pub url: url::Url,
    /// Types delivered; empty: all.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: String,
    /// Deliveries per second; 0: no limit.
    pub rate_limit_per_second: i32,
}

/// Checks a public event type: 1-100 characters of `[a-z0-9._]`, starting with a letter.
pub fn check_event_type(field: &str, event_type: &str, violations: &mut Violations) {
    let valid = (1..=100).contains(&event_type.len())
        && event_type.starts_with(|character: char| character.is_ascii_lowercase())
        && event_type.chars().all(|character| {
            character.is_ascii_lowercase() || character.is_ascii_digit() || matches!(character, '.' | '_')
        });
    if !valid {
        violations.add(
            field,
            format!(
                "must be 1-100 characters of a-z, 0-9, '.' and '_', starting with a letter, got {:?}",
                fintech_platform::auth::short(event_type)
            ),
        );
    }
}

impl EndpointSpec {
    /// Validates the fields of a create or update request; the scheme and literal addresses are
    /// checked against `policy` here, resolved names at delivery and by the caller.
    pub fn parse(
        url: &str,
        event_types: &[String],
        description: &str,
        rate_limit_per_second: i32,
        policy: &ssrf::SsrfPolicy,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        let parsed = if url.is_empty() {
            violations.add("url", "is required");
            None
        } else if url.len() > MAX_URL {
            violations.add("url", format!("must be at most {MAX_URL} characters"));
            None
        } else {
            match url::Url::parse(url) {
                Err(error) => {
                    violations.add("url", format!("is not a URL: {error}"));
                    None
                }
                Ok(parsed) => match check_url(&parsed, policy) {
                    Ok(()) => Some(parsed),
                    Err(reason) => {
                        violations.add("url", reason);
                        None
                    }
                },
            }
        };
        if event_types.len() > MAX_EVENT_TYPES {
            violations.add("event_types", format!("at most {MAX_EVENT_TYPES} types"));
        }
        for (index, event_type) in event_types.iter().enumerate() {
            check_event_type(&format!("event_types[{index}]"), event_type, &mut violations);
        }
        if description.chars().count() > MAX_TEXT || description.contains('\0') {
            violations.add(
                "description",
                format!("must be at most {MAX_TEXT} characters without NUL"),
            );
        }
        if !(0..=MAX_RATE).contains(&rate_limit_per_second) {
            violations.add(
                "rate_limit_per_second",
                format!("must be between 0 and {MAX_RATE}, got {rate_limit_per_second}"),
            );
        }
        let mut types = event_types.to_vec();
        types.sort();
        types.dedup();
        match parsed {
            Some(url) if violations.is_empty() => Ok(Self {
                url,
                event_types: types,
                description: description.to_owned(),
                rate_limit_per_second,
            }),
            _ => Err(violations),
        }
    }
}

/// The checks of a URL that need no DNS: scheme, host present, no credentials, a literal
/// address allowed.
pub fn check_url(url: &url::Url, policy: &ssrf::SsrfPolicy) -> Result<(), String> {
    policy
        .check_scheme(url.scheme())
        .map_err(|refusal| refusal.to_string())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    match url.host() {
        None => Err("has no host".to_owned()),
        Some(url::Host::Ipv4(address)) => policy
            .check_address(address.into())
            .map_err(|refusal| refusal.to_string()),
        Some(url::Host::Ipv6(address)) => policy
            .check_address(address.into())
            .map_err(|refusal| refusal.to_string()),
        Some(url::Host::Domain(_)) => Ok(()),
    }
}

/// The delay before attempt `index` (0-based) of `schedule`, with up to `jitter_percent` either
/// way (never on the first); `None` when the schedule is used up.
pub fn retry_delay(schedule: &[Duration], index: usize, jitter_percent: u32) -> Option<Duration> {
    let delay = *schedule.get(index)?;
    if index == 0 || jitter_percent == 0 || delay.is_zero() {
        return Some(delay);
    }
    let span = delay.as_secs_f64() * f64::from(jitter_percent) / 100.0;
    let shift = rand::random_range(-span..=span);
    Some(Duration::from_secs_f64((delay.as_secs_f64() + shift).max(0.0)))
}

/// A `Retry-After` value: delay-seconds or an HTTP date; `None` when it is neither.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// The current time at the database's precision (microseconds).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_round_trip_and_name_the_field() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_public_id("endpoint_id", "ep", &public_id("ep", id)).expect("id"),
            id
        );
        let error = parse_public_id("endpoint_id", "ep", "msg_123").expect_err("wrong prefix");
        assert_eq!(error.fields(), ["endpoint_id"]);
    }

    #[test]
    fn endpoint_specs_name_every_bad_field() {
        let policy = ssrf::SsrfPolicy::default();
        let error = EndpointSpec::parse("ftp://x", &["Bad Type".to_owned()], "", -1, &policy).expect_err("invalid");
        assert_eq!(error.fields(), ["url", "event_types[0]", "rate_limit_per_second"]);
        let error = EndpointSpec::parse("https://10.0.0.1/hook", &[], "", 0, &policy).expect_err("private");
        assert_eq!(error.fields(), ["url"]);
        let spec = EndpointSpec::parse(
            "https://hooks.example.com/x",
            &["b.x".to_owned(), "a.y".to_owned(), "b.x".to_owned()],
            "d",
            5,
            &policy,
        )
        .expect("valid");
        assert_eq!(spec.event_types, ["a.y", "b.x"]);
    }

    /// Found by the `grpc_requests` fuzz target: a description with a NUL byte was accepted and
    /// failed in PostgreSQL (an internal error instead of INVALID_ARGUMENT).
    #[test]
    fn a_description_with_nul_is_refused() {
        let policy = ssrf::SsrfPolicy::default();
        let error = EndpointSpec::parse("https://hooks.example.com/", &[], "ops\0", 0, &policy).expect_err("NUL");
        assert_eq!(error.fields(), ["description"]);
        assert!(EndpointSpec::parse("https://hooks.example.com/", &[], "ops\nteam", 0, &policy).is_ok());
    }

    #[test]
    fn the_schedule_ends_and_jitter_stays_within_bounds() {
        let schedule = [Duration::ZERO, Duration::from_secs(10)];
        assert_eq!(retry_delay(&schedule, 0, 10), Some(Duration::ZERO));
        for _ in 0..100 {
            let delay = retry_delay(&schedule, 1, 10).expect("second");
            assert!(
                delay >= Duration::from_secs(9) && delay <= Duration::from_secs(11),
                "{delay:?}"
            );
        }
        assert_eq!(retry_delay(&schedule, 2, 10), None);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
