//! A private in-memory broker: librdkafka's mock cluster run as a process of its own
//! (`fintech-mock-broker`, this crate's binary), on loopback ports it picks.
//!
//! Why a second broker beside Tansu (`crate::broker`):
//! - it **rebalances consumer groups** as Apache Kafka does: a member whose session expired (a
//!   SIGKILLed process) is removed and its partitions go to the members left, which Tansu 0.6
//!   never does (ADR 0007), so the scale-out test runs on it;
//! - it costs little CPU and answers a fetch as soon as records are there, so the benchmark can
//!   separate the platform's own cost from the broker's (issue #21).
//!
//! What it supports, as the services use it (checked by `tests/mock_broker.rs`): the idempotent
//! producer with `acks=all`, record headers (CloudEvents), consumer groups with manual offset
//! commits, OffsetFetch, group rebalances on join, leave and session expiry. What it does not:
//! the Admin API (CreateTopics waits for a controller and times out), so topics are created
//! through the process that owns the cluster ([`MockBroker::create_topics`]); and persistence:
//! everything is in memory, so a killed mock broker loses every record (restart tests stay on
//! Tansu).
//!
//! The process exits when its stdin closes, so it never outlives the value (or the test process)
//! that started it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, bail};

/// A running `fintech-mock-broker`; killed when dropped.
#[derive(Debug)]
pub struct MockBroker {
    bootstrap: String,
    child: Child,
    channel: Mutex<Channel>,
}

#[derive(Debug)]
struct Channel {
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Channel {
    fn answer(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = self.answers.read_line(&mut line).context("read from the mock broker")?;
        if read == 0 {
            bail!("the mock broker exited");
        }
        Ok(line.trim_end().to_owned())
    }
}

impl MockBroker {
    /// Starts `binary` (`fintech-mock-broker`) with `brokers` brokers, its stderr appended to
    /// `log`, and waits until it prints its bootstrap servers.
    pub fn start(binary: &Path, brokers: i32, log: &Path) -> anyhow::Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut child = Command::new(binary)
            .args(["--brokers", &brokers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let commands = child.stdin.take().context("the mock broker's stdin")?;
        let answers = BufReader::new(child.stdout.take().context("the mock broker's stdout")?);
        let mut channel = Channel { commands, answers };
        let first = match channel.answer() {
            Ok(line) => line,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error.context(format!("end of {}:\n{}", log.display(), crate::log_tail(log, 20))));
            }
        };
        let Some(bootstrap) = first.strip_prefix("bootstrap ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the mock broker printed {first:?} instead of its bootstrap servers");
        };
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            child,
            channel: Mutex::new(channel),
        })
    }

    /// `host:port[,host:port...]` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The process id (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates `topics` with `partitions` partitions each (replication: the broker count, at most
    /// 3); an existing topic is left as it is.
    pub fn create_topics(&self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let mut channel = self.channel.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for topic in topics {
            if topic.chars().any(char::is_whitespace) || topic.is_empty() {
                bail!("topic name {topic:?} is empty or has whitespace");
            }
            writeln!(channel.commands, "topic {topic} {partitions}").context("write to the mock broker")?;
            channel.commands.flush().context("write to the mock broker")?;
            let answer = channel.answer()?;
            if answer != format!("ok topic {topic}") {
                bail!("creating {topic} on the mock broker: {answer}");
            }
        }
        Ok(())
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
