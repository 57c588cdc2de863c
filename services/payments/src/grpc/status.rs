//! The one place payments errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::grpc::status;
use fintech_proto::payments as pb;
use tonic::Status;

use crate::domain::PaymentsError;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` per field, NOT_FOUND, ABORTED for a stale
/// version (re-read and retry), FAILED_PRECONDITION for an illegal transition or a currency
/// mismatch; a failure of the plumbing as every service reports it (UNAVAILABLE when the database
/// cannot be reached, INTERNAL otherwise).
impl From<PaymentsError> for Status {
    fn from(error: PaymentsError) -> Self {
        match error {
            PaymentsError::Invalid(violations) => status::invalid_argument(&violations),
            PaymentsError::OrderNotFound(id) => status::not_found::<pb::Order>(&id),
            PaymentsError::TransactionNotFound(id) => status::not_found::<pb::Transaction>(&id),
            PaymentsError::Forbidden(reason) => Status::permission_denied(reason),
            conflict @ PaymentsError::VersionConflict { .. } => {
                Status::aborted(format!("{conflict}; read it again and retry with its current version"))
            }
            illegal @ PaymentsError::IllegalTransition { .. } => {
                status::failed_precondition("STATUS_TRANSITION", "status", illegal.to_string())
            }
            mismatch @ PaymentsError::CurrencyMismatch { .. } => {
                status::failed_precondition("CURRENCY_MISMATCH", "currency", mismatch.to_string())
            }
            PaymentsError::Idempotency(error) => Status::from(error),
            PaymentsError::Internal(error) => status::anyhow_failure(&error),
        }
    }
}
