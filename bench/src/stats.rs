//! Latency samples, percentiles and the live counters the progress line reads.
//!
//! Every latency is kept (microseconds, one `u64` each): a 20 s run at a few thousand operations
//! per second is well under a megabyte, and exact percentiles need no histogram tuning.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latencies and errors of one kind of operation, collected by one or more workers.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    latencies_us: Vec<u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

impl Samples {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one successful operation that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        self.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one successful operation that took `micros` microseconds.
    pub fn record_us(&mut self, micros: u64) {
        self.latencies_us.push(micros);
    }

    /// Records one failed operation; `kind` groups errors in the report (e.g. a gRPC code).
    pub fn error(&mut self, kind: impl Into<String>) {
        self.errors += 1;
        *self.error_kinds.entry(kind.into()).or_default() += 1;
    }

    /// Adds another worker's samples.
    pub fn merge(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        for (kind, count) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += count;
        }
    }

    /// Successful operations.
    pub fn count(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Failed operations by kind.
    pub fn error_kinds(&self) -> &BTreeMap<String, u64> {
        &self.error_kinds
    }

    /// Percentiles of the recorded latencies.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.latencies_us)
    }
}

/// Latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latency {
    /// The distribution of `micros` (nearest-rank percentiles).
    pub fn of(micros: &[u64]) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        let mut sorted = micros.to_vec();
        sorted.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let sum: u128 = sorted.iter().map(|&us| u128::from(us)).sum();
        Self {
            count: sorted.len() as u64,
            mean_ms: sum as f64 / sorted.len() as f64 / 1000.0,
            p50_ms: ms(percentile(&sorted, 50.0)),
            p95_ms: ms(percentile(&sorted, 95.0)),
            p99_ms: ms(percentile(&sorted, 99.0)),
            max_ms: ms(*sorted.last().unwrap_or(&0)),
        }
    }
}

/// Nearest-rank percentile of an ascending slice (`q` in 0..=100); 0 for an empty slice.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Counters the workers bump and the progress line reads while a scenario runs.
#[derive(Debug, Default)]
pub struct Live {
    /// Successful operations so far.
    pub ops: AtomicU64,
    /// Failed operations so far.
    pub errors: AtomicU64,
}

impl Live {
    /// One more success.
    pub fn ok(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// One more failure.
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// `(ops, errors)` so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.ops.load(Ordering::Relaxed), self.errors.load(Ordering::Relaxed))
    }
}

/// Slope (units per second) of the least-squares line through `points` (`(t, value)`); 0 with
/// fewer than two distinct times.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if variance == 0.0 { 0.0 } else { covariance / variance }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[test]
    fn latency_summary_in_milliseconds() {
        let latency = Latency::of(&[3000, 1000, 2000]);
        assert_eq!(latency.count, 3);
        assert_eq!(latency.p50_ms, 2.0);
        assert_eq!(latency.max_ms, 3.0);
        assert_eq!(latency.mean_ms, 2.0);
        assert_eq!(Latency::of(&[]), Latency::default());
    }

    #[test]
    fn merged_samples_keep_errors_by_kind() {
        let mut first = Samples::new();
        first.record(Duration::from_millis(1));
        first.error("Unavailable");
        let mut second = Samples::new();
        second.error("Unavailable");
        second.error("Internal");
        first.merge(second);
        assert_eq!(first.count(), 1);
        assert_eq!(first.errors(), 3);
        assert_eq!(first.error_kinds()["Unavailable"], 2);
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|t| (f64::from(t), 3.0 * f64::from(t) + 1.0)).collect();
        assert!((slope(&points) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }
}
