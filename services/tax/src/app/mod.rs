//! The tax use cases, called by the consumer (`events/`), the deadline sweeper (a kit job) and the
//! gRPC layer: calculate, park or fail a transaction ([`Processor`]), reverse a result, sweep
//! expired parked transactions, retry a failure, quote. Everything here runs inside the caller's
//! PostgreSQL transaction; `domain/` decides, `storage/` persists.

use std::time::Duration;

use anyhow::Context as _;
use fintech_platform::CancellationToken;
use fintech_platform::outbox::{self, OutboxEvent};
use fintech_platform::telemetry::{self, TraceHeaders};
use fintech_proto::{payments, tax as pb, topics};
use fintech_types::time::now as fintech_now;
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::vat::RateTable;
use crate::domain::{self, Decision, FailureReason, TaxError};
use crate::events::{SOURCE, Topics};
use crate::proto;
use crate::storage::{self, Failure, Parked};

/// What became of one transaction.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Calculated now and published.
    Taxed(domain::TaxedTransaction),
    /// Already had a result: nothing done.
    AlreadyTaxed,
    /// Waiting for its order.
    Parked,
    /// Created as failed: nothing to tax.
    NotTaxable,
    /// Could not be taxed: failure recorded and published.
    Failed(Failure),
}

/// Calculates, parks or fails transactions; shared by the consumer, the sweeper and RetryFailed.
#[derive(Debug, Clone)]
pub struct Processor {
    topics: Topics,
    rates: &'static RateTable,
    park_deadline: Duration,
}

impl Processor {
    /// A processor publishing on `topics`, parking for at most `park_deadline`.
    pub fn new(topics: Topics, rates: &'static RateTable, park_deadline: Duration) -> Self {
        Self {
            topics,
            rates,
            park_deadline,
        }
    }

    /// The rate table in use.
    pub fn rates(&self) -> &'static RateTable {
        self.rates
    }

    /// Processes one transaction event inside the caller's open transaction. With `may_park`
    /// false (deadline passed, operator retry) a missing order is a failure instead.
    pub async fn process(&self, conn: &mut PgConnection, envelope: &Parked, may_park: bool) -> anyhow::Result<Outcome> {
        let span = tracing::info_span!("tax.process", transaction_id = %envelope.transaction_id, order_id = %envelope.order_id);
        // Results continue the trace of the transaction's event, even when an order event releases it.
        telemetry::set_remote_parent(
            &span,
            &TraceHeaders {
                traceparent: envelope.traceparent.clone(),
                tracestate: envelope.tracestate.clone(),
            },
        );
        self.process_in_span(conn, envelope, may_park).instrument(span).await
    }

    async fn process_in_span(
        &self,
        conn: &mut PgConnection,
        envelope: &Parked,
        may_park: bool,
    ) -> anyhow::Result<Outcome> {
        let transaction =
            payments::Transaction::decode(envelope.payload.as_slice()).context("decode parked transaction")?;
        let transaction = proto::taxable_transaction(&transaction).map_err(anyhow::Error::msg)?;
        storage::lock_order(conn, transaction.order_id).await?;
        let state = storage::transaction_state(
            conn,
            transaction.transaction_id,
            transaction.order_id,
            transaction.order_version,
        )
        .await?;
        if state.taxed {
            return Ok(Outcome::AlreadyTaxed);
        }
        if state.reversed {
            // It failed or was refunded before it could be taxed (its update came first).
            return Ok(Outcome::NotTaxable);
        }
        let now = fintech_now();
        match domain::decide(&transaction, state.order.as_ref(), self.rates, now) {
            Decision::Taxed(taxed) => {
                if !storage::insert_taxed(conn, &taxed).await? {
                    return Ok(Outcome::AlreadyTaxed);
                }
                if state.open_failure {
                    storage::resolve_failure(conn, taxed.transaction_id).await?;
                }
                let event = OutboxEvent::of(
                    self.topics.prefix(),
                    &topics::TAX_CALCULATED,
                    taxed.order_id.to_string(),
                    &pb::TaxedTransaction::from(&taxed),
                    taxed.calculated_at,
                );
                outbox::enqueue(conn, SOURCE, &event).await?;
                tracing::info!(
                    tax_applied = taxed.tax_applied,
                    rate_bps = taxed.tax_rate_bps,
                    "tax calculated"
                );
                Ok(Outcome::Taxed(taxed))
            }
            Decision::Park if may_park => {
                let deadline = storage::park(conn, envelope, self.park_deadline).await?;
                tracing::info!(%deadline, order_version = transaction.order_version, "order version not cached yet, transaction parked");
                Ok(Outcome::Parked)
            }
            Decision::Park => {
                let detail = match transaction.order_version {
                    0 => format!("order {} did not arrive", transaction.order_id),
                    version => format!("order {} version {version} did not arrive", transaction.order_id),
                };
                self.fail(conn, envelope, FailureReason::OrderNotFound, &detail).await
            }
            Decision::NotTaxable => Ok(Outcome::NotTaxable),
            Decision::Fail(reason, detail) => self.fail(conn, envelope, reason, &detail).await,
        }
    }

    /// Records that `transaction` stopped being taxable: reverses its result on `tax.reversed`
    /// if it has one, otherwise voids it (drops it from parking; a late creation is not taxed).
    /// Returns whether a reversal was published.
    pub async fn reverse(
        &self,
        conn: &mut PgConnection,
        transaction: &domain::TaxableTransaction,
        reason: domain::ReversalReason,
        transaction_version: i64,
    ) -> anyhow::Result<bool> {
        storage::lock_order(conn, transaction.order_id).await?;
        let taxed = storage::get_taxed(conn, transaction.transaction_id).await?;
        let now = fintech_now();
        let recorded = storage::insert_reversal(
            conn,
            transaction.transaction_id,
            transaction.order_id,
            reason,
            transaction_version,
            taxed.is_some(),
            now,
        )
        .await?;
        if !recorded {
            return Ok(false);
        }
        let Some(taxed) = taxed else {
            let unparked = storage::unpark(conn, transaction.transaction_id).await?;
            tracing::info!(transaction_id = %transaction.transaction_id, unparked, "transaction voided before it was taxed");
            return Ok(false);
        };
        let event = OutboxEvent::of(
            self.topics.prefix(),
            &topics::TAX_REVERSED,
            taxed.order_id.to_string(),
            &proto::reversal(&taxed, reason, transaction_version, now),
            now,
        );
        outbox::enqueue(conn, SOURCE, &event).await?;
        tracing::info!(transaction_id = %taxed.transaction_id, tax_reversed = taxed.tax_applied, "tax reversed");
        Ok(true)
    }

    async fn fail(
        &self,
        conn: &mut PgConnection,
        envelope: &Parked,
        reason: FailureReason,
        detail: &str,
    ) -> anyhow::Result<Outcome> {
        let failure = storage::record_failure(conn, envelope, reason, detail, fintech_now()).await?;
        let event = OutboxEvent::of(
            self.topics.prefix(),
            &topics::TAX_FAILED,
            failure.order_id.to_string(),
            &pb::TaxFailure::from(&failure),
            failure.failed_at,
        );
        outbox::enqueue(conn, SOURCE, &event).await?;
        tracing::warn!(
            reason = reason.as_str(),
            detail,
            attempts = failure.attempts,
            "transaction could not be taxed"
        );
        Ok(Outcome::Failed(failure))
    }
}

/// How long a parked transaction whose sweep failed waits before the sweeper tries it again.
const SWEEP_RETRY: Duration = Duration::from_secs(30);

/// Fails parked transactions whose deadline passed, every `interval`, until `shutdown`.
pub async fn run_deadline_sweeper(
    pool: PgPool,
    processor: Processor,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match sweep_once(&pool, &processor).await {
            Ok(sweep) if sweep.failed > 0 || sweep.handled > 0 => {
                tracing::info!(
                    handled = sweep.handled,
                    failed = sweep.failed,
                    "parked transactions past their deadline swept"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "deadline sweep failed, will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Expired parked transactions processed (failed as `order_not_found`, or taxed when their
    /// order turned up).
    pub handled: usize,
    /// Rows whose processing failed: each was given [`SWEEP_RETRY`] more and its error recorded,
    /// and the sweep went on with the next.
    pub failed: usize,
}

/// One sweep over up to 100 expired parked transactions, each in its own transaction, so one row
/// that cannot be processed never holds back the others (ADR 0017).
pub async fn sweep_once(pool: &PgPool, processor: &Processor) -> anyhow::Result<Sweep> {
    let expired = {
        let mut conn = pool.acquire().await.context("acquire")?;
        storage::expired_parked(&mut conn, 100).await?
    };
    let mut sweep = Sweep::default();
    for (transaction_id, order_id) in expired {
        match sweep_one(pool, processor, transaction_id, order_id).await {
            Ok(true) => sweep.handled += 1,
            Ok(false) => {}
            Err(error) => {
                sweep.failed += 1;
                let error = format!("{error:#}");
                tracing::warn!(%transaction_id, error, "parked transaction could not be swept, postponed");
                let mut conn = pool.acquire().await.context("acquire")?;
                storage::postpone_parked(&mut conn, transaction_id, SWEEP_RETRY, &error).await?;
            }
        }
    }
    Ok(sweep)
}

/// Takes one expired parked transaction under its order's lock (the advisory lock first, then the
/// row: the order every path takes them in) and processes it as past its deadline.
async fn sweep_one(pool: &PgPool, processor: &Processor, transaction_id: Uuid, order_id: Uuid) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await.context("begin")?;
    storage::lock_order(&mut tx, order_id).await?;
    let Some(parked) = storage::take_expired_one(&mut tx, transaction_id).await? else {
        // Released by its order (or swept by another instance) meanwhile.
        return Ok(false);
    };
    processor.process(&mut tx, &parked, false).await?;
    tx.commit().await.context("commit")?;
    Ok(true)
}

impl Processor {
    /// Re-taxes the transactions of `order_id` that failed as `order_not_found` before the order
    /// version they refer to arrived (ADR 0017); called with the order's lock held, in the
    /// transaction that stored the order. Returns how many were taxed.
    pub async fn retax_order_not_found(&self, conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<usize> {
        let failures = storage::order_not_found_failures(conn, order_id).await?;
        let mut taxed = 0;
        for failure in &failures {
            let envelope = Parked::from(failure);
            match self.process(conn, &envelope, false).await? {
                Outcome::Taxed(_) => taxed += 1,
                Outcome::AlreadyTaxed | Outcome::NotTaxable | Outcome::Parked => {
                    storage::resolve_failure(conn, failure.transaction_id).await?;
                }
                Outcome::Failed(_) => {}
            }
        }
        if !failures.is_empty() {
            tracing::info!(%order_id, failures = failures.len(), taxed, "late order re-taxed its order_not_found failures");
        }
        Ok(taxed)
    }
}

impl From<&Failure> for Parked {
    fn from(failure: &Failure) -> Self {
        Self {
            transaction_id: failure.transaction_id,
            order_id: failure.order_id,
            order_version: failure.order_version,
            event_type: failure.original_event_type.clone(),
            payload: failure.original_event.clone(),
            traceparent: failure.traceparent.clone(),
            tracestate: failure.tracestate.clone(),
        }
    }
}

/// What an operator's retry of a failed transaction led to.
#[derive(Debug, Clone)]
pub enum Retried {
    /// Taxed now.
    Taxed(domain::TaxedTransaction),
    /// Failed again (a new failure was recorded and published).
    Failed(Failure),
    /// Nothing left to do: already taxed (the result, if any), not taxable or parked again.
    Resolved(Option<domain::TaxedTransaction>),
}

impl Processor {
    /// Retries the open failure of `transaction_id` in one transaction: the original event is
    /// processed again as if its deadline had passed.
    pub async fn retry_failed(&self, pool: &PgPool, transaction_id: Uuid) -> Result<Retried, TaxError> {
        let not_found = || TaxError::NotFound {
            resource: "TaxFailure",
            id: transaction_id.to_string(),
        };
        let mut tx = pool.begin().await.context("begin")?;
        fintech_platform::db::bound_by_deadline(&mut tx)
            .await
            .context("bound by deadline")?;
        // The order's advisory lock before the failure's row lock, as on every other path.
        let order_id = storage::peek_open_failure(&mut tx, transaction_id)
            .await?
            .ok_or_else(not_found)?
            .order_id;
        storage::lock_order(&mut tx, order_id).await?;
        let failure = storage::get_open_failure(&mut tx, transaction_id)
            .await?
            .ok_or_else(not_found)?;
        let envelope = Parked::from(&failure);
        let retried = match self.process(&mut tx, &envelope, false).await? {
            Outcome::Taxed(taxed) => Retried::Taxed(taxed),
            Outcome::Failed(failure) => Retried::Failed(failure),
            Outcome::AlreadyTaxed | Outcome::NotTaxable | Outcome::Parked => {
                storage::resolve_failure(&mut tx, transaction_id).await?;
                Retried::Resolved(storage::get_taxed(&mut tx, transaction_id).await?)
            }
        };
        tx.commit().await.context("commit")?;
        Ok(retried)
    }
}
