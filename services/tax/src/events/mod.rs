//! What tax consumes and publishes, and the processing of each transaction.
//!
//! # Flow
//! - `orders.created` / `orders.updated` -> the order cache (an older or equal version never
//!   overwrites a newer one) and the order's versions (every version is kept), then every
//!   transaction parked for that order version is calculated, and so is every one that already
//!   failed as `order_not_found` waiting for it (ADR 0017).
//! - `transactions.created` -> with the order version it refers to cached (`order_version`,
//!   ADR 0015): calculated on that version (or failed); without: parked
//!   durably in `parked_transactions` with a deadline (never by sleeping in the consumer, never by
//!   blocking the partition).
//! - `transactions.updated` to failed or refunded -> with a result: the VAT is reversed on
//!   `tax.reversed` (once); without one yet: the transaction is voided (unparked, and a late
//!   `transactions.created` is not taxed).
//! - the deadline sweeper fails parked transactions whose order did not arrive in time
//!   (`order_not_found`), one row per transaction, deadlines on the database's clock.
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

use async_trait::async_trait;
use fintech_platform::kafka::consumer::{ConsumedEvent, EventHandler, HandlerError};
use fintech_platform::kafka::transactional::{InTransaction, TransactionalHandler};
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::{payments, topics};
use sqlx::{PgConnection, PgPool};

use crate::app::Processor;
use crate::proto;
use crate::storage::{self, Parked};

/// CloudEvents source of tax events.
pub const SOURCE: &str = "/fintech/tax";
/// Consumer group (and inbox name) of the tax service.
pub const CONSUMER: &str = "tax";
/// Input: new orders.
pub const ORDERS_CREATED: &str = topics::ORDERS_CREATED.name;
/// Input: changed orders.
pub const ORDERS_UPDATED: &str = topics::ORDERS_UPDATED.name;
/// Input: new transactions.
pub const TRANSACTIONS_CREATED: &str = topics::TRANSACTIONS_CREATED.name;
/// Input: changed transactions (a failure or refund reverses the VAT).
pub const TRANSACTIONS_UPDATED: &str = topics::TRANSACTIONS_UPDATED.name;
/// Output: records that could not be decoded.
pub const TAX_DLQ: &str = topics::TAX_DLQ.name;
/// Topics tax reads.
pub const INPUT_TOPICS: [&str; 4] = [
    ORDERS_CREATED,
    ORDERS_UPDATED,
    TRANSACTIONS_CREATED,
    TRANSACTIONS_UPDATED,
];
/// Topics tax writes.
pub const OUTPUT_TOPICS: [&str; 4] = [
    topics::TAX_CALCULATED.name,
    topics::TAX_FAILED.name,
    topics::TAX_REVERSED.name,
    TAX_DLQ,
];

/// Topic names with an optional prefix.
pub type Topics = fintech_platform::kafka::TopicNames;

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
            .map_err(HandlerError::classified)?;
        let stored = storage::upsert_order(conn, &order)
            .await
            .map_err(HandlerError::classified)?;
        tracing::info!(order_id = %order.order_id, version = order.version, stored, "order cached");
        let released = storage::take_parked_for_order(conn, order.order_id)
            .await
            .map_err(HandlerError::classified)?;
        for parked in &released {
            self.processor
                .process(conn, parked, true)
                .await
                .map_err(HandlerError::classified)?;
        }
        // Transactions that already failed waiting for this order (it lagged by more than the
        // parking deadline) are taxed now (ADR 0017).
        self.processor
            .retax_order_not_found(conn, order.order_id)
            .await
            .map_err(HandlerError::transient)?;
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
            order_version: taxable.order_version,
            event_type: event_type.to_owned(),
            payload: event.payload.clone().unwrap_or_default(),
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        };
        self.processor
            .process(conn, &envelope, true)
            .await
            .map_err(HandlerError::classified)?;
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
            .map_err(HandlerError::classified)?;
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
            .map_err(HandlerError::classified)
    }
}

/// The handler as the platform consumer wants it.
pub fn handler(pool: PgPool, processor: Processor, topics: Topics) -> Arc<dyn EventHandler> {
    Arc::new(InTransaction::new(pool, TaxHandler::new(processor, topics)))
}
