//! Keyset page tokens: the shared `Cursor` of every List RPC (`PageRequest::parse`) and the
//! ledger's ListHolds token. A token that parses is the token the service would issue for that
//! position (it re-encodes to itself), lies in PostgreSQL's time range and names a storable id;
//! a page request that parses has a size the queries accept.
#![no_main]

use fintech_ledger::domain::hold::check_hold_id;
use fintech_ledger::grpc::{hold_page_token, parse_hold_token};
use fintech_types::Violations;
use fintech_types::paging::{CURSOR_RANGE, Cursor, MAX_PAGE_SIZE, PageRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (i32, &str)| {
    let (page_size, token) = input;

    if let Some(cursor) = Cursor::from_token(token) {
        assert_eq!(cursor.token(), token, "a token that parses re-encodes to itself");
        assert!(CURSOR_RANGE.contains(&cursor.created_at.timestamp_micros()));
    }
    match PageRequest::parse(page_size, token) {
        Ok(page) => {
            assert!(
                (1..=i64::from(MAX_PAGE_SIZE)).contains(&page.size),
                "size {}",
                page.size
            );
            assert_eq!(page.fetch_limit(), page.size + 1);
            assert_eq!(
                page.after,
                if token.is_empty() {
                    None
                } else {
                    Cursor::from_token(token)
                }
            );
            let (low, _) = page.ascending_bound();
            let (high, _) = page.descending_bound();
            assert!(CURSOR_RANGE.contains(&low.timestamp_micros()));
            assert!(CURSOR_RANGE.contains(&high.timestamp_micros()));
        }
        Err(violations) => {
            let fields = violations.fields();
            assert!(!fields.is_empty());
            assert!(fields.iter().all(|field| ["page_size", "page_token"].contains(field)));
        }
    }

    if let Some((placed_at, hold_id)) = parse_hold_token(token) {
        assert_eq!(
            hold_page_token(placed_at, &hold_id),
            token,
            "a hold token re-encodes to itself"
        );
        assert!(CURSOR_RANGE.contains(&placed_at.timestamp_micros()));
        let mut violations = Violations::default();
        check_hold_id(&hold_id, &mut violations);
        assert!(violations.is_empty(), "a hold token names a valid hold id: {hold_id:?}");
    }
});
