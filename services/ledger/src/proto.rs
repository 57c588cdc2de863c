//! Conversions between the protobuf contracts (`fintech.ledger.v1`) and the domain types, used by
//! the gRPC layer and by the published events (which carry the same `Entry`).

use std::collections::BTreeMap;

use fintech_proto::ledger as pb;

use crate::domain::account::OverdraftKind;
use crate::domain::hold::{Hold, HoldStatus, Remainder};
use crate::domain::stream::{EventBody, StoredEvent};
use crate::domain::{Account, AccountType, BalanceView, EntryInput, LineInput, OverdraftPolicy, PostedEntry, Side};

pub use fintech_proto::time::timestamp;

pub use fintech_proto::time::from_timestamp;

/// The domain type of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn account_type_from_wire(raw: i32) -> Result<Option<AccountType>, i32> {
    match pb::AccountType::try_from(raw) {
        Ok(pb::AccountType::Unspecified) => Ok(None),
        Ok(pb::AccountType::Asset) => Ok(Some(AccountType::Asset)),
        Ok(pb::AccountType::Liability) => Ok(Some(AccountType::Liability)),
        Ok(pb::AccountType::Equity) => Ok(Some(AccountType::Equity)),
        Ok(pb::AccountType::Revenue) => Ok(Some(AccountType::Revenue)),
        Ok(pb::AccountType::Expense) => Ok(Some(AccountType::Expense)),
        Err(_) => Err(raw),
    }
}

/// The overdraft kind of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn overdraft_from_wire(raw: i32) -> Result<Option<OverdraftKind>, i32> {
    match pb::OverdraftPolicy::try_from(raw) {
        Ok(pb::OverdraftPolicy::Unspecified) => Ok(None),
        Ok(pb::OverdraftPolicy::Forbidden) => Ok(Some(OverdraftKind::Forbidden)),
        Ok(pb::OverdraftPolicy::Limited) => Ok(Some(OverdraftKind::Limited)),
        Ok(pb::OverdraftPolicy::Unlimited) => Ok(Some(OverdraftKind::Unlimited)),
        Err(_) => Err(raw),
    }
}

/// The side of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn side_from_wire(raw: i32) -> Result<Option<Side>, i32> {
    match pb::Side::try_from(raw) {
        Ok(pb::Side::Unspecified) => Ok(None),
        Ok(pb::Side::Debit) => Ok(Some(Side::Debit)),
        Ok(pb::Side::Credit) => Ok(Some(Side::Credit)),
        Err(_) => Err(raw),
    }
}

impl From<AccountType> for pb::AccountType {
    fn from(kind: AccountType) -> Self {
        match kind {
            AccountType::Asset => Self::Asset,
            AccountType::Liability => Self::Liability,
            AccountType::Equity => Self::Equity,
            AccountType::Revenue => Self::Revenue,
            AccountType::Expense => Self::Expense,
        }
    }
}

impl From<Side> for pb::Side {
    fn from(side: Side) -> Self {
        match side {
            Side::Debit => Self::Debit,
            Side::Credit => Self::Credit,
        }
    }
}

fn overdraft_to_wire(policy: OverdraftPolicy) -> pb::OverdraftPolicy {
    match policy {
        OverdraftPolicy::Forbidden => pb::OverdraftPolicy::Forbidden,
        OverdraftPolicy::Limited(_) => pb::OverdraftPolicy::Limited,
        OverdraftPolicy::Unlimited => pb::OverdraftPolicy::Unlimited,
    }
}

/// The wire form of `account` whose stream is at `version`.
pub fn account_to_wire(account: &Account, version: i64) -> pb::Account {
    pb::Account {
        account_id: account.account_id.to_string(),
        code: account.code.clone(),
        name: account.name.clone(),
        r#type: pb::AccountType::from(account.account_type) as i32,
        currency: account.currency.as_str().to_owned(),
        overdraft_policy: overdraft_to_wire(account.overdraft) as i32,
        overdraft_limit: account.overdraft.limit(),
        system: account.system,
        created_at: Some(timestamp(account.created_at)),
        version,
        customer_id: account
            .customer
            .as_ref()
            .map(|customer| customer.customer_id.clone())
            .unwrap_or_default(),
    }
}

impl From<HoldStatus> for pb::HoldStatus {
    fn from(status: HoldStatus) -> Self {
        match status {
            HoldStatus::Active => Self::Active,
            HoldStatus::Captured => Self::Captured,
            HoldStatus::Released => Self::Released,
            HoldStatus::Expired => Self::Expired,
        }
    }
}

/// The hold status of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn hold_status_from_wire(raw: i32) -> Result<Option<HoldStatus>, i32> {
    match pb::HoldStatus::try_from(raw) {
        Ok(pb::HoldStatus::Unspecified) => Ok(None),
        Ok(pb::HoldStatus::Active) => Ok(Some(HoldStatus::Active)),
        Ok(pb::HoldStatus::Captured) => Ok(Some(HoldStatus::Captured)),
        Ok(pb::HoldStatus::Released) => Ok(Some(HoldStatus::Released)),
        Ok(pb::HoldStatus::Expired) => Ok(Some(HoldStatus::Expired)),
        Err(_) => Err(raw),
    }
}

/// The remainder rule of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn remainder_from_wire(raw: i32) -> Result<Option<Remainder>, i32> {
    match pb::CaptureRemainder::try_from(raw) {
        Ok(pb::CaptureRemainder::Unspecified) => Ok(None),
        Ok(pb::CaptureRemainder::Release) => Ok(Some(Remainder::Release)),
        Ok(pb::CaptureRemainder::Keep) => Ok(Some(Remainder::Keep)),
        Err(_) => Err(raw),
    }
}

/// The wire form of a hold, with the account's balances after its last change.
pub fn hold_to_wire(hold: &Hold) -> pb::Hold {
    pb::Hold {
        hold_id: hold.hold_id.clone(),
        account_id: hold.account_id.to_string(),
        currency: hold.currency.clone(),
        amount: hold.amount,
        held: hold.held,
        captured: hold.captured,
        status: pb::HoldStatus::from(hold.status) as i32,
        reason: hold.reason.clone(),
        expires_at: Some(timestamp(hold.expires_at)),
        placed_at: Some(timestamp(hold.placed_at)),
        updated_at: Some(timestamp(hold.updated_at)),
        release_reason: hold.release_reason.clone(),
        capture_entry_ids: hold.capture_entry_ids.clone(),
        balance: Some(pb::Balance {
            account_id: hold.account_id.to_string(),
            currency: hold.currency.clone(),
            balance: hold.balance.balance,
            version: hold.balance.version,
            updated_at: Some(timestamp(hold.balance.updated_at)),
            held: hold.balance.held,
            available: hold.balance.available,
        }),
        version: hold.version,
    }
}

impl From<&BalanceView> for pb::Balance {
    fn from(balance: &BalanceView) -> Self {
        Self {
            account_id: balance.account_id.to_string(),
            currency: balance.currency.as_str().to_owned(),
            balance: balance.balance,
            version: balance.version,
            updated_at: Some(timestamp(balance.updated_at)),
            held: balance.held,
            available: balance.available,
        }
    }
}

impl From<&PostedEntry> for pb::Entry {
    fn from(entry: &PostedEntry) -> Self {
        Self {
            entry_id: entry.entry_id.clone(),
            description: entry.description.clone(),
            metadata: entry
                .metadata
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            lines: entry
                .lines
                .iter()
                .map(|line| pb::EntryLine {
                    account_id: line.account_id.to_string(),
                    side: pb::Side::from(line.side) as i32,
                    amount: line.amount,
                    currency: line.currency.as_str().to_owned(),
                })
                .collect(),
            posted_at: Some(timestamp(entry.posted_at)),
            appends: entry
                .appends
                .iter()
                .map(|append| pb::StreamAppend {
                    account_id: append.account_id.to_string(),
                    version: append.version,
                    hash: append.hash.clone(),
                    balance_after: append.balance_after,
                    held_after: append.held_after,
                    available_after: append.available_after,
                })
                .collect(),
        }
    }
}

impl From<pb::PostEntryRequest> for EntryInput {
    fn from(request: pb::PostEntryRequest) -> Self {
        Self {
            entry_id: request.entry_id,
            description: request.description,
            metadata: request.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            lines: request
                .lines
                .into_iter()
                .map(|line| LineInput {
                    account_id: line.account_id,
                    side: side_from_wire(line.side),
                    amount: line.amount,
                    currency: line.currency,
                })
                .collect(),
        }
    }
}

/// The wire form of a stored event; an event that does not decode is an internal error.
pub fn event_to_wire(event: &StoredEvent) -> Result<pb::AccountEvent, String> {
    let body = match event.body()? {
        EventBody::AccountOpened(opened) => {
            let account = opened.account(event.occurred_at)?;
            pb::account_event::Body::AccountOpened(pb::AccountOpened {
                account: Some(account_to_wire(&account, 1)),
            })
        }
        EventBody::EntryPosted(posted) => {
            let lines = posted
                .lines
                .iter()
                .map(|line| {
                    Ok(pb::PostingLine {
                        line_index: i32::try_from(line.line_index).map_err(|error| error.to_string())?,
                        side: pb::Side::from(line.side()?) as i32,
                        amount: line.amount,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            pb::account_event::Body::Posting(pb::Posting {
                entry_id: posted.entry_id,
                description: posted.description,
                lines,
                balance_after: posted.balance_after,
            })
        }
        EventBody::HoldPlaced(placed) => pb::account_event::Body::HoldPlaced(pb::HoldPlaced {
            expires_at: chrono::DateTime::parse_from_rfc3339(&placed.expires_at)
                .map(|at| timestamp(at.with_timezone(&chrono::Utc)))
                .ok(),
            hold_id: placed.hold_id,
            amount: placed.amount,
            reason: placed.reason,
            held_after: placed.held_after,
        }),
        EventBody::HoldCaptured(captured) => pb::account_event::Body::HoldCaptured(pb::HoldCaptured {
            hold_id: captured.hold_id,
            entry_id: captured.entry_id,
            amount: captured.amount,
            released: captured.released,
            held_after: captured.held_after,
        }),
        EventBody::HoldReleased(released) => pb::account_event::Body::HoldReleased(pb::HoldReleased {
            hold_id: released.hold_id,
            amount: released.amount,
            expired: released.expired,
            reason: released.reason,
            held_after: released.held_after,
        }),
    };
    Ok(pb::AccountEvent {
        account_id: event.stream_id.to_string(),
        version: event.version,
        event_type: event.event_type.clone(),
        occurred_at: Some(timestamp(event.occurred_at)),
        body: Some(body),
        previous_hash: event.previous_hash.clone(),
        hash: event.hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_enums_map_unspecified_and_unknown_apart() {
        assert_eq!(account_type_from_wire(0), Ok(None));
        assert_eq!(account_type_from_wire(1), Ok(Some(AccountType::Asset)));
        assert_eq!(account_type_from_wire(42), Err(42));
        assert_eq!(side_from_wire(2), Ok(Some(Side::Credit)));
        assert_eq!(overdraft_from_wire(3), Ok(Some(OverdraftKind::Unlimited)));
        assert_eq!(overdraft_from_wire(-1), Err(-1));
    }

    #[test]
    fn timestamps_round_trip() {
        let now = crate::domain::now();
        assert_eq!(from_timestamp(&timestamp(now)), Some(now));
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: 0, nanos: -1 }), None);
    }
}
