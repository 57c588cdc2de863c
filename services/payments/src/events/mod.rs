//! What payments publishes: the full `Order` / `Transaction` after every change, on
//! `orders.created`, `orders.updated`, `transactions.created`, `transactions.updated`, with the
//! order id as record key for all four so an order and its transactions share a partition.

use fintech_platform::kafka::TopicNames;
use fintech_platform::outbox::OutboxEvent;
use fintech_proto::payments as pb;

use crate::domain::{Order, Transaction};

/// CloudEvents source of every payments event.
pub const SOURCE: &str = "/fintech/payments";
/// Topic of new orders.
pub const ORDERS_CREATED: &str = "orders.created";
/// Topic of changed orders.
pub const ORDERS_UPDATED: &str = "orders.updated";
/// Topic of new transactions.
pub const TRANSACTIONS_CREATED: &str = "transactions.created";
/// Topic of changed transactions.
pub const TRANSACTIONS_UPDATED: &str = "transactions.updated";
/// All topics payments writes.
pub const TOPICS: [&str; 4] = [
    ORDERS_CREATED,
    ORDERS_UPDATED,
    TRANSACTIONS_CREATED,
    TRANSACTIONS_UPDATED,
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
    names: TopicNames,
}

impl Topics {
    /// Topics named `<prefix><topic>`.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            names: TopicNames::with_prefix(prefix),
        }
    }

    /// The full name of `topic`.
    pub fn name(&self, topic: &str) -> String {
        self.names.name(topic)
    }

    /// The outbox event for an order's new state.
    pub fn order_event(&self, order: &Order, change: Change) -> OutboxEvent {
        let (topic, event_type) = match change {
            Change::Created => (ORDERS_CREATED, "fintech.payments.v1.order.created"),
            Change::Updated => (ORDERS_UPDATED, "fintech.payments.v1.order.updated"),
        };
        OutboxEvent::protobuf(
            self.name(topic),
            order.order_id.to_string(),
            event_type,
            "fintech.payments.v1.Order",
            &pb::Order::from(order),
            order.updated_at,
        )
    }

    /// The outbox event for a transaction's new state (keyed by its order).
    pub fn transaction_event(&self, transaction: &Transaction, change: Change) -> OutboxEvent {
        let (topic, event_type) = match change {
            Change::Created => (TRANSACTIONS_CREATED, "fintech.payments.v1.transaction.created"),
            Change::Updated => (TRANSACTIONS_UPDATED, "fintech.payments.v1.transaction.updated"),
        };
        OutboxEvent::protobuf(
            self.name(topic),
            transaction.order_id.to_string(),
            event_type,
            "fintech.payments.v1.Transaction",
            &pb::Transaction::from(transaction),
            transaction.updated_at,
        )
    }
}
