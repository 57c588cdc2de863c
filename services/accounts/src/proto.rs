//! Conversions between the protobuf contracts (`fintech.accounts.v1`) and the domain types, used by
//! the gRPC layer and by the events (which carry the same protobuf entities).

use fintech_proto::accounts as pb;

use crate::domain::{Account, AccountState, Balances, FreezeKind, Product};

pub use fintech_proto::time::{from_timestamp, timestamp};

impl From<Product> for pb::Product {
    fn from(product: Product) -> Self {
        match product {
            Product::Current => Self::Current,
            Product::Savings => Self::Savings,
        }
    }
}

impl From<AccountState> for pb::AccountState {
    fn from(state: AccountState) -> Self {
        match state {
            AccountState::Active => Self::Active,
            AccountState::Dormant => Self::Dormant,
            AccountState::Closed => Self::Closed,
        }
    }
}

impl From<FreezeKind> for pb::FreezeKind {
    fn from(kind: FreezeKind) -> Self {
        match kind {
            FreezeKind::Debits => Self::Debits,
            FreezeKind::Credits => Self::Credits,
            FreezeKind::Both => Self::Both,
        }
    }
}

/// The domain product of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn product_from_wire(raw: i32) -> Result<Option<Product>, i32> {
    match pb::Product::try_from(raw) {
        Ok(pb::Product::Unspecified) => Ok(None),
        Ok(pb::Product::Current) => Ok(Some(Product::Current)),
        Ok(pb::Product::Savings) => Ok(Some(Product::Savings)),
        Err(_) => Err(raw),
    }
}

/// The domain freeze kind of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for unknown.
pub fn freeze_kind_from_wire(raw: i32) -> Result<Option<FreezeKind>, i32> {
    match pb::FreezeKind::try_from(raw) {
        Ok(pb::FreezeKind::Unspecified) => Ok(None),
        Ok(pb::FreezeKind::Debits) => Ok(Some(FreezeKind::Debits)),
        Ok(pb::FreezeKind::Credits) => Ok(Some(FreezeKind::Credits)),
        Ok(pb::FreezeKind::Both) => Ok(Some(FreezeKind::Both)),
        Err(_) => Err(raw),
    }
}

impl From<&Account> for pb::Account {
    fn from(account: &Account) -> Self {
        Self {
            account_id: account.account_id.to_string(),
            customer_id: account.customer_id.clone(),
            product: pb::Product::from(account.product) as i32,
            currency: account.currency.to_string(),
            state: pb::AccountState::from(account.state) as i32,
            freeze: account.freeze.as_ref().map(|freeze| pb::Freeze {
                kind: pb::FreezeKind::from(freeze.kind) as i32,
                reason: freeze.reason.clone(),
                frozen_at: Some(timestamp(freeze.frozen_at)),
            }),
            overdraft_limit: account.overdraft_limit,
            opened_at: Some(timestamp(account.opened_at)),
            updated_at: Some(timestamp(account.updated_at)),
            closed_at: account.closed_at.map(timestamp),
            version: account.version,
            last_customer_movement_at: account.last_customer_movement_at.map(timestamp),
        }
    }
}

impl From<&Balances> for pb::AccountBalances {
    fn from(balances: &Balances) -> Self {
        Self {
            ledger_balance: balances.ledger_balance,
            held: balances.held,
            available: balances.available,
            ledger_version: balances.ledger_version,
            ledger_updated_at: balances.ledger_updated_at.map(timestamp),
            accrued_interest: balances.accrued_interest,
        }
    }
}
