//! The ledger binary: reads config, sets up telemetry, runs until SIGTERM/SIGINT.

use anyhow::Context as _;
use fintech_ledger::LedgerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = LedgerConfig::from_env()?;
    let _telemetry = fintech_platform::telemetry::init("ledger")?;
    let listener = tokio::net::TcpListener::bind(config.platform.grpc_listen_addr)
        .await
        .with_context(|| {
            format!(
                "GRPC_LISTEN_ADDR: cannot listen on {}",
                config.platform.grpc_listen_addr
            )
        })?;
    let shutdown = fintech_platform::shutdown::on_signals();
    fintech_ledger::run(config, listener, shutdown).await
}
