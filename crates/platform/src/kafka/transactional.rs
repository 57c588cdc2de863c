//! Consumers whose effect is database work: the consumer inbox (`processed_events`) and the effect
//! of each event commit in one PostgreSQL transaction, and a batch of events shares one.
//!
//! # Guarantees
//! - **Once per event.** [`InTransaction`] records the event's CloudEvents id with
//!   [`mark_processed`] and applies [`TransactionalHandler::apply`] in the same transaction; an id
//!   seen before (a redelivery, or a duplicate inside the batch) applies nothing.
//! - **All or nothing per batch.** A batch commits once, after every event in it applied. Any
//!   failure rolls the whole batch back, and the consumer then handles each record of it alone
//!   ([`super::consumer`]), so one bad record is retried or dead-lettered without the others.
//! - **No deadlock between batches.** A batch takes the locks its events need up front, in one
//!   global order ([`TransactionalHandler::lock_batch`]): two lanes (or two instances) whose
//!   batches touch the same aggregates in a different order wait for each other instead of
//!   deadlocking. PostgreSQL would break a deadlock anyway, but only after `deadlock_timeout`.
//!
//! # Failure modes
//! - Database down or restarting: `begin`, a statement or the commit fails, the batch rolls back
//!   (nothing applied, nothing marked), and the records are retried one at a time with backoff.
//! - Killed before the commit: nothing of the batch is stored and no offset of it was committed,
//!   so the records are delivered again.
//! - A batch holds its locks until it commits: larger batches mean fewer commits but longer waits
//!   for anyone else locking the same aggregates (`KAFKA_CONSUMER_MAX_BATCH`).

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

use super::consumer::{BatchFailure, ConsumedEvent, EventHandler, HandlerError, consume_span, mark_processed};

/// What a database-backed consumer does with each event, inside a transaction it is given.
#[async_trait]
pub trait TransactionalHandler: Send + Sync + 'static {
    /// Name of the consumer in `processed_events`.
    fn consumer(&self) -> &str;

    /// Applies the effect of `event` on `conn`, an open transaction in which the event has just
    /// been recorded as processed. An error rolls the transaction back.
    async fn apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError>;

    /// Takes, in one global order, the locks `apply` will take for `events`, before any of them
    /// is applied (see the module docs). Records it cannot read can be skipped: `apply` rejects
    /// them later. The default takes none.
    async fn lock_batch(&self, _conn: &mut PgConnection, _events: &[ConsumedEvent]) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// An [`EventHandler`] that runs a [`TransactionalHandler`] in transactions of `pool`: one per
/// record, or one per batch.
#[derive(Debug, Clone)]
pub struct InTransaction<H> {
    pool: PgPool,
    handler: H,
}

impl<H: TransactionalHandler> InTransaction<H> {
    /// `handler` over `pool`.
    pub fn new(pool: PgPool, handler: H) -> Self {
        Self { pool, handler }
    }

    /// The wrapped handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    async fn mark_and_apply(&self, conn: &mut PgConnection, event: &ConsumedEvent) -> Result<(), HandlerError> {
        let metadata = event.valid_metadata()?;
        if mark_processed(conn, self.handler.consumer(), &metadata.id).await? {
            self.handler.apply(conn, event).await?;
        } else {
            tracing::debug!(ce_id = %metadata.id, "event already processed");
        }
        Ok(())
    }
}

#[async_trait]
impl<H: TransactionalHandler> EventHandler for InTransaction<H> {
    async fn handle(&self, event: &ConsumedEvent) -> Result<(), HandlerError> {
        // Invalid records are rejected before the database is touched.
        event.valid_metadata()?;
        let mut transaction = self.pool.begin().await?;
        self.mark_and_apply(&mut transaction, event).await?;
        transaction.commit().await?;
        Ok(())
    }

    fn max_batch(&self) -> usize {
        usize::MAX
    }

    async fn handle_batch(&self, events: &[ConsumedEvent]) -> Result<(), BatchFailure> {
        // All or nothing: whatever fails, none of the batch is finished.
        let rolled_back = |error: HandlerError| BatchFailure { finished: 0, error };
        if let Some(invalid) = events.iter().find_map(|event| event.valid_metadata().err()) {
            // Handled one at a time, the invalid record is dead-lettered and the others applied.
            return Err(rolled_back(invalid));
        }
        let mut transaction = self.pool.begin().await.map_err(|error| rolled_back(error.into()))?;
        self.handler
            .lock_batch(&mut transaction, events)
            .await
            .map_err(rolled_back)?;
        for event in events {
            self.mark_and_apply(&mut transaction, event)
                .instrument(consume_span(event))
                .await
                .map_err(rolled_back)?;
        }
        transaction.commit().await.map_err(|error| rolled_back(error.into()))?;
        Ok(())
    }
}
