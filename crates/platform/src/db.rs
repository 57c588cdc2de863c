//! PostgreSQL pool and migrations.
//!
//! Each service's database holds the platform tables (outbox, idempotency keys, processed events;
//! `migrations/platform/`, versions 1..999) and the service's own tables (`migrations/<service>/`,
//! timestamp versions). Both migrators share sqlx's bookkeeping table and ignore each other's rows.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};

use crate::error::Result;

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

/// Connects a pool, retrying for up to `wait` while the database is starting or restarting.
pub async fn connect(database_url: &str, max_connections: u32, wait: Duration) -> Result<PgPool> {
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
            .connect(database_url)
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

/// SQLSTATE of a unique violation.
pub const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a serialization failure.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a lock timeout (`lock_timeout` elapsed).
pub const LOCK_NOT_AVAILABLE: &str = "55P03";
