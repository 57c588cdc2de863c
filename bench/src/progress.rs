//! What the suite prints while it runs: one line per step and, during a scenario, one progress
//! line per second (operations, current rate, errors). Everything goes to stderr so stdout stays
//! free for whoever pipes the tool.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::stats::Live;

/// Prints one line to stderr.
pub fn say(line: impl AsRef<str>) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{}", line.as_ref());
}

/// Prints a step header.
pub fn step(line: impl AsRef<str>) {
    say(format!("--> {}", line.as_ref()));
}

/// A progress line printed every second until dropped.
#[derive(Debug)]
pub struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts printing `label`, elapsed/`total`, the counters of `live` and `extra()` (e.g. the
    /// current outbox backlog) once a second.
    pub fn start(
        label: impl Into<String>,
        total: Duration,
        live: Arc<Live>,
        extra: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    ) -> Self {
        let label = label.into();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last_ops = 0;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let (ops, errors) = live.snapshot();
                let elapsed = started.elapsed().as_secs_f64();
                let extra = extra.as_ref().map(|extra| extra()).unwrap_or_default();
                say(format!(
                    "    [{label}] {elapsed:5.1}s/{total:.0}s  ops {ops:>8}  {rate:>7.0}/s  errors {errors}{sep}{extra}",
                    total = total.as_secs_f64(),
                    rate = ops.saturating_sub(last_ops) as f64,
                    sep = if extra.is_empty() { "" } else { "  " },
                ));
                last_ops = ops;
            }
        });
        Self { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
