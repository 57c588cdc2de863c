//! gRPC server bootstrap shared by every service, and the error helpers handlers use.
//!
//! [`serve`] runs a tonic server with:
//! - `grpc.health.v1.Health`: `NOT_SERVING` until the service's database and the broker answer,
//!   re-checked every few seconds, and `NOT_SERVING` again as soon as shutdown starts;
//! - server reflection, both `grpc.reflection.v1` and `v1alpha` (grpcurl 1.8 speaks only the
//!   latter);
//! - a layer that continues the caller's W3C trace (`traceparent` metadata) and logs every request
//!   with its method, gRPC code and latency;
//! - graceful shutdown: when the token fires the listener closes, in-flight requests finish, then
//!   [`serve`] returns.
//!
//! [`status`] holds the statuses every service shares. Services do not call [`serve`]
//! themselves: the [`kit`](crate::kit) does, with their routes and the health of their
//! components.

mod layer;
pub mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_stream_shim::TcpIncoming;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

pub use layer::{RequestTrace, RequestTraceLayer};
pub use status::invalid_argument;

use crate::auth::{AuthLayer, Authenticator};
use crate::error::{Error, Result};

/// What the health check probes before it reports `SERVING`.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The service's database.
    pub pool: PgPool,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap_servers: String,
    /// How often to re-check.
    pub interval: Duration,
    /// The service's other components (its background tasks), each healthy or not.
    pub components: Components,
}

/// Health of named components (`relay-0`, `consumer-tax`, …), shared between the tasks' supervisor
/// and the health service. The service is `SERVING` only while every component is healthy; each
/// component is also reported under its own name (`grpcurl -d '{"service":"relay-0"}' …`).
#[derive(Debug, Clone, Default)]
pub struct Components(Arc<Mutex<BTreeMap<String, bool>>>);

impl Components {
    /// Records whether `name` is healthy.
    pub fn set(&self, name: &str, healthy: bool) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), healthy);
    }

    /// Every component and whether it is healthy.
    pub fn snapshot(&self) -> Vec<(String, bool)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, healthy)| (name.clone(), *healthy))
            .collect()
    }
}

/// How the server is served: per-connection and per-request bounds, and TLS.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// HTTP/2 streams (concurrent requests) one connection may open.
    pub max_concurrent_streams: u32,
    /// Longest a request runs on the server (the client's `grpc-timeout` may be shorter).
    pub request_timeout: Duration,
    /// TLS (and mTLS) of the server; `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Serves `routes` (the service's own tonic services, each wrapped by its generated `*Server`)
/// plus health and reflection on `listener` until `shutdown` fires. `service_names` are the full
/// names the health service reports on (e.g. `fintech.payments.v1.PaymentsService`). Every
/// request passes `authenticator` first ([`crate::auth`]).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    readiness: Readiness,
    authenticator: Authenticator,
    options: ServerOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let names: Vec<String> = std::iter::once(String::new())
        .chain(service_names.iter().map(|name| (*name).to_owned()))
        .collect();
    for name in &names {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }

    // Reflection advertises exactly what this server serves (not every contract of the
    // workspace), under both protocol versions.
    let advertised: Vec<&str> = service_names
        .iter()
        .copied()
        .chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .collect();
    let reflection = || {
        advertised.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(fintech_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
                // google.rpc.BadRequest & co., so grpcurl can print error details.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .include_reflection_service(false),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|error| Error::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|error| Error::Reflection(error.to_string()))?;

    let readiness_task = tokio::spawn(watch_readiness(
        reporter.clone(),
        names.clone(),
        readiness,
        shutdown.clone(),
    ));

    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, services = ?service_names, "grpc server listening");
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let drain_signal = {
        let shutdown = shutdown.clone();
        let reporter = reporter.clone();
        let names = names.clone();
        async move {
            shutdown.cancelled().await;
            for name in &names {
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
            tracing::info!("grpc server draining in-flight requests");
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
        tracing::info!("grpc server serves TLS");
    }
    let served = builder
        .max_concurrent_streams(options.max_concurrent_streams)
        .timeout(options.request_timeout)
        // The trace layer is outermost, so refused requests are logged with their code too.
        .layer(
            tower::ServiceBuilder::new()
                .layer(RequestTraceLayer)
                .layer(AuthLayer::new(authenticator)),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpIncoming::new(listener), drain_signal)
        .await;
    readiness_task.abort();
    served?;
    tracing::info!("grpc server stopped");
    Ok(())
}

async fn watch_readiness(
    reporter: tonic_health::server::HealthReporter,
    names: Vec<String>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut last: Option<bool> = None;
    let mut last_components: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        let database = crate::db::reachable(&readiness.pool).await;
        let broker = crate::kafka::broker_reachable(&readiness.kafka_bootstrap_servers, Duration::from_secs(2)).await;
        readiness.components.set("database", database);
        readiness.components.set("broker", broker);
        let components = readiness.components.snapshot();
        let unhealthy: Vec<&str> = components
            .iter()
            .filter(|(_, healthy)| !healthy)
            .map(|(name, _)| name.as_str())
            .collect();
        for (name, healthy) in &components {
            if last_components.get(name) != Some(healthy) {
                let status = if *healthy {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(name, status).await;
                last_components.insert(name.clone(), *healthy);
            }
        }
        let ready = unhealthy.is_empty() && !shutdown.is_cancelled();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in &names {
                reporter.set_service_status(name, status).await;
            }
            tracing::info!(ready, ?unhealthy, "health status changed");
            last = Some(ready);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(readiness.interval) => {}
        }
    }
}

/// Incoming-connection stream over a bound listener (keeps `tokio-stream` out of the services).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::net::{TcpListener, TcpStream};

    /// Accepted connections of a listener, as the stream tonic serves from.
    #[derive(Debug)]
    pub(crate) struct TcpIncoming {
        listener: TcpListener,
    }

    impl TcpIncoming {
        pub(crate) fn new(listener: TcpListener) -> Self {
            Self { listener }
        }
    }

    impl futures::Stream for TcpIncoming {
        type Item = std::io::Result<TcpStream>;

        fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.listener.poll_accept(context) {
                Poll::Ready(Ok((stream, _))) => {
                    let _ = stream.set_nodelay(true);
                    Poll::Ready(Some(Ok(stream)))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}
