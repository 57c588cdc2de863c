//! gRPC server bootstrap shared by every service, and the error helpers handlers use.
//!
//! [`serve`] runs a tonic server with:
//! - `grpc.health.v1.Health`: the service `NOT_SERVING` until its database answers and while one
//!   of its tasks has failed, re-checked every few seconds, and `NOT_SERVING` again as soon as
//!   shutdown starts; every component (`database`, `broker`, `relay-0`, `consumer-…`, `outbox`,
//!   `job-…`) also under its own name, `NOT_SERVING` while it cannot do its work (ADR 0013);
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

pub mod deadline;
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

/// How one component is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ComponentState {
    /// `false` when something the service needs to answer RPCs is broken (the database, a task
    /// that died): the whole service is `NOT_SERVING`.
    essential: bool,
    /// `false` while the component cannot do its own work (a relay that cannot publish, a
    /// consumer retrying a record, parked outbox rows, an unreachable broker): the component is
    /// `NOT_SERVING`, the service keeps answering.
    working: bool,
}

/// Health of named components (`database`, `broker`, `relay-0`, `consumer-tax`, `outbox`, …),
/// shared between the tasks, their supervisor and the health service. Each component is reported
/// under its own name (`grpcurl -d '{"service":"relay-0"}' …`); the service as a whole is
/// `SERVING` while everything it needs to answer RPCs is (see [`set`](Self::set) and
/// [`report`](Self::report), ADR 0013).
#[derive(Debug, Clone, Default)]
pub struct Components(Arc<Mutex<BTreeMap<String, ComponentState>>>);

impl Components {
    fn update(&self, name: &str, change: impl FnOnce(&mut ComponentState)) {
        let mut components = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = components.entry(name.to_owned()).or_insert(ComponentState {
            essential: true,
            working: true,
        });
        change(state);
    }

    /// Records whether `name` is alive: a component that is not (the database, a task that
    /// failed) makes the whole service `NOT_SERVING`.
    pub fn set(&self, name: &str, healthy: bool) {
        self.update(name, |state| state.essential = healthy);
    }

    /// Records whether `name` can do its own work right now. A component that cannot is reported
    /// `NOT_SERVING` under its own name; the service stays `SERVING` (a payments instance whose
    /// relay cannot reach the broker still takes commands: its outbox keeps them).
    pub fn report(&self, name: &str, working: bool) {
        self.update(name, |state| state.working = working);
    }

    /// A handle through which one component reports on itself.
    pub fn component(&self, name: &str) -> Component {
        self.update(name, |_| {});
        Component {
            components: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Every component and whether it is healthy (alive and working).
    pub fn snapshot(&self) -> Vec<(String, bool)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, state)| (name.clone(), state.essential && state.working))
            .collect()
    }

    /// The components that make the whole service `NOT_SERVING`.
    pub fn broken(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, state)| !state.essential)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One component's handle on [`Components`] (see [`Components::report`]).
#[derive(Debug, Clone)]
pub struct Component {
    components: Components,
    name: String,
}

impl Component {
    /// A handle that reports to a registry nobody reads (tests, tools).
    pub fn detached(name: &str) -> Self {
        Components::default().component(name)
    }

    /// Records whether the component can do its work right now.
    pub fn report(&self, working: bool) {
        self.components.report(&self.name, working);
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
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
                .layer(AuthLayer::new(authenticator))
                .layer(deadline::DeadlineLayer),
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
    // One client for the life of the server, not one per probe.
    let broker_probe = crate::kafka::BrokerProbe::new(&readiness.kafka_bootstrap_servers);
    loop {
        let database = crate::db::reachable(&readiness.pool).await;
        let broker = match &broker_probe {
            Ok(probe) => probe.reachable(Duration::from_secs(2)).await,
            Err(_) => false,
        };
        readiness.components.set("database", database);
        readiness.components.report("broker", broker);
        let components = readiness.components.snapshot();
        for (name, healthy) in &components {
            if last_components.get(name) != Some(healthy) {
                let status = if *healthy {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(name, status).await;
                last_components.insert(name.clone(), *healthy);
                if !healthy {
                    tracing::warn!(component = %name, "component not serving");
                }
            }
        }
        let broken = readiness.components.broken();
        let ready = broken.is_empty() && !shutdown.is_cancelled();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in &names {
                reporter.set_service_status(name, status).await;
            }
            tracing::info!(ready, ?broken, "health status changed");
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
