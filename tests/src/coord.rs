//! Real coordination servers for tests: a single-server Consul agent and a single-member
//! etcd, each on free loopback ports with its own data directory, killed on drop.
//!
//! Both keep their data on disk (Consul as a `-server -bootstrap-expect=1` agent, not
//! `-dev`), so a test can `kill -9` one and start it again on the same data.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; another process may take it later).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn_logged(cmd: &mut Command, dir: &Path, log: &str) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(log))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .with_context(|| {
            format!(
                "starting {:?} (installed by scripts/setup?)",
                cmd.get_program()
            )
        })
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn signal(child: &Option<Child>, sig: &str) -> Result<()> {
    let Some(c) = child else { bail!("not running") };
    let status = Command::new("kill")
        .args([sig, &c.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {sig} {} failed", c.id());
    }
    Ok(())
}

/// A single-server Consul agent (server, bootstrap-expect 1, data on disk).
#[derive(Debug)]
pub struct ConsulProcess {
    /// Work directory: config, data, log.
    pub dir: tempfile::TempDir,
    /// HTTP API base URL, `http://127.0.0.1:<port>`.
    pub http: String,
    /// Consul node name.
    pub node: String,
    child: Option<Child>,
}

impl ConsulProcess {
    /// Starts a server and waits until it leads its one-node cluster and its node is
    /// registered (sessions need the node's `serfHealth` check).
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-consul-")
            .tempdir_in("/var/tmp")?;
        let node = crate::unique_name("consul");
        let http = free_port()?;
        let config = serde_json::json!({
            "node_name": node,
            "datacenter": "dc1",
            "server": true,
            "bootstrap_expect": 1,
            "data_dir": dir.path().join("data"),
            "bind_addr": "127.0.0.1",
            "advertise_addr": "127.0.0.1",
            "client_addr": "127.0.0.1",
            "ports": {
                "http": http,
                "dns": -1,
                "grpc": -1,
                "serf_lan": free_port()?,
                "serf_wan": free_port()?,
                "server": free_port()?,
            },
            "performance": { "raft_multiplier": 1 },
            "disable_update_check": true,
            "disable_remote_exec": true,
            "log_level": "INFO",
        });
        std::fs::write(dir.path().join("consul.json"), config.to_string())?;
        let mut c = ConsulProcess {
            dir,
            http: format!("http://127.0.0.1:{http}"),
            node,
            child: None,
        };
        c.spawn().await?;
        Ok(c)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new("consul");
        cmd.arg("agent")
            .arg(format!(
                "-config-file={}",
                self.dir.path().join("consul.json").display()
            ))
            .env("CHECKPOINT_DISABLE", "1");
        self.child = Some(spawn_logged(&mut cmd, self.dir.path(), "consul.log")?);
        self.wait_ready().await
    }

    /// Waits until the server has a leader and its node's `serfHealth` passes.
    pub async fn wait_ready(&self) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = http
                .get(format!("{}/v1/status/leader", self.http))
                .send()
                .await
                .ok();
            let leader = match leader {
                Some(r) => r.text().await.unwrap_or_default(),
                None => String::new(),
            };
            if leader.len() > 2 {
                let checks = http
                    .get(format!("{}/v1/health/node/{}", self.http, self.node))
                    .send()
                    .await
                    .ok();
                if let Some(r) = checks {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let serf_ok = body.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "passing")
                    });
                    if serf_ok {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("consul did not become ready in 60s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// `kill -9`, then starts again on the same ports and data, and waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    /// Freezes the process (`SIGSTOP`): it holds its sockets but answers nothing.
    pub fn pause(&self) -> Result<()> {
        signal(&self.child, "-STOP")
    }

    /// Thaws a paused process (`SIGCONT`).
    pub fn resume(&self) -> Result<()> {
        signal(&self.child, "-CONT")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("consul.log")).unwrap_or_default()
    }
}

impl Drop for ConsulProcess {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- consul log (last lines) ----\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A single-member etcd cluster with its data on disk.
#[derive(Debug)]
pub struct EtcdProcess {
    /// Work directory: data, log.
    pub dir: tempfile::TempDir,
    /// Client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    peer: String,
    name: String,
    child: Option<Child>,
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers `/health`.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-etcd-")
            .tempdir_in("/var/tmp")?;
        let mut e = EtcdProcess {
            dir,
            endpoint: format!("http://127.0.0.1:{}", free_port()?),
            peer: format!("http://127.0.0.1:{}", free_port()?),
            name: crate::unique_name("etcd"),
            child: None,
        };
        e.spawn().await?;
        Ok(e)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&self.endpoint)
            .arg("--advertise-client-urls")
            .arg(&self.endpoint)
            .arg("--listen-peer-urls")
            .arg(&self.peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer)
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, self.peer))
            .arg("--initial-cluster-state")
            .arg("new");
        self.child = Some(spawn_logged(&mut cmd, self.dir.path(), "etcd.log")?);
        self.wait_ready().await
    }

    /// Waits until etcd reports itself healthy (it has a leader).
    pub async fn wait_ready(&self) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.endpoint)).send().await {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                if body["health"] == "true" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("etcd did not become healthy in 60s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// `kill -9`, then starts again on the same ports and data, and waits until healthy.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    /// Freezes the process (`SIGSTOP`).
    pub fn pause(&self) -> Result<()> {
        signal(&self.child, "-STOP")
    }

    /// Thaws a paused process (`SIGCONT`).
    pub fn resume(&self) -> Result<()> {
        signal(&self.child, "-CONT")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "---- etcd log (last lines) ----\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
