//! Conversions between `fintech.payments.v1` / `fintech.tax.v1` messages and the tax domain.

use chrono::{DateTime, Utc};
use fintech_proto::{payments, tax as pb};
use fintech_types::fields::{check_customer_id, check_product_type};
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

/// Applies a field rule of `fintech_types::fields` (the one payments checked before publishing),
/// so an event payments could never have sent, or whose text PostgreSQL cannot store, is refused
/// when read instead of failing in the database.
fn rule(field: &str, value: &str, check: fn(&str, &str, &mut fintech_types::Violations)) -> Result<(), String> {
    let mut violations = fintech_types::Violations::default();
    check(field, value, &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.to_string())
    }
}

fn uuid(field: &str, value: &str) -> Result<Uuid, String> {
    Uuid::parse_str(value).map_err(|_| format!("{field} is not a UUID: {value:?}"))
}

/// The cached form of an `Order` event; the error says what makes the event unusable.
pub fn cached_order(order: &payments::Order) -> Result<CachedOrder, String> {
    if order.version < 1 {
        return Err(format!("order version must be >= 1, got {}", order.version));
    }
    rule("order customer_id", &order.customer_id, check_customer_id)?;
    rule("order product_type", &order.product_type, check_product_type)?;
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
    rule("transaction customer_id", &transaction.customer_id, check_customer_id)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> payments::Order {
        payments::Order {
            order_id: "0191d1c2-8f5e-7c3a-9b1d-3e5f7a9c1b2d".to_owned(),
            customer_id: "cust-42".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 11_900,
            product_type: "standard".to_owned(),
            created_at: Some(timestamp(chrono::DateTime::UNIX_EPOCH)),
            updated_at: Some(timestamp(chrono::DateTime::UNIX_EPOCH)),
            version: 1,
        }
    }

    /// Found by the `tax_events` fuzz target: a customer id or product type with a NUL byte (or
    /// anything payments never publishes) was cached and failed in PostgreSQL.
    #[test]
    fn text_payments_never_publishes_is_refused_when_read() {
        assert!(cached_order(&order()).is_ok());
        for (customer_id, product_type) in [
            ("cust\0", "standard"),
            ("", "standard"),
            ("cust-42", "std\0"),
            ("cust-42", "Books"),
        ] {
            let bad = payments::Order {
                customer_id: customer_id.to_owned(),
                product_type: product_type.to_owned(),
                ..order()
            };
            assert!(cached_order(&bad).is_err(), "{customer_id:?} {product_type:?}");
        }
        let transaction = payments::Transaction {
            transaction_id: "0191d1c3-1a2b-7c3d-8e4f-5a6b7c8d9e0f".to_owned(),
            order_id: "0191d1c2-8f5e-7c3a-9b1d-3e5f7a9c1b2d".to_owned(),
            customer_id: "cust\u{1}".to_owned(),
            amount: 100,
            status: payments::TransactionStatus::Pending as i32,
            currency: "EUR".to_owned(),
            created_at: Some(timestamp(chrono::DateTime::UNIX_EPOCH)),
            ..payments::Transaction::default()
        };
        let error = taxable_transaction(&transaction).unwrap_err();
        assert!(error.contains("customer_id"), "{error}");
    }
}
