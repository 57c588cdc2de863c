//! Accounts: type (and so normal side), currency, and how far the balance may go below zero.

use chrono::{DateTime, Utc};
use fintech_types::Currency;
use uuid::Uuid;

use super::entry::Side;
use super::{LedgerError, Violations};

/// Longest account code.
pub const MAX_CODE_LEN: usize = 100;
/// Longest account name.
pub const MAX_NAME_LEN: usize = 200;
/// Prefix of the codes of accounts the ledger creates itself; clients cannot use it.
pub const SYSTEM_PREFIX: &str = "system:";

/// The kind of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountType {
    /// Debit-normal.
    Asset,
    /// Credit-normal.
    Liability,
    /// Credit-normal.
    Equity,
    /// Credit-normal.
    Revenue,
    /// Debit-normal.
    Expense,
}

impl AccountType {
    /// Every type.
    pub const ALL: [Self; 5] = [Self::Asset, Self::Liability, Self::Equity, Self::Revenue, Self::Expense];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asset => "asset",
            Self::Liability => "liability",
            Self::Equity => "equity",
            Self::Revenue => "revenue",
            Self::Expense => "expense",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }

    /// The side that increases the balance.
    pub fn normal_side(self) -> Side {
        match self {
            Self::Asset | Self::Expense => Side::Debit,
            Self::Liability | Self::Equity | Self::Revenue => Side::Credit,
        }
    }
}

/// Whether, and how far, the balance (on the normal side) may go below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverdraftPolicy {
    /// Never below zero.
    Forbidden,
    /// Down to `-limit` (limit > 0).
    Limited(i64),
    /// Any balance.
    Unlimited,
}

impl OverdraftPolicy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::Limited(_) => "limited",
            Self::Unlimited => "unlimited",
        }
    }

    /// The stored limit (0 unless limited).
    pub fn limit(self) -> i64 {
        match self {
            Self::Limited(limit) => limit,
            Self::Forbidden | Self::Unlimited => 0,
        }
    }

    /// Parses the stored name and limit.
    pub fn from_stored(name: &str, limit: i64) -> Option<Self> {
        match (name, limit) {
            ("forbidden", _) => Some(Self::Forbidden),
            ("limited", limit) if limit > 0 => Some(Self::Limited(limit)),
            ("unlimited", _) => Some(Self::Unlimited),
            _ => None,
        }
    }

    /// The lowest balance allowed, `None` when unbounded.
    pub fn floor(self) -> Option<i64> {
        match self {
            Self::Forbidden => Some(0),
            Self::Limited(limit) => Some(-limit),
            Self::Unlimited => None,
        }
    }
}

/// The policy kinds as the wire names them, before the limit is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverdraftKind {
    /// See [`OverdraftPolicy::Forbidden`].
    Forbidden,
    /// See [`OverdraftPolicy::Limited`].
    Limited,
    /// See [`OverdraftPolicy::Unlimited`].
    Unlimited,
}

/// Lifecycle state of a customer account, as the accounts service last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerState {
    /// Open.
    Active,
    /// Open, no customer movement for a while (postings are accepted).
    Dormant,
    /// Terminal: refuses every posting and hold.
    Closed,
}

impl CustomerState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Dormant => "dormant",
            Self::Closed => "closed",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        [Self::Active, Self::Dormant, Self::Closed]
            .into_iter()
            .find(|state| state.as_str() == value)
    }
}

/// What a freeze blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Nothing.
    None,
    /// Debits (money out) and holds.
    Debits,
    /// Credits (money in).
    Credits,
    /// Both directions.
    Both,
}

impl Freeze {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Debits => "debits",
            Self::Credits => "credits",
            Self::Both => "both",
        }
    }

    /// Parses the stored name.
    pub fn from_stored(value: &str) -> Option<Self> {
        [Self::None, Self::Debits, Self::Credits, Self::Both]
            .into_iter()
            .find(|freeze| freeze.as_str() == value)
    }

    /// Whether lines of `side` are refused (for a credit-normal customer account: debit = out).
    pub fn blocks(self, side: Side) -> bool {
        matches!(
            (self, side),
            (Self::Both, _) | (Self::Debits, Side::Debit) | (Self::Credits, Side::Credit)
        )
    }
}

/// The accounts service's state of a customer account, enforced on every posting and hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerControls {
    /// The owning customer.
    pub customer_id: String,
    /// Lifecycle state.
    pub state: CustomerState,
    /// The freeze in force.
    pub freeze: Freeze,
}

/// Code prefix of the customer accounts the ledger opens from the accounts service's events.
pub const CUSTOMER_PREFIX: &str = "customer:";

/// An account of the ledger. Its type and currency never change after it is opened; a customer
/// account's controls and overdraft follow the accounts service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Server-assigned id; also the id of its stream.
    pub account_id: Uuid,
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Type, which fixes the normal side.
    pub account_type: AccountType,
    /// The only currency the account holds.
    pub currency: Currency,
    /// How far below zero the balance may go.
    pub overdraft: OverdraftPolicy,
    /// Created by the ledger itself.
    pub system: bool,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// For a customer account: the accounts service's state of it.
    pub customer: Option<CustomerControls>,
}

impl Account {
    /// What may still be spent or held: `balance + overdraft_limit - held` (`balance - held` for
    /// an unlimited account).
    pub fn available(&self, balance: i64, held: i64) -> i64 {
        let floor = self.overdraft.floor().unwrap_or(0);
        balance.saturating_sub(floor).saturating_sub(held)
    }

    /// The change of this account's balance by `amount` on `side`: `+amount` on the normal side.
    pub fn signed(&self, side: Side, amount: i64) -> i64 {
        if side == self.account_type.normal_side() {
            amount
        } else {
            -amount
        }
    }
}

/// Checks an account code: 1-100 characters of `[A-Za-z0-9:._-]`, starting with a letter or digit.
pub fn check_code(field: &str, code: &str, violations: &mut Violations) {
    let well_formed = code.bytes().next().is_some_and(|first| first.is_ascii_alphanumeric())
        && code.len() <= MAX_CODE_LEN
        && code
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'.' | b'_' | b'-'));
    if code.is_empty() {
        violations.add(field, "is required");
    } else if !well_formed {
        violations.add(
            field,
            format!(
                "must be 1-{MAX_CODE_LEN} characters of [A-Za-z0-9:._-] starting with a letter or digit, got {code:?}"
            ),
        );
    }
}

/// Input of CreateAccount, as received (enums already read from the wire: `Ok(None)` for
/// unspecified, `Err(raw)` for an unknown value).
#[derive(Debug, Clone)]
pub struct CreateAccount {
    /// Unique code.
    pub code: String,
    /// Display name.
    pub name: String,
    /// The type.
    pub account_type: Result<Option<AccountType>, i32>,
    /// Currency code.
    pub currency: String,
    /// Overdraft policy kind.
    pub overdraft_policy: Result<Option<OverdraftKind>, i32>,
    /// Overdraft limit (only for `Limited`).
    pub overdraft_limit: i64,
}

impl CreateAccount {
    /// Validates every field and builds the account a client opens.
    pub fn into_account(self, now: DateTime<Utc>) -> Result<Account, LedgerError> {
        let mut violations = Violations::default();
        check_code("code", &self.code, &mut violations);
        if self.code.starts_with(SYSTEM_PREFIX) {
            violations.add(
                "code",
                format!("the {SYSTEM_PREFIX:?} prefix is reserved for system accounts"),
            );
        }
        if self.code.to_ascii_lowercase().starts_with(CUSTOMER_PREFIX) {
            violations.add(
                "code",
                format!(
                    "the {CUSTOMER_PREFIX:?} prefix is reserved: customer accounts are opened by the accounts service"
                ),
            );
        }
        let name_len = self.name.chars().count();
        if name_len == 0 {
            violations.add("name", "is required");
        } else if name_len > MAX_NAME_LEN || self.name.chars().any(char::is_control) {
            violations.add(
                "name",
                format!("must be at most {MAX_NAME_LEN} characters without control characters"),
            );
        }
        let account_type = match self.account_type {
            Ok(Some(kind)) => Some(kind),
            Ok(None) => {
                violations.add("type", "is required");
                None
            }
            Err(raw) => {
                violations.add("type", format!("unknown account type {raw}"));
                None
            }
        };
        let currency = match Currency::parse(&self.currency) {
            Ok(currency) => Some(currency),
            Err(error) => {
                violations.add("currency", error.to_string());
                None
            }
        };
        let overdraft = match self.overdraft_policy {
            Ok(None) => {
                violations.add("overdraft_policy", "is required");
                None
            }
            Err(raw) => {
                violations.add("overdraft_policy", format!("unknown overdraft policy {raw}"));
                None
            }
            Ok(Some(OverdraftKind::Limited)) if self.overdraft_limit <= 0 => {
                violations.add(
                    "overdraft_limit",
                    format!(
                        "must be greater than 0 with a limited overdraft, got {}",
                        self.overdraft_limit
                    ),
                );
                None
            }
            Ok(Some(OverdraftKind::Limited)) => Some(OverdraftPolicy::Limited(self.overdraft_limit)),
            Ok(Some(_)) if self.overdraft_limit != 0 => {
                violations.add("overdraft_limit", "must be 0 unless the overdraft policy is limited");
                None
            }
            Ok(Some(OverdraftKind::Forbidden)) => Some(OverdraftPolicy::Forbidden),
            Ok(Some(OverdraftKind::Unlimited)) => Some(OverdraftPolicy::Unlimited),
        };
        match (account_type, currency, overdraft) {
            (Some(account_type), Some(currency), Some(overdraft)) if violations.is_empty() => Ok(Account {
                account_id: Uuid::new_v4(),
                code: self.code,
                name: self.name,
                account_type,
                currency,
                overdraft,
                system: false,
                created_at: now,
                customer: None,
            }),
            _ => Err(LedgerError::Invalid(violations)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> CreateAccount {
        CreateAccount {
            code: "cash-eur".to_owned(),
            name: "Cash".to_owned(),
            account_type: Ok(Some(AccountType::Asset)),
            currency: "EUR".to_owned(),
            overdraft_policy: Ok(Some(OverdraftKind::Forbidden)),
            overdraft_limit: 0,
        }
    }

    fn fields(result: Result<Account, LedgerError>) -> Vec<String> {
        match result {
            Err(LedgerError::Invalid(violations)) => violations.fields().into_iter().map(str::to_owned).collect(),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_account_opens() {
        let account = valid().into_account(super::super::now()).unwrap();
        assert_eq!(account.code, "cash-eur");
        assert_eq!(account.overdraft, OverdraftPolicy::Forbidden);
        assert!(!account.system);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = CreateAccount {
            code: "system:cash".to_owned(),
            name: String::new(),
            account_type: Err(9),
            currency: "EURO".to_owned(),
            overdraft_policy: Ok(None),
            overdraft_limit: 0,
        };
        assert_eq!(
            fields(bad.into_account(super::super::now())),
            ["code", "name", "type", "currency", "overdraft_policy"]
        );
        let limited_without_limit = CreateAccount {
            overdraft_policy: Ok(Some(OverdraftKind::Limited)),
            ..valid()
        };
        assert_eq!(
            fields(limited_without_limit.into_account(super::super::now())),
            ["overdraft_limit"]
        );
        let forbidden_with_limit = CreateAccount {
            overdraft_limit: 5,
            ..valid()
        };
        assert_eq!(
            fields(forbidden_with_limit.into_account(super::super::now())),
            ["overdraft_limit"]
        );
        for code in ["-x", "a b", "ä", &"x".repeat(101)] {
            let mut violations = Violations::default();
            check_code("code", code, &mut violations);
            assert_eq!(violations.iter().count(), 1, "{code:?}");
        }
    }

    #[test]
    fn normal_sides_and_floors() {
        assert_eq!(AccountType::Asset.normal_side(), Side::Debit);
        assert_eq!(AccountType::Revenue.normal_side(), Side::Credit);
        assert_eq!(OverdraftPolicy::Limited(100).floor(), Some(-100));
        assert_eq!(OverdraftPolicy::Unlimited.floor(), None);
        for kind in AccountType::ALL {
            assert_eq!(AccountType::from_stored(kind.as_str()), Some(kind));
        }
        assert_eq!(OverdraftPolicy::from_stored("limited", 0), None);
    }
}
