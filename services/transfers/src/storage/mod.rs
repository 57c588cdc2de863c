//! The transfers tables (`migrations/transfers/`). Every function runs on the connection it is
//! given, so the activities compose a row change with its outbox row in one transaction.
//!
//! A change is written only when the row's version is below the version the workflow assigned to
//! it (`WHERE version < $n`): an activity retried after it committed changes nothing the second
//! time and reports that it did not, so its caller publishes nothing twice.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::{CachedAccount, Cursor, PageRequest, Refusal, RefusalCode, Status, Step, Transfer};

const COLUMNS: &str = "transfer_id, workflow_id, fingerprint, requested_by, customer_id, from_account_id, to_account_id, \
     amount, currency, reference, status, step, failure_code, failure_reason, hold_id, entry_id, requires_approval, \
     created_at, updated_at, finished_at, version";

fn refusal_code(code: &str) -> Option<RefusalCode> {
    use RefusalCode::*;
    [
        InsufficientFunds,
        UnknownAccount,
        AccountClosed,
        SourceFrozen,
        DestinationFrozen,
        CurrencyMismatch,
        LedgerRefused,
        Cancelled,
        Rejected,
        ApprovalTimeout,
    ]
    .into_iter()
    .find(|candidate| candidate.as_str() == code)
}

fn transfer_from_row(row: &PgRow) -> anyhow::Result<Transfer> {
    let status: String = row.try_get("status")?;
    let step: String = row.try_get("step")?;
    let failure_code: Option<String> = row.try_get("failure_code")?;
    let failure = match failure_code {
        Some(code) => Some(Refusal {
            code: refusal_code(&code).with_context(|| format!("stored failure code {code:?}"))?,
            reason: row.try_get::<Option<String>, _>("failure_reason")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Transfer {
        transfer_id: row.try_get("transfer_id")?,
        workflow_id: row.try_get("workflow_id")?,
        fingerprint: row.try_get("fingerprint")?,
        requested_by: row.try_get("requested_by")?,
        customer_id: row.try_get("customer_id")?,
        from_account_id: row.try_get("from_account_id")?,
        to_account_id: row.try_get("to_account_id")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        reference: row.try_get("reference")?,
        status: Status::parse(&status).with_context(|| format!("stored status {status:?}"))?,
        step: Step::parse(&step).with_context(|| format!("stored step {step:?}"))?,
        failure,
        hold_id: row.try_get("hold_id")?,
        entry_id: row.try_get("entry_id")?,
        requires_approval: row.try_get("requires_approval")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
        version: row.try_get("version")?,
    })
}

/// Inserts a transfer as accepted; `false` when it exists already (nothing written).
#[tracing::instrument(skip_all, fields(transfer_id = %transfer.transfer_id))]
pub async fn insert_transfer(conn: &mut PgConnection, transfer: &Transfer) -> anyhow::Result<bool> {
    let done = sqlx::query(&format!(
        "INSERT INTO transfers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19, $20, $21) ON CONFLICT (transfer_id) DO NOTHING"
    ))
    .bind(transfer.transfer_id)
    .bind(&transfer.workflow_id)
    .bind(&transfer.fingerprint)
    .bind(&transfer.requested_by)
    .bind(&transfer.customer_id)
    .bind(transfer.from_account_id)
    .bind(transfer.to_account_id)
    .bind(transfer.amount)
    .bind(&transfer.currency)
    .bind(&transfer.reference)
    .bind(transfer.status.as_str())
    .bind(transfer.step.as_str())
    .bind(transfer.failure.as_ref().map(|failure| failure.code.as_str()))
    .bind(transfer.failure.as_ref().map(|failure| failure.reason.as_str()))
    .bind(&transfer.hold_id)
    .bind(&transfer.entry_id)
    .bind(transfer.requires_approval)
    .bind(transfer.created_at)
    .bind(transfer.updated_at)
    .bind(transfer.finished_at)
    .bind(transfer.version)
    .execute(conn)
    .await
    .context("insert transfer")?;
    Ok(done.rows_affected() == 1)
}

/// Writes `transfer` over the stored row if the stored version is below `transfer.version`;
/// `false` when it was not (the change was written before).
#[tracing::instrument(skip_all, fields(transfer_id = %transfer.transfer_id, version = transfer.version))]
pub async fn advance_transfer(conn: &mut PgConnection, transfer: &Transfer) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE transfers SET status = $2, step = $3, failure_code = $4, failure_reason = $5, hold_id = $6, \
         entry_id = $7, updated_at = $8, finished_at = $9, version = $10 WHERE transfer_id = $1 AND version < $10",
    )
    .bind(transfer.transfer_id)
    .bind(transfer.status.as_str())
    .bind(transfer.step.as_str())
    .bind(transfer.failure.as_ref().map(|failure| failure.code.as_str()))
    .bind(transfer.failure.as_ref().map(|failure| failure.reason.as_str()))
    .bind(&transfer.hold_id)
    .bind(&transfer.entry_id)
    .bind(transfer.updated_at)
    .bind(transfer.finished_at)
    .bind(transfer.version)
    .execute(conn)
    .await
    .context("advance transfer")?;
    Ok(done.rows_affected() == 1)
}

/// A transfer by id (`lock`: `FOR UPDATE`).
#[tracing::instrument(skip(conn))]
pub async fn get_transfer(conn: &mut PgConnection, transfer_id: Uuid, lock: bool) -> anyhow::Result<Option<Transfer>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM transfers WHERE transfer_id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(transfer_id)
    .fetch_optional(conn)
    .await
    .context("read transfer")?;
    row.as_ref().map(transfer_from_row).transpose()
}

/// Whom to list transfers of.
#[derive(Debug, Clone)]
pub enum ListBy {
    /// Out of or into an account.
    Account(Uuid),
    /// Of a customer.
    Customer(String),
}

/// A page of transfers, newest first, and the cursor of the next page.
#[tracing::instrument(skip(conn, page))]
pub async fn list_transfers(
    conn: &mut PgConnection,
    by: &ListBy,
    page: &PageRequest,
) -> anyhow::Result<(Vec<Transfer>, Option<Cursor>)> {
    let (before_time, before_id) = page.descending_bound();
    let rows = match by {
        ListBy::Account(account_id) => {
            // Two index scans (out and in), merged; a transfer is never both.
            sqlx::query(&format!(
                "(SELECT {COLUMNS} FROM transfers WHERE from_account_id = $1 AND (created_at, transfer_id) < ($2, $3) \
                   ORDER BY created_at DESC, transfer_id DESC LIMIT $4) \
                 UNION ALL \
                 (SELECT {COLUMNS} FROM transfers WHERE to_account_id = $1 AND (created_at, transfer_id) < ($2, $3) \
                   ORDER BY created_at DESC, transfer_id DESC LIMIT $4) \
                 ORDER BY created_at DESC, transfer_id DESC LIMIT $4"
            ))
            .bind(account_id)
            .bind(before_time)
            .bind(before_id)
            .bind(page.fetch_limit())
            .fetch_all(conn)
            .await
        }
        ListBy::Customer(customer_id) => {
            sqlx::query(&format!(
                "SELECT {COLUMNS} FROM transfers WHERE customer_id = $1 AND (created_at, transfer_id) < ($2, $3) \
                 ORDER BY created_at DESC, transfer_id DESC LIMIT $4"
            ))
            .bind(customer_id)
            .bind(before_time)
            .bind(before_id)
            .bind(page.fetch_limit())
            .fetch_all(conn)
            .await
        }
    }
    .context("list transfers")?;
    let mut transfers = rows.iter().map(transfer_from_row).collect::<anyhow::Result<Vec<_>>>()?;
    let next = page.next_cursor(&mut transfers, |transfer| Cursor {
        created_at: transfer.created_at,
        id: transfer.transfer_id,
    });
    Ok((transfers, next))
}

/// Stores an account version from `accounts.*` unless a newer one is stored.
#[tracing::instrument(skip_all, fields(account_id = %account.account_id, version = account.version))]
pub async fn upsert_account(
    conn: &mut PgConnection,
    account: &CachedAccount,
    updated_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO account_cache (account_id, customer_id, currency, state, freeze_kind, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (account_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, currency = EXCLUDED.currency, \
           state = EXCLUDED.state, freeze_kind = EXCLUDED.freeze_kind, version = EXCLUDED.version, \
           updated_at = EXCLUDED.updated_at \
         WHERE account_cache.version < EXCLUDED.version",
    )
    .bind(account.account_id)
    .bind(&account.customer_id)
    .bind(&account.currency)
    .bind(&account.state)
    .bind(&account.freeze_kind)
    .bind(account.version)
    .bind(updated_at)
    .execute(conn)
    .await
    .context("store account")?;
    Ok(())
}

/// An account of the cache.
#[tracing::instrument(skip(conn))]
pub async fn get_account(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<Option<CachedAccount>> {
    let row = sqlx::query(
        "SELECT account_id, customer_id, currency, state, freeze_kind, version FROM account_cache WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(conn)
    .await
    .context("read cached account")?;
    row.map(|row| {
        Ok(CachedAccount {
            account_id: row.try_get("account_id")?,
            customer_id: row.try_get("customer_id")?,
            currency: row.try_get("currency")?,
            state: row.try_get("state")?,
            freeze_kind: row.try_get("freeze_kind")?,
            version: row.try_get("version")?,
        })
    })
    .transpose()
}

/// Accepted transfers (version 1) created before `before`: those whose workflow may never have
/// been started.
#[tracing::instrument(skip(conn))]
pub async fn accepted_before(
    conn: &mut PgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<Vec<Transfer>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM transfers WHERE version = 1 AND created_at < $1 ORDER BY created_at LIMIT $2"
    ))
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("accepted transfers")?;
    rows.iter().map(transfer_from_row).collect()
}
