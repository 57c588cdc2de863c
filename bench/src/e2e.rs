//! End to end at a fixed rate: `CreateOrder` + `CreateTransaction` sent open-loop (on a schedule,
//! whatever the answers' latency, so a slow system cannot slow the load down and hide its own
//! latency), then the time from the `CreateTransaction` acknowledgement until the transaction's
//! `TaxedTransaction` is
//!
//! - **calculated** by tax: `taxed_transactions.calculated_at` (tax's clock, the same host) minus
//!   the acknowledgement's wall-clock time; readable through `GetTaxedTransaction` from then on
//!   (the row commits a few statements later);
//! - **posted** by the ledger (when it runs): `ledger_entries.posted_at` of entry
//!   `tax:<transaction id>` minus the acknowledgement;
//! - **published** on `tax.calculated`: arrival at a reader in this process that started at the
//!   topic's end before the load (with `fetch.wait.max.ms` 10, so the instrument itself adds little:
//!   see [`crate::kafka::INSTRUMENT_FETCH_WAIT_MS`]).
//!
//! Afterwards a sample of the transactions is read back through `GetTaxedTransaction`; a
//! transaction that never shows up counts as an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::load::Channel;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use fintech_proto::tax as taxpb;
use fintech_proto::tax::tax_service_client::TaxServiceClient;
use prost::Message as _;
use rdkafka::message::Message as _;
use sqlx::PgPool;

use crate::kafka::{Start, assigned_reader};
use crate::load::connect;
use crate::monitor::{Monitor, Point, Series};
use crate::payments::Pair;
use crate::progress::Progress;
use crate::stats::{Live, Samples};

/// A time per transaction id.
type Times = HashMap<String, DateTime<Utc>>;

/// Requests in flight beyond which the generator counts a scheduled pair as dropped instead of
/// sending it (the system is not keeping up; queueing more only measures the queue).
const MAX_IN_FLIGHT: i64 = 2_000;

/// What the scenario needs.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Payments' gRPC address.
    pub payments: String,
    /// Tax's gRPC channel.
    pub tax: Channel,
    /// Tax's database (for `calculated_at`).
    pub tax_db: PgPool,
    /// Broker.
    pub bootstrap: String,
    /// The run's `tax.calculated` topic.
    pub tax_calculated_topic: String,
    /// Idempotency key prefix.
    pub key_prefix: String,
    /// The ledger's database, when the ledger runs (for `ledger_entries.posted_at`).
    pub ledger_db: Option<PgPool>,
    /// Payments' database (for its outbox rows' `published_at`, the per-hop breakdown).
    pub payments_db: Option<PgPool>,
}

/// Result of the scenario.
#[derive(Debug, Default)]
pub struct E2eRun {
    /// Pairs scheduled.
    pub scheduled: u64,
    /// `CreateOrder` + `CreateTransaction`, from the scheduled start to the acknowledgement.
    pub pairs: Samples,
    /// Acknowledgement -> `taxed_transactions.calculated_at`.
    pub to_calculated: Samples,
    /// Acknowledgement -> record on `tax.calculated` (missing ones are errors).
    pub to_published: Samples,
    /// Acknowledgement -> `ledger_entries.posted_at` of entry `tax:<transaction id>`.
    pub to_ledger: Option<Samples>,
    /// `GetTaxedTransaction` calls of the read-back sample.
    pub read_back: Samples,
    /// The same path cut into hops by the rows' own timestamps (see [`hops`]).
    pub hops: Vec<(String, Samples)>,
    /// Backlogs over time.
    pub series: Vec<Point>,
    /// Seconds from the end of the load until everything drained (`None`: not within the
    /// timeout).
    pub drain_seconds: Option<f64>,
    /// Measured load time.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    at: Instant,
    wall: SystemTime,
    /// Scheduled after the warm-up: its latencies count.
    measured: bool,
}

/// Runs pairs at `rate` per second for `duration`, then waits up to `drain_timeout` for the flow
/// to finish. Pairs scheduled in the first `warmup` run like the others but are not measured
/// (fresh processes: first fetches, first writes to each partition, cold caches).
pub async fn run(
    setup: &Setup,
    monitor: &Monitor,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    drain_timeout: Duration,
    label: &str,
) -> anyhow::Result<E2eRun> {
    let acks: Arc<Mutex<HashMap<String, Ack>>> = Arc::default();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let in_flight = Arc::new(AtomicI64::new(0));

    let consumer = tokio::task::block_in_place(|| {
        let fetch_wait = Some(crate::kafka::INSTRUMENT_FETCH_WAIT_MS);
        assigned_reader(&setup.bootstrap, &setup.tax_calculated_topic, Start::End, fetch_wait)
    })?;
    let reader = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok(message) = consumer.recv().await else {
                    continue;
                };
                let arrived = Instant::now();
                let Some(taxed) = message
                    .payload()
                    .and_then(|payload| taxpb::TaxedTransaction::decode(payload).ok())
                else {
                    continue;
                };
                locked(&seen).insert(taxed.transaction_id, arrived);
            }
        })
    };
    // Let the reader connect and fetch once before the first event can be published.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let open = {
        let (acks, seen, in_flight) = (Arc::clone(&acks), Arc::clone(&seen), Arc::clone(&in_flight));
        Arc::new(move || open_count(&acks, &seen) as i64 + in_flight.load(Ordering::Relaxed))
    };
    let series = monitor.start(Some(open));
    let live = Arc::new(Live::default());
    let watch = series.watch();
    let describe = Arc::new(move || Series::describe(&watch));
    let _progress = Progress::start(label, duration, Arc::clone(&live), Some(describe));

    // A few connections, as a handful of front-end instances would hold.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(connect(&setup.payments).await?);
    }
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let started = Instant::now();
    let mut scheduled = 0u64;
    let mut tasks = Vec::new();
    let mut dropped = Samples::default();
    while started.elapsed() < duration {
        let due = started + interval.mul_f64(scheduled as f64);
        tokio::time::sleep_until(due.into()).await;
        let n = scheduled;
        scheduled += 1;
        let measured = due >= started + warmup;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            dropped.error("not sent: too many in flight");
            live.failed();
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let channel = channels[n as usize % channels.len()].clone();
        let mut pair = Pair::new(channel, format!("{}-e2e", setup.key_prefix));
        let (acks, in_flight, live) = (Arc::clone(&acks), Arc::clone(&in_flight), Arc::clone(&live));
        tasks.push(tokio::spawn(async move {
            let result = pair.send(n as usize % 64, n).await;
            let mut samples = Samples::default();
            match result {
                Ok(outcome) => {
                    let ack = Ack {
                        at: Instant::now(),
                        wall: SystemTime::now(),
                        measured,
                    };
                    if measured {
                        samples.record(due.elapsed());
                    }
                    locked(&acks).insert(outcome.transaction.transaction_id, ack);
                    live.ok();
                }
                Err(error) => {
                    samples.error(error.kind());
                    live.failed();
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
            samples
        }));
    }
    let mut pairs = dropped;
    for task in tasks {
        pairs.merge(task.await?);
    }
    let elapsed = started.elapsed();
    drop(_progress);

    let drain_seconds = series.wait_drained(drain_timeout).await;
    // The last results may still be on their way from tax's outbox to the reader.
    let wait_for_reader = Instant::now() + Duration::from_secs(5);
    while Instant::now() < wait_for_reader && open_count(&acks, &seen) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let points = series.finish().await;
    reader.abort();

    let (acks, seen) = (locked(&acks).clone(), locked(&seen).clone());
    let mut to_published = Samples::default();
    for (transaction_id, ack) in acks.iter().filter(|(_, ack)| ack.measured) {
        match seen.get(transaction_id) {
            Some(arrived) => to_published.record(arrived.saturating_duration_since(ack.at)),
            None => to_published.error("not on tax.calculated"),
        }
    }
    let acked: Times = (acks.iter()).map(|(id, ack)| (id.clone(), ack.wall.into())).collect();
    let calculated = calculated_times(&setup.tax_db, &acks).await?;
    let to_calculated = between(&acks, &acked, &calculated, "not in taxed_transactions");
    let posted = match &setup.ledger_db {
        Some(ledger_db) => Some(posted_times(ledger_db, &acks).await?),
        None => None,
    };
    let to_ledger = (posted.as_ref()).map(|posted| between(&acks, &acked, posted, "not in ledger_entries"));
    let hops = hops(setup, &acks, &acked, &calculated, posted.as_ref()).await?;
    let read_back = read_back(setup.tax.clone(), acks.keys().cloned().collect()).await;

    Ok(E2eRun {
        scheduled,
        pairs,
        to_calculated,
        to_published,
        to_ledger,
        read_back,
        hops,
        series: points,
        drain_seconds,
        elapsed,
    })
}

/// A lock that a panicked holder did not spoil: the maps only ever get whole entries.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Transactions acknowledged and not yet seen on `tax.calculated`.
fn open_count(acks: &Mutex<HashMap<String, Ack>>, seen: &Mutex<HashMap<String, Instant>>) -> usize {
    let seen = locked(seen);
    locked(acks).keys().filter(|id| !seen.contains_key(*id)).count()
}

/// When tax calculated each transaction (`taxed_transactions.calculated_at`), by transaction id.
async fn calculated_times(tax_db: &PgPool, acks: &HashMap<String, Ack>) -> anyhow::Result<Times> {
    let ids: Vec<uuid::Uuid> = acks.keys().filter_map(|id| id.parse().ok()).collect();
    let rows: Vec<(uuid::Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT transaction_id, calculated_at FROM taxed_transactions WHERE transaction_id = ANY($1)")
            .bind(&ids)
            .fetch_all(tax_db)
            .await
            .context("read calculated_at")?;
    Ok(rows.into_iter().map(|(id, at)| (id.to_string(), at)).collect())
}

/// When the ledger posted each transaction's tax result, by transaction id: the ledger posts it
/// as entry `tax:<transaction id>` (`services/ledger`, `domain::tax`).
async fn posted_times(ledger_db: &PgPool, acks: &HashMap<String, Ack>) -> anyhow::Result<Times> {
    let ids: Vec<String> = acks.keys().map(|id| format!("tax:{id}")).collect();
    let rows: Vec<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT entry_id, posted_at FROM ledger_entries WHERE entry_id = ANY($1)")
            .bind(&ids)
            .fetch_all(ledger_db)
            .await
            .context("read posted_at")?;
    Ok(rows
        .into_iter()
        .map(|(id, at)| (id.trim_start_matches("tax:").to_owned(), at))
        .collect())
}

/// When each transaction's outbox row on a topic ending in `topic_suffix` was published
/// (`published_at`: after the broker acknowledged it), by the transaction id its payload carries.
async fn published_by_transaction(
    db: &PgPool,
    topic_suffix: &str,
    transaction_id: impl Fn(&[u8]) -> Option<String>,
) -> anyhow::Result<Times> {
    let rows: Vec<(Vec<u8>, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT payload, published_at FROM outbox WHERE topic LIKE '%' || $1")
            .bind(topic_suffix)
            .fetch_all(db)
            .await
            .with_context(|| format!("read the outbox rows of {topic_suffix}"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(payload, published_at)| Some((transaction_id(&payload)?, published_at?)))
        .collect())
}

/// The path from acknowledgement to ledger entry cut into hops by the timestamps the services
/// record themselves (one PostgreSQL server, one clock):
///
/// 1. ack -> payments' `transactions.created` outbox row published (relay pickup, produce, ack);
/// 2. -> tax calculated (broker, tax's fetch, lane, batch transaction);
/// 3. -> tax's `tax.calculated` outbox row published;
/// 4. -> ledger entry posted (when the ledger runs).
///
/// A hop whose start or end is missing for a transaction is an error of that hop.
async fn hops(
    setup: &Setup,
    acks: &HashMap<String, Ack>,
    acked: &Times,
    calculated: &Times,
    posted: Option<&Times>,
) -> anyhow::Result<Vec<(String, Samples)>> {
    let Some(payments_db) = &setup.payments_db else {
        return Ok(Vec::new());
    };
    let relayed = published_by_transaction(payments_db, "transactions.created", |payload| {
        fintech_proto::payments::Transaction::decode(payload)
            .ok()
            .map(|transaction| transaction.transaction_id)
    })
    .await?;
    let tax_relayed = published_by_transaction(&setup.tax_db, "tax.calculated", |payload| {
        taxpb::TaxedTransaction::decode(payload)
            .ok()
            .map(|taxed| taxed.transaction_id)
    })
    .await?;

    let mut legs = vec![
        (acked, &relayed, "ack -> payments outbox row published"),
        (&relayed, calculated, "payments published -> tax calculated"),
        (calculated, &tax_relayed, "tax calculated -> tax outbox row published"),
    ];
    if let Some(posted) = posted {
        legs.push((&tax_relayed, posted, "tax published -> ledger entry posted"));
    }
    let hop =
        |(from, to, name): (&Times, &Times, &str)| (name.to_owned(), between(acks, from, to, "a timestamp is missing"));
    Ok(legs.into_iter().map(hop).collect())
}

/// Per measured transaction, the time from `from` to `to` (both recorded on this host's clock);
/// a transaction without one of them counts as an error `missing`.
fn between(acks: &HashMap<String, Ack>, from: &Times, to: &Times, missing: &str) -> Samples {
    let mut samples = Samples::default();
    for (transaction_id, _) in acks.iter().filter(|(_, ack)| ack.measured) {
        match (from.get(transaction_id), to.get(transaction_id)) {
            (Some(start), Some(end)) => {
                let micros = (*end - *start).num_microseconds().unwrap_or(0).max(0);
                samples.record_us(micros.unsigned_abs());
            }
            _ => samples.error(missing),
        }
    }
    samples
}

/// Reads up to 200 of the transactions back through `GetTaxedTransaction`.
async fn read_back(channel: Channel, mut transaction_ids: Vec<String>) -> Samples {
    transaction_ids.sort();
    let step = (transaction_ids.len() / 200).max(1);
    let mut client = TaxServiceClient::new(channel);
    let mut samples = Samples::default();
    for transaction_id in transaction_ids.into_iter().step_by(step) {
        let started = Instant::now();
        let answer = client
            .get_taxed_transaction(taxpb::GetTaxedTransactionRequest {
                transaction_id: transaction_id.clone(),
            })
            .await;
        match answer {
            Ok(response) if response.get_ref().taxed_transaction.is_some() => samples.record(started.elapsed()),
            Ok(_) => samples.error("GetTaxedTransaction: empty"),
            Err(status) => samples.error(format!("GetTaxedTransaction: {:?}", status.code())),
        }
    }
    samples
}
