//! The result of a run: one [`Report`], written as JSON (`latest.json`, the record), Markdown
//! (`latest.md`, for people) and SVG (`latest.svg`, throughput and p99 against concurrency).
//! `fintech-bench render` rebuilds the Markdown and the plot from a JSON file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::monitor::Point;
use crate::procstat::Usage;
use crate::stats::{Latency, Samples};

/// Version of the JSON layout: 1 had `payments_alone` as one level (the peak) or null; 2 has a
/// list, one per client count. [`Report`] reads both.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Layout version.
    pub schema_version: u32,
    /// Unique id of the run (also in database and topic names).
    pub run_id: String,
    /// `full` or `smoke` (smoke timings mean nothing).
    pub mode: String,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// Wall time of the whole suite, seconds.
    pub wall_seconds: f64,
    /// Where it ran.
    pub machine: Machine,
    /// How it ran.
    pub config: RunConfig,
    /// Payments scenario with its pgbench baseline, one entry per concurrency.
    pub payments: Vec<PaymentsLevel>,
    /// Payments with nothing else running (no relay, tax or ledger), one entry per concurrency:
    /// its command path alone, each against a pgbench run of its own in the same environment.
    /// Schema 1 stored one level (the peak) or null; both still read (see [`levels_or_one`]).
    #[serde(default, deserialize_with = "levels_or_one")]
    pub payments_alone: Vec<PaymentsLevel>,
    /// CPU profiles taken during the peak.
    #[serde(default)]
    pub profiles: Vec<crate::profile::Profile>,
    /// Raw broker baselines.
    pub kafka: Option<KafkaBaselines>,
    /// End-to-end scenario.
    pub e2e: Option<EndToEnd>,
    /// Ledger scenarios.
    pub ledger: Option<LedgerResults>,
    /// Why the ledger scenarios did not run, when they did not.
    pub ledger_skipped: Option<String>,
    /// Warnings and errors in each service's log.
    pub service_logs: BTreeMap<String, LogSummary>,
    /// The issue's targets, met or missed.
    pub targets: Vec<Target>,
    /// Free-form observations made by the run itself.
    pub notes: Vec<String>,
}

/// Reads `payments_alone` of any schema: a list (schema 2), one level or null (schema 1).
fn levels_or_one<'de, D>(deserializer: D) -> Result<Vec<PaymentsLevel>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct LevelsOrOne;

    impl<'de> serde::de::Visitor<'de> for LevelsOrOne {
        type Value = Vec<PaymentsLevel>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a list of payments levels, one payments level or null")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            PaymentsLevel::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|level| vec![level])
        }
    }

    deserializer.deserialize_any(LevelsOrOne)
}

/// The machine and the infrastructure versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `nproc`.
    pub nproc: usize,
    /// `lscpu` model name.
    pub cpu_model: String,
    /// Total memory, MiB.
    pub memory_mb: u64,
    /// `uname -r`.
    pub kernel: String,
    /// Load average (1 min) when the suite started: other work on the machine skews results.
    pub load_average_at_start: f64,
    /// `SELECT version()`.
    pub postgres: String,
    /// Commit-relevant PostgreSQL settings.
    pub postgres_settings: BTreeMap<String, String>,
    /// The broker.
    pub broker: String,
    /// `rustc --version` of the build.
    pub rustc: String,
}

/// Settings of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    /// Client counts of the payments scenario.
    pub levels: Vec<usize>,
    /// Measured seconds per level (service and pgbench alike).
    pub duration_seconds: f64,
    /// Unmeasured seconds before each service level.
    pub warmup_seconds: f64,
    /// Seconds of the end-to-end load.
    pub e2e_seconds: f64,
    /// Seconds of each ledger scenario.
    pub ledger_seconds: f64,
    /// Cargo profile of the service binaries.
    pub profile: String,
    /// Environment the services ran with (URLs without passwords).
    pub service_env: BTreeMap<String, String>,
    /// Size of the outbox payloads, bytes (also the raw Kafka baseline's record size).
    pub payload_bytes: BTreeMap<String, usize>,
}

/// A latency distribution with its success and error counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    /// Successful operations.
    pub ok: u64,
    /// Failed operations.
    pub errors: u64,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency of the successful ones.
    pub latency: Latency,
}

impl From<&Samples> for Measured {
    fn from(samples: &Samples) -> Self {
        Self {
            ok: samples.count(),
            errors: samples.errors(),
            error_kinds: samples.error_kinds().clone(),
            latency: samples.latency(),
        }
    }
}

/// Summary of backlogs over a load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BacklogSummary {
    /// Events per second entering payments' outbox during the load (2 per pair).
    pub input_events_per_second: f64,
    /// Events per second the payments relay published during the load.
    pub relay_events_per_second: f64,
    /// Events per second tax applied during the load.
    pub tax_events_per_second: f64,
    /// Largest unpublished count in payments' outbox.
    pub max_payments_outbox: i64,
    /// Largest unpublished count in tax's outbox.
    pub max_tax_outbox: i64,
    /// Largest tax consumer lag (SQL), events.
    pub max_tax_lag: i64,
    /// Largest tax consumer lag (Kafka offsets), records.
    pub max_tax_lag_kafka: i64,
    /// Largest unpublished count in the ledger's outbox (`-1`: no ledger).
    #[serde(default)]
    pub max_ledger_outbox: i64,
    /// Largest ledger lag behind tax (SQL), events (`-1`: no ledger).
    #[serde(default)]
    pub max_ledger_lag: i64,
    /// Growth of the summed backlog (every outbox and consumer lag) over the second half of the load,
    /// events per second (least-squares slope).
    pub growth_per_second: f64,
    /// Whether the backlog stayed bounded: growth under 5 % of the input rate and everything
    /// drained after the load.
    pub bounded: bool,
    /// Seconds from the end of the load until both outboxes were empty and tax had applied every
    /// event (`None`: not within the drain timeout).
    pub drain_seconds: Option<f64>,
}

impl BacklogSummary {
    /// Summarises `points` of a load that lasted until `load_end` (seconds on the series' clock)
    /// at `input_events_per_second`.
    pub fn of(points: &[Point], load_end: f64, input_events_per_second: f64, drain_seconds: Option<f64>) -> Self {
        let during: Vec<&Point> = points.iter().filter(|point| point.t <= load_end + 0.5).collect();
        let max = |value: fn(&Point) -> i64| points.iter().map(value).max().unwrap_or(0);
        let rate = |value: fn(&Point) -> i64| match (during.first(), during.last()) {
            (Some(first), Some(last)) if last.t > first.t && value(first) >= 0 && value(last) >= 0 => {
                (value(last) - value(first)) as f64 / (last.t - first.t)
            }
            _ => 0.0,
        };
        let second_half: Vec<(f64, f64)> = during
            .iter()
            .filter(|point| point.t >= load_end / 2.0)
            .map(|point| {
                let total = point.payments_outbox.max(0)
                    + point.tax_outbox.max(0)
                    + point.tax_lag_sql.max(0)
                    + point.ledger_outbox.max(0)
                    + point.ledger_lag_sql.max(0);
                (point.t, total as f64)
            })
            .collect();
        let growth = crate::stats::slope(&second_half);
        Self {
            input_events_per_second,
            relay_events_per_second: rate(|point| point.payments_published),
            tax_events_per_second: rate(|point| point.tax_processed),
            max_payments_outbox: max(|point| point.payments_outbox),
            max_tax_outbox: max(|point| point.tax_outbox),
            max_tax_lag: max(|point| point.tax_lag_sql),
            max_tax_lag_kafka: max(|point| point.tax_lag_kafka),
            max_ledger_outbox: if points.is_empty() {
                -1
            } else {
                max(|point| point.ledger_outbox)
            },
            max_ledger_lag: if points.is_empty() {
                -1
            } else {
                max(|point| point.ledger_lag_sql)
            },
            growth_per_second: growth,
            bounded: growth < 0.05 * input_events_per_second.max(1.0) && drain_seconds.is_some(),
            drain_seconds,
        }
    }
}

/// One concurrency level of the payments scenario and its baseline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PaymentsLevel {
    /// Concurrent clients (pgbench connections for the baseline).
    pub concurrency: usize,
    /// Pairs (CreateOrder + CreateTransaction) per second.
    pub pairs_per_second: f64,
    /// Commits per second (2 per pair).
    pub commits_per_second: f64,
    /// Latency of a whole pair.
    pub pair: Measured,
    /// Latency of `CreateOrder`.
    pub create_order: Measured,
    /// Latency of `CreateTransaction`.
    pub create_transaction: Measured,
    /// pgbench running the same SQL.
    pub baseline: Baseline,
    /// Service / baseline: commits per second.
    pub throughput_ratio: f64,
    /// Service / baseline: p99 latency of a pair.
    pub p99_ratio: f64,
    /// CPU and memory while the service ran.
    pub resources: BTreeMap<String, Usage>,
    /// CPU while pgbench ran.
    pub baseline_resources: BTreeMap<String, Usage>,
    /// Outbox and consumer backlogs.
    pub backlog: BacklogSummary,
    /// Backlogs over time.
    pub series: Vec<Point>,
}

/// A pgbench baseline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// Script runs (pairs) per second, as pgbench reports them.
    pub pairs_per_second: f64,
    /// Commits per second (2 per pair).
    pub commits_per_second: f64,
    /// Latency of one script run (one pair).
    pub pair: Measured,
    /// pgbench's summary.
    pub summary: String,
}

/// The raw rdkafka baselines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KafkaBaselines {
    /// Record value size, bytes (an encoded `Transaction`), with the relay's headers.
    pub payload_bytes: usize,
    /// Records in flight in the producer baseline (the relay's batch size).
    pub window: usize,
    /// Producer: records acknowledged per second.
    pub produce_per_second: f64,
    /// Producer: ack latency.
    pub produce: Measured,
    /// Consumer: records read per second (fresh group, from the beginning).
    pub consume_per_second: f64,
    /// Records the consumer read.
    pub consumed: u64,
    /// From the consumer's start to its first record, ms.
    #[serde(default)]
    pub consume_first_record_ms: Option<f64>,
    /// Produce-to-consume at the end-to-end rate.
    pub roundtrip_rate: f64,
    /// Latency from send to arrival at a consumer with librdkafka's default `fetch.wait.max.ms`
    /// (500; the platform consumer used it until it switched to 50 ms).
    pub roundtrip: Measured,
    /// Producer acknowledgements during that run.
    pub roundtrip_ack: Measured,
    /// `fetch.wait.max.ms` of the second round trip.
    pub fast_fetch_wait_ms: u32,
    /// Send to arrival with that shorter fetch wait.
    pub roundtrip_fast: Measured,
    /// CPU while the baselines ran.
    pub resources: BTreeMap<String, Usage>,
}

/// The end-to-end scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndToEnd {
    /// Pairs per second sent (half the payments peak).
    pub rate: f64,
    /// The payments peak it is half of, pairs per second.
    pub peak_pairs_per_second: f64,
    /// Pairs scheduled.
    pub scheduled: u64,
    /// CreateOrder + CreateTransaction from their scheduled time to the acknowledgement.
    pub pair: Measured,
    /// Acknowledgement -> tax calculated the `TaxedTransaction` (readable via `GetTaxedTransaction`).
    pub to_calculated: Measured,
    /// Acknowledgement -> the `TaxedTransaction` arrived on `tax.calculated`.
    pub to_published: Measured,
    /// Acknowledgement -> the ledger posted the entry (when the ledger ran).
    pub to_ledger: Option<Measured>,
    /// `GetTaxedTransaction` of a sample of the transactions afterwards.
    pub read_back: Measured,
    /// The path cut into hops by the services' own timestamps (empty in results of older runs).
    #[serde(default)]
    pub hops: Vec<Hop>,
    /// Raw produce-to-consume p99 at the same rate (one broker hop), ms.
    pub baseline_p99_ms: f64,
    /// p99 to `tax.calculated` / raw p99.
    pub p99_ratio: f64,
    /// Backlogs.
    pub backlog: BacklogSummary,
    /// CPU and memory during the load.
    pub resources: BTreeMap<String, Usage>,
    /// Backlogs over time.
    pub series: Vec<Point>,
}

/// One hop of the end-to-end path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hop {
    /// From where to where, e.g. `payments published -> tax calculated`.
    pub name: String,
    /// Its duration per transaction.
    pub measured: Measured,
}

/// The ledger scenarios.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerResults {
    /// Concurrent clients in both scenarios.
    pub concurrency: usize,
    /// Accounts the spread scenario picks from.
    pub accounts: usize,
    /// PostEntry across many accounts.
    pub spread: LedgerRun,
    /// PostEntry that all touch one hot account.
    pub hot: LedgerRun,
    /// hot / spread throughput.
    pub hot_to_spread: f64,
}

/// One ledger scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerRun {
    /// Entries posted per second.
    pub entries_per_second: f64,
    /// PostEntry latency.
    pub post: Measured,
    /// pgbench row-lock ceiling: transactions per second.
    pub ceiling_per_second: f64,
    /// pgbench row-lock ceiling: latency.
    pub ceiling: Measured,
    /// entries/s / ceiling.
    pub ratio_to_ceiling: f64,
    /// CPU and memory.
    pub resources: BTreeMap<String, Usage>,
}

/// Warnings and errors a service logged during the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogSummary {
    /// Lines at WARN.
    pub warnings: usize,
    /// Lines at ERROR.
    pub errors: usize,
    /// Consumer-group assignments (the first one plus one per rebalance).
    pub assignments: usize,
    /// Consumer-group sessions that timed out (librdkafka `SESSTMOUT`).
    pub session_timeouts: usize,
    /// The last of them, for the reader.
    pub last_problems: Vec<String>,
}

/// One target of the issue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    /// What the issue asks.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
}

fn fmt_ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn fmt_rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn errors_text(measured: &Measured) -> String {
    if measured.errors == 0 {
        return "0".to_owned();
    }
    let kinds: Vec<String> = measured
        .error_kinds
        .iter()
        .map(|(kind, count)| format!("{kind} x{count}"))
        .collect();
    format!("{} ({})", measured.errors, kinds.join(", "))
}

fn resources_text(resources: &BTreeMap<String, Usage>, names: &[&str]) -> String {
    names
        .iter()
        .filter_map(|name| {
            resources.get(*name).map(|usage| {
                if *name == "postgres" || *name == "broker" || *name == "pgbench" {
                    format!("{name} {:.0}%", usage.cpu_percent)
                } else {
                    format!("{name} {:.0}% / {:.0} MiB", usage.cpu_percent, usage.peak_rss_mb)
                }
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmark results ({} run `{}`)\n", self.mode, self.run_id);
        if self.mode == "smoke" {
            let _ = writeln!(
                out,
                "> Smoke run: a few seconds per scenario, debug binaries possible. It proves the harness and \
                 the services work end to end; its timings mean nothing.\n"
            );
        }
        let machine = &self.machine;
        let _ = writeln!(
            out,
            "Started {} · suite wall time {:.0} s · {} cores ({}) · {} MiB RAM · kernel {} · load average at start {:.2}\n",
            self.started_at,
            self.wall_seconds,
            machine.nproc,
            machine.cpu_model,
            machine.memory_mb,
            machine.kernel,
            machine.load_average_at_start
        );
        let _ = writeln!(
            out,
            "PostgreSQL: {} ({}) · broker: {} · services: `{}` profile, one process each, built with {}\n",
            machine.postgres.split(" on ").next().unwrap_or(&machine.postgres),
            machine
                .postgres_settings
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join(", "),
            machine.broker,
            self.config.profile,
            machine.rustc
        );

        let _ = writeln!(out, "## Targets\n");
        let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
        for target in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                target.target,
                target.measured,
                verdict(target.met)
            );
        }
        let _ = writeln!(out);

        if !self.payments.is_empty() {
            let _ = writeln!(
                out,
                "## Payments: CreateOrder + CreateTransaction vs pgbench running the same SQL\n\n\
                 {:.0} s measured per level (after {:.1} s warm-up for the service). A pair is two commits. \
                 Ratio = service / pgbench.\n",
                self.config.duration_seconds, self.config.warmup_seconds
            );
            let _ = writeln!(
                out,
                "| clients | service commits/s | pgbench commits/s | ratio | service p50 / p95 / p99 / max ms (pair) | pgbench p50 / p95 / p99 / max ms | p99 ratio | errors (service / pgbench) |\n|---:|---:|---:|---:|---|---|---:|---|"
            );
            for level in &self.payments {
                let service = &level.pair.latency;
                let baseline = &level.baseline.pair.latency;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} | {} / {} / {} / {} | {} / {} / {} / {} | {:.2} | {} / {} |",
                    level.concurrency,
                    fmt_rate(level.commits_per_second),
                    fmt_rate(level.baseline.commits_per_second),
                    level.throughput_ratio,
                    fmt_ms(service.p50_ms),
                    fmt_ms(service.p95_ms),
                    fmt_ms(service.p99_ms),
                    fmt_ms(service.max_ms),
                    fmt_ms(baseline.p50_ms),
                    fmt_ms(baseline.p95_ms),
                    fmt_ms(baseline.p99_ms),
                    fmt_ms(baseline.max_ms),
                    level.p99_ratio,
                    errors_text(&level.pair),
                    errors_text(&level.baseline.pair),
                );
            }
            let _ = writeln!(out, "\nPer call, and what the rest of the flow did meanwhile:\n");
            let _ = writeln!(
                out,
                "| clients | CreateOrder p50 / p99 ms | CreateTransaction p50 / p99 ms | relay events/s | tax events/s | max outbox (payments / tax) | max tax lag (SQL / Kafka) | backlog growth /s | drained after | bounded |\n|---:|---|---|---:|---:|---|---|---:|---|---|"
            );
            for level in &self.payments {
                let backlog = &level.backlog;
                let _ = writeln!(
                    out,
                    "| {} | {} / {} | {} / {} | {} | {} | {} / {} | {} / {} | {:.1} | {} | {} |",
                    level.concurrency,
                    fmt_ms(level.create_order.latency.p50_ms),
                    fmt_ms(level.create_order.latency.p99_ms),
                    fmt_ms(level.create_transaction.latency.p50_ms),
                    fmt_ms(level.create_transaction.latency.p99_ms),
                    fmt_rate(backlog.relay_events_per_second),
                    fmt_rate(backlog.tax_events_per_second),
                    backlog.max_payments_outbox,
                    backlog.max_tax_outbox,
                    backlog.max_tax_lag,
                    backlog.max_tax_lag_kafka,
                    backlog.growth_per_second,
                    backlog
                        .drain_seconds
                        .map_or("not within timeout".to_owned(), |seconds| format!("{seconds:.1} s")),
                    if backlog.bounded { "yes" } else { "no" },
                );
            }
            let _ = writeln!(
                out,
                "\nCPU (% of one core; the machine has {}00 %) and peak RSS while each level ran:\n",
                self.machine.nproc
            );
            let _ = writeln!(out, "| clients | service run | pgbench run |\n|---:|---|---|");
            for level in &self.payments {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    level.concurrency,
                    resources_text(
                        &level.resources,
                        &["payments", "tax", "ledger", "postgres", "broker", "load generator"]
                    ),
                    resources_text(&level.baseline_resources, &["postgres", "pgbench"]),
                );
            }
            let _ = writeln!(out, "\n![throughput and p99 against concurrency](latest.svg)\n");
        }
        if !self.payments_alone.is_empty() {
            let _ = writeln!(
                out,
                "### Payments alone (no outbox relay, no tax, no ledger)\n\n\
                 The command path by itself: the same load, each level against a pgbench run of its own in the same \
                 environment, with nothing else on the machine competing for the {} cores.\n",
                self.machine.nproc
            );
            let _ = writeln!(
                out,
                "| clients | service commits/s | pgbench commits/s | ratio | service p50 / p99 ms | pgbench p50 / p99 ms | errors | service run | pgbench run |\n|---:|---:|---:|---:|---|---|---|---|---|"
            );
            for alone in &self.payments_alone {
                let service = &alone.pair.latency;
                let baseline = &alone.baseline.pair.latency;
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} | {} / {} | {} / {} | {} | {} | {} |",
                    alone.concurrency,
                    fmt_rate(alone.commits_per_second),
                    fmt_rate(alone.baseline.commits_per_second),
                    alone.throughput_ratio,
                    fmt_ms(service.p50_ms),
                    fmt_ms(service.p99_ms),
                    fmt_ms(baseline.p50_ms),
                    fmt_ms(baseline.p99_ms),
                    errors_text(&alone.pair),
                    resources_text(&alone.resources, &["payments", "postgres", "load generator"]),
                    resources_text(&alone.baseline_resources, &["postgres", "pgbench"]),
                );
            }
            let _ = writeln!(out);
        }

        if let Some(kafka) = &self.kafka {
            let _ = writeln!(
                out,
                "## Raw Kafka baselines (rdkafka, the relay's producer settings, {} B values + CloudEvents headers)\n",
                kafka.payload_bytes
            );
            let _ = writeln!(
                out,
                "| baseline | rate | p50 / p99 / max ms | errors |\n|---|---:|---|---|"
            );
            let _ = writeln!(
                out,
                "| producer, {} in flight | {} records/s | {} / {} / {} (ack) | {} |",
                kafka.window,
                fmt_rate(kafka.produce_per_second),
                fmt_ms(kafka.produce.latency.p50_ms),
                fmt_ms(kafka.produce.latency.p99_ms),
                fmt_ms(kafka.produce.latency.max_ms),
                errors_text(&kafka.produce)
            );
            let _ = writeln!(
                out,
                "| consumer, partitions assigned, from the beginning | {} records/s ({} records; first after {}) | - | - |",
                fmt_rate(kafka.consume_per_second),
                kafka.consumed,
                kafka
                    .consume_first_record_ms
                    .map_or("-".to_owned(), |ms| format!("{} ms", fmt_ms(ms)))
            );
            let _ = writeln!(
                out,
                "| produce -> consume at {} records/s (warmed-up producer), librdkafka default `fetch.wait.max.ms` (500 ms) | - | {} / {} / {} | {} |",
                fmt_rate(kafka.roundtrip_rate),
                fmt_ms(kafka.roundtrip.latency.p50_ms),
                fmt_ms(kafka.roundtrip.latency.p99_ms),
                fmt_ms(kafka.roundtrip.latency.max_ms),
                errors_text(&kafka.roundtrip)
            );
            let _ = writeln!(
                out,
                "| of which producer ack | - | {} / {} / {} | {} |",
                fmt_ms(kafka.roundtrip_ack.latency.p50_ms),
                fmt_ms(kafka.roundtrip_ack.latency.p99_ms),
                fmt_ms(kafka.roundtrip_ack.latency.max_ms),
                errors_text(&kafka.roundtrip_ack)
            );
            let _ = writeln!(
                out,
                "| produce -> consume at {} records/s (warmed-up producer), `fetch.wait.max.ms={}` | - | {} / {} / {} | {} |\n",
                fmt_rate(kafka.roundtrip_rate),
                kafka.fast_fetch_wait_ms,
                fmt_ms(kafka.roundtrip_fast.latency.p50_ms),
                fmt_ms(kafka.roundtrip_fast.latency.p99_ms),
                fmt_ms(kafka.roundtrip_fast.latency.max_ms),
                errors_text(&kafka.roundtrip_fast)
            );
            if let Some(peak) = self
                .payments
                .iter()
                .max_by(|a, b| a.pairs_per_second.total_cmp(&b.pairs_per_second))
            {
                let _ = writeln!(
                    out,
                    "At the payments peak ({} clients) the relay published {} events/s ({:.0} % of the raw producer) and \
                     tax applied {} events/s ({:.1} % of the raw consumer).\n",
                    peak.concurrency,
                    fmt_rate(peak.backlog.relay_events_per_second),
                    100.0 * peak.backlog.relay_events_per_second / kafka.produce_per_second.max(1e-9),
                    fmt_rate(peak.backlog.tax_events_per_second),
                    100.0 * peak.backlog.tax_events_per_second / kafka.consume_per_second.max(1e-9),
                );
            }
        }

        if let Some(e2e) = &self.e2e {
            let _ = writeln!(
                out,
                "## End to end at {} pairs/s (half the payments peak of {} pairs/s), {:.0} s\n\n\
                 Pairs scheduled in the first {:.1} s (the warm-up of fresh processes) run but are not measured.\n",
                fmt_rate(e2e.rate),
                fmt_rate(e2e.peak_pairs_per_second),
                self.config.e2e_seconds,
                self.config.warmup_seconds
            );
            let _ = writeln!(
                out,
                "| measure | count | p50 / p95 / p99 / max ms | errors |\n|---|---:|---|---|"
            );
            let mut row = |name: &str, measured: &Measured| {
                let latency = &measured.latency;
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} / {} / {} / {} | {} |",
                    measured.ok,
                    fmt_ms(latency.p50_ms),
                    fmt_ms(latency.p95_ms),
                    fmt_ms(latency.p99_ms),
                    fmt_ms(latency.max_ms),
                    errors_text(measured)
                );
            };
            row("CreateOrder + CreateTransaction (from schedule)", &e2e.pair);
            row("ack -> TaxedTransaction calculated (readable)", &e2e.to_calculated);
            row("ack -> TaxedTransaction on tax.calculated", &e2e.to_published);
            if let Some(ledger) = &e2e.to_ledger {
                row("ack -> ledger entry posted", ledger);
            }
            row("GetTaxedTransaction read-back (sample)", &e2e.read_back);
            for hop in &e2e.hops {
                row(&format!("hop: {}", hop.name), &hop.measured);
            }
            let backlog = &e2e.backlog;
            let _ = writeln!(
                out,
                "\nBaseline: {}. \
                 Backlog: max outbox payments {} / tax {}, max tax lag {} (Kafka {}), growth {:.1}/s, {}, \
                 bounded: {}.\n",
                if e2e.baseline_p99_ms > 0.0 {
                    format!(
                        "raw produce -> consume p99 at the same rate {} ms; ratio (p99 to tax.calculated / raw) {:.1}",
                        fmt_ms(e2e.baseline_p99_ms),
                        e2e.p99_ratio
                    )
                } else {
                    "none (the raw Kafka scenario did not run)".to_owned()
                },
                backlog.max_payments_outbox,
                backlog.max_tax_outbox,
                backlog.max_tax_lag,
                backlog.max_tax_lag_kafka,
                backlog.growth_per_second,
                backlog
                    .drain_seconds
                    .map_or("did not drain within the timeout".to_owned(), |seconds| format!(
                        "drained {seconds:.1} s after the load"
                    )),
                if backlog.bounded { "yes" } else { "no" },
            );
            let _ = writeln!(
                out,
                "Resources: {}\n",
                resources_text(
                    &e2e.resources,
                    &["payments", "tax", "ledger", "postgres", "broker", "load generator"]
                )
            );
            let _ = writeln!(
                out,
                "Backlog over time (s: payments outbox / tax outbox / tax lag SQL / in flight end to end):\n"
            );
            let samples: Vec<String> = e2e
                .series
                .iter()
                .step_by((e2e.series.len() / 20).max(1))
                .map(|point| {
                    format!(
                        "{:.0}: {}/{}/{}/{}",
                        point.t, point.payments_outbox, point.tax_outbox, point.tax_lag_sql, point.in_flight
                    )
                })
                .collect();
            let _ = writeln!(out, "`{}`\n", samples.join(" · "));
        }

        match (&self.ledger, &self.ledger_skipped) {
            (Some(ledger), _) => {
                let _ = writeln!(
                    out,
                    "## Ledger: PostEntry across {} accounts vs on one hot account ({} clients)\n",
                    ledger.accounts, ledger.concurrency
                );
                let _ = writeln!(
                    out,
                    "Two-line entries (debit one account, credit another). Baseline: pgbench with the same clients \
                     locking the same two rows in order and updating them (the row-lock ceiling, nothing else).\n"
                );
                let _ = writeln!(
                    out,
                    "| scenario | entries/s | p50 / p95 / p99 / max ms | errors | row-lock ceiling tx/s | p99 ms | ratio | resources |\n|---|---:|---|---|---:|---:|---:|---|"
                );
                for (name, run) in [("spread", &ledger.spread), ("hot account", &ledger.hot)] {
                    let latency = &run.post.latency;
                    let _ = writeln!(
                        out,
                        "| {name} | {} | {} / {} / {} / {} | {} | {} | {} | {:.2} | {} |",
                        fmt_rate(run.entries_per_second),
                        fmt_ms(latency.p50_ms),
                        fmt_ms(latency.p95_ms),
                        fmt_ms(latency.p99_ms),
                        fmt_ms(latency.max_ms),
                        errors_text(&run.post),
                        fmt_rate(run.ceiling_per_second),
                        fmt_ms(run.ceiling.latency.p99_ms),
                        run.ratio_to_ceiling,
                        resources_text(&run.resources, &["ledger", "postgres", "load generator"])
                    );
                }
                let _ = writeln!(out, "\nhot / spread = {:.2}.\n", ledger.hot_to_spread);
            }
            (None, Some(reason)) => {
                let _ = writeln!(out, "## Ledger\n\nNot run: {reason}\n");
            }
            (None, None) => {}
        }

        if !self.profiles.is_empty() {
            let _ = writeln!(out, "## CPU profiles (perf, flat, symbols above 1 %)\n");
            for profile in &self.profiles {
                let _ = writeln!(out, "**{}** ({} samples)\n\n```text", profile.title, profile.samples);
                for line in &profile.top {
                    let _ = writeln!(out, "{line}");
                }
                let _ = writeln!(out, "```\n");
            }
        }
        if !self.service_logs.is_empty() {
            let _ = writeln!(out, "## Service logs\n");
            for (name, summary) in &self.service_logs {
                let _ = writeln!(
                    out,
                    "- {name}: {} warnings, {} errors, {} consumer-group assignments, {} session timeouts{}",
                    summary.warnings,
                    summary.errors,
                    summary.assignments,
                    summary.session_timeouts,
                    summary
                        .last_problems
                        .last()
                        .map(|line| format!(" (last: `{}`)", line.replace('`', "'")))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(out);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "## Notes from the run\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "Service environment: {}",
            self.config
                .service_env
                .iter()
                .map(|(name, value)| format!("`{name}={value}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out
    }

    /// The plot: commits per second (left) and p99 latency of a pair (right) against clients, for
    /// the service with the whole flow running, the service alone and pgbench (the run in the
    /// with-flow level's environment).
    pub fn svg(&self) -> String {
        // Every client count measured with or without the flow: a report of schema 1 has payments
        // alone at the peak only, and a level that failed leaves a gap in its series.
        let mut levels: Vec<usize> = self
            .payments
            .iter()
            .chain(&self.payments_alone)
            .map(|level| level.concurrency)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        let series = |of: &[PaymentsLevel], value: fn(&PaymentsLevel) -> f64| -> Vec<Option<f64>> {
            levels
                .iter()
                .map(|clients| of.iter().find(|level| level.concurrency == *clients).map(value))
                .collect()
        };
        let service_rate = series(&self.payments, |level| level.commits_per_second);
        let alone_rate = series(&self.payments_alone, |level| level.commits_per_second);
        let baseline_rate = series(&self.payments, |level| level.baseline.commits_per_second);
        let service_p99 = series(&self.payments, |level| level.pair.latency.p99_ms);
        let alone_p99 = series(&self.payments_alone, |level| level.pair.latency.p99_ms);
        let baseline_p99 = series(&self.payments, |level| level.baseline.pair.latency.p99_ms);
        let width = 960.0;
        let height = 460.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">payments CreateOrder+CreateTransaction vs pgbench (same SQL) — {} run {}</text>"#,
            width / 2.0,
            self.mode,
            escape(&self.run_id)
        );
        panel(
            &mut svg,
            Panel {
                x: 60.0,
                y: 50.0,
                width: 380.0,
                height: 300.0,
                title: "throughput (commits/s)",
                levels: &levels,
                series: &[
                    (WITH_FLOW.0, WITH_FLOW.1, &service_rate),
                    (ALONE.0, ALONE.1, &alone_rate),
                    (PGBENCH.0, PGBENCH.1, &baseline_rate),
                ],
            },
        );
        panel(
            &mut svg,
            Panel {
                x: 540.0,
                y: 50.0,
                width: 380.0,
                height: 300.0,
                title: "p99 latency of a pair (ms)",
                levels: &levels,
                series: &[
                    (WITH_FLOW.0, WITH_FLOW.1, &service_p99),
                    (ALONE.0, ALONE.1, &alone_p99),
                    (PGBENCH.0, PGBENCH.1, &baseline_p99),
                ],
            },
        );
        for (line, text) in [
            (
                height - 48.0,
                "service + flow: outbox relay, tax, ledger and broker running on the same cores · service alone: none of them",
            ),
            (
                height - 30.0,
                "pgbench: the same SQL, services idle, run before each with-flow level (the alone levels' own pgbench runs are in latest.md)",
            ),
        ] {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{line}" text-anchor="middle" fill="#555" font-size="11">{}</text>"##,
                width / 2.0,
                escape(text)
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{} cores · {} · PostgreSQL + {} on the same host</text>"##,
            width / 2.0,
            height - 12.0,
            self.machine.nproc,
            escape(&self.machine.cpu_model),
            escape(&self.machine.broker)
        );
        let _ = writeln!(svg, "</svg>");
        svg
    }
}

/// Legend name and colour of the plot's series.
const WITH_FLOW: (&str, &str) = ("service + flow", "#1f77b4");
const ALONE: (&str, &str) = ("service alone", "#2ca02c");
const PGBENCH: (&str, &str) = ("pgbench", "#ff7f0e");

struct Panel<'a> {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    title: &'a str,
    levels: &'a [usize],
    /// Name, colour and one value per level (`None`: not measured at that level).
    series: &'a [(&'a str, &'a str, &'a Vec<Option<f64>>)],
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" upper bound for an axis (1, 2 or 5 times a power of ten).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|bound| *bound >= value)
        .unwrap_or(10.0 * magnitude)
}

/// The top of a panel's y axis for these series.
fn axis_top(series: &[&Vec<Option<f64>>]) -> f64 {
    let max = series
        .iter()
        .flat_map(|values| values.iter().flatten().copied())
        .fold(0.0, f64::max);
    nice_ceiling(max * 1.05)
}

/// The x of level `index` of `count` in a panel starting at `x` of width `width` (levels spread
/// evenly: 1, 8, 32, 64 would crowd on a linear axis).
fn slot_x(x: f64, width: f64, count: usize, index: usize) -> f64 {
    if count <= 1 {
        x + width / 2.0
    } else {
        x + 30.0 + (width - 60.0) * index as f64 / (count - 1) as f64
    }
}

fn panel(svg: &mut String, panel: Panel<'_>) {
    let Panel {
        x,
        y,
        width,
        height,
        title,
        levels,
        series,
    } = panel;
    let top = axis_top(&series.iter().map(|(_, _, values)| *values).collect::<Vec<_>>());
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        x + width / 2.0,
        y - 8.0,
        escape(title)
    );
    // Grid and y labels.
    for tick in 0..=5 {
        let value = top * f64::from(tick) / 5.0;
        let ty = y + height - height * f64::from(tick) / 5.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"#ddd\"/>",
            x + width
        );
        let label = if top >= 10.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.2}")
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
            x - 6.0,
            ty + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{x}\" y=\"{y}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let slot = |index: usize| slot_x(x, width, levels.len(), index);
    for (index, level) in levels.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{level}</text>"#,
            slot(index),
            y + height + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">concurrent clients</text>"#,
        x + width / 2.0,
        y + height + 34.0
    );
    // Lines first, so that no line crosses a point or a label drawn after it.
    for (_, colour, values) in series {
        // One line per run of consecutive measured levels.
        let mut runs: Vec<Vec<String>> = vec![Vec::new()];
        for (index, value) in values.iter().enumerate() {
            match value {
                Some(value) => runs.last_mut().expect("never empty").push(format!(
                    "{:.1},{:.1}",
                    slot(index),
                    y + height - height * value / top
                )),
                None => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|run| run.len() > 1) {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                run.join(" ")
            );
        }
    }
    // Then the points, then their labels (with a white halo) above everything.
    let mut labels = Vec::new();
    for (series_index, (name, colour, values)) in series.iter().enumerate() {
        for (index, value) in values.iter().enumerate() {
            let Some(value) = *value else { continue };
            let px = slot(index);
            let py = y + height - height * value / top;
            // The highest point of a level is labelled above, the lowest below, one between on the
            // side away from the nearest other point.
            let others: Vec<f64> = series
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != series_index)
                .filter_map(|(_, (_, _, others))| others.get(index).copied().flatten())
                .collect();
            let nearest = others
                .iter()
                .copied()
                .min_by(|a, b| (a - value).abs().total_cmp(&(b - value).abs()));
            let above = if others.iter().all(|other| value >= *other) {
                true
            } else if others.iter().all(|other| value < *other) {
                false
            } else {
                nearest.is_some_and(|nearest| nearest <= value)
            };
            let ly = if above { py - 7.0 } else { py + 15.0 };
            let _ = writeln!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="3.5" fill="{colour}"/>"#);
            labels.push(format!(
                r#"<text x="{px:.1}" y="{ly:.1}" text-anchor="middle" fill="{colour}" font-size="10" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"#,
                if value >= 100.0 {
                    format!("{value:.0}")
                } else {
                    format!("{value:.1}")
                }
            ));
        }
        let lx = x + 10.0 + 120.0 * series_index as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            y + 8.0,
            lx + 16.0,
            y + 18.0
        );
    }
    for label in labels {
        let _ = writeln!(svg, "{label}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            run_id: "1_test".to_owned(),
            mode: "smoke".to_owned(),
            ..Report::default()
        };
        for (concurrency, service, baseline) in [(1, 100.0, 150.0), (8, 400.0, 700.0)] {
            report.payments.push(PaymentsLevel {
                concurrency,
                commits_per_second: service,
                baseline: Baseline {
                    commits_per_second: baseline,
                    ..Baseline::default()
                },
                throughput_ratio: service / baseline,
                ..PaymentsLevel::default()
            });
        }
        report.targets.push(Target {
            target: "payments >= 70 % of pgbench".to_owned(),
            measured: "57 %".to_owned(),
            met: Some(false),
        });
        report
    }

    #[test]
    fn markdown_has_targets_and_levels() {
        let markdown = sample_report().markdown();
        assert!(markdown.contains("| payments >= 70 % of pgbench | 57 % | **missed** |"));
        assert!(markdown.contains("| 8 | 400 | 700 | 0.57 |"));
    }

    fn alone(concurrency: usize, service: f64, baseline: f64) -> PaymentsLevel {
        PaymentsLevel {
            concurrency,
            commits_per_second: service,
            baseline: Baseline {
                commits_per_second: baseline,
                ..Baseline::default()
            },
            throughput_ratio: service / baseline,
            ..PaymentsLevel::default()
        }
    }

    #[test]
    fn svg_is_one_document_with_both_panels() {
        let svg = sample_report().svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // No payments alone: only the service with the flow and pgbench.
        assert_eq!(svg.matches("<polyline").count(), 4);
    }

    #[test]
    fn svg_plots_payments_alone_as_a_third_series() {
        let mut report = sample_report();
        report.payments_alone = vec![alone(1, 120.0, 160.0), alone(8, 600.0, 720.0)];
        let svg = report.svg();
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches(r##"<circle"##).count(), 12);
        assert!(svg.contains(">service alone</text>"));
        // Schema 1: alone at the peak only, a point without a line.
        report.payments_alone = vec![alone(8, 600.0, 720.0)];
        let svg = report.svg();
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 10);
    }

    #[test]
    fn markdown_has_one_alone_row_per_level() {
        let mut report = sample_report();
        report.payments_alone = vec![alone(1, 120.0, 160.0), alone(8, 600.0, 720.0)];
        let markdown = report.markdown();
        assert!(markdown.contains("### Payments alone (no outbox relay, no tax, no ledger)"));
        assert!(markdown.contains("| 1 | 120 | 160 | 0.75 |"));
        assert!(markdown.contains("| 8 | 600 | 720 | 0.83 |"));
    }

    #[test]
    fn json_round_trips() {
        let mut report = sample_report();
        report.payments_alone = vec![alone(1, 120.0, 160.0), alone(8, 600.0, 720.0)];
        let json = serde_json::to_string(&report).expect("serialize");
        let back: Report = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.payments.len(), 2);
        assert_eq!(back.payments_alone.len(), 2);
        assert_eq!(back.payments_alone[1].concurrency, 8);
    }

    #[test]
    fn payments_alone_of_schema_one_still_reads() {
        let mut json = serde_json::to_value(sample_report()).expect("serialize");
        let level = serde_json::to_value(alone(64, 900.0, 1200.0)).expect("serialize level");
        let read = |json: &serde_json::Value| -> Vec<PaymentsLevel> {
            serde_json::from_value::<Report>(json.clone())
                .expect("deserialize")
                .payments_alone
        };
        // Schema 1: one level (the peak) ...
        json["payments_alone"] = level.clone();
        let levels = read(&json);
        assert_eq!(levels.len(), 1);
        assert_eq!(levels[0].concurrency, 64);
        assert!((levels[0].commits_per_second - 900.0).abs() < 1e-9);
        // ... or null, or absent (before payments alone existed).
        json["payments_alone"] = serde_json::Value::Null;
        assert!(read(&json).is_empty());
        json.as_object_mut().expect("object").remove("payments_alone");
        assert!(read(&json).is_empty());
        // Schema 2: a list.
        json["payments_alone"] = serde_json::json!([level.clone(), level]);
        assert_eq!(read(&json).len(), 2);
        json["payments_alone"] = serde_json::json!([]);
        assert!(read(&json).is_empty());
        // Anything else is an error, not an empty list.
        json["payments_alone"] = serde_json::json!(7);
        assert!(serde_json::from_value::<Report>(json.clone()).is_err());
        // Also from text, as `render` reads it.
        json["payments_alone"] = serde_json::to_value(alone(64, 900.0, 1200.0)).expect("serialize level");
        let text = serde_json::to_string(&json).expect("text");
        assert_eq!(
            serde_json::from_str::<Report>(&text)
                .expect("parse")
                .payments_alone
                .len(),
            1
        );
    }

    #[test]
    fn nice_axis_bounds() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(1500.0), 2000.0);
        assert_eq!(nice_ceiling(4.2), 5.0);
    }

    #[test]
    fn backlog_growth_and_bounds() {
        let growing: Vec<Point> = (0..20)
            .map(|t| Point {
                t: f64::from(t),
                payments_outbox: i64::from(t) * 100,
                ..Point::default()
            })
            .collect();
        let summary = BacklogSummary::of(&growing, 19.0, 1000.0, None);
        assert!(!summary.bounded);
        assert!((summary.growth_per_second - 100.0).abs() < 1e-6);
        let flat: Vec<Point> = (0..20)
            .map(|t| Point {
                t: f64::from(t),
                payments_outbox: 50 + i64::from(t % 2),
                ..Point::default()
            })
            .collect();
        assert!(BacklogSummary::of(&flat, 19.0, 1000.0, Some(0.5)).bounded);
    }
}
