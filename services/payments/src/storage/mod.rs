//! The payments tables (`migrations/payments/`). Every function runs on the connection it is
//! given, so commands compose them with the outbox and idempotency rows in one transaction.
//!
//! A command's writes are one statement: the business row, its outbox row and (with an
//! idempotency key) the stored response, as data-modifying CTEs ([`Effects`]). With the claim
//! before it and the commit after it, a command is four round trips (five with a locking read).

use anyhow::Context as _;
use fintech_platform::idempotency::{self, ResponseSlot};
use fintech_platform::outbox::{self, OutboxRow};
use fintech_platform::sql::{self, Statement};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};
use uuid::Uuid;

use fintech_types::{Country, Currency};

use crate::domain::{Cursor, Order, PageRequest, Transaction, TransactionStatus};

const ORDER_COLUMNS: &str =
    "order_id, customer_id, country, currency, amount, product_type, created_at, updated_at, version";
const TRANSACTION_COLUMNS: &str =
    "transaction_id, order_id, customer_id, amount, currency, status, created_at, updated_at, version, order_version";

fn order_from_row(row: &PgRow) -> anyhow::Result<Order> {
    Ok(Order {
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        country: Country::parse(row.try_get("country")?).context("stored country")?,
        currency: Currency::parse(row.try_get("currency")?).context("stored currency")?,
        amount: row.try_get("amount")?,
        product_type: row.try_get("product_type")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

fn transaction_from_row(row: &PgRow) -> anyhow::Result<Transaction> {
    let status: String = row.try_get("status")?;
    Ok(Transaction {
        transaction_id: row.try_get("transaction_id")?,
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        amount: row.try_get("amount")?,
        currency: Currency::parse(row.try_get("currency")?).context("stored currency")?,
        status: TransactionStatus::from_stored(&status).with_context(|| format!("unknown stored status {status:?}"))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        order_version: row.try_get("order_version")?,
    })
}

/// What a command writes besides its business row, in the same statement.
#[derive(Debug)]
pub struct Effects<'a> {
    /// The event describing the change.
    pub outbox: OutboxRow<'a>,
    /// Where the response goes, when the command has an idempotency key.
    pub response: Option<(&'a ResponseSlot, &'a [u8])>,
}

/// The statement of [`write_with_effects`]: `business` (one `INSERT`/`UPDATE … RETURNING 1` with
/// its own `$1..$n`), then the outbox row, then, with a response, the stored response
/// ([`idempotency::COMPLETE`]), as data-modifying CTEs in one round trip. Parameters bind in that
/// order.
pub fn effects_statement(business: &str, with_response: bool) -> String {
    let statement = Statement::new()
        .text("WITH business AS (")
        .part(business)
        .text("), queued AS (")
        .part(&outbox::insert_statement())
        .text(" RETURNING 1), ");
    let statement = if with_response {
        statement
            .text("completed AS (")
            .part(idempotency::COMPLETE)
            .text(" RETURNING 1)")
    } else {
        statement.text("completed AS (SELECT 1 WHERE false)")
    };
    statement
        .text(" SELECT (SELECT count(*) FROM business) AS written, (SELECT count(*) FROM completed) AS completed")
        .into_sql()
}

/// The business part of `CreateOrder`'s statement (`$1..$9` in `ORDER_COLUMNS` order).
pub fn insert_order_sql() -> String {
    format!(
        "INSERT INTO orders ({ORDER_COLUMNS}) VALUES ({}) RETURNING 1",
        sql::placeholders(9)
    )
}

/// The business part of `CreateTransaction`'s statement (`$1..$10` in `TRANSACTION_COLUMNS` order).
pub fn insert_transaction_sql() -> String {
    format!(
        "INSERT INTO transactions ({TRANSACTION_COLUMNS}) VALUES ({}) RETURNING 1",
        sql::placeholders(10)
    )
}

/// The read of an order by id, `FOR UPDATE` when `lock`.
pub fn get_order_sql(lock: bool) -> String {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1{suffix}")
}

/// Runs `sql` (from [`effects_statement`]) with the business values bound by `bind`, then the
/// outbox row and the response of `effects`. Returns how many business rows it wrote; an error if
/// the response was not stored.
async fn write_with_effects<'q>(
    conn: &mut PgConnection,
    sql: &'q str,
    bind: impl FnOnce(Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>,
    effects: &'q Effects<'q>,
) -> anyhow::Result<i64> {
    let mut query = effects.outbox.bind(bind(sqlx::query(sql)));
    if let Some((slot, response)) = effects.response {
        query = query.bind(response).bind(&slot.scope).bind(&slot.key);
    }
    let row = query.fetch_one(conn).await.context("write rows, outbox and response")?;
    let written: i64 = row.try_get("written")?;
    let completed: i64 = row.try_get("completed")?;
    anyhow::ensure!(
        effects.response.is_none() || completed == 1,
        "the idempotency key of this command is not claimed"
    );
    Ok(written)
}

/// Inserts a new order with its effects.
#[tracing::instrument(skip_all, fields(order_id = %order.order_id))]
pub async fn insert_order(conn: &mut PgConnection, order: &Order, effects: &Effects<'_>) -> anyhow::Result<()> {
    let sql = effects_statement(&insert_order_sql(), effects.response.is_some());
    write_with_effects(
        conn,
        &sql,
        |query| {
            query
                .bind(order.order_id)
                .bind(&order.customer_id)
                .bind(order.country.as_str())
                .bind(order.currency.as_str())
                .bind(order.amount)
                .bind(&order.product_type)
                .bind(order.created_at)
                .bind(order.updated_at)
                .bind(order.version)
        },
        effects,
    )
    .await
    .context("insert order")?;
    Ok(())
}

/// Reads an order; `lock` takes a row lock until the transaction ends.
#[tracing::instrument(skip(conn))]
pub async fn get_order(conn: &mut PgConnection, order_id: Uuid, lock: bool) -> anyhow::Result<Option<Order>> {
    let row = sqlx::query(&get_order_sql(lock))
        .bind(order_id)
        .fetch_optional(conn)
        .await
        .context("read order")?;
    row.as_ref().map(order_from_row).transpose()
}

/// Writes an order's new state with its effects; fails unless the stored version is the one
/// before it.
#[tracing::instrument(skip_all, fields(order_id = %order.order_id, version = order.version))]
pub async fn update_order(conn: &mut PgConnection, order: &Order, effects: &Effects<'_>) -> anyhow::Result<()> {
    let sql = effects_statement(
        "UPDATE orders SET country = $2, amount = $3, product_type = $4, updated_at = $5, version = $6 \
         WHERE order_id = $1 AND version = $6 - 1 RETURNING 1",
        effects.response.is_some(),
    );
    let updated = write_with_effects(
        conn,
        &sql,
        |query| {
            query
                .bind(order.order_id)
                .bind(order.country.as_str())
                .bind(order.amount)
                .bind(&order.product_type)
                .bind(order.updated_at)
                .bind(order.version)
        },
        effects,
    )
    .await
    .context("update order")?;
    // Rolled back by the caller, outbox row and response included.
    anyhow::ensure!(updated == 1, "order {} moved during the update", order.order_id);
    Ok(())
}

/// A customer's orders, newest first, after `page.after`; returns the page and the next cursor.
#[tracing::instrument(skip(conn))]
pub async fn list_orders(
    conn: &mut PgConnection,
    customer_id: &str,
    page: &PageRequest,
) -> anyhow::Result<(Vec<Order>, Option<Cursor>)> {
    let (after_time, after_id) = page.descending_bound();
    let rows = sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1 AND (created_at, order_id) < ($2, $3) \
         ORDER BY created_at DESC, order_id DESC LIMIT $4"
    ))
    .bind(customer_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await
    .context("list orders")?;
    let mut orders = rows.iter().map(order_from_row).collect::<anyhow::Result<Vec<_>>>()?;
    let next = page.next_cursor(&mut orders, |order| Cursor {
        created_at: order.created_at,
        id: order.order_id,
    });
    Ok((orders, next))
}

/// Inserts a new transaction with its effects.
#[tracing::instrument(skip_all, fields(transaction_id = %transaction.transaction_id))]
pub async fn insert_transaction(
    conn: &mut PgConnection,
    transaction: &Transaction,
    effects: &Effects<'_>,
) -> anyhow::Result<()> {
    let sql = effects_statement(&insert_transaction_sql(), effects.response.is_some());
    write_with_effects(
        conn,
        &sql,
        |query| {
            query
                .bind(transaction.transaction_id)
                .bind(transaction.order_id)
                .bind(&transaction.customer_id)
                .bind(transaction.amount)
                .bind(transaction.currency.as_str())
                .bind(transaction.status.as_str())
                .bind(transaction.created_at)
                .bind(transaction.updated_at)
                .bind(transaction.version)
                .bind(transaction.order_version)
        },
        effects,
    )
    .await
    .context("insert transaction")?;
    Ok(())
}

/// Reads a transaction; `lock` takes a row lock until the transaction ends.
#[tracing::instrument(skip(conn))]
pub async fn get_transaction(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    lock: bool,
) -> anyhow::Result<Option<Transaction>> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE transaction_id = $1{suffix}"
    ))
    .bind(transaction_id)
    .fetch_optional(conn)
    .await
    .context("read transaction")?;
    row.as_ref().map(transaction_from_row).transpose()
}

/// Writes a transaction's new status with its effects; fails unless the stored version is the
/// one before it.
#[tracing::instrument(skip_all, fields(transaction_id = %transaction.transaction_id, version = transaction.version))]
pub async fn update_transaction(
    conn: &mut PgConnection,
    transaction: &Transaction,
    effects: &Effects<'_>,
) -> anyhow::Result<()> {
    let sql = effects_statement(
        "UPDATE transactions SET status = $2, updated_at = $3, version = $4 \
         WHERE transaction_id = $1 AND version = $4 - 1 RETURNING 1",
        effects.response.is_some(),
    );
    let updated = write_with_effects(
        conn,
        &sql,
        |query| {
            query
                .bind(transaction.transaction_id)
                .bind(transaction.status.as_str())
                .bind(transaction.updated_at)
                .bind(transaction.version)
        },
        effects,
    )
    .await
    .context("update transaction")?;
    // Rolled back by the caller, outbox row and response included.
    anyhow::ensure!(
        updated == 1,
        "transaction {} moved during the update",
        transaction.transaction_id
    );
    Ok(())
}

/// An order's transactions, oldest first, after `page.after`.
#[tracing::instrument(skip(conn))]
pub async fn list_transactions(
    conn: &mut PgConnection,
    order_id: Uuid,
    page: &PageRequest,
) -> anyhow::Result<(Vec<Transaction>, Option<Cursor>)> {
    let (after_time, after_id) = page.ascending_bound();
    let rows = sqlx::query(&format!(
        "SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE order_id = $1 AND (created_at, transaction_id) > ($2, $3) \
         ORDER BY created_at, transaction_id LIMIT $4"
    ))
    .bind(order_id)
    .bind(after_time)
    .bind(after_id)
    .bind(page.fetch_limit())
    .fetch_all(conn)
    .await
    .context("list transactions")?;
    let mut transactions = rows
        .iter()
        .map(transaction_from_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let next = page.next_cursor(&mut transactions, |transaction| Cursor {
        created_at: transaction.created_at,
        id: transaction.transaction_id,
    });
    Ok((transactions, next))
}

/// Reads and locks the orders `order_ids` (those that exist), in id order so that concurrent
/// group transactions take the row locks in one order and never deadlock on each other.
#[tracing::instrument(skip_all, fields(orders = order_ids.len()))]
pub async fn lock_orders(conn: &mut PgConnection, order_ids: &[Uuid]) -> anyhow::Result<Vec<Order>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
    ))
    .bind(order_ids)
    .fetch_all(conn)
    .await
    .context("lock orders")?;
    rows.iter().map(order_from_row).collect()
}

/// What one group transaction writes (ADR 0030): new orders and transactions, their outbox rows
/// (in the order given: the relay's order per key), the stored responses of keyed commands, and
/// the release of the claims of commands that failed.
#[derive(Debug, Default)]
pub struct GroupWrites<'a> {
    /// New orders.
    pub orders: Vec<&'a Order>,
    /// New transactions.
    pub transactions: Vec<Transaction>,
    /// One outbox row per order and transaction.
    pub outbox: Vec<OutboxRow<'a>>,
    /// `(stored scope, key, encoded response)` of the keyed commands that succeeded.
    pub responses: Vec<(String, String, Vec<u8>)>,
    /// `(stored scope, key)` of keyed commands that failed after their claim.
    pub released: Vec<(String, String)>,
}

/// The statement of [`write_group`]: every write of a group transaction as data-modifying CTEs
/// in one round trip. Parameters: the order arrays (`ORDER_COLUMNS` order), the transaction
/// arrays, the outbox arrays, the responses, the released claims.
pub fn group_statement() -> String {
    Statement::new()
        .text("WITH new_orders AS (INSERT INTO orders (")
        .text(ORDER_COLUMNS)
        .text(") ")
        .part(
            "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], \
             $7::timestamptz[], $8::timestamptz[], $9::bigint[])",
        )
        .text(" RETURNING 1), new_transactions AS (INSERT INTO transactions (")
        .text(TRANSACTION_COLUMNS)
        .text(") ")
        .part(
            "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
             $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::bigint[])",
        )
        .text(" RETURNING 1), queued AS (")
        .part(&outbox::insert_many_statement())
        .text(" RETURNING 1), completed AS (")
        .part(idempotency::COMPLETE_MANY)
        .text(" RETURNING 1), released AS (")
        .part(idempotency::RELEASE_CLAIMS)
        .text(
            " RETURNING 1) SELECT (SELECT count(*) FROM new_orders) AS orders, \
             (SELECT count(*) FROM new_transactions) AS transactions, (SELECT count(*) FROM queued) AS queued, \
             (SELECT count(*) FROM completed) AS completed, (SELECT count(*) FROM released) AS released",
        )
        .into_sql()
}

/// Writes everything of a group transaction in one statement ([`group_statement`]); an error
/// (and the caller rolls back) unless every row was written and every response and release found
/// its claim.
#[tracing::instrument(skip_all, fields(orders = writes.orders.len(), transactions = writes.transactions.len()))]
pub async fn write_group(conn: &mut PgConnection, writes: &GroupWrites<'_>) -> anyhow::Result<()> {
    fn column<T, U>(items: &[T], value: impl Fn(&T) -> U) -> Vec<U> {
        items.iter().map(value).collect()
    }
    let sql = group_statement();
    let orders = &writes.orders;
    let transactions = &writes.transactions;
    let query = sqlx::query(&sql)
        .bind(column(orders, |order| order.order_id))
        .bind(column(orders, |order| order.customer_id.clone()))
        .bind(column(orders, |order| order.country.as_str().to_owned()))
        .bind(column(orders, |order| order.currency.as_str().to_owned()))
        .bind(column(orders, |order| order.amount))
        .bind(column(orders, |order| order.product_type.clone()))
        .bind(column(orders, |order| order.created_at))
        .bind(column(orders, |order| order.updated_at))
        .bind(column(orders, |order| order.version))
        .bind(column(transactions, |transaction| transaction.transaction_id))
        .bind(column(transactions, |transaction| transaction.order_id))
        .bind(column(transactions, |transaction| transaction.customer_id.clone()))
        .bind(column(transactions, |transaction| transaction.amount))
        .bind(column(transactions, |transaction| {
            transaction.currency.as_str().to_owned()
        }))
        .bind(column(transactions, |transaction| {
            transaction.status.as_str().to_owned()
        }))
        .bind(column(transactions, |transaction| transaction.created_at))
        .bind(column(transactions, |transaction| transaction.updated_at))
        .bind(column(transactions, |transaction| transaction.version))
        .bind(column(transactions, |transaction| transaction.order_version));
    let query = outbox::bind_many(query, &writes.outbox)
        .bind(column(&writes.responses, |response| response.0.clone()))
        .bind(column(&writes.responses, |response| response.1.clone()))
        .bind(column(&writes.responses, |response| response.2.clone()))
        .bind(column(&writes.released, |released| released.0.clone()))
        .bind(column(&writes.released, |released| released.1.clone()));
    let row = query.fetch_one(conn).await.context("write the group's rows")?;
    let counts = (
        row.try_get::<i64, _>("orders")?,
        row.try_get::<i64, _>("transactions")?,
        row.try_get::<i64, _>("queued")?,
        row.try_get::<i64, _>("completed")?,
        row.try_get::<i64, _>("released")?,
    );
    let expected = (
        orders.len() as i64,
        transactions.len() as i64,
        writes.outbox.len() as i64,
        writes.responses.len() as i64,
        writes.released.len() as i64,
    );
    anyhow::ensure!(
        counts == expected,
        "group write: (orders, transactions, outbox, responses, released) {counts:?}, expected {expected:?}"
    );
    Ok(())
}
