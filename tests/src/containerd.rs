//! A standalone containerd for the tests of one test binary: Debian's `containerd` binary
//! (the daemon a Docker-less host runs, not the one inside Docker Engine) with its own root,
//! state directory and socket under `/tmp/mofang-ctrd-<pid>`, started on first use and
//! shared. A watchdog shell started with it waits for the test process to end, however it
//! ends (pass, fail, panic, kill), then kills the tasks of its namespace, releases their
//! network namespaces and bridge, stops containerd and removes the directory. Docker's own
//! containerd (`/var/run/docker/containerd`, namespace `moby`) is never spoken to.

use anyhow::{bail, Context, Result};
use mofang_agent::runtime::{Cni, ContainerdOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The standalone containerd of this test process.
#[derive(Debug)]
pub struct Containerd {
    /// Its directory (root, state, socket, logs).
    pub dir: PathBuf,
    /// Its gRPC socket.
    pub socket: PathBuf,
    /// The namespace the tests use (`mofang-t<pid>`).
    pub namespace: String,
    /// The CNI bridge of this test process (`mfc<pid>`).
    pub bridge: String,
    /// The subnet of that bridge (a /24 picked from the pid).
    pub subnet: String,
}

/// Cleans up after the test process `$1` is gone: tasks killed and deleted, containers
/// removed, network namespaces and the bridge deleted, containerd stopped, mounts undone,
/// the directory removed.
const WATCHDOG: &str = r#"
tp=$1 dir=$2 ns=$3 bridge=$4 pfx=$5
echo $$ > "$dir/watchdog.pid"
while kill -0 "$tp" 2>/dev/null; do sleep 1; done
A="--address $dir/containerd.sock --namespace $ns"
if [ -S "$dir/containerd.sock" ]; then
  for c in $(ctr $A tasks ls -q 2>/dev/null); do ctr $A tasks kill -s SIGKILL "$c" >/dev/null 2>&1; done
  sleep 1
  for c in $(ctr $A containers ls -q 2>/dev/null); do
    ctr $A tasks rm -f "$c" >/dev/null 2>&1
    ctr $A containers rm "$c" >/dev/null 2>&1
  done
fi
for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$ns-"); do ip netns delete "$n"; done
# The bridge and firewall plugins' iptables rules of members never removed (no CNI DEL ran).
iptables -t nat -S POSTROUTING 2>/dev/null | grep -F -- "-s $pfx" | while read -r rule; do
  eval "iptables -t nat -D ${rule#-A }"
  chain=${rule##* }
  iptables -t nat -F "$chain" 2>/dev/null; iptables -t nat -X "$chain" 2>/dev/null
done
iptables -S CNI-FORWARD 2>/dev/null | grep -F -- " $pfx" | while read -r rule; do
  eval "iptables -D ${rule#-A }"
done
ip link delete "$bridge" >/dev/null 2>&1
if [ -f "$dir/containerd.pid" ]; then
  cp=$(cat "$dir/containerd.pid")
  kill "$cp" 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$cp" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$cp" 2>/dev/null
fi
# Shims of this containerd still alive (a task that would not die): killed with their tasks.
for p in $(pgrep -f -- "-address $dir/containerd.sock"); do pkill -9 -P "$p"; kill -9 "$p"; done
# The tasks' parent cgroups (and the tests' own parents `<ns>-docker`, `<ns>-ctrd`), once empty.
sleep 2
for d in /sys/fs/cgroup/*/"$ns" /sys/fs/cgroup/*/"$ns"-docker /sys/fs/cgroup/*/"$ns"-ctrd \
  /sys/fs/cgroup/"$ns" /sys/fs/cgroup/"$ns"-docker /sys/fs/cgroup/"$ns"-ctrd; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done
awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
rm -rf "$dir"
"#;

/// The standalone containerd, started on first call; fails loudly when it cannot start.
pub fn containerd() -> Result<&'static Containerd> {
    static STARTED: OnceLock<Result<Containerd, String>> = OnceLock::new();
    STARTED
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("standalone containerd: {e}"))
}

fn start() -> Result<Containerd> {
    if !Path::new("/usr/bin/containerd").exists() {
        bail!("/usr/bin/containerd missing: run scripts/setup (Debian's containerd package)");
    }
    remove_leftovers();
    let pid = std::process::id();
    let dir = PathBuf::from(format!("/tmp/mofang-ctrd-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("containerd.sock");
    let config = format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
         \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
         \"io.containerd.snapshotter.v1.devmapper\"]\n\
         [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n",
        d = dir.display()
    );
    std::fs::write(dir.join("config.toml"), config)?;
    let log = std::fs::File::create(dir.join("containerd.log"))?;
    let child = Command::new("/usr/bin/containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting /usr/bin/containerd")?;
    std::fs::write(dir.join("containerd.pid"), child.id().to_string())?;
    let c = Containerd {
        socket,
        namespace: format!("mofang-t{pid}"),
        bridge: format!("mfc{pid}"),
        subnet: subnet_of(pid),
        dir,
    };
    watchdog(pid, &c)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = Command::new("ctr")
            .arg("--address")
            .arg(&c.socket)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if up {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default();
            bail!(
                "containerd did not answer on {} within 30 s:\n{log}",
                c.socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(c)
}

/// The /24 of a test process's CNI bridge.
fn subnet_of(pid: u32) -> String {
    format!("10.214.{}.0/24", pid % 250)
}

/// `10.214.7.` of `10.214.7.0/24`: what the addresses of that subnet start with.
fn subnet_prefix(subnet: &str) -> String {
    subnet.trim_end_matches("0/24").to_owned()
}

fn watchdog(test_pid: u32, c: &Containerd) -> Result<()> {
    let log = std::fs::File::create(c.dir.join("watchdog.log"))?;
    Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(test_pid.to_string())
        .arg(&c.dir)
        .arg(&c.namespace)
        .arg(&c.bridge)
        .arg(subnet_prefix(&c.subnet))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the containerd watchdog")?;
    Ok(())
}

/// Directories of earlier test processes whose watchdog did not finish (a reboot, a killed
/// watchdog): cleaned up the same way, now.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("mofang-ctrd-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let watchdog = std::fs::read_to_string(e.path().join("watchdog.pid")).unwrap_or_default();
        let watching = !watchdog.trim().is_empty()
            && Path::new(&format!("/proc/{}", watchdog.trim())).exists();
        if watching || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!(
            "removing leftover standalone containerd {}",
            e.path().display()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(pid.to_string())
            .arg(e.path())
            .arg(format!("mofang-t{pid}"))
            .arg(format!("mfc{pid}"))
            .arg(subnet_prefix(&subnet_of(pid)))
            .status();
    }
}

impl Containerd {
    /// Imports images (as the agent names them) from Docker into this containerd's namespace
    /// with packaging/images/containerd-import; present ones are skipped.
    pub fn import_images(&self, images: &[&str]) -> Result<()> {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/images/containerd-import");
        let out = Command::new(&script)
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(images)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "containerd-import {images:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(())
    }

    /// Runtime options for a runtime in this containerd, its files under `state_dir`, members
    /// on the CNI network `network`.
    pub fn options(&self, state_dir: &Path, network: &str) -> ContainerdOptions {
        ContainerdOptions {
            socket: self.socket.clone(),
            namespace: self.namespace.clone(),
            snapshotter: "overlayfs".into(),
            state_dir: state_dir.to_owned(),
            cni: Cni {
                plugin_dir: "/usr/lib/cni".into(),
                network: network.to_owned(),
                bridge: self.bridge.clone(),
                subnet: self.subnet.clone(),
                data_dir: self.dir.join("agent/cni"),
            },
            cgroup_parent: None,
        }
    }

    /// The `[containerd]` table of an agent.toml using this containerd: every agent of the
    /// test process shares one runtime directory, so their CNI allocations are one host's.
    pub fn agent_toml(&self) -> String {
        let state_dir = self.dir.join("agent");
        format!(
            "[containerd]\nsocket = \"{}\"\nnamespace = \"{}\"\nstate_dir = \"{}\"\nbridge = \"{}\"\nsubnet = \"{}\"\n",
            self.socket.display(),
            self.namespace,
            state_dir.display(),
            self.bridge,
            self.subnet
        )
    }
}
