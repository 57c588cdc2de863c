//! Field validation shared by every API: the list of rejected fields a request collects (all
//! fields are checked, not only the first), ids, and the rule of each bounded text field kind.
//! The gRPC layer turns [`Violations`] into `INVALID_ARGUMENT` with one `google.rpc.BadRequest`
//! field violation each.

use std::fmt;

use uuid::Uuid;

/// One rejected field: its path (`lines[1].amount`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Field path as the caller wrote it.
    pub field: String,
    /// What is wrong, shown to the caller.
    pub description: String,
}

/// Everything wrong with a request's input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// A list with one violation.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Self::default();
        violations.add(field, description);
        violations
    }

    /// Records that `field` is invalid.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Appends every violation of `other`.
    pub fn extend(&mut self, other: Violations) {
        self.0.extend(other.0);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.0.iter()
    }

    /// The rejected field paths.
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|violation| violation.field.as_str()).collect()
    }

    /// `value()` when nothing was recorded, otherwise the violations as the caller's error.
    pub fn into_result<T, E: From<Violations>>(self, value: impl FnOnce() -> T) -> Result<T, E> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(E::from(self))
        }
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, violation) in self.0.iter().enumerate() {
            if index > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{}: {}", violation.field, violation.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// Parses a required UUID field, recording what is wrong with it.
pub fn parse_id(field: &str, value: &str, violations: &mut Violations) -> Option<Uuid> {
    if value.is_empty() {
        violations.add(field, "is required");
        return None;
    }
    match Uuid::parse_str(value) {
        Ok(id) => Some(id),
        Err(_) => {
            violations.add(field, format!("must be a UUID, got {value:?}"));
            None
        }
    }
}

/// Validates a single UUID field outside a larger request.
pub fn require_id(field: &str, value: &str) -> Result<Uuid, Violations> {
    let mut violations = Violations::default();
    let id = parse_id(field, value, &mut violations);
    match id {
        Some(id) if violations.is_empty() => Ok(id),
        _ => Err(violations),
    }
}

/// Longest customer id.
pub const MAX_CUSTOMER_ID_LEN: usize = 64;
/// Longest product type.
pub const MAX_PRODUCT_TYPE_LEN: usize = 64;

/// The rule of a customer id: 1 to [`MAX_CUSTOMER_ID_LEN`] characters, no control characters
/// (a NUL byte cannot be stored in PostgreSQL text).
pub fn check_customer_id(field: &str, value: &str, violations: &mut Violations) {
    if value.is_empty() {
        violations.add(field, "is required");
    } else if value.chars().count() > MAX_CUSTOMER_ID_LEN {
        violations.add(field, format!("must be at most {MAX_CUSTOMER_ID_LEN} characters"));
    } else if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

/// The rule of a product type: `[a-z][a-z0-9_]{0,63}`.
pub fn check_product_type(field: &str, value: &str, violations: &mut Violations) {
    if value.is_empty() {
        violations.add(field, "is required");
    } else if !is_product_type(value) {
        violations.add(
            field,
            format!(
                "must match [a-z][a-z0-9_]{{0,{}}}, got {value:?}",
                MAX_PRODUCT_TYPE_LEN - 1
            ),
        );
    }
}

/// Whether `value` follows the product-type rule.
pub fn is_product_type(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_PRODUCT_TYPE_LEN
        && value.as_bytes()[0].is_ascii_lowercase()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

/// Parses a required country code field.
pub fn parse_country(field: &str, value: &str, violations: &mut Violations) -> Option<crate::Country> {
    crate::Country::parse(value)
        .map_err(|error| violations.add(field, error.to_string()))
        .ok()
}

/// Parses a required currency code field.
pub fn parse_currency(field: &str, value: &str, violations: &mut Violations) -> Option<crate::Currency> {
    crate::Currency::parse(value)
        .map_err(|error| violations.add(field, error.to_string()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_reported_in_order() {
        let mut violations = Violations::default();
        assert_eq!(parse_id("order_id", "", &mut violations), None);
        assert_eq!(parse_id("transaction_id", "nope", &mut violations), None);
        check_product_type("product_type", "Books", &mut violations);
        check_customer_id("customer_id", "a\0b", &mut violations);
        assert_eq!(
            violations.fields(),
            ["order_id", "transaction_id", "product_type", "customer_id"]
        );
        assert!(
            violations
                .to_string()
                .starts_with("order_id: is required; transaction_id: must be a UUID")
        );
    }

    #[test]
    fn the_product_type_rule_is_bounded() {
        assert!(is_product_type("standard"));
        assert!(is_product_type("e_book2"));
        assert!(is_product_type(&"a".repeat(MAX_PRODUCT_TYPE_LEN)));
        assert!(!is_product_type(&"a".repeat(MAX_PRODUCT_TYPE_LEN + 1)));
        assert!(!is_product_type("2books"));
        assert!(!is_product_type(""));
    }

    #[test]
    fn a_valid_id_parses() {
        let id = Uuid::new_v4();
        assert_eq!(require_id("id", &id.to_string()), Ok(id));
        assert_eq!(require_id("id", "x").unwrap_err().fields(), ["id"]);
    }
}
