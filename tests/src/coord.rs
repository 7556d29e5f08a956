//! Real coordination servers for tests: a single-server Consul agent and a single-member
//! etcd, each on free loopback ports with its own data directory, killed on drop.
//!
//! Both keep their data on disk (Consul as a `-server -bootstrap-expect=1` agent, not
//! `-dev`), so a test can `kill -9` one and start it again on the same data.
//!
//! `start_tls` starts either with TLS only: a server certificate from a test CA, client
//! certificates required (Consul `verify_incoming`, etcd `--client-cert-auth`), no plain port.

use anyhow::{bail, Context, Result};
use mofang_common::tls::pki::CertKind;
use mofang_common::tls::KeyPairFiles;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a server a test starts, taken below the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default). A port from
/// `bind(":0")` comes from that range, and between the check and the server's own bind the
/// kernel may hand it to any client's outgoing connection on this machine: a scheduler once
/// failed to start with "cannot listen on 127.0.0.1:39597" in `tls::a_join_token_works_once`.
/// Below the range no connection is given it; each call of this process moves on to the next
/// port (tests of one binary run in parallel), starting from a place set by the process id
/// (test binaries run one after another, and a bind check skips a port in use).
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .clamp(LOW + 1_000, 65_535);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span.min(5_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 between {LOW} and {high}")
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

pub(crate) fn signal(child: &Option<Child>, sig: &str) -> Result<()> {
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
    /// HTTP API base URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub http: String,
    /// Consul node name.
    pub node: String,
    /// With TLS: the CA and the client certificate a client needs.
    pub tls: Option<ClientFiles>,
    child: Option<Child>,
}

/// What a client of a TLS-only Consul or etcd needs: the CA and a client certificate.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// A client certificate and key from that CA.
    pub own: KeyPairFiles,
}

impl ClientFiles {
    /// Issues a server certificate (names `localhost`, 127.0.0.1) and a client certificate
    /// for `name` from `pki` into `dir`; returns the server's pair and the client's files.
    fn issue(pki: &crate::pki::TestPki, name: &str, dir: &Path) -> Result<(KeyPairFiles, Self)> {
        let server = pki.issue(&CertKind::Server(name.to_owned()), dir)?;
        let own = pki.issue(&CertKind::Cli(format!("{name}-client")), dir)?;
        Ok((
            server,
            ClientFiles {
                ca: pki.ca_file(),
                own,
            },
        ))
    }

    /// The `ca_file`, `cert_file`, `key_file` lines of a scheduler's `[consul]` or `[etcd]`.
    pub fn toml(&self) -> String {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.ca.display(),
            self.own.cert.display(),
            self.own.key.display()
        )
    }

    /// An HTTP client trusting the CA and presenting the client certificate.
    pub fn http_client(&self) -> Result<reqwest::Client> {
        let cfg = mofang_common::tls::client_config(&self.ca, Some(&self.own))?;
        reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .build()
            .context("HTTP client")
    }
}

fn http_client(tls: &Option<ClientFiles>) -> Result<reqwest::Client> {
    match tls {
        Some(t) => t.http_client(),
        None => Ok(reqwest::Client::new()),
    }
}

impl ConsulProcess {
    /// Starts a server and waits until it leads its one-node cluster and its node is
    /// registered (sessions need the node's `serfHealth` check).
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Like [`ConsulProcess::start`], HTTPS only (no HTTP port), with a server certificate
    /// from `pki`, client certificates required (`verify_incoming`) and RPC over TLS
    /// (`verify_outgoing`).
    pub async fn start_tls(pki: &crate::pki::TestPki) -> Result<Self> {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&crate::pki::TestPki>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-consul-")
            .tempdir_in("/var/tmp")?;
        let node = crate::unique_name("consul");
        let http = free_port()?;
        let mut config = serde_json::json!({
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
        let tls = match pki {
            None => None,
            Some(pki) => {
                let (server, client) = ClientFiles::issue(pki, "consul", dir.path())?;
                config["ports"]["http"] = (-1).into();
                config["ports"]["https"] = http.into();
                config["ca_file"] = pki.ca_file().display().to_string().into();
                config["cert_file"] = server.cert.display().to_string().into();
                config["key_file"] = server.key.display().to_string().into();
                config["verify_incoming"] = true.into();
                config["verify_outgoing"] = true.into();
                Some(client)
            }
        };
        std::fs::write(dir.path().join("consul.json"), config.to_string())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut c = ConsulProcess {
            dir,
            http: format!("{scheme}://127.0.0.1:{http}"),
            node,
            tls,
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
        let http = http_client(&self.tls)?;
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

    /// What `consul kv export` (the operator's tool) writes for `prefix`: every key under it
    /// with its value decoded, in key order. Plain HTTP only.
    pub fn kv_export(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        use base64::Engine as _;
        let out = Command::new("consul")
            .args(["kv", "export", &format!("-http-addr={}", self.http), prefix])
            .output()
            .context("consul kv export (installed by scripts/setup?)")?;
        if !out.status.success() {
            bail!("consul kv export: {}", String::from_utf8_lossy(&out.stderr));
        }
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        let mut kvs = Vec::with_capacity(entries.len());
        for e in entries {
            let key = e["key"].as_str().unwrap_or_default().to_owned();
            let value = base64::engine::general_purpose::STANDARD
                .decode(e["value"].as_str().unwrap_or_default())
                .with_context(|| format!("the value of {key}"))?;
            kvs.push((key, value));
        }
        kvs.sort();
        Ok(kvs)
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
    /// Client URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub endpoint: String,
    /// With TLS: the CA and the client certificate a client needs.
    pub tls: Option<ClientFiles>,
    server: Option<KeyPairFiles>,
    peer: String,
    name: String,
    child: Option<Child>,
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers `/health`.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Like [`EtcdProcess::start`], clients over TLS only, with a server certificate from
    /// `pki` and client certificates required (`--client-cert-auth`).
    pub async fn start_tls(pki: &crate::pki::TestPki) -> Result<Self> {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&crate::pki::TestPki>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-etcd-")
            .tempdir_in("/var/tmp")?;
        let (server, tls) = match pki {
            Some(pki) => {
                let (server, client) = ClientFiles::issue(pki, "etcd", dir.path())?;
                (Some(server), Some(client))
            }
            None => (None, None),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut e = EtcdProcess {
            dir,
            endpoint: format!("{scheme}://127.0.0.1:{}", free_port()?),
            tls,
            server,
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
        if let (Some(server), Some(tls)) = (&self.server, &self.tls) {
            cmd.arg("--cert-file")
                .arg(&server.cert)
                .arg("--key-file")
                .arg(&server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        self.child = Some(spawn_logged(&mut cmd, self.dir.path(), "etcd.log")?);
        self.wait_ready().await
    }

    /// Waits until etcd reports itself healthy (it has a leader).
    pub async fn wait_ready(&self) -> Result<()> {
        let http = http_client(&self.tls)?;
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
