//! Fault injection for end-to-end tests: a TCP link that can be cut (packets silently dropped,
//! as in a partition, not refused), and host partitions made with iptables inside a member
//! container's own network namespace.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay on a loopback port. While cut, bytes are read and dropped in both directions
/// and new connections are held open without an answer: what a partitioned peer sees.
pub struct Link {
    /// `http(s)://127.0.0.1:<port>` (the upstream's scheme): give this to the client instead of
    /// the real endpoint.
    pub endpoint: String,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts relaying to `upstream` (`http://host:port` or `host:port`).
    pub async fn start(upstream: &str) -> Result<Link> {
        // TLS passes through untouched: the agent checks the scheduler's name
        // (`server.mofang`), not the address it dials.
        let (scheme, addr) = upstream.split_once("://").unwrap_or(("http", upstream));
        let target: SocketAddr = addr.parse().context("upstream address")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("{scheme}://{}", listener.local_addr()?);
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = relay(client, target, c).await;
                });
            }
        });
        Ok(Link {
            endpoint,
            cut,
            task,
        })
    }

    /// Drops everything from now on (existing connections included).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Relays again; connections that were cut stay dead (as after a real partition the
    /// peers find out by timeouts), new ones work.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, cut: Arc<AtomicBool>) -> Result<()> {
    if cut.load(Ordering::SeqCst) {
        // Hold the connection without a byte back until healed... and even then, dead.
        let _keep = client;
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        return Ok(());
    }
    let upstream = TcpStream::connect(target).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let dead = Arc::new(AtomicBool::new(false));
    let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                cut: Arc<AtomicBool>,
                dead: Arc<AtomicBool>| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) {
                // Once cut, this connection never carries a byte again.
                dead.store(true, Ordering::SeqCst);
            }
            if dead.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // A partition does not close connections: keep the far side open while cut.
        while dead.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let _ = to.shutdown().await;
    };
    let a = tokio::spawn(pump(cr, uw, cut.clone(), dead.clone()));
    let b = tokio::spawn(pump(ur, cw, cut.clone(), dead.clone()));
    let _ = tokio::join!(a, b);
    Ok(())
}

/// The PID of a container's main process.
pub fn container_pid(container: &str) -> Result<u32> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", container])
        .output()?;
    if !out.status.success() {
        bail!(
            "docker inspect {container}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Runs iptables inside a container's network namespace.
fn ns_iptables(pid: u32, args: &[&str]) -> Result<()> {
    let pid = pid.to_string();
    let mut full = vec!["-t", pid.as_str(), "-n", "iptables", "-w"];
    full.extend_from_slice(args);
    let out = Command::new("nsenter").args(&full).output()?;
    if !out.status.success() {
        bail!(
            "nsenter iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Cuts a container off from `peers` (IP addresses) in both directions, with iptables rules
/// in the container's own network namespace: the host (its agent) still reaches it, the
/// other hosts' members do not. Packets are dropped, not refused.
pub fn isolate(container: &str, peers: &[String]) -> Result<()> {
    let pid = container_pid(container)?;
    for p in peers {
        ns_iptables(pid, &["-I", "INPUT", "-s", p, "-j", "DROP"])?;
        ns_iptables(pid, &["-I", "OUTPUT", "-d", p, "-j", "DROP"])?;
    }
    Ok(())
}

/// Removes every rule [`isolate`] added.
pub fn rejoin(container: &str) -> Result<()> {
    let pid = container_pid(container)?;
    ns_iptables(pid, &["-F", "INPUT"])?;
    ns_iptables(pid, &["-F", "OUTPUT"])?;
    Ok(())
}

/// A loopback TCP port refused (RST) by a host iptables rule while this lives: a daemon's
/// listener unreachable although it runs. The rule is removed when dropped.
pub struct PortRefused {
    port: String,
}

impl PortRefused {
    fn rule(port: &str) -> [&str; 15] {
        [
            "INPUT",
            "-i",
            "lo",
            "-p",
            "tcp",
            "--dport",
            port,
            "-m",
            "comment",
            "--comment",
            "mofang-test",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
    }

    fn iptables(op: &str, port: &str) -> Result<()> {
        let mut args = vec!["-w", op];
        args.extend(Self::rule(port));
        let out = Command::new("iptables").args(&args).output()?;
        if !out.status.success() {
            bail!(
                "iptables {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Refuses connections to `127.0.0.1:port` from now on.
    pub fn start(port: u16) -> Result<PortRefused> {
        let port = port.to_string();
        Self::iptables("-I", &port)?;
        Ok(PortRefused { port })
    }
}

impl Drop for PortRefused {
    fn drop(&mut self) {
        let _ = Self::iptables("-D", &self.port);
    }
}
