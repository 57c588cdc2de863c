//! `fintech-mock-broker`: librdkafka's mock cluster (in memory, the Kafka protocol on real loopback
//! sockets) as a process of its own, for the benchmark and the tests that need a broker which
//! rebalances consumer groups like Apache Kafka does (see `fintech_devkit::mock`).
//!
//! ```text
//! fintech-mock-broker [--brokers N] [--topic NAME[:PARTITIONS]]... [--partitions N]
//! ```
//!
//! Prints `bootstrap <host:port,...>` on its first line of stdout once the cluster listens, then
//! reads commands from stdin, one per line, and answers each on one line:
//!
//! ```text
//! topic <name> <partitions>      ->  ok topic <name>   |  error <message>
//! ```
//!
//! The mock does not implement the Admin API (CreateTopics), so topics are created through this
//! channel (the process that owns the cluster calls `rd_kafka_mock_topic_create`). It exits when
//! its stdin closes: it never outlives the test or benchmark that started it. Everything it holds is
//! in memory: a killed mock broker loses every record.

use std::io::{BufRead as _, Write as _};

use anyhow::{Context as _, bail};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::RDKafkaErrorCode;

const USAGE: &str = "usage: fintech-mock-broker [--brokers N] [--topic NAME[:PARTITIONS]]... [--partitions N]";

fn main() -> anyhow::Result<()> {
    let mut brokers: i32 = 1;
    let mut partitions: i32 = 3;
    let mut topics: Vec<(String, Option<i32>)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--brokers" => brokers = positive("--brokers", &value("--brokers")?)?,
            "--partitions" => partitions = positive("--partitions", &value("--partitions")?)?,
            "--topic" => {
                let spec = value("--topic")?;
                match spec.split_once(':') {
                    Some((name, count)) => topics.push((name.to_owned(), Some(positive("--topic", count)?))),
                    None => topics.push((spec, None)),
                }
            }
            "-h" | "--help" => {
                writeln!(std::io::stdout(), "{USAGE}")?;
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }

    let cluster = MockCluster::new(brokers).context("start the mock cluster")?;
    let replication = brokers.min(3);
    for (name, count) in &topics {
        create(&cluster, name, count.unwrap_or(partitions), replication)?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "bootstrap {}", cluster.bootstrap_servers())?;
    stdout.flush()?;

    for line in std::io::stdin().lock().lines() {
        let line = line.context("read a command")?;
        let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [] => continue,
            ["topic", name, count] => {
                match positive("partitions", count).and_then(|count| create(&cluster, name, count, replication)) {
                    Ok(()) => format!("ok topic {name}"),
                    Err(error) => format!("error {error:#}"),
                }
            }
            _ => format!("error unknown command {line:?} (expected: topic <name> <partitions>)"),
        };
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Creates `name` with `partitions` partitions; an existing topic is left as it is (the mock
/// answers success for it, like a CreateTopics that tolerates TopicAlreadyExists).
fn create(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    name: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    match cluster.create_topic(name, partitions, replication) {
        Ok(()) | Err(KafkaError::MockCluster(RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("create topic {name} with {partitions} partitions")),
    }
}

fn positive(name: &str, text: &str) -> anyhow::Result<i32> {
    match text.parse::<i32>() {
        Ok(value) if value > 0 => Ok(value),
        _ => bail!("{name} must be a positive integer, got {text:?}"),
    }
}
