//! The ledger's cache of the accounts service's accounts (`ledger_account_cache`) and the controls
//! it keeps in step on the account row (`ledger_accounts`).

use anyhow::Context as _;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{CustomerState, Freeze, OverdraftPolicy};

/// Stores `version` of an account when it is newer than the cached one. `true` when stored (the
/// first version seen, or a newer one); `false` for an older or duplicate version. Two events of
/// one account wait for each other on the row, so the newest always wins.
pub async fn upsert(
    conn: &mut PgConnection,
    account_id: Uuid,
    customer_id: &str,
    currency: &str,
    version: i64,
    payload: &serde_json::Value,
) -> anyhow::Result<bool> {
    let stored = sqlx::query(
        "INSERT INTO ledger_account_cache (account_id, customer_id, currency, version, payload) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (account_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, version = EXCLUDED.version, \
             payload = EXCLUDED.payload, received_at = now() \
         WHERE ledger_account_cache.version < EXCLUDED.version",
    )
    .bind(account_id)
    .bind(customer_id)
    .bind(currency)
    .bind(version)
    .bind(payload)
    .execute(conn)
    .await
    .context("cache account")?
    .rows_affected();
    Ok(stored == 1)
}

/// The cached version of an account.
pub async fn cached_version(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<Option<i64>> {
    sqlx::query_scalar("SELECT version FROM ledger_account_cache WHERE account_id = $1")
        .bind(account_id)
        .fetch_optional(conn)
        .await
        .context("read cached account")
}

/// Sets a customer account's controls and overdraft. Takes the account row's lock, which every
/// posting and hold takes too, so none of them decides on the old controls after this commits.
pub async fn set_controls(
    conn: &mut PgConnection,
    account_id: Uuid,
    customer_id: &str,
    state: CustomerState,
    freeze: Freeze,
    overdraft: OverdraftPolicy,
) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "UPDATE ledger_accounts SET customer_id = $2, customer_state = $3, freeze_kind = $4, overdraft_policy = $5, \
         overdraft_limit = $6 WHERE account_id = $1 AND customer_id IS NOT NULL",
    )
    .bind(account_id)
    .bind(customer_id)
    .bind(state.as_str())
    .bind(freeze.as_str())
    .bind(overdraft.as_str())
    .bind(overdraft.limit())
    .execute(conn)
    .await
    .context("set account controls")?
    .rows_affected();
    Ok(updated == 1)
}
