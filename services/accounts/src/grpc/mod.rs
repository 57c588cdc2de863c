//! `fintech.accounts.v1.AccountsService`: decodes requests (ids, paging, the idempotency key, the
//! caller), calls [`AccountsApp`], encodes the answer. Errors become statuses in one place
//! ([`status`]).
//!
//! Ownership: a customer token acts only on its own accounts. Another customer's account is
//! NOT_FOUND (exactly like a missing one); opening for or listing another customer is
//! PERMISSION_DENIED. The operator-only methods (`customers: false` in the contract) never see a
//! customer token: the kit's auth layer refuses it first.

mod status;

use fintech_platform::auth::Caller;
use fintech_platform::idempotency::key_from_request;
use fintech_proto::accounts as pb;
use fintech_proto::accounts::accounts_service_server::AccountsService;
use tonic::{Request, Response, Status};

use crate::app::{AccountsApp, Actor, owns};
use crate::domain::{self, AccountsError, Violations};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct AccountsGrpc {
    app: AccountsApp,
}

impl AccountsGrpc {
    /// The service over `app`.
    pub fn new(app: AccountsApp) -> Self {
        Self { app }
    }
}

fn actor<T>(request: &Request<T>) -> Actor {
    Actor {
        subject: Caller::of(request).map_or_else(|| "anonymous".to_owned(), |caller| caller.subject.clone()),
        customer: Caller::customer(request).map(str::to_owned),
    }
}

#[tonic::async_trait]
impl AccountsService for AccountsGrpc {
    #[tracing::instrument(skip_all)]
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let key = key_from_request(&request)?;
        let actor = actor(&request);
        Ok(Response::new(
            self.app.open_account(key, request.get_ref(), &actor).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let account_id = domain::require_id("account_id", &request.get_ref().account_id)?;
        let (account, balances) = self.app.get_account(account_id, Caller::customer(&request)).await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(pb::Account::from(&account)),
            balances: Some(pb::AccountBalances::from(&balances)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let owner = Caller::customer(&request).map(str::to_owned);
        let request = request.into_inner();
        let mut violations = Violations::default();
        domain::check_account_customer_id("customer_id", &request.customer_id, &mut violations);
        if !violations.is_empty() {
            return Err(AccountsError::Invalid(violations).into());
        }
        if !owns(owner.as_deref(), &request.customer_id) {
            return Err(AccountsError::Forbidden("a customer token lists only its own accounts").into());
        }
        let page = domain::page(request.page_size, &request.page_token)?;
        let (accounts, next) = self.app.list_accounts(&request.customer_id, &page).await?;
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(pb::Account::from).collect(),
            next_page_token: next.map(|cursor| cursor.token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn freeze_account(
        &self,
        request: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::FreezeAccountResponse>, Status> {
        let key = key_from_request(&request)?;
        let actor = actor(&request);
        Ok(Response::new(self.app.freeze(key, request.get_ref(), &actor).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn unfreeze_account(
        &self,
        request: Request<pb::UnfreezeAccountRequest>,
    ) -> Result<Response<pb::UnfreezeAccountResponse>, Status> {
        let key = key_from_request(&request)?;
        let actor = actor(&request);
        Ok(Response::new(self.app.unfreeze(key, request.get_ref(), &actor).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn set_overdraft_limit(
        &self,
        request: Request<pb::SetOverdraftLimitRequest>,
    ) -> Result<Response<pb::SetOverdraftLimitResponse>, Status> {
        let key = key_from_request(&request)?;
        let actor = actor(&request);
        Ok(Response::new(
            self.app.set_overdraft_limit(key, request.get_ref(), &actor).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn close_account(
        &self,
        request: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::CloseAccountResponse>, Status> {
        let key = key_from_request(&request)?;
        let actor = actor(&request);
        Ok(Response::new(self.app.close(key, request.get_ref(), &actor).await?))
    }
}
