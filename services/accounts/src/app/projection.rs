//! The projection of the ledger's events, applied inside the consumer's transaction (the account
//! rows are already locked by the handler).
//!
//! # Guarantees
//! - **Highest version wins**: balance, held, available and `ledger_version` only ever move to a
//!   higher ledger stream version; an older event arriving late still lands in the balance
//!   history (interest needs it) but does not change the figures shown.
//! - **Once per version**: the history's primary key `(account, version)` makes a duplicate (a
//!   redelivery, or the same fact re-published under a new event id) a no-op, movement included.
//! - **Customer movement** (a non-interest entry or a hold placed) moves
//!   `last_customer_movement_at` forward (never back) and turns a DORMANT account ACTIVE again,
//!   published on `accounts.updated` in the same transaction.
//! - An account this service does not own is ignored; a closed account that still moves is
//!   logged as an error (an in-flight posting that beat the ledger's copy of the close, see
//!   ADR 0023) and projected all the same.

use chrono::{DateTime, Utc};
use fintech_platform::outbox;
use sqlx::PgConnection;

use crate::domain::{self, AccountState, Command};
use crate::events::{self, SOURCE, Topics};
use crate::storage::{self, LedgerPoint};

/// A hold's new state, from a hold event.
#[derive(Debug, Clone, Copy)]
pub struct HoldChange<'a> {
    /// The hold.
    pub hold_id: &'a str,
    /// Its stored status.
    pub status: &'static str,
    /// Still held.
    pub held: i64,
    /// The hold's own version.
    pub version: i64,
}

/// Applies one stream version of one account (see the module docs).
pub async fn apply_point(
    conn: &mut PgConnection,
    topics: &Topics,
    point: &LedgerPoint,
    hold: Option<&HoldChange<'_>>,
) -> anyhow::Result<()> {
    let Some(account) = storage::get_account(conn, point.account_id, true).await? else {
        tracing::debug!(account_id = %point.account_id, "not an account of this service; ignored");
        return Ok(());
    };
    if let Some(hold) = hold {
        storage::upsert_hold(
            conn,
            hold.hold_id,
            point.account_id,
            hold.status,
            hold.held,
            hold.version,
        )
        .await?;
    }
    let new = storage::record_point(conn, point).await?;
    if !new {
        tracing::debug!(account_id = %point.account_id, version = point.version, "ledger version seen before");
        return Ok(());
    }
    let advanced = storage::advance_balances(conn, point).await?;
    if account.state == AccountState::Closed && advanced && (point.balance != 0 || point.held != 0) {
        tracing::error!(
            account_id = %point.account_id,
            version = point.version,
            balance = point.balance,
            "a closed account moved in the ledger (a posting in flight when it was closed)"
        );
    }
    if !point.movement {
        return Ok(());
    }
    let latest = storage::note_movement(conn, point.account_id, point.occurred_at).await?;
    if account.state == AccountState::Dormant {
        let movement_at = latest.unwrap_or(point.occurred_at);
        let next = account.apply(&Command::Reactivate { movement_at }, domain::now())?;
        storage::update_account(conn, &next).await?;
        storage::insert_change(
            conn,
            &next,
            "reactivate",
            Some("customer movement in the ledger"),
            "ledger",
        )
        .await?;
        outbox::enqueue(conn, SOURCE, &events::account_event(topics, &next)).await?;
        tracing::info!(account_id = %next.account_id, version = next.version, "dormant account reactivated");
    }
    Ok(())
}

/// Notes that the ledger booked the interest posting `entry_id`.
pub async fn interest_booked(conn: &mut PgConnection, entry_id: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    storage::mark_posting_booked(conn, entry_id, at).await
}
