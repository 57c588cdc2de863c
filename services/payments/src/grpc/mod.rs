//! `fintech.payments.v1.PaymentsService`: decodes requests (ids, paging, the idempotency key),
//! calls [`PaymentsApp`], encodes the answer. Errors become statuses in one place ([`status`]).

mod status;

use fintech_platform::Violations;
use fintech_platform::idempotency::key_from_request;
use fintech_proto::payments as pb;
use fintech_proto::payments::payments_service_server::PaymentsService;
use tonic::{Request, Response, Status};

use fintech_platform::auth::Caller;

use crate::app::{PaymentsApp, owns};
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
        if !owns(Caller::customer(&request), &request.get_ref().customer_id) {
            return Err(
                PaymentsError::Forbidden("a customer token creates orders only for its own customer_id").into(),
            );
        }
        Ok(Response::new(self.app.create_order(key, request.get_ref()).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn update_order(
        &self,
        request: Request<pb::UpdateOrderRequest>,
    ) -> Result<Response<pb::UpdateOrderResponse>, Status> {
        let key = key_from_request(&request)?;
        let owner = Caller::customer(&request);
        Ok(Response::new(
            self.app.update_order(key, request.get_ref(), owner).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::GetOrderResponse>, Status> {
        let order_id = domain::require_id("order_id", &request.get_ref().order_id)?;
        let order = self.app.get_order(order_id).await?;
        // Another customer's order looks exactly like one that does not exist.
        if !owns(Caller::customer(&request), &order.customer_id) {
            return Err(PaymentsError::OrderNotFound(order_id.to_string()).into());
        }
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(pb::Order::from(&order)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let owner = Caller::customer(&request).map(str::to_owned);
        let request = request.into_inner();
        if request.customer_id.is_empty() {
            return Err(invalid("customer_id", "is required"));
        }
        if !owns(owner.as_deref(), &request.customer_id) {
            return Err(PaymentsError::Forbidden("a customer token lists only its own orders").into());
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
        let owner = Caller::customer(&request);
        // A customer starts a payment; only the payment system (payments.write without a
        // customer) records its outcome, so a customer cannot create one that already succeeded.
        if owner.is_some() && !matches!(status, Ok(None | Some(domain::TransactionStatus::Pending))) {
            return Err(PaymentsError::Forbidden("a customer token creates only PENDING transactions").into());
        }
        Ok(Response::new(
            self.app
                .create_transaction(key, request.get_ref(), status, owner)
                .await?,
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
        if !owns(Caller::customer(&request), &transaction.customer_id) {
            return Err(PaymentsError::TransactionNotFound(transaction_id.to_string()).into());
        }
        Ok(Response::new(pb::GetTransactionResponse {
            transaction: Some(pb::Transaction::from(&transaction)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let owner = Caller::customer(&request).map(str::to_owned);
        let request = request.into_inner();
        let order_id = domain::require_id("order_id", &request.order_id)?;
        let page = domain::page(request.page_size, &request.page_token)?;
        if let Some(owner) = &owner {
            // A customer lists only the transactions of its own orders; another customer's order
            // and a missing one are both NOT_FOUND.
            match self.app.get_order(order_id).await {
                Ok(order) if order.customer_id == *owner => {}
                Ok(_) | Err(PaymentsError::OrderNotFound(_)) => {
                    return Err(PaymentsError::OrderNotFound(order_id.to_string()).into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        let (transactions, next) = self.app.list_transactions(order_id, &page).await?;
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: transactions.iter().map(pb::Transaction::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }
}
