//! `fintech.payments.v1.PaymentsService`: decodes requests, runs the domain inside one
//! PostgreSQL transaction (business row + outbox event + idempotency key), encodes the answer.
//! The answer is built before anything is written, so the business row, the outbox row and the
//! stored answer go to PostgreSQL in one statement ([`write_change`]).

mod status;

use fintech_platform::Violations;
use fintech_platform::grpc::invalid_argument;
use fintech_platform::idempotency::{IdempotencyStore, ResponseSlot, key_from_metadata};
use fintech_platform::outbox::{OutboxEvent, OutboxRow};
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_server::PaymentsService;
use sqlx::{PgConnection, PgPool};
use tonic::{Request, Response, Status};

use crate::domain::{self, CreateOrder, CreateTransaction, OrderChanges, PaymentsError};
use crate::events::{Change, SOURCE, Topics};
use crate::proto::status_from_wire;
use crate::storage;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct PaymentsGrpc {
    pool: PgPool,
    idempotency: IdempotencyStore,
    topics: Topics,
}

impl PaymentsGrpc {
    /// A service over `pool` publishing on `topics`.
    pub fn new(pool: PgPool, idempotency: IdempotencyStore, topics: Topics) -> Self {
        Self {
            pool,
            idempotency,
            topics,
        }
    }

    async fn read<T>(
        &self,
        body: impl AsyncFnOnce(&mut PgConnection) -> Result<T, PaymentsError>,
    ) -> Result<T, Status> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|error| Status::from(PaymentsError::Internal(error.into())))?;
        body(&mut conn).await.map_err(Status::from)
    }
}

fn method(name: &str) -> String {
    format!("/fintech.payments.v1.PaymentsService/{name}")
}

#[tonic::async_trait]
impl PaymentsService for PaymentsGrpc {
    #[tracing::instrument(skip_all)]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let key = key_from_metadata(request.metadata())?;
        let request = request.into_inner();
        let command = CreateOrder {
            customer_id: request.customer_id.clone(),
            country: request.country.clone(),
            currency: request.currency.clone(),
            amount: request.amount,
            product_type: request.product_type.clone(),
        };
        let order = command.into_order(domain::now()).map_err(Status::from)?;
        let response = self
            .idempotency
            .execute_folded(&self.pool, &method("CreateOrder"), key, &request, async |conn, slot| {
                let response = pb::CreateOrderResponse {
                    order: Some(pb::Order::from(&order)),
                };
                let event = self.topics.order_event(&order, Change::Created);
                write_change(conn, slot, &event, response, async |conn, effects| {
                    storage::insert_order(conn, &order, effects).await
                })
                .await
            })
            .await?;
        tracing::info!(
            order_id = response.order.as_ref().map(|order| order.order_id.as_str()),
            "order created"
        );
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn update_order(
        &self,
        request: Request<pb::UpdateOrderRequest>,
    ) -> Result<Response<pb::UpdateOrderResponse>, Status> {
        let key = key_from_metadata(request.metadata())?;
        let request = request.into_inner();
        let changes = OrderChanges::parse(
            &request.order_id,
            request.expected_version,
            request.country.clone(),
            request.amount,
            request.product_type.clone(),
        )
        .map_err(Status::from)?;
        let response = self
            .idempotency
            .execute_folded(&self.pool, &method("UpdateOrder"), key, &request, async |conn, slot| {
                let current = storage::get_order(conn, changes.order_id, true)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| Status::from(PaymentsError::OrderNotFound(request.order_id.clone())))?;
                let order = changes.apply(&current, domain::now()).map_err(Status::from)?;
                let response = pb::UpdateOrderResponse {
                    order: Some(pb::Order::from(&order)),
                };
                let event = self.topics.order_event(&order, Change::Updated);
                write_change(conn, slot, &event, response, async |conn, effects| {
                    storage::update_order(conn, &order, effects).await
                })
                .await
            })
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::GetOrderResponse>, Status> {
        let request = request.into_inner();
        let order_id = domain::require_id("order_id", &request.order_id).map_err(Status::from)?;
        let order = self
            .read(async |conn| {
                storage::get_order(conn, order_id, false)
                    .await?
                    .ok_or_else(|| PaymentsError::OrderNotFound(request.order_id.clone()))
            })
            .await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(pb::Order::from(&order)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let request = request.into_inner();
        if request.customer_id.is_empty() {
            return Err(invalid_argument(&Violations::single("customer_id", "is required")));
        }
        let page = domain::page(request.page_size, &request.page_token).map_err(Status::from)?;
        let (orders, next) = self
            .read(async |conn| Ok(storage::list_orders(conn, &request.customer_id, &page).await?))
            .await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(pb::Order::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_transaction(
        &self,
        request: Request<pb::CreateTransactionRequest>,
    ) -> Result<Response<pb::CreateTransactionResponse>, Status> {
        let key = key_from_metadata(request.metadata())?;
        let request = request.into_inner();
        let command = CreateTransaction::parse(
            &request.order_id,
            request.amount,
            &request.currency,
            status_from_wire(request.status),
        )
        .map_err(Status::from)?;
        let response = self
            .idempotency
            .execute_folded(
                &self.pool,
                &method("CreateTransaction"),
                key,
                &request,
                async |conn, slot| {
                    // The row lock orders this transaction's event after any concurrent order update.
                    let order = storage::get_order(conn, command.order_id, true)
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| Status::from(PaymentsError::OrderNotFound(request.order_id.clone())))?;
                    let transaction = command.on_order(&order, domain::now()).map_err(Status::from)?;
                    let response = pb::CreateTransactionResponse {
                        transaction: Some(pb::Transaction::from(&transaction)),
                    };
                    let event = self.topics.transaction_event(&transaction, Change::Created);
                    write_change(conn, slot, &event, response, async |conn, effects| {
                        storage::insert_transaction(conn, &transaction, effects).await
                    })
                    .await
                },
            )
            .await?;
        tracing::info!(
            transaction_id = response
                .transaction
                .as_ref()
                .map(|transaction| transaction.transaction_id.as_str()),
            "transaction created"
        );
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn update_transaction_status(
        &self,
        request: Request<pb::UpdateTransactionStatusRequest>,
    ) -> Result<Response<pb::UpdateTransactionStatusResponse>, Status> {
        let key = key_from_metadata(request.metadata())?;
        let request = request.into_inner();
        let transaction_id = domain::require_id("transaction_id", &request.transaction_id).map_err(Status::from)?;
        let next = match status_from_wire(request.status) {
            Ok(Some(status)) => status,
            Ok(None) => {
                return Err(invalid_argument(&Violations::single("status", "is required")));
            }
            Err(raw) => {
                return Err(invalid_argument(&Violations::single(
                    "status",
                    format!("unknown status value {raw}"),
                )));
            }
        };
        let response = self
            .idempotency
            .execute_folded(
                &self.pool,
                &method("UpdateTransactionStatus"),
                key,
                &request,
                async |conn, slot| {
                    let current = storage::get_transaction(conn, transaction_id, true)
                        .await
                        .map_err(internal)?
                        .ok_or_else(|| {
                            Status::from(PaymentsError::TransactionNotFound(request.transaction_id.clone()))
                        })?;
                    let transaction = domain::change_status(&current, request.expected_version, next, domain::now())
                        .map_err(Status::from)?;
                    let response = pb::UpdateTransactionStatusResponse {
                        transaction: Some(pb::Transaction::from(&transaction)),
                    };
                    let event = self.topics.transaction_event(&transaction, Change::Updated);
                    write_change(conn, slot, &event, response, async |conn, effects| {
                        storage::update_transaction(conn, &transaction, effects).await
                    })
                    .await
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let request = request.into_inner();
        let transaction_id = domain::require_id("transaction_id", &request.transaction_id).map_err(Status::from)?;
        let transaction = self
            .read(async |conn| {
                storage::get_transaction(conn, transaction_id, false)
                    .await?
                    .ok_or_else(|| PaymentsError::TransactionNotFound(request.transaction_id.clone()))
            })
            .await?;
        Ok(Response::new(pb::GetTransactionResponse {
            transaction: Some(pb::Transaction::from(&transaction)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let request = request.into_inner();
        let order_id = domain::require_id("order_id", &request.order_id).map_err(Status::from)?;
        let page = domain::page(request.page_size, &request.page_token).map_err(Status::from)?;
        let (transactions, next) = self
            .read(async |conn| Ok(storage::list_transactions(conn, order_id, &page).await?))
            .await?;
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: transactions.iter().map(pb::Transaction::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }
}

/// Writes a command's change with `write`: its rows, the outbox row of `event` and (with a key)
/// the encoded `response`, in one statement ([`storage::Effects`]); returns `response`.
async fn write_change<R: prost::Message>(
    conn: &mut PgConnection,
    slot: Option<ResponseSlot>,
    event: &OutboxEvent,
    response: R,
    write: impl AsyncFnOnce(&mut PgConnection, &storage::Effects<'_>) -> anyhow::Result<()>,
) -> Result<R, Status> {
    let encoded = response.encode_to_vec();
    let effects = storage::Effects {
        outbox: OutboxRow::new(SOURCE, event),
        response: slot.as_ref().map(|slot| (slot, encoded.as_slice())),
    };
    write(conn, &effects).await.map_err(internal)?;
    Ok(response)
}

fn internal(error: anyhow::Error) -> Status {
    Status::from(PaymentsError::Internal(error))
}
