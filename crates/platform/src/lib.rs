//! Shared plumbing of every service. Write it once, test it hard.
//!
//! # Layout
//! - [`auth`]: bearer-token authentication and the contract's scopes, one layer for every service;
//! - [`batch`]: adaptive batching of concurrent work (the group commit of payments' commands);
//! - [`config`]: settings from environment variables with documented defaults;
//! - [`telemetry`]: `tracing` + OpenTelemetry, W3C trace-context helpers;
//! - [`db`]: PostgreSQL pool and migrations (platform tables + the service's own);
//! - [`grpc`]: tonic server bootstrap with health, reflection, trace extraction, request logging,
//!   size limits and graceful shutdown, plus the error helpers every service uses;
//! - [`kafka`]: idempotent producer, consumer loop with manual commits and dead letters,
//!   CloudEvents + trace headers;
//! - [`outbox`]: transactional outbox and its relay;
//! - [`idempotency`]: idempotent commands keyed by the `idempotency-key` metadata;
//! - [`shutdown`]: the SIGTERM/SIGINT cancellation token;
//! - [`sql`]: statements assembled from parts, placeholders numbered for you;
//! - [`tls`]: TLS of the gRPC servers (optional mTLS) and librdkafka security properties;
//! - [`kit`]: the service kit every service's `run()` and `main()` are built on;
//! - [`metrics`]: the pipeline's OpenTelemetry metrics (backlog, lag, parked rows, dead letters);
//! - [`retention`]: the jobs that delete what is no longer needed (outbox, keys, inbox).

pub mod auth;
pub mod batch;
pub mod config;
pub mod db;
pub mod error;
pub mod grpc;
pub mod idempotency;
pub mod kafka;
pub mod kit;
pub mod metrics;
pub mod outbox;
pub mod retention;
pub mod shutdown;
pub mod sql;
pub mod telemetry;
pub mod tls;

pub use error::{Error, Result};
pub use fintech_types::{Violation, Violations};
pub use tokio_util::sync::CancellationToken;
