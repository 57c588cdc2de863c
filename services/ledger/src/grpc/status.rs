//! The one place ledger errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::idempotency::IdempotencyError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::LedgerError;
use crate::posting::PostError;

/// Maps a domain error to its status: INVALID_ARGUMENT with a `google.rpc.BadRequest` per field,
/// NOT_FOUND, ALREADY_EXISTS for a taken code or an entry id posted long ago,
/// FAILED_PRECONDITION with a `google.rpc.PreconditionFailure` per broken rule (unknown account,
/// currency mismatch, limit), OUT_OF_RANGE for a version past the stream head, ABORTED when
/// concurrent entries kept conflicting, INTERNAL otherwise.
pub fn to_status(error: LedgerError) -> Status {
    match error {
        LedgerError::Invalid(violations) => fintech_platform::grpc::invalid_argument(&violations.0),
        LedgerError::AccountNotFound(id) => not_found("fintech.ledger.v1.Account", &id, "account"),
        LedgerError::EntryNotFound(id) => not_found("fintech.ledger.v1.Entry", &id, "entry"),
        taken @ LedgerError::CodeTaken(_) => Status::already_exists(taken.to_string()),
        posted @ LedgerError::EntryAlreadyPosted(_) => {
            Status::already_exists(format!("{posted}; read it with GetEntry"))
        }
        LedgerError::Rejected(rules) => {
            let reasons: Vec<&str> = rules.iter().map(|rule| rule.description.as_str()).collect();
            let mut details = ErrorDetails::new();
            for rule in &rules {
                details.add_precondition_failure_violation(rule.kind, rule.subject.clone(), rule.description.clone());
            }
            Status::with_error_details(
                Code::FailedPrecondition,
                format!("entry rejected: {}", reasons.join("; ")),
                details,
            )
        }
        out_of_range @ LedgerError::VersionOutOfRange { .. } => Status::out_of_range(out_of_range.to_string()),
        contention @ LedgerError::Contention { .. } => Status::aborted(format!(
            "{contention}; nothing was posted, retry with the same entry_id"
        )),
        LedgerError::Internal(error) => {
            tracing::error!(error = format!("{error:#}"), "ledger request failed");
            Status::internal("internal error; the request can be retried")
        }
    }
}

/// Maps a posting failure; a reused entry id is reported on `entry_id`, not on the metadata key.
pub fn post_status(error: PostError) -> Status {
    match error {
        PostError::Ledger(error) => to_status(error),
        PostError::Idempotency(IdempotencyError::Conflict { key }) => {
            let message = format!("entry_id {:?} was already used for a different entry", key.as_str());
            Status::with_error_details(
                Code::FailedPrecondition,
                message.clone(),
                ErrorDetails::with_precondition_failure_violation("ENTRY_ID_REUSED", "entry_id", message),
            )
        }
        PostError::Idempotency(other) => Status::from(other),
    }
}

fn not_found(resource_type: &str, id: &str, what: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_resource_info(resource_type, id, "", format!("no such {what}"));
    Status::with_error_details(Code::NotFound, format!("{what} {id} not found"), details)
}
