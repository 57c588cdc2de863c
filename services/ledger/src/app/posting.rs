//! Posting an entry: the protocol that appends it to every affected account stream at once.
//!
//! One attempt is one PostgreSQL transaction (READ COMMITTED) that:
//! 1. records the consumed event in `processed_events` (postings from Kafka only) and claims the
//!    entry id as the idempotency key of PostEntry (the shared [`IdempotencyStore`]);
//! 2. locks the affected streams and balances in account-id order (`lock_streams`, on by
//!    default) and reads the accounts, their balances and stream heads, in one statement;
//! 3. checks the entry against them ([`plan_posting`]): unknown account, currency, limits;
//! 4. appends one event per stream, each stating the version it expects, updates the balance
//!    projections and records the entry id in `ledger_entries`, all in one statement
//!    (`storage::append_entry` moves a stream only from that version, and
//!    `UNIQUE(stream_id, version)` backs it up);
//! 5. writes `ledger.entry_posted` to the outbox and stores the response under the idempotency
//!    key; commits.
//!
//! # Guarantees
//! - **All or nothing.** Events, projections, outbox row and idempotency record commit together;
//!   a rejected entry (invalid, unknown account, over a limit) rolls back and changes nothing.
//! - **At most once per entry id.** A retry of the same entry gets the first response; the same
//!   id with other content is refused (FAILED_PRECONDITION). `ledger_entries` keeps refusing the
//!   id (ALREADY_EXISTS) after its idempotency record is purged.
//! - **No lost update, no deadlock.** A stream moves only from the version the attempt read. With
//!   `lock_streams` an attempt holds the streams' row locks from its read to its commit, so the
//!   version check only fails if some writer bypassed the locks; without it (pure optimistic mode,
//!   kept to measure the difference) conflicts are detected and retried. Locks are taken in one
//!   global order, so two entries over the same accounts wait for each other, never deadlock.
//! - **Bounded retries.** A version conflict, serialization failure, deadlock or lock timeout
//!   (`lock_timeout`) restarts the attempt after a short jittered backoff, at most
//!   `max_attempts` times; then the caller gets [`LedgerError::Contention`] (ABORTED).
//!
//! - **Batches.** [`Ledger::post_batch`] posts several consumed entries in one transaction: the
//!   accounts of all of them are locked first (same global order), then each entry goes through
//!   steps 1-5 as above, then one commit. Anything other than posted, replayed or already
//!   processed fails the whole batch (nothing of it is kept), and the caller posts each entry
//!   alone with [`Ledger::post`] (ADR 0009).
//!
//! # Failure modes
//! - A commit whose outcome is unknown (connection lost during COMMIT) is reported as an error;
//!   the client's retry with the same entry id replays the stored response if it committed.
//! - A hot account serializes the entries that touch it for the length of their transactions;
//!   see docs/adr/0004-ledger-hot-accounts.md for the numbers and the sharding option.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use fintech_platform::db::DbFault;
use fintech_platform::idempotency::{Claim, IdempotencyError, IdempotencyKey, IdempotencyStore};
use fintech_platform::kafka::consumer::mark_processed;
use fintech_platform::outbox::OutboxRow;
use fintech_proto::ledger as pb;
use prost::Message as _;
use rand::Rng as _;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::hold::{HoldStatus, Remainder, plan_capture};
use crate::domain::stream::{
    AccountOpened, EntryPosted, EventBody, GENESIS_HASH, HoldCapturedEvent, PostedLine, StoredEvent,
};
use crate::domain::tax::SystemAccount;
use crate::domain::{
    Account, Append, LedgerError, NewEntry, PostedEntry, Precondition, Side, Violations, now, plan_posting,
};
use crate::events::{self, SOURCE, Topics};
use crate::storage::{self, AppendOutcome, Write};
use sha2::Digest as _;

/// Idempotency scope of PostEntry (entries posted from events share it, so an entry id means one
/// entry whichever way it arrived).
pub const POST_ENTRY_SCOPE: &str = "/fintech.ledger.v1.LedgerService/PostEntry";
/// SQLSTATE of a detected deadlock.
/// First backoff after a conflict; doubles up to [`MAX_BACKOFF`], with full jitter.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// Longest backoff between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// How postings run.
#[derive(Debug, Clone)]
pub struct PostingSettings {
    /// Attempts of one posting before ABORTED (at least 1).
    pub max_attempts: u32,
    /// Lock the affected streams (in order) before reading them; `false` is pure optimistic
    /// concurrency (detect and retry), kept to measure the difference.
    pub lock_streams: bool,
    /// Longest wait for one lock before the attempt is retried.
    pub lock_timeout: Duration,
}

impl Default for PostingSettings {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            lock_streams: true,
            lock_timeout: Duration::from_secs(2),
        }
    }
}

/// A consumed event to record in `processed_events` in the posting's transaction.
#[derive(Debug, Clone, Copy)]
pub struct Inbox<'a> {
    /// Consumer name.
    pub consumer: &'a str,
    /// CloudEvents id.
    pub event_id: &'a str,
}

/// One entry of [`Ledger::post_batch`].
#[derive(Debug)]
pub struct BatchPosting<'a> {
    /// The entry.
    pub entry: &'a NewEntry,
    /// The consumed event it comes from.
    pub inbox: Inbox<'a>,
    /// The span it is posted in (the event's `kafka.consume` span).
    pub span: tracing::Span,
}

/// How a posting ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PostOutcome {
    /// Posted now.
    Posted(pb::PostEntryResponse),
    /// Posted before with the same content: the first response.
    Replayed(pb::PostEntryResponse),
    /// The consumed event was processed before: nothing done.
    AlreadyProcessed,
    /// A hold was captured now ([`Ledger::capture`]).
    Captured(Box<pb::CaptureHoldResponse>),
    /// The capture was made before with the same content: the first response.
    CaptureReplayed(Box<pb::CaptureHoldResponse>),
}

/// What a capture asks of its hold besides the entry ([`Ledger::capture`]).
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// The hold.
    pub hold_id: String,
    /// Amount captured; the entry debits the held account by exactly this.
    pub amount: i64,
    /// What happens to the rest.
    pub remainder: Remainder,
}

impl CaptureSpec {
    fn fingerprint(&self, entry: &NewEntry) -> String {
        let remainder = match self.remainder {
            Remainder::Release => "release",
            Remainder::Keep => "keep",
        };
        let canonical = format!(
            "capture\n{}\n{}\n{}\n{remainder}",
            entry.fingerprint(),
            self.hold_id,
            self.amount
        );
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    }
}

/// Why a posting failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The ledger refused it or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The entry id is in use by another entry, or being posted right now.
    #[error(transparent)]
    Idempotency(#[from] IdempotencyError),
}

impl PostError {
    /// Whether retrying can never help (the input or the ledger's rules refuse it).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Ledger(error) => matches!(
                error,
                LedgerError::Invalid(_)
                    | LedgerError::Rejected(_)
                    | LedgerError::EntryAlreadyPosted(_)
                    | LedgerError::AccountNotFound(_)
            ),
            Self::Idempotency(error) => matches!(error, IdempotencyError::Conflict { .. }),
        }
    }
}

enum Attempt {
    Done(PostOutcome),
    Retry(String),
}

/// The ledger's write side: postings and account openings.
#[derive(Debug)]
pub struct Ledger {
    pool: PgPool,
    idempotency: IdempotencyStore,
    topics: Topics,
    settings: PostingSettings,
    /// Ids of system accounts already known to exist, by code (they are never deleted).
    system_accounts: Mutex<HashMap<String, Uuid>>,
}

impl Ledger {
    /// A ledger over `pool` publishing on `topics`.
    pub fn new(pool: PgPool, idempotency: IdempotencyStore, topics: Topics, settings: PostingSettings) -> Self {
        Self {
            pool,
            idempotency,
            topics,
            settings,
            system_accounts: Mutex::new(HashMap::new()),
        }
    }

    /// The pool (reads go straight to storage).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How postings retry and lock.
    pub fn settings(&self) -> &PostingSettings {
        &self.settings
    }

    /// The topics it publishes on.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The shared idempotency store.
    pub fn idempotency(&self) -> &IdempotencyStore {
        &self.idempotency
    }

    /// Posts `entry`, retrying conflicts (see the module docs). With `inbox`, the consumed event
    /// is recorded in the same transaction and an event seen before posts nothing.
    #[tracing::instrument(name = "ledger.post", skip_all, fields(entry_id = %entry.entry_id, attempts = tracing::field::Empty))]
    pub async fn post(&self, entry: &NewEntry, inbox: Option<Inbox<'_>>) -> Result<PostOutcome, PostError> {
        self.run(entry, inbox, None).await
    }

    /// Captures a hold with `entry` (whose lines debit the held account by exactly
    /// `capture.amount`): the entry, the `HoldCaptured` event right after its posting in the held
    /// account's stream, the hold's new state and both outbox events in one transaction, with the
    /// posting protocol's locks and retries. Idempotent by entry id.
    #[tracing::instrument(name = "ledger.capture", skip_all, fields(entry_id = %entry.entry_id, hold_id = %capture.hold_id))]
    pub async fn capture(&self, entry: &NewEntry, capture: &CaptureSpec) -> Result<PostOutcome, PostError> {
        self.run(entry, None, Some(capture)).await
    }

    async fn run(
        &self,
        entry: &NewEntry,
        inbox: Option<Inbox<'_>>,
        capture: Option<&CaptureSpec>,
    ) -> Result<PostOutcome, PostError> {
        let key = IdempotencyKey::parse(&entry.entry_id).map_err(|error| {
            let mut violations = Violations::default();
            violations.add("entry_id", error.to_string());
            LedgerError::Invalid(violations)
        })?;
        let fingerprint = capture.map_or_else(|| entry.fingerprint(), |capture| capture.fingerprint(entry));
        let account_ids = entry.account_ids();
        let attempts = self.settings.max_attempts.max(1);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=attempts {
            match self
                .attempt(entry, &key, &fingerprint, &account_ids, inbox, capture)
                .await?
            {
                Attempt::Done(outcome) => {
                    tracing::Span::current().record("attempts", attempt);
                    return Ok(outcome);
                }
                Attempt::Retry(reason) => {
                    tracing::debug!(attempt, %reason, "posting conflicted, retrying");
                    if attempt < attempts {
                        let jittered = rand::rng().random_range(Duration::ZERO..=backoff);
                        tokio::time::sleep(jittered).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        tracing::warn!(attempts, "posting gave up after repeated conflicts");
        Err(LedgerError::Contention { attempts }.into())
    }

    async fn attempt(
        &self,
        entry: &NewEntry,
        key: &IdempotencyKey,
        fingerprint: &str,
        account_ids: &[Uuid],
        inbox: Option<Inbox<'_>>,
        capture: Option<&CaptureSpec>,
    ) -> Result<Attempt, PostError> {
        let mut transaction = match self.pool.begin().await {
            Ok(transaction) => transaction,
            Err(error) => return Err(LedgerError::Internal(anyhow::Error::new(error).context("begin")).into()),
        };
        let outcome = match self.set_lock_timeout(&mut transaction).await {
            Ok(()) => {
                self.attempt_in(&mut transaction, entry, key, fingerprint, account_ids, inbox, capture)
                    .await
            }
            Err(error) => classify(error),
        };
        match outcome {
            Ok(Attempt::Done(done)) => match transaction.commit().await {
                Ok(()) => Ok(Attempt::Done(done)),
                Err(error) => classify(anyhow::Error::new(error).context("commit posting")),
            },
            other => {
                if let Err(error) = transaction.rollback().await {
                    tracing::warn!(%error, "rollback of a posting failed");
                }
                other
            }
        }
    }

    /// Bounds every lock wait of the current transaction by `lock_timeout`.
    pub(crate) async fn set_lock_timeout(&self, conn: &mut PgConnection) -> anyhow::Result<()> {
        let timeout = format!("{}ms", self.settings.lock_timeout.as_millis().max(1));
        // A request's deadline bounds every statement of the posting too (ADR 0017).
        let statement_timeout = fintech_platform::grpc::deadline::remaining()
            .map(|remaining| format!("{}ms", remaining.as_millis().max(1)));
        sqlx::query(
            "SELECT set_config('lock_timeout', $1, true), \
                    CASE WHEN $2::text IS NOT NULL THEN set_config('statement_timeout', $2, true) END",
        )
        .bind(&timeout)
        .bind(statement_timeout)
        .execute(&mut *conn)
        .await
        .context("set lock_timeout")?;
        Ok(())
    }

    /// Posts consumed entries in one transaction: one commit for all of them. Each runs in its
    /// own `span` (so its `ledger.entry_posted` continues its event's trace) and is recorded in
    /// its `inbox`. The accounts of all of them are locked first, in the global order, so batches
    /// never deadlock with each other or with single postings. All or nothing: an entry that
    /// conflicts, is refused or was already posted under another event makes the whole batch
    /// fail, so the caller can post each one alone (with retries, and the error of that one).
    #[tracing::instrument(name = "ledger.post_batch", skip_all, fields(entries = postings.len()))]
    pub async fn post_batch(&self, postings: &[BatchPosting<'_>]) -> Result<(), PostError> {
        let internal = |error: anyhow::Error| PostError::Ledger(LedgerError::Internal(error));
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(|error| internal(anyhow::Error::new(error).context("begin")))?;
        self.set_lock_timeout(&mut transaction).await.map_err(internal)?;
        let mut all_accounts: Vec<Uuid> = postings
            .iter()
            .flat_map(|posting| posting.entry.account_ids())
            .collect();
        all_accounts.sort_unstable();
        all_accounts.dedup();
        storage::account_states(&mut transaction, &all_accounts, self.settings.lock_streams)
            .await
            .map_err(internal)?;
        for posting in postings {
            let entry = posting.entry;
            let key = IdempotencyKey::parse(&entry.entry_id).map_err(|error| {
                let mut violations = Violations::default();
                violations.add("entry_id", error.to_string());
                LedgerError::Invalid(violations)
            })?;
            let attempt = self
                .attempt_in(
                    &mut transaction,
                    entry,
                    &key,
                    &entry.fingerprint(),
                    &entry.account_ids(),
                    Some(posting.inbox),
                    None,
                )
                .instrument(posting.span.clone())
                .await?;
            match attempt {
                Attempt::Done(outcome) => {
                    let _entered = posting.span.enter();
                    match outcome {
                        PostOutcome::Posted(_) => tracing::info!(entry_id = %entry.entry_id, "tax posting recorded"),
                        PostOutcome::Replayed(_) => {
                            tracing::info!(entry_id = %entry.entry_id, "transaction already posted, nothing to do");
                        }
                        PostOutcome::AlreadyProcessed => {
                            tracing::info!(ce_id = %posting.inbox.event_id, "event already processed");
                        }
                        PostOutcome::Captured(_) | PostOutcome::CaptureReplayed(_) => {}
                    }
                }
                Attempt::Retry(reason) => {
                    return Err(internal(anyhow::anyhow!(
                        "entry {} conflicted: {reason}",
                        entry.entry_id
                    )));
                }
            }
        }
        transaction
            .commit()
            .await
            .map_err(|error| internal(anyhow::Error::new(error).context("commit batch")))?;
        Ok(())
    }

    // The protocol's inputs, each needed by a different step; bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_in(
        &self,
        conn: &mut PgConnection,
        entry: &NewEntry,
        key: &IdempotencyKey,
        fingerprint: &str,
        account_ids: &[Uuid],
        inbox: Option<Inbox<'_>>,
        capture: Option<&CaptureSpec>,
    ) -> Result<Attempt, PostError> {
        if let Some(inbox) = inbox {
            match mark_processed(conn, inbox.consumer, inbox.event_id).await {
                Ok(true) => {}
                Ok(false) => return Ok(Attempt::Done(PostOutcome::AlreadyProcessed)),
                Err(error) => return classify(anyhow::Error::new(error).context("record processed event")),
            }
        }
        match self.idempotency.claim(conn, POST_ENTRY_SCOPE, key, fingerprint).await {
            Ok(Claim::New) => {}
            Ok(Claim::Replay(encoded)) if capture.is_some() => {
                let response = pb::CaptureHoldResponse::decode(encoded.as_slice())
                    .context("stored CaptureHold response does not decode")
                    .map_err(LedgerError::Internal)?;
                return Ok(Attempt::Done(PostOutcome::CaptureReplayed(Box::new(response))));
            }
            Ok(Claim::Replay(encoded)) => {
                let response = pb::PostEntryResponse::decode(encoded.as_slice())
                    .context("stored PostEntry response does not decode")
                    .map_err(LedgerError::Internal)?;
                return Ok(Attempt::Done(PostOutcome::Replayed(response)));
            }
            Err(IdempotencyError::Database(error)) => {
                return classify(anyhow::Error::new(error).context("claim entry id"));
            }
            Err(error) => return Err(error.into()),
        }

        let result = self.append(conn, entry, key, account_ids, capture).await;
        match result {
            Ok(Ok(outcome)) => Ok(Attempt::Done(outcome)),
            Ok(Err(reason)) => Ok(Attempt::Retry(reason)),
            Err(PostError::Ledger(LedgerError::Internal(error))) => classify(error),
            Err(error) => Err(error),
        }
    }

    /// Steps 2-5 of the protocol: everything under the stream locks. The response and the
    /// `ledger.entry_posted` event follow from the locked state and the plan, so they are built
    /// before the append and written by the same statement: one locking read, one write, the
    /// commit. With `capture`, the hold's row is locked after the streams, checked, and its
    /// `HoldCaptured` event, new state and `ledger.hold_captured` are written after the entry.
    /// `Ok(Err(reason))` asks for a retry.
    async fn append(
        &self,
        conn: &mut PgConnection,
        entry: &NewEntry,
        key: &IdempotencyKey,
        account_ids: &[Uuid],
        capture: Option<&CaptureSpec>,
    ) -> Result<Result<PostOutcome, String>, PostError> {
        // Locks (in the global order) and reads the current heads and balances in one statement.
        let mut states = storage::account_states(conn, account_ids, self.settings.lock_streams)
            .await
            .map_err(LedgerError::Internal)?;
        // Never earlier than any affected stream's last event: as-of-time reads stay prefixes.
        let posted_at = states
            .values()
            .map(|state| state.updated_at)
            .chain([now()])
            .max()
            .unwrap_or_else(now);
        let captured = match capture {
            None => None,
            Some(spec) => {
                let hold = storage::holds::get_hold(conn, &spec.hold_id, true)
                    .await
                    .map_err(LedgerError::Internal)?
                    .ok_or_else(|| LedgerError::HoldNotFound(spec.hold_id.clone()))?;
                let rejected = |kind: &'static str, description: String| {
                    LedgerError::Rejected(vec![Precondition {
                        kind,
                        subject: "hold_id".to_owned(),
                        description,
                    }])
                };
                let plan = plan_capture(&hold, spec.amount, spec.remainder)
                    .map_err(|(kind, description)| rejected(kind, description))?;
                let debited: i64 = entry
                    .lines
                    .iter()
                    .filter(|line| line.account_id == hold.account_id && line.side == Side::Debit)
                    .map(|line| line.amount)
                    .sum();
                let credited = entry
                    .lines
                    .iter()
                    .any(|line| line.account_id == hold.account_id && line.side == Side::Credit);
                if debited != spec.amount || credited {
                    return Err(LedgerError::Invalid(Violations::single(
                        "lines",
                        format!(
                            "must debit the held account {} by exactly {} (and not credit it), debit {debited}",
                            hold.account_id, spec.amount
                        ),
                    ))
                    .into());
                }
                let state = states
                    .get_mut(&hold.account_id)
                    .ok_or_else(|| LedgerError::Internal(anyhow::anyhow!("held account not locked")))?;
                // The capture's posting already counts the capture: what is held after both.
                state.held -= plan.amount + plan.released;
                Some((hold, plan))
            }
        };
        let plan = plan_posting(entry, &states)?;

        let events: Vec<StoredEvent> = plan
            .iter()
            .map(|posting| {
                let body = EventBody::EntryPosted(EntryPosted {
                    entry_id: entry.entry_id.clone(),
                    description: entry.description.clone(),
                    metadata: entry.metadata.clone(),
                    line_count: entry.lines.len(),
                    lines: posting
                        .lines
                        .iter()
                        .map(|&(line_index, side, amount)| PostedLine {
                            line_index,
                            side: side.as_str().to_owned(),
                            amount,
                            currency: entry.lines[line_index].currency.as_str().to_owned(),
                        })
                        .collect(),
                    balance_after: posting.balance_after,
                    held_after: Some(posting.held_after),
                    available_after: Some(posting.available_after),
                });
                StoredEvent::chained(
                    posting.account_id,
                    posting.expected_version + 1,
                    &posting.previous_hash,
                    posted_at,
                    &body,
                )
            })
            .collect();
        let stream_appends: Vec<storage::StreamAppend<'_>> = plan
            .iter()
            .zip(&events)
            .map(|(posting, event)| storage::StreamAppend {
                event,
                expected_version: posting.expected_version,
                balance_after: posting.balance_after,
                held_after: posting.held_after,
            })
            .collect();
        let appends: Vec<Append> = plan
            .iter()
            .zip(&events)
            .map(|(posting, event)| Append {
                account_id: posting.account_id,
                version: event.version,
                hash: event.hash.clone(),
                balance_after: posting.balance_after,
                held_after: posting.held_after,
                available_after: posting.available_after,
            })
            .collect();

        let posted = PostedEntry {
            entry_id: entry.entry_id.clone(),
            description: entry.description.clone(),
            metadata: entry.metadata.clone(),
            lines: entry.lines.clone(),
            posted_at,
            appends,
        };
        // The hold's event right after the capture's posting in the held account's stream.
        let hold_change = captured.as_ref().and_then(|(hold, capture_plan)| {
            let (index, posting) = plan
                .iter()
                .enumerate()
                .find(|(_, posting)| posting.account_id == hold.account_id)?;
            let event = StoredEvent::chained(
                hold.account_id,
                posting.expected_version + 2,
                &events[index].hash,
                posted_at,
                &EventBody::HoldCaptured(HoldCapturedEvent {
                    hold_id: hold.hold_id.clone(),
                    entry_id: entry.entry_id.clone(),
                    amount: capture_plan.amount,
                    released: capture_plan.released,
                    held_after: posting.held_after,
                    available_after: posting.available_after,
                }),
            );
            let mut after = hold.clone();
            after.held = capture_plan.held_after;
            after.captured += capture_plan.amount;
            after.status = capture_plan.status_after;
            after.capture_entry_ids.push(entry.entry_id.clone());
            after.version += 1;
            after.updated_at = posted_at;
            after.balance = crate::domain::hold::HoldBalance {
                balance: posting.balance_after,
                held: posting.held_after,
                available: posting.available_after,
                version: event.version,
                updated_at: posted_at,
            };
            Some((event, after, *capture_plan))
        });
        if captured.is_some() && hold_change.is_none() {
            return Err(LedgerError::Internal(anyhow::anyhow!("the capture did not touch the held account")).into());
        }
        let balances: Vec<pb::Balance> = posted
            .appends
            .iter()
            .map(|append| {
                let version = match &hold_change {
                    Some((event, _, _)) if event.stream_id == append.account_id => event.version,
                    _ => append.version,
                };
                pb::Balance {
                    account_id: append.account_id.to_string(),
                    currency: states[&append.account_id].account.currency.as_str().to_owned(),
                    balance: append.balance_after,
                    version,
                    updated_at: Some(crate::proto::timestamp(posted_at)),
                    held: append.held_after,
                    available: append.available_after,
                }
            })
            .collect();
        let entry_wire = pb::Entry::from(&posted);
        let event = events::entry_posted(&self.topics, &entry_wire, posted.posted_at);
        let (outcome, encoded) = match &hold_change {
            None => {
                let response = pb::PostEntryResponse {
                    entry: Some(entry_wire),
                    balances,
                };
                let encoded = response.encode_to_vec();
                (PostOutcome::Posted(response), encoded)
            }
            Some((_, after, _)) => {
                let response = pb::CaptureHoldResponse {
                    hold: Some(crate::proto::hold_to_wire(after)),
                    entry: Some(entry_wire),
                    balances,
                };
                let encoded = response.encode_to_vec();
                (PostOutcome::Captured(Box::new(response)), encoded)
            }
        };
        let effects = storage::EntryEffects {
            outbox: OutboxRow::new(SOURCE, &event),
            idempotency_scope: POST_ENTRY_SCOPE,
            idempotency_key: key.as_str(),
            response: &encoded,
        };
        match storage::append_entry(
            conn,
            &entry.entry_id,
            posted_at,
            entry.lines.len(),
            &stream_appends,
            &effects,
        )
        .await
        .map_err(LedgerError::Internal)?
        {
            AppendOutcome::Appended => {}
            AppendOutcome::StreamMoved => {
                return Ok(Err("a stream moved past the version this attempt read".to_owned()));
            }
            AppendOutcome::EntryExists => return Err(LedgerError::EntryAlreadyPosted(entry.entry_id.clone()).into()),
        }
        if let Some((hold_event, after, capture_plan)) = &hold_change {
            let internal = |error: anyhow::Error| PostError::Ledger(LedgerError::Internal(error));
            if !storage::holds::append_hold_event(conn, hold_event, hold_event.version - 1, after.balance.held)
                .await
                .map_err(internal)?
            {
                return Ok(Err("the held account's stream moved during the capture".to_owned()));
            }
            if !storage::holds::update_hold(conn, after).await.map_err(internal)? {
                return Ok(Err("the hold changed during the capture".to_owned()));
            }
            storage::holds::insert_capture(
                conn,
                &entry.entry_id,
                &after.hold_id,
                capture_plan.amount,
                capture_plan.released,
                posted_at,
            )
            .await
            .map_err(internal)?;
            if after.status != HoldStatus::Active {
                storage::holds::insert_ending(conn, &after.hold_id, after.status, posted_at, hold_event.version)
                    .await
                    .map_err(internal)?;
            }
            let hold_event = events::hold_changed(&self.topics, after, events::HoldChange::Captured);
            fintech_platform::outbox::enqueue(conn, SOURCE, &hold_event)
                .await
                .map_err(|error| internal(anyhow::Error::new(error).context("queue hold_captured")))?;
        }
        Ok(Ok(outcome))
    }

    /// Opens `account` (stream, opening event, projections) in the caller's transaction;
    /// [`Write::Lost`] when its code is taken.
    pub async fn open_account(conn: &mut PgConnection, account: &Account) -> anyhow::Result<Write> {
        let opened = StoredEvent::chained(
            account.account_id,
            1,
            GENESIS_HASH,
            account.created_at,
            &EventBody::AccountOpened(AccountOpened::from(account)),
        );
        storage::open_account(conn, account, &opened).await
    }

    /// The ids of `accounts`, opening those that do not exist yet (each in its own short
    /// transaction, so concurrent openers of one code agree on one account).
    pub async fn ensure_system_accounts(&self, accounts: &[SystemAccount]) -> anyhow::Result<BTreeMap<String, Uuid>> {
        let mut ids = BTreeMap::new();
        for wanted in accounts {
            let cached = self
                .system_accounts
                .lock()
                .map_err(|_| anyhow::anyhow!("system account cache poisoned"))?
                .get(&wanted.code)
                .copied();
            let id = match cached {
                Some(id) => id,
                None => {
                    let id = self.open_system_account(wanted).await?;
                    self.system_accounts
                        .lock()
                        .map_err(|_| anyhow::anyhow!("system account cache poisoned"))?
                        .insert(wanted.code.clone(), id);
                    id
                }
            };
            ids.insert(wanted.code.clone(), id);
        }
        Ok(ids)
    }

    async fn open_system_account(&self, wanted: &SystemAccount) -> anyhow::Result<Uuid> {
        for _ in 0..2 {
            let mut conn = self.pool.acquire().await.context("acquire connection")?;
            if let Some(existing) = storage::get_account_by_code(&mut conn, &wanted.code).await? {
                anyhow::ensure!(
                    existing.system
                        && existing.account_type == wanted.account_type
                        && existing.currency == wanted.currency,
                    "account {} exists but is not the expected system account",
                    wanted.code
                );
                return Ok(existing.account_id);
            }
            drop(conn);
            let account = wanted.open(now());
            let mut transaction = self.pool.begin().await.context("begin")?;
            match Self::open_account(&mut transaction, &account).await? {
                Write::Done => {
                    transaction.commit().await.context("commit system account")?;
                    tracing::info!(code = %account.code, account_id = %account.account_id, "system account opened");
                    return Ok(account.account_id);
                }
                // Opened concurrently by someone else: read theirs.
                Write::Lost => transaction.rollback().await.context("rollback")?,
            }
        }
        anyhow::bail!("system account {} could not be opened", wanted.code)
    }
}

/// A retry for conflicts, serialization failures, deadlocks and lock timeouts; an internal error
/// otherwise.
/// Whether `error` is a conflict that a new attempt may not meet again.
pub(crate) fn is_conflict(error: &anyhow::Error) -> bool {
    matches!(
        DbFault::in_chain(error.as_ref()),
        Some(DbFault::Conflict | DbFault::UniqueViolation(_))
    )
}

fn classify(error: anyhow::Error) -> Result<Attempt, PostError> {
    match DbFault::in_chain(error.as_ref()) {
        Some(DbFault::Conflict | DbFault::UniqueViolation(_)) => Ok(Attempt::Retry(format!("{error:#}"))),
        _ => Err(LedgerError::Internal(error).into()),
    }
}
