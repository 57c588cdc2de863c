//! The payments use cases: each command validates its input (`domain/`), then, inside one
//! PostgreSQL transaction run by the idempotency store, reads what it needs, builds the new state
//! and writes the business row, the outbox event and the stored answer in one statement
//! ([`write_change`]). Reads run on a pooled connection. The gRPC layer only decodes, calls these
//! and encodes; the answer of a command is its protobuf response because that is what a retry
//! with the same idempotency key gets back, byte for byte.
//!
//! `CreateOrder` and `CreateTransaction` go through the group commit ([`group`], ADR 0030) when
//! it is on: concurrent ones share a transaction, each failing alone; whatever a group cannot
//! decide runs here, one transaction per command.

pub mod group;

use fintech_platform::idempotency::{IdempotencyKey, IdempotencyStore, ResponseSlot, fingerprint};
use fintech_platform::outbox::{OutboxEvent, OutboxRow};
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::payments as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::config::GroupCommitSettings;
use crate::domain::{
    self, CreateOrder, CreateTransaction, Order, OrderChanges, PageRequest, PaymentsError, Transaction,
    TransactionStatus,
};
use crate::events::{self, Change, SOURCE, Topics};
use crate::storage;
use group::{Command, GroupCommit, Outcome};

/// The payments application: its pool, idempotency store and topics, and the group commit.
#[derive(Debug, Clone)]
pub struct PaymentsApp {
    pool: PgPool,
    idempotency: IdempotencyStore,
    topics: Topics,
    group: Option<GroupCommit>,
}

fn scope(method: &str) -> String {
    format!("/fintech.payments.v1.PaymentsService/{method}")
}

impl PaymentsApp {
    /// The application over `pool`, publishing on `topics`; with `group_commit` on, its workers
    /// start (on the current Tokio runtime).
    pub fn new(pool: PgPool, idempotency: IdempotencyStore, topics: Topics, group_commit: GroupCommitSettings) -> Self {
        let group = group_commit
            .enabled
            .then(|| GroupCommit::start(pool.clone(), idempotency.clone(), topics.clone(), group_commit));
        Self {
            pool,
            idempotency,
            topics,
            group,
        }
    }

    /// Runs a create command through the group commit when it is on, else (and when the group
    /// answers [`Outcome::Alone`]) by itself with `alone`, under the idempotency protocol either
    /// way (the Redis fast path included).
    async fn create<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        key: Option<IdempotencyKey>,
        request: &Req,
        command: Command,
        alone: impl AsyncFnOnce(&mut PgConnection, Option<ResponseSlot>) -> Result<Resp, PaymentsError>,
    ) -> Result<Resp, PaymentsError> {
        let scope = scope(method);
        let Some(group) = &self.group else {
            return self
                .idempotency
                .execute_folded(&self.pool, &scope, key, request, alone)
                .await;
        };
        let Some(key) = key else {
            return match group.submit(command, None).await {
                Outcome::Done(encoded) => decode(&encoded?),
                Outcome::Alone => {
                    self.idempotency
                        .execute_folded(&self.pool, &scope, None, request, alone)
                        .await
                }
            };
        };
        let fingerprint = fingerprint(request);
        let claim = group::ClaimOf {
            scope: scope.clone(),
            key: key.clone(),
            fingerprint: fingerprint.clone(),
        };
        self.idempotency
            .guarded(&scope, &key, &fingerprint, async || {
                match group.submit(command, Some(claim)).await {
                    Outcome::Done(encoded) => {
                        let encoded = encoded?;
                        Ok((decode(&encoded)?, encoded))
                    }
                    Outcome::Alone => {
                        self.idempotency
                            .execute_folded_in_postgres(&self.pool, &scope, &key, &fingerprint, alone)
                            .await
                    }
                }
            })
            .await
    }

    async fn read<T>(
        &self,
        body: impl AsyncFnOnce(&mut PgConnection) -> Result<T, PaymentsError>,
    ) -> Result<T, PaymentsError> {
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        body(&mut conn).await
    }

    /// Creates an order (version 1) and publishes it on `orders.created`.
    pub async fn create_order(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::CreateOrderRequest,
    ) -> Result<pb::CreateOrderResponse, PaymentsError> {
        let command = CreateOrder {
            customer_id: request.customer_id.clone(),
            country: request.country.clone(),
            currency: request.currency.clone(),
            amount: request.amount,
            product_type: request.product_type.clone(),
        };
        let order = command.into_order(domain::now())?;
        let response = self
            .create(
                "CreateOrder",
                key,
                request,
                Command::CreateOrder(order.clone()),
                async |conn, slot| insert_order(&self.topics, conn, slot, &order, TraceHeaders::current()).await,
            )
            .await?;
        tracing::info!(
            order_id = response.order.as_ref().map(|order| order.order_id.as_str()),
            "order created"
        );
        Ok(response)
    }

    /// Changes an order at the version the caller read and publishes it on `orders.updated`.
    /// `owner`: the customer a customer token is limited to; another customer's order is
    /// NOT_FOUND, as if it did not exist.
    pub async fn update_order(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::UpdateOrderRequest,
        owner: Option<&str>,
    ) -> Result<pb::UpdateOrderResponse, PaymentsError> {
        let changes = OrderChanges::parse(
            &request.order_id,
            request.expected_version,
            request.country.clone(),
            request.amount,
            request.product_type.clone(),
        )?;
        self.idempotency
            .execute_folded(&self.pool, &scope("UpdateOrder"), key, request, async |conn, slot| {
                let current = storage::get_order(conn, changes.order_id, true)
                    .await?
                    .filter(|order| owns(owner, &order.customer_id))
                    .ok_or_else(|| PaymentsError::OrderNotFound(request.order_id.clone()))?;
                let order = changes.apply(&current, domain::now())?;
                let response = pb::UpdateOrderResponse {
                    order: Some(pb::Order::from(&order)),
                };
                let event = events::order_event(&self.topics, &order, Change::Updated);
                write_change(conn, slot, &event, response, async |conn, effects| {
                    storage::update_order(conn, &order, effects).await
                })
                .await
            })
            .await
    }

    /// The order `order_id`.
    pub async fn get_order(&self, order_id: Uuid) -> Result<Order, PaymentsError> {
        self.read(async |conn| {
            storage::get_order(conn, order_id, false)
                .await?
                .ok_or_else(|| PaymentsError::OrderNotFound(order_id.to_string()))
        })
        .await
    }

    /// A page of a customer's orders, newest first, and the cursor of the next page.
    pub async fn list_orders(
        &self,
        customer_id: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Order>, Option<domain::Cursor>), PaymentsError> {
        self.read(async |conn| Ok(storage::list_orders(conn, customer_id, page).await?))
            .await
    }

    /// Creates a transaction on its order (locked, so the event follows any concurrent order
    /// update) and publishes it on `transactions.created`.
    /// `owner`: the customer a customer token is limited to; another customer's order is
    /// NOT_FOUND.
    pub async fn create_transaction(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::CreateTransactionRequest,
        status: Result<Option<TransactionStatus>, i32>,
        owner: Option<&str>,
    ) -> Result<pb::CreateTransactionResponse, PaymentsError> {
        let command = CreateTransaction::parse(&request.order_id, request.amount, &request.currency, status)?;
        let grouped = Command::CreateTransaction {
            command: command.clone(),
            order_id: request.order_id.clone(),
            owner: owner.map(str::to_owned),
        };
        let response = self
            .create("CreateTransaction", key, request, grouped, async |conn, slot| {
                let trace = TraceHeaders::current();
                insert_transaction(&self.topics, conn, slot, &command, &request.order_id, owner, trace).await
            })
            .await?;
        tracing::info!(
            transaction_id = response
                .transaction
                .as_ref()
                .map(|transaction| transaction.transaction_id.as_str()),
            "transaction created"
        );
        Ok(response)
    }

    /// Moves a transaction to `next` at the version the caller read and publishes it on
    /// `transactions.updated`.
    pub async fn update_transaction_status(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::UpdateTransactionStatusRequest,
        transaction_id: Uuid,
        next: TransactionStatus,
    ) -> Result<pb::UpdateTransactionStatusResponse, PaymentsError> {
        self.idempotency
            .execute_folded(
                &self.pool,
                &scope("UpdateTransactionStatus"),
                key,
                request,
                async |conn, slot| {
                    let current = storage::get_transaction(conn, transaction_id, true)
                        .await?
                        .ok_or_else(|| PaymentsError::TransactionNotFound(request.transaction_id.clone()))?;
                    let transaction = domain::change_status(&current, request.expected_version, next, domain::now())?;
                    let response = pb::UpdateTransactionStatusResponse {
                        transaction: Some(pb::Transaction::from(&transaction)),
                    };
                    let event = events::transaction_event(&self.topics, &transaction, Change::Updated);
                    write_change(conn, slot, &event, response, async |conn, effects| {
                        storage::update_transaction(conn, &transaction, effects).await
                    })
                    .await
                },
            )
            .await
    }

    /// The transaction `transaction_id`.
    pub async fn get_transaction(&self, transaction_id: Uuid) -> Result<Transaction, PaymentsError> {
        self.read(async |conn| {
            storage::get_transaction(conn, transaction_id, false)
                .await?
                .ok_or_else(|| PaymentsError::TransactionNotFound(transaction_id.to_string()))
        })
        .await
    }

    /// A page of an order's transactions, oldest first, and the cursor of the next page.
    pub async fn list_transactions(
        &self,
        order_id: Uuid,
        page: &PageRequest,
    ) -> Result<(Vec<Transaction>, Option<domain::Cursor>), PaymentsError> {
        self.read(async |conn| Ok(storage::list_transactions(conn, order_id, page).await?))
            .await
    }
}

/// Whether a caller limited to customer `owner` (`None`: not limited) may see data of
/// `customer_id`.
pub fn owns(owner: Option<&str>, customer_id: &str) -> bool {
    owner.is_none_or(|owner| owner == customer_id)
}

/// A response a group committed (or replayed), decoded.
fn decode<Resp: prost::Message + Default>(encoded: &[u8]) -> Result<Resp, PaymentsError> {
    Resp::decode(encoded).map_err(|error| PaymentsError::Internal(anyhow::Error::from(error).context("group response")))
}

/// CreateOrder's write in the open transaction `conn` (the single path: its own transaction, or
/// a group of one): the order, its event (with the request's `trace`) and the stored response.
pub(crate) async fn insert_order(
    topics: &Topics,
    conn: &mut PgConnection,
    slot: Option<ResponseSlot>,
    order: &Order,
    trace: TraceHeaders,
) -> Result<pb::CreateOrderResponse, PaymentsError> {
    let response = pb::CreateOrderResponse {
        order: Some(pb::Order::from(order)),
    };
    let event = events::order_event(topics, order, Change::Created);
    write_row(
        conn,
        slot,
        OutboxRow::traced(SOURCE, &event, trace),
        response,
        async |conn, effects| storage::insert_order(conn, order, effects).await,
    )
    .await
}

/// CreateTransaction's write in the open transaction `conn` (the single path): locks the order,
/// checks it (`owner`: the customer a customer token is limited to; `order_id` as sent, for
/// NOT_FOUND), writes the transaction, its event (with `trace`) and the stored response.
pub(crate) async fn insert_transaction(
    topics: &Topics,
    conn: &mut PgConnection,
    slot: Option<ResponseSlot>,
    command: &CreateTransaction,
    order_id: &str,
    owner: Option<&str>,
    trace: TraceHeaders,
) -> Result<pb::CreateTransactionResponse, PaymentsError> {
    let order = storage::get_order(conn, command.order_id, true)
        .await?
        .filter(|order| owns(owner, &order.customer_id))
        .ok_or_else(|| PaymentsError::OrderNotFound(order_id.to_owned()))?;
    let transaction = command.clone().on_order(&order, domain::now())?;
    let response = pb::CreateTransactionResponse {
        transaction: Some(pb::Transaction::from(&transaction)),
    };
    let event = events::transaction_event(topics, &transaction, Change::Created);
    write_row(
        conn,
        slot,
        OutboxRow::traced(SOURCE, &event, trace),
        response,
        async |conn, effects| storage::insert_transaction(conn, &transaction, effects).await,
    )
    .await
}

/// Writes a command's change with `write`: its rows, the outbox row of `event` and (with a key)
/// the encoded `response`, in one statement ([`storage::Effects`]); returns `response`.
async fn write_change<R: prost::Message>(
    conn: &mut PgConnection,
    slot: Option<ResponseSlot>,
    event: &OutboxEvent,
    response: R,
    write: impl AsyncFnOnce(&mut PgConnection, &storage::Effects<'_>) -> anyhow::Result<()>,
) -> Result<R, PaymentsError> {
    write_row(conn, slot, OutboxRow::new(SOURCE, event), response, write).await
}

/// [`write_change`] with the outbox row given (its trace context captured elsewhere).
async fn write_row<R: prost::Message>(
    conn: &mut PgConnection,
    slot: Option<ResponseSlot>,
    outbox: OutboxRow<'_>,
    response: R,
    write: impl AsyncFnOnce(&mut PgConnection, &storage::Effects<'_>) -> anyhow::Result<()>,
) -> Result<R, PaymentsError> {
    let encoded = response.encode_to_vec();
    let effects = storage::Effects {
        outbox,
        response: slot.as_ref().map(|slot| (slot, encoded.as_slice())),
    };
    write(conn, &effects).await?;
    Ok(response)
}
