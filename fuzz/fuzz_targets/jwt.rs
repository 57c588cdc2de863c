//! Bearer tokens: the `authorization` metadata parser (`bearer`) and `KeySet::verify` against a
//! real JWKS (a P-256 key made at start-up). Mode 0: any header value; what `bearer` accepts is
//! at most `MAX_TOKEN_BYTES` without spaces, and no such unsigned input ever verifies. Mode 1:
//! claims (JSON from the input) signed with the real key under a header the input picks, or
//! forged (`alg: none`, HS256 keyed with the public JWKS, a signature moved from another token);
//! a token that verifies is one whose issuer, audience, expiry and subject the rules accept, and
//! the caller is exactly its claims; a forged one never verifies.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use fintech_devkit::auth::{Claims, SigningKey, now_secs};
use fintech_platform::auth::{AuthConfig, KeySet, MAX_TOKEN_BYTES, bearer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    key: SigningKey,
    keys: KeySet,
    config: AuthConfig,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let key = SigningKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, key.jwks_json()).unwrap();
        let config = AuthConfig {
            jwks: jwks.display().to_string(),
            // No refetch on an unknown kid while fuzzing (the file never changes).
            jwks_refresh_min: Duration::from_secs(86_400),
            jwks_max_age: Duration::from_secs(86_400),
            ..AuthConfig::defaults()
        };
        let keys = runtime.block_on(KeySet::load(&config)).unwrap();
        // The harness itself: a token minted as the devkit mints them verifies.
        let good = key.mint(&Claims::operator("fuzz"));
        runtime
            .block_on(keys.verify(&good))
            .expect("a freshly minted token verifies");
        Fixture {
            runtime,
            key,
            keys,
            config,
            _dir: dir,
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Ok(value) = http::HeaderValue::from_bytes(rest) else {
            return;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let Ok(token) = bearer(&headers) else { return };
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES && !token.contains(' '));
        let verified = fixture.runtime.block_on(fixture.keys.verify(token));
        assert!(verified.is_err(), "an unsigned input verified: {token:?}");
        return;
    }

    let Some((&flags, claims)) = rest.split_first() else {
        return;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) else {
        return;
    };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = match flags & 3 {
        0 | 1 => Some(fixture.key.kid().to_owned()),
        2 => Some("another-key".to_owned()),
        _ => None,
    };
    header.typ = match (flags >> 2) & 3 {
        0 => Some("JWT".to_owned()),
        1 => Some("at+jwt".to_owned()),
        2 => None,
        _ => Some("JOSE+JSON".to_owned()),
    };
    let forgery = (flags >> 4) & 3;
    let token = match forgery {
        0 => fixture.key.sign_with_header(&header, &claims),
        1 => {
            // alg: none, no signature.
            let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": fixture.key.kid()});
            format!(
                "{}.{}.",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            )
        }
        2 => {
            // Algorithm confusion: HS256 keyed with the public key set.
            header.alg = Algorithm::HS256;
            let Ok(secret) = EncodingKey::from_secret(fixture.key.jwks_json().as_bytes()) else {
                return;
            };
            jsonwebtoken::encode(&header, &claims, &secret).unwrap_or_default()
        }
        _ => {
            // A valid signature of other claims, under these claims.
            let real = fixture.key.mint(&Claims::operator("someone-else"));
            let signed = fixture.key.sign_with_header(&header, &claims);
            match (signed.rsplit_once('.'), real.rsplit_once('.')) {
                (Some((body, _)), Some((_, signature))) => format!("{body}.{signature}"),
                _ => return,
            }
        }
    };
    let verified = fixture.runtime.block_on(fixture.keys.verify(&token));
    let Ok(caller) = verified else { return };
    assert_eq!(forgery, 0, "a forged token verified: {token}");
    assert!(header.kid.as_deref() == Some(fixture.key.kid()));
    assert!(header.typ.as_deref().is_none_or(|typ| typ == "JWT" || typ == "at+jwt"));
    assert_eq!(claims["iss"], fixture.config.issuer.as_str());
    let audience = fixture.config.audience.as_str();
    assert!(
        claims["aud"] == audience
            || claims["aud"]
                .as_array()
                .is_some_and(|list| list.iter().any(|aud| aud == audience)),
        "audience {}",
        claims["aud"]
    );
    let leeway = fixture.config.leeway.as_secs();
    let exp = claims["exp"].as_f64().expect("an accepted token has a numeric exp");
    assert!(exp + leeway as f64 > now_secs() as f64, "expired at {exp}");
    if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_f64) {
        assert!(nbf <= (now_secs() + leeway) as f64, "not before {nbf}");
    }
    assert_eq!(claims["sub"], caller.subject.as_str());
    let scopes: BTreeSet<String> = claims["scope"]
        .as_str()
        .unwrap_or_default()
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(caller.scopes, scopes);
    let customer = claims["customer_id"].as_str().filter(|customer| !customer.is_empty());
    assert_eq!(caller.customer_id.as_deref(), customer);
});
