//! The one place ledger errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::grpc::status;
use fintech_platform::idempotency::IdempotencyError;
use fintech_proto::ledger as pb;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::posting::PostError;
use crate::domain::LedgerError;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` per field, NOT_FOUND, ALREADY_EXISTS for a
/// taken code or an entry id posted long ago, FAILED_PRECONDITION with a
/// `google.rpc.PreconditionFailure` per broken rule (unknown account, currency mismatch, limit),
/// OUT_OF_RANGE for a version past the stream head, ABORTED when concurrent entries kept
/// conflicting; a failure of the plumbing as every service reports it (UNAVAILABLE when the
/// database cannot be reached, INTERNAL otherwise).
impl From<LedgerError> for Status {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Invalid(violations) => status::invalid_argument(&violations),
            LedgerError::AccountNotFound(id) => status::not_found::<pb::Account>(&id),
            LedgerError::EntryNotFound(id) => status::not_found::<pb::Entry>(&id),
            LedgerError::HoldNotFound(id) => status::not_found::<pb::Hold>(&id),
            taken @ LedgerError::CodeTaken(_) => Status::already_exists(taken.to_string()),
            posted @ LedgerError::EntryAlreadyPosted(_) => {
                Status::already_exists(format!("{posted}; read it with GetEntry"))
            }
            LedgerError::Rejected(rules) => {
                let reasons: Vec<&str> = rules.iter().map(|rule| rule.description.as_str()).collect();
                let mut details = ErrorDetails::new();
                for rule in &rules {
                    details.add_precondition_failure_violation(
                        rule.kind,
                        rule.subject.clone(),
                        rule.description.clone(),
                    );
                }
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!("rejected: {}", reasons.join("; ")),
                    details,
                )
            }
            LedgerError::Reserved(reason) => Status::permission_denied(reason),
            out_of_range @ LedgerError::VersionOutOfRange { .. } => Status::out_of_range(out_of_range.to_string()),
            contention @ LedgerError::Contention { .. } => Status::aborted(format!(
                "{contention}; nothing was posted, retry with the same entry_id"
            )),
            LedgerError::Internal(error) => status::anyhow_failure(&error),
        }
    }
}

/// A posting failure; a reused entry id is reported on `entry_id`, not on the metadata key.
impl From<PostError> for Status {
    fn from(error: PostError) -> Self {
        match error {
            PostError::Ledger(error) => Status::from(error),
            PostError::Idempotency(IdempotencyError::Conflict { key }) => status::failed_precondition(
                "ENTRY_ID_REUSED",
                "entry_id",
                format!("entry_id {:?} was already used for a different entry", key.as_str()),
            ),
            PostError::Idempotency(other) => Status::from(other),
        }
    }
}
