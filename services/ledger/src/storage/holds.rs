//! The hold tables (`ledger_holds`, `ledger_hold_endings`, `ledger_hold_captures`) and the append
//! of a hold event to its account's stream. Every function runs on the caller's connection (the
//! hold protocol composes them in one transaction under the stream's lock).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::insert_event;
use crate::domain::hold::{Hold, HoldBalance, HoldStatus};
use crate::domain::stream::StoredEvent;

const HOLD_COLUMNS: &str = "hold_id, account_id, currency, amount, held, captured, status, reason, expires_at, \
     placed_at, updated_at, release_reason, capture_entry_ids, version, fingerprint, balance, balance_held, \
     balance_available, balance_version, balance_at";

fn hold_from_row(row: &PgRow) -> anyhow::Result<Hold> {
    let status: String = row.try_get("status")?;
    Ok(Hold {
        hold_id: row.try_get("hold_id")?,
        account_id: row.try_get("account_id")?,
        currency: row.try_get("currency")?,
        amount: row.try_get("amount")?,
        held: row.try_get("held")?,
        captured: row.try_get("captured")?,
        status: HoldStatus::from_stored(&status).with_context(|| format!("unknown stored hold status {status:?}"))?,
        reason: row.try_get("reason")?,
        expires_at: row.try_get("expires_at")?,
        placed_at: row.try_get("placed_at")?,
        updated_at: row.try_get("updated_at")?,
        release_reason: row.try_get("release_reason")?,
        capture_entry_ids: row.try_get("capture_entry_ids")?,
        version: row.try_get("version")?,
        fingerprint: row.try_get("fingerprint")?,
        balance: HoldBalance {
            balance: row.try_get("balance")?,
            held: row.try_get("balance_held")?,
            available: row.try_get("balance_available")?,
            version: row.try_get("balance_version")?,
            updated_at: row.try_get("balance_at")?,
        },
    })
}

/// A hold by id; with `lock`, its row is locked until the transaction ends (taken after the
/// account stream's lock: streams first, then holds, everywhere).
pub async fn get_hold(conn: &mut PgConnection, hold_id: &str, lock: bool) -> anyhow::Result<Option<Hold>> {
    let locking = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {HOLD_COLUMNS} FROM ledger_holds WHERE hold_id = $1{locking}"
    ))
    .bind(hold_id)
    .fetch_optional(conn)
    .await
    .context("read hold")?;
    row.as_ref().map(hold_from_row).transpose()
}

/// Inserts a new hold (`false` when its id is taken: a concurrent placement, the caller retries).
pub async fn insert_hold(conn: &mut PgConnection, hold: &Hold) -> anyhow::Result<bool> {
    let inserted = sqlx::query(&format!(
        "INSERT INTO ledger_holds ({HOLD_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
         ON CONFLICT (hold_id) DO NOTHING"
    ))
    .bind(&hold.hold_id)
    .bind(hold.account_id)
    .bind(&hold.currency)
    .bind(hold.amount)
    .bind(hold.held)
    .bind(hold.captured)
    .bind(hold.status.as_str())
    .bind(&hold.reason)
    .bind(hold.expires_at)
    .bind(hold.placed_at)
    .bind(hold.updated_at)
    .bind(&hold.release_reason)
    .bind(&hold.capture_entry_ids)
    .bind(hold.version)
    .bind(&hold.fingerprint)
    .bind(hold.balance.balance)
    .bind(hold.balance.held)
    .bind(hold.balance.available)
    .bind(hold.balance.version)
    .bind(hold.balance.updated_at)
    .execute(conn)
    .await
    .context("insert hold")?
    .rows_affected();
    Ok(inserted == 1)
}

/// Writes the new state of an ACTIVE hold (version `hold.version - 1` in the table). A hold that
/// is no longer active is refused by the table's trigger; `false` when the row was not at the
/// previous version.
pub async fn update_hold(conn: &mut PgConnection, hold: &Hold) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "UPDATE ledger_holds SET held = $2, captured = $3, status = $4, updated_at = $5, release_reason = $6, \
         capture_entry_ids = $7, version = $8, balance = $9, balance_held = $10, balance_available = $11, \
         balance_version = $12, balance_at = $13 \
         WHERE hold_id = $1 AND status = 'active' AND version = $8 - 1",
    )
    .bind(&hold.hold_id)
    .bind(hold.held)
    .bind(hold.captured)
    .bind(hold.status.as_str())
    .bind(hold.updated_at)
    .bind(&hold.release_reason)
    .bind(&hold.capture_entry_ids)
    .bind(hold.version)
    .bind(hold.balance.balance)
    .bind(hold.balance.held)
    .bind(hold.balance.available)
    .bind(hold.balance.version)
    .bind(hold.balance.updated_at)
    .execute(conn)
    .await
    .context("update hold")?
    .rows_affected();
    Ok(updated == 1)
}

/// Records the one terminal transition of a hold (its primary key refuses a second).
pub async fn insert_ending(
    conn: &mut PgConnection,
    hold_id: &str,
    status: HoldStatus,
    at: DateTime<Utc>,
    version: i64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO ledger_hold_endings (hold_id, status, ended_at, version) VALUES ($1, $2, $3, $4)")
        .bind(hold_id)
        .bind(status.as_str())
        .bind(at)
        .bind(version)
        .execute(conn)
        .await
        .context("record the end of a hold")?;
    Ok(())
}

/// Records a capture (its primary key, the entry id, refuses a second).
pub async fn insert_capture(
    conn: &mut PgConnection,
    entry_id: &str,
    hold_id: &str,
    amount: i64,
    released: i64,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO ledger_hold_captures (entry_id, hold_id, amount, released, captured_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(entry_id)
    .bind(hold_id)
    .bind(amount)
    .bind(released)
    .bind(at)
    .execute(conn)
    .await
    .context("record a capture")?;
    Ok(())
}

/// The hold a capture entry captured, if `entry_id` is one.
pub async fn capture_of_entry(conn: &mut PgConnection, entry_id: &str) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar("SELECT hold_id FROM ledger_hold_captures WHERE entry_id = $1")
        .bind(entry_id)
        .fetch_optional(conn)
        .await
        .context("read capture")
}

/// Appends a hold event to its stream (moving it from `expected_version`) and sets the account's
/// held projection; `false` when the stream moved (the caller retries).
pub async fn append_hold_event(
    conn: &mut PgConnection,
    event: &StoredEvent,
    expected_version: i64,
    held_after: i64,
) -> anyhow::Result<bool> {
    let moved = sqlx::query(
        "UPDATE ledger_streams SET version = $2, head_hash = $3, updated_at = $4 \
         WHERE stream_id = $1 AND version = $5",
    )
    .bind(event.stream_id)
    .bind(event.version)
    .bind(&event.hash)
    .bind(event.occurred_at)
    .bind(expected_version)
    .execute(&mut *conn)
    .await
    .context("move stream")?
    .rows_affected();
    if moved != 1 {
        return Ok(false);
    }
    insert_event(conn, event).await?;
    sqlx::query("UPDATE ledger_balances SET held = $2, version = $3, updated_at = $4 WHERE account_id = $1")
        .bind(event.stream_id)
        .bind(held_after)
        .bind(event.version)
        .bind(event.occurred_at)
        .execute(&mut *conn)
        .await
        .context("project held")?;
    Ok(true)
}

/// An account's holds, newest first, after the keyset `(placed_at, hold_id)` when given; at most
/// `limit + 1`.
pub async fn list_holds(
    conn: &mut PgConnection,
    account_id: Uuid,
    status: Option<HoldStatus>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> anyhow::Result<Vec<Hold>> {
    let (after_at, after_id) = after.unzip();
    let rows = sqlx::query(&format!(
        "SELECT {HOLD_COLUMNS} FROM ledger_holds WHERE account_id = $1 \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::timestamptz IS NULL OR (placed_at, hold_id) < ($3, $4)) \
         ORDER BY placed_at DESC, hold_id DESC LIMIT $5"
    ))
    .bind(account_id)
    .bind(status.map(HoldStatus::as_str))
    .bind(after_at)
    .bind(after_id)
    .bind(limit + 1)
    .fetch_all(conn)
    .await
    .context("list holds")?;
    rows.iter().map(hold_from_row).collect()
}

/// Ids of ACTIVE holds past their expiry, oldest first.
pub async fn expired_holds(conn: &mut PgConnection, now: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT hold_id FROM ledger_holds WHERE status = 'active' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("expired holds")
}
