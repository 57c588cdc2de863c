//! The accounts domain: accounts, their lifecycle ([`lifecycle`]), savings interest
//! ([`interest`]) and input validation. No tonic, sqlx or rdkafka here.

pub mod interest;
pub mod lifecycle;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use fintech_types::Violations;
use fintech_types::fields::{check_customer_id, parse_currency};
pub use fintech_types::paging::{Cursor, PageRequest};
pub use fintech_types::time::now;
pub use lifecycle::{
    Account, AccountState, Command, Freeze, FreezeKind, IllegalTransition, MoneyState, Product, Refusal, close_refusals,
};

/// Largest overdraft limit, in minor units.
pub const MAX_OVERDRAFT_LIMIT: i64 = 100_000_000;
/// Longest freeze or unfreeze reason, in characters.
pub const MAX_REASON_LEN: usize = 500;

/// Errors of the accounts domain; `grpc::status` maps each to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// Some input fields are invalid (INVALID_ARGUMENT).
    #[error("invalid input: {0}")]
    Invalid(#[from] Violations),
    /// No such account, or another customer's (NOT_FOUND, the same either way).
    #[error("account {0} not found")]
    NotFound(String),
    /// A customer token asked for another customer (PERMISSION_DENIED).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The account's state does not allow the change (FAILED_PRECONDITION).
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The account cannot be closed: every reason (FAILED_PRECONDITION).
    #[error("account {account_id} cannot be closed")]
    CannotClose {
        /// The account.
        account_id: Uuid,
        /// What is left.
        refusals: Vec<Refusal>,
    },
    /// The idempotency protocol refused the command, or its storage failed.
    #[error(transparent)]
    Idempotency(#[from] fintech_platform::idempotency::IdempotencyError),
    /// Storage or plumbing failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Validates a single id outside a larger command.
pub fn require_id(field: &str, value: &str) -> Result<Uuid, AccountsError> {
    Ok(fintech_types::fields::require_id(field, value)?)
}

/// Validates paging fields.
pub fn page(page_size: i32, page_token: &str) -> Result<PageRequest, AccountsError> {
    Ok(PageRequest::parse(page_size, page_token)?)
}

/// The accounts rule of a customer id: the shared rule, and only `[A-Za-z0-9._:-]` (what the
/// contract promises, so the id is safe in a ledger code and a log line).
pub fn check_account_customer_id(field: &str, value: &str, violations: &mut Violations) {
    let before = violations.fields().len();
    check_customer_id(field, value, violations);
    if violations.fields().len() == before
        && !value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-'))
    {
        violations.add(field, "must contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'");
    }
}

/// Checks a freeze or unfreeze reason: 1 to [`MAX_REASON_LEN`] characters, no control
/// characters.
pub fn check_reason(field: &str, value: &str, violations: &mut Violations) {
    if value.trim().is_empty() {
        violations.add(field, "is required");
    } else if value.chars().count() > MAX_REASON_LEN {
        violations.add(field, format!("must be at most {MAX_REASON_LEN} characters"));
    } else if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

/// Checks an overdraft limit's range.
pub fn check_overdraft_limit(field: &str, value: i64, violations: &mut Violations) {
    if !(0..=MAX_OVERDRAFT_LIMIT).contains(&value) {
        violations.add(
            field,
            format!("must be between 0 and {MAX_OVERDRAFT_LIMIT} minor units, got {value}"),
        );
    }
}

/// Input of OpenAccount, as received (`product`: `Ok(None)` when unspecified, `Err(raw)` when
/// unknown).
#[derive(Debug, Clone)]
pub struct OpenAccount {
    /// The owner.
    pub customer_id: String,
    /// Current or savings.
    pub product: Result<Option<Product>, i32>,
    /// Currency code.
    pub currency: String,
    /// Overdraft limit.
    pub overdraft_limit: i64,
}

impl OpenAccount {
    /// Validates every field and builds the new account (version 1, ACTIVE, not frozen).
    pub fn into_account(self, now: DateTime<Utc>) -> Result<Account, AccountsError> {
        let mut violations = Violations::default();
        check_account_customer_id("customer_id", &self.customer_id, &mut violations);
        let product = match self.product {
            Ok(Some(product)) => Some(product),
            Ok(None) => {
                violations.add("product", "is required (PRODUCT_CURRENT or PRODUCT_SAVINGS)");
                None
            }
            Err(raw) => {
                violations.add("product", format!("unknown product value {raw}"));
                None
            }
        };
        let currency = parse_currency("currency", &self.currency, &mut violations);
        match product {
            Some(Product::Savings) if self.overdraft_limit != 0 => violations.add(
                "overdraft_limit",
                format!("must be 0 for a savings account, got {}", self.overdraft_limit),
            ),
            _ => check_overdraft_limit("overdraft_limit", self.overdraft_limit, &mut violations),
        }
        let (Some(product), Some(currency)) = (product, currency) else {
            return Err(violations.into());
        };
        violations.into_result(|| Account {
            account_id: Uuid::new_v4(),
            customer_id: self.customer_id,
            product,
            currency,
            state: AccountState::Active,
            freeze: None,
            overdraft_limit: self.overdraft_limit,
            opened_at: now,
            updated_at: now,
            closed_at: None,
            version: 1,
            last_customer_movement_at: None,
        })
    }
}

/// The balances of an account as the projection last saw them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Balances {
    /// Ledger balance.
    pub ledger_balance: i64,
    /// Held by active holds.
    pub held: i64,
    /// `ledger_balance + overdraft_limit - held` as the ledger reported it.
    pub available: i64,
    /// Ledger stream version (0: not reported yet).
    pub ledger_version: i64,
    /// When the event of that version occurred.
    pub ledger_updated_at: Option<DateTime<Utc>>,
    /// Accrued interest not posted yet (floor, minor units).
    pub accrued_interest: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(product: Result<Option<Product>, i32>, overdraft_limit: i64) -> OpenAccount {
        OpenAccount {
            customer_id: "cust-1".to_owned(),
            product,
            currency: "EUR".to_owned(),
            overdraft_limit,
        }
    }

    #[test]
    fn a_valid_account_opens_active_at_version_one() {
        let account = open(Ok(Some(Product::Current)), 5_000).into_account(now()).unwrap();
        assert_eq!(
            (account.version, account.state, account.overdraft_limit),
            (1, AccountState::Active, 5_000)
        );
        assert!(account.freeze.is_none() && account.closed_at.is_none());
    }

    #[test]
    fn every_bad_field_is_named() {
        let command = OpenAccount {
            customer_id: "has space".to_owned(),
            product: Err(7),
            currency: "eur".to_owned(),
            overdraft_limit: -1,
        };
        let Err(AccountsError::Invalid(violations)) = command.into_account(now()) else {
            panic!("must be invalid")
        };
        assert_eq!(
            violations.fields(),
            ["customer_id", "product", "currency", "overdraft_limit"]
        );
    }

    #[test]
    fn savings_accounts_have_no_overdraft() {
        let Err(AccountsError::Invalid(violations)) = open(Ok(Some(Product::Savings)), 1).into_account(now()) else {
            panic!("must be invalid")
        };
        assert_eq!(violations.fields(), ["overdraft_limit"]);
        assert!(open(Ok(Some(Product::Savings)), 0).into_account(now()).is_ok());
        let Err(AccountsError::Invalid(violations)) =
            open(Ok(Some(Product::Current)), MAX_OVERDRAFT_LIMIT + 1).into_account(now())
        else {
            panic!("must be invalid")
        };
        assert_eq!(violations.fields(), ["overdraft_limit"]);
        let Err(AccountsError::Invalid(violations)) = open(Ok(None), 0).into_account(now()) else {
            panic!("must be invalid")
        };
        assert_eq!(violations.fields(), ["product"]);
    }

    #[test]
    fn reasons_are_bounded() {
        let mut violations = Violations::default();
        check_reason("reason", "", &mut violations);
        check_reason("reason", &"r".repeat(MAX_REASON_LEN + 1), &mut violations);
        check_reason("reason", "a\nb", &mut violations);
        assert_eq!(violations.fields().len(), 3);
        let mut violations = Violations::default();
        check_reason("reason", &"r".repeat(MAX_REASON_LEN), &mut violations);
        assert!(violations.is_empty());
    }
}
