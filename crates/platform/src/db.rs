//! PostgreSQL pool and migrations.
//!
//! Each service's database holds the platform tables (outbox, idempotency keys, processed events;
//! `migrations/platform/`, versions 1..999) and the service's own tables (`migrations/<service>/`,
//! timestamp versions). Both migrators share sqlx's bookkeeping table and ignore each other's rows.

use std::time::Duration;

use std::str::FromStr as _;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::error::Result;

/// The server-side limits every pooled session runs with (sent in the startup packet, so they hold
/// from the first statement, migrations included). Each bounds a different way a session can
/// hang: a statement that runs too long, a lock that is never granted (row locks and the advisory
/// locks tax serializes orders with), a transaction its client stopped driving. A limit that
/// fires is an error of the statement (57014, 55P03) or the end of the session (25P03): the
/// transaction rolls back whole, nothing half-written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    /// `statement_timeout`: longest one statement may run.
    pub statement: Duration,
    /// `lock_timeout`: longest one statement may wait for a lock.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`: longest a session may sit idle inside a transaction.
    pub idle_in_transaction: Duration,
}

impl Default for DbTimeouts {
    /// Commands and event handlers run statements of milliseconds; these leave two orders of
    /// magnitude for contention and slow disks while never letting a stuck session live on.
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(30),
            lock: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(60),
        }
    }
}

impl DbTimeouts {
    /// The session settings, as `(name, value)` pairs in milliseconds (0 would mean "no limit",
    /// which [`crate::config::PlatformConfig::from_env`] refuses).
    pub fn session_settings(&self) -> [(&'static str, String); 3] {
        let millis = |duration: Duration| format!("{}ms", duration.as_millis());
        [
            ("statement_timeout", millis(self.statement)),
            ("lock_timeout", millis(self.lock)),
            ("idle_in_transaction_session_timeout", millis(self.idle_in_transaction)),
        ]
    }
}

/// Migrations of the platform tables every service database holds.
pub static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/platform");

/// A pooled connection used less than this long ago is handed out without a liveness check.
///
/// sqlx checks a connection with a round trip (`Sync` → `ReadyForQuery`) when it returns to the
/// pool *and*, by default, again when it is taken out: two extra round trips per transaction on
/// top of the statements themselves. A connection that came back a moment ago was just checked,
/// so the second check only costs a round trip (and a wake-up of both processes) per command;
/// only a connection idle for longer is checked again. The same trade as HikariCP's
/// `aliveBypassWindowMs` (500 ms): if the server dies inside the window, the first statement on
/// such a connection fails (the caller gets `UNAVAILABLE` and may retry with its idempotency key)
/// and sqlx drops the connection instead of reusing it.
pub const ALIVE_BYPASS_WINDOW: Duration = Duration::from_millis(500);

/// Connects a pool with the default [`DbTimeouts`], retrying for up to `wait` while the database
/// is starting or restarting.
pub async fn connect(database_url: &str, max_connections: u32, wait: Duration) -> Result<PgPool> {
    connect_with(database_url, max_connections, wait, &DbTimeouts::default()).await
}

/// Connects a pool whose sessions run with `timeouts`, retrying for up to `wait` while the
/// database is starting or restarting.
pub async fn connect_with(
    database_url: &str,
    max_connections: u32,
    wait: Duration,
    timeouts: &DbTimeouts,
) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url)?.options(timeouts.session_settings());
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|connection, metadata| {
                Box::pin(async move {
                    if metadata.idle_for >= ALIVE_BYPASS_WINDOW {
                        connection.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "database not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Bounds the rest of the open transaction on `conn` by the current request's deadline
/// ([`crate::grpc::deadline::remaining`]): `SET LOCAL statement_timeout` to what is left, so
/// PostgreSQL cancels a statement (57014, answered `DEADLINE_EXCEEDED`) rather than run on for a
/// caller that gave up. Does nothing outside a request with a deadline, or when the pool's own
/// `statement_timeout` is shorter anyway.
pub async fn bound_by_deadline(conn: &mut sqlx::PgConnection) -> std::result::Result<(), sqlx::Error> {
    let Some(remaining) = crate::grpc::deadline::remaining() else {
        return Ok(());
    };
    // At least 1 ms: 0 would mean "no limit".
    let millis = remaining.as_millis().max(1);
    sqlx::query(&format!("SET LOCAL statement_timeout = {millis}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies the platform migrations, then the service's own.
pub async fn migrate(pool: &PgPool, service: &Migrator) -> Result<()> {
    let mut platform = Migrator {
        ignore_missing: true,
        ..clone_migrator(&PLATFORM_MIGRATOR)
    };
    platform.set_locking(true);
    platform.run(pool).await?;
    let service = Migrator {
        ignore_missing: true,
        ..clone_migrator(service)
    };
    service.run(pool).await?;
    Ok(())
}

/// Applies only the platform migrations (for tests of the shared plumbing).
pub async fn migrate_platform(pool: &PgPool) -> Result<()> {
    let platform = Migrator {
        ignore_missing: true,
        ..clone_migrator(&PLATFORM_MIGRATOR)
    };
    platform.run(pool).await?;
    Ok(())
}

fn clone_migrator(migrator: &Migrator) -> Migrator {
    Migrator {
        migrations: migrator.migrations.clone(),
        ignore_missing: migrator.ignore_missing,
        locking: migrator.locking,
        no_tx: migrator.no_tx,
    }
}

/// Whether the database answers a trivial query (used by health checks).
pub async fn reachable(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// The SQLSTATE of a database error, e.g. `23505` for a unique violation.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(database_error) => database_error.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// What a failed statement means to the caller: the one place SQLSTATEs are read.
///
/// Services decide with it whether to retry (a [`Conflict`](DbFault::Conflict)), tell the client to
/// come back later (the database is [`Unavailable`](DbFault::Unavailable)) or report a constraint;
/// `grpc::status` turns it into a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbFault {
    /// The server cannot be reached or is going away: pool timeouts, I/O and TLS errors, class 08
    /// (connection exception), 57P01 (admin shutdown), 57P02 (crash shutdown), 57P03 (cannot
    /// connect now), 53300 (too many connections).
    Unavailable,
    /// The statement lost against a concurrent one and can be retried as it is: 40001
    /// (serialization failure), 40P01 (deadlock), 55P03 (lock not available).
    Conflict,
    /// 23505: a unique constraint (named when PostgreSQL says which) already holds the value.
    UniqueViolation(Option<String>),
    /// 23503: a referenced row does not exist.
    ForeignKeyViolation(Option<String>),
    /// 23514: a CHECK constraint rejected the row.
    CheckViolation(Option<String>),
    /// Another class 23 error (integrity constraint: 23502 not null, 23P01 exclusion, …).
    IntegrityViolation,
    /// Class 22 (data exception): a value the column cannot hold (NUL byte, out of range, …).
    DataException,
    /// Class 54 (program limit exceeded): e.g. a value too large for its index (54000).
    LimitExceeded,
    /// 57014: the statement ran past `statement_timeout` (or the request's deadline) or was
    /// cancelled; `grpc::status` answers DEADLINE_EXCEEDED.
    Cancelled,
    /// Anything else: a bug or an unexpected server state.
    Other,
}

impl DbFault {
    /// Classifies `error`.
    pub fn of(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => return Self::Unavailable,
            _ => {}
        }
        let sqlx::Error::Database(database_error) = error else {
            return Self::Other;
        };
        let Some(code) = database_error.code() else {
            return Self::Other;
        };
        let constraint = || database_error.constraint().map(str::to_owned);
        match code.as_ref() {
            UNIQUE_VIOLATION => Self::UniqueViolation(constraint()),
            FOREIGN_KEY_VIOLATION => Self::ForeignKeyViolation(constraint()),
            CHECK_VIOLATION => Self::CheckViolation(constraint()),
            SERIALIZATION_FAILURE | DEADLOCK_DETECTED | LOCK_NOT_AVAILABLE => Self::Conflict,
            QUERY_CANCELED => Self::Cancelled,
            "57P01" | "57P02" | "57P03" | "53300" => Self::Unavailable,
            code if code.starts_with("08") => Self::Unavailable,
            code if code.starts_with("22") => Self::DataException,
            code if code.starts_with("23") => Self::IntegrityViolation,
            code if code.starts_with("54") => Self::LimitExceeded,
            _ => Self::Other,
        }
    }

    /// Whether running the same statement again can never succeed: the data itself is at fault
    /// (classes 22, 23 and 54). A consumer dead-letters such a record at once (ADR 0012).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::UniqueViolation(_)
                | Self::ForeignKeyViolation(_)
                | Self::CheckViolation(_)
                | Self::IntegrityViolation
                | Self::DataException
                | Self::LimitExceeded
        )
    }

    /// Whether the failure says nothing about the statement: the server is unreachable or going
    /// away. Every record would fail the same way, so a consumer does not count it against the
    /// record's retry budget (ADR 0012).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable)
    }

    /// The first database error in `error`'s chain of sources, classified.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(sqlx_error) = error.downcast_ref::<sqlx::Error>() {
                return Some(Self::of(sqlx_error));
            }
            current = error.source();
        }
        None
    }
}

/// SQLSTATE of a unique violation.
pub const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a foreign-key violation.
pub const FOREIGN_KEY_VIOLATION: &str = "23503";
/// SQLSTATE of a CHECK violation.
pub const CHECK_VIOLATION: &str = "23514";
/// SQLSTATE of a serialization failure.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a detected deadlock.
pub const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE of a lock timeout (`lock_timeout` elapsed).
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE of a cancelled statement (`statement_timeout`, or a cancel request).
pub const QUERY_CANCELED: &str = "57014";
