//! What every gRPC load shares: a connection per client, the `idempotency-key` header, and the
//! closed loop that payments and the ledger scenarios both run.
//!
//! In a closed loop each client sends its next operation as soon as the previous one was answered,
//! so the result is the throughput at that concurrency. Operations that start during the warm-up
//! run but are not measured; a failed one pauses its client for 10 ms, so a failing service is not
//! hammered in a tight loop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use fintech_devkit::auth::{Claims, SigningKey};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use crate::progress::Progress;
use crate::stats::{Live, Samples};

/// The benchmark's signing key (one per run) and the JWKS file the services verify against.
struct BenchKeys {
    key: SigningKey,
    jwks: std::path::PathBuf,
}

fn keys() -> anyhow::Result<&'static BenchKeys> {
    static KEYS: OnceLock<BenchKeys> = OnceLock::new();
    if let Some(keys) = KEYS.get() {
        return Ok(keys);
    }
    let key = SigningKey::generate();
    let dir = std::env::temp_dir()
        .join("fintech-bench-auth")
        .join(format!("{}", std::process::id()));
    key.save(&dir)?;
    let keys = BenchKeys {
        jwks: dir.join(fintech_devkit::auth::JWKS_FILE),
        key,
    };
    Ok(KEYS.get_or_init(|| keys))
}

/// The `AUTH_*` settings of the services the benchmark starts: its own key's JWKS, or
/// `AUTH_MODE=off` when `FINTECH_BENCH_AUTH=off` (to measure what verification costs).
pub fn auth_env() -> anyhow::Result<Vec<(&'static str, String)>> {
    if std::env::var("FINTECH_BENCH_AUTH").is_ok_and(|value| value == "off") {
        return Ok(vec![("AUTH_MODE", "off".to_owned())]);
    }
    Ok(vec![
        ("AUTH_MODE", "jwt".to_owned()),
        ("AUTH_JWKS", keys()?.jwks.display().to_string()),
        ("AUTH_ISSUER", fintech_devkit::auth::DEV_ISSUER.to_owned()),
        ("AUTH_AUDIENCE", fintech_devkit::auth::DEV_AUDIENCE.to_owned()),
    ])
}

/// Adds the benchmark's operator token to every call.
#[derive(Debug, Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose calls carry the benchmark's operator token.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// `channel` with the benchmark's operator token (valid for a day: longer than any run).
pub fn authenticated(channel: tonic::transport::Channel) -> anyhow::Result<Channel> {
    let claims = Claims {
        exp: fintech_devkit::auth::now_secs() + 24 * 3600,
        ..Claims::operator("bench")
    };
    authenticated_as(channel, &claims)
}

/// `channel` carrying a token of `claims` (signed with the benchmark's key).
pub fn authenticated_as(channel: tonic::transport::Channel, claims: &Claims) -> anyhow::Result<Channel> {
    let token = keys()?.key.mint(claims);
    Ok(InterceptedService::new(
        channel,
        Bearer(format!("Bearer {token}").parse()?),
    ))
}

/// A connection to a service as customer `customer_id` with `scopes` (valid for a day).
pub async fn connect_as_customer(address: &str, customer_id: &str, scopes: &[&str]) -> anyhow::Result<Channel> {
    let claims = Claims {
        exp: fintech_devkit::auth::now_secs() + 24 * 3600,
        ..Claims::customer(customer_id, scopes)
    };
    authenticated_as(open(address).await?, &claims)
}

/// Writes a service token of `subject` with `scopes` (valid for a day) into `dir`, for a service
/// that calls another one with its own identity (transfers calls the ledger).
pub fn service_token_file(dir: &std::path::Path, subject: &str, scopes: &[&str]) -> anyhow::Result<std::path::PathBuf> {
    let claims = Claims {
        exp: fintech_devkit::auth::now_secs() + 24 * 3600,
        ..Claims::new(subject, scopes, Duration::from_secs(24 * 3600))
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.token", subject.replace(':', "-")));
    std::fs::write(&path, keys()?.key.mint(&claims))?;
    Ok(path)
}

async fn open(address: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// A connection to a service (one HTTP/2 connection per channel), carrying the operator token.
pub async fn connect(address: &str) -> anyhow::Result<Channel> {
    authenticated(open(address).await?)
}

/// `message` with the `idempotency-key` metadata the services require on every command.
pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = key.parse() {
        request.metadata_mut().insert("idempotency-key", value);
    }
    request
}

/// A failed operation: the error kind for the report and the commits it made before failing.
#[derive(Debug)]
pub struct Failure {
    /// A stable label (`CreateTransaction: Unavailable`).
    pub kind: String,
    /// Commits the service acknowledged before the failure.
    pub commits: u64,
}

/// Result of a closed loop.
#[derive(Debug)]
pub struct ClosedLoopRun {
    /// `samples[0]`: whole operations and their errors; then one per part the operation reported.
    pub samples: Vec<Samples>,
    /// Commits the service acknowledged.
    pub commits: u64,
    /// Measured time (after the warm-up).
    pub elapsed: Duration,
}

/// Runs one task per client for `warmup` (not measured) plus `duration`: `clients[i](n)` is the
/// client's `n`-th operation, answering with the latencies of its `parts` parts and its commits.
pub async fn closed_loop<F, Op>(
    clients: Vec<F>,
    parts: usize,
    warmup: Duration,
    duration: Duration,
    label: &str,
) -> anyhow::Result<ClosedLoopRun>
where
    F: FnMut(u64) -> Op + Send + 'static,
    Op: Future<Output = Result<(Vec<Duration>, u64), Failure>> + Send + 'static,
{
    let live = Arc::new(Live::default());
    let measure_from = Instant::now() + warmup;
    let deadline = measure_from + duration;
    let _progress = Progress::start(label, warmup + duration, Arc::clone(&live), None);
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut operation| {
            let live = Arc::clone(&live);
            tokio::spawn(async move {
                let mut samples = vec![Samples::default(); parts + 1];
                let mut commits = 0;
                for n in 0.. {
                    let started = Instant::now();
                    if started >= deadline {
                        break;
                    }
                    let outcome = operation(n).await;
                    let measured = started >= measure_from;
                    match outcome {
                        Ok((latencies, committed)) => {
                            live.ok();
                            if measured {
                                samples[0].record(started.elapsed());
                                for (part, latency) in samples[1..].iter_mut().zip(latencies) {
                                    part.record(latency);
                                }
                                commits += committed;
                            }
                        }
                        Err(failure) => {
                            live.failed();
                            if measured {
                                samples[0].error(failure.kind);
                                commits += failure.commits;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (samples, commits)
            })
        })
        .collect();
    let mut total = ClosedLoopRun {
        samples: vec![Samples::default(); parts + 1],
        commits: 0,
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        let (samples, commits) = worker.await?;
        for (into, from) in total.samples.iter_mut().zip(samples) {
            into.merge(from);
        }
        total.commits += commits;
    }
    total.elapsed = measure_from.elapsed().max(Duration::from_millis(1));
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_count_as_errors_with_their_commits() {
        let client = |n: u64| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            match n % 2 {
                0 => Ok((vec![Duration::from_millis(1)], 2)),
                _ => Err(Failure {
                    kind: "CreateTransaction: Unavailable".to_owned(),
                    commits: 1,
                }),
            }
        };
        let run = closed_loop(vec![client], 1, Duration::ZERO, Duration::from_millis(300), "test")
            .await
            .expect("closed loop");
        let (whole, part) = (&run.samples[0], &run.samples[1]);
        assert!(whole.count() > 0 && whole.errors() > 0, "{whole:?}");
        assert_eq!(part.count(), whole.count());
        assert_eq!(whole.error_kinds()["CreateTransaction: Unavailable"], whole.errors());
        assert_eq!(run.commits, 2 * whole.count() + whole.errors());
    }
}
