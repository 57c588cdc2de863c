//! The VAT engine: a pure function of a versioned rate table, a country, a product type, a tax date and an amount.
//!
//! No I/O happens here. The rate table ships inside the binary ([`RateTable::embedded`]) and every result carries the
//! table's `rule_version`, so a `tax.calculated` event can always be traced back to the exact rules that produced it.
//!
//! # Rounding rule
//!
//! Amounts are `i64` counts of minor units (cents). Rates are basis points (`1900` = 19 %, `2550` = 25.5 %). Tax is
//! computed once per transaction with exact integer arithmetic in `i128`, then rounded **half away from zero** to a
//! whole minor unit:
//!
//! ```text
//! tax   = round_half_away_from_zero(amount * rate_bps, 10_000)
//! total = amount + tax
//! ```
//!
//! So 19 % of 50 = 9.5 becomes 10 and 25.5 % of 1 = 0.255 becomes 0. No floating point is involved anywhere, and a
//! total that does not fit in `i64` is [`VatError::AmountOutOfRange`], never a wrap or a panic.
//!
//! # Data format
//!
//! `vat/rates.json` (beside this file) is a JSON object with a `rule_version`, an optional free-text `description` and
//! a flat list of `rules`:
//!
//! ```json
//! {"country": "EE", "product_type": "standard", "reason": "standard_rate", "rate_bps": 2200,
//!  "effective_from": "2024-01-01", "effective_until": "2025-06-30"}
//! ```
//!
//! - `country`: an upper-case ISO 3166-1 alpha-2 code (Greece is `GR`, not the VIES prefix `EL`), or `*` for every
//!   country the table covers on that date. A wildcard rule cannot be a `standard_rate`.
//! - `product_type`: lower-case `[a-z][a-z0-9_]*`, e.g. `standard`, `books`, `crypto`, `financial_services`.
//! - `reason`: `standard_rate` (only and always for product type `standard`), `reduced_rate` (rate above 0),
//!   `exempt` or `zero_rated` (both rate 0; zero-rated keeps input VAT deductible, exempt does not).
//! - `rate_bps`: `0..=10000`.
//! - `effective_from` / `effective_until`: inclusive dates; no `effective_until` means open-ended.
//! - `note`: optional free text (legal basis, why a period is temporary); ignored by the engine.
//!
//! Unknown fields are rejected so that a misspelt `effective_until` cannot silently make a rule open-ended. The rules
//! for one `(country, product_type)`, counting `*` as every country, must not overlap in time, so at most one rule
//! applies to any transaction and the order of rules in the file does not matter.
//!
//! A country is *covered* on a date when it has a `standard` rule for that date; otherwise the result is
//! [`VatError::UnsupportedCountry`]. A product type other than `standard` needs a rule for that country (or `*`) on
//! that date; otherwise the result is [`VatError::UnsupportedProductType`]. Nothing falls back to a silent 0 %.
//!
//! # Adding a rate
//!
//! Edit `vat/rates.json` only:
//!
//! 1. A rate change: set `effective_until` on the current rule to the day before the change and add a rule with the
//!    new rate and `effective_from` on the day of the change. Keep the old rule: transactions are taxed on their tax
//!    date, and late or replayed events still need historical rates.
//! 2. A new country: add its `standard` rule; the `*` exemptions then apply to it automatically.
//! 3. A reduced, zero or exempt rate: add a rule for the `(country, product_type)`.
//! 4. Bump `rule_version` (e.g. `eu-vat-2026.1` to `eu-vat-2026.2`) and run `cargo test -p fintech-tax`, which parses
//!    and validates the embedded table.
//!
//! ```
//! use chrono::NaiveDate;
//! use fintech_tax::domain::vat::{RateTable, TaxReason};
//!
//! let tax_date = NaiveDate::from_ymd_opt(2026, 3, 1).expect("valid date");
//! let vat = RateTable::embedded().calculate("DE", "standard", tax_date, 10_000)?;
//! assert_eq!((vat.tax_applied, vat.total_amount, vat.reason), (1_900, 11_900, TaxReason::StandardRate));
//! # Ok::<(), fintech_tax::domain::vat::VatError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use chrono::NaiveDate;
use serde::Deserialize;

#[cfg(test)]
mod tests;

/// The rate table shipped with the service; validated by a unit test so that [`RateTable::embedded`] cannot fail.
const EMBEDDED_RATES_JSON: &str = include_str!("vat/rates.json");

/// Basis points in one whole (100 %).
const BPS_PER_UNIT: i128 = 10_000;

/// The product type whose rule defines a country's standard rate and therefore whether the country is covered.
const STANDARD_PRODUCT_TYPE: &str = "standard";

/// The `country` of a rule that applies to every covered country.
const ALL_COUNTRIES: &str = "*";

/// Divides `numerator` by `denominator` and rounds to the nearest integer, halves away from zero.
///
/// This is the one rounding rule of the VAT engine: `2.5 -> 3`, `-2.5 -> -3`, `2.49 -> 2`. Unlike banker's rounding
/// it does not depend on the parity of the result, and it is symmetric: `f(-n, d) == -f(n, d)`.
///
/// # Panics
///
/// Like integer division: when `denominator` is zero, or for `i128::MIN / -1`. The engine only divides by 10 000.
#[must_use]
pub fn round_half_away_from_zero(numerator: i128, denominator: i128) -> i128 {
    let quotient = numerator / denominator;
    let remainder_magnitude = (numerator % denominator).unsigned_abs();
    let denominator_magnitude = denominator.unsigned_abs();
    // `remainder * 2 >= denominator`, written so it cannot overflow (the remainder is below the denominator).
    if remainder_magnitude >= denominator_magnitude - remainder_magnitude {
        // The remainder is non-zero here, so the exact quotient lies strictly between `quotient` and the next
        // integer away from zero, whose sign is the sign of the exact quotient.
        if (numerator < 0) == (denominator < 0) {
            quotient + 1
        } else {
            quotient - 1
        }
    } else {
        quotient
    }
}

/// Why a rate applies to a transaction; reported with every result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaxReason {
    /// The country's standard rate.
    StandardRate,
    /// A reduced rate for the product type in that country.
    ReducedRate,
    /// Exempt from VAT: no tax, and no input VAT deduction for the seller.
    Exempt,
    /// Taxable at 0 %: no tax, but the seller keeps its input VAT deduction.
    ZeroRated,
}

impl TaxReason {
    /// The name used in the rate table and in events, e.g. `standard_rate`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StandardRate => "standard_rate",
            Self::ReducedRate => "reduced_rate",
            Self::Exempt => "exempt",
            Self::ZeroRated => "zero_rated",
        }
    }

    fn parse(input: &str) -> Option<Self> {
        [Self::StandardRate, Self::ReducedRate, Self::Exempt, Self::ZeroRated]
            .into_iter()
            .find(|reason| reason.as_str() == input)
    }
}

impl fmt::Display for TaxReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The VAT on one transaction. `total_amount == base_amount + tax_applied`, all in minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VatCalculation {
    /// The amount the tax was calculated on (net of VAT).
    pub base_amount: i64,
    /// The tax, rounded half away from zero to a whole minor unit.
    pub tax_applied: i64,
    /// `base_amount + tax_applied`.
    pub total_amount: i64,
    /// The rate applied, in basis points (`1900` = 19 %).
    pub tax_rate_bps: i32,
    /// Why that rate applies.
    pub reason: TaxReason,
    /// The version of the rate table that produced this result, so it can be audited and replayed.
    pub rule_version: String,
}

/// Everything that can go wrong in the VAT engine: an uncovered input, an amount out of range, or a bad rate table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VatError {
    /// The table has no standard rate for the country on the tax date.
    #[error("no VAT rate for country {country:?} on {tax_date}")]
    UnsupportedCountry {
        /// The country asked for.
        country: String,
        /// The tax date asked for.
        tax_date: NaiveDate,
    },
    /// The country is covered but the table has no rule for the product type there on the tax date.
    #[error("no VAT rule for product type {product_type:?} in country {country:?}")]
    UnsupportedProductType {
        /// The country asked for.
        country: String,
        /// The product type asked for.
        product_type: String,
    },
    /// The amount is zero or negative; VAT is calculated on positive amounts only.
    #[error("amount must be a positive number of minor units, got {amount}")]
    NonPositiveAmount {
        /// The amount given.
        amount: i64,
    },
    /// The amount plus its tax does not fit in an `i64` of minor units.
    #[error("amount {amount} plus tax at {tax_rate_bps} bps does not fit in 64-bit minor units")]
    AmountOutOfRange {
        /// The amount given.
        amount: i64,
        /// The rate that would have applied.
        tax_rate_bps: i32,
    },
    /// The rate table is not JSON of the expected shape, or a table-wide field is invalid.
    #[error("invalid VAT rate table: {message}")]
    InvalidRateTable {
        /// What is wrong, with the position in the JSON where serde knows it.
        message: String,
    },
    /// A rule's rate is outside `0..=10000` basis points.
    #[error("VAT rate table rule {rule}: rate {rate_bps} bps is outside 0..=10000")]
    RateOutOfRange {
        /// Index of the rule in `rules`, from 0.
        rule: usize,
        /// The rate found.
        rate_bps: i64,
    },
    /// A rule names a reason the engine does not know.
    #[error(
        "VAT rate table rule {rule}: unknown reason {reason:?}, expected standard_rate, reduced_rate, exempt or zero_rated"
    )]
    UnknownReason {
        /// Index of the rule in `rules`, from 0.
        rule: usize,
        /// The reason found.
        reason: String,
    },
    /// Two rules for the same country (or `*`) and product type are in effect on a common date.
    #[error(
        "VAT rate table rules {first_rule} and {second_rule} overlap in time for country {country:?}, product type {product_type:?}"
    )]
    OverlappingRules {
        /// The country of the first rule (`*` for all countries).
        country: String,
        /// The product type both rules are for.
        product_type: String,
        /// Index of the earlier rule in `rules`, from 0.
        first_rule: usize,
        /// Index of the later rule in `rules`, from 0.
        second_rule: usize,
    },
    /// A rule is inconsistent in some other way (malformed code, dates in the wrong order, reason and rate disagree).
    #[error("VAT rate table rule {rule}: {message}")]
    InvalidRule {
        /// Index of the rule in `rules`, from 0.
        rule: usize,
        /// What is wrong.
        message: String,
    },
}

/// The rate table as written in the data file, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateTable {
    rule_version: String,
    #[serde(default, rename = "description")]
    _description: Option<String>,
    rules: Vec<RawRule>,
}

/// One rule as written in the data file; `reason` and `rate_bps` are loose so validation can name what is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    country: String,
    product_type: String,
    reason: String,
    rate_bps: i64,
    effective_from: NaiveDate,
    #[serde(default)]
    effective_until: Option<NaiveDate>,
    #[serde(default, rename = "note")]
    _note: Option<String>,
}

/// A validated rule, stored under its country and product type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    reason: TaxReason,
    rate_bps: i32,
    effective_from: NaiveDate,
    /// Inclusive; `None` while the rule is still in force.
    effective_until: Option<NaiveDate>,
}

impl Rule {
    fn is_in_effect_on(&self, date: NaiveDate) -> bool {
        self.effective_from <= date && self.effective_until.is_none_or(|until| date <= until)
    }

    fn overlaps(&self, other: &Rule) -> bool {
        let self_starts_in_time = other.effective_until.is_none_or(|until| self.effective_from <= until);
        let other_starts_in_time = self.effective_until.is_none_or(|until| other.effective_from <= until);
        self_starts_in_time && other_starts_in_time
    }
}

/// A validated, versioned VAT rate table. Build it with [`RateTable::from_json`] or use [`RateTable::embedded`].
#[derive(Debug, Clone)]
pub struct RateTable {
    rule_version: String,
    /// Country code (or `*`) -> product type -> rules that never overlap in time.
    rules: HashMap<String, HashMap<String, Vec<Rule>>>,
}

impl RateTable {
    /// The table shipped in `vat/rates.json`, parsed and validated once per process.
    ///
    /// # Panics
    ///
    /// Only if the shipped data were invalid, which `cargo test` rules out before a build can ship.
    pub fn embedded() -> &'static RateTable {
        static EMBEDDED: OnceLock<RateTable> = OnceLock::new();
        EMBEDDED.get_or_init(|| {
            // Cannot fail in a build that passed its tests: `tests::embedded_table_is_valid` parses the same bytes.
            RateTable::from_json(EMBEDDED_RATES_JSON).expect("embedded VAT rate table is valid")
        })
    }

    /// Parses and validates a rate table in the format described in the [module docs](self).
    ///
    /// # Errors
    ///
    /// [`VatError::InvalidRateTable`] for JSON of the wrong shape (including unknown fields),
    /// [`VatError::RateOutOfRange`], [`VatError::UnknownReason`], [`VatError::OverlappingRules`] or
    /// [`VatError::InvalidRule`] for a bad rule, naming its index in `rules`.
    pub fn from_json(json: &str) -> Result<RateTable, VatError> {
        let raw: RawRateTable = serde_json::from_str(json).map_err(|error| VatError::InvalidRateTable {
            message: error.to_string(),
        })?;
        if raw.rule_version.trim().is_empty() || raw.rule_version.trim() != raw.rule_version {
            return Err(VatError::InvalidRateTable {
                message: format!(
                    "rule_version must be non-empty without surrounding spaces, got {:?}",
                    raw.rule_version
                ),
            });
        }
        if raw.rules.is_empty() {
            return Err(VatError::InvalidRateTable {
                message: "rules must not be empty".to_owned(),
            });
        }

        let validated = raw
            .rules
            .iter()
            .enumerate()
            .map(|(index, raw_rule)| validate_rule(index, raw_rule))
            .collect::<Result<Vec<Rule>, VatError>>()?;
        reject_overlaps(&raw.rules, &validated)?;

        let mut rules: HashMap<String, HashMap<String, Vec<Rule>>> = HashMap::new();
        for (raw_rule, rule) in raw.rules.iter().zip(validated) {
            rules
                .entry(raw_rule.country.clone())
                .or_default()
                .entry(raw_rule.product_type.clone())
                .or_default()
                .push(rule);
        }
        Ok(RateTable {
            rule_version: raw.rule_version,
            rules,
        })
    }

    /// The version of the rules, e.g. `eu-vat-2026.1`; also reported in every [`VatCalculation`].
    #[must_use]
    pub fn rule_version(&self) -> &str {
        &self.rule_version
    }

    /// The VAT on `amount` minor units of `product_type` sold in `country` (upper-case ISO 3166-1 alpha-2) on
    /// `tax_date`.
    ///
    /// # Errors
    ///
    /// [`VatError::NonPositiveAmount`] when `amount <= 0`; [`VatError::UnsupportedCountry`] when the table has no
    /// standard rate for the country on that date; [`VatError::UnsupportedProductType`] when it has no rule for the
    /// product type there; [`VatError::AmountOutOfRange`] when the total does not fit in an `i64`.
    pub fn calculate(
        &self,
        country: &str,
        product_type: &str,
        tax_date: NaiveDate,
        amount: i64,
    ) -> Result<VatCalculation, VatError> {
        let rule = self.rule_for(country, product_type, tax_date, amount)?;
        let base = i128::from(amount);
        let tax = round_half_away_from_zero(base * i128::from(rule.rate_bps), BPS_PER_UNIT);
        let out_of_range = || VatError::AmountOutOfRange {
            amount,
            tax_rate_bps: rule.rate_bps,
        };
        let tax_applied = i64::try_from(tax).map_err(|_| out_of_range())?;
        let total_amount = i64::try_from(base + tax).map_err(|_| out_of_range())?;
        Ok(VatCalculation {
            base_amount: amount,
            tax_applied,
            total_amount,
            tax_rate_bps: rule.rate_bps,
            reason: rule.reason,
            rule_version: self.rule_version.clone(),
        })
    }

    /// The VAT contained in a gross (VAT-inclusive) `gross` minor units: the money a transaction
    /// moved (ADR 0016). `tax = round_half_away_from_zero(gross * rate / (10 000 + rate))`, the base
    /// is the rest, so `base + tax == gross` exactly and nothing is created or lost by rounding.
    ///
    /// # Errors
    ///
    /// As [`Self::calculate`]; the amounts always fit because none exceeds `gross`.
    pub fn calculate_inclusive(
        &self,
        country: &str,
        product_type: &str,
        tax_date: NaiveDate,
        gross: i64,
    ) -> Result<VatCalculation, VatError> {
        let rule = self.rule_for(country, product_type, tax_date, gross)?;
        let rate = i128::from(rule.rate_bps);
        let tax = round_half_away_from_zero(i128::from(gross) * rate, BPS_PER_UNIT + rate);
        let tax_applied = i64::try_from(tax).map_err(|_| VatError::AmountOutOfRange {
            amount: gross,
            tax_rate_bps: rule.rate_bps,
        })?;
        Ok(VatCalculation {
            base_amount: gross - tax_applied,
            tax_applied,
            total_amount: gross,
            tax_rate_bps: rule.rate_bps,
            reason: rule.reason,
            rule_version: self.rule_version.clone(),
        })
    }

    /// The rule that applies to `product_type` in `country` on `tax_date`, for a positive `amount`.
    fn rule_for(&self, country: &str, product_type: &str, tax_date: NaiveDate, amount: i64) -> Result<&Rule, VatError> {
        if amount <= 0 {
            return Err(VatError::NonPositiveAmount { amount });
        }
        // A wildcard rule must not make an unknown country look covered, so coverage comes from the standard rate.
        let standard_rule = self
            .rule_in_effect(country, STANDARD_PRODUCT_TYPE, tax_date)
            .ok_or_else(|| VatError::UnsupportedCountry {
                country: country.to_owned(),
                tax_date,
            })?;
        if product_type == STANDARD_PRODUCT_TYPE {
            return Ok(standard_rule);
        }
        // Validation guarantees that at most one of these is in effect.
        self.rule_in_effect(country, product_type, tax_date)
            .or_else(|| self.rule_in_effect(ALL_COUNTRIES, product_type, tax_date))
            .ok_or_else(|| VatError::UnsupportedProductType {
                country: country.to_owned(),
                product_type: product_type.to_owned(),
            })
    }

    fn rule_in_effect(&self, country: &str, product_type: &str, date: NaiveDate) -> Option<&Rule> {
        self.rules
            .get(country)?
            .get(product_type)?
            .iter()
            .find(|rule| rule.is_in_effect_on(date))
    }
}

fn validate_rule(index: usize, raw: &RawRule) -> Result<Rule, VatError> {
    let invalid = |message: String| VatError::InvalidRule { rule: index, message };

    let is_wildcard = raw.country == ALL_COUNTRIES;
    let is_country_code = raw.country.len() == 2 && raw.country.bytes().all(|byte| byte.is_ascii_uppercase());
    if !is_wildcard && !is_country_code {
        return Err(invalid(format!(
            "country must be an upper-case ISO 3166-1 alpha-2 code or \"*\", got {:?}",
            raw.country
        )));
    }
    let product_type_is_well_formed = raw
        .product_type
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_lowercase())
        && raw
            .product_type
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if !product_type_is_well_formed {
        return Err(invalid(format!(
            "product_type must match [a-z][a-z0-9_]*, got {:?}",
            raw.product_type
        )));
    }
    let reason = TaxReason::parse(&raw.reason).ok_or_else(|| VatError::UnknownReason {
        rule: index,
        reason: raw.reason.clone(),
    })?;
    let rate_bps = i32::try_from(raw.rate_bps)
        .ok()
        .filter(|rate| (0..=10_000).contains(rate))
        .ok_or(VatError::RateOutOfRange {
            rule: index,
            rate_bps: raw.rate_bps,
        })?;
    if let Some(until) = raw.effective_until
        && until < raw.effective_from
    {
        return Err(invalid(format!(
            "effective_until {until} is before effective_from {}",
            raw.effective_from
        )));
    }

    let is_standard_product = raw.product_type == STANDARD_PRODUCT_TYPE;
    if is_standard_product != (reason == TaxReason::StandardRate) {
        return Err(invalid(format!(
            "reason standard_rate goes with product type standard and only with it, got {reason} for {:?}",
            raw.product_type
        )));
    }
    if is_standard_product && is_wildcard {
        return Err(invalid("a standard rate must name its country, not \"*\"".to_owned()));
    }
    match reason {
        TaxReason::StandardRate | TaxReason::ReducedRate if rate_bps == 0 => Err(invalid(format!(
            "{reason} must be above 0 bps; use zero_rated or exempt for 0 %"
        ))),
        TaxReason::Exempt | TaxReason::ZeroRated if rate_bps != 0 => {
            Err(invalid(format!("{reason} must have rate_bps 0, got {rate_bps}")))
        }
        _ => Ok(Rule {
            reason,
            rate_bps,
            effective_from: raw.effective_from,
            effective_until: raw.effective_until,
        }),
    }
}

/// Rejects two rules for the same product type in effect on a common date for the same country, a `*` rule counting
/// as every country. Quadratic, which is fine for a table of a few hundred rules parsed once.
fn reject_overlaps(raw_rules: &[RawRule], rules: &[Rule]) -> Result<(), VatError> {
    for (first_index, (first_raw, first)) in raw_rules.iter().zip(rules).enumerate() {
        for (second_offset, (second_raw, second)) in raw_rules[first_index + 1..]
            .iter()
            .zip(&rules[first_index + 1..])
            .enumerate()
        {
            let same_country = first_raw.country == second_raw.country
                || first_raw.country == ALL_COUNTRIES
                || second_raw.country == ALL_COUNTRIES;
            if same_country && first_raw.product_type == second_raw.product_type && first.overlaps(second) {
                // Name the specific country when one side is a wildcard: that is the rule a reader goes to fix.
                let country = if first_raw.country == ALL_COUNTRIES {
                    &second_raw.country
                } else {
                    &first_raw.country
                };
                return Err(VatError::OverlappingRules {
                    country: country.clone(),
                    product_type: first_raw.product_type.clone(),
                    first_rule: first_index,
                    second_rule: first_index + 1 + second_offset,
                });
            }
        }
    }
    Ok(())
}
