//! The transfers use cases: accept a transfer (row + `transfers.created` in one transaction, then
//! the workflow), read and list from the service's own table, and pass cancellations and
//! approval decisions to the running workflow as updates.
//!
//! # Idempotency
//! CreateTransfer requires an `idempotency-key`. The transfer id is derived from the caller and
//! the key (`domain::transfer_id_of`), the workflow id from the transfer id. The row is written
//! first (`ON CONFLICT DO NOTHING`: the first request wins), then the workflow is started from
//! the row with `RejectDuplicate` (a finished workflow is never run again) and `UseExisting` (a
//! running one is returned), so retries, also concurrent ones, get one transfer, one workflow and
//! the same answer (the transfer as accepted). The same key with a different request is
//! FAILED_PRECONDITION. A crash between the row and the start is repaired by the retry of the
//! client, or by the starter job ([`restart_orphans`]), which starts the workflow of any accepted
//! row that has none.

use std::time::Duration;

use chrono::Utc;
use fintech_platform::idempotency::{IdempotencyKey, fingerprint};
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::transfers as pb;
use sqlx::PgPool;
use temporalio_client::errors::{WorkflowStartError, WorkflowUpdateError};
use temporalio_client::{
    WorkflowExecuteUpdateOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
};
use uuid::Uuid;

use crate::domain::{
    self, Cursor, NewTransfer, PageRequest, Status, Transfer, TransferInput, TransfersError, Violations,
};
use crate::events::{self, SOURCE, Topics};
use crate::saga::{Decision, TransferWorkflow};
use crate::storage::{self, ListBy};
use crate::temporal::LazyClient;

/// Scope the idempotency key of CreateTransfer is stored under.
const CREATE_SCOPE: &str = "/fintech.transfers.v1.TransfersService/CreateTransfer";
/// How long Cancel/Approve/Reject wait for the saga to act on the update before answering with
/// the state as it is.
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// Who calls: the token's subject and the customer it is limited to.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// `sub`.
    pub subject: String,
    /// The customer of a customer token.
    pub customer: Option<String>,
}

/// Whether a caller limited to `owner` (`None`: not limited) may see `customer_id`'s data.
pub fn owns(owner: Option<&str>, customer_id: &str) -> bool {
    owner.is_none_or(|owner| owner == customer_id)
}

/// Rules that decide a transfer's workflow input.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Amounts above this wait for approval.
    pub approval_threshold: i64,
    /// The approval deadline.
    pub approval_timeout: Duration,
    /// Time to live of the hold.
    pub hold_ttl: Duration,
}

/// The transfers application.
#[derive(Debug, Clone)]
pub struct TransfersApp {
    pool: PgPool,
    temporal: LazyClient,
    topics: Topics,
    policy: Policy,
}

fn unavailable(error: impl std::fmt::Display) -> TransfersError {
    TransfersError::Unavailable(error.to_string())
}

impl TransfersApp {
    /// The application.
    pub fn new(pool: PgPool, temporal: LazyClient, topics: Topics, policy: Policy) -> Self {
        Self {
            pool,
            temporal,
            topics,
            policy,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The workflow input of a stored transfer: everything comes from the row (and the policy),
    /// so every request and the starter job start the same workflow.
    fn input_of(&self, transfer: &Transfer, trace: &TraceHeaders) -> TransferInput {
        TransferInput {
            transfer_id: transfer.transfer_id,
            customer_id: transfer.customer_id.clone(),
            requested_by: transfer.requested_by.clone(),
            fingerprint: transfer.fingerprint.clone(),
            from_account_id: transfer.from_account_id,
            to_account_id: transfer.to_account_id,
            amount: transfer.amount,
            currency: transfer.currency.clone(),
            reference: transfer.reference.clone(),
            requires_approval: transfer.requires_approval,
            approval_timeout_ms: if transfer.requires_approval {
                u64::try_from(self.policy.approval_timeout.as_millis()).unwrap_or(u64::MAX)
            } else {
                0
            },
            created_at: transfer.created_at,
            hold_expires_at: transfer.created_at
                + chrono::Duration::from_std(self.policy.hold_ttl).unwrap_or(chrono::Duration::days(7)),
            traceparent: trace.traceparent.clone(),
            tracestate: trace.tracestate.clone(),
        }
    }

    /// Accepts a transfer and starts its saga; returns it as accepted (PENDING, version 1), the
    /// same on every retry with the same key.
    #[tracing::instrument(skip_all)]
    pub async fn create(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::CreateTransferRequest,
        actor: &Actor,
    ) -> Result<pb::Transfer, TransfersError> {
        let Some(key) = key else {
            return Err(Violations::single("idempotency-key", "is required: a retry must not move money twice").into());
        };
        let new = NewTransfer::parse(
            &request.from_account_id,
            &request.to_account_id,
            request.amount,
            &request.currency,
            &request.reference,
        )?;
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        // Ownership, from the accounts cache: a customer moves money only out of its own accounts.
        let source = storage::get_account(&mut conn, new.from_account_id)
            .await?
            .filter(|account| owns(actor.customer.as_deref(), &account.customer_id))
            .ok_or_else(|| TransfersError::NotFound {
                kind: "account",
                id: new.from_account_id.to_string(),
            })?;
        drop(conn);
        let transfer_id = domain::transfer_id_of(&key.stored_scope(CREATE_SCOPE), key.as_str());
        let now = domain::now();
        let input = TransferInput {
            transfer_id,
            customer_id: source.customer_id.clone(),
            requested_by: actor.subject.clone(),
            fingerprint: fingerprint(request),
            from_account_id: new.from_account_id,
            to_account_id: new.to_account_id,
            amount: new.amount,
            currency: new.currency.clone(),
            reference: new.reference.clone(),
            requires_approval: new.amount > self.policy.approval_threshold,
            approval_timeout_ms: 0,
            created_at: now,
            hold_expires_at: now,
            traceparent: None,
            tracestate: None,
        };
        let candidate = input.created();
        let mut tx = self.pool.begin().await.map_err(anyhow::Error::from)?;
        if storage::insert_transfer(&mut tx, &candidate).await?
            && let Some(event) = events::transfer_event(&self.topics, &candidate)
        {
            fintech_platform::outbox::enqueue(&mut tx, SOURCE, &event)
                .await
                .map_err(anyhow::Error::from)?;
        }
        let stored = storage::get_transfer(&mut tx, transfer_id, false)
            .await?
            .ok_or_else(|| anyhow::anyhow!("transfer {transfer_id} vanished after its insert"))?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        if stored.fingerprint != candidate.fingerprint || stored.requested_by != candidate.requested_by {
            return Err(TransfersError::KeyReused);
        }
        self.start(&stored, &TraceHeaders::current()).await?;
        Ok(pb::Transfer::from(&self.as_accepted(&stored)))
    }

    /// The transfer as it was accepted (what CreateTransfer answers, every time).
    fn as_accepted(&self, stored: &Transfer) -> Transfer {
        self.input_of(stored, &TraceHeaders::default()).created()
    }

    /// Starts the workflow of a stored transfer; a workflow that exists (running or finished) is
    /// fine and never started again.
    async fn start(&self, stored: &Transfer, trace: &TraceHeaders) -> Result<(), TransfersError> {
        let client = self.temporal.get().await.map_err(unavailable)?;
        let options =
            WorkflowStartOptions::new(self.temporal.settings().task_queue.clone(), stored.workflow_id.clone())
                .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
                .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                .build();
        match client
            .start_workflow(TransferWorkflow::run, self.input_of(stored, trace), options)
            .await
        {
            Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(WorkflowStartError::Rpc(status)) => Err(unavailable(format!("start workflow: {status}"))),
            Err(other) => Err(TransfersError::Internal(
                anyhow::Error::from(other).context("start workflow"),
            )),
        }
    }

    /// Starts the workflows of accepted transfers older than `age` that never got one (a crash
    /// between the row and the start); returns how many were (re)started.
    pub async fn restart_orphans(&self, age: Duration) -> Result<usize, TransfersError> {
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        let before = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
        let orphans = storage::accepted_before(&mut conn, before, 100).await?;
        drop(conn);
        for transfer in &orphans {
            self.start(transfer, &TraceHeaders::default()).await?;
        }
        Ok(orphans.len())
    }

    /// A transfer; another customer's is NOT_FOUND.
    pub async fn get(&self, transfer_id: Uuid, owner: Option<&str>) -> Result<Transfer, TransfersError> {
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        storage::get_transfer(&mut conn, transfer_id, false)
            .await?
            .filter(|transfer| owns(owner, &transfer.customer_id))
            .ok_or_else(|| TransfersError::NotFound {
                kind: "transfer",
                id: transfer_id.to_string(),
            })
    }

    /// A page of transfers of an account or a customer.
    pub async fn list(
        &self,
        by: ListBy,
        owner: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<Transfer>, Option<Cursor>), TransfersError> {
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        match &by {
            ListBy::Customer(customer_id) if !owns(owner, customer_id) => {
                return Err(TransfersError::Forbidden(
                    "a customer token lists only its own transfers",
                ));
            }
            ListBy::Account(account_id) if owner.is_some() => {
                let own = storage::get_account(&mut conn, *account_id)
                    .await?
                    .is_some_and(|account| owns(owner, &account.customer_id));
                if !own {
                    return Err(TransfersError::NotFound {
                        kind: "account",
                        id: account_id.to_string(),
                    });
                }
            }
            _ => {}
        }
        Ok(storage::list_transfers(&mut conn, &by, page).await?)
    }

    /// Sends an update to the transfer's workflow; a refusal of its validator (or a workflow that
    /// has ended) is FAILED_PRECONDITION with `rule`.
    async fn update<U>(
        &self,
        transfer: &Transfer,
        update: U,
        input: U::Input,
        rule: &'static str,
    ) -> Result<(), TransfersError>
    where
        U: temporalio_common::UpdateDefinition<
                Workflow = <TransferWorkflow as temporalio_common::HasWorkflowDefinition>::Run,
            >,
        U::Input: Send,
        U::Output: 'static,
    {
        let client = self.temporal.get().await.map_err(unavailable)?;
        let handle = client.get_workflow_handle::<TransferWorkflow>(transfer.workflow_id.clone());
        match handle
            .execute_update(update, input, WorkflowExecuteUpdateOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(WorkflowUpdateError::Failed(failure)) => Err(TransfersError::Precondition {
                rule,
                transfer_id: transfer.transfer_id,
                description: failure.message.clone(),
            }),
            Err(WorkflowUpdateError::NotFound(_)) => Err(TransfersError::Precondition {
                rule: "transfer.finished",
                transfer_id: transfer.transfer_id,
                description: "the transfer has ended".to_owned(),
            }),
            Err(WorkflowUpdateError::Rpc(status))
                if status.code() == tonic::Code::FailedPrecondition || status.code() == tonic::Code::NotFound =>
            {
                Err(TransfersError::Precondition {
                    rule: "transfer.finished",
                    transfer_id: transfer.transfer_id,
                    description: "the transfer has ended".to_owned(),
                })
            }
            Err(WorkflowUpdateError::Rpc(status)) => Err(unavailable(format!("update workflow: {status}"))),
            Err(other) => Err(TransfersError::Internal(
                anyhow::Error::from(other).context("update workflow"),
            )),
        }
    }

    /// Waits (up to [`SETTLE_WAIT`]) until `settled` holds for the stored transfer; returns it as it
    /// is then.
    async fn settle(&self, transfer_id: Uuid, settled: impl Fn(&Transfer) -> bool) -> Result<Transfer, TransfersError> {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            let transfer = self.get(transfer_id, None).await?;
            if settled(&transfer) || tokio::time::Instant::now() >= deadline {
                return Ok(transfer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn refuse_finished(transfer: &Transfer) -> Result<(), TransfersError> {
        if transfer.status.is_terminal() {
            return Err(TransfersError::Precondition {
                rule: "transfer.finished",
                transfer_id: transfer.transfer_id,
                description: format!("transfer {} is {}", transfer.transfer_id, transfer.status.as_str()),
            });
        }
        Ok(())
    }

    /// Cancels a transfer before its capture.
    pub async fn cancel(&self, transfer_id: Uuid, reason: String, actor: &Actor) -> Result<Transfer, TransfersError> {
        let transfer = self.get(transfer_id, actor.customer.as_deref()).await?;
        Self::refuse_finished(&transfer)?;
        self.update(
            &transfer,
            TransferWorkflow::cancel,
            format!("cancelled by {}: {reason}", actor.subject),
            "transfer.capture_started",
        )
        .await?;
        self.settle(transfer_id, |transfer| transfer.status.is_terminal()).await
    }

    /// An approver's decision on a transfer that waits for one.
    pub async fn decide(&self, transfer_id: Uuid, decision: Decision) -> Result<Transfer, TransfersError> {
        let transfer = self.get(transfer_id, None).await?;
        Self::refuse_finished(&transfer)?;
        if transfer.status != Status::AwaitingApproval {
            return Err(TransfersError::Precondition {
                rule: "transfer.not_awaiting_approval",
                transfer_id,
                description: format!("transfer {transfer_id} does not wait for approval"),
            });
        }
        self.update(
            &transfer,
            TransferWorkflow::decide,
            decision,
            "transfer.not_awaiting_approval",
        )
        .await?;
        self.settle(transfer_id, |transfer| transfer.status.is_terminal()).await
    }
}
