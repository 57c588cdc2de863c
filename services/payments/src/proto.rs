//! Conversions between the protobuf contracts (`fintech.payments.v1`) and the domain types, used
//! by the gRPC layer and by the events (which carry the same protobuf entities).

use fintech_proto::payments as pb;

use crate::domain::{Order, Transaction, TransactionStatus};

pub use fintech_proto::time::timestamp;

impl From<&Order> for pb::Order {
    fn from(order: &Order) -> Self {
        Self {
            order_id: order.order_id.to_string(),
            customer_id: order.customer_id.clone(),
            country: order.country.to_string(),
            currency: order.currency.to_string(),
            amount: order.amount,
            product_type: order.product_type.clone(),
            created_at: Some(timestamp(order.created_at)),
            updated_at: Some(timestamp(order.updated_at)),
            version: order.version,
        }
    }
}

impl From<TransactionStatus> for pb::TransactionStatus {
    fn from(status: TransactionStatus) -> Self {
        match status {
            TransactionStatus::Pending => Self::Pending,
            TransactionStatus::Succeeded => Self::Succeeded,
            TransactionStatus::Failed => Self::Failed,
            TransactionStatus::Refunded => Self::Refunded,
        }
    }
}

/// The domain status of a wire value: `Ok(None)` for UNSPECIFIED, `Err(raw)` for an unknown one.
pub fn status_from_wire(raw: i32) -> Result<Option<TransactionStatus>, i32> {
    match pb::TransactionStatus::try_from(raw) {
        Ok(pb::TransactionStatus::Unspecified) => Ok(None),
        Ok(pb::TransactionStatus::Pending) => Ok(Some(TransactionStatus::Pending)),
        Ok(pb::TransactionStatus::Succeeded) => Ok(Some(TransactionStatus::Succeeded)),
        Ok(pb::TransactionStatus::Failed) => Ok(Some(TransactionStatus::Failed)),
        Ok(pb::TransactionStatus::Refunded) => Ok(Some(TransactionStatus::Refunded)),
        Err(_) => Err(raw),
    }
}

impl From<&Transaction> for pb::Transaction {
    fn from(transaction: &Transaction) -> Self {
        Self {
            transaction_id: transaction.transaction_id.to_string(),
            order_id: transaction.order_id.to_string(),
            customer_id: transaction.customer_id.clone(),
            amount: transaction.amount,
            status: pb::TransactionStatus::from(transaction.status) as i32,
            created_at: Some(timestamp(transaction.created_at)),
            updated_at: Some(timestamp(transaction.updated_at)),
            version: transaction.version,
            currency: transaction.currency.to_string(),
            order_version: transaction.order_version,
        }
    }
}
