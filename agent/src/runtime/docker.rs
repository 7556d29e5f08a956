//! `ContainerRuntime` on Docker Engine through bollard. The only file that names bollard types.

use super::{
    Brief, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, Error, ExecOutput,
    ExecStream, Input, Network, OneShot, Result, RuntimeEvent,
};
use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, HostConfig, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::stream::BoxStream;
use futures::StreamExt;
use mofang_common::labels::{self, NETNS_OF};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Docker Engine, reached over its Unix socket (`DOCKER_HOST` is honoured).
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// `--cgroup-parent` of the members' containers; none: Docker's own.
    cgroup_parent: Option<String>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").finish_non_exhaustive()
    }
}

impl DockerRuntime {
    /// Connects to the local Docker Engine and negotiates the API version, so an older engine
    /// (Debian 12 ships 20.10, API 1.41) is spoken to in its own version.
    pub async fn connect() -> Result<Self> {
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(DockerRuntime {
            docker,
            cgroup_parent: None,
        })
    }

    /// The members' containers made under cgroup `parent` (the agent's `member_cgroup_parent`).
    pub fn with_cgroup_parent(mut self, parent: Option<String>) -> Self {
        self.cgroup_parent = parent;
        self
    }
}

fn unreachable(e: BollardError) -> Error {
    let socket = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".into());
    Error::Unreachable(format!("Docker Engine not reachable at {socket}: {e}"))
}

fn map_err(id: &str, e: BollardError) -> Error {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => Error::NotFound(id.to_owned()),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => Error::Api(format!("{id}: {status_code} {message}")),
        BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::HyperResponseError { .. }
        | BollardError::RequestTimeoutError => unreachable(e),
        other => Error::Api(format!("{id}: {other}")),
    }
}

/// The holder a member container joined (`container:<name>` network mode), if any.
fn holder_of(r: &ContainerInspectResponse) -> Option<String> {
    r.host_config
        .as_ref()?
        .network_mode
        .as_deref()?
        .strip_prefix("container:")
        .map(str::to_owned)
}

/// The holder's name for a member container.
fn holder_name(member_container: &str) -> String {
    format!("{member_container}-net")
}

fn port_bindings(spec: &ContainerSpec) -> Option<HashMap<String, Option<Vec<PortBinding>>>> {
    spec.publish.as_ref().map(|(ip, host_port, cport)| {
        HashMap::from([(
            format!("{cport}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some(ip.clone()),
                host_port: Some(if *host_port == 0 {
                    String::new()
                } else {
                    host_port.to_string()
                }),
            }]),
        )])
    })
}

fn exposed_ports(spec: &ContainerSpec) -> Option<Vec<String>> {
    spec.publish
        .as_ref()
        .map(|(_, _, cport)| vec![format!("{cport}/tcp")])
}

impl DockerRuntime {
    /// Makes sure the member's holder runs and returns its name. The holder is a tiny
    /// container (`sleep` under tini, from the member's own image) that owns the member's
    /// network namespace on a Docker network, like a Kubernetes pod's sandbox: when the
    /// database process dies, its address stays up and answers connection attempts with a
    /// reset instead of going silent. Replicas and clients then learn at once that the
    /// server is gone, and a semi-sync replica's `STOP SLAVE` (which first connects to the
    /// old primary to kill its dump thread) no longer waits on a dead address (issue 13,
    /// RTO). A restarted member keeps its address.
    async fn ensure_holder(&self, spec: &ContainerSpec, network: &str) -> Result<String> {
        let name = holder_name(&spec.name);
        match self.docker.inspect_container(&name, None).await {
            Ok(r) => {
                let running = r.state.as_ref().and_then(|s| s.running).unwrap_or(false);
                let same_net = r
                    .host_config
                    .as_ref()
                    .and_then(|h| h.network_mode.as_deref())
                    == Some(network);
                if same_net && running {
                    return Ok(name);
                }
                if same_net && self.docker.start_container(&name, None).await.is_ok() {
                    return Ok(name);
                }
                // On another network, or it cannot start: make it again.
                self.remove_holder(&name).await?;
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(map_err(&name, e)),
        }
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() == labels::NODE || k.as_str() == labels::TEST)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(NETNS_OF.to_owned(), spec.name.clone());
        /// A holder only sleeps: a few MiB and processes are plenty.
        const HOLDER_MEMORY: i64 = 16 * 1024 * 1024;
        let host_config = HostConfig {
            network_mode: Some(network.to_owned()),
            port_bindings: port_bindings(spec),
            cpu_period: Some(100_000),
            cpu_quota: Some(10_000),
            memory: Some(HOLDER_MEMORY),
            memory_swap: Some(HOLDER_MEMORY),
            pids_limit: Some(4),
            cap_drop: Some(vec!["ALL".into()]),
            privileged: Some(false),
            readonly_rootfs: Some(true),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(false),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec![
                "/usr/bin/tini".into(),
                "--".into(),
                "sleep".into(),
                "infinity".into(),
            ]),
            cmd: Some(Vec::new()),
            labels: Some(labels),
            user: Some(spec.user.clone()),
            hostname: Some(spec.name.clone()),
            stop_timeout: Some(1),
            exposed_ports: exposed_ports(spec),
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err(&name, e))?;
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| map_err(&name, e))?;
        Ok(name)
    }

    /// Removes a member's container, and its holder unless `keep_holder` (the member is made
    /// again at once and joins the same holder: same address).
    async fn remove_member(&self, id: &str, force: bool, keep_holder: bool) -> Result<()> {
        let holder = match self.docker.inspect_container(id, None).await {
            Ok(r) => holder_of(&r),
            Err(e) => return Err(map_err(id, e)),
        };
        let opts = RemoveContainerOptions {
            force,
            v: false,
            link: false,
        };
        self.docker
            .remove_container(id, Some(opts))
            .await
            .map_err(|e| map_err(id, e))?;
        if let Some(holder) = holder.filter(|_| !keep_holder) {
            self.remove_holder(&holder).await?;
        }
        Ok(())
    }

    /// Removes a holder; one already gone is fine.
    async fn remove_holder(&self, name: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err(name, e)),
        }
    }
}

fn state_of(s: Option<ContainerStateStatusEnum>) -> ContainerState {
    match s {
        Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            ContainerState::Exited
        }
        _ => ContainerState::Other,
    }
}

/// A listing's state, read as [`state_of`] reads an inspection's.
fn summary_state(s: Option<ContainerSummaryStateEnum>) -> ContainerState {
    match s {
        Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
        Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerSummaryStateEnum::EXITED) | Some(ContainerSummaryStateEnum::DEAD) => {
            ContainerState::Exited
        }
        _ => ContainerState::Other,
    }
}

fn info_of(r: ContainerInspectResponse) -> ContainerInfo {
    let state = r.state.unwrap_or_default();
    let status = state_of(state.status);
    let config = r.config.unwrap_or_default();
    let host = r.host_config.unwrap_or_default();
    let cpus = match (host.cpu_quota, host.cpu_period, host.nano_cpus) {
        (Some(q), Some(p), _) if q > 0 && p > 0 => q as f64 / p as f64,
        (_, _, Some(n)) if n > 0 => n as f64 / 1e9,
        _ => 0.0,
    };
    let net = r.network_settings.unwrap_or_default();
    let ips = net
        .networks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, ep)| {
            ep.ip_address
                .filter(|ip| !ip.is_empty())
                .map(|ip| (name, ip))
        })
        .collect();
    let published = net
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(port, bindings)| {
            let cport = port.split('/').next()?.parse::<u16>().ok()?;
            let hport = bindings?
                .into_iter()
                .find_map(|b| b.host_port?.parse::<u16>().ok())?;
            Some((cport, hport))
        })
        .collect();
    ContainerInfo {
        id: r.id.unwrap_or_default(),
        name: r
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        state: status,
        exit_code: state.exit_code,
        // Docker keeps the flag of the previous exit while the container runs again.
        oom_killed: super::oom_killed_on_exit(status, state.oom_killed.unwrap_or(false)),
        pid: state
            .pid
            .filter(|p| *p > 0)
            .and_then(|p| u32::try_from(p).ok()),
        ips,
        published,
        started_at: state.started_at,
        // Rounded to thousandths of a core, as asked (0.5, not 0.49999).
        cpus: (cpus * 1000.0).round() / 1000.0,
        memory_bytes: host.memory.unwrap_or(0),
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<()> {
        self.docker.ping().await.map(|_| ()).map_err(unreachable)
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(map_err(image, e)),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        if !self.image_exists(&spec.image).await? {
            return Err(Error::ImageMissing(spec.image.clone()));
        }
        let mounts = spec
            .mounts
            .iter()
            .map(|m| bollard::models::Mount {
                source: Some(m.source.to_string_lossy().into_owned()),
                target: Some(m.target.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        // On a Docker network the member joins the network namespace of its holder
        // (labelled [`NETNS_OF`]): its address outlives the database process (see `ensure_holder`).
        let (network_mode, hostname) = match &spec.network {
            Network::Host => ("host".to_owned(), Some(spec.name.clone())),
            Network::Named(n) => (
                format!("container:{}", self.ensure_holder(spec, n).await?),
                None,
            ),
        };
        let on_host = matches!(spec.network, Network::Host);
        let cpu_period = 100_000i64;
        let host_config = HostConfig {
            mounts: Some(mounts),
            network_mode: Some(network_mode),
            port_bindings: if on_host { port_bindings(spec) } else { None },
            // cgroup CFS quota from the requested cores (cAdvisor reports these as spec_cpu_*).
            cpu_period: Some(cpu_period),
            cpu_quota: Some(((spec.cpus * cpu_period as f64) as i64).max(1000)),
            memory: Some(spec.memory_bytes),
            // No swap beyond the memory limit: a database that swaps is a database that lies
            // about latency.
            memory_swap: Some(spec.memory_bytes),
            pids_limit: Some(spec.pids_limit),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.cap_add.clone()),
            privileged: Some(false),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            // The agent is the supervisor: Docker must not restart behind its back.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(false),
            cgroup_parent: self.cgroup_parent.clone(),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: Some(spec.user.clone()),
            hostname,
            // Docker counts whole seconds: round up, never to zero.
            stop_timeout: Some(spec.stop_grace.as_millis().div_ceil(1000).max(1) as i64),
            exposed_ports: if on_host { exposed_ports(spec) } else { None },
            host_config: Some(host_config),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err(&spec.name, e))?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        // A member whose holder stopped (Docker restarted, someone stopped it) cannot start
        // into its namespace: start the holder first.
        let r = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| map_err(id, e))?;
        if let Some(holder) = holder_of(&r) {
            self.docker
                .start_container(&holder, None)
                .await
                .or_else(|e| match e {
                    // 304: already running.
                    BollardError::DockerResponseServerError {
                        status_code: 304, ..
                    } => Ok(()),
                    e => Err(map_err(&holder, e)),
                })?;
        }
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| map_err(id, e))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs() as i32),
            signal: None,
        };
        match self.docker.stop_container(id, Some(opts)).await {
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            r => r.map_err(|e| map_err(id, e)),
        }
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let opts = KillContainerOptions {
            signal: signal.to_owned(),
        };
        self.docker
            .kill_container(id, Some(opts))
            .await
            .map_err(|e| map_err(id, e))
    }

    async fn remove(&self, id: &str, force: bool) -> Result<()> {
        self.remove_member(id, force, false).await
    }

    async fn remove_keeping_address(&self, id: &str) -> Result<()> {
        self.remove_member(id, true, true).await
    }

    async fn update_limits(&self, id: &str, cpus: f64, memory_bytes: i64) -> Result<()> {
        let cpu_period = 100_000i64;
        let body = bollard::models::ContainerUpdateBody {
            cpu_period: Some(cpu_period),
            cpu_quota: Some(((cpus * cpu_period as f64) as i64).max(1000)),
            memory: Some(memory_bytes),
            memory_swap: Some(memory_bytes),
            ..Default::default()
        };
        self.docker
            .update_container(id, body)
            .await
            .map_err(|e| map_err(id, e))
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo> {
        let r = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(|e| map_err(id, e))?;
        let holder = holder_of(&r);
        let mut info = info_of(r);
        if let Some(holder) = holder {
            // The address and published ports belong to the holder's namespace.
            match self.docker.inspect_container(&holder, None).await {
                Ok(h) => {
                    let h = info_of(h);
                    info.ips = h.ips;
                    info.published = h.published;
                }
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(map_err(&holder, e)),
            }
        }
        Ok(info)
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>> {
        let briefs = self.list_brief(labels).await?;
        let mut out = Vec::with_capacity(briefs.len());
        for b in briefs {
            match self.inspect(&b.id).await {
                Ok(info) => out.push(info),
                // Removed between list and inspect.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn list_brief(&self, labels: &[(&str, &str)]) -> Result<Vec<Brief>> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.to_string()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<Vec<_>>(),
        )]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| map_err("list", e))?;
        Ok(summaries
            .into_iter()
            // Holders are this runtime's own detail, never a member.
            .filter(|s| !s.labels.as_ref().is_some_and(|l| l.contains_key(NETNS_OF)))
            .filter_map(|s| {
                Some(Brief {
                    id: s.id?,
                    labels: s.labels.unwrap_or_default().into_iter().collect(),
                    state: summary_state(s.state),
                })
            })
            .collect())
    }

    async fn exec(&self, id: &str, cmd: &[&str], user: Option<&str>) -> Result<ExecOutput> {
        let opts = CreateExecOptions {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            user: user.map(str::to_owned),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(id, opts)
            .await
            .map_err(|e| map_err(id, e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| map_err(id, e))?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(|e| map_err(id, e))? {
                    LogOutput::StdOut { message } => stdout.extend_from_slice(&message),
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    _ => {}
                }
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| map_err(id, e))?;
        Ok(ExecOutput {
            exit_code: inspected.exit_code.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    async fn exec_stream(&self, id: &str, cmd: &[&str], user: Option<&str>) -> Result<ExecStream> {
        /// Standard error kept for the error message.
        const STDERR_KEEP: usize = 64 * 1024;
        let opts = CreateExecOptions {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            user: user.map(str::to_owned),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(id, opts)
            .await
            .map_err(|e| map_err(id, e))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| map_err(id, e))?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(Error::Api(format!("exec in {id} did not attach")));
        };
        // A small bounded channel: the command writes no faster than the reader takes.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes>>(8);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let docker = self.docker.clone();
        let (id, exec_id) = (id.to_owned(), exec.id);
        tokio::spawn(async move {
            let mut stderr: Vec<u8> = Vec::new();
            let mut failed = None;
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(LogOutput::StdOut { message }) => {
                        if tx.send(Ok(message)).await.is_err() {
                            // The reader is gone: stop reading (the exec is left to end).
                            break;
                        }
                    }
                    Ok(LogOutput::StdErr { message }) => {
                        stderr.extend_from_slice(&message);
                        if stderr.len() > 2 * STDERR_KEEP {
                            stderr.drain(..stderr.len() - STDERR_KEEP);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let msg = map_err(&id, e).to_string();
                        let _ = tx.send(Err(Error::Api(msg.clone()))).await;
                        failed = Some(msg);
                        break;
                    }
                }
            }
            drop(tx);
            let result = match failed {
                Some(msg) => Err(Error::Api(msg)),
                None => docker
                    .inspect_exec(&exec_id)
                    .await
                    .map_err(|e| map_err(&id, e))
                    .map(|i| ExecOutput {
                        exit_code: i.exit_code.unwrap_or(-1),
                        stdout: String::new(),
                        stderr: String::from_utf8_lossy(
                            &stderr[stderr.len().saturating_sub(STDERR_KEEP)..],
                        )
                        .into_owned(),
                    }),
            };
            let _ = done_tx.send(result);
        });
        Ok(ExecStream {
            stdout: tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
            done: done_rx,
        })
    }

    async fn run_once(&self, spec: &OneShot, mut input: Input) -> Result<ExecOutput> {
        use tokio::io::AsyncWriteExt;
        /// Output kept for the answer.
        const KEEP: usize = 64 * 1024;
        if !self.image_exists(&spec.image).await? {
            return Err(Error::ImageMissing(spec.image.clone()));
        }
        // A container of this name left by an attempt that was cut short.
        let _ = self.remove(&spec.name, true).await;
        let mounts = spec
            .mounts
            .iter()
            .map(|m| bollard::models::Mount {
                source: Some(m.source.to_string_lossy().into_owned()),
                target: Some(m.target.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.cmd.clone()),
            cmd: Some(vec![]),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: Some(spec.user.clone()),
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(vec!["CHOWN".into(), "DAC_OVERRIDE".into(), "FOWNER".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| map_err(&spec.name, e))?
            .id;
        let result = async {
            let attached = self
                .docker
                .attach_container(
                    &id,
                    Some(AttachContainerOptions {
                        detach_keys: None,
                        logs: false,
                        stream: true,
                        stdin: true,
                        stdout: true,
                        stderr: true,
                    }),
                )
                .await
                .map_err(|e| map_err(&id, e))?;
            self.start(&id).await?;
            let mut stdin = attached.input;
            let mut output = attached.output;
            let feed = async {
                let mut fed = Ok(());
                while let Some(chunk) = input.next().await {
                    let written = match chunk {
                        Ok(c) => stdin
                            .write_all(&c)
                            .await
                            .map_err(|e| format!("writing to {}: {e}", spec.name)),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        fed = Err(e);
                        break;
                    }
                }
                // EOF on the container's standard input (stdin_once), also after a failure, so
                // the command ends.
                let _ = stdin.shutdown().await;
                fed
            };
            let read = async {
                let mut kept: Vec<u8> = Vec::new();
                while let Some(Ok(chunk)) = output.next().await {
                    kept.extend_from_slice(&chunk.into_bytes());
                    if kept.len() > 2 * KEEP {
                        kept.drain(..kept.len() - KEEP);
                    }
                }
                kept
            };
            let (fed, kept) = tokio::join!(feed, read);
            let mut wait = self
                .docker
                .wait_container(&id, None::<WaitContainerOptions>);
            let exit_code = match wait.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(map_err(&id, e)),
                None => -1,
            };
            if let Err(e) = fed {
                return Err(Error::Api(format!("{}: input failed: {e}", spec.name)));
            }
            let text = String::from_utf8_lossy(&kept[kept.len().saturating_sub(KEEP)..]);
            Ok(ExecOutput {
                exit_code,
                stdout: text.into_owned(),
                stderr: String::new(),
            })
        }
        .await;
        let _ = self.remove(&id, true).await;
        result
    }

    fn events(&self, label: (&str, &str)) -> BoxStream<'static, Result<RuntimeEvent>> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("{}={}", label.0, label.1)]),
        ]);
        let opts = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        self.docker
            .events(Some(opts))
            // An exec's events (`exec_create: ...`, `exec_start`, `exec_die`) say nothing of
            // the container's state: every backup, upgrade step or certificate reload would
            // otherwise cost a full pass and a new inventory.
            .filter(|ev| {
                let exec = matches!(ev, Ok(e) if e.action.as_deref().is_some_and(|a| a.starts_with("exec_")));
                futures::future::ready(!exec)
            })
            .map(|ev| {
                let ev = ev.map_err(|e| map_err("events", e))?;
                let actor = ev.actor.unwrap_or_default();
                let attrs = actor.attributes.unwrap_or_default();
                // Event attributes carry the labels plus name/image; keep the labels we use.
                let labels: BTreeMap<String, String> = attrs
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("mofang."))
                    .collect();
                Ok(RuntimeEvent {
                    id: actor.id.unwrap_or_default(),
                    action: ev.action.unwrap_or_default(),
                    labels,
                })
            })
            .boxed()
    }
}
