//! Load on payments through the generated gRPC client: `CreateOrder` then `CreateTransaction` for
//! that order, each with its own `idempotency-key`, as a client paying for something does.
//!
//! [`closed_loop`] runs N clients, each with its own HTTP/2 connection, each sending its next pair
//! as soon as the previous one was answered (throughput at a given concurrency).
//! [`Pair::send`] is one such pair, also used by the open-loop end-to-end scenario.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use crate::progress::Progress;
use crate::stats::{Live, Samples};

/// Countries of the generated orders (euro area, so `EUR` is always right for tax).
const COUNTRIES: [&str; 6] = ["DE", "FR", "NL", "IT", "ES", "AT"];

/// A connection to payments (one HTTP/2 connection per channel).
pub async fn connect(address: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// The order a generated client creates (`n`-th of client `client`).
pub fn order_request(client: usize, n: u64) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        customer_id: format!("bench-customer-{client}"),
        country: COUNTRIES[(n as usize + client) % COUNTRIES.len()].to_owned(),
        currency: "EUR".to_owned(),
        amount: 1_000 + (n as i64 * 7_919 + client as i64 * 104_729) % 99_000,
        product_type: "standard".to_owned(),
    }
}

/// The pending transaction for `order`, for its whole amount.
pub fn transaction_request(order: &pb::Order) -> pb::CreateTransactionRequest {
    pb::CreateTransactionRequest {
        order_id: order.order_id.clone(),
        amount: order.amount,
        currency: order.currency.clone(),
        status: pb::TransactionStatus::Pending as i32,
    }
}

fn with_key<T>(message: T, key: String) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = key.parse() {
        request.metadata_mut().insert("idempotency-key", value);
    }
    request
}

/// What one pair produced.
#[derive(Debug, Clone)]
pub struct PairOutcome {
    /// Latency of `CreateOrder`.
    pub order_latency: Duration,
    /// Latency of `CreateTransaction`.
    pub transaction_latency: Duration,
    /// The created order.
    pub order: pb::Order,
    /// The created transaction.
    pub transaction: pb::Transaction,
}

/// Which call of a pair failed, and how.
#[derive(Debug, Clone)]
pub struct PairError {
    /// `CreateOrder` or `CreateTransaction`.
    pub call: &'static str,
    /// The gRPC status.
    pub status: tonic::Status,
    /// Whether the order was created before the failure.
    pub order_created: bool,
}

impl PairError {
    /// A stable label for the report (`CreateTransaction: Unavailable`).
    pub fn kind(&self) -> String {
        format!("{}: {:?}", self.call, self.status.code())
    }
}

/// One client's pair of calls.
#[derive(Debug, Clone)]
pub struct Pair {
    client: PaymentsServiceClient<Channel>,
    key_prefix: String,
}

impl Pair {
    /// Pairs sent on `channel`, with idempotency keys starting with `key_prefix` (unique per client
    /// and run).
    pub fn new(channel: Channel, key_prefix: String) -> Self {
        Self {
            client: PaymentsServiceClient::new(channel),
            key_prefix,
        }
    }

    /// `CreateOrder` then `CreateTransaction`.
    pub async fn send(&mut self, client: usize, n: u64) -> Result<PairOutcome, PairError> {
        let started = Instant::now();
        let order = self
            .client
            .create_order(with_key(order_request(client, n), format!("{}-{n}-o", self.key_prefix)))
            .await
            .map_err(|status| PairError {
                call: "CreateOrder",
                status,
                order_created: false,
            })?
            .into_inner()
            .order
            .ok_or_else(|| PairError {
                call: "CreateOrder",
                status: tonic::Status::internal("response without an order"),
                order_created: true,
            })?;
        let order_latency = started.elapsed();
        let started = Instant::now();
        let transaction = self
            .client
            .create_transaction(with_key(
                transaction_request(&order),
                format!("{}-{n}-t", self.key_prefix),
            ))
            .await
            .map_err(|status| PairError {
                call: "CreateTransaction",
                status,
                order_created: true,
            })?
            .into_inner()
            .transaction
            .ok_or_else(|| PairError {
                call: "CreateTransaction",
                status: tonic::Status::internal("response without a transaction"),
                order_created: true,
            })?;
        Ok(PairOutcome {
            order,
            order_latency,
            transaction_latency: started.elapsed(),
            transaction,
        })
    }
}

/// Result of a closed-loop run.
#[derive(Debug, Default)]
pub struct ClosedLoopRun {
    /// Latency of whole pairs.
    pub pairs: Samples,
    /// Latency of `CreateOrder` alone.
    pub orders: Samples,
    /// Latency of `CreateTransaction` alone.
    pub transactions: Samples,
    /// Commits the service acknowledged (orders + transactions).
    pub commits: u64,
    /// Measured time (after the warm-up).
    pub elapsed: Duration,
}

/// `concurrency` clients send pairs back to back for `warmup` (not measured) plus `duration`.
pub async fn closed_loop(
    address: &str,
    key_prefix: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    label: &str,
) -> anyhow::Result<ClosedLoopRun> {
    let mut pairs = Vec::with_capacity(concurrency);
    for client in 0..concurrency {
        pairs.push(Pair::new(connect(address).await?, format!("{key_prefix}-{client}")));
    }
    let live = Arc::new(Live::default());
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let deadline = measure_from + duration;
    let _progress = Progress::start(label, warmup + duration, Arc::clone(&live), None);
    let workers: Vec<_> = pairs
        .into_iter()
        .enumerate()
        .map(|(client, mut pair)| {
            let live = Arc::clone(&live);
            tokio::spawn(async move {
                let mut run = ClosedLoopRun::default();
                let mut n = 0u64;
                loop {
                    let started = Instant::now();
                    if started >= deadline {
                        break;
                    }
                    let measured = started >= measure_from;
                    let outcome = pair.send(client, n).await;
                    n += 1;
                    match outcome {
                        Ok(outcome) => {
                            live.ok();
                            if measured {
                                run.pairs.record(started.elapsed());
                                run.orders.record(outcome.order_latency);
                                run.transactions.record(outcome.transaction_latency);
                                run.commits += 2;
                            }
                        }
                        Err(error) => {
                            live.failed();
                            if measured {
                                run.pairs.error(error.kind());
                                run.commits += u64::from(error.order_created);
                            }
                            // A failing service must not be hammered in a tight loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                run
            })
        })
        .collect();
    let mut total = ClosedLoopRun::default();
    for worker in workers {
        let run = worker.await?;
        total.pairs.merge(run.pairs);
        total.orders.merge(run.orders);
        total.transactions.merge(run.transactions);
        total.commits += run.commits;
    }
    total.elapsed = measure_from.elapsed().max(Duration::from_millis(1));
    Ok(total)
}
