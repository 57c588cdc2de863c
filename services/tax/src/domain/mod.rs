//! The tax domain: the VAT engine ([`vat`], pure) and the decision taken for each transaction
//! from the order state the events carried here ([`decide`]). No tonic, sqlx or rdkafka.

pub mod vat;

use chrono::{DateTime, Utc};
pub use fintech_types::Violations;
use fintech_types::{Country, Currency};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Errors of the tax use cases; `grpc::status` maps each to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum TaxError {
    /// Some input fields are invalid (INVALID_ARGUMENT).
    #[error("invalid input: {0}")]
    Invalid(#[from] Violations),
    /// Nothing of this kind for the transaction (NOT_FOUND).
    #[error("no {resource} for transaction {id}")]
    NotFound {
        /// The protobuf message name (`TaxedTransaction`, `TaxFailure`).
        resource: &'static str,
        /// The transaction id.
        id: String,
    },
    /// Storage or plumbing failed (UNAVAILABLE / INTERNAL, details logged).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// An order as the tax service caches it: the full state carried by `orders.created` /
/// `orders.updated`, stored as JSON in `order_cache.payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedOrder {
    /// Order id.
    pub order_id: Uuid,
    /// The customer.
    pub customer_id: String,
    /// ISO 3166-1 alpha-2.
    pub country: Country,
    /// ISO 4217.
    pub currency: Currency,
    /// Minor units.
    pub amount: i64,
    /// Lowercase product type.
    pub product_type: String,
    /// When the order was created at payments.
    pub created_at: DateTime<Utc>,
    /// When it last changed at payments.
    pub updated_at: DateTime<Utc>,
    /// Payments' version; the cache keeps the highest.
    pub version: i64,
}

/// A transaction to tax, as carried by `transactions.created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxableTransaction {
    /// Transaction id.
    pub transaction_id: Uuid,
    /// Its order.
    pub order_id: Uuid,
    /// The customer.
    pub customer_id: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: Currency,
    /// The tax point: when the transaction was created.
    pub created_at: DateTime<Utc>,
    /// The order version it pays for (0: the event carried none, the latest cached order is used).
    pub order_version: i64,
    /// Whether the transaction moved (or may move) money; a transaction created as failed is not
    /// taxable.
    pub taxable: bool,
}

/// Why a transaction could not be taxed (mirrors `fintech.tax.v1.TaxFailureReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The order never arrived before the parking deadline.
    OrderNotFound,
    /// The rate table has no rule for the country at the tax date.
    UnsupportedCountry,
    /// The rate table has no rule for the product type.
    UnsupportedProductType,
    /// Transaction and order currencies differ.
    CurrencyMismatch,
    /// The tax does not fit in 64 bits.
    AmountOutOfRange,
}

impl FailureReason {
    /// The stored (and `tax.failed` header) name, e.g. `order_not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderNotFound => "order_not_found",
            Self::UnsupportedCountry => "unsupported_country",
            Self::UnsupportedProductType => "unsupported_product_type",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::AmountOutOfRange => "amount_out_of_range",
        }
    }

    /// Parses a stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        [
            Self::OrderNotFound,
            Self::UnsupportedCountry,
            Self::UnsupportedProductType,
            Self::CurrencyMismatch,
            Self::AmountOutOfRange,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == value)
    }
}

/// Why a transaction stopped being taxable (`transactions.updated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversalReason {
    /// It failed: no supply took place.
    Failed,
    /// It was refunded.
    Refunded,
}

/// A calculated result (mirrors `fintech.tax.v1.TaxedTransaction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxedTransaction {
    /// Transaction id.
    pub transaction_id: Uuid,
    /// Order id.
    pub order_id: Uuid,
    /// Customer.
    pub customer_id: String,
    /// Taxable amount.
    pub base_amount: i64,
    /// VAT.
    pub tax_applied: i64,
    /// base + VAT.
    pub total_amount: i64,
    /// ISO 4217.
    pub currency: Currency,
    /// Country whose rules applied.
    pub country: Country,
    /// Product type.
    pub product_type: String,
    /// Rate in basis points.
    pub tax_rate_bps: i32,
    /// Why this rate.
    pub reason: vat::TaxReason,
    /// Rate table version.
    pub rule_version: String,
    /// Tax point.
    pub tax_date: DateTime<Utc>,
    /// When calculated.
    pub calculated_at: DateTime<Utc>,
    /// The order version the VAT was calculated on.
    pub order_version: i64,
}

/// What to do with a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish this result.
    Taxed(TaxedTransaction),
    /// The order has not arrived: park the transaction until it does or the deadline passes.
    Park,
    /// Not taxable (created as failed): record nothing.
    NotTaxable,
    /// It can never be taxed as things stand: publish a failure.
    Fail(FailureReason, String),
}

/// Decides what happens to `transaction` given its order (if any) at the version it refers to,
/// with `rates`. The transaction amount is gross (ADR 0016): the VAT is the part of it
/// [`vat::RateTable::calculate_inclusive`] extracts.
pub fn decide(
    transaction: &TaxableTransaction,
    order: Option<&CachedOrder>,
    rates: &vat::RateTable,
    now: DateTime<Utc>,
) -> Decision {
    if !transaction.taxable {
        return Decision::NotTaxable;
    }
    let Some(order) = order else { return Decision::Park };
    if order.currency != transaction.currency {
        return Decision::Fail(
            FailureReason::CurrencyMismatch,
            format!(
                "transaction is in {} but its order is in {}",
                transaction.currency, order.currency
            ),
        );
    }
    match rates.calculate_inclusive(
        order.country.as_str(),
        &order.product_type,
        transaction.created_at.date_naive(),
        transaction.amount,
    ) {
        Ok(calculation) => Decision::Taxed(TaxedTransaction {
            transaction_id: transaction.transaction_id,
            order_id: order.order_id,
            customer_id: order.customer_id.clone(),
            base_amount: calculation.base_amount,
            tax_applied: calculation.tax_applied,
            total_amount: calculation.total_amount,
            currency: transaction.currency.clone(),
            country: order.country.clone(),
            product_type: order.product_type.clone(),
            tax_rate_bps: calculation.tax_rate_bps,
            reason: calculation.reason,
            rule_version: calculation.rule_version,
            tax_date: transaction.created_at,
            calculated_at: now,
            order_version: order.version,
        }),
        Err(error) => Decision::Fail(failure_reason(&error), error.to_string()),
    }
}

/// The failure reason of a VAT engine error.
pub fn failure_reason(error: &vat::VatError) -> FailureReason {
    match error {
        vat::VatError::UnsupportedCountry { .. } => FailureReason::UnsupportedCountry,
        vat::VatError::UnsupportedProductType { .. } => FailureReason::UnsupportedProductType,
        vat::VatError::AmountOutOfRange { .. } | vat::VatError::NonPositiveAmount { .. } => {
            FailureReason::AmountOutOfRange
        }
        // `calculate` never returns rate-table errors: those are caught when the table loads.
        vat::VatError::InvalidRateTable { .. }
        | vat::VatError::RateOutOfRange { .. }
        | vat::VatError::UnknownReason { .. }
        | vat::VatError::OverlappingRules { .. }
        | vat::VatError::InvalidRule { .. } => FailureReason::AmountOutOfRange,
    }
}
