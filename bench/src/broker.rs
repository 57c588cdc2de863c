//! The run's own broker: the same Tansu binary and SQLite storage engine as the local stack
//! (`deploy/local/up`), on a free loopback port with its data in the run's work folder.
//!
//! Why not the shared broker at `KAFKA_BOOTSTRAP_SERVERS`: other engineers' test suites use it at
//! the same time, and on Tansu 0.6.0 a busy broker answers group heartbeats late enough for
//! consumers to hit `session.timeout.ms` (librdkafka `SESSTMOUT`), after which a consumer can sit
//! without partitions. A benchmark on that broker measures its neighbours, and its peak load breaks
//! their tests. A private broker isolates both ways; `--shared-broker` still runs on the shared one.
//! Its topics are never deleted (Tansu deletes every topic on any DeleteTopics); the whole data
//! folder is removed with the process instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::services::{free_port, log_tail};

/// A Tansu process owned by the run; killed and its data removed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    /// `127.0.0.1:<port>`.
    pub bootstrap: String,
    /// Its data and log folder.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts Tansu with SQLite storage under `dir` and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let log = dir.join("broker.log");
        let log_file = std::fs::File::create(&log)?;
        fintech_devkit::prepare_tansu_storage(&dir.join("tansu.db"))?;
        let child = Command::new(fintech_devkit::tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            // Relative to the working directory, as deploy/local/up runs it.
            .args(["--storage-engine", "sqlite://tansu.db", "--cluster-id", "fintech-bench"])
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (deploy/local/up installs it; TANSU_BIN overrides)",
                    fintech_devkit::tansu_binary().display()
                )
            })?;
        let mut broker = Self {
            bootstrap: format!("127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fintech_platform::kafka::broker_reachable(&broker.bootstrap, Duration::from_secs(1)).await {
            if let Some(child) = broker.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("the broker exited ({status}):\n{}", log_tail(&log, 20));
            }
            if Instant::now() >= deadline {
                bail!("the broker did not answer within 30 s:\n{}", log_tail(&log, 20));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(broker)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The first panic in the broker's log, if it panicked (its storage task does not recover).
    pub fn panic(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
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
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("tansu.db"))
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for file in ["tansu.db", "tansu.db-wal", "tansu.db-shm"] {
            let _ = std::fs::remove_file(self.dir.join(file));
        }
    }
}
