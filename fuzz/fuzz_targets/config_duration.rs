//! Durations from configuration (`parse_duration`: `500ms`, `30s`, `15m`, `24h`, `7d`) and
//! from the `grpc-timeout` header (`parse_grpc_timeout`). An accepted duration is exactly the
//! number times its unit (never wrapped or saturated: too long is an error), and writing it back
//! in its unit parses to the same duration.
#![no_main]

use std::time::Duration;

use fintech_platform::config::parse_duration;
use fintech_platform::grpc::deadline::parse_grpc_timeout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(duration) = parse_duration(text) {
        let trimmed = text.trim();
        let split = trimmed.find(|character: char| !character.is_ascii_digit()).unwrap();
        let (number, unit) = trimmed.split_at(split);
        let number: u128 = number.parse().expect("an accepted number is a number");
        let nanos_per_unit: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            other => panic!("accepted unit {other:?}"),
        };
        assert_eq!(duration.as_nanos(), number * nanos_per_unit, "{text:?}");
        assert_eq!(parse_duration(&format!("{number}{unit}")), Ok(duration));
    }
    if let Some(timeout) = parse_grpc_timeout(text) {
        let unit = text.chars().last().unwrap();
        let digits = &text[..text.len() - 1];
        assert!((1..=8).contains(&digits.len()));
        let amount: u128 = digits.parse().unwrap();
        let nanos_per_unit: u128 = match unit {
            'H' => 3_600_000_000_000,
            'M' => 60_000_000_000,
            'S' => 1_000_000_000,
            'm' => 1_000_000,
            'u' => 1_000,
            'n' => 1,
            other => panic!("accepted unit {other:?}"),
        };
        assert_eq!(timeout.as_nanos(), amount * nanos_per_unit, "{text:?}");
        assert!(timeout <= Duration::from_secs(99_999_999 * 3600));
    }
});
