//! A private broker process for tests that stop and restart it (the shared one must stay up).
//!
//! Runs the same Kafka-protocol broker as the local stack (Tansu, `TANSU_BIN` or `tansu` from
//! `~/.cargo/bin`) on a free loopback port, with durable SQLite storage in a temporary folder, so a
//! restart keeps every record.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A broker owned by one test; killed when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    fintech_devkit::free_port().expect("a free loopback port")
}

impl PrivateBroker {
    /// Starts a broker and waits until it answers.
    pub async fn start() -> Self {
        let mut broker = Self {
            port: free_port(),
            data: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        broker.resume().await;
        broker
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker process (SIGKILL: nothing is flushed on the way out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker process (SIGSTOP): connections stay open, requests go unanswered, as with
    /// a broker stalled on its disk.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("broker running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the broker again on the same port and data, and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Tansu resolves the SQLite path against its working directory.
        let storage = "sqlite://tansu.db";
        fintech_devkit::prepare_tansu_storage(&self.data.path().join("tansu.db")).expect("broker storage prepared");
        let log = std::fs::File::create(self.data.path().join("broker.log")).expect("broker log");
        let child = Command::new(fintech_devkit::tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", storage, "--cluster-id", "fintech-test"])
            .current_dir(self.data.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts (deploy/local/up installs it)");
        self.child = Some(child);
        let bootstrap = self.bootstrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !fintech_platform::kafka::broker_reachable(&bootstrap, Duration::from_secs(1)).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "private broker did not answer within 30s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
