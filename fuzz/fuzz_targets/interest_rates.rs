//! Accounts' interest rate table loader (`RateTable::from_json`) and the accrual arithmetic on
//! the rates it yields. An accepted table gives every currency and day a rate within
//! `MAX_RATE_BPS`, the same rate whatever order the table listed its rows in (no two in effect on
//! one day); accruing and settling any balance at that rate never wraps: the settled amount plus
//! the carry is exactly the units accrued.
#![no_main]

use chrono::{Days, NaiveDate};
use fintech_accounts::domain::interest::{MAX_RATE_BPS, RateTable, UNITS_PER_MINOR_UNIT, day_units, settle};
use libfuzzer_sys::fuzz_target;

// Input: a balance (i64, little-endian), a day offset from 2024-01-01 (u16), then the table.
fuzz_target!(|data: &[u8]| {
    let Some((balance, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some((day, json)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else { return };
    let balance = i64::from_le_bytes(*balance);
    let day = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + Days::new(u64::from(u16::from_le_bytes(*day)));
    let Ok(table) = RateTable::from_json(json) else { return };
    assert!(!table.rule_version().trim().is_empty());

    let mut raw: serde_json::Value = serde_json::from_str(json).expect("an accepted table is JSON");
    let currencies: Vec<String> = raw["rates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|rate| rate["currency"].as_str().map(str::to_owned))
        .chain(["EUR".to_owned(), "XXX".to_owned()])
        .collect();
    // The same rows in reverse order: the same table (rows never overlap).
    if let Some(rates) = raw["rates"].as_array_mut() {
        rates.reverse();
    }
    let reversed = RateTable::from_json(&raw.to_string()).expect("the rows in another order are accepted too");

    for currency in currencies.iter().take(16) {
        let rate = table.rate_bps(currency, day);
        assert_eq!(
            reversed.rate_bps(currency, day),
            rate,
            "{currency} {day}: the row order matters"
        );
        assert!(rate <= MAX_RATE_BPS, "{currency} {day}: {rate}");
        let units = day_units(balance, rate);
        assert!(units >= 0);
        if balance > 0 && rate > 0 {
            assert!(units > 0, "a positive balance at a positive rate accrues");
        }
        // A year of such days, settled at once.
        let year = units * 366;
        match settle(year) {
            Some(settled) => {
                assert!(settled.carry >= 0 && settled.carry < UNITS_PER_MINOR_UNIT);
                assert_eq!(i128::from(settled.amount) * UNITS_PER_MINOR_UNIT + settled.carry, year);
            }
            // Refused, not wrapped: only past i64::MAX minor units.
            None => assert!(year / UNITS_PER_MINOR_UNIT > i128::from(i64::MAX)),
        }
    }
});
