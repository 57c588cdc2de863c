//! The payments domain: orders, transactions, their validation and lifecycle. No tonic, sqlx or
//! rdkafka here; `grpc/` converts to and from these types and `storage/` persists them.

use chrono::{DateTime, Utc};
use fintech_types::{Country, Currency};
use uuid::Uuid;

pub use fintech_types::Violations;
pub use fintech_types::fields::{MAX_CUSTOMER_ID_LEN, MAX_PRODUCT_TYPE_LEN, parse_id};
use fintech_types::fields::{check_customer_id, check_product_type, parse_country, parse_currency};
pub use fintech_types::time::now;

/// Errors of the payments domain; `grpc::status` maps each to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// Some input fields are invalid.
    #[error("invalid input: {0}")]
    Invalid(#[from] Violations),
    /// No such order.
    #[error("order {0} not found")]
    OrderNotFound(String),
    /// No such transaction.
    #[error("transaction {0} not found")]
    TransactionNotFound(String),
    /// A customer token asked for what only its own customer, or an operator, may do
    /// (PERMISSION_DENIED). Never used for another customer's existing data: that is NOT_FOUND,
    /// exactly as for data that does not exist.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The caller's expected version is not the current one.
    #[error("{entity} {id} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        /// `order` or `transaction`.
        entity: &'static str,
        /// Its id.
        id: String,
        /// The version the caller sent.
        expected: i64,
        /// The current version.
        actual: i64,
    },
    /// The status change is not allowed from the current status.
    #[error("transaction {id} cannot go from {from} to {to}")]
    IllegalTransition {
        /// The transaction.
        id: String,
        /// Current status.
        from: TransactionStatus,
        /// Requested status.
        to: TransactionStatus,
    },
    /// The transaction's currency differs from its order's.
    #[error("currency {given} does not match the order's currency {order}")]
    CurrencyMismatch {
        /// The order's currency.
        order: String,
        /// The currency sent.
        given: String,
    },
    /// The idempotency protocol refused the command (key reused with another request, still in
    /// progress) or its storage failed.
    #[error(transparent)]
    Idempotency(#[from] fintech_platform::idempotency::IdempotencyError),
    /// Storage or plumbing failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Validates a single id outside a larger command.
pub fn require_id(field: &str, value: &str) -> Result<Uuid, PaymentsError> {
    Ok(fintech_types::fields::require_id(field, value)?)
}

fn check_amount(value: i64, violations: &mut Violations) {
    if value <= 0 {
        violations.add("amount", format!("must be greater than 0 (minor units), got {value}"));
    }
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Server-assigned id.
    pub order_id: Uuid,
    /// The customer.
    pub customer_id: String,
    /// ISO 3166-1 alpha-2.
    pub country: Country,
    /// ISO 4217.
    pub currency: Currency,
    /// Minor units, > 0.
    pub amount: i64,
    /// Lowercase product type.
    pub product_type: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// 1 on creation, +1 per change.
    pub version: i64,
}

/// Input of CreateOrder, as received.
#[derive(Debug, Clone)]
pub struct CreateOrder {
    /// The customer.
    pub customer_id: String,
    /// Country code.
    pub country: String,
    /// Currency code.
    pub currency: String,
    /// Minor units.
    pub amount: i64,
    /// Product type.
    pub product_type: String,
}

impl CreateOrder {
    /// Validates every field and builds the new order (version 1).
    pub fn into_order(self, now: DateTime<Utc>) -> Result<Order, PaymentsError> {
        let mut violations = Violations::default();
        check_customer_id("customer_id", &self.customer_id, &mut violations);
        let country = parse_country("country", &self.country, &mut violations);
        let currency = parse_currency("currency", &self.currency, &mut violations);
        check_amount(self.amount, &mut violations);
        check_product_type("product_type", &self.product_type, &mut violations);
        let (Some(country), Some(currency)) = (country, currency) else {
            return Err(violations.into());
        };
        violations.into_result(|| Order {
            order_id: Uuid::new_v4(),
            customer_id: self.customer_id,
            country,
            currency,
            amount: self.amount,
            product_type: self.product_type,
            created_at: now,
            updated_at: now,
            version: 1,
        })
    }
}

/// Input of UpdateOrder, validated.
#[derive(Debug, Clone)]
pub struct OrderChanges {
    /// The order.
    pub order_id: Uuid,
    /// The version the caller read.
    pub expected_version: i64,
    /// New country.
    pub country: Option<Country>,
    /// New amount.
    pub amount: Option<i64>,
    /// New product type.
    pub product_type: Option<String>,
}

impl OrderChanges {
    /// Validates the raw fields.
    pub fn parse(
        order_id: &str,
        expected_version: i64,
        country: Option<String>,
        amount: Option<i64>,
        product_type: Option<String>,
    ) -> Result<Self, PaymentsError> {
        let mut violations = Violations::default();
        let id = parse_id("order_id", order_id, &mut violations);
        if expected_version < 1 {
            violations.add("expected_version", "must be the order's current version (>= 1)");
        }
        let parsed_country = country
            .as_deref()
            .and_then(|country| parse_country("country", country, &mut violations));
        if let Some(amount) = amount {
            check_amount(amount, &mut violations);
        }
        if let Some(product_type) = &product_type {
            check_product_type("product_type", product_type, &mut violations);
        }
        if country.is_none() && amount.is_none() && product_type.is_none() {
            violations.add("country", "at least one of country, amount, product_type must be set");
        }
        violations.into_result(|| Self {
            order_id: id.unwrap_or_default(),
            expected_version,
            country: parsed_country,
            amount,
            product_type,
        })
    }

    /// The order after the change, or the conflict if the caller's version is stale.
    pub fn apply(&self, current: &Order, now: DateTime<Utc>) -> Result<Order, PaymentsError> {
        if current.version != self.expected_version {
            return Err(PaymentsError::VersionConflict {
                entity: "order",
                id: current.order_id.to_string(),
                expected: self.expected_version,
                actual: current.version,
            });
        }
        let mut next = current.clone();
        if let Some(country) = &self.country {
            next.country.clone_from(country);
        }
        if let Some(amount) = self.amount {
            next.amount = amount;
        }
        if let Some(product_type) = &self.product_type {
            next.product_type.clone_from(product_type);
        }
        next.updated_at = now;
        next.version += 1;
        Ok(next)
    }
}

/// Lifecycle of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// Outcome not known yet.
    Pending,
    /// Money moved.
    Succeeded,
    /// Money did not move (terminal).
    Failed,
    /// Money moved and was returned (terminal).
    Refunded,
}

impl TransactionStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refunded => "refunded",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "refunded" => Some(Self::Refunded),
            _ => None,
        }
    }

    /// Whether `self -> next` is a legal transition: pending -> succeeded | failed,
    /// succeeded -> refunded. Nothing leaves failed or refunded.
    pub fn can_become(self, next: Self) -> bool {
        matches!(
            (self, next),
            (Self::Pending, Self::Succeeded) | (Self::Pending, Self::Failed) | (Self::Succeeded, Self::Refunded)
        )
    }

    /// A status a transaction may be created with.
    pub fn is_initial(self) -> bool {
        matches!(self, Self::Pending | Self::Succeeded | Self::Failed)
    }
}

impl std::fmt::Display for TransactionStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A payment against an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Server-assigned id.
    pub transaction_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The order's customer.
    pub customer_id: String,
    /// Minor units, > 0.
    pub amount: i64,
    /// The order's currency.
    pub currency: Currency,
    /// Lifecycle state.
    pub status: TransactionStatus,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// 1 on creation, +1 per change.
    pub version: i64,
    /// The order's version when the transaction was created: the state tax calculates on.
    pub order_version: i64,
}

/// Input of CreateTransaction, validated in isolation (the order checks come with the order).
#[derive(Debug, Clone)]
pub struct CreateTransaction {
    /// The order.
    pub order_id: Uuid,
    /// Minor units.
    pub amount: i64,
    /// Currency sent.
    pub currency: Currency,
    /// Initial status.
    pub status: TransactionStatus,
}

impl CreateTransaction {
    /// Validates the raw fields; `status` is `None` when unspecified (then pending) and
    /// `Err(raw)` when the wire value is unknown.
    pub fn parse(
        order_id: &str,
        amount: i64,
        currency: &str,
        status: Result<Option<TransactionStatus>, i32>,
    ) -> Result<Self, PaymentsError> {
        let mut violations = Violations::default();
        let id = parse_id("order_id", order_id, &mut violations);
        check_amount(amount, &mut violations);
        let currency = parse_currency("currency", currency, &mut violations);
        let status = match status {
            Ok(None) => Some(TransactionStatus::Pending),
            Ok(Some(status)) if status.is_initial() => Some(status),
            Ok(Some(status)) => {
                violations.add("status", format!("a transaction cannot be created as {status}"));
                None
            }
            Err(raw) => {
                violations.add("status", format!("unknown status value {raw}"));
                None
            }
        };
        let Some(currency) = currency else {
            return Err(violations.into());
        };
        violations.into_result(|| Self {
            order_id: id.unwrap_or_default(),
            amount,
            currency,
            status: status.unwrap_or(TransactionStatus::Pending),
        })
    }

    /// The new transaction on `order`, or why it cannot be created.
    pub fn on_order(self, order: &Order, now: DateTime<Utc>) -> Result<Transaction, PaymentsError> {
        if self.currency != order.currency {
            return Err(PaymentsError::CurrencyMismatch {
                order: order.currency.to_string(),
                given: self.currency.to_string(),
            });
        }
        Ok(Transaction {
            transaction_id: Uuid::new_v4(),
            order_id: order.order_id,
            customer_id: order.customer_id.clone(),
            amount: self.amount,
            currency: self.currency,
            status: self.status,
            created_at: now,
            updated_at: now,
            version: 1,
            order_version: order.version,
        })
    }
}

/// A status change, validated against the current transaction.
pub fn change_status(
    current: &Transaction,
    expected_version: i64,
    next: TransactionStatus,
    now: DateTime<Utc>,
) -> Result<Transaction, PaymentsError> {
    if current.version != expected_version {
        return Err(PaymentsError::VersionConflict {
            entity: "transaction",
            id: current.transaction_id.to_string(),
            expected: expected_version,
            actual: current.version,
        });
    }
    if !current.status.can_become(next) {
        return Err(PaymentsError::IllegalTransition {
            id: current.transaction_id.to_string(),
            from: current.status,
            to: next,
        });
    }
    let mut updated = current.clone();
    updated.status = next;
    updated.updated_at = now;
    updated.version += 1;
    Ok(updated)
}

pub use fintech_types::paging::{Cursor, PageRequest};

/// Validates paging fields into the domain's error.
pub fn page(page_size: i32, page_token: &str) -> Result<PageRequest, PaymentsError> {
    Ok(PageRequest::parse(page_size, page_token)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_order() -> CreateOrder {
        CreateOrder {
            customer_id: "cust-1".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 1000,
            product_type: "standard".to_owned(),
        }
    }

    #[test]
    fn a_valid_order_starts_at_version_one() {
        let order = valid_order().into_order(now()).unwrap();
        assert_eq!(order.version, 1);
        assert_eq!(order.created_at, order.updated_at);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let command = CreateOrder {
            customer_id: String::new(),
            country: "XX".to_owned(),
            currency: "EURO".to_owned(),
            amount: 0,
            product_type: "Crypto!".to_owned(),
        };
        let Err(PaymentsError::Invalid(violations)) = command.into_order(now()) else {
            panic!("must be invalid")
        };
        let fields = violations.fields();
        assert_eq!(fields, ["customer_id", "country", "currency", "amount", "product_type"]);
    }

    #[test]
    fn long_customer_ids_are_rejected() {
        let command = CreateOrder {
            customer_id: "c".repeat(65),
            ..valid_order()
        };
        assert!(matches!(command.into_order(now()), Err(PaymentsError::Invalid(_))));
        let command = CreateOrder {
            customer_id: "c".repeat(64),
            ..valid_order()
        };
        assert!(command.into_order(now()).is_ok());
    }

    #[test]
    fn transitions_follow_the_lifecycle() {
        use TransactionStatus::*;
        let all = [Pending, Succeeded, Failed, Refunded];
        let legal: Vec<_> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        assert_eq!(legal, [(Pending, Succeeded), (Pending, Failed), (Succeeded, Refunded)]);
    }

    #[test]
    fn a_stale_version_is_a_conflict() {
        let order = valid_order().into_order(now()).unwrap();
        let changes = OrderChanges::parse(&order.order_id.to_string(), 2, None, Some(5), None).unwrap();
        assert!(matches!(
            changes.apply(&order, now()),
            Err(PaymentsError::VersionConflict { actual: 1, .. })
        ));
        let changes = OrderChanges::parse(&order.order_id.to_string(), 1, None, Some(5), None).unwrap();
        let updated = changes.apply(&order, now()).unwrap();
        assert_eq!((updated.version, updated.amount), (2, 5));
    }

    #[test]
    fn the_transaction_currency_must_match_the_order() {
        let order = valid_order().into_order(now()).unwrap();
        let command = CreateTransaction::parse(&order.order_id.to_string(), 10, "USD", Ok(None)).unwrap();
        assert!(matches!(
            command.on_order(&order, now()),
            Err(PaymentsError::CurrencyMismatch { .. })
        ));
    }
}
