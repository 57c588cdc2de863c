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

/// Topic names with the instance's prefix.
pub type Topics = fintech_platform::kafka::TopicNames;

/// The outbox event for an order's new state.
pub fn order_event(names: &Topics, order: &Order, change: Change) -> OutboxEvent {
    let topic: &Topic = match change {
        Change::Created => &topics::ORDERS_CREATED,
        Change::Updated => &topics::ORDERS_UPDATED,
    };
    OutboxEvent::of(
        names.prefix(),
        topic,
        order.order_id.to_string(),
        &pb::Order::from(order),
        order.updated_at,
    )
}

/// The outbox event for a transaction's new state (keyed by its order).
pub fn transaction_event(names: &Topics, transaction: &Transaction, change: Change) -> OutboxEvent {
    let topic: &Topic = match change {
        Change::Created => &topics::TRANSACTIONS_CREATED,
        Change::Updated => &topics::TRANSACTIONS_UPDATED,
    };
    OutboxEvent::of(
        names.prefix(),
        topic,
        transaction.order_id.to_string(),
        &pb::Transaction::from(transaction),
        transaction.updated_at,
    )
}
