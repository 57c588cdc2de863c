//! Conversions between `fintech.payments.v1` / `fintech.tax.v1` messages and the tax domain.

use chrono::{DateTime, Utc};
use fintech_proto::{payments, tax as pb};
use fintech_types::{Country, Currency};
use uuid::Uuid;

use crate::domain::vat::TaxReason;
use crate::domain::{CachedOrder, FailureReason, ReversalReason, TaxableTransaction, TaxedTransaction};
use crate::storage::Failure;

pub use fintech_proto::time::timestamp;

/// A chrono time from an optional protobuf timestamp; `None` when absent or out of range.
pub fn from_timestamp(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    fintech_proto::time::from_timestamp(timestamp?)
}

fn uuid(field: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value).map_err(|_| format!("{field} is not a UUID: {value:?}"))
}

/// The cached form of an `Order` event; the error says what makes the event unusable.
pub fn cached_order(order: &payments::Order) -> Result<CachedOrder, String> {
    if order.version < 1 {
        return Err(format!("order version must be >= 1, got {}", order.version));
    }
    Ok(CachedOrder {
        order_id: uuid("order_id", &order.order_id)?,
        customer_id: order.customer_id.clone(),
        country: Country::parse(&order.country).map_err(|error| format!("order country {error}"))?,
        currency: Currency::parse(&order.currency).map_err(|error| format!("order currency {error}"))?,
        amount: order.amount,
        product_type: order.product_type.clone(),
        created_at: from_timestamp(order.created_at.as_ref()).ok_or("order created_at is missing")?,
        updated_at: from_timestamp(order.updated_at.as_ref()).ok_or("order updated_at is missing")?,
        version: order.version,
    })
}

/// The taxable form of a `Transaction` event; the error says what makes the event unusable.
pub fn taxable_transaction(transaction: &payments::Transaction) -> Result<TaxableTransaction, String> {
    if transaction.amount <= 0 {
        return Err(format!("transaction amount must be > 0, got {}", transaction.amount));
    }
    if transaction.order_version < 0 {
        return Err(format!(
            "transaction order_version must be >= 0, got {}",
            transaction.order_version
        ));
    }
    let status = payments::TransactionStatus::try_from(transaction.status)
        .map_err(|_| format!("unknown transaction status {}", transaction.status))?;
    Ok(TaxableTransaction {
        transaction_id: uuid("transaction_id", &transaction.transaction_id)?,
        order_id: uuid("order_id", &transaction.order_id)?,
        customer_id: transaction.customer_id.clone(),
        amount: transaction.amount,
        currency: Currency::parse(&transaction.currency).map_err(|error| format!("transaction currency {error}"))?,
        created_at: from_timestamp(transaction.created_at.as_ref()).ok_or("transaction created_at is missing")?,
        order_version: transaction.order_version,
        taxable: matches!(
            status,
            payments::TransactionStatus::Pending | payments::TransactionStatus::Succeeded
        ),
    })
}

impl From<TaxReason> for pb::TaxReason {
    fn from(reason: TaxReason) -> Self {
        match reason {
            TaxReason::StandardRate => Self::StandardRate,
            TaxReason::ReducedRate => Self::ReducedRate,
            TaxReason::Exempt => Self::Exempt,
            TaxReason::ZeroRated => Self::ZeroRated,
        }
    }
}

impl From<FailureReason> for pb::TaxFailureReason {
    fn from(reason: FailureReason) -> Self {
        match reason {
            FailureReason::OrderNotFound => Self::OrderNotFound,
            FailureReason::UnsupportedCountry => Self::UnsupportedCountry,
            FailureReason::UnsupportedProductType => Self::UnsupportedProductType,
            FailureReason::CurrencyMismatch => Self::CurrencyMismatch,
            FailureReason::AmountOutOfRange => Self::AmountOutOfRange,
        }
    }
}

impl From<&TaxedTransaction> for pb::TaxedTransaction {
    fn from(taxed: &TaxedTransaction) -> Self {
        Self {
            transaction_id: taxed.transaction_id.to_string(),
            order_id: taxed.order_id.to_string(),
            customer_id: taxed.customer_id.clone(),
            base_amount: taxed.base_amount,
            tax_applied: taxed.tax_applied,
            total_amount: taxed.total_amount,
            currency: taxed.currency.to_string(),
            country: taxed.country.to_string(),
            product_type: taxed.product_type.clone(),
            tax_rate_bps: taxed.tax_rate_bps,
            reason: pb::TaxReason::from(taxed.reason) as i32,
            rule_version: taxed.rule_version.clone(),
            calculated_at: Some(timestamp(taxed.calculated_at)),
            tax_date: Some(timestamp(taxed.tax_date)),
            order_version: taxed.order_version,
        }
    }
}

impl From<&Failure> for pb::TaxFailure {
    fn from(failure: &Failure) -> Self {
        Self {
            transaction_id: failure.transaction_id.to_string(),
            order_id: failure.order_id.to_string(),
            reason: pb::TaxFailureReason::from(failure.reason) as i32,
            detail: failure.detail.clone(),
            attempts: failure.attempts,
            original_event_type: failure.original_event_type.clone(),
            original_event: failure.original_event.clone(),
            failed_at: Some(timestamp(failure.failed_at)),
        }
    }
}

/// The reason a transaction update stops it being taxable, if it does (failed or refunded).
pub fn reversal_reason(transaction: &payments::Transaction) -> Option<ReversalReason> {
    match payments::TransactionStatus::try_from(transaction.status) {
        Ok(payments::TransactionStatus::Failed) => Some(ReversalReason::Failed),
        Ok(payments::TransactionStatus::Refunded) => Some(ReversalReason::Refunded),
        _ => None,
    }
}

/// The `tax.reversed` value for a result reversed for `reason`.
pub fn reversal(
    taxed: &TaxedTransaction,
    reason: ReversalReason,
    transaction_version: i64,
    reversed_at: DateTime<Utc>,
) -> pb::TaxReversal {
    pb::TaxReversal {
        transaction_id: taxed.transaction_id.to_string(),
        order_id: taxed.order_id.to_string(),
        customer_id: taxed.customer_id.clone(),
        base_amount: taxed.base_amount,
        tax_reversed: taxed.tax_applied,
        total_amount: taxed.total_amount,
        currency: taxed.currency.to_string(),
        country: taxed.country.to_string(),
        tax_rate_bps: taxed.tax_rate_bps,
        reason: match reason {
            ReversalReason::Failed => pb::TaxReversalReason::TransactionFailed,
            ReversalReason::Refunded => pb::TaxReversalReason::TransactionRefunded,
        } as i32,
        rule_version: taxed.rule_version.clone(),
        reversed_at: Some(timestamp(reversed_at)),
        transaction_version,
    }
}
