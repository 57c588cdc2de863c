//! `fintech-bench`: throughput, latency and cost of the payments -> tax (-> ledger) event flow,
//! measured side by side with baselines on the same PostgreSQL and broker.
//!
//! `bench/run` builds the service binaries and calls `fintech-bench suite`, which creates fresh
//! databases and topics for the run, starts every service as its own process, runs the scenarios
//! and writes `latest.json`, `latest.md` and `latest.svg`. See `bench/README.md` for what each
//! scenario means.
//!
//! # Layout
//! - [`suite`]: the scenario order, their results and the targets, once per broker (`--broker`);
//! - [`compare`]: the runs of several brokers side by side (`comparison.md`);
//! - [`environment`]: a fresh environment per scenario (databases, broker, topics, services);
//! - [`headroom`]: PostgreSQL's free connections against what each scenario needs, before any
//!   starts (fit, smaller service pools, or a refusal that says what to change);
//! - [`load`]: gRPC connections, idempotency keys and the closed loop;
//! - [`payments`]: closed-loop gRPC load on payments (CreateOrder + CreateTransaction);
//! - [`e2e`]: open-loop load and the time until the `TaxedTransaction` exists;
//! - [`ledger`]: PostEntry across many accounts and on one hot account;
//! - [`transfers`]: the transfer saga on Temporal against the ledger's own hold + capture;
//! - [`notifications`]: event → signed webhook delivery, alone, beside a dead and a slow
//!   endpoint, in a burst, against a raw consumer;
//! - [`pgbench`]: the PostgreSQL baseline running the same SQL as a command;
//! - [`kafka`]: topics, consumer-group lag and the raw rdkafka baselines;
//! - [`monitor`]: outbox backlog and consumer lag over time;
//! - [`procstat`]: CPU and RSS per process from `/proc`;
//! - [`profile`]: `perf` profiles of a process during a scenario;
//! - [`services`]: the service processes (spawned through `fintech_devkit::process`);
//! - each scenario's private broker is `fintech_devkit::broker::PrivateBroker` (Tansu) or
//!   `fintech_devkit::mock::MockBroker` (librdkafka's mock cluster), shared with the tests
//!   ([`environment::Broker`] holds either);
//! - [`db`]: the run's databases and SQL probes;
//! - [`stats`], [`progress`], [`report`]: latency histograms (HdrHistogram), progress lines,
//!   JSON/Markdown and the SVG plot (plotters).

pub mod compare;
pub mod db;
pub mod e2e;
pub mod environment;
pub mod headroom;
pub mod kafka;
pub mod ledger;
pub mod load;
pub mod monitor;
pub mod notifications;
pub mod payments;
pub mod pgbench;
pub mod procstat;
pub mod profile;
pub mod progress;
pub mod report;
pub mod services;
pub mod stats;
pub mod suite;
pub mod transfers;
