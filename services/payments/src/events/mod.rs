//! What payments publishes: the full `Order` / `Transaction` after every change, on
//! `orders.created`, `orders.updated`, `transactions.created`, `transactions.updated`, with the
//! order id as record key for all four so an order and its transactions share a partition. Topic
//! names, CloudEvents types and payload names come from the platform's topic list
//! (`fintech_proto::topics`).

use fintech_platform::outbox::OutboxEvent;
use fintech_proto::payments as pb;
use fintech_proto::topics::{self, Topic};

use crate::domain::{Order, Transaction};

/// CloudEvents source of every payments event.
pub const SOURCE: &str = "/fintech/payments";
/// All topics payments writes.
pub const TOPICS: [&str; 4] = [
    topics::ORDERS_CREATED.name,
    topics::ORDERS_UPDATED.name,
    topics::TRANSACTIONS_CREATED.name,
    topics::TRANSACTIONS_UPDATED.name,
];

/// Whether an event announces a new entity or a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First version.
    Created,
    /// Later version.
    Updated,
}

/// The events payments writes, on topics with an optional prefix.
#[derive(Debug, Clone, Default)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics named `<prefix><topic>`.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The full name of `topic`.
    pub fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The outbox event for an order's new state.
    pub fn order_event(&self, order: &Order, change: Change) -> OutboxEvent {
        let topic: &Topic = match change {
            Change::Created => &topics::ORDERS_CREATED,
            Change::Updated => &topics::ORDERS_UPDATED,
        };
        OutboxEvent::of(
            &self.prefix,
            topic,
            order.order_id.to_string(),
            &pb::Order::from(order),
            order.updated_at,
        )
    }

    /// The outbox event for a transaction's new state (keyed by its order).
    pub fn transaction_event(&self, transaction: &Transaction, change: Change) -> OutboxEvent {
        let topic: &Topic = match change {
            Change::Created => &topics::TRANSACTIONS_CREATED,
            Change::Updated => &topics::TRANSACTIONS_UPDATED,
        };
        OutboxEvent::of(
            &self.prefix,
            topic,
            transaction.order_id.to_string(),
            &pb::Transaction::from(transaction),
            transaction.updated_at,
        )
    }
}
