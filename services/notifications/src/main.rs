//! The notifications binary: the service kit's `main` (settings, telemetry, signals) around `run`.

fn main() -> anyhow::Result<()> {
    fintech_platform::kit::main::<fintech_notifications::Notifications>()
}
