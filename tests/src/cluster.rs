//! Simulated hosts for end-to-end tests: a Docker network the test owns, and real
//! `mofang-agent` processes (built from this workspace) each with its own state and disks.

use crate::coord::free_port;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Builds the workspace binaries once per test process and returns the directory holding them.
pub fn binaries() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // A fixed set of binaries (scripts/stress-failover): no build, whatever the tree.
            // Set but empty (`MOFANG_TEST_BINARIES= cargo test`) means unset, not the current
            // directory.
            if let Some(dir) = std::env::var_os("MOFANG_TEST_BINARIES").filter(|d| !d.is_empty()) {
                let dir = PathBuf::from(dir);
                if !dir.join("mofang-scheduler").is_file() || !dir.join("mofang-agent").is_file() {
                    return Err(format!(
                        "MOFANG_TEST_BINARIES={} holds no mofang-scheduler and mofang-agent",
                        dir.display()
                    ));
                }
                return Ok(dir);
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "mofang-agent",
                    "-p",
                    "mofang-scheduler",
                    "--bins",
                ])
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of the binaries failed: {status}"));
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("target"));
            Ok(target.join("debug"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `mofang-agent` binary agents start from instead of the one in [`binaries`] (a
/// benchmark comparing two agents side by side in one run: `bench-failover --agents`).
static AGENT_BINARY: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Makes agents started from now on run `bin` (None: the one in [`binaries`]).
pub fn use_agent_binary(bin: Option<PathBuf>) {
    *AGENT_BINARY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = bin;
}

/// The binary `bin` is started from.
fn binary(bin: &str) -> Result<PathBuf> {
    let agent = AGENT_BINARY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match agent {
        Some(path) if bin == "mofang-agent" => Ok(path),
        _ => Ok(binaries()?.join(bin)),
    }
}

/// Starts `bin --config <dir>/<name>.toml`, appending its output to `<dir>/<name>.log`.
fn spawn_daemon(bin: &str, dir: &Path, name: &str) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    Command::new(binary(bin)?)
        .arg("--config")
        .arg(dir.join(format!("{name}.toml")))
        .env("RUST_LOG", format!("info,{}=debug", bin.replace('-', "_")))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {bin}"))
}

/// `kill -9` of a daemon started by `spawn_daemon`, if it runs.
fn kill9(child: &mut Option<Child>) -> Result<()> {
    if let Some(mut c) = child.take() {
        c.kill()?;
        c.wait()?;
    }
    Ok(())
}

/// With `MOFANG_TEST_LOGS=<dir>`, a daemon's log is kept there when its test ends (a test
/// that fails with an error rather than a panic prints no log; this keeps them all).
fn keep_log(name: &str, log: &str) {
    if let Some(dir) = std::env::var_os("MOFANG_TEST_LOGS") {
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let n = crate::unique_name(name);
        let _ = std::fs::write(dir.join(format!("{n}.log")), log);
    }
}

/// A daemon's log so far.
fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// A Docker bridge network created for one test, removed on drop.
#[derive(Debug)]
pub struct TestNetwork {
    /// Network name.
    pub name: String,
}

impl TestNetwork {
    /// Creates a labelled bridge network.
    pub fn create(name: &str) -> Result<Self> {
        let (k, v) = crate::test_label();
        let out = Command::new("docker")
            .args([
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                &format!("{k}={v}"),
                name,
            ])
            .output()
            .context("running docker network create")?;
        if !out.status.success() {
            bail!(
                "docker network create {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(TestNetwork {
            name: name.to_owned(),
        })
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// The timers of a test cluster: how often agents beat, when the scheduler calls a node
/// down, when an agent fences its primaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Agents' heartbeat interval (agent and scheduler `heartbeat_interval_ms`).
    pub heartbeat_interval_ms: u64,
    /// The scheduler's `node_ttl_ms`.
    pub node_ttl_ms: u64,
    /// The agents' `lease_ttl_ms`.
    pub lease_ttl_ms: u64,
    /// The agents' `fence_budget_ms`: primaries fence this long before the lease runs out.
    pub fence_budget_ms: u64,
}

impl Timings {
    /// What the tests use: heartbeats every 200 ms, node_ttl 1.5 s, lease 2.5 s of which the
    /// last 0.5 s is the fence budget, so primaries fence after 2 s without an acknowledged
    /// heartbeat (decision 145).
    pub const FAST: Timings = Timings {
        heartbeat_interval_ms: 200,
        node_ttl_ms: 1500,
        lease_ttl_ms: 2500,
        fence_budget_ms: 500,
    };
    /// The daemons' defaults: heartbeats every second, node_ttl 5 s, lease 10 s, fence budget
    /// 3 s.
    pub const PRODUCTION: Timings = Timings {
        heartbeat_interval_ms: 1000,
        node_ttl_ms: 5000,
        lease_ttl_ms: 10_000,
        fence_budget_ms: 3000,
    };
}

/// One agent process with its own state directory and a data disk.
#[derive(Debug)]
pub struct AgentProcess {
    /// Node name.
    pub node: String,
    /// Base URL of the agent's HTTP server (`/metrics`), on a free loopback port.
    pub http: String,
    /// The agent's work directory (state, disks, config, log).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl AgentProcess {
    /// Writes a config and starts the agent. `extra` is appended to the TOML.
    pub fn start(
        node: &str,
        scheduler: &str,
        network: &str,
        disk_mib: u64,
        extra: &str,
    ) -> Result<Self> {
        Self::start_timed(
            node,
            &[scheduler.to_owned()],
            network,
            disk_mib,
            extra,
            &Timings::FAST,
        )
    }

    /// Like [`AgentProcess::start`], with several schedulers (tried in turn).
    pub fn start_with_schedulers(
        node: &str,
        schedulers: &[String],
        network: &str,
        disk_mib: u64,
        extra: &str,
    ) -> Result<Self> {
        Self::start_timed(node, schedulers, network, disk_mib, extra, &Timings::FAST)
    }

    /// [`AgentProcess::start`] with the heartbeat interval and lease of `timings`. Plain
    /// gRPC (`tls.disable`) for `http://` schedulers (the fake scheduler); `https://` ones
    /// need [`AgentProcess::start_secure`].
    pub fn start_timed(
        node: &str,
        schedulers: &[String],
        network: &str,
        disk_mib: u64,
        extra: &str,
        timings: &Timings,
    ) -> Result<Self> {
        Self::start_secure(node, schedulers, None, network, disk_mib, extra, timings)
    }

    /// Starts an agent with its own certificate for `node` from `pki` (its `[tls]`
    /// section); `None`: plain gRPC. An `extra` holding its own `[tls]` section replaces
    /// the harness's (a test of TLS itself).
    pub fn start_secure(
        node: &str,
        schedulers: &[String],
        pki: Option<&crate::pki::TestPki>,
        network: &str,
        disk_mib: u64,
        extra: &str,
        timings: &Timings,
    ) -> Result<Self> {
        let scheduler = schedulers.join("\", \"");
        let dir = tempfile::Builder::new()
            .prefix("mofang-agent-")
            .tempdir_in("/var/tmp")?;
        let http_port = free_port()?;
        let tls = if extra.contains("[tls]") {
            String::new()
        } else {
            match pki {
                Some(pki) => pki.agent_toml(node, dir.path())?,
                None if schedulers.iter().any(|s| s.starts_with("https://")) => {
                    bail!("https:// schedulers need the cluster's TestPki (AgentProcess::start_secure)")
                }
                None => "[tls]\ndisable = true\n".to_owned(),
            }
        };
        let cfg = format!(
            "node = \"{node}\"\nschedulers = [\"{scheduler}\"]\nnetwork = \"{network}\"\n\
             state_dir = \"{state}\"\nrun_dir = \"{run}\"\nheartbeat_interval_ms = {hb}\nlease_ttl_ms = {lease}\n\
             fence_budget_ms = {budget}\nstop_grace_ms = 5000\nhttp_listen = \"127.0.0.1:{http_port}\"\n{extra}\n{tls}\n\
             [[disks]]\npath = \"{disk}\"\nclass = \"ssd\"\ncapacity_mib = {disk_mib}\n",
            state = dir.path().join("state").display(),
            run = dir.path().join("run").display(),
            disk = dir.path().join("disk0").display(),
            hb = timings.heartbeat_interval_ms,
            lease = timings.lease_ttl_ms,
            budget = timings.fence_budget_ms,
        );
        std::fs::write(dir.path().join("agent.toml"), cfg)?;
        let mut a = AgentProcess {
            node: node.to_owned(),
            http: format!("http://127.0.0.1:{http_port}"),
            dir,
            child: None,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> Result<()> {
        self.child = Some(spawn_daemon("mofang-agent", self.dir.path(), "agent")?);
        Ok(())
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The agent's run directory (the members' rendered config files).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The agent's key file (beside the state directory).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("state.key")
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` of the agent process (containers keep running).
    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child)
    }

    /// Starts the agent again with the same config and state.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        read_log(self.dir.path(), "agent")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.kill9();
        // Remove this node's containers: they carry its node label, not the test label.
        if let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=mofang.node={}", self.node),
            ])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.node, self.log());
        }
        keep_log(&format!("agent-{}", self.node), &self.log());
    }
}

/// A `mofang-scheduler` process with its own data directory, on free loopback ports.
#[derive(Debug)]
pub struct SchedulerProcess {
    /// Work directory (data, config, log).
    pub dir: tempfile::TempDir,
    /// REST base URL.
    pub rest: String,
    /// gRPC endpoint for agents.
    pub grpc: String,
    /// The cluster CA and certificates (`None`: this scheduler runs in plain text).
    pub pki: Option<std::sync::Arc<crate::pki::TestPki>>,
    /// An HTTP client for [`SchedulerProcess::rest`] (trusting the CA).
    pub http: reqwest::Client,
    child: Option<Child>,
}

impl SchedulerProcess {
    /// Starts a scheduler (node_ttl 1.5 s, heartbeats 200 ms) and waits for its health check.
    pub fn start(extra: &str) -> Result<Self> {
        Self::start_timed(extra, &Timings::FAST)
    }

    /// [`SchedulerProcess::start`] with the node_ttl and heartbeat interval of `timings`,
    /// with TLS on (a new CA).
    pub fn start_timed(extra: &str, timings: &Timings) -> Result<Self> {
        Self::start_with_pki(extra, timings, Some(crate::pki::TestPki::new()?))
    }

    /// A scheduler with the certificates of `pki` (several schedulers of one cluster share
    /// it); `None`, or an `extra` with `[tls]\ndisable = true`: plain text. An `extra` with
    /// its own `[tls]` section replaces the harness's.
    pub fn start_with_pki(
        extra: &str,
        timings: &Timings,
        pki: Option<std::sync::Arc<crate::pki::TestPki>>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-scheduler-")
            .tempdir_in("/var/tmp")?;
        let (rest, grpc) = (free_port()?, free_port()?);
        let plain = pki.is_none() || extra.contains("disable = true");
        let tls = match &pki {
            Some(p) if !extra.contains("[tls]") => p.scheduler_toml(),
            None if !extra.contains("[tls]") => "[tls]\ndisable = true\n".to_owned(),
            _ => String::new(),
        };
        let cfg = format!(
            "rest_listen = \"127.0.0.1:{rest}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\n\
             data_dir = \"{data}\"\nnode_ttl_ms = {ttl}\nheartbeat_interval_ms = {hb}\n{extra}\n{tls}\n",
            data = dir.path().join("data").display(),
            ttl = timings.node_ttl_ms,
            hb = timings.heartbeat_interval_ms,
        );
        std::fs::write(dir.path().join("scheduler.toml"), cfg)?;
        let scheme = if plain { "http" } else { "https" };
        let http = match (&pki, plain) {
            (Some(p), false) => p.http_client(None)?,
            _ => reqwest::Client::new(),
        };
        let mut s = SchedulerProcess {
            dir,
            rest: format!("{scheme}://127.0.0.1:{rest}"),
            grpc: format!("{scheme}://127.0.0.1:{grpc}"),
            pki: if plain { None } else { pki },
            http,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        self.child = Some(spawn_daemon(
            "mofang-scheduler",
            self.dir.path(),
            "scheduler",
        )?);
        let addr = self
            .rest
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        // With tokens in the config no admin token is generated.
        let configured = std::fs::read_to_string(self.dir.path().join("scheduler.toml"))
            .is_ok_and(|c| c.contains("[[tokens]]"));
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok()
                && (configured || self.dir.path().join("data/admin.token").exists())
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("scheduler did not come up: {}", self.log())
    }

    /// The root keyring file it created (`<data_dir>/keyring.json`): other schedulers of the
    /// same cluster are given this file.
    pub fn keyring_file(&self) -> PathBuf {
        self.dir.path().join("data/keyring.json")
    }

    /// `MOFANG_ADDR` and, with TLS, `MOFANG_CACERT` for the `mofang` CLI.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("MOFANG_ADDR".to_owned(), self.rest.clone())];
        if let Some(p) = &self.pki {
            env.push((
                "MOFANG_CACERT".to_owned(),
                p.ca_file().display().to_string(),
            ));
        }
        env
    }

    /// The generated admin token; with tokens in the config (no token generated), the
    /// secret of the first configured admin token.
    pub fn admin_token(&self) -> Result<String> {
        match std::fs::read_to_string(self.dir.path().join("data/admin.token")) {
            Ok(t) => Ok(t.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.configured_token("admin"),
            Err(e) => Err(e.into()),
        }
    }

    /// The secret of the first `[[tokens]]` entry of `role` in its config.
    pub fn configured_token(&self, role: &str) -> Result<String> {
        let cfg = std::fs::read_to_string(self.dir.path().join("scheduler.toml"))?;
        let cfg: toml::Value = toml::from_str(&cfg)?;
        cfg.get("tokens")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
            .find(|t| t.get("role").and_then(|r| r.as_str()) == Some(role))
            .and_then(|t| t.get("secret").and_then(|s| s.as_str()))
            .map(str::to_owned)
            .with_context(|| format!("no generated admin token and no configured {role} token"))
    }

    /// `kill -9`.
    pub fn kill9(&mut self) -> Result<()> {
        kill9(&mut self.child)
    }

    /// Starts again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Freezes the process (`SIGSTOP`): its sockets stay open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        crate::coord::signal(&self.child, "-STOP")
    }

    /// Thaws it (`SIGCONT`).
    pub fn resume(&self) -> Result<()> {
        crate::coord::signal(&self.child, "-CONT")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_log(self.dir.path(), "scheduler")
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        let _ = self.kill9();
        if std::thread::panicking() {
            eprintln!("---- scheduler log ----\n{}", self.log());
        }
        keep_log("scheduler", &self.log());
    }
}
