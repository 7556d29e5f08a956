//! Recording fakes for reconcile's unit tests (youki's `TestManager` is the model): a
//! container runtime and a database engine that keep what they were asked and answer from
//! state the test sets, and a [`Rig`] that runs passes on them. Proof against real Docker
//! and databases is in `tests/`.

use super::{reconcile_member, Shared, WorkerMemo};
use crate::config::AgentConfig;
use crate::engine::{
    self, ConfigFile, Engine, MemberConfig, Observation, ObservedRole, Secrets, Target,
};
use crate::link::Lease;
use crate::runtime::{
    self, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, ExecOutput, RuntimeEvent,
};
use crate::state::LocalState;
use crate::volume::VolumeManager;
use async_trait::async_trait;
use futures::stream::BoxStream;
use mofang_common::proto::{Assignment, MemberStatus};
use mofang_common::rotation::Account;
use mofang_common::EngineKind;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A container runtime in memory that records every call.
#[derive(Default)]
pub struct FakeRuntime {
    containers: Mutex<BTreeMap<String, ContainerInfo>>,
    calls: Mutex<Vec<String>>,
    created: Mutex<Vec<ContainerSpec>>,
}

impl FakeRuntime {
    /// Calls so far (`create <name>`, `start <id>`, ...), and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.calls))
    }

    /// Specs of the containers created so far, in order.
    pub fn created(&self) -> Vec<ContainerSpec> {
        lock(&self.created).clone()
    }

    /// Sets the state of the one container (as if it died, or was paused).
    pub fn set_state(&self, state: ContainerState, exit_code: Option<i64>) {
        for c in lock(&self.containers).values_mut() {
            c.state = state;
            c.exit_code = exit_code;
        }
    }

    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn ping(&self) -> runtime::Result<()> {
        Ok(())
    }

    async fn image_exists(&self, _image: &str) -> runtime::Result<bool> {
        Ok(true)
    }

    async fn create(&self, spec: &ContainerSpec) -> runtime::Result<String> {
        self.record(format!("create {}", spec.name));
        lock(&self.created).push(spec.clone());
        let mut cs = lock(&self.containers);
        let id = format!("c{}", lock(&self.created).len());
        cs.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                image: spec.image.clone(),
                labels: spec.labels.clone(),
                state: ContainerState::Created,
                exit_code: None,
                oom_killed: false,
                pid: None,
                ips: BTreeMap::new(),
                published: BTreeMap::new(),
                started_at: None,
                cpus: spec.cpus,
                memory_bytes: spec.memory_bytes,
            },
        );
        Ok(id)
    }

    async fn update_limits(&self, id: &str, cpus: f64, memory_bytes: i64) -> runtime::Result<()> {
        self.record(format!("update {id} {cpus} {}", memory_bytes >> 20));
        let mut cs = lock(&self.containers);
        let c = cs
            .get_mut(id)
            .ok_or_else(|| runtime::Error::NotFound(id.to_owned()))?;
        c.cpus = cpus;
        c.memory_bytes = memory_bytes;
        Ok(())
    }

    async fn start(&self, id: &str) -> runtime::Result<()> {
        self.record(format!("start {id}"));
        let mut cs = lock(&self.containers);
        let c = cs
            .get_mut(id)
            .ok_or_else(|| runtime::Error::NotFound(id.to_owned()))?;
        c.state = ContainerState::Running;
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> runtime::Result<()> {
        self.record(format!("stop {id}"));
        if let Some(c) = lock(&self.containers).get_mut(id) {
            c.state = ContainerState::Exited;
        }
        Ok(())
    }

    async fn kill(&self, id: &str, signal: &str) -> runtime::Result<()> {
        self.record(format!("kill {id} {signal}"));
        if signal == "KILL" {
            if let Some(c) = lock(&self.containers).get_mut(id) {
                c.state = ContainerState::Exited;
                c.exit_code = Some(137);
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str, _force: bool) -> runtime::Result<()> {
        self.record(format!("remove {id}"));
        lock(&self.containers).remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> runtime::Result<ContainerInfo> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| runtime::Error::NotFound(id.to_owned()))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> runtime::Result<Vec<ContainerInfo>> {
        Ok(lock(&self.containers)
            .values()
            .filter(|c| {
                labels
                    .iter()
                    .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect())
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        _user: Option<&str>,
    ) -> runtime::Result<ExecOutput> {
        self.record(format!("exec {id} {}", cmd.first().copied().unwrap_or("")));
        Ok(ExecOutput {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    fn events(&self, _label: (&str, &str)) -> BoxStream<'static, runtime::Result<RuntimeEvent>> {
        Box::pin(futures::stream::pending())
    }
}

/// What the fake database is and what it was asked.
#[derive(Debug, Clone)]
pub struct FakeDb {
    /// Role as the server sees itself.
    pub role: ObservedRole,
    /// Refuses application writes.
    pub read_only: bool,
    /// The primary it replicates from.
    pub following: Option<String>,
    /// Replication position.
    pub position: String,
    /// Engine calls, in order (`promote`, `fence`, `replicate_from 10.0.0.9:3306`, ...).
    pub calls: Vec<String>,
    /// When set, the server keeps following this address whatever it is told.
    pub stuck_following: Option<String>,
    /// A replica's link to its primary is up.
    pub link_up: bool,
    /// A replica's lag in seconds while its link is up.
    pub lag: i64,
    /// The server answers pings (else they fail like a refused connection).
    pub answering: bool,
    /// The engine: a Redis fence is a write pause that outlives a change of role.
    pub kind: EngineKind,
    /// Redis: application writes are paused (`CLIENT PAUSE WRITE`).
    pub paused: bool,
    /// A new replica's server may start before its primary's address is known (MariaDB).
    pub starts_early: bool,
    /// Server parameters as it runs them (`set_parameter` changes them).
    pub parameters: BTreeMap<String, String>,
}

impl Default for FakeDb {
    fn default() -> Self {
        // A MariaDB member starts read-only, replicating from nobody.
        FakeDb {
            role: ObservedRole::ReadOnly,
            read_only: true,
            following: None,
            position: "0-1-5".into(),
            calls: Vec::new(),
            stuck_following: None,
            link_up: true,
            lag: 0,
            answering: true,
            kind: EngineKind::Mariadb,
            paused: false,
            starts_early: false,
            parameters: BTreeMap::new(),
        }
    }
}

/// An engine whose server is [`FakeDb`].
#[derive(Clone, Default)]
pub struct FakeEngine(pub Arc<Mutex<FakeDb>>);

impl FakeEngine {
    /// Engine calls so far, and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.0).calls)
    }

    fn record(&self, call: String) {
        lock(&self.0).calls.push(call);
    }
}

#[async_trait]
impl Engine for FakeEngine {
    fn kind(&self) -> EngineKind {
        lock(&self.0).kind
    }

    fn data_dir(&self) -> &'static str {
        "/var/lib/mysql"
    }

    fn starts_before_primary_known(&self) -> bool {
        lock(&self.0).starts_early
    }

    fn upgrade_command(&self) -> Option<Vec<&'static str>> {
        Some(vec!["mariadb-upgrade"])
    }

    fn render(&self, _m: &MemberConfig, _s: &Secrets) -> Vec<ConfigFile> {
        vec![ConfigFile {
            name: "my.cnf",
            contents: "[mysqld]\n".into(),
        }]
    }

    async fn ping(&self, at: &Target, _s: &Secrets) -> engine::Result<()> {
        if lock(&self.0).answering {
            return Ok(());
        }
        Err(engine::Error::Server {
            engine: "fake",
            addr: at.to_string(),
            message: "connection refused".into(),
        })
    }

    async fn observe(&self, _at: &Target, _s: &Secrets) -> engine::Result<Observation> {
        let db = lock(&self.0).clone();
        let link_up = db.role == ObservedRole::Replica && db.link_up;
        Ok(Observation {
            role: db.role,
            read_only: db.read_only,
            position: db.position,
            replication_ok: link_up,
            // A server stuck on another primary shows it, whatever it was told.
            following: db.stuck_following.or(db.following),
            // Like the engines: no lag while the link is down.
            lag_seconds: link_up.then_some(db.lag),
            replication_error: None,
            details: BTreeMap::new(),
        })
    }

    async fn probe(&self, at: &Target, _s: &Secrets) -> engine::Result<engine::Probe> {
        self.record("probe".into());
        let db = lock(&self.0).clone();
        if !db.answering {
            return Err(engine::Error::Server {
                engine: "fake",
                addr: at.to_string(),
                message: "connection refused".into(),
            });
        }
        let link_up = db.role == ObservedRole::Replica && db.link_up;
        Ok(engine::Probe {
            replicating: link_up,
            following: db.stuck_following.or(db.following),
            position: db.position,
            lag_seconds: link_up.then_some(db.lag),
        })
    }

    async fn parameters(
        &self,
        _at: &Target,
        _s: &Secrets,
    ) -> engine::Result<BTreeMap<String, String>> {
        Ok(lock(&self.0).parameters.clone())
    }

    async fn set_parameter(
        &self,
        _at: &Target,
        _s: &Secrets,
        name: &str,
        value: &str,
    ) -> engine::Result<()> {
        self.record(format!("set_parameter {name}={value}"));
        lock(&self.0)
            .parameters
            .insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    async fn promote(
        &self,
        _at: &Target,
        _s: &Secrets,
        _replicas: u32,
        after: Option<&str>,
    ) -> engine::Result<()> {
        self.record(format!("promote after={after:?}"));
        let mut db = lock(&self.0);
        db.role = ObservedRole::Primary;
        db.read_only = false;
        db.following = None;
        // Like the Redis engine: a promoted member takes writes.
        db.paused = false;
        Ok(())
    }

    async fn replicate_from(
        &self,
        _at: &Target,
        _s: &Secrets,
        primary: &Target,
    ) -> engine::Result<()> {
        self.record(format!("replicate_from {primary}"));
        let mut db = lock(&self.0);
        db.role = ObservedRole::Replica;
        db.read_only = true;
        db.following = Some(
            db.stuck_following
                .clone()
                .unwrap_or_else(|| primary.to_string()),
        );
        Ok(())
    }

    async fn fence(&self, _at: &Target, _s: &Secrets) -> engine::Result<()> {
        self.record("fence".into());
        let mut db = lock(&self.0);
        db.read_only = true;
        db.paused = db.kind == EngineKind::Redis;
        // MariaDB: a read-only server without replication observes as read-only.
        if db.role == ObservedRole::Primary {
            db.role = ObservedRole::ReadOnly;
        }
        Ok(())
    }

    async fn unfence(&self, _at: &Target, _s: &Secrets) -> engine::Result<()> {
        self.record("unfence".into());
        lock(&self.0).paused = false;
        Ok(())
    }

    async fn set_passwords(
        &self,
        _at: &Target,
        _s: &Secrets,
        account: Account,
        passwords: &[&str],
    ) -> engine::Result<bool> {
        // Recorded by count: a password never appears in a test's output.
        self.record(format!("set_passwords {account} x{}", passwords.len()));
        Ok(true)
    }

    async fn use_repl_password(&self, _at: &Target, _s: &Secrets) -> engine::Result<()> {
        self.record("use_repl_password".into());
        Ok(())
    }
}

/// An agent on one node with a fake runtime and engine, a real volume manager and state
/// directory in a temporary directory, host networking.
pub struct Rig {
    /// What the workers share.
    pub sh: Arc<Shared>,
    /// The runtime behind `sh`.
    pub rt: Arc<FakeRuntime>,
    /// The engine behind `sh`.
    pub db: FakeEngine,
    /// The member worker's memory across passes.
    pub memo: WorkerMemo,
    _dir: tempfile::TempDir,
}

/// A rig whose scheduler lease lasts `lease_ttl`.
pub fn rig(lease_ttl: Duration) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let text = format!(
        "node = \"n1\"\nstate_dir = \"{}\"\nrun_dir = \"{}\"\nnetwork = \"host\"\n\
         advertise_address = \"127.0.0.1\"\n\
         [[disks]]\npath = \"{}\"\nclass = \"ssd\"\ncapacity_mib = 4096\n\
         [tls]\nca_file = \"/unused/ca.pem\"\n",
        root.join("state").display(),
        root.join("run").display(),
        root.join("disk").display()
    );
    let cfg = AgentConfig::parse(&text, &root.join("agent.toml")).expect("config");
    let volumes = Arc::new(VolumeManager::open(cfg.disks.clone()).expect("volumes"));
    let state = LocalState::open(&cfg.state_dir, &cfg.key_file(), &cfg.run_dir).expect("state");
    let rt = Arc::new(FakeRuntime::default());
    let db = FakeEngine::default();
    let (_tx, rx) = watch::channel(None);
    let mut sh = Shared::new(cfg, rt.clone(), volumes, state, Lease::new(lease_ttl), rx);
    let engine = db.clone();
    if let Some(s) = Arc::get_mut(&mut sh) {
        s.engines = Arc::new(move |_, _| Some(Box::new(engine.clone()) as Box<dyn Engine>));
    }
    Rig {
        sh,
        rt,
        db,
        memo: WorkerMemo::default(),
        _dir: dir,
    }
}

/// Member `db-0` of MariaDB instance `db` (two replicas) in `role` at `epoch`.
pub fn assignment(role: &str, epoch: u64, primary: &str) -> Assignment {
    let pw = "Abcdefghijklmnop0123456789";
    Assignment {
        member: "db-0".into(),
        instance: "db".into(),
        engine: "mariadb".into(),
        version: "10.11".into(),
        role: role.into(),
        epoch,
        cpu: 0.5,
        memory_bytes: 256 << 20,
        disk_bytes: 64 << 20,
        primary_address: primary.into(),
        secrets: HashMap::from(
            ["admin", "repl", "monitor", "app"].map(|k| (k.to_owned(), pw.to_owned())),
        ),
        settings: HashMap::from([("replicas".to_owned(), "2".to_owned())]),
        ..Default::default()
    }
}

impl Rig {
    /// One whole pass, as after a container event (always a full pass); the status it left.
    pub async fn pass(&mut self, a: &Assignment) -> MemberStatus {
        reconcile_member(&self.sh, a, &mut self.memo, true)
            .await
            .expect("reconcile");
        self.status()
    }

    /// One pass on the steady cadence (no container event: a probe when the member is in
    /// good order and nothing changed); the action and the status it left.
    pub async fn steady_pass(&mut self, a: &Assignment) -> (super::Action, MemberStatus) {
        let action = reconcile_member(&self.sh, a, &mut self.memo, false)
            .await
            .expect("reconcile");
        (action, self.status())
    }

    /// The member's status as the heartbeat would carry it.
    pub fn status(&self) -> MemberStatus {
        self.sh
            .statuses
            .lock()
            .expect("statuses")
            .get("db-0")
            .cloned()
            .expect("a status")
    }
}
