//! `fintech.tax.v1.TaxService`: reads of results and failures, a stateless quote, and the
//! operator's retry of a failed transaction.

mod status;

use fintech_proto::tax as pb;
use fintech_proto::tax::tax_service_server::TaxService;
use fintech_types::Violations;
use fintech_types::fields::{check_product_type, parse_country, parse_currency, require_id};
use fintech_types::paging::PageRequest;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use fintech_platform::auth::Caller;

use crate::app::{Processor, Retried};
use crate::domain::TaxError;
use crate::domain::vat::VatError;
use crate::proto::from_timestamp;
use crate::storage::{self, TaxedFilter};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct TaxGrpc {
    pool: PgPool,
    processor: Processor,
}

impl TaxGrpc {
    /// A service over `pool`.
    pub fn new(pool: PgPool, processor: Processor) -> Self {
        Self { pool, processor }
    }

    async fn connection(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Status> {
        self.pool
            .acquire()
            .await
            .map_err(|error| Status::from(TaxError::Internal(error.into())))
    }
}

/// Longest customer id a filter accepts (the payments rule for customer ids).
const MAX_CUSTOMER_ID_LEN: usize = 64;

fn internal(error: anyhow::Error) -> Status {
    Status::from(TaxError::Internal(error))
}

fn violation(field: &str, description: impl Into<String>) -> Status {
    Status::from(TaxError::Invalid(Violations::single(field, description)))
}

fn parse_uuid(field: &str, value: &str) -> Result<uuid::Uuid, Status> {
    require_id(field, value).map_err(|violations| Status::from(TaxError::Invalid(violations)))
}

fn page(page_size: i32, page_token: &str) -> Result<PageRequest, Status> {
    PageRequest::parse(page_size, page_token).map_err(|violations| Status::from(TaxError::Invalid(violations)))
}

fn not_found(resource: &'static str, id: &str) -> Status {
    Status::from(TaxError::NotFound {
        resource,
        id: id.to_owned(),
    })
}

#[tonic::async_trait]
impl TaxService for TaxGrpc {
    #[tracing::instrument(skip_all)]
    async fn get_taxed_transaction(
        &self,
        request: Request<pb::GetTaxedTransactionRequest>,
    ) -> Result<Response<pb::GetTaxedTransactionResponse>, Status> {
        let owner = Caller::customer(&request).map(str::to_owned);
        let request = request.into_inner();
        let id = parse_uuid("transaction_id", &request.transaction_id)?;
        let mut conn = self.connection().await?;
        // Another customer's result looks exactly like one that does not exist.
        let taxed = storage::get_taxed(&mut conn, id)
            .await
            .map_err(internal)?
            .filter(|taxed| owner.as_ref().is_none_or(|owner| *owner == taxed.customer_id))
            .ok_or_else(|| not_found("TaxedTransaction", &request.transaction_id))?;
        Ok(Response::new(pb::GetTaxedTransactionResponse {
            taxed_transaction: Some((&taxed).into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_taxed_transactions(
        &self,
        request: Request<pb::ListTaxedTransactionsRequest>,
    ) -> Result<Response<pb::ListTaxedTransactionsResponse>, Status> {
        let owner = Caller::customer(&request).map(str::to_owned);
        let request = request.into_inner();
        if let Some(owner) = &owner
            && !request.customer_id.is_empty()
            && request.customer_id != *owner
        {
            return Err(Status::permission_denied(
                "a customer token lists only its own taxed transactions",
            ));
        }
        let filter = match (request.order_id.is_empty(), request.customer_id.is_empty()) {
            (false, true) => TaxedFilter::Order(parse_uuid("order_id", &request.order_id)?),
            (true, false) if request.customer_id.chars().count() > MAX_CUSTOMER_ID_LEN => {
                return Err(violation(
                    "customer_id",
                    format!("must be at most {MAX_CUSTOMER_ID_LEN} characters"),
                ));
            }
            (true, false) => TaxedFilter::Customer(request.customer_id.clone()),
            _ => return Err(violation("order_id", "set exactly one of order_id and customer_id")),
        };
        let page = page(request.page_size, &request.page_token)?;
        let mut conn = self.connection().await?;
        let (mut items, mut next) = storage::list_taxed(&mut conn, &filter, &page).await.map_err(internal)?;
        if let Some(owner) = &owner {
            // By order: an order has one customer, so another customer's order lists as empty,
            // exactly like an order that does not exist.
            items.retain(|taxed| taxed.customer_id == *owner);
            if items.is_empty() {
                next = None;
            }
        }
        Ok(Response::new(pb::ListTaxedTransactionsResponse {
            taxed_transactions: items.iter().map(pb::TaxedTransaction::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn quote_tax(&self, request: Request<pb::QuoteTaxRequest>) -> Result<Response<pb::QuoteTaxResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::default();
        parse_country("country", &request.country, &mut violations);
        parse_currency("currency", &request.currency, &mut violations);
        if request.amount <= 0 {
            violations.add(
                "amount",
                format!("must be greater than 0 (minor units), got {}", request.amount),
            );
        }
        check_product_type("product_type", &request.product_type, &mut violations);
        let tax_date = match &request.tax_date {
            None => Some(chrono::Utc::now()),
            Some(timestamp) => from_timestamp(Some(timestamp)),
        };
        if tax_date.is_none() {
            violations.add("tax_date", "is not a valid timestamp");
        }
        if !violations.is_empty() {
            return Err(Status::from(TaxError::Invalid(violations)));
        }
        let tax_date = tax_date.unwrap_or_else(chrono::Utc::now).date_naive();
        let rates = self.processor.rates();
        let calculation = rates
            .calculate(&request.country, &request.product_type, tax_date, request.amount)
            .map_err(|error| match &error {
                VatError::UnsupportedCountry { .. } => violation("country", error.to_string()),
                VatError::UnsupportedProductType { .. } => violation("product_type", error.to_string()),
                _ => violation("amount", error.to_string()),
            })?;
        Ok(Response::new(pb::QuoteTaxResponse {
            base_amount: calculation.base_amount,
            tax_applied: calculation.tax_applied,
            total_amount: calculation.total_amount,
            tax_rate_bps: calculation.tax_rate_bps,
            reason: pb::TaxReason::from(calculation.reason) as i32,
            rule_version: calculation.rule_version,
            currency: request.currency,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_failed(
        &self,
        request: Request<pb::ListFailedRequest>,
    ) -> Result<Response<pb::ListFailedResponse>, Status> {
        let request = request.into_inner();
        let page = page(request.page_size, &request.page_token)?;
        let mut conn = self.connection().await?;
        let (items, next) = storage::list_open_failures(&mut conn, &page).await.map_err(internal)?;
        Ok(Response::new(pb::ListFailedResponse {
            failures: items.iter().map(pb::TaxFailure::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn retry_failed(
        &self,
        request: Request<pb::RetryFailedRequest>,
    ) -> Result<Response<pb::RetryFailedResponse>, Status> {
        let request = request.into_inner();
        let id = parse_uuid("transaction_id", &request.transaction_id)?;
        let response = match self.processor.retry_failed(&self.pool, id).await? {
            Retried::Taxed(taxed) => pb::RetryFailedResponse {
                taxed_transaction: Some((&taxed).into()),
                failure: None,
            },
            Retried::Failed(failure) => pb::RetryFailedResponse {
                taxed_transaction: None,
                failure: Some((&failure).into()),
            },
            Retried::Resolved(taxed) => pb::RetryFailedResponse {
                taxed_transaction: taxed.as_ref().map(Into::into),
                failure: None,
            },
        };
        Ok(Response::new(response))
    }
}
