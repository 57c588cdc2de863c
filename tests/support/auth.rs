//! Tokens for the tests: one development signing key per test process, its JWKS in a file that
//! every service a test starts (in-process or as a process) verifies against, and clients that
//! carry a token on every call.
//!
//! [`crate::service::connect`] (and so every harness client) carries an operator token with every
//! scope; [`token`], [`customer_token`] and [`with_token`] build the others.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use fintech_devkit::auth::{ALL_SCOPES, Claims, DEV_AUDIENCE, DEV_ISSUER, SigningKey};
use fintech_platform::auth::{AuthConfig, AuthMode};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;

pub use fintech_devkit::auth::Claims as TokenClaims;

struct TestKeys {
    key: SigningKey,
    jwks: PathBuf,
}

fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::generate();
        let dir = std::env::temp_dir().join("fintech-test-auth").join(format!(
            "{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        key.save(&dir).expect("test signing key saved");
        TestKeys {
            jwks: dir.join(fintech_devkit::auth::JWKS_FILE),
            key,
        }
    })
}

/// The signing key of this test process.
pub fn signing_key() -> &'static SigningKey {
    &keys().key
}

/// The JWKS file of this test process's key.
pub fn jwks_path() -> PathBuf {
    keys().jwks.clone()
}

/// The authentication settings of a test instance: the platform defaults on this process's JWKS.
pub fn auth_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        jwks: jwks_path().display().to_string(),
        issuer: DEV_ISSUER.to_owned(),
        audience: DEV_AUDIENCE.to_owned(),
        ..AuthConfig::defaults()
    }
}

/// A token for `claims`, signed by this process's key.
pub fn token(claims: &Claims) -> String {
    signing_key().mint(claims)
}

/// An operator token with every scope.
pub fn operator_token() -> String {
    token(&Claims::operator("test-operator"))
}

/// A token for `subject` with exactly `scopes`.
pub fn scoped_token(subject: &str, scopes: &[&str]) -> String {
    token(&Claims::new(subject, scopes, Duration::from_secs(3600)))
}

/// A token of customer `customer_id` with `scopes`.
pub fn customer_token(customer_id: &str, scopes: &[&str]) -> String {
    token(&Claims::customer(customer_id, scopes))
}

/// Every scope of the platform.
pub fn all_scopes() -> &'static [&'static str] {
    &ALL_SCOPES
}

/// Adds `authorization: Bearer <token>` to every request (unless the request already has one).
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The interceptor of `token`.
    pub fn new(token: &str) -> Self {
        Self(Some(format!("Bearer {token}").parse().expect("token is ASCII")))
    }

    /// An interceptor that adds nothing (an unauthenticated client).
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client channel that carries a token.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// `channel` carrying `token` on every call.
pub fn with_token(channel: tonic::transport::Channel, token: &str) -> Channel {
    InterceptedService::new(channel, Bearer::new(token))
}

/// `channel` carrying no token.
pub fn without_token(channel: tonic::transport::Channel) -> Channel {
    InterceptedService::new(channel, Bearer::none())
}
