//! `fintech-bench`: parses flags and runs the suite (see `bench/README.md`); `src/usage.txt`
//! (what `--help` prints) lists the commands, their flags and the environment they read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fintech_bench::compare;
use fintech_bench::progress::say;
use fintech_bench::suite::{self, BrokerKind, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            say(format!("error: cannot start the runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(error) => {
            say(format!("error: {error:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    match args.first().map(String::as_str) {
        Some("suite") => {
            let (options, brokers) = suite_options(&args[1..])?;
            let strict = options.strict;
            let (_, problems) = suite::run_brokers(options, &brokers).await?;
            if problems.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            say("problems:");
            for problem in &problems {
                say(format!("  - {problem}"));
            }
            Ok(if strict { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Some("render") => {
            let json = args.get(1).context("render needs the JSON file")?;
            let out = match args.get(2).map(String::as_str) {
                Some("--out") => PathBuf::from(args.get(3).context("--out needs a folder")?),
                _ => PathBuf::from(json)
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
            };
            let report = compare::read(std::path::Path::new(json))?;
            suite::write_report(&report, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Some("compare") => {
            let dir = args
                .get(1)
                .context("compare needs the results folder (with tansu/ and mock/)")?;
            compare::rebuild(std::path::Path::new(dir))?;
            Ok(ExitCode::SUCCESS)
        }
        Some("-h" | "--help") | None => {
            say(include_str!("usage.txt"));
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unknown command {other:?} (try --help)"),
    }
}

fn seconds(value: &str, flag: &str) -> anyhow::Result<Duration> {
    let seconds: f64 = value
        .parse()
        .with_context(|| format!("{flag}: {value:?} is not a number of seconds"))?;
    anyhow::ensure!(seconds > 0.0, "{flag} must be positive");
    Ok(Duration::from_secs_f64(seconds))
}

fn levels(value: &str, flag: &str) -> anyhow::Result<Vec<usize>> {
    let levels = value
        .split(',')
        .map(|level| level.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{flag}: comma-separated client counts"))?;
    anyhow::ensure!(
        !levels.is_empty() && levels.iter().all(|level| *level > 0),
        "{flag}: positive client counts"
    );
    Ok(levels)
}

/// The suite's options and the brokers to run it on (`--broker`; default both, or the shared
/// Tansu with `--shared-broker`).
fn suite_options(args: &[String]) -> anyhow::Result<(Options, Vec<BrokerKind>)> {
    let mut options = if args.iter().any(|arg| arg == "--smoke") {
        Options::smoke()
    } else {
        Options::full()
    };
    if let Ok(url) = std::env::var("DATABASE_URL") {
        options.database_url = url;
    }
    if let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        options.bootstrap = bootstrap;
    }
    let mut brokers: Option<Vec<BrokerKind>> = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--smoke" => {}
            "--strict" => options.strict = true,
            "--keep-databases" => options.keep_databases = true,
            "--shared-broker" => options.shared_broker = true,
            "--broker" => brokers = Some(BrokerKind::parse_list(value()?)?),
            "--scenarios" => {
                options.scenarios = value()?.split(',').map(|name| name.trim().to_owned()).collect();
                for name in &options.scenarios {
                    anyhow::ensure!(
                        suite::SCENARIOS.contains(&name.as_str()),
                        "--scenarios: {name:?} is not one of {}",
                        suite::SCENARIOS.join(", ")
                    );
                }
            }
            "--out" => options.out_dir = PathBuf::from(value()?),
            "--work" => options.work_dir = PathBuf::from(value()?),
            "--bin-dir" => options.bin_dir = PathBuf::from(value()?),
            "--profile" => options.profile = value()?.clone(),
            "--ledger-bin" => {
                options.ledger_bin = Some(PathBuf::from(value()?));
                options.ledger_skip_reason = None;
            }
            "--ledger-skip" => {
                options.ledger_bin = None;
                options.ledger_skip_reason = Some(value()?.clone());
            }
            "--levels" => options.levels = levels(value()?, flag)?,
            "--transfer-levels" => options.transfer_levels = levels(value()?, flag)?,
            "--transfers-duration" => options.transfers_duration = seconds(value()?, flag)?,
            "--notifications-rate" => {
                let rate: f64 = value()?.parse().context("--notifications-rate: events per second")?;
                anyhow::ensure!(rate > 0.0, "--notifications-rate must be positive");
                options.notifications_rate = rate;
            }
            "--notifications-duration" => options.notifications_duration = seconds(value()?, flag)?,
            "--notifications-burst" => {
                options.notifications_burst = value()?.parse().context("--notifications-burst: a number of events")?;
                anyhow::ensure!(
                    options.notifications_burst > 0,
                    "--notifications-burst must be positive"
                );
            }
            "--duration" => options.duration = seconds(value()?, flag)?,
            "--warmup" => options.warmup = seconds(value()?, flag)?,
            "--e2e-duration" => options.e2e_duration = seconds(value()?, flag)?,
            "--e2e-rate" => {
                let rate: f64 = value()?.parse().context("--e2e-rate: pairs per second")?;
                anyhow::ensure!(rate > 0.0, "--e2e-rate must be positive");
                options.e2e_rate = Some(rate);
            }
            "--kafka-duration" => options.kafka_duration = seconds(value()?, flag)?,
            "--ledger-duration" => options.ledger_duration = seconds(value()?, flag)?,
            "--drain-timeout" => options.drain_timeout = seconds(value()?, flag)?,
            "--pgbench" => options.pgbench = PathBuf::from(value()?),
            "--service-log" => options.service_log = value()?.clone(),
            "--redis" => options.redis_url = Some(value()?.clone()),
            other => bail!("unknown flag {other:?} (try --help)"),
        }
    }
    let brokers = match brokers {
        Some(brokers) => {
            anyhow::ensure!(
                !options.shared_broker || brokers == [BrokerKind::Tansu],
                "--shared-broker is Tansu only: drop --broker or give --broker tansu"
            );
            brokers
        }
        None if options.shared_broker => vec![BrokerKind::Tansu],
        None => BrokerKind::ALL.to_vec(),
    };
    Ok((options, brokers))
}
