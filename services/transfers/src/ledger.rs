//! The saga's calls to the ledger, with the transfers service's own identity.
//!
//! # Service identity
//! Every call carries the service's own bearer token, never a customer's: a JWT read from the
//! file named by `TRANSFERS_SERVICE_TOKEN_FILE` (the way Kubernetes projects a service-account
//! token into a pod: the platform rotates the file, the service re-reads it). The token is cached
//! and read again once it is within [`REFRESH_BEFORE_EXPIRY`] of its `exp` (or when it has none
//! readable), so a rotated file is picked up before the old token runs out. It needs the scopes
//! `ledger.post` (PlaceHold, CaptureHold, ReleaseHold), `ledger.read` (GetHold) and
//! `ledger.transfers`, which the ledger requires for the `transfer:` id namespace (ADR 0024).
//!
//! # Errors
//! A ledger refusal is told apart from a failure by the status code and the contract's error
//! details, never by the message: FAILED_PRECONDITION with a `google.rpc.PreconditionFailure`
//! whose type is an account rule is a [`Refusal`] (not retried); UNAVAILABLE, DEADLINE_EXCEEDED,
//! ABORTED, RESOURCE_EXHAUSTED, UNAUTHENTICATED (a token that expired in flight) and INTERNAL are
//! transient (retried by Temporal); anything else is a permanent fault of this service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::ledger as lpb;
use fintech_proto::ledger::ledger_service_client::LedgerServiceClient;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use crate::domain::{Refusal, RefusalCode};

/// A token is read again this long before it expires.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// Deadline of one ledger call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// Why a ledger call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerFailure {
    /// A business rule refused it: final.
    #[error(transparent)]
    Refused(Refusal),
    /// The ledger could not answer now: retry.
    #[error("ledger unavailable: {0}")]
    Transient(String),
    /// The request is wrong or not allowed: retrying cannot help.
    #[error("ledger refused the request: {0}")]
    Permanent(String),
}

impl LedgerFailure {
    /// The failure a status stands for.
    pub fn of_status(status: &Status) -> Self {
        match status.code() {
            Code::FailedPrecondition => {
                let details = status.get_error_details();
                let rules: Vec<String> = details
                    .precondition_failure()
                    .map(|failure| {
                        failure
                            .violations
                            .iter()
                            .map(|violation| violation.r#type.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                match rules.iter().find_map(|rule| RefusalCode::of_ledger_rule(rule)) {
                    Some(code) => LedgerFailure::Refused(Refusal::new(code, status.message().to_owned())),
                    None if rules.is_empty() => LedgerFailure::Permanent(format!("{status:?}")),
                    // A rule the ledger added after this service was built: still a refusal.
                    None => LedgerFailure::Refused(Refusal::new(
                        RefusalCode::LedgerRefused,
                        format!("{} ({})", status.message(), rules.join(", ")),
                    )),
                }
            }
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unauthenticated
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled => LedgerFailure::Transient(format!("{:?}: {}", status.code(), status.message())),
            _ => LedgerFailure::Permanent(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// A token and its `exp` (seconds since the epoch), when it has one.
type CachedToken = Option<(String, Option<u64>)>;

/// The service's bearer token, read from its file and re-read before it expires.
#[derive(Debug, Clone)]
pub struct TokenSource {
    path: PathBuf,
    cached: Arc<Mutex<CachedToken>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

/// The `exp` claim of a JWT, read without verifying it (the ledger verifies; this only decides
/// when to read the file again).
pub fn expiry_of(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

impl TokenSource {
    /// Tokens from `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Arc::default(),
        }
    }

    /// The current token: the cached one while it is far enough from its expiry, else the file's.
    pub async fn token(&self) -> anyhow::Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, Some(exp))) = cached.as_ref()
            && now_secs() + REFRESH_BEFORE_EXPIRY.as_secs() < *exp
        {
            return Ok(token.clone());
        }
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .with_context(|| format!("TRANSFERS_SERVICE_TOKEN_FILE: cannot read {}", self.path.display()))?;
        let token = text.trim().to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "TRANSFERS_SERVICE_TOKEN_FILE: {} is empty",
            self.path.display()
        );
        *cached = Some((token.clone(), expiry_of(&token)));
        Ok(token)
    }
}

/// The ledger, as the saga calls it.
#[derive(Debug, Clone)]
pub struct Ledger {
    client: LedgerServiceClient<Channel>,
    tokens: TokenSource,
}

impl Ledger {
    /// A lazily connected client of `url` authenticating with `tokens`.
    pub fn new(url: &str, tokens: TokenSource) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("LEDGER_ADDRESS: {url:?} is not a URL"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(Self {
            client: LedgerServiceClient::new(channel),
            tokens,
        })
    }

    /// `message` with the service's token and the current trace context.
    async fn request<T>(&self, message: T) -> Result<tonic::Request<T>, LedgerFailure> {
        let token = self
            .tokens
            .token()
            .await
            .map_err(|error| LedgerFailure::Transient(format!("{error:#}")))?;
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| LedgerFailure::Permanent("the service token is not valid metadata".to_owned()))?;
        request.metadata_mut().insert("authorization", bearer);
        let trace = TraceHeaders::current();
        if let Some(value) = trace.traceparent.and_then(|value| value.parse().ok()) {
            request.metadata_mut().insert("traceparent", value);
        }
        if let Some(value) = trace.tracestate.and_then(|value| value.parse().ok()) {
            request.metadata_mut().insert("tracestate", value);
        }
        Ok(request)
    }

    /// Places (or finds, by id) a hold.
    #[tracing::instrument(skip_all, fields(hold_id = %message.hold_id))]
    pub async fn place_hold(&self, message: lpb::PlaceHoldRequest) -> Result<lpb::Hold, LedgerFailure> {
        let request = self.request(message).await?;
        let response = self
            .client
            .clone()
            .place_hold(request)
            .await
            .map_err(|status| LedgerFailure::of_status(&status))?;
        response
            .into_inner()
            .hold
            .ok_or_else(|| LedgerFailure::Permanent("PlaceHold answered without a hold".to_owned()))
    }

    /// Captures a hold into an entry (idempotent by entry id).
    #[tracing::instrument(skip_all, fields(hold_id = %message.hold_id, entry_id = %message.entry_id))]
    pub async fn capture_hold(
        &self,
        message: lpb::CaptureHoldRequest,
    ) -> Result<lpb::CaptureHoldResponse, LedgerFailure> {
        let request = self.request(message).await?;
        Ok(self
            .client
            .clone()
            .capture_hold(request)
            .await
            .map_err(|status| LedgerFailure::of_status(&status))?
            .into_inner())
    }

    /// A hold, `None` when it was never placed.
    #[tracing::instrument(skip(self))]
    pub async fn get_hold(&self, hold_id: &str) -> Result<Option<lpb::Hold>, LedgerFailure> {
        let request = self
            .request(lpb::GetHoldRequest {
                hold_id: hold_id.to_owned(),
            })
            .await?;
        match self.client.clone().get_hold(request).await {
            Ok(response) => Ok(response.into_inner().hold),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(LedgerFailure::of_status(&status)),
        }
    }

    /// Releases an active hold.
    #[tracing::instrument(skip(self, reason))]
    pub async fn release_hold(&self, hold_id: &str, reason: &str) -> Result<lpb::Hold, LedgerFailure> {
        let request = self
            .request(lpb::ReleaseHoldRequest {
                hold_id: hold_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?;
        self.client
            .clone()
            .release_hold(request)
            .await
            .map_err(|status| LedgerFailure::of_status(&status))?
            .into_inner()
            .hold
            .ok_or_else(|| LedgerFailure::Permanent("ReleaseHold answered without a hold".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    fn refused(rule: &str) -> Status {
        let mut details = ErrorDetails::new();
        details.add_precondition_failure_violation(rule, "account", "no");
        Status::with_error_details(Code::FailedPrecondition, "rejected: no", details)
    }

    #[test]
    fn ledger_statuses_are_classified_by_code_and_details_not_by_message() {
        assert!(matches!(
            LedgerFailure::of_status(&refused("account.overdraft_limit")),
            LedgerFailure::Refused(Refusal {
                code: RefusalCode::InsufficientFunds,
                ..
            })
        ));
        assert!(matches!(
            LedgerFailure::of_status(&refused("rule.from.the.future")),
            LedgerFailure::Refused(Refusal {
                code: RefusalCode::LedgerRefused,
                ..
            })
        ));
        // The same words without the details are not a refusal.
        assert!(matches!(
            LedgerFailure::of_status(&Status::failed_precondition("account.overdraft_limit")),
            LedgerFailure::Permanent(_)
        ));
        assert!(matches!(
            LedgerFailure::of_status(&Status::unavailable("down")),
            LedgerFailure::Transient(_)
        ));
        assert!(matches!(
            LedgerFailure::of_status(&Status::permission_denied("no")),
            LedgerFailure::Permanent(_)
        ));
    }

    #[test]
    fn the_expiry_of_a_token_is_read_from_its_claims() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"svc","exp":1234}"#);
        assert_eq!(expiry_of(&format!("e30.{claims}.sig")), Some(1234));
        assert_eq!(expiry_of("not a token"), None);
    }
}
