//! The entry a VAT result posts: debit the receivable of the currency for the total (the
//! transaction's gross amount), credit revenue for the base and the VAT-payable account of the
//! country for the tax. The sale is recognised when it is taxed, whether or not its money was
//! captured yet; cash (the settlement account) moves only with the payment's own capture and
//! refund ([`super::cash`], ADR 0016). A reversal swaps the lines of the sale that was booked
//! ([`TaxResult::reversal_of`]), never more. The entry id is derived from the transaction id, so a
//! transaction is posted once however many times its result is delivered or re-published.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fintech_types::{Country, Currency};
use uuid::Uuid;

use super::account::{Account, AccountType, OverdraftPolicy, SYSTEM_PREFIX};
use super::entry::{EntryInput, LineInput, MAX_METADATA_VALUE_LEN, NewEntry, PostedEntry, Side, is_metadata_value};

/// Longest transaction id accepted (the entry id `tax:<id>` must fit 128 characters).
pub const MAX_TRANSACTION_ID_LEN: usize = 100;

/// A VAT result as received from `tax.calculated`, before validation.
#[derive(Debug, Clone, Default)]
pub struct TaxResultInput {
    /// The payments transaction.
    pub transaction_id: String,
    /// Its order.
    pub order_id: String,
    /// The order's customer.
    pub customer_id: String,
    /// Taxable amount, minor units.
    pub base_amount: i64,
    /// VAT, minor units.
    pub tax_applied: i64,
    /// `base_amount + tax_applied`.
    pub total_amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// Product type.
    pub product_type: String,
    /// Rate in basis points.
    pub tax_rate_bps: i32,
    /// Rate table version.
    pub rule_version: String,
    /// Sale (`tax.calculated`) or reversal (`tax.reversed`).
    pub direction: Direction,
}

/// Whether a result posts a sale or reverses one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// `tax.calculated`: debit receivable, credit revenue and VAT payable.
    #[default]
    Sale,
    /// `tax.reversed` (the transaction failed or was refunded): the same lines, sides swapped.
    Reversal,
}

/// A VAT result that can be posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxResult {
    /// Sale or reversal.
    pub direction: Direction,
    /// The payments transaction (visible ASCII, at most 100 characters).
    pub transaction_id: String,
    /// Its order.
    pub order_id: String,
    /// The order's customer.
    pub customer_id: String,
    /// Taxable amount, >= 0.
    pub base_amount: i64,
    /// VAT, >= 0.
    pub tax_applied: i64,
    /// `base_amount + tax_applied`, > 0.
    pub total_amount: i64,
    /// Currency of all three.
    pub currency: Currency,
    /// Country whose VAT applied.
    pub country: Country,
    /// Product type.
    pub product_type: String,
    /// Rate in basis points.
    pub tax_rate_bps: i32,
    /// Rate table version.
    pub rule_version: String,
}

impl TaxResultInput {
    /// Validates the result; the error says why it can never be posted.
    pub fn validate(self) -> Result<TaxResult, String> {
        if self.transaction_id.is_empty()
            || self.transaction_id.len() > MAX_TRANSACTION_ID_LEN
            || !self.transaction_id.bytes().all(|byte| byte.is_ascii_graphic())
        {
            return Err(format!(
                "transaction_id must be 1-{MAX_TRANSACTION_ID_LEN} visible ASCII characters, got {:?}",
                self.transaction_id
            ));
        }
        // Copied into the entry's metadata: refused here, naming the field, rather than by the entry.
        for (field, value) in [
            ("order_id", &self.order_id),
            ("customer_id", &self.customer_id),
            ("product_type", &self.product_type),
            ("rule_version", &self.rule_version),
        ] {
            if !is_metadata_value(value) {
                return Err(format!(
                    "{field} must be at most {MAX_METADATA_VALUE_LEN} characters without NUL"
                ));
            }
        }
        if self.base_amount < 0 || self.tax_applied < 0 {
            return Err(format!(
                "amounts must not be negative (base {}, tax {})",
                self.base_amount, self.tax_applied
            ));
        }
        if self.base_amount.checked_add(self.tax_applied) != Some(self.total_amount) {
            return Err(format!(
                "total {} is not base {} + tax {}",
                self.total_amount, self.base_amount, self.tax_applied
            ));
        }
        if self.total_amount == 0 {
            return Err("nothing to post: the total is 0".to_owned());
        }
        let currency = Currency::parse(&self.currency).map_err(|error| format!("currency: {error}"))?;
        let country = Country::parse(&self.country).map_err(|error| format!("country: {error}"))?;
        Ok(TaxResult {
            direction: self.direction,
            transaction_id: self.transaction_id,
            order_id: self.order_id,
            customer_id: self.customer_id,
            base_amount: self.base_amount,
            tax_applied: self.tax_applied,
            total_amount: self.total_amount,
            currency,
            country,
            product_type: self.product_type,
            tax_rate_bps: self.tax_rate_bps,
            rule_version: self.rule_version,
        })
    }
}

/// An account the ledger opens itself the first time it needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemAccount {
    /// Its code (`system:…`).
    pub code: String,
    /// Display name.
    pub name: String,
    /// Type.
    pub account_type: AccountType,
    /// Currency.
    pub currency: Currency,
}

impl SystemAccount {
    /// The settlement account of `currency` (asset): money received from payment providers.
    pub fn settlement(currency: &Currency) -> Self {
        Self {
            code: format!("{SYSTEM_PREFIX}settlement:{currency}"),
            name: format!("Settlement {currency}"),
            account_type: AccountType::Asset,
            currency: currency.clone(),
        }
    }

    /// The receivable of `currency` (asset): sales recognised whose money has not been captured
    /// yet (a capture moves it to settlement, ADR 0016).
    pub fn receivable(currency: &Currency) -> Self {
        Self {
            code: format!("{SYSTEM_PREFIX}receivable:{currency}"),
            name: format!("Receivable {currency}"),
            account_type: AccountType::Asset,
            currency: currency.clone(),
        }
    }

    /// The interest the business pays on savings, in `currency` (expense), debited by every
    /// `accounts.interest_posted` entry.
    pub fn interest_expense(currency: &Currency) -> Self {
        Self {
            code: format!("{SYSTEM_PREFIX}interest-expense:{currency}"),
            name: format!("Interest expense {currency}"),
            account_type: AccountType::Expense,
            currency: currency.clone(),
        }
    }

    /// The revenue account of `currency`.
    pub fn revenue(currency: &Currency) -> Self {
        Self {
            code: format!("{SYSTEM_PREFIX}revenue:{currency}"),
            name: format!("Revenue {currency}"),
            account_type: AccountType::Revenue,
            currency: currency.clone(),
        }
    }

    /// The VAT owed to `country`, in `currency` (liability).
    pub fn vat_payable(country: &Country, currency: &Currency) -> Self {
        Self {
            code: format!("{SYSTEM_PREFIX}vat-payable:{country}:{currency}"),
            name: format!("VAT payable {country} {currency}"),
            account_type: AccountType::Liability,
            currency: currency.clone(),
        }
    }

    /// The account to open. System accounts have no overdraft limit: postings from events must
    /// never be refused for a balance, and the entries that move them are balanced.
    pub fn open(&self, now: DateTime<Utc>) -> Account {
        Account {
            account_id: Uuid::new_v4(),
            code: self.code.clone(),
            name: self.name.clone(),
            account_type: self.account_type,
            currency: self.currency.clone(),
            overdraft: OverdraftPolicy::Unlimited,
            system: true,
            created_at: now,
            customer: None,
        }
    }
}

impl TaxResult {
    /// The entry id of this transaction's posting (`tax:<id>`, or `tax-reversal:<id>`).
    pub fn entry_id(&self) -> String {
        match self.direction {
            Direction::Sale => format!("tax:{}", self.transaction_id),
            Direction::Reversal => format!("tax-reversal:{}", self.transaction_id),
        }
    }

    /// The entry id of the sale a reversal reverses.
    pub fn sale_entry_id(&self) -> String {
        format!("tax:{}", self.transaction_id)
    }

    /// The system accounts the posting needs.
    pub fn system_accounts(&self) -> Vec<SystemAccount> {
        let mut accounts = vec![SystemAccount::receivable(&self.currency)];
        if self.base_amount > 0 {
            accounts.push(SystemAccount::revenue(&self.currency));
        }
        if self.tax_applied > 0 {
            accounts.push(SystemAccount::vat_payable(&self.country, &self.currency));
        }
        accounts
    }

    /// The entry, given the ids of [`Self::system_accounts`] by code. Its content depends only
    /// on the result (never on delivery details), so a redelivery has the same fingerprint.
    pub fn entry(&self, account_ids: &BTreeMap<String, Uuid>) -> Result<NewEntry, String> {
        let id_of = |account: SystemAccount| {
            account_ids
                .get(&account.code)
                .copied()
                .ok_or_else(|| format!("system account {} was not opened", account.code))
        };
        let reversed = self.direction == Direction::Reversal;
        let line = |account_id: Uuid, side: Side, amount: i64| LineInput {
            account_id: account_id.to_string(),
            side: Ok(Some(match (side, reversed) {
                (side, false) => side,
                (Side::Debit, true) => Side::Credit,
                (Side::Credit, true) => Side::Debit,
            })),
            amount,
            currency: self.currency.as_str().to_owned(),
        };
        let mut lines = vec![line(
            id_of(SystemAccount::receivable(&self.currency))?,
            Side::Debit,
            self.total_amount,
        )];
        if self.base_amount > 0 {
            lines.push(line(
                id_of(SystemAccount::revenue(&self.currency))?,
                Side::Credit,
                self.base_amount,
            ));
        }
        if self.tax_applied > 0 {
            lines.push(line(
                id_of(SystemAccount::vat_payable(&self.country, &self.currency))?,
                Side::Credit,
                self.tax_applied,
            ));
        }
        self.entry_with_lines(lines)
    }

    /// The reversal of `sale`, the entry booked for this transaction's sale: its lines with sides
    /// swapped, so exactly what was booked is reversed (also a sale booked under older rules).
    /// Refused when the reversal's total is not the sale's.
    pub fn reversal_of(&self, sale: &PostedEntry) -> Result<NewEntry, String> {
        let booked: i64 = sale
            .lines
            .iter()
            .filter(|line| line.side == Side::Debit)
            .map(|line| line.amount)
            .sum();
        if booked != self.total_amount {
            return Err(format!(
                "reversal of {} is for {} but the sale booked {booked}",
                sale.entry_id, self.total_amount
            ));
        }
        let lines = sale
            .lines
            .iter()
            .map(|line| LineInput {
                account_id: line.account_id.to_string(),
                side: Ok(Some(match line.side {
                    Side::Debit => Side::Credit,
                    Side::Credit => Side::Debit,
                })),
                amount: line.amount,
                currency: line.currency.as_str().to_owned(),
            })
            .collect();
        self.entry_with_lines(lines)
    }

    fn entry_with_lines(&self, lines: Vec<LineInput>) -> Result<NewEntry, String> {
        let reversed = self.direction == Direction::Reversal;
        let metadata = BTreeMap::from([
            (
                "source".to_owned(),
                if reversed { "tax.reversed" } else { "tax.calculated" }.to_owned(),
            ),
            ("transaction_id".to_owned(), self.transaction_id.clone()),
            ("order_id".to_owned(), self.order_id.clone()),
            ("customer_id".to_owned(), self.customer_id.clone()),
            ("country".to_owned(), self.country.as_str().to_owned()),
            ("product_type".to_owned(), self.product_type.clone()),
            ("tax_rate_bps".to_owned(), self.tax_rate_bps.to_string()),
            ("rule_version".to_owned(), self.rule_version.clone()),
        ]);
        EntryInput {
            entry_id: self.entry_id(),
            description: if reversed {
                format!(
                    "reversal of sale with {} VAT, transaction {}",
                    self.country, self.transaction_id
                )
            } else {
                format!("sale with {} VAT, transaction {}", self.country, self.transaction_id)
            },
            metadata,
            lines,
        }
        .validate()
        .map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> TaxResultInput {
        TaxResultInput {
            transaction_id: "7d3b1c9e-3f4f-4a53-9f57-2f5d1b0b4c11".to_owned(),
            order_id: "order-1".to_owned(),
            customer_id: "cust-1".to_owned(),
            base_amount: 10_000,
            tax_applied: 1_900,
            total_amount: 11_900,
            currency: "EUR".to_owned(),
            country: "DE".to_owned(),
            product_type: "standard".to_owned(),
            tax_rate_bps: 1_900,
            rule_version: "2026-01".to_owned(),
            direction: Direction::Sale,
        }
    }

    /// The `ledger_events` fuzz target's finding for cash movements holds here too: text copied
    /// into the entry's metadata is checked when the result is read, naming the field.
    #[test]
    fn text_the_entry_cannot_carry_is_refused_when_read() {
        let error = TaxResultInput {
            customer_id: "cust\0one".to_owned(),
            ..input()
        }
        .validate()
        .unwrap_err();
        assert!(error.contains("customer_id"), "{error}");
        let error = TaxResultInput {
            order_id: "o".repeat(501),
            ..input()
        }
        .validate()
        .unwrap_err();
        assert!(error.contains("order_id"), "{error}");
    }

    #[test]
    fn a_reversal_posts_the_same_lines_with_sides_swapped_under_its_own_id() {
        let sale = input().validate().unwrap();
        let reversal = TaxResultInput {
            direction: Direction::Reversal,
            ..input()
        }
        .validate()
        .unwrap();
        assert_ne!(sale.entry_id(), reversal.entry_id());
        let accounts = ids(&sale);
        let sale_entry = sale.entry(&accounts).unwrap();
        let reversal_entry = reversal.entry(&accounts).unwrap();
        assert_eq!(sale_entry.lines.len(), reversal_entry.lines.len());
        for (sold, reversed) in sale_entry.lines.iter().zip(&reversal_entry.lines) {
            assert_eq!((sold.account_id, sold.amount), (reversed.account_id, reversed.amount));
            assert_ne!(sold.side, reversed.side);
        }
    }

    fn ids(result: &TaxResult) -> BTreeMap<String, Uuid> {
        result
            .system_accounts()
            .into_iter()
            .map(|account| (account.code, Uuid::new_v4()))
            .collect()
    }

    #[test]
    fn a_result_posts_total_against_base_and_tax() {
        let result = input().validate().unwrap();
        let accounts = ids(&result);
        let entry = result.entry(&accounts).unwrap();
        assert_eq!(entry.entry_id, "tax:7d3b1c9e-3f4f-4a53-9f57-2f5d1b0b4c11");
        let amounts: Vec<(Side, i64)> = entry.lines.iter().map(|line| (line.side, line.amount)).collect();
        assert_eq!(
            amounts,
            [(Side::Debit, 11_900), (Side::Credit, 10_000), (Side::Credit, 1_900)]
        );
        assert_eq!(entry.lines[2].account_id, accounts["system:vat-payable:DE:EUR"]);
        assert_eq!(entry.fingerprint(), result.entry(&accounts).unwrap().fingerprint());
    }

    #[test]
    fn an_exempt_sale_posts_two_lines() {
        let result = TaxResultInput {
            tax_applied: 0,
            total_amount: 10_000,
            ..input()
        }
        .validate()
        .unwrap();
        assert_eq!(result.system_accounts().len(), 2);
        assert_eq!(result.entry(&ids(&result)).unwrap().lines.len(), 2);
    }

    #[test]
    fn inconsistent_results_are_refused_with_a_reason() {
        for bad in [
            TaxResultInput {
                total_amount: 1,
                ..input()
            },
            TaxResultInput {
                base_amount: -1,
                ..input()
            },
            TaxResultInput {
                transaction_id: String::new(),
                ..input()
            },
            TaxResultInput {
                currency: "XXX1".to_owned(),
                ..input()
            },
            TaxResultInput {
                country: "ZZ".to_owned(),
                ..input()
            },
            TaxResultInput {
                base_amount: 0,
                tax_applied: 0,
                total_amount: 0,
                ..input()
            },
        ] {
            assert!(bad.clone().validate().is_err(), "{bad:?}");
        }
    }
}
