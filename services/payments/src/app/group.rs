//! Group commit of `CreateOrder` and `CreateTransaction` (ADR 0030; TigerBeetle's lesson applied
//! to PostgreSQL): commands that arrive while earlier ones are being written are applied together,
//! in one transaction, with one statement per kind of effect instead of one transaction of four
//! round trips per command.
//!
//! A group transaction, for the commands of one batch ([`fintech_platform::batch`]):
//! 1. claims every idempotency key in one statement ([`IdempotencyStore::claim_batch`]): a
//!    replayed or conflicting key is answered at once and takes no further part;
//! 2. locks the orders of the transactions in one statement, in id order (`FOR UPDATE`, as the
//!    single path does, so an order's events still follow its updates), and validates each
//!    transaction against its order: **a command that fails, fails alone**: its error is its
//!    answer and its claim is released in the same transaction, as if it had rolled back;
//! 3. writes every order, transaction, outbox row (each with its request's trace context),
//!    stored response and released claim in one statement, and commits once.
//!
//! Nothing is answered as done before the commit. When anything else goes wrong (a key that
//! another transaction is still claiming, a deadlock, a lost connection, a failed commit), the
//! commands of the batch are answered [`Outcome::Alone`]: each runs again by itself through the
//! single path, where the claim decides: a command whose group did commit is replayed from its
//! stored response, one whose group rolled back runs once. A command without an idempotency key
//! cannot be told apart after an ambiguous commit, so it gets the error instead of a second run.
//!
//! There is no timer: the batcher gives a free worker everything queued, so a lone client is a
//! batch of one and waits for nothing, and the batches grow with the load.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fintech_platform::batch::Batcher;
use fintech_platform::idempotency::{Claim, IdempotencyError, IdempotencyKey, IdempotencyStore, ResponseSlot};
use fintech_platform::outbox::{OutboxEvent, OutboxRow};
use fintech_platform::telemetry::TraceHeaders;
use fintech_proto::payments as pb;
use prost::Message;
use sqlx::{PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::GroupCommitSettings;
use crate::domain::{self, CreateTransaction, Order, PaymentsError};
use crate::events::{self, Change, SOURCE, Topics};
use crate::storage;

/// How long a group's claim waits for a key that another transaction is claiming before the
/// group gives up and every command runs alone (where the full `lock_wait` applies).
const GROUP_CLAIM_WAIT: Duration = Duration::from_millis(100);

/// One create command, validated as far as it can be without the database.
#[derive(Debug)]
pub enum Command {
    /// A new order (already built: id, timestamps, version 1).
    CreateOrder(Order),
    /// A new transaction on an order, as the caller sent it.
    CreateTransaction {
        /// The validated fields.
        command: CreateTransaction,
        /// The order id as sent (for NOT_FOUND).
        order_id: String,
        /// The customer a customer token is limited to.
        owner: Option<String>,
    },
}

/// The idempotency key of a command, with its method's scope and the request's fingerprint.
#[derive(Debug, Clone)]
pub struct ClaimOf {
    /// The method's scope (`/fintech.payments.v1.PaymentsService/CreateOrder`).
    pub scope: String,
    /// The key, bound to its caller.
    pub key: IdempotencyKey,
    /// The request's fingerprint.
    pub fingerprint: String,
}

impl ClaimOf {
    /// `(stored scope, key, fingerprint)`, as [`IdempotencyStore::claim_batch`] takes it.
    fn stored(&self) -> (String, String, String) {
        (
            self.key.stored_scope(&self.scope),
            self.key.as_str().to_owned(),
            self.fingerprint.clone(),
        )
    }
}

/// What a command gets back from its group.
#[derive(Debug)]
pub enum Outcome {
    /// The group decided: the encoded response (committed, or replayed from the key's earlier
    /// commit) or the command's own error.
    Done(Result<Vec<u8>, PaymentsError>),
    /// The group could not decide for this command: run it by itself.
    Alone,
}

/// A command waiting for its group.
#[derive(Debug)]
pub struct Job {
    command: Command,
    claim: Option<ClaimOf>,
    trace: TraceHeaders,
    deadline: Option<Instant>,
    answer: oneshot::Sender<Outcome>,
}

/// The group committer: queues commands and applies them in group transactions.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    batcher: Batcher<Job>,
}

impl GroupCommit {
    /// Starts the workers (`settings.workers` group transactions at once) on `pool`.
    pub fn start(pool: PgPool, idempotency: IdempotencyStore, topics: Topics, settings: GroupCommitSettings) -> Self {
        let writer = Arc::new(Writer {
            pool,
            idempotency,
            topics,
        });
        let batcher = Batcher::start(
            settings.workers,
            settings.max_batch,
            Arc::new(move |jobs| {
                let writer = Arc::clone(&writer);
                let span = tracing::debug_span!("payments.group_commit", commands = jobs.len());
                Box::pin(async move { writer.apply(jobs).instrument(span).await })
            }),
        );
        Self { batcher }
    }

    /// Applies `command` in the next group, with the trace context and deadline of the current
    /// request; `claim` when it has an idempotency key.
    pub async fn submit(&self, command: Command, claim: Option<ClaimOf>) -> Outcome {
        let (answer, outcome) = oneshot::channel();
        let deadline = fintech_platform::grpc::deadline::remaining().map(|remaining| Instant::now() + remaining);
        let job = Job {
            command,
            claim,
            trace: TraceHeaders::current(),
            deadline,
            answer,
        };
        if self.batcher.submit(job).is_err() {
            return Outcome::Alone;
        }
        // A closed channel: the group's task ended without answering (it panicked). Nothing of
        // this command is known to be committed, so the single path decides (by its key).
        outcome.await.unwrap_or(Outcome::Alone)
    }
}

/// What the workers share.
#[derive(Debug)]
struct Writer {
    pool: PgPool,
    idempotency: IdempotencyStore,
    topics: Topics,
}

/// A command of the group that is still to be written, with what it will write.
struct Pending {
    job: Job,
    response: Vec<u8>,
}

impl Writer {
    /// Applies one batch; answers every job.
    async fn apply(&self, jobs: Vec<Job>) {
        // A key seen twice in one batch: the later copies run alone once this group has ended
        // (then they replay its answer, or run if it rolled back), never racing its claim.
        let mut seen = HashSet::new();
        let mut group = Vec::with_capacity(jobs.len());
        let mut later = Vec::new();
        for job in jobs {
            let duplicate = job.claim.as_ref().is_some_and(|claim| {
                let (scope, key, _) = claim.stored();
                !seen.insert((scope, key))
            });
            if duplicate {
                later.push(job);
            } else if job.deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                let _ = job.answer.send(Outcome::Alone);
            } else {
                group.push(job);
            }
        }
        if group.len() == 1 {
            // A group of one: the single path's statements, cheaper for one command than the
            // group's array statements; the worker stays busy meanwhile, so what arrives queues.
            if let Some(job) = group.pop() {
                let outcome = self.alone(&job).await;
                let _ = job.answer.send(Outcome::Done(outcome));
            }
        } else if !group.is_empty() {
            self.commit(group).await;
        }
        answer_all(later, |_| Outcome::Alone);
    }

    /// Runs one command on the single path (its own transaction, its key claimed alone), with
    /// its request's deadline; the encoded response.
    async fn alone(&self, job: &Job) -> Result<Vec<u8>, PaymentsError> {
        let run = async {
            match &job.command {
                Command::CreateOrder(order) => {
                    let body = async |conn: &mut PgConnection, slot| {
                        super::insert_order(&self.topics, conn, slot, order, job.trace.clone()).await
                    };
                    self.run_alone(job, body).await
                }
                Command::CreateTransaction {
                    command,
                    order_id,
                    owner,
                } => {
                    let body = async |conn: &mut PgConnection, slot| {
                        let trace = job.trace.clone();
                        super::insert_transaction(&self.topics, conn, slot, command, order_id, owner.as_deref(), trace)
                            .await
                    };
                    self.run_alone(job, body).await
                }
            }
        };
        match job.deadline {
            Some(deadline) => fintech_platform::grpc::deadline::with_deadline(deadline, run).await,
            None => run.await,
        }
    }

    /// `body` in a transaction of its own, under the job's key when it has one.
    async fn run_alone<Resp: Message + Default>(
        &self,
        job: &Job,
        body: impl AsyncFnOnce(&mut PgConnection, Option<ResponseSlot>) -> Result<Resp, PaymentsError>,
    ) -> Result<Vec<u8>, PaymentsError> {
        match &job.claim {
            Some(claim) => self
                .idempotency
                .execute_folded_in_postgres(&self.pool, &claim.scope, &claim.key, &claim.fingerprint, body)
                .await
                .map(|(_, encoded)| encoded),
            None => {
                let mut transaction = self.pool.begin().await.map_err(IdempotencyError::Database)?;
                fintech_platform::db::bound_by_deadline(&mut transaction)
                    .await
                    .map_err(IdempotencyError::Database)?;
                let response = body(&mut transaction, None).await?;
                transaction.commit().await.map_err(IdempotencyError::Database)?;
                Ok(response.encode_to_vec())
            }
        }
    }

    /// Runs one group transaction; answers every job of `group`.
    async fn commit(&self, group: Vec<Job>) {
        let mut conn = match self.pool.begin().await {
            Ok(transaction) => transaction,
            Err(error) => {
                tracing::warn!(%error, "group commit: no transaction; the commands run alone");
                return answer_all(group, |_| Outcome::Alone);
            }
        };
        let pending = match self.write(&mut conn, group).await {
            Ok(pending) => pending,
            Err((group, error)) => {
                tracing::info!(%error, commands = group.len(), "group commit rolled back; the commands run alone");
                drop(conn);
                return answer_all(group, |_| Outcome::Alone);
            }
        };
        if pending.is_empty() {
            drop(conn);
            return;
        }
        match conn.commit().await {
            Ok(()) => {
                for Pending { job, response } in pending {
                    let _ = job.answer.send(Outcome::Done(Ok(response)));
                }
            }
            Err(error) => {
                // Ambiguous: the commit may have happened. A keyed command finds out by its key;
                // one without a key must not run a second time.
                tracing::warn!(%error, "group commit: commit failed");
                let message = error.to_string();
                for Pending { job, .. } in pending {
                    let outcome = if job.claim.is_some() {
                        Outcome::Alone
                    } else {
                        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, message.clone());
                        Outcome::Done(Err(IdempotencyError::Database(sqlx::Error::Io(lost)).into()))
                    };
                    let _ = job.answer.send(outcome);
                }
            }
        }
    }

    /// Claims, validates and writes the group in the open transaction `conn`. Returns the
    /// commands to answer after the commit (the others are answered already), or, on any
    /// database error, the commands not answered yet with the error (the caller rolls back).
    async fn write(&self, conn: &mut PgConnection, group: Vec<Job>) -> Result<Vec<Pending>, (Vec<Job>, anyhow::Error)> {
        // The group waits no longer than its most urgent command may. Generic plans: the
        // group's statements take arrays, whose custom plans (re-planned on every execution)
        // PostgreSQL keeps preferring for the short arrays of small groups.
        let statement_timeout = group.iter().filter_map(|job| job.deadline).min().map(|deadline| {
            format!(
                "{}ms",
                deadline.saturating_duration_since(Instant::now()).as_millis().max(1)
            )
        });
        if let Err(error) = sqlx::query(
            "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), \
             CASE WHEN $1::text IS NOT NULL THEN set_config('statement_timeout', $1, true) END",
        )
        .bind(statement_timeout)
        .execute(&mut *conn)
        .await
        {
            return Err((group, error.into()));
        }

        // 1. Claims.
        let claims: Vec<(String, String, String)> = group
            .iter()
            .filter_map(|job| job.claim.as_ref().map(ClaimOf::stored))
            .collect();
        let mut claimed = match self.idempotency.claim_batch(conn, &claims, GROUP_CLAIM_WAIT).await {
            Ok(claimed) => claimed.into_iter(),
            Err(error) => return Err((group, error.into())),
        };
        let mut live = Vec::with_capacity(group.len());
        for job in group {
            if job.claim.is_none() {
                live.push(job);
                continue;
            }
            match claimed.next() {
                Some(Ok(Claim::New)) => live.push(job),
                Some(Ok(Claim::Replay(encoded))) => {
                    let _ = job.answer.send(Outcome::Done(Ok(encoded)));
                }
                Some(Err(error)) => {
                    let _ = job.answer.send(Outcome::Done(Err(error.into())));
                }
                None => live.push(job),
            }
        }

        // 2. The orders of the transactions, locked; each transaction checked against its own.
        let order_ids: Vec<Uuid> = {
            let mut ids: Vec<Uuid> = live
                .iter()
                .filter_map(|job| match &job.command {
                    Command::CreateTransaction { command, .. } => Some(command.order_id),
                    Command::CreateOrder(_) => None,
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let orders: HashMap<Uuid, Order> = match storage::lock_orders(conn, &order_ids).await {
            Ok(orders) => orders.into_iter().map(|order| (order.order_id, order)).collect(),
            Err(error) => return Err((live, error)),
        };
        let now = domain::now();
        let mut events: Vec<OutboxEvent> = Vec::with_capacity(live.len());
        let mut transactions = Vec::new();
        let mut accepted: Vec<(Job, Vec<u8>)> = Vec::with_capacity(live.len());
        let mut released = Vec::new();
        for job in live {
            let built = match &job.command {
                Command::CreateOrder(order) => {
                    let response = pb::CreateOrderResponse {
                        order: Some(pb::Order::from(order)),
                    };
                    Ok((
                        events::order_event(&self.topics, order, Change::Created),
                        response.encode_to_vec(),
                        None,
                    ))
                }
                Command::CreateTransaction {
                    command,
                    order_id,
                    owner,
                } => orders
                    .get(&command.order_id)
                    .filter(|order| super::owns(owner.as_deref(), &order.customer_id))
                    .ok_or_else(|| PaymentsError::OrderNotFound(order_id.clone()))
                    .and_then(|order| command.clone().on_order(order, now))
                    .map(|transaction| {
                        let response = pb::CreateTransactionResponse {
                            transaction: Some(pb::Transaction::from(&transaction)),
                        };
                        let event = events::transaction_event(&self.topics, &transaction, Change::Created);
                        (event, response.encode_to_vec(), Some(transaction))
                    }),
            };
            match built {
                Ok((event, response, transaction)) => {
                    events.push(event);
                    transactions.extend(transaction);
                    accepted.push((job, response));
                }
                Err(error) => {
                    if let Some(claim) = &job.claim {
                        let (scope, key, _) = claim.stored();
                        released.push((scope, key));
                    }
                    let _ = job.answer.send(Outcome::Done(Err(error)));
                }
            }
        }
        if accepted.is_empty() && released.is_empty() {
            return Ok(Vec::new());
        }

        // 3. Every write in one statement.
        let writes = storage::GroupWrites {
            orders: accepted
                .iter()
                .filter_map(|(job, _)| match &job.command {
                    Command::CreateOrder(order) => Some(order),
                    Command::CreateTransaction { .. } => None,
                })
                .collect(),
            transactions,
            outbox: accepted
                .iter()
                .zip(&events)
                .map(|((job, _), event)| OutboxRow::traced(SOURCE, event, job.trace.clone()))
                .collect(),
            responses: accepted
                .iter()
                .filter_map(|(job, response)| {
                    job.claim.as_ref().map(|claim| {
                        let (scope, key, _) = claim.stored();
                        (scope, key, response.clone())
                    })
                })
                .collect(),
            released,
        };
        let written = storage::write_group(conn, &writes).await;
        drop(writes);
        match written {
            Ok(()) => Ok(accepted
                .into_iter()
                .map(|(job, response)| Pending { job, response })
                .collect()),
            Err(error) => Err((accepted.into_iter().map(|(job, _)| job).collect(), error)),
        }
    }
}

fn answer_all(jobs: Vec<Job>, outcome: impl Fn(&Job) -> Outcome) {
    for job in jobs {
        let answer = outcome(&job);
        let _ = job.answer.send(answer);
    }
}
