//! The run's databases (`fintech_bench_<unix time>_<id>_<service>`, created fresh and dropped
//! after) and the SQL probes read while scenarios run: outbox backlog and consumer progress.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::{Connection, PgConnection, PgPool};

/// Name prefix of every database the benchmark creates.
pub const DATABASE_PREFIX: &str = "fintech_bench_";

/// Databases left by a run that died are dropped by a later run once they are this old (a
/// concurrent run's databases are younger and left alone).
const STALE_AFTER: Duration = Duration::from_secs(2 * 60 * 60);

/// Creates and drops the run's databases through the admin connection URL.
#[derive(Debug, Clone)]
pub struct Admin {
    url: String,
}

impl Admin {
    /// An admin on `url` (a `postgres://` URL whose database may be `postgres`).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }

    /// The URL of database `name` on the same server.
    pub fn url_for(&self, name: &str) -> String {
        let (without_query, query) = match self.url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.url.as_str(), String::new()),
        };
        let authority_start = without_query.find("://").map_or(0, |scheme| scheme + 3);
        let base = match without_query[authority_start..].find('/') {
            Some(slash) => &without_query[..authority_start + slash],
            None => without_query,
        };
        format!("{base}/{name}{query}")
    }

    async fn connect(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.url)
            .await
            .with_context(|| format!("connect to PostgreSQL at {}", redact(&self.url)))
    }

    /// Creates an empty database `name`.
    pub async fn create(&self, name: &str) -> anyhow::Result<()> {
        self.execute(name, "create", format!("CREATE DATABASE \"{name}\""))
            .await
    }

    /// Drops database `name`, disconnecting whoever is still on it.
    pub async fn drop(&self, name: &str) -> anyhow::Result<()> {
        self.execute(name, "drop", format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
    }

    /// Runs `statement` (`what`: create or drop) on benchmark database `name`, checked first since
    /// the statement holds it.
    async fn execute(&self, name: &str, what: &str, statement: String) -> anyhow::Result<()> {
        check_name(name)?;
        let mut admin = self.connect().await?;
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .with_context(|| format!("{what} database {name}"))?;
        Ok(())
    }

    /// Drops benchmark databases older than two hours (left by runs that were killed).
    pub async fn drop_stale(&self) -> anyhow::Result<Vec<String>> {
        let mut admin = self.connect().await?;
        let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{}%", DATABASE_PREFIX.replace('_', "\\_")))
            .fetch_all(&mut admin)
            .await?;
        let now = unix_now();
        let mut dropped = Vec::new();
        for name in names {
            let created = name
                .strip_prefix(DATABASE_PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok());
            if created.is_some_and(|created| now.saturating_sub(created) > STALE_AFTER.as_secs()) {
                self.drop(&name).await?;
                dropped.push(name);
            }
        }
        Ok(dropped)
    }

    /// `SELECT version()` of the server.
    pub async fn server_version(&self) -> anyhow::Result<String> {
        let mut admin = self.connect().await?;
        Ok(sqlx::query_scalar("SELECT version()").fetch_one(&mut admin).await?)
    }

    /// The settings that shape commit cost, for the report.
    pub async fn settings(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut admin = self.connect().await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting || COALESCE(unit, '') FROM pg_settings \
             WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers', 'max_connections', \
                            'commit_delay', 'wal_level', 'full_page_writes') ORDER BY name",
        )
        .fetch_all(&mut admin)
        .await?;
        Ok(rows)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        name.starts_with(DATABASE_PREFIX) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "refusing to touch database {name:?}: not a benchmark database"
    );
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Rows of `outbox` not yet published.
pub async fn outbox_backlog(pool: &PgPool) -> anyhow::Result<i64> {
    count(pool, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await
}

/// Rows of `outbox` already published.
pub async fn outbox_published(pool: &PgPool) -> anyhow::Result<i64> {
    count(pool, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL").await
}

async fn count(pool: &PgPool, query: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(query).fetch_one(pool).await?)
}

/// Events consumer `consumer` has applied (its inbox, `processed_events`).
pub async fn processed_events(pool: &PgPool, consumer: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE consumer = $1")
            .bind(consumer)
            .fetch_one(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_server_and_options() {
        let admin = Admin::new("postgres://postgres@127.0.0.1:5432/postgres");
        assert_eq!(
            admin.url_for("fintech_bench_1_a_tax"),
            "postgres://postgres@127.0.0.1:5432/fintech_bench_1_a_tax"
        );
        let admin = Admin::new("postgres://u:p@db:5433/postgres?sslmode=disable");
        assert_eq!(admin.url_for("x"), "postgres://u:p@db:5433/x?sslmode=disable");
        assert_eq!(Admin::new("postgres://h:1").url_for("x"), "postgres://h:1/x");
    }

    #[test]
    fn only_benchmark_databases_are_touched() {
        assert!(check_name("fintech_bench_1700000000_ab12_payments").is_ok());
        assert!(check_name("fintech_payments").is_err());
        assert!(check_name("fintech_bench_x\"; DROP").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
