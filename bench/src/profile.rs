//! CPU profiles of a process while a scenario runs, with `perf` (sampling `cpu-clock`, which works
//! in virtual machines without hardware counters). Optional: without `perf` the report says so.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

/// A flat profile: the hottest symbols of one process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// What was profiled, and when.
    pub title: String,
    /// Samples taken.
    pub samples: u64,
    /// `perf report` lines: share of samples, shared object, symbol.
    pub top: Vec<String>,
}

/// Starts `perf record` on `pid` for `seconds`; the handle yields the profile (or `None` when
/// perf is missing or failed).
pub fn start(pid: u32, seconds: u64, data: &Path, title: String) -> JoinHandle<Option<Profile>> {
    let data = data.to_path_buf();
    tokio::spawn(async move {
        let recorded = tokio::process::Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "499", "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .args(["--", "sleep", &seconds.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .ok()?;
        if !recorded.success() {
            return None;
        }
        let report = tokio::process::Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--sort",
                "dso,symbol",
                "--percent-limit",
                "1",
                "-i",
            ])
            .arg(&data)
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&report.stdout).into_owned();
        let _ = std::fs::write(data.with_extension("txt"), &text);
        Some(parse(&text, title))
    })
}

/// Waits for a started profile at most `timeout` past its end.
pub async fn finish(handle: JoinHandle<Option<Profile>>, timeout: Duration) -> Option<Profile> {
    tokio::time::timeout(timeout, handle).await.ok()?.ok()?
}

fn parse(text: &str, title: String) -> Profile {
    let samples = text
        .lines()
        .find(|line| line.starts_with("# Samples:"))
        .and_then(|line| line.trim_start_matches("# Samples:").split_whitespace().next())
        .and_then(|count| {
            let count = count.to_ascii_uppercase();
            match count.strip_suffix('K') {
                Some(thousands) => thousands.parse::<f64>().ok().map(|value| (value * 1000.0) as u64),
                None => count.parse().ok(),
            }
        })
        .unwrap_or(0);
    let top = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .take(25)
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .map(|line| line.chars().take(160).collect())
        .collect();
    Profile { title, samples, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_report_lines_are_kept_in_order() {
        let text = "# Samples: 4K of event 'cpu-clock'\n#\n    12.50%  payments  [.] sqlx_core::something\n     3.00%  libc.so.6  [.] memcpy\n\n";
        let profile = parse(text, "payments".to_owned());
        assert_eq!(profile.samples, 4000);
        assert_eq!(
            profile.top,
            ["12.50% payments [.] sqlx_core::something", "3.00% libc.so.6 [.] memcpy"]
        );
    }
}
