//! Load on payments through the generated gRPC client: `CreateOrder` then `CreateTransaction` for
//! that order, each with its own `idempotency-key`, as a client paying for something does.
//!
//! [`closed_loop`] runs N clients, each on its own HTTP/2 connection (throughput at a given
//! concurrency); [`Pair::send`] is one pair, also sent by the open-loop end-to-end scenario.

use std::time::{Duration, Instant};

use crate::load::Channel;
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;

use crate::load::{self, ClosedLoopRun, Failure, connect, with_key};

/// Countries of the generated orders (euro area, so `EUR` is always right for tax).
const COUNTRIES: [&str; 6] = ["DE", "FR", "NL", "IT", "ES", "AT"];

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
    /// Whether the order was created before the failure (a commit that counts).
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

    /// `CreateOrder` then `CreateTransaction` for the order's whole amount: the `n`-th pair of
    /// client `client`.
    pub async fn send(&mut self, client: usize, n: u64) -> Result<PairOutcome, PairError> {
        let failed = |call, order_created| {
            move |status| PairError {
                call,
                status,
                order_created,
            }
        };
        let missing = |call, what| failed(call, true)(tonic::Status::internal(format!("response without {what}")));
        let started = Instant::now();
        let order = pb::CreateOrderRequest {
            customer_id: format!("bench-customer-{client}"),
            country: COUNTRIES[(n as usize + client) % COUNTRIES.len()].to_owned(),
            currency: "EUR".to_owned(),
            amount: 1_000 + (n as i64 * 7_919 + client as i64 * 104_729) % 99_000,
            product_type: "standard".to_owned(),
        };
        let order = self
            .client
            .create_order(with_key(order, &format!("{}-{n}-o", self.key_prefix)))
            .await
            .map_err(failed("CreateOrder", false))?
            .into_inner()
            .order
            .ok_or_else(|| missing("CreateOrder", "an order"))?;
        let order_latency = started.elapsed();
        let started = Instant::now();
        let transaction = pb::CreateTransactionRequest {
            order_id: order.order_id.clone(),
            amount: order.amount,
            currency: order.currency.clone(),
            status: pb::TransactionStatus::Pending as i32,
        };
        let transaction = self
            .client
            .create_transaction(with_key(transaction, &format!("{}-{n}-t", self.key_prefix)))
            .await
            .map_err(failed("CreateTransaction", true))?
            .into_inner()
            .transaction
            .ok_or_else(|| missing("CreateTransaction", "a transaction"))?;
        Ok(PairOutcome {
            order,
            order_latency,
            transaction_latency: started.elapsed(),
            transaction,
        })
    }
}

/// `concurrency` clients send pairs back to back for `warmup` (not measured) plus `duration`;
/// the run's samples are whole pairs, `CreateOrder` and `CreateTransaction`, two commits a pair.
pub async fn closed_loop(
    address: &str,
    key_prefix: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    label: &str,
) -> anyhow::Result<ClosedLoopRun> {
    let mut clients = Vec::with_capacity(concurrency);
    for client in 0..concurrency {
        let pair = Pair::new(connect(address).await?, format!("{key_prefix}-{client}"));
        clients.push(move |n| {
            let mut pair = pair.clone();
            async move {
                match pair.send(client, n).await {
                    Ok(outcome) => Ok((vec![outcome.order_latency, outcome.transaction_latency], 2)),
                    Err(error) => Err(Failure {
                        kind: error.kind(),
                        commits: u64::from(error.order_created),
                    }),
                }
            }
        });
    }
    load::closed_loop(clients, 2, warmup, duration, label).await
}
