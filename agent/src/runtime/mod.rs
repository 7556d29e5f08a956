//! The container runtime seam: what the agent needs from Docker (or containerd), and nothing
//! of either leaks through it. `DockerRuntime` is the implementation on bollard,
//! `ContainerdRuntime` the one on containerd's gRPC API (members networked through CNI).

mod cni;
mod containerd;
mod docker;
mod piped;

pub use cni::Cni;
pub use containerd::{normalize_image, ContainerdOptions, ContainerdRuntime};
pub use docker::DockerRuntime;
pub use piped::{exec_piped, PipeDir};

use async_trait::async_trait;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of a container runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The runtime's daemon cannot be reached (socket missing, daemon down).
    #[error("container runtime unreachable: {0}")]
    Unreachable(String),
    /// No such container.
    #[error("container {0} not found")]
    NotFound(String),
    /// The image is not present locally (no registry is assumed).
    #[error(
        "image {0} not present: build it with packaging/images/build \
         (on containerd, import it with packaging/images/containerd-import)"
    )]
    ImageMissing(String),
    /// The runtime refused or failed a call.
    #[error("container runtime: {0}")]
    Api(String),
}

/// Result of runtime calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How the container is attached to the network.
#[derive(Debug, Clone, PartialEq)]
pub enum Network {
    /// The host's network namespace; the server listens on `port` of the host.
    Host,
    /// A named Docker network (bridge/macvlan/ipvlan); the container gets its own IP there.
    Named(String),
}

/// Everything needed to create one container. Built by the engine adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name (unique on the host).
    pub name: String,
    /// Image reference, e.g. `mofang/mariadb:10.11`.
    pub image: String,
    /// Extra arguments to the image's entrypoint.
    pub args: Vec<String>,
    /// Environment (`KEY=VALUE`). Never secrets: they live in mounted 0600 files.
    pub env: Vec<String>,
    /// Labels; must include the `mofang.*` ownership labels.
    pub labels: BTreeMap<String, String>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Network attachment.
    pub network: Network,
    /// Publish the container port on this host address:port (bridge networks only).
    pub publish: Option<(String, u16, u16)>,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// Maximum number of processes/threads.
    pub pids_limit: i64,
    /// Linux capabilities kept; every other one is dropped.
    pub cap_add: Vec<String>,
    /// `uid:gid` the process runs as (never root).
    pub user: String,
    /// Seconds Docker waits after SIGTERM on stop.
    pub stop_grace: Duration,
}

/// The lifecycle state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused (frozen).
    Paused,
    /// Restarting (should not happen: restart policy is `no`).
    Restarting,
    /// Exited or dead.
    Exited,
    /// Being removed or unknown.
    Other,
}

impl ContainerState {
    /// Its processes exist (running or frozen): it has cgroup files, memory in use and an
    /// address. Metrics keep reporting a paused container, as cAdvisor does.
    pub fn has_processes(self) -> bool {
        matches!(self, ContainerState::Running | ContainerState::Paused)
    }
}

/// What the agent knows of a container after an inspect or list.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name without the leading '/'.
    pub name: String,
    /// Image reference as created.
    pub image: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// State.
    pub state: ContainerState,
    /// Exit code when exited.
    pub exit_code: Option<i64>,
    /// It has exited, and the kernel's OOM killer killed one of its processes (the main one
    /// or another) during the run that ended: Docker's `State.OOMKilled`. False while it runs
    /// again (decision 160).
    pub oom_killed: bool,
    /// PID of the main process on the host, when running.
    pub pid: Option<u32>,
    /// IP addresses per attached network.
    pub ips: BTreeMap<String, String>,
    /// Host ports published for container ports (`container port -> host port`).
    pub published: BTreeMap<u16, u16>,
    /// When the container last started (RFC 3339), when known.
    pub started_at: Option<String>,
    /// Its CPU limit in cores (CFS quota over period; 0: none or unknown).
    pub cpus: f64,
    /// Its memory limit in bytes (0: none or unknown).
    pub memory_bytes: i64,
}

/// [`ContainerInfo::oom_killed`] from a container's state and whether its last run saw an OOM
/// kill (decision 160). Only an exited container reports one: Docker keeps `OOMKilled` of the
/// previous exit while the container runs again, containerd's count starts afresh with each
/// start, and the agent asks only of a container that has stopped.
pub(crate) fn oom_killed_on_exit(state: ContainerState, oom_kill_in_run: bool) -> bool {
    state == ContainerState::Exited && oom_kill_in_run
}

/// What a listing says of a container without inspecting it: enough to know which members
/// have a container and whether an inspected copy is still current.
#[derive(Debug, Clone, PartialEq)]
pub struct Brief {
    /// Full container id.
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// State.
    pub state: ContainerState,
}

/// Output of a command run inside a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// Exit code of the command.
    pub exit_code: i64,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A command running inside a container whose standard output is read as it comes
/// ([`ContainerRuntime::exec_stream`]).
pub struct ExecStream {
    /// Standard output, chunk by chunk; ends when the command closes it. Reading slowly
    /// slows the command down (bounded buffer): nothing is staged.
    pub stdout: BoxStream<'static, Result<bytes::Bytes>>,
    /// The exit code and the standard error (its last 64 KiB), once the output has ended.
    pub done: tokio::sync::oneshot::Receiver<Result<ExecOutput>>,
}

impl std::fmt::Debug for ExecStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStream").finish_non_exhaustive()
    }
}

/// A container run once for a command and removed (a restore's unpack and prepare): the
/// member's own image, its volume mounted, no network.
#[derive(Debug, Clone, PartialEq)]
pub struct OneShot {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// The command (replaces the image's entrypoint).
    pub cmd: Vec<String>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// `uid:gid` it runs as.
    pub user: String,
    /// Labels (the `mofang.*` ownership labels).
    pub labels: BTreeMap<String, String>,
}

/// What a one-shot container reads on its standard input.
pub type Input = BoxStream<'static, std::result::Result<bytes::Bytes, String>>;

/// A lifecycle event of a container (from the runtime's event stream).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeEvent {
    /// Container id.
    pub id: String,
    /// `start`, `die`, `oom`, `stop`, `kill`, `destroy`, `pause`, `unpause`, ...
    pub action: String,
    /// The container's labels at the time of the event.
    pub labels: BTreeMap<String, String>,
}

/// What [`ready_events`] took from a stream without waiting.
#[derive(Debug, Default)]
pub struct Ready {
    /// The events that were waiting.
    pub events: Vec<RuntimeEvent>,
    /// The stream failed or ended meanwhile: events may be lost, open a new one.
    pub broken: bool,
}

/// The events already waiting on `events`, taken without waiting: after one arrives, the rest
/// of its burst (a container's create, start, ... or fifty members started at once) is
/// handled in the same turn. A consumer that took one event per turn and did a slow thing in
/// each would lag behind a burst for minutes (the metrics inventory did: one full listing per
/// event, minutes of Docker inspections after fifty members were created).
pub fn ready_events(events: &mut BoxStream<'static, Result<RuntimeEvent>>) -> Ready {
    use futures::{FutureExt, StreamExt};
    let mut ready = Ready::default();
    loop {
        match events.next().now_or_never() {
            Some(Some(Ok(ev))) => ready.events.push(ev),
            Some(Some(Err(_))) | Some(None) => {
                ready.broken = true;
                return ready;
            }
            None => return ready,
        }
    }
}

/// The operations the agent needs from a container runtime.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Checks the runtime answers.
    async fn ping(&self) -> Result<()>;
    /// Whether an image is present locally.
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// Creates (does not start) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;
    /// Starts a created or exited container.
    async fn start(&self, id: &str) -> Result<()>;
    /// Stops with SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    /// Sends a signal to the container's main process.
    async fn kill(&self, id: &str, signal: &str) -> Result<()>;
    /// Removes a stopped container (`force` also kills a running one).
    async fn remove(&self, id: &str, force: bool) -> Result<()>;
    /// Removes a member's container (killing it if it runs) to create it again at once, on
    /// another image (an upgrade): what holds the member's address (Docker's holder,
    /// containerd's network namespace) stays, so the new container has the same address.
    /// Runtimes without such a holder remove as `remove` does.
    async fn remove_keeping_address(&self, id: &str) -> Result<()> {
        self.remove(id, true).await
    }
    /// Inspects one container.
    async fn inspect(&self, id: &str) -> Result<ContainerInfo>;
    /// Changes a container's CPU (cores) and memory (bytes, swap none beyond it) limits,
    /// running or not (`resize`, issue 17): the cgroup takes them at once.
    async fn update_limits(&self, id: &str, cpus: f64, memory_bytes: i64) -> Result<()>;
    /// Lists containers (running or not) carrying every given `key=value` label (an empty
    /// value matches any value of the key).
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>>;
    /// Lists as [`Self::list`] does, without inspecting each container: one call to the
    /// runtime however many containers match (the supervisor's sweep, the metrics
    /// inventory's check for changes). A runtime whose listing holds no state inspects.
    async fn list_brief(&self, labels: &[(&str, &str)]) -> Result<Vec<Brief>> {
        Ok(self
            .list(labels)
            .await?
            .into_iter()
            .map(|c| Brief {
                id: c.id,
                labels: c.labels,
                state: c.state,
            })
            .collect())
    }
    /// Runs a command in a running container as `user` and waits for it.
    async fn exec(&self, id: &str, cmd: &[&str], user: Option<&str>) -> Result<ExecOutput>;
    /// Runs a command in a running container as `user`, its standard output streamed (a
    /// backup: `mariadb-backup --stream`, an RDB file). A runtime that cannot stream says so.
    async fn exec_stream(&self, id: &str, cmd: &[&str], user: Option<&str>) -> Result<ExecStream> {
        let _ = (cmd, user);
        Err(Error::Api(format!(
            "this runtime cannot stream a command's output (container {id})"
        )))
    }
    /// Runs `spec` to its end with `input` fed to its standard input, then removes it; the exit
    /// code and the last 64 KiB of its output. An input that fails is an error whatever the
    /// command did with what it got.
    async fn run_once(&self, spec: &OneShot, input: Input) -> Result<ExecOutput> {
        let _ = input;
        Err(Error::Api(format!(
            "this runtime cannot run one-shot containers ({})",
            spec.name
        )))
    }
    /// A stream of container events for containers carrying the given label.
    fn events(&self, label: (&str, &str)) -> BoxStream<'static, Result<RuntimeEvent>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn ev(id: &str) -> Result<RuntimeEvent> {
        Ok(RuntimeEvent {
            id: id.into(),
            action: "start".into(),
            labels: BTreeMap::new(),
        })
    }

    /// A burst is taken whole and nothing waits: the events after it stay on the stream.
    #[tokio::test]
    async fn ready_events_takes_the_burst_and_stops_at_pending() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let mut events = rx.boxed();
        for id in ["a", "b", "c"] {
            tx.unbounded_send(ev(id)).unwrap();
        }
        let ready = ready_events(&mut events);
        let ids: Vec<_> = ready.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(!ready.broken);
        tx.unbounded_send(ev("d")).unwrap();
        assert_eq!(events.next().await.unwrap().unwrap().id, "d");
    }

    /// Only an exited container was OOM-killed; one running again, after an OOM kill, is not.
    #[test]
    fn an_oom_kill_is_reported_of_an_exited_container_only() {
        use ContainerState::*;
        assert!(oom_killed_on_exit(Exited, true));
        assert!(!oom_killed_on_exit(Exited, false));
        for not_exited in [Created, Running, Paused, Restarting, Other] {
            assert!(!oom_killed_on_exit(not_exited, true), "{not_exited:?}");
        }
    }

    /// A stream that failed or ended is reported broken, with what came before it.
    #[tokio::test]
    async fn ready_events_reports_a_broken_stream() {
        let mut ended = futures::stream::iter(vec![ev("a")]).boxed();
        let ready = ready_events(&mut ended);
        assert_eq!(ready.events.len(), 1);
        assert!(ready.broken);
        let mut failed =
            futures::stream::iter(vec![Err(Error::Api("gone".into())), ev("b")]).boxed();
        assert!(ready_events(&mut failed).broken);
    }
}
