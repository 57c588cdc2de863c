//! The one place payments errors become gRPC statuses. Internal details are logged, not sent.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::PaymentsError;

/// Maps a domain error to its status: INVALID_ARGUMENT with a `google.rpc.BadRequest` per field,
/// NOT_FOUND, ABORTED for a stale version (re-read and retry), FAILED_PRECONDITION for an illegal
/// transition or a currency mismatch, INTERNAL otherwise.
pub fn to_status(error: PaymentsError) -> Status {
    match error {
        PaymentsError::Invalid(violations) => fintech_platform::grpc::invalid_argument(&violations.0),
        PaymentsError::OrderNotFound(id) => {
            let mut details = ErrorDetails::new();
            details.set_resource_info("fintech.payments.v1.Order", id.clone(), "", "no such order");
            Status::with_error_details(Code::NotFound, format!("order {id} not found"), details)
        }
        PaymentsError::TransactionNotFound(id) => {
            let mut details = ErrorDetails::new();
            details.set_resource_info("fintech.payments.v1.Transaction", id.clone(), "", "no such transaction");
            Status::with_error_details(Code::NotFound, format!("transaction {id} not found"), details)
        }
        conflict @ PaymentsError::VersionConflict { .. } => {
            Status::aborted(format!("{conflict}; read it again and retry with its current version"))
        }
        illegal @ PaymentsError::IllegalTransition { .. } => {
            let mut details = ErrorDetails::new();
            details.add_precondition_failure_violation("STATUS_TRANSITION", "status", illegal.to_string());
            Status::with_error_details(Code::FailedPrecondition, illegal.to_string(), details)
        }
        mismatch @ PaymentsError::CurrencyMismatch { .. } => {
            let mut details = ErrorDetails::new();
            details.add_precondition_failure_violation("CURRENCY_MISMATCH", "currency", mismatch.to_string());
            Status::with_error_details(Code::FailedPrecondition, mismatch.to_string(), details)
        }
        PaymentsError::Internal(error) => {
            tracing::error!(error = format!("{error:#}"), "payments request failed");
            Status::internal("internal error; the request can be retried")
        }
    }
}
