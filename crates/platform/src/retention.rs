//! Retention: the kit's jobs that delete what is no longer needed, so no platform table grows for
//! ever (ADR 0014).
//!
//! - **Published outbox rows** older than `OUTBOX_RETENTION` after their publication (unpublished
//!   and parked rows are never deleted);
//! - **idempotency keys** older than `IDEMPOTENCY_KEY_TTL` (a retry after that runs its command
//!   again, so the TTL must outlast every client's retries);
//! - **consumer inbox rows** (`processed_events`) older than `INBOX_RETENTION`, which must exceed
//!   the broker's retention of the consumed topics (`KAFKA_LOG_RETENTION`): a record can only be
//!   delivered again while it is still in the log, so its id is still in the inbox when it is.
//!
//! # Guarantees
//! - Nothing younger than its window is deleted: every statement compares with the database's
//!   clock (`now()`), never the application's.
//! - The hot path is never blocked: each `DELETE` removes at most `RETENTION_BATCH` rows chosen
//!   with `FOR UPDATE SKIP LOCKED` (a row some transaction holds is left for the next pass), in its
//!   own short transaction, and the job pauses between batches.
//! - A failed pass (database down) is logged, reported on the job's health component, and tried
//!   again after `RETENTION_INTERVAL`; it never stops the service.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::grpc::Component;

/// Pause between two batches of one pass, so a large backlog of old rows is deleted without
/// monopolising a connection or the disk.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// What the retention job keeps, and how it deletes.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Published outbox rows are kept this long after publication.
    pub outbox: Duration,
    /// Idempotency keys are kept this long after their command.
    pub idempotency_keys: Duration,
    /// Inbox rows are kept this long after their event was applied.
    pub inbox: Duration,
    /// Rows one `DELETE` removes.
    pub batch: i64,
    /// Pause between passes.
    pub interval: Duration,
}

impl RetentionSettings {
    /// The settings of `config`.
    pub fn of(config: &crate::config::PlatformConfig) -> Self {
        Self {
            outbox: config.outbox_retention,
            idempotency_keys: config.idempotency_key_ttl,
            inbox: config.inbox_retention,
            batch: config.retention_batch,
            interval: config.retention_interval,
        }
    }
}

/// Rows one pass deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Published outbox rows.
    pub outbox: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
    /// Inbox rows.
    pub inbox: u64,
}

/// One table's retention: its name (for logs and metrics) and the `DELETE` of one batch (`$1` the
/// window in seconds, `$2` the batch size).
struct Table {
    name: &'static str,
    delete_batch: &'static str,
}

const OUTBOX: Table = Table {
    name: "outbox",
    delete_batch: "DELETE FROM outbox WHERE id IN ( \
        SELECT id FROM outbox \
        WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1) \
        ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
};

const IDEMPOTENCY_KEYS: Table = Table {
    name: "idempotency_keys",
    delete_batch: "DELETE FROM idempotency_keys WHERE (scope, idempotency_key) IN ( \
        SELECT scope, idempotency_key FROM idempotency_keys \
        WHERE created_at < now() - make_interval(secs => $1) \
        ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
};

const INBOX: Table = Table {
    name: "processed_events",
    delete_batch: "DELETE FROM processed_events WHERE (consumer, event_id) IN ( \
        SELECT consumer, event_id FROM processed_events \
        WHERE processed_at < now() - make_interval(secs => $1) \
        ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
};

/// Deletes `table`'s rows older than `window`, batch by batch, until a batch comes back short or
/// `stop` fires; returns how many.
async fn purge(pool: &PgPool, table: &Table, window: Duration, batch: i64, stop: &CancellationToken) -> Result<u64> {
    let batch = batch.max(1);
    let mut deleted = 0;
    loop {
        let done = sqlx::query(table.delete_batch)
            .bind(window.as_secs_f64())
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += done;
        if done < batch.unsigned_abs() || stop.is_cancelled() {
            return Ok(deleted);
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}

/// One pass over every table; `stop` ends it between two batches.
pub async fn pass(pool: &PgPool, settings: &RetentionSettings, stop: &CancellationToken) -> Result<Deleted> {
    Ok(Deleted {
        outbox: purge(pool, &OUTBOX, settings.outbox, settings.batch, stop).await?,
        idempotency_keys: purge(pool, &IDEMPOTENCY_KEYS, settings.idempotency_keys, settings.batch, stop).await?,
        inbox: purge(pool, &INBOX, settings.inbox, settings.batch, stop).await?,
    })
}

/// The retention job: a [`pass`] every `settings.interval` until `stop` fires. Reports on `health`
/// whether the last pass succeeded; never returns an error (a failed pass is tried again).
pub async fn run(
    pool: PgPool,
    settings: RetentionSettings,
    service: String,
    health: Component,
    stop: CancellationToken,
) {
    loop {
        match pass(&pool, &settings, &stop).await {
            Ok(deleted) => {
                health.report(true);
                for (table, count) in [
                    (OUTBOX.name, deleted.outbox),
                    (IDEMPOTENCY_KEYS.name, deleted.idempotency_keys),
                    (INBOX.name, deleted.inbox),
                ] {
                    if count > 0 {
                        crate::metrics::add(
                            crate::metrics::RETENTION_DELETED,
                            &[("service", service.as_str()), ("table", table)],
                            count,
                        );
                    }
                }
                if deleted != Deleted::default() {
                    tracing::info!(
                        outbox = deleted.outbox,
                        idempotency_keys = deleted.idempotency_keys,
                        inbox = deleted.inbox,
                        "retention pass deleted old rows"
                    );
                }
            }
            Err(error) => {
                health.report(false);
                tracing::warn!(%error, "retention pass failed; trying again later");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}

/// The outbox monitor: every `interval`, the backlog, the age of its oldest row and the parked
/// rows into the metrics, and the `outbox` health component `NOT_SERVING` while any row is parked
/// (an operator must look: `fintech-ops outbox parked`).
pub async fn monitor_outbox(
    pool: PgPool,
    service: String,
    health: Component,
    interval: Duration,
    stop: CancellationToken,
) {
    let labels = [("service", service.as_str())];
    loop {
        let observed = async {
            let backlog = crate::outbox::backlog(&pool).await?;
            let parked = crate::outbox::parked_count(&pool).await?;
            Ok::<_, crate::Error>((backlog, parked))
        }
        .await;
        match observed {
            Ok((backlog, parked)) => {
                crate::metrics::set_gauge(crate::metrics::OUTBOX_BACKLOG, &labels, backlog.unpublished as f64);
                crate::metrics::set_gauge(
                    crate::metrics::OUTBOX_OLDEST_AGE,
                    &labels,
                    backlog.oldest_age.unwrap_or_default().as_secs_f64(),
                );
                crate::metrics::set_gauge(crate::metrics::OUTBOX_PARKED, &labels, parked as f64);
                if parked > 0 {
                    tracing::warn!(parked, "outbox rows are parked; see fintech-ops outbox parked");
                }
                health.report(parked == 0);
            }
            // The database's own component says it is down; the last values stay.
            Err(error) => tracing::debug!(%error, "outbox monitor could not read the outbox"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
