//! The platform the campaign runs on, every part a process of its own that a fault may stop: a
//! private PostgreSQL cluster (one database per service), a private broker (Tansu), and payments,
//! tax and the ledger from the workspace's debug binaries (`cargo build --workspace --bins`).
//!
//! Each service keeps its port across restarts, so the load's channels reconnect by themselves.
//! Static group membership (`KAFKA_GROUP_INSTANCE_ID`, the same id across restarts) is off by
//! default: on Tansu 0.6 it stalled a group of the restarted ledger for minutes (faults/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use fintech_devkit::auth::{Claims, SigningKey};
use fintech_devkit::broker::PrivateBroker;
use fintech_devkit::postgres::PgCluster;
use fintech_devkit::process::{Process, log_tail};
use sqlx::PgPool;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

/// The topic prefix of a campaign (its broker is private, the prefix only names the run).
pub(crate) const PREFIX: &str = "faults.";
/// Longest wait for a service to report SERVING.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A service to start: its name (and binary), the gRPC service its health check names, and
/// settings of its own.
type ServiceSpec = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// One service of the platform.
#[derive(Debug)]
pub(crate) struct Service {
    /// `payments`, `tax`, `ledger`.
    pub(crate) name: &'static str,
    /// The gRPC service its health check names.
    pub(crate) health: &'static str,
    /// `127.0.0.1:<port>`, the same across restarts.
    pub(crate) address: String,
    /// A small pool on its database, for the campaign's own reads.
    pub(crate) db: PgPool,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    process: Option<Process>,
}

impl Service {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.binary);
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        for name in ["REDIS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            command.env_remove(name);
        }
        self.process = Some(Process::spawn(self.name, command, &self.log)?);
        Ok(())
    }

    /// SIGKILL, nothing flushed.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts it again (same port, same environment, same log).
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Fails, with the end of its log, if the process exited on its own.
    pub(crate) fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.ensure_running(),
            None => Ok(()),
        }
    }

    /// Waits until its health service reports SERVING.
    pub(crate) async fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let process = &mut self.process;
        let alive = || match process.as_mut() {
            Some(process) => process.ensure_running(),
            None => Ok(()),
        };
        fintech_devkit::process::wait_serving(&self.address, self.health, timeout, alive)
            .await
            .with_context(|| {
                format!(
                    "{} is not serving; end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 20)
                )
            })?;
        Ok(())
    }
}

/// Adds the campaign's operator token to every call.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel whose calls carry the operator token.
pub(crate) type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// The whole platform.
#[derive(Debug)]
pub(crate) struct Platform {
    /// The private PostgreSQL cluster.
    pub(crate) postgres: PgCluster,
    /// The private broker.
    pub(crate) broker: PrivateBroker,
    /// Payments, tax, the ledger.
    pub(crate) services: Vec<Service>,
    /// Restart killed consumers within the broker's session timeout (see `faults::inject`).
    pub(crate) quick_restarts: bool,
    key: SigningKey,
}

impl Platform {
    /// Starts PostgreSQL, the broker (with every topic) and the services, and waits until each
    /// serves.
    /// With `static_membership` every service gets `KAFKA_GROUP_INSTANCE_ID` (the same id across
    /// its restarts).
    pub(crate) async fn start(dir: &Path, bin_dir: &Path, static_membership: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let postgres = tokio::task::block_in_place(PgCluster::start).context("start a private PostgreSQL cluster")?;
        let broker = PrivateBroker::start_in(&dir.join("broker"))
            .await
            .context("start a private broker")?;
        let topics: Vec<String> = fintech_proto::topics::ALL
            .iter()
            .map(|topic| format!("{PREFIX}{}", topic.name))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        fintech_devkit::create_topics(broker.bootstrap(), &topics, 3).await?;

        let key = SigningKey::generate();
        let keys = dir.join("keys");
        key.save(&keys)?;
        let shared = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap().to_owned()),
            ("TOPIC_PREFIX", PREFIX.to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("NO_COLOR", "1".to_owned()),
            ("OUTBOX_POLL_INTERVAL_MS", "50".to_owned()),
            ("AUTH_MODE", "jwt".to_owned()),
            (
                "AUTH_JWKS",
                keys.join(fintech_devkit::auth::JWKS_FILE).display().to_string(),
            ),
            ("AUTH_ISSUER", fintech_devkit::auth::DEV_ISSUER.to_owned()),
            ("AUTH_AUDIENCE", fintech_devkit::auth::DEV_AUDIENCE.to_owned()),
        ];
        let specs: [ServiceSpec; 3] = [
            ("payments", "fintech.payments.v1.PaymentsService", &[]),
            ("tax", "fintech.tax.v1.TaxService", &[]),
            (
                "ledger",
                "fintech.ledger.v1.LedgerService",
                &[("TAX_CONSUMER_ENABLED", "true"), ("CASH_CONSUMER_ENABLED", "true")],
            ),
        ];
        let mut services = Vec::new();
        for (name, health, extra) in specs {
            let url = tokio::task::block_in_place(|| postgres.create_database(name))?;
            let address = format!("127.0.0.1:{}", fintech_devkit::free_port()?);
            let mut env: Vec<(String, String)> = shared
                .iter()
                .map(|(variable, value)| ((*variable).to_owned(), value.clone()))
                .collect();
            env.extend([
                ("DATABASE_URL".to_owned(), url.clone()),
                ("GRPC_LISTEN_ADDR".to_owned(), address.clone()),
            ]);
            if static_membership {
                env.push(("KAFKA_GROUP_INSTANCE_ID".to_owned(), format!("faults-{name}-0")));
            }
            env.extend(
                extra
                    .iter()
                    .map(|(variable, value)| ((*variable).to_owned(), (*value).to_owned())),
            );
            let db = fintech_platform::db::connect(&url, 3, Duration::from_secs(10))
                .await
                .with_context(|| format!("connect to {name}'s database"))?;
            let mut service = Service {
                name,
                health,
                address,
                db,
                binary: bin_dir.join(name),
                env,
                log: dir.join(format!("{name}.log")),
                process: None,
            };
            anyhow::ensure!(
                service.binary.exists(),
                "{} missing: run `cargo build --workspace --bins` first",
                service.binary.display()
            );
            service.spawn()?;
            services.push(service);
        }
        let mut platform = Self {
            postgres,
            broker,
            services,
            quick_restarts: false,
            key,
        };
        for service in &mut platform.services {
            service.wait_serving(START_TIMEOUT).await?;
        }
        Ok(platform)
    }

    /// The service `name`.
    pub(crate) fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|service| service.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// The service `name`, to kill or restart it.
    pub(crate) fn service_mut(&mut self, name: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|service| service.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// A lazily connected channel to `name` carrying an operator token (reconnects by itself
    /// after the service restarts).
    pub(crate) fn channel(&self, name: &str) -> anyhow::Result<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.service(name).address))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect_lazy();
        let claims = Claims {
            exp: fintech_devkit::auth::now_secs() + 24 * 3600,
            ..Claims::operator("faults")
        };
        let token = format!("Bearer {}", self.key.mint(&claims));
        Ok(InterceptedService::new(channel, Bearer(token.parse()?)))
    }

    /// Fails if a service died on its own (not killed by a fault).
    pub(crate) fn ensure_alive(&mut self) -> anyhow::Result<()> {
        for service in &mut self.services {
            service.ensure_running()?;
        }
        if let Some(panic) = self.broker.panic() {
            bail!("the broker crashed: {panic}");
        }
        Ok(())
    }

    /// Stops the services gracefully (the cluster and the broker go when dropped).
    pub(crate) fn stop(&mut self) {
        for service in &mut self.services {
            if let Some(mut process) = service.process.take() {
                tokio::task::block_in_place(|| process.stop(Duration::from_secs(20)));
            }
        }
    }
}
