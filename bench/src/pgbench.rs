//! The PostgreSQL baseline: `pgbench` running exactly the statements payments sends for
//! `CreateOrder` and `CreateTransaction` (taken from `fintech_payments::storage` and
//! `fintech_platform::idempotency`, their parameters replaced by pgbench expressions), with
//! payloads of the sizes the service writes, on a fresh database with the payments schema, same
//! server, same client counts.
//!
//! One script run = one pair = two transactions, like one iteration of the payments load:
//!
//! | payments does (per command) | the script does |
//! |---|---|
//! | `BEGIN` | `BEGIN` |
//! | idempotency claim: `idempotency_claim(..)` (sets `lock_timeout`, `INSERT .. ON CONFLICT DO NOTHING` the key, restores it; `migrations/platform/0004_idempotency_claim.sql`) | the same call, with a fresh key |
//! | `SELECT .. FOR UPDATE` the order (CreateTransaction only) | the same |
//! | one statement: `INSERT` the order / transaction, `INSERT` the outbox row (full protobuf payload, traceparent) and `UPDATE` the key with the encoded response, as data-modifying CTEs | the same statement, payload and response of the same sizes (ids and keys drawn by pgbench instead of parameters) |
//! | `COMMIT` | `COMMIT` |
//!
//! What the baseline leaves out is what the service adds on top of its SQL: gRPC, validation,
//! protobuf, tracing, the connection pool, and the outbox relay publishing and marking rows
//! (plus tax consuming them) on the same two cores.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;

use crate::progress::say;
use crate::stats::Samples;

/// Byte sizes of what payments stores per command (measured from real encodings).
#[derive(Debug, Clone, Copy)]
pub struct PayloadSizes {
    /// Encoded `Order` (outbox payload of orders.created).
    pub order: usize,
    /// Encoded `CreateOrderResponse` (stored idempotent response).
    pub order_response: usize,
    /// Encoded `Transaction`.
    pub transaction: usize,
    /// Encoded `CreateTransactionResponse`.
    pub transaction_response: usize,
}

impl PayloadSizes {
    /// Sizes of a typical order and transaction, for scenarios that have no payments to ask.
    pub fn typical() -> Self {
        use fintech_proto::payments as pb;
        use prost::Message as _;
        let time = Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 123_456_000,
        });
        let id = "0199a3b2-7c4d-7e5f-8a9b-0c1d2e3f4a5b".to_owned();
        let order = pb::Order {
            order_id: id.clone(),
            customer_id: "bench-customer-12".to_owned(),
            country: "DE".to_owned(),
            currency: "EUR".to_owned(),
            amount: 12_345,
            product_type: "standard".to_owned(),
            created_at: time,
            updated_at: time,
            version: 1,
        };
        let transaction = pb::Transaction {
            transaction_id: id.clone(),
            order_id: id,
            customer_id: "bench-customer-12".to_owned(),
            amount: 12_345,
            currency: "EUR".to_owned(),
            status: pb::TransactionStatus::Pending as i32,
            created_at: time,
            updated_at: time,
            version: 1,
            order_version: 1,
        };
        Self {
            order: order.encoded_len(),
            order_response: pb::CreateOrderResponse { order: Some(order) }.encoded_len(),
            transaction: transaction.encoded_len(),
            transaction_response: pb::CreateTransactionResponse {
                transaction: Some(transaction),
            }
            .encoded_len(),
        }
    }
}

fn hex_bytes(len: usize) -> String {
    let mut text = String::with_capacity(2 + 2 * len);
    text.push_str("\\x");
    for index in 0..len {
        let _ = write!(text, "{:02x}", (index * 37 + 11) % 256);
    }
    text
}

/// The pgbench script of one pair, topics under `topic_prefix`: the service's own statements
/// (`fintech_payments::storage`, `idempotency::CLAIM`), with each parameter replaced by a pgbench
/// expression ([`fintech_platform::sql::inline`]), so a column added to the outbox or to an order
/// changes the baseline with the service instead of breaking it at run time.
pub fn pair_script(sizes: PayloadSizes, topic_prefix: &str) -> anyhow::Result<String> {
    use fintech_payments::domain::TransactionStatus;
    use fintech_payments::events::SOURCE;
    use fintech_payments::storage;
    use fintech_platform::idempotency::CLAIM;
    use fintech_platform::sql::inline;
    use fintech_proto::topics::{self, Topic};

    const ORDER_SCOPE: &str = "/fintech.payments.v1.PaymentsService/CreateOrder";
    const TRANSACTION_SCOPE: &str = "/fintech.payments.v1.PaymentsService/CreateTransaction";
    const TRACEPARENT: &str = "'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'";
    const FINGERPRINT: &str = "'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'";
    let quoted = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let bytes = |len: usize| format!("'{}'::bytea", hex_bytes(len));
    // Ids drawn by pgbench (client side), so the transaction can name its order without a round
    // trip the service does not make.
    let uuid = |variable: &str| {
        format!(
            "(lpad(to_hex(:{variable}_hi::bigint), 16, '0') || lpad(to_hex(:{variable}_lo::bigint), 16, '0'))::uuid"
        )
    };
    let key = |variable: &str| format!("('k' || :client_id::text || '-' || :{variable}::text)");
    let order_id = uuid("order");
    let customer = "'bench-customer-' || :client_id::text".to_owned();
    let claim = |scope: &str, key: &str| inline(CLAIM, &[&quoted(scope), key, FINGERPRINT, "'5000ms'"]);
    let outbox = |topic: &Topic, size: usize| -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "gen_random_uuid()".to_owned(),
            quoted(&format!("{topic_prefix}{}", topic.name)),
            format!("{order_id}::text"),
            quoted(topic.ce_type()),
            quoted(SOURCE),
            quoted(topic.payload.context("an event topic has a payload")?),
            bytes(size),
            TRACEPARENT.to_owned(),
            "NULL".to_owned(),
            "now()".to_owned(),
        ])
    };
    let statement = |business: String, values: Vec<String>| -> anyhow::Result<String> {
        let sql = storage::effects_statement(&business, true);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        Ok(format!("{};\n", inline(&sql, &values).map_err(anyhow::Error::msg)?))
    };

    let mut order_values = vec![
        order_id.clone(),
        customer.clone(),
        "'DE'".to_owned(),
        "'EUR'".to_owned(),
        ":amount::bigint".to_owned(),
        "'standard'".to_owned(),
        "now()".to_owned(),
        "now()".to_owned(),
        "1".to_owned(),
    ];
    order_values.extend(outbox(&topics::ORDERS_CREATED, sizes.order)?);
    order_values.extend([bytes(sizes.order_response), quoted(ORDER_SCOPE), key("order_key")]);
    let mut transaction_values = vec![
        "gen_random_uuid()".to_owned(),
        order_id.clone(),
        customer,
        ":amount::bigint".to_owned(),
        "'EUR'".to_owned(),
        quoted(TransactionStatus::Pending.as_str()),
        "now()".to_owned(),
        "now()".to_owned(),
        "1".to_owned(),
        "1".to_owned(),
    ];
    transaction_values.extend(outbox(&topics::TRANSACTIONS_CREATED, sizes.transaction)?);
    transaction_values.extend([
        bytes(sizes.transaction_response),
        quoted(TRANSACTION_SCOPE),
        key("transaction_key"),
    ]);

    let mut script = String::from("-- generated by fintech-bench from the SQL of CreateOrder + CreateTransaction\n");
    script.push_str("\\set amount random(1000, 100000)\n");
    for variable in ["order_hi", "order_lo", "order_key", "transaction_key"] {
        let _ = writeln!(script, "\\set {variable} random(0, 4611686018427387903)");
    }
    // CreateOrder
    script.push_str("BEGIN;\n");
    let _ = writeln!(
        script,
        "{};",
        claim(ORDER_SCOPE, &key("order_key")).map_err(anyhow::Error::msg)?
    );
    script.push_str(&statement(storage::insert_order_sql(), order_values)?);
    script.push_str("COMMIT;\n");
    // CreateTransaction
    script.push_str("BEGIN;\n");
    let _ = writeln!(
        script,
        "{};",
        claim(TRANSACTION_SCOPE, &key("transaction_key")).map_err(anyhow::Error::msg)?
    );
    let _ = writeln!(
        script,
        "{};",
        inline(&storage::get_order_sql(true), &[&order_id]).map_err(anyhow::Error::msg)?
    );
    script.push_str(&statement(storage::insert_transaction_sql(), transaction_values)?);
    script.push_str("COMMIT;\n");
    Ok(script)
}

/// Result of one pgbench run.
#[derive(Debug)]
pub struct PgbenchRun {
    /// Latency of each script run (one pair), from pgbench's per-transaction log.
    pub samples: Samples,
    /// Script runs per second as pgbench reports it (without connection time).
    pub tps: f64,
    /// pgbench's own summary lines.
    pub summary: String,
}

/// One pgbench invocation.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    /// The pgbench binary.
    pub pgbench: &'a Path,
    /// libpq connection URI of the baseline database.
    pub conninfo: &'a str,
    /// The script file.
    pub script: &'a Path,
    /// Connections (`--client`).
    pub clients: usize,
    /// Run time (`--time`, whole seconds).
    pub duration: Duration,
    /// Where the per-transaction logs go (read, then removed).
    pub log_dir: &'a Path,
}

/// Runs one invocation, relaying pgbench's progress lines under `label`.
pub async fn run(invocation: Invocation<'_>, label: &str) -> anyhow::Result<PgbenchRun> {
    let Invocation {
        pgbench,
        conninfo,
        script,
        clients,
        duration,
        log_dir,
    } = invocation;
    // Client threads: one per core, at most one per client.
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    std::fs::create_dir_all(log_dir)?;
    let log_prefix = log_dir.join(format!("c{clients}"));
    let mut child = tokio::process::Command::new(pgbench)
        .arg("--no-vacuum")
        .args(["--protocol", "prepared"])
        .args(["--client", &clients.to_string()])
        .args(["--jobs", &threads.clamp(1, clients).to_string()])
        .args(["--time", &duration.as_secs().max(1).to_string()])
        .args(["--progress", "1"])
        .arg("--log")
        .arg(format!("--log-prefix={}", log_prefix.display()))
        .arg("--file")
        .arg(script)
        .arg(conninfo)
        .current_dir(log_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", pgbench.display()))?;
    let stderr = child.stderr.take().context("pgbench stderr")?;
    let label = label.to_owned();
    let progress = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut other = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("progress:") {
                say(format!("    [{label}] {line}"));
            } else {
                other.push(line);
            }
        }
        other
    });
    let output = child.wait_with_output().await?;
    let stderr_lines = progress.await.unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{}\n{}",
        output.status,
        stdout,
        stderr_lines.join("\n")
    );
    let tps = parse_tps(&stdout).with_context(|| format!("no tps in pgbench output:\n{stdout}"))?;
    let samples = read_logs(log_dir, &log_prefix)?;
    let summary = stdout
        .lines()
        .filter(|line| {
            ["number of", "latency", "tps", "initial connection"]
                .iter()
                .any(|start| line.starts_with(start))
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(PgbenchRun { samples, tps, summary })
}

/// `tps = 523.181 (without initial connection time)`.
fn parse_tps(stdout: &str) -> Option<f64> {
    stdout
        .lines()
        .find(|line| line.starts_with("tps = "))?
        .trim_start_matches("tps = ")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads every `<prefix>.<pid>[.<thread>]` log: `client_id transaction_no time script_no
/// time_epoch time_us ...`, where `time` is the latency in microseconds or `failed`.
fn read_logs(dir: &Path, prefix: &Path) -> anyhow::Result<Samples> {
    let stem = prefix
        .file_name()
        .and_then(|name| name.to_str())
        .context("log prefix")?
        .to_owned();
    let mut samples = Samples::default();
    let files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&format!("{stem}.")))
        })
        .collect();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        parse_log(&text, &mut samples);
        // The per-transaction logs are large; the summary is what is kept.
        let _ = std::fs::remove_file(&file);
    }
    Ok(samples)
}

fn parse_log(text: &str, samples: &mut Samples) {
    for line in text.lines() {
        let Some(time) = line.split_whitespace().nth(2) else {
            continue;
        };
        match time.parse::<u64>() {
            Ok(micros) => samples.record_us(micros),
            Err(_) => samples.error(format!("pgbench: {time}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_the_summary() {
        let stdout = "number of failed transactions: 0 (0.000%)\nlatency average = 1.9 ms\n\
                      initial connection time = 3.1 ms\ntps = 523.181035 (without initial connection time)\n";
        assert_eq!(parse_tps(stdout), Some(523.181035));
        assert_eq!(parse_tps("nothing"), None);
    }

    #[test]
    fn log_lines_give_latencies_and_failures() {
        let mut samples = Samples::default();
        parse_log(
            "0 1 1912 0 1700000000 123\n1 1 failed 0 1700000000 456\n0 2 2500 0 1700000001 7\n",
            &mut samples,
        );
        assert_eq!(samples.count(), 2);
        assert_eq!(samples.errors(), 1);
        assert!((samples.latency().max_ms - 2.5).abs() < 0.01);
    }

    #[test]
    fn the_script_holds_both_commands_with_sized_payloads() {
        let sizes = PayloadSizes {
            order: 10,
            order_response: 12,
            transaction: 20,
            transaction_response: 22,
        };
        let script = pair_script(sizes, "bench.x.").expect("the script builds");
        assert!(!script.contains('$'), "every parameter inlined: {script}");
        assert_eq!(script.matches("BEGIN;").count(), 2);
        assert_eq!(script.matches("COMMIT;").count(), 2);
        assert!(script.contains("'bench.x.orders.created'"));
        assert!(script.contains("FOR UPDATE"));
        assert_eq!(
            script.matches("WITH business AS (").count(),
            2,
            "one write statement per command"
        );
        assert!(script.contains(&format!("'{}'::bytea", hex_bytes(20))));
        assert_eq!(hex_bytes(2).len(), 2 + 4);
    }
}
