//! The services under test, run as real processes (the binaries `bench/run` built), each with its
//! own fresh database, a free loopback port and the run's topic prefix, so their CPU and memory
//! can be read per process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A service process; killed when dropped if [`ServiceProcess::stop`] was not called.
#[derive(Debug)]
pub struct ServiceProcess {
    /// Short name (`payments`).
    pub name: String,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Its log file (stderr and stdout).
    pub log: PathBuf,
    child: Option<Child>,
    pid: u32,
}

pub use fintech_devkit::free_port;

impl ServiceProcess {
    /// Starts `binary` listening on a free port, with `env` on top of the inherited environment.
    pub fn spawn(name: &str, binary: &Path, env: &[(&str, String)], log: PathBuf) -> anyhow::Result<Self> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let log_file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .env("GRPC_LISTEN_ADDR", &address)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        for (variable, value) in env {
            command.env(variable, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({})", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            address,
            log,
            pid: child.id(),
            child: Some(child),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until `grpc.health.v1` reports `service` as SERVING (database and broker reachable)
    /// and returns a channel to it; fails early with the end of the log if the process exits.
    pub async fn wait_serving(&mut self, service: &str, timeout: Duration) -> anyhow::Result<Channel> {
        let deadline = Instant::now() + timeout;
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        loop {
            self.ensure_running()?;
            let state = match endpoint.connect().await {
                Ok(channel) => {
                    let answer = HealthClient::new(channel.clone())
                        .check(HealthCheckRequest {
                            service: service.to_owned(),
                        })
                        .await;
                    match answer {
                        Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                            return Ok(channel);
                        }
                        Ok(response) => format!("health status {}", response.get_ref().status),
                        Err(status) => format!("health check failed: {}", status.message()),
                    }
                }
                Err(error) => format!("not accepting connections: {error}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} did not become SERVING within {timeout:?} ({state}); end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGTERM (graceful shutdown: drains requests, stops relays), SIGKILL after `timeout`.
    pub async fn stop(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `kill` the command: the workspace forbids unsafe code, so no libc::kill here.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Counts lines at WARN or ERROR level in a service log (text or JSON format).
pub fn count_problems(path: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let warnings = text
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains("\"level\":\"WARN\""))
        .count();
    let errors = text
        .lines()
        .filter(|line| line.contains(" ERROR ") || line.contains("\"level\":\"ERROR\""))
        .count();
    (warnings, errors)
}
