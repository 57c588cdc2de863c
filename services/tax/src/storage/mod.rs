//! The tax tables (`migrations/tax/`). Functions run on the connection they are given so the
//! event handlers compose them with the outbox and the consumer inbox in one transaction.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use fintech_types::paging::{Cursor, PageRequest};
use fintech_types::{Country, Currency};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::domain::vat::TaxReason;
use crate::domain::{CachedOrder, FailureReason, ReversalReason, TaxedTransaction};

/// Serializes work on one order across consumer instances (a transaction and its order may be
/// handled by two instances at once); released at commit or rollback.
pub async fn lock_order(conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(order_id)
        .execute(conn)
        .await
        .context("lock order")?;
    Ok(())
}

/// Takes the locks of [`lock_order`] for every order in `order_ids` in one statement, in one global
/// order (ascending id, duplicates once), so transactions that lock several orders never deadlock
/// with each other.
#[tracing::instrument(skip_all, fields(orders = order_ids.len()))]
pub async fn lock_orders(conn: &mut PgConnection, order_ids: &[Uuid]) -> anyhow::Result<()> {
    let mut sorted = order_ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return Ok(());
    }
    // The subquery fixes the order in which the locks are taken (a volatile function in the
    // select list of a sorted query could run before the sort).
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(o.id::text, 7))) \
         FROM (SELECT id FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, position) ORDER BY position) o",
    )
    .bind(&sorted)
    .execute(conn)
    .await
    .context("lock orders")?;
    Ok(())
}

/// Keeps `order` as the version it is (`order_versions`, ADR 0015) and, unless the cache already
/// holds the same or a newer version, as the latest; true when it became the latest.
#[tracing::instrument(skip_all, fields(order_id = %order.order_id, version = order.version))]
pub async fn upsert_order(conn: &mut PgConnection, order: &CachedOrder) -> anyhow::Result<bool> {
    let payload = serde_json::to_value(order).context("order to json")?;
    let stored = sqlx::query(
        "WITH kept AS (INSERT INTO order_versions (order_id, version, payload) VALUES ($1, $3, $2) \
           ON CONFLICT (order_id, version) DO NOTHING) \
         INSERT INTO order_cache (id, payload, version, order_created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload, version = EXCLUDED.version, updated_at = now() \
         WHERE order_cache.version < EXCLUDED.version",
    )
    .bind(order.order_id)
    .bind(payload)
    .bind(order.version)
    .bind(order.created_at)
    .execute(conn)
    .await
    .context("upsert order")?;
    Ok(stored.rows_affected() == 1)
}

/// What tax already knows about one transaction and its order, read in one statement.
#[derive(Debug, Clone)]
pub struct TransactionState {
    /// It has a result.
    pub taxed: bool,
    /// It stopped being taxable (failed or refunded) before it got a result, or was reversed.
    pub reversed: bool,
    /// It has an unresolved failure (resolved when it gets a result).
    pub open_failure: bool,
    /// Its order at the version it refers to (the latest for version 0), if that version arrived.
    pub order: Option<CachedOrder>,
}

/// Reads [`TransactionState`] in one round trip; call it after [`lock_order`], so it sees every
/// write committed by whoever held the lock before. `order_version` 0 means the latest cached.
pub async fn transaction_state(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    order_id: Uuid,
    order_version: i64,
) -> anyhow::Result<TransactionState> {
    let row = sqlx::query(
        "SELECT EXISTS (SELECT 1 FROM taxed_transactions WHERE transaction_id = $1) AS taxed, \
                EXISTS (SELECT 1 FROM tax_reversals WHERE transaction_id = $1) AS reversed, \
                EXISTS (SELECT 1 FROM tax_failures WHERE transaction_id = $1 AND resolved_at IS NULL) AS open_failure, \
                CASE WHEN $3 = 0 THEN (SELECT payload FROM order_cache WHERE id = $2) \
                     ELSE (SELECT payload FROM order_versions WHERE order_id = $2 AND version = $3) END AS order_payload",
    )
    .bind(transaction_id)
    .bind(order_id)
    .bind(order_version)
    .fetch_one(conn)
    .await
    .context("read transaction state")?;
    let order: Option<serde_json::Value> = row.try_get("order_payload")?;
    Ok(TransactionState {
        taxed: row.try_get("taxed")?,
        reversed: row.try_get("reversed")?,
        open_failure: row.try_get("open_failure")?,
        order: order
            .map(|payload| serde_json::from_value(payload).context("cached order json"))
            .transpose()?,
    })
}

/// A transaction waiting for its order.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Transaction id.
    pub transaction_id: Uuid,
    /// The order it waits for.
    pub order_id: Uuid,
    /// The order version it waits for (0: any).
    pub order_version: i64,
    /// CloudEvents type of the original event.
    pub event_type: String,
    /// The original event's value.
    pub payload: Vec<u8>,
    /// Trace of the original event.
    pub traceparent: Option<String>,
    /// Trace state of the original event.
    pub tracestate: Option<String>,
}

fn parked_from_row(row: &PgRow) -> anyhow::Result<Parked> {
    Ok(Parked {
        transaction_id: row.try_get("transaction_id")?,
        order_id: row.try_get("order_id")?,
        order_version: row.try_get("order_version")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
    })
}

/// Parks a transaction for `wait` from now on the database's clock (the sweeper compares
/// deadlines with the same clock, ADR 0017); a redelivered one keeps its first deadline.
pub async fn park(
    conn: &mut PgConnection,
    parked: &Parked,
    wait: std::time::Duration,
) -> anyhow::Result<DateTime<Utc>> {
    let deadline: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO parked_transactions (transaction_id, order_id, order_version, event_type, payload, traceparent, \
           tracestate, deadline) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8)) \
         ON CONFLICT (transaction_id) DO NOTHING RETURNING deadline",
    )
    .bind(parked.transaction_id)
    .bind(parked.order_id)
    .bind(parked.order_version)
    .bind(&parked.event_type)
    .bind(&parked.payload)
    .bind(&parked.traceparent)
    .bind(&parked.tracestate)
    .bind(wait.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await
    .context("park transaction")?;
    match deadline {
        Some(deadline) => Ok(deadline),
        None => sqlx::query_scalar("SELECT deadline FROM parked_transactions WHERE transaction_id = $1")
            .bind(parked.transaction_id)
            .fetch_one(conn)
            .await
            .context("read parking deadline"),
    }
}

/// Removes and returns the transactions parked for `order_id` whose order version is now cached
/// (or that wait for no particular version). Call it after [`lock_order`].
pub async fn take_parked_for_order(conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<Vec<Parked>> {
    let rows = sqlx::query(
        "DELETE FROM parked_transactions p WHERE p.order_id = $1 AND (p.order_version = 0 OR EXISTS ( \
           SELECT 1 FROM order_versions v WHERE v.order_id = p.order_id AND v.version = p.order_version)) \
         RETURNING *",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
    .context("release parked transactions")?;
    rows.iter().map(parked_from_row).collect()
}

/// Up to `limit` parked transactions past their deadline, oldest deadline first: `(transaction,
/// order)`. Read without locks; the sweeper then takes each one under its order's lock
/// ([`take_expired_one`]), the lock order every other path uses (ADR 0017).
pub async fn expired_parked(conn: &mut PgConnection, limit: i64) -> anyhow::Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query(
        "SELECT transaction_id, order_id FROM parked_transactions WHERE deadline < now() ORDER BY deadline LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("list expired parked transactions")?;
    rows.iter()
        .map(|row| Ok((row.try_get("transaction_id")?, row.try_get("order_id")?)))
        .collect()
}

/// Removes and returns one parked transaction if its deadline still has passed (its order may
/// have released it meanwhile). Call it after [`lock_order`].
pub async fn take_expired_one(conn: &mut PgConnection, transaction_id: Uuid) -> anyhow::Result<Option<Parked>> {
    let row = sqlx::query("DELETE FROM parked_transactions WHERE transaction_id = $1 AND deadline < now() RETURNING *")
        .bind(transaction_id)
        .fetch_optional(conn)
        .await
        .context("take expired parked transaction")?;
    row.as_ref().map(parked_from_row).transpose()
}

/// Gives a parked transaction whose sweep failed another `wait` and records why, so it neither
/// blocks the rest of the sweep nor is lost.
pub async fn postpone_parked(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    wait: std::time::Duration,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE parked_transactions SET deadline = now() + make_interval(secs => $2), \
           sweep_attempts = sweep_attempts + 1, last_error = $3 WHERE transaction_id = $1",
    )
    .bind(transaction_id)
    .bind(wait.as_secs_f64())
    .bind(error)
    .execute(conn)
    .await
    .context("postpone parked transaction")?;
    Ok(())
}

/// The open `order_not_found` failures of `order_id` whose order version is now cached, locked
/// for re-taxing (ADR 0017). Call it after [`lock_order`].
pub async fn order_not_found_failures(conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<Vec<Failure>> {
    let rows = sqlx::query(
        "SELECT * FROM tax_failures f WHERE f.order_id = $1 AND f.resolved_at IS NULL AND f.reason = 'order_not_found' \
           AND (f.order_version = 0 OR EXISTS ( \
             SELECT 1 FROM order_versions v WHERE v.order_id = f.order_id AND v.version = f.order_version)) \
         ORDER BY f.failed_at, f.transaction_id FOR UPDATE",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
    .context("read order_not_found failures")?;
    rows.iter().map(failure_from_row).collect()
}

/// How many transactions are parked (for tests and status).
pub async fn parked_count(conn: &mut PgConnection) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM parked_transactions")
        .fetch_one(conn)
        .await
        .context("count parked")
}

fn reason_to_stored(reason: TaxReason) -> &'static str {
    match reason {
        TaxReason::StandardRate => "standard_rate",
        TaxReason::ReducedRate => "reduced_rate",
        TaxReason::Exempt => "exempt",
        TaxReason::ZeroRated => "zero_rated",
    }
}

fn reason_from_stored(value: &str) -> Option<TaxReason> {
    [
        TaxReason::StandardRate,
        TaxReason::ReducedRate,
        TaxReason::Exempt,
        TaxReason::ZeroRated,
    ]
    .into_iter()
    .find(|reason| reason_to_stored(*reason) == value)
}

const TAXED_COLUMNS: &str = "transaction_id, order_id, customer_id, base_amount, tax_applied, total_amount, currency, \
     country, product_type, tax_rate_bps, reason, rule_version, tax_date, calculated_at, order_version";

fn taxed_from_row(row: &PgRow) -> anyhow::Result<TaxedTransaction> {
    let reason: String = row.try_get("reason")?;
    Ok(TaxedTransaction {
        transaction_id: row.try_get("transaction_id")?,
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        base_amount: row.try_get("base_amount")?,
        tax_applied: row.try_get("tax_applied")?,
        total_amount: row.try_get("total_amount")?,
        currency: Currency::parse(row.try_get("currency")?).context("stored currency")?,
        country: Country::parse(row.try_get("country")?).context("stored country")?,
        product_type: row.try_get("product_type")?,
        tax_rate_bps: row.try_get("tax_rate_bps")?,
        reason: reason_from_stored(&reason).with_context(|| format!("unknown stored reason {reason:?}"))?,
        rule_version: row.try_get("rule_version")?,
        tax_date: row.try_get("tax_date")?,
        calculated_at: row.try_get("calculated_at")?,
        order_version: row.try_get("order_version")?,
    })
}

/// Stores a result; false when the transaction already has one (nothing is changed then).
#[tracing::instrument(skip_all, fields(transaction_id = %taxed.transaction_id))]
pub async fn insert_taxed(conn: &mut PgConnection, taxed: &TaxedTransaction) -> anyhow::Result<bool> {
    let inserted = sqlx::query(&format!(
        "INSERT INTO taxed_transactions ({TAXED_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (transaction_id) DO NOTHING"
    ))
    .bind(taxed.transaction_id)
    .bind(taxed.order_id)
    .bind(&taxed.customer_id)
    .bind(taxed.base_amount)
    .bind(taxed.tax_applied)
    .bind(taxed.total_amount)
    .bind(taxed.currency.as_str())
    .bind(taxed.country.as_str())
    .bind(&taxed.product_type)
    .bind(taxed.tax_rate_bps)
    .bind(reason_to_stored(taxed.reason))
    .bind(&taxed.rule_version)
    .bind(taxed.tax_date)
    .bind(taxed.calculated_at)
    .bind(taxed.order_version)
    .execute(conn)
    .await
    .context("insert taxed transaction")?;
    Ok(inserted.rows_affected() == 1)
}

/// One result.
pub async fn get_taxed(conn: &mut PgConnection, transaction_id: Uuid) -> anyhow::Result<Option<TaxedTransaction>> {
    let row = sqlx::query(&format!(
        "SELECT {TAXED_COLUMNS} FROM taxed_transactions WHERE transaction_id = $1"
    ))
    .bind(transaction_id)
    .fetch_optional(conn)
    .await
    .context("read taxed transaction")?;
    row.as_ref().map(taxed_from_row).transpose()
}

/// Filter of ListTaxedTransactions.
#[derive(Debug, Clone)]
pub enum TaxedFilter {
    /// One order's results.
    Order(Uuid),
    /// One customer's results.
    Customer(String),
}

/// Results by order or customer, oldest first.
pub async fn list_taxed(
    conn: &mut PgConnection,
    filter: &TaxedFilter,
    page: &PageRequest,
) -> anyhow::Result<(Vec<TaxedTransaction>, Option<Cursor>)> {
    let (after_time, after_id) = page.ascending_bound();
    let column = match filter {
        TaxedFilter::Order(_) => "order_id",
        TaxedFilter::Customer(_) => "customer_id",
    };
    let query = format!(
        "SELECT {TAXED_COLUMNS} FROM taxed_transactions WHERE {column} = $1 \
         AND (calculated_at, transaction_id) > ($2, $3) ORDER BY calculated_at, transaction_id LIMIT $4"
    );
    let query = sqlx::query(&query);
    let query = match filter {
        TaxedFilter::Order(order_id) => query.bind(*order_id),
        TaxedFilter::Customer(customer_id) => query.bind(customer_id.clone()),
    };
    let rows = query
        .bind(after_time)
        .bind(after_id)
        .bind(page.fetch_limit())
        .fetch_all(conn)
        .await
        .context("list taxed")?;
    let mut items = rows.iter().map(taxed_from_row).collect::<anyhow::Result<Vec<_>>>()?;
    let next = page.next_cursor(&mut items, |item| Cursor {
        created_at: item.calculated_at,
        id: item.transaction_id,
    });
    Ok((items, next))
}

/// A recorded failure.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Transaction id.
    pub transaction_id: Uuid,
    /// Its order.
    pub order_id: Uuid,
    /// The order version it refers to (0: any).
    pub order_version: i64,
    /// Why.
    pub reason: FailureReason,
    /// Detail for humans.
    pub detail: String,
    /// Attempts so far.
    pub attempts: i32,
    /// CloudEvents type of the original event.
    pub original_event_type: String,
    /// The original event's value.
    pub original_event: Vec<u8>,
    /// Trace of the original event.
    pub traceparent: Option<String>,
    /// Trace state of the original event.
    pub tracestate: Option<String>,
    /// When it last failed.
    pub failed_at: DateTime<Utc>,
}

fn failure_from_row(row: &PgRow) -> anyhow::Result<Failure> {
    let reason: String = row.try_get("reason")?;
    Ok(Failure {
        transaction_id: row.try_get("transaction_id")?,
        order_id: row.try_get("order_id")?,
        order_version: row.try_get("order_version")?,
        reason: FailureReason::from_stored(&reason).with_context(|| format!("unknown failure reason {reason:?}"))?,
        detail: row.try_get("detail")?,
        attempts: row.try_get("attempts")?,
        original_event_type: row.try_get("original_event_type")?,
        original_event: row.try_get("original_event")?,
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
        failed_at: row.try_get("failed_at")?,
    })
}

/// Records (or re-records) a failure and returns it with its attempt count.
pub async fn record_failure(
    conn: &mut PgConnection,
    parked: &Parked,
    reason: FailureReason,
    detail: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Failure> {
    let row = sqlx::query(
        "INSERT INTO tax_failures (transaction_id, order_id, reason, detail, original_event_type, original_event, \
           traceparent, tracestate, failed_at, order_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (transaction_id) DO UPDATE SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, \
           attempts = tax_failures.attempts + 1, failed_at = EXCLUDED.failed_at, resolved_at = NULL \
         RETURNING *",
    )
    .bind(parked.transaction_id)
    .bind(parked.order_id)
    .bind(reason.as_str())
    .bind(detail)
    .bind(&parked.event_type)
    .bind(&parked.payload)
    .bind(&parked.traceparent)
    .bind(&parked.tracestate)
    .bind(now)
    .bind(parked.order_version)
    .fetch_one(conn)
    .await
    .context("record failure")?;
    failure_from_row(&row)
}

/// An open failure, unlocked: a retry reads it to learn its order, takes the order's lock, then
/// reads it again with [`get_open_failure`] (advisory lock before row lock, ADR 0017).
pub async fn peek_open_failure(conn: &mut PgConnection, transaction_id: Uuid) -> anyhow::Result<Option<Failure>> {
    let row = sqlx::query("SELECT * FROM tax_failures WHERE transaction_id = $1 AND resolved_at IS NULL")
        .bind(transaction_id)
        .fetch_optional(conn)
        .await
        .context("read failure")?;
    row.as_ref().map(failure_from_row).transpose()
}

/// An open failure, locked for a retry.
pub async fn get_open_failure(conn: &mut PgConnection, transaction_id: Uuid) -> anyhow::Result<Option<Failure>> {
    let row = sqlx::query("SELECT * FROM tax_failures WHERE transaction_id = $1 AND resolved_at IS NULL FOR UPDATE")
        .bind(transaction_id)
        .fetch_optional(conn)
        .await
        .context("read failure")?;
    row.as_ref().map(failure_from_row).transpose()
}

/// Marks a failure resolved (its retry produced a result).
pub async fn resolve_failure(conn: &mut PgConnection, transaction_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE tax_failures SET resolved_at = now() WHERE transaction_id = $1")
        .bind(transaction_id)
        .execute(conn)
        .await
        .context("resolve failure")?;
    Ok(())
}

/// Open failures, oldest first.
pub async fn list_open_failures(
    conn: &mut PgConnection,
    page: &PageRequest,
) -> anyhow::Result<(Vec<Failure>, Option<Cursor>)> {
    let (after_time, after_id) = page.ascending_bound();
    let rows = sqlx::query(
        "SELECT * FROM tax_failures WHERE resolved_at IS NULL AND (failed_at, transaction_id) > ($1, $2) \
         ORDER BY failed_at, transaction_id LIMIT $3",
    )
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await
    .context("list failures")?;
    let mut items = rows.iter().map(failure_from_row).collect::<anyhow::Result<Vec<_>>>()?;
    let next = page.next_cursor(&mut items, |item| Cursor {
        created_at: item.failed_at,
        id: item.transaction_id,
    });
    Ok((items, next))
}

fn reversal_reason_to_stored(reason: ReversalReason) -> &'static str {
    match reason {
        ReversalReason::Failed => "transaction_failed",
        ReversalReason::Refunded => "transaction_refunded",
    }
}

/// Records that a transaction is no longer taxable; false when it already was recorded.
pub async fn insert_reversal(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    order_id: Uuid,
    reason: ReversalReason,
    transaction_version: i64,
    reversed_result: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO tax_reversals (transaction_id, order_id, reason, transaction_version, reversed_result, reversed_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (transaction_id) DO NOTHING",
    )
    .bind(transaction_id)
    .bind(order_id)
    .bind(reversal_reason_to_stored(reason))
    .bind(transaction_version)
    .bind(reversed_result)
    .bind(now)
    .execute(conn)
    .await
    .context("insert reversal")?;
    Ok(inserted.rows_affected() == 1)
}

/// Removes a parked transaction (it stopped being taxable before its order arrived).
pub async fn unpark(conn: &mut PgConnection, transaction_id: Uuid) -> anyhow::Result<bool> {
    let deleted = sqlx::query("DELETE FROM parked_transactions WHERE transaction_id = $1")
        .bind(transaction_id)
        .execute(conn)
        .await
        .context("unpark transaction")?;
    Ok(deleted.rows_affected() == 1)
}
