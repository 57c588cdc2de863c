//! What accounts publishes and consumes.
//!
//! # Out
//! The full `Account` on `accounts.opened` (version 1) and `accounts.updated` (every later
//! version), and `InterestPosting` on `accounts.interest_posted`, all keyed by the account id and
//! written through the outbox in the transaction of the change.
//!
//! # In: the projection of the ledger
//! `ledger.entry_posted` (`Entry`: one `StreamAppend` per account) and `ledger.hold_placed` /
//! `hold_captured` / `hold_released` / `hold_expired` (`Hold` with the account's `Balance` right
//! after). Each event is applied in one transaction with its inbox row ([`InTransaction`]); the
//! projection itself is idempotent and order-independent too ([`crate::app::projection`]):
//! figures come from the highest ledger stream version seen, every version is recorded once.
//! Accounts this service does not own (system accounts, other ids) are ignored. A record that
//! cannot be decoded goes to `accounts.dlq`.

use std::sync::Arc;

use async_trait::async_trait;
use fintech_platform::kafka::consumer::{ConsumedEvent, EventHandler, HandlerError};
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_platform::outbox::OutboxEvent;
use fintech_proto::topics::{self, Topic};
use fintech_proto::{accounts as pb, ledger};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::app::projection::{self, HoldChange};
use crate::domain::Account;
use crate::storage::LedgerPoint;

/// CloudEvents source of every accounts event.
pub const SOURCE: &str = "/fintech/accounts";
/// Consumer group (and inbox name) of the projection.
pub const CONSUMER: &str = "accounts";
/// Input: posted entries.
pub const ENTRY_POSTED: &str = topics::LEDGER_ENTRY_POSTED.name;
/// Input: holds placed.
pub const HOLD_PLACED: &str = topics::LEDGER_HOLD_PLACED.name;
/// Input: holds captured.
pub const HOLD_CAPTURED: &str = topics::LEDGER_HOLD_CAPTURED.name;
/// Input: holds released.
pub const HOLD_RELEASED: &str = topics::LEDGER_HOLD_RELEASED.name;
/// Input: holds expired.
pub const HOLD_EXPIRED: &str = topics::LEDGER_HOLD_EXPIRED.name;
/// Output: records that could not be decoded.
pub const ACCOUNTS_DLQ: &str = topics::ACCOUNTS_DLQ.name;
/// Topics accounts reads.
pub const INPUT_TOPICS: [&str; 5] = [ENTRY_POSTED, HOLD_PLACED, HOLD_CAPTURED, HOLD_RELEASED, HOLD_EXPIRED];
/// Topics accounts writes.
pub const OUTPUT_TOPICS: [&str; 4] = [
    topics::ACCOUNTS_OPENED.name,
    topics::ACCOUNTS_UPDATED.name,
    topics::ACCOUNTS_INTEREST_POSTED.name,
    ACCOUNTS_DLQ,
];

/// Topic names with the instance's prefix.
pub type Topics = fintech_platform::kafka::TopicNames;

/// The outbox event of an account's new state: `accounts.opened` for version 1,
/// `accounts.updated` after.
pub fn account_event(names: &Topics, account: &Account) -> OutboxEvent {
    let topic: &Topic = if account.version == 1 {
        &topics::ACCOUNTS_OPENED
    } else {
        &topics::ACCOUNTS_UPDATED
    };
    OutboxEvent::of(
        names.prefix(),
        topic,
        account.account_id.to_string(),
        &pb::Account::from(account),
        account.updated_at,
    )
}

/// The outbox event of a month's interest posting.
pub fn interest_event(names: &Topics, posting: &pb::InterestPosting, at: chrono::DateTime<chrono::Utc>) -> OutboxEvent {
    OutboxEvent::of(
        names.prefix(),
        &topics::ACCOUNTS_INTEREST_POSTED,
        posting.account_id.clone(),
        posting,
        at,
    )
}

/// What one `ledger.entry_posted` means to the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoints {
    /// One stream version per account of ours (UUID ids; `system:*` accounts are left out), in
    /// account id order (the order the locks are taken in).
    pub points: Vec<LedgerPoint>,
    /// Whether the entry books interest (`metadata.kind = interest`).
    pub interest: bool,
    /// When the entry was posted.
    pub posted_at: chrono::DateTime<chrono::Utc>,
}

/// Reads an entry event: the error is permanent (the event can never be applied).
pub fn entry_points(entry: &ledger::Entry) -> Result<EntryPoints, HandlerError> {
    let posted_at = occurred(entry.posted_at.as_ref(), "entry.posted_at")?;
    let interest = entry.metadata.get("kind").map(String::as_str) == Some("interest");
    let mut appends: Vec<&ledger::StreamAppend> = entry.appends.iter().collect();
    appends.sort_by(|left, right| left.account_id.cmp(&right.account_id));
    let mut points = Vec::with_capacity(appends.len());
    for append in appends {
        // System accounts (`system:*` ids) and anything else that is not ours are ignored.
        let Ok(account_id) = append.account_id.parse::<Uuid>() else {
            continue;
        };
        // A stream's versions start at 1 (the history's CHECK); refused here, not by the database.
        if append.version < 1 {
            return Err(HandlerError::permanent(format!(
                "entry.appends[{account_id}].version must be >= 1, got {}",
                append.version
            )));
        }
        points.push(LedgerPoint {
            account_id,
            version: append.version,
            balance: append.balance_after,
            held: append.held_after,
            available: append.available_after,
            occurred_at: posted_at,
            // Interest is not the customer's doing (the contract's rule of customer movement).
            movement: !interest,
        });
    }
    Ok(EntryPoints {
        points,
        interest,
        posted_at,
    })
}

/// Reads a hold event (`placed`: `ledger.hold_placed`): the account's stream version and the
/// hold's change, `None` for a hold on an account that is not ours; the error is permanent.
pub fn hold_point(hold: &ledger::Hold, placed: bool) -> Result<Option<(LedgerPoint, HoldChange<'_>)>, HandlerError> {
    let Ok(account_id) = hold.account_id.parse::<Uuid>() else {
        return Ok(None);
    };
    let balance = hold
        .balance
        .as_ref()
        .ok_or_else(|| HandlerError::permanent("hold.balance is missing"))?;
    let status = match ledger::HoldStatus::try_from(hold.status) {
        Ok(ledger::HoldStatus::Active) => "active",
        Ok(ledger::HoldStatus::Captured) => "captured",
        Ok(ledger::HoldStatus::Released) => "released",
        Ok(ledger::HoldStatus::Expired) => "expired",
        _ => {
            return Err(HandlerError::permanent(format!(
                "hold.status {} is not a state",
                hold.status
            )));
        }
    };
    if hold.hold_id.is_empty() || hold.version < 1 || balance.version < 1 {
        return Err(HandlerError::permanent(
            "hold.hold_id, hold.version and balance.version are required",
        ));
    }
    // The ledger's hold-id rule: 1-128 visible ASCII characters (a NUL byte cannot be stored).
    if hold.hold_id.len() > 128 || !hold.hold_id.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(HandlerError::permanent(
            "hold.hold_id must be 1-128 visible ASCII characters",
        ));
    }
    let point = LedgerPoint {
        account_id,
        version: balance.version,
        balance: balance.balance,
        held: balance.held,
        available: balance.available,
        occurred_at: occurred(balance.updated_at.as_ref(), "hold.balance.updated_at")?,
        movement: placed,
    };
    let change = HoldChange {
        hold_id: &hold.hold_id,
        status,
        held: hold.held.max(0),
        version: hold.version,
    };
    Ok(Some((point, change)))
}

/// The projection consumer: decodes ledger events and applies them through
/// [`crate::app::projection`].
#[derive(Debug, Clone)]
pub struct ProjectionHandler {
    topics: Topics,
}

fn occurred(
    timestamp: Option<&prost_types::Timestamp>,
    what: &str,
) -> Result<chrono::DateTime<chrono::Utc>, HandlerError> {
    timestamp
        .and_then(crate::proto::from_timestamp)
        .ok_or_else(|| HandlerError::permanent(format!("{what} is missing or out of range")))
}

impl ProjectionHandler {
    /// A handler reading the topics of `topics`' prefix and publishing there.
    pub fn new(topics: Topics) -> Self {
        Self { topics }
    }

    async fn on_entry(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let entry: ledger::Entry = event.decode()?;
        let points = entry_points(&entry)?;
        for point in &points.points {
            projection::apply_point(conn, &self.topics, point, None)
                .await
                .map_err(HandlerError::classified)?;
        }
        if points.interest {
            projection::interest_booked(conn, &entry.entry_id, points.posted_at)
                .await
                .map_err(HandlerError::classified)?;
        }
        Ok(())
    }

    async fn on_hold(&self, conn: &mut PgConnection, event: &ConsumedEvent, placed: bool) -> Result<(), HandlerError> {
        let hold: ledger::Hold = event.decode()?;
        let Some((point, change)) = hold_point(&hold, placed)? else {
            return Ok(());
        };
        projection::apply_point(conn, &self.topics, &point, Some(&change))
            .await
            .map_err(HandlerError::classified)
    }

    /// The accounts an event touches, if it can be read (a record that cannot is rejected later).
    fn accounts_of(&self, event: &ConsumedEvent) -> Vec<Uuid> {
        match self.topics.unprefixed(&event.topic) {
            ENTRY_POSTED => event
                .decode::<ledger::Entry>()
                .map(|entry| {
                    entry
                        .appends
                        .iter()
                        .filter_map(|append| append.account_id.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            HOLD_PLACED | HOLD_CAPTURED | HOLD_RELEASED | HOLD_EXPIRED => event
                .decode::<ledger::Hold>()
                .ok()
                .and_then(|hold| hold.account_id.parse().ok())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[async_trait]
impl TransactionalHandler for ProjectionHandler {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        // Every account of the event, in id order, before any is changed.
        crate::storage::lock_accounts(conn, &self.accounts_of(event))
            .await
            .map_err(HandlerError::classified)?;
        match self.topics.unprefixed(&event.topic) {
            ENTRY_POSTED => self.on_entry(conn, event).await,
            HOLD_PLACED => self.on_hold(conn, event, true).await,
            HOLD_CAPTURED | HOLD_RELEASED | HOLD_EXPIRED => self.on_hold(conn, event, false).await,
            other => Err(HandlerError::permanent(format!(
                "accounts does not consume topic {other}"
            ))),
        }
    }

    /// A batch takes the locks of all its accounts first, in id order.
    async fn lock_batch(&self, conn: &mut PgConnection, events: &[ConsumedEvent]) -> Result<(), HandlerError> {
        let ids: Vec<Uuid> = events.iter().flat_map(|event| self.accounts_of(event)).collect();
        crate::storage::lock_accounts(conn, &ids)
            .await
            .map_err(HandlerError::classified)
    }
}

/// The handler as the platform consumer wants it.
pub fn handler(pool: PgPool, topics: Topics) -> Arc<dyn EventHandler> {
    Arc::new(InTransaction::new(pool, ProjectionHandler::new(topics)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        })
    }

    fn hold(hold_id: &str) -> ledger::Hold {
        ledger::Hold {
            hold_id: hold_id.to_owned(),
            account_id: "0191d1c4-0000-7000-8000-000000000001".to_owned(),
            status: ledger::HoldStatus::Active as i32,
            held: 2_000,
            version: 1,
            balance: Some(ledger::Balance {
                version: 3,
                updated_at: at(),
                ..ledger::Balance::default()
            }),
            ..ledger::Hold::default()
        }
    }

    /// Found by the `accounts_events` fuzz target: a hold id with a NUL byte was accepted and
    /// failed in PostgreSQL; a stream version below 1 broke the history's CHECK.
    #[test]
    fn what_the_tables_refuse_is_refused_when_read() {
        assert!(hold_point(&hold("transfer:1"), true).unwrap().is_some());
        for bad in ["transfer:\0", "with space", &"h".repeat(129)] {
            assert!(
                matches!(hold_point(&hold(bad), true), Err(HandlerError::Permanent(_))),
                "{bad:?}"
            );
        }
        let append = |version| ledger::StreamAppend {
            account_id: "0191d1c4-0000-7000-8000-000000000001".to_owned(),
            version,
            ..ledger::StreamAppend::default()
        };
        let entry = |version| ledger::Entry {
            posted_at: at(),
            appends: vec![append(version)],
            ..ledger::Entry::default()
        };
        assert_eq!(entry_points(&entry(1)).unwrap().points.len(), 1);
        assert!(matches!(entry_points(&entry(0)), Err(HandlerError::Permanent(_))));
    }
}
