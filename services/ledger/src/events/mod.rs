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
//!   to them are posted together, in one transaction ([`Ledger::post_batch`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fintech_platform::kafka::consumer::{BatchFailure, ConsumedEvent, EventHandler, HandlerError, consume_span};
use fintech_platform::outbox::OutboxEvent;
use fintech_proto::ledger as pb;
use fintech_proto::tax::{TaxReversal, TaxedTransaction};
use fintech_proto::topics;

use crate::app::posting::{BatchPosting, Inbox, Ledger, PostError, PostOutcome};
use crate::domain::LedgerError;
use crate::domain::NewEntry;
use crate::domain::tax::{Direction, TaxResultInput};
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
/// Every topic the ledger reads or writes.
pub const TOPICS: [&str; 4] = [ENTRY_POSTED, TAX_CALCULATED, TAX_REVERSED, DEAD_LETTER];
/// Consumer name in `processed_events` (and suffix of the consumer group).
pub const TAX_CONSUMER: &str = "ledger.tax-postings";

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

fn reversal_input_of(reversal: TaxReversal) -> TaxResultInput {
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

fn input_of(taxed: TaxedTransaction) -> TaxResultInput {
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
        let metadata = event.valid_metadata()?;
        let input = match metadata.payload_type.as_str() {
            TAXED_TRANSACTION | "" => input_of(event.decode::<TaxedTransaction>()?),
            TAX_REVERSAL => reversal_input_of(event.decode::<TaxReversal>()?),
            other => {
                return Err(HandlerError::Permanent(format!(
                    "expected a {TAXED_TRANSACTION} or {TAX_REVERSAL}, the event carries a {other}"
                )));
            }
        };
        tracing::Span::current().record("transaction_id", input.transaction_id.as_str());
        let result = input.validate().map_err(HandlerError::Permanent)?;
        let accounts = self
            .ledger
            .ensure_system_accounts(&result.system_accounts())
            .await
            .map_err(|error| HandlerError::transient(format!("opening system accounts: {error:#}")))?;
        result.entry(&accounts).map_err(HandlerError::Permanent)
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
        match self.ledger.post(&entry, Some(inbox)).await {
            Ok(PostOutcome::Posted(_)) => {
                tracing::info!(entry_id = %entry.entry_id, "tax posting recorded");
                Ok(())
            }
            Ok(PostOutcome::Replayed(_)) => {
                tracing::info!(entry_id = %entry.entry_id, "transaction already posted, nothing to do");
                Ok(())
            }
            Ok(PostOutcome::AlreadyProcessed) => {
                tracing::info!(ce_id = %inbox.event_id, "event already processed");
                Ok(())
            }
            Err(PostError::Ledger(LedgerError::EntryAlreadyPosted(_))) => Ok(()),
            Err(error) if error.is_permanent() => Err(HandlerError::Permanent(error.to_string())),
            Err(error) => Err(HandlerError::unavailable_or_transient(error)),
        }
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
