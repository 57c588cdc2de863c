//! Latency samples and error counts of one kind of operation, the live counters the progress line
//! reads, and the slope that tells a growing backlog from a bounded one.
//!
//! Latencies go into an HdrHistogram (microseconds, 3 significant digits: a percentile is within
//! 0.1 % of the exact one), so memory stays flat however long a scenario runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies and errors of one kind of operation, collected by one or more workers.
#[derive(Debug, Clone)]
pub struct Samples {
    histogram: Histogram<u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            // Auto-resizing: no upper bound to guess.
            histogram: Histogram::new(3).expect("3 significant digits are valid"),
            errors: 0,
            error_kinds: BTreeMap::new(),
        }
    }
}

impl Samples {
    /// Records one successful operation that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one successful operation that took `micros` microseconds.
    pub fn record_us(&mut self, micros: u64) {
        // `record` grows the histogram; only a value beyond its largest possible bound saturates.
        if self.histogram.record(micros).is_err() {
            self.histogram.saturating_record(micros);
        }
    }

    /// Records one failed operation; `kind` groups errors in the report (e.g. a gRPC code).
    pub fn error(&mut self, kind: impl Into<String>) {
        self.errors += 1;
        *self.error_kinds.entry(kind.into()).or_default() += 1;
    }

    /// Adds another worker's samples.
    pub fn merge(&mut self, other: Samples) {
        self.histogram
            .add(&other.histogram)
            .expect("an auto-resizing histogram takes any other");
        self.errors += other.errors;
        for (kind, count) in other.error_kinds {
            *self.error_kinds.entry(kind).or_default() += count;
        }
    }

    /// Successful operations.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Failed operations by kind.
    pub fn error_kinds(&self) -> &BTreeMap<String, u64> {
        &self.error_kinds
    }

    /// Percentiles of the recorded latencies (nearest rank, as HdrHistogram reports them).
    pub fn latency(&self) -> Latency {
        let histogram = &self.histogram;
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p95_ms: ms(histogram.value_at_quantile(0.95)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
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

/// Counters the workers bump and the progress line reads while a scenario runs.
#[derive(Debug, Default)]
pub struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
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
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_v)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if points.len() < 2 || variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut samples = Samples::default();
        for micros in 1..=100 {
            samples.record_us(micros * 1000);
        }
        let latency = samples.latency();
        assert_eq!(latency.count, 100);
        // Within HdrHistogram's 0.1 % of the nearest-rank values 50, 99 and 100 ms.
        for (value, exact) in [(latency.p50_ms, 50.0), (latency.p99_ms, 99.0), (latency.max_ms, 100.0)] {
            assert!((value - exact).abs() <= exact * 0.001, "{value} vs {exact}");
        }
        assert!((latency.mean_ms - 50.5).abs() < 0.1);
        assert_eq!(Samples::default().latency(), Latency::default());
    }

    #[test]
    fn merged_samples_keep_errors_by_kind() {
        let mut first = Samples::default();
        first.record(Duration::from_millis(1));
        first.error("Unavailable");
        let mut second = Samples::default();
        second.record(Duration::from_millis(3));
        second.error("Unavailable");
        second.error("Internal");
        first.merge(second);
        assert_eq!(first.count(), 2);
        assert_eq!(first.errors(), 3);
        assert_eq!(first.error_kinds()["Unavailable"], 2);
        assert!((first.latency().max_ms - 3.0).abs() < 0.01);
    }

    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|t| (f64::from(t), 3.0 * f64::from(t) + 1.0)).collect();
        assert!((slope(&points) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        assert_eq!(slope(&[]), 0.0);
    }
}
