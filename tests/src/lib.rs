//! Test harness for end-to-end scenarios on real Docker: connect (failing loudly without it),
//! label what a test creates, remove a crashed run's leftovers, wait for real servers.

use anyhow::{bail, Context, Result};
use mofang_agent::runtime::{ContainerRuntime, DockerRuntime};
use mofang_common::labels;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub mod agent_scenarios;
pub mod cluster;
pub mod containerd;
pub mod coord;
pub mod fake_scheduler;
pub mod faults;
pub mod pki;
pub mod promtool;
pub mod runtime_scenarios;
pub mod s3;
pub mod scenario;

static CLEANED: OnceCell<()> = OnceCell::const_new();

/// Connects to Docker, or fails the test with a message saying what is missing.
/// Also removes, once per test process, containers left by earlier test runs that crashed.
pub async fn docker() -> DockerRuntime {
    let rt = match DockerRuntime::connect().await {
        Ok(rt) => rt,
        Err(e) => panic!("these tests need a running Docker Engine ({e}); run scripts/setup"),
    };
    CLEANED
        .get_or_init(|| async {
            if let Err(e) = remove_leftovers(&rt).await {
                panic!("could not clean up leftovers of earlier test runs: {e:#}");
            }
        })
        .await;
    rt
}

/// Labels for a container created by this test process: `mofang.test=<pid>`.
pub fn test_label() -> (String, String) {
    (labels::TEST.to_owned(), std::process::id().to_string())
}

fn pid_alive(pid: Option<u32>) -> bool {
    pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// The test process id inside a name made by `unique_name` (`t-<prefix>-<pid>-<n>`).
fn pid_in_name(name: &str) -> Option<u32> {
    let mut parts = name.rsplit('-');
    parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    name.starts_with("t-").then_some(pid)
}

/// Removes one leftover container, or waits until someone else's removal of it ends: an
/// earlier test process killed while its agent removed a container leaves that removal
/// running in Docker (`409 ... already in progress`), and a container can go between the
/// listing and the removal (`NotFound`). Either way what matters is that it is gone.
async fn remove_leftover(rt: &DockerRuntime, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rt.remove(id, true).await {
            Ok(()) | Err(mofang_agent::runtime::Error::NotFound(_)) => return Ok(()),
            Err(e) if e.to_string().contains("already in progress") => {
                if Instant::now() > deadline {
                    return Err(e).context("its removal did not end in 60 s");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes what earlier test processes left behind when they crashed: containers labelled
/// `mofang.test` or owned by a test node (`mofang.node=t-...`), and test networks.
async fn remove_leftovers(rt: &DockerRuntime) -> Result<()> {
    for c in rt.list(&[(labels::TEST, "")]).await? {
        if !pid_alive(c.labels.get(labels::TEST).and_then(|p| p.parse().ok())) {
            eprintln!("removing leftover test container {} ({})", c.name, c.id);
            remove_leftover(rt, &c.id)
                .await
                .with_context(|| format!("removing {}", c.name))?;
        }
    }
    for c in rt.list(&[(labels::NODE, "")]).await? {
        let node = c.labels.get(labels::NODE).map(String::as_str).unwrap_or("");
        if node.starts_with("t-") && !pid_alive(pid_in_name(node)) {
            eprintln!(
                "removing leftover test-node container {} ({})",
                c.name, c.id
            );
            remove_leftover(rt, &c.id)
                .await
                .with_context(|| format!("removing {}", c.name))?;
        }
    }
    // Network-namespace holders (the Docker runtime's own containers, hidden from `list`)
    // whose test process or test node is gone.
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={}", labels::NETNS_OF),
            "--format",
            &format!(
                "{{{{.Names}}}} {{{{.Label \"{}\"}}}} {{{{.Label \"{}\"}}}}",
                labels::TEST,
                labels::NODE
            ),
        ])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split(' ');
        let (name, pid, node) = (f.next(), f.next(), f.next().unwrap_or(""));
        let by_test = pid.is_some_and(|p| !p.is_empty() && !pid_alive(p.parse().ok()));
        let by_node = node.starts_with("t-") && !pid_alive(pid_in_name(node));
        if let (Some(name), true) = (name, by_test || by_node) {
            eprintln!("removing leftover network holder {name}");
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", name])
                .output();
        }
    }
    let format = format!("{{{{.Name}}}} {{{{.Label \"{}\"}}}}", labels::TEST);
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("label={}", labels::TEST),
            "--format",
            &format,
        ])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((name, pid)) = line.split_once(' ') {
            if !pid_alive(pid.parse().ok()) {
                let _ = std::process::Command::new("docker")
                    .args(["network", "rm", name])
                    .output();
            }
        }
    }
    Ok(())
}

/// Retries `f` until it succeeds or `timeout` passes; returns the last error on time-out.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= timeout => {
                bail!("{what}: still failing after {:?}: {e:#}", timeout)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A unique, DNS-safe name for a test object: `t-<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts tracing for a test binary once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mofang=debug".into()),
        )
        .with_test_writer()
        .try_init();
}
