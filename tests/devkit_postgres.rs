//! The private PostgreSQL cluster of `fintech_devkit::postgres`: a committed row survives a fast
//! stop and an immediate stop (a crash of the server), connections fail while it is down, and the
//! server comes back on the same port. Never touches the shared server.

use std::time::Duration;

use fintech_devkit::postgres::{PgCluster, StopMode};
use sqlx::{Connection, PgConnection};

/// The port of the shared server, which these tests must leave alone.
const SHARED_PORT: u16 = 5432;

async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

/// Starts a cluster with database `devkit` holding one committed row, and returns its URL.
async fn cluster_with_a_row() -> (PgCluster, String) {
    let cluster = PgCluster::start().expect("private cluster starts");
    assert_ne!(
        cluster.port(),
        SHARED_PORT,
        "a private cluster never uses the shared port"
    );
    assert!(cluster.is_running());
    let url = cluster.create_database("devkit").expect("database created");
    assert_eq!(url, cluster.url("devkit"));

    let mut connection = connect(&url).await;
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        .execute(&mut connection)
        .await
        .expect("create table");
    sqlx::query("INSERT INTO notes VALUES (1, 'kept')")
        .execute(&mut connection)
        .await
        .expect("insert");
    connection.close().await.expect("close");
    (cluster, url)
}

async fn assert_refuses_connections(cluster: &PgCluster, url: &str) {
    assert!(!cluster.is_running(), "pg_ctl status says stopped");
    let attempt = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url)).await;
    assert!(matches!(attempt, Ok(Err(_))), "a stopped cluster refuses connections");
}

async fn read_back(url: &str) -> String {
    let mut connection = connect(url).await;
    sqlx::query_scalar("SELECT body FROM notes WHERE id = 1")
        .fetch_one(&mut connection)
        .await
        .expect("row read back")
}

#[tokio::test]
async fn a_row_survives_a_fast_stop_and_a_start_again_on_the_same_port() {
    let (mut cluster, url) = cluster_with_a_row().await;
    let port = cluster.port();

    cluster.stop(StopMode::Fast).expect("fast stop");
    assert_refuses_connections(&cluster, &url).await;

    cluster.start_again().expect("starts again");
    assert!(cluster.is_running());
    assert_eq!(cluster.port(), port);
    assert_eq!(read_back(&url).await, "kept");
}

#[tokio::test]
async fn a_committed_row_survives_an_immediate_stop() {
    let (mut cluster, url) = cluster_with_a_row().await;

    // An open connection is cut by the crash.
    let mut open = connect(&url).await;
    cluster.stop(StopMode::Immediate).expect("immediate stop");
    assert!(
        sqlx::query("SELECT 1").execute(&mut open).await.is_err(),
        "a connection open at the crash is broken"
    );
    assert_refuses_connections(&cluster, &url).await;

    cluster.start_again().expect("starts again after crash recovery");
    assert_eq!(read_back(&url).await, "kept");
    assert!(
        std::fs::read_to_string(cluster.log_file())
            .expect("server log")
            .contains("not properly shut down"),
        "the restart ran crash recovery"
    );
}

#[tokio::test]
async fn dropping_a_cluster_stops_it_and_removes_its_folder() {
    let cluster = PgCluster::start().expect("private cluster starts");
    let data = cluster.data_dir();
    let url = cluster.admin_url();
    connect(&url).await.close().await.expect("close");
    drop(cluster);
    assert!(!data.exists(), "the data folder is removed");
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "the dropped cluster no longer answers"
    );
}
