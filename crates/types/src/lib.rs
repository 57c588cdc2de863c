//! Validated value types every service speaks: ISO 3166-1 alpha-2 countries and ISO 4217
//! currencies, field violations and the rule of each field kind ([`fields`]), keyset pagination
//! ([`paging`]) and timestamps ([`time`]). Construct with `parse`; a value that exists is valid.

pub mod fields;
mod iso_data;
pub mod paging;
pub mod time;

pub use fields::{Violation, Violations};

use std::fmt;

/// Why a code was rejected (the message is shown to API callers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Empty input.
    #[error("is required")]
    Empty,
    /// Not upper-case letters of the right length.
    #[error("must be {expected} upper-case letters, got {got:?}")]
    Malformed {
        /// What the code must look like.
        expected: &'static str,
        /// The input.
        got: String,
    },
    /// Well-formed but not an assigned code.
    #[error("{got:?} is not a known {standard} code")]
    Unknown {
        /// The standard checked.
        standard: &'static str,
        /// The input.
        got: String,
    },
}

fn parse_code(
    input: &str,
    length: usize,
    expected: &'static str,
    standard: &'static str,
    table: &[&str],
) -> Result<String, CodeError> {
    if input.is_empty() {
        return Err(CodeError::Empty);
    }
    if input.len() != length || !input.bytes().all(|byte| byte.is_ascii_uppercase()) {
        return Err(CodeError::Malformed {
            expected,
            got: input.to_owned(),
        });
    }
    if table.binary_search(&input).is_err() {
        return Err(CodeError::Unknown {
            standard,
            got: input.to_owned(),
        });
    }
    Ok(input.to_owned())
}

/// An ISO 3166-1 alpha-2 country code, e.g. `DE`. Serialized as the code; deserializing
/// validates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Country(String);

impl Country {
    /// Accepts an assigned alpha-2 code in upper case.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        parse_code(input, 2, "2", "ISO 3166-1 alpha-2", iso_data::COUNTRIES).map(Self)
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Country {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// An ISO 4217 currency code, e.g. `EUR`. Serialized as the code; deserializing validates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// Accepts a circulating ISO 4217 code in upper case.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        parse_code(input, 3, "3", "ISO 4217", iso_data::CURRENCIES).map(Self)
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

macro_rules! code_conversions {
    ($($code:ident),*) => {$(
        impl TryFrom<String> for $code {
            type Error = CodeError;

            fn try_from(value: String) -> Result<Self, CodeError> {
                Self::parse(&value)
            }
        }

        impl From<$code> for String {
            fn from(code: $code) -> String {
                code.0
            }
        }

        impl PartialEq<str> for $code {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $code {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    )*};
}

code_conversions!(Country, Currency);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        assert!(iso_data::COUNTRIES.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(iso_data::CURRENCIES.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn known_codes_parse() {
        for code in ["DE", "FR", "US", "GB", "MT", "CY"] {
            assert_eq!(Country::parse(code).unwrap().as_str(), code);
        }
        for code in ["EUR", "USD", "GBP", "JPY", "CHF", "XOF"] {
            assert_eq!(Currency::parse(code).unwrap().as_str(), code);
        }
    }

    #[test]
    fn bad_codes_are_rejected_with_a_reason() {
        assert_eq!(Country::parse(""), Err(CodeError::Empty));
        assert!(matches!(Country::parse("de"), Err(CodeError::Malformed { .. })));
        assert!(matches!(Country::parse("DEU"), Err(CodeError::Malformed { .. })));
        assert!(matches!(Country::parse("XX"), Err(CodeError::Unknown { .. })));
        assert!(matches!(Currency::parse("EURO"), Err(CodeError::Malformed { .. })));
        assert!(matches!(Currency::parse("ABC"), Err(CodeError::Unknown { .. })));
        assert!(matches!(Currency::parse("XTS"), Err(CodeError::Unknown { .. })));
        assert!(Currency::parse("XTS").unwrap_err().to_string().contains("ISO 4217"));
    }
}
