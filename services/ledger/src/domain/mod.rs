//! The ledger domain: accounts, journal entries and the rules an entry must satisfy, account
//! streams (events, hash chain, folds) and the entry a tax result posts. No tonic, sqlx or
//! rdkafka here; `grpc/` and `events/` convert to and from these types and `storage/` persists
//! them.

pub mod account;
pub mod cash;
pub mod customer;
pub mod entry;
pub mod hold;
pub mod stream;
pub mod tax;

pub use account::{Account, AccountType, CreateAccount, CustomerControls, CustomerState, Freeze, OverdraftPolicy};
pub use entry::{
    AccountState, Append, BalanceView, EntryInput, Line, LineInput, NewEntry, PostedEntry, Side, StreamPosting,
    plan_posting,
};

/// Largest page a list returns.
pub const MAX_PAGE_SIZE: i32 = 500;
/// Page size when the caller sends 0.
pub const DEFAULT_PAGE_SIZE: i32 = 50;

pub use fintech_types::Violations;
pub use fintech_types::fields::parse_id;
pub use fintech_types::time::now;

/// A rule an entry breaks given the ledger's current state (`google.rpc.PreconditionFailure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// Machine-readable kind, e.g. `LIMIT_EXCEEDED`.
    pub kind: &'static str,
    /// What it is about, e.g. `lines[1].account_id` or an account id.
    pub subject: String,
    /// Human-readable explanation.
    pub description: String,
}

/// Errors of the ledger; `grpc::status` maps each to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Some input fields are invalid (INVALID_ARGUMENT).
    #[error("invalid input: {0}")]
    Invalid(#[from] Violations),
    /// The account named by the request does not exist (NOT_FOUND).
    #[error("account {0} not found")]
    AccountNotFound(String),
    /// No hold has this id (NOT_FOUND).
    #[error("hold {0} not found")]
    HoldNotFound(String),
    /// No entry has this id (NOT_FOUND).
    #[error("entry {0} not found")]
    EntryNotFound(String),
    /// Another account already has this code (ALREADY_EXISTS).
    #[error("account code {0:?} is already in use")]
    CodeTaken(String),
    /// The entry id was posted before and its idempotency record has since been purged
    /// (ALREADY_EXISTS): the entry is never posted twice.
    #[error("entry {0:?} was already posted")]
    EntryAlreadyPosted(String),
    /// The entry is well-formed but the ledger's state does not allow it (FAILED_PRECONDITION):
    /// unknown account, currency mismatch, limit exceeded.
    #[error("entry rejected: {}", .0.iter().map(|p| p.description.as_str()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<Precondition>),
    /// A requested stream version is past the stream's head (OUT_OF_RANGE).
    #[error("version {requested} is beyond the stream's current version {current}")]
    VersionOutOfRange {
        /// The version asked for.
        requested: i64,
        /// The stream's head.
        current: i64,
    },
    /// The request touches what only the ledger's own event handlers may write: a system account
    /// or a reserved entry-id prefix (PERMISSION_DENIED).
    #[error("{0}")]
    Reserved(String),
    /// Concurrent appends kept conflicting after every internal retry (ABORTED).
    #[error("the entry conflicted with concurrent entries {attempts} times")]
    Contention {
        /// Attempts made.
        attempts: u32,
    },
    /// Storage or plumbing failed (INTERNAL, details logged).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Validates a single id outside a larger command.
pub fn require_id(field: &str, value: &str) -> Result<uuid::Uuid, LedgerError> {
    Ok(fintech_types::fields::require_id(field, value)?)
}

/// The page size to use for a raw `page_size` (0 means the default).
pub fn page_size(raw: i32, violations: &mut Violations) -> i64 {
    match raw {
        0 => i64::from(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => i64::from(raw),
        _ => {
            violations.add("page_size", format!("must be between 0 and {MAX_PAGE_SIZE}, got {raw}"));
            i64::from(DEFAULT_PAGE_SIZE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_are_bounded() {
        let mut violations = Violations::default();
        assert_eq!(page_size(0, &mut violations), 50);
        assert_eq!(page_size(500, &mut violations), 500);
        assert!(violations.is_empty());
        page_size(501, &mut violations);
        page_size(-1, &mut violations);
        assert_eq!(violations.iter().count(), 2);
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(require_id("account_id", "").is_err());
        assert!(require_id("account_id", "nope").is_err());
        let id = uuid::Uuid::new_v4();
        assert_eq!(require_id("account_id", &id.to_string()).unwrap(), id);
    }
}
