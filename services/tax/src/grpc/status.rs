//! The one place tax errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::grpc::status;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::TaxError;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` per field, NOT_FOUND with the resource, and a
/// failure of the plumbing as every service reports it (UNAVAILABLE when the database cannot be
/// reached, INTERNAL otherwise).
impl From<TaxError> for Status {
    fn from(error: TaxError) -> Self {
        match error {
            TaxError::Invalid(violations) => status::invalid_argument(&violations),
            TaxError::NotFound { resource, id } => {
                let mut details = ErrorDetails::new();
                details.set_resource_info(
                    format!("fintech.tax.v1.{resource}"),
                    &id,
                    "",
                    format!("no {resource} for this transaction"),
                );
                Status::with_error_details(Code::NotFound, format!("no {resource} for transaction {id}"), details)
            }
            TaxError::Internal(error) => status::anyhow_failure(&error),
        }
    }
}
