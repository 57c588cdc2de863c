//! Idempotency keys as clients send them (`idempotency-key` metadata → `key_from_metadata` →
//! `IdempotencyKey::parse`). An accepted key is 1-128 visible ASCII characters, the same key the
//! client sent; the scope it is stored under for a caller never collides with another caller's
//! (the `%`, `:` and `@` escaping is injective) and never contains the Redis key separator `:`
//! from the caller's part.
#![no_main]

use fintech_platform::idempotency::{IdempotencyKey, MAX_KEY_LEN, METADATA_KEY, key_from_metadata};
use libfuzzer_sys::fuzz_target;
use tonic::metadata::{MetadataMap, MetadataValue};

// Input: the key, then (after the first NUL byte, if any) two caller subjects separated by NUL.
fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |byte| *byte == 0);
    let key = parts.next().unwrap_or_default();
    let first = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let second = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();

    if let Ok(text) = std::str::from_utf8(key) {
        if let Ok(parsed) = IdempotencyKey::parse(text) {
            assert!(!text.is_empty() && text.len() <= MAX_KEY_LEN);
            assert!(text.bytes().all(|byte| byte.is_ascii_graphic()));
            assert_eq!(parsed.as_str(), text);
            assert_eq!(parsed.caller(), None);
            assert_eq!(parsed.stored_scope("scope"), "scope");
            let mine = parsed.clone().for_caller(&first);
            let theirs = parsed.clone().for_caller(&second);
            assert_eq!(mine.as_str(), text);
            let (mine, theirs) = (mine.stored_scope("svc/Method"), theirs.stored_scope("svc/Method"));
            assert_eq!(
                mine == theirs,
                first == second,
                "{first:?} and {second:?} share {mine:?}"
            );
            assert!(!mine["svc/Method@".len()..].contains(':'), "{mine:?}");
        }
    }

    // Through the metadata, as a request carries it.
    let Ok(value) = MetadataValue::try_from(key) else {
        return;
    };
    let mut metadata = MetadataMap::new();
    metadata.insert(METADATA_KEY, value);
    match key_from_metadata(&metadata) {
        Ok(Some(parsed)) => assert_eq!(parsed.as_str().as_bytes(), key),
        Ok(None) => panic!("a sent key is not reported absent"),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(std::str::from_utf8(key).map_or(true, |text| IdempotencyKey::parse(text).is_err()));
        }
    }
});
