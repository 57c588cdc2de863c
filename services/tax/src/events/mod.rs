//! What tax consumes and publishes, and the processing of each transaction.
//!
//! # Flow
//! - `orders.created` / `orders.updated` -> the order cache (an older or equal version never
//!   overwrites a newer one), then every transaction parked for that order is calculated.
//! - `transactions.created` -> with its order cached: calculated (or failed); without: parked
//!   durably in `parked_transactions` with a deadline (never by sleeping in the consumer, never by
//!   blocking the partition).
//! - `transactions.updated` to failed or refunded -> with a result: the VAT is reversed on
//!   `tax.reversed` (once); without one yet: the transaction is voided (unparked, and a late
//!   `transactions.created` is not taxed).
//! - the deadline sweeper fails parked transactions whose order did not arrive in time
//!   (`order_not_found`).
//! - results go to `tax.calculated` (`TaxedTransaction`), failures to `tax.failed` (`TaxFailure`
//!   with the original event, reason and attempt count), both through the outbox; records that
//!   cannot be decoded go to the dead-letter topic `tax.dlq` (platform consumer).
//!
//! # Exactly one result per transaction
//! Each event is applied in one PostgreSQL transaction with the consumer inbox row (`ce_id`; a
//! batch of events that were waiting shares one transaction), so a redelivered event changes nothing; `taxed_transactions` has the transaction id as primary key
//! and the outbox row is written only when that insert happened, so even two different events for
//! one transaction (or a retry racing the sweeper) yield one `tax.calculated`. Work on one order
//! is serialized with a transaction-scoped advisory lock, so an order and its transaction handled
//! by two instances at once cannot both miss each other; a batch takes the locks of all its
//! orders first, in order, so two batches never deadlock on them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chrono::Utc;
use fintech_platform::CancellationToken;
use fintech_platform::kafka::consumer::{ConsumedEvent, EventHandler, HandlerError};
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_platform::outbox::{self, OutboxEvent};
use fintech_platform::telemetry::{self, TraceHeaders};
use fintech_proto::{payments, tax as pb};
use prost::Message as _;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use crate::domain::vat::RateTable;
use crate::domain::{self, Decision, FailureReason};
use crate::proto;
use crate::storage::{self, Failure, Parked};

/// CloudEvents source of tax events.
pub const SOURCE: &str = "/fintech/tax";
/// Consumer group (and inbox name) of the tax service.
pub const CONSUMER: &str = "tax";
/// Input topics.
pub const ORDERS_CREATED: &str = "orders.created";
/// Input: changed orders.
pub const ORDERS_UPDATED: &str = "orders.updated";
/// Input: new transactions.
pub const TRANSACTIONS_CREATED: &str = "transactions.created";
/// Input: changed transactions (a failure or refund reverses the VAT).
pub const TRANSACTIONS_UPDATED: &str = "transactions.updated";
/// Output: results.
pub const TAX_CALCULATED: &str = "tax.calculated";
/// Output: failures.
pub const TAX_FAILED: &str = "tax.failed";
/// Output: reversals of calculated VAT.
pub const TAX_REVERSED: &str = "tax.reversed";
/// Output: records that could not be decoded.
pub const TAX_DLQ: &str = "tax.dlq";
/// Topics tax reads.
pub const INPUT_TOPICS: [&str; 4] = [
    ORDERS_CREATED,
    ORDERS_UPDATED,
    TRANSACTIONS_CREATED,
    TRANSACTIONS_UPDATED,
];
/// Topics tax writes.
pub const OUTPUT_TOPICS: [&str; 4] = [TAX_CALCULATED, TAX_FAILED, TAX_REVERSED, TAX_DLQ];

/// Topic names with an optional prefix.
pub type Topics = fintech_platform::kafka::TopicNames;

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
        let state = storage::transaction_state(conn, transaction.transaction_id, transaction.order_id).await?;
        if state.taxed {
            return Ok(Outcome::AlreadyTaxed);
        }
        if state.reversed {
            // It failed or was refunded before it could be taxed (its update came first).
            return Ok(Outcome::NotTaxable);
        }
        let now = Utc::now();
        match domain::decide(&transaction, state.order.as_ref(), self.rates, fintech_now(now)) {
            Decision::Taxed(taxed) => {
                if !storage::insert_taxed(conn, &taxed).await? {
                    return Ok(Outcome::AlreadyTaxed);
                }
                if state.open_failure {
                    storage::resolve_failure(conn, taxed.transaction_id).await?;
                }
                let event = OutboxEvent::protobuf(
                    self.topics.name(TAX_CALCULATED),
                    taxed.order_id.to_string(),
                    "fintech.tax.v1.tax.calculated",
                    "fintech.tax.v1.TaxedTransaction",
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
                let deadline = now + chrono::Duration::from_std(self.park_deadline).context("park deadline")?;
                storage::park(conn, envelope, deadline).await?;
                tracing::info!(%deadline, "order not cached yet, transaction parked");
                Ok(Outcome::Parked)
            }
            Decision::Park => {
                let detail = format!("order {} did not arrive", transaction.order_id);
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
        let now = fintech_now(Utc::now());
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
        let event = OutboxEvent::protobuf(
            self.topics.name(TAX_REVERSED),
            taxed.order_id.to_string(),
            "fintech.tax.v1.tax.reversed",
            "fintech.tax.v1.TaxReversal",
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
        let failure = storage::record_failure(conn, envelope, reason, detail, fintech_now(Utc::now())).await?;
        let event = OutboxEvent::protobuf(
            self.topics.name(TAX_FAILED),
            failure.order_id.to_string(),
            "fintech.tax.v1.tax.failed",
            "fintech.tax.v1.TaxFailure",
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

/// Microsecond precision, as stored.
fn fintech_now(now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    use chrono::SubsecRound;
    now.trunc_subsecs(6)
}

/// The consumer's handler: each event's effect runs in the transaction (one per record, or one
/// per batch) that records it in the inbox (see [`fintech_platform::kafka::transactional`]).
#[derive(Debug, Clone)]
pub struct TaxHandler {
    processor: Processor,
    topics: Topics,
}

impl TaxHandler {
    /// A handler publishing through `processor`.
    pub fn new(processor: Processor, topics: Topics) -> Self {
        Self { processor, topics }
    }

    async fn on_order(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let order: payments::Order = event.decode()?;
        let order = proto::cached_order(&order).map_err(HandlerError::permanent)?;
        storage::lock_order(conn, order.order_id)
            .await
            .map_err(HandlerError::transient)?;
        let stored = storage::upsert_order(conn, &order)
            .await
            .map_err(HandlerError::transient)?;
        tracing::info!(order_id = %order.order_id, version = order.version, stored, "order cached");
        let released = storage::take_parked_for_order(conn, order.order_id)
            .await
            .map_err(HandlerError::transient)?;
        for parked in &released {
            self.processor
                .process(conn, parked, true)
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(())
    }

    async fn on_transaction(
        &self,
        conn: &mut PgConnection,
        event: &ConsumedEvent,
        event_type: &str,
    ) -> Result<(), HandlerError> {
        let transaction: payments::Transaction = event.decode()?;
        let taxable = proto::taxable_transaction(&transaction).map_err(HandlerError::permanent)?;
        let trace = TraceHeaders::current();
        let envelope = Parked {
            transaction_id: taxable.transaction_id,
            order_id: taxable.order_id,
            event_type: event_type.to_owned(),
            payload: event.payload.clone().unwrap_or_default(),
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        };
        self.processor
            .process(conn, &envelope, true)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    async fn on_transaction_update(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let transaction: payments::Transaction = event.decode()?;
        let Some(reason) = proto::reversal_reason(&transaction) else {
            // Pending -> succeeded changes nothing taxable: VAT is due from creation.
            return Ok(());
        };
        let taxable = proto::taxable_transaction(&transaction).map_err(HandlerError::permanent)?;
        self.processor
            .reverse(conn, &taxable, reason, transaction.version)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }

    /// The order an event is about, if it can be read (a record that cannot is rejected later).
    fn order_of(&self, event: &ConsumedEvent) -> Option<uuid::Uuid> {
        let order_id = match self.topics.unprefixed(&event.topic) {
            ORDERS_CREATED | ORDERS_UPDATED => event.decode::<payments::Order>().ok()?.order_id,
            TRANSACTIONS_CREATED | TRANSACTIONS_UPDATED => event.decode::<payments::Transaction>().ok()?.order_id,
            _ => return None,
        };
        order_id.parse().ok()
    }
}

#[async_trait]
impl TransactionalHandler for TaxHandler {
    fn consumer(&self) -> &str {
        CONSUMER
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let event_type = event.valid_metadata()?.event_type.clone();
        match self.topics.unprefixed(&event.topic) {
            ORDERS_CREATED | ORDERS_UPDATED => self.on_order(conn, event).await,
            TRANSACTIONS_CREATED => self.on_transaction(conn, event, &event_type).await,
            TRANSACTIONS_UPDATED => self.on_transaction_update(conn, event).await,
            other => Err(HandlerError::permanent(format!("tax does not consume topic {other}"))),
        }
    }

    /// Every event serializes on its order's lock; a batch takes all of them first, in order.
    async fn lock_batch(&self, conn: &mut PgConnection, events: &[ConsumedEvent]) -> Result<(), HandlerError> {
        let order_ids: Vec<uuid::Uuid> = events.iter().filter_map(|event| self.order_of(event)).collect();
        storage::lock_orders(conn, &order_ids)
            .await
            .map_err(HandlerError::transient)
    }
}

/// Fails parked transactions whose deadline passed, every `interval`, until `shutdown`.
pub async fn run_deadline_sweeper(pool: PgPool, processor: Processor, interval: Duration, shutdown: CancellationToken) {
    loop {
        match sweep_once(&pool, &processor).await {
            Ok(count) if count > 0 => tracing::info!(count, "parked transactions past their deadline handled"),
            Ok(_) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "deadline sweep failed, will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One sweep: up to 100 expired parked transactions, in one transaction.
pub async fn sweep_once(pool: &PgPool, processor: &Processor) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let expired = storage::take_expired(&mut tx, 100).await?;
    for parked in &expired {
        processor.process(&mut tx, parked, false).await?;
    }
    tx.commit().await?;
    Ok(expired.len())
}

/// The handler as the platform consumer wants it.
pub fn handler(pool: PgPool, processor: Processor, topics: Topics) -> Arc<dyn EventHandler> {
    Arc::new(InTransaction::new(pool, TaxHandler::new(processor, topics)))
}
