//! The transfers domain: a transfer, its status and step, the refusals that end it, the ids
//! derived from it and the validation of a request. No tonic, sqlx, rdkafka or Temporal here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

pub use fintech_types::Violations;
use fintech_types::fields::{parse_currency, parse_id};
pub use fintech_types::paging::{Cursor, PageRequest};
pub use fintech_types::time::now;

/// Longest reference, in characters.
pub const MAX_REFERENCE_LEN: usize = 140;
/// Longest cancellation or rejection reason, in characters.
pub const MAX_REASON_LEN: usize = 500;
/// Largest amount of one transfer, in minor units (the ledger's own line limit is far above).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Prefix of every ledger id the saga derives (holds and entries): a namespace the ledger lets
/// only the transfers service's credentials write (`ledger.transfers` scope, ADR 0024).
pub const LEDGER_ID_PREFIX: &str = "transfer:";

/// Status of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Accepted; the saga runs.
    Pending,
    /// Held; waits for an approval decision.
    AwaitingApproval,
    /// The hold was captured.
    Completed,
    /// A business rule refused it.
    Failed,
    /// Cancelled before the capture.
    Cancelled,
    /// Rejected by an approver or by its deadline.
    Rejected,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Rejected => "rejected",
        }
    }

    /// The status of a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "pending" => Status::Pending,
            "awaiting_approval" => Status::AwaitingApproval,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "rejected" => Status::Rejected,
            _ => return None,
        })
    }

    /// Whether nothing follows it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Rejected
        )
    }
}

/// Where the saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Checking the accounts.
    Validating,
    /// Placing the hold.
    Holding,
    /// Waiting for approval.
    Approving,
    /// Capturing the hold.
    Capturing,
    /// Releasing the hold (compensation).
    Releasing,
    /// Terminal.
    Done,
}

impl Step {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validating => "validating",
            Step::Holding => "holding",
            Step::Approving => "approving",
            Step::Capturing => "capturing",
            Step::Releasing => "releasing",
            Step::Done => "done",
        }
    }

    /// The step of a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "validating" => Step::Validating,
            "holding" => Step::Holding,
            "approving" => Step::Approving,
            "capturing" => Step::Capturing,
            "releasing" => Step::Releasing,
            "done" => Step::Done,
            _ => return None,
        })
    }
}

/// Why a transfer did not complete: a closed set of stable codes, carried as a typed value from
/// the activity that met it to the workflow and into the row (never recognised by a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// The source's available balance (with its overdraft limit) is below the amount.
    InsufficientFunds,
    /// An account is not known (to this service's cache or to the ledger).
    UnknownAccount,
    /// An account is closed.
    AccountClosed,
    /// The source refuses debits.
    SourceFrozen,
    /// The destination refuses credits.
    DestinationFrozen,
    /// The accounts' or the transfer's currencies differ.
    CurrencyMismatch,
    /// The ledger refused for a reason of its own (a rule this service does not know).
    LedgerRefused,
    /// Cancelled by the customer or an operator.
    Cancelled,
    /// Rejected by an approver.
    Rejected,
    /// Nobody decided before the approval deadline.
    ApprovalTimeout,
}

impl RefusalCode {
    /// The stable code stored and published (`failure_code`).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::InsufficientFunds => "account.overdraft_limit",
            RefusalCode::UnknownAccount => "account.unknown",
            RefusalCode::AccountClosed => "account.closed",
            RefusalCode::SourceFrozen => "account.frozen.debits",
            RefusalCode::DestinationFrozen => "account.frozen.credits",
            RefusalCode::CurrencyMismatch => "currency.mismatch",
            RefusalCode::LedgerRefused => "ledger.refused",
            RefusalCode::Cancelled => "transfer.cancelled",
            RefusalCode::Rejected => "approval.rejected",
            RefusalCode::ApprovalTimeout => "approval.timeout",
        }
    }

    /// The code of a ledger precondition type (its contract's `PreconditionFailure` types);
    /// `None` for a type the ledger may add later (the caller decides, see `LedgerRefused`).
    pub fn of_ledger_rule(rule: &str) -> Option<Self> {
        Some(match rule {
            "account.overdraft_limit" | "LIMIT_EXCEEDED" => RefusalCode::InsufficientFunds,
            "account.unknown" => RefusalCode::UnknownAccount,
            "account.closed" => RefusalCode::AccountClosed,
            "account.frozen.debits" => RefusalCode::SourceFrozen,
            "account.frozen.credits" => RefusalCode::DestinationFrozen,
            "CURRENCY_MISMATCH" | "currency.mismatch" => RefusalCode::CurrencyMismatch,
            _ => return None,
        })
    }

    /// The terminal status a refusal leads to.
    pub fn status(self) -> Status {
        match self {
            RefusalCode::Cancelled => Status::Cancelled,
            RefusalCode::Rejected | RefusalCode::ApprovalTimeout => Status::Rejected,
            _ => Status::Failed,
        }
    }
}

/// A business refusal: its code and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{} ({reason})", code.as_str())]
pub struct Refusal {
    /// The stable code.
    pub code: RefusalCode,
    /// Why, for people.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code` and `reason`.
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// What the saga works on: the validated request, fixed when the transfer is accepted (the
/// workflow's input, so a replay sees exactly what the first run saw).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInput {
    /// The transfer id.
    pub transfer_id: Uuid,
    /// The customer whose account the money leaves.
    pub customer_id: String,
    /// Who asked (the token's subject).
    pub requested_by: String,
    /// Fingerprint of the request.
    pub fingerprint: String,
    /// Source account.
    pub from_account_id: Uuid,
    /// Destination account.
    pub to_account_id: Uuid,
    /// Amount in minor units.
    pub amount: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Reference.
    pub reference: String,
    /// Above the approval threshold.
    pub requires_approval: bool,
    /// How long an approval may take, in milliseconds (0 without approval).
    pub approval_timeout_ms: u64,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When the ledger lets the hold expire (fixed here, so every PlaceHold attempt is the same
    /// request).
    pub hold_expires_at: DateTime<Utc>,
    /// W3C `traceparent` of the CreateTransfer request, continued by every activity.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with it.
    pub tracestate: Option<String>,
}

impl TransferInput {
    /// Id of the workflow that runs the saga.
    pub fn workflow_id(&self) -> String {
        workflow_id(self.transfer_id)
    }

    /// Id of the ledger hold on the source.
    pub fn hold_id(&self) -> String {
        hold_id(self.transfer_id)
    }

    /// Id of the ledger entry that captures the hold.
    pub fn entry_id(&self) -> String {
        entry_id(self.transfer_id)
    }

    /// The transfer as accepted: version 1, PENDING, validating.
    pub fn created(&self) -> Transfer {
        Transfer {
            transfer_id: self.transfer_id,
            workflow_id: self.workflow_id(),
            fingerprint: self.fingerprint.clone(),
            requested_by: self.requested_by.clone(),
            customer_id: self.customer_id.clone(),
            from_account_id: self.from_account_id,
            to_account_id: self.to_account_id,
            amount: self.amount,
            currency: self.currency.clone(),
            reference: self.reference.clone(),
            status: Status::Pending,
            step: Step::Validating,
            failure: None,
            hold_id: None,
            entry_id: None,
            requires_approval: self.requires_approval,
            created_at: self.created_at,
            updated_at: self.created_at,
            finished_at: None,
            version: 1,
        }
    }
}

/// Workflow id of a transfer.
pub fn workflow_id(transfer_id: Uuid) -> String {
    format!("transfer-{transfer_id}")
}

/// Ledger hold id of a transfer.
pub fn hold_id(transfer_id: Uuid) -> String {
    format!("{LEDGER_ID_PREFIX}{transfer_id}")
}

/// Ledger entry id of a transfer.
pub fn entry_id(transfer_id: Uuid) -> String {
    format!("{LEDGER_ID_PREFIX}{transfer_id}")
}

/// The transfer id of a caller's idempotency key: a UUID (version 8, RFC 9562) from the SHA-256
/// of the key's stored scope (method and caller) and the key. The same caller and key always give
/// the same transfer (and so the same workflow id); two callers never share one.
pub fn transfer_id_of(scoped_caller: &str, key: &str) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(b"fintech.transfers.v1/");
    hasher.update(scoped_caller.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A transfer as stored and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Id.
    pub transfer_id: Uuid,
    /// Temporal workflow id.
    pub workflow_id: String,
    /// Fingerprint of the request.
    pub fingerprint: String,
    /// Who asked.
    pub requested_by: String,
    /// The source's customer.
    pub customer_id: String,
    /// Source.
    pub from_account_id: Uuid,
    /// Destination.
    pub to_account_id: Uuid,
    /// Amount.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Reference.
    pub reference: String,
    /// Status.
    pub status: Status,
    /// Step.
    pub step: Step,
    /// Why it did not complete.
    pub failure: Option<Refusal>,
    /// Ledger hold, once placed.
    pub hold_id: Option<String>,
    /// Ledger entry, once captured.
    pub entry_id: Option<String>,
    /// Above the threshold.
    pub requires_approval: bool,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Terminal at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Version.
    pub version: i64,
}

/// A validated CreateTransfer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    /// Source.
    pub from_account_id: Uuid,
    /// Destination.
    pub to_account_id: Uuid,
    /// Amount.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Reference.
    pub reference: String,
}

impl NewTransfer {
    /// Validates the fields of a request; every broken field is reported at once.
    pub fn parse(
        from_account_id: &str,
        to_account_id: &str,
        amount: i64,
        currency: &str,
        reference: &str,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        let from = parse_id("from_account_id", from_account_id, &mut violations);
        let to = parse_id("to_account_id", to_account_id, &mut violations);
        if let (Some(from), Some(to)) = (from, to)
            && from == to
        {
            violations.add("to_account_id", "must differ from from_account_id");
        }
        if amount <= 0 {
            violations.add("amount", format!("must be greater than 0, got {amount}"));
        } else if amount > MAX_AMOUNT {
            violations.add("amount", format!("must be at most {MAX_AMOUNT} minor units"));
        }
        let currency = parse_currency("currency", currency, &mut violations);
        if reference.chars().count() > MAX_REFERENCE_LEN {
            violations.add("reference", format!("must be at most {MAX_REFERENCE_LEN} characters"));
        } else if reference.chars().any(char::is_control) {
            violations.add("reference", "must not contain control characters");
        }
        match (from, to, currency, violations.is_empty()) {
            (Some(from_account_id), Some(to_account_id), Some(currency), true) => Ok(Self {
                from_account_id,
                to_account_id,
                amount,
                currency: currency.to_string(),
                reference: reference.to_owned(),
            }),
            _ => Err(violations),
        }
    }
}

/// Checks a cancellation or rejection reason: 1 to [`MAX_REASON_LEN`] characters, no control
/// characters.
pub fn check_reason(field: &str, value: &str, violations: &mut Violations) {
    if value.trim().is_empty() {
        violations.add(field, "is required");
    } else if value.chars().count() > MAX_REASON_LEN {
        violations.add(field, format!("must be at most {MAX_REASON_LEN} characters"));
    } else if value.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
}

/// An account as this service's cache of `accounts.*` knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAccount {
    /// Id.
    pub account_id: Uuid,
    /// Owner.
    pub customer_id: String,
    /// Currency.
    pub currency: String,
    /// `active`, `dormant` or `closed`.
    pub state: String,
    /// `debits`, `credits`, `both` or none.
    pub freeze_kind: Option<String>,
    /// Version of the accounts event.
    pub version: i64,
}

/// The saga's validation against the cache: both accounts known and open, the currency theirs,
/// the source not frozen for debits, the destination not frozen for credits. The ledger enforces
/// the same rules again at the hold and the capture (it has its own cache).
pub fn validate(
    input: &TransferInput,
    from: Option<&CachedAccount>,
    to: Option<&CachedAccount>,
) -> Result<(), Refusal> {
    let from = from.ok_or_else(|| {
        Refusal::new(
            RefusalCode::UnknownAccount,
            format!("source account {} is not known", input.from_account_id),
        )
    })?;
    let to = to.ok_or_else(|| {
        Refusal::new(
            RefusalCode::UnknownAccount,
            format!("destination account {} is not known", input.to_account_id),
        )
    })?;
    for (account, side) in [(from, "source"), (to, "destination")] {
        if account.state == "closed" {
            return Err(Refusal::new(
                RefusalCode::AccountClosed,
                format!("{side} account {} is closed", account.account_id),
            ));
        }
        if account.currency != input.currency {
            return Err(Refusal::new(
                RefusalCode::CurrencyMismatch,
                format!(
                    "{side} account {} is in {}, the transfer in {}",
                    account.account_id, account.currency, input.currency
                ),
            ));
        }
    }
    if matches!(from.freeze_kind.as_deref(), Some("debits" | "both")) {
        return Err(Refusal::new(
            RefusalCode::SourceFrozen,
            format!("source account {} is frozen for debits", from.account_id),
        ));
    }
    if matches!(to.freeze_kind.as_deref(), Some("credits" | "both")) {
        return Err(Refusal::new(
            RefusalCode::DestinationFrozen,
            format!("destination account {} is frozen for credits", to.account_id),
        ));
    }
    Ok(())
}

/// Errors of the transfers use cases; `grpc::status` maps each to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum TransfersError {
    /// Some input fields are invalid (INVALID_ARGUMENT).
    #[error("invalid input: {0}")]
    Invalid(#[from] Violations),
    /// No such transfer or account, or another customer's (NOT_FOUND, the same either way).
    #[error("{kind} {id} not found")]
    NotFound {
        /// `transfer` or `account`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A customer token asked for another customer (PERMISSION_DENIED).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The transfer's state does not allow it (FAILED_PRECONDITION with the rule).
    #[error("{description}")]
    Precondition {
        /// The rule, e.g. `transfer.capture_started`.
        rule: &'static str,
        /// The transfer.
        transfer_id: Uuid,
        /// Why.
        description: String,
    },
    /// The same idempotency key was used for a different request (FAILED_PRECONDITION).
    #[error("idempotency key reused for a different transfer")]
    KeyReused,
    /// The workflow engine cannot be reached (UNAVAILABLE).
    #[error("workflow engine unavailable: {0}")]
    Unavailable(String),
    /// Storage or plumbing failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> TransferInput {
        TransferInput {
            transfer_id: Uuid::nil(),
            customer_id: "c-1".to_owned(),
            requested_by: "c-1".to_owned(),
            fingerprint: String::new(),
            from_account_id: Uuid::from_u128(1),
            to_account_id: Uuid::from_u128(2),
            amount: 10,
            currency: "EUR".to_owned(),
            reference: String::new(),
            requires_approval: false,
            approval_timeout_ms: 0,
            created_at: Utc::now(),
            hold_expires_at: Utc::now(),
            traceparent: None,
            tracestate: None,
        }
    }

    fn account(id: u128, currency: &str, state: &str, freeze: Option<&str>) -> CachedAccount {
        CachedAccount {
            account_id: Uuid::from_u128(id),
            customer_id: "c-1".to_owned(),
            currency: currency.to_owned(),
            state: state.to_owned(),
            freeze_kind: freeze.map(str::to_owned),
            version: 1,
        }
    }

    #[test]
    fn the_same_caller_and_key_give_the_same_transfer_and_others_do_not() {
        let one = transfer_id_of("CreateTransfer@alice", "k-1");
        assert_eq!(one, transfer_id_of("CreateTransfer@alice", "k-1"));
        assert_ne!(one, transfer_id_of("CreateTransfer@bob", "k-1"));
        assert_ne!(one, transfer_id_of("CreateTransfer@alice", "k-2"));
        // No ambiguity between the caller and the key.
        assert_ne!(transfer_id_of("a", "bc"), transfer_id_of("ab", "c"));
        assert_eq!(one.get_version_num(), 8);
    }

    #[test]
    fn validation_refuses_each_rule_with_its_code() {
        let input = input();
        let ok = (account(1, "EUR", "active", None), account(2, "EUR", "dormant", None));
        assert_eq!(validate(&input, Some(&ok.0), Some(&ok.1)), Ok(()));
        let code = |from: &CachedAccount, to: &CachedAccount| validate(&input, Some(from), Some(to)).unwrap_err().code;
        assert_eq!(
            validate(&input, None, Some(&ok.1)).unwrap_err().code,
            RefusalCode::UnknownAccount
        );
        assert_eq!(
            code(&account(1, "EUR", "closed", None), &ok.1),
            RefusalCode::AccountClosed
        );
        assert_eq!(
            code(&ok.0, &account(2, "USD", "active", None)),
            RefusalCode::CurrencyMismatch
        );
        assert_eq!(
            code(&account(1, "EUR", "active", Some("both")), &ok.1),
            RefusalCode::SourceFrozen
        );
        // A credit freeze on the source does not stop money leaving it.
        assert_eq!(
            validate(&input, Some(&account(1, "EUR", "active", Some("credits"))), Some(&ok.1)),
            Ok(())
        );
        assert_eq!(
            code(&ok.0, &account(2, "EUR", "active", Some("credits"))),
            RefusalCode::DestinationFrozen
        );
    }

    #[test]
    fn requests_report_every_broken_field() {
        let violations = NewTransfer::parse("x", "", 0, "eur", &"r".repeat(141)).unwrap_err();
        assert_eq!(
            violations.fields(),
            ["from_account_id", "to_account_id", "amount", "currency", "reference"]
        );
        let same = Uuid::from_u128(7).to_string();
        let violations = NewTransfer::parse(&same, &same, 5, "EUR", "").unwrap_err();
        assert_eq!(violations.fields(), ["to_account_id"]);
    }

    #[test]
    fn ledger_rules_map_to_codes_and_unknown_rules_do_not() {
        assert_eq!(
            RefusalCode::of_ledger_rule("account.overdraft_limit"),
            Some(RefusalCode::InsufficientFunds)
        );
        assert_eq!(
            RefusalCode::of_ledger_rule("account.frozen.credits"),
            Some(RefusalCode::DestinationFrozen)
        );
        assert_eq!(RefusalCode::of_ledger_rule("something.new"), None);
        assert_eq!(RefusalCode::ApprovalTimeout.status(), Status::Rejected);
    }
}
