//! What transfers publishes and consumes.
//!
//! # Out
//! The full `Transfer` on `transfers.created` (version 1), `transfers.completed`,
//! `transfers.failed` (failed and rejected) and `transfers.cancelled`, keyed by the transfer id,
//! written through the outbox by the saga's activities in the transaction of the row change
//! (so a retried or replayed activity never publishes twice, see `storage`).
//!
//! # In: the accounts cache (ECST)
//! `accounts.opened` / `accounts.updated` (full `Account`) go through the kit's transactional
//! inbox into `account_cache`, highest version wins. Validation reads only that table; the
//! service never calls the accounts service. A record that cannot be decoded goes to
//! `transfers.dlq`.

use std::sync::Arc;

use async_trait::async_trait;
use fintech_platform::kafka::consumer::{ConsumedEvent, EventHandler, HandlerError};
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_platform::outbox::OutboxEvent;
use fintech_proto::topics::{self, Topic};
use fintech_proto::{accounts as apb, transfers as pb};
use sqlx::{PgConnection, PgPool};

use crate::domain::{CachedAccount, Status, Transfer};

/// CloudEvents source of every transfers event.
pub const SOURCE: &str = "/fintech/transfers";
/// Consumer group (and inbox name) of the accounts cache.
pub const CONSUMER: &str = "transfers";
/// Input: accounts opened.
pub const ACCOUNTS_OPENED: &str = topics::ACCOUNTS_OPENED.name;
/// Input: accounts changed.
pub const ACCOUNTS_UPDATED: &str = topics::ACCOUNTS_UPDATED.name;
/// Output: records that could not be decoded.
pub const TRANSFERS_DLQ: &str = topics::TRANSFERS_DLQ.name;
/// Topics transfers reads.
pub const INPUT_TOPICS: [&str; 2] = [ACCOUNTS_OPENED, ACCOUNTS_UPDATED];
/// Topics transfers writes.
pub const OUTPUT_TOPICS: [&str; 5] = [
    topics::TRANSFERS_CREATED.name,
    topics::TRANSFERS_COMPLETED.name,
    topics::TRANSFERS_FAILED.name,
    topics::TRANSFERS_CANCELLED.name,
    TRANSFERS_DLQ,
];

/// Topic names with the instance's prefix.
pub type Topics = fintech_platform::kafka::TopicNames;

/// The topic of a transfer's state, if that state is published: version 1 on `created`, the
/// terminal ones on theirs; the steps in between are not events.
pub fn topic_of(transfer: &Transfer) -> Option<&'static Topic> {
    if transfer.version == 1 {
        return Some(&topics::TRANSFERS_CREATED);
    }
    match transfer.status {
        Status::Completed => Some(&topics::TRANSFERS_COMPLETED),
        Status::Failed | Status::Rejected => Some(&topics::TRANSFERS_FAILED),
        Status::Cancelled => Some(&topics::TRANSFERS_CANCELLED),
        Status::Pending | Status::AwaitingApproval => None,
    }
}

/// The outbox event of a transfer's new state, when it is one that is published.
pub fn transfer_event(names: &Topics, transfer: &Transfer) -> Option<OutboxEvent> {
    topic_of(transfer).map(|topic| {
        OutboxEvent::of(
            names.prefix(),
            topic,
            transfer.transfer_id.to_string(),
            &pb::Transfer::from(transfer),
            transfer.updated_at,
        )
    })
}

/// The accounts cache consumer.
#[derive(Debug, Clone, Default)]
pub struct AccountsCache;

/// The cache row of an `accounts.*` event; the error is permanent (the event can never apply).
pub fn cached(account: &apb::Account) -> Result<CachedAccount, HandlerError> {
    let account_id = account
        .account_id
        .parse()
        .map_err(|_| HandlerError::permanent("account.account_id is not a UUID"))?;
    if account.version < 1 || account.customer_id.is_empty() || account.currency.len() != 3 {
        return Err(HandlerError::permanent(
            "account.version, account.customer_id and account.currency are required",
        ));
    }
    // The rules accounts checked before publishing: what it could never send (or PostgreSQL
    // cannot store, a NUL byte) is refused here rather than by the database.
    let mut violations = crate::domain::Violations::default();
    fintech_types::fields::check_customer_id("account.customer_id", &account.customer_id, &mut violations);
    fintech_types::fields::parse_currency("account.currency", &account.currency, &mut violations);
    if !violations.is_empty() {
        return Err(HandlerError::permanent(violations));
    }
    let state = match apb::AccountState::try_from(account.state) {
        Ok(apb::AccountState::Active) => "active",
        Ok(apb::AccountState::Dormant) => "dormant",
        Ok(apb::AccountState::Closed) => "closed",
        _ => {
            return Err(HandlerError::permanent(format!(
                "account.state {} is not a state",
                account.state
            )));
        }
    };
    let freeze_kind = match account
        .freeze
        .as_ref()
        .map(|freeze| apb::FreezeKind::try_from(freeze.kind))
    {
        None | Some(Ok(apb::FreezeKind::Unspecified)) => None,
        Some(Ok(apb::FreezeKind::Debits)) => Some("debits"),
        Some(Ok(apb::FreezeKind::Credits)) => Some("credits"),
        Some(Ok(apb::FreezeKind::Both)) => Some("both"),
        Some(Err(_)) => return Err(HandlerError::permanent("account.freeze.kind is not a kind")),
    };
    Ok(CachedAccount {
        account_id,
        customer_id: account.customer_id.clone(),
        currency: account.currency.clone(),
        state: state.to_owned(),
        freeze_kind: freeze_kind.map(str::to_owned),
        version: account.version,
    })
}

#[async_trait]
impl TransactionalHandler for AccountsCache {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let account: apb::Account = event.decode()?;
        let entry = cached(&account)?;
        let updated_at = account
            .updated_at
            .as_ref()
            .and_then(crate::proto::from_timestamp)
            .ok_or_else(|| HandlerError::permanent("account.updated_at is missing or out of range"))?;
        crate::storage::upsert_account(conn, &entry, updated_at)
            .await
            .map_err(HandlerError::classified)
    }
}

/// The handler as the platform consumer wants it.
pub fn handler(pool: PgPool) -> Arc<dyn EventHandler> {
    Arc::new(InTransaction::new(pool, AccountsCache))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> apb::Account {
        apb::Account {
            account_id: "0191d1c4-0000-7000-8000-000000000001".to_owned(),
            customer_id: "cust-42".to_owned(),
            currency: "EUR".to_owned(),
            state: apb::AccountState::Active as i32,
            version: 1,
            ..apb::Account::default()
        }
    }

    /// Found by the `transfers_events` fuzz target: a customer id with a NUL byte was accepted
    /// and failed in PostgreSQL.
    #[test]
    fn what_accounts_never_publishes_is_refused_when_read() {
        assert!(cached(&account()).is_ok());
        for (customer_id, currency) in [("cust\0", "EUR"), ("cust-42", "E\0R"), ("cust-42", "ZZZ")] {
            let bad = apb::Account {
                customer_id: customer_id.to_owned(),
                currency: currency.to_owned(),
                ..account()
            };
            assert!(
                matches!(cached(&bad), Err(HandlerError::Permanent(_))),
                "{customer_id:?} {currency:?}"
            );
        }
    }
}
