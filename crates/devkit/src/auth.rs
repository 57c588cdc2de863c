//! Development signing keys and tokens: one ES256 (ECDSA P-256) key, its public JWKS, and tokens
//! signed with it. Used by the integration tests (a key per test process), the benchmark and
//! `deploy/local/token` (the key under `.local/auth/`, which `deploy/local/up` creates). Never a
//! dependency of a service: services only ever see the public JWKS.
//!
//! # Files (`.local/auth/`, never committed)
//!
//! - `signing-key.pem`: the private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), mode 0600;
//! - `jwks.json`: `{"keys":[{"kty":"EC","crv":"P-256","x":…,"y":…,"kid":…,"alg":"ES256","use":"sig"}]}`;
//!   `kid` is the key's RFC 7638 thumbprint (SHA-256, base64url).
//!
//! # Tokens
//!
//! Header `{"alg":"ES256","typ":"JWT","kid":…}`; claims `iss` (default [`DEV_ISSUER`]), `aud`
//! (default [`DEV_AUDIENCE`]), `sub`, `scope` (space-separated), optional `customer_id`, `iat`,
//! `nbf`, `exp`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Issuer of local development tokens.
pub const DEV_ISSUER: &str = "fintech-local";
/// Audience of local development tokens.
pub const DEV_AUDIENCE: &str = "fintech-platform";
/// The algorithm of the development key.
pub const DEV_ALGORITHM: Algorithm = Algorithm::ES256;
/// Every scope of the platform (an operator token carries them all).
pub const ALL_SCOPES: [&str; 17] = [
    "payments.read",
    "payments.write",
    "tax.read",
    "tax.operate",
    "ledger.read",
    "ledger.post",
    "ledger.admin",
    "ledger.transfers",
    "accounts.read",
    "accounts.write",
    "accounts.admin",
    "transfers.read",
    "transfers.write",
    "transfers.approve",
    "notifications.read",
    "notifications.write",
    "notifications.admin",
];
/// File name of the private key in a key directory.
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// File name of the public key set in a key directory.
pub const JWKS_FILE: &str = "jwks.json";

/// PKCS#8 prefix of a P-256 private key without the optional public key (RFC 5915 inside
/// RFC 5208): `SEQUENCE { 0, { id-ecPublicKey, prime256v1 }, OCTET STRING { SEQUENCE { 1,
/// OCTET STRING (32 bytes) } } }`. The 32-byte scalar follows.
const P256_PKCS8_PREFIX: [u8; 35] = [
    0x30, 0x41, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x27, 0x30, 0x25, 0x02, 0x01, 0x01, 0x04, 0x20,
];

/// A signing key and its public JWK.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random P-256 key.
    pub fn generate() -> Self {
        loop {
            let scalar: [u8; 32] = rand::random();
            // Stay far below the group order (0xffffffff00000000…) and away from zero.
            if scalar[..4] == [0xff; 4] || scalar.iter().all(|byte| *byte == 0) {
                continue;
            }
            let mut pkcs8 = P256_PKCS8_PREFIX.to_vec();
            pkcs8.extend_from_slice(&scalar);
            if let Ok(key) = Self::from_pkcs8(pkcs8) {
                return key;
            }
        }
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> anyhow::Result<Self> {
        let encoding = EncodingKey::from_ec_der(&pkcs8);
        let mut jwk = Jwk::from_encoding_key(&encoding, DEV_ALGORITHM).context("public key of the signing key")?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).context("key thumbprint")?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        // Fails here, not at the first signature, when the scalar is no valid key.
        jsonwebtoken::encode(&Header::new(DEV_ALGORITHM), &serde_json::json!({}), &encoding)
            .context("the key signs")?;
        Ok(Self {
            pkcs8,
            encoding,
            jwk,
            kid,
        })
    }

    /// The key of a PKCS#8 PEM document.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .context("PEM body is not base64")?;
        Self::from_pkcs8(der)
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set with this key only.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// The public key set as JSON.
    pub fn jwks_json(&self) -> String {
        serde_json::to_string_pretty(&self.jwks()).unwrap_or_default()
    }

    /// Signs `claims` with header `header` (its `alg` must be ES256 for the signature to verify).
    pub fn sign_with_header(&self, header: &Header, claims: &impl Serialize) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap_or_default()
    }

    /// A signed token for `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let mut header = Header::new(DEV_ALGORITHM);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Writes `signing-key.pem` (mode 0600) and `jwks.json` into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let key_path = dir.join(SIGNING_KEY_FILE);
        write_private(&key_path, self.to_pem().as_bytes())?;
        let jwks_path = dir.join(JWKS_FILE);
        let temporary = dir.join(format!("{JWKS_FILE}.tmp"));
        std::fs::write(&temporary, self.jwks_json()).with_context(|| format!("write {}", temporary.display()))?;
        std::fs::rename(&temporary, &jwks_path).with_context(|| format!("write {}", jwks_path.display()))?;
        Ok(())
    }

    /// The key saved in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SIGNING_KEY_FILE);
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("read {} (deploy/local/up creates it)", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("{} is no P-256 PKCS#8 key", path.display()))
    }

    /// The key saved in `dir`, created (with its JWKS) if there is none.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        if dir.join(SIGNING_KEY_FILE).exists() {
            let key = Self::load(dir)?;
            if !dir.join(JWKS_FILE).exists() {
                key.save(dir)?;
            }
            return Ok(key);
        }
        let key = Self::generate();
        key.save(dir)?;
        Ok(key)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

/// The claims of a token. [`Claims::operator`] and [`Claims::customer`] are the usual starts.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject.
    pub sub: String,
    /// Space-separated scopes.
    pub scope: String,
    /// The customer the token acts for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expiry.
    pub exp: u64,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

impl Claims {
    /// A token for `sub` with `scopes`, valid from now for `ttl`.
    pub fn new(sub: &str, scopes: &[&str], ttl: Duration) -> Self {
        let now = now_secs();
        Self {
            iss: DEV_ISSUER.to_owned(),
            aud: DEV_AUDIENCE.to_owned(),
            sub: sub.to_owned(),
            scope: scopes.join(" "),
            customer_id: None,
            iat: now,
            nbf: Some(now),
            exp: now + ttl.as_secs(),
        }
    }

    /// An operator token with every scope, valid for an hour.
    pub fn operator(sub: &str) -> Self {
        Self::new(sub, &ALL_SCOPES, Duration::from_secs(3600))
    }

    /// A customer's token (subject `customer:<id>`) with `scopes`, valid for an hour.
    pub fn customer(customer_id: &str, scopes: &[&str]) -> Self {
        Self {
            customer_id: Some(customer_id.to_owned()),
            ..Self::new(&format!("customer:{customer_id}"), scopes, Duration::from_secs(3600))
        }
    }
}

/// The directory of the local development key: `FINTECH_AUTH_DIR`, else `<repo>/.local/auth`
/// for a repository found above the current directory, else `.local/auth`.
pub fn local_key_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("FINTECH_AUTH_DIR")
        && !dir.trim().is_empty()
    {
        return PathBuf::from(dir);
    }
    let mut dir = std::env::current_dir().unwrap_or_default();
    loop {
        if dir.join("deploy/local/up").exists() {
            return dir.join(".local/auth");
        }
        if !dir.pop() {
            return PathBuf::from(".local/auth");
        }
    }
}

/// Parses a scope list (`'payments.read payments.write'` or comma-separated); every scope must
/// be one of [`ALL_SCOPES`].
pub fn parse_scopes(text: &str) -> anyhow::Result<Vec<String>> {
    let mut scopes = Vec::new();
    for scope in text.split([' ', ',']).filter(|scope| !scope.is_empty()) {
        if !ALL_SCOPES.contains(&scope) {
            bail!("unknown scope {scope:?} (known: {})", ALL_SCOPES.join(" "));
        }
        scopes.push(scope.to_owned());
    }
    Ok(scopes)
}
