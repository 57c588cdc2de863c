//! The services under test, run as real processes (the binaries `bench/run` built), each with its
//! own fresh database, a free loopback port and the run's topic prefix, so their CPU and memory
//! can be read per process. Spawning, exit checks and shutdown are `fintech_devkit::process`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use fintech_devkit::process::Process;
pub use fintech_devkit::{free_port, process::log_tail};
use tonic::transport::Channel;

use crate::report::LogSummary;

/// A service process; killed when dropped if [`ServiceProcess::stop`] was not called.
#[derive(Debug)]
pub struct ServiceProcess {
    /// Short name (`payments`).
    pub name: String,
    /// `127.0.0.1:<port>`.
    pub address: String,
    process: Process,
}

impl ServiceProcess {
    /// Starts `binary` listening on a free port, with `env` on top of the inherited environment.
    pub fn spawn(name: &str, binary: &Path, env: &[(&str, String)], log: &Path) -> anyhow::Result<Self> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let mut command = Command::new(binary);
        command.env("GRPC_LISTEN_ADDR", &address).envs(env.iter().cloned());
        Ok(Self {
            name: name.to_owned(),
            address,
            process: Process::spawn(name, command, log)?,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits until `grpc.health.v1` reports `service` as SERVING (database and broker reachable)
    /// and returns a channel to it; fails early with the end of the log if the process exits.
    pub async fn wait_serving(&mut self, service: &str, timeout: Duration) -> anyhow::Result<Channel> {
        let process = &mut self.process;
        fintech_devkit::process::wait_serving(&self.address, service, timeout, || process.ensure_running())
            .await
            .with_context(|| {
                format!(
                    "{} is not serving; end of {}:\n{}",
                    self.name,
                    self.process.log().display(),
                    log_tail(self.process.log(), 20)
                )
            })
    }

    /// Fails (with the end of its log) if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }

    /// SIGTERM (graceful shutdown: drains requests, stops relays), SIGKILL after `grace`; then
    /// what its log says.
    pub fn stop(&mut self, grace: Duration) -> LogSummary {
        tokio::task::block_in_place(|| self.process.stop(grace));
        summarize_log(self.process.log())
    }
}

/// Counts the warnings and errors of a service log (text or JSON format), consumer-group
/// assignments and session timeouts, and keeps its last three problems.
fn summarize_log(path: &Path) -> LogSummary {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<(&str, Option<&str>)> = text
        .lines()
        .map(|line| {
            let level = ["WARN", "ERROR"]
                .into_iter()
                .find(|level| line.contains(&format!(" {level} ")) || line.contains(&format!("\"level\":\"{level}\"")));
            (line, level)
        })
        .collect();
    let count = |wanted: &str| lines.iter().filter(|(_, level)| *level == Some(wanted)).count();
    LogSummary {
        warnings: count("WARN"),
        errors: count("ERROR"),
        assignments: text.matches("partitions assigned").count(),
        session_timeouts: text.matches("SESSTMOUT").count(),
        last_problems: lines
            .iter()
            .rev()
            .filter(|(_, level)| level.is_some())
            .take(3)
            .map(|(line, _)| line.chars().take(300).collect())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_summary_counts_both_formats() {
        let path = std::env::temp_dir().join(format!("bench-log-{}.log", std::process::id()));
        std::fs::write(
            &path,
            "2026 WARN slow\n{\"level\":\"ERROR\",\"msg\":\"x\"}\nINFO partitions assigned\n2026 ERROR SESSTMOUT\n",
        )
        .expect("write log");
        let summary = summarize_log(&path);
        assert_eq!((summary.warnings, summary.errors), (1, 2));
        assert_eq!((summary.assignments, summary.session_timeouts), (1, 1));
        assert_eq!(summary.last_problems.len(), 3);
        let _ = std::fs::remove_file(&path);
    }
}
