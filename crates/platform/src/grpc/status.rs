//! The statuses every service shares: field violations, and what a failure of the plumbing
//! (PostgreSQL, the broker, a bug) tells the client. Each service's `impl From<Error> for Status`
//! maps its own domain errors and hands every other failure to [`failure`], so a database outage
//! is `UNAVAILABLE` from every RPC of every service. Details are logged here, never sent.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::db::DbFault;
use fintech_types::Violations;

/// `INVALID_ARGUMENT` with one `google.rpc.BadRequest` field violation per rejected field.
pub fn invalid_argument(violations: &Violations) -> Status {
    let mut details = ErrorDetails::new();
    for violation in violations.iter() {
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
    }
    Status::with_error_details(Code::InvalidArgument, format!("invalid request: {violations}"), details)
}

/// `NOT_FOUND` with a `google.rpc.ResourceInfo` naming the resource by its protobuf full name
/// (`fintech.payments.v1.Order`): "order <id> not found".
pub fn not_found<M: prost::Name>(id: &str) -> Status {
    let what = M::NAME.to_lowercase();
    let mut details = ErrorDetails::new();
    details.set_resource_info(M::full_name(), id, "", format!("no such {what}"));
    Status::with_error_details(Code::NotFound, format!("{what} {id} not found"), details)
}

/// `FAILED_PRECONDITION` with one `google.rpc.PreconditionFailure` violation.
pub fn failed_precondition(kind: &str, subject: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::FailedPrecondition,
        description.clone(),
        ErrorDetails::with_precondition_failure_violation(kind, subject, description),
    )
}

/// The status of a failure that is not the caller's fault: `UNAVAILABLE` when the database cannot
/// be reached (retry later), `ABORTED` when the request lost against a concurrent one (retry now),
/// `DEADLINE_EXCEEDED` when a statement was cancelled, `INTERNAL` otherwise. The whole error
/// chain is logged; the client sees only the code and a fixed message.
pub fn failure(error: &(dyn std::error::Error + 'static)) -> Status {
    match DbFault::in_chain(error) {
        Some(fault) => database_fault(fault, &DisplayChain(error)),
        None => {
            tracing::error!(error = %DisplayChain(error), "request failed");
            Status::internal("internal error; the request can be retried")
        }
    }
}

/// [`failure`] for an `anyhow::Error` (the internal variant of the services' errors).
pub fn anyhow_failure(error: &anyhow::Error) -> Status {
    failure(error.as_ref())
}

/// [`failure`] of a database error.
pub fn database(error: &sqlx::Error) -> Status {
    database_fault(DbFault::of(error), error)
}

fn database_fault(fault: DbFault, error: &dyn std::fmt::Display) -> Status {
    match fault {
        DbFault::Unavailable => {
            tracing::warn!(%error, "database unavailable");
            Status::unavailable("the database is unavailable; retry later")
        }
        DbFault::Conflict => {
            tracing::info!(%error, "request conflicted with a concurrent one");
            Status::aborted("the request conflicted with a concurrent one; retry")
        }
        DbFault::Cancelled => {
            tracing::warn!(%error, "statement cancelled");
            Status::deadline_exceeded("the request took too long and was cancelled; retry")
        }
        other => {
            tracing::error!(%error, fault = ?other, "database error");
            Status::internal("internal error; the request can be retried")
        }
    }
}

/// Displays an error with its sources, `outer: inner: innermost`.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(formatter, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_unavailable_through_any_wrapping() {
        let error = anyhow::Error::new(sqlx::Error::PoolTimedOut).context("insert order");
        assert_eq!(anyhow_failure(&error).code(), Code::Unavailable);
        let error = crate::Error::Database(sqlx::Error::PoolClosed);
        assert_eq!(failure(&error).code(), Code::Unavailable);
    }

    #[test]
    fn other_failures_are_internal_without_details() {
        let status = anyhow_failure(&anyhow::anyhow!("secret detail"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
