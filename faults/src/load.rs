//! The steady load: a few clients, each drawing orders from its own seeded RNG, sending
//! `CreateOrder` then `CreateTransaction` (status SUCCEEDED, so the ledger posts a capture beside
//! the tax sale). Every command carries an idempotency key and is retried with that same key
//! until an answer comes back OK: only then is it *acknowledged*, and only acknowledged commands
//! are what the invariants expect.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_client::PaymentsServiceClient;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Mutex;

use crate::platform::Channel;

/// Euro-area countries: `EUR` is always right for tax.
const COUNTRIES: [&str; 6] = ["DE", "FR", "NL", "IT", "ES", "AT"];
/// Pause between two tries of one command.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// A command still not acknowledged after this long is given up (and reported).
const GIVE_UP: Duration = Duration::from_secs(300);

/// What the load got acknowledged, shared with the fault loop (recovery) and the checks.
#[derive(Debug, Default)]
pub(crate) struct Acknowledged {
    /// Order ids.
    pub(crate) orders: Vec<String>,
    /// Transaction ids.
    pub(crate) transactions: Vec<String>,
}

/// Counters of the load.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Tries that failed and were retried with the same key.
    pub(crate) retries: AtomicU64,
    /// Commands given up after [`GIVE_UP`].
    pub(crate) given_up: AtomicU64,
}

/// The load's shared state.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// What was acknowledged.
    pub(crate) acknowledged: Mutex<Acknowledged>,
    /// Counters.
    pub(crate) counters: Counters,
    /// Set to stop the clients (each finishes its current pair).
    pub(crate) stop: AtomicBool,
}

/// Sends `message` with `key` until it is answered OK (or [`GIVE_UP`] passed).
async fn until_ok<T, R, F, Fut>(load: &Load, key: &str, message: T, mut call: F) -> Option<R>
where
    T: Clone,
    F: FnMut(tonic::Request<T>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let started = tokio::time::Instant::now();
    loop {
        let mut request = tonic::Request::new(message.clone());
        if let Ok(value) = key.parse() {
            request.metadata_mut().insert("idempotency-key", value);
        }
        match call(request).await {
            Ok(response) => return Some(response.into_inner()),
            Err(_) if started.elapsed() > GIVE_UP => {
                load.counters.given_up.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(_) => {
                load.counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// One client: pairs until `load.stop` is set.
pub(crate) async fn client(load: Arc<Load>, channel: Channel, seed: u64, client: usize) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let payments = PaymentsServiceClient::new(channel);
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let order = pb::CreateOrderRequest {
            customer_id: format!("faults-customer-{}", rng.random_range(0..50)),
            country: COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_owned(),
            currency: "EUR".to_owned(),
            amount: rng.random_range(100..100_000),
            product_type: "standard".to_owned(),
        };
        let key = format!("faults-{seed}-{client}-{n}-order");
        let create = |request| {
            let mut payments = payments.clone();
            async move { payments.create_order(request).await }
        };
        let Some(order) = until_ok(&load, &key, order, create)
            .await
            .and_then(|response| response.order)
        else {
            continue;
        };
        load.acknowledged.lock().await.orders.push(order.order_id.clone());
        let transaction = pb::CreateTransactionRequest {
            order_id: order.order_id.clone(),
            amount: order.amount,
            currency: order.currency.clone(),
            status: pb::TransactionStatus::Succeeded as i32,
        };
        let key = format!("faults-{seed}-{client}-{n}-transaction");
        let create = |request| {
            let mut payments = payments.clone();
            async move { payments.create_transaction(request).await }
        };
        if let Some(transaction) = until_ok(&load, &key, transaction, create)
            .await
            .and_then(|response| response.transaction)
        {
            load.acknowledged
                .lock()
                .await
                .transactions
                .push(transaction.transaction_id);
        }
        // A steady, modest rate: the point is the faults, not the throughput.
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
}
