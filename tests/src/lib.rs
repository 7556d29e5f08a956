//! Test harness for end-to-end scenarios on real Docker: connect (failing loudly without it),
//! label what a test creates, remove a crashed run's leftovers, wait for real servers.

use anyhow::{bail, Context, Result};
use mofang_agent::runtime::{ContainerRuntime, DockerRuntime};
use mofang_common::labels;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

pub mod cluster;
pub mod fake_scheduler;

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

/// Removes containers labelled `mofang.test` whose test process is gone.
async fn remove_leftovers(rt: &DockerRuntime) -> Result<()> {
    for c in rt.list(&[(labels::TEST, "")]).await? {
        let owner_alive = c
            .labels
            .get(labels::TEST)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !owner_alive {
            eprintln!("removing leftover test container {} ({})", c.name, c.id);
            rt.remove(&c.id, true)
                .await
                .with_context(|| format!("removing {}", c.name))?;
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
