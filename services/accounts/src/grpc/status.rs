//! The one place accounts errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::grpc::status;
use fintech_proto::accounts as pb;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, PreconditionViolation, StatusExt};

use crate::domain::AccountsError;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` per field, NOT_FOUND with the resource,
/// PERMISSION_DENIED, FAILED_PRECONDITION with a `google.rpc.PreconditionFailure` naming the
/// rule(s) (`account.closed`, `account.balance_not_zero`, …); a failure of the plumbing as every
/// service reports it (UNAVAILABLE when the database cannot be reached, INTERNAL otherwise).
impl From<AccountsError> for Status {
    fn from(error: AccountsError) -> Self {
        match error {
            AccountsError::Invalid(violations) => status::invalid_argument(&violations),
            AccountsError::NotFound(id) => status::not_found::<pb::Account>(&id),
            AccountsError::Forbidden(reason) => Status::permission_denied(reason),
            AccountsError::Illegal(illegal) => {
                status::failed_precondition(illegal.rule, "account", illegal.description)
            }
            AccountsError::CannotClose { account_id, refusals } => {
                let message = format!(
                    "account {account_id} cannot be closed: {}",
                    refusals
                        .iter()
                        .map(|refusal| refusal.description.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                let violations: Vec<PreconditionViolation> = refusals
                    .into_iter()
                    .map(|refusal| {
                        PreconditionViolation::new(refusal.rule, account_id.to_string(), refusal.description)
                    })
                    .collect();
                Status::with_error_details(
                    Code::FailedPrecondition,
                    message,
                    ErrorDetails::with_precondition_failure(violations),
                )
            }
            AccountsError::Idempotency(error) => Status::from(error),
            AccountsError::Internal(error) => status::anyhow_failure(&error),
        }
    }
}
