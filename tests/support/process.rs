//! Service binaries run as real processes, for tests that SIGKILL them.
//!
//! A process is described by the same config as an in-process instance: build it with the
//! service module's `config` (on [`crate::service::platform_config`]) and pass its `env` form, e.g.
//! `payments::env(&payments::config(platform, &db, &prefix))`, so both run with the same settings.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;

static BUILD: Mutex<()> = Mutex::new(());

/// Settings whose absence means "off" (see `crate::service::platform_env`).
const OPTIONAL_SETTINGS: [&str; 2] = ["REDIS_URL", "KAFKA_GROUP_INSTANCE_ID"];

/// The path of a workspace binary, built (incrementally) first.
pub fn service_binary(package: &str, binary: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["build", "--quiet", "-p", package, "--bin", binary])
        .current_dir(crate::repo_root())
        .status()
        .expect("cargo build runs");
    assert!(status.success(), "building {binary} failed");
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| crate::repo_root().join("target"), PathBuf::from);
    target.join("debug").join(binary)
}

/// A service process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
}

impl ServiceProcess {
    /// Starts `binary` with `env`, logging to `log`.
    pub fn spawn(binary: &PathBuf, env: &[(&str, String)], log: &std::path::Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut command = Command::new(binary);
        let stdout = log.try_clone().expect("log file handle");
        command.stdout(stdout).stderr(log).env("RUST_LOG", "info");
        // An optional setting that `env` leaves out is off, as in-process, not inherited:
        // `scripts/test` exports REDIS_URL for the Redis tests, and a service that inherited it
        // would run with the Redis fast path the test did not ask for.
        for name in OPTIONAL_SETTINGS {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        Self {
            child: command.spawn().expect("service starts"),
        }
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
