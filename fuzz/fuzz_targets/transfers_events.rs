//! The transfers service's consumer: `accounts.*` (`Account` → its account cache). Each payload
//! that decodes round-trips; an account the cache accepts is one its table stores (version >= 1,
//! a known state and freeze kind, no NUL byte in its text).
#![no_main]

use fintech_fuzz::{assert_round_trip, storable};
use fintech_proto::accounts;
use fintech_transfers::events;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let event = fintech_fuzz::event("accounts.updated", None, payload);
    let Ok(account) = event.decode::<accounts::Account>() else {
        return;
    };
    assert_round_trip(&account);
    let Ok(cached) = events::cached(&account) else { return };
    assert!(cached.version >= 1);
    assert!(["active", "dormant", "closed"].contains(&cached.state.as_str()));
    assert!(
        cached
            .freeze_kind
            .as_deref()
            .is_none_or(|kind| ["debits", "credits", "both"].contains(&kind))
    );
    assert!(storable(&cached.customer_id), "customer id {:?}", cached.customer_id);
    assert!(storable(&cached.currency), "currency {:?}", cached.currency);
});
