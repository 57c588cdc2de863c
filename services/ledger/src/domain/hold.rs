//! Holds: a reservation of money on one account, lowering its available balance until it is
//! captured (by an entry), released or expired, each at most once. The rules here are pure; the
//! protocol (stream locks, events, projections, outbox) is in `app::holds`.

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound as _, Utc};
use fintech_types::Currency;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::entry::{MAX_DESCRIPTION_LEN, MAX_LINE_AMOUNT, check_entry_id};
use super::stream::canonical_json;
use super::{LedgerError, Violations, parse_id};

/// Longest a hold may be placed for.
pub const MAX_HOLD_DAYS: i64 = 30;

/// Lifecycle of a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    /// Reserving `held`.
    Active,
    /// Consumed by captures.
    Captured,
    /// Released (by ReleaseHold, or the remainder of a capture).
    Released,
    /// Released by the expiry job.
    Expired,
}

impl HoldStatus {
    /// Every status.
    pub const ALL: [Self; 4] = [Self::Active, Self::Captured, Self::Released, Self::Expired];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Captured => "captured",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == value)
    }
}

/// What a partial capture does with the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remainder {
    /// Release it: the hold ends CAPTURED.
    Release,
    /// Keep it held.
    Keep,
}

/// The account's balances right after a change of a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldBalance {
    /// Balance.
    pub balance: i64,
    /// Sum of the active holds.
    pub held: i64,
    /// Available.
    pub available: i64,
    /// Stream version.
    pub version: i64,
    /// Time of that event.
    pub updated_at: DateTime<Utc>,
}

/// A hold as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Client-chosen id.
    pub hold_id: String,
    /// The account.
    pub account_id: Uuid,
    /// Its currency.
    pub currency: String,
    /// Amount placed.
    pub amount: i64,
    /// Amount still held.
    pub held: i64,
    /// Amount captured so far.
    pub captured: i64,
    /// Lifecycle state.
    pub status: HoldStatus,
    /// Why it was placed.
    pub reason: String,
    /// When the expiry job releases it.
    pub expires_at: DateTime<Utc>,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Why it was released or expired.
    pub release_reason: String,
    /// The capturing entries, in order.
    pub capture_entry_ids: Vec<String>,
    /// 1 when placed, +1 per change.
    pub version: i64,
    /// Fingerprint of the placement request.
    pub fingerprint: String,
    /// The account's balances right after the last change.
    pub balance: HoldBalance,
}

/// PlaceHold's input, as received.
#[derive(Debug, Clone)]
pub struct PlaceHoldInput {
    /// Client-chosen id.
    pub hold_id: String,
    /// The account.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// Currency code.
    pub currency: String,
    /// Expiry; `None` when missing or invalid on the wire.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
}

/// A validated placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    /// Client-chosen id.
    pub hold_id: String,
    /// The account.
    pub account_id: Uuid,
    /// Minor units, > 0.
    pub amount: i64,
    /// The currency.
    pub currency: Currency,
    /// In the future, at most [`MAX_HOLD_DAYS`] ahead.
    pub expires_at: DateTime<Utc>,
    /// Why.
    pub reason: String,
}

/// Checks a hold id: the entry-id rule (1-128 visible ASCII characters), on field `hold_id`.
pub fn check_hold_id(hold_id: &str, violations: &mut Violations) {
    let mut own = Violations::default();
    check_entry_id(hold_id, &mut own);
    if !own.is_empty() {
        violations.add("hold_id", "must be 1-128 visible ASCII characters ('!' to '~')");
    }
}

/// Checks a free-text reason.
pub fn check_reason(field: &str, reason: &str, violations: &mut Violations) {
    if reason.chars().count() > MAX_DESCRIPTION_LEN || reason.contains('\0') {
        violations.add(
            field,
            format!("must be at most {MAX_DESCRIPTION_LEN} characters without NUL"),
        );
    }
}

/// Checks an amount of a hold operation.
pub fn check_amount(field: &str, amount: i64, violations: &mut Violations) {
    if amount <= 0 {
        violations.add(field, format!("must be greater than 0 (minor units), got {amount}"));
    } else if amount > MAX_LINE_AMOUNT {
        violations.add(
            field,
            format!("must be at most {MAX_LINE_AMOUNT} (minor units), got {amount}"),
        );
    }
}

impl PlaceHoldInput {
    /// Validates every field at `now`.
    pub fn validate(self, now: DateTime<Utc>) -> Result<NewHold, LedgerError> {
        let mut violations = Violations::default();
        check_hold_id(&self.hold_id, &mut violations);
        let account_id = parse_id("account_id", &self.account_id, &mut violations);
        check_amount("amount", self.amount, &mut violations);
        let currency = match Currency::parse(&self.currency) {
            Ok(currency) => Some(currency),
            Err(error) => {
                violations.add("currency", error.to_string());
                None
            }
        };
        match self.expires_at {
            None => violations.add("expires_at", "is required (a valid timestamp)"),
            Some(at) if at <= now => violations.add("expires_at", "must be in the future"),
            Some(at) if at > now + Duration::days(MAX_HOLD_DAYS) => {
                violations.add("expires_at", format!("must be at most {MAX_HOLD_DAYS} days ahead"));
            }
            Some(_) => {}
        }
        check_reason("reason", &self.reason, &mut violations);
        match (account_id, currency, self.expires_at) {
            (Some(account_id), Some(currency), Some(expires_at)) if violations.is_empty() => Ok(NewHold {
                hold_id: self.hold_id,
                account_id,
                amount: self.amount,
                currency,
                expires_at: expires_at.trunc_subsecs(6),
                reason: self.reason,
            }),
            _ => Err(LedgerError::Invalid(violations)),
        }
    }
}

impl NewHold {
    /// Hex SHA-256 of what was asked: the same placement always has the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let canonical = canonical_json(&serde_json::json!({
            "hold_id": self.hold_id,
            "account_id": self.account_id.to_string(),
            "amount": self.amount,
            "currency": self.currency.as_str(),
            "expires_at": self.expires_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "reason": self.reason,
        }));
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// What a capture does to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturePlan {
    /// Amount captured.
    pub amount: i64,
    /// Amount released with it.
    pub released: i64,
    /// What the hold still holds afterwards.
    pub held_after: i64,
    /// Its status afterwards.
    pub status_after: HoldStatus,
}

/// The capture of `amount` from `hold` (ACTIVE, `amount <= held`); the error names the rule.
pub fn plan_capture(hold: &Hold, amount: i64, remainder: Remainder) -> Result<CapturePlan, (&'static str, String)> {
    if hold.status != HoldStatus::Active {
        return Err((
            "hold.not_active",
            format!("hold {} is {}, not active", hold.hold_id, hold.status.as_str()),
        ));
    }
    if amount > hold.held {
        return Err((
            "hold.capture_exceeds_held",
            format!(
                "capture of {amount} exceeds the {} still held by hold {}",
                hold.held, hold.hold_id
            ),
        ));
    }
    let rest = hold.held - amount;
    let (released, held_after) = match remainder {
        Remainder::Release => (rest, 0),
        Remainder::Keep => (0, rest),
    };
    Ok(CapturePlan {
        amount,
        released,
        held_after,
        status_after: if held_after == 0 {
            HoldStatus::Captured
        } else {
            HoldStatus::Active
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::now;

    fn input() -> PlaceHoldInput {
        PlaceHoldInput {
            hold_id: "h-1".to_owned(),
            account_id: Uuid::new_v4().to_string(),
            amount: 100,
            currency: "EUR".to_owned(),
            expires_at: Some(now() + Duration::hours(1)),
            reason: "card".to_owned(),
        }
    }

    #[test]
    fn placements_are_validated_and_fingerprinted() {
        let hold = input().validate(now()).unwrap();
        assert_eq!(hold.fingerprint(), hold.clone().fingerprint());
        let other = NewHold {
            amount: 101,
            ..hold.clone()
        };
        assert_ne!(hold.fingerprint(), other.fingerprint());
        let bad = PlaceHoldInput {
            hold_id: String::new(),
            account_id: "x".to_owned(),
            amount: 0,
            currency: "EURO".to_owned(),
            expires_at: Some(now() + Duration::days(31)),
            reason: "\0".to_owned(),
        };
        match bad.validate(now()) {
            Err(LedgerError::Invalid(violations)) => assert_eq!(
                violations.fields(),
                ["hold_id", "account_id", "amount", "currency", "expires_at", "reason"]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn captures_release_or_keep_the_rest() {
        let placed = input().validate(now()).unwrap();
        let at = now();
        let hold = Hold {
            hold_id: placed.hold_id.clone(),
            account_id: placed.account_id,
            currency: "EUR".to_owned(),
            amount: 100,
            held: 100,
            captured: 0,
            status: HoldStatus::Active,
            reason: String::new(),
            expires_at: placed.expires_at,
            placed_at: at,
            updated_at: at,
            release_reason: String::new(),
            capture_entry_ids: Vec::new(),
            version: 1,
            fingerprint: placed.fingerprint(),
            balance: HoldBalance {
                balance: 0,
                held: 100,
                available: 0,
                version: 2,
                updated_at: at,
            },
        };
        let keep = plan_capture(&hold, 30, Remainder::Keep).unwrap();
        assert_eq!(
            (keep.released, keep.held_after, keep.status_after),
            (0, 70, HoldStatus::Active)
        );
        let release = plan_capture(&hold, 30, Remainder::Release).unwrap();
        assert_eq!(
            (release.released, release.held_after, release.status_after),
            (70, 0, HoldStatus::Captured)
        );
        assert_eq!(
            plan_capture(&hold, 101, Remainder::Keep).unwrap_err().0,
            "hold.capture_exceeds_held"
        );
        let ended = Hold {
            status: HoldStatus::Released,
            held: 0,
            ..hold
        };
        assert_eq!(
            plan_capture(&ended, 1, Remainder::Keep).unwrap_err().0,
            "hold.not_active"
        );
    }
}
