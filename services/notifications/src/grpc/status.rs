//! The one place notifications errors become gRPC statuses. Internal details are logged, not sent.

use fintech_platform::grpc::status;
use fintech_proto::notifications as pb;
use tonic::Status;

use crate::domain::NotificationsError;

/// INVALID_ARGUMENT with a `google.rpc.BadRequest` per field, NOT_FOUND with the resource, a
/// failure of the plumbing as every service reports it.
impl From<NotificationsError> for Status {
    fn from(error: NotificationsError) -> Self {
        match error {
            NotificationsError::Invalid(violations) => status::invalid_argument(&violations),
            NotificationsError::EndpointNotFound(id) => status::not_found::<pb::Endpoint>(&id),
            NotificationsError::MessageNotFound(id) => status::not_found::<pb::Message>(&id),
            NotificationsError::EventNotFound(id) => status::not_found::<pb::Event>(&id),
            NotificationsError::Internal(error) => status::anyhow_failure(&error),
        }
    }
}
