//! Customer accounts as the accounts service publishes them (`accounts.opened` /
//! `accounts.updated`, full state, highest version wins), and the ledger account each one is.

use chrono::{DateTime, Utc};
use fintech_types::Currency;
use uuid::Uuid;

use super::account::{Account, AccountType, CUSTOMER_PREFIX, CustomerControls, CustomerState, Freeze, OverdraftPolicy};

/// Longest customer id (the accounts contract).
pub const MAX_CUSTOMER_ID_LEN: usize = 64;

/// A customer account's state as received, enums already read (`None` for unspecified or
/// unknown).
#[derive(Debug, Clone)]
pub struct CustomerAccountInput {
    /// Account id (= stream id).
    pub account_id: String,
    /// Owning customer.
    pub customer_id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Lifecycle state.
    pub state: Option<CustomerState>,
    /// Freeze in force (`Some(Freeze::None)` when not frozen).
    pub freeze: Option<Freeze>,
    /// Overdraft limit, >= 0.
    pub overdraft_limit: i64,
    /// Version, >= 1.
    pub version: i64,
}

/// A validated customer account state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerAccount {
    /// Account id (= stream id).
    pub account_id: Uuid,
    /// Owning customer.
    pub customer_id: String,
    /// Currency.
    pub currency: Currency,
    /// Lifecycle state.
    pub state: CustomerState,
    /// Freeze in force.
    pub freeze: Freeze,
    /// Overdraft limit.
    pub overdraft_limit: i64,
    /// Version.
    pub version: i64,
}

impl CustomerAccountInput {
    /// Validates the state; the error says why it can never be applied.
    pub fn validate(self) -> Result<CustomerAccount, String> {
        let account_id =
            Uuid::parse_str(&self.account_id).map_err(|error| format!("account_id {:?}: {error}", self.account_id))?;
        if self.customer_id.is_empty()
            || self.customer_id.chars().count() > MAX_CUSTOMER_ID_LEN
            || self.customer_id.chars().any(char::is_control)
        {
            return Err(format!(
                "customer_id must be 1-{MAX_CUSTOMER_ID_LEN} characters, got {:?}",
                self.customer_id
            ));
        }
        let currency = Currency::parse(&self.currency).map_err(|error| format!("currency: {error}"))?;
        let state = self.state.ok_or("state is unspecified or unknown")?;
        let freeze = self.freeze.ok_or("freeze kind is unknown")?;
        if self.overdraft_limit < 0 {
            return Err(format!("overdraft_limit must be >= 0, got {}", self.overdraft_limit));
        }
        if self.version < 1 {
            return Err(format!("version must be >= 1, got {}", self.version));
        }
        Ok(CustomerAccount {
            account_id,
            customer_id: self.customer_id,
            currency,
            state,
            // A closed account carries no freeze (it refuses everything anyway).
            freeze: if state == CustomerState::Closed {
                Freeze::None
            } else {
                freeze
            },
            overdraft_limit: self.overdraft_limit,
            version: self.version,
        })
    }
}

impl CustomerAccount {
    /// `LIMITED(limit)`, or `FORBIDDEN` when the limit is 0.
    pub fn overdraft(&self) -> OverdraftPolicy {
        if self.overdraft_limit > 0 {
            OverdraftPolicy::Limited(self.overdraft_limit)
        } else {
            OverdraftPolicy::Forbidden
        }
    }

    /// The controls the ledger enforces.
    pub fn controls(&self) -> CustomerControls {
        CustomerControls {
            customer_id: self.customer_id.clone(),
            state: self.state,
            freeze: self.freeze,
        }
    }

    /// The ledger account the stream is opened as: LIABILITY (credit-normal: credit = money in),
    /// code `customer:<id>`.
    pub fn account(&self, now: DateTime<Utc>) -> Account {
        Account {
            account_id: self.account_id,
            code: format!("{CUSTOMER_PREFIX}{}", self.account_id),
            name: format!("customer account {}", self.account_id),
            account_type: AccountType::Liability,
            currency: self.currency.clone(),
            overdraft: self.overdraft(),
            system: false,
            created_at: now,
            customer: Some(self.controls()),
        }
    }
}

/// An `accounts.interest_posted` as received.
#[derive(Debug, Clone)]
pub struct InterestInput {
    /// `interest:<account_id>:<YYYY-MM>`.
    pub posting_id: String,
    /// The savings account credited.
    pub account_id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Minor units, > 0.
    pub amount: i64,
}

/// A validated interest posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest {
    /// The entry id.
    pub posting_id: String,
    /// The account credited.
    pub account_id: Uuid,
    /// Currency.
    pub currency: Currency,
    /// `YYYY-MM`.
    pub period: String,
    /// Minor units.
    pub amount: i64,
}

impl InterestInput {
    /// Validates the posting; the error says why it can never be booked.
    pub fn validate(self) -> Result<Interest, String> {
        let account_id =
            Uuid::parse_str(&self.account_id).map_err(|error| format!("account_id {:?}: {error}", self.account_id))?;
        let period_ok = self.period.len() == 7
            && self.period.as_bytes()[4] == b'-'
            && self.period[..4].bytes().all(|byte| byte.is_ascii_digit())
            && self.period[5..]
                .parse::<u8>()
                .is_ok_and(|month| (1..=12).contains(&month));
        if !period_ok {
            return Err(format!("period must be YYYY-MM, got {:?}", self.period));
        }
        let expected = format!("{}{account_id}:{}", super::entry::INTEREST_PREFIX, self.period);
        if self.posting_id != expected {
            return Err(format!("posting_id must be {expected:?}, got {:?}", self.posting_id));
        }
        if self.amount <= 0 || self.amount > super::entry::MAX_LINE_AMOUNT {
            return Err(format!(
                "amount must be 1-{}, got {}",
                super::entry::MAX_LINE_AMOUNT,
                self.amount
            ));
        }
        let currency = Currency::parse(&self.currency).map_err(|error| format!("currency: {error}"))?;
        Ok(Interest {
            posting_id: self.posting_id,
            account_id,
            currency,
            period: self.period,
            amount: self.amount,
        })
    }
}

impl Interest {
    /// The entry: debit interest expense, credit the customer account; its content depends only
    /// on the posting, so a redelivery has the same fingerprint.
    pub fn entry(&self, expense_account: Uuid) -> Result<super::entry::NewEntry, String> {
        use super::entry::{EntryInput, LineInput, Side};
        let line = |account_id: Uuid, side: Side| LineInput {
            account_id: account_id.to_string(),
            side: Ok(Some(side)),
            amount: self.amount,
            currency: self.currency.as_str().to_owned(),
        };
        EntryInput {
            entry_id: self.posting_id.clone(),
            description: format!("interest {}", self.period),
            metadata: [
                ("source", "accounts.interest_posted"),
                ("kind", "interest"),
                ("period", self.period.as_str()),
            ]
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
            lines: vec![line(expense_account, Side::Debit), line(self.account_id, Side::Credit)],
        }
        .validate()
        .map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> CustomerAccountInput {
        CustomerAccountInput {
            account_id: Uuid::new_v4().to_string(),
            customer_id: "cust-1".to_owned(),
            currency: "EUR".to_owned(),
            state: Some(CustomerState::Active),
            freeze: Some(Freeze::Debits),
            overdraft_limit: 0,
            version: 1,
        }
    }

    #[test]
    fn interest_postings_are_checked_and_booked_as_interest() {
        let account = Uuid::new_v4();
        let good = InterestInput {
            posting_id: format!("interest:{account}:2026-11"),
            account_id: account.to_string(),
            currency: "EUR".to_owned(),
            period: "2026-11".to_owned(),
            amount: 42,
        };
        let interest = good.clone().validate().unwrap();
        let entry = interest.entry(Uuid::new_v4()).unwrap();
        assert!(entry.is_interest());
        assert_eq!(entry.lines.len(), 2);
        assert!(
            InterestInput {
                period: "2026-13".to_owned(),
                posting_id: format!("interest:{account}:2026-13"),
                ..good.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            InterestInput {
                posting_id: "interest:x".to_owned(),
                ..good
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn a_customer_account_is_a_liability_with_its_limit() {
        let account = input().validate().unwrap();
        assert_eq!(account.overdraft(), OverdraftPolicy::Forbidden);
        let opened = account.account(crate::domain::now());
        assert_eq!(opened.account_type, AccountType::Liability);
        assert!(opened.code.starts_with("customer:"));
        let limited = CustomerAccountInput {
            overdraft_limit: 500,
            ..input()
        }
        .validate()
        .unwrap();
        assert_eq!(limited.overdraft(), OverdraftPolicy::Limited(500));
        for bad in [
            CustomerAccountInput {
                account_id: "x".to_owned(),
                ..input()
            },
            CustomerAccountInput { state: None, ..input() },
            CustomerAccountInput { version: 0, ..input() },
            CustomerAccountInput {
                overdraft_limit: -1,
                ..input()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
