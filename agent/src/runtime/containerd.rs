//! `ContainerRuntime` on containerd through its own gRPC API (`containerd-client`), in one
//! containerd namespace (default `mofang`; Docker's `moby` is refused). The only file that
//! names containerd types. containerd has no "run this image" call: the agent reads the
//! image's config from the content store, prepares a snapshot on its layers, writes the OCI
//! runtime spec (built with `oci-spec`: the same limits and hardening as the Docker runtime)
//! and runs tasks through the runc v2 shim. Members on a named network get a network
//! namespace of their own with an address from CNI ([`super::cni`]).

use super::cni::{self, Cni};
use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, Error, ExecOutput, ExecStream,
    Input, Network, OneShot, Result, RuntimeEvent,
};
use crate::metrics::cgroup;
use async_trait::async_trait;
use containerd_client::services::v1::CloseIoRequest;
use containerd_client::services::v1::{
    container::Runtime, containers_client::ContainersClient, content_client::ContentClient,
    events_client::EventsClient, images_client::ImagesClient,
    snapshots::snapshots_client::SnapshotsClient, snapshots::MountsRequest,
    snapshots::PrepareSnapshotRequest, snapshots::RemoveSnapshotRequest, tasks_client::TasksClient,
    version_client::VersionClient, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest,
    GetContainerRequest, GetImageRequest, GetRequest, KillRequest, ListContainersRequest,
    ReadContentRequest, StartRequest, SubscribeRequest, UpdateContainerRequest, UpdateTaskRequest,
    WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{metadata::AsciiMetadataValue, Code, Request, Status};
use containerd_client::types::v1::Status as TaskStatus;
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_spec::runtime::{
    Capability, LinuxCpu, LinuxDeviceCgroup, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxPids, LinuxResources, Mount as OciMount, Process, Spec, User,
};
use prost::Message;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// The runc shim every task runs under.
const RUNC_SHIM: &str = "io.containerd.runc.v2";
/// Type URLs containerd expects for OCI documents in an `Any`.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// The CFS period the CPU quota is counted in (as Docker: 100 ms).
const CPU_PERIOD: u64 = 100_000;

/// What the containerd runtime is told by the agent's config.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace the agent's containers, images and tasks live in.
    pub namespace: String,
    /// The snapshotter root filesystems are prepared with (`overlayfs`).
    pub snapshotter: String,
    /// Where the runtime keeps its files: task logs, exec pipes, CNI allocations.
    pub state_dir: PathBuf,
    /// The cgroup path tasks are made under (`/<parent>/<id>`); none: `/<namespace>`.
    pub cgroup_parent: Option<String>,
    /// The CNI network members attach to when the agent's `network` is not `host`.
    pub cni: Cni,
}

/// containerd, reached over its Unix socket.
#[derive(Clone)]
pub struct ContainerdRuntime {
    channel: Channel,
    namespace: AsciiMetadataValue,
    opts: ContainerdOptions,
    /// This host's cgroup mounts: where a task's cgroup files are.
    cgroups: cgroup::Mounts,
}

impl ContainerdRuntime {
    /// The cgroup path of task `id`: [`cgroups_path`] with this runtime's options.
    fn cgroups_path(&self, id: &str) -> String {
        cgroups_path(self.opts.cgroup_parent.as_deref(), &self.opts.namespace, id)
    }
}

/// The cgroup path of task `id` (runc's cgroupfs form): under `parent` (the agent's
/// `member_cgroup_parent`), or under `/<namespace>`.
fn cgroups_path(parent: Option<&str>, namespace: &str, id: &str) -> String {
    match parent {
        Some(p) => format!("{}/{id}", p.trim_end_matches('/')),
        None => format!("/{namespace}/{id}"),
    }
}

impl std::fmt::Debug for ContainerdRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdRuntime")
            .field("socket", &self.opts.socket)
            .field("namespace", &self.opts.namespace)
            .finish_non_exhaustive()
    }
}

/// Errors of the OCI documents (image config, runtime spec) this runtime reads and writes.
#[derive(Debug, thiserror::Error)]
enum DocError {
    /// A JSON document did not parse.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

fn unreachable(socket: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Unreachable(format!(
        "containerd not reachable at {}: {e}",
        socket.display()
    ))
}

fn map_status(id: &str, s: Status) -> Error {
    match s.code() {
        Code::NotFound => Error::NotFound(id.to_owned()),
        Code::Unavailable => Error::Unreachable(format!("containerd: {}", s.message())),
        _ => Error::Api(format!("{id}: {}", s.message())),
    }
}

fn json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| {
        Error::Api(
            DocError::Json {
                what: what.to_owned(),
                source,
            }
            .to_string(),
        )
    })
}

fn any<T: serde::Serialize>(type_url: &str, value: &T) -> Result<prost_types::Any> {
    Ok(prost_types::Any {
        type_url: type_url.to_owned(),
        value: serde_json::to_vec(value).map_err(|e| Error::Api(format!("{type_url}: {e}")))?,
    })
}

/// The full name containerd keeps an image under: `mofang/mariadb:10.11` is
/// `docker.io/mofang/mariadb:10.11` (the name `ctr images import` gives a `docker save`).
pub fn normalize_image(reference: &str) -> String {
    let (first, rest) = reference.split_once('/').unwrap_or(("", reference));
    let has_domain =
        !first.is_empty() && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut name = match (has_domain, first.is_empty()) {
        (true, _) => reference.to_owned(),
        (false, true) => format!("docker.io/library/{rest}"),
        (false, false) => format!("docker.io/{reference}"),
    };
    let last = name.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        name.push_str(":latest");
    }
    name
}

/// The short name of a normalized image, as the agent's config spells it.
fn familiar_image(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short.strip_prefix("library/").unwrap_or(short).to_owned()
}

/// The parts of an image's config (`application/vnd.oci.image.config.v1+json`) the runtime uses.
#[derive(Debug, Default, Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: ImageConfig,
    #[serde(default)]
    rootfs: ImageRootfs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// The chain id of a layer stack: the snapshot the image unpacked to (OCI image spec, "ChainID").
fn chain_id(diff_ids: &[String]) -> Option<String> {
    use sha2::Digest;
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let h = sha2::Sha256::digest(format!("{chain} {d}").as_bytes());
        chain = format!("sha256:{}", hex::encode(h));
    }
    Some(chain)
}

/// `uid:gid` (numbers) of a spec's `user`.
fn parse_user(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// The network namespace name of a member container.
fn netns_name(namespace: &str, id: &str) -> String {
    format!("{namespace}-{id}")
}

fn capability(name: &str) -> Result<Capability> {
    let bare = name.trim().to_ascii_uppercase();
    let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
    bare.parse::<Capability>()
        .map_err(|_| Error::Api(format!("unknown capability {name}")))
}

fn resources(cpus: f64, memory_bytes: i64, pids_limit: Option<i64>) -> LinuxResources {
    let mut r = LinuxResources::default();
    // Every device denied; runc adds the standard ones (null, zero, urandom, tty ...) after.
    let mut deny = LinuxDeviceCgroup::default();
    deny.set_allow(false);
    deny.set_access(Some("rwm".into()));
    r.set_devices(Some(vec![deny]));
    let mut cpu = LinuxCpu::default();
    cpu.set_period(Some(CPU_PERIOD));
    cpu.set_quota(Some(((cpus * CPU_PERIOD as f64) as i64).max(1000)));
    r.set_cpu(Some(cpu));
    let mut mem = LinuxMemory::default();
    mem.set_limit(Some(memory_bytes));
    // No swap beyond the memory limit, as with Docker's memory_swap = memory.
    mem.set_swap(Some(memory_bytes));
    r.set_memory(Some(mem));
    if let Some(p) = pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(p);
        r.set_pids(Some(pids));
    }
    r
}

/// The OCI runtime spec of a member container: its image's entrypoint and environment, run
/// as `spec.user`, every capability dropped but `cap_add`, no new privileges, the CPU quota,
/// memory (= swap) and pids limits, the bind mounts, and the network namespace `netns` (None:
/// the host's). A pure function of its inputs.
fn runtime_spec(
    spec: &ContainerSpec,
    image: &ImageConfig,
    netns: Option<&std::path::Path>,
    cgroups_path: &str,
    etc_dir: &std::path::Path,
) -> Result<Spec> {
    let (uid, gid) = parse_user(&spec.user).ok_or_else(|| {
        Error::Api(format!(
            "{}: user must be uid:gid, not {}",
            spec.name, spec.user
        ))
    })?;
    let mut args: Vec<String> = image.entrypoint.clone().unwrap_or_default();
    if spec.args.is_empty() {
        args.extend(image.cmd.clone().unwrap_or_default());
    } else {
        args.extend(spec.args.iter().cloned());
    }
    if args.is_empty() {
        return Err(Error::Api(format!(
            "{}: image {} has no entrypoint or command",
            spec.name, spec.image
        )));
    }
    let mut env = image.env.clone().unwrap_or_default();
    env.extend(spec.env.iter().cloned());

    let caps: HashSet<Capability> = spec
        .cap_add
        .iter()
        .map(|c| capability(c))
        .collect::<Result<_>>()?;
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(
        image
            .working_dir
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".into())
            .into(),
    );
    process.set_user(user);
    process.set_no_new_privileges(Some(true));
    let mut pcaps = oci_spec::runtime::LinuxCapabilities::default();
    pcaps.set_bounding(Some(caps.clone()));
    pcaps.set_effective(Some(caps.clone()));
    pcaps.set_permitted(Some(caps));
    pcaps.set_inheritable(Some(HashSet::new()));
    pcaps.set_ambient(Some(HashSet::new()));
    process.set_capabilities(Some(pcaps));
    // No rlimits: the task inherits containerd's (open files included), as a Docker container
    // inherits dockerd's; oci-spec's default of 1024 open files is too few for a database.
    process.set_rlimits(None);

    let mut oci = Spec::default();
    oci.set_process(Some(process));
    oci.set_hostname(Some(spec.name.clone()));
    if let Some(root) = oci.root_mut() {
        root.set_path("rootfs".into());
        // Writable like a Docker container's: the servers write their sockets and pid files.
        root.set_readonly(Some(false));
    }
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    for m in &spec.mounts {
        let mut b = OciMount::default();
        b.set_destination(m.target.clone().into());
        b.set_typ(Some("bind".into()));
        b.set_source(Some(m.source.clone()));
        b.set_options(Some(vec![
            "rbind".into(),
            "rprivate".into(),
            if m.read_only { "ro" } else { "rw" }.into(),
        ]));
        mounts.push(b);
    }
    // Name resolution as Docker sets it up: the host's resolv.conf, and hosts and hostname
    // files of the container's own (`mariadb-install-db` refuses to run when the hostname
    // does not resolve).
    let mut files = vec![
        (etc_dir.join("hosts"), "/etc/hosts"),
        (etc_dir.join("hostname"), "/etc/hostname"),
    ];
    if std::path::Path::new("/etc/resolv.conf").exists() {
        files.push(("/etc/resolv.conf".into(), "/etc/resolv.conf"));
    }
    for (source, target) in files {
        let mut b = OciMount::default();
        b.set_destination(target.into());
        b.set_typ(Some("bind".into()));
        b.set_source(Some(source));
        b.set_options(Some(vec!["rbind".into(), "rprivate".into(), "ro".into()]));
        mounts.push(b);
    }
    oci.set_mounts(Some(mounts));

    let linux = oci
        .linux_mut()
        .as_mut()
        .ok_or_else(|| Error::Api("the default OCI spec has no linux section".into()))?;
    linux.set_resources(Some(resources(
        spec.cpus,
        spec.memory_bytes,
        Some(spec.pids_limit),
    )));
    linux.set_cgroups_path(Some(cgroups_path.into()));
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    if let Some(path) = netns {
        let mut n = LinuxNamespace::default();
        n.set_typ(LinuxNamespaceType::Network);
        n.set_path(Some(path.to_owned()));
        namespaces.push(n);
    }
    linux.set_namespaces(Some(namespaces));
    Ok(oci)
}

/// The `/etc/hosts` of a container: localhost, and its hostname at its address (127.0.1.1
/// on the host network, as Debian does for the host's own name).
fn hosts_file(hostname: &str, ip: Option<&str>) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname}\n",
        ip.unwrap_or("127.0.1.1")
    )
}

/// The network namespace path a runtime spec joins, if any.
fn netns_of(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// CPU cores and memory bytes of a runtime spec's resources.
fn limits_of(spec: &Spec) -> (f64, i64) {
    let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return (0.0, 0);
    };
    let cpus = r
        .cpu()
        .as_ref()
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
            _ => None,
        })
        .unwrap_or(0.0);
    let memory = r.memory().as_ref().and_then(|m| m.limit()).unwrap_or(0);
    ((cpus * 1000.0).round() / 1000.0, memory)
}

/// The cgroup a runtime spec puts its task in (`/<namespace>/<id>`).
fn cgroups_path_of(spec: &Spec) -> Option<String> {
    let path = spec.linux().as_ref()?.cgroups_path().as_ref()?;
    Some(path.to_string_lossy().into_owned())
}

/// Whether an exited task's run saw an OOM kill (decision 160): its cgroup, made afresh by
/// each start and kept after the exit until the task is deleted (by the next start or the
/// removal), counted one (`oom_kills`; None when it could not be read). A kill of any of its
/// processes counts, as with Docker; a `kill -9` by hand counts nothing.
fn oom_kill_in_run(oom_kills: Option<u64>) -> bool {
    oom_kills.is_some_and(|n| n > 0)
}

/// A signal by name (`SIGKILL`, `KILL`) or number.
fn signal_number(signal: &str) -> Option<u32> {
    if let Ok(n) = signal.parse::<u32>() {
        return Some(n);
    }
    let s = signal.trim().to_ascii_uppercase();
    let s = s.strip_prefix("SIG").unwrap_or(&s);
    Some(match s {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        _ => return None,
    })
}

/// When process `pid` started, RFC 3339, from `/proc` (field 22 of `stat`, in clock ticks
/// since boot, plus the boot time): the same value for as long as the process lives, so an
/// agent restart does not take an adopted task for a restarted one.
fn process_started_at(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // USER_HZ is 100 on every Linux architecture the agent is built for.
    let secs = btime + ticks / 100;
    Some(mofang_common::pitr::format_utc(i64::try_from(secs).ok()?))
}

impl ContainerdRuntime {
    /// Connects to containerd and checks it answers. The namespace `moby` (Docker Engine's own
    /// containers) is refused: this runtime never touches another tool's containers.
    pub async fn connect(opts: ContainerdOptions) -> Result<Self> {
        if opts.namespace == "moby" {
            return Err(Error::Api(
                "containerd namespace `moby` belongs to Docker Engine".into(),
            ));
        }
        let namespace: AsciiMetadataValue = opts
            .namespace
            .parse()
            .map_err(|e| Error::Api(format!("namespace {}: {e}", opts.namespace)))?;
        if !opts.socket.exists() {
            return Err(unreachable(&opts.socket, "no such socket"));
        }
        let channel = containerd_client::connect(&opts.socket)
            .await
            .map_err(|e| unreachable(&opts.socket, e))?;
        let rt = ContainerdRuntime {
            channel,
            namespace,
            opts,
            cgroups: cgroup::Mounts::detect(),
        };
        rt.ping().await?;
        Ok(rt)
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        r
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.opts.state_dir.join("logs").join(format!("{id}.log"))
    }

    /// Reads a whole blob of the content store.
    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.req(ReadContentRequest {
                digest: digest.to_owned(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|e| map_status(digest, e))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(|e| map_status(digest, e))?.data);
        }
        Ok(out)
    }

    /// The image's config and the chain id of its unpacked layers; `ImageMissing` when the
    /// image is not in the namespace.
    async fn image_config(&self, image: &str) -> Result<(String, String, ImageConfigFile)> {
        let name = normalize_image(image);
        let got = ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest { name: name.clone() }))
            .await;
        let target = match got {
            Ok(r) => r
                .into_inner()
                .image
                .and_then(|i| i.target)
                .ok_or_else(|| Error::ImageMissing(image.to_owned()))?,
            Err(s) if s.code() == Code::NotFound => {
                return Err(Error::ImageMissing(image.to_owned()))
            }
            Err(s) => return Err(map_status(image, s)),
        };
        let mut manifest: Manifest = json(
            &format!("manifest of {image}"),
            &self.read_blob(&target.digest).await?,
        )?;
        // An index: the linux/amd64 manifest (the images are built for the host).
        if manifest.config.is_none() {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let pick = manifest
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .or_else(|| manifest.manifests.first())
                .ok_or_else(|| Error::Api(format!("image {image}: empty index")))?;
            let digest = pick.digest.clone();
            manifest = json(
                &format!("manifest of {image}"),
                &self.read_blob(&digest).await?,
            )?;
        }
        let config = manifest
            .config
            .ok_or_else(|| Error::Api(format!("image {image}: manifest without config")))?;
        let file: ImageConfigFile = json(
            &format!("config of {image}"),
            &self.read_blob(&config.digest).await?,
        )?;
        let chain = chain_id(&file.rootfs.diff_ids)
            .ok_or_else(|| Error::Api(format!("image {image}: no layers")))?;
        Ok((name, chain, file))
    }

    /// The container record and its snapshot on the image's layers: the snapshot after the
    /// record, which keeps it from the garbage collector. One left by an attempt cut short is
    /// replaced.
    async fn create_record(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        image: &str,
        (image_name, chain): (String, String),
        oci: &Spec,
    ) -> Result<()> {
        let id = id.to_owned();
        let container = Container {
            id: id.clone(),
            labels: labels.clone().into_iter().collect(),
            image: image_name,
            runtime: Some(Runtime {
                name: RUNC_SHIM.into(),
                options: None,
            }),
            spec: Some(any(SPEC_TYPE, oci)?),
            snapshotter: self.opts.snapshotter.clone(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        self.containers()
            .create(self.req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(|e| match e.code() {
                Code::AlreadyExists => Error::Api(format!("container {id} already exists")),
                _ => map_status(&id, e),
            })?;
        let prepare = || async {
            self.snapshots()
                .prepare(self.req(PrepareSnapshotRequest {
                    snapshotter: self.opts.snapshotter.clone(),
                    key: id.clone(),
                    parent: chain.clone(),
                    labels: HashMap::new(),
                }))
                .await
        };
        let prepared = match prepare().await {
            Err(s) if s.code() == Code::AlreadyExists => {
                let _ = self
                    .snapshots()
                    .remove(self.req(RemoveSnapshotRequest {
                        snapshotter: self.opts.snapshotter.clone(),
                        key: id.clone(),
                    }))
                    .await;
                prepare().await
            }
            other => other,
        };
        if let Err(s) = prepared {
            let _ = self
                .containers()
                .delete(self.req(DeleteContainerRequest { id: id.clone() }))
                .await;
            return Err(match s.code() {
                Code::NotFound => Error::ImageMissing(format!(
                    "{image} (not unpacked for {})",
                    self.opts.snapshotter
                )),
                _ => map_status(&id, s),
            });
        }
        Ok(())
    }

    /// Runs the task of a one-shot container: `input` on its standard input, its output (the
    /// last `keep` bytes of standard output, then of standard error) and exit code.
    async fn run_task_once(&self, id: &str, input: &mut Input, keep: usize) -> Result<ExecOutput> {
        use std::io::Write;
        let dir = self.opts.state_dir.join("exec");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Api(format!("{}: {e}", dir.display())))?;
        let paths: Vec<PathBuf> = ["in", "out", "err"]
            .iter()
            .map(|k| dir.join(format!("{id}-once.{k}")))
            .collect();
        for p in &paths {
            let _ = std::fs::remove_file(p);
            make_fifo(p)?;
        }
        let (in_path, out_path, err_path) = (paths[0].clone(), paths[1].clone(), paths[2].clone());
        let tail = move |path: PathBuf| {
            tokio::task::spawn_blocking(move || {
                let mut kept = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&path) {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = f.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * keep {
                            kept.drain(..kept.len() - keep);
                        }
                    }
                }
                kept
            })
        };
        let out_reader = tail(out_path.clone());
        let err_reader = tail(err_path.clone());
        // The writer end of stdin opens once the shim has opened its reader.
        let writer = {
            let path = in_path.clone();
            tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(path))
        };
        let run = async {
            let c = self.get_container(id).await?;
            let mounts = self
                .snapshots()
                .mounts(self.req(MountsRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: c.snapshot_key.clone(),
                }))
                .await
                .map_err(|e| map_status(id, e))?
                .into_inner()
                .mounts;
            self.tasks()
                .create(self.req(CreateTaskRequest {
                    container_id: id.to_owned(),
                    rootfs: mounts,
                    stdin: in_path.display().to_string(),
                    stdout: out_path.display().to_string(),
                    stderr: err_path.display().to_string(),
                    ..Default::default()
                }))
                .await
                .map_err(|e| map_status(id, e))?;
            self.tasks()
                .start(self.req(StartRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                }))
                .await
                .map_err(|e| map_status(id, e))?;
            let stdin = writer
                .await
                .map_err(|e| Error::Api(format!("{id}: stdin: {e}")))?
                .map_err(|e| Error::Api(format!("{id}: stdin: {e}")))?;
            // Fed from a thread: the FIFO is a blocking file; closing it is the end of input.
            let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(4);
            let feeder = tokio::task::spawn_blocking(move || {
                let mut stdin = stdin;
                for chunk in rx {
                    if let Err(e) = stdin.write_all(&chunk) {
                        return Err(e.to_string());
                    }
                }
                Ok(())
            });
            let mut fed: std::result::Result<(), String> = Ok(());
            while let Some(chunk) = input.next().await {
                match chunk {
                    Ok(c) => {
                        let tx = tx.clone();
                        let sent = tokio::task::spawn_blocking(move || tx.send(c)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                    }
                    Err(e) => {
                        fed = Err(e);
                        break;
                    }
                }
            }
            drop(tx);
            if let Ok(Err(e)) = feeder.await {
                fed = fed.and(Err(format!("writing to {id}: {e}")));
            }
            // The shim never sees end of file on the FIFO: it closes the process's stdin when
            // asked (what `ctr` does once its copy is done).
            self.tasks()
                .close_io(self.req(CloseIoRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                    stdin: true,
                }))
                .await
                .map_err(|e| map_status(id, e))?;
            let waited = self
                .tasks()
                .wait(self.req(WaitRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                }))
                .await
                .map_err(|e| map_status(id, e))?
                .into_inner();
            Ok::<_, Error>((fed, waited.exit_status))
        }
        .await;
        if run.is_err() {
            for p in &paths {
                release_fifo(p);
            }
            // A writer still waiting for a reader that will never come (a non-blocking open
            // for reading lets it go and never waits itself).
            let _ = rustix::fs::openat(
                rustix::fs::CWD,
                &in_path,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NONBLOCK
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            );
        }
        let out = out_reader.await.unwrap_or_default();
        let err = err_reader.await.unwrap_or_default();
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
        let (fed, exit_status) = run?;
        if let Err(e) = fed {
            return Err(Error::Api(format!("{id}: input failed: {e}")));
        }
        let mut text = out;
        text.extend_from_slice(&err);
        Ok(ExecOutput {
            exit_code: i64::from(exit_status),
            stdout: String::from_utf8_lossy(&text[text.len().saturating_sub(keep)..]).into_owned(),
            stderr: String::new(),
        })
    }

    async fn get_container(&self, id: &str) -> Result<Container> {
        self.containers()
            .get(self.req(GetContainerRequest { id: id.to_owned() }))
            .await
            .map_err(|e| map_status(id, e))?
            .into_inner()
            .container
            .ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// The task of a container: None when it has none.
    async fn task(&self, id: &str) -> Result<Option<containerd_client::types::v1::Process>> {
        match self
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(map_status(id, s)),
        }
    }

    async fn delete_task(&self, id: &str) -> Result<()> {
        match self
            .tasks()
            .delete(self.req(DeleteTaskRequest {
                container_id: id.to_owned(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(map_status(id, s)),
        }
    }

    async fn signal(&self, id: &str, signal: u32) -> Result<()> {
        self.tasks()
            .kill(self.req(KillRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
                signal,
                all: false,
            }))
            .await
            .map(|_| ())
            .map_err(|e| map_status(id, e))
    }

    /// Waits for the task to exit, at most `limit`; whether it did.
    async fn wait_exit(&self, id: &str, limit: Duration) -> Result<bool> {
        let mut tasks = self.tasks();
        let wait = tasks.wait(self.req(WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        }));
        match tokio::time::timeout(limit, wait).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(true),
            Ok(Err(s)) => Err(map_status(id, s)),
            Err(_) => Ok(false),
        }
    }

    fn spec_of(c: &Container) -> Result<Spec> {
        let any = c
            .spec
            .as_ref()
            .ok_or_else(|| Error::Api(format!("{}: container without spec", c.id)))?;
        json(&format!("spec of {}", c.id), &any.value)
    }

    async fn info_of(&self, c: Container) -> Result<ContainerInfo> {
        let spec = Self::spec_of(&c)?;
        let (cpus, memory_bytes) = limits_of(&spec);
        let task = self.task(&c.id).await?;
        let (state, pid, exit_code) = match &task {
            None => (ContainerState::Created, None, None),
            Some(p) => match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
                TaskStatus::Created => (ContainerState::Created, None, None),
                TaskStatus::Running => (ContainerState::Running, Some(p.pid), None),
                TaskStatus::Paused | TaskStatus::Pausing => {
                    (ContainerState::Paused, Some(p.pid), None)
                }
                TaskStatus::Stopped => {
                    (ContainerState::Exited, None, Some(i64::from(p.exit_status)))
                }
                TaskStatus::Unknown => (ContainerState::Other, None, None),
            },
        };
        let pid = pid.filter(|p| *p > 0);
        // The counter is only read when it can matter: an exited task.
        let oom_kills = match state {
            ContainerState::Exited => cgroups_path_of(&spec)
                .and_then(|path| cgroup::oom_kills(&self.cgroups.paths_named(&path))),
            _ => None,
        };
        let mut ips = BTreeMap::new();
        if netns_of(&spec).is_some() {
            if let Some(ip) = self.opts.cni.ip_of(&c.id) {
                ips.insert(self.opts.cni.network.clone(), ip);
            }
        }
        Ok(ContainerInfo {
            id: c.id.clone(),
            name: c.id.clone(),
            image: familiar_image(&c.image),
            labels: c.labels.into_iter().collect(),
            state,
            exit_code,
            oom_killed: super::oom_killed_on_exit(state, oom_kill_in_run(oom_kills)),
            pid,
            ips,
            published: BTreeMap::new(),
            started_at: pid.and_then(process_started_at),
            cpus,
            memory_bytes,
        })
    }

    /// Removes a member's container and task, and its network namespace unless
    /// `keep_netns` (the member is made again at once: the same namespace, the same address).
    async fn remove_member(&self, id: &str, force: bool, keep_netns: bool) -> Result<()> {
        let c = self.get_container(id).await?;
        if let Some(p) = self.task(id).await? {
            if p.status == TaskStatus::Running as i32 || p.status == TaskStatus::Paused as i32 {
                if !force {
                    return Err(Error::Api(format!(
                        "{id}: container is running (stop it first)"
                    )));
                }
                match self.signal(id, 9).await {
                    Ok(()) | Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                self.wait_exit(id, Duration::from_secs(30)).await?;
            }
            self.delete_task(id).await?;
        }
        let spec = Self::spec_of(&c).ok();
        if !keep_netns && spec.as_ref().and_then(netns_of).is_some() {
            let netns = netns_name(&self.opts.namespace, id);
            if let Err(e) = self.opts.cni.teardown(id, &netns).await {
                tracing::warn!(container = %id, error = %e, "CNI teardown failed");
            }
        }
        self.containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_owned() }))
            .await
            .map_err(|e| map_status(id, e))?;
        match self
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: c.snapshotter.clone(),
                key: c.snapshot_key.clone(),
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(map_status(id, s)),
        }
        let _ = std::fs::remove_file(self.log_path(id));
        let _ = std::fs::remove_dir_all(self.etc_dir(id));
        Ok(())
    }
    /// The member's address: its namespace made and joined to the CNI network.
    async fn ensure_network(&self, id: &str) -> Result<String> {
        let netns = netns_name(&self.opts.namespace, id);
        self.opts.cni.ensure(id, &netns).await
    }

    fn etc_dir(&self, id: &str) -> PathBuf {
        self.opts.state_dir.join("etc").join(id)
    }

    /// Writes the container's `hosts` and `hostname` files; returns their directory.
    fn write_etc(&self, id: &str, ip: Option<&str>) -> Result<PathBuf> {
        let dir = self.etc_dir(id);
        let io = |e: std::io::Error| Error::Api(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::write(dir.join("hosts"), hosts_file(id, ip)).map_err(io)?;
        std::fs::write(dir.join("hostname"), format!("{id}\n")).map_err(io)?;
        Ok(dir)
    }

    /// The process spec an exec runs with: the container's own (user, environment,
    /// capabilities, no new privileges), the command and, when given, another user.
    async fn exec_process(
        &self,
        id: &str,
        cmd: &[&str],
        user: Option<&str>,
        pid: u32,
    ) -> Result<Process> {
        let c = self.get_container(id).await?;
        let spec = Self::spec_of(&c)?;
        let mut p = spec.process().clone().unwrap_or_default();
        p.set_args(Some(cmd.iter().map(|s| s.to_string()).collect()));
        p.set_terminal(Some(false));
        if let Some(u) = user {
            let (uid, gid) = match parse_user(u) {
                Some(ids) => ids,
                None => passwd_lookup(pid, u)
                    .ok_or_else(|| Error::Api(format!("{id}: no user {u} in the container")))?,
            };
            let mut user = User::default();
            user.set_uid(uid);
            user.set_gid(gid);
            p.set_user(user);
        }
        Ok(p)
    }
}

/// `uid:gid` of a user name in the container's `/etc/passwd` (read through `/proc/<pid>/root`).
fn passwd_lookup(pid: u32, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/root/etc/passwd")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// Makes a FIFO the shim writes a process's output to.
fn make_fifo(path: &std::path::Path) -> Result<()> {
    use rustix::fs::{FileType, Mode, CWD};
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        .map_err(|e| Error::Api(format!("fifo {}: {e}", path.display())))
}

/// Lets a reader blocked opening `path` go (it then reads end of file): used when the shim
/// never opened the FIFO because the exec failed.
fn release_fifo(path: &std::path::Path) {
    use rustix::fs::{Mode, OFlags, CWD};
    let _ = rustix::fs::openat(
        CWD,
        path,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    );
}

#[async_trait]
impl ContainerRuntime for ContainerdRuntime {
    async fn ping(&self) -> Result<()> {
        VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map(|_| ())
            .map_err(|e| unreachable(&self.opts.socket, e.message()))
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        match ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest {
                name: normalize_image(image),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(map_status(image, s)),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        // The agent never publishes a member's port (docs/agent.md); refused rather than
        // ignored, so a caller does not believe a port is reachable that is not.
        if spec.publish.is_some() {
            return Err(Error::Api(format!(
                "{}: publishing a port is not supported on containerd",
                spec.name
            )));
        }
        let (image_name, chain, image) = self.image_config(&spec.image).await?;
        let id = spec.name.clone();
        let netns = match &spec.network {
            Network::Host => None,
            Network::Named(_) => Some(cni::netns_path(&netns_name(&self.opts.namespace, &id))),
        };
        let cgroups = self.cgroups_path(&id);
        let ip = match netns {
            Some(_) => Some(self.ensure_network(&id).await?),
            None => None,
        };
        let etc = self.write_etc(&id, ip.as_deref())?;
        let oci = runtime_spec(spec, &image.config, netns.as_deref(), &cgroups, &etc)?;
        self.create_record(&id, &spec.labels, &spec.image, (image_name, chain), &oci)
            .await?;
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        let c = self.get_container(id).await?;
        match self.task(id).await? {
            Some(p) if p.status == TaskStatus::Running as i32 => return Ok(()),
            Some(_) => self.delete_task(id).await?,
            None => {}
        }
        let spec = Self::spec_of(&c)?;
        // After a host reboot the namespace is gone: made again, same network.
        let ip = match netns_of(&spec) {
            Some(_) => Some(self.ensure_network(id).await?),
            None => None,
        };
        self.write_etc(id, ip.as_deref())?;
        let mounts = self
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: c.snapshotter.clone(),
                key: c.snapshot_key.clone(),
            }))
            .await
            .map_err(|e| map_status(id, e))?
            .into_inner()
            .mounts;
        let log = self.log_path(id);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Api(format!("{}: {e}", dir.display())))?;
        }
        let log_uri = format!("file://{}", log.display());
        self.tasks()
            .create(self.req(CreateTaskRequest {
                container_id: id.to_owned(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: log_uri.clone(),
                stderr: log_uri,
                ..Default::default()
            }))
            .await
            .map_err(|e| map_status(id, e))?;
        self.tasks()
            .start(self.req(StartRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await
            .map(|_| ())
            .map_err(|e| map_status(id, e))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        match self.task(id).await? {
            Some(p)
                if p.status == TaskStatus::Running as i32
                    || p.status == TaskStatus::Paused as i32 => {}
            // Nothing runs: stopped already (as Docker answers a stop of a stopped container).
            _ => return Ok(()),
        }
        // SIGTERM, then SIGKILL after the grace period (Docker's stop).
        match self.signal(id, 15).await {
            Ok(()) => {}
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.wait_exit(id, grace).await? {
            return Ok(());
        }
        tracing::info!(container = %id, grace_ms = grace.as_millis() as u64, "no exit within the grace period, killing");
        match self.signal(id, 9).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.wait_exit(id, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let n = signal_number(signal)
            .ok_or_else(|| Error::Api(format!("{id}: unknown signal {signal}")))?;
        match self.task(id).await? {
            Some(p)
                if p.status == TaskStatus::Running as i32
                    || p.status == TaskStatus::Paused as i32 =>
            {
                self.signal(id, n).await
            }
            Some(_) | None => Err(Error::Api(format!("{id}: container is not running"))),
        }
    }

    async fn remove(&self, id: &str, force: bool) -> Result<()> {
        self.remove_member(id, force, false).await
    }

    async fn remove_keeping_address(&self, id: &str) -> Result<()> {
        self.remove_member(id, true, true).await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo> {
        let c = self.get_container(id).await?;
        self.info_of(c).await
    }

    async fn update_limits(&self, id: &str, cpus: f64, memory_bytes: i64) -> Result<()> {
        let mut c = self.get_container(id).await?;
        let mut spec = Self::spec_of(&c)?;
        let pids = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit());
        let res = resources(cpus, memory_bytes, pids);
        if let Some(linux) = spec.linux_mut().as_mut() {
            linux.set_resources(Some(res.clone()));
        }
        // The running task's cgroup at once, and the spec for the next start.
        if let Some(p) = self.task(id).await? {
            if p.status == TaskStatus::Running as i32 || p.status == TaskStatus::Paused as i32 {
                self.tasks()
                    .update(self.req(UpdateTaskRequest {
                        container_id: id.to_owned(),
                        resources: Some(any(RESOURCES_TYPE, &res)?),
                        annotations: HashMap::new(),
                    }))
                    .await
                    .map_err(|e| map_status(id, e))?;
            }
        }
        c.spec = Some(any(SPEC_TYPE, &spec)?);
        self.containers()
            .update(self.req(UpdateContainerRequest {
                container: Some(c),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["spec".into()],
                }),
            }))
            .await
            .map(|_| ())
            .map_err(|e| map_status(id, e))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>> {
        let filter = labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    format!("labels.\"{k}\"")
                } else {
                    format!("labels.\"{k}\"==\"{v}\"")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let containers = self
            .containers()
            .list(self.req(ListContainersRequest {
                filters: if filter.is_empty() {
                    vec![]
                } else {
                    vec![filter]
                },
            }))
            .await
            .map_err(|e| map_status("list", e))?
            .into_inner()
            .containers;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            match self.info_of(c).await {
                Ok(info) => out.push(info),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn exec(&self, id: &str, cmd: &[&str], user: Option<&str>) -> Result<ExecOutput> {
        let mut s = self.exec_stream(id, cmd, user).await?;
        let mut stdout = Vec::new();
        while let Some(chunk) = s.stdout.next().await {
            stdout.extend_from_slice(&chunk?);
        }
        let done = s
            .done
            .await
            .map_err(|_| Error::Api(format!("exec in {id} ended without a result")))??;
        Ok(ExecOutput {
            exit_code: done.exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: done.stderr,
        })
    }

    async fn exec_stream(&self, id: &str, cmd: &[&str], user: Option<&str>) -> Result<ExecStream> {
        /// Standard error kept for the answer.
        const STDERR_KEEP: usize = 64 * 1024;
        let pid = match self.task(id).await? {
            Some(p) if p.status == TaskStatus::Running as i32 => p.pid,
            _ => return Err(Error::Api(format!("{id}: container is not running"))),
        };
        let process = self.exec_process(id, cmd, user, pid).await?;
        let exec_id = format!("exec-{:016x}", rand::random::<u64>());
        let dir = self.opts.state_dir.join("exec");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Api(format!("{}: {e}", dir.display())))?;
        let out_path = dir.join(format!("{id}-{exec_id}.out"));
        let err_path = dir.join(format!("{id}-{exec_id}.err"));
        make_fifo(&out_path)?;
        make_fifo(&err_path)?;

        // Readers on threads of their own: opening a FIFO blocks until the shim opens it, and
        // end of file comes when the command (and whatever inherited its output) is done.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(8);
        let out_reader = {
            let path = out_path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ =
                            tx.blocking_send(Err(Error::Api(format!("{}: {e}", path.display()))));
                        return;
                    }
                };
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if tx
                                .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(Error::Api(format!("exec output: {e}"))));
                            break;
                        }
                    }
                }
            })
        };
        let err_reader = {
            let path = err_path.clone();
            tokio::task::spawn_blocking(move || {
                let mut kept = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&path) {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = f.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * STDERR_KEEP {
                            kept.drain(..kept.len() - STDERR_KEEP);
                        }
                    }
                }
                String::from_utf8_lossy(&kept[kept.len().saturating_sub(STDERR_KEEP)..])
                    .into_owned()
            })
        };
        let started = async {
            self.tasks()
                .exec(self.req(ExecProcessRequest {
                    container_id: id.to_owned(),
                    stdin: String::new(),
                    stdout: out_path.display().to_string(),
                    stderr: err_path.display().to_string(),
                    terminal: false,
                    spec: Some(any(PROCESS_TYPE, &process)?),
                    exec_id: exec_id.clone(),
                }))
                .await
                .map_err(|e| map_status(id, e))?;
            self.tasks()
                .start(self.req(StartRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.clone(),
                }))
                .await
                .map_err(|e| map_status(id, e))
        }
        .await;
        if let Err(e) = started {
            release_fifo(&out_path);
            release_fifo(&err_path);
            let _ = self
                .tasks()
                .delete_process(self.req(DeleteProcessRequest {
                    container_id: id.to_owned(),
                    exec_id: exec_id.clone(),
                }))
                .await;
            let _ = std::fs::remove_file(&out_path);
            let _ = std::fs::remove_file(&err_path);
            return Err(e);
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let rt = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let waited = rt
                .tasks()
                .wait(rt.req(WaitRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                }))
                .await
                .map_err(|e| map_status(&id, e));
            let stderr = err_reader.await.unwrap_or_default();
            let _ = out_reader.await;
            let _ = rt
                .tasks()
                .delete_process(rt.req(DeleteProcessRequest {
                    container_id: id.clone(),
                    exec_id,
                }))
                .await;
            let _ = std::fs::remove_file(&out_path);
            let _ = std::fs::remove_file(&err_path);
            let _ = done_tx.send(waited.map(|w| ExecOutput {
                exit_code: i64::from(w.into_inner().exit_status),
                stdout: String::new(),
                stderr,
            }));
        });
        Ok(ExecStream {
            stdout: tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
            done: done_rx,
        })
    }

    async fn run_once(&self, spec: &OneShot, mut input: Input) -> Result<ExecOutput> {
        /// Output kept for the answer.
        const KEEP: usize = 64 * 1024;
        let (image_name, chain, image) = self.image_config(&spec.image).await?;
        // A container of this name left by an attempt that was cut short.
        let _ = self.remove(&spec.name, true).await;
        let id = spec.name.clone();
        // The member's hardening without its limits; the command instead of the entrypoint;
        // a network namespace of its own with nothing in it (no network).
        let as_member = ContainerSpec {
            name: id.clone(),
            image: spec.image.clone(),
            args: vec![],
            env: vec![],
            labels: spec.labels.clone(),
            mounts: spec.mounts.clone(),
            network: Network::Host,
            publish: None,
            cpus: 1.0,
            memory_bytes: 0,
            pids_limit: 0,
            cap_add: vec!["CHOWN".into(), "DAC_OVERRIDE".into(), "FOWNER".into()],
            user: spec.user.clone(),
            stop_grace: Duration::from_secs(1),
        };
        let config = ImageConfig {
            entrypoint: Some(spec.cmd.clone()),
            cmd: None,
            env: image.config.env.clone(),
            working_dir: image.config.working_dir.clone(),
        };
        let etc = self.write_etc(&id, None)?;
        let cgroups = self.cgroups_path(&id);
        let mut oci = runtime_spec(&as_member, &config, None, &cgroups, &etc)?;
        if let Some(linux) = oci.linux_mut().as_mut() {
            let mut res = resources(1.0, 0, None);
            res.set_cpu(None);
            res.set_memory(None);
            linux.set_resources(Some(res));
            let mut ns = linux.namespaces().clone().unwrap_or_default();
            let mut net = LinuxNamespace::default();
            net.set_typ(LinuxNamespaceType::Network);
            ns.push(net);
            linux.set_namespaces(Some(ns));
        }
        self.create_record(&id, &spec.labels, &spec.image, (image_name, chain), &oci)
            .await?;
        let result = self.run_task_once(&id, &mut input, KEEP).await;
        let _ = self.remove(&id, true).await;
        result
    }

    fn events(&self, label: (&str, &str)) -> BoxStream<'static, Result<RuntimeEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<RuntimeEvent>>(64);
        let rt = self.clone();
        let (key, value) = (label.0.to_owned(), label.1.to_owned());
        tokio::spawn(async move {
            let ns = rt.opts.namespace.clone();
            let filters = vec![
                format!("namespace==\"{ns}\",topic~=\"^/tasks/\""),
                format!("namespace==\"{ns}\",topic==\"/containers/delete\""),
            ];
            let mut stream = match EventsClient::new(rt.channel.clone())
                .subscribe(SubscribeRequest { filters })
                .await
            {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = tx.send(Err(map_status("events", e))).await;
                    return;
                }
            };
            // Labels by container, so a `destroy` (the container gone) still carries them.
            let mut known: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            while let Some(env) = stream.next().await {
                let env = match env {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(map_status("events", e))).await;
                        return;
                    }
                };
                let Some(event) = env.event else { continue };
                let Some((id, action)) = decode_event(&env.topic, &event.value) else {
                    continue;
                };
                let labels = if action == "destroy" {
                    known.remove(&id).unwrap_or_default()
                } else {
                    match rt.get_container(&id).await {
                        Ok(c) => {
                            let l: BTreeMap<String, String> = c.labels.into_iter().collect();
                            known.insert(id.clone(), l.clone());
                            l
                        }
                        Err(_) => known.get(&id).cloned().unwrap_or_default(),
                    }
                };
                if labels.get(&key) != Some(&value) {
                    continue;
                }
                let labels = labels
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("mofang."))
                    .collect();
                if tx
                    .send(Ok(RuntimeEvent { id, action, labels }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// The container and Docker-style action of a containerd event; None for events the agent
/// does not act on (an exec's exit, a task's delete).
fn decode_event(topic: &str, value: &[u8]) -> Option<(String, String)> {
    use containerd_client::events::{
        ContainerDelete, TaskExit, TaskOom, TaskPaused, TaskResumed, TaskStart,
    };
    match topic {
        "/tasks/exit" => {
            let e = TaskExit::decode(value).ok()?;
            // The init process's id is the container's; an exec's exit is not a death.
            (e.id == e.container_id).then(|| (e.container_id, "die".into()))
        }
        "/tasks/start" => Some((TaskStart::decode(value).ok()?.container_id, "start".into())),
        "/tasks/oom" => Some((TaskOom::decode(value).ok()?.container_id, "oom".into())),
        "/tasks/paused" => Some((TaskPaused::decode(value).ok()?.container_id, "pause".into())),
        "/tasks/resumed" => Some((
            TaskResumed::decode(value).ok()?.container_id,
            "unpause".into(),
        )),
        "/containers/delete" => Some((ContainerDelete::decode(value).ok()?.id, "destroy".into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Mount;
    use std::path::Path;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "mofang-db-0".into(),
            image: "mofang/mariadb:10.11".into(),
            args: vec![],
            env: vec!["A=1".into()],
            labels: BTreeMap::from([("mofang.node".into(), "n1".into())]),
            mounts: vec![
                Mount {
                    source: "/data/db-0".into(),
                    target: "/var/lib/mysql".into(),
                    read_only: false,
                },
                Mount {
                    source: "/run/mofang/db-0".into(),
                    target: "/etc/mofang".into(),
                    read_only: true,
                },
            ],
            network: Network::Named("mofang".into()),
            publish: None,
            cpus: 0.5,
            memory_bytes: 256 << 20,
            pids_limit: 2048,
            cap_add: vec!["CHOWN".into()],
            user: "999:999".into(),
            stop_grace: Duration::from_secs(30),
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/usr/bin/tini".into(), "--".into(), "/entry".into()]),
            cmd: None,
            env: Some(vec!["PATH=/usr/bin".into()]),
            working_dir: None,
        }
    }

    #[test]
    fn names_are_normalized_as_containerd_keeps_them_and_shown_short() {
        assert_eq!(
            normalize_image("mofang/mariadb:10.11"),
            "docker.io/mofang/mariadb:10.11"
        );
        assert_eq!(normalize_image("redis"), "docker.io/library/redis:latest");
        assert_eq!(
            normalize_image("reg.local:5000/a/b:1"),
            "reg.local:5000/a/b:1"
        );
        assert_eq!(
            familiar_image("docker.io/mofang/mariadb:10.11"),
            "mofang/mariadb:10.11"
        );
    }

    #[test]
    fn the_chain_id_of_one_layer_is_its_diff_id_and_then_hashes_on() {
        assert_eq!(chain_id(&["sha256:a".into()]).as_deref(), Some("sha256:a"));
        let two = chain_id(&["sha256:a".into(), "sha256:b".into()]).unwrap_or_default();
        use sha2::Digest;
        let want = hex::encode(sha2::Sha256::digest(b"sha256:a sha256:b"));
        assert_eq!(two, format!("sha256:{want}"));
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn the_runtime_spec_carries_the_limits_and_the_hardening() {
        let netns = PathBuf::from("/var/run/netns/mofang-mofang-db-0");
        let oci = runtime_spec(
            &spec(),
            &image(),
            Some(&netns),
            "/mofang/mofang-db-0",
            Path::new("/s/etc/mofang-db-0"),
        )
        .expect("spec");
        let v = serde_json::to_value(&oci).expect("json");
        let p = &v["process"];
        assert_eq!(p["user"]["uid"], 999);
        assert_eq!(p["user"]["gid"], 999);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(
            p["args"],
            serde_json::json!(["/usr/bin/tini", "--", "/entry"])
        );
        assert_eq!(p["env"], serde_json::json!(["PATH=/usr/bin", "A=1"]));
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(
                p["capabilities"][set],
                serde_json::json!(["CAP_CHOWN"]),
                "{set}"
            );
        }
        let r = &v["linux"]["resources"];
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["memory"]["limit"], 256 << 20);
        assert_eq!(r["memory"]["swap"], 256 << 20);
        assert_eq!(r["pids"]["limit"], 2048);
        assert_eq!(r["devices"][0]["allow"], false);
        assert_eq!(v["linux"]["cgroupsPath"], "/mofang/mofang-db-0");
        let mounts = v["mounts"].as_array().expect("mounts");
        let config = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/mofang")
            .expect("config mount");
        assert!(config["options"]
            .as_array()
            .expect("options")
            .contains(&"ro".into()));
        let data = mounts
            .iter()
            .find(|m| m["destination"] == "/var/lib/mysql")
            .expect("data mount");
        assert!(data["options"]
            .as_array()
            .expect("options")
            .contains(&"rw".into()));
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .expect("hosts");
        assert_eq!(hosts["source"], "/s/etc/mofang-db-0/hosts");
        assert_eq!(netns_of(&oci), Some(netns));
        assert_eq!(limits_of(&oci), (0.5, 256 << 20));
    }

    #[test]
    fn on_the_host_network_the_spec_joins_no_namespace() {
        let mut s = spec();
        s.network = Network::Host;
        let oci = runtime_spec(&s, &image(), None, "/mofang/x", Path::new("/e")).expect("spec");
        assert_eq!(netns_of(&oci), None);
        let v = serde_json::to_value(&oci).expect("json");
        let kinds: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .expect("ns")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert!(!kinds.contains(&"network"), "{kinds:?}");
    }

    #[test]
    fn a_user_that_is_not_numeric_is_refused() {
        let mut s = spec();
        s.user = "mysql".into();
        assert!(runtime_spec(&s, &image(), None, "/x", Path::new("/e")).is_err());
        assert_eq!(parse_user("999:998"), Some((999, 998)));
        assert_eq!(parse_user("999"), Some((999, 999)));
    }

    #[test]
    fn the_hostname_resolves_to_the_members_address() {
        let h = hosts_file("mofang-db-0", Some("10.213.0.5"));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.213.0.5\tmofang-db-0\n"));
        assert!(hosts_file("x", None).contains("127.0.1.1\tx\n"));
    }

    /// An OOM kill is what the task's cgroup counted, and nothing else: a `kill -9` by hand
    /// exits 137 too, and counts nothing (decision 160).
    #[test]
    fn a_run_saw_an_oom_kill_when_its_cgroup_counted_one() {
        assert!(oom_kill_in_run(Some(1)));
        assert!(oom_kill_in_run(Some(3)));
        assert!(!oom_kill_in_run(Some(0)), "killed by hand");
        assert!(!oom_kill_in_run(None), "cgroup gone or no counter");
    }

    #[test]
    fn a_task_cgroup_is_under_the_configured_parent_or_the_namespace() {
        assert_eq!(cgroups_path(None, "mofang", "db-0"), "/mofang/db-0");
        assert_eq!(
            cgroups_path(Some("/db/members"), "mofang", "db-0"),
            "/db/members/db-0"
        );
        assert_eq!(cgroups_path(Some("/db/"), "mofang", "db-0"), "/db/db-0");
    }

    #[test]
    fn the_task_cgroup_is_the_specs() {
        let oci = runtime_spec(
            &spec(),
            &image(),
            None,
            "/mofang/mofang-db-0",
            Path::new("/e"),
        )
        .expect("spec");
        assert_eq!(
            cgroups_path_of(&oci).as_deref(),
            Some("/mofang/mofang-db-0")
        );
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGBOGUS"), None);
    }

    #[test]
    fn an_exec_exit_is_no_death_but_the_init_process_exit_is() {
        use containerd_client::events::TaskExit;
        let init = TaskExit {
            container_id: "c".into(),
            id: "c".into(),
            ..Default::default()
        };
        let exec = TaskExit {
            container_id: "c".into(),
            id: "exec-1".into(),
            ..Default::default()
        };
        assert_eq!(
            decode_event("/tasks/exit", &init.encode_to_vec()),
            Some(("c".into(), "die".into()))
        );
        assert_eq!(decode_event("/tasks/exit", &exec.encode_to_vec()), None);
    }
}
