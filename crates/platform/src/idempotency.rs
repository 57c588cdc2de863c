//! Idempotent commands keyed by the `idempotency-key` gRPC metadata entry.
//!
//! A client that may retry a command (after a timeout, a dropped connection, a crash) sends the
//! same `idempotency-key` with every attempt. The service runs the command at most once per
//! `(scope, key)` and answers every attempt with the response of the one that committed.
//!
//! # Protocol
//!
//! PostgreSQL is the authority. [`IdempotencyStore::execute`] (or [`IdempotencyStore::claim`] and
//! [`IdempotencyStore::complete`] inside a transaction the caller runs; or
//! [`IdempotencyStore::execute_folded`], where the command stores its response in its own write
//! statement) does, in **one transaction with the business change**:
//!
//! 1. `INSERT` a placeholder row into `idempotency_keys` (primary key `(scope, idempotency_key)`)
//!    with `ON CONFLICT DO NOTHING`, under a `lock_timeout` of `lock_wait`;
//! 2. run the command;
//! 3. store the encoded response in that row, and commit.
//!
//! A duplicate that arrives while the first attempt runs blocks on the primary key until the first
//! transaction ends: if it committed, the duplicate reads the committed row (same request
//! fingerprint: the stored response is returned; another request: rejected); if it rolled back,
//! the duplicate's insert succeeds and it runs the command itself.
//!
//! # Guarantees
//!
//! - **At most one committed execution per `(scope, key)`**: the row and the business change
//!   commit together or not at all, and the primary key admits one row.
//! - **Every retry gets the same response**: the bytes stored at commit, decoded again.
//! - **A failed command leaves no trace**: its transaction rolls back with the placeholder, so a
//!   retry runs the command again. This includes business rejections (`INVALID_ARGUMENT`,
//!   `FAILED_PRECONDITION`, …) returned by the command: they are not replayed.
//! - **Reusing a key for another request is rejected** with `FAILED_PRECONDITION` naming the key;
//!   nothing runs.
//! - **A retry while the first attempt still runs** waits up to `lock_wait`, then gets `ABORTED`
//!   ("still being processed; retry"); nothing runs.
//! - An ambiguous commit (the connection drops while `COMMIT` is in flight) reaches the client as
//!   `UNAVAILABLE`; its retry replays the stored response if the commit happened.
//!
//! # Failure modes and limits
//!
//! - Only effects inside the transaction are covered. A command that calls another service or
//!   publishes to Kafka directly is not made idempotent by this module: write such effects to the
//!   [outbox](crate::outbox) in the same transaction.
//! - A key is remembered until [`purge_older_than`] removes its row; a retry after that runs the
//!   command again. Keep retention longer than any client retries (and at least the Redis cache
//!   TTL, 24 h by default).
//! - Keys are per caller: [`key_from_request`] binds the key to the authenticated subject
//!   ([`crate::auth::Caller`]), and the stored scope becomes `<method>@<subject>` (the subject
//!   percent-encoded so that it holds no `:`). Two callers who pick the same key never collide,
//!   and one caller cannot replay another's stored response. A key without a caller
//!   ([`key_from_metadata`], authentication off) is scoped by the method alone.
//! - The fingerprint is the SHA-256 of the request as prost encodes it. prost encodes a message
//!   the same way every time except `map` fields held in a `HashMap` (iteration order varies per
//!   process): generate such fields as `BTreeMap` before using them in an idempotent command.
//!   Unknown fields are dropped by the decode, so they do not count.
//! - The claim relies on READ COMMITTED (PostgreSQL's default, what [`IdempotencyStore::execute`]
//!   uses): under REPEATABLE READ a duplicate fails with a serialization error instead of seeing
//!   the committed row.
//! - A waiting duplicate holds a pooled connection for up to `lock_wait`; a burst of duplicates of
//!   a slow command can exhaust the pool (then `UNAVAILABLE`). The Redis marker below avoids that.
//!
//! # Redis fast path (optional)
//!
//! With a Redis URL, [`IdempotencyStore::execute`] also:
//!
//! - caches `(fingerprint, response)` under `idem:{scope}:{key}` for 24 h after the commit, and
//!   checks it first: a hit replays (or rejects a different request) without a PostgreSQL
//!   transaction;
//! - takes an in-flight marker `idem-lock:{scope}:{key}` (`SET NX PX`) before the PostgreSQL path,
//!   so concurrent duplicates poll the cache in Redis instead of holding pooled connections. A
//!   duplicate polls for at most `lock_wait`, and stops as soon as the marker is gone (the first
//!   attempt failed or the marker expired); then it takes the PostgreSQL path, which decides. So a
//!   duplicate of a slow command waits up to twice `lock_wait` before `ABORTED`. A marker left by
//!   a crashed or cancelled attempt only delays duplicates (by at most `lock_wait` each) until it
//!   expires after `in_flight_ttl` (30 s by default).
//!
//! Redis only ever answers with responses that PostgreSQL committed, and never with an error of
//! its own: every Redis error is logged and the request continues on PostgreSQL, and after a
//! failed connection attempt Redis is skipped for a second. Flushing Redis, losing it or pointing
//! at a wrong host costs latency, never correctness. Scopes that contain `:` skip Redis so that
//! `idem:{scope}:{key}` stays unambiguous (gRPC method paths never contain one).
//!
//! # Example
//!
//! ```no_run
//! use fintech_platform::idempotency::{IdempotencyStore, key_from_metadata};
//! use fintech_proto::payments::{CreateOrderRequest, CreateOrderResponse};
//! use sqlx::PgPool;
//! use tonic::{Request, Response, Status};
//!
//! async fn create_order(
//!     store: &IdempotencyStore,
//!     pool: &PgPool,
//!     request: Request<CreateOrderRequest>,
//! ) -> Result<Response<CreateOrderResponse>, Status> {
//!     let key = key_from_metadata(request.metadata())?;
//!     let request = request.into_inner();
//!     let scope = "/fintech.payments.v1.PaymentsService/CreateOrder";
//!     let response = store
//!         .execute(pool, scope, key, &request, async |conn| {
//!             let order_id = uuid::Uuid::new_v4();
//!             sqlx::query("INSERT INTO orders (order_id, customer_id) VALUES ($1, $2)")
//!                 .bind(order_id)
//!                 .bind(&request.customer_id)
//!                 .execute(&mut *conn)
//!                 .await
//!                 .map_err(|error| Status::internal(error.to_string()))?;
//!             Ok(CreateOrderResponse::default())
//!         })
//!         .await?;
//!     Ok(Response::new(response))
//! }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::db::DbFault;

/// The gRPC metadata entry that carries the key.
pub const METADATA_KEY: &str = "idempotency-key";
/// Longest accepted key, in characters.
pub const MAX_KEY_LEN: usize = 128;
/// How long a duplicate waits for the first attempt before `ABORTED`, unless configured.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long Redis keeps a committed response, unless configured.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the Redis in-flight marker lives if its owner never removes it, unless configured.
pub const DEFAULT_IN_FLIGHT_TTL: Duration = Duration::from_secs(30);

/// Connect and response timeout of every Redis call: the fast path must stay fast or be skipped.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed Redis connection attempt, skip Redis this long instead of paying the timeout on
/// every request.
const REDIS_RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// Bounds of the interval at which a duplicate polls Redis for the first attempt's response.
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);
/// Rows one `DELETE` of [`purge_older_than`] removes, so a purge never holds many locks at once.
const PURGE_BATCH: i64 = 10_000;
/// Length of a [`fingerprint`] (hex SHA-256); the Redis cache value starts with one.
const FINGERPRINT_LEN: usize = 64;

/// The statement of [`IdempotencyStore::complete`]: `$1` the response, `$2` the scope, `$3` the key.
/// A service folds it into a larger [`Statement`](crate::sql::Statement) (a data-modifying CTE)
/// to save a round trip while it holds locks; it must still run after the claim, in its
/// transaction.
pub const COMPLETE: &str = "UPDATE idempotency_keys SET response = $1 WHERE scope = $2 AND idempotency_key = $3";
/// The claim: inserts the key's row under the claim's own `lock_timeout`, or reads the stored row,
/// in one round trip (`migrations/platform/0004_idempotency_claim.sql`). `$1` scope, `$2` key,
/// `$3` fingerprint, `$4` lock wait.
pub const CLAIM: &str = "SELECT claimed, stored_fingerprint, stored_response FROM idempotency_claim($1, $2, $3, $4)";
const PURGE: &str = "DELETE FROM idempotency_keys WHERE (scope, idempotency_key) IN ( \
         SELECT scope, idempotency_key FROM idempotency_keys \
         WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)";
/// Deletes the in-flight marker only if it is still ours (it may have expired and been retaken).
const RELEASE_MARKER: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// A validated idempotency key: 1 to 128 visible ASCII characters (`!` to `~`), and the caller it
/// belongs to, if known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String, Option<String>);

impl IdempotencyKey {
    /// Validates `value` as a key of no particular caller.
    pub fn parse(value: &str) -> Result<Self, InvalidIdempotencyKey> {
        if value.is_empty() {
            return Err(InvalidIdempotencyKey::Empty);
        }
        if value.len() > MAX_KEY_LEN {
            return Err(InvalidIdempotencyKey::TooLong);
        }
        if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(InvalidIdempotencyKey::NotVisibleAscii);
        }
        Ok(Self(value.to_owned(), None))
    }

    /// The same key, owned by `subject` (the authenticated caller).
    #[must_use]
    pub fn for_caller(self, subject: &str) -> Self {
        Self(self.0, Some(subject.to_owned()))
    }

    /// The caller the key belongs to.
    pub fn caller(&self) -> Option<&str> {
        self.1.as_deref()
    }

    /// The scope the key is stored under: `scope`, or `scope@<caller>` with the caller's `%`,
    /// `:` and `@` percent-encoded (so the Redis keys `idem:{scope}:{key}` stay unambiguous).
    pub fn stored_scope(&self, scope: &str) -> String {
        match &self.1 {
            None => scope.to_owned(),
            Some(caller) => {
                let mut stored = String::with_capacity(scope.len() + caller.len() + 1);
                stored.push_str(scope);
                stored.push('@');
                for character in caller.chars() {
                    match character {
                        '%' => stored.push_str("%25"),
                        ':' => stored.push_str("%3A"),
                        '@' => stored.push_str("%40"),
                        other => stored.push(other),
                    }
                }
                stored
            }
        }
    }

    /// The key as sent by the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a valid [`IdempotencyKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdempotencyKey {
    /// The key is empty.
    #[error("must not be empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("must be at most {} characters", MAX_KEY_LEN)]
    TooLong,
    /// The key holds a space, a control character or a non-ASCII byte.
    #[error("must contain only visible ASCII characters ('!' to '~')")]
    NotVisibleAscii,
}

/// Reads the `idempotency-key` metadata entry: `None` when absent, `INVALID_ARGUMENT` with a
/// `google.rpc.BadRequest` violation on field `idempotency-key` when sent but invalid (or sent
/// more than once).
pub fn key_from_metadata(metadata: &MetadataMap) -> Result<Option<IdempotencyKey>, Status> {
    let mut values = metadata.get_all(METADATA_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_key_status("must be sent at most once"));
    }
    let text = std::str::from_utf8(value.as_encoded_bytes())
        .map_err(|_| invalid_key_status(&InvalidIdempotencyKey::NotVisibleAscii.to_string()))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|error| invalid_key_status(&error.to_string()))
}

/// [`key_from_metadata`] bound to the request's authenticated caller ([`crate::auth::Caller`]),
/// so that the key is scoped to `subject + method + key`. Every service command reads its key
/// with this.
pub fn key_from_request<T>(request: &tonic::Request<T>) -> Result<Option<IdempotencyKey>, Status> {
    let key = key_from_metadata(request.metadata())?;
    Ok(match crate::auth::Caller::of(request) {
        Some(caller) => key.map(|key| key.for_caller(&caller.subject)),
        None => key,
    })
}

fn invalid_key_status(reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {METADATA_KEY} metadata: {reason}"),
        ErrorDetails::with_bad_request_violation(METADATA_KEY, reason),
    )
}

/// The request's fingerprint: lowercase hex SHA-256 of its protobuf encoding.
pub fn fingerprint(request: &impl Message) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// Outcome of [`IdempotencyStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First attempt: run the command, then [`IdempotencyStore::complete`] in the same
    /// transaction.
    New,
    /// Committed earlier with the same request: return this encoded response, run nothing.
    Replay(Vec<u8>),
}

/// Errors of the idempotency protocol. `impl From<IdempotencyError> for Status` maps them.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key was already used in this scope with a different request.
    #[error("idempotency key {key:?} was already used with a different request")]
    Conflict {
        /// The reused key.
        key: IdempotencyKey,
    },
    /// Another attempt with this key still runs (or holds its row lock) after `lock_wait`.
    #[error("a request with idempotency key {key:?} is still being processed")]
    InProgress {
        /// The key being processed.
        key: IdempotencyKey,
    },
    /// [`IdempotencyStore::complete`] found no row: `claim` did not return `New` in this
    /// transaction (a bug in the caller).
    #[error("idempotency key {key:?} was not claimed in this transaction")]
    NotClaimed {
        /// The key that was not claimed.
        key: IdempotencyKey,
    },
    /// The stored response of the key no longer decodes as the command's response (a bug, or a
    /// response type changed incompatibly).
    #[error("the stored response of idempotency key {key:?} does not decode")]
    CorruptResponse {
        /// The key whose response is unreadable.
        key: IdempotencyKey,
    },
    /// PostgreSQL failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<IdempotencyError> for Status {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Conflict { key } => {
                let message = format!("idempotency key \"{key}\" was already used with a different request");
                Status::with_error_details(
                    Code::FailedPrecondition,
                    message.clone(),
                    ErrorDetails::with_precondition_failure_violation("IDEMPOTENCY_KEY_REUSED", METADATA_KEY, message),
                )
            }
            IdempotencyError::InProgress { .. } => {
                Status::aborted("a request with this idempotency key is still being processed; retry")
            }
            IdempotencyError::NotClaimed { key } => {
                tracing::error!(key = %key, "idempotency response stored without a claim");
                Status::internal("internal error")
            }
            IdempotencyError::CorruptResponse { .. } => Status::internal("internal error"),
            IdempotencyError::Database(error) => crate::grpc::status::database(&error),
        }
    }
}

/// Runs commands at most once per `(scope, idempotency key)`; see the [module](self) docs.
///
/// Cheap to clone: clones share the Redis connection.
#[derive(Clone, Debug)]
pub struct IdempotencyStore {
    /// How long a duplicate waits for the first attempt before `ABORTED`.
    lock_wait: Duration,
    /// The optional fast path; `None` without a Redis URL.
    redis: Option<RedisCache>,
}

impl IdempotencyStore {
    /// A store with the optional Redis fast path at `redis_url` (e.g. `redis://127.0.0.1:6379`).
    /// Only an unparsable URL fails; an unreachable Redis is skipped at run time.
    pub fn new(redis_url: Option<&str>) -> crate::Result<Self> {
        let redis = match redis_url {
            Some(url) => Some(RedisCache {
                client: redis::Client::open(url)?,
                connection: Arc::new(tokio::sync::Mutex::new(RedisConnection::default())),
                cache_ttl: DEFAULT_CACHE_TTL,
                in_flight_ttl: DEFAULT_IN_FLIGHT_TTL,
            }),
            None => None,
        };
        Ok(Self {
            lock_wait: DEFAULT_LOCK_WAIT,
            redis,
        })
    }

    /// Sets how long a duplicate waits for the first attempt before `ABORTED` (at least 1 ms:
    /// PostgreSQL reads a `lock_timeout` of 0 as "wait forever").
    #[must_use]
    pub fn with_lock_wait(mut self, lock_wait: Duration) -> Self {
        // PostgreSQL's lock_timeout is an i32 of milliseconds.
        let longest = Duration::from_millis(i32::MAX.unsigned_abs().into());
        self.lock_wait = lock_wait.clamp(Duration::from_millis(1), longest);
        self
    }

    /// Sets how long Redis keeps a committed response (no effect without Redis).
    #[must_use]
    pub fn with_cache_ttl(mut self, cache_ttl: Duration) -> Self {
        if let Some(redis) = &mut self.redis {
            redis.cache_ttl = cache_ttl.max(Duration::from_millis(1));
        }
        self
    }

    /// Sets how long an abandoned Redis in-flight marker lives (no effect without Redis).
    #[must_use]
    pub fn with_in_flight_ttl(mut self, in_flight_ttl: Duration) -> Self {
        if let Some(redis) = &mut self.redis {
            redis.in_flight_ttl = in_flight_ttl.max(Duration::from_millis(1));
        }
        self
    }

    /// How long a duplicate waits for the first attempt.
    pub fn lock_wait(&self) -> Duration {
        self.lock_wait
    }

    /// Claims `(scope, key)` inside the caller's open transaction (READ COMMITTED).
    ///
    /// Waits up to `lock_wait` for a concurrent attempt with the same key to end. On `New`, run
    /// the command and call [`complete`](Self::complete) before committing. On `Err`, roll back
    /// (after `InProgress` or a database error the transaction is aborted anyway).
    #[tracing::instrument(name = "idempotency.claim", skip_all, fields(scope = %scope, key = %key))]
    pub async fn claim(
        &self,
        conn: &mut PgConnection,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &str,
    ) -> Result<Claim, IdempotencyError> {
        // The wait applies to the claim only; the command's own statements keep the
        // transaction's lock_timeout (the function restores it).
        let lock_wait = format!("{}ms", self.lock_wait.as_millis());
        claim_row(conn, &key.stored_scope(scope), key, fingerprint, &lock_wait).await?
    }

    /// Stores the encoded response of a claimed key, in the same transaction as the claim and
    /// the business change, before the commit.
    #[tracing::instrument(name = "idempotency.complete", skip_all, fields(scope = %scope, key = %key))]
    pub async fn complete(
        &self,
        conn: &mut PgConnection,
        scope: &str,
        key: &IdempotencyKey,
        response: &[u8],
    ) -> Result<(), IdempotencyError> {
        let updated = sqlx::query(COMPLETE)
            .bind(response)
            .bind(key.stored_scope(scope))
            .bind(key.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if updated != 1 {
            return Err(IdempotencyError::NotClaimed { key: key.clone() });
        }
        Ok(())
    }

    /// Runs `body` in a new transaction, at most once per `(scope, key)` when a key is given.
    ///
    /// `body` gets the open transaction's connection; its effects commit together with the
    /// stored response. A retry with the same request gets the stored response without running
    /// `body`; see the [module](self) docs for the errors. Without a key, `body` simply runs in a
    /// transaction.
    ///
    /// `body` is an async closure (`async |conn| { … }`, see the [module](self) example): unlike a
    /// closure returning a boxed future, it may borrow both the connection and its surroundings.
    #[tracing::instrument(
        name = "idempotency.execute",
        skip_all,
        fields(scope = %scope, key = key.as_ref().map(IdempotencyKey::as_str))
    )]
    pub async fn execute<Req, Resp, E, F>(
        &self,
        pool: &PgPool,
        scope: &str,
        key: Option<IdempotencyKey>,
        request: &Req,
        body: F,
    ) -> Result<Resp, E>
    where
        E: From<IdempotencyError>,
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&mut PgConnection) -> Result<Resp, E>,
    {
        self.run(pool, scope, key, request, Completion::ByStore, async |conn, _slot| {
            body(conn).await
        })
        .await
    }

    /// [`execute`](Self::execute) for a command that stores its response itself, in the statement
    /// that writes its business rows (a data-modifying CTE using [`COMPLETE`]), to save
    /// the round trip of [`complete`](Self::complete). With a key, `body` gets the
    /// [`ResponseSlot`] to write to and must store there exactly the encoding of the response it
    /// returns; without a key it gets `None` and stores nothing.
    #[tracing::instrument(
        name = "idempotency.execute",
        skip_all,
        fields(scope = %scope, key = key.as_ref().map(IdempotencyKey::as_str))
    )]
    pub async fn execute_folded<Req, Resp, E, F>(
        &self,
        pool: &PgPool,
        scope: &str,
        key: Option<IdempotencyKey>,
        request: &Req,
        body: F,
    ) -> Result<Resp, E>
    where
        E: From<IdempotencyError>,
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&mut PgConnection, Option<ResponseSlot>) -> Result<Resp, E>,
    {
        self.run(pool, scope, key, request, Completion::ByBody, body).await
    }

    async fn run<Req, Resp, E, F>(
        &self,
        pool: &PgPool,
        scope: &str,
        key: Option<IdempotencyKey>,
        request: &Req,
        completion: Completion,
        body: F,
    ) -> Result<Resp, E>
    where
        E: From<IdempotencyError>,
        Req: Message,
        Resp: Message + Default,
        F: AsyncFnOnce(&mut PgConnection, Option<ResponseSlot>) -> Result<Resp, E>,
    {
        let Some(key) = key else {
            let mut transaction = pool
                .begin()
                .await
                .map_err(|error| E::from(IdempotencyError::Database(error)))?;
            crate::db::bound_by_deadline(&mut transaction)
                .await
                .map_err(|error| E::from(IdempotencyError::Database(error)))?;
            let response = body(&mut *transaction, None).await?;
            transaction
                .commit()
                .await
                .map_err(|error| E::from(IdempotencyError::Database(error)))?;
            return Ok(response);
        };
        let fingerprint = fingerprint(request);
        self.guarded(scope, &key, &fingerprint, async || {
            self.execute_in_postgres(pool, scope, &key, &fingerprint, completion, body)
                .await
        })
        .await
    }

    /// The Redis fast path (when configured) around an authoritative execution that the caller
    /// runs itself: `authoritative` must claim `(scope, key)` with `fingerprint` in PostgreSQL,
    /// run the command and commit, and return the response with its encoding, exactly as
    /// [`execute_folded`](Self::execute_folded) does; payments' group commit
    /// ([`crate::batch`]) applies many such commands in one transaction. A cached response is
    /// replayed without calling `authoritative`; a concurrent attempt's marker is waited for.
    pub async fn guarded<Resp, E>(
        &self,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &str,
        authoritative: impl AsyncFnOnce() -> Result<(Resp, Vec<u8>), E>,
    ) -> Result<Resp, E>
    where
        E: From<IdempotencyError>,
        Resp: Message + Default,
    {
        let stored_scope = key.stored_scope(scope);
        let redis = self.redis.as_ref().filter(|_| !stored_scope.contains(':'));
        let Some(redis) = redis else {
            return authoritative().await.map(|(response, _)| response);
        };

        let cache_key = format!("idem:{stored_scope}:{key}");
        let marker_key = format!("idem-lock:{stored_scope}:{key}");
        if let Some(cached) = redis.lookup(&cache_key, fingerprint).await {
            return replay_cached(cached, key).map_err(E::from);
        }
        let marker = uuid::Uuid::new_v4().to_string();
        let owns_marker = match redis.mark_in_flight(&marker_key, &marker).await {
            Some(true) => true,
            Some(false) => {
                let deadline = Instant::now() + self.lock_wait;
                if let Some(cached) = redis
                    .wait_for_response(&cache_key, &marker_key, fingerprint, deadline)
                    .await
                {
                    return replay_cached(cached, key).map_err(E::from);
                }
                false
            }
            None => false,
        };
        let outcome = authoritative().await;
        if let Ok((_, encoded)) = &outcome {
            redis.store(&cache_key, fingerprint, encoded).await;
        }
        if owns_marker {
            redis.release(&marker_key, &marker).await;
        }
        outcome.map(|(response, _)| response)
    }

    /// The PostgreSQL part of [`execute_folded`](Self::execute_folded) alone (no Redis): for a
    /// caller inside [`guarded`](Self::guarded) that runs a command on its own after all (a
    /// group commit falling back to one transaction per command). Returns the response and its
    /// encoding.
    pub async fn execute_folded_in_postgres<Resp, E, F>(
        &self,
        pool: &PgPool,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &str,
        body: F,
    ) -> Result<(Resp, Vec<u8>), E>
    where
        E: From<IdempotencyError>,
        Resp: Message + Default,
        F: AsyncFnOnce(&mut PgConnection, Option<ResponseSlot>) -> Result<Resp, E>,
    {
        self.execute_in_postgres(pool, scope, key, fingerprint, Completion::ByBody, body)
            .await
    }

    /// Claims many keys in one round trip inside the caller's open transaction (READ
    /// COMMITTED): for each `(stored scope, key, fingerprint)` of `claims` (at most one per
    /// scope and key; see [`IdempotencyKey::stored_scope`]), in that order, `Ok(Claim::New)`,
    /// `Ok(Claim::Replay)` or `Err(Conflict)` exactly as [`claim`](Self::claim) decides. The keys
    /// are claimed in sorted order, so two batches never deadlock on each other's keys. A
    /// concurrent claim of one of the keys is waited for at most `lock_wait`; then, like any
    /// database error, the outer `Err`, and the transaction is aborted: run the commands one by
    /// one instead. A claim whose row was purged under it is an outer `InProgress` too.
    pub async fn claim_batch(
        &self,
        conn: &mut PgConnection,
        claims: &[(String, String, String)],
        lock_wait: Duration,
    ) -> Result<Vec<Result<Claim, IdempotencyError>>, IdempotencyError> {
        let mut order: Vec<usize> = (0..claims.len()).collect();
        order.sort_by(|a, b| (&claims[*a].0, &claims[*a].1).cmp(&(&claims[*b].0, &claims[*b].1)));
        if order
            .windows(2)
            .any(|pair| (&claims[pair[0]].0, &claims[pair[0]].1) == (&claims[pair[1]].0, &claims[pair[1]].1))
        {
            let key = claims[order[0]].1.clone();
            return Err(IdempotencyError::InProgress {
                key: IdempotencyKey(key, None),
            });
        }
        let column = |pick: fn(&(String, String, String)) -> &String| -> Vec<&str> {
            order.iter().map(|index| pick(&claims[*index]).as_str()).collect()
        };
        let rows: Vec<ClaimRow> = sqlx::query_as(CLAIM_BATCH)
            .bind(column(|claim| &claim.0))
            .bind(column(|claim| &claim.1))
            .bind(column(|claim| &claim.2))
            .bind(format!("{}ms", lock_wait.as_millis().max(1)))
            .fetch_all(&mut *conn)
            .await?;
        if rows.len() != claims.len() {
            return Err(IdempotencyError::Database(sqlx::Error::Protocol(format!(
                "{} claims answered for {} keys",
                rows.len(),
                claims.len()
            ))));
        }
        let mut outcomes: Vec<Option<Result<Claim, IdempotencyError>>> = (0..claims.len()).map(|_| None).collect();
        for (position, row) in order.iter().zip(rows) {
            let (_, key, fingerprint) = &claims[*position];
            let outcome = match row {
                (Some(true), _, _) => Ok(Claim::New),
                (Some(false), Some(stored), Some(response)) if &stored == fingerprint => Ok(Claim::Replay(response)),
                (Some(false), _, _) => Err(IdempotencyError::Conflict {
                    key: IdempotencyKey(key.clone(), None),
                }),
                (None, _, _) => {
                    return Err(IdempotencyError::InProgress {
                        key: IdempotencyKey(key.clone(), None),
                    });
                }
            };
            outcomes[*position] = Some(outcome);
        }
        Ok(outcomes.into_iter().flatten().collect())
    }
}

/// Stores the responses of many claimed keys in one statement: `$1` stored scopes, `$2` keys,
/// `$3` encoded responses (arrays of one length). Like [`COMPLETE`], a part of a larger
/// [`Statement`](crate::sql::Statement) that runs after [`IdempotencyStore::claim_batch`] in
/// its transaction.
pub const COMPLETE_MANY: &str = "UPDATE idempotency_keys AS k SET response = r.response \
     FROM unnest($1::text[], $2::text[], $3::bytea[]) AS r(scope, idempotency_key, response) \
     WHERE k.scope = r.scope AND k.idempotency_key = r.idempotency_key";

/// Removes claims made by [`IdempotencyStore::claim_batch`] in the open transaction for commands
/// that failed (so the claim leaves no trace, as if the command had rolled back on its own):
/// `$1` stored scopes, `$2` keys.
pub const RELEASE_CLAIMS: &str = "DELETE FROM idempotency_keys AS k \
     USING unnest($1::text[], $2::text[]) AS r(scope, idempotency_key) \
     WHERE k.scope = r.scope AND k.idempotency_key = r.idempotency_key";

/// A row of [`CLAIM_BATCH`]: claimed (NULL: no row), stored fingerprint, stored response.
type ClaimRow = (Option<bool>, Option<String>, Option<Vec<u8>>);

/// The claim of many keys in one statement: [`CLAIM`]'s function once per row, in the order of
/// the arrays (`$1` scopes, `$2` keys, `$3` fingerprints, `$4` lock wait); no function row (the
/// conflicting row was purged) comes back as NULLs.
const CLAIM_BATCH: &str = "SELECT c.claimed, c.stored_fingerprint, c.stored_response \
     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(scope, idempotency_key, fingerprint, position) \
     LEFT JOIN LATERAL idempotency_claim(k.scope, k.idempotency_key, k.fingerprint, $4) AS c ON true \
     ORDER BY k.position";

impl IdempotencyStore {
    /// The authoritative path: claim, run, complete and commit in one transaction. Returns the
    /// response and its encoding (for the cache).
    async fn execute_in_postgres<Resp, E, F>(
        &self,
        pool: &PgPool,
        scope: &str,
        key: &IdempotencyKey,
        fingerprint: &str,
        completion: Completion,
        body: F,
    ) -> Result<(Resp, Vec<u8>), E>
    where
        E: From<IdempotencyError>,
        Resp: Message + Default,
        F: AsyncFnOnce(&mut PgConnection, Option<ResponseSlot>) -> Result<Resp, E>,
    {
        let mut transaction = pool
            .begin()
            .await
            .map_err(|error| E::from(IdempotencyError::Database(error)))?;
        crate::db::bound_by_deadline(&mut transaction)
            .await
            .map_err(|error| E::from(IdempotencyError::Database(error)))?;
        match self.claim(&mut transaction, scope, key, fingerprint).await {
            Ok(Claim::New) => {}
            Ok(Claim::Replay(encoded)) => {
                rollback(transaction).await;
                let response = decode_stored(&encoded, key).map_err(E::from)?;
                return Ok((response, encoded));
            }
            Err(error) => {
                rollback(transaction).await;
                return Err(error.into());
            }
        }
        let slot = ResponseSlot {
            scope: key.stored_scope(scope),
            key: key.as_str().to_owned(),
        };
        let response = match body(&mut *transaction, Some(slot)).await {
            Ok(response) => response,
            Err(status) => {
                // Promptly, so that duplicates blocked on our row run the command themselves.
                rollback(transaction).await;
                return Err(status);
            }
        };
        let encoded = response.encode_to_vec();
        if completion == Completion::ByStore
            && let Err(error) = self.complete(&mut transaction, scope, key, &encoded).await
        {
            rollback(transaction).await;
            return Err(error.into());
        }
        transaction
            .commit()
            .await
            .map_err(|error| E::from(IdempotencyError::Database(error)))?;
        Ok((response, encoded))
    }
}

/// Where a command run by [`IdempotencyStore::execute_folded`] stores its encoded response: the
/// row its claim inserted, to be filled by [`COMPLETE`] in the command's own statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSlot {
    /// The scope of the key (the gRPC method).
    pub scope: String,
    /// The key.
    pub key: String,
}

/// Who stores the response of an idempotent command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    /// The store, with one more statement after the command ([`IdempotencyStore::complete`]).
    ByStore,
    /// The command, in its own statement ([`IdempotencyStore::execute_folded`]).
    ByBody,
}

/// Claims the key or reads the committed row, waiting at most `lock_wait` for a concurrent claim.
/// Returns the outer `Err` when the transaction is aborted, the inner one when it is still usable.
async fn claim_row(
    conn: &mut PgConnection,
    scope: &str,
    key: &IdempotencyKey,
    fingerprint: &str,
    lock_wait: &str,
) -> Result<Result<Claim, IdempotencyError>, IdempotencyError> {
    // A second round only when the row we conflicted with was purged before we could read it.
    for _ in 0..3 {
        let row: Option<(bool, Option<String>, Option<Vec<u8>>)> = match sqlx::query_as(CLAIM)
            .bind(scope)
            .bind(key.as_str())
            .bind(fingerprint)
            .bind(lock_wait)
            .fetch_optional(&mut *conn)
            .await
        {
            Ok(row) => row,
            Err(error) if DbFault::of(&error) == DbFault::Conflict => {
                return Err(IdempotencyError::InProgress { key: key.clone() });
            }
            Err(error) => return Err(error.into()),
        };
        match row {
            Some((true, _, _)) => return Ok(Ok(Claim::New)),
            Some((false, Some(stored_fingerprint), Some(response))) if stored_fingerprint == fingerprint => {
                return Ok(Ok(Claim::Replay(response)));
            }
            Some((false, _, _)) => return Ok(Err(IdempotencyError::Conflict { key: key.clone() })),
            None => continue,
        }
    }
    Ok(Err(IdempotencyError::InProgress { key: key.clone() }))
}

async fn rollback(transaction: sqlx::Transaction<'static, sqlx::Postgres>) {
    if let Err(error) = transaction.rollback().await {
        // The pool discards or resets the connection; nothing was committed either way.
        tracing::warn!(%error, "rollback of an idempotent command failed");
    }
}

fn decode_stored<Resp: Message + Default>(encoded: &[u8], key: &IdempotencyKey) -> Result<Resp, IdempotencyError> {
    Resp::decode(encoded).map_err(|error| {
        tracing::error!(%error, key = %key, "stored idempotent response does not decode");
        IdempotencyError::CorruptResponse { key: key.clone() }
    })
}

fn replay_cached<Resp: Message + Default>(cached: Cached, key: &IdempotencyKey) -> Result<Resp, IdempotencyError> {
    match cached {
        Cached::Response(encoded) => decode_stored(&encoded, key),
        Cached::Conflict => Err(IdempotencyError::Conflict { key: key.clone() }),
    }
}

/// Removes keys created more than `age` ago, in batches; returns how many. A retry with a removed
/// key runs its command again, so keep `age` above the longest client retry horizon.
#[tracing::instrument(name = "idempotency.purge", skip(pool))]
pub async fn purge_older_than(pool: &PgPool, age: Duration) -> crate::Result<u64> {
    let mut purged = 0;
    loop {
        let deleted = sqlx::query(PURGE)
            .bind(age.as_secs_f64())
            .bind(PURGE_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        purged += deleted;
        if deleted < PURGE_BATCH.unsigned_abs() {
            tracing::debug!(purged, "purged idempotency keys");
            return Ok(purged);
        }
    }
}

/// What the Redis cache holds for a key (committed in PostgreSQL before it was cached).
#[derive(Debug)]
enum Cached {
    /// The same request committed this encoded response.
    Response(Vec<u8>),
    /// Another request committed under this key.
    Conflict,
}

/// The optional Redis fast path. Every method swallows Redis errors (logged) and reports "nothing
/// known", so callers fall back to PostgreSQL.
#[derive(Clone)]
struct RedisCache {
    client: redis::Client,
    /// Shared by clones; the multiplexed connection is replaced after an error.
    connection: Arc<tokio::sync::Mutex<RedisConnection>>,
    cache_ttl: Duration,
    in_flight_ttl: Duration,
}

#[derive(Default)]
struct RedisConnection {
    current: Option<MultiplexedConnection>,
    /// No connection attempt before this instant (after a failed one).
    retry_after: Option<Instant>,
}

impl fmt::Debug for RedisCache {
    // The connection info may hold a password: print the address only.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisCache")
            .field("addr", &self.client.get_connection_info().addr.to_string())
            .field("cache_ttl", &self.cache_ttl)
            .field("in_flight_ttl", &self.in_flight_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut state = self.connection.lock().await;
        if let Some(connection) = &state.current {
            return Some(connection.clone());
        }
        if state
            .retry_after
            .is_some_and(|retry_after| Instant::now() < retry_after)
        {
            return None;
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        match self.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(connection) => {
                state.current = Some(connection.clone());
                state.retry_after = None;
                Some(connection)
            }
            Err(error) => {
                tracing::warn!(%error, "redis unreachable, idempotency falls back to postgresql");
                state.retry_after = Some(Instant::now() + REDIS_RECONNECT_BACKOFF);
                None
            }
        }
    }

    /// Runs one command; `None` when Redis is unavailable or failed.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd, what: &'static str) -> Option<T> {
        let mut connection = self.connection().await?;
        match command.query_async(&mut connection).await {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(%error, what, "redis command failed, idempotency falls back to postgresql");
                // A fresh connection on the next call; cheap, and a broken one never heals.
                self.connection.lock().await.current = None;
                None
            }
        }
    }

    async fn lookup(&self, cache_key: &str, fingerprint: &str) -> Option<Cached> {
        let value: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(cache_key), "get cached response")
            .await?;
        parse_cached(value?, fingerprint)
    }

    /// `Some(true)` when we took the marker, `Some(false)` when another attempt holds it.
    async fn mark_in_flight(&self, marker_key: &str, marker: &str) -> Option<bool> {
        let mut command = redis::cmd("SET");
        command
            .arg(marker_key)
            .arg(marker)
            .arg("NX")
            .arg("PX")
            .arg(millis(self.in_flight_ttl));
        let reply: Option<String> = self.query(&command, "set in-flight marker").await?;
        Some(reply.is_some())
    }

    /// Polls until the response is cached, the marker is gone or `deadline` passes.
    async fn wait_for_response(
        &self,
        cache_key: &str,
        marker_key: &str,
        fingerprint: &str,
        deadline: Instant,
    ) -> Option<Cached> {
        let mut interval = POLL_MIN;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return None;
            }
            tokio::time::sleep(interval.min(remaining)).await;
            interval = (interval * 2).min(POLL_MAX);
            let mut command = redis::cmd("MGET");
            command.arg(cache_key).arg(marker_key);
            let (cached, marker): (Option<Vec<u8>>, Option<Vec<u8>>) =
                self.query(&command, "poll cached response").await?;
            if let Some(cached) = cached {
                return parse_cached(cached, fingerprint);
            }
            // Marker gone without a cached response: the first attempt failed or its marker
            // expired, so PostgreSQL decides.
            marker?;
        }
    }

    async fn store(&self, cache_key: &str, fingerprint: &str, encoded: &[u8]) {
        let mut value = Vec::with_capacity(FINGERPRINT_LEN + encoded.len());
        value.extend_from_slice(fingerprint.as_bytes());
        value.extend_from_slice(encoded);
        let mut command = redis::cmd("SET");
        command.arg(cache_key).arg(value).arg("PX").arg(millis(self.cache_ttl));
        let _: Option<()> = self.query(&command, "cache response").await;
    }

    async fn release(&self, marker_key: &str, marker: &str) {
        let mut command = redis::cmd("EVAL");
        command.arg(RELEASE_MARKER).arg(1).arg(marker_key).arg(marker);
        let _: Option<i64> = self.query(&command, "release in-flight marker").await;
    }
}

/// A cached value is the 64-character fingerprint followed by the encoded response.
fn parse_cached(mut value: Vec<u8>, fingerprint: &str) -> Option<Cached> {
    if value.len() < FINGERPRINT_LEN {
        tracing::warn!(len = value.len(), "malformed cached idempotent response ignored");
        return None;
    }
    if &value[..FINGERPRINT_LEN] != fingerprint.as_bytes() {
        return Some(Cached::Conflict);
    }
    Some(Cached::Response(value.split_off(FINGERPRINT_LEN)))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_128_visible_ascii_characters() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN)).is_ok());
        assert!(IdempotencyKey::parse("order-42:retry/1~!").is_ok());
        assert_eq!(IdempotencyKey::parse(""), Err(InvalidIdempotencyKey::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(InvalidIdempotencyKey::TooLong)
        );
        for bad in ["a b", "a\tb", "caf\u{e9}", "\u{7f}"] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(InvalidIdempotencyKey::NotVisibleAscii),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fingerprints_are_hex_sha256_of_the_encoding() {
        let request = prost_types::Timestamp { seconds: 1, nanos: 2 };
        let print = fingerprint(&request);
        assert_eq!(print.len(), FINGERPRINT_LEN);
        assert_eq!(print, fingerprint(&request.clone()));
        assert_ne!(print, fingerprint(&prost_types::Timestamp { seconds: 1, nanos: 3 }));
        assert_eq!(
            fingerprint(&prost_types::Timestamp::default()),
            // sha256 of the empty string: a default message encodes to nothing
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn cached_values_compare_the_fingerprint() {
        let print = "a".repeat(FINGERPRINT_LEN);
        let mut value = print.clone().into_bytes();
        value.extend_from_slice(b"resp");
        assert!(matches!(parse_cached(value.clone(), &print), Some(Cached::Response(r)) if r == b"resp"));
        assert!(matches!(
            parse_cached(value, &"b".repeat(FINGERPRINT_LEN)),
            Some(Cached::Conflict)
        ));
        assert!(parse_cached(b"short".to_vec(), &print).is_none());
    }
}
