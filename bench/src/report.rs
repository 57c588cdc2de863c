//! The result of a run: one [`Report`], written as JSON (`latest.json`, the record), Markdown
//! (`latest.md`, for people) and SVG (`latest.svg`, throughput and p99 against concurrency, drawn
//! with `plotters`). `fintech-bench render` rebuilds the Markdown and the plot from a JSON file of
//! the current layout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::monitor::Point;
use crate::procstat::Usage;
use crate::stats::{Latency, Samples};

/// Version of the JSON layout; `render` reads this one and [`OLDEST_READABLE`]. (1 had
/// `payments_alone` as one level or null; 2 has a list, one per client count; 3 adds `broker`
/// and `broker_data_mb`, absent in 2, whose runs were all on Tansu.)
pub const SCHEMA_VERSION: u32 = 3;

/// The oldest layout `render` still reads (2: the same as 3 without the broker fields).
pub const OLDEST_READABLE: u32 = 2;

fn tansu() -> String {
    "tansu".to_owned()
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Layout version.
    pub schema_version: u32,
    /// Unique id of the run (also in database and topic names).
    pub run_id: String,
    /// `full` or `smoke` (smoke timings mean nothing).
    pub mode: String,
    /// The kind of private broker every scenario ran on: `tansu` or `mock` (layout 2: Tansu).
    #[serde(default = "tansu")]
    pub broker: String,
    /// The largest private broker's data at a scenario's end, MB; `None` for the in-memory mock
    /// (nothing on disk) and the shared broker (not ours to measure).
    #[serde(default)]
    pub broker_data_mb: Option<f64>,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// Wall time of the whole suite, seconds.
    pub wall_seconds: f64,
    /// Where it ran.
    pub machine: Machine,
    /// PostgreSQL's connections when the run started and what the run needed of them (absent
    /// before the check existed).
    #[serde(default)]
    pub connections: Option<crate::headroom::ConnectionBudget>,
    /// How it ran.
    pub config: RunConfig,
    /// Payments scenario with its pgbench baseline, one entry per concurrency.
    pub payments: Vec<PaymentsLevel>,
    /// Payments with nothing else running (no relay, tax or ledger), one entry per concurrency:
    /// its command path alone, each against a pgbench run of its own in the same environment.
    pub payments_alone: Vec<PaymentsLevel>,
    /// CPU profiles taken during the peak.
    pub profiles: Vec<crate::profile::Profile>,
    /// Raw broker baselines.
    pub kafka: Option<KafkaBaselines>,
    /// End-to-end scenario.
    pub e2e: Option<EndToEnd>,
    /// Ledger scenarios.
    pub ledger: Option<LedgerResults>,
    /// Why the ledger scenarios did not run, when they did not.
    pub ledger_skipped: Option<String>,
    /// Transfers through the saga against the ledger's own hold + capture.
    #[serde(default)]
    pub transfers: Option<TransfersResults>,
    /// Why transfers did not run.
    #[serde(default)]
    pub transfers_skipped: Option<String>,
    /// Webhook deliveries.
    #[serde(default)]
    pub notifications: Option<NotificationsResults>,
    /// Why notifications did not run.
    #[serde(default)]
    pub notifications_skipped: Option<String>,
    /// Warnings and errors in each service's log.
    pub service_logs: BTreeMap<String, LogSummary>,
    /// The issue's targets, met or missed.
    pub targets: Vec<Target>,
    /// Free-form observations made by the run itself.
    pub notes: Vec<String>,
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
    pub max_ledger_outbox: i64,
    /// Largest ledger lag behind tax (SQL), events (`-1`: no ledger).
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
        // `-1`: no readings at all, so no ledger either.
        let ledger_max = |value: fn(&Point) -> i64| if points.is_empty() { -1 } else { max(value) };
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
            max_ledger_outbox: ledger_max(|point| point.ledger_outbox),
            max_ledger_lag: ledger_max(|point| point.ledger_lag_sql),
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
    /// PlaceHold + CaptureHold on the spread scenario's accounts (absent in runs before holds).
    #[serde(default)]
    pub holds_spread: Option<HoldsRun>,
    /// PlaceHold + CaptureHold crediting the hot account.
    #[serde(default)]
    pub holds_hot: Option<HoldsRun>,
}

/// One holds scenario: each operation places a hold on the debited account and captures all of it
/// with the same two-line entry the PostEntry scenario posts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HoldsRun {
    /// Holds placed and captured per second (each one hold + one entry).
    pub captured_per_second: f64,
    /// captured/s over the PostEntry entries/s of the same scenario.
    pub ratio_to_post_entry: f64,
    /// Latency of the place + capture pair.
    pub both: Measured,
    /// PlaceHold latency.
    pub place: Measured,
    /// CaptureHold latency.
    pub capture: Measured,
    /// CPU and memory.
    pub resources: BTreeMap<String, Usage>,
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

/// Transfers at one client count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransfersLevel {
    /// Concurrent customers, each in a closed loop.
    pub concurrency: usize,
    /// Transfers completed per second.
    pub transfers_per_second: f64,
    /// `CreateTransfer` sent → the row COMPLETED (failures and timeouts are errors).
    pub create_to_completed: Measured,
    /// The `CreateTransfer` call.
    pub create: Measured,
    /// Its answer → COMPLETED.
    pub ack_to_completed: Measured,
    /// `PlaceHold` + `CaptureHold` per second, called directly.
    pub baseline_per_second: f64,
    /// The two calls together.
    pub baseline: Measured,
    /// transfers/s over hold + capture/s.
    pub ratio_to_baseline: f64,
    /// CPU and memory during the transfers.
    pub resources: BTreeMap<String, Usage>,
    /// CPU and memory during the baseline.
    pub baseline_resources: BTreeMap<String, Usage>,
}

/// The transfers scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransfersResults {
    /// One per client count.
    pub levels: Vec<TransfersLevel>,
    /// Accounts opened (two per customer).
    pub accounts: usize,
    /// Completion poll interval, ms (latencies are up to this late).
    pub poll_ms: u64,
    /// Temporal's published figure for its dev server.
    pub temporal_published: String,
}

/// One phase of the notifications scenario, at the healthy endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotificationsPhase {
    /// Events published.
    pub events: usize,
    /// Events delivered.
    pub delivered: usize,
    /// Extra requests beyond the first per event.
    pub duplicates: usize,
    /// Events that became more than one message (never expected).
    pub second_messages: usize,
    /// Delivered over first event → last delivery.
    pub deliveries_per_second: f64,
    /// Event handed to the producer → request read by the receiver.
    pub latency: Measured,
    /// CPU and memory.
    pub resources: BTreeMap<String, Usage>,
}

/// The notifications scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotificationsResults {
    /// Events/s of the sustained phases.
    pub rate: f64,
    /// Length of each sustained phase.
    pub seconds: f64,
    /// One healthy endpoint.
    pub alone: NotificationsPhase,
    /// Beside a dead and a slow endpoint.
    pub beside: NotificationsPhase,
    /// A burst, published at once.
    pub burst: NotificationsPhase,
    /// Raw produce → consume at the same rate on the same broker.
    pub raw_consumer: Measured,
    /// Healthy p99 beside minus alone, ms.
    pub p99_delay_beside_ms: f64,
    /// Requests the slow endpoint received.
    pub slow_endpoint_requests: usize,
    /// The healthy endpoint.
    pub healthy_endpoint_id: String,
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

/// Percentiles of `latency` chosen by `pick`, in ms, joined with ` / `.
fn fmt_latency(latency: &Latency, pick: &[fn(&Latency) -> f64]) -> String {
    pick.iter()
        .map(|value| fmt_ms(value(latency)))
        .collect::<Vec<_>>()
        .join(" / ")
}

const P50_P99: &[fn(&Latency) -> f64] = &[|l| l.p50_ms, |l| l.p99_ms];
const P50_P99_MAX: &[fn(&Latency) -> f64] = &[|l| l.p50_ms, |l| l.p99_ms, |l| l.max_ms];
const P50_P95_P99_MAX: &[fn(&Latency) -> f64] = &[|l| l.p50_ms, |l| l.p95_ms, |l| l.p99_ms, |l| l.max_ms];

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn errors_text(measured: &Measured) -> String {
    if measured.errors == 0 {
        return "0".to_owned();
    }
    let kinds: Vec<String> = (measured.error_kinds.iter())
        .map(|(kind, count)| format!("{kind} x{count}"))
        .collect();
    format!("{} ({})", measured.errors, kinds.join(", "))
}

fn resources_text(resources: &BTreeMap<String, Usage>, names: &[&str]) -> String {
    let text = |name: &&str| {
        let usage = resources.get(*name)?;
        // Summed over its processes, PostgreSQL's RSS counts shared buffers once per backend.
        Some(if ["postgres", "broker", "pgbench"].contains(name) {
            format!("{name} {:.0}%", usage.cpu_percent)
        } else {
            format!("{name} {:.0}% / {:.0} MiB", usage.cpu_percent, usage.peak_rss_mb)
        })
    };
    names.iter().filter_map(text).collect::<Vec<_>>().join(", ")
}

pub(crate) fn joined<T>(items: impl IntoIterator<Item = T>, text: impl Fn(T) -> String, separator: &str) -> String {
    items.into_iter().map(text).collect::<Vec<_>>().join(separator)
}

/// The processes of a run with the flow, in the order the tables list them.
const FLOW_PROCESSES: [&str; 6] = ["payments", "tax", "ledger", "postgres", "broker", "load generator"];

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let (machine, config) = (&self.machine, &self.config);
        let _ = writeln!(
            out,
            "# Benchmark results ({} run `{}`, broker: {})\n",
            self.mode, self.run_id, self.broker
        );
        if self.mode == "smoke" {
            out.push_str(
                "> Smoke run: a few seconds per scenario, debug binaries possible. It proves the harness and \
                 the services work end to end; its timings mean nothing.\n\n",
            );
        }
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
            joined(
                &machine.postgres_settings,
                |(name, value)| format!("{name}={value}"),
                ", "
            ),
            machine.broker,
            config.profile,
            machine.rustc
        );

        if let Some(connections) = &self.connections {
            let _ = writeln!(out, "PostgreSQL connections: {}\n", connections.summary);
        }
        out.push_str("## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
        for Target { target, measured, met } in &self.targets {
            let _ = writeln!(out, "| {target} | {measured} | {} |", verdict(*met));
        }
        out.push('\n');

        if !self.payments.is_empty() {
            self.payments_markdown(&mut out);
        }
        if !self.payments_alone.is_empty() {
            let _ = writeln!(
                out,
                "### Payments alone (no outbox relay, no tax, no ledger)\n\n\
                 The command path by itself: the same load, each level against a pgbench run of its own in the same \
                 environment, with nothing else on the machine competing for the {} cores.\n\n\
                 | clients | service commits/s | pgbench commits/s | ratio | service p50 / p99 ms | pgbench p50 / p99 ms \
                 | errors | service run | pgbench run |\n|---:|---:|---:|---:|---|---|---|---|---|",
                machine.nproc
            );
            for alone in &self.payments_alone {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
                    alone.concurrency,
                    fmt_rate(alone.commits_per_second),
                    fmt_rate(alone.baseline.commits_per_second),
                    alone.throughput_ratio,
                    fmt_latency(&alone.pair.latency, P50_P99),
                    fmt_latency(&alone.baseline.pair.latency, P50_P99),
                    errors_text(&alone.pair),
                    resources_text(&alone.resources, &["payments", "postgres", "load generator"]),
                    resources_text(&alone.baseline_resources, &["postgres", "pgbench"]),
                );
            }
            out.push('\n');
        }
        if let Some(kafka) = &self.kafka {
            self.kafka_markdown(&mut out, kafka);
        }
        if let Some(e2e) = &self.e2e {
            self.e2e_markdown(&mut out, e2e);
        }
        match (&self.ledger, &self.ledger_skipped) {
            (Some(ledger), _) => ledger_markdown(&mut out, ledger),
            (None, Some(reason)) => {
                let _ = writeln!(out, "## Ledger\n\nNot run: {reason}\n");
            }
            (None, None) => {}
        }

        match (&self.transfers, &self.transfers_skipped) {
            (Some(transfers), _) => transfers_markdown(&mut out, transfers),
            (None, Some(reason)) => {
                let _ = writeln!(out, "## Transfers\n\nNot run: {reason}\n");
            }
            (None, None) => {}
        }
        match (&self.notifications, &self.notifications_skipped) {
            (Some(notifications), _) => notifications_markdown(&mut out, notifications),
            (None, Some(reason)) => {
                let _ = writeln!(out, "## Notifications\n\nNot run: {reason}\n");
            }
            (None, None) => {}
        }

        if !self.profiles.is_empty() {
            out.push_str("## CPU profiles (perf, flat, symbols above 1 %)\n\n");
            for profile in &self.profiles {
                let _ = writeln!(out, "**{}** ({} samples)\n\n```text", profile.title, profile.samples);
                for line in &profile.top {
                    let _ = writeln!(out, "{line}");
                }
                out.push_str("```\n\n");
            }
        }
        if !self.service_logs.is_empty() {
            out.push_str("## Service logs\n\n");
            for (name, summary) in &self.service_logs {
                let last = (summary.last_problems.last())
                    .map(|line| format!(" (last: `{}`)", line.replace('`', "'")))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "- {name}: {} warnings, {} errors, {} consumer-group assignments, {} session timeouts{last}",
                    summary.warnings, summary.errors, summary.assignments, summary.session_timeouts,
                );
            }
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push_str("## Notes from the run\n\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
            out.push('\n');
        }
        let env = joined(&config.service_env, |(name, value)| format!("`{name}={value}`"), ", ");
        let _ = writeln!(out, "Service environment: {env}");
        out
    }

    fn payments_markdown(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "## Payments: CreateOrder + CreateTransaction vs pgbench running the same SQL\n\n\
             {:.0} s measured per level (after {:.1} s warm-up for the service). A pair is two commits. \
             Ratio = service / pgbench.\n\n\
             | clients | service commits/s | pgbench commits/s | ratio | service p50 / p95 / p99 / max ms (pair) \
             | pgbench p50 / p95 / p99 / max ms | p99 ratio | errors (service / pgbench) |\n\
             |---:|---:|---:|---:|---|---|---:|---|",
            self.config.duration_seconds, self.config.warmup_seconds
        );
        for level in &self.payments {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} | {} | {:.2} | {} / {} |",
                level.concurrency,
                fmt_rate(level.commits_per_second),
                fmt_rate(level.baseline.commits_per_second),
                level.throughput_ratio,
                fmt_latency(&level.pair.latency, P50_P95_P99_MAX),
                fmt_latency(&level.baseline.pair.latency, P50_P95_P99_MAX),
                level.p99_ratio,
                errors_text(&level.pair),
                errors_text(&level.baseline.pair),
            );
        }
        out.push_str(
            "\nPer call, and what the rest of the flow did meanwhile:\n\n\
             | clients | CreateOrder p50 / p99 ms | CreateTransaction p50 / p99 ms | relay events/s | tax events/s \
             | max outbox (payments / tax) | max tax lag (SQL / Kafka) | backlog growth /s | drained after | bounded |\n\
             |---:|---|---|---:|---:|---|---|---:|---|---|\n",
        );
        for level in &self.payments {
            let backlog = &level.backlog;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {:.1} | {} | {} |",
                level.concurrency,
                fmt_latency(&level.create_order.latency, P50_P99),
                fmt_latency(&level.create_transaction.latency, P50_P99),
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
                yes_no(backlog.bounded),
            );
        }
        let _ = writeln!(
            out,
            "\nCPU (% of one core; the machine has {}00 %) and peak RSS while each level ran:\n\n\
             | clients | service run | pgbench run |\n|---:|---|---|",
            self.machine.nproc
        );
        for level in &self.payments {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                level.concurrency,
                resources_text(&level.resources, &FLOW_PROCESSES),
                resources_text(&level.baseline_resources, &["postgres", "pgbench"]),
            );
        }
        out.push_str("\n![throughput and p99 against concurrency](latest.svg)\n\n");
    }

    fn kafka_markdown(&self, out: &mut String, kafka: &KafkaBaselines) {
        let _ = writeln!(
            out,
            "## Raw Kafka baselines (rdkafka, the relay's producer settings, {} B values + CloudEvents headers)\n\n\
             | baseline | rate | p50 / p99 / max ms | errors |\n|---|---:|---|---|",
            kafka.payload_bytes
        );
        let _ = writeln!(
            out,
            "| producer, {} in flight | {} records/s | {} (ack) | {} |",
            kafka.window,
            fmt_rate(kafka.produce_per_second),
            fmt_latency(&kafka.produce.latency, P50_P99_MAX),
            errors_text(&kafka.produce)
        );
        let _ = writeln!(
            out,
            "| consumer, partitions assigned, from the beginning | {} records/s ({} records; first after {}) | - | - |",
            fmt_rate(kafka.consume_per_second),
            kafka.consumed,
            (kafka.consume_first_record_ms).map_or("-".to_owned(), |ms| format!("{} ms", fmt_ms(ms)))
        );
        let at = format!(
            "produce -> consume at {} records/s (warmed-up producer)",
            fmt_rate(kafka.roundtrip_rate)
        );
        let fast_wait = kafka.fast_fetch_wait_ms;
        for (what, measured) in [
            (
                format!("{at}, librdkafka default `fetch.wait.max.ms` (500 ms)"),
                &kafka.roundtrip,
            ),
            ("of which producer ack".to_owned(), &kafka.roundtrip_ack),
            (format!("{at}, `fetch.wait.max.ms={fast_wait}`"), &kafka.roundtrip_fast),
        ] {
            let latency = fmt_latency(&measured.latency, P50_P99_MAX);
            let _ = writeln!(out, "| {what} | - | {latency} | {} |", errors_text(measured));
        }
        out.push('\n');
        let peak = (self.payments.iter()).max_by(|a, b| a.pairs_per_second.total_cmp(&b.pairs_per_second));
        if let Some(peak) = peak {
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

    fn e2e_markdown(&self, out: &mut String, e2e: &EndToEnd) {
        let _ = writeln!(
            out,
            "## End to end at {} pairs/s (half the payments peak of {} pairs/s), {:.0} s\n\n\
             Pairs scheduled in the first {:.1} s (the warm-up of fresh processes) run but are not measured.\n\n\
             | measure | count | p50 / p95 / p99 / max ms | errors |\n|---|---:|---|---|",
            fmt_rate(e2e.rate),
            fmt_rate(e2e.peak_pairs_per_second),
            self.config.e2e_seconds,
            self.config.warmup_seconds
        );
        let fixed = [
            ("CreateOrder + CreateTransaction (from schedule)", Some(&e2e.pair)),
            (
                "ack -> TaxedTransaction calculated (readable)",
                Some(&e2e.to_calculated),
            ),
            ("ack -> TaxedTransaction on tax.calculated", Some(&e2e.to_published)),
            ("ack -> ledger entry posted", e2e.to_ledger.as_ref()),
            ("GetTaxedTransaction read-back (sample)", Some(&e2e.read_back)),
        ];
        let fixed = fixed
            .into_iter()
            .filter_map(|(name, measured)| Some((name.to_owned(), measured?)));
        let hops = e2e.hops.iter().map(|hop| (format!("hop: {}", hop.name), &hop.measured));
        for (name, measured) in fixed.chain(hops) {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} |",
                measured.ok,
                fmt_latency(&measured.latency, P50_P95_P99_MAX),
                errors_text(measured)
            );
        }
        let backlog = &e2e.backlog;
        let baseline = if e2e.baseline_p99_ms > 0.0 {
            format!(
                "raw produce -> consume p99 at the same rate {} ms; ratio (p99 to tax.calculated / raw) {:.1}",
                fmt_ms(e2e.baseline_p99_ms),
                e2e.p99_ratio
            )
        } else {
            "none (the raw Kafka scenario did not run)".to_owned()
        };
        let drained = (backlog.drain_seconds).map_or("did not drain within the timeout".to_owned(), |seconds| {
            format!("drained {seconds:.1} s after the load")
        });
        let _ = writeln!(
            out,
            "\nBaseline: {baseline}. Backlog: max outbox payments {} / tax {}, max tax lag {} (Kafka {}), growth \
             {:.1}/s, {drained}, bounded: {}.\n",
            backlog.max_payments_outbox,
            backlog.max_tax_outbox,
            backlog.max_tax_lag,
            backlog.max_tax_lag_kafka,
            backlog.growth_per_second,
            yes_no(backlog.bounded),
        );
        let _ = writeln!(out, "Resources: {}\n", resources_text(&e2e.resources, &FLOW_PROCESSES));
        let samples = joined(
            e2e.series.iter().step_by((e2e.series.len() / 20).max(1)),
            |point| {
                let (t, payments, tax) = (point.t, point.payments_outbox, point.tax_outbox);
                format!("{t:.0}: {payments}/{tax}/{}/{}", point.tax_lag_sql, point.in_flight)
            },
            " · ",
        );
        let _ = writeln!(
            out,
            "Backlog over time (s: payments outbox / tax outbox / tax lag SQL / in flight end to end):\n\n`{samples}`\n"
        );
    }
}

fn ledger_markdown(out: &mut String, ledger: &LedgerResults) {
    let _ = writeln!(
        out,
        "## Ledger: PostEntry across {} accounts vs on one hot account ({} clients)\n\n\
         Two-line entries (debit one account, credit another). Baseline: pgbench with the same clients \
         locking the same two rows in order and updating them (the row-lock ceiling, nothing else).\n\n\
         | scenario | entries/s | p50 / p95 / p99 / max ms | errors | row-lock ceiling tx/s | p99 ms | ratio | resources |\n\
         |---|---:|---|---|---:|---:|---:|---|",
        ledger.accounts, ledger.concurrency
    );
    for (name, run) in [("spread", &ledger.spread), ("hot account", &ledger.hot)] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {:.2} | {} |",
            fmt_rate(run.entries_per_second),
            fmt_latency(&run.post.latency, P50_P95_P99_MAX),
            errors_text(&run.post),
            fmt_rate(run.ceiling_per_second),
            fmt_ms(run.ceiling.latency.p99_ms),
            run.ratio_to_ceiling,
            resources_text(&run.resources, &["ledger", "postgres", "load generator"])
        );
    }
    let _ = writeln!(out, "\nhot / spread = {:.2}.\n", ledger.hot_to_spread);
    if let (Some(spread), Some(hot)) = (&ledger.holds_spread, &ledger.holds_hot) {
        let _ = writeln!(
            out,
            "Holds on the same accounts and pairs: `PlaceHold` on the debited account, then `CaptureHold` of \
             all of it with the same two-line entry (one hold event, one entry, one capture event).\n\n\
             | scenario | holds captured/s | place + capture p50 / p95 / p99 / max ms | place p99 ms | capture p99 ms | errors | ratio to PostEntry | resources |\n\
             |---|---:|---|---:|---:|---|---:|---|"
        );
        for (name, run) in [("spread", spread), ("hot account", hot)] {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {:.2} | {} |",
                fmt_rate(run.captured_per_second),
                fmt_latency(&run.both.latency, P50_P95_P99_MAX),
                fmt_ms(run.place.latency.p99_ms),
                fmt_ms(run.capture.latency.p99_ms),
                errors_text(&run.both),
                run.ratio_to_post_entry,
                resources_text(&run.resources, &["ledger", "postgres", "load generator"])
            );
        }
        let _ = writeln!(out);
    }
}

fn transfers_markdown(out: &mut String, transfers: &TransfersResults) {
    let _ = writeln!(
        out,
        "## Transfers: the saga on Temporal vs the ledger's own hold + capture\n\n\
         Each client is a customer with two funded accounts; it sends `CreateTransfer` (its own token, an \
         idempotency key) and waits until the transfer is COMPLETED before the next, alternating direction. \
         Baseline: the same customers call the ledger's `PlaceHold` and `CaptureHold` directly on the same \
         accounts and amounts: the two ledger calls the saga makes, without Temporal or the service's rows. \
         Completion is read from the service's table every {} ms. Temporal's published dev-server figure: {}.\n\n\
         | clients | transfers/s | create → completed p50 / p95 / p99 / max ms | CreateTransfer p99 ms | errors \
         | hold + capture/s | hold + capture p50 / p99 ms | ratio | transfers run | baseline run |\n\
         |---:|---:|---|---:|---|---:|---|---:|---|---|",
        transfers.poll_ms, transfers.temporal_published
    );
    for level in &transfers.levels {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            level.concurrency,
            fmt_rate(level.transfers_per_second),
            fmt_latency(&level.create_to_completed.latency, P50_P95_P99_MAX),
            fmt_ms(level.create.latency.p99_ms),
            errors_text(&level.create_to_completed),
            fmt_rate(level.baseline_per_second),
            fmt_latency(&level.baseline.latency, P50_P99),
            level.ratio_to_baseline,
            resources_text(
                &level.resources,
                &["transfers", "temporal", "ledger", "postgres", "load generator"]
            ),
            resources_text(&level.baseline_resources, &["ledger", "postgres", "load generator"]),
        );
    }
    out.push('\n');
}

fn notifications_markdown(out: &mut String, notifications: &NotificationsResults) {
    let _ = writeln!(
        out,
        "## Notifications: event → signed webhook delivered\n\n\
         The benchmark publishes `accounts.opened` events (as the accounts service would) and receives the \
         webhooks on loopback HTTP receivers. Latency: event handed to the producer → request read by the \
         receiver. Sustained phases: {:.0} events/s for {:.0} s. The slow endpoint answers after 10 s; the dead \
         one refuses connections; both subscribe to every event. Baseline: raw produce → consume at the same \
         rate on the same broker with the services' `fetch.wait.max.ms` (50 ms).\n\n\
         | phase | events | delivered | duplicates | deliveries/s | p50 / p95 / p99 / max ms | errors | resources |\n\
         |---|---:|---:|---:|---:|---|---|---|",
        notifications.rate, notifications.seconds
    );
    for (name, phase) in [
        ("one healthy endpoint", &notifications.alone),
        ("beside a dead and a slow endpoint", &notifications.beside),
        ("burst (published at once)", &notifications.burst),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            phase.events,
            phase.delivered,
            phase.duplicates,
            fmt_rate(phase.deliveries_per_second),
            fmt_latency(&phase.latency.latency, P50_P95_P99_MAX),
            errors_text(&phase.latency),
            resources_text(
                &phase.resources,
                &["notifications", "postgres", "broker", "load generator"]
            ),
        );
    }
    let _ = writeln!(
        out,
        "| raw produce → consume | {} | | | | {} | {} | |\n\n\
         The healthy endpoint's p99 beside a dead and a slow endpoint: {:+.0} ms (the slow one received {} \
         requests meanwhile).\n",
        notifications.raw_consumer.ok + notifications.raw_consumer.errors,
        fmt_latency(&notifications.raw_consumer.latency, P50_P95_P99_MAX),
        errors_text(&notifications.raw_consumer),
        notifications.p99_delay_beside_ms,
        notifications.slow_endpoint_requests,
    );
}

/// A series of the plot: legend name, colour and one value per client count (`None`: not
/// measured at that count).
type Series<'a> = (&'a str, RGBColor, Vec<Option<f64>>);

/// What a series plots of a level.
type Value = fn(&PaymentsLevel) -> f64;

/// Legend names and colours of the plot's three series, and the grey of its notes.
const WITH_FLOW: (&str, RGBColor) = ("service + flow", RGBColor(0x1f, 0x77, 0xb4));
const ALONE: (&str, RGBColor) = ("service alone", RGBColor(0x2c, 0xa0, 0x2c));
const PGBENCH: (&str, RGBColor) = ("pgbench", RGBColor(0xff, 0x7f, 0x0e));
const NOTE: RGBColor = RGBColor(0x55, 0x55, 0x55);

impl Report {
    /// The plot: commits per second (left) and p99 latency of a pair (right) against clients, for
    /// the service with the whole flow running, the service alone and pgbench (the run in the
    /// with-flow level's environment).
    pub fn svg(&self) -> anyhow::Result<String> {
        // Every client count measured with or without the flow; a level that failed leaves a gap.
        let mut levels: Vec<usize> = (self.payments.iter().chain(&self.payments_alone))
            .map(|level| level.concurrency)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        let series = |(name, colour): (&'static str, RGBColor), of: &[PaymentsLevel], value: Value| {
            let values = (levels.iter())
                .map(|clients| of.iter().find(|level| level.concurrency == *clients).map(value))
                .collect();
            (name, colour, values)
        };
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 460)).into_drawing_area();
            root.fill(&WHITE)?;
            let title = format!(
                "payments CreateOrder+CreateTransaction vs pgbench (same SQL) — {} run {}",
                self.mode, self.run_id
            );
            let (top, bottom) = root.split_vertically(400);
            let top = top.titled(&title, ("sans-serif", 18).into_font().style(FontStyle::Bold))?;
            let (left, right) = top.split_horizontally(480);
            // Per panel: the service's value (with the flow and alone) and pgbench's.
            let throughput: [Value; 2] = [|l| l.commits_per_second, |l| l.baseline.commits_per_second];
            let p99: [Value; 2] = [|l| l.pair.latency.p99_ms, |l| l.baseline.pair.latency.p99_ms];
            let panels = [
                (left, "throughput (commits/s)", throughput),
                (right, "p99 latency of a pair (ms)", p99),
            ];
            for (area, title, [service, pgbench]) in panels {
                let lines = [
                    series(WITH_FLOW, &self.payments, service),
                    series(ALONE, &self.payments_alone, service),
                    series(PGBENCH, &self.payments, pgbench),
                ];
                panel(&area, title, &levels, &lines)?;
            }
            let notes = [
                "service + flow: outbox relay, tax, ledger and broker running on the same cores · service alone: none of them".to_owned(),
                "pgbench: the same SQL, services idle, run before each with-flow level (the alone levels' own pgbench runs are in latest.md)".to_owned(),
                format!(
                    "{} cores · {} · PostgreSQL + {} on the same host",
                    self.machine.nproc, self.machine.cpu_model, self.machine.broker
                ),
            ];
            let centred = Pos::new(HPos::Center, VPos::Center);
            for (line, note) in notes.iter().enumerate() {
                let style = ("sans-serif", 13).into_font().color(&NOTE).pos(centred);
                bottom.draw(&Text::new(note.as_str(), (480, 12 + 18 * line as i32), style))?;
            }
            root.present()?;
        }
        Ok(svg)
    }
}

/// One panel: a line per series over the client counts, spread evenly (1, 8, 32, 64 would crowd
/// on a linear axis), each point labelled with its value.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    levels: &[usize],
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let max = (series.iter().flat_map(|(_, _, values)| values.iter().flatten())).fold(0.0, |a: f64, b| a.max(*b));
    // The i-th client count sits at x = i.
    let x_range = -0.5..(levels.len().max(1) as f64 - 0.5);
    // Headroom above the highest point for its label and the legend.
    let top = (max * 1.4).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15).into_font().style(FontStyle::Bold))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d(x_range, 0.0..top)?;
    let label_of = |x: &f64| match levels.get(x.round() as usize) {
        Some(level) if (x - x.round()).abs() < 1e-6 && *x >= 0.0 => level.to_string(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .y_label_formatter(&|value| {
            if top >= 10.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            }
        })
        .x_labels(levels.len() + 1)
        .x_label_formatter(&label_of)
        .x_desc("concurrent clients")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    let at = |index: usize| index as f64;
    for (own, (name, colour, values)) in series.iter().enumerate() {
        let colour = *colour;
        let points: Vec<(usize, f64)> = (values.iter().enumerate())
            .filter_map(|(index, value)| value.map(|value| (index, value)))
            .collect();
        // One line per run of consecutive measured levels.
        for run in points.chunk_by(|a, b| b.0 == a.0 + 1).filter(|run| run.len() > 1) {
            let line = run.iter().map(|&(index, value)| (at(index), value));
            chart.draw_series(LineSeries::new(line, colour.stroke_width(2)))?;
        }
        let label = |(index, value): (usize, f64)| {
            let above = label_above(series, own, index, value);
            let (dy, anchor) = if above { (-6, VPos::Bottom) } else { (6, VPos::Top) };
            let font = ("sans-serif", 12).into_font().color(&colour);
            // The same rounding as the tables' rates.
            Text::new(fmt_rate(value), (0, dy), font.pos(Pos::new(HPos::Center, anchor)))
        };
        let labelled = points
            .iter()
            .map(|&(index, value)| (at(index), value, label((index, value))));
        let drawn = chart.draw_series(
            labelled.map(|(x, y, text)| EmptyElement::at((x, y)) + Circle::new((0, 0), 3.5, colour.filled()) + text),
        )?;
        if !points.is_empty() {
            drawn
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
        }
    }
    // A legend without entries would be an empty box (a run without payments levels).
    if series.iter().any(|(_, _, values)| values.iter().any(Option::is_some)) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(NOTE)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    Ok(())
}

/// Whether the label of `value` (series `own`, level `index`) goes above its point: the highest
/// point of a level is labelled above, the lowest below, one between on the side away from the
/// nearest other point.
fn label_above(series: &[Series<'_>], own: usize, index: usize, value: f64) -> bool {
    let others: Vec<f64> = (series.iter().enumerate())
        .filter(|(other, _)| *other != own)
        .filter_map(|(_, (_, _, values))| values[index])
        .collect();
    let nearest = (others.iter()).min_by(|a, b| (*a - value).abs().total_cmp(&(*b - value).abs()));
    others.iter().all(|other| value >= *other)
        || (!others.iter().all(|other| value < *other) && nearest.is_some_and(|nearest| *nearest <= value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(concurrency: usize, service: f64, baseline: f64) -> PaymentsLevel {
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

    fn sample_report() -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            run_id: "1_test".to_owned(),
            mode: "smoke".to_owned(),
            payments: vec![level(1, 100.0, 150.0), level(8, 400.0, 700.0)],
            targets: vec![Target {
                target: "payments >= 70 % of pgbench".to_owned(),
                measured: "57 %".to_owned(),
                met: Some(false),
            }],
            ..Report::default()
        }
    }

    #[test]
    fn markdown_has_targets_and_levels() {
        let markdown = sample_report().markdown();
        assert!(markdown.contains("| payments >= 70 % of pgbench | 57 % | **missed** |"));
        assert!(markdown.contains("| 8 | 400 | 700 | 0.57 |"));
    }

    #[test]
    fn markdown_has_one_alone_row_per_level() {
        let mut report = sample_report();
        report.payments_alone = vec![level(1, 120.0, 160.0), level(8, 600.0, 720.0)];
        let markdown = report.markdown();
        assert!(markdown.contains("### Payments alone (no outbox relay, no tax, no ledger)"));
        assert!(markdown.contains("| 1 | 120 | 160 | 0.75 |"));
        assert!(markdown.contains("| 8 | 600 | 720 | 0.83 |"));
    }

    #[test]
    fn svg_has_a_point_per_series_level_and_panel() {
        let mut report = sample_report();
        let svg = report.svg().expect("plot");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Two panels x (service with the flow, pgbench) x two levels; no payments alone.
        assert_eq!(svg.matches("<circle").count(), 8);
        assert!(svg.contains("\nservice + flow\n") && !svg.contains("\nservice alone\n"));
        report.payments_alone = vec![level(1, 120.0, 160.0), level(8, 600.0, 720.0)];
        let svg = report.svg().expect("plot");
        assert_eq!(svg.matches("<circle").count(), 12);
        assert!(svg.contains("\nservice alone\n"));
        // A level measured alone only: a point without a line, and a gap in the other series.
        report.payments_alone = vec![level(1, 120.0, 160.0), level(64, 900.0, 1200.0)];
        assert_eq!(report.svg().expect("plot").matches("<circle").count(), 12);
    }

    #[test]
    fn json_round_trips_and_the_old_layout_is_refused() {
        let mut report = sample_report();
        report.payments_alone = vec![level(1, 120.0, 160.0), level(8, 600.0, 720.0)];
        let json = serde_json::to_string(&report).expect("serialize");
        let back: Report = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.payments.len(), 2);
        assert_eq!(back.payments_alone[1].concurrency, 8);
        // Schema 1 stored payments alone as one level.
        let mut old = serde_json::to_value(&report).expect("serialize");
        old["payments_alone"] = serde_json::to_value(level(8, 600.0, 720.0)).expect("serialize level");
        assert!(serde_json::from_value::<Report>(old).is_err());
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
