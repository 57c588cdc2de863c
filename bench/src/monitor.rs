//! Backlogs over time, read once a second while a scenario runs and while it drains:
//!
//! - **outbox backlog** of payments and tax: `SELECT count(*) FROM outbox WHERE published_at IS
//!   NULL` on each service's database (events committed but not yet on the broker);
//! - **tax consumer lag (SQL)**: events payments has published minus events tax has applied
//!   (`processed_events`, its inbox), both read from the service databases;
//! - **tax consumer lag (Kafka)**: high watermark minus the committed offset of tax's consumer
//!   group, summed over the partitions of its input topics;
//! - with the ledger: its outbox backlog and its lag behind tax (`tax.calculated` rows tax has
//!   published minus events the ledger's tax consumer has applied);
//! - optionally the scenario's own count of requests still in flight end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db;
use crate::kafka::GroupLag;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the scenario started.
    pub t: f64,
    /// Unpublished rows in payments' outbox.
    pub payments_outbox: i64,
    /// Unpublished rows in tax's outbox.
    pub tax_outbox: i64,
    /// Events published by payments and not yet applied by tax.
    pub tax_lag_sql: i64,
    /// Records behind the committed offsets of tax's consumer group (`-1`: not read).
    pub tax_lag_kafka: i64,
    /// Events applied by tax so far (cumulative).
    pub tax_processed: i64,
    /// Events published by payments so far (cumulative).
    pub payments_published: i64,
    /// Unpublished rows in the ledger's outbox (`-1`: no ledger).
    pub ledger_outbox: i64,
    /// `tax.calculated` events published by tax and not yet applied by the ledger (`-1`: no
    /// ledger).
    pub ledger_lag_sql: i64,
    /// Scenario-specific: requests acknowledged but not yet seen at the end of the flow.
    pub in_flight: i64,
}

/// Where the readings come from.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// Payments' database.
    pub payments: PgPool,
    /// Tax's database.
    pub tax: PgPool,
    /// Tax's consumer group.
    pub tax_lag: GroupLag,
    /// The ledger's database, when the ledger runs.
    pub ledger: Option<PgPool>,
}

/// Consumer name of the ledger's `tax.calculated` postings in its `processed_events`.
pub const LEDGER_TAX_CONSUMER: &str = "ledger.tax-postings";

async fn ledger_readings(tax: &PgPool, ledger: Option<&PgPool>) -> (i64, i64) {
    let Some(ledger) = ledger else {
        return (-1, -1);
    };
    let published = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND topic LIKE '%tax.calculated'",
    )
    .fetch_one(tax)
    .await;
    let (outbox, processed) = tokio::join!(
        db::outbox_backlog(ledger),
        db::processed_events(ledger, LEDGER_TAX_CONSUMER)
    );
    let lag = match (published, processed) {
        (Ok(published), Ok(processed)) => published - processed,
        _ => -1,
    };
    (outbox.unwrap_or(-1), lag)
}

impl Monitor {
    /// Reads everything once; a failed read shows as `-1`.
    pub async fn read(&self, t: f64) -> Point {
        let (payments_outbox, tax_outbox, published, processed, kafka, (ledger_outbox, ledger_lag_sql)) = tokio::join!(
            db::outbox_backlog(&self.payments),
            db::outbox_backlog(&self.tax),
            db::outbox_published(&self.payments),
            db::processed_events(&self.tax, "tax"),
            // The broker may answer slowly under load; the SQL readings must keep their cadence.
            tokio::time::timeout(Duration::from_millis(800), self.tax_lag.lag()),
            ledger_readings(&self.tax, self.ledger.as_ref()),
        );
        let kafka = kafka.ok().flatten();
        let published = published.unwrap_or(-1);
        let processed = processed.unwrap_or(-1);
        Point {
            t,
            payments_outbox: payments_outbox.unwrap_or(-1),
            tax_outbox: tax_outbox.unwrap_or(-1),
            tax_lag_sql: if published < 0 || processed < 0 {
                -1
            } else {
                published - processed
            },
            tax_lag_kafka: kafka.unwrap_or(-1),
            tax_processed: processed,
            payments_published: published,
            ledger_outbox,
            ledger_lag_sql,
            in_flight: 0,
        }
    }

    /// Whether everything committed so far has flowed through: every outbox empty, tax has
    /// applied every published event and the ledger (if it runs) every tax result.
    pub fn drained(point: &Point) -> bool {
        let ledger_drained = point.ledger_lag_sql < 0 || (point.ledger_outbox == 0 && point.ledger_lag_sql == 0);
        point.payments_outbox == 0 && point.tax_outbox == 0 && point.tax_lag_sql == 0 && ledger_drained
    }

    /// Reads once a second until the returned [`Series`] is finished; `in_flight` (if given)
    /// fills [`Point::in_flight`].
    pub fn start(&self, in_flight: Option<Arc<dyn Fn() -> i64 + Send + Sync>>) -> Series {
        let monitor = self.clone();
        let (stop, mut stopped) = watch::channel(false);
        let (latest_tx, latest) = watch::channel(Point::default());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut points = Vec::new();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                let mut point = monitor.read(started.elapsed().as_secs_f64()).await;
                if let Some(in_flight) = &in_flight {
                    point.in_flight = in_flight();
                }
                let _ = latest_tx.send(point);
                points.push(point);
            }
            points
        });
        Series {
            started,
            stop,
            latest,
            task,
        }
    }
}

/// A running series of readings.
#[derive(Debug)]
pub struct Series {
    started: Instant,
    stop: watch::Sender<bool>,
    latest: watch::Receiver<Point>,
    task: JoinHandle<Vec<Point>>,
}

impl Series {
    /// Seconds since the series started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A short text of the latest reading for the progress line.
    pub fn describe(latest: &watch::Receiver<Point>) -> String {
        let point = *latest.borrow();
        let ledger = if point.ledger_lag_sql >= 0 {
            format!("  ledger outbox {} lag {}", point.ledger_outbox, point.ledger_lag_sql)
        } else {
            String::new()
        };
        format!(
            "outbox payments {} tax {}  tax lag {}{ledger}",
            point.payments_outbox, point.tax_outbox, point.tax_lag_sql
        )
    }

    /// A receiver of the latest reading (for progress lines).
    pub fn watch(&self) -> watch::Receiver<Point> {
        self.latest.clone()
    }

    /// Waits until a reading shows everything drained or `timeout` passes; returns the seconds it
    /// took (`None` on timeout).
    pub async fn wait_drained(&self, timeout: Duration) -> Option<f64> {
        let began = Instant::now();
        let mut latest = self.latest.clone();
        // A reading taken after this call began.
        let after = self.now();
        loop {
            let point = *latest.borrow_and_update();
            if point.t >= after && Monitor::drained(&point) {
                return Some(began.elapsed().as_secs_f64());
            }
            let remaining = timeout.saturating_sub(began.elapsed());
            if remaining.is_zero() {
                return None;
            }
            if tokio::time::timeout(remaining, latest.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Stops reading and returns every point.
    pub async fn finish(self) -> Vec<Point> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
