//! The shared pool against the real PostgreSQL: a connection used moments ago is handed out without
//! a liveness round trip, and connections the server killed are replaced, never handed out twice.

use std::time::Duration;

use fintech_platform::db::{self, ALIVE_BYPASS_WINDOW};
use fintech_tests::TestDb;
use sqlx::{Connection, PgConnection, PgPool};

/// Terminates every server process connected to `database` and waits until they are gone.
async fn kill_connections(database: &str) {
    let admin_url = std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut admin = PgConnection::connect(&admin_url).await.expect("admin connection");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    assert!(!killed.is_empty(), "the pool had connections to kill");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .fetch_one(&mut admin)
            .await
            .expect("count");
        if left == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} connections survived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn select_one(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(pool).await
}

#[tokio::test]
async fn connections_the_server_killed_while_idle_are_replaced_before_use() {
    let db = TestDb::empty().await;
    let held: Vec<_> = futures::future::join_all((0..4).map(|_| db.pool.acquire()))
        .await
        .into_iter()
        .map(|connection| connection.expect("acquire"))
        .collect();
    drop(held);
    kill_connections(&db.name).await;

    // Idle past the window, each connection is checked when it is taken out and replaced.
    tokio::time::sleep(ALIVE_BYPASS_WINDOW + Duration::from_millis(200)).await;
    let answers = futures::future::join_all((0..8).map(|_| select_one(&db.pool))).await;
    for answer in answers {
        assert_eq!(answer.expect("a query after the server killed the idle connections"), 1);
    }
}

#[tokio::test]
async fn a_connection_killed_inside_the_window_fails_one_statement_and_is_not_reused() {
    let db = TestDb::empty().await;
    let pool = db::connect(&db.url, 1, Duration::from_secs(5)).await.expect("pool");
    assert_eq!(select_one(&pool).await.expect("first query"), 1);
    // The pool takes a connection back in the background (after its own check): wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.num_idle() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection never returned to the pool"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_connections(&db.name).await;

    // Used moments ago, the connection is handed out unchecked (no round trip), so the statement
    // meets the dead connection; the pool then drops it and the next statement gets a new one.
    let unchecked = select_one(&pool).await;
    assert!(
        unchecked.is_err(),
        "the connection was checked on acquire although it was used inside the window: {unchecked:?}"
    );
    assert_eq!(select_one(&pool).await.expect("a query on a fresh connection"), 1);
    pool.close().await;
}
