//! The tower layer that authenticates and authorizes every request (see the [module](super)
//! docs).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use super::keys::{KeySet, TokenError};
use super::policy::Policy;
use super::{AuthConfig, AuthMode, Caller, MAX_TOKEN_BYTES};

/// What the layer checks requests against: the key set, the contract's rules, the open services.
#[derive(Debug, Clone)]
pub struct Authenticator {
    /// `None` with `AUTH_MODE=off`.
    keys: Option<Arc<KeySet>>,
    policy: Arc<Policy>,
    open_services: Arc<HashSet<String>>,
}

impl Authenticator {
    /// Loads the key set of `config` (unless `AUTH_MODE=off`) and keeps `policy`.
    pub async fn new(config: &AuthConfig, policy: Policy) -> crate::Result<Self> {
        let keys = match config.mode {
            AuthMode::Jwt => Some(Arc::new(KeySet::load(config).await?)),
            AuthMode::Off => {
                tracing::warn!("AUTH_MODE=off: requests are NOT authenticated; use only to measure the cost of it");
                None
            }
        };
        Ok(Self {
            keys,
            policy: Arc::new(policy),
            open_services: Arc::new(config.open_services.iter().cloned().collect()),
        })
    }

    /// The contract's rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks the request `path` with headers `headers`: `Ok(None)` for an open service (or with
    /// authentication off), `Ok(Some(caller))` when the token is valid and authorizes the method.
    pub async fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        if self.open_services.contains(service) {
            return Ok(None);
        }
        let caller = match bearer(headers) {
            Ok(token) => keys.verify(token).await,
            Err(error) => Err(error),
        };
        let caller = caller.map_err(|reason| {
            tracing::warn!(method = %path, %reason, "request not authenticated");
            Status::unauthenticated("missing or invalid bearer token")
        })?;
        // A method no served service has: authenticated callers get tonic's UNIMPLEMENTED.
        if let Some(rule) = self.policy.rule(path) {
            if !caller.has_scope(&rule.scope) {
                tracing::warn!(method = %path, subject = %super::short(&caller.subject), scope = %rule.scope, "scope missing");
                return Err(Status::permission_denied(format!("requires scope {}", rule.scope)));
            }
            if caller.customer_id.is_some() && !rule.customers {
                tracing::warn!(method = %path, subject = %super::short(&caller.subject), "customer token on an operator method");
                return Err(Status::permission_denied("not available to customer tokens"));
            }
        }
        Ok(Some(caller))
    }
}

/// The token of `authorization: Bearer <token>`: sent once, at most [`MAX_TOKEN_BYTES`] of
/// visible ASCII without spaces.
pub fn bearer(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenError::Missing)?;
    if values.next().is_some() {
        return Err(TokenError::Malformed("sent more than once"));
    }
    if value.len() > MAX_TOKEN_BYTES + 7 {
        return Err(TokenError::Malformed("too long"));
    }
    let text = value.to_str().map_err(|_| TokenError::Malformed("not visible ASCII"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or(TokenError::Malformed("not \"Bearer <token>\""))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Malformed("scheme is not Bearer"));
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(TokenError::Malformed("not \"Bearer <token>\""));
    }
    Ok(token)
}

/// Puts an [`Authenticator`] in front of a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    /// The layer of `authenticator`.
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] builds: refused requests never reach `inner`.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, RequestBody> Service<http::Request<RequestBody>> for AuthService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            match authenticator.check(&path, request.headers()).await {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
