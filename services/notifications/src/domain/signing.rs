//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`,
//! the key being the base64 after `whsec_` of the endpoint's secret. During a rotation every
//! secret still in force signs, space-separated; a receiver that knows any one of them verifies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the specification asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// A signing secret, `whsec_<base64>`. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Self {
        let bytes: [u8; SECRET_BYTES] = rand::random();
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
    }

    /// A stored secret; `None` if it is not `whsec_<base64>`.
    pub fn parse(text: &str) -> Option<Self> {
        let key = text.strip_prefix(SECRET_PREFIX)?;
        STANDARD.decode(key).ok().filter(|key| !key.is_empty())?;
        Some(Self(text.to_owned()))
    }

    /// The text, to store or to hand to the endpoint's owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        // Checked at construction.
        STANDARD
            .decode(self.0.strip_prefix(SECRET_PREFIX).unwrap_or_default())
            .unwrap_or_default()
    }

    /// `v1,<base64 signature>` of `id.timestamp.body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key()).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_specification_example_signs_as_published() {
        // The example of the Standard Webhooks specification (and of its reference libraries).
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, r#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_new_secret_has_the_prefix_and_enough_randomness() {
        let secret = Secret::generate();
        let key = secret.key();
        assert!(secret.expose().starts_with(SECRET_PREFIX));
        assert_eq!(key.len(), SECRET_BYTES);
        assert_ne!(Secret::generate(), secret);
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }

    #[test]
    fn every_secret_in_force_signs() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 10, "{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [new.sign("msg_1", 10, "{}"), old.sign("msg_1", 10, "{}")]);
    }
}
