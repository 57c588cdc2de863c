//! `fintech-ops`: the operator's commands for the pipeline (ADR 0012, ADR 0013).
//!
//! ```text
//! fintech-ops dlq replay <dead-letter-topic> [--to <topic>] [--limit <n>] [--group <group>]
//! fintech-ops outbox parked
//! fintech-ops outbox requeue (--all | <id>...)
//! ```
//!
//! The broker is `KAFKA_BOOTSTRAP_SERVERS` (default `127.0.0.1:9092`), the database
//! `DATABASE_URL` (the service whose outbox it is). Output is one line per fact, for people and
//! for scripts; an error exits non-zero with a message naming what failed.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fintech_platform::config::env_or;
use fintech_platform::kafka::dead_letters::{ReplaySettings, replay};
use fintech_platform::outbox;

const USAGE: &str = "usage:
  fintech-ops dlq replay <dead-letter-topic> [--to <topic>] [--limit <n>] [--group <group>]
  fintech-ops outbox parked
  fintech-ops outbox requeue (--all | <id>...)
environment: KAFKA_BOOTSTRAP_SERVERS (dlq), DATABASE_URL (outbox)";

fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let output = runtime.block_on(run(&arguments))?;
    let mut stdout = std::io::stdout().lock();
    for line in output {
        writeln!(stdout, "{line}").context("write to stdout")?;
    }
    Ok(())
}

/// Runs one command; returns the lines to print.
async fn run(arguments: &[String]) -> anyhow::Result<Vec<String>> {
    let words: Vec<&str> = arguments.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["dlq", "replay", topic, options @ ..] => dlq_replay(topic, options).await,
        ["outbox", "parked"] => {
            let pool = database().await?;
            let rows = outbox::parked(&pool).await.context("read parked rows")?;
            let mut lines = vec![format!("{} parked rows", rows.len())];
            lines.extend(rows.iter().map(|row| {
                format!(
                    "id={} ce_id={} topic={} key={} attempts={} parked_at={} last_error={}",
                    row.id,
                    row.event_id,
                    row.topic,
                    row.record_key,
                    row.attempts,
                    row.parked_at.to_rfc3339(),
                    row.last_error.as_deref().unwrap_or("-")
                )
            }));
            Ok(lines)
        }
        ["outbox", "requeue", "--all"] => {
            let pool = database().await?;
            let count = outbox::requeue_parked(&pool, None)
                .await
                .context("re-queue parked rows")?;
            Ok(vec![format!("{count} rows re-queued")])
        }
        ["outbox", "requeue", ids @ ..] if !ids.is_empty() => {
            let ids = ids
                .iter()
                .map(|id| {
                    id.parse::<i64>()
                        .with_context(|| format!("row id {id:?} is not a number"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let pool = database().await?;
            let count = outbox::requeue_parked(&pool, Some(&ids))
                .await
                .context("re-queue parked rows")?;
            Ok(vec![format!("{count} rows re-queued")])
        }
        _ => bail!("{USAGE}"),
    }
}

async fn dlq_replay(topic: &str, options: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut settings = ReplaySettings::new(env_or("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), topic);
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let mut value = || {
            options
                .next()
                .copied()
                .with_context(|| format!("{option} needs a value\n{USAGE}"))
        };
        match *option {
            "--to" => settings.target_topic = Some(value()?.to_owned()),
            "--group" => settings.group_id = value()?.to_owned(),
            "--limit" => {
                let limit = value()?;
                settings.limit = Some(
                    limit
                        .parse()
                        .with_context(|| format!("--limit {limit:?} is not a number"))?,
                );
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let report = replay(&settings).await.with_context(|| format!("replay {topic}"))?;
    let mut lines = vec![format!("{} records replayed from {topic}", report.total())];
    let mut targets: Vec<_> = report.replayed.iter().collect();
    targets.sort();
    lines.extend(targets.iter().map(|(target, count)| format!("{count} to {target}")));
    Ok(lines)
}

async fn database() -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL: the database of the service whose outbox it is")?;
    fintech_platform::db::connect(&url, 2, Duration::from_secs(5))
        .await
        .context("DATABASE_URL: cannot connect")
}
