//! Notifications: tells the outside world what happened on the platform. Consumes the platform's
//! topics, stores each as a public event, and delivers it as a signed webhook to the Standard
//! Webhooks specification to every endpoint that wants it, with retries, replay and a live stream
//! (`fintech.notifications.v1.NotificationsService`, docs/adr/0026-webhook-delivery.md).
//!
//! # Layout
//! - [`config`]: environment variables;
//! - [`grpc`]: the tonic service and the one error-to-status mapping;
//! - [`app`]: the use cases (endpoints, replay, test events, the stream, auto-disable);
//! - [`delivery`]: the worker that claims due messages and attempts them over HTTP;
//! - [`domain`]: ids, input rules, the schedule, signatures, destination (SSRF) rules;
//! - [`storage`]: the SQL, the queue among it;
//! - [`sources`]: the topic → public event type table, the JSON of payloads, the consumer.

pub mod app;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod grpc;
pub mod sources;
pub mod storage;

use fintech_platform::CancellationToken;
use fintech_platform::config::PlatformConfig;
use fintech_platform::kafka::TopicNames;
use fintech_platform::kit::{Kit, Service};
use fintech_proto::notifications::notifications_service_server::NotificationsServiceServer;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;

pub use config::NotificationsConfig;

/// The notifications tables.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/notifications");

/// Full name of the gRPC service, as health and reflection report it.
pub const SERVICE_NAME: &str =
    <NotificationsServiceServer<grpc::NotificationsGrpc> as tonic::server::NamedService>::NAME;

/// The notifications service, as the kit runs it.
#[derive(Debug)]
pub struct Notifications;

impl Notifications {
    /// The delivery settings of `config`.
    pub fn delivery_settings(config: &NotificationsConfig) -> delivery::DeliverySettings {
        delivery::DeliverySettings {
            schedule: config.schedule.clone(),
            jitter_percent: config.jitter_percent,
            attempt_timeout: config.attempt_timeout,
            lease: config.lease,
            disable_after: config.disable_after,
            policy: config.ssrf.clone(),
            workers: config.workers,
            per_endpoint: config.per_endpoint,
            poll_interval: config.poll_interval,
        }
    }
}

impl Service for Notifications {
    const NAME: &'static str = "notifications";
    const DEFAULT_PORT: u16 = config::DEFAULT_PORT;
    type Config = NotificationsConfig;

    fn config(platform: PlatformConfig) -> NotificationsConfig {
        NotificationsConfig::defaults(platform)
    }

    fn config_from_env() -> fintech_platform::Result<NotificationsConfig> {
        NotificationsConfig::from_env()
    }

    /// Runs notifications on `listener` until `shutdown` fires: the source consumer, the delivery
    /// worker, the outbox relays and the gRPC service.
    async fn run(
        config: NotificationsConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        sources::check_descriptors()?;
        let kit = Kit::start(&config.platform, &MIGRATOR).await?;
        let topics = TopicNames::with_prefix(&config.platform.topic_prefix);
        let wake = app::Wake::default();
        let app = app::NotificationsApp::new(
            kit.pool().clone(),
            topics.clone(),
            config.ssrf.clone(),
            config.rotation_overlap,
            wake.clone(),
        );
        let deliverer = delivery::Deliverer::new(app.clone(), Self::delivery_settings(&config), wake.clone())?;
        let inputs = sources::input_topics();
        let handler = sources::Sources::handler(kit.pool().clone(), topics, wake);
        kit.consumer(sources::CONSUMER, &inputs, sources::NOTIFICATIONS_DLQ, handler)
            .job("delivery", move |stop| deliverer.run(stop))
            .grpc(NotificationsServiceServer::new(grpc::NotificationsGrpc::new(app)))
            .serve(listener, shutdown)
            .await
    }
}
