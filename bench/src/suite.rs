//! The whole suite. Every scenario gets a fresh [`Environment`] (databases, broker, topics,
//! services) and tears it down after, so no scenario inherits another's backlog:
//!
//! 1. **payments** at every client count: pgbench on the same SQL first (services idle), then the
//!    service with tax (and the ledger) consuming everything it publishes, then a bounded wait
//!    until the flow has drained; right after it, **payments alone** at the same count (no relay,
//!    tax or ledger) against a pgbench run of its own;
//! 2. **raw Kafka** baselines on a fresh broker: producer, consumer, produce -> consume at the
//!    end-to-end event rate;
//! 3. **end to end** at half the payments peak;
//! 4. **ledger** (spread vs hot account, each against a pgbench row-lock ceiling) when the ledger
//!    binary was given;
//! 5. **transfers** (the saga on a private Temporal dev server, against the ledger's own hold +
//!    capture) at each transfer client count;
//! 6. **notifications** (event → webhook delivery alone, beside a dead and a slow endpoint, a
//!    burst, against a raw consumer).
//!
//! CPU and RSS of every process are sampled throughout and cut per scenario window. A scenario
//! that fails is reported as a problem and the suite goes on; the report is always written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use procfs::Current as _;

use crate::db::{self, Admin, redact};
use crate::environment::{Broker, Environment, EnvironmentReport, Needs, RunContext, active};
use crate::pgbench::{self, PayloadSizes};
use crate::procstat::{Sampler, Selector, Usage};
use crate::progress::{say, step};
use crate::report::{
    self, BacklogSummary, Baseline, EndToEnd, KafkaBaselines, LogSummary, Machine, Measured, PaymentsLevel, Report,
    RunConfig, Target, joined,
};
use crate::{e2e, headroom, kafka, ledger, notifications, payments, transfers};

/// The scenarios `--scenarios` can pick.
pub const SCENARIOS: [&str; 6] = ["payments", "kafka", "e2e", "ledger", "transfers", "notifications"];

/// Records the raw producer keeps in flight: the relay's default batch size.
const PRODUCE_WINDOW: usize = 256;

/// The kind of private broker every scenario of a run gets (`--broker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerKind {
    /// Tansu 0.6 with SQLite storage, as `deploy/local` runs it (fintech-devkit's `PrivateBroker`).
    #[default]
    Tansu,
    /// librdkafka's mock cluster in a process of its own (`fintech-mock-broker`, in memory).
    Mock,
}

impl BrokerKind {
    /// Both, in the order a full run measures them.
    pub const ALL: [Self; 2] = [Self::Tansu, Self::Mock];

    /// Its name in flags, folders and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tansu => "tansu",
            Self::Mock => "mock",
        }
    }

    /// `tansu`, `mock` or `both` (`--broker`).
    pub fn parse_list(value: &str) -> anyhow::Result<Vec<Self>> {
        match value {
            "tansu" => Ok(vec![Self::Tansu]),
            "mock" => Ok(vec![Self::Mock]),
            "both" => Ok(Self::ALL.to_vec()),
            other => anyhow::bail!("--broker: {other:?} is not tansu, mock or both"),
        }
    }
}

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds-long scenarios that prove everything works; timings mean nothing.
    pub smoke: bool,
    /// Fail (exit code 1) when any operation failed or any event went missing.
    pub strict: bool,
    /// Where `latest.json`, `latest.md` and `latest.svg` go.
    pub out_dir: PathBuf,
    /// Logs, pgbench scripts (kept after the run).
    pub work_dir: PathBuf,
    /// Folder with the `payments` and `tax` binaries.
    pub bin_dir: PathBuf,
    /// The ledger binary, when it built.
    pub ledger_bin: Option<PathBuf>,
    /// Why there is no ledger binary.
    pub ledger_skip_reason: Option<String>,
    /// Cargo profile of the binaries (for the report).
    pub profile: String,
    /// Client counts of the payments scenario.
    pub levels: Vec<usize>,
    /// Measured time per payments level (pgbench gets the same).
    pub duration: Duration,
    /// Unmeasured load before each service level.
    pub warmup: Duration,
    /// End-to-end load time.
    pub e2e_duration: Duration,
    /// End-to-end rate; `None`: half the payments peak.
    pub e2e_rate: Option<f64>,
    /// Each raw Kafka baseline.
    pub kafka_duration: Duration,
    /// Each ledger scenario.
    pub ledger_duration: Duration,
    /// Concurrent clients of the ledger scenarios.
    pub ledger_clients: usize,
    /// Accounts of the spread ledger scenario.
    pub ledger_accounts: usize,
    /// Longest wait for the flow to drain after a load.
    pub drain_timeout: Duration,
    /// Admin connection URL of PostgreSQL.
    pub database_url: String,
    /// The shared broker (with `shared_broker`).
    pub bootstrap: String,
    /// Run on the shared broker at `bootstrap` instead of a private one (Tansu only).
    pub shared_broker: bool,
    /// The kind of private broker of this run's scenarios.
    pub broker: BrokerKind,
    /// The pgbench binary.
    pub pgbench: PathBuf,
    /// `RUST_LOG` of the services.
    pub service_log: String,
    /// Optional Redis for the idempotency fast path (off by default: PostgreSQL only, like the
    /// baseline).
    pub redis_url: Option<String>,
    /// Keep the databases after the run (to inspect them).
    pub keep_databases: bool,
    /// Scenarios to run (of [`SCENARIOS`]); empty: all.
    pub scenarios: Vec<String>,
    /// Client counts of the transfers scenario.
    pub transfer_levels: Vec<usize>,
    /// Measured time of each transfers run (and of its baseline).
    pub transfers_duration: Duration,
    /// Events/s of the notifications scenario's sustained phases.
    pub notifications_rate: f64,
    /// Length of each sustained notifications phase.
    pub notifications_duration: Duration,
    /// Events of the notifications burst.
    pub notifications_burst: usize,
}

impl Options {
    /// Defaults of a full run (`bench/run`).
    pub fn full() -> Self {
        Self {
            smoke: false,
            strict: false,
            out_dir: PathBuf::from("bench/results"),
            work_dir: PathBuf::from(".local/bench"),
            bin_dir: PathBuf::from("target/release"),
            ledger_bin: None,
            ledger_skip_reason: Some("no ledger binary given (--ledger-bin)".to_owned()),
            profile: "release".to_owned(),
            levels: vec![1, 8, 32, 64],
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(2),
            e2e_duration: Duration::from_secs(45),
            e2e_rate: None,
            kafka_duration: Duration::from_secs(10),
            ledger_duration: Duration::from_secs(15),
            ledger_clients: 32,
            ledger_accounts: ledger::SPREAD_ACCOUNTS,
            drain_timeout: Duration::from_secs(30),
            database_url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            bootstrap: "127.0.0.1:9092".to_owned(),
            shared_broker: false,
            broker: BrokerKind::Tansu,
            pgbench: PathBuf::from("/usr/bin/pgbench"),
            service_log: "info".to_owned(),
            redis_url: None,
            keep_databases: false,
            scenarios: Vec::new(),
            transfer_levels: vec![1, 8, 32],
            transfers_duration: Duration::from_secs(15),
            notifications_rate: 50.0,
            notifications_duration: Duration::from_secs(20),
            notifications_burst: 2_000,
        }
    }

    /// Whether scenario `name` is selected.
    pub fn runs(&self, name: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|selected| selected == name)
    }

    /// Defaults of a smoke run (`bench/run --smoke`).
    pub fn smoke() -> Self {
        Self {
            smoke: true,
            strict: true,
            out_dir: PathBuf::from("bench/results/tmp/smoke"),
            bin_dir: PathBuf::from("target/debug"),
            profile: "debug".to_owned(),
            levels: vec![2],
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            e2e_duration: Duration::from_secs(3),
            e2e_rate: Some(20.0),
            kafka_duration: Duration::from_secs(2),
            ledger_duration: Duration::from_secs(2),
            ledger_clients: 4,
            ledger_accounts: 10,
            drain_timeout: Duration::from_secs(20),
            transfer_levels: vec![2],
            transfers_duration: Duration::from_secs(3),
            notifications_rate: 10.0,
            notifications_duration: Duration::from_secs(3),
            notifications_burst: 50,
            ..Self::full()
        }
    }
}

/// What the scenarios accumulate besides their own results.
#[derive(Debug, Default)]
struct SuiteState {
    problems: Vec<String>,
    notes: Vec<String>,
    logs: BTreeMap<String, LogSummary>,
    peak_rss_mb: BTreeMap<String, f64>,
    sizes: Option<PayloadSizes>,
    service_env: Vec<(&'static str, String)>,
    broker_data_mb: Option<f64>,
    profiles: Vec<crate::profile::Profile>,
}

impl SuiteState {
    /// A problem that is also worth a note in the report.
    fn noted(&mut self, problem: String) {
        say(format!("    {problem}"));
        self.notes.push(problem.clone());
        self.problems.push(problem);
    }

    fn absorb(&mut self, environment: EnvironmentReport, tag: &str) {
        for (name, other) in environment.logs {
            let into = self.logs.entry(name).or_default();
            into.warnings += other.warnings;
            into.errors += other.errors;
            into.assignments += other.assignments;
            into.session_timeouts += other.session_timeouts;
            if !other.last_problems.is_empty() {
                into.last_problems = other.last_problems;
            }
        }
        self.peak_rss(environment.peak_rss_mb);
        if let Some(megabytes) = environment.broker_data_mb {
            self.broker_data_mb = Some(self.broker_data_mb.unwrap_or(0.0).max(megabytes));
        }
        if let Some(panic) = environment.broker_panic {
            self.noted(format!("the broker of {tag} panicked: {panic}"));
        }
    }

    fn peak_rss(&mut self, peaks: impl IntoIterator<Item = (String, f64)>) {
        for (name, peak) in peaks {
            let entry = self.peak_rss_mb.entry(name).or_default();
            *entry = entry.max(peak);
        }
    }

    /// The services' sampled peaks in a scenario window.
    fn peak(&mut self, resources: &BTreeMap<String, Usage>) {
        let services = ["payments", "tax", "ledger", "accounts", "transfers", "notifications"].into_iter();
        self.peak_rss(services.filter_map(|name| Some((name.to_owned(), resources.get(name)?.peak_rss_mb))));
    }
}

/// Runs `body` in a fresh environment `tag` and tears it down whatever happens.
async fn in_environment<T>(
    context: &RunContext<'_>,
    state: &mut SuiteState,
    tag: &str,
    needs: Needs,
    body: impl AsyncFnOnce(&mut Environment, &mut SuiteState) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut environment = Environment::start(context, tag, needs).await?;
    if let Some(sizes) = environment.sizes {
        state.sizes.get_or_insert(sizes);
    }
    if state.service_env.is_empty() && needs.flow {
        state.service_env = environment.service_env.clone();
    }
    let result = body(&mut environment, state).await;
    let result = result.and_then(|value| environment.ensure_alive().map(|()| value));
    let report = environment.stop(context).await;
    state.absorb(report, tag);
    result
}

/// Runs the suite and writes the report; returns it with the list of problems (operations that
/// failed, events that never arrived, scenarios that could not run) that `strict` turns into a
/// failure.
pub async fn run(options: Options) -> anyhow::Result<(Report, Vec<String>)> {
    let started = Instant::now();
    let run_id = format!("{}_{}", db::unix_now(), &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let admin = Admin::new(&options.database_url);
    let work_dir = options.work_dir.join(&run_id);
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    // Absolute: pgbench runs in a folder of its own.
    let work_dir = std::path::absolute(&work_dir)?;
    let mode = if options.smoke { "smoke" } else { "full" };
    step(format!(
        "benchmark run {run_id} ({mode}), work files in {}",
        work_dir.display()
    ));
    prune_work_dirs(&options.work_dir, &run_id);
    match admin.drop_stale().await {
        Ok(dropped) if !dropped.is_empty() => say(format!("    dropped stale databases: {}", dropped.join(", "))),
        Ok(_) => {}
        Err(error) => say(format!("    could not look for stale databases: {error:#}")),
    }

    // Before any scenario: does PostgreSQL have the connections every scenario needs?
    let (footprints, connections) = check_headroom(&options).await?;

    let sampler = Sampler::start();
    sampler.track("postgres", Selector::Comm("postgres".to_owned()));
    sampler.track("pgbench", Selector::Comm("pgbench".to_owned()));
    sampler.track("load generator", Selector::Pid(std::process::id()));
    let context = RunContext {
        options: &options,
        admin: admin.clone(),
        run_id: run_id.clone(),
        work_dir,
        sampler,
        connections: connections.clone(),
    };
    let mut report = Report {
        schema_version: report::SCHEMA_VERSION,
        run_id: run_id.clone(),
        mode: mode.to_owned(),
        broker: options.broker.name().to_owned(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(&admin, &options).await,
        ..Report::default()
    };
    report.connections = Some(headroom::ConnectionBudget::of(
        &connections.plan,
        &connections.capacity,
        &footprints,
    ));
    let mut state = SuiteState::default();
    if let headroom::Verdict::Shrink(pools) = &connections.plan.verdict {
        state.notes.push(format!(
            "the services' pools were shrunk from {} to fit PostgreSQL's free connections ({} free) in: {} \
             (PostgreSQL connections, above)",
            connections.plan.requested,
            connections.plan.free,
            headroom::shrunk_text(pools, &footprints),
        ));
    }
    if report.machine.load_average_at_start > 0.7 {
        state.notes.push(format!(
            "load average was {:.2} when the suite started: other work on this {}-core machine competed with the benchmark",
            report.machine.load_average_at_start, report.machine.nproc
        ));
    }

    if options.runs("payments") {
        let peak = options.levels.iter().copied().max().unwrap_or(1);
        // Each level with the flow, then alone: the two measurements of a client count are minutes
        // apart at most, whatever else the machine is doing meanwhile.
        for &clients in &options.levels {
            match payments_level(&context, &mut state, clients, clients == peak, false).await {
                Ok(level) => report.payments.push(level),
                Err(error) => state.noted(format!("payments at {clients} clients failed: {error:#}")),
            }
            match payments_level(&context, &mut state, clients, clients == peak, true).await {
                Ok(level) => report.payments_alone.push(level),
                Err(error) => state.noted(format!("payments alone at {clients} clients failed: {error:#}")),
            }
        }
    }
    // The end-to-end rate derives from the peak with the flow running, not from payments alone.
    let peak_pairs = (report.payments.iter())
        .map(|level| level.pairs_per_second)
        .fold(0.0, f64::max);
    let e2e_rate = options.e2e_rate.unwrap_or(peak_pairs / 2.0).max(1.0);

    if options.runs("kafka") {
        step("raw Kafka baselines");
        let payload_size = state.sizes.unwrap_or_else(PayloadSizes::typical).transaction;
        let kafka = in_environment(
            &context,
            &mut state,
            "kafka",
            Needs::default(),
            async |environment, state| {
                kafka_baselines(&context, environment, payload_size, e2e_rate, &mut state.problems).await
            },
        );
        match kafka.await {
            Ok(kafka) => report.kafka = Some(kafka),
            Err(error) => state.noted(format!("the Kafka baselines failed: {error:#}")),
        }
    }
    if options.runs("e2e") {
        let baseline_p99_ms = (report.kafka.as_ref()).map_or(0.0, |kafka| kafka.roundtrip.latency.p99_ms);
        match e2e_scenario(&context, &mut state, e2e_rate, peak_pairs, baseline_p99_ms).await {
            Ok(e2e) => report.e2e = Some(e2e),
            Err(error) => state.noted(format!("the end-to-end scenario failed: {error:#}")),
        }
    }
    if !options.runs("ledger") {
        report.ledger_skipped = Some("not selected (--scenarios)".to_owned());
    } else if options.ledger_bin.is_none() {
        report.ledger_skipped = options.ledger_skip_reason.clone();
    } else {
        match ledger_scenario(&context, &mut state).await {
            Ok(ledger) => report.ledger = Some(ledger),
            Err(error) => state.noted(format!("the ledger scenarios failed: {error:#}")),
        }
    }

    if !options.runs("transfers") {
        report.transfers_skipped = Some("not selected (--scenarios)".to_owned());
    } else if let Some(reason) = transfers_missing(&options) {
        report.transfers_skipped = Some(reason);
    } else {
        match transfers_scenario(&context, &mut state).await {
            Ok(transfers) => report.transfers = Some(transfers),
            Err(error) => state.noted(format!("the transfers scenario failed: {error:#}")),
        }
    }
    if !options.runs("notifications") {
        report.notifications_skipped = Some("not selected (--scenarios)".to_owned());
    } else {
        match notifications_scenario(&context, &mut state).await {
            Ok(notifications) => report.notifications = Some(notifications),
            Err(error) => state.noted(format!("the notifications scenario failed: {error:#}")),
        }
    }

    report.config = run_config(&options, &state, &admin, &connections.plan, &footprints);
    report.targets = targets(&report, &state.peak_rss_mb);
    report.broker_data_mb = state.broker_data_mb;
    if !options.shared_broker {
        state.notes.push(match (options.broker, state.broker_data_mb) {
            (BrokerKind::Mock, _) => "each scenario ran on a fresh mock broker (librdkafka's mock cluster, in memory: \
                 no data on disk, so no data size to report)"
                .to_owned(),
            (BrokerKind::Tansu, Some(megabytes)) => format!(
                "each scenario ran on a fresh private broker; the largest held {megabytes:.0} MB of data at its end (removed with it)"
            ),
            (BrokerKind::Tansu, None) => "each scenario ran on a fresh private broker".to_owned(),
        });
    }
    report.service_logs = std::mem::take(&mut state.logs);
    report.profiles = std::mem::take(&mut state.profiles);
    report.notes = std::mem::take(&mut state.notes);
    report.wall_seconds = started.elapsed().as_secs_f64();
    write_report(&report, &options.out_dir)?;
    Ok((report, state.problems))
}

/// Runs the suite once per broker of `brokers` (`--broker`), each into `<out>/<broker>/`, and with
/// more than one writes `<out>/comparison.md` beside them; returns the reports and every run's
/// problems, each prefixed with its broker.
pub async fn run_brokers(options: Options, brokers: &[BrokerKind]) -> anyhow::Result<(Vec<Report>, Vec<String>)> {
    anyhow::ensure!(!brokers.is_empty(), "no broker to run on");
    anyhow::ensure!(
        !options.shared_broker || brokers == [BrokerKind::Tansu],
        "--shared-broker runs on the shared Tansu only (with --broker tansu)"
    );
    let out_root = options.out_dir.clone();
    let (mut reports, mut problems) = (Vec::new(), Vec::new());
    for &broker in brokers {
        step(format!("the suite on the {} broker", broker.name()));
        let mut run_options = options.clone();
        run_options.broker = broker;
        run_options.out_dir = out_root.join(broker.name());
        let (report, run_problems) = run(run_options).await?;
        problems.extend(
            run_problems
                .into_iter()
                .map(|problem| format!("[{}] {problem}", broker.name())),
        );
        reports.push(report);
    }
    if reports.len() > 1 {
        crate::compare::write(&reports, &out_root)?;
    }
    Ok((reports, problems))
}

/// Payments at `clients` in a fresh environment: with the whole flow, or `alone` (no outbox
/// relays, tax or ledger). At the `peak` the broker (with the flow) or payments (alone) is
/// profiled: each is what limits its scenario there.
async fn payments_level(
    context: &RunContext<'_>,
    state: &mut SuiteState,
    clients: usize,
    peak: bool,
    alone: bool,
) -> anyhow::Result<PaymentsLevel> {
    let (tag, profile) = if alone {
        step(format!("payments alone at {clients} clients (no relay, tax or ledger)"));
        (format!("alone{clients}"), ("payments", "payments alone"))
    } else {
        step(format!("payments at {clients} clients"));
        (format!("c{clients}"), ("broker", "the broker"))
    };
    let needs = Needs {
        flow: !alone,
        payments_only: alone,
        pgbench: true,
        ..Needs::default()
    };
    let profile = peak.then_some(profile);
    in_environment(context, state, &tag, needs, async |environment, state| {
        measure_level(context, environment, state, clients, profile).await
    })
    .await
}

/// pgbench on the same SQL, then the service at `clients`, then (with the flow) a bounded wait
/// for the backlog to drain. `profile` names a process (`payments`, `broker`) to profile with
/// perf during the measured window, and the profile's title.
async fn measure_level(
    context: &RunContext<'_>,
    environment: &mut Environment,
    state: &mut SuiteState,
    clients: usize,
    profile: Option<(&str, &str)>,
) -> anyhow::Result<PaymentsLevel> {
    let (options, sampler) = (context.options, &context.sampler);
    let sizes = environment.sizes.context("no payload sizes")?;
    let pgbench_url = (environment.pgbench_db.as_ref())
        .map(|(_, url)| url.clone())
        .context("no pgbench database")?;
    let script = environment.dir.join("pair.sql");
    std::fs::write(&script, pgbench::pair_script(sizes, &environment.prefix)?)?;
    let from = sampler.now();
    let baseline = pgbench::run(
        pgbench::Invocation {
            pgbench: &options.pgbench,
            conninfo: &pgbench_url,
            script: &script,
            clients,
            duration: options.duration,
            log_dir: &environment.dir.join("pgbench"),
        },
        &format!("pgbench c={clients}"),
    )
    .await?;
    sampler.sample_now();
    let baseline_resources = active(sampler.usage(from, sampler.now()));

    let series = environment.monitor.as_ref().map(|monitor| monitor.start(None));
    let load_from = sampler.now() + options.warmup.as_secs_f64();
    let pid = |process: &str| match process {
        "payments" => environment.payments.as_ref().map(|payments| payments.process.pid()),
        _ => environment.broker.as_ref().and_then(Broker::pid),
    };
    let broker_name = options.broker.name();
    let profile = profile.map(|(process, title)| match process {
        "broker" => (process, format!("{title} ({broker_name})")),
        _ => (process, title.to_owned()),
    });
    let perf = match profile.and_then(|(process, title)| Some((pid(process)?, title))) {
        Some((pid, title)) if !options.smoke => {
            // The measured window, after the warm-up, minus a second at each end.
            let seconds = options.duration.as_secs().saturating_sub(2).max(1);
            let delay = options.warmup + Duration::from_secs(1);
            let data = (environment.dir).join(format!("perf-{}.data", title.replace([' ', '(', ')'], "-")));
            let title = format!("{title}, payments at {clients} clients, {seconds} s");
            Some(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let profile = crate::profile::start(pid, seconds, &data, title);
                crate::profile::finish(profile, Duration::from_secs(120)).await
            }))
        }
        _ => None,
    };
    let run = payments::closed_loop(
        &environment.payments_address()?,
        &format!("{}-{}", context.run_id, environment.tag),
        clients,
        options.warmup,
        options.duration,
        &format!("payments c={clients}"),
    )
    .await?;
    sampler.sample_now();
    let resources = active(sampler.usage(load_from, sampler.now()));
    state.peak(&resources);
    environment.ensure_alive()?;
    let (points, load_end, drain) = match series {
        Some(series) => {
            let load_end = series.now();
            let drain = series.wait_drained(options.drain_timeout).await;
            (series.finish().await, load_end, drain)
        }
        None => (Vec::new(), 0.0, Some(0.0)),
    };
    if let Some(perf) = perf
        && let Ok(Some(profile)) = perf.await
    {
        state.profiles.push(profile);
    }
    // The run's samples: whole pairs, CreateOrder, CreateTransaction.
    let [pairs, orders, transactions] = &run.samples[..] else {
        anyhow::bail!("the closed loop measured {} series, not 3", run.samples.len());
    };
    let pairs_per_second = pairs.count() as f64 / run.elapsed.as_secs_f64();
    let commits_per_second = run.commits as f64 / run.elapsed.as_secs_f64();
    let baseline_commits = 2.0 * baseline.tps;
    let level = PaymentsLevel {
        concurrency: clients,
        pairs_per_second,
        commits_per_second,
        pair: Measured::from(pairs),
        create_order: Measured::from(orders),
        create_transaction: Measured::from(transactions),
        throughput_ratio: commits_per_second / baseline_commits.max(1e-9),
        p99_ratio: pairs.latency().p99_ms / baseline.samples.latency().p99_ms.max(1e-9),
        baseline: Baseline {
            pairs_per_second: baseline.tps,
            commits_per_second: baseline_commits,
            pair: Measured::from(&baseline.samples),
            summary: baseline.summary,
        },
        resources,
        baseline_resources,
        backlog: BacklogSummary::of(&points, load_end, 2.0 * pairs_per_second, drain),
        series: points,
    };
    say(format!(
        "    service {:.0} commits/s (p99 {:.1} ms) vs pgbench {:.0} commits/s (p99 {:.1} ms): ratio {:.2}{}",
        level.commits_per_second,
        level.pair.latency.p99_ms,
        level.baseline.commits_per_second,
        level.baseline.pair.latency.p99_ms,
        level.throughput_ratio,
        match (&environment.monitor, drain) {
            (None, _) => String::new(),
            (Some(_), Some(seconds)) => format!("; drained in {seconds:.1} s"),
            (Some(_), None) => "; not drained within the timeout".to_owned(),
        }
    ));
    let tag = &environment.tag;
    check(&mut state.problems, &format!("payments {tag}"), &level.pair);
    check(&mut state.problems, &format!("pgbench {tag}"), &level.baseline.pair);
    if drain.is_none() {
        (state.problems).push(format!(
            "payments {tag}: the flow did not drain within {:?}",
            options.drain_timeout
        ));
    }
    Ok(level)
}

async fn e2e_scenario(
    context: &RunContext<'_>,
    state: &mut SuiteState,
    rate: f64,
    peak_pairs: f64,
    baseline_p99_ms: f64,
) -> anyhow::Result<EndToEnd> {
    let (options, sampler) = (context.options, &context.sampler);
    step(format!("end to end at {rate:.0} pairs/s"));
    let needs = Needs {
        flow: true,
        ..Needs::default()
    };
    in_environment(context, state, "e2e", needs, async |environment, state| {
        let tax = environment.tax.as_ref().context("tax is not running")?;
        let setup = e2e::Setup {
            payments: environment.payments_address()?,
            tax: tax.channel.clone(),
            tax_db: tax.db.clone(),
            bootstrap: environment.bootstrap.clone(),
            tax_calculated_topic: format!("{}tax.calculated", environment.prefix),
            key_prefix: format!("{}-e2e", context.run_id),
            ledger_db: environment.ledger.as_ref().map(|ledger| ledger.db.clone()),
            payments_db: environment.payments.as_ref().map(|payments| payments.db.clone()),
        };
        let monitor = environment.monitor.clone().context("no monitor")?;
        let from = sampler.now();
        let (duration, warmup, drain_timeout) = (options.e2e_duration, options.warmup, options.drain_timeout);
        let run = e2e::run(&setup, &monitor, rate, duration, warmup, drain_timeout, "end to end").await?;
        let resources = active(sampler.usage(from, from + run.elapsed.as_secs_f64()));
        state.peak(&resources);
        let to_published = Measured::from(&run.to_published);
        let end_to_end = EndToEnd {
            rate,
            peak_pairs_per_second: peak_pairs,
            scheduled: run.scheduled,
            pair: Measured::from(&run.pairs),
            to_calculated: Measured::from(&run.to_calculated),
            p99_ratio: to_published.latency.p99_ms / baseline_p99_ms.max(1e-9),
            to_published,
            to_ledger: run.to_ledger.as_ref().map(Measured::from),
            read_back: Measured::from(&run.read_back),
            hops: (run.hops.iter())
                .map(|(name, samples)| report::Hop {
                    name: name.clone(),
                    measured: Measured::from(samples),
                })
                .collect(),
            baseline_p99_ms,
            backlog: BacklogSummary::of(&run.series, run.elapsed.as_secs_f64(), 2.0 * rate, run.drain_seconds),
            resources,
            series: run.series,
        };
        say(format!(
            "    ack -> calculated p99 {:.1} ms, ack -> tax.calculated p50 {:.1} / p99 {:.1} ms, {} missing",
            end_to_end.to_calculated.latency.p99_ms,
            end_to_end.to_published.latency.p50_ms,
            end_to_end.to_published.latency.p99_ms,
            end_to_end.to_published.errors
        ));
        for (what, measured) in [
            ("pairs", Some(&end_to_end.pair)),
            ("tax.calculated", Some(&end_to_end.to_published)),
            ("GetTaxedTransaction", Some(&end_to_end.read_back)),
            ("ledger entries", end_to_end.to_ledger.as_ref()),
        ] {
            if let Some(measured) = measured {
                check(&mut state.problems, &format!("end to end: {what}"), measured);
            }
        }
        if let Some(to_ledger) = &end_to_end.to_ledger {
            say(format!(
                "    ack -> ledger entry posted p50 {:.1} / p99 {:.1} ms, {} missing",
                to_ledger.latency.p50_ms, to_ledger.latency.p99_ms, to_ledger.errors
            ));
        }
        Ok(end_to_end)
    })
    .await
}

async fn ledger_scenario(context: &RunContext<'_>, state: &mut SuiteState) -> anyhow::Result<report::LedgerResults> {
    let options = context.options;
    step("ledger: spread vs hot account");
    let needs = Needs {
        ledger_only: true,
        pgbench: true,
        ..Needs::default()
    };
    in_environment(context, state, "ledger", needs, async |environment, state| {
        let (pgbench_db, pgbench_url) = environment.pgbench_db.clone().context("no pgbench database")?;
        let ledger = environment.ledger.as_ref().context("the ledger is not running")?;
        let setup = ledger::Setup {
            address: ledger.process.address.clone(),
            clients: options.ledger_clients,
            accounts: options.ledger_accounts,
            duration: options.ledger_duration,
            warmup: options.warmup,
            run_id: &context.run_id,
            pgbench_db: &pgbench_db,
            pgbench: &options.pgbench,
            pgbench_url: &pgbench_url,
            work_dir: &environment.dir,
        };
        let results = ledger::run(setup, &context.sampler).await?;
        state.peak(&results.spread.resources);
        state.peak(&results.hot.resources);
        check(&mut state.problems, "ledger spread", &results.spread.post);
        check(&mut state.problems, "ledger hot", &results.hot.post);
        for (name, holds) in [
            ("ledger holds spread", &results.holds_spread),
            ("ledger holds hot", &results.holds_hot),
        ] {
            if let Some(holds) = holds {
                state.peak(&holds.resources);
                check(&mut state.problems, name, &holds.both);
            }
        }
        Ok(results)
    })
    .await
}

/// Why the transfers scenario cannot run, if it cannot.
pub(crate) fn transfers_missing(options: &Options) -> Option<String> {
    if options.ledger_bin.is_none() {
        return Some(format!(
            "it needs the ledger: {}",
            (options.ledger_skip_reason.as_deref()).unwrap_or("no ledger binary given")
        ));
    }
    ["accounts", "transfers"]
        .into_iter()
        .map(|name| options.bin_dir.join(name))
        .find(|binary| !binary.exists())
        .map(|binary| format!("{} does not exist", binary.display()))
}

async fn transfers_scenario(
    context: &RunContext<'_>,
    state: &mut SuiteState,
) -> anyhow::Result<report::TransfersResults> {
    let options = context.options;
    step("transfers: the saga on Temporal vs the ledger's own hold + capture");
    let needs = Needs {
        transfers: true,
        ..Needs::default()
    };
    in_environment(context, state, "transfers", needs, async |environment, state| {
        let address = |service: &Option<crate::environment::Service>, name: &str| {
            (service.as_ref())
                .map(|service| service.process.address.clone())
                .with_context(|| format!("{name} is not running"))
        };
        let setup = transfers::Setup {
            accounts: address(&environment.accounts, "accounts")?,
            ledger: address(&environment.ledger, "the ledger")?,
            transfers: address(&environment.transfers, "transfers")?,
            transfers_db: (environment.transfers.as_ref())
                .context("transfers is not running")?
                .db
                .clone(),
            levels: &options.transfer_levels,
            duration: options.transfers_duration,
            warmup: options.warmup,
            run_id: &context.run_id,
        };
        let results = transfers::run(setup, &context.sampler).await?;
        for level in &results.levels {
            state.peak(&level.resources);
            let clients = level.concurrency;
            check(
                &mut state.problems,
                &format!("transfers c={clients}"),
                &level.create_to_completed,
            );
            check(
                &mut state.problems,
                &format!("hold + capture c={clients}"),
                &level.baseline,
            );
        }
        Ok(results)
    })
    .await
}

async fn notifications_scenario(
    context: &RunContext<'_>,
    state: &mut SuiteState,
) -> anyhow::Result<report::NotificationsResults> {
    let options = context.options;
    step("notifications: event -> signed webhook");
    let needs = Needs {
        notifications: true,
        ..Needs::default()
    };
    in_environment(context, state, "notifications", needs, async |environment, state| {
        let service = environment
            .notifications
            .as_ref()
            .context("notifications is not running")?;
        let setup = notifications::Setup {
            notifications: service.process.address.clone(),
            bootstrap: environment.bootstrap.clone(),
            prefix: environment.prefix.clone(),
            rate: options.notifications_rate,
            duration: options.notifications_duration,
            burst: options.notifications_burst,
            drain_timeout: options.drain_timeout,
            run_id: &context.run_id,
        };
        let results = notifications::run(setup, &context.sampler).await?;
        for (name, phase) in [
            ("alone", &results.alone),
            ("beside a dead and a slow endpoint", &results.beside),
            ("burst", &results.burst),
        ] {
            state.peak(&phase.resources);
            check(&mut state.problems, &format!("notifications {name}"), &phase.latency);
            if phase.second_messages > 0 {
                (state.problems).push(format!(
                    "notifications {name}: {} events became two messages for one endpoint",
                    phase.second_messages
                ));
            }
        }
        check(&mut state.problems, "notifications raw consumer", &results.raw_consumer);
        Ok(results)
    })
    .await
}

/// Keeps the work folders of the last five runs (run ids start with the Unix time, so names sort
/// by age); service logs at `info` take a few MB per scenario.
fn prune_work_dirs(work_root: &Path, current: &str) {
    const KEEP: usize = 5;
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return;
    };
    let is_old_run =
        |name: &str| name != current && name.split('_').next().is_some_and(|secs| secs.parse::<u64>().is_ok());
    let mut runs: Vec<PathBuf> = (entries.flatten())
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && path.file_name().and_then(|name| name.to_str()).is_some_and(is_old_run))
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(KEEP - 1);
    for old in runs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(old);
    }
}

/// Writes `latest.json`, `latest.md` and `latest.svg` into `out_dir`.
pub fn write_report(report: &Report, out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let json = serde_json::to_string_pretty(report)? + "\n";
    std::fs::write(out_dir.join("latest.json"), json)?;
    std::fs::write(out_dir.join("latest.md"), report.markdown())?;
    std::fs::write(out_dir.join("latest.svg"), report.svg().context("draw the plot")?)?;
    step(format!("results: {}/latest.{{json,md,svg}}", out_dir.display()));
    Ok(())
}

/// The raw rdkafka baselines: producer throughput, consumer throughput, produce -> consume latency
/// at the end-to-end event rate with the services' fetch settings and with a short fetch wait.
async fn kafka_baselines(
    context: &RunContext<'_>,
    environment: &Environment,
    payload_size: usize,
    e2e_rate: f64,
    problems: &mut Vec<String>,
) -> anyhow::Result<KafkaBaselines> {
    let options = context.options;
    let (sampler, duration) = (&context.sampler, options.kafka_duration);
    let consume_records = if options.smoke { 500 } else { 5_000 };
    let window = PRODUCE_WINDOW;
    let topic = |name: &str| format!("{}baseline.{name}", environment.prefix);
    let (consume_topic, produce_topic) = (topic("consume"), topic("produce"));
    let from = sampler.now();
    // Each baseline on an empty broker of its own: Tansu 0.6.0 looks up a record's headers with a
    // scan of every header it stores (no index on `header`), so what an earlier baseline left
    // behind would slow the next one down.
    let (broker, bootstrap) = fresh_broker(context, environment, "consume", &consume_topic).await?;
    let produce = async |bootstrap: &str, topic: &str, duration, limit, label: &str| {
        kafka::produce_baseline(bootstrap, topic, payload_size, window, duration, limit, label).await
    };
    let fill = Duration::from_secs(60);
    let filled = produce(&bootstrap, &consume_topic, fill, Some(consume_records), "kafka fill").await?;
    let filled_count = filled.samples.count();
    let consumed = kafka::consume_baseline(&bootstrap, &consume_topic, filled_count, fill, "kafka consume").await?;
    drop(broker);
    // The first hop of the flow carries two events per pair.
    let roundtrip_rate = 2.0 * e2e_rate;
    let roundtrip = async |name: &str, fetch_wait: Option<u32>, label: &str| {
        let topic = topic(name);
        let (_broker, bootstrap) = fresh_broker(context, environment, name, &topic).await?;
        let (rate, size) = (roundtrip_rate, payload_size);
        kafka::roundtrip_baseline(&bootstrap, &topic, size, rate, duration, fetch_wait, label).await
    };
    let slow = roundtrip("roundtrip", None, "kafka produce->consume (default fetch wait)").await?;
    let fast_wait = Some(kafka::INSTRUMENT_FETCH_WAIT_MS);
    let fast = roundtrip(
        "roundtrip.fast",
        fast_wait,
        "kafka produce->consume (fetch.wait.max.ms 10)",
    )
    .await?;
    let (broker, bootstrap) = fresh_broker(context, environment, "produce", &produce_topic).await?;
    let produced = produce(&bootstrap, &produce_topic, duration, None, "kafka produce").await?;
    drop(broker);
    sampler.sample_now();
    let kafka_results = KafkaBaselines {
        payload_bytes: payload_size,
        window,
        produce_per_second: produced.samples.count() as f64 / produced.elapsed.as_secs_f64(),
        produce: Measured::from(&produced.samples),
        consume_per_second: consumed.records as f64 / consumed.elapsed.as_secs_f64().max(1e-3),
        consumed: consumed.records,
        consume_first_record_ms: consumed.first_record.map(|first| first.as_secs_f64() * 1000.0),
        roundtrip_rate,
        roundtrip: Measured::from(&slow.arrival),
        roundtrip_ack: Measured::from(&slow.ack),
        fast_fetch_wait_ms: kafka::INSTRUMENT_FETCH_WAIT_MS,
        roundtrip_fast: Measured::from(&fast.arrival),
        resources: sampler.usage(from, sampler.now()),
    };
    say(format!(
        "    produce {:.0}/s (p99 ack {:.1} ms), consume {:.0}/s, produce->consume at {:.0}/s: p50/p99 {:.1}/{:.1} ms \
         (fetch wait 10 ms: {:.1}/{:.1} ms)",
        kafka_results.produce_per_second,
        kafka_results.produce.latency.p99_ms,
        kafka_results.consume_per_second,
        roundtrip_rate,
        kafka_results.roundtrip.latency.p50_ms,
        kafka_results.roundtrip.latency.p99_ms,
        kafka_results.roundtrip_fast.latency.p50_ms,
        kafka_results.roundtrip_fast.latency.p99_ms,
    ));
    for (what, measured) in [
        ("kafka produce", &kafka_results.produce),
        ("kafka produce->consume", &kafka_results.roundtrip),
        ("kafka produce->consume (fast fetch)", &kafka_results.roundtrip_fast),
    ] {
        check(problems, what, measured);
    }
    if consumed.records < filled_count {
        let read = consumed.records;
        problems.push(format!("kafka consume: read {read} of {filled_count} records"));
    }
    Ok(kafka_results)
}

/// A broker for one baseline: a fresh private one (tracked as `broker`) with `topic` created, or
/// the shared one.
async fn fresh_broker(
    context: &RunContext<'_>,
    environment: &Environment,
    name: &str,
    topic: &str,
) -> anyhow::Result<(Option<Broker>, String)> {
    if context.options.shared_broker {
        return Ok((None, environment.bootstrap.clone()));
    }
    let broker = Broker::start(context, &environment.dir.join(name)).await?;
    broker.create_topics(&[topic.to_owned()]).await?;
    let bootstrap = broker.bootstrap().to_owned();
    Ok((Some(broker), bootstrap))
}

/// Any failed operation, or none that succeeded, is a problem of the run.
fn check(problems: &mut Vec<String>, what: &str, measured: &Measured) {
    let (errors, kinds) = (measured.errors, &measured.error_kinds);
    if errors > 0 {
        problems.push(format!("{what}: {errors} failed ({kinds:?})"));
    }
    if measured.ok == 0 {
        problems.push(format!("{what}: no successful operation"));
    }
}

/// The PostgreSQL connection check of a run (`headroom`): what the server has and the pools each
/// scenario's services get.
#[derive(Debug, Clone)]
pub struct Connections {
    /// `max_connections`, the reserved ones and what others held when the run started.
    pub capacity: headroom::Capacity,
    /// The decision and the pool per scenario.
    pub plan: headroom::Plan,
}

/// Reads what PostgreSQL has free and fits every selected scenario into it, shrinking the
/// services' pools where needed; fails with what to change when something cannot fit. Says what
/// it decided in the run log.
async fn check_headroom(options: &Options) -> anyhow::Result<(Vec<headroom::Footprint>, Connections)> {
    let (requested, fixed) = headroom::requested_pool(std::env::var("DATABASE_MAX_CONNECTIONS").ok().as_deref())?;
    let relays: usize = match std::env::var("OUTBOX_RELAYS") {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().context("OUTBOX_RELAYS: a number")?,
        _ => 1,
    };
    let wake = match std::env::var("OUTBOX_WAKE_ON_COMMIT") {
        Ok(value) if !value.trim().is_empty() => {
            value.trim().parse().context("OUTBOX_WAKE_ON_COMMIT: true or false")?
        }
        _ => true,
    };
    let footprints = headroom::footprints(options, relays, wake);
    let capacity = headroom::Capacity::read(&options.database_url).await?;
    let plan = headroom::plan(&footprints, requested, fixed, capacity.free());
    if let headroom::Verdict::Refuse(_) = plan.verdict {
        let levels = &options.levels;
        anyhow::bail!(headroom::refusal(
            &plan,
            &capacity,
            &footprints,
            levels,
            &options.database_url
        ));
    }
    say(format!(
        "    PostgreSQL connections: {}",
        headroom::summary(&plan, &capacity, &footprints)
    ));
    Ok((footprints, Connections { capacity, plan }))
}

fn run_config(
    options: &Options,
    state: &SuiteState,
    admin: &Admin,
    plan: &headroom::Plan,
    footprints: &[headroom::Footprint],
) -> RunConfig {
    let mut service_env: BTreeMap<String, String> = (state.service_env.iter())
        .map(|(name, value)| ((*name).to_owned(), redact(value)))
        .collect();
    let bootstrap = if options.shared_broker {
        options.bootstrap.clone()
    } else {
        format!("the scenario's private broker ({})", options.broker.name())
    };
    service_env.insert("KAFKA_BOOTSTRAP_SERVERS".to_owned(), bootstrap);
    service_env.insert("TOPIC_PREFIX".to_owned(), "bench.<run>.<scenario>.".to_owned());
    let database_url = admin.url_for("fintech_bench_<run>_<scenario>_<service>");
    service_env.insert("DATABASE_URL".to_owned(), redact(&database_url));
    // Settings the services read that shape the results: inherited when set, else the default.
    // The pool the benchmark passes (DATABASE_MAX_CONNECTIONS), and where it had to be smaller.
    let mut pool = if plan.fixed {
        plan.requested.to_string()
    } else {
        format!("{} (default)", plan.requested)
    };
    if let headroom::Verdict::Shrink(pools) = &plan.verdict {
        pool.push_str(&format!(
            "; shrunk to fit PostgreSQL's free connections in {}",
            headroom::shrunk_text(pools, footprints)
        ));
    }
    service_env.insert("DATABASE_MAX_CONNECTIONS".to_owned(), pool);
    for (name, default) in [
        ("PAYMENTS_GROUP_COMMIT", "true"),
        ("PAYMENTS_GROUP_COMMIT_WORKERS", "4"),
        ("PAYMENTS_GROUP_COMMIT_MAX_BATCH", "64"),
        ("OUTBOX_RELAYS", "1"),
        ("OUTBOX_WAKE_ON_COMMIT", "true"),
        ("OUTBOX_BATCH_SIZE", "256"),
        ("OUTBOX_POLL_INTERVAL_MS", "100"),
        ("OUTBOX_GATHER_MS", "0"),
        ("OUTBOX_ROUNDS_IN_FLIGHT", "1"),
        ("KAFKA_CONSUMER_LANES", "8"),
        ("KAFKA_CONSUMER_MAX_BATCH", "32"),
        ("KAFKA_FETCH_WAIT_MAX_MS", "50"),
        ("LOG_FORMAT", "text"),
    ] {
        let value = std::env::var(name).unwrap_or_else(|_| format!("{default} (default)"));
        service_env.insert(name.to_owned(), value);
    }
    if options.redis_url.is_none() {
        let unset = "unset (idempotency in PostgreSQL only)".to_owned();
        service_env.insert("REDIS_URL".to_owned(), unset);
    }
    let sizes = state.sizes.unwrap_or_else(PayloadSizes::typical);
    RunConfig {
        levels: options.levels.clone(),
        duration_seconds: options.duration.as_secs_f64(),
        warmup_seconds: options.warmup.as_secs_f64(),
        e2e_seconds: options.e2e_duration.as_secs_f64(),
        ledger_seconds: options.ledger_duration.as_secs_f64(),
        profile: options.profile.clone(),
        service_env,
        payload_bytes: BTreeMap::from([
            ("order".to_owned(), sizes.order),
            ("create_order_response".to_owned(), sizes.order_response),
            ("transaction".to_owned(), sizes.transaction),
            ("create_transaction_response".to_owned(), sizes.transaction_response),
        ]),
    }
}

/// The first line of a command's output, when it ran.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    output
        .status
        .success()
        .then(|| text.lines().next().unwrap_or_default().trim().to_owned())
}

async fn machine(admin: &Admin, options: &Options) -> Machine {
    let bootstrap = options.bootstrap.as_str();
    let tansu = fintech_devkit::tansu_binary();
    let version = command_line(&tansu.to_string_lossy(), &["--version"]).unwrap_or_else(|| "tansu".to_owned());
    let broker = if options.shared_broker {
        // The shared broker's command line names its storage engine.
        let command = (procfs::process::all_processes().into_iter().flatten().flatten())
            .filter_map(|process| process.cmdline().ok().map(|words| words.join(" ")))
            .find(|command| command.contains("tansu") && command.contains(" broker") && command.contains(bootstrap));
        match command {
            Some(command) => {
                let mut words = command
                    .split_whitespace()
                    .skip_while(|word| *word != "--storage-engine");
                let storage = words.nth(1).and_then(|url| url.split("://").next());
                format!(
                    "{version} ({} storage, shared at {bootstrap})",
                    storage.unwrap_or("unknown")
                )
            }
            None => format!("Kafka-protocol broker at {bootstrap}"),
        }
    } else if options.broker == BrokerKind::Mock {
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        format!(
            "librdkafka {librdkafka} mock cluster (fintech-mock-broker, one broker, in memory, a fresh one per scenario)"
        )
    } else {
        format!("{version} (sqlite storage, a fresh one per scenario)")
    };
    let cpu_model = procfs::CpuInfo::current()
        .ok()
        .and_then(|cpu| cpu.model_name(0).map(str::to_owned));
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model.unwrap_or_else(|| "unknown".to_owned()),
        memory_mb: procfs::Meminfo::current().map_or(0, |memory| memory.mem_total / (1024 * 1024)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_owned())
            .unwrap_or_default(),
        load_average_at_start: procfs::LoadAverage::current().map_or(0.0, |load| f64::from(load.one)),
        postgres: (admin.server_version().await).unwrap_or_else(|error| format!("unknown ({error})")),
        postgres_settings: admin.settings().await.unwrap_or_default().into_iter().collect(),
        broker,
        rustc: command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".to_owned()),
    }
}

/// Payments at least 70 % of pgbench at every client count of `levels`: the ratio per level;
/// missed when any measured level is below, met when every level was measured and none is.
fn ratio_target(target: &str, levels: &[usize], measured: &[PaymentsLevel]) -> Target {
    let missing: Vec<String> = (levels.iter())
        .filter(|clients| !measured.iter().any(|level| level.concurrency == **clients))
        .map(|clients| format!("{clients} clients failed"))
        .collect();
    let ratios = (measured.iter())
        .map(|level| format!("{} clients {:.0} %", level.concurrency, 100.0 * level.throughput_ratio))
        .chain(missing.iter().cloned());
    let met = if measured.iter().any(|level| level.throughput_ratio < 0.7) {
        Some(false)
    } else {
        (missing.is_empty() && !measured.is_empty()).then_some(true)
    };
    Target {
        target: target.to_owned(),
        measured: if measured.is_empty() {
            "not measured".to_owned()
        } else {
            ratios.collect::<Vec<_>>().join(", ")
        },
        met,
    }
}

/// The targets against what was measured.
fn targets(report: &Report, peak_rss: &BTreeMap<String, f64>) -> Vec<Target> {
    let levels = &report.config.levels;
    // The 70 % target twice: like for like, and with the flow competing for the cores (pgbench
    // gets them to itself in both).
    let mut targets = vec![
        ratio_target(
            "payments commits/s at least 70 % of pgbench at the same concurrency — command path alone \
             (like for like: neither runs anything else)",
            levels,
            &report.payments_alone,
        ),
        ratio_target(
            "payments commits/s at least 70 % of pgbench at the same concurrency — with the whole flow \
             (relay, tax, ledger, broker) running on the same cores; pgbench runs alone",
            levels,
            &report.payments,
        ),
    ];

    let peak = (report.payments.iter()).max_by(|a, b| a.pairs_per_second.total_cmp(&b.pairs_per_second));
    targets.push(Target {
        target: "outbox relay and tax consumer keep their backlog bounded while payments runs at its peak".to_owned(),
        measured: peak.map_or("-".to_owned(), |peak| {
            let backlog = &peak.backlog;
            let drained = (backlog.drain_seconds)
                .map_or("not within the timeout".to_owned(), |seconds| format!("{seconds:.0} s after the load"));
            format!(
                "at {} clients ({:.0} events/s in): relay {:.0}/s, tax {:.0}/s, backlog growth {:.0}/s, max outbox {} / tax lag {}, drained {drained}",
                peak.concurrency,
                backlog.input_events_per_second,
                backlog.relay_events_per_second,
                backlog.tax_events_per_second,
                backlog.growth_per_second,
                backlog.max_payments_outbox,
                backlog.max_tax_lag,
            )
        }),
        met: peak.map(|peak| peak.backlog.bounded),
    });

    let e2e = report.e2e.as_ref();
    targets.push(Target {
        target: "end-to-end p99 under 250 ms at half the peak rate".to_owned(),
        measured: e2e.map_or("-".to_owned(), |e2e| {
            let (published, calculated) = (&e2e.to_published, &e2e.to_calculated);
            format!(
                "{:.0} pairs/s: ack -> on tax.calculated p99 {:.0} ms ({} missing); ack -> calculated p99 {:.0} ms",
                e2e.rate, published.latency.p99_ms, published.errors, calculated.latency.p99_ms
            )
        }),
        met: e2e.map(|e2e| e2e.to_published.latency.p99_ms < 250.0 && e2e.to_published.errors == 0),
    });

    targets.push(Target {
        target: "hot-account ledger at least half the throughput of the spread one".to_owned(),
        measured: match (&report.ledger, &report.ledger_skipped) {
            (Some(ledger), _) => format!(
                "hot {:.0} entries/s vs spread {:.0} entries/s = {:.0} %",
                ledger.hot.entries_per_second,
                ledger.spread.entries_per_second,
                100.0 * ledger.hot_to_spread
            ),
            (None, Some(reason)) => format!("not run: {reason}"),
            (None, None) => "not run".to_owned(),
        },
        met: report.ledger.as_ref().map(|ledger| ledger.hot_to_spread >= 0.5),
    });

    let transfers = report.transfers.as_ref();
    targets.push(Target {
        target: "transfers: every transfer created completes (hold captured, none failed or lost)".to_owned(),
        measured: transfers.map_or_else(
            || {
                report
                    .transfers_skipped
                    .clone()
                    .map_or("-".to_owned(), |reason| format!("not run: {reason}"))
            },
            |transfers| {
                joined(
                    &transfers.levels,
                    |level| {
                        format!(
                            "{} clients: {:.1}/s, p99 {:.0} ms, {} failed",
                            level.concurrency,
                            level.transfers_per_second,
                            level.create_to_completed.latency.p99_ms,
                            level.create_to_completed.errors
                        )
                    },
                    "; ",
                )
            },
        ),
        met: transfers.map(|transfers| {
            !transfers.levels.is_empty()
                && (transfers.levels.iter())
                    .all(|level| level.create_to_completed.errors == 0 && level.create_to_completed.ok > 0)
        }),
    });
    let notifications = report.notifications.as_ref();
    targets.push(Target {
        target: "notifications: a dead and a slow endpoint delay a healthy endpoint's p99 by no more than 100 ms"
            .to_owned(),
        measured: notifications.map_or("-".to_owned(), |notifications| {
            format!(
                "p99 alone {:.0} ms, beside {:.0} ms ({:+.0} ms); {} of {} delivered",
                notifications.alone.latency.latency.p99_ms,
                notifications.beside.latency.latency.p99_ms,
                notifications.p99_delay_beside_ms,
                notifications.beside.delivered,
                notifications.beside.events
            )
        }),
        met: notifications.map(|notifications| {
            notifications.p99_delay_beside_ms <= 100.0 && notifications.beside.delivered == notifications.beside.events
        }),
    });

    // 150 MB = 143.05 MiB.
    let limit_mib = 150.0 * 1_000_000.0 / (1024.0 * 1024.0);
    targets.push(Target {
        target: "every service under 150 MB RSS at peak".to_owned(),
        measured: (peak_rss.iter())
            .map(|(name, mib)| format!("{name} {:.0} MB", mib * 1.048_576))
            .collect::<Vec<_>>()
            .join(", "),
        met: (!peak_rss.is_empty()).then(|| peak_rss.values().all(|mib| *mib < limit_mib)),
    });
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(concurrency: usize, ratio: f64) -> PaymentsLevel {
        PaymentsLevel {
            concurrency,
            throughput_ratio: ratio,
            ..PaymentsLevel::default()
        }
    }

    #[test]
    fn ratio_target_is_met_only_when_every_level_is() {
        let levels = [1, 8];
        let met = ratio_target("t", &levels, &[level(1, 0.7), level(8, 0.91)]);
        assert_eq!(met.met, Some(true));
        assert_eq!(met.measured, "1 clients 70 %, 8 clients 91 %");
        assert_eq!(
            ratio_target("t", &levels, &[level(1, 0.69), level(8, 0.91)]).met,
            Some(false)
        );
        let partial = ratio_target("t", &levels, &[level(8, 0.91)]);
        assert_eq!(partial.met, None);
        assert_eq!(partial.measured, "8 clients 91 %, 1 clients failed");
        let none = ratio_target("t", &levels, &[]);
        assert_eq!((none.met, none.measured.as_str()), (None, "not measured"));
    }
}
