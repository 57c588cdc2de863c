//! The service kit: what every service's `run()` declares, and everything it then owns.
//!
//! A service declares its database and migrations ([`Kit::start`]), its gRPC services
//! ([`Kit::grpc`]), its consumers ([`Kit::consumer`]: topics + handler) and its background jobs
//! ([`Kit::job`]); the outbox relays come from `OUTBOX_RELAYS`. [`Kit::serve`] does the rest, the
//! same way for every service:
//!
//! - **start-up order**: database reachable and migrated (in [`Kit::start`]) → relays, consumers
//!   and jobs started → gRPC served (health `NOT_SERVING` until the database answers);
//! - **health per component**: `database`, `broker`, `outbox` (parked rows) and every task
//!   (`relay-0`, `consumer-tax`, `job-retention`, `job-deadline-sweeper`) are reported under their
//!   own names, `NOT_SERVING` while they cannot do their work (a relay that cannot publish, a
//!   consumer retrying a record). The overall service status depends only on what answering RPCs
//!   needs: the database, and every task alive. A service whose broker is down keeps taking
//!   commands (its outbox holds their events) and stays `SERVING` (ADR 0013);
//! - **platform jobs**: retention of published outbox rows, idempotency keys and inbox rows
//!   ([`crate::retention`], ADR 0014) and the outbox monitor (backlog and parked-row metrics);
//! - **supervision**: a task that returns an error, panics, or ends before it was asked to stop is
//!   logged with its name, marks its component (and so the service) `NOT_SERVING` and starts the
//!   shutdown; [`Kit::serve`] then returns an error, so the process exits non-zero and its
//!   orchestrator restarts it;
//! - **one shutdown order with a deadline**: stop accepting and drain in-flight requests for at
//!   most `SHUTDOWN_GRACE_MS`; stop the consumers at a record boundary (the record or batch in hand
//!   is finished and its offset stored); stop the jobs; let the relays finish their round; close
//!   the pool. The background stages together get another `SHUTDOWN_GRACE_MS`; a task still
//!   running after that is abandoned and named in the log.
//!
//! A service's binary is [`main`] with the service's [`Service`] implementation.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::auth::{Authenticator, Policy};
use crate::config::PlatformConfig;
use crate::grpc::{Components, Readiness};
use crate::idempotency::IdempotencyStore;
use crate::kafka::EventProducer;
use crate::kafka::consumer::{ConsumerSettings, EventHandler, run_consumer};
use crate::{db, outbox};

/// How long the database may stay unreachable at start-up before the service gives up.
pub const DATABASE_START_WAIT: Duration = Duration::from_secs(30);
/// How often health re-probes the database and the broker.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// A service the kit can run as a binary and as a test instance.
pub trait Service: 'static {
    /// Short name (`payments`): CloudEvents source, client ids, OpenTelemetry `service.name`.
    const NAME: &'static str;
    /// Default gRPC port.
    const DEFAULT_PORT: u16;
    /// Every setting of the service, the shared ones included.
    type Config: AsRef<PlatformConfig> + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// The service's defaults on top of `platform` (tests start from these).
    fn config(platform: PlatformConfig) -> Self::Config;

    /// Reads the settings from the environment; the error names the variable at fault. The
    /// default reads only the shared ones.
    fn config_from_env() -> crate::Result<Self::Config> {
        Ok(Self::config(PlatformConfig::from_env(Self::NAME, Self::DEFAULT_PORT)?))
    }

    /// Runs the service on `listener` until `shutdown` fires (or one of its tasks fails).
    fn run(
        config: Self::Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The whole `main` of a service binary: reads the settings, sets up telemetry, listens, runs until
/// SIGTERM/SIGINT. An error (bad setting, port taken, failed task) ends the process non-zero.
pub fn main<S: Service>() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async {
        let config = S::config_from_env()?;
        let _telemetry = crate::telemetry::init(S::NAME)?;
        let address = config.as_ref().grpc_listen_addr;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("GRPC_LISTEN_ADDR: cannot listen on {address}"))?;
        let result = S::run(config, listener, crate::shutdown::on_signals()).await;
        if let Err(error) = &result {
            tracing::error!(
                error = format!("{error:#}"),
                service = S::NAME,
                "service stopped on a failure"
            );
        }
        result
    })
}

/// When a supervised task is stopped, relative to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Consumers: first, so no new effect starts once requests are drained.
    Consumers,
    /// Background jobs.
    Jobs,
    /// Relays: last, so what the consumers and jobs wrote is still published.
    Relays,
}

type TaskFuture = futures::future::BoxFuture<'static, anyhow::Result<()>>;

struct Task {
    name: String,
    stage: Stage,
    start: Box<dyn FnOnce(CancellationToken) -> TaskFuture + Send>,
}

/// A service being assembled: its pool, settings, routes and tasks. See the [module](self) docs.
pub struct Kit {
    config: PlatformConfig,
    pool: PgPool,
    components: Components,
    routes: Routes,
    service_names: Vec<&'static str>,
    tasks: Vec<Task>,
}

impl std::fmt::Debug for Kit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Kit")
            .field("service", &self.config.service_name)
            .field("grpc", &self.service_names)
            .field(
                "tasks",
                &self.tasks.iter().map(|task| task.name.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Kit {
    /// Connects to the service's database (waiting up to [`DATABASE_START_WAIT`] for it) and
    /// applies the platform migrations and then `migrator`.
    pub async fn start(config: &PlatformConfig, migrator: &'static Migrator) -> anyhow::Result<Self> {
        let pool = db::connect_with(
            &config.database_url,
            config.database_max_connections,
            DATABASE_START_WAIT,
            &config.database_timeouts,
        )
        .await
        .context("DATABASE_URL: cannot connect")?;
        db::migrate(&pool, migrator).await.context("migrate the database")?;
        Ok(Self {
            config: config.clone(),
            pool,
            components: Components::default(),
            routes: Routes::default(),
            service_names: Vec::new(),
            tasks: Vec::new(),
        })
    }

    /// The service's pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The settings.
    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    /// The idempotency store of the service's commands (Redis fast path when `REDIS_URL` is set).
    pub fn idempotency(&self) -> anyhow::Result<IdempotencyStore> {
        IdempotencyStore::new(self.config.redis_url.as_deref()).context("REDIS_URL")
    }

    /// Serves `server` (a generated `*Server`), with the message-size limits of the settings;
    /// health and reflection report it under its full name.
    pub fn grpc<S>(mut self, server: S) -> Self
    where
        S: fintech_proto::MessageLimits
            + tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes = self
            .routes
            .add_service(server.with_message_limits(self.config.grpc_max_message_bytes));
        self
    }

    /// Consumes `topics` (unprefixed) in consumer group `group` (prefixed like the topics), sending
    /// what can never be processed to `dead_letter_topic`. The consumer settings (lanes, batches,
    /// static membership, fetch wait) come from the platform settings.
    pub fn consumer(
        mut self,
        group: &str,
        topics: &[&str],
        dead_letter_topic: &str,
        handler: Arc<dyn EventHandler>,
    ) -> Self {
        let config = &self.config;
        let mut settings = ConsumerSettings::new(
            config.kafka_bootstrap_servers.clone(),
            config.topic(group),
            topics.iter().map(|topic| config.topic(topic)).collect(),
            config.topic(dead_letter_topic),
        );
        settings.group_instance_id = config.kafka_group_instance_id.clone();
        settings.lanes = config.kafka_consumer_lanes;
        settings.max_batch = config.kafka_consumer_max_batch;
        settings.fetch_wait_max = config.kafka_fetch_wait_max;
        settings.max_attempts = config.kafka_max_attempts;
        settings.max_retry = config.kafka_max_retry;
        let name = format!("consumer-{group}");
        settings.health = Some(self.components.component(&name));
        let bootstrap = config.kafka_bootstrap_servers.clone();
        let client_id = format!("{}-dead-letters", config.service_name);
        self.tasks.push(Task {
            name,
            stage: Stage::Consumers,
            start: Box::new(move |stop| {
                async move {
                    let dead_letters = EventProducer::new(&bootstrap, &client_id, outbox::RELAY_DELIVERY_TIMEOUT)?;
                    run_consumer(settings, handler, dead_letters, stop).await?;
                    Ok(())
                }
                .boxed()
            }),
        });
        self
    }

    /// Runs `job` until its token fires; `name` appears in logs and health (`job-<name>`).
    pub fn job<F, Fut>(mut self, name: &str, job: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push(Task {
            name: format!("job-{name}"),
            stage: Stage::Jobs,
            start: Box::new(move |stop| job(stop).boxed()),
        });
        self
    }

    /// The jobs every service runs on its platform tables: retention (`job-retention`) and the
    /// outbox monitor (`job-outbox-monitor`, which also reports the `outbox` component).
    fn platform_jobs(self) -> Self {
        let (pool, service) = (self.pool.clone(), self.config.service_name.clone());
        let settings = crate::retention::RetentionSettings::of(&self.config);
        let retention_health = self.components.component("job-retention");
        let outbox_health = self.components.component("outbox");
        let (monitor_pool, monitor_service) = (pool.clone(), service.clone());
        self.job("retention", move |stop| async move {
            crate::retention::run(pool, settings, service, retention_health, stop).await;
            Ok(())
        })
        .job("outbox-monitor", move |stop| async move {
            crate::retention::monitor_outbox(monitor_pool, monitor_service, outbox_health, HEALTH_INTERVAL, stop).await;
            Ok(())
        })
    }

    /// Serves until `shutdown` fires or a task fails, then shuts down in order (see the
    /// [module](self) docs). Returns an error when a task failed or the server could not run.
    pub async fn serve(mut self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Before anything starts: every RPC must declare its scope, and the keys must load.
        let policy = Policy::for_services(fintech_proto::FILE_DESCRIPTOR_SET, &self.service_names)
            .context("the contract's authorization rules")?;
        let authenticator = Authenticator::new(&self.config.auth, policy)
            .await
            .context("authentication")?;
        // Before any task starts: an unreadable certificate stops the start-up, nothing half-up.
        let tls = self
            .config
            .grpc_tls
            .as_ref()
            .map(crate::tls::GrpcTls::server_config)
            .transpose()?;
        for index in 0..self.config.outbox_relays {
            let name = format!("relay-{index}");
            let relay = outbox::relay(&self.pool, &self.config, index, Some(self.components.component(&name)))?;
            self.tasks.push(Task {
                name,
                stage: Stage::Relays,
                start: Box::new(move |stop| {
                    async move {
                        relay.run(stop).await;
                        Ok(())
                    }
                    .boxed()
                }),
            });
        }

        self = self.platform_jobs();
        let components = self.components.clone();
        let stopping = CancellationToken::new();
        let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let mut running = Vec::new();
        for task in std::mem::take(&mut self.tasks) {
            components.set(&task.name, true);
            running.push(supervise(task, components.clone(), stopping.clone(), failure.clone()));
        }

        // The server stops on the caller's signal or on the first failed task.
        let serving = CancellationToken::new();
        let forward = {
            let (shutdown, stopping, serving) = (shutdown.clone(), stopping.clone(), serving.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = stopping.cancelled() => {}
                }
                serving.cancel();
            })
        };
        let readiness = Readiness {
            pool: self.pool.clone(),
            kafka_bootstrap_servers: self.config.kafka_bootstrap_servers.clone(),
            interval: HEALTH_INTERVAL,
            components,
        };
        let grace = self.config.shutdown_grace;
        let server = crate::grpc::serve(
            listener,
            self.routes,
            &self.service_names,
            readiness,
            authenticator,
            crate::grpc::ServerOptions {
                max_concurrent_streams: self.config.grpc_max_concurrent_streams,
                request_timeout: self.config.grpc_request_timeout,
                tls,
            },
            serving.clone(),
        );
        tokio::pin!(server);
        let served = tokio::select! {
            served = &mut server => served.map_err(anyhow::Error::from),
            () = async { serving.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "requests still in flight after the shutdown grace; closing them");
                Ok(())
            }
        };
        forward.abort();

        // Background work, in stage order, within one more grace period.
        stopping.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        running.sort_by_key(|task| task.stage);
        for task in running {
            task.stop.cancel();
            if tokio::time::timeout_at(deadline, task.handle).await.is_err() {
                tracing::error!(task = %task.name, "task did not stop within the shutdown grace; abandoned");
            }
        }
        self.pool.close().await;
        tracing::info!(service = %self.config.service_name, "stopped");

        let failed = failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match failed {
            Some(error) => Err(error),
            None => served.context("grpc server"),
        }
    }
}

struct Running {
    name: String,
    stage: Stage,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Starts `task`; when it ends on its own (error, panic, or return before it was asked to stop),
/// records the failure, marks its component unhealthy and starts the shutdown.
fn supervise(
    task: Task,
    components: Components,
    stopping: CancellationToken,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
) -> Running {
    let stop = CancellationToken::new();
    let name = task.name.clone();
    let future = (task.start)(stop.clone());
    let watched = stop.clone();
    let handle = tokio::spawn(async move {
        let outcome = AssertUnwindSafe(future).catch_unwind().await;
        let error = match outcome {
            Ok(Ok(())) if watched.is_cancelled() => return,
            Ok(Ok(())) => anyhow::anyhow!("task {name} ended before it was asked to stop"),
            Ok(Err(error)) => error.context(format!("task {name} failed")),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|message| (*message).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned());
                anyhow::anyhow!("task {name} panicked: {message}")
            }
        };
        tracing::error!(task = %name, error = format!("{error:#}"), "task failed; the service stops");
        components.set(&name, false);
        failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(error);
        stopping.cancel();
    });
    Running {
        name: task.name,
        stage: task.stage,
        stop,
        handle,
    }
}
