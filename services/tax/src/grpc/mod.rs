//! `fintech.tax.v1.TaxService`: reads of results and failures, a stateless quote, and the
//! operator's retry of a failed transaction.

use chrono::Utc;
use fintech_platform::grpc::invalid_argument;
use fintech_proto::tax as pb;
use fintech_proto::tax::tax_service_server::TaxService;
use fintech_types::paging::PageRequest;
use fintech_types::{Country, Currency};
use sqlx::PgPool;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::domain::vat::VatError;
use crate::events::{Outcome, Processor};
use crate::proto::from_timestamp;
use crate::storage::{self, Parked, TaxedFilter};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Tax {
    pool: PgPool,
    processor: Processor,
}

impl Tax {
    /// A service over `pool`.
    pub fn new(pool: PgPool, processor: Processor) -> Self {
        Self { pool, processor }
    }
}

fn internal(error: anyhow::Error) -> Status {
    tracing::error!(error = format!("{error:#}"), "tax request failed");
    Status::internal("internal error; the request can be retried")
}

fn violation(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(&[(field.to_owned(), description.into())])
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(violation(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| violation(field, format!("must be a UUID, got {value:?}")))
}

fn page(page_size: i32, page_token: &str) -> Result<PageRequest, Status> {
    PageRequest::parse(page_size, page_token).map_err(|violations| invalid_argument(&violations))
}

fn not_found(kind: &str, id: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_resource_info(
        format!("fintech.tax.v1.{kind}"),
        id,
        "",
        format!("no {kind} for this transaction"),
    );
    Status::with_error_details(Code::NotFound, format!("no {kind} for transaction {id}"), details)
}

#[tonic::async_trait]
impl TaxService for Tax {
    #[tracing::instrument(skip_all)]
    async fn get_taxed_transaction(
        &self,
        request: Request<pb::GetTaxedTransactionRequest>,
    ) -> Result<Response<pb::GetTaxedTransactionResponse>, Status> {
        let request = request.into_inner();
        let id = parse_uuid("transaction_id", &request.transaction_id)?;
        let mut conn = self.pool.acquire().await.map_err(|error| internal(error.into()))?;
        let taxed = storage::get_taxed(&mut conn, id)
            .await
            .map_err(internal)?
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
        let request = request.into_inner();
        let filter = match (request.order_id.is_empty(), request.customer_id.is_empty()) {
            (false, true) => TaxedFilter::Order(parse_uuid("order_id", &request.order_id)?),
            (true, false) => TaxedFilter::Customer(request.customer_id.clone()),
            _ => return Err(violation("order_id", "set exactly one of order_id and customer_id")),
        };
        let page = page(request.page_size, &request.page_token)?;
        let mut conn = self.pool.acquire().await.map_err(|error| internal(error.into()))?;
        let (items, next) = storage::list_taxed(&mut conn, &filter, &page).await.map_err(internal)?;
        Ok(Response::new(pb::ListTaxedTransactionsResponse {
            taxed_transactions: items.iter().map(pb::TaxedTransaction::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn quote_tax(&self, request: Request<pb::QuoteTaxRequest>) -> Result<Response<pb::QuoteTaxResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Vec::new();
        if let Err(error) = Country::parse(&request.country) {
            violations.push(("country".to_owned(), error.to_string()));
        }
        if let Err(error) = Currency::parse(&request.currency) {
            violations.push(("currency".to_owned(), error.to_string()));
        }
        if request.amount <= 0 {
            violations.push((
                "amount".to_owned(),
                format!("must be greater than 0 (minor units), got {}", request.amount),
            ));
        }
        if request.product_type.is_empty() {
            violations.push(("product_type".to_owned(), "is required".to_owned()));
        }
        let tax_date = match &request.tax_date {
            None => Some(Utc::now()),
            Some(timestamp) => from_timestamp(Some(timestamp)),
        };
        if tax_date.is_none() {
            violations.push(("tax_date".to_owned(), "is not a valid timestamp".to_owned()));
        }
        if !violations.is_empty() {
            return Err(invalid_argument(&violations));
        }
        let tax_date = tax_date.unwrap_or_else(Utc::now).date_naive();
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
        let mut conn = self.pool.acquire().await.map_err(|error| internal(error.into()))?;
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
        let mut tx = self.pool.begin().await.map_err(|error| internal(error.into()))?;
        let failure = storage::get_open_failure(&mut tx, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found("TaxFailure", &request.transaction_id))?;
        let envelope = Parked {
            transaction_id: failure.transaction_id,
            order_id: failure.order_id,
            event_type: failure.original_event_type.clone(),
            payload: failure.original_event.clone(),
            traceparent: failure.traceparent.clone(),
            tracestate: failure.tracestate.clone(),
        };
        let outcome = self
            .processor
            .process(&mut tx, &envelope, false)
            .await
            .map_err(internal)?;
        let response = match outcome {
            Outcome::Taxed(taxed) => pb::RetryFailedResponse {
                taxed_transaction: Some((&taxed).into()),
                failure: None,
            },
            Outcome::Failed(failure) => pb::RetryFailedResponse {
                taxed_transaction: None,
                failure: Some((&failure).into()),
            },
            Outcome::AlreadyTaxed | Outcome::NotTaxable | Outcome::Parked => {
                storage::resolve_failure(&mut tx, id).await.map_err(internal)?;
                let taxed = storage::get_taxed(&mut tx, id).await.map_err(internal)?;
                pb::RetryFailedResponse {
                    taxed_transaction: taxed.as_ref().map(Into::into),
                    failure: None,
                }
            }
        };
        tx.commit().await.map_err(|error| internal(error.into()))?;
        Ok(Response::new(response))
    }
}
