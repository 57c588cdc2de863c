//! The JSON Web Key Set: loaded from a file or an `https://` URL, cached, fetched again when a
//! token names an unknown `kid` (at most every `jwks_refresh_min`) or the keys are older than
//! `jwks_max_age`; and the verification of one token against it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use super::{AuthConfig, Caller, short};

/// Longest time one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted JWKS document.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a token was refused. Logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` metadata.
    #[error("no authorization metadata")]
    Missing,
    /// Not `Bearer <token>`, sent twice, too long or not ASCII.
    #[error("malformed authorization metadata: {0}")]
    Malformed(&'static str),
    /// The JOSE header does not decode (includes `alg: none`, which no verifier accepts).
    #[error("undecodable token header: {0}")]
    Header(String),
    /// `alg` is not in the allowlist.
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(Algorithm),
    /// `typ` is neither `JWT` nor `at+jwt`.
    #[error("token type {0:?} is not accepted")]
    Type(String),
    /// No `kid` in the header.
    #[error("token names no key (kid)")]
    NoKeyId,
    /// The `kid` is not in the key set, even after a refresh.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// The key's type or declared `alg` does not fit the token's `alg`.
    #[error("key {kid:?} cannot verify {alg:?}")]
    KeyMismatch {
        /// The key.
        kid: String,
        /// The token's algorithm.
        alg: Algorithm,
    },
    /// Signature, `exp`, `nbf`, `iss`, `aud` or a required claim failed.
    #[error("token rejected: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    customer_id: Option<String>,
}

struct Key {
    decoding: DecodingKey,
    /// The `alg` the JWK declares, if any; a token must then use exactly that one.
    algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct Loaded {
    keys: HashMap<String, Arc<Key>>,
    fetched_at: Option<Instant>,
}

/// The verification keys of one issuer, and the rules tokens are checked against.
pub struct KeySet {
    source: String,
    http: Option<reqwest::Client>,
    loaded: RwLock<Loaded>,
    /// When the last fetch was attempted (single flight, rate limit).
    last_fetch: Mutex<Option<Instant>>,
    validation: Validation,
    algorithms: Vec<Algorithm>,
    refresh_min: Duration,
    max_age: Duration,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeySet")
            .field("source", &self.source)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Loads the key set of `config.jwks`; an unreadable or empty set is an error naming
    /// `AUTH_JWKS`.
    pub async fn load(config: &AuthConfig) -> crate::Result<Self> {
        let http = if config.jwks.starts_with("https://") {
            Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|error| config_error(format!("cannot build the HTTPS client: {error}")))?,
            )
        } else if config.jwks.contains("://") {
            return Err(config_error(
                "must be a file path or an https:// URL (keys are never fetched in clear)".to_owned(),
            ));
        } else {
            None
        };
        let mut validation = Validation::new(config.algorithms.first().copied().unwrap_or(Algorithm::ES256));
        validation.algorithms = config.algorithms.clone();
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let set = Self {
            source: config.jwks.clone(),
            http,
            loaded: RwLock::new(Loaded::default()),
            last_fetch: Mutex::new(None),
            validation,
            algorithms: config.algorithms.clone(),
            refresh_min: config.jwks_refresh_min,
            max_age: config.jwks_max_age,
        };
        let keys = set.fetch().await.map_err(config_error)?;
        if keys.is_empty() {
            return Err(config_error(format!("{}: no usable signing key", set.source)));
        }
        tracing::info!(source = %set.source, keys = keys.len(), "verification keys loaded");
        *set.loaded.write().await = Loaded {
            keys,
            fetched_at: Some(Instant::now()),
        };
        *set.last_fetch.lock().await = Some(Instant::now());
        Ok(set)
    }

    /// Verifies `token` and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| TokenError::Header(error.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        if let Some(typ) = &header.typ
            && !typ.eq_ignore_ascii_case("JWT")
            && !typ.eq_ignore_ascii_case("at+jwt")
        {
            return Err(TokenError::Type(short(typ)));
        }
        let kid = header.kid.ok_or(TokenError::NoKeyId)?;
        let key = self
            .key(&kid)
            .await
            .ok_or_else(|| TokenError::UnknownKey(short(&kid)))?;
        let fits = key.decoding.family() == header.alg.family()
            && key.algorithm.is_none_or(|algorithm| algorithm == header.alg);
        if !fits {
            return Err(TokenError::KeyMismatch {
                kid: short(&kid),
                alg: header.alg,
            });
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(TokenError::Invalid)?;
        let claims = data.claims;
        let scopes: BTreeSet<String> = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Caller {
            subject: claims.sub,
            customer_id: claims.customer_id.filter(|customer| !customer.is_empty()),
            scopes,
        })
    }

    /// The key `kid`, fetching the set again when it is unknown or the set is old (rate-limited).
    async fn key(&self, kid: &str) -> Option<Arc<Key>> {
        let (found, stale) = {
            let loaded = self.loaded.read().await;
            let stale = loaded
                .fetched_at
                .is_none_or(|fetched| fetched.elapsed() >= self.max_age);
            (loaded.keys.get(kid).cloned(), stale)
        };
        if found.is_some() && !stale {
            return found;
        }
        self.refresh().await;
        self.loaded.read().await.keys.get(kid).cloned().or(found)
    }

    /// Fetches the set again unless a fetch happened within `refresh_min`; one fetch at a time.
    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.refresh_min) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) if !keys.is_empty() => {
                tracing::info!(source = %self.source, keys = keys.len(), "verification keys refreshed");
                *self.loaded.write().await = Loaded {
                    keys,
                    fetched_at: Some(Instant::now()),
                };
            }
            Ok(_) => tracing::warn!(source = %self.source, "refreshed key set has no usable key; keeping the old one"),
            Err(error) => tracing::warn!(source = %self.source, %error, "key set refresh failed; keeping the old one"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let bytes = match &self.http {
            Some(client) => {
                let response = client
                    .get(&self.source)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|error| format!("{}: {error}", self.source))?;
                let body = response
                    .bytes()
                    .await
                    .map_err(|error| format!("{}: {error}", self.source))?;
                body.to_vec()
            }
            None => tokio::fs::read(&self.source)
                .await
                .map_err(|error| format!("{}: {error}", self.source))?,
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("{}: larger than {MAX_JWKS_BYTES} bytes", self.source));
        }
        parse_jwks(&bytes).map_err(|error| format!("{}: {error}", self.source))
    }
}

fn config_error(reason: String) -> crate::Error {
    crate::Error::Config {
        variable: "AUTH_JWKS".to_owned(),
        reason,
    }
}

/// The signing keys of a JWKS document, by `kid`. Keys without a `kid`, for another use than
/// signatures, symmetric (`oct`) keys and keys of a type this build cannot use are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, Arc<Key>>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(bytes).map_err(|error| format!("not a JWKS: {error}"))?;
    let mut keys = HashMap::new();
    for value in document.keys {
        if value.get("kty").and_then(serde_json::Value::as_str) == Some("oct") {
            tracing::warn!("JWKS: symmetric key skipped");
            continue;
        }
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::warn!(%error, "JWKS: unreadable key skipped");
                continue;
            }
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!("JWKS: key without kid skipped");
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            continue;
        }
        let algorithm = match jwk.common.key_algorithm {
            None => None,
            Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => continue,
            Some(declared) => match declared.to_string().parse::<Algorithm>() {
                Ok(algorithm) => Some(algorithm),
                Err(_) => continue,
            },
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(decoding) => {
                keys.insert(kid, Arc::new(Key { decoding, algorithm }));
            }
            Err(error) => tracing::warn!(kid = %short(&kid), %error, "JWKS: unusable key skipped"),
        }
    }
    Ok(keys)
}
