//! Timestamps at the database's precision.

use chrono::{DateTime, SubsecRound, Utc};

/// The current time truncated to microseconds (PostgreSQL's `timestamptz` precision), so what a
/// command returns equals what a later read returns, what an event carries and what a hash covers.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
