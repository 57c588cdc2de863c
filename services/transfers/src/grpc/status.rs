//! The one place transfers errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::grpc::status;
use fintech_proto::{accounts as apb, transfers as pb};
use tonic::Status;

use crate::domain::TransfersError;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` per field, NOT_FOUND with the resource,
/// PERMISSION_DENIED, FAILED_PRECONDITION with a `google.rpc.PreconditionFailure` naming the rule
/// (`transfer.capture_started`, `transfer.finished`, `transfer.not_awaiting_approval`,
/// `IDEMPOTENCY_KEY_REUSED`), UNAVAILABLE when Temporal cannot be reached; a failure of the
/// plumbing as every service reports it.
impl From<TransfersError> for Status {
    fn from(error: TransfersError) -> Self {
        match error {
            TransfersError::Invalid(violations) => status::invalid_argument(&violations),
            TransfersError::NotFound { kind: "account", id } => status::not_found::<apb::Account>(&id),
            TransfersError::NotFound { id, .. } => status::not_found::<pb::Transfer>(&id),
            TransfersError::Forbidden(reason) => Status::permission_denied(reason),
            TransfersError::Precondition {
                rule,
                transfer_id,
                description,
            } => status::failed_precondition(rule, &format!("transfer/{transfer_id}"), description),
            TransfersError::KeyReused => status::failed_precondition(
                "IDEMPOTENCY_KEY_REUSED",
                "idempotency-key",
                "the idempotency key was already used for a different transfer",
            ),
            TransfersError::Unavailable(reason) => {
                tracing::warn!(reason = %reason, "temporal unavailable");
                Status::unavailable("the workflow engine is unavailable; retry with the same idempotency-key")
            }
            TransfersError::Internal(error) => status::anyhow_failure(&error),
        }
    }
}
