//! The saga's activities. Each is idempotent by construction:
//!
//! - the ledger ids are derived from the transfer id (`transfer:<id>` hold and entry), so a retry
//!   of PlaceHold or CaptureHold finds what the first attempt did;
//! - the row change and its outbox row commit in one transaction, only when the row is below the
//!   version the workflow assigned to the step (`storage::advance_transfer`), so a retry after a
//!   commit publishes nothing again;
//! - business refusals are returned as a typed, non-retryable application failure (type
//!   [`REFUSAL_TYPE`], details: the [`Refusal`]), which the workflow decodes; everything else is an
//!   ordinary (retried) failure.
//!
//! Every activity continues the trace of the CreateTransfer request (`traceparent` of the input),
//! so its ledger calls and outbox rows belong to that trace.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fintech_platform::telemetry::{TraceHeaders, set_remote_parent};
use fintech_proto::ledger as lpb;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument as _;

use crate::domain::{self, Refusal, RefusalCode, Status, Step, Transfer, TransferInput};
use crate::events::{self, SOURCE, Topics};
use crate::ledger::{Ledger, LedgerFailure};
use crate::storage;

/// Application failure type of a business refusal (listed as non-retryable in the retry policy
/// too).
pub const REFUSAL_TYPE: &str = "TransferRefused";

/// A step of the saga: the transfer and the version the workflow assigned to the step's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInput {
    /// The transfer.
    pub input: TransferInput,
    /// Version of the row after this step.
    pub version: i64,
}

/// The end of a transfer that did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortInput {
    /// The transfer.
    pub input: TransferInput,
    /// Version of the row after this step.
    pub version: i64,
    /// Why.
    pub refusal: Refusal,
    /// Whether a hold may have been placed and must be released first (compensation).
    pub release: bool,
}

/// What the activities use: the database, the ledger, the topics.
#[derive(Debug, Clone)]
pub struct TransferActivities {
    pool: PgPool,
    ledger: Ledger,
    topics: Topics,
}

fn refused(refusal: Refusal) -> ActivityError {
    ActivityError::application(
        ApplicationFailure::builder(refusal.clone())
            .type_name(REFUSAL_TYPE.to_owned())
            .non_retryable(true)
            .details(refusal)
            .build(),
    )
}

fn retry(error: impl std::fmt::Display) -> ActivityError {
    ActivityError::application(ApplicationFailure::new(anyhow::anyhow!("{error}")))
}

fn ledger_error(failure: LedgerFailure) -> ActivityError {
    match failure {
        LedgerFailure::Refused(refusal) => refused(refusal),
        LedgerFailure::Transient(reason) => retry(reason),
        // A request this service built wrongly: retrying it cannot help; the transfer fails and
        // an operator looks (the reason is recorded).
        LedgerFailure::Permanent(reason) => refused(Refusal::new(RefusalCode::LedgerRefused, reason)),
    }
}

fn span(name: &'static str, input: &TransferInput) -> tracing::Span {
    let span = tracing::info_span!("activity", activity = name, transfer_id = %input.transfer_id);
    set_remote_parent(
        &span,
        &TraceHeaders {
            traceparent: input.traceparent.clone(),
            tracestate: input.tracestate.clone(),
        },
    );
    span
}

fn now() -> DateTime<Utc> {
    domain::now()
}

impl TransferActivities {
    /// The activities over `pool`, calling `ledger`, publishing on `topics`.
    pub fn new(pool: PgPool, ledger: Ledger, topics: Topics) -> Self {
        Self { pool, ledger, topics }
    }

    /// Writes `next` if it is new, with its event; returns whether it was written.
    async fn record(&self, next: &Transfer) -> Result<bool, ActivityError> {
        let mut tx = self.pool.begin().await.map_err(retry)?;
        let written = storage::advance_transfer(&mut tx, next).await.map_err(retry)?;
        if written && let Some(event) = events::transfer_event(&self.topics, next) {
            fintech_platform::outbox::enqueue(&mut tx, SOURCE, &event)
                .await
                .map_err(retry)?;
        }
        tx.commit().await.map_err(retry)?;
        Ok(written)
    }

    async fn current(&self, input: &TransferInput) -> Result<Transfer, ActivityError> {
        let mut conn = self.pool.acquire().await.map_err(retry)?;
        storage::get_transfer(&mut conn, input.transfer_id, false)
            .await
            .map_err(retry)?
            .ok_or_else(|| retry(format!("transfer {} has no row yet", input.transfer_id)))
    }
}

#[activities]
impl TransferActivities {
    /// Records the transfer (version 1 and `transfers.created`, if the gRPC call did not already)
    /// and checks both accounts against the accounts cache.
    #[activity]
    pub async fn validate(self: Arc<Self>, _ctx: ActivityContext, input: TransferInput) -> Result<(), ActivityError> {
        let span = span("validate", &input);
        async move {
            let mut tx = self.pool.begin().await.map_err(retry)?;
            let created = input.created();
            if storage::insert_transfer(&mut tx, &created).await.map_err(retry)?
                && let Some(event) = events::transfer_event(&self.topics, &created)
            {
                fintech_platform::outbox::enqueue(&mut tx, SOURCE, &event)
                    .await
                    .map_err(retry)?;
            }
            let from = storage::get_account(&mut tx, input.from_account_id)
                .await
                .map_err(retry)?;
            let to = storage::get_account(&mut tx, input.to_account_id)
                .await
                .map_err(retry)?;
            tx.commit().await.map_err(retry)?;
            domain::validate(&input, from.as_ref(), to.as_ref()).map_err(refused)
        }
        .instrument(span)
        .await
    }

    /// Places the hold on the source and records it (AWAITING_APPROVAL above the threshold).
    #[activity]
    pub async fn hold(self: Arc<Self>, _ctx: ActivityContext, step: StepInput) -> Result<(), ActivityError> {
        let span = span("hold", &step.input);
        async move {
            let input = &step.input;
            self.ledger
                .place_hold(lpb::PlaceHoldRequest {
                    hold_id: input.hold_id(),
                    account_id: input.from_account_id.to_string(),
                    amount: input.amount,
                    currency: input.currency.clone(),
                    expires_at: Some(crate::proto::timestamp(input.hold_expires_at)),
                    reason: format!("transfer {}", input.transfer_id),
                })
                .await
                .map_err(ledger_error)?;
            let current = self.current(input).await?;
            let next = Transfer {
                status: if input.requires_approval {
                    Status::AwaitingApproval
                } else {
                    Status::Pending
                },
                step: if input.requires_approval {
                    Step::Approving
                } else {
                    Step::Capturing
                },
                hold_id: Some(input.hold_id()),
                updated_at: now(),
                version: step.version,
                ..current
            };
            self.record(&next).await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Captures the hold into the entry that debits the source and credits the destination, and
    /// records the transfer COMPLETED (`transfers.completed`).
    #[activity]
    pub async fn capture(self: Arc<Self>, _ctx: ActivityContext, step: StepInput) -> Result<(), ActivityError> {
        let span = span("capture", &step.input);
        async move {
            let input = &step.input;
            let line = |account: uuid::Uuid, side: lpb::Side| lpb::EntryLine {
                account_id: account.to_string(),
                side: side as i32,
                amount: input.amount,
                currency: input.currency.clone(),
            };
            self.ledger
                .capture_hold(lpb::CaptureHoldRequest {
                    hold_id: input.hold_id(),
                    amount: input.amount,
                    remainder: lpb::CaptureRemainder::Release as i32,
                    entry_id: input.entry_id(),
                    description: format!("transfer {}", input.transfer_id),
                    metadata: [
                        ("kind".to_owned(), "transfer".to_owned()),
                        ("transfer_id".to_owned(), input.transfer_id.to_string()),
                    ]
                    .into_iter()
                    .collect(),
                    lines: vec![
                        line(input.from_account_id, lpb::Side::Debit),
                        line(input.to_account_id, lpb::Side::Credit),
                    ],
                })
                .await
                .map_err(ledger_error)?;
            let current = self.current(input).await?;
            let at = now();
            let next = Transfer {
                status: Status::Completed,
                step: Step::Done,
                hold_id: Some(input.hold_id()),
                entry_id: Some(input.entry_id()),
                updated_at: at,
                finished_at: Some(at),
                version: step.version,
                ..current
            };
            if self.record(&next).await? {
                tracing::info!(transfer_id = %input.transfer_id, "transfer completed");
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Releases the hold if one is active (compensation), then records the transfer's end
    /// (FAILED, CANCELLED or REJECTED, with the reason) and publishes it.
    #[activity]
    pub async fn abort(self: Arc<Self>, _ctx: ActivityContext, abort: AbortInput) -> Result<(), ActivityError> {
        let span = span("abort", &abort.input);
        async move {
            let input = &abort.input;
            if abort.release {
                let hold = self.ledger.get_hold(&input.hold_id()).await.map_err(ledger_error)?;
                match hold.map(|hold| lpb::HoldStatus::try_from(hold.status)) {
                    Some(Ok(lpb::HoldStatus::Active)) => {
                        self.ledger
                            .release_hold(&input.hold_id(), &format!("transfer {}", abort.refusal.code.as_str()))
                            .await
                            .map_err(ledger_error)?;
                    }
                    // Never placed, already released, or expired: nothing is held any more.
                    None | Some(Ok(lpb::HoldStatus::Released | lpb::HoldStatus::Expired)) => {}
                    Some(other) => {
                        return Err(retry(format!(
                            "hold {} is {other:?}: the compensation cannot release it",
                            input.hold_id()
                        )));
                    }
                }
            }
            let current = self.current(input).await?;
            let at = now();
            let next = Transfer {
                status: abort.refusal.code.status(),
                step: Step::Done,
                failure: Some(abort.refusal.clone()),
                updated_at: at,
                finished_at: Some(at),
                version: abort.version,
                ..current
            };
            if self.record(&next).await? {
                tracing::info!(
                    transfer_id = %input.transfer_id,
                    code = abort.refusal.code.as_str(),
                    status = next.status.as_str(),
                    "transfer ended without moving money"
                );
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}
