//! What the ledger reads from and writes to Kafka.
//!
//! - Publishes every posted entry, whole (`fintech.ledger.v1.Entry`, with the version and hash of
//!   each stream append), on `ledger.entry_posted` through the outbox; record key = entry id.
//! - Consumes `tax.calculated` (`fintech.tax.v1.TaxedTransaction`, key = order id) and posts one
//!   balanced entry per transaction, and `tax.reversed` (`fintech.tax.v1.TaxReversal`), posting
//!   the same lines with sides swapped under `tax-reversal:<transaction id>`; for both, one
//!   balanced entry per transaction (see [`crate::domain::tax`]). Delivery is at least once; the
//!   handler is idempotent twice over: the CloudEvents id is recorded in `processed_events` in the
//!   posting's transaction, and the entry id `tax:<transaction id>` is posted at most once even
//!   when the same result arrives as a different event. Results that can never be posted
//!   (undecodable, inconsistent amounts, or a transaction already posted with other amounts) go
//!   to `ledger.dlq` with the reason. Records that were already waiting when the consumer got
//!   to them are posted together, in one transaction ([`Ledger::post_batch`]). A sale is booked
//!   on the receivable; a reversal is the booked sale's lines swapped, and is booked only once
//!   that sale is: until then it is a transient failure, retried, logged, and dead-lettered with
//!   its reason when the consumer's retries run out.
//! - Consumes `transactions.created` / `transactions.updated` (`fintech.payments.v1.Transaction`)
//!   and posts the cash a payment moved: `capture:<id>` when it succeeded, `refund:<id>` when it
//!   was refunded ([`crate::domain::cash`], ADR 0016).
//! - Consumes `accounts.opened` / `accounts.updated` (`fintech.accounts.v1.Account`, full state)
//!   into its own cache, highest version wins, opening the account's stream when first seen
//!   ([`crate::app::accounts`], ADR 0022), in the kit's transactional inbox.
//! - Consumes `accounts.interest_posted` and books one entry per posting id (debit
//!   `system:interest-expense:<ccy>`, credit the savings account); an account not known yet is
//!   a transient failure (its `accounts.opened` may still be on its way).
//! - Publishes every change of a hold, with the hold's full state, on `ledger.hold_placed`,
//!   `ledger.hold_captured`, `ledger.hold_released` and `ledger.hold_expired` (key: account id).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fintech_platform::kafka::consumer::{BatchFailure, ConsumedEvent, EventHandler, HandlerError, consume_span};
use fintech_platform::kafka::transactional::TransactionalHandler;
use fintech_platform::outbox::OutboxEvent;
use fintech_proto::accounts;
use fintech_proto::ledger as pb;
use fintech_proto::payments;
use fintech_proto::tax::{TaxReversal, TaxedTransaction};
use fintech_proto::topics;
use sqlx::PgConnection;

use crate::app::accounts::CacheError;
use crate::app::posting::{BatchPosting, Inbox, Ledger, PostError, PostOutcome};
use crate::domain::cash::{CashMovement, CashStatus};
use crate::domain::customer::{CustomerAccountInput, InterestInput};
use crate::domain::hold::Hold;
use crate::domain::tax::SystemAccount;
use crate::domain::tax::{Direction, TaxResult, TaxResultInput};
use crate::domain::{CustomerState, Freeze, LedgerError, NewEntry, PostedEntry};
use crate::storage;
use tracing::Instrument as _;

/// CloudEvents source of every ledger event.
pub const SOURCE: &str = "/fintech/ledger";
/// Topic of posted entries.
pub const ENTRY_POSTED: &str = topics::LEDGER_ENTRY_POSTED.name;
/// Protobuf full name of the value of `tax.calculated`.
pub const TAXED_TRANSACTION: &str = payload_of(&topics::TAX_CALCULATED);
/// Topic of VAT results, consumed.
pub const TAX_CALCULATED: &str = topics::TAX_CALCULATED.name;
/// Reversals of VAT results (the transaction failed or was refunded) the ledger posts back.
pub const TAX_REVERSED: &str = topics::TAX_REVERSED.name;
/// Protobuf full name of a reversal.
pub const TAX_REVERSAL: &str = payload_of(&topics::TAX_REVERSED);
/// Where the ledger's consumer sends records it can never process.
pub const DEAD_LETTER: &str = topics::LEDGER_DLQ.name;
/// Payments' new transactions, consumed for the cash they moved.
pub const TRANSACTIONS_CREATED: &str = topics::TRANSACTIONS_CREATED.name;
/// Payments' changed transactions (captures, refunds), consumed for the cash they moved.
pub const TRANSACTIONS_UPDATED: &str = topics::TRANSACTIONS_UPDATED.name;
/// The accounts service's new accounts.
pub const ACCOUNTS_OPENED: &str = topics::ACCOUNTS_OPENED.name;
/// The accounts service's changed accounts.
pub const ACCOUNTS_UPDATED: &str = topics::ACCOUNTS_UPDATED.name;
/// The accounts service's monthly interest.
pub const ACCOUNTS_INTEREST_POSTED: &str = topics::ACCOUNTS_INTEREST_POSTED.name;
/// Every topic the ledger reads or writes.
pub const TOPICS: [&str; 13] = [
    ENTRY_POSTED,
    TAX_CALCULATED,
    TAX_REVERSED,
    DEAD_LETTER,
    TRANSACTIONS_CREATED,
    TRANSACTIONS_UPDATED,
    ACCOUNTS_OPENED,
    ACCOUNTS_UPDATED,
    ACCOUNTS_INTEREST_POSTED,
    topics::LEDGER_HOLD_PLACED.name,
    topics::LEDGER_HOLD_CAPTURED.name,
    topics::LEDGER_HOLD_RELEASED.name,
    topics::LEDGER_HOLD_EXPIRED.name,
];
/// Consumer name of the account cache (`accounts.opened` / `accounts.updated`).
pub const ACCOUNT_CACHE_CONSUMER: &str = "ledger.account-cache";
/// Consumer name of the interest postings.
pub const INTEREST_CONSUMER: &str = "ledger.interest-postings";
/// Consumer name in `processed_events` (and suffix of the consumer group).
pub const TAX_CONSUMER: &str = "ledger.tax-postings";
/// Consumer name of the cash postings from payments' transaction events.
pub const CASH_CONSUMER: &str = "ledger.cash-postings";

/// The payload name of a topic of events, as a constant to match on.
const fn payload_of(topic: &topics::Topic) -> &'static str {
    match topic.payload {
        Some(name) => name,
        None => panic!("a topic of events has a payload"),
    }
}

/// Topic names with the instance's prefix.
pub type Topics = fintech_platform::kafka::TopicNames;

/// The outbox event announcing a posted entry.
pub fn entry_posted(names: &Topics, entry: &pb::Entry, posted_at: DateTime<Utc>) -> OutboxEvent {
    OutboxEvent::of(
        names.prefix(),
        &topics::LEDGER_ENTRY_POSTED,
        entry.entry_id.clone(),
        entry,
        posted_at,
    )
}

/// Which change of a hold an event announces (its topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChange {
    /// `ledger.hold_placed`.
    Placed,
    /// `ledger.hold_captured`.
    Captured,
    /// `ledger.hold_released`.
    Released,
    /// `ledger.hold_expired`.
    Expired,
}

/// The outbox event carrying `hold`'s full state after `change` (key: the account id).
pub fn hold_changed(names: &Topics, hold: &Hold, change: HoldChange) -> OutboxEvent {
    let topic = match change {
        HoldChange::Placed => &topics::LEDGER_HOLD_PLACED,
        HoldChange::Captured => &topics::LEDGER_HOLD_CAPTURED,
        HoldChange::Released => &topics::LEDGER_HOLD_RELEASED,
        HoldChange::Expired => &topics::LEDGER_HOLD_EXPIRED,
    };
    OutboxEvent::of(
        names.prefix(),
        topic,
        hold.account_id.to_string(),
        &crate::proto::hold_to_wire(hold),
        hold.updated_at,
    )
}

/// The accounts service's account as the ledger reads it.
/// The cache input of an `accounts.opened` / `accounts.updated` event (validated by the caller).
pub fn customer_account_of(account: &accounts::Account) -> CustomerAccountInput {
    let state = match accounts::AccountState::try_from(account.state) {
        Ok(accounts::AccountState::Active) => Some(CustomerState::Active),
        Ok(accounts::AccountState::Dormant) => Some(CustomerState::Dormant),
        Ok(accounts::AccountState::Closed) => Some(CustomerState::Closed),
        Ok(accounts::AccountState::Unspecified) | Err(_) => None,
    };
    let freeze = match account
        .freeze
        .as_ref()
        .map(|freeze| accounts::FreezeKind::try_from(freeze.kind))
    {
        None | Some(Ok(accounts::FreezeKind::Unspecified)) => Some(Freeze::None),
        Some(Ok(accounts::FreezeKind::Debits)) => Some(Freeze::Debits),
        Some(Ok(accounts::FreezeKind::Credits)) => Some(Freeze::Credits),
        Some(Ok(accounts::FreezeKind::Both)) => Some(Freeze::Both),
        Some(Err(_)) => None,
    };
    CustomerAccountInput {
        account_id: account.account_id.clone(),
        customer_id: account.customer_id.clone(),
        currency: account.currency.clone(),
        state,
        freeze,
        overdraft_limit: account.overdraft_limit,
        version: account.version,
    }
}

/// Keeps the cache of the accounts service's accounts (`accounts.opened` / `accounts.updated`);
/// run in the kit's transactional inbox (`InTransaction`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountCacheHandler;

#[async_trait]
impl TransactionalHandler for AccountCacheHandler {
    fn consumer(&self) -> &str {
        ACCOUNT_CACHE_CONSUMER
    }

    #[tracing::instrument(name = "ledger.cache_account", skip_all, fields(account_id = tracing::field::Empty))]
    async fn apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let wire: accounts::Account = event.decode()?;
        tracing::Span::current().record("account_id", wire.account_id.as_str());
        let account = customer_account_of(&wire).validate().map_err(HandlerError::Permanent)?;
        let payload = serde_json::json!({
            "account_id": wire.account_id,
            "customer_id": wire.customer_id,
            "product": wire.product,
            "currency": wire.currency,
            "state": account.state.as_str(),
            "freeze": account.freeze.as_str(),
            "freeze_reason": wire.freeze.as_ref().map(|freeze| freeze.reason.clone()).unwrap_or_default(),
            "overdraft_limit": wire.overdraft_limit,
            "version": wire.version,
        });
        match crate::app::accounts::apply(conn, &account, &payload).await {
            Ok(outcome) => {
                tracing::debug!(?outcome, version = account.version, "account version applied");
                Ok(())
            }
            Err(CacheError::Conflict(reason)) => Err(HandlerError::Permanent(reason)),
            Err(CacheError::Internal(error)) => Err(HandlerError::classified(error)),
        }
    }
}

/// Books every `accounts.interest_posted` once.
#[derive(Debug, Clone)]
pub struct InterestHandler {
    ledger: Arc<Ledger>,
}

impl InterestHandler {
    /// A handler posting through `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger }
    }
}

#[async_trait]
impl EventHandler for InterestHandler {
    #[tracing::instrument(name = "ledger.post_interest", skip_all, fields(posting_id = tracing::field::Empty))]
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let posting: accounts::InterestPosting = event.decode()?;
        tracing::Span::current().record("posting_id", posting.posting_id.as_str());
        let interest = interest_input(posting).validate().map_err(HandlerError::Permanent)?;
        // Not known yet: its accounts.opened may still be on its way (another topic).
        let known = {
            let mut conn = self
                .ledger
                .pool()
                .acquire()
                .await
                .map_err(HandlerError::unavailable_or_transient)?;
            storage::get_account(&mut conn, interest.account_id)
                .await
                .map_err(HandlerError::unavailable_or_transient)?
        };
        match known {
            None => {
                return Err(HandlerError::transient(format!(
                    "account {} is not known to the ledger yet",
                    interest.account_id
                )));
            }
            Some(account) if account.customer.is_none() => {
                return Err(HandlerError::permanent(format!(
                    "account {} is not a customer account",
                    interest.account_id
                )));
            }
            Some(_) => {}
        }
        let expense = SystemAccount::interest_expense(&interest.currency);
        let accounts = self
            .ledger
            .ensure_system_accounts(std::slice::from_ref(&expense))
            .await
            .map_err(|error| HandlerError::unavailable_or_transient(error.context("opening system accounts")))?;
        let expense_id = accounts
            .get(&expense.code)
            .copied()
            .ok_or_else(|| HandlerError::transient(format!("system account {} was not opened", expense.code)))?;
        let entry = interest.entry(expense_id).map_err(HandlerError::Permanent)?;
        let inbox = Inbox {
            consumer: INTEREST_CONSUMER,
            event_id: &event.valid_metadata()?.id,
        };
        posted(&entry, Some(inbox), self.ledger.post(&entry, Some(inbox)).await)
    }
}

/// Posts the entry of every `tax.calculated` event.
#[derive(Debug, Clone)]
pub struct TaxPostingHandler {
    ledger: Arc<Ledger>,
}

impl TaxPostingHandler {
    /// A handler posting through `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger }
    }
}

/// The posting input of an `accounts.interest_posted` event (validated by the caller).
pub fn interest_input(posting: accounts::InterestPosting) -> InterestInput {
    InterestInput {
        posting_id: posting.posting_id,
        account_id: posting.account_id,
        currency: posting.currency,
        period: posting.period,
        amount: posting.amount,
    }
}

/// The input of a tax event: a `TaxedTransaction` (a sale) or a `TaxReversal`, as its
/// `ce_dataschema` says (none: a sale); not validated yet.
pub fn tax_input(event: &ConsumedEvent) -> Result<TaxResultInput, HandlerError> {
    let metadata = event.valid_metadata()?;
    match metadata.payload_type.as_str() {
        TAXED_TRANSACTION | "" => Ok(input_of(event.decode::<TaxedTransaction>()?)),
        TAX_REVERSAL => Ok(reversal_input_of(event.decode::<TaxReversal>()?)),
        other => Err(HandlerError::Permanent(format!(
            "expected a {TAXED_TRANSACTION} or {TAX_REVERSAL}, the event carries a {other}"
        ))),
    }
}

/// The posting input of a `tax.reversed` event.
pub fn reversal_input_of(reversal: TaxReversal) -> TaxResultInput {
    TaxResultInput {
        transaction_id: reversal.transaction_id,
        order_id: reversal.order_id,
        customer_id: reversal.customer_id,
        base_amount: reversal.base_amount,
        tax_applied: reversal.tax_reversed,
        total_amount: reversal.total_amount,
        currency: reversal.currency,
        country: reversal.country,
        product_type: String::new(),
        tax_rate_bps: reversal.tax_rate_bps,
        rule_version: reversal.rule_version,
        direction: Direction::Reversal,
    }
}

/// The posting input of a `tax.calculated` event.
pub fn input_of(taxed: TaxedTransaction) -> TaxResultInput {
    TaxResultInput {
        direction: Direction::Sale,
        transaction_id: taxed.transaction_id,
        order_id: taxed.order_id,
        customer_id: taxed.customer_id,
        base_amount: taxed.base_amount,
        tax_applied: taxed.tax_applied,
        total_amount: taxed.total_amount,
        currency: taxed.currency,
        country: taxed.country,
        product_type: taxed.product_type,
        tax_rate_bps: taxed.tax_rate_bps,
        rule_version: taxed.rule_version,
    }
}

impl TaxPostingHandler {
    /// The entry a tax event asks for, with the system accounts it needs opened.
    async fn entry_of(&self, event: &ConsumedEvent) -> Result<NewEntry, HandlerError> {
        let input = tax_input(event)?;
        tracing::Span::current().record("transaction_id", input.transaction_id.as_str());
        let result = input.validate().map_err(HandlerError::Permanent)?;
        if result.direction == Direction::Reversal {
            let sale = self.booked_sale(&result).await?;
            return result.reversal_of(&sale).map_err(HandlerError::Permanent);
        }
        let accounts = self
            .ledger
            .ensure_system_accounts(&result.system_accounts())
            .await
            .map_err(|error| HandlerError::unavailable_or_transient(error.context("opening system accounts")))?;
        result.entry(&accounts).map_err(HandlerError::Permanent)
    }
}

impl TaxPostingHandler {
    /// The sale a reversal reverses, as it was booked; a transient failure while it is not
    /// (its `tax.calculated` may still be on its way: another topic, no order between them).
    async fn booked_sale(&self, reversal: &TaxResult) -> Result<PostedEntry, HandlerError> {
        let sale_id = reversal.sale_entry_id();
        let mut conn = self
            .ledger
            .pool()
            .acquire()
            .await
            .map_err(HandlerError::unavailable_or_transient)?;
        let events = storage::entry_events(&mut conn, &sale_id).await.map_err(|error| {
            HandlerError::unavailable_or_transient(error.context(format!("reading sale {sale_id}")))
        })?;
        if events.is_empty() {
            tracing::warn!(sale_entry_id = %sale_id, "reversal waits for its sale: nothing booked to reverse yet");
            return Err(HandlerError::transient(format!(
                "no sale {sale_id} is booked: a reversal is booked only against a booked sale"
            )));
        }
        PostedEntry::from_events(&events)
            .map_err(|error| HandlerError::transient(format!("reading sale {sale_id}: {error}")))
    }
}

/// How a posting from an event ended, as the consumer wants it.
fn posted(
    entry: &NewEntry,
    inbox: Option<Inbox<'_>>,
    outcome: Result<PostOutcome, PostError>,
) -> Result<(), HandlerError> {
    match outcome {
        Ok(PostOutcome::Posted(_)) => {
            tracing::info!(entry_id = %entry.entry_id, "posting recorded");
            Ok(())
        }
        Ok(PostOutcome::Replayed(_) | PostOutcome::CaptureReplayed(_)) => {
            tracing::info!(entry_id = %entry.entry_id, "already posted, nothing to do");
            Ok(())
        }
        Ok(PostOutcome::Captured(_)) => Ok(()),
        Ok(PostOutcome::AlreadyProcessed) => {
            tracing::info!(ce_id = inbox.map(|inbox| inbox.event_id), "event already processed");
            Ok(())
        }
        Err(PostError::Ledger(LedgerError::EntryAlreadyPosted(_))) => Ok(()),
        Err(error) if error.is_permanent() => Err(HandlerError::Permanent(error.to_string())),
        Err(error) => Err(HandlerError::unavailable_or_transient(error)),
    }
}

/// The cash a payments transaction event says moved; the error is permanent.
pub fn cash_movement(transaction: &payments::Transaction) -> Result<CashMovement, HandlerError> {
    let status = match payments::TransactionStatus::try_from(transaction.status) {
        Ok(payments::TransactionStatus::Succeeded) => CashStatus::Captured,
        Ok(payments::TransactionStatus::Refunded) => CashStatus::Refunded,
        Ok(payments::TransactionStatus::Pending | payments::TransactionStatus::Failed) => CashStatus::NotMoved,
        Ok(payments::TransactionStatus::Unspecified) | Err(_) => {
            return Err(HandlerError::permanent(format!(
                "transaction status {} is not a lifecycle state",
                transaction.status
            )));
        }
    };
    CashMovement::parse(
        &transaction.transaction_id,
        &transaction.order_id,
        transaction.amount,
        &transaction.currency,
        status,
    )
    .map_err(HandlerError::Permanent)
}

/// Posts the cash of every payments transaction event: captures and refunds.
#[derive(Debug, Clone)]
pub struct CashPostingHandler {
    ledger: Arc<Ledger>,
}

impl CashPostingHandler {
    /// A handler posting through `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self { ledger }
    }
}

#[async_trait]
impl EventHandler for CashPostingHandler {
    #[tracing::instrument(name = "ledger.post_cash", skip_all, fields(transaction_id = tracing::field::Empty))]
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let transaction: payments::Transaction = event.decode()?;
        tracing::Span::current().record("transaction_id", transaction.transaction_id.as_str());
        let movement = cash_movement(&transaction)?;
        if movement.status == CashStatus::NotMoved {
            return Ok(());
        }
        let accounts = self
            .ledger
            .ensure_system_accounts(&movement.system_accounts())
            .await
            .map_err(|error| HandlerError::unavailable_or_transient(error.context("opening system accounts")))?;
        let entries = movement.entries(&accounts).map_err(HandlerError::Permanent)?;
        let inbox = Inbox {
            consumer: CASH_CONSUMER,
            event_id: &event.valid_metadata()?.id,
        };
        // The capture a refund implies first (a no-op when it is posted), then the event's own
        // entry with the inbox row, so a redelivery finds it processed only once all are posted.
        for (index, entry) in entries.iter().enumerate() {
            let inbox = (index + 1 == entries.len()).then_some(inbox);
            posted(entry, inbox, self.ledger.post(entry, inbox).await)?;
        }
        Ok(())
    }
}

#[async_trait]
impl EventHandler for TaxPostingHandler {
    #[tracing::instrument(name = "ledger.post_tax", skip_all, fields(transaction_id = tracing::field::Empty))]
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let entry = self.entry_of(event).await?;
        let inbox = Inbox {
            consumer: TAX_CONSUMER,
            event_id: &event.valid_metadata()?.id,
        };
        posted(&entry, Some(inbox), self.ledger.post(&entry, Some(inbox)).await)
    }

    fn max_batch(&self) -> usize {
        usize::MAX
    }

    /// All postings of the batch in one transaction ([`Ledger::post_batch`]); any problem sends
    /// every record back to [`handle`](EventHandler::handle), one at a time.
    async fn handle_batch(&self, events: &[ConsumedEvent]) -> Result<(), BatchFailure> {
        let rolled_back = |error: HandlerError| BatchFailure { finished: 0, error };
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            let span = consume_span(event);
            let entry = self
                .entry_of(event)
                .instrument(span.clone())
                .await
                .map_err(rolled_back)?;
            entries.push((entry, span));
        }
        let postings: Vec<BatchPosting<'_>> = events
            .iter()
            .zip(&entries)
            .map(|(event, (entry, span))| -> Result<BatchPosting<'_>, HandlerError> {
                Ok(BatchPosting {
                    entry,
                    inbox: Inbox {
                        consumer: TAX_CONSUMER,
                        event_id: &event.valid_metadata()?.id,
                    },
                    span: span.clone(),
                })
            })
            .collect::<Result<_, _>>()
            .map_err(rolled_back)?;
        self.ledger
            .post_batch(&postings)
            .await
            .map_err(|error| rolled_back(HandlerError::unavailable_or_transient(error)))
    }
}
