//! The ledger's cache of the accounts service's accounts: every `accounts.opened` /
//! `accounts.updated` is stored when it is newer than what the cache holds (older and duplicate
//! versions change nothing), the account's stream is opened the first time the account is seen
//! (whichever topic brings it), and the controls the ledger enforces (state, freeze, overdraft)
//! follow the newest version. Runs in the consumer's transaction (the kit's transactional inbox).

use anyhow::Context as _;
use sqlx::PgConnection;

use super::posting::Ledger;
use crate::domain::customer::CustomerAccount;
use crate::domain::now;
use crate::storage::{self, Write};

/// What applying one version did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// First seen: cached and its stream opened.
    Opened,
    /// A newer version: cached and its controls applied.
    Updated,
    /// An older or duplicate version: nothing changed.
    Stale,
}

/// Why a version cannot be applied, ever.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The id or code belongs to an account that is not this customer account.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Applies `account` (see the module docs) on `conn`, an open transaction; `payload` is what is
/// cached.
pub async fn apply(
    conn: &mut PgConnection,
    account: &CustomerAccount,
    payload: &serde_json::Value,
) -> Result<CacheOutcome, CacheError> {
    // The cache row first: two versions of one account wait for each other here.
    let stored = storage::cache::upsert(
        conn,
        account.account_id,
        &account.customer_id,
        account.currency.as_str(),
        account.version,
        payload,
    )
    .await?;
    let existing = storage::get_account(conn, account.account_id).await?;
    match existing {
        None => {
            let opened = account.account(now());
            match Ledger::open_account(conn, &opened).await? {
                Write::Done => {}
                Write::Lost => {
                    return Err(CacheError::Conflict(format!(
                        "account code {} is taken by another account",
                        opened.code
                    )));
                }
            }
            if !stored {
                // Unreachable in practice (the stream opens with the first cached version); keep
                // the controls of the newest version anyway.
                tracing::warn!(account_id = %account.account_id, "stream opened from an older version than cached");
            }
            tracing::info!(account_id = %account.account_id, version = account.version, "customer account opened in the ledger");
            Ok(CacheOutcome::Opened)
        }
        Some(existing) => {
            if existing.customer.is_none() {
                return Err(CacheError::Conflict(format!(
                    "account {} is an internal ledger account, not a customer account",
                    account.account_id
                )));
            }
            if existing.currency != account.currency {
                return Err(CacheError::Conflict(format!(
                    "account {} holds {}, the accounts service says {}",
                    account.account_id, existing.currency, account.currency
                )));
            }
            if !stored {
                return Ok(CacheOutcome::Stale);
            }
            let updated = storage::cache::set_controls(
                conn,
                account.account_id,
                &account.customer_id,
                account.state,
                account.freeze,
                account.overdraft(),
            )
            .await
            .context("apply the account's controls")?;
            if !updated {
                return Err(CacheError::Internal(anyhow::anyhow!(
                    "account {} was not updated",
                    account.account_id
                )));
            }
            tracing::info!(
                account_id = %account.account_id,
                version = account.version,
                state = account.state.as_str(),
                freeze = account.freeze.as_str(),
                overdraft_limit = account.overdraft_limit,
                "customer account controls updated"
            );
            Ok(CacheOutcome::Updated)
        }
    }
}
