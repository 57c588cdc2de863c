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

use anyhow::Context as _;
use fintech_proto::payments as pb;
use prost::Message as _;
use sqlx::PgPool;
use tonic::transport::Channel;

use crate::broker::PrivateBroker;
use crate::db::{self, Admin, redact};
use crate::kafka::{self, GroupLag};
use crate::load::connect;
use crate::monitor::Monitor;
use crate::payments::Pair;
use crate::pgbench::PayloadSizes;
use crate::procstat::{Sampler, Selector, Usage};
use crate::progress::say;
use crate::report::LogSummary;
use crate::services::{ServiceProcess, count_problems};
use crate::suite::Options;

/// Topics tax reads and writes besides payments' (the benchmark does not link the tax crate: it
/// talks to tax only as a client would).
const TAX_TOPICS: [&str; 3] = ["tax.calculated", "tax.failed", "tax.dlq"];
/// Tax's consumer group name (without the prefix).
const TAX_CONSUMER: &str = "tax";
/// Topics the ledger reads and writes besides `tax.calculated`.
const LEDGER_TOPICS: [&str; 3] = ["ledger.entry_posted", "tax.reversed", "ledger.dlq"];

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
}

/// Running services of one environment.
#[derive(Debug)]
pub struct Services {
    /// Payments (with the flow).
    pub payments: Option<ServiceProcess>,
    /// Tax (with the flow).
    pub tax: Option<ServiceProcess>,
    /// The ledger (with the flow when available, or alone).
    pub ledger: Option<ServiceProcess>,
    /// A channel to tax.
    pub tax_channel: Option<Channel>,
}

/// A fresh environment.
#[derive(Debug)]
pub struct Environment {
    /// Short name (`c8`, `e2e`, `kafka`, `ledger`).
    pub tag: String,
    /// Topic prefix.
    pub prefix: String,
    /// Broker address.
    pub bootstrap: String,
    /// The private broker (none with `--shared-broker`).
    pub broker: Option<PrivateBroker>,
    /// The services.
    pub services: Services,
    /// Payments' database.
    pub payments_db: Option<PgPool>,
    /// Tax's database.
    pub tax_db: Option<PgPool>,
    /// The ledger's database.
    pub ledger_db: Option<PgPool>,
    /// The pgbench database and its URL.
    pub pgbench_db: Option<(PgPool, String)>,
    /// Backlog readings (with the flow).
    pub monitor: Option<Monitor>,
    /// Payload sizes measured from the first pair (with the flow).
    pub sizes: Option<PayloadSizes>,
    /// Environment variables the services got.
    pub service_env: Vec<(&'static str, String)>,
    databases: Vec<String>,
}

impl Environment {
    /// Builds the environment `tag` with what `needs` asks for; what was built before a failure is
    /// torn down again (databases dropped, processes stopped).
    pub async fn start(context: &RunContext<'_>, tag: &str, needs: Needs) -> anyhow::Result<Self> {
        let mut environment = Self::empty(context, tag);
        match environment.build(context, needs).await {
            Ok(()) => Ok(environment),
            Err(error) => {
                environment.stop(context).await;
                Err(error)
            }
        }
    }

    fn empty(context: &RunContext<'_>, tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            prefix: format!("bench.{}.{tag}.", context.run_id),
            bootstrap: context.options.bootstrap.clone(),
            broker: None,
            services: Services {
                payments: None,
                tax: None,
                ledger: None,
                tax_channel: None,
            },
            payments_db: None,
            tax_db: None,
            ledger_db: None,
            pgbench_db: None,
            monitor: None,
            sizes: None,
            service_env: Vec::new(),
            databases: Vec::new(),
        }
    }

    async fn build(&mut self, context: &RunContext<'_>, needs: Needs) -> anyhow::Result<()> {
        let options = context.options;
        let tag = self.tag.clone();
        let dir = context.work_dir.join(&tag);
        std::fs::create_dir_all(&dir)?;
        let prefix = self.prefix.clone();
        let environment = self;
        if !options.shared_broker {
            let broker = PrivateBroker::start(&dir.join("broker")).await?;
            environment.bootstrap = broker.bootstrap.clone();
            if let Some(pid) = broker.pid() {
                context.sampler.track("broker", Selector::Pid(pid));
            }
            environment.broker = Some(broker);
        } else {
            context.sampler.track("broker", Selector::Comm("tansu".to_owned()));
        }
        let bootstrap = environment.bootstrap.clone();

        let with_ledger = options.ledger_bin.is_some() && (needs.flow || needs.ledger_only);
        let mut topics: Vec<String> = Vec::new();
        if needs.flow || needs.payments_only {
            topics.extend(
                fintech_payments::events::TOPICS
                    .iter()
                    .chain(TAX_TOPICS.iter())
                    .map(|topic| format!("{prefix}{topic}")),
            );
        }
        if with_ledger {
            topics.extend(
                LEDGER_TOPICS
                    .iter()
                    .chain(["tax.calculated"].iter())
                    .map(|topic| format!("{prefix}{topic}")),
            );
        }
        topics.extend(
            [
                "baseline.produce",
                "baseline.consume",
                "baseline.roundtrip",
                "baseline.roundtrip.fast",
            ]
            .iter()
            .map(|topic| format!("{prefix}{topic}")),
        );
        topics.sort();
        topics.dedup();
        kafka::create_topics(&bootstrap, &topics).await?;

        let database = |service: &str| format!("{}{}_{tag}_{service}", db::DATABASE_PREFIX, context.run_id);
        if needs.pgbench {
            let name = database("pgbench");
            environment.create_database(context, &name).await?;
            let url = context.admin.url_for(&name);
            let pool = pool(&url).await?;
            fintech_platform::db::migrate(&pool, &fintech_payments::MIGRATOR)
                .await
                .context("payments schema on the pgbench database")?;
            environment.pgbench_db = Some((pool, url));
        }

        let mut service_env: Vec<(&'static str, String)> = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("TOPIC_PREFIX", prefix.clone()),
            ("RUST_LOG", options.service_log.clone()),
            ("NO_COLOR", "1".to_owned()),
        ];
        if let Some(redis) = &options.redis_url {
            service_env.push(("REDIS_URL", redis.clone()));
        }
        environment.service_env = service_env.clone();
        let env_for = |url: String| {
            let mut env = service_env.clone();
            env.push(("DATABASE_URL", url));
            env
        };
        let timeout = Duration::from_secs(90);
        if needs.payments_only {
            let payments_name = database("payments");
            environment.create_database(context, &payments_name).await?;
            let mut env = env_for(context.admin.url_for(&payments_name));
            env.push(("OUTBOX_RELAYS", "0".to_owned()));
            let mut payments = ServiceProcess::spawn(
                "payments",
                &options.bin_dir.join("payments"),
                &env,
                dir.join("payments.log"),
            )?;
            context.sampler.track("payments", Selector::Pid(payments.pid()));
            payments.wait_serving(fintech_payments::SERVICE_NAME, timeout).await?;
            environment.payments_db = Some(pool(&context.admin.url_for(&payments_name)).await?);
            environment.services.payments = Some(payments);
            environment.sizes = Some(environment.probe(&context.run_id).await?);
        }
        if needs.flow {
            let payments_name = database("payments");
            let tax_name = database("tax");
            environment.create_database(context, &payments_name).await?;
            environment.create_database(context, &tax_name).await?;
            let mut payments = ServiceProcess::spawn(
                "payments",
                &options.bin_dir.join("payments"),
                &env_for(context.admin.url_for(&payments_name)),
                dir.join("payments.log"),
            )?;
            let mut tax = ServiceProcess::spawn(
                "tax",
                &options.bin_dir.join("tax"),
                &env_for(context.admin.url_for(&tax_name)),
                dir.join("tax.log"),
            )?;
            context.sampler.track("payments", Selector::Pid(payments.pid()));
            context.sampler.track("tax", Selector::Pid(tax.pid()));
            payments.wait_serving(fintech_payments::SERVICE_NAME, timeout).await?;
            let tax_channel = tax.wait_serving("fintech.tax.v1.TaxService", timeout).await?;
            environment.payments_db = Some(pool(&context.admin.url_for(&payments_name)).await?);
            environment.tax_db = Some(pool(&context.admin.url_for(&tax_name)).await?);
            environment.services.payments = Some(payments);
            environment.services.tax = Some(tax);
            environment.services.tax_channel = Some(tax_channel);
        }
        if with_ledger && let Some(binary) = &options.ledger_bin {
            let ledger_name = database("ledger");
            environment.create_database(context, &ledger_name).await?;
            let mut env = env_for(context.admin.url_for(&ledger_name));
            if !needs.flow {
                // Its own scenarios measure PostEntry alone.
                env.push(("TAX_CONSUMER_ENABLED", "false".to_owned()));
            }
            let mut ledger = ServiceProcess::spawn("ledger", binary, &env, dir.join("ledger.log"))?;
            context.sampler.track("ledger", Selector::Pid(ledger.pid()));
            ledger.wait_serving("fintech.ledger.v1.LedgerService", timeout).await?;
            environment.ledger_db = Some(pool(&context.admin.url_for(&ledger_name)).await?);
            environment.services.ledger = Some(ledger);
        }

        if needs.flow
            && let (Some(payments_db), Some(tax_db)) = (&environment.payments_db, &environment.tax_db)
        {
            environment.monitor = Some(Monitor {
                payments: payments_db.clone(),
                tax: tax_db.clone(),
                tax_lag: GroupLag::new(
                    &bootstrap,
                    &format!("{prefix}{TAX_CONSUMER}"),
                    fintech_payments::events::TOPICS
                        .iter()
                        .take(3)
                        .map(|topic| format!("{prefix}{topic}"))
                        .collect(),
                )?,
                ledger: environment.ledger_db.clone(),
            });
            environment.sizes = Some(environment.probe(&context.run_id).await?);
        }
        let names: Vec<String> = [
            environment.services.payments.as_ref(),
            environment.services.tax.as_ref(),
            environment.services.ledger.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|service| format!("{} {}", service.name, service.address))
        .collect();
        say(format!(
            "    environment {tag}: broker {bootstrap}{}{}",
            if names.is_empty() { "" } else { " · " },
            names.join(" · ")
        ));
        Ok(())
    }

    async fn create_database(&mut self, context: &RunContext<'_>, name: &str) -> anyhow::Result<()> {
        context.admin.create(name).await?;
        self.databases.push(name.to_owned());
        Ok(())
    }

    /// Payments' address.
    pub fn payments_address(&self) -> anyhow::Result<String> {
        self.services
            .payments
            .as_ref()
            .map(|payments| payments.address.clone())
            .context("payments is not running in this environment")
    }

    /// One pair first: proves the path works and gives the real payload sizes.
    async fn probe(&self, run_id: &str) -> anyhow::Result<PayloadSizes> {
        let channel = connect(&self.payments_address()?).await?;
        let mut pair = Pair::new(channel, format!("{run_id}-{}-probe", self.tag));
        let outcome = pair
            .send(0, 0)
            .await
            .map_err(|error| anyhow::anyhow!("first CreateOrder/CreateTransaction failed: {}", error.status))?;
        Ok(PayloadSizes {
            order: outcome.order.encoded_len(),
            order_response: pb::CreateOrderResponse {
                order: Some(outcome.order.clone()),
            }
            .encoded_len(),
            transaction: outcome.transaction.encoded_len(),
            transaction_response: pb::CreateTransactionResponse {
                transaction: Some(outcome.transaction.clone()),
            }
            .encoded_len(),
        })
    }

    /// Fails if a service or the private broker died.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        for service in [
            self.services.payments.as_mut(),
            self.services.tax.as_mut(),
            self.services.ledger.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            service.ensure_running()?;
        }
        if let Some(broker) = &self.broker
            && let Some(panic) = broker.panic()
        {
            anyhow::bail!(
                "the broker crashed: {panic} (log: {})",
                broker.dir.join("broker.log").display()
            );
        }
        Ok(())
    }

    /// Stops everything (services gracefully), drops the databases, removes the broker's data;
    /// returns each service's log summary and lifetime peak RSS.
    pub async fn stop(mut self, context: &RunContext<'_>) -> EnvironmentReport {
        context.sampler.sample_now();
        let lifetime = context.sampler.usage(0.0, context.sampler.now());
        let mut report = EnvironmentReport::default();
        for name in ["payments", "tax", "ledger"] {
            let running = match name {
                "payments" => self.services.payments.is_some(),
                "tax" => self.services.tax.is_some(),
                _ => self.services.ledger.is_some(),
            };
            if let (true, Some(usage)) = (running, lifetime.get(name)) {
                report.peak_rss_mb.insert(name.to_owned(), usage.lifetime_peak_rss_mb);
            }
        }
        if let Some(broker) = &self.broker {
            report.broker_data_mb = broker.data_bytes() as f64 / 1e6;
            report.broker_panic = broker.panic();
        }
        let timeout = Duration::from_secs(20);
        for service in [
            self.services.payments.as_mut(),
            self.services.tax.as_mut(),
            self.services.ledger.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            service.stop(timeout).await;
            report.logs.insert(service.name.clone(), summarize_log(&service.log));
        }
        for pool in [
            self.payments_db.take(),
            self.tax_db.take(),
            self.ledger_db.take(),
            self.pgbench_db.take().map(|(pool, _)| pool),
        ]
        .into_iter()
        .flatten()
        {
            pool.close().await;
        }
        drop(self.monitor.take());
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
    /// Size of the private broker's data at the end, MB.
    pub broker_data_mb: f64,
    /// The broker's panic, if it had one.
    pub broker_panic: Option<String>,
}

fn summarize_log(path: &Path) -> LogSummary {
    let (warnings, errors) = count_problems(path);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last_problems: Vec<String> = text
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .rev()
        .take(3)
        .map(|line| line.chars().take(300).collect())
        .collect();
    LogSummary {
        warnings,
        errors,
        assignments: text.matches("partitions assigned").count(),
        session_timeouts: text.matches("SESSTMOUT").count(),
        last_problems,
    }
}

/// Adds `other`'s counts to `into` (the same service in several environments).
pub fn merge_log(into: &mut LogSummary, other: LogSummary) {
    into.warnings += other.warnings;
    into.errors += other.errors;
    into.assignments += other.assignments;
    into.session_timeouts += other.session_timeouts;
    if !other.last_problems.is_empty() {
        into.last_problems = other.last_problems;
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
