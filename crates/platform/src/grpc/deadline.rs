//! Request deadlines, end to end (ADR 0017).
//!
//! A client's `grpc-timeout` bounds the whole request: [`DeadlineLayer`] answers
//! `DEADLINE_EXCEEDED` when the handler has not finished by then (dropping it: an open database
//! transaction rolls back, nothing half-written), and makes the deadline visible to the handler's
//! task ([`remaining`]) so the database work is bounded too: [`crate::db::bound_by_deadline`]
//! sets `SET LOCAL statement_timeout` from what is left, so PostgreSQL itself cancels a statement
//! (and releases its locks) instead of running on for a caller that gave up. A statement cancelled
//! that way is SQLSTATE 57014, which `grpc::status` also answers with `DEADLINE_EXCEEDED`.
//!
//! The layer's deadline is a little earlier than the client's ([`safety_margin`]) so the answer
//! reaches the client before its own timer fires, and so it wins the race against tonic's built-in
//! `grpc-timeout` handling, which would answer `CANCELLED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Time left before the current request's deadline; `None` outside a request or when the client
/// set no `grpc-timeout`.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Runs `future` with `deadline` visible to [`remaining`] (for work a request hands to another
/// task, and for tests).
pub async fn with_deadline<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(deadline, future).await
}

/// How much earlier than the client's deadline the server gives up: a tenth, at most 50 ms.
pub fn safety_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(50))
}

/// Parses a `grpc-timeout` header value (`<1-8 digits><H|M|S|m|u|n>`); `None` when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Bounds every request by its `grpc-timeout` (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] builds.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Deadline<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        // The clone is not ready; the one polled ready is used (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(timeout) = timeout else {
            return Box::pin(inner.call(request));
        };
        let deadline = Instant::now() + timeout.saturating_sub(safety_margin(timeout));
        let method = request.uri().path().to_owned();
        Box::pin(async move {
            let handled = DEADLINE.scope(deadline, tokio::time::timeout_at(deadline, inner.call(request)));
            match handled.await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(%method, timeout_ms = timeout.as_millis() as u64, "request deadline passed");
                    Ok(
                        tonic::Status::deadline_exceeded("the request's deadline passed before it completed")
                            .into_http(),
                    )
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        for bad in ["", "S", "123456789S", "1s", "-1S", "1.5S", "12"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_deadline_is_visible_inside_the_request_only() {
        assert_eq!(remaining(), None);
        let left = with_deadline(Instant::now() + Duration::from_secs(5), async { remaining() }).await;
        assert!(left.is_some_and(|left| left <= Duration::from_secs(5) && left > Duration::from_secs(4)));
    }
}
