//! The ledger tables (`migrations/ledger/`). Every function runs on the connection it is given,
//! so a posting composes them with the outbox and idempotency rows in one transaction.
//!
//! Streams are appended with the version the writer expects ([`append_entry`] only moves a
//! stream whose version is still the expected one) and `UNIQUE(stream_id, version)` on the events
//! backs that up; [`account_states`] with `lock` takes the stream and balance rows' locks in
//! account-id order, so two entries touching the same accounts never deadlock (docs/adr/0004-ledger-hot-accounts.md).

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use fintech_platform::idempotency;
use fintech_platform::outbox;
use fintech_platform::sql::{self, Statement};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

pub mod cache;
pub mod holds;

use crate::domain::stream::StoredEvent;
use crate::domain::{Account, AccountState, AccountType, CustomerControls, CustomerState, Freeze, OverdraftPolicy};

const ACCOUNT_COLUMNS: &str = "a.account_id, a.code, a.name, a.account_type, a.currency, a.overdraft_policy, \
     a.overdraft_limit, a.system, a.created_at, a.customer_id, a.customer_state, a.freeze_kind";
const EVENT_COLUMNS: &str = "stream_id, version, event_type, payload, entry_id, occurred_at, previous_hash, hash";

/// Outcome of a write that may lose a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written.
    Done,
    /// Not written: the row it would create exists already (a taken account code).
    Lost,
}

fn account_from_row(row: &PgRow) -> anyhow::Result<Account> {
    let customer_id: Option<String> = row.try_get("customer_id")?;
    let customer = match customer_id {
        None => None,
        Some(customer_id) => {
            let state: Option<String> = row.try_get("customer_state")?;
            let freeze: Option<String> = row.try_get("freeze_kind")?;
            Some(CustomerControls {
                customer_id,
                state: state
                    .as_deref()
                    .and_then(CustomerState::from_stored)
                    .with_context(|| format!("unknown stored customer state {state:?}"))?,
                freeze: freeze
                    .as_deref()
                    .and_then(Freeze::from_stored)
                    .with_context(|| format!("unknown stored freeze {freeze:?}"))?,
            })
        }
    };
    let account_type: String = row.try_get("account_type")?;
    let policy: String = row.try_get("overdraft_policy")?;
    let limit: i64 = row.try_get("overdraft_limit")?;
    let currency: String = row.try_get("currency")?;
    Ok(Account {
        account_id: row.try_get("account_id")?,
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        account_type: AccountType::from_stored(&account_type)
            .with_context(|| format!("unknown stored account type {account_type:?}"))?,
        currency: fintech_types::Currency::parse(&currency).with_context(|| format!("stored currency {currency:?}"))?,
        overdraft: OverdraftPolicy::from_stored(&policy, limit)
            .with_context(|| format!("unknown stored overdraft policy {policy:?}/{limit}"))?,
        system: row.try_get("system")?,
        created_at: row.try_get("created_at")?,
        customer,
    })
}

fn event_from_row(row: &PgRow) -> anyhow::Result<StoredEvent> {
    Ok(StoredEvent {
        stream_id: row.try_get("stream_id")?,
        version: row.try_get("version")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        entry_id: row.try_get("entry_id")?,
        occurred_at: row.try_get("occurred_at")?,
        previous_hash: row.try_get("previous_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Opens `account`: its stream at version 1 with `opened` (the account-opened event), the account
/// row and a zero balance. [`Write::Lost`] when the code is taken (the caller rolls back).
#[tracing::instrument(skip_all, fields(account_id = %account.account_id, code = %account.code))]
pub async fn open_account(conn: &mut PgConnection, account: &Account, opened: &StoredEvent) -> anyhow::Result<Write> {
    sqlx::query(
        "INSERT INTO ledger_streams (stream_id, stream_type, version, head_hash, updated_at) \
         VALUES ($1, 'account', 1, $2, $3)",
    )
    .bind(account.account_id)
    .bind(&opened.hash)
    .bind(opened.occurred_at)
    .execute(&mut *conn)
    .await
    .context("insert stream")?;
    insert_event(conn, opened).await?;
    let inserted = sqlx::query(
        "INSERT INTO ledger_accounts (account_id, code, name, account_type, currency, overdraft_policy, \
         overdraft_limit, system, created_at, customer_id, customer_state, freeze_kind) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (code) DO NOTHING",
    )
    .bind(account.account_id)
    .bind(&account.code)
    .bind(&account.name)
    .bind(account.account_type.as_str())
    .bind(account.currency.as_str())
    .bind(account.overdraft.as_str())
    .bind(account.overdraft.limit())
    .bind(account.system)
    .bind(account.created_at)
    .bind(account.customer.as_ref().map(|customer| customer.customer_id.as_str()))
    .bind(account.customer.as_ref().map(|customer| customer.state.as_str()))
    .bind(account.customer.as_ref().map(|customer| customer.freeze.as_str()))
    .execute(&mut *conn)
    .await
    .context("insert account")?
    .rows_affected();
    if inserted == 0 {
        return Ok(Write::Lost);
    }
    sqlx::query(
        "INSERT INTO ledger_balances (account_id, currency, balance, version, updated_at) VALUES ($1, $2, 0, 1, $3)",
    )
    .bind(account.account_id)
    .bind(account.currency.as_str())
    .bind(account.created_at)
    .execute(&mut *conn)
    .await
    .context("insert balance")?;
    Ok(Write::Done)
}

/// The accounts of `ids` with their stream heads and balances (the ids that exist). With `lock`,
/// the stream and balance rows are locked in ascending account id (the global lock order, so two
/// postings over the same accounts never deadlock) and held until the transaction ends.
///
/// One statement does both: in READ COMMITTED, a row that had to wait for its lock is re-read at
/// its latest committed version (and the join rechecked) before it is returned, for every table
/// locked here, so the heads and balances returned are the current ones, not the snapshot's.
#[tracing::instrument(skip_all, fields(accounts = ids.len(), lock = lock))]
pub async fn account_states(
    conn: &mut PgConnection,
    ids: &[Uuid],
    lock: bool,
) -> anyhow::Result<HashMap<Uuid, AccountState>> {
    // The account row is locked too (weaker: foreign keys to it still insert) since a customer
    // account's controls and overdraft change with the accounts service's events.
    let locking = if lock {
        " ORDER BY a.account_id FOR UPDATE OF s, b FOR NO KEY UPDATE OF a"
    } else {
        ""
    };
    let rows = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS}, s.version, s.head_hash, s.updated_at AS stream_updated_at, b.balance, b.held \
         FROM ledger_accounts a \
         JOIN ledger_streams s ON s.stream_id = a.account_id \
         JOIN ledger_balances b ON b.account_id = a.account_id \
         WHERE a.account_id = ANY($1){locking}"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
    .context("read account states")?;
    rows.iter()
        .map(|row| {
            let account = account_from_row(row)?;
            Ok((
                account.account_id,
                AccountState {
                    account,
                    balance: row.try_get("balance")?,
                    held: row.try_get("held")?,
                    version: row.try_get("version")?,
                    head_hash: row.try_get("head_hash")?,
                    updated_at: row.try_get("stream_updated_at")?,
                },
            ))
        })
        .collect()
}

/// One stream's part of an entry: the event to append and the balance after it.
#[derive(Debug, Clone)]
pub struct StreamAppend<'a> {
    /// The event, at `expected_version + 1`.
    pub event: &'a StoredEvent,
    /// The version the stream must still be at (the optimistic check).
    pub expected_version: i64,
    /// The account's balance after the event.
    pub balance_after: i64,
    /// The account's active holds after the event.
    pub held_after: i64,
}

/// What a posting writes besides its events and projections, in the same statement: the
/// `ledger.entry_posted` outbox row and the PostEntry response under the claimed idempotency key.
#[derive(Debug)]
pub struct EntryEffects<'a> {
    /// The outbox row of `ledger.entry_posted`.
    pub outbox: fintech_platform::outbox::OutboxRow<'a>,
    /// Idempotency scope of the claimed key.
    pub idempotency_scope: &'a str,
    /// The claimed key (the entry id).
    pub idempotency_key: &'a str,
    /// The encoded response to store under it.
    pub response: &'a [u8],
}

/// Outcome of [`append_entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Every stream moved, the events and projections are written (uncommitted).
    Appended,
    /// Some stream is no longer at its expected version; the caller rolls back and retries.
    StreamMoved,
    /// The entry id was posted before; the caller rolls back.
    EntryExists,
}

/// Appends an entry in one statement (one round trip while the streams are locked): moves every
/// stream from its expected version, inserts the events of the streams that moved, updates their
/// balance projections and records the entry id. Anything short of all of it is reported, and the
/// caller rolls the transaction back.
#[tracing::instrument(skip_all, fields(entry_id, streams = appends.len()))]
pub async fn append_entry(
    conn: &mut PgConnection,
    entry_id: &str,
    posted_at: DateTime<Utc>,
    line_count: usize,
    appends: &[StreamAppend<'_>],
    effects: &EntryEffects<'_>,
) -> anyhow::Result<AppendOutcome> {
    let column = |value: fn(&StreamAppend<'_>) -> i64| appends.iter().map(value).collect::<Vec<i64>>();
    let stream_ids: Vec<Uuid> = appends.iter().map(|append| append.event.stream_id).collect();
    let sql = Statement::new()
        .part(
            "WITH input AS ( \
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::jsonb[], $6::text[], \
                                  $7::text[], $8::bigint[], $12::bigint[]) \
               AS i(stream_id, expected_version, version, event_type, payload, previous_hash, hash, balance, held)), \
         moved AS ( \
             UPDATE ledger_streams s SET version = i.version, head_hash = i.hash, updated_at = $9 \
             FROM input i WHERE s.stream_id = i.stream_id AND s.version = i.expected_version \
             RETURNING s.stream_id), \
         appended AS ( \
             INSERT INTO ledger_events (stream_id, version, event_type, payload, entry_id, occurred_at, \
                                        previous_hash, hash) \
             SELECT i.stream_id, i.version, i.event_type, i.payload, $10, $9, i.previous_hash, i.hash \
             FROM input i JOIN moved m ON m.stream_id = i.stream_id \
             RETURNING stream_id), \
         projected AS ( \
             UPDATE ledger_balances b SET balance = i.balance, held = i.held, version = i.version, updated_at = $9 \
             FROM input i JOIN moved m ON m.stream_id = i.stream_id WHERE b.account_id = i.stream_id \
             RETURNING b.account_id), \
         recorded AS ( \
             INSERT INTO ledger_entries (entry_id, posted_at, line_count, account_ids) \
             SELECT $10, $9, $11, $1 WHERE (SELECT count(*) FROM moved) = cardinality($1::uuid[]) \
             ON CONFLICT (entry_id) DO NOTHING \
             RETURNING entry_id), ",
        )
        .text(&format!("queued AS (INSERT INTO outbox ({}) SELECT ", outbox::COLUMNS))
        .part(&sql::placeholders(outbox::COLUMNS.split(',').count()))
        .text(" FROM recorded RETURNING event_id), completed AS (")
        .part(idempotency::COMPLETE)
        .text(
            " AND EXISTS (SELECT 1 FROM recorded) RETURNING 1) \
             SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM appended) AS appended, \
                    (SELECT count(*) FROM projected) AS projected, (SELECT count(*) FROM recorded) AS recorded, \
                    (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM completed) AS completed",
        )
        .into_sql();
    let query = sqlx::query(&sql)
        .bind(&stream_ids)
        .bind(column(|append| append.expected_version))
        .bind(column(|append| append.event.version))
        .bind(
            appends
                .iter()
                .map(|append| append.event.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            appends
                .iter()
                .map(|append| append.event.payload.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            appends
                .iter()
                .map(|append| append.event.previous_hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            appends
                .iter()
                .map(|append| append.event.hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(column(|append| append.balance_after))
        .bind(posted_at)
        .bind(entry_id)
        .bind(i32::try_from(line_count).context("line count")?)
        .bind(column(|append| append.held_after));
    let row = effects
        .outbox
        .bind(query)
        .bind(effects.response)
        .bind(effects.idempotency_scope)
        .bind(effects.idempotency_key)
        .fetch_one(conn)
        .await
        .context("append entry")?;
    let expected = i64::try_from(appends.len()).context("stream count")?;
    let (moved, appended, projected, recorded, queued, completed): (i64, i64, i64, i64, i64, i64) = (
        row.try_get("moved")?,
        row.try_get("appended")?,
        row.try_get("projected")?,
        row.try_get("recorded")?,
        row.try_get("queued")?,
        row.try_get("completed")?,
    );
    if moved != expected {
        return Ok(AppendOutcome::StreamMoved);
    }
    anyhow::ensure!(
        appended == expected && projected == expected,
        "append wrote {appended} events and {projected} balances for {expected} streams"
    );
    anyhow::ensure!(
        queued == recorded && completed == recorded,
        "append recorded {recorded} entries but queued {queued} events and stored {completed} responses \
         (was the idempotency key claimed in this transaction?)"
    );
    Ok(if recorded == 1 {
        AppendOutcome::Appended
    } else {
        AppendOutcome::EntryExists
    })
}

/// Inserts one event.
pub async fn insert_event(conn: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO ledger_events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(event.stream_id)
    .bind(event.version)
    .bind(&event.event_type)
    .bind(&event.payload)
    .bind(&event.entry_id)
    .bind(event.occurred_at)
    .bind(&event.previous_hash)
    .bind(&event.hash)
    .execute(conn)
    .await
    .context("insert event")?;
    Ok(())
}

/// An account by id.
#[tracing::instrument(skip(conn))]
pub async fn get_account(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<Option<Account>> {
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts a WHERE a.account_id = $1"
    ))
    .bind(account_id)
    .fetch_optional(conn)
    .await
    .context("read account")?;
    row.as_ref().map(account_from_row).transpose()
}

/// An account by code.
#[tracing::instrument(skip(conn))]
pub async fn get_account_by_code(conn: &mut PgConnection, code: &str) -> anyhow::Result<Option<Account>> {
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts a WHERE a.code = $1"
    ))
    .bind(code)
    .fetch_optional(conn)
    .await
    .context("read account by code")?;
    row.as_ref().map(account_from_row).transpose()
}

/// Accounts ordered by code after `after_code`, optionally of one type and currency; at most
/// `limit + 1` (the extra one tells whether there is a next page).
#[tracing::instrument(skip(conn))]
pub async fn list_accounts(
    conn: &mut PgConnection,
    account_type: Option<AccountType>,
    currency: Option<&str>,
    after_code: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Account>> {
    let rows = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts a \
         WHERE ($1::text IS NULL OR a.account_type = $1) AND ($2::text IS NULL OR a.currency = $2) \
           AND ($3::text IS NULL OR a.code > $3) \
         ORDER BY a.code LIMIT $4"
    ))
    .bind(account_type.map(AccountType::as_str))
    .bind(currency)
    .bind(after_code)
    .bind(limit + 1)
    .fetch_all(conn)
    .await
    .context("list accounts")?;
    rows.iter().map(account_from_row).collect()
}

/// `(balance, version, updated_at, held)` of a balance projection.
pub type BalanceRow = (i64, i64, DateTime<Utc>, i64);

/// The current balance projection of an account: `(balance, version, updated_at, held)`.
#[tracing::instrument(skip(conn))]
pub async fn current_balance(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<Option<BalanceRow>> {
    let row = sqlx::query("SELECT balance, version, updated_at, held FROM ledger_balances WHERE account_id = $1")
        .bind(account_id)
        .fetch_optional(conn)
        .await
        .context("read balance")?;
    row.map(|row| {
        Ok((
            row.try_get("balance")?,
            row.try_get("version")?,
            row.try_get("updated_at")?,
            row.try_get("held")?,
        ))
    })
    .transpose()
}

/// The head of a stream: `(version, head_hash)`.
#[tracing::instrument(skip(conn))]
pub async fn stream_head(conn: &mut PgConnection, stream_id: Uuid) -> anyhow::Result<Option<(i64, String)>> {
    let row = sqlx::query("SELECT version, head_hash FROM ledger_streams WHERE stream_id = $1")
        .bind(stream_id)
        .fetch_optional(conn)
        .await
        .context("read stream head")?;
    row.map(|row| Ok((row.try_get("version")?, row.try_get("head_hash")?)))
        .transpose()
}

/// Events of a stream in version order: those with `version <= up_to_version` and
/// `occurred_at <= up_to_time` (each bound when given).
#[tracing::instrument(skip(conn))]
pub async fn stream_events(
    conn: &mut PgConnection,
    stream_id: Uuid,
    up_to_version: Option<i64>,
    up_to_time: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<StoredEvent>> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM ledger_events WHERE stream_id = $1 \
           AND ($2::bigint IS NULL OR version <= $2) AND ($3::timestamptz IS NULL OR occurred_at <= $3) \
         ORDER BY version"
    ))
    .bind(stream_id)
    .bind(up_to_version)
    .bind(up_to_time)
    .fetch_all(conn)
    .await
    .context("read stream events")?;
    rows.iter().map(event_from_row).collect()
}

/// Events read per page by the whole-stream reads (`VerifyStream`, point-in-time balances), so
/// their memory is bounded whatever the stream's length.
pub const STREAM_PAGE: i64 = 500;

/// One page of [`stream_events`]: at most `limit` events after `after_version` within the bounds.
#[tracing::instrument(skip(conn))]
pub async fn stream_page(
    conn: &mut PgConnection,
    stream_id: Uuid,
    after_version: i64,
    up_to_version: Option<i64>,
    up_to_time: Option<DateTime<Utc>>,
    limit: i64,
) -> anyhow::Result<Vec<StoredEvent>> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM ledger_events WHERE stream_id = $1 AND version > $2 \
           AND ($3::bigint IS NULL OR version <= $3) AND ($4::timestamptz IS NULL OR occurred_at <= $4) \
         ORDER BY version LIMIT $5"
    ))
    .bind(stream_id)
    .bind(after_version)
    .bind(up_to_version)
    .bind(up_to_time)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("read a page of stream events")?;
    rows.iter().map(event_from_row).collect()
}

/// One page of a stream: events after `after_version`, at most `limit + 1`.
#[tracing::instrument(skip(conn))]
pub async fn page_of_events(
    conn: &mut PgConnection,
    stream_id: Uuid,
    after_version: i64,
    limit: i64,
) -> anyhow::Result<Vec<StoredEvent>> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM ledger_events WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3"
    ))
    .bind(stream_id)
    .bind(after_version)
    .bind(limit + 1)
    .fetch_all(conn)
    .await
    .context("read page of events")?;
    rows.iter().map(event_from_row).collect()
}

/// The events an entry appended, ordered by stream.
#[tracing::instrument(skip(conn))]
pub async fn entry_events(conn: &mut PgConnection, entry_id: &str) -> anyhow::Result<Vec<StoredEvent>> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM ledger_events WHERE entry_id = $1 ORDER BY stream_id"
    ))
    .bind(entry_id)
    .fetch_all(conn)
    .await
    .context("read entry events")?;
    rows.iter().map(event_from_row).collect()
}

/// One row of the trial balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialBalanceRow {
    /// ISO 4217 code.
    pub currency: String,
    /// Sum of debit balances.
    pub debit_total: i64,
    /// Sum of credit balances.
    pub credit_total: i64,
    /// Debits minus credits over every account.
    pub net: i64,
    /// Accounts in the currency.
    pub account_count: i64,
}

/// Debit and credit balance totals per currency, from one statement (one snapshot).
#[tracing::instrument(skip(conn))]
pub async fn trial_balance(conn: &mut PgConnection, currency: Option<&str>) -> anyhow::Result<Vec<TrialBalanceRow>> {
    let rows = sqlx::query(
        // numeric: sums of many bigint balances cannot overflow; the text form is parsed into
        // i128 and only then narrowed, so a total beyond i64 is an error, never a wrapped value.
        "SELECT currency, \
                COALESCE(SUM(debit_side) FILTER (WHERE debit_side > 0), 0)::text AS debit_total, \
                COALESCE(-SUM(debit_side) FILTER (WHERE debit_side < 0), 0)::text AS credit_total, \
                COALESCE(SUM(debit_side), 0)::text AS net, \
                count(*) AS account_count \
         FROM (SELECT b.currency, \
                      CASE WHEN a.account_type IN ('asset', 'expense') THEN b.balance::numeric \
                           ELSE -(b.balance::numeric) END \
                        AS debit_side \
               FROM ledger_balances b JOIN ledger_accounts a ON a.account_id = b.account_id \
               WHERE $1::text IS NULL OR b.currency = $1) balances \
         GROUP BY currency ORDER BY currency",
    )
    .bind(currency)
    .fetch_all(conn)
    .await
    .context("trial balance")?;
    rows.iter()
        .map(|row| {
            let total = |column: &str| -> anyhow::Result<i64> {
                let text: String = row.try_get(column)?;
                let wide: i128 = text
                    .parse()
                    .with_context(|| format!("{column} {text:?} is no integer"))?;
                i64::try_from(wide).with_context(|| format!("{column} {text} exceeds the int64 of the contract"))
            };
            Ok(TrialBalanceRow {
                currency: row.try_get("currency")?,
                debit_total: total("debit_total")?,
                credit_total: total("credit_total")?,
                net: total("net")?,
                account_count: row.try_get("account_count")?,
            })
        })
        .collect()
}
