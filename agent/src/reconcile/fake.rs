//! Recording fakes for reconcile's unit tests (youki's `TestManager` is the model): a
//! container runtime and a database engine that keep what they were asked and answer from
//! state the test sets. Proof against real Docker and databases is in `tests/`.

use crate::engine::{
    self, ConfigFile, Engine, MemberConfig, Observation, ObservedRole, Secrets, Target,
};
use crate::runtime::{
    self, ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, ExecOutput, RuntimeEvent,
};
use async_trait::async_trait;
use futures::stream::BoxStream;
use mofang_common::EngineKind;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A container runtime in memory that records every call.
#[derive(Default)]
pub struct FakeRuntime {
    containers: Mutex<BTreeMap<String, ContainerInfo>>,
    calls: Mutex<Vec<String>>,
}

impl FakeRuntime {
    /// Calls so far (`create <name>`, `start <id>`, ...), and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.calls))
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
        let mut cs = lock(&self.containers);
        let id = format!("c{}", cs.len() + 1);
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
            },
        );
        Ok(id)
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
        EngineKind::Mariadb
    }

    fn data_dir(&self) -> &'static str {
        "/var/lib/mysql"
    }

    fn render(&self, _m: &MemberConfig, _s: &Secrets) -> Vec<ConfigFile> {
        vec![ConfigFile {
            name: "my.cnf",
            contents: "[mysqld]\n".into(),
        }]
    }

    async fn ping(&self, _at: &Target, _s: &Secrets) -> engine::Result<()> {
        Ok(())
    }

    async fn observe(&self, _at: &Target, _s: &Secrets) -> engine::Result<Observation> {
        let db = lock(&self.0).clone();
        let link_up = db.role == ObservedRole::Replica && db.link_up;
        Ok(Observation {
            role: db.role,
            read_only: db.read_only,
            position: db.position,
            replication_ok: link_up,
            following: db.following,
            // Like the engines: no lag while the link is down.
            lag_seconds: link_up.then_some(db.lag),
            replication_error: None,
            details: BTreeMap::new(),
        })
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
        // MariaDB: a read-only server without replication observes as read-only.
        if db.role == ObservedRole::Primary {
            db.role = ObservedRole::ReadOnly;
        }
        Ok(())
    }

    async fn unfence(&self, _at: &Target, _s: &Secrets) -> engine::Result<()> {
        self.record("unfence".into());
        Ok(())
    }
}
