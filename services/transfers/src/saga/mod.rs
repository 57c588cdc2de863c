//! The transfer saga as a Temporal workflow (ADR 0024).
//!
//! ```text
//! validate ──refused──────────────────────────────▶ abort(FAILED)
//!    │ cancel requested ──────────────────────────▶ abort(CANCELLED)
//! hold ─────refused (e.g. insufficient funds)────▶ abort(FAILED)           (nothing held)
//!    │ above the threshold: wait for approve / reject / cancel / deadline
//!    │   reject ──▶ abort(REJECTED, release)   deadline ──▶ abort(REJECTED approval.timeout, release)
//!    │ cancel requested ──────────────────────────▶ abort(CANCELLED, release)
//! capture ──refused (e.g. destination frozen)────▶ abort(FAILED, release)  (compensation)
//!    ▼
//! COMPLETED
//! ```
//!
//! # Guarantees
//! - **Deterministic**: the workflow reads only its input, its own state (changed by updates) and
//!   the results of its activities and timer; ids and versions are computed from the input, the
//!   clock and randomness are used only in activities. A replay of a recorded history takes the
//!   same path (tests/transfers_replay.rs).
//! - **Exactly once effects**: see [`activities`]: derived ledger ids, versioned row changes with
//!   their outbox rows in one transaction.
//! - **Cancellation** is an update whose validator refuses it once the capture has started (or
//!   the transfer ended), so the caller learns synchronously whether it was accepted; an accepted
//!   cancellation is acted on at the next decision point, before the capture.
//! - **Retries**: infrastructure failures are retried without limit (backoff 200 ms → 5 s);
//!   business refusals are a non-retryable failure type and are never retried.

pub mod activities;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, ActivityOptions, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
};

pub use activities::{AbortInput, REFUSAL_TYPE, StepInput, TransferActivities};

use crate::domain::{Refusal, RefusalCode, TransferInput};

/// Start-to-close timeout of every activity: each makes at most two short ledger calls and one
/// transaction, so a worker killed during one costs at most this before the retry.
pub const ACTIVITY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the workflow is, as the update validators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    /// Validating or holding.
    #[default]
    Running,
    /// Held, waiting for a decision.
    AwaitingApproval,
    /// The capture started: cancellation is refused from here on.
    Capturing,
    /// Ended.
    Done,
}

/// An approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Go ahead.
    Approved {
        /// Who.
        by: String,
    },
    /// Stop, with the reason.
    Rejected {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
}

/// How a transfer ended (the workflow's result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The money moved.
    Completed,
    /// It did not, and why.
    NotCompleted(Refusal),
}

/// The transfer workflow: one per transfer, id `transfer-<transfer id>`.
#[workflow]
#[derive(Debug, Default)]
pub struct TransferWorkflow {
    phase: Phase,
    cancel: Option<String>,
    decision: Option<Decision>,
}

fn activity_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(ACTIVITY_TIMEOUT)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(200))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(5))
                .non_retryable_error_types([REFUSAL_TYPE])
                .build(),
        )
        .build()
}

/// The refusal an activity failed with, if it was one (decoded from the failure's details, never
/// from its message); `None` for any other failure.
pub fn refusal_of(error: &ActivityExecutionError) -> Option<Refusal> {
    match error.reason() {
        Some(temporalio_common::error::IncomingError::Application(application))
            if application.type_name() == Some(REFUSAL_TYPE) =>
        {
            application.details::<Refusal>().ok().flatten()
        }
        _ => None,
    }
}

type Validation = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[workflow_methods]
impl TransferWorkflow {
    /// Runs the saga for `input`.
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: TransferInput) -> WorkflowResult<Outcome> {
        let options = activity_options();
        // Version 1 is the accepted transfer; each recorded step takes the next.
        let mut version = 1;

        // 1. The accounts, against the cache.
        if let Err(error) = ctx
            .execute_activity(TransferActivities::validate, input.clone(), options.clone())
            .await
        {
            let refusal = refusal_of(&error).ok_or(error)?;
            return Self::abort(ctx, &input, version + 1, refusal, false).await;
        }
        if let Some(reason) = ctx.state(|state| state.cancel.clone()) {
            return Self::abort(
                ctx,
                &input,
                version + 1,
                Refusal::new(RefusalCode::Cancelled, reason),
                false,
            )
            .await;
        }

        // 2. The hold on the source.
        version += 1;
        let held = ctx
            .execute_activity(
                TransferActivities::hold,
                StepInput {
                    input: input.clone(),
                    version,
                },
                options.clone(),
            )
            .await;
        if let Err(error) = held {
            let refusal = refusal_of(&error).ok_or(error)?;
            // Nothing was held: a refused PlaceHold places nothing.
            return Self::abort(ctx, &input, version + 1, refusal, false).await;
        }

        // 3. Above the threshold: a person decides, before the deadline.
        if input.requires_approval {
            ctx.state_mut(|state| state.phase = Phase::AwaitingApproval);
            let deadline = Duration::from_millis(input.approval_timeout_ms);
            let decided = temporalio_sdk::workflows::select! {
                _ = ctx.timer(deadline) => false,
                _ = ctx.wait_condition(|state| state.decision.is_some() || state.cancel.is_some()) => true,
            };
            if !decided {
                let refusal = Refusal::new(
                    RefusalCode::ApprovalTimeout,
                    format!("no approval within {} ms", input.approval_timeout_ms),
                );
                return Self::abort(ctx, &input, version + 1, refusal, true).await;
            }
            if let Some(Decision::Rejected { by, reason }) = ctx.state(|state| state.decision.clone())
                && ctx.state(|state| state.cancel.is_none())
            {
                let refusal = Refusal::new(RefusalCode::Rejected, format!("rejected by {by}: {reason}"));
                return Self::abort(ctx, &input, version + 1, refusal, true).await;
            }
        }
        if let Some(reason) = ctx.state(|state| state.cancel.clone()) {
            return Self::abort(
                ctx,
                &input,
                version + 1,
                Refusal::new(RefusalCode::Cancelled, reason),
                true,
            )
            .await;
        }

        // 4. The capture: from here on, cancellation is refused.
        ctx.state_mut(|state| state.phase = Phase::Capturing);
        version += 1;
        let captured = ctx
            .execute_activity(
                TransferActivities::capture,
                StepInput {
                    input: input.clone(),
                    version,
                },
                options.clone(),
            )
            .await;
        if let Err(error) = captured {
            let refusal = refusal_of(&error).ok_or(error)?;
            // Compensation: the hold is released before the transfer is marked failed.
            return Self::abort(ctx, &input, version, refusal, true).await;
        }
        ctx.state_mut(|state| state.phase = Phase::Done);
        Ok(Outcome::Completed)
    }

    async fn abort(
        ctx: &mut WorkflowContext<Self>,
        input: &TransferInput,
        version: i64,
        refusal: Refusal,
        release: bool,
    ) -> WorkflowResult<Outcome> {
        ctx.state_mut(|state| state.phase = Phase::Done);
        ctx.execute_activity(
            TransferActivities::abort,
            AbortInput {
                input: input.clone(),
                version,
                refusal: refusal.clone(),
                release,
            },
            activity_options(),
        )
        .await?;
        Ok(Outcome::NotCompleted(refusal))
    }

    /// Refuses a cancellation once the capture started or the transfer ended.
    #[update_validator(cancel)]
    fn validate_cancel(&self, _ctx: &WorkflowContextView, _reason: &String) -> Validation {
        match self.phase {
            Phase::Running | Phase::AwaitingApproval => Ok(()),
            Phase::Capturing => Err("transfer.capture_started: the capture has started".into()),
            Phase::Done => Err("transfer.finished: the transfer has ended".into()),
        }
    }

    /// Asks for the transfer to be cancelled (acted on before the capture).
    #[update]
    pub fn cancel(&mut self, _ctx: &mut SyncWorkflowContext<Self>, reason: String) -> bool {
        self.cancel.get_or_insert(reason);
        true
    }

    /// Refuses a decision once the capture started or the transfer ended, or when one was already
    /// taken. `Running` is accepted on purpose: a worker that takes the workflow over after a crash
    /// may get the update in the same activation as the hold's completion, and the SDK runs
    /// validators before it resolves that activation's activities, so the phase it sees is still
    /// `Running` although the transfer (its row, written by the hold activity) awaits approval. The
    /// API accepts a decision only for a row in AWAITING_APPROVAL, so an early decision is one for
    /// a transfer that needs it; the workflow reads it when it reaches the approval wait.
    #[update_validator(decide)]
    fn validate_decide(&self, _ctx: &WorkflowContextView, _decision: &Decision) -> Validation {
        let open = matches!(self.phase, Phase::Running | Phase::AwaitingApproval);
        if open && self.decision.is_none() && self.cancel.is_none() {
            Ok(())
        } else {
            Err("transfer.not_awaiting_approval: the transfer does not wait for a decision".into())
        }
    }

    /// An approver's decision.
    #[update]
    pub fn decide(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: Decision) -> bool {
        self.decision.get_or_insert(decision);
        true
    }
}
