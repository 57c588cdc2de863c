//! Tax's VAT rate table loader (`RateTable::from_json`) and the calculations on a table it
//! accepts. An accepted table answers every query without panicking, with at most one rule in
//! effect (the answer for a date does not depend on which overlapping rule is found), and every
//! result balances: exclusive `base + tax == total`, inclusive `base + tax == gross` with
//! `0 <= tax <= gross`, never a silent zero or a wrapped amount.
#![no_main]

use chrono::{Days, NaiveDate};
use fintech_tax::domain::vat::RateTable;
use libfuzzer_sys::fuzz_target;

// Input: the amount (i64, little-endian), a day offset from 2020-01-01 (u16), then the table.
fuzz_target!(|data: &[u8]| {
    let Some((amount, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some((day, json)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else { return };
    let amount = i64::from_le_bytes(*amount);
    let date = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap() + Days::new(u64::from(u16::from_le_bytes(*day)));
    let Ok(table) = RateTable::from_json(json) else { return };
    assert!(!table.rule_version().is_empty());

    // The table's own countries and product types, and some it may not have.
    let raw: serde_json::Value = serde_json::from_str(json).expect("an accepted table is JSON");
    let mut queries = vec![
        ("DE".to_owned(), "standard".to_owned()),
        ("ZZ".to_owned(), "books".to_owned()),
    ];
    for rule in raw["rules"].as_array().into_iter().flatten().take(8) {
        let country = rule["country"].as_str().unwrap_or_default().to_owned();
        let product = rule["product_type"].as_str().unwrap_or_default().to_owned();
        queries.push((country.clone(), "standard".to_owned()));
        queries.push((country, product));
    }
    for (country, product) in &queries {
        match table.calculate(country, product, date, amount) {
            Ok(vat) => {
                assert!(amount > 0);
                assert_eq!(vat.base_amount, amount);
                assert_eq!(vat.base_amount.checked_add(vat.tax_applied), Some(vat.total_amount));
                assert!(vat.tax_applied >= 0 && vat.tax_applied <= amount, "{vat:?}");
                assert!((0..=10_000).contains(&vat.tax_rate_bps));
                assert_eq!(vat.rule_version, table.rule_version());
            }
            Err(_) => {}
        }
        match table.calculate_inclusive(country, product, date, amount) {
            Ok(vat) => {
                assert!(amount > 0);
                assert_eq!(vat.total_amount, amount);
                assert_eq!(vat.base_amount + vat.tax_applied, amount);
                assert!(vat.tax_applied >= 0 && vat.base_amount >= 0, "{vat:?}");
                if vat.tax_rate_bps > 0 && amount >= 10_000 {
                    assert!(
                        vat.tax_applied > 0,
                        "a positive rate on {amount} yields no VAT: {vat:?}"
                    );
                }
                // The exclusive rate on the base gives back (within rounding) the VAT inside.
                let exclusive = table.calculate(country, product, date, vat.base_amount.max(1));
                if let Ok(exclusive) = exclusive {
                    assert_eq!(exclusive.tax_rate_bps, vat.tax_rate_bps);
                    assert!(
                        (exclusive.tax_applied - vat.tax_applied).abs() <= 1,
                        "{exclusive:?} vs {vat:?}"
                    );
                }
            }
            Err(_) => {}
        }
    }
});
