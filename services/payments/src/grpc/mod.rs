//! `fintech.payments.v1.PaymentsService`: decodes requests (ids, paging, the idempotency key),
//! calls [`PaymentsApp`], encodes the answer. Errors become statuses in one place ([`status`]).

mod status;

use fintech_platform::Violations;
use fintech_platform::idempotency::key_from_request;
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_server::PaymentsService;
use tonic::{Request, Response, Status};

use crate::app::PaymentsApp;
use crate::domain::{self, PaymentsError};
use crate::proto::status_from_wire;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct PaymentsGrpc {
    app: PaymentsApp,
}

impl PaymentsGrpc {
    /// The service over `app`.
    pub fn new(app: PaymentsApp) -> Self {
        Self { app }
    }
}

fn invalid(field: &str, description: impl Into<String>) -> Status {
    Status::from(PaymentsError::Invalid(Violations::single(field, description)))
}

#[tonic::async_trait]
impl PaymentsService for PaymentsGrpc {
    #[tracing::instrument(skip_all)]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let key = key_from_request(&request)?;
        Ok(Response::new(self.app.create_order(key, request.get_ref()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn update_order(
        &self,
        request: Request<pb::UpdateOrderRequest>,
    ) -> Result<Response<pb::UpdateOrderResponse>, Status> {
        let key = key_from_request(&request)?;
        Ok(Response::new(self.app.update_order(key, request.get_ref()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::GetOrderResponse>, Status> {
        let order_id = domain::require_id("order_id", &request.get_ref().order_id)?;
        let order = self.app.get_order(order_id).await?;
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
            return Err(invalid("customer_id", "is required"));
        }
        let page = domain::page(request.page_size, &request.page_token)?;
        let (orders, next) = self.app.list_orders(&request.customer_id, &page).await?;
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
        let key = key_from_request(&request)?;
        let status = status_from_wire(request.get_ref().status);
        Ok(Response::new(
            self.app.create_transaction(key, request.get_ref(), status).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn update_transaction_status(
        &self,
        request: Request<pb::UpdateTransactionStatusRequest>,
    ) -> Result<Response<pb::UpdateTransactionStatusResponse>, Status> {
        let key = key_from_request(&request)?;
        let transaction_id = domain::require_id("transaction_id", &request.get_ref().transaction_id)?;
        let next = match status_from_wire(request.get_ref().status) {
            Ok(Some(status)) => status,
            Ok(None) => return Err(invalid("status", "is required")),
            Err(raw) => return Err(invalid("status", format!("unknown status value {raw}"))),
        };
        Ok(Response::new(
            self.app
                .update_transaction_status(key, request.get_ref(), transaction_id, next)
                .await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let transaction_id = domain::require_id("transaction_id", &request.get_ref().transaction_id)?;
        let transaction = self.app.get_transaction(transaction_id).await?;
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
        let order_id = domain::require_id("order_id", &request.order_id)?;
        let page = domain::page(request.page_size, &request.page_token)?;
        let (transactions, next) = self.app.list_transactions(order_id, &page).await?;
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: transactions.iter().map(pb::Transaction::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }
}
