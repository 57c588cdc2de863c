//! Placing, releasing and expiring holds (capturing one is a posting: [`Ledger::capture`]).
//!
//! Each operation is one READ COMMITTED transaction per attempt, on the posting protocol's
//! terms (ADR 0004, ADR 0022): lock the account's stream, balance and account rows
//! (`storage::account_states`), then the hold's row; check the rules on that locked state; append
//! the hold event at the stream's next version (moving the stream only from the version read,
//! `UNIQUE(stream_id, version)` behind it); update `ledger_balances.held` and `ledger_holds`;
//! queue the hold's full state on its `ledger.hold_*` topic; commit. Conflicts retry with
//! jittered backoff, at most `max_attempts` times, then ABORTED.
//!
//! Idempotency is by hold id: a placement retried with the same content returns the hold as it
//! is now, with other content is FAILED_PRECONDITION (`HOLD_ID_REUSED`); releasing a released
//! hold returns it. The tables refuse a second terminal transition whatever the code does
//! (migration 20261202000101).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng as _;
use sqlx::PgConnection;

use super::posting::{FIRST_BACKOFF, Ledger, MAX_BACKOFF, PostError, is_conflict};
use crate::domain::entry::rules;
use crate::domain::hold::{Hold, HoldBalance, HoldStatus, NewHold};
use crate::domain::stream::{EventBody, HoldPlacedEvent, HoldReleasedEvent, StoredEvent};
use crate::domain::{AccountState, CustomerState, LedgerError, Precondition, Side, now};
use crate::events::{self, HoldChange, SOURCE};
use crate::storage;

/// How a hold operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Changed now.
    Changed(Hold),
    /// Nothing to do (a retry of a placement, a release of a released hold): the hold as it is.
    Unchanged(Hold),
}

impl HoldOutcome {
    /// The hold.
    pub fn hold(&self) -> &Hold {
        match self {
            Self::Changed(hold) | Self::Unchanged(hold) => hold,
        }
    }
}

enum Step<T> {
    Done(T),
    Retry(String),
}

/// One hold operation, attempted by [`Ledger::with_retries`].
#[derive(Debug, Clone, Copy)]
enum HoldOp<'a> {
    Place {
        hold: &'a NewHold,
        fingerprint: &'a str,
    },
    Release {
        hold_id: &'a str,
        reason: &'a str,
        expired: bool,
    },
}

fn rejected(kind: &'static str, subject: &str, description: String) -> LedgerError {
    LedgerError::Rejected(vec![Precondition {
        kind,
        subject: subject.to_owned(),
        description,
    }])
}

fn internal(error: anyhow::Error) -> PostError {
    PostError::Ledger(LedgerError::Internal(error))
}

/// A step's storage error: a retry for conflicts, an error otherwise.
fn storage_step<T>(error: anyhow::Error) -> Result<Step<T>, PostError> {
    if is_conflict(&error) {
        Ok(Step::Retry(format!("{error:#}")))
    } else {
        Err(internal(error))
    }
}

/// Why a hold was released by the expiry job.
pub fn expiry_reason(expires_at: DateTime<Utc>) -> String {
    format!("expired at {}", expires_at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

impl Ledger {
    async fn attempt_op(&self, conn: &mut PgConnection, op: HoldOp<'_>) -> Result<Step<HoldOutcome>, PostError> {
        match op {
            HoldOp::Place { hold, fingerprint } => self.place_attempt(conn, hold, fingerprint).await,
            HoldOp::Release {
                hold_id,
                reason,
                expired,
            } => self.release_attempt(conn, hold_id, reason, expired).await,
        }
    }

    async fn with_retries(&self, what: &str, op: HoldOp<'_>) -> Result<HoldOutcome, PostError> {
        let attempts = self.settings().max_attempts.max(1);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=attempts {
            let mut transaction = self
                .pool()
                .begin()
                .await
                .map_err(|error| internal(anyhow::Error::new(error).context("begin")))?;
            let step = match self.set_lock_timeout(&mut transaction).await {
                Ok(()) => self.attempt_op(&mut transaction, op).await,
                Err(error) => storage_step(error),
            };
            let step = match step {
                Ok(Step::Done(done)) => match transaction.commit().await {
                    Ok(()) => return Ok(done),
                    Err(error) => storage_step::<HoldOutcome>(anyhow::Error::new(error).context("commit"))?,
                },
                Ok(Step::Retry(reason)) => {
                    let _ = transaction.rollback().await;
                    Step::Retry(reason)
                }
                Err(PostError::Ledger(LedgerError::Internal(error))) => {
                    let _ = transaction.rollback().await;
                    storage_step(error)?
                }
                Err(error) => {
                    let _ = transaction.rollback().await;
                    return Err(error);
                }
            };
            if let Step::Retry(reason) = step {
                tracing::debug!(attempt, %reason, "{what} conflicted, retrying");
                if attempt < attempts {
                    let jittered = rand::rng().random_range(Duration::ZERO..=backoff);
                    tokio::time::sleep(jittered).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tracing::warn!(attempts, "{what} gave up after repeated conflicts");
        Err(LedgerError::Contention { attempts }.into())
    }

    /// Places `hold` (see the module docs).
    #[tracing::instrument(name = "ledger.place_hold", skip_all, fields(hold_id = %hold.hold_id, account_id = %hold.account_id))]
    pub async fn place_hold(&self, hold: &NewHold) -> Result<HoldOutcome, PostError> {
        let fingerprint = hold.fingerprint();
        self.with_retries(
            "placing a hold",
            HoldOp::Place {
                hold,
                fingerprint: &fingerprint,
            },
        )
        .await
    }

    async fn place_attempt(
        &self,
        conn: &mut PgConnection,
        hold: &NewHold,
        fingerprint: &str,
    ) -> Result<Step<HoldOutcome>, PostError> {
        if let Some(existing) = storage::holds::get_hold(conn, &hold.hold_id, false)
            .await
            .map_err(internal)?
        {
            return if existing.fingerprint == fingerprint {
                Ok(Step::Done(HoldOutcome::Unchanged(existing)))
            } else {
                Err(rejected(
                    "HOLD_ID_REUSED",
                    "hold_id",
                    format!("hold_id {:?} was already used for a different hold", hold.hold_id),
                )
                .into())
            };
        }
        let states = match storage::account_states(conn, &[hold.account_id], self.settings().lock_streams).await {
            Ok(states) => states,
            Err(error) => return storage_step(error),
        };
        let Some(state) = states.get(&hold.account_id) else {
            return Err(rejected(
                rules::UNKNOWN,
                "account_id",
                format!("account {} does not exist", hold.account_id),
            )
            .into());
        };
        if state.account.system {
            return Err(LedgerError::Reserved(format!(
                "system account {} cannot be held: it is moved only by the ledger's own event handlers",
                state.account.code
            ))
            .into());
        }
        check_debits_allowed(state)?;
        if state.account.currency != hold.currency {
            return Err(rejected(
                "CURRENCY_MISMATCH",
                "currency",
                format!(
                    "account {} holds {}, not {}",
                    state.account.code, state.account.currency, hold.currency
                ),
            )
            .into());
        }
        let held_after = state
            .held
            .checked_add(hold.amount)
            .ok_or_else(|| rejected("AMOUNT_OUT_OF_RANGE", "amount", "the holds would overflow".to_owned()))?;
        let available_after = state.account.available(state.balance, held_after);
        if state.account.overdraft.floor().is_some() && available_after < 0 {
            let kind = if state.account.customer.is_some() {
                rules::OVERDRAFT_LIMIT
            } else {
                rules::LIMIT_EXCEEDED
            };
            return Err(rejected(
                kind,
                &hold.account_id.to_string(),
                format!(
                    "holding {} on account {} would leave {available_after} {} available (balance {}, {} held)",
                    hold.amount, state.account.code, state.account.currency, state.balance, state.held
                ),
            )
            .into());
        }
        let at = state.updated_at.max(now());
        let event = StoredEvent::chained(
            hold.account_id,
            state.version + 1,
            &state.head_hash,
            at,
            &EventBody::HoldPlaced(HoldPlacedEvent {
                hold_id: hold.hold_id.clone(),
                amount: hold.amount,
                expires_at: hold.expires_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                reason: hold.reason.clone(),
                held_after,
                available_after,
            }),
        );
        let placed = Hold {
            hold_id: hold.hold_id.clone(),
            account_id: hold.account_id,
            currency: hold.currency.as_str().to_owned(),
            amount: hold.amount,
            held: hold.amount,
            captured: 0,
            status: HoldStatus::Active,
            reason: hold.reason.clone(),
            expires_at: hold.expires_at,
            placed_at: at,
            updated_at: at,
            release_reason: String::new(),
            capture_entry_ids: Vec::new(),
            version: 1,
            fingerprint: fingerprint.to_owned(),
            balance: HoldBalance {
                balance: state.balance,
                held: held_after,
                available: available_after,
                version: event.version,
                updated_at: at,
            },
        };
        match storage::holds::append_hold_event(conn, &event, state.version, held_after).await {
            Ok(true) => {}
            Ok(false) => return Ok(Step::Retry("the stream moved".to_owned())),
            Err(error) => return storage_step(error),
        }
        match storage::holds::insert_hold(conn, &placed).await {
            Ok(true) => {}
            // Placed concurrently under the same id: the next attempt finds it.
            Ok(false) => return Ok(Step::Retry("the hold id was taken concurrently".to_owned())),
            Err(error) => return storage_step(error),
        }
        let outbox = events::hold_changed(self.topics(), &placed, HoldChange::Placed);
        fintech_platform::outbox::enqueue(conn, SOURCE, &outbox)
            .await
            .context("queue hold_placed")
            .map_err(internal)?;
        Ok(Step::Done(HoldOutcome::Changed(placed)))
    }

    /// Releases an active hold (ReleaseHold, `expired = false`) or expires it (the expiry job).
    /// A released hold is returned as it is by a release; an expiry of a hold no longer active
    /// does nothing (`Unchanged`).
    #[tracing::instrument(name = "ledger.release_hold", skip_all, fields(hold_id = %hold_id, expired))]
    pub async fn release_hold(&self, hold_id: &str, reason: &str, expired: bool) -> Result<HoldOutcome, PostError> {
        self.with_retries(
            "releasing a hold",
            HoldOp::Release {
                hold_id,
                reason,
                expired,
            },
        )
        .await
    }

    async fn release_attempt(
        &self,
        conn: &mut PgConnection,
        hold_id: &str,
        reason: &str,
        expired: bool,
    ) -> Result<Step<HoldOutcome>, PostError> {
        let Some(found) = storage::holds::get_hold(conn, hold_id, false).await.map_err(internal)? else {
            return Err(LedgerError::HoldNotFound(hold_id.to_owned()).into());
        };
        // Streams first, then the hold: the order every hold operation and capture takes.
        let states = match storage::account_states(conn, &[found.account_id], self.settings().lock_streams).await {
            Ok(states) => states,
            Err(error) => return storage_step(error),
        };
        let state = states
            .get(&found.account_id)
            .ok_or_else(|| internal(anyhow::anyhow!("the held account {} is gone", found.account_id)))?;
        let hold = match storage::holds::get_hold(conn, hold_id, true).await {
            Ok(Some(hold)) => hold,
            Ok(None) => return Err(LedgerError::HoldNotFound(hold_id.to_owned()).into()),
            Err(error) => return storage_step(error),
        };
        match (hold.status, expired) {
            (HoldStatus::Active, _) => {}
            (_, true) | (HoldStatus::Released, false) => return Ok(Step::Done(HoldOutcome::Unchanged(hold))),
            (status, false) => {
                return Err(rejected(
                    "hold.not_active",
                    "hold_id",
                    format!("hold {hold_id} is {}, it can no longer be released", status.as_str()),
                )
                .into());
            }
        }
        let reason = if expired {
            expiry_reason(hold.expires_at)
        } else if reason.is_empty() {
            "released".to_owned()
        } else {
            reason.to_owned()
        };
        let held_after = state.held - hold.held;
        let available_after = state.account.available(state.balance, held_after);
        let at = state.updated_at.max(now());
        let event = StoredEvent::chained(
            hold.account_id,
            state.version + 1,
            &state.head_hash,
            at,
            &EventBody::HoldReleased(HoldReleasedEvent {
                hold_id: hold.hold_id.clone(),
                amount: hold.held,
                expired,
                reason: reason.clone(),
                held_after,
                available_after,
            }),
        );
        let status = if expired {
            HoldStatus::Expired
        } else {
            HoldStatus::Released
        };
        let mut after = hold.clone();
        after.held = 0;
        after.status = status;
        after.release_reason = reason;
        after.version += 1;
        after.updated_at = at;
        after.balance = HoldBalance {
            balance: state.balance,
            held: held_after,
            available: available_after,
            version: event.version,
            updated_at: at,
        };
        match storage::holds::append_hold_event(conn, &event, state.version, held_after).await {
            Ok(true) => {}
            Ok(false) => return Ok(Step::Retry("the stream moved".to_owned())),
            Err(error) => return storage_step(error),
        }
        match storage::holds::update_hold(conn, &after).await {
            Ok(true) => {}
            Ok(false) => return Ok(Step::Retry("the hold changed".to_owned())),
            Err(error) => return storage_step(error),
        }
        if let Err(error) = storage::holds::insert_ending(conn, hold_id, status, at, event.version).await {
            return storage_step(error);
        }
        let change = if expired {
            HoldChange::Expired
        } else {
            HoldChange::Released
        };
        let outbox = events::hold_changed(self.topics(), &after, change);
        fintech_platform::outbox::enqueue(conn, SOURCE, &outbox)
            .await
            .context("queue the hold's release")
            .map_err(internal)?;
        Ok(Step::Done(HoldOutcome::Changed(after)))
    }

    /// One round of the expiry job: expires up to `batch` ACTIVE holds past their expiry, each in
    /// its own transaction; returns how many it expired.
    pub async fn expire_holds(&self, batch: i64) -> anyhow::Result<usize> {
        let due = {
            let mut conn = self.pool().acquire().await.context("acquire")?;
            storage::holds::expired_holds(&mut conn, now(), batch).await?
        };
        let mut expired = 0;
        for hold_id in due {
            match self.release_hold(&hold_id, "", true).await {
                Ok(HoldOutcome::Changed(hold)) => {
                    expired += 1;
                    tracing::info!(%hold_id, account_id = %hold.account_id, reason = %hold.release_reason, "hold expired");
                }
                Ok(HoldOutcome::Unchanged(_)) => {}
                Err(error) => tracing::warn!(%hold_id, error = %error, "expiring a hold failed, will retry"),
            }
        }
        Ok(expired)
    }
}

/// Refuses a debit or hold on a customer account that is closed or frozen for debits.
fn check_debits_allowed(state: &AccountState) -> Result<(), LedgerError> {
    let Some(customer) = &state.account.customer else {
        return Ok(());
    };
    if customer.state == CustomerState::Closed {
        return Err(rejected(
            rules::CLOSED,
            "account_id",
            format!("account {} is closed", state.account.code),
        ));
    }
    if customer.freeze.blocks(Side::Debit) {
        return Err(rejected(
            rules::FROZEN_DEBITS,
            "account_id",
            format!("account {} is frozen for debits", state.account.code),
        ));
    }
    Ok(())
}

/// Runs the expiry job every `interval` until `stop` fires.
pub async fn run_expiry(
    ledger: std::sync::Arc<Ledger>,
    interval: Duration,
    stop: fintech_platform::CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match ledger.expire_holds(100).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired holds released"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "hold expiry round failed, will retry"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(interval) => {}
        }
    }
}
