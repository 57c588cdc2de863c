//! The Temporal side of the service: the client the gRPC calls use (connected on first use, so
//! the service starts while Temporal is down and answers UNAVAILABLE until it is up) and the
//! worker that runs the saga (a supervised kit job, `job-temporal`, ADR 0024).
//!
//! The SDK runs workflows on a `LocalSet` (their state is not `Send`), so the worker gets a
//! thread of its own with a current-thread runtime; the job waits for it. A worker that stops on
//! an error (Temporal unreachable at start, a fatal poll error) is built again after a pause, so
//! a Temporal restart costs the time it is away and no more.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fintech_platform::CancellationToken;
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, Url};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use tokio::sync::OnceCell;

use crate::saga::{TransferActivities, TransferWorkflow};

/// Pause before a worker that stopped on an error is built again.
const WORKER_RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Where Temporal is.
#[derive(Debug, Clone)]
pub struct TemporalSettings {
    /// `http://host:port` of the frontend.
    pub url: String,
    /// Namespace.
    pub namespace: String,
    /// Task queue.
    pub task_queue: String,
}

/// Connects a client.
pub async fn connect(settings: &TemporalSettings) -> anyhow::Result<Client> {
    let url = Url::from_str(&settings.url).with_context(|| format!("TEMPORAL_ADDRESS: {:?}", settings.url))?;
    let connection = Connection::connect(
        ConnectionOptions::new(url)
            .identity(format!("transfers@{}", std::process::id()))
            .connect_timeout(Duration::from_secs(3))
            .build(),
    )
    .await
    .with_context(|| format!("connect to Temporal at {}", settings.url))?;
    Client::new(connection, ClientOptions::new(settings.namespace.clone()).build()).context("Temporal client")
}

/// A client connected on first use.
#[derive(Debug, Clone)]
pub struct LazyClient {
    settings: TemporalSettings,
    client: Arc<OnceCell<Client>>,
}

impl LazyClient {
    /// A client of `settings`, not connected yet.
    pub fn new(settings: TemporalSettings) -> Self {
        Self {
            settings,
            client: Arc::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &TemporalSettings {
        &self.settings
    }

    /// The connected client (connecting now if it is not yet).
    pub async fn get(&self) -> anyhow::Result<Client> {
        self.client.get_or_try_init(|| connect(&self.settings)).await.cloned()
    }
}

/// Runs the worker until `stop` fires.
pub async fn run_worker(
    settings: TemporalSettings,
    activities: TransferActivities,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_stop = stop.clone();
    std::thread::Builder::new()
        .name("temporal-worker".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("worker runtime")
                .and_then(|runtime| runtime.block_on(worker_loop(settings, activities, thread_stop)));
            let _ = done_tx.send(result);
        })
        .context("spawn the worker thread")?;
    done_rx.await.context("the worker thread ended without an answer")?
}

async fn worker_loop(
    settings: TemporalSettings,
    activities: TransferActivities,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let runtime = Runtime::from_current_tokio(Default::default()).context("Temporal runtime")?;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        match run_once(&runtime, &settings, activities.clone(), &stop).await {
            Ok(()) if stop.is_cancelled() => return Ok(()),
            Ok(()) => tracing::warn!("temporal worker stopped by itself; starting it again"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "temporal worker failed; starting it again"
            ),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(WORKER_RESTART_PAUSE) => {}
        }
    }
}

async fn run_once(
    runtime: &Runtime,
    settings: &TemporalSettings,
    activities: TransferActivities,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let client = connect(settings).await?;
    let options = WorkerOptions::new(settings.task_queue.clone())
        .register_workflow::<TransferWorkflow>()
        .context("register the transfer workflow")?
        .register_activities(activities)
        .build();
    let mut worker = Worker::new(runtime, client, options).context("Temporal worker")?;
    let shutdown = worker.shutdown_handle();
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            shutdown();
        })
    };
    tracing::info!(task_queue = %settings.task_queue, "temporal worker polling");
    let result = worker.run().await;
    watcher.abort();
    result.context("Temporal worker run")
}
