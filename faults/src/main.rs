//! `fintech-faults run --seed N --duration S --faults K [--short]`: the fault-injection campaign
//! of issue #20. Starts the platform as processes ([`platform`]), drives a steady load
//! ([`load`]), injects faults on a schedule drawn from the seed ([`faults`]), lets the load drain,
//! checks the invariants from the databases and the topics ([`checks`]) and writes a report
//! ([`report`]). Exits 1 when an invariant broke, 2 when the campaign itself could not run.
//!
//! The services are the debug binaries of `cargo build --workspace --bins` (`--bin-dir`,
//! default `$CARGO_TARGET_DIR/debug` or `target/debug`).

mod checks;
mod faults;
mod load;
mod platform;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

const USAGE: &str = "usage: fintech-faults run [--seed N] [--duration SECONDS] [--faults K] [--clients C] [--short] [--quick-restarts] [--static-membership] \
                     [--bin-dir DIR] [--out DIR] [--work DIR]";

/// A progress line on stderr, with the time.
pub(crate) fn say(line: impl AsRef<str>) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("[{}] {}", chrono::Utc::now().format("%H:%M:%S"), line.as_ref());
    }
}

/// The campaign's options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) seed: u64,
    pub(crate) duration: Duration,
    pub(crate) faults: usize,
    pub(crate) clients: usize,
    pub(crate) short: bool,
    pub(crate) quick_restarts: bool,
    pub(crate) static_membership: bool,
    pub(crate) bin_dir: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) work: PathBuf,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut args = args.iter();
    match args.next().map(String::as_str) {
        Some("run") => {}
        _ => bail!("{USAGE}"),
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| repo_root().join("target"), PathBuf::from);
    let mut options = Options {
        seed: chrono::Utc::now().timestamp() as u64,
        duration: Duration::ZERO,
        faults: 0,
        clients: 0,
        short: false,
        quick_restarts: false,
        static_membership: false,
        bin_dir: target.join("debug"),
        out: repo_root().join("bench/results/faults"),
        work: std::env::temp_dir().join(format!("fintech-faults-{}", std::process::id())),
    };
    let (mut duration, mut faults, mut clients) = (None, None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value; {USAGE}"));
        match flag.as_str() {
            "--seed" => options.seed = value()?.parse()?,
            "--duration" => duration = Some(Duration::from_secs(value()?.parse()?)),
            "--faults" => faults = Some(value()?.parse()?),
            "--clients" => clients = Some(value()?.parse()?),
            "--short" => options.short = true,
            "--quick-restarts" => options.quick_restarts = true,
            "--static-membership" => options.static_membership = true,
            "--bin-dir" => options.bin_dir = PathBuf::from(value()?),
            "--out" => options.out = PathBuf::from(value()?),
            "--work" => options.work = PathBuf::from(value()?),
            _ => bail!("unknown option {flag}; {USAGE}"),
        }
    }
    // The short mode runs a lighter load (2 clients): a smaller backlog per fault, so its ten
    // faults recover within a few minutes.
    let (default_duration, default_faults, default_clients) = if options.short { (90, 10, 2) } else { (600, 100, 4) };
    options.duration = duration.unwrap_or(Duration::from_secs(default_duration));
    options.faults = faults.unwrap_or(default_faults);
    options.clients = clients.unwrap_or(default_clients);
    Ok(options)
}

async fn campaign(options: &Options) -> anyhow::Result<report::Report> {
    say(format!(
        "fault campaign: seed {}, at least {:?} of load, {} faults, {} clients; work in {}",
        options.seed,
        options.duration,
        options.faults,
        options.clients,
        options.work.display()
    ));
    let started = Instant::now();
    let mut platform = platform::Platform::start(&options.work, &options.bin_dir, options.static_membership).await?;
    platform.quick_restarts = options.quick_restarts;
    say(format!(
        "platform up in {:.1}s: PostgreSQL on {}, broker {}, {}",
        started.elapsed().as_secs_f64(),
        platform.postgres.port(),
        platform.broker.bootstrap(),
        platform
            .services
            .iter()
            .map(|service| format!("{} {}", service.name, service.address))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut rng = StdRng::seed_from_u64(options.seed);
    let kinds = faults::schedule(&mut rng, options.faults);

    let load = Arc::new(load::Load::default());
    let mut clients = Vec::new();
    for client in 0..options.clients {
        let channel = platform.channel("payments")?;
        clients.push(tokio::spawn(load::client(load.clone(), channel, options.seed, client)));
    }
    let load_started = Instant::now();
    let injected = faults::run(&mut platform, &load, &mut rng, &kinds, load_started).await;
    let injected = match injected {
        Ok(injected) => injected,
        Err(error) => {
            load.stop.store(true, Ordering::Relaxed);
            platform.stop();
            return Err(error.context("injecting the faults"));
        }
    };
    if let Some(rest) = options.duration.checked_sub(load_started.elapsed()) {
        say(format!("faults done; load runs {:.0}s more", rest.as_secs_f64()));
        tokio::time::sleep(rest).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let load_took = load_started.elapsed();
    let acknowledged = std::mem::take(&mut *load.acknowledged.lock().await);
    say(format!(
        "load stopped after {:.0}s: {} orders, {} transactions acknowledged, {} retries, {} given up; draining",
        load_took.as_secs_f64(),
        acknowledged.orders.len(),
        acknowledged.transactions.len(),
        load.counters.retries.load(Ordering::Relaxed),
        load.counters.given_up.load(Ordering::Relaxed)
    ));
    let drained = faults::wait_drained(
        &mut platform,
        &acknowledged.transactions,
        chrono::Utc::now(),
        Duration::from_secs(300),
    )
    .await?;
    say(format!(
        "drained: {}",
        drained.map_or("NO (checking anyway)".to_owned(), |took| format!(
            "after {:.1}s",
            took.as_secs_f64()
        ))
    ));
    let checks = checks::run(&platform, &acknowledged).await?;
    platform.stop();
    Ok(report::Report {
        seed: options.seed,
        mode: if options.short { "short" } else { "full" }.to_owned(),
        started_at: chrono::Utc::now() - chrono::Duration::from_std(started.elapsed())?,
        load_seconds: load_took.as_secs_f64(),
        clients: options.clients,
        quick_restarts: options.quick_restarts,
        static_membership: options.static_membership,
        orders: acknowledged.orders.len(),
        transactions: acknowledged.transactions.len(),
        retries: load.counters.retries.load(Ordering::Relaxed),
        given_up: load.counters.given_up.load(Ordering::Relaxed),
        final_drain_s: drained.map(|took| took.as_secs_f64()),
        faults: injected,
        checks,
        work_dir: options.work.display().to_string(),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(error) => {
            say(format!("{error:#}"));
            return std::process::ExitCode::from(2);
        }
    };
    // On SIGINT or SIGTERM the campaign is dropped: every process it started is killed, the
    // PostgreSQL cluster stopped and its folder removed (nothing is left behind).
    let interrupted = async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { terminate.as_mut()?.recv().await } => {}
        }
    };
    let outcome = tokio::select! {
        outcome = campaign(&options) => outcome,
        () = interrupted => Err(anyhow::anyhow!("interrupted")),
    };
    match outcome {
        Ok(report) => {
            if let Err(error) = report.write(&options.out) {
                say(format!("could not write the report: {error:#}"));
            }
            say(report.summary());
            if report.holds() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(error) => {
            say(format!("the campaign failed to run (seed {}): {error:#}", options.seed));
            std::process::ExitCode::from(2)
        }
    }
}
