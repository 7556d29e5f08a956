//! The packages on a clean Debian 12 host: `dpkg -i` the .deb files `make packages` built into
//! a fresh `mofang/debian-systemd:12` container with systemd as PID 1, run the hardened units
//! for real (the agent reaching Docker through its socket, the scheduler serving), upgrade to a
//! newer build, remove; and the .rpm files carry the same layout and scriptlets.
//!
//! The container gets CAP_SYS_ADMIN (not --privileged) so systemd can build the units' mount
//! namespaces: without it ProtectSystem= and friends are silently skipped and the sandbox
//! would be untested.

use anyhow::{bail, ensure, Context, Result};
use mofang_tests::{docker, eventually, test_label, unique_name};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const IMAGE: &str = "mofang/debian-systemd:12";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// capability(7) numbers of what the agent's unit grants.
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
/// How the scheduler is reached inside the container: default REST address, generated token.
/// TLS is on with the CA the scheduler made on its first start (no `[tls]` files shipped).
const CLI_ENV: &str = "MOFANG_ADDR=https://127.0.0.1:8080 \
     MOFANG_CACERT=/var/lib/mofang/scheduler/tls/ca.pem \
     MOFANG_TOKEN=$(cat /var/lib/mofang/scheduler/admin.token)";

/// The cargo target directory this test was built in (`CARGO_TARGET_TMPDIR` is `<target>/tmp`).
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_owned()
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// The one package `<name>_*.deb` / `<name>-*.rpm` in `dir`.
fn package(dir: &Path, name: &str, ext: &str) -> Result<PathBuf> {
    let sep = if ext == "deb" { '_' } else { '-' };
    let prefix = format!("{name}{sep}");
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: run `make packages` first", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix)
                    && n.ends_with(&format!(".{ext}"))
                    && n[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
        .collect();
    match &found[..] {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no {name} .{ext} in {}: run `make packages` (scripts/packages)",
            dir.display()
        ),
        many => bail!("several {name} .{ext} in {}: {many:?}", dir.display()),
    }
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

/// Runs a host command, fails with its stderr unless it exits 0, returns its stdout.
fn host(program: &str, args: &[&str]) -> Result<String> {
    let out = run(Command::new(program).args(args))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A clean Debian 12 host: a container of `mofang/debian-systemd:12` booted with systemd as
/// PID 1. Removed on drop.
struct Host {
    id: String,
}

impl Host {
    fn boot(mounts: &[(&Path, &str)]) -> Result<Host> {
        let (k, v) = test_label();
        let name = unique_name("pkg-host");
        let label = format!("{k}={v}");
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            "pkg-host",
            "--label",
            &label,
            "--cap-add",
            "SYS_ADMIN",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            // Docker "installed" on this host: the agent manages containers through its socket.
            "-v",
            "/var/run/docker.sock:/run/docker.sock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (src, dst) in mounts {
            args.push("-v".into());
            args.push(format!("{}:{dst}:ro", src.display()));
        }
        args.push(IMAGE.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = host("docker", &args)?.trim().to_owned();
        let h = Host { id };
        // systemd answers once it is up; `--wait` then returns when boot is done: running, or
        // degraded with the failed units.
        let mut state = String::new();
        for _ in 0..120 {
            state = h.sh("systemctl is-system-running --wait 2>/dev/null || true")?;
            if !state.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        ensure!(
            state.trim() == "running",
            "systemd in the test host is {state:?}; failed units:\n{}",
            h.sh("systemctl --failed --no-pager || true")?
        );
        Ok(h)
    }

    /// Runs `sh -c script` in the host; the output, whatever the exit code.
    fn exec(&self, script: &str) -> Result<Output> {
        run(Command::new("docker").args(["exec", &self.id, "sh", "-c", script]))
    }

    /// Runs `sh -c script`, fails with its output unless it exits 0, returns its stdout.
    fn sh(&self, script: &str) -> Result<String> {
        let out = self.exec(script)?;
        ensure!(
            out.status.success(),
            "`{script}` in the test host: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `systemctl show -p <prop> --value <unit>`.
    fn unit_prop(&self, unit: &str, prop: &str) -> Result<String> {
        Ok(self
            .sh(&format!("systemctl show -p {prop} --value {unit}"))?
            .trim()
            .to_owned())
    }

    /// The node as the scheduler shows it, through the installed CLI.
    fn node(&self, node: &str) -> Result<Value> {
        let out = self.sh(&format!("{CLI_ENV} mofang node show {node} --json"))?;
        serde_json::from_str(&out).with_context(|| format!("mofang node show: {out}"))
    }

    fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl -u {unit} --no-pager | tail -30"))
            .unwrap_or_else(|e| format!("(no journal: {e:#})"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = run(Command::new("docker").args(["rm", "-f", "-v", &self.id]));
    }
}

/// A running unit's main PID and invocation id: both change when the unit restarts.
fn invocation(h: &Host, unit: &str) -> Result<(String, String)> {
    let state = h.unit_prop(unit, "ActiveState")?;
    ensure!(state == "active", "{unit} is {state}:\n{}", h.journal(unit));
    Ok((
        h.unit_prop(unit, "MainPID")?,
        h.unit_prop(unit, "InvocationID")?,
    ))
}

/// The unit's main process: runs as `mofang`, no new privileges, exactly the capability bit
/// set `caps` (capability(7) numbers), and sees `/`
/// read-only with /var/lib/mofang writable (ProtectSystem=strict + ReadWritePaths).
fn assert_sandboxed(h: &Host, unit: &str, caps: u64) -> Result<()> {
    let pid = h.unit_prop(unit, "MainPID")?;
    let status = h.sh(&format!("cat /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let mofang_uid = h.sh("id -u mofang")?.trim().to_owned();
    ensure!(
        field("Uid").split_whitespace().all(|u| u == mofang_uid),
        "{unit} runs as uid {:?}, not mofang ({mofang_uid})",
        field("Uid")
    );
    ensure!(field("NoNewPrivs") == "1", "{unit}: NoNewPrivs not set");
    let eff = u64::from_str_radix(&field("CapEff"), 16)
        .with_context(|| format!("{unit}: CapEff {:?}", field("CapEff")))?;
    ensure!(
        eff == caps,
        "{unit}: effective capabilities {eff:#x}, expected {caps:#x}"
    );
    let mounts = h.sh(&format!("cat /proc/{pid}/mountinfo"))?;
    let opts = |point: &str| {
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .rfind(|f| f.get(4) == Some(&point))
            .and_then(|f| f.get(5).map(|o| o.to_string()))
            .unwrap_or_default()
    };
    ensure!(
        opts("/").starts_with("ro"),
        "{unit}: / is not read-only ({:?})",
        opts("/")
    );
    ensure!(
        opts("/var/lib/mofang").starts_with("rw"),
        "{unit}: /var/lib/mofang is not writable ({:?})",
        opts("/var/lib/mofang")
    );
    Ok(())
}

/// `rm` of a user's edit would show here: the marker line must still be in the file.
fn assert_edited(h: &Host, file: &str, marker: &str) -> Result<()> {
    let text = h.sh(&format!("cat {file}"))?;
    ensure!(
        text.contains(marker),
        "{file} lost the operator's edit ({marker}):\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn deb_packages_install_run_upgrade_and_remove_on_a_clean_debian_host() -> Result<()> {
    let _ = docker().await; // fails loudly without Docker; removes crashed runs' leftovers
    ensure!(
        !host("docker", &["images", "-q", IMAGE])?.trim().is_empty(),
        "image {IMAGE} missing: run scripts/setup (packaging/install-test/build)"
    );
    let packages = target_dir().join("packages");
    let agent_deb = package(&packages, "mofang-agent", "deb")?;
    let scheduler_deb = package(&packages, "mofang-scheduler", "deb")?;

    // The newer build: the same release binaries packaged again with a higher version, as a
    // point release would be (cargo-deb --deb-version through scripts/packages).
    let newer_version = format!("{VERSION}+upgradetest");
    let newer = tempfile::Builder::new()
        .prefix("pkg-upgrade-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let out = run(Command::new(workspace_root().join("scripts/packages"))
        .args(["--no-build", "--format", "deb", "--fast"])
        .args(["--version", &newer_version])
        .env("CARGO_TARGET_DIR", target_dir())
        .env("OUT", newer.path()))?;
    ensure!(
        out.status.success(),
        "scripts/packages --no-build --version {newer_version}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    package(newer.path(), "mofang-agent", "deb")?;
    package(newer.path(), "mofang-scheduler", "deb")?;

    let h = Host::boot(&[(&packages, "/pkgs"), (newer.path(), "/pkgs-newer")])?;
    // As on a host where Docker is installed: group docker owns the socket.
    let sock_gid = std::fs::metadata("/var/run/docker.sock")
        .context("the host's Docker socket")?
        .gid();
    h.sh(&format!("groupadd --system --gid {sock_gid} docker"))?;

    // --- install ---------------------------------------------------------------------------
    let deb = |p: &Path| {
        format!(
            "/pkgs/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        )
    };
    h.sh(&format!(
        "dpkg -i {} {} </dev/null",
        deb(&agent_deb),
        deb(&scheduler_deb)
    ))?;
    for bin in ["mofang-agent", "mofang-scheduler", "mofang"] {
        let v = h.sh(&format!("/usr/bin/{bin} --version"))?;
        ensure!(
            v.trim() == format!("{bin} {VERSION}"),
            "{bin} --version printed {v:?}"
        );
    }
    let passwd = h.sh("getent passwd mofang")?;
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    ensure!(
        fields.len() == 7 && fields[5] == "/var/lib/mofang" && fields[6] == "/usr/sbin/nologin",
        "mofang user: {passwd:?}"
    );
    let uid: u32 = fields[2].parse()?;
    ensure!(uid < 1000, "mofang is not a system user (uid {uid})");
    ensure!(
        h.sh("id -nG mofang")?
            .split_whitespace()
            .any(|g| g == "docker"),
        "mofang is not in group docker: {}",
        h.sh("id -nG mofang")?
    );
    let conffiles = h.sh(
        "dpkg-query -W -f='${Conffiles}\\n' mofang-agent mofang-scheduler | awk 'NF {print $1}'",
    )?;
    let conffiles: BTreeSet<&str> = conffiles.lines().collect();
    ensure!(
        conffiles == BTreeSet::from(["/etc/mofang/agent.toml", "/etc/mofang/scheduler.toml"]),
        "conffiles: {conffiles:?}"
    );
    for conf in ["scheduler.toml", "agent.toml"] {
        ensure!(
            h.sh(&format!("stat -c '%U:%G %a' /etc/mofang/{conf}"))?
                .trim()
                == "root:mofang 640",
            "{conf} must be root:mofang 0640 (it may hold token secrets, a join token)"
        );
    }
    for (dir, mode) in [
        ("/var/lib/mofang", "750"),
        ("/var/lib/mofang/agent", "700"),
        ("/var/lib/mofang/volumes", "750"),
        ("/var/lib/mofang/scheduler", "700"),
    ] {
        let got = h.sh(&format!("stat -c '%U:%G %a' {dir}"))?;
        ensure!(
            got.trim() == format!("mofang:mofang {mode}"),
            "{dir}: {got:?}"
        );
    }
    let verify = h.exec(
        "systemd-analyze verify /usr/lib/systemd/system/mofang-agent.service \
         /usr/lib/systemd/system/mofang-scheduler.service",
    )?;
    ensure!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
    // The drop-in for an agent on containerd (docs/agent.md) verifies, and gives what it
    // says: root, no mount namespace of its own (the members' network namespaces are bind
    // mounts runc must see), namespaces and netlink allowed, six capabilities at most.
    h.sh(
        "install -D -m 0644 /usr/share/mofang-agent/containerd.conf \
             /etc/systemd/system/mofang-agent.service.d/containerd.conf && \
         systemctl daemon-reload",
    )?;
    let verify = h.exec("systemd-analyze verify /usr/lib/systemd/system/mofang-agent.service")?;
    ensure!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify with the containerd drop-in: {}\n{}",
        verify.status,
        String::from_utf8_lossy(&verify.stderr)
    );
    for (prop, want) in [
        ("User", "root"),
        ("ProtectSystem", "no"),
        ("ProtectHome", "no"),
        ("PrivateTmp", "no"),
        ("ProtectKernelTunables", "no"),
        ("ProtectControlGroups", "no"),
        ("ReadWritePaths", ""),
        ("NoNewPrivileges", "yes"),
        (
            "CapabilityBoundingSet",
            "cap_chown cap_dac_override cap_fowner cap_net_admin cap_net_raw cap_sys_admin",
        ),
    ] {
        let got = h.unit_prop("mofang-agent", prop)?;
        ensure!(
            got == want,
            "containerd drop-in: {prop}={got:?}, want {want:?}"
        );
    }
    let families = h.unit_prop("mofang-agent", "RestrictAddressFamilies")?;
    ensure!(
        families.split_whitespace().any(|f| f == "AF_NETLINK"),
        "containerd drop-in: RestrictAddressFamilies={families:?}"
    );
    h.sh("rm -r /etc/systemd/system/mofang-agent.service.d && systemctl daemon-reload")?;
    ensure!(h.unit_prop("mofang-agent", "User")? == "mofang");
    // The scheduler works with the shipped config, so it is enabled and started; the agent
    // waits for its node name.
    ensure!(h.unit_prop("mofang-scheduler", "UnitFileState")? == "enabled");
    invocation(&h, "mofang-scheduler.service")?;
    ensure!(h.unit_prop("mofang-agent", "UnitFileState")? == "disabled");
    ensure!(h.unit_prop("mofang-agent", "ActiveState")? == "inactive");
    // The shipped agent.toml is refused (exit 64) until it names the node.
    let check = h.exec("mofang-agent --config /etc/mofang/agent.toml --check")?;
    ensure!(
        check.status.code() == Some(64),
        "unedited agent.toml: --check exited {}",
        check.status
    );
    // ... and the unit does not retry it: a bad config fails once (RestartPreventExitStatus=64)
    // instead of restarting every RestartSec=2s.
    h.exec("systemctl start mofang-agent")?;
    std::thread::sleep(Duration::from_secs(3));
    let (state, restarts, status) = (
        h.unit_prop("mofang-agent", "ActiveState")?,
        h.unit_prop("mofang-agent", "NRestarts")?,
        h.unit_prop("mofang-agent", "ExecMainStatus")?,
    );
    ensure!(
        state == "failed" && restarts == "0" && status == "64",
        "after a bad config the agent unit is {state}, exit {status}, {restarts} restarts"
    );
    h.sh("systemctl reset-failed mofang-agent")?;
    assert_sandboxed(&h, "mofang-scheduler.service", 0)?;
    // Decision 175: the scheduler turns transparent huge pages off for itself, and the
    // unit's system call filter lets it.
    let pid = h.unit_prop("mofang-scheduler.service", "MainPID")?;
    let thp = h.sh(&format!("grep THP_enabled /proc/{pid}/status"))?;
    ensure!(
        thp.split_whitespace().nth(1) == Some("0"),
        "the packaged scheduler keeps transparent huge pages: {thp:?}"
    );

    // --- the operator configures both and starts the agent ----------------------------------
    let node = unique_name("pkg");
    // As docs/install.md says: the scheduler's CA and a one-time join token on the agent.
    h.sh(&format!(
        "install -m 0644 /var/lib/mofang/scheduler/tls/ca.pem /etc/mofang/ca.pem && \
         token=$({CLI_ENV} mofang node join-token create --ttl 10m) && \
         sed -i -e 's/^node = .*/node = \"{node}\"/' \
                -e \"s/^# join_token = .*/join_token = \\\"$token\\\"/\" /etc/mofang/agent.toml && \
         echo '# edited by the install test' >> /etc/mofang/scheduler.toml && \
         systemctl restart mofang-scheduler && systemctl enable --now mofang-agent"
    ))?;
    let registered = eventually(
        "the packaged agent registers",
        Duration::from_secs(60),
        || {
            let h = &h;
            let node = &node;
            async move {
                let n = h.node(node)?;
                ensure!(n["state"] == "ready", "node {node}: {n}");
                Ok(n)
            }
        },
    )
    .await
    .with_context(|| h.journal("mofang-agent"))?;
    ensure!(
        registered["disks"][0]["path"] == "/var/lib/mofang/volumes",
        "disks: {}",
        registered["disks"]
    );
    assert_sandboxed(
        &h,
        "mofang-agent.service",
        (1 << CAP_CHOWN) | (1 << CAP_DAC_OVERRIDE) | (1 << CAP_FOWNER),
    )?;
    // Every key file the sandboxed daemons made is the service user's alone (docs/security.md,
    // "Least exposure"): another user reads none of them.
    // The probe itself works: another user reads a world-readable file.
    h.sh("setpriv --reuid=nobody --regid=nogroup --clear-groups cat /etc/hostname >/dev/null")?;
    for key in [
        "/var/lib/mofang/scheduler/keyring.json",
        "/var/lib/mofang/scheduler/tls/ca-key.pem",
        "/var/lib/mofang/scheduler/tls/server-key.pem",
        "/var/lib/mofang/agent.key",
        "/var/lib/mofang/agent/tls/agent-key.pem",
    ] {
        let got = h.sh(&format!("stat -c '%U:%G %a' {key}"))?;
        ensure!(got.trim() == "mofang:mofang 600", "{key}: {got:?}");
        ensure!(
            !h.exec(&format!(
                "setpriv --reuid=nobody --regid=nogroup --clear-groups cat {key}"
            ))?
            .status
            .success(),
            "{key} is readable by another user"
        );
    }
    let run = h.sh("stat -c '%U:%G %a' /run/mofang-agent")?;
    ensure!(
        run.trim() == "mofang:mofang 700",
        "/run/mofang-agent: {run:?}"
    );
    // The sandboxed agent owns its data disk: for a member placed here it reserves a volume
    // and writes the config, both owned by the database's uid 999, and deletes them again
    // (CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE; without them this fails with "volume I/O").
    // The container itself cannot start here: the volume lies inside this test host while
    // Docker is the machine's, so `docker create` refuses the bind mount; that step is outside
    // what the unit governs and is covered by the end-to-end tests.
    let instance = unique_name("pkgdb");
    let member = format!("{instance}-0");
    h.sh(&format!(
        "{CLI_ENV} mofang instance create {instance} --engine redis --replicas 0 \
         --cpu 0.1 --memory 128 --disk 64"
    ))?;
    let volume = format!("/var/lib/mofang/volumes/{member}");
    // The file the server reads is in the unit's RuntimeDirectory (RAM); the state directory
    // keeps only its sealed copy (docs/secrets.md).
    let config = format!("/run/mofang-agent/{member}/redis.conf");
    let sealed = format!("/var/lib/mofang/agent/members/{member}/config.sealed");
    eventually(
        "the agent makes the member's volume and config",
        Duration::from_secs(30),
        || {
            let (h, volume, config, sealed) = (&h, &volume, &config, &sealed);
            async move {
                let got = h.sh(&format!("stat -c '%u:%g %a' {volume} {config}"))?;
                ensure!(
                    got == "999:999 750\n999:999 600\n",
                    "{volume}, {config}: {got:?}"
                );
                let head = h.sh(&format!("stat -c '%a' {sealed} && head -c 5 {sealed}"))?;
                ensure!(head == "600\nmfs1:", "{sealed}: {head:?}");
                Ok(())
            }
        },
    )
    .await
    .with_context(|| h.journal("mofang-agent"))?;
    h.sh(&format!("{CLI_ENV} mofang instance delete {instance}"))?;
    eventually(
        "the agent deletes the member's volume",
        Duration::from_secs(30),
        || {
            let (h, volume) = (&h, &volume);
            async move {
                ensure!(!h.exec(&format!("test -e {volume}"))?.status.success());
                Ok(())
            }
        },
    )
    .await
    .with_context(|| h.journal("mofang-agent"))?;

    // Data that must outlive upgrade and removal.
    h.sh("echo precious > /var/lib/mofang/volumes/keep && chown mofang: /var/lib/mofang/volumes/keep")?;
    let store_before = h.sh("stat -c %i /var/lib/mofang/scheduler/mofang.db")?;
    let agent_before = invocation(&h, "mofang-agent.service")?;
    let scheduler_before = invocation(&h, "mofang-scheduler.service")?;

    // --- upgrade ---------------------------------------------------------------------------
    h.sh("dpkg -i /pkgs-newer/mofang-agent_*.deb /pkgs-newer/mofang-scheduler_*.deb </dev/null")?;
    for p in ["mofang-agent", "mofang-scheduler"] {
        let v = h.sh(&format!("dpkg-query -W -f='${{Version}}' {p}"))?;
        ensure!(v == format!("{newer_version}-1"), "{p} after upgrade: {v}");
    }
    assert_edited(&h, "/etc/mofang/agent.toml", &format!("node = \"{node}\""))?;
    assert_edited(
        &h,
        "/etc/mofang/scheduler.toml",
        "# edited by the install test",
    )?;
    let agent_after = invocation(&h, "mofang-agent.service")?;
    let scheduler_after = invocation(&h, "mofang-scheduler.service")?;
    ensure!(
        agent_after.0 != agent_before.0 && agent_after.1 != agent_before.1,
        "the agent was not restarted by the upgrade (pid, invocation {agent_before:?})"
    );
    ensure!(
        scheduler_after.0 != scheduler_before.0 && scheduler_after.1 != scheduler_before.1,
        "the scheduler was not restarted by the upgrade (pid, invocation {scheduler_before:?})"
    );
    // The restarted scheduler still knows the node from its store, and the agent is back.
    eventually(
        "the agent is ready after the upgrade",
        Duration::from_secs(60),
        || {
            let h = &h;
            let node = &node;
            async move {
                let n = h.node(node)?;
                ensure!(n["state"] == "ready", "node {node}: {n}");
                Ok(())
            }
        },
    )
    .await?;
    ensure!(h.sh("cat /var/lib/mofang/volumes/keep")?.trim() == "precious");
    ensure!(h.sh("stat -c %i /var/lib/mofang/scheduler/mofang.db")? == store_before);

    // --- removal -----------------------------------------------------------------------------
    h.sh("dpkg -r mofang-agent mofang-scheduler </dev/null")?;
    for bin in ["mofang-agent", "mofang-scheduler", "mofang"] {
        ensure!(
            !h.exec(&format!("test -e /usr/bin/{bin}"))?.status.success(),
            "/usr/bin/{bin} left after dpkg -r"
        );
    }
    for unit in ["mofang-agent", "mofang-scheduler"] {
        let state = h.unit_prop(unit, "ActiveState")?;
        ensure!(state == "inactive", "{unit} is {state} after dpkg -r");
    }
    ensure!(
        h.sh("cat /var/lib/mofang/volumes/keep")?.trim() == "precious",
        "dpkg -r touched /var/lib/mofang"
    );
    h.sh("test -s /var/lib/mofang/scheduler/mofang.db && test -s /var/lib/mofang/scheduler/admin.token")
        .context("dpkg -r removed the scheduler's store")?;
    // Removal keeps conffiles (purge would remove them) and the user that owns the data.
    assert_edited(&h, "/etc/mofang/agent.toml", &format!("node = \"{node}\""))?;
    h.sh("getent passwd mofang")?;
    // Even a purge leaves the data: database volumes are never deleted by a package tool.
    h.sh("dpkg --purge mofang-agent mofang-scheduler </dev/null")?;
    ensure!(
        !h.exec("test -e /etc/mofang/agent.toml")?.status.success(),
        "purge left agent.toml"
    );
    ensure!(h.sh("cat /var/lib/mofang/volumes/keep")?.trim() == "precious");
    Ok(())
}

/// `dpkg-deb -c`: the regular files and symlinks of a .deb, as absolute paths.
fn deb_files(deb: &Path) -> Result<BTreeSet<String>> {
    let list = host("dpkg-deb", &["-c", &deb.to_string_lossy()])?;
    Ok(list
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect())
}

/// A maintainer script of a .deb (`dpkg-deb -I deb <script>`).
fn deb_script(deb: &Path, script: &str) -> Result<String> {
    host("dpkg-deb", &["-I", &deb.to_string_lossy(), script])
}

/// One scriptlet of `rpm -qp --scripts` output: the lines after its `<name> scriptlet...:`
/// header, up to the next header.
fn rpm_scriptlet(scripts: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in scripts.lines() {
        let header = line
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w.starts_with("scriptlet"))
            && line.ends_with(':');
        if header && !line.starts_with(char::is_whitespace) {
            inside = line.starts_with(&format!("{name} scriptlet"));
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `for d in ...` line that creates the state directories.
fn state_dirs(script: &str) -> Option<String> {
    script
        .lines()
        .find(|l| l.trim_start().starts_with("for d in /var/lib/mofang"))
        .map(|l| l.trim().to_owned())
}

#[test]
fn rpm_packages_carry_the_deb_layout_and_scriptlets() -> Result<()> {
    let packages = target_dir().join("packages");
    for (name, unit) in [
        ("mofang-agent", "mofang-agent.service"),
        ("mofang-scheduler", "mofang-scheduler.service"),
    ] {
        let deb = package(&packages, name, "deb")?;
        let rpm = package(&packages, name, "rpm")?;
        let rpm_s = rpm.to_string_lossy().into_owned();

        // Same files, save Debian's copyright file (policy), under the same paths.
        let mut want = deb_files(&deb)?;
        want.remove(&format!("/usr/share/doc/{name}/copyright"));
        let got: BTreeSet<String> = host("rpm", &["-qlp", &rpm_s])?
            .lines()
            .map(str::to_owned)
            .collect();
        ensure!(
            got == want,
            "{name}: rpm files {got:?}\n deb files {want:?}"
        );
        ensure!(
            got.contains(&format!("/usr/lib/systemd/system/{unit}")),
            "{name}: no unit"
        );
        let unit_text = std::fs::read_to_string(workspace_root().join("systemd").join(unit))?;
        let packaged_unit = host(
            "sh",
            &[
                "-c",
                &format!("rpm2archive - <'{rpm_s}' | tar -xzO ./usr/lib/systemd/system/{unit}"),
            ],
        )?;
        ensure!(
            packaged_unit == unit_text,
            "{name}: rpm's unit differs from systemd/{unit}"
        );

        // Config files marked %config(noreplace): an upgrade keeps an edited one, as dpkg does.
        let flags = host(
            "rpm",
            &[
                "-qp",
                "--qf",
                "[%{FILENAMES} %{FILEFLAGS:fflags}\n]",
                &rpm_s,
            ],
        )?;
        let configs: Vec<&str> = flags.lines().filter(|l| l.starts_with("/etc/")).collect();
        ensure!(
            configs.len() == 1 && configs[0].ends_with(" cn"),
            "{name}: config files {configs:?}"
        );
        let meta = host(
            "rpm",
            &[
                "-qp",
                "--qf",
                "%{NAME} %{VERSION} %{LICENSE}\n%{SUMMARY}",
                &rpm_s,
            ],
        )?;
        ensure!(
            meta.starts_with(&format!("{name} {VERSION} Apache-2.0\n"))
                && meta.lines().nth(1).is_some_and(|s| s.len() > 20),
            "{name}: rpm metadata {meta:?}"
        );
        let control = host(
            "dpkg-deb",
            &["-f", &deb.to_string_lossy(), "Version", "Description"],
        )?;
        ensure!(
            control.starts_with(&format!("Version: {VERSION}-1\n")) && control.len() > 60,
            "{name}: deb control {control:?}"
        );

        // Same scriptlets: the user before anything runs as it, the same state directories,
        // stop only on removal, restart after an upgrade.
        let scripts = host("rpm", &["-qp", "--scripts", &rpm_s])?;
        let (pre, post) = (
            rpm_scriptlet(&scripts, "preinstall"),
            rpm_scriptlet(&scripts, "postinstall"),
        );
        let (preun, postun) = (
            rpm_scriptlet(&scripts, "preuninstall"),
            rpm_scriptlet(&scripts, "postuninstall"),
        );
        let postinst = deb_script(&deb, "postinst")?;
        let prerm = deb_script(&deb, "prerm")?;
        let useradd = "useradd --system --user-group --home-dir /var/lib/mofang";
        ensure!(
            pre.contains(useradd),
            "{name}: rpm %pre has no useradd:\n{pre}"
        );
        ensure!(
            postinst.contains(useradd),
            "{name}: postinst has no useradd"
        );
        ensure!(
            state_dirs(&post).is_some() && state_dirs(&post) == state_dirs(&postinst),
            "{name}: state directories differ: rpm {:?}, deb {:?}",
            state_dirs(&post),
            state_dirs(&postinst)
        );
        ensure!(
            preun.contains("[ \"$1\" -eq 0 ]") && preun.contains(&format!("disable --now {unit}")),
            "{name}: rpm %preun must stop and disable on removal only:\n{preun}"
        );
        ensure!(
            prerm.contains("[ \"$1\" = remove ]") && prerm.contains("deb-systemd-invoke stop"),
            "{name}: prerm must stop on removal only:\n{prerm}"
        );
        ensure!(
            postun.contains("[ \"$1\" -ge 1 ]") && postun.contains(&format!("try-restart {unit}")),
            "{name}: rpm %postun must restart after an upgrade:\n{postun}"
        );
        ensure!(
            postinst.contains("deb-systemd-invoke $_dh_action")
                || postinst.contains("deb-systemd-invoke try-restart"),
            "{name}: postinst does not restart after an upgrade:\n{postinst}"
        );
        for s in [&post, &preun, &postun, &postinst, &prerm] {
            ensure!(
                !s.contains("rm -rf") && !s.contains("userdel"),
                "{name}: a scriptlet deletes data or the user:\n{s}"
            );
        }
    }
    Ok(())
}
