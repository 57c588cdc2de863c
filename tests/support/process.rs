//! Service binaries run as real processes, for tests that SIGKILL them.
//!
//! A process is described by the same config as an in-process instance: build it with the
//! service module's `config` (on [`crate::service::platform_config`]) and pass its `env` form, e.g.
//! `payments::env(&payments::config(platform, &db, &prefix))`, so both run with the same settings.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static BUILD: Mutex<()> = Mutex::new(());

/// Settings whose absence means "off" (see `crate::service::platform_env`).
const OPTIONAL_SETTINGS: [&str; 2] = ["REDIS_URL", "KAFKA_GROUP_INSTANCE_ID"];

/// The path of a workspace binary, built (incrementally) first. Every binary of the workspace is
/// built in one invocation, as `scripts/test` and `bench/run` build them, so the features resolve
/// the same way and this is a no-op after either ran (building one package alone resolves them
/// differently and recompiles half the dependency tree).
///
/// The variables cargo sets for a test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …) are
/// removed from the build's environment: a build script that declares `rerun-if-env-changed` on
/// one of them (ring does, on `CARGO_MANIFEST_DIR`) would otherwise see it change between this
/// build and the next `cargo test`, and each would rebuild half the tree for the other.
pub fn service_binary(package: &str, binary: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    let status = without_cargo_test_env(&mut build)
        .args(["build", "--quiet", "--workspace", "--bins"])
        .current_dir(crate::repo_root())
        .status()
        .expect("cargo build runs");
    assert!(status.success(), "building {binary} failed");
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| crate::repo_root().join("target"), PathBuf::from);
    let path = target.join("debug").join(binary);
    assert!(path.exists(), "{package} built no binary {}", path.display());
    path
}

/// Removes from `command`'s environment what cargo sets for the test process it runs: anything
/// that builds with cargo (a script calling `cargo build`, say) must see the environment of the
/// `cargo test` that built this process, or builds alternate (see [`service_binary`]).
pub fn without_cargo_test_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_tests) {
            command.env_remove(&name);
        }
    }
    command
}

/// Whether cargo sets `name` for the test process it runs (not for the build it was given).
fn set_by_cargo_for_tests(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// A service process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    process: fintech_devkit::process::Process,
}

impl ServiceProcess {
    /// Starts `binary` with `env`, appending its output to `log`.
    pub fn spawn(binary: &PathBuf, env: &[(&str, String)], log: &std::path::Path) -> Self {
        let mut command = Command::new(binary);
        command.env("RUST_LOG", "info");
        for name in OPTIONAL_SETTINGS {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let name = binary
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        Self {
            process: fintech_devkit::process::Process::spawn(&name, command, log).expect("service starts"),
        }
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Fails, with the end of its log, if the process has exited (or was killed).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process.ensure_running()
    }
}
