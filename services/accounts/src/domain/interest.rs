//! Savings interest: the effective-dated rate table, the daily accrual and the monthly posting.
//!
//! # Arithmetic (exact, no floats)
//! - **Day count actual/365 (fixed)**: a day's interest is `balance * rate_bps / 10000 / 365`,
//!   every day of every year (a leap year has 366 such days).
//! - **Units**: accruals are integers in units of `1 / (10000 * 365)` minor units
//!   ([`UNITS_PER_MINOR_UNIT`]), so a day's accrual is exactly `end_of_day_balance * rate_bps`
//!   ([`day_units`]), an `i128` (a balance of 10^17 at 10000 bps is 10^21 units). A day with a
//!   balance of zero or below accrues nothing.
//! - **End-of-day balance**: the ledger balance after the highest ledger stream version whose
//!   event occurred before the next midnight, UTC ([`end_of_day_balances`]).
//! - **Rounding rule [`ROUNDING_RULE`] (`floor-carry`)**: a posting is the floor of the units
//!   settled (the month's accruals plus the carry of the previous settlement) divided by
//!   [`UNITS_PER_MINOR_UNIT`]; the remainder (always `< UNITS_PER_MINOR_UNIT`, i.e. under one minor
//!   unit) is carried into the next month's settlement ([`settle`]). Nothing is ever rounded up,
//!   and nothing is lost while the account is open; the last carry of a closed account (under one
//!   minor unit) is forfeited.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use serde::Deserialize;

/// Units of accrual per minor unit: `10000` (basis points) times `365` (days of the fixed year).
pub const UNITS_PER_MINOR_UNIT: i128 = 10_000 * 365;
/// The name of the rounding rule of postings (see the module docs).
pub const ROUNDING_RULE: &str = "floor-carry";
/// Highest rate a table may hold: 100 % a year.
pub const MAX_RATE_BPS: u32 = 10_000;

/// The rate table shipped with the service.
pub const EMBEDDED_RATES_JSON: &str = include_str!("interest/rates.json");

/// A day's accrual in units: `balance * rate_bps` for a positive balance, 0 otherwise.
pub fn day_units(end_of_day_balance: i64, rate_bps: u32) -> i128 {
    if end_of_day_balance <= 0 {
        return 0;
    }
    i128::from(end_of_day_balance) * i128::from(rate_bps)
}

/// What a settlement posts and carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Minor units to post (floor).
    pub amount: i64,
    /// Units carried to the next settlement (`< UNITS_PER_MINOR_UNIT`).
    pub carry: i128,
}

/// Settles `units` (accruals plus the previous carry) by [`ROUNDING_RULE`]. `None` when the
/// amount would not fit a minor-unit count (more than 9.2 * 10^18), which no real balance reaches.
pub fn settle(units: i128) -> Option<Settlement> {
    let units = units.max(0);
    Some(Settlement {
        amount: i64::try_from(units / UNITS_PER_MINOR_UNIT).ok()?,
        carry: units % UNITS_PER_MINOR_UNIT,
    })
}

/// Accrued units shown as minor units (floor; the remainder is carried, not shown).
pub fn shown_minor_units(units: i128) -> i64 {
    i64::try_from(units.max(0) / UNITS_PER_MINOR_UNIT).unwrap_or(i64::MAX)
}

/// One point of an account's ledger stream: the balance after `version`, which occurred at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancePoint {
    /// Ledger stream version.
    pub version: i64,
    /// Balance after it.
    pub balance: i64,
    /// When its event occurred.
    pub at: DateTime<Utc>,
}

/// Midnight (UTC) at the start of `day`.
pub fn start_of_day(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// The end-of-day balance of every day from `first` to `last` (inclusive): for each day, the
/// balance of the highest-version point that occurred before the next midnight, or `opening`
/// (the balance before `first`) when none did. `points` may come in any order.
pub fn end_of_day_balances(
    opening: Option<BalancePoint>,
    points: &[BalancePoint],
    first: NaiveDate,
    last: NaiveDate,
) -> Vec<(NaiveDate, i64)> {
    let mut sorted: Vec<BalancePoint> = points.to_vec();
    sorted.sort_by_key(|point| point.at);
    let mut best = opening;
    let mut next = 0;
    let mut days = Vec::new();
    let mut day = first;
    while day <= last {
        let Some(following) = day.checked_add_days(Days::new(1)) else {
            break;
        };
        let end = start_of_day(following);
        while next < sorted.len() && sorted[next].at < end {
            if best.is_none_or(|known| sorted[next].version > known.version) {
                best = Some(sorted[next]);
            }
            next += 1;
        }
        days.push((day, best.map_or(0, |point| point.balance)));
        day = following;
    }
    days
}

/// The last day of `day`'s month.
pub fn month_end(day: NaiveDate) -> NaiveDate {
    let (year, month) = if day.month() == 12 {
        (day.year() + 1, 1)
    } else {
        (day.year(), day.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|first| first.pred_opt())
        .unwrap_or(day)
}

/// `YYYY-MM` of `day`.
pub fn period(day: NaiveDate) -> String {
    format!("{:04}-{:02}", day.year(), day.month())
}

/// The posting id of an account's month: `interest:<account_id>:<YYYY-MM>`.
pub fn posting_id(account_id: uuid::Uuid, period: &str) -> String {
    format!("interest:{account_id}:{period}")
}

/// Why a rate table was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateTableError {
    /// Not JSON of the expected shape.
    #[error("interest rate table: {0}")]
    Shape(String),
    /// A rate is wrong; `index` is its position in `rates`.
    #[error("interest rate table: rates[{index}]: {reason}")]
    Rate {
        /// Position in `rates`.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    rule_version: String,
    #[serde(default, rename = "description")]
    _description: Option<String>,
    rates: Vec<RawRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    currency: String,
    rate_bps: i64,
    effective_from: NaiveDate,
    #[serde(default)]
    effective_until: Option<NaiveDate>,
    #[serde(default, rename = "note")]
    _note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rate {
    rate_bps: u32,
    effective_from: NaiveDate,
    effective_until: Option<NaiveDate>,
}

impl Rate {
    fn in_effect_on(&self, day: NaiveDate) -> bool {
        self.effective_from <= day && self.effective_until.is_none_or(|until| day <= until)
    }

    fn overlaps(&self, other: &Rate) -> bool {
        other.effective_until.is_none_or(|until| self.effective_from <= until)
            && self.effective_until.is_none_or(|until| other.effective_from <= until)
    }
}

/// A validated, effective-dated table of annual savings rates per currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTable {
    rule_version: String,
    rates: HashMap<String, Vec<Rate>>,
}

impl RateTable {
    /// The table shipped in `interest/rates.json`, validated (the service refuses to start
    /// without a valid one).
    pub fn embedded() -> Result<Self, RateTableError> {
        Self::from_json(EMBEDDED_RATES_JSON)
    }

    /// Parses and validates a table: known ISO 4217 currencies, rates 0..=[`MAX_RATE_BPS`],
    /// `effective_from <= effective_until`, no two rates of a currency in effect on one day.
    pub fn from_json(json: &str) -> Result<Self, RateTableError> {
        let raw: RawTable = serde_json::from_str(json).map_err(|error| RateTableError::Shape(error.to_string()))?;
        if raw.rule_version.trim().is_empty() {
            return Err(RateTableError::Shape("rule_version must not be empty".to_owned()));
        }
        let mut rates: HashMap<String, Vec<Rate>> = HashMap::new();
        for (index, rate) in raw.rates.into_iter().enumerate() {
            let fail = |reason: String| RateTableError::Rate { index, reason };
            fintech_types::Currency::parse(&rate.currency).map_err(|error| fail(format!("currency {error}")))?;
            let rate_bps = u32::try_from(rate.rate_bps)
                .ok()
                .filter(|bps| *bps <= MAX_RATE_BPS)
                .ok_or_else(|| fail(format!("rate_bps must be 0 to {MAX_RATE_BPS}, got {}", rate.rate_bps)))?;
            if rate.effective_until.is_some_and(|until| until < rate.effective_from) {
                return Err(fail("effective_until is before effective_from".to_owned()));
            }
            let parsed = Rate {
                rate_bps,
                effective_from: rate.effective_from,
                effective_until: rate.effective_until,
            };
            let known = rates.entry(rate.currency.clone()).or_default();
            if known.iter().any(|other| other.overlaps(&parsed)) {
                return Err(fail(format!(
                    "overlaps another {} rate in effect on some of the same days",
                    rate.currency
                )));
            }
            known.push(parsed);
        }
        Ok(Self {
            rule_version: raw.rule_version,
            rates,
        })
    }

    /// The table's version label.
    pub fn rule_version(&self) -> &str {
        &self.rule_version
    }

    /// The annual rate of `currency` on `day` in basis points (0 when none is in force).
    pub fn rate_bps(&self, currency: &str, day: NaiveDate) -> u32 {
        self.rates
            .get(currency)
            .and_then(|rates| rates.iter().find(|rate| rate.in_effect_on(day)))
            .map_or(0, |rate| rate.rate_bps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn the_embedded_table_is_valid_and_dated() {
        let table = RateTable::embedded().unwrap();
        assert_eq!(table.rate_bps("EUR", day("2026-12-31")), 200);
        assert_eq!(table.rate_bps("EUR", day("2027-01-01")), 225);
        assert_eq!(table.rate_bps("EUR", day("2023-12-31")), 0, "before the table starts");
        assert_eq!(table.rate_bps("JPY", day("2027-01-01")), 0, "no rate for the currency");
    }

    #[test]
    fn bad_tables_are_refused_naming_the_rate() {
        let table = |rates: &str| RateTable::from_json(&format!(r#"{{"rule_version": "t", "rates": [{rates}]}}"#));
        let overlapping = table(
            r#"{"currency": "EUR", "rate_bps": 1, "effective_from": "2024-01-01"},
               {"currency": "EUR", "rate_bps": 2, "effective_from": "2025-01-01"}"#,
        );
        assert!(matches!(overlapping, Err(RateTableError::Rate { index: 1, .. })));
        let too_high = table(r#"{"currency": "EUR", "rate_bps": 10001, "effective_from": "2024-01-01"}"#);
        assert!(matches!(too_high, Err(RateTableError::Rate { index: 0, .. })));
        let negative = table(r#"{"currency": "EUR", "rate_bps": -1, "effective_from": "2024-01-01"}"#);
        assert!(matches!(negative, Err(RateTableError::Rate { index: 0, .. })));
        let currency = table(r#"{"currency": "EURO", "rate_bps": 1, "effective_from": "2024-01-01"}"#);
        assert!(matches!(currency, Err(RateTableError::Rate { index: 0, .. })));
        let backwards = table(
            r#"{"currency": "EUR", "rate_bps": 1, "effective_from": "2024-01-02", "effective_until": "2024-01-01"}"#,
        );
        assert!(matches!(backwards, Err(RateTableError::Rate { index: 0, .. })));
        let unknown_field = table(r#"{"currency": "EUR", "rate": 1, "effective_from": "2024-01-01"}"#);
        assert!(matches!(unknown_field, Err(RateTableError::Shape(_))));
        let adjacent = table(
            r#"{"currency": "EUR", "rate_bps": 1, "effective_from": "2024-01-01", "effective_until": "2024-12-31"},
               {"currency": "EUR", "rate_bps": 2, "effective_from": "2025-01-01"}"#,
        );
        assert!(adjacent.is_ok());
    }

    #[test]
    fn a_day_accrues_balance_times_rate_units_and_nothing_below_zero() {
        assert_eq!(day_units(1_000_000, 225), 225_000_000);
        assert_eq!(day_units(0, 225), 0);
        assert_eq!(day_units(-5, 225), 0);
        // The largest balance the ledger allows (10^17) at 100 % does not overflow.
        assert_eq!(
            day_units(100_000_000_000_000_000, 10_000),
            1_000_000_000_000_000_000_000
        );
        // A year of 365 days at 100 % is the balance itself, exactly.
        let year: i128 = (0..365).map(|_| day_units(123_456, 10_000)).sum();
        assert_eq!(
            settle(year),
            Some(Settlement {
                amount: 123_456,
                carry: 0
            })
        );
    }

    #[test]
    fn settling_floors_and_carries_the_remainder() {
        assert_eq!(
            settle(8_167_500_000),
            Some(Settlement {
                amount: 2237,
                carry: 2_450_000
            })
        );
        assert_eq!(
            settle(UNITS_PER_MINOR_UNIT - 1),
            Some(Settlement {
                amount: 0,
                carry: UNITS_PER_MINOR_UNIT - 1
            })
        );
        assert_eq!(shown_minor_units(UNITS_PER_MINOR_UNIT * 3 + 7), 3);
        // Twelve months of carries never lose a unit: the sum of postings plus the last carry is
        // the sum of the accruals.
        let mut carry = 0;
        let mut posted = 0i128;
        for month in 0..12 {
            let accrued = 1_234_567 + i128::from(month) * 99_991;
            let settlement = settle(accrued + carry).unwrap();
            posted += i128::from(settlement.amount) * UNITS_PER_MINOR_UNIT;
            carry = settlement.carry;
            assert!(carry < UNITS_PER_MINOR_UNIT);
        }
        let total: i128 = (0..12).map(|month| 1_234_567 + i128::from(month) * 99_991).sum();
        assert_eq!(posted + carry, total);
    }

    #[test]
    fn end_of_day_balances_take_the_highest_version_before_midnight_in_any_order() {
        let points = [
            BalancePoint {
                version: 4,
                balance: 300,
                at: at("2027-02-03T23:59:59Z"),
            },
            BalancePoint {
                version: 2,
                balance: 100,
                at: at("2027-02-02T10:00:00Z"),
            },
            BalancePoint {
                version: 3,
                balance: 200,
                at: at("2027-02-03T08:00:00Z"),
            },
            BalancePoint {
                version: 5,
                balance: 50,
                at: at("2027-02-05T00:00:00Z"),
            },
        ];
        let balances = end_of_day_balances(None, &points, day("2027-02-01"), day("2027-02-05"));
        assert_eq!(
            balances,
            [
                (day("2027-02-01"), 0),
                (day("2027-02-02"), 100),
                (day("2027-02-03"), 300),
                (day("2027-02-04"), 300),
                (day("2027-02-05"), 50),
            ]
        );
        let opening = BalancePoint {
            version: 9,
            balance: 7,
            at: at("2027-01-01T00:00:00Z"),
        };
        assert_eq!(
            end_of_day_balances(Some(opening), &[], day("2027-02-01"), day("2027-02-02")),
            [(day("2027-02-01"), 7), (day("2027-02-02"), 7)]
        );
    }

    #[test]
    fn months_and_periods() {
        assert_eq!(month_end(day("2027-02-10")), day("2027-02-28"));
        assert_eq!(month_end(day("2028-02-01")), day("2028-02-29"));
        assert_eq!(month_end(day("2026-12-02")), day("2026-12-31"));
        assert_eq!(period(day("2027-03-31")), "2027-03");
        assert_eq!(
            posting_id(uuid::Uuid::nil(), "2027-03"),
            format!("interest:{}:2027-03", uuid::Uuid::nil())
        );
    }
}
