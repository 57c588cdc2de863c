//! A private PostgreSQL cluster for tests that stop, crash and restart the database (the shared
//! server on 5432 must stay up for everyone else).
//!
//! [`PgCluster::start`] runs `initdb` into a fresh temporary folder and starts the server with
//! `pg_ctl` on a free loopback port, trust authentication for the superuser `postgres`, and small
//! settings meant for tests (`fsync=off`: a crash of the *machine* may lose data, a crash of the
//! *server* ([`StopMode::Immediate`]) does not, and that is what tests exercise). The server
//! binaries come from `PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`.
//!
//! PostgreSQL refuses to run as root: when the process is root, the folder is handed to the
//! `postgres` user and every server binary runs through `runuser -u postgres --`.
//!
//! Dropping the value stops the server (immediate) and removes the folder. A process killed before
//! its drop runs leaves the server running; `pg_ctl -D <dir>/data stop` ends it.
//!
//! The calls block (they wait on `pg_ctl`); from async code they are short enough to call directly
//! in a test, or wrap them in `tokio::task::spawn_blocking`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Longest wait for the server to start, stop or answer.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of every private cluster: small, and without durability the tests do not need.
const SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("shared_buffers", "'16MB'"),
    ("max_connections", "100"),
    // Commits still reach the kernel before they are acknowledged (`synchronous_commit` stays
    // on), so a killed server loses nothing; only a crash of the machine could.
    ("fsync", "off"),
];

/// How [`PgCluster::stop`] shuts the server down (`pg_ctl stop -m <mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnects clients, rolls back open transactions and writes a shutdown checkpoint.
    Fast,
    /// Kills every server process without a checkpoint, as a crash would; the next start runs
    /// crash recovery from the WAL.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Immediate => "immediate",
        }
    }
}

/// A PostgreSQL server owned by one test, on its own port and data folder.
#[derive(Debug)]
pub struct PgCluster {
    /// Holds `data/` and `postgres.log`; removed when the cluster is dropped.
    dir: tempfile::TempDir,
    bindir: PathBuf,
    /// Set when the process is root: the server binaries then run as this user.
    run_as: Option<&'static str>,
    port: u16,
}

impl PgCluster {
    /// Initialises a fresh cluster on a free loopback port, starts it and waits until it accepts
    /// connections.
    pub fn start() -> anyhow::Result<Self> {
        let bindir = server_bindir()?;
        let run_as = if running_as_root()? { Some("postgres") } else { None };
        let dir = tempfile::Builder::new()
            .prefix("fintech-pg-")
            .tempdir()
            .context("create a temporary folder for the cluster")?;
        if let Some(user) = run_as {
            hand_over(dir.path(), user)?;
        }
        let mut cluster = Self {
            dir,
            bindir,
            run_as,
            port: crate::free_port()?,
        };
        cluster.init()?;
        // The port was free when picked; another process may take it before the server binds it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            cluster.write_port()?;
            match cluster.start_again() {
                Ok(()) => return Ok(cluster),
                Err(_) if attempts < 3 && cluster.log_contains("could not bind") => {
                    cluster.port = crate::free_port()?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL of database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of the `postgres` maintenance database, for `CREATE DATABASE` and the like.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// The data folder (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Creates database `name` (owned by `postgres`) and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "--", name],
        )
        .with_context(|| format!("create database {name}"))?;
        Ok(self.url(name))
    }

    /// Stops the server and waits until it is gone.
    pub fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let data = self.data_dir();
        let timeout = TIMEOUT.as_secs().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_arg(&data)?,
                "-m",
                mode.as_arg(),
                "-w",
                "-t",
                &timeout,
                "stop",
            ],
        )
        .with_context(|| format!("stop the cluster ({} mode)", mode.as_arg()))?;
        Ok(())
    }

    /// Starts the server again on the same data folder and port, and waits until it accepts
    /// connections (after an immediate stop, crash recovery runs first).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let log = self.log_file();
        let timeout = TIMEOUT.as_secs().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_arg(&data)?,
                "-l",
                path_arg(&log)?,
                "-w",
                "-t",
                &timeout,
                "start",
            ],
        )
        .context("start the cluster")?;
        self.wait_until_ready()
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let data = self.data_dir();
        let Ok(data) = path_arg(&data) else {
            return false;
        };
        self.command("pg_ctl")
            .args(["-D", data, "status"])
            .output()
            .is_ok_and(|output| output.status.success())
    }

    fn init(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "initdb",
            &[
                "-D",
                path_arg(&data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )
        .context("initialise the cluster")?;
        let mut settings = String::from("\n# fintech-devkit private cluster\n");
        for (name, value) in SETTINGS {
            let _ = writeln!(settings, "{name} = {value}");
        }
        // The socket goes into the cluster's folder: the system one may not be writable, and
        // clients here connect over TCP anyway.
        let _ = writeln!(settings, "unix_socket_directories = '{}'", self.dir.path().display());
        append(&data.join("postgresql.conf"), &settings)
    }

    /// Writes the port into `postgresql.auto.conf` so that a restart keeps it.
    fn write_port(&self) -> anyhow::Result<()> {
        let path = self.data_dir().join("postgresql.auto.conf");
        let text = format!("# written by fintech-devkit PgCluster\nport = {}\n", self.port);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let output = self
                .command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-t", "2"])
                .output()
                .with_context(|| format!("run {}", self.bindir.join("pg_isready").display()))?;
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the cluster on port {port} did not accept connections within {}s; see {}:\n{}",
                    TIMEOUT.as_secs(),
                    self.log_file().display(),
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A server binary, run as the cluster's owner.
    fn command(&self, binary: &str) -> Command {
        let program = self.bindir.join(binary);
        let mut command = match self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.current_dir(self.dir.path()).env_remove("PGDATA");
        command
    }

    /// Runs a server binary to completion; a failure names the command, its output and the log.
    fn run(&self, binary: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = self.command(binary);
        command.args(args);
        let shown = format!("{command:?}");
        let output = command.output().with_context(|| format!("run {shown}"))?;
        if !output.status.success() {
            bail!(
                "{shown} failed ({}):\n{}{}\nserver log {}:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_file().display(),
                self.log_tail(20)
            );
        }
        Ok(output)
    }

    fn log_tail(&self, lines: usize) -> String {
        crate::log_tail(&self.log_file(), lines)
    }

    fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(self.log_file()).is_ok_and(|text| text.contains(needle))
    }

    /// Last resort when `pg_ctl stop` fails: SIGKILL the postmaster named in `postmaster.pid`.
    fn kill_postmaster(&self) {
        let pid_file = self.data_dir().join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::trim).map(str::to_owned))
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            return;
        };
        let _ = Command::new("kill").args(["-KILL", &pid]).output();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.is_running() && self.stop(StopMode::Immediate).is_err() {
            self.kill_postmaster();
        }
    }
}

/// The folder of the PostgreSQL server binaries: `PG_BINDIR`, else `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian's layout); each must hold `initdb`.
pub fn server_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("initdb").is_file() {
            bail!("PG_BINDIR={} holds no initdb", dir.display());
        }
        return Ok(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server binaries (initdb): set PG_BINDIR, put pg_config on the PATH, or \
         install the postgresql package",
    )
}

fn running_as_root() -> anyhow::Result<bool> {
    Ok(id(&["-u"])? == 0)
}

/// Gives `dir` to `user` (the server refuses a data folder it does not own).
fn hand_over(dir: &Path, user: &str) -> anyhow::Result<()> {
    let uid = id(&["-u", user]).with_context(|| format!("running as root, but there is no {user} user"))?;
    let gid = id(&["-g", user])?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).with_context(|| format!("chown {} to {user}", dir.display()))
}

/// `id <args>` as a number.
fn id(args: &[&str]) -> anyhow::Result<u32> {
    let output = Command::new("id")
        .args(args)
        .output()
        .with_context(|| format!("run id {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "id {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .with_context(|| format!("parse the output of id {}", args.join(" ")))
}

fn path_arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}
