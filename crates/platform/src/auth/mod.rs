//! Authentication and authorization of every RPC, in one tower layer the kit puts in front of
//! every service.
//!
//! # Protocol
//!
//! A caller sends `authorization: Bearer <JWT>`. The [`AuthLayer`] (installed by
//! [`Kit::serve`](crate::kit::Kit::serve) for every service) checks, before the service sees the
//! request:
//!
//! 1. the method's service is not one of the open ones (health and reflection by default,
//!    `AUTH_OPEN_SERVICES`); those pass without a token;
//! 2. a well-formed bearer token is present (at most [`MAX_TOKEN_BYTES`]);
//! 3. its header names an allowed algorithm (`AUTH_ALGORITHMS`; `none` and the HMAC family are
//!    never accepted: a verifier holding public keys must not accept a MAC keyed with them,
//!    RFC 8725 §3.1-3.2), a `kid` found in the JWKS (`AUTH_JWKS`, refreshed once on an unknown
//!    `kid`, at most every `AUTH_JWKS_REFRESH_MIN_MS`) whose key type and `alg` fit that
//!    algorithm, and, if it has a `typ`, `JWT` or `at+jwt`;
//! 4. its signature verifies with that key;
//! 5. `iss` equals `AUTH_ISSUER`, `aud` contains `AUTH_AUDIENCE`, `exp` is in the future and `nbf`
//!    (if present) in the past, both with `AUTH_LEEWAY_SECS` of leeway; `sub` is present;
//! 6. the method's required scope (declared in the contract as the `fintech.common.v1.authorization`
//!    method option, see [`Policy`]) is one of the token's space-separated `scope` claim, and a
//!    customer token (one with a `customer_id` claim) calls only methods whose option says
//!    `customers: true`.
//!
//! A failure of 2-5 answers `UNAUTHENTICATED`, of 6 `PERMISSION_DENIED`; the client gets a fixed
//! message, the reason goes to the log (with the method, never the token). On success the request
//! carries the [`Caller`] in its extensions: services read it with [`Caller::of`] to limit a
//! customer to their own data and to scope idempotency keys to the caller.
//!
//! # Failure modes
//!
//! - JWKS unreachable at start-up: the service does not start (`AUTH_JWKS` named in the error).
//!   Unreachable at a later refresh: the keys already loaded stay in use and the failure is logged.
//! - A method of a served service without the option: the service does not start
//!   ([`Policy::for_services`]), so no RPC is ever served without a declared scope.
//! - `AUTH_MODE=off` disables all of this (every request passes, no [`Caller`]); it exists to
//!   measure the cost of verification and is logged as a warning at start-up.

mod keys;
mod layer;
mod policy;

use std::collections::BTreeSet;
use std::time::Duration;

pub use keys::{KeySet, TokenError};
pub use layer::{AuthLayer, AuthService, Authenticator, bearer};
pub use policy::{AUTHORIZATION_OPTION, MethodRules, Policy, PolicyError, Rule, every_rule};

/// Longest accepted bearer token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The services that answer without a token unless configured otherwise.
pub const DEFAULT_OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Algorithms accepted unless configured otherwise: asymmetric only.
pub const DEFAULT_ALGORITHMS: [jsonwebtoken::Algorithm; 3] = [
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::EdDSA,
];

/// Whether requests are authenticated at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every RPC outside the open services needs a valid token with the method's scope.
    Jwt,
    /// Nothing is checked (benchmarks of the verification cost only).
    Off,
}

/// Settings of the authentication layer (`AUTH_*`, see [`crate::config`]).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `AUTH_MODE`.
    pub mode: AuthMode,
    /// `AUTH_JWKS`: a file path or an `https://` URL of the JSON Web Key Set.
    pub jwks: String,
    /// `AUTH_ISSUER`: the required `iss`.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: the audience `aud` must contain.
    pub audience: String,
    /// `AUTH_ALGORITHMS`: the allowed `alg` values (asymmetric only).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `AUTH_LEEWAY_SECS`: clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// `AUTH_OPEN_SERVICES`: full gRPC service names that need no token.
    pub open_services: Vec<String>,
    /// `AUTH_JWKS_REFRESH_MIN_MS`: shortest interval between two JWKS fetches (an unknown `kid`
    /// must not let callers make the service hammer its key server).
    pub jwks_refresh_min: Duration,
    /// `AUTH_JWKS_MAX_AGE_SECS`: keys older than this are fetched again (key rotation).
    pub jwks_max_age: Duration,
}

impl AuthConfig {
    /// The documented defaults: the local development JWKS that `deploy/local/up` writes.
    pub fn defaults() -> Self {
        Self {
            mode: AuthMode::Jwt,
            jwks: ".local/auth/jwks.json".to_owned(),
            issuer: "fintech-local".to_owned(),
            audience: "fintech-platform".to_owned(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(30),
            open_services: DEFAULT_OPEN_SERVICES.iter().map(|name| (*name).to_owned()).collect(),
            jwks_refresh_min: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(300),
        }
    }
}

/// Parses an `AUTH_ALGORITHMS` entry; the symmetric family and `none` are refused.
pub fn parse_algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm;
    let algorithm: Algorithm = name
        .trim()
        .parse()
        .map_err(|_| format!("unknown algorithm {:?}", short(name)))?;
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(format!(
            "{name} is a shared-secret algorithm; only asymmetric algorithms are accepted (RFC 8725)"
        )),
        other => Ok(other),
    }
}

/// Who is calling: the verified claims of the request's token. Inserted into the request's
/// extensions by the [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: the subject (a user, a service, an operator).
    pub subject: String,
    /// `customer_id`: set when the token acts for one customer and may see only that customer's
    /// data.
    pub customer_id: Option<String>,
    /// The scopes of the space-separated `scope` claim.
    pub scopes: BTreeSet<String>,
}

impl Caller {
    /// The caller of `request`, if the layer authenticated it (`None` with `AUTH_MODE=off` and
    /// on open services).
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
        request.extensions().get::<Caller>()
    }

    /// The customer this caller is limited to (`None`: not a customer token, may read across
    /// customers as its scopes allow).
    pub fn customer<T>(request: &tonic::Request<T>) -> Option<&str> {
        Self::of(request).and_then(|caller| caller.customer_id.as_deref())
    }

    /// Whether the caller holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

/// At most the first 32 characters of `text` (errors never echo more of the input).
pub fn short(text: &str) -> String {
    const LIMIT: usize = 32;
    match text.char_indices().nth(LIMIT) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_algorithms_and_none_are_refused() {
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("HS512").is_err());
        assert!(parse_algorithm("none").is_err());
        assert_eq!(parse_algorithm("ES256").unwrap(), jsonwebtoken::Algorithm::ES256);
    }

    #[test]
    fn short_cuts_long_input() {
        assert_eq!(short("abc"), "abc");
        let long = "x".repeat(100);
        assert_eq!(short(&long).chars().count(), 33);
    }
}
