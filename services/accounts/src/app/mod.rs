//! The accounts use cases. Each command validates its input (`domain/`), then, inside one
//! PostgreSQL transaction run by the idempotency store, locks the account row, applies the state
//! machine, and writes the new row, its change-log row, the outbox event with the full account
//! and the stored answer, so a change is published if and only if it committed. The gRPC layer
//! only decodes, calls these and encodes. [`projection`] is the consumer side, [`jobs`] the
//! dormancy and interest jobs.

pub mod jobs;
pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use fintech_platform::idempotency::{IdempotencyKey, IdempotencyStore};
use fintech_platform::outbox;
use fintech_proto::accounts as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::interest::RateTable;
use crate::domain::{self, Account, AccountsError, Balances, Command, Cursor, MoneyState, OpenAccount, PageRequest};
use crate::events::{self, SOURCE, Topics};
use crate::storage;

/// The accounts application: pool, idempotency store, topics, rate table and dormancy period.
#[derive(Debug, Clone)]
pub struct AccountsApp {
    pool: PgPool,
    idempotency: IdempotencyStore,
    topics: Topics,
    rates: Arc<RateTable>,
    dormant_after: Duration,
}

fn scope(method: &str) -> String {
    format!("/fintech.accounts.v1.AccountsService/{method}")
}

/// Who asked for a change: the token's subject, and the customer it is limited to.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// The subject (`sub`), for the change log.
    pub subject: String,
    /// The customer a customer token is limited to.
    pub customer: Option<String>,
}

/// Whether a caller limited to customer `owner` (`None`: not limited) may see `customer_id`'s data.
pub fn owns(owner: Option<&str>, customer_id: &str) -> bool {
    owner.is_none_or(|owner| owner == customer_id)
}

impl AccountsApp {
    /// The application over `pool`, publishing on `topics`.
    pub fn new(
        pool: PgPool,
        idempotency: IdempotencyStore,
        topics: Topics,
        rates: Arc<RateTable>,
        dormant_after: Duration,
    ) -> Self {
        Self {
            pool,
            idempotency,
            topics,
            rates,
            dormant_after,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Opens an account (version 1) and publishes it on `accounts.opened`.
    pub async fn open_account(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::OpenAccountRequest,
        actor: &Actor,
    ) -> Result<pb::OpenAccountResponse, AccountsError> {
        if !owns(actor.customer.as_deref(), &request.customer_id) {
            return Err(AccountsError::Forbidden(
                "a customer token opens accounts only for its own customer_id",
            ));
        }
        let account = OpenAccount {
            customer_id: request.customer_id.clone(),
            product: crate::proto::product_from_wire(request.product),
            currency: request.currency.clone(),
            overdraft_limit: request.overdraft_limit,
        }
        .into_account(domain::now())?;
        let response = self
            .idempotency
            .execute(&self.pool, &scope("OpenAccount"), key, request, async |conn| {
                storage::insert_account(conn, &account).await?;
                storage::insert_change(conn, &account, "open", None, &actor.subject).await?;
                publish(conn, &self.topics, &account).await?;
                Ok::<_, AccountsError>(pb::OpenAccountResponse {
                    account: Some(pb::Account::from(&account)),
                })
            })
            .await?;
        tracing::info!(
            account_id = response.account.as_ref().map(|account| account.account_id.as_str()),
            "account opened"
        );
        Ok(response)
    }

    /// The account and its balances; another customer's account is NOT_FOUND.
    pub async fn get_account(
        &self,
        account_id: Uuid,
        owner: Option<&str>,
    ) -> Result<(Account, Balances), AccountsError> {
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        let account = storage::get_account(&mut conn, account_id, false)
            .await?
            .filter(|account| owns(owner, &account.customer_id))
            .ok_or_else(|| AccountsError::NotFound(account_id.to_string()))?;
        let mut balances = storage::get_balances(&mut conn, account_id).await?;
        balances.accrued_interest = jobs::accrued_interest(&mut conn, account_id).await?;
        Ok((account, balances))
    }

    /// A page of a customer's accounts, oldest first, and the cursor of the next page.
    pub async fn list_accounts(
        &self,
        customer_id: &str,
        page: &PageRequest,
    ) -> Result<(Vec<Account>, Option<Cursor>), AccountsError> {
        let mut conn = self.pool.acquire().await.map_err(anyhow::Error::from)?;
        Ok(storage::list_accounts(&mut conn, customer_id, page).await?)
    }

    /// Runs `decide` on the locked account (another customer's is NOT_FOUND) and writes the
    /// command it returns, publishing the new state on `accounts.updated`.
    // The arguments are the parts every command differs in; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn change<Req, Resp>(
        &self,
        method: &str,
        key: Option<IdempotencyKey>,
        request: &Req,
        account_id: Uuid,
        actor: &Actor,
        reason: Option<&str>,
        decide: impl AsyncFnOnce(&mut PgConnection, &Account) -> Result<Command, AccountsError>,
        respond: impl FnOnce(pb::Account) -> Resp,
    ) -> Result<Resp, AccountsError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        self.idempotency
            .execute(&self.pool, &scope(method), key, request, async |conn| {
                let current = storage::get_account(conn, account_id, true)
                    .await?
                    .filter(|account| owns(actor.customer.as_deref(), &account.customer_id))
                    .ok_or_else(|| AccountsError::NotFound(account_id.to_string()))?;
                let command = decide(conn, &current).await?;
                let next = current.apply(&command, domain::now())?;
                storage::update_account(conn, &next).await?;
                storage::insert_change(conn, &next, command.name(), reason, &actor.subject).await?;
                publish(conn, &self.topics, &next).await?;
                tracing::info!(account_id = %next.account_id, version = next.version, change = command.name(), "account changed");
                Ok(respond(pb::Account::from(&next)))
            })
            .await
    }

    /// Freezes an account (replacing any freeze in force).
    pub async fn freeze(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::FreezeAccountRequest,
        actor: &Actor,
    ) -> Result<pb::FreezeAccountResponse, AccountsError> {
        let mut violations = domain::Violations::default();
        let account_id = fintech_types::fields::parse_id("account_id", &request.account_id, &mut violations);
        let kind = match crate::proto::freeze_kind_from_wire(request.kind) {
            Ok(Some(kind)) => Some(kind),
            Ok(None) => {
                violations.add(
                    "kind",
                    "is required (FREEZE_KIND_DEBITS, FREEZE_KIND_CREDITS or FREEZE_KIND_BOTH)",
                );
                None
            }
            Err(raw) => {
                violations.add("kind", format!("unknown freeze kind value {raw}"));
                None
            }
        };
        domain::check_reason("reason", &request.reason, &mut violations);
        let (Some(account_id), Some(kind), true) = (account_id, kind, violations.is_empty()) else {
            return Err(violations.into());
        };
        let command = Command::Freeze {
            kind,
            reason: request.reason.clone(),
        };
        self.change(
            "FreezeAccount",
            key,
            request,
            account_id,
            actor,
            Some(&request.reason),
            async |_, _| Ok(command),
            |account| pb::FreezeAccountResponse { account: Some(account) },
        )
        .await
    }

    /// Lifts an account's freeze.
    pub async fn unfreeze(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::UnfreezeAccountRequest,
        actor: &Actor,
    ) -> Result<pb::UnfreezeAccountResponse, AccountsError> {
        let mut violations = domain::Violations::default();
        let account_id = fintech_types::fields::parse_id("account_id", &request.account_id, &mut violations);
        domain::check_reason("reason", &request.reason, &mut violations);
        let (Some(account_id), true) = (account_id, violations.is_empty()) else {
            return Err(violations.into());
        };
        self.change(
            "UnfreezeAccount",
            key,
            request,
            account_id,
            actor,
            Some(&request.reason),
            async |_, _| Ok(Command::Unfreeze),
            |account| pb::UnfreezeAccountResponse { account: Some(account) },
        )
        .await
    }

    /// Sets a current account's overdraft limit; refused below what the projection shows
    /// overdrawn (holds included).
    pub async fn set_overdraft_limit(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::SetOverdraftLimitRequest,
        actor: &Actor,
    ) -> Result<pb::SetOverdraftLimitResponse, AccountsError> {
        let mut violations = domain::Violations::default();
        let account_id = fintech_types::fields::parse_id("account_id", &request.account_id, &mut violations);
        domain::check_overdraft_limit("overdraft_limit", request.overdraft_limit, &mut violations);
        let (Some(account_id), true) = (account_id, violations.is_empty()) else {
            return Err(violations.into());
        };
        let limit = request.overdraft_limit;
        self.change(
            "SetOverdraftLimit",
            key,
            request,
            account_id,
            actor,
            None,
            async |conn, _| {
                let balances = storage::get_balances(conn, account_id).await?;
                let exposure = balances.held.saturating_sub(balances.ledger_balance).max(0);
                Ok(Command::SetOverdraftLimit { limit, exposure })
            },
            |account| pb::SetOverdraftLimitResponse { account: Some(account) },
        )
        .await
    }

    /// Closes an account: only with a zero balance, no active hold and no unposted interest as
    /// the projection shows them (interest accrued up to yesterday first).
    pub async fn close(
        &self,
        key: Option<IdempotencyKey>,
        request: &pb::CloseAccountRequest,
        actor: &Actor,
    ) -> Result<pb::CloseAccountResponse, AccountsError> {
        let account_id = domain::require_id("account_id", &request.account_id)?;
        let rates = self.rates.clone();
        self.change(
            "CloseAccount",
            key,
            request,
            account_id,
            actor,
            None,
            async |conn, account| {
                if account.state == domain::AccountState::Closed {
                    // The state machine names it.
                    return Ok(Command::Close);
                }
                jobs::accrue(conn, &rates, account, domain::now().date_naive()).await?;
                let balances = storage::get_balances(conn, account_id).await?;
                let (active_holds, unbooked_postings) = storage::holds_and_unbooked(conn, account_id).await?;
                let money = MoneyState {
                    balance: balances.ledger_balance,
                    held: balances.held,
                    active_holds,
                    accrued_interest: jobs::accrued_interest(conn, account_id).await?,
                    unbooked_postings,
                };
                let refusals = domain::close_refusals(&money);
                if !refusals.is_empty() {
                    return Err(AccountsError::CannotClose { account_id, refusals });
                }
                Ok(Command::Close)
            },
            |account| pb::CloseAccountResponse { account: Some(account) },
        )
        .await
    }

    /// Marks every ACTIVE account without customer movement for the dormancy period (counted
    /// from `now`) DORMANT, publishing each; returns how many.
    pub async fn mark_dormant(&self, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<usize> {
        jobs::mark_dormant(&self.pool, &self.topics, self.dormant_after, now).await
    }

    /// Accrues interest for every day before `today` and posts every completed month (see
    /// [`jobs::run_interest`]); returns the postings published.
    pub async fn run_interest(&self, today: chrono::NaiveDate) -> anyhow::Result<Vec<pb::InterestPosting>> {
        jobs::run_interest(&self.pool, &self.topics, &self.rates, today).await
    }
}

/// Writes the outbox event of `account`'s new state.
async fn publish(conn: &mut PgConnection, topics: &Topics, account: &Account) -> Result<(), AccountsError> {
    outbox::enqueue(conn, SOURCE, &events::account_event(topics, account))
        .await
        .map_err(anyhow::Error::from)?;
    Ok(())
}
