//! Tower layer that continues the caller's trace and logs each request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

use crate::telemetry::{self, TraceHeaders};

/// Wraps every request in a `grpc.request` span whose parent is the W3C `traceparent` sent by the
/// client, and logs method, gRPC code and latency when it completes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTraceLayer;

impl<S> Layer<S> for RequestTraceLayer {
    type Service = RequestTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTrace { inner }
    }
}

/// The service [`RequestTraceLayer`] builds.
#[derive(Debug, Clone)]
pub struct RequestTrace<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RequestTrace<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let remote = TraceHeaders {
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        };
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
        );
        telemetry::set_remote_parent(&span, &remote);

        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(request).await;
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                match &result {
                    Ok(response) => {
                        // Errors travel as trailers-only responses, so their code is a header;
                        // a success carries it in the trailers, which is always 0.
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or("0")
                            .to_owned();
                        tracing::info!(method = %method, grpc_code = %code, elapsed_ms, "grpc request");
                    }
                    Err(error) => tracing::warn!(method = %method, %error, elapsed_ms, "grpc request failed"),
                }
                result
            }
            .instrument(span),
        )
    }
}
