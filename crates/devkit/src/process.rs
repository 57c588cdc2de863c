//! Child processes that the benchmark and the integration tests run: a service binary or a broker
//! with its own environment and a log file, checked for an early exit (the error carries the end
//! of its log), stopped gracefully or killed, and never left behind (killed when dropped).
//!
//! Blocking on purpose: devkit has no async runtime of its own. [`Process::stop`] waits at most
//! its grace period; async callers run it under `tokio::task::block_in_place`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running child process; SIGKILLed when dropped unless it was stopped before.
#[derive(Debug)]
pub struct Process {
    name: String,
    log: PathBuf,
    pid: u32,
    child: Option<Child>,
}

impl Process {
    /// Starts `command` (program, arguments, environment and folder set by the caller) with stdin
    /// closed and stdout and stderr appended to `log`, so a restarted process keeps one log.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {name} ({})", command.get_program().to_string_lossy()))?;
        Ok(Self {
            name: name.to_owned(),
            log: log.to_path_buf(),
            pid: child.id(),
            child: Some(child),
        })
    }

    /// The name it was started under (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails, with the end of its log, if the process has exited or was stopped.
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

    /// Sends `signal` (`-TERM`, `-STOP`, `-CONT`, ...) through kill(1): the workspace forbids the
    /// unsafe call to libc.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args([signal, &self.pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {} failed", self.name);
        Ok(())
    }

    /// SIGTERM (a graceful shutdown: the services drain requests and stop their relays), then
    /// SIGKILL if the process has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.signal("-TERM").is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until the gRPC server at `address` (`host:port`) reports `service` as SERVING on
/// `grpc.health.v1` (its database and broker reachable) and returns a channel to it. `alive` is
/// asked before every attempt, so a process that exited fails at once (its error is returned);
/// after `timeout` the error says what the last attempt saw.
pub async fn wait_serving(
    address: &str,
    service: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<tonic::transport::Channel> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let deadline = Instant::now() + timeout;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    loop {
        alive()?;
        let state = match endpoint.connect().await {
            Ok(channel) => {
                let request = HealthCheckRequest {
                    service: service.to_owned(),
                };
                match HealthClient::new(channel.clone()).check(request).await {
                    Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => return Ok(channel),
                    Ok(response) => format!("health status {}", response.get_ref().status),
                    Err(status) => format!("health check failed: {}", status.message()),
                }
            }
            Err(error) => format!("not accepting connections: {error}"),
        };
        if Instant::now() >= deadline {
            bail!("{address} did not report {service:?} SERVING within {timeout:?} ({state})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_reports_the_end_of_its_log() {
        let log = std::env::temp_dir().join(format!("devkit-process-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new("sh");
        command.args(["-c", "echo first; echo last >&2"]);
        let mut process = Process::spawn("echo", command, &log).expect("sh starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while process.ensure_running().is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let error = process.ensure_running().expect_err("exited").to_string();
        assert!(
            error.contains("echo exited") && error.ends_with("first\nlast"),
            "{error}"
        );
        let _ = std::fs::remove_file(&log);
    }

    #[test]
    fn stop_ends_a_running_process_within_its_grace_period() {
        let log = std::env::temp_dir().join(format!("devkit-stop-{}.log", std::process::id()));
        let mut command = Command::new("sleep");
        command.arg("30");
        let mut process = Process::spawn("sleep", command, &log).expect("sleep starts");
        process.ensure_running().expect("running");
        let started = Instant::now();
        process.stop(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(process.ensure_running().is_err());
        let _ = std::fs::remove_file(&log);
    }
}
