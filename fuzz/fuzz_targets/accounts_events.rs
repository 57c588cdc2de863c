//! The accounts projection's consumer: `ledger.entry_posted` (`Entry`) and `ledger.hold_*`
//! (`Hold`). Each payload that decodes round-trips; what the handler accepts is what its tables
//! store: stream versions >= 1, a known hold status, a hold id, held >= 0, one point per account
//! in account order.
#![no_main]

use fintech_accounts::events::{entry_points, hold_point};
use fintech_fuzz::{assert_round_trip, storable};
use fintech_proto::ledger;
use libfuzzer_sys::fuzz_target;

// Input: a selector byte (bit 0: a hold event, bit 1: `hold_placed`), then the payload.
fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let placed = selector & 2 == 2;
    if selector & 1 == 1 {
        let event = fintech_fuzz::event("ledger.hold_placed", None, payload);
        let Ok(wire) = event.decode::<ledger::Hold>() else {
            return;
        };
        assert_round_trip(&wire);
        let Ok(Some((point, change))) = hold_point(&wire, placed) else {
            return;
        };
        assert!(point.version >= 1 && change.version >= 1);
        assert!(change.held >= 0);
        assert!(
            !change.hold_id.is_empty() && storable(change.hold_id),
            "hold id {:?}",
            change.hold_id
        );
        assert!(["active", "captured", "released", "expired"].contains(&change.status));
        assert_eq!(point.movement, placed);
    } else {
        let event = fintech_fuzz::event("ledger.entry_posted", None, payload);
        let Ok(wire) = event.decode::<ledger::Entry>() else {
            return;
        };
        assert_round_trip(&wire);
        let Ok(points) = entry_points(&wire) else { return };
        assert!(points.points.iter().all(|point| point.version >= 1));
        assert!(points.points.iter().all(|point| point.occurred_at == points.posted_at));
        assert!(points.points.iter().all(|point| point.movement != points.interest));
    }
});
