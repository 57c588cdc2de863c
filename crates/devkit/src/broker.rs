//! A private Kafka-protocol broker: the same Tansu binary and SQLite storage engine as the local
//! stack (`deploy/local/up`), on a free loopback port, with its data in a folder of its own.
//!
//! Why not the shared broker at `KAFKA_BOOTSTRAP_SERVERS`: tests that stop, freeze or restart the
//! broker cannot do it to the one everyone else uses; and on Tansu 0.6.0 a busy broker answers
//! group heartbeats late enough for consumers to hit `session.timeout.ms`, so a benchmark on it
//! measures its neighbours and its peak load breaks their tests. A private broker isolates both
//! ways.
//!
//! Storage is durable SQLite, so [`PrivateBroker::kill`] followed by
//! [`PrivateBroker::start_again`] keeps every acknowledged record. Topics are never deleted (Tansu
//! deletes every topic on any DeleteTopics); the data goes with the value instead: when dropped,
//! the process is killed and its SQLite files removed (the whole folder too when the broker
//! created it, see [`PrivateBroker::start`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Longest wait for a starting broker to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The SQLite database, relative to the broker's working directory (its folder).
const STORAGE_FILE: &str = "tansu.db";

/// A Tansu process owned by one test or benchmark run; killed and its data removed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    /// `127.0.0.1:<port>`, the same across restarts.
    bootstrap: String,
    /// The data and log folder.
    dir: PathBuf,
    /// Set when the broker made its folder itself: removed with the value.
    _temp_dir: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a broker with its data in a fresh temporary folder (removed when dropped) and waits
    /// until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let temp_dir = tempfile::Builder::new()
            .prefix("fintech-broker-")
            .tempdir()
            .context("create a temporary folder for the broker")?;
        let dir = temp_dir.path().to_path_buf();
        Self::launch(dir, Some(temp_dir)).await
    }

    /// Starts a broker with its data and log (`broker.log`) under `dir` (created if missing) and
    /// waits until it answers. The folder stays when the value is dropped; only the SQLite files
    /// are removed.
    pub async fn start_in(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        Self::launch(dir.to_path_buf(), None).await
    }

    async fn launch(dir: PathBuf, temp_dir: Option<tempfile::TempDir>) -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        let mut broker = Self {
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
            _temp_dir: temp_dir,
            child: None,
        };
        broker.start_again().await?;
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The data and log folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's log (its stdout and stderr, across restarts).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker process (SIGKILL: nothing is flushed on the way out). The data stays for
    /// [`start_again`](Self::start_again).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker process (SIGSTOP): connections stay open, requests go unanswered, as with
    /// a broker stalled on its disk.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the broker is not running")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill {signal} {pid} failed ({status})");
        }
        Ok(())
    }

    /// Starts the broker (again, after [`kill`](Self::kill)) on the same port and data, and waits
    /// until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().context("poll the broker process")?.is_none() {
                bail!("the broker at {} is already running", self.bootstrap);
            }
            // It exited by itself (a panic in its storage task, say): start a new one.
            self.child = None;
        }
        let url = format!("tcp://{}", self.bootstrap);
        crate::prepare_tansu_storage(&self.dir.join(STORAGE_FILE))?;
        let log = self.log_file();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let binary = crate::tansu_binary();
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args([
                "--storage-engine",
                &format!("sqlite://{STORAGE_FILE}"),
                "--cluster-id",
                "fintech-private",
            ])
            // Tansu resolves the SQLite path against its working directory.
            .current_dir(&self.dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("broker log handle")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (deploy/local/up installs it; TANSU_BIN overrides)",
                    binary.display()
                )
            })?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        while !fintech_platform::kafka::broker_reachable(&self.bootstrap, Duration::from_secs(1)).await {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("poll the broker process")?
            {
                self.child = None;
                bail!(
                    "the broker at {} exited ({status}); {}:\n{}",
                    self.bootstrap,
                    log.display(),
                    crate::log_tail(&log, 20)
                );
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "the broker at {} did not answer within {}s; {}:\n{}",
                    self.bootstrap,
                    START_TIMEOUT.as_secs(),
                    log.display(),
                    crate::log_tail(&log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The first panic in the broker's log, if it panicked (its storage task does not recover).
    pub fn panic(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let mut lines = log.lines().skip_while(|line| !line.contains("panicked at"));
        let at = lines.next()?;
        let message = lines.next().unwrap_or_default();
        Some(format!("{} {}", at.trim(), message.trim()))
    }

    /// Size of the broker's data, bytes (SQLite database and its WAL).
    pub fn data_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(STORAGE_FILE))
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{STORAGE_FILE}{suffix}")));
        }
    }
}
