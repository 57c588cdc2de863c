use chrono::{Days, NaiveDate};
use proptest::prelude::*;

use super::*;

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid test date")
}

fn table() -> &'static RateTable {
    RateTable::embedded()
}

/// Published standard rates in force in 2026, written out independently of the data file.
const EU_STANDARD_RATES_2026: [(&str, i32); 27] = [
    ("AT", 2000),
    ("BE", 2100),
    ("BG", 2000),
    ("HR", 2500),
    ("CY", 1900),
    ("CZ", 2100),
    ("DK", 2500),
    ("EE", 2400),
    ("FI", 2550),
    ("FR", 2000),
    ("DE", 1900),
    ("GR", 2400),
    ("HU", 2700),
    ("IE", 2300),
    ("IT", 2200),
    ("LV", 2100),
    ("LT", 2100),
    ("LU", 1700),
    ("MT", 1800),
    ("NL", 2100),
    ("PL", 2300),
    ("PT", 2300),
    ("RO", 2100),
    ("SK", 2300),
    ("SI", 2200),
    ("ES", 2100),
    ("SE", 2500),
];

const EU_COUNTRIES: [&str; 27] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT",
    "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

fn tax_on(country: &str, product_type: &str, tax_date: NaiveDate, amount: i64) -> (i64, i32, TaxReason) {
    let vat = table()
        .calculate(country, product_type, tax_date, amount)
        .expect("covered");
    (vat.tax_applied, vat.tax_rate_bps, vat.reason)
}

// ---- the embedded table -------------------------------------------------------------------------------------------

#[test]
fn embedded_table_is_valid() {
    // Parses the same bytes as `RateTable::embedded`, but reports the error instead of panicking inside OnceLock.
    let parsed = RateTable::from_json(EMBEDDED_RATES_JSON);
    assert!(parsed.is_ok(), "embedded rates.json is invalid: {parsed:?}");
    assert_eq!(table().rule_version(), "eu-vat-2026.1");
}

#[test]
fn every_eu_member_state_has_its_published_standard_rate_in_2026() {
    for (country, rate_bps) in EU_STANDARD_RATES_2026 {
        let vat = table()
            .calculate(country, "standard", date(2026, 6, 15), 10_000)
            .expect(country);
        let expected = VatCalculation {
            base_amount: 10_000,
            tax_applied: i64::from(rate_bps),
            total_amount: 10_000 + i64::from(rate_bps),
            tax_rate_bps: rate_bps,
            reason: TaxReason::StandardRate,
            rule_version: "eu-vat-2026.1".to_owned(),
        };
        assert_eq!(vat, expected, "{country}");
    }
}

#[test]
fn eu_standard_rates_spot_check_on_non_round_amounts() {
    let on = date(2026, 1, 1);
    // 25.5 % of 12 345 = 3 147.975 -> 3 148; 17 % of 12 345 = 2 098.65 -> 2 099; 27 % of 12 345 = 3 333.15 -> 3 333.
    assert_eq!(tax_on("FI", "standard", on, 12_345).0, 3_148);
    assert_eq!(tax_on("LU", "standard", on, 12_345).0, 2_099);
    assert_eq!(tax_on("HU", "standard", on, 12_345).0, 3_333);
}

#[test]
fn the_embedded_table_covers_every_member_state_on_every_day_from_2020_to_2030() {
    let mut day = date(2020, 1, 1);
    while day <= date(2030, 12, 31) {
        for country in EU_COUNTRIES {
            for product_type in ["standard", "crypto", "financial_services"] {
                let result = table().calculate(country, product_type, day, 10_000);
                assert!(result.is_ok(), "{country} {product_type} {day}: {result:?}");
            }
        }
        day = day + Days::new(1);
    }
}

#[test]
fn coverage_starts_in_2020() {
    assert_eq!(
        table().calculate("DE", "standard", date(2019, 12, 31), 100),
        Err(VatError::UnsupportedCountry {
            country: "DE".to_owned(),
            tax_date: date(2019, 12, 31)
        })
    );
}

// ---- effective dates ----------------------------------------------------------------------------------------------

#[test]
fn estonia_moves_from_22_to_24_percent_on_2025_07_01() {
    assert_eq!(tax_on("EE", "standard", date(2023, 12, 31), 10_000).1, 2000);
    assert_eq!(tax_on("EE", "standard", date(2024, 1, 1), 10_000).1, 2200);
    assert_eq!(
        tax_on("EE", "standard", date(2025, 6, 30), 10_000),
        (2200, 2200, TaxReason::StandardRate)
    );
    assert_eq!(
        tax_on("EE", "standard", date(2025, 7, 1), 10_000),
        (2400, 2400, TaxReason::StandardRate)
    );
}

#[test]
fn slovakia_moves_from_20_to_23_percent_on_2025_01_01() {
    assert_eq!(
        tax_on("SK", "standard", date(2024, 12, 31), 10_000),
        (2000, 2000, TaxReason::StandardRate)
    );
    assert_eq!(
        tax_on("SK", "standard", date(2025, 1, 1), 10_000),
        (2300, 2300, TaxReason::StandardRate)
    );
}

#[test]
fn romania_moves_from_19_to_21_percent_on_2025_08_01() {
    assert_eq!(
        tax_on("RO", "standard", date(2025, 7, 31), 10_000),
        (1900, 1900, TaxReason::StandardRate)
    );
    assert_eq!(
        tax_on("RO", "standard", date(2025, 8, 1), 10_000),
        (2100, 2100, TaxReason::StandardRate)
    );
}

#[test]
fn finland_moves_from_24_to_25_5_percent_on_2024_09_01() {
    assert_eq!(
        tax_on("FI", "standard", date(2024, 8, 31), 10_000),
        (2400, 2400, TaxReason::StandardRate)
    );
    assert_eq!(
        tax_on("FI", "standard", date(2024, 9, 1), 10_000),
        (2550, 2550, TaxReason::StandardRate)
    );
}

#[test]
fn temporary_cuts_apply_only_inside_their_period() {
    assert_eq!(tax_on("DE", "standard", date(2020, 6, 30), 10_000).1, 1900);
    assert_eq!(tax_on("DE", "standard", date(2020, 7, 1), 10_000).1, 1600);
    assert_eq!(tax_on("DE", "standard", date(2020, 12, 31), 10_000).1, 1600);
    assert_eq!(tax_on("DE", "standard", date(2021, 1, 1), 10_000).1, 1900);
    assert_eq!(tax_on("IE", "standard", date(2020, 9, 1), 10_000).1, 2100);
    assert_eq!(tax_on("IE", "standard", date(2021, 2, 28), 10_000).1, 2100);
    assert_eq!(tax_on("IE", "standard", date(2021, 3, 1), 10_000).1, 2300);
    assert_eq!(tax_on("LU", "standard", date(2022, 12, 31), 10_000).1, 1700);
    assert_eq!(tax_on("LU", "standard", date(2023, 6, 1), 10_000).1, 1600);
    assert_eq!(tax_on("LU", "standard", date(2024, 1, 1), 10_000).1, 1700);
}

// ---- exemptions, reduced and zero rates ---------------------------------------------------------------------------

#[test]
fn crypto_and_financial_services_are_exempt_in_every_member_state() {
    for country in EU_COUNTRIES {
        for product_type in ["crypto", "financial_services"] {
            let vat = table()
                .calculate(country, product_type, date(2026, 2, 1), 123_456)
                .expect(country);
            assert_eq!(
                (vat.tax_applied, vat.total_amount, vat.tax_rate_bps, vat.reason),
                (0, 123_456, 0, TaxReason::Exempt),
                "{country} {product_type}"
            );
        }
    }
}

#[test]
fn reduced_and_zero_rates_for_books() {
    assert_eq!(
        tax_on("DE", "books", date(2026, 1, 1), 10_000),
        (700, 700, TaxReason::ReducedRate)
    );
    assert_eq!(
        tax_on("DE", "books", date(2020, 8, 1), 10_000),
        (500, 500, TaxReason::ReducedRate)
    );
    assert_eq!(
        tax_on("FR", "books", date(2026, 1, 1), 10_000),
        (550, 550, TaxReason::ReducedRate)
    );
    assert_eq!(
        tax_on("IE", "books", date(2026, 1, 1), 10_000),
        (0, 0, TaxReason::ZeroRated)
    );
}

// ---- what the table does not cover --------------------------------------------------------------------------------

#[test]
fn an_uncovered_country_is_an_error_naming_it() {
    let on = date(2026, 1, 1);
    for country in ["US", "GB", "CH", "EL", "de", "", "*"] {
        assert_eq!(
            table().calculate(country, "standard", on, 100),
            Err(VatError::UnsupportedCountry {
                country: country.to_owned(),
                tax_date: on
            }),
        );
    }
    // Exemptions listed for every country do not make an unknown country covered.
    assert_eq!(
        table().calculate("US", "crypto", on, 100),
        Err(VatError::UnsupportedCountry {
            country: "US".to_owned(),
            tax_date: on
        })
    );
}

#[test]
fn an_uncovered_product_type_is_an_error_naming_it() {
    let on = date(2026, 1, 1);
    assert_eq!(
        table().calculate("DE", "spaceships", on, 100),
        Err(VatError::UnsupportedProductType {
            country: "DE".to_owned(),
            product_type: "spaceships".to_owned()
        })
    );
    // A reduced rate in one country does not leak into another.
    assert_eq!(
        table().calculate("AT", "books", on, 100),
        Err(VatError::UnsupportedProductType {
            country: "AT".to_owned(),
            product_type: "books".to_owned()
        })
    );
    // Nor outside its period: Irish books are zero-rated only from 2022-05-01 in this table.
    assert_eq!(
        table().calculate("IE", "books", date(2022, 4, 30), 100),
        Err(VatError::UnsupportedProductType {
            country: "IE".to_owned(),
            product_type: "books".to_owned()
        })
    );
    let message = table().calculate("DE", "spaceships", on, 100).unwrap_err().to_string();
    assert!(message.contains("spaceships") && message.contains("DE"), "{message}");
}

#[test]
fn non_positive_amounts_are_rejected() {
    for amount in [0, -1, i64::MIN] {
        assert_eq!(
            table().calculate("DE", "standard", date(2026, 1, 1), amount),
            Err(VatError::NonPositiveAmount { amount })
        );
    }
}

// ---- rounding -----------------------------------------------------------------------------------------------------

#[test]
fn rounding_goes_half_away_from_zero() {
    let cases: [(i128, i128, i128); 14] = [
        (5, 10, 1),
        (15, 10, 2),
        (25, 10, 3),
        (4, 10, 0),
        (6, 10, 1),
        (-5, 10, -1),
        (-25, 10, -3),
        (-4, 10, 0),
        (5, -10, -1),
        (-5, -10, 1),
        (0, 7, 0),
        (20, 10, 2),
        (2, 3, 1),
        (1, 3, 0),
    ];
    for (numerator, denominator, expected) in cases {
        assert_eq!(
            round_half_away_from_zero(numerator, denominator),
            expected,
            "{numerator}/{denominator}"
        );
    }
    assert_eq!(round_half_away_from_zero(i128::MAX, 2), i128::MAX / 2 + 1);
    assert_eq!(round_half_away_from_zero(i128::MIN, 2), i128::MIN / 2);
    assert_eq!(round_half_away_from_zero(i128::MAX, i128::MAX), 1);
    assert_eq!(round_half_away_from_zero(i128::MIN + 1, i128::MAX), -1);
}

#[test]
fn vat_rounding_edge_cases() {
    let on = date(2026, 1, 1);
    // 25.5 % of 1 = 0.255 -> 0; of 2 = 0.51 -> 1; of 10 = 2.55 -> 3; of 200 = 51 exactly.
    assert_eq!(tax_on("FI", "standard", on, 1).0, 0);
    assert_eq!(tax_on("FI", "standard", on, 2).0, 1);
    assert_eq!(tax_on("FI", "standard", on, 10).0, 3);
    assert_eq!(tax_on("FI", "standard", on, 200).0, 51);
    // Exact halves round up: 19 % of 50 = 9.5 -> 10; 21 % of 50 = 10.5 -> 11; 19 % of 150 = 28.5 -> 29.
    assert_eq!(tax_on("DE", "standard", on, 50).0, 10);
    assert_eq!(tax_on("NL", "standard", on, 50).0, 11);
    assert_eq!(tax_on("DE", "standard", on, 150).0, 29);
    // 5 % of 10 = 0.5 -> 1 (German books in the second half of 2020): a half never rounds to even.
    assert_eq!(tax_on("DE", "books", date(2020, 9, 1), 10).0, 1);
    // 5.5 % of 9 = 0.495 -> 0; 19 % of 2 = 0.38 -> 0; 19 % of 3 = 0.57 -> 1.
    assert_eq!(tax_on("FR", "books", on, 9).0, 0);
    assert_eq!(tax_on("DE", "standard", on, 2).0, 0);
    assert_eq!(tax_on("DE", "standard", on, 3).0, 1);
}

// ---- overflow -----------------------------------------------------------------------------------------------------

#[test]
fn a_total_beyond_i64_is_an_error_not_a_wrap() {
    let on = date(2026, 1, 1);
    assert_eq!(
        table().calculate("DE", "standard", on, i64::MAX),
        Err(VatError::AmountOutOfRange {
            amount: i64::MAX,
            tax_rate_bps: 1900
        })
    );
    // The largest amount whose 19 % total still fits, and the next one.
    let largest = i64::try_from(i128::from(i64::MAX) * 10_000 / 11_900).expect("below i64::MAX");
    let fits = table().calculate("DE", "standard", on, largest).expect("fits");
    assert_eq!(fits.total_amount, fits.base_amount + fits.tax_applied);
    assert!(matches!(
        table().calculate("DE", "standard", on, largest + 1),
        Err(VatError::AmountOutOfRange { .. })
    ));
    // With no tax the total is the amount, so the largest amount is fine.
    assert_eq!(
        table()
            .calculate("DE", "crypto", on, i64::MAX)
            .expect("exempt")
            .total_amount,
        i64::MAX
    );
}

// ---- from_json validation -----------------------------------------------------------------------------------------

fn table_with(rules: &str) -> Result<RateTable, VatError> {
    RateTable::from_json(&format!(r#"{{"rule_version": "test-1", "rules": [{rules}]}}"#))
}

const DE_STANDARD: &str = r#"{"country": "DE", "product_type": "standard", "reason": "standard_rate", "rate_bps": 1900, "effective_from": "2021-01-01"}"#;

#[test]
fn a_minimal_table_works_and_reports_its_version() {
    let minimal = table_with(DE_STANDARD).expect("valid");
    assert_eq!(minimal.rule_version(), "test-1");
    let vat = minimal
        .calculate("DE", "standard", date(2030, 1, 1), 100)
        .expect("covered");
    assert_eq!(vat.rule_version, "test-1");
    assert_eq!(vat.tax_applied, 19);
}

#[test]
fn overlapping_rules_are_rejected() {
    let overlapping = r#"{"country": "DE", "product_type": "standard", "reason": "standard_rate", "rate_bps": 1600, "effective_from": "2020-07-01", "effective_until": "2021-01-01"}"#;
    assert_eq!(
        table_with(&format!("{DE_STANDARD}, {overlapping}")).unwrap_err(),
        VatError::OverlappingRules {
            country: "DE".to_owned(),
            product_type: "standard".to_owned(),
            first_rule: 0,
            second_rule: 1,
        }
    );
    // Touching but not overlapping is fine: until is inclusive, so the next rule starts the day after.
    let adjacent = overlapping.replace("2021-01-01", "2020-12-31");
    assert!(table_with(&format!("{DE_STANDARD}, {adjacent}")).is_ok());
    // Two open-ended rules always overlap.
    let open_ended = DE_STANDARD.replace("2021-01-01", "2030-01-01");
    assert!(matches!(
        table_with(&format!("{DE_STANDARD}, {open_ended}")),
        Err(VatError::OverlappingRules {
            first_rule: 0,
            second_rule: 1,
            ..
        })
    ));
}

#[test]
fn a_country_rule_overlapping_a_wildcard_rule_is_rejected() {
    let everywhere = r#"{"country": "*", "product_type": "crypto", "reason": "exempt", "rate_bps": 0, "effective_from": "2020-01-01"}"#;
    let in_germany = r#"{"country": "DE", "product_type": "crypto", "reason": "reduced_rate", "rate_bps": 700, "effective_from": "2025-01-01"}"#;
    assert_eq!(
        table_with(&format!("{DE_STANDARD}, {everywhere}, {in_germany}")).unwrap_err(),
        VatError::OverlappingRules {
            country: "DE".to_owned(),
            product_type: "crypto".to_owned(),
            first_rule: 1,
            second_rule: 2,
        }
    );
}

#[test]
fn rates_outside_0_to_10000_bps_are_rejected() {
    for rate_bps in [-1_i64, 10_001, i64::from(i32::MAX) + 1] {
        let rule = DE_STANDARD.replace("1900", &rate_bps.to_string());
        assert_eq!(
            table_with(&rule).unwrap_err(),
            VatError::RateOutOfRange { rule: 0, rate_bps }
        );
    }
    let full = DE_STANDARD.replace("1900", "10000");
    assert_eq!(
        table_with(&full)
            .expect("100 % is allowed")
            .calculate("DE", "standard", date(2026, 1, 1), 7)
            .unwrap()
            .tax_applied,
        7
    );
}

#[test]
fn unknown_reasons_are_rejected() {
    let rule = DE_STANDARD.replace("standard_rate", "super_reduced");
    assert_eq!(
        table_with(&rule).unwrap_err(),
        VatError::UnknownReason {
            rule: 0,
            reason: "super_reduced".to_owned()
        }
    );
}

#[test]
fn inconsistent_rules_are_rejected() {
    let rejected = [
        // Dates in the wrong order.
        DE_STANDARD.replace(r#""effective_from": "2021-01-01""#, r#""effective_from": "2021-01-01", "effective_until": "2020-12-31""#),
        // Malformed country and product type.
        DE_STANDARD.replace(r#""DE""#, r#""de""#),
        DE_STANDARD.replace(r#""DE""#, r#""DEU""#),
        DE_STANDARD.replace(r#""product_type": "standard""#, r#""product_type": "Standard""#),
        // A standard rate that is not for product type standard, or the other way round.
        DE_STANDARD.replace(r#""product_type": "standard""#, r#""product_type": "books""#),
        DE_STANDARD.replace("standard_rate", "reduced_rate"),
        // A wildcard standard rate.
        DE_STANDARD.replace(r#""DE""#, r#""*""#),
        // Zero where a rate is required, non-zero where none is allowed.
        DE_STANDARD.replace("1900", "0"),
        r#"{"country": "DE", "product_type": "crypto", "reason": "exempt", "rate_bps": 100, "effective_from": "2021-01-01"}"#.to_owned(),
        r#"{"country": "DE", "product_type": "books", "reason": "zero_rated", "rate_bps": 700, "effective_from": "2021-01-01"}"#.to_owned(),
        r#"{"country": "DE", "product_type": "books", "reason": "reduced_rate", "rate_bps": 0, "effective_from": "2021-01-01"}"#.to_owned(),
    ];
    for rule in rejected {
        assert!(
            matches!(table_with(&rule), Err(VatError::InvalidRule { rule: 0, .. })),
            "{rule}"
        );
    }
}

#[test]
fn malformed_tables_are_rejected() {
    let rejected = [
        "not json".to_owned(),
        r#"{"rules": []}"#.to_owned(),
        r#"{"rule_version": "v1", "rules": []}"#.to_owned(),
        format!(r#"{{"rule_version": "", "rules": [{DE_STANDARD}]}}"#),
        format!(r#"{{"rule_version": " v1", "rules": [{DE_STANDARD}]}}"#),
        format!(r#"{{"rule_version": "v1", "rulez": [{DE_STANDARD}]}}"#),
        // A misspelt field must not silently make the rule open-ended.
        format!(
            r#"{{"rule_version": "v1", "rules": [{}]}}"#,
            DE_STANDARD.replace('}', r#", "effective_untill": "2022-01-01"}"#)
        ),
        format!(
            r#"{{"rule_version": "v1", "rules": [{}]}}"#,
            DE_STANDARD.replace("2021-01-01", "2021-02-30")
        ),
    ];
    for json in rejected {
        assert!(
            matches!(RateTable::from_json(&json), Err(VatError::InvalidRateTable { .. })),
            "{json}"
        );
    }
}

// ---- properties ---------------------------------------------------------------------------------------------------

fn any_country() -> impl Strategy<Value = &'static str> {
    prop::sample::select(EU_COUNTRIES.to_vec())
}

fn any_product_type() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["standard", "crypto", "financial_services"])
}

fn any_covered_date() -> impl Strategy<Value = NaiveDate> {
    (0_u64..(366 * 11)).prop_map(|offset| date(2020, 1, 1) + Days::new(offset))
}

/// Amounts whose total cannot overflow: at most half of `i64::MAX`, and rates are at most 100 %.
fn any_safe_amount() -> impl Strategy<Value = i64> {
    prop_oneof![1_i64..=100_000, 1_i64..=i64::MAX / 2]
}

proptest! {
    #[test]
    fn tax_is_the_exact_rate_rounded_to_within_half_a_minor_unit(
        country in any_country(),
        product_type in any_product_type(),
        tax_date in any_covered_date(),
        amount in any_safe_amount(),
    ) {
        let vat = table().calculate(country, product_type, tax_date, amount).expect("covered");
        prop_assert_eq!(vat.base_amount, amount);
        prop_assert!(vat.tax_applied >= 0);
        prop_assert_eq!(vat.total_amount, vat.base_amount + vat.tax_applied);
        // |tax - amount * rate / 10000| <= 1/2, multiplied through by 2 * 10000 to stay exact.
        let exact_times_10000 = i128::from(amount) * i128::from(vat.tax_rate_bps);
        let error_times_10000 = (i128::from(vat.tax_applied) * 10_000 - exact_times_10000).abs();
        prop_assert!(error_times_10000 * 2 <= 10_000, "tax {} for {} at {} bps", vat.tax_applied, amount, vat.tax_rate_bps);
        prop_assert_eq!(vat.rule_version.as_str(), "eu-vat-2026.1");
    }

    #[test]
    fn exempt_means_no_tax(country in any_country(), tax_date in any_covered_date(), amount in 1_i64..=i64::MAX) {
        for product_type in ["crypto", "financial_services"] {
            let vat = table().calculate(country, product_type, tax_date, amount).expect("covered");
            prop_assert_eq!(vat.reason, TaxReason::Exempt);
            prop_assert_eq!((vat.tax_applied, vat.tax_rate_bps, vat.total_amount), (0, 0, amount));
        }
    }

    #[test]
    fn tax_is_monotonic_in_the_amount(
        country in any_country(),
        product_type in any_product_type(),
        tax_date in any_covered_date(),
        first in any_safe_amount(),
        second in any_safe_amount(),
    ) {
        let (smaller, larger) = (first.min(second), first.max(second));
        let smaller_tax = table().calculate(country, product_type, tax_date, smaller).expect("covered").tax_applied;
        let larger_tax = table().calculate(country, product_type, tax_date, larger).expect("covered").tax_applied;
        prop_assert!(smaller_tax <= larger_tax);
    }

    #[test]
    fn a_result_is_ok_exactly_when_the_total_fits(
        country in any_country(),
        tax_date in any_covered_date(),
        amount in (i64::MAX / 2)..=i64::MAX,
    ) {
        let rate_bps = table().calculate(country, "standard", tax_date, 1).expect("covered").tax_rate_bps;
        let exact_total = i128::from(amount) + round_half_away_from_zero(i128::from(amount) * i128::from(rate_bps), 10_000);
        match table().calculate(country, "standard", tax_date, amount) {
            Ok(vat) => prop_assert_eq!(i128::from(vat.total_amount), exact_total),
            Err(error) => {
                prop_assert!(exact_total > i128::from(i64::MAX));
                prop_assert_eq!(error, VatError::AmountOutOfRange { amount, tax_rate_bps: rate_bps });
            }
        }
    }

    #[test]
    fn rounding_is_nearest_with_halves_away_from_zero(
        numerator in any::<i64>(),
        denominator in prop_oneof![1_i64..=1_000_000, -1_000_000_i64..=-1, any::<i64>().prop_filter("non-zero", |d| *d != 0)],
    ) {
        let (numerator, denominator) = (i128::from(numerator), i128::from(denominator));
        let rounded = round_half_away_from_zero(numerator, denominator);
        let twice_error = 2 * (numerator - rounded * denominator).abs();
        prop_assert!(twice_error <= denominator.abs());
        if twice_error == denominator.abs() {
            // A tie: the result is the candidate farther from zero.
            prop_assert!((rounded * denominator).abs() > numerator.abs());
        }
        prop_assert_eq!(round_half_away_from_zero(-numerator, denominator), -rounded);
    }
}

#[test]
fn inclusive_vat_is_extracted_from_the_gross_amount() {
    let tax_date = date(2026, 3, 1);
    let vat = table()
        .calculate_inclusive("DE", "standard", tax_date, 11_900)
        .expect("covered");
    assert_eq!(
        (vat.base_amount, vat.tax_applied, vat.total_amount),
        (10_000, 1_900, 11_900)
    );
    // AT 20 % of 1,000 gross: 1000 * 2000 / 12000 = 166.67 -> 167 VAT, 833 net.
    let vat = table()
        .calculate_inclusive("AT", "standard", tax_date, 1_000)
        .expect("covered");
    assert_eq!((vat.base_amount, vat.tax_applied, vat.total_amount), (833, 167, 1_000));
    let exempt = table()
        .calculate_inclusive("DE", "crypto", tax_date, 1_000)
        .expect("covered");
    assert_eq!((exempt.base_amount, exempt.tax_applied), (1_000, 0));
    assert_eq!(
        table().calculate_inclusive("DE", "standard", tax_date, 0),
        Err(VatError::NonPositiveAmount { amount: 0 })
    );
}

proptest! {
    #[test]
    fn inclusive_vat_splits_the_gross_exactly_and_is_within_half_a_unit_of_the_rate(
        country in any_country(),
        product_type in any_product_type(),
        tax_date in any_covered_date(),
        gross in prop_oneof![1_i64..=100_000, 1_i64..=i64::MAX],
    ) {
        let vat = table().calculate_inclusive(country, product_type, tax_date, gross).expect("covered");
        prop_assert_eq!(vat.base_amount + vat.tax_applied, gross);
        prop_assert!(vat.tax_applied >= 0 && vat.base_amount > 0);
        // |tax * (10000 + rate) - gross * rate| <= (10000 + rate) / 2
        let rate = i128::from(vat.tax_rate_bps);
        let error = (i128::from(vat.tax_applied) * (10_000 + rate) - i128::from(gross) * rate).abs();
        prop_assert!(2 * error <= 10_000 + rate);
    }
}
