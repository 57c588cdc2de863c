//! The accounts tables (`migrations/accounts/`). Every function runs on the connection it is given,
//! so use cases compose them with the outbox and idempotency rows in one transaction.
//!
//! Interest units are `NUMERIC(40,0)` in PostgreSQL and `i128` here; they cross as text (`::text`
//! out, `::numeric` in), exact both ways.

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use fintech_types::Currency;

use crate::domain::interest::BalancePoint;
use crate::domain::{Account, AccountState, Balances, Cursor, Freeze, FreezeKind, PageRequest, Product};

const ACCOUNT_COLUMNS: &str = "account_id, customer_id, product, currency, state, freeze_kind, freeze_reason, frozen_at, \
     overdraft_limit, opened_at, updated_at, closed_at, version, last_customer_movement_at";

fn account_from_row(row: &PgRow) -> anyhow::Result<Account> {
    let product: String = row.try_get("product")?;
    let state: String = row.try_get("state")?;
    let freeze_kind: Option<String> = row.try_get("freeze_kind")?;
    let freeze = match freeze_kind {
        Some(kind) => Some(Freeze {
            kind: FreezeKind::from_stored(&kind).with_context(|| format!("stored freeze kind {kind:?}"))?,
            reason: row.try_get::<Option<String>, _>("freeze_reason")?.unwrap_or_default(),
            frozen_at: row
                .try_get::<Option<DateTime<Utc>>, _>("frozen_at")?
                .context("stored freeze without frozen_at")?,
        }),
        None => None,
    };
    Ok(Account {
        account_id: row.try_get("account_id")?,
        customer_id: row.try_get("customer_id")?,
        product: Product::from_stored(&product).with_context(|| format!("stored product {product:?}"))?,
        currency: Currency::parse(row.try_get("currency")?).context("stored currency")?,
        state: AccountState::from_stored(&state).with_context(|| format!("stored state {state:?}"))?,
        freeze,
        overdraft_limit: row.try_get("overdraft_limit")?,
        opened_at: row.try_get("opened_at")?,
        updated_at: row.try_get("updated_at")?,
        closed_at: row.try_get("closed_at")?,
        version: row.try_get("version")?,
        last_customer_movement_at: row.try_get("last_customer_movement_at")?,
    })
}

fn parse_units(text: &str) -> anyhow::Result<i128> {
    text.parse::<i128>()
        .with_context(|| format!("stored interest units {text:?}"))
}

/// Inserts a new account, its empty projection row and (savings) its interest state.
#[tracing::instrument(skip_all, fields(account_id = %account.account_id))]
pub async fn insert_account(conn: &mut PgConnection, account: &Account) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    ))
    .bind(account.account_id)
    .bind(&account.customer_id)
    .bind(account.product.as_str())
    .bind(account.currency.as_str())
    .bind(account.state.as_str())
    .bind(account.freeze.as_ref().map(|freeze| freeze.kind.as_str()))
    .bind(account.freeze.as_ref().map(|freeze| freeze.reason.as_str()))
    .bind(account.freeze.as_ref().map(|freeze| freeze.frozen_at))
    .bind(account.overdraft_limit)
    .bind(account.opened_at)
    .bind(account.updated_at)
    .bind(account.closed_at)
    .bind(account.version)
    .bind(account.last_customer_movement_at)
    .execute(&mut *conn)
    .await
    .context("insert account")?;
    sqlx::query(
        "INSERT INTO account_balances (account_id, ledger_balance, held, available, ledger_version) \
         VALUES ($1, 0, 0, $2, 0)",
    )
    .bind(account.account_id)
    .bind(account.overdraft_limit)
    .execute(&mut *conn)
    .await
    .context("insert balances")?;
    if account.product == Product::Savings {
        // Accrual starts on the opening day (UTC).
        let before_opening = account.opened_at.date_naive().pred_opt().context("opening date")?;
        sqlx::query("INSERT INTO interest_state (account_id, accrued_through, settled_through) VALUES ($1, $2, $2)")
            .bind(account.account_id)
            .bind(before_opening)
            .execute(&mut *conn)
            .await
            .context("insert interest state")?;
    }
    Ok(())
}

/// Reads an account; `lock` takes its row lock until the transaction ends.
#[tracing::instrument(skip(conn))]
pub async fn get_account(conn: &mut PgConnection, account_id: Uuid, lock: bool) -> anyhow::Result<Option<Account>> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1{suffix}"
    ))
    .bind(account_id)
    .fetch_optional(conn)
    .await
    .context("read account")?;
    row.as_ref().map(account_from_row).transpose()
}

/// Locks the rows of the accounts among `account_ids` that exist, in id order (one global order,
/// so two transactions locking several accounts never deadlock).
#[tracing::instrument(skip_all, fields(accounts = account_ids.len()))]
pub async fn lock_accounts(conn: &mut PgConnection, account_ids: &[Uuid]) -> anyhow::Result<()> {
    let mut ids = account_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query("SELECT account_id FROM accounts WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE")
        .bind(&ids)
        .fetch_all(conn)
        .await
        .context("lock accounts")?;
    Ok(())
}

/// Writes an account's new state; fails unless the stored version is the one before it.
#[tracing::instrument(skip_all, fields(account_id = %account.account_id, version = account.version))]
pub async fn update_account(conn: &mut PgConnection, account: &Account) -> anyhow::Result<()> {
    let updated = sqlx::query(
        "UPDATE accounts SET state = $2, freeze_kind = $3, freeze_reason = $4, frozen_at = $5, overdraft_limit = $6, \
         updated_at = $7, closed_at = $8, version = $9, last_customer_movement_at = $10 \
         WHERE account_id = $1 AND version = $9 - 1",
    )
    .bind(account.account_id)
    .bind(account.state.as_str())
    .bind(account.freeze.as_ref().map(|freeze| freeze.kind.as_str()))
    .bind(account.freeze.as_ref().map(|freeze| freeze.reason.as_str()))
    .bind(account.freeze.as_ref().map(|freeze| freeze.frozen_at))
    .bind(account.overdraft_limit)
    .bind(account.updated_at)
    .bind(account.closed_at)
    .bind(account.version)
    .bind(account.last_customer_movement_at)
    .execute(conn)
    .await
    .context("update account")?
    .rows_affected();
    // Rolled back by the caller, outbox row included.
    anyhow::ensure!(updated == 1, "account {} moved during the update", account.account_id);
    Ok(())
}

/// Records who made the change of `version` and why.
pub async fn insert_change(
    conn: &mut PgConnection,
    account: &Account,
    change: &str,
    reason: Option<&str>,
    actor: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO account_changes (account_id, version, change, reason, actor, changed_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(account.account_id)
    .bind(account.version)
    .bind(change)
    .bind(reason)
    .bind(actor)
    .bind(account.updated_at)
    .execute(conn)
    .await
    .context("insert change")?;
    Ok(())
}

/// A customer's accounts, oldest first, after `page.after`; returns the page and the next cursor.
#[tracing::instrument(skip(conn))]
pub async fn list_accounts(
    conn: &mut PgConnection,
    customer_id: &str,
    page: &PageRequest,
) -> anyhow::Result<(Vec<Account>, Option<Cursor>)> {
    let (after_time, after_id) = page.ascending_bound();
    let rows = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE customer_id = $1 AND (opened_at, account_id) > ($2, $3) \
         ORDER BY opened_at, account_id LIMIT $4"
    ))
    .bind(customer_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await
    .context("list accounts")?;
    let mut accounts = rows.iter().map(account_from_row).collect::<anyhow::Result<Vec<_>>>()?;
    let next = page.next_cursor(&mut accounts, |account| Cursor {
        created_at: account.opened_at,
        id: account.account_id,
    });
    Ok((accounts, next))
}

/// The projection's figures of an account (accrued interest not included).
#[tracing::instrument(skip(conn))]
pub async fn get_balances(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<Balances> {
    let row = sqlx::query(
        "SELECT ledger_balance, held, available, ledger_version, ledger_updated_at FROM account_balances WHERE account_id = $1",
    )
    .bind(account_id)
    .fetch_optional(conn)
    .await
    .context("read balances")?;
    let Some(row) = row else {
        return Ok(Balances::default());
    };
    Ok(Balances {
        ledger_balance: row.try_get("ledger_balance")?,
        held: row.try_get("held")?,
        available: row.try_get("available")?,
        ledger_version: row.try_get("ledger_version")?,
        ledger_updated_at: row.try_get("ledger_updated_at")?,
        accrued_interest: 0,
    })
}

/// Active holds known from hold events, and interest postings not yet seen booked.
pub async fn holds_and_unbooked(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM account_holds WHERE account_id = $1 AND status = 'active') AS holds, \
                (SELECT count(*) FROM interest_postings WHERE account_id = $1 AND booked_at IS NULL) AS unbooked",
    )
    .bind(account_id)
    .fetch_one(conn)
    .await
    .context("count holds and unbooked postings")?;
    Ok((row.try_get("holds")?, row.try_get("unbooked")?))
}

/// One ledger stream version of an account, as an event reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerPoint {
    /// The account (stream).
    pub account_id: Uuid,
    /// Stream version.
    pub version: i64,
    /// Balance after it.
    pub balance: i64,
    /// Held after it.
    pub held: i64,
    /// Available after it.
    pub available: i64,
    /// When it occurred.
    pub occurred_at: DateTime<Utc>,
    /// Whether it is a customer movement.
    pub movement: bool,
}

/// Records a stream version in the history; `false` when it was seen before (a duplicate).
pub async fn record_point(conn: &mut PgConnection, point: &LedgerPoint) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO ledger_balance_history (account_id, ledger_version, balance, held, occurred_at, movement) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(point.account_id)
    .bind(point.version)
    .bind(point.balance)
    .bind(point.held)
    .bind(point.occurred_at)
    .bind(point.movement)
    .execute(conn)
    .await
    .context("record ledger point")?
    .rows_affected();
    Ok(inserted == 1)
}

/// Moves the projection to `point` if it is newer than what it shows; returns whether it did.
pub async fn advance_balances(conn: &mut PgConnection, point: &LedgerPoint) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "UPDATE account_balances SET ledger_balance = $3, held = $4, available = $5, ledger_version = $2, \
         ledger_updated_at = $6 WHERE account_id = $1 AND ledger_version < $2",
    )
    .bind(point.account_id)
    .bind(point.version)
    .bind(point.balance)
    .bind(point.held)
    .bind(point.available)
    .bind(point.occurred_at)
    .execute(conn)
    .await
    .context("advance balances")?
    .rows_affected();
    Ok(updated == 1)
}

/// Notes a customer movement at `at` (the latest wins, whatever the order of arrival); returns
/// the latest movement known.
pub async fn note_movement(
    conn: &mut PgConnection,
    account_id: Uuid,
    at: DateTime<Utc>,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    let latest: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "UPDATE account_balances SET last_customer_movement_at = GREATEST(last_customer_movement_at, $2) \
         WHERE account_id = $1 RETURNING last_customer_movement_at",
    )
    .bind(account_id)
    .bind(at)
    .fetch_optional(conn)
    .await
    .context("note movement")?;
    Ok(latest.flatten())
}

/// The latest customer movement known for an account.
pub async fn last_movement(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<Option<DateTime<Utc>>> {
    let latest: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT last_customer_movement_at FROM account_balances WHERE account_id = $1")
            .bind(account_id)
            .fetch_optional(conn)
            .await
            .context("read last movement")?;
    Ok(latest.flatten())
}

/// Keeps a hold's highest version.
pub async fn upsert_hold(
    conn: &mut PgConnection,
    hold_id: &str,
    account_id: Uuid,
    status: &str,
    held: i64,
    version: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO account_holds (hold_id, account_id, status, held, version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (hold_id) DO UPDATE SET status = EXCLUDED.status, held = EXCLUDED.held, version = EXCLUDED.version \
         WHERE account_holds.version < EXCLUDED.version",
    )
    .bind(hold_id)
    .bind(account_id)
    .bind(status)
    .bind(held)
    .bind(version)
    .execute(conn)
    .await
    .context("upsert hold")?;
    Ok(())
}

/// Marks an interest posting as booked by the ledger (its entry was seen).
pub async fn mark_posting_booked(conn: &mut PgConnection, posting_id: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    sqlx::query("UPDATE interest_postings SET booked_at = $2 WHERE posting_id = $1 AND booked_at IS NULL")
        .bind(posting_id)
        .bind(at)
        .execute(conn)
        .await
        .context("mark posting booked")?;
    Ok(())
}

/// Active accounts whose last customer movement (or opening) is at or before `cutoff`, after
/// `after` in id order.
pub async fn dormancy_candidates(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    after: Uuid,
    limit: i64,
) -> anyhow::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT a.account_id FROM accounts a JOIN account_balances b USING (account_id) \
         WHERE a.state = 'active' AND a.account_id > $2 \
           AND COALESCE(b.last_customer_movement_at, a.opened_at) <= $1 \
         ORDER BY a.account_id LIMIT $3",
    )
    .bind(cutoff)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("dormancy candidates")
}

/// Open savings accounts after `after` in id order.
pub async fn savings_accounts(conn: &mut PgConnection, after: Uuid, limit: i64) -> anyhow::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT account_id FROM accounts WHERE product = 'savings' AND state <> 'closed' AND account_id > $1 \
         ORDER BY account_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("savings accounts")
}

/// How far an account's interest is accrued and settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterestState {
    /// Last day accrued.
    pub accrued_through: NaiveDate,
    /// Last day settled.
    pub settled_through: NaiveDate,
    /// Units carried from the last settlement.
    pub carry_units: i128,
}

/// Reads (and with `lock`, locks) an account's interest state; `None` for a current account.
pub async fn interest_state(
    conn: &mut PgConnection,
    account_id: Uuid,
    lock: bool,
) -> anyhow::Result<Option<InterestState>> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT accrued_through, settled_through, carry_units::text AS carry FROM interest_state WHERE account_id = $1{suffix}"
    ))
    .bind(account_id)
    .fetch_optional(conn)
    .await
    .context("read interest state")?;
    row.map(|row| {
        Ok(InterestState {
            accrued_through: row.try_get("accrued_through")?,
            settled_through: row.try_get("settled_through")?,
            carry_units: parse_units(&row.try_get::<String, _>("carry")?)?,
        })
    })
    .transpose()
}

/// Writes an account's interest state.
pub async fn save_interest_state(
    conn: &mut PgConnection,
    account_id: Uuid,
    state: &InterestState,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE interest_state SET accrued_through = $2, settled_through = $3, carry_units = $4::numeric WHERE account_id = $1",
    )
    .bind(account_id)
    .bind(state.accrued_through)
    .bind(state.settled_through)
    .bind(state.carry_units.to_string())
    .execute(conn)
    .await
    .context("save interest state")?;
    Ok(())
}

/// The last stream version that occurred before `before`, and every one from `before` to
/// `until` (exclusive): what the end-of-day balances of those days need.
pub async fn balance_points(
    conn: &mut PgConnection,
    account_id: Uuid,
    before: DateTime<Utc>,
    until: DateTime<Utc>,
) -> anyhow::Result<(Option<BalancePoint>, Vec<BalancePoint>)> {
    let point = |row: &PgRow| -> anyhow::Result<BalancePoint> {
        Ok(BalancePoint {
            version: row.try_get("ledger_version")?,
            balance: row.try_get("balance")?,
            at: row.try_get("occurred_at")?,
        })
    };
    let opening = sqlx::query(
        "SELECT ledger_version, balance, occurred_at FROM ledger_balance_history \
         WHERE account_id = $1 AND occurred_at < $2 ORDER BY ledger_version DESC LIMIT 1",
    )
    .bind(account_id)
    .bind(before)
    .fetch_optional(&mut *conn)
    .await
    .context("read opening balance")?;
    let rows = sqlx::query(
        "SELECT ledger_version, balance, occurred_at FROM ledger_balance_history \
         WHERE account_id = $1 AND occurred_at >= $2 AND occurred_at < $3 ORDER BY ledger_version",
    )
    .bind(account_id)
    .bind(before)
    .bind(until)
    .fetch_all(&mut *conn)
    .await
    .context("read balance history")?;
    let opening = opening.as_ref().map(point).transpose()?;
    let points = rows.iter().map(point).collect::<anyhow::Result<Vec<_>>>()?;
    Ok((opening, points))
}

/// One day's accrual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accrual {
    /// The day.
    pub day: NaiveDate,
    /// Its end-of-day balance.
    pub balance: i64,
    /// The rate in force.
    pub rate_bps: u32,
    /// `balance * rate_bps` (0 for a balance <= 0).
    pub units: i128,
}

/// Stores accruals (a day already stored is kept as it was).
pub async fn insert_accruals(conn: &mut PgConnection, account_id: Uuid, accruals: &[Accrual]) -> anyhow::Result<()> {
    if accruals.is_empty() {
        return Ok(());
    }
    let days: Vec<NaiveDate> = accruals.iter().map(|accrual| accrual.day).collect();
    let balances: Vec<i64> = accruals.iter().map(|accrual| accrual.balance).collect();
    let rates: Vec<i32> = accruals
        .iter()
        .map(|accrual| i32::try_from(accrual.rate_bps).unwrap_or(i32::MAX))
        .collect();
    let units: Vec<String> = accruals.iter().map(|accrual| accrual.units.to_string()).collect();
    sqlx::query(
        "INSERT INTO interest_accruals (account_id, day, balance, rate_bps, units) \
         SELECT $1, day, balance, rate_bps, units::numeric FROM UNNEST($2::date[], $3::bigint[], $4::int[], $5::text[]) \
           AS input(day, balance, rate_bps, units) \
         ON CONFLICT DO NOTHING",
    )
    .bind(account_id)
    .bind(&days)
    .bind(&balances)
    .bind(&rates)
    .bind(&units)
    .execute(conn)
    .await
    .context("insert accruals")?;
    Ok(())
}

/// The sum of the accruals of the days after `after` up to `through` (inclusive), and their count.
pub async fn accrued_between(
    conn: &mut PgConnection,
    account_id: Uuid,
    after: NaiveDate,
    through: NaiveDate,
) -> anyhow::Result<(i128, i32)> {
    let row = sqlx::query(
        "SELECT COALESCE(sum(units), 0)::text AS units, count(*)::int AS days FROM interest_accruals \
         WHERE account_id = $1 AND day > $2 AND day <= $3",
    )
    .bind(account_id)
    .bind(after)
    .bind(through)
    .fetch_one(conn)
    .await
    .context("sum accruals")?;
    Ok((parse_units(&row.try_get::<String, _>("units")?)?, row.try_get("days")?))
}

/// One month's posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostingRow {
    /// `interest:<account>:<YYYY-MM>`.
    pub posting_id: String,
    /// The account.
    pub account_id: Uuid,
    /// `YYYY-MM`.
    pub period: String,
    /// Minor units.
    pub amount: i64,
    /// Days settled.
    pub days: i32,
    /// Units settled (carry in included).
    pub units: i128,
    /// When posted.
    pub posted_at: DateTime<Utc>,
}

/// Inserts a posting; `false` when the account's period was posted before (nothing happens).
pub async fn insert_posting(conn: &mut PgConnection, posting: &PostingRow) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO interest_postings (posting_id, account_id, period, amount, days, units, posted_at) \
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7) ON CONFLICT DO NOTHING",
    )
    .bind(&posting.posting_id)
    .bind(posting.account_id)
    .bind(&posting.period)
    .bind(posting.amount)
    .bind(posting.days)
    .bind(posting.units.to_string())
    .bind(posting.posted_at)
    .execute(conn)
    .await
    .context("insert interest posting")?
    .rows_affected();
    Ok(inserted == 1)
}
