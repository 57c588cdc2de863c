//! One scenario's environment, built fresh and torn down after it: databases
//! `fintech_bench_<run>_<tag>_<service>`, a private broker (or the shared one), topics under
//! `bench.<run>.<tag>.`, and the services as processes of their own.
//!
//! Why fresh per scenario: on the local broker a scenario that overloads the flow leaves a backlog
//! (and a larger SQLite database, which makes Tansu's fetches slower) that would otherwise run
//! into the next scenario and be measured there. Starting from empty tables and topics gives every
//! concurrency level the same conditions, and pgbench gets a fresh database of the same schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::load::Channel;
use anyhow::Context as _;
use fintech_proto::payments as pb;
use prost::Message as _;
use sqlx::PgPool;

use crate::db::{self, Admin, redact};
use crate::kafka::{self, GroupLag};
use crate::load::connect;
use crate::monitor::Monitor;
use crate::payments::Pair;
use crate::pgbench::PayloadSizes;
use crate::procstat::{Sampler, Selector, Usage};
use crate::progress::say;
use crate::report::LogSummary;
use crate::services::ServiceProcess;
use crate::suite::{BrokerKind, Options};
use fintech_devkit::broker::PrivateBroker;
use fintech_devkit::mock::MockBroker;
use fintech_devkit::temporal::TemporalServer;

/// Topics tax reads and writes besides payments' (the benchmark does not link the tax crate: it
/// talks to tax only as a client would).
const TAX_TOPICS: [&str; 3] = ["tax.calculated", "tax.failed", "tax.dlq"];
/// Tax's consumer group name (without the prefix).
const TAX_CONSUMER: &str = "tax";
/// Topics the ledger reads and writes.
const LEDGER_TOPICS: [&str; 4] = ["ledger.entry_posted", "tax.reversed", "ledger.dlq", "tax.calculated"];
/// Topics of the raw Kafka baselines (created everywhere, so `--shared-broker` has them too).
const BASELINE_TOPICS: [&str; 4] = [
    "baseline.produce",
    "baseline.consume",
    "baseline.roundtrip",
    "baseline.roundtrip.fast",
];
/// Longest wait for a service to report SERVING.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// What a scenario needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// Payments and tax (and the ledger, when it is available), with their databases.
    pub flow: bool,
    /// The ledger alone (its own scenarios).
    pub ledger_only: bool,
    /// A database with the payments schema for pgbench.
    pub pgbench: bool,
    /// Payments alone, without outbox relays (`OUTBOX_RELAYS=0`): only its command path.
    pub payments_only: bool,
    /// Transfers with what it needs: a Temporal dev server, accounts and the ledger.
    pub transfers: bool,
    /// Notifications alone (the benchmark plays the producers and the receivers).
    pub notifications: bool,
}

/// Run-wide things every environment uses.
#[derive(Debug)]
pub struct RunContext<'a> {
    /// The suite's options.
    pub options: &'a Options,
    /// Creates and drops databases.
    pub admin: Admin,
    /// The run id.
    pub run_id: String,
    /// The run's work folder (absolute).
    pub work_dir: PathBuf,
    /// CPU and RSS sampling.
    pub sampler: Sampler,
    /// PostgreSQL's connections and the services' pool per scenario (`headroom`).
    pub connections: crate::suite::Connections,
}

/// A running service of an environment.
#[derive(Debug)]
pub struct Service {
    /// Its process.
    pub process: ServiceProcess,
    /// The channel its health check answered on.
    pub channel: Channel,
    /// A small pool on its database, for the benchmark's own reads.
    pub db: PgPool,
}

/// A service process started but not yet known to serve.
#[derive(Debug)]
struct Starting {
    process: ServiceProcess,
    database_url: String,
}

impl Starting {
    /// Waits until its health service reports `service` as SERVING.
    async fn serving(mut self, service: &str) -> anyhow::Result<Service> {
        let channel = crate::load::authenticated(self.process.wait_serving(service, START_TIMEOUT).await?)?;
        Ok(Service {
            db: pool(&self.database_url).await?,
            channel,
            process: self.process,
        })
    }
}

/// A fresh environment.
#[derive(Debug, Default)]
pub struct Environment {
    /// Short name (`c8`, `e2e`, `kafka`, `ledger`).
    pub tag: String,
    /// Topic prefix.
    pub prefix: String,
    /// Broker address.
    pub bootstrap: String,
    /// Work files of this environment.
    pub dir: PathBuf,
    /// The private broker (none with `--shared-broker`).
    pub broker: Option<Broker>,
    /// Payments (with the flow, or alone).
    pub payments: Option<Service>,
    /// Tax (with the flow).
    pub tax: Option<Service>,
    /// The ledger (with the flow when available, alone, or under transfers).
    pub ledger: Option<Service>,
    /// Accounts (with transfers).
    pub accounts: Option<Service>,
    /// Transfers.
    pub transfers: Option<Service>,
    /// Notifications.
    pub notifications: Option<Service>,
    /// The private Temporal dev server (with transfers).
    pub temporal: Option<TemporalServer>,
    /// The pgbench database and its URL.
    pub pgbench_db: Option<(PgPool, String)>,
    /// Backlog readings (with the flow).
    pub monitor: Option<Monitor>,
    /// Payload sizes measured from the first pair (whenever payments runs).
    pub sizes: Option<PayloadSizes>,
    /// Environment variables the services got (besides their `DATABASE_URL`).
    pub service_env: Vec<(&'static str, String)>,
    databases: Vec<String>,
}

impl Environment {
    /// Builds the environment `tag` with what `needs` asks for; what was built before a failure is
    /// torn down again (databases dropped, processes stopped).
    pub async fn start(context: &RunContext<'_>, tag: &str, needs: Needs) -> anyhow::Result<Self> {
        let mut environment = Self {
            tag: tag.to_owned(),
            prefix: format!("bench.{}.{tag}.", context.run_id),
            bootstrap: context.options.bootstrap.clone(),
            dir: context.work_dir.join(tag),
            ..Self::default()
        };
        match environment.build(context, needs).await {
            Ok(()) => Ok(environment),
            Err(error) => {
                environment.stop(context).await;
                Err(error)
            }
        }
    }

    async fn build(&mut self, context: &RunContext<'_>, needs: Needs) -> anyhow::Result<()> {
        let options = context.options;
        std::fs::create_dir_all(&self.dir)?;
        if options.shared_broker {
            context.sampler.track("broker", Selector::Comm("tansu".to_owned()));
        } else {
            let broker = Broker::start(context, &self.dir.join("broker")).await?;
            self.bootstrap = broker.bootstrap().to_owned();
            self.broker = Some(broker);
        }

        let with_ledger = options.ledger_bin.is_some() && (needs.flow || needs.ledger_only);
        let mut topics = BASELINE_TOPICS.to_vec();
        if needs.flow || needs.payments_only {
            topics.extend(fintech_payments::events::TOPICS.iter().chain(&TAX_TOPICS));
        }
        // The ledger also follows the accounts topics (its account cache, interest postings): without
        // them its consumers log UnknownTopicOrPartition every few seconds.
        if needs.transfers || needs.notifications || with_ledger {
            topics.extend(fintech_proto::topics::ALL.iter().map(|topic| topic.name));
        }
        if with_ledger {
            topics.extend(LEDGER_TOPICS);
        }
        topics.sort_unstable();
        topics.dedup();
        let topics: Vec<String> = topics.iter().map(|topic| format!("{}{topic}", self.prefix)).collect();
        match &self.broker {
            Some(broker) => broker.create_topics(&topics).await?,
            None => kafka::create_topics(&self.bootstrap, &topics).await?,
        }

        if needs.pgbench {
            let name = self.database_name(context, "pgbench");
            self.create_database(context, &name).await?;
            let url = context.admin.url_for(&name);
            let pool = pool(&url).await?;
            fintech_platform::db::migrate(&pool, &fintech_payments::MIGRATOR)
                .await
                .context("payments schema on the pgbench database")?;
            self.pgbench_db = Some((pool, url));
        }

        self.service_env = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", self.bootstrap.clone()),
            ("TOPIC_PREFIX", self.prefix.clone()),
            ("RUST_LOG", options.service_log.clone()),
            ("NO_COLOR", "1".to_owned()),
        ];
        self.service_env.extend(crate::load::auth_env()?);
        if let Some(redis) = &options.redis_url {
            self.service_env.push(("REDIS_URL", redis.clone()));
        }
        let payments_bin = options.bin_dir.join("payments");
        if needs.payments_only {
            let payments = self
                .launch(context, "payments", &payments_bin, &[("OUTBOX_RELAYS", "0")])
                .await?;
            self.payments = Some(payments.serving(fintech_payments::SERVICE_NAME).await?);
        }
        if needs.flow {
            // Both start at once; then each is waited for.
            let payments = self.launch(context, "payments", &payments_bin, &[]).await?;
            let tax = self.launch(context, "tax", &options.bin_dir.join("tax"), &[]).await?;
            self.payments = Some(payments.serving(fintech_payments::SERVICE_NAME).await?);
            self.tax = Some(tax.serving("fintech.tax.v1.TaxService").await?);
        }
        if with_ledger && let Some(binary) = &options.ledger_bin {
            // Its own scenarios measure PostEntry alone.
            let extra: &[_] = if needs.flow {
                &[]
            } else {
                &[("TAX_CONSUMER_ENABLED", "false"), ("CASH_CONSUMER_ENABLED", "false")]
            };
            let ledger = self.launch(context, "ledger", binary, extra).await?;
            self.ledger = Some(ledger.serving("fintech.ledger.v1.LedgerService").await?);
        }

        if needs.transfers {
            self.start_transfers(context).await?;
        }
        if needs.notifications {
            let notifications = self
                .launch(
                    context,
                    "notifications",
                    &options.bin_dir.join("notifications"),
                    // The benchmark's receivers listen on loopback over plain HTTP.
                    &[
                        ("NOTIFICATIONS_ALLOW_HTTP", "true"),
                        ("NOTIFICATIONS_ALLOWED_NETWORKS", "127.0.0.0/8"),
                    ],
                )
                .await?;
            self.notifications = Some(
                notifications
                    .serving("fintech.notifications.v1.NotificationsService")
                    .await?,
            );
        }

        if let (Some(payments), Some(tax)) = (&self.payments, &self.tax) {
            let tax_inputs = fintech_payments::events::TOPICS.iter().take(3);
            self.monitor = Some(Monitor {
                payments: payments.db.clone(),
                tax: tax.db.clone(),
                tax_lag: GroupLag::new(
                    &self.bootstrap,
                    &format!("{}{TAX_CONSUMER}", self.prefix),
                    tax_inputs.map(|topic| format!("{}{topic}", self.prefix)).collect(),
                )?,
                ledger: self.ledger.as_ref().map(|ledger| ledger.db.clone()),
            });
        }
        if self.payments.is_some() {
            self.sizes = Some(self.probe(&context.run_id).await?);
        }
        let names: Vec<String> = self
            .services()
            .map(|service| format!(" · {} {}", service.process.name, service.process.address))
            .collect();
        say(format!(
            "    environment {}: broker {}{}",
            self.tag,
            self.bootstrap,
            names.concat()
        ));
        Ok(())
    }

    /// A private Temporal dev server, then accounts, the ledger (its accounts consumer only) and
    /// transfers with its own service token for the ledger.
    async fn start_transfers(&mut self, context: &RunContext<'_>) -> anyhow::Result<()> {
        let options = context.options;
        let ledger_bin = (options.ledger_bin.clone()).context("transfers needs the ledger binary (--ledger-bin)")?;
        let temporal = TemporalServer::start().await.context("start a Temporal dev server")?;
        if let Some(pid) = temporal.pid() {
            context.sampler.track("temporal", Selector::Pid(pid));
        }
        let (temporal_address, namespace) = (temporal.address().to_owned(), temporal.namespace().to_owned());
        self.temporal = Some(temporal);
        let accounts = self
            .launch(context, "accounts", &options.bin_dir.join("accounts"), &[])
            .await?;
        let ledger = self
            .launch(
                context,
                "ledger",
                &ledger_bin,
                &[("TAX_CONSUMER_ENABLED", "false"), ("CASH_CONSUMER_ENABLED", "false")],
            )
            .await?;
        let ledger_address = ledger.process.address.clone();
        let token = crate::load::service_token_file(
            &self.dir,
            "svc:transfers",
            &["ledger.post", "ledger.read", "ledger.transfers"],
        )?;
        let token = token.display().to_string();
        let transfers = self
            .launch(
                context,
                "transfers",
                &options.bin_dir.join("transfers"),
                &[
                    ("TEMPORAL_ADDRESS", &temporal_address),
                    ("TEMPORAL_NAMESPACE", &namespace),
                    ("LEDGER_ADDRESS", &ledger_address),
                    ("TRANSFERS_SERVICE_TOKEN_FILE", &token),
                    // Every benchmark transfer runs straight through (no approval wait).
                    ("TRANSFERS_APPROVAL_THRESHOLD", "1000000000000"),
                ],
            )
            .await?;
        self.accounts = Some(accounts.serving("fintech.accounts.v1.AccountsService").await?);
        self.ledger = Some(ledger.serving("fintech.ledger.v1.LedgerService").await?);
        self.transfers = Some(transfers.serving("fintech.transfers.v1.TransfersService").await?);
        Ok(())
    }

    fn services(&self) -> impl Iterator<Item = &Service> {
        [
            &self.payments,
            &self.tax,
            &self.ledger,
            &self.accounts,
            &self.transfers,
            &self.notifications,
        ]
        .into_iter()
        .flatten()
    }

    fn database_name(&self, context: &RunContext<'_>, service: &str) -> String {
        format!("{}{}_{}_{service}", db::DATABASE_PREFIX, context.run_id, self.tag)
    }

    async fn create_database(&mut self, context: &RunContext<'_>, name: &str) -> anyhow::Result<()> {
        context.admin.create(name).await?;
        self.databases.push(name.to_owned());
        Ok(())
    }

    /// Creates `name`'s database and starts `binary` on it with `extra` settings.
    async fn launch(
        &mut self,
        context: &RunContext<'_>,
        name: &str,
        binary: &Path,
        extra: &[(&'static str, &str)],
    ) -> anyhow::Result<Starting> {
        let database = self.database_name(context, name);
        self.create_database(context, &database).await?;
        let database_url = context.admin.url_for(&database);
        let mut env = self.service_env.clone();
        env.push(("DATABASE_URL", database_url.clone()));
        // The pool the headroom check chose for this scenario (the default, or smaller to fit).
        let pool = context.connections.plan.pool_for(&self.tag);
        env.push(("DATABASE_MAX_CONNECTIONS", pool.to_string()));
        env.extend(extra.iter().map(|(variable, value)| (*variable, (*value).to_owned())));
        let process = ServiceProcess::spawn(name, binary, &env, &self.dir.join(format!("{name}.log")))?;
        context.sampler.track(name, Selector::Pid(process.pid()));
        Ok(Starting { process, database_url })
    }

    /// Payments' address.
    pub fn payments_address(&self) -> anyhow::Result<String> {
        self.payments
            .as_ref()
            .map(|payments| payments.process.address.clone())
            .context("payments is not running in this environment")
    }

    /// One pair first: proves the path works and gives the real payload sizes.
    async fn probe(&self, run_id: &str) -> anyhow::Result<PayloadSizes> {
        let channel = connect(&self.payments_address()?).await?;
        let outcome = Pair::new(channel, format!("{run_id}-{}-probe", self.tag))
            .send(0, 0)
            .await
            .map_err(|error| anyhow::anyhow!("first CreateOrder/CreateTransaction failed: {}", error.status))?;
        Ok(PayloadSizes {
            order: outcome.order.encoded_len(),
            transaction: outcome.transaction.encoded_len(),
            order_response: pb::CreateOrderResponse {
                order: Some(outcome.order),
            }
            .encoded_len(),
            transaction_response: pb::CreateTransactionResponse {
                transaction: Some(outcome.transaction),
            }
            .encoded_len(),
        })
    }

    /// Fails if a service or the private broker died.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        for service in [
            &mut self.payments,
            &mut self.tax,
            &mut self.ledger,
            &mut self.accounts,
            &mut self.transfers,
            &mut self.notifications,
        ]
        .into_iter()
        .flatten()
        {
            service.process.ensure_running()?;
        }
        if let Some(broker) = &self.broker
            && let Some(panic) = broker.panic()
        {
            anyhow::bail!("the broker crashed: {panic} (log: {})", broker.log_file().display());
        }
        Ok(())
    }

    /// Stops everything (services gracefully), drops the databases, removes the broker's data;
    /// returns each service's log summary and lifetime peak RSS.
    pub async fn stop(mut self, context: &RunContext<'_>) -> EnvironmentReport {
        context.sampler.sample_now();
        let lifetime = context.sampler.usage(0.0, context.sampler.now());
        let mut report = EnvironmentReport::default();
        if let Some(broker) = &self.broker {
            report.broker_data_mb = broker.data_bytes().map(|bytes| bytes as f64 / 1e6);
            report.broker_panic = broker.panic();
        }
        let services = [
            self.transfers.take(),
            self.notifications.take(),
            self.payments.take(),
            self.tax.take(),
            self.ledger.take(),
            self.accounts.take(),
        ];
        for mut service in services.into_iter().flatten() {
            let name = service.process.name.clone();
            if let Some(usage) = lifetime.get(&name) {
                report.peak_rss_mb.insert(name.clone(), usage.lifetime_peak_rss_mb);
            }
            report.logs.insert(name, service.process.stop(Duration::from_secs(20)));
            service.db.close().await;
        }
        if let Some((pool, _)) = self.pgbench_db.take() {
            pool.close().await;
        }
        drop(self.monitor.take());
        drop(self.temporal.take());
        drop(self.broker.take());
        if context.options.keep_databases {
            say(format!("    keeping databases {}", self.databases.join(", ")));
        } else {
            for name in &self.databases {
                if let Err(error) = context.admin.drop(name).await {
                    say(format!("    could not drop {name}: {error:#}"));
                }
            }
        }
        report
    }
}

/// What an environment leaves behind for the report.
#[derive(Debug, Default)]
pub struct EnvironmentReport {
    /// Log summary per service.
    pub logs: BTreeMap<String, LogSummary>,
    /// Lifetime peak RSS per service, MiB.
    pub peak_rss_mb: BTreeMap<String, f64>,
    /// Size of the private broker's data at the end, MB (`None`: shared broker, or the in-memory
    /// mock, which has no data folder).
    pub broker_data_mb: Option<f64>,
    /// The broker's panic, if it had one.
    pub broker_panic: Option<String>,
}

/// A scenario's private broker: a Tansu with SQLite storage in a folder of its own, or
/// librdkafka's mock cluster in a process of its own (in memory). Either is sampled as `broker`.
#[derive(Debug)]
pub enum Broker {
    /// `tansu broker` (fintech-devkit's `PrivateBroker`, as in `deploy/local`).
    Tansu(PrivateBroker),
    /// `fintech-mock-broker` (fintech-devkit's `MockBroker`), with its log file.
    Mock(MockBroker, PathBuf),
}

impl Broker {
    /// Starts the run's kind of broker (`--broker`) in `dir` and tracks its process as `broker`.
    pub async fn start(context: &RunContext<'_>, dir: &Path) -> anyhow::Result<Self> {
        let broker = match context.options.broker {
            BrokerKind::Tansu => Self::Tansu(PrivateBroker::start_in(dir).await?),
            BrokerKind::Mock => {
                std::fs::create_dir_all(dir)?;
                let binary = context.options.bin_dir.join("fintech-mock-broker");
                let log = dir.join("mock-broker.log");
                let mock = MockBroker::start(&binary, 1, &log)
                    .with_context(|| format!("start the mock broker {}", binary.display()))?;
                Self::Mock(mock, log)
            }
        };
        if let Some(pid) = broker.pid() {
            context.sampler.track("broker", Selector::Pid(pid));
        }
        Ok(broker)
    }

    /// `bootstrap.servers` of the broker.
    pub fn bootstrap(&self) -> &str {
        match self {
            Self::Tansu(tansu) => tansu.bootstrap(),
            Self::Mock(mock, _) => mock.bootstrap(),
        }
    }

    /// The broker's process.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Tansu(tansu) => tansu.pid(),
            Self::Mock(mock, _) => Some(mock.pid()),
        }
    }

    /// Creates `topics` with [`kafka::PARTITIONS`] partitions: through the Admin API on Tansu,
    /// through the process that owns the cluster on the mock (it has no CreateTopics).
    pub async fn create_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        match self {
            Self::Tansu(tansu) => kafka::create_topics(tansu.bootstrap(), topics).await,
            Self::Mock(mock, _) => {
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                // A line per topic over a pipe to the mock's process: milliseconds in all.
                tokio::task::block_in_place(|| mock.create_topics(&topics, kafka::PARTITIONS))
            }
        }
    }

    /// Why the broker is gone, if it is: Tansu's first panic in its log; the mock's exit.
    pub fn panic(&self) -> Option<String> {
        match self {
            Self::Tansu(tansu) => tansu.panic(),
            Self::Mock(mock, _) => {
                let process = procfs::process::Process::new(i32::try_from(mock.pid()).ok()?);
                let gone = match process.and_then(|process| process.stat()) {
                    Ok(stat) => stat.state == 'Z' || stat.state == 'X',
                    Err(_) => true,
                };
                gone.then(|| "the mock broker's process exited".to_owned())
            }
        }
    }

    /// The broker's log.
    pub fn log_file(&self) -> PathBuf {
        match self {
            Self::Tansu(tansu) => tansu.log_file(),
            Self::Mock(_, log) => log.clone(),
        }
    }

    /// Bytes of data it holds on disk; `None` for the mock (in memory: no data folder).
    pub fn data_bytes(&self) -> Option<u64> {
        match self {
            Self::Tansu(tansu) => Some(tansu.data_bytes()),
            Self::Mock(..) => None,
        }
    }
}

/// A small pool for the benchmark's own reads.
pub async fn pool(url: &str) -> anyhow::Result<PgPool> {
    fintech_platform::db::connect(url, 2, Duration::from_secs(10))
        .await
        .with_context(|| format!("connect to {}", redact(url)))
}

/// The groups of `usage` that did something in the window (a service of an earlier environment
/// shows up with zeros otherwise).
pub fn active(usage: BTreeMap<String, Usage>) -> BTreeMap<String, Usage> {
    usage
        .into_iter()
        .filter(|(_, usage)| usage.cpu_seconds > 0.0 || usage.peak_rss_mb > 0.0)
        .collect()
}
