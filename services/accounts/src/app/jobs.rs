//! The background jobs: dormancy and savings interest. Both are functions of the date or time
//! they are given ([`mark_dormant`], [`run_interest`]), so tests drive them with any clock; the
//! kit jobs ([`run_dormancy_job`], [`run_interest_job`]) call them with the server clock.
//!
//! # Interest
//! Per open savings account, in one transaction holding the account's row lock (the lock every
//! command and the projection take first):
//! 1. **accrue** every completed day not accrued yet (`accrued_through + 1 .. today - 1`): the
//!    end-of-day ledger balance from the balance history, the rate of that day, `balance *
//!    rate_bps` units ([`crate::domain::interest`]); days are stored once (primary key);
//! 2. **settle** every completed month after `settled_through`: the month's units plus the carry,
//!    floored to minor units, the remainder carried; a positive amount becomes one
//!    `InterestPosting` (`interest:<account>:<YYYY-MM>`) on `accounts.interest_posted` through the
//!    outbox. The posting row's unique constraints make a second run post nothing. While the
//!    account's credits are frozen nothing is posted: the month's units are carried whole into
//!    the first month settled after the freeze is lifted.
//!
//! A ledger event of a day that arrives after that day was accrued does not change the accrual
//! (accruals are never rewritten); `ACCOUNTS_ACCRUAL_LAG` delays accrual past midnight so
//! the projection has caught up (ADR 0023).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use fintech_platform::CancellationToken;
use fintech_platform::outbox;
use fintech_proto::accounts as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::interest::{self, RateTable};
use crate::domain::{self, Account, AccountState, Command, Product};
use crate::events::{self, SOURCE, Topics};
use crate::storage::{self, Accrual, PostingRow};

/// Accounts handled per round of a job before the next page is read.
const PAGE: i64 = 200;

/// Accrues `account`'s interest for every completed day before `today` not accrued yet (on the
/// caller's transaction, account row locked). Current and closed accounts accrue nothing.
pub async fn accrue(
    conn: &mut PgConnection,
    rates: &RateTable,
    account: &Account,
    today: NaiveDate,
) -> anyhow::Result<()> {
    if account.product != Product::Savings || account.state == AccountState::Closed {
        return Ok(());
    }
    let Some(mut state) = storage::interest_state(conn, account.account_id, true).await? else {
        return Ok(());
    };
    let Some(first) = state.accrued_through.succ_opt() else {
        return Ok(());
    };
    let Some(last) = today.pred_opt() else {
        return Ok(());
    };
    if first > last {
        return Ok(());
    }
    let (opening, points) = storage::balance_points(
        conn,
        account.account_id,
        interest::start_of_day(first),
        interest::start_of_day(today),
    )
    .await?;
    let accruals: Vec<Accrual> = interest::end_of_day_balances(opening, &points, first, last)
        .into_iter()
        .map(|(day, balance)| {
            let rate_bps = rates.rate_bps(account.currency.as_str(), day);
            Accrual {
                day,
                balance,
                rate_bps,
                units: interest::day_units(balance, rate_bps),
            }
        })
        .collect();
    storage::insert_accruals(conn, account.account_id, &accruals).await?;
    state.accrued_through = last;
    storage::save_interest_state(conn, account.account_id, &state).await?;
    Ok(())
}

/// Accrued interest not posted yet, in minor units (floor; 0 for a current account).
pub async fn accrued_interest(conn: &mut PgConnection, account_id: Uuid) -> anyhow::Result<i64> {
    let Some(state) = storage::interest_state(conn, account_id, false).await? else {
        return Ok(0);
    };
    let (units, _) = storage::accrued_between(conn, account_id, state.settled_through, state.accrued_through).await?;
    Ok(interest::shown_minor_units(units + state.carry_units))
}

/// Settles every completed, accrued month of `account` (see the module docs); returns the
/// postings written.
async fn settle(
    conn: &mut PgConnection,
    topics: &Topics,
    account: &Account,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<pb::InterestPosting>> {
    let mut posted = Vec::new();
    let credits_frozen = account
        .freeze
        .as_ref()
        .is_some_and(|freeze| freeze.kind.blocks_credits());
    let Some(mut state) = storage::interest_state(conn, account.account_id, true).await? else {
        return Ok(posted);
    };
    while let Some(month_start) = state.settled_through.succ_opt() {
        let month_end = interest::month_end(month_start);
        if month_end > state.accrued_through {
            break;
        }
        let (units, days) =
            storage::accrued_between(conn, account.account_id, state.settled_through, month_end).await?;
        let total = units + state.carry_units;
        let settlement = interest::settle(total)
            .ok_or_else(|| anyhow::anyhow!("interest of account {} does not fit i64", account.account_id))?;
        let period = interest::period(month_end);
        if credits_frozen {
            // Nothing is posted to a credit-frozen account: the whole month is carried.
            tracing::info!(account_id = %account.account_id, period, "credits frozen: the month's interest is carried");
            state.settled_through = month_end;
            state.carry_units = total;
            continue;
        }
        if settlement.amount > 0 {
            let row = PostingRow {
                posting_id: interest::posting_id(account.account_id, &period),
                account_id: account.account_id,
                period: period.clone(),
                amount: settlement.amount,
                days,
                units: total,
                posted_at: now,
            };
            if storage::insert_posting(conn, &row).await? {
                let posting = pb::InterestPosting {
                    posting_id: row.posting_id.clone(),
                    account_id: account.account_id.to_string(),
                    customer_id: account.customer_id.clone(),
                    currency: account.currency.to_string(),
                    period: period.clone(),
                    amount: row.amount,
                    days,
                    posted_at: Some(crate::proto::timestamp(now)),
                };
                outbox::enqueue(conn, SOURCE, &events::interest_event(topics, &posting, now)).await?;
                tracing::info!(account_id = %account.account_id, period, amount = row.amount, days,
                    carry = %settlement.carry, rule = interest::ROUNDING_RULE, "interest posted");
                posted.push(posting);
            }
        }
        state.settled_through = month_end;
        state.carry_units = settlement.carry;
    }
    storage::save_interest_state(conn, account.account_id, &state).await?;
    Ok(posted)
}

/// Accrues every open savings account up to the day before `today` and settles every completed
/// month; one transaction per account. Returns the postings published by this run.
pub async fn run_interest(
    pool: &PgPool,
    topics: &Topics,
    rates: &RateTable,
    today: NaiveDate,
) -> anyhow::Result<Vec<pb::InterestPosting>> {
    let mut posted = Vec::new();
    let mut after = Uuid::nil();
    loop {
        let ids = {
            let mut conn = pool.acquire().await?;
            storage::savings_accounts(&mut conn, after, PAGE).await?
        };
        let Some(last) = ids.last().copied() else {
            break;
        };
        for account_id in ids {
            let mut transaction = pool.begin().await?;
            let Some(account) = storage::get_account(&mut transaction, account_id, true).await? else {
                continue;
            };
            accrue(&mut transaction, rates, &account, today).await?;
            if account.state != AccountState::Closed {
                posted.extend(settle(&mut transaction, topics, &account, domain::now()).await?);
            }
            transaction.commit().await?;
        }
        after = last;
    }
    Ok(posted)
}

/// Marks every ACTIVE account whose last customer movement (or opening) is `dormant_after` or
/// more before `now` DORMANT and publishes it; one transaction per account. Returns how many.
pub async fn mark_dormant(
    pool: &PgPool,
    topics: &Topics,
    dormant_after: Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let cutoff = chrono::Duration::from_std(dormant_after)
        .ok()
        .and_then(|period| now.checked_sub_signed(period))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut marked = 0;
    let mut after = Uuid::nil();
    loop {
        let ids = {
            let mut conn = pool.acquire().await?;
            storage::dormancy_candidates(&mut conn, cutoff, after, PAGE).await?
        };
        let Some(last) = ids.last().copied() else {
            break;
        };
        for account_id in ids {
            let mut transaction = pool.begin().await?;
            let Some(account) = storage::get_account(&mut transaction, account_id, true).await? else {
                continue;
            };
            // Checked again under the lock: a movement may have landed since the candidates were read.
            let last_movement = storage::last_movement(&mut transaction, account_id).await?;
            let quiet_since = last_movement.unwrap_or(account.opened_at);
            if account.state != AccountState::Active || quiet_since > cutoff {
                continue;
            }
            let next = account.apply(&Command::MarkDormant { last_movement }, domain::now())?;
            storage::update_account(&mut transaction, &next).await?;
            storage::insert_change(
                &mut transaction,
                &next,
                "mark_dormant",
                Some("no customer movement"),
                "dormancy-job",
            )
            .await?;
            outbox::enqueue(&mut transaction, SOURCE, &events::account_event(topics, &next)).await?;
            transaction.commit().await?;
            tracing::info!(account_id = %account_id, version = next.version, "account dormant");
            marked += 1;
        }
        after = last;
    }
    Ok(marked)
}

async fn every(interval: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(interval) => true,
    }
}

/// The dormancy kit job: [`mark_dormant`] with the server clock every `interval`. A failed round
/// is logged and retried at the next one (a database outage must not stop the service).
pub async fn run_dormancy_job(
    app: super::AccountsApp,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if let Err(error) = app.mark_dormant(domain::now()).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "dormancy round failed; retried at the next one"
            );
        }
        if !every(interval, &stop).await {
            return Ok(());
        }
    }
}

/// The interest kit job: [`run_interest`] every `interval` with today's date as it was `lag`
/// ago (UTC), so a day is accrued only once its late ledger events had time to arrive.
pub async fn run_interest_job(
    app: super::AccountsApp,
    interval: Duration,
    lag: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let now = domain::now();
        let as_of = chrono::Duration::from_std(lag)
            .ok()
            .and_then(|lag| now.checked_sub_signed(lag))
            .unwrap_or(now);
        if let Err(error) = app.run_interest(as_of.date_naive()).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "interest round failed; retried at the next one"
            );
        }
        if !every(interval, &stop).await {
            return Ok(());
        }
    }
}
