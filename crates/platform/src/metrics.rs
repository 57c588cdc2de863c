//! The pipeline's metrics: outbox backlog and oldest age, parked rows, consumer lag, retries, dead
//! letters, publish failures and retention deletes.
//!
//! The plumbing records every value in one process-wide registry ([`set_gauge`], [`add`]); the
//! OpenTelemetry instruments are observable gauges and counters whose callbacks read that registry
//! (see [`register`], called by [`crate::telemetry::init`] with the SDK `MeterProvider`), so a value
//! recorded before the provider was installed is not lost, and tests read the same numbers the
//! exporter sends ([`value`]).

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

/// Unpublished outbox rows (parked ones included), per service.
pub const OUTBOX_BACKLOG: &str = "fintech.outbox.backlog";
/// Age in seconds of the oldest unpublished outbox row (0 when there is none), per service.
pub const OUTBOX_OLDEST_AGE: &str = "fintech.outbox.oldest_age";
/// Outbox rows parked after `OUTBOX_MAX_ATTEMPTS` failed publishes, per service.
pub const OUTBOX_PARKED: &str = "fintech.outbox.parked";
/// Failed publishes of outbox rows (each one a retry or a parking), per service.
pub const OUTBOX_PUBLISH_FAILURES: &str = "fintech.outbox.publish_failures";
/// Records between a consumer's position and the partition's end, summed per group.
pub const CONSUMER_LAG: &str = "fintech.consumer.lag";
/// Failed attempts at a record that will be retried, per group.
pub const CONSUMER_RETRIES: &str = "fintech.consumer.retries";
/// Records written to a dead-letter topic, per group and class (`invalid`, `permanent`,
/// `exhausted`).
pub const CONSUMER_DEAD_LETTERS: &str = "fintech.consumer.dead_letters";
/// Rows deleted by the retention job, per service and table.
pub const RETENTION_DELETED: &str = "fintech.retention.deleted";

const GAUGES: [(&str, &str, &str); 4] = [
    (OUTBOX_BACKLOG, "unpublished outbox rows", "{row}"),
    (OUTBOX_OLDEST_AGE, "age of the oldest unpublished outbox row", "s"),
    (
        OUTBOX_PARKED,
        "outbox rows parked after too many failed publishes",
        "{row}",
    ),
    (
        CONSUMER_LAG,
        "records not yet consumed, summed over the group's partitions",
        "{record}",
    ),
];

const COUNTERS: [(&str, &str, &str); 4] = [
    (OUTBOX_PUBLISH_FAILURES, "failed publishes of outbox rows", "{row}"),
    (
        CONSUMER_RETRIES,
        "failed attempts at a record that is retried",
        "{record}",
    ),
    (
        CONSUMER_DEAD_LETTERS,
        "records written to a dead-letter topic",
        "{record}",
    ),
    (RETENTION_DELETED, "rows deleted by the retention job", "{row}"),
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Registry {
    gauges: BTreeMap<(&'static str, Labels), f64>,
    counters: BTreeMap<(&'static str, Labels), u64>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(key, value)| (*key, (*value).to_owned())).collect()
}

/// Sets gauge `name` with `labels` to `value`.
pub fn set_gauge(name: &'static str, labels: &[(&'static str, &str)], value: f64) {
    registry().gauges.insert((name, owned(labels)), value);
}

/// Adds `count` to counter `name` with `labels`.
pub fn add(name: &'static str, labels: &[(&'static str, &str)], count: u64) {
    *registry().counters.entry((name, owned(labels))).or_default() += count;
}

/// The current value of gauge or counter `name` summed over every series whose labels include
/// `labels` (`None` when no such series was recorded).
pub fn value(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let registry = registry();
    let matches = |series: &Labels| {
        labels
            .iter()
            .all(|(key, value)| series.iter().any(|(k, v)| k == key && v == value))
    };
    let gauges = registry
        .gauges
        .iter()
        .filter(|((series_name, series), _)| *series_name == name && matches(series))
        .map(|(_, value)| *value);
    let counters = registry
        .counters
        .iter()
        .filter(|((series_name, series), _)| *series_name == name && matches(series))
        .map(|(_, value)| *value as f64);
    let all: Vec<f64> = gauges.chain(counters).collect();
    (!all.is_empty()).then(|| all.iter().sum())
}

fn series(name: &str, gauges: bool) -> Vec<(Vec<KeyValue>, f64)> {
    let registry = registry();
    let attributes = |labels: &Labels| {
        labels
            .iter()
            .map(|(key, value)| KeyValue::new(*key, value.clone()))
            .collect::<Vec<_>>()
    };
    if gauges {
        registry
            .gauges
            .iter()
            .filter(|((series_name, _), _)| *series_name == name)
            .map(|((_, labels), value)| (attributes(labels), *value))
            .collect()
    } else {
        registry
            .counters
            .iter()
            .filter(|((series_name, _), _)| *series_name == name)
            .map(|((_, labels), value)| (attributes(labels), *value as f64))
            .collect()
    }
}

/// Registers every instrument on `meter`; their callbacks read the registry at each collection.
pub fn register(meter: &Meter) {
    for (name, description, unit) in GAUGES {
        let _gauge = meter
            .f64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |observer| {
                for (attributes, value) in series(name, true) {
                    observer.observe(value, &attributes);
                }
            })
            .build();
    }
    for (name, description, unit) in COUNTERS {
        let _counter = meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(move |observer| {
                for (attributes, value) in series(name, false) {
                    observer.observe(value as u64, &attributes);
                }
            })
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_sum_over_the_matching_series() {
        set_gauge(OUTBOX_PARKED, &[("service", "metrics-unit-a")], 2.0);
        set_gauge(OUTBOX_PARKED, &[("service", "metrics-unit-b")], 3.0);
        assert_eq!(value(OUTBOX_PARKED, &[("service", "metrics-unit-a")]), Some(2.0));
        add(
            CONSUMER_DEAD_LETTERS,
            &[("group", "metrics-unit"), ("class", "permanent")],
            1,
        );
        add(
            CONSUMER_DEAD_LETTERS,
            &[("group", "metrics-unit"), ("class", "exhausted")],
            2,
        );
        assert_eq!(value(CONSUMER_DEAD_LETTERS, &[("group", "metrics-unit")]), Some(3.0));
        assert_eq!(value(CONSUMER_DEAD_LETTERS, &[("group", "nobody")]), None);
    }
}
