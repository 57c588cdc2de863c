//! `fintech.transfers.v1.TransfersService`: decodes requests (ids, paging, the idempotency key,
//! the caller), calls [`TransfersApp`], encodes the answer. Errors become statuses in one place
//! ([`status`]).
//!
//! Ownership: a customer token moves money only out of its own accounts and sees only its own
//! transfers; another customer's transfer or account is NOT_FOUND (exactly like a missing one),
//! listing another customer is PERMISSION_DENIED. Approve and Reject are operator-only
//! (`customers: false` in the contract): the kit's auth layer refuses a customer token first.

mod status;

use fintech_platform::auth::Caller;
use fintech_platform::idempotency::key_from_request;
use fintech_proto::transfers as pb;
use fintech_proto::transfers::transfers_service_server::TransfersService;
use fintech_types::fields::{check_customer_id, parse_id};
use tonic::{Request, Response, Status};

use crate::app::{Actor, TransfersApp};
use crate::domain::{self, PageRequest, TransfersError, Violations};
use crate::saga::Decision;
use crate::storage::ListBy;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct TransfersGrpc {
    app: TransfersApp,
}

impl TransfersGrpc {
    /// The service over `app`.
    pub fn new(app: TransfersApp) -> Self {
        Self { app }
    }
}

fn actor<T>(request: &Request<T>) -> Actor {
    Actor {
        subject: Caller::of(request).map_or_else(|| "anonymous".to_owned(), |caller| caller.subject.clone()),
        customer: Caller::customer(request).map(str::to_owned),
    }
}

fn transfer_id(value: &str) -> Result<uuid::Uuid, Status> {
    fintech_types::fields::require_id("transfer_id", value)
        .map_err(|violations| Status::from(TransfersError::Invalid(violations)))
}

fn reason(value: &str) -> Result<String, Status> {
    let mut violations = Violations::default();
    domain::check_reason("reason", value, &mut violations);
    violations
        .into_result::<_, TransfersError>(|| value.trim().to_owned())
        .map_err(Status::from)
}

#[tonic::async_trait]
impl TransfersService for TransfersGrpc {
    #[tracing::instrument(skip_all)]
    async fn create_transfer(
        &self,
        request: Request<pb::CreateTransferRequest>,
    ) -> Result<Response<pb::CreateTransferResponse>, Status> {
        let key = key_from_request(&request)?;
        let actor = actor(&request);
        let transfer = self.app.create(key, request.get_ref(), &actor).await?;
        tracing::info!(transfer_id = %transfer.transfer_id, "transfer accepted");
        Ok(Response::new(pb::CreateTransferResponse {
            transfer: Some(transfer),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::GetTransferResponse>, Status> {
        let transfer_id = transfer_id(&request.get_ref().transfer_id)?;
        let transfer = self.app.get(transfer_id, Caller::customer(&request)).await?;
        Ok(Response::new(pb::GetTransferResponse {
            transfer: Some(pb::Transfer::from(&transfer)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_transfers(
        &self,
        request: Request<pb::ListTransfersRequest>,
    ) -> Result<Response<pb::ListTransfersResponse>, Status> {
        let owner = Caller::customer(&request).map(str::to_owned);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let by = match (request.account_id.is_empty(), request.customer_id.is_empty()) {
            (false, true) => parse_id("account_id", &request.account_id, &mut violations).map(ListBy::Account),
            (true, false) => {
                check_customer_id("customer_id", &request.customer_id, &mut violations);
                Some(ListBy::Customer(request.customer_id.clone()))
            }
            _ => {
                violations.add("account_id", "exactly one of account_id and customer_id is required");
                None
            }
        };
        let page = match PageRequest::parse(request.page_size, &request.page_token) {
            Ok(page) => Some(page),
            Err(more) => {
                violations.extend(more);
                None
            }
        };
        let (Some(by), Some(page), true) = (by, page, violations.is_empty()) else {
            return Err(TransfersError::Invalid(violations).into());
        };
        let (transfers, next) = self.app.list(by, owner.as_deref(), &page).await?;
        Ok(Response::new(pb::ListTransfersResponse {
            transfers: transfers.iter().map(pb::Transfer::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_transfer(
        &self,
        request: Request<pb::CancelTransferRequest>,
    ) -> Result<Response<pb::CancelTransferResponse>, Status> {
        let actor = actor(&request);
        let id = transfer_id(&request.get_ref().transfer_id);
        let why = reason(&request.get_ref().reason);
        let (id, why) = match (id, why) {
            (Ok(id), Ok(why)) => (id, why),
            (Err(status), _) | (_, Err(status)) => return Err(status),
        };
        let transfer = self.app.cancel(id, why, &actor).await?;
        Ok(Response::new(pb::CancelTransferResponse {
            transfer: Some(pb::Transfer::from(&transfer)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn approve_transfer(
        &self,
        request: Request<pb::ApproveTransferRequest>,
    ) -> Result<Response<pb::ApproveTransferResponse>, Status> {
        let actor = actor(&request);
        let id = transfer_id(&request.get_ref().transfer_id)?;
        let transfer = self.app.decide(id, Decision::Approved { by: actor.subject }).await?;
        Ok(Response::new(pb::ApproveTransferResponse {
            transfer: Some(pb::Transfer::from(&transfer)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn reject_transfer(
        &self,
        request: Request<pb::RejectTransferRequest>,
    ) -> Result<Response<pb::RejectTransferResponse>, Status> {
        let actor = actor(&request);
        let id = transfer_id(&request.get_ref().transfer_id)?;
        let why = reason(&request.get_ref().reason)?;
        let transfer = self
            .app
            .decide(
                id,
                Decision::Rejected {
                    by: actor.subject,
                    reason: why,
                },
            )
            .await?;
        Ok(Response::new(pb::RejectTransferResponse {
            transfer: Some(pb::Transfer::from(&transfer)),
        }))
    }
}
