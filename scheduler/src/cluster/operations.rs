//! Day-2 operations carried out (issue 17): stored as metadata `operation/<id>`, every change
//! written before it is acted on, driven by the leader one step at a time with
//! [`crate::ops::next`] deciding, and taken over by a new leader where the old one stopped.

use super::{event, lock, Cluster, Error, Inner, Result};
use crate::model::{now_ms, EventKind, Instance};
use crate::model::{MemberRecord, Resources};
use crate::ops::batch::{self, Batch, BatchItem};
use crate::ops::{
    self, MemberNow, Next, OpArgs, OpKind, OpState, OpStep, Operation, StepAction, StepState,
};
use crate::placement::{self, NodeView};
use mofang_common::position::Position;
use mofang_common::{ObservedRole, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// Metadata prefix of operation records.
pub(super) const PREFIX: &str = "operation/";
/// Metadata prefix of batch records.
pub(super) const BATCH_PREFIX: &str = "batch/";

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn parse(value: &str) -> Result<Operation> {
    serde_json::from_str(value)
        .map_err(|e| Error::Invalid(format!("a stored operation does not parse: {e}")))
}

impl Cluster {
    /// Loads the operations not finished (on taking charge).
    pub(super) async fn load_operations(&self) -> Result<()> {
        let mut open = std::collections::BTreeMap::new();
        for (_, value) in self.store.meta_with_prefix(PREFIX).await? {
            match parse(&value) {
                Ok(op) if !op.state.is_terminal() => {
                    open.insert(op.id.clone(), op);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "skipping an operation record"),
            }
        }
        if !open.is_empty() {
            info!(
                operations = open.len(),
                "resuming operations left running by the previous leader"
            );
        }
        let mut batches = std::collections::BTreeMap::new();
        for (_, value) in self.store.meta_with_prefix(BATCH_PREFIX).await? {
            match serde_json::from_str::<Batch>(&value) {
                Ok(b) if !b.state.is_terminal() => {
                    batches.insert(b.id.clone(), b);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "skipping a batch record"),
            }
        }
        let mut inner = lock(&self.inner);
        inner.operations = open;
        inner.op_driving.clear();
        inner.batches = batches;
        inner.batch_driving = false;
        Ok(())
    }

    async fn save_batch(&self, b: &Batch) -> Result<()> {
        let value = serde_json::to_string(b)
            .map_err(|e| Error::Invalid(format!("batch does not serialize: {e}")))?;
        self.store
            .put_meta(&format!("{BATCH_PREFIX}{}", b.id), &value)
            .await?;
        let mut inner = lock(&self.inner);
        if b.state.is_terminal() {
            inner.batches.remove(&b.id);
        } else {
            inner.batches.insert(b.id.clone(), b.clone());
        }
        Ok(())
    }

    /// Starts a batch: `kind` on every instance `selector` matches now (by name), at most
    /// `max_parallel` at once, none started after `max_failures` failed.
    pub async fn start_batch(
        &self,
        selector: &str,
        kind: OpKind,
        timeout_ms: Option<i64>,
        max_parallel: usize,
        max_failures: usize,
        requested_by: &str,
    ) -> Result<Batch> {
        if !matches!(kind, OpKind::Restart | OpKind::Stop | OpKind::Start) {
            return Err(Error::Invalid(format!(
                "a batch runs restart, stop or start, not {}",
                kind_name(kind)
            )));
        }
        if !(1..=100).contains(&max_parallel) {
            return Err(Error::Invalid("max_parallel must be 1 ..= 100".into()));
        }
        if max_failures < 1 {
            return Err(Error::Invalid("max_failures must be at least 1".into()));
        }
        let mut names = Vec::new();
        {
            let inner = lock(&self.inner);
            for i in inner.instances.values().filter(|i| i.revision > 0) {
                if super::matches_selector(&i.spec.labels, selector)? {
                    names.push(i.spec.name.clone());
                }
            }
        }
        if names.is_empty() {
            return Err(Error::NoMatch(format!(
                "selector {selector:?} matches no instance"
            )));
        }
        let now = now_ms();
        let b = Batch {
            id: format!("batch-{now}-{:04x}", rand::random::<u16>()),
            selector: selector.to_owned(),
            kind,
            timeout_ms: timeout_ms.unwrap_or(ops::DEFAULT_TIMEOUT_MS),
            max_parallel,
            max_failures,
            state: OpState::Running,
            created_ms: now,
            ended_ms: 0,
            cancel_requested: false,
            requested_by: requested_by.to_owned(),
            items: names
                .into_iter()
                .map(|instance| BatchItem {
                    instance,
                    operation: None,
                    state: "pending".into(),
                    reason: String::new(),
                })
                .collect(),
        };
        self.save_batch(&b).await?;
        info!(id = %b.id, instances = b.items.len(), "batch started");
        Ok(b)
    }

    /// One batch as stored.
    pub async fn batch(&self, id: &str) -> Result<Batch> {
        if let Some(b) = lock(&self.inner).batches.get(id) {
            return Ok(b.clone());
        }
        match self.store.get_meta(&format!("{BATCH_PREFIX}{id}")).await? {
            Some(v) => serde_json::from_str(&v)
                .map_err(|e| Error::Invalid(format!("a stored batch does not parse: {e}"))),
            None => Err(Error::NotFound(format!("batch {id}"))),
        }
    }

    /// The `limit` newest batches (by creation), newest first, as stored.
    pub async fn batches(&self, limit: usize) -> Result<Vec<Batch>> {
        let mut all = Vec::new();
        for (_, value) in self.store.meta_with_prefix(BATCH_PREFIX).await? {
            match serde_json::from_str::<Batch>(&value) {
                Ok(b) => all.push(b),
                Err(e) => warn!(error = %e, "skipping a batch record"),
            }
        }
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        all.truncate(limit);
        Ok(all)
    }

    /// Asks a batch to stop: its running operations are cancelled, none started.
    pub async fn cancel_batch(&self, id: &str) -> Result<Batch> {
        let mut b = self.batch(id).await?;
        if !b.state.is_terminal() && !b.cancel_requested {
            b.cancel_requested = true;
            self.save_batch(&b).await?;
        }
        Ok(b)
    }

    /// One round of the batches (from the operation loop): each takes what `batch::plan`
    /// says, one task at a time.
    fn drive_batches(self: &Arc<Self>) {
        {
            let mut inner = lock(&self.inner);
            if inner.batch_driving || inner.batches.is_empty() {
                return;
            }
            inner.batch_driving = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let ids: Vec<String> = lock(&this.inner).batches.keys().cloned().collect();
            for id in ids {
                if let Err(e) = this.step_batch(&id).await {
                    warn!(batch = %id, error = %e, "batch step failed to run; retried");
                }
            }
            lock(&this.inner).batch_driving = false;
        });
    }

    async fn step_batch(&self, id: &str) -> Result<()> {
        if !self.is_active() {
            return Ok(());
        }
        let Some(mut b) = lock(&self.inner).batches.get(id).cloned() else {
            return Ok(());
        };
        let before = b.clone();
        let mut states = std::collections::BTreeMap::new();
        // Only the operations still running: a finished one's state is in the item already.
        for op_id in b
            .items
            .iter()
            .filter(|i| i.state == "running")
            .filter_map(|i| i.operation.clone())
        {
            if let Ok(op) = self.operation(&op_id).await {
                states.insert(op_id, op.state);
            }
        }
        let plan = batch::plan(&mut b, &states);
        for op_id in &plan.cancel {
            let _ = self.cancel_operation(op_id, &b.requested_by).await;
        }
        for name in &plan.start {
            let started = self
                .start_operation(
                    name,
                    b.kind,
                    OpArgs::default(),
                    Some(b.timeout_ms),
                    &b.requested_by,
                )
                .await;
            if let Some(item) = b.items.iter_mut().find(|i| &i.instance == name) {
                match started {
                    Ok(op) => {
                        item.operation = Some(op.id);
                        item.state = "running".into();
                    }
                    Err(e) => {
                        item.state = "failed".into();
                        item.reason = e.to_string();
                    }
                }
            }
        }
        if let Some(state) = plan.finish {
            b.state = state;
            b.ended_ms = now_ms();
            info!(batch = %b.id, state = ?state, "batch finished");
        }
        if b != before {
            self.save_batch(&b).await?;
        }
        Ok(())
    }

    async fn save_operation(&self, op: &Operation) -> Result<()> {
        let value = serde_json::to_string(op)
            .map_err(|e| Error::Invalid(format!("operation does not serialize: {e}")))?;
        self.store.put_meta(&key(&op.id), &value).await?;
        let mut inner = lock(&self.inner);
        if op.state.is_terminal() {
            inner.operations.remove(&op.id);
        } else {
            inner.operations.insert(op.id.clone(), op.clone());
        }
        Ok(())
    }

    /// Why an operation could not begin on `instance` now: one already running, or (`whole`)
    /// a member not healthy and replicating (what [`Cluster::start_operation`] checks).
    pub(super) fn operation_blocker(&self, instance: &str, whole_needed: bool) -> Result<()> {
        let inner = lock(&self.inner);
        let inst = inner
            .instances
            .get(instance)
            .filter(|i| i.revision > 0)
            .ok_or_else(|| Error::NotFound(format!("instance {instance}")))?;
        if let Some(op) = inner.operations.values().find(|o| o.instance == instance) {
            return Err(Error::OperationRunning {
                instance: instance.to_owned(),
                id: op.id.clone(),
                kind: kind_name(op.kind).into(),
            });
        }
        if let Some(m) = members_now(self, &inner, inst)
            .iter()
            .find(|m| whole_needed && !whole(m))
        {
            return Err(Error::NotReady(format!(
                "instance {instance}: member {} is not healthy and replicating; an operation begins on a whole instance",
                m.id
            )));
        }
        Ok(())
    }

    /// Starts an operation on `instance`: stored, then carried out by the leader's operation
    /// loop. One at a time per instance; every member must be healthy to begin.
    pub async fn start_operation(
        &self,
        instance: &str,
        kind: OpKind,
        args: OpArgs,
        timeout_ms: Option<i64>,
        requested_by: &str,
    ) -> Result<Operation> {
        self.start_operation_carrying(instance, kind, args, timeout_ms, requested_by, None)
            .await
    }

    /// [`Cluster::start_operation`], the operation carrying the `tls` mode it rolls out
    /// (a `restart` for a change of `tls`, [`Cluster::patch_instance`]).
    pub(super) async fn start_operation_carrying(
        &self,
        instance: &str,
        kind: OpKind,
        args: OpArgs,
        timeout_ms: Option<i64>,
        requested_by: &str,
        tls: Option<mofang_common::DbTls>,
    ) -> Result<Operation> {
        let now = now_ms();
        let member = args.member.clone();
        // An unknown instance is 404 whatever the arguments.
        self.existing(instance)?;
        check_args(kind, &args)?;
        if args.node.is_some() && kind != OpKind::Rebuild {
            return Err(Error::Invalid(format!(
                "`node` is for rebuild only, not {}",
                kind_name(kind)
            )));
        }
        match (&kind, &member) {
            (OpKind::Rebuild, None) => {
                return Err(Error::Invalid("a rebuild needs `member`".into()))
            }
            (OpKind::Rebuild | OpKind::Switchover, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "`member` is for rebuild and switchover only, not {}",
                    kind_name(kind)
                )))
            }
        }
        {
            let inner = lock(&self.inner);
            let inst = inner
                .instances
                .get(instance)
                .filter(|i| i.revision > 0)
                .ok_or_else(|| Error::NotFound(format!("instance {instance}")))?;
            if let Some(op) = inner.operations.values().find(|o| o.instance == instance) {
                return Err(Error::OperationRunning {
                    instance: instance.to_owned(),
                    id: op.id.clone(),
                    kind: kind_name(op.kind).into(),
                });
            }
            match (kind, inst.stopped) {
                (OpKind::Start, false) => {
                    return Err(Error::NotReady(format!(
                        "instance {instance} is not stopped"
                    )))
                }
                // A broken instance may be stopped too.
                (OpKind::Start, true) | (OpKind::Stop, false) => {}
                (_, true) => {
                    return Err(Error::NotReady(format!(
                        "instance {instance} is stopped: start it first"
                    )))
                }
                (OpKind::Rebuild, false) => {
                    let target = member.as_deref().unwrap_or_default();
                    if !inst.members.iter().any(|m| m.id == target) {
                        return Err(Error::Invalid(format!(
                            "{target} is not a member of instance {instance}"
                        )));
                    }
                    if inst.members.len() < 2 {
                        return Err(Error::NotReady(format!(
                            "{target} is the only member of {instance}: there is nothing to seed it from"
                        )));
                    }
                    // A move is checked now: a refusal changes nothing.
                    if let Some(n) = &args.node {
                        self.place_on(&inner, inst, target, n)?;
                    }
                }
                (_, false) => {
                    if let Some(m) = members_now(self, &inner, inst).iter().find(|m| !whole(m)) {
                        return Err(Error::NotReady(format!(
                            "instance {instance}: member {} is not healthy and replicating; an operation begins on a whole instance",
                            m.id
                        )));
                    }
                }
            }
        }
        let timeout_ms = timeout_ms.unwrap_or(ops::DEFAULT_TIMEOUT_MS);
        if !(60_000..=86_400_000).contains(&timeout_ms) {
            return Err(Error::Invalid(format!(
                "timeout_s must be 60 ..= 86400, got {}",
                timeout_ms / 1000
            )));
        }
        // What the new kinds need beside a whole instance: room on the nodes, known
        // parameters. Checked before anything is stored: a refusal changes nothing.
        let (mut replicas, mut resources, mut from_memory) = (None, None, None);
        let (mut settings, mut restart_needed) = (None, false);
        let mut version = None;
        let mut total = {
            let inner = lock(&self.inner);
            let inst = inner
                .instances
                .get(instance)
                .filter(|i| i.revision > 0)
                .ok_or_else(|| Error::NotFound(format!("instance {instance}")))?;
            match kind {
                OpKind::Scale => {
                    let want = args.replicas.unwrap_or_default();
                    let now = inst
                        .members
                        .iter()
                        .filter(|m| m.role == Role::Replica)
                        .count();
                    let now = u32::try_from(now).unwrap_or(u32::MAX);
                    if want == now {
                        return Err(Error::Invalid(format!(
                            "replicas: instance {instance} already has {now} replicas"
                        )));
                    }
                    if want > now {
                        self.check_scale_room(&inner, inst, want - now)?;
                    }
                    replicas = Some(want);
                    want.abs_diff(now) as usize
                }
                OpKind::Resize => {
                    let old = inst.spec.resources;
                    let new = Resources {
                        cpu: args.cpu.unwrap_or(old.cpu),
                        memory: args.memory.unwrap_or(old.memory),
                        disk: old.disk,
                    };
                    if new == old {
                        return Err(Error::Invalid(format!(
                            "cpu, memory: instance {instance} already has {} cores and {} MiB",
                            old.cpu, old.memory
                        )));
                    }
                    let views = self.node_views(&inner);
                    let refusals = ops::resize_refusals(inst, &views, new);
                    if !refusals.is_empty() {
                        return Err(Error::Unplaceable(placement::Error::Unplaceable {
                            instance: instance.to_owned(),
                            wanted: inst.members.len(),
                            fit: inst.members.len().saturating_sub(refusals.len()),
                            reasons: refusals,
                        }));
                    }
                    resources = Some(new);
                    from_memory = Some(old.memory);
                    inst.members.len()
                }
                OpKind::Expand => {
                    let old = inst.spec.resources;
                    let disk = args.disk.unwrap_or_default();
                    if disk <= old.disk {
                        return Err(Error::Invalid(format!(
                            "disk: {disk} MiB is not more than the {} MiB each member has (volumes only grow)",
                            old.disk
                        )));
                    }
                    let views = self.node_views(&inner);
                    let refusals = ops::expand_refusals(
                        inst,
                        &views,
                        |m| super::books::disk_class_of(&inner.nodes, inst, m),
                        disk,
                    );
                    if !refusals.is_empty() {
                        return Err(Error::Unplaceable(placement::Error::Unplaceable {
                            instance: instance.to_owned(),
                            wanted: inst.members.len(),
                            fit: inst.members.len().saturating_sub(refusals.len()),
                            reasons: refusals,
                        }));
                    }
                    resources = Some(Resources { disk, ..old });
                    inst.members.len()
                }
                OpKind::Upgrade => {
                    let to = args.version.clone().unwrap_or_default();
                    inst.spec
                        .engine
                        .upgrade_check(&inst.spec.version, &to)
                        .map_err(Error::Invalid)?;
                    version = Some(to);
                    inst.members.len()
                }
                OpKind::Reconfigure => {
                    let mut checked = BTreeMap::new();
                    for (k, v) in args.settings.as_ref().into_iter().flatten() {
                        let (p, v) = mofang_common::params::check(inst.spec.engine, k, v)
                            .map_err(Error::Invalid)?;
                        restart_needed |= !p.dynamic && inst.parameters.get(k) != Some(&v);
                        checked.insert(k.clone(), v);
                    }
                    settings = Some(checked);
                    inst.members.len()
                }
                _ => inst.members.len(),
            }
        };
        if kind == OpKind::Reconfigure && !restart_needed {
            total = 0;
        }
        let op = Operation {
            id: format!("op-{now}-{:04x}", rand::random::<u16>()),
            instance: instance.to_owned(),
            kind,
            state: OpState::Running,
            created_ms: now,
            ended_ms: 0,
            timeout_ms,
            reason: String::new(),
            cancel_requested: false,
            requested_by: requested_by.to_owned(),
            steps: Vec::new(),
            done: Default::default(),
            total,
            member,
            node: args.node.clone(),
            replicas,
            resources,
            from_memory,
            settings,
            restart_needed,
            version,
            tls,
        };
        self.save_operation(&op).await?;
        info!(instance, id = %op.id, kind = kind_name(kind), "operation started");
        self.emit(vec![event(
            EventKind::OperationStarted,
            Some(instance),
            None,
            format!(
                "operation {} ({}) started by {requested_by}",
                op.id,
                kind_name(kind)
            ),
        )])
        .await;
        Ok(op)
    }

    /// One operation as stored.
    pub async fn operation(&self, id: &str) -> Result<Operation> {
        if let Some(op) = lock(&self.inner).operations.get(id) {
            return Ok(op.clone());
        }
        match self.store.get_meta(&key(id)).await? {
            Some(v) => parse(&v),
            None => Err(Error::NotFound(format!("operation {id}"))),
        }
    }

    /// The operations of an instance, newest first (they outlive the instance).
    pub async fn operations_of(&self, instance: &str) -> Result<Vec<Operation>> {
        let mut all: Vec<Operation> = Vec::new();
        for (_, value) in self.store.meta_with_prefix(PREFIX).await? {
            if let Ok(op) = parse(&value) {
                if op.instance == instance {
                    all.push(op);
                }
            }
        }
        {
            // The in-memory copy carries what a step waits for.
            let inner = lock(&self.inner);
            for op in &mut all {
                if let Some(live) = inner.operations.get(&op.id) {
                    *op = live.clone();
                }
            }
        }
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        Ok(all)
    }

    /// Asks an operation to stop at its next safe point (no step half done).
    pub async fn cancel_operation(&self, id: &str, by: &str) -> Result<Operation> {
        let mut op = self.operation(id).await?;
        if op.state.is_terminal() || op.cancel_requested {
            return Ok(op);
        }
        op.cancel_requested = true;
        self.save_operation(&op).await?;
        self.emit(vec![event(
            EventKind::OperationStep,
            Some(&op.instance),
            None,
            format!("operation {id}: cancel asked by {by}; it stops at the next safe point"),
        )])
        .await;
        Ok(op)
    }

    /// One round of the operation loop (every 500 ms on the leader): each unfinished
    /// operation not already being carried gets a task that takes its next step.
    pub fn drive_operations(self: &Arc<Self>) {
        let ids: Vec<String> = {
            let mut inner = lock(&self.inner);
            let ids: Vec<String> = inner
                .operations
                .keys()
                .filter(|id| !inner.op_driving.contains(*id))
                .cloned()
                .collect();
            inner.op_driving.extend(ids.iter().cloned());
            ids
        };
        self.drive_batches();
        for id in ids {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.step_operation(&id).await {
                    warn!(operation = %id, error = %e, "operation step failed to run; retried");
                }
                lock(&this.inner).op_driving.remove(&id);
            });
        }
    }

    /// Decides and takes the next step of one operation.
    async fn step_operation(self: &Arc<Self>, id: &str) -> Result<()> {
        if !self.is_active() {
            return Ok(());
        }
        let (mut op, inst, members, held) = {
            let inner = lock(&self.inner);
            let Some(op) = inner.operations.get(id).cloned() else {
                return Ok(());
            };
            let inst = inner
                .instances
                .get(&op.instance)
                .filter(|i| i.revision > 0)
                .cloned();
            let members = inst
                .as_ref()
                .map(|i| members_now(self, &inner, i))
                .unwrap_or_default();
            // A failover decided and not confirmed, or a replacement under way: wait.
            let held = inner.inflight.contains_key(&op.instance)
                || inst.as_ref().is_some_and(|i| i.replacing.is_some());
            (op, inst, members, held)
        };
        let now = now_ms();
        let Some(inst) = inst else {
            return self
                .finish(&mut op, OpState::Failed, "the instance was deleted".into())
                .await;
        };
        // A step stored before a leader change may not have reached the instance record:
        // asked again (each ask is idempotent).
        if let Some(step) = op.running_step() {
            if !carried(&inst, &step.action) {
                let action = step.action.clone();
                return self.ask(&op, inst, &action).await;
            }
        }
        // A `tls` change whose record write did not happen (the scheduler stopped between
        // storing the operation and writing the record): the mode goes in before any step.
        if let Some(to) = ops::tls_to_write(&op, inst.spec.tls) {
            return self.write_operation_tls(&op, to).await.map(|_| ());
        }
        if held && op.running_step().is_none() {
            return self
                .note_wait(&op, "a failover or a replacement is under way")
                .await;
        }
        match ops::next(&op, &members, now) {
            Next::Wait(why) => self.note_wait(&op, &why).await,
            Next::Restart { member, generation } => {
                let action = StepAction::Restart { member, generation };
                self.begin_step(&mut op, inst, action, now).await
            }
            Next::Rebuild { member, generation } => {
                // A move: placed now on the node asked (it may have filled since the
                // operation began); the step (with its node) is stored before the record
                // books it.
                let placed = match op.node.clone() {
                    None => Ok(None),
                    Some(n) => {
                        let inner = lock(&self.inner);
                        self.place_on(&inner, &inst, &member, &n).map(Some)
                    }
                };
                match placed {
                    Ok(to) => {
                        let (node, disk_class) = to.unzip();
                        let backup = self.seed_backup(&inst).await;
                        let action = StepAction::Rebuild {
                            member,
                            generation,
                            node,
                            disk_class,
                            backup,
                        };
                        self.begin_step(&mut op, inst, action, now).await
                    }
                    Err(e) => {
                        let reason = format!(
                            "{member} cannot move to {}: {e}",
                            op.node.as_deref().unwrap_or_default()
                        );
                        self.finish(&mut op, OpState::Failed, reason).await
                    }
                }
            }
            Next::AddReplica { member, donor } => {
                // Placed now, with the other members' nodes excluded (one member per node);
                // the step (with its node) is stored before the record books it.
                let placed = {
                    let inner = lock(&self.inner);
                    self.place_replica(&inner, &inst)
                };
                match placed {
                    Ok((node, disk_class)) => {
                        let backup = self.seed_backup(&inst).await;
                        let action = StepAction::AddReplica {
                            member,
                            node,
                            disk_class,
                            donor,
                            backup,
                        };
                        self.begin_step(&mut op, inst, action, now).await
                    }
                    Err(e) => {
                        self.finish(
                            &mut op,
                            OpState::Failed,
                            format!("no node for a new replica: {e}"),
                        )
                        .await
                    }
                }
            }
            Next::RemoveReplica { member } => {
                let action = StepAction::RemoveReplica { member };
                self.begin_step(&mut op, inst, action, now).await
            }
            Next::SetResources => {
                let Some(r) = op.resources else {
                    return self
                        .finish(
                            &mut op,
                            OpState::Failed,
                            "a resize names no resources".into(),
                        )
                        .await;
                };
                let action = StepAction::SetResources {
                    cpu: r.cpu,
                    memory: r.memory,
                };
                self.begin_step(&mut op, inst, action, now).await
            }
            Next::SetDisk => {
                let Some(r) = op.resources else {
                    return self
                        .finish(&mut op, OpState::Failed, "an expand names no disk".into())
                        .await;
                };
                let action = StepAction::SetDisk { disk: r.disk };
                self.begin_step(&mut op, inst, action, now).await
            }
            Next::SetVersion => {
                let Some(version) = op.version.clone() else {
                    return self
                        .finish(
                            &mut op,
                            OpState::Failed,
                            "an upgrade names no version".into(),
                        )
                        .await;
                };
                let action = StepAction::SetVersion {
                    version,
                    from: inst.spec.version.clone(),
                };
                self.begin_step(&mut op, inst, action, now).await
            }
            Next::SetParameters => {
                let action = StepAction::SetParameters {
                    generation: inst.parameters_generation + 1,
                };
                self.begin_step(&mut op, inst, action, now).await
            }
            Next::Stop => self.begin_step(&mut op, inst, StepAction::Stop, now).await,
            Next::Start => self.begin_step(&mut op, inst, StepAction::Start, now).await,
            Next::Switchover { from } => {
                let action = StepAction::Switchover { from: from.clone() };
                self.begin_step(&mut op, inst, action, now).await?;
                self.step_event(&op, format!("switching over away from {from}"))
                    .await;
                self.run_switchover(op).await
            }
            Next::RetrySwitchover { .. } => self.run_switchover(op).await,
            Next::StepDone => {
                if let Some(step) = op.steps.last_mut() {
                    step.state = StepState::Done;
                    step.ended_ms = now;
                    step.reason.clear();
                    let text = match &step.action {
                        StepAction::Restart { member, .. } => {
                            op.done.insert(member.clone());
                            format!("{member} restarted, healthy and replicating")
                        }
                        StepAction::Switchover { from } => {
                            format!("switched over away from {from}")
                        }
                        StepAction::Rebuild { member, node, .. } => {
                            op.done.insert(member.clone());
                            match node {
                                Some(n) => format!(
                                    "{member} rebuilt on {n}, seeded and replicating"
                                ),
                                None => format!("{member} rebuilt, seeded and replicating"),
                            }
                        }
                        StepAction::Stop => "every container stopped".into(),
                        StepAction::Start => "every member healthy and replicating".into(),
                        StepAction::AddReplica {
                            member,
                            donor,
                            backup,
                            ..
                        } => {
                            op.done.insert(member.clone());
                            format!(
                                "{member} added, seeded from {} and replicating",
                                ops::seeded_from(donor.as_deref(), backup.as_deref())
                            )
                        }
                        StepAction::RemoveReplica { member } => {
                            op.done.insert(member.clone());
                            format!("{member} removed; its reservation released")
                        }
                        StepAction::SetResources { cpu, memory } => format!(
                            "resources now {cpu} cores, {memory} MiB; every container has the new CPU limit"
                        ),
                        StepAction::SetParameters { generation } => format!(
                            "parameters generation {generation} applied on every member"
                        ),
                        StepAction::SetDisk { disk } => {
                            format!("every member's volume is now {disk} MiB")
                        }
                        StepAction::SetVersion { version, .. } => {
                            format!("the instance's version is now {version}")
                        }
                    };
                    let added = match &step.action {
                        StepAction::AddReplica { member, .. }
                        | StepAction::Rebuild { member, .. } => Some(member.clone()),
                        _ => None,
                    };
                    self.save_operation(&op).await?;
                    self.step_event(&op, text).await;
                    if let Some(member) = added {
                        // Seeded: a later seed of it (a diverged replica rebuilt by its agent)
                        // copies from the primary as usual.
                        let mut next = inst;
                        let donor = next.seed_donors.remove(&member).is_some();
                        if next.seed_backups.remove(&member).is_some() || donor {
                            self.write(next, Vec::new()).await?;
                        }
                    }
                }
                Ok(())
            }
            Next::StepFailed(reason) => {
                if let Some(step) = op.steps.last_mut() {
                    step.state = StepState::Failed;
                    step.ended_ms = now;
                    step.reason = reason.clone();
                }
                self.finish(&mut op, OpState::Failed, reason).await
            }
            Next::Succeed => {
                self.finish(&mut op, OpState::Succeeded, String::new())
                    .await
            }
            Next::Cancel => {
                self.finish(
                    &mut op,
                    OpState::Cancelled,
                    "cancelled by an operator".into(),
                )
                .await
            }
            Next::Fail(reason) => self.finish(&mut op, OpState::Failed, reason).await,
        }
    }

    /// Records a new step as running, then asks the instance record for it. Stored first:
    /// a new leader finds the step and asks again if the ask did not land.
    async fn begin_step(
        &self,
        op: &mut Operation,
        inst: Instance,
        action: StepAction,
        now: i64,
    ) -> Result<()> {
        op.steps.push(OpStep {
            action: action.clone(),
            state: StepState::Running,
            started_ms: now,
            ended_ms: 0,
            reason: String::new(),
        });
        self.save_operation(op).await?;
        self.ask(op, inst, &action).await
    }

    /// Writes into the instance record what `action` asks of its agents: a member's restart
    /// or rebuild generation raised, the instance stopped or started. A switchover is carried
    /// out by [`Cluster::run_switchover`], not asked here.
    async fn ask(&self, op: &Operation, mut inst: Instance, action: &StepAction) -> Result<()> {
        if carried(&inst, action) {
            return Ok(());
        }
        let node_of = |m: &str| {
            inst.members
                .iter()
                .find(|r| r.id == m)
                .map(|r| r.node.clone())
        };
        let mut moved_from: Option<String> = None;
        let (node, text) = match action {
            StepAction::Restart { member, generation } => {
                let node = node_of(member);
                inst.restart_generations.insert(member.clone(), *generation);
                (
                    node,
                    format!(
                        "restarting {member} (step {} of {})",
                        op.steps.len(),
                        op.total + 1
                    ),
                )
            }
            StepAction::Rebuild {
                member,
                generation,
                node: to,
                disk_class,
                backup,
            } => {
                let node = node_of(member);
                inst.rebuild_generations.insert(member.clone(), *generation);
                // A move: the member's record names its new node (the reservation moves with
                // it in the same write); the old node's agent, told, removes its container
                // and volume, the new one's makes them anew.
                if let (Some(to), Some(r)) = (to, inst.members.iter_mut().find(|m| &m.id == member))
                {
                    if &r.node != to {
                        moved_from = Some(std::mem::replace(&mut r.node, to.clone()));
                        r.disk_class = disk_class.clone().unwrap_or_default();
                    }
                }
                // Seeded from a healthy replica other than itself when there is one (the
                // primary serves no copy), in the same write as the generation.
                let donor = {
                    let inner = lock(&self.inner);
                    let others: Vec<MemberNow> = members_now(self, &inner, &inst)
                        .into_iter()
                        .filter(|m| &m.id != member)
                        .collect();
                    ops::seed_donor(&others).map(|m| m.id.clone())
                };
                match &donor {
                    Some(d) => inst.seed_donors.insert(member.clone(), d.clone()),
                    None => inst.seed_donors.remove(member),
                };
                let where_ = match (&moved_from, to) {
                    (Some(from), Some(to)) => format!(" on {to} (moved from {from})"),
                    _ => String::new(),
                };
                // Filled from the instance's latest backup when it has one, as a new
                // replica is; the donor is then the fallback.
                let from = match self.seed_of(member, backup.as_deref()).await {
                    Some(r) => {
                        let text = format!("backup {} (a physical copy)", r.backup);
                        inst.seed_backups.insert(member.clone(), r);
                        text
                    }
                    None => {
                        inst.seed_backups.remove(member);
                        donor.as_deref().unwrap_or("the primary").to_owned()
                    }
                };
                (
                    to.clone().or(node),
                    format!(
                        "rebuilding {member}{where_} (container and volume removed, seeded again from {from})"
                    ),
                )
            }
            StepAction::Stop | StepAction::Start => {
                inst.stopped = matches!(action, StepAction::Stop);
                let verb = if inst.stopped { "stopping" } else { "starting" };
                (None, format!("{verb} every member"))
            }
            StepAction::AddReplica {
                member,
                node,
                disk_class,
                donor,
                backup,
            } => {
                inst.members.push(MemberRecord {
                    id: member.clone(),
                    node: node.clone(),
                    role: Role::Replica,
                    disk_class: disk_class.clone(),
                });
                inst.spec.replicas = replica_count(&inst);
                if let Some(d) = donor {
                    inst.seed_donors.insert(member.clone(), d.clone());
                }
                let seed = self.seed_of(member, backup.as_deref()).await;
                let text = match &seed {
                    Some(r) => format!(
                        "seeded from backup {} (a physical copy; then the primary's binlog from the backup's position)",
                        r.backup
                    ),
                    None => format!("seeded from {}", donor.as_deref().unwrap_or("the primary")),
                };
                if let Some(r) = seed {
                    inst.seed_backups.insert(member.clone(), r);
                }
                (
                    Some(node.clone()),
                    format!("adding replica {member} on {node} (reservation booked), {text}"),
                )
            }
            StepAction::RemoveReplica { member } => {
                let node = node_of(member);
                inst.members.retain(|m| &m.id != member);
                inst.spec.replicas = replica_count(&inst);
                inst.restart_generations.remove(member);
                inst.rebuild_generations.remove(member);
                inst.seed_donors.remove(member);
                inst.seed_backups.remove(member);
                let stored = self
                    .write(
                        inst,
                        vec![event(
                            EventKind::OperationStep,
                            Some(&op.instance),
                            node.as_deref(),
                            format!(
                                "operation {}: removing replica {member} (the most lagging); its container and volume go, its reservation is released",
                                op.id
                            ),
                        )],
                    )
                    .await?;
                // Its node no longer has it in the record: told so, its agent removes it.
                if let Some(n) = node {
                    let mut inner = lock(&self.inner);
                    self.push_nodes(&mut inner, &[n]);
                }
                let _ = stored;
                return Ok(());
            }
            StepAction::SetResources { cpu, memory } => {
                inst.spec.resources.cpu = *cpu;
                inst.spec.resources.memory = *memory;
                (
                    None,
                    format!("resources set to {cpu} cores, {memory} MiB (reservations re-booked)"),
                )
            }
            StepAction::SetVersion { version, from } => {
                inst.spec.version = version.clone();
                (
                    None,
                    format!("version set from {from} to {version}: each member moves to it at its restart step"),
                )
            }
            StepAction::SetDisk { disk } => {
                let from = inst.spec.resources.disk;
                inst.spec.resources.disk = *disk;
                (
                    None,
                    format!("disk set from {from} to {disk} MiB per member (reservations grown); agents grow the volumes"),
                )
            }
            StepAction::SetParameters { generation } => {
                for (k, v) in op.settings.iter().flatten() {
                    inst.parameters.insert(k.clone(), v.clone());
                }
                inst.parameters_generation = *generation;
                (
                    None,
                    format!(
                        "parameters set: {}",
                        op.settings
                            .iter()
                            .flatten()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
            StepAction::Switchover { .. } => return Ok(()),
        };
        self.write(
            inst,
            vec![event(
                EventKind::OperationStep,
                Some(&op.instance),
                node.as_deref(),
                format!("operation {}: {text}", op.id),
            )],
        )
        .await?;
        // The node a moved member left no longer has it in the record: told so, its agent
        // removes it.
        if let Some(old) = moved_from {
            let mut inner = lock(&self.inner);
            self.push_nodes(&mut inner, &[old]);
        }
        Ok(())
    }

    /// The switchover step, carried out now; a failed switchover fails the operation (a
    /// failover running meanwhile only delays it).
    async fn run_switchover(self: &Arc<Self>, mut op: Operation) -> Result<()> {
        // A switchover operation may name its target; a step of another operation lets the
        // most advanced replica take over.
        let target = match op.kind {
            OpKind::Switchover => op.member.clone(),
            _ => None,
        };
        match self.switchover(&op.instance, target.as_deref()).await {
            Ok(_) => Ok(()), // the next round sees the primary moved: StepDone
            Err(Error::Refused(crate::failover::rails::Refusal::Busy { .. })) => {
                self.note_wait(&op, "a failover or switchover is under way")
                    .await
            }
            Err(e) => {
                let reason = format!("switchover failed: {e}");
                if let Some(step) = op.steps.last_mut() {
                    step.state = StepState::Failed;
                    step.ended_ms = now_ms();
                    step.reason = reason.clone();
                }
                self.finish(&mut op, OpState::Failed, reason).await
            }
        }
    }

    /// Keeps what the operation waits for in memory (shown by the API, not stored).
    async fn note_wait(&self, op: &Operation, why: &str) -> Result<()> {
        let mut inner = lock(&self.inner);
        if let Some(o) = inner.operations.get_mut(&op.id) {
            match o.steps.last_mut().filter(|s| s.state == StepState::Running) {
                Some(step) => step.reason = why.to_owned(),
                None => o.reason = why.to_owned(),
            }
        }
        Ok(())
    }

    async fn step_event(&self, op: &Operation, text: String) {
        self.emit(vec![event(
            EventKind::OperationStep,
            Some(&op.instance),
            None,
            format!("operation {}: {text}", op.id),
        )])
        .await;
    }

    async fn finish(&self, op: &mut Operation, state: OpState, reason: String) -> Result<()> {
        op.state = state;
        op.ended_ms = now_ms();
        op.reason = reason;
        self.save_operation(op).await?;
        let (kind, text) = match state {
            OpState::Succeeded => (
                EventKind::OperationSucceeded,
                format!(
                    "operation {} ({}) succeeded in {} s",
                    op.id,
                    kind_name(op.kind),
                    (op.ended_ms - op.created_ms) / 1000
                ),
            ),
            OpState::Cancelled => (
                EventKind::OperationCancelled,
                format!(
                    "operation {} cancelled; {} of {} members done",
                    op.id,
                    op.done.len(),
                    op.total
                ),
            ),
            _ => (
                EventKind::OperationFailed,
                format!("operation {} failed: {}", op.id, op.reason),
            ),
        };
        info!(instance = %op.instance, id = %op.id, state = ?state, "operation finished");
        self.emit(vec![event(kind, Some(&op.instance), None, text)])
            .await;
        Ok(())
    }
}

/// Whether the instance record already carries what `action` asks of its agents.
fn carried(inst: &Instance, action: &StepAction) -> bool {
    let asked =
        |gens: &std::collections::BTreeMap<String, u64>, m: &str| gens.get(m).copied().unwrap_or(0);
    match action {
        StepAction::Restart { member, generation } => {
            asked(&inst.restart_generations, member) >= *generation
        }
        StepAction::Rebuild {
            member,
            generation,
            node,
            ..
        } => {
            asked(&inst.rebuild_generations, member) >= *generation
                && node
                    .as_ref()
                    .is_none_or(|n| inst.members.iter().any(|m| &m.id == member && &m.node == n))
        }
        StepAction::Stop => inst.stopped,
        StepAction::Start => !inst.stopped,
        StepAction::Switchover { .. } => true,
        StepAction::AddReplica { member, .. } => inst.members.iter().any(|m| &m.id == member),
        StepAction::RemoveReplica { member } => inst.members.iter().all(|m| &m.id != member),
        StepAction::SetResources { cpu, memory } => {
            inst.spec.resources.cpu == *cpu && inst.spec.resources.memory == *memory
        }
        StepAction::SetParameters { generation } => inst.parameters_generation >= *generation,
        StepAction::SetDisk { disk } => inst.spec.resources.disk >= *disk,
        StepAction::SetVersion { version, .. } => inst.spec.version == *version,
    }
}

/// Replicas in the record.
fn replica_count(inst: &Instance) -> u32 {
    u32::try_from(
        inst.members
            .iter()
            .filter(|m| m.role == Role::Replica)
            .count(),
    )
    .unwrap_or(u32::MAX)
}

/// The request's arguments for its type: each type takes its own, and only those.
fn check_args(kind: OpKind, a: &OpArgs) -> Result<()> {
    let given = |name: &str, present: bool| -> Result<()> {
        if present {
            Err(Error::Invalid(format!(
                "`{name}` is not an argument of {}",
                kind_name(kind)
            )))
        } else {
            Ok(())
        }
    };
    if kind != OpKind::Scale {
        given("replicas", a.replicas.is_some())?;
    }
    if kind != OpKind::Resize {
        given("cpu", a.cpu.is_some())?;
        given("memory", a.memory.is_some())?;
    }
    if kind != OpKind::Reconfigure {
        given("settings", a.settings.is_some())?;
    }
    if kind != OpKind::Expand {
        given("disk", a.disk.is_some())?;
    }
    if kind != OpKind::Upgrade {
        given("version", a.version.is_some())?;
    }
    match kind {
        OpKind::Scale => match a.replicas {
            None => Err(Error::Invalid("a scale needs `replicas`".into())),
            // A lone MariaDB primary keeps semi-sync on after its replicas go (it would wait
            // for each commit's acknowledgement until the timeout): an instance keeps one.
            Some(0) => Err(Error::Invalid(
                "replicas: 0 is not allowed by scale (at least 1; see docs/operations.md)".into(),
            )),
            Some(n) if n > 8 => Err(Error::Invalid(format!(
                "replicas: {n} is absurd: at most 8"
            ))),
            Some(_) => Ok(()),
        },
        OpKind::Resize => {
            if a.cpu.is_none() && a.memory.is_none() {
                return Err(Error::Invalid(
                    "a resize needs `cpu`, `memory` or both".into(),
                ));
            }
            if let Some(c) = a.cpu {
                if !(c.is_finite() && (0.1..=64.0).contains(&c)) {
                    return Err(Error::Invalid(format!("cpu: {c} must be within 0.1 .. 64")));
                }
            }
            if let Some(m) = a.memory {
                if !(64..=1 << 20).contains(&m) {
                    return Err(Error::Invalid(format!(
                        "memory: {m} MiB must be within 64 MiB .. 1 TiB"
                    )));
                }
            }
            Ok(())
        }
        OpKind::Expand => match a.disk {
            None => Err(Error::Invalid("an expand needs `disk`".into())),
            Some(d) if !(64..=64 << 20).contains(&d) => Err(Error::Invalid(format!(
                "disk: {d} MiB must be within 64 MiB .. 64 TiB"
            ))),
            Some(_) => Ok(()),
        },
        OpKind::Reconfigure => match &a.settings {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(Error::Invalid("a reconfigure needs `settings`".into())),
        },
        OpKind::Upgrade => match &a.version {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err(Error::Invalid("an upgrade needs `version`".into())),
        },
        _ => Ok(()),
    }
}

/// One member of `inst` placed over `views` by the placement rules: its node and disk class;
/// `Err` says why each node does not fit.
fn place_one(inst: &Instance, views: &[NodeView<'_>]) -> Result<(String, String)> {
    let mut one = inst.spec.clone();
    one.replicas = 0;
    let placed = placement::place(&one, views)?;
    placed
        .members
        .first()
        .map(|m| (m.node.clone(), m.disk_class.clone()))
        .ok_or_else(|| Error::Invalid("placement returned no member".into()))
}

/// What a new replica's volume is filled from when it is seeded from backup `b`: its one data
/// object, no binlog replayed (it replicates from the backup's position instead).
fn seed_restored(b: &crate::backup::Backup) -> Option<crate::model::Restored> {
    let [o] = b.objects.as_slice() else {
        return None;
    };
    Some(crate::model::Restored {
        backup: b.id.clone(),
        repo: b.repo.clone(),
        object: o.path.clone(),
        size: o.size,
        sha256: o.sha256.clone(),
        raw_size: o.raw_size,
        encryption: o.encryption.clone(),
        time: None,
        binlogs: Vec::new(),
    })
}

impl Cluster {
    /// What `member` is filled from when its step names `backup`: the backup's objects as
    /// recorded; one deleted since the step was decided leaves the copy to the donor.
    async fn seed_of(&self, member: &str, backup: Option<&str>) -> Option<crate::model::Restored> {
        let id = backup?;
        match self.backup(id).await {
            Ok(b) => seed_restored(&b),
            Err(e) => {
                warn!(member = %member, backup = %id, error = %e, "seed backup gone: copying from a replica");
                None
            }
        }
    }

    /// The backup a new replica of `inst` is seeded from (decision 164): [`ops::seed_backup`]
    /// over the stored backups, kept only while its repository is known, holds the object
    /// and its key. None (logged): the replica is copied from a replica.
    async fn seed_backup(&self, inst: &Instance) -> Option<String> {
        if inst.spec.engine != mofang_common::EngineKind::Mariadb {
            return None;
        }
        let backups = match self.all_backups().await {
            Ok(b) => b,
            Err(e) => {
                warn!(instance = %inst.spec.name, error = %e, "backups not read: seeding from a replica");
                return None;
            }
        };
        let b = ops::seed_backup(&backups, inst)?;
        let object = b.objects.first()?;
        let unusable = |why: String| -> Option<String> {
            warn!(instance = %inst.spec.name, backup = %b.id, why = %why, "backup not used to seed: seeding from a replica");
            None
        };
        let repo = match self.backup_repo(&b.repo).await {
            Ok(r) => r,
            Err(e) => return unusable(format!("repository {}: {e}", b.repo)),
        };
        let store = match repo.spec.open() {
            Ok(s) => s,
            Err(e) => return unusable(format!("repository {}: {e}", b.repo)),
        };
        if let Some(enc) = &object.encryption {
            if let Err(e) = store.opening_key(enc, &object.path) {
                return unusable(e.to_string());
            }
        }
        if let Err(e) = store.store.head(&store.path(&object.path)).await {
            return unusable(format!("object {}: {e}", object.path));
        }
        Some(b.id.clone())
    }

    /// Where `member` of `inst` moves to on a rebuild on `node`: that node, if it is known,
    /// holds no member of the instance, and fits one member by the placement rules (its
    /// zone, disk class, free CPU, memory and disk, its admin state); the disk class found.
    fn place_on(
        &self,
        inner: &Inner,
        inst: &Instance,
        member: &str,
        node: &str,
    ) -> Result<(String, String)> {
        if !inner.nodes.contains_key(node) {
            return Err(Error::Invalid(format!("node: {node} is not a known node")));
        }
        if let Some(m) = inst.members.iter().find(|m| m.node == node) {
            return Err(Error::Invalid(if m.id == member {
                format!(
                    "node: {member} is on {node} already (leave `node` out to rebuild it there)"
                )
            } else {
                format!(
                    "node: {node} holds {} of {} already (one member per node)",
                    m.id, inst.spec.name
                )
            }));
        }
        let views: Vec<NodeView<'_>> = self
            .node_views(inner)
            .into_iter()
            .filter(|v| v.node.name == node)
            .collect();
        place_one(inst, &views)
    }

    /// A node for one more replica of `inst`: placement over the nodes that have none of its
    /// members, with the instance's constraints; `Err` says why each node does not fit.
    fn place_replica(&self, inner: &Inner, inst: &Instance) -> Result<(String, String)> {
        let used: BTreeSet<&str> = inst.members.iter().map(|m| m.node.as_str()).collect();
        let views: Vec<NodeView<'_>> = self
            .node_views(inner)
            .into_iter()
            .filter(|v| !used.contains(v.node.name.as_str()))
            .collect();
        place_one(inst, &views)
    }

    /// Refuses a scale-up by `more` replicas that the nodes without a member of `inst`
    /// cannot hold (409 with each node's reason).
    fn check_scale_room(&self, inner: &Inner, inst: &Instance, more: u32) -> Result<()> {
        let used: BTreeSet<&str> = inst.members.iter().map(|m| m.node.as_str()).collect();
        let views: Vec<NodeView<'_>> = self
            .node_views(inner)
            .into_iter()
            .filter(|v| !used.contains(v.node.name.as_str()))
            .collect();
        let mut some = inst.spec.clone();
        some.replicas = more - 1;
        placement::place(&some, &views)?;
        Ok(())
    }
}

/// The API name of an operation type.
pub fn kind_name(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Restart => "restart",
        OpKind::Stop => "stop",
        OpKind::Start => "start",
        OpKind::Rebuild => "rebuild",
        OpKind::Switchover => "switchover",
        OpKind::Scale => "scale",
        OpKind::Resize => "resize",
        OpKind::Reconfigure => "reconfigure",
        OpKind::Expand => "expand",
        OpKind::Upgrade => "upgrade",
    }
}

fn whole(m: &MemberNow) -> bool {
    m.healthy && (m.primary || m.replicating)
}

/// The members of `inst` as the operation decision sees them.
fn members_now(c: &Cluster, inner: &Inner, inst: &Instance) -> Vec<MemberNow> {
    let now = Instant::now();
    inst.members
        .iter()
        .map(|m| {
            let seen = c.seen(inner, m, now);
            let primary = m.role == Role::Primary;
            let status = seen.status.filter(|_| seen.node_alive);
            let role_ok = status.is_some_and(|s| {
                ObservedRole::parse(&s.role)
                    == Some(if primary {
                        ObservedRole::Primary
                    } else {
                        ObservedRole::Replica
                    })
            });
            MemberNow {
                running: status.is_some_and(|s| s.container_state == "running"),
                rebuild_asked: inst.rebuild_generations.get(&m.id).copied().unwrap_or(0),
                rebuild_done: status.map_or(0, |s| s.rebuild_generation),
                id: m.id.clone(),
                primary,
                asked: inst.restart_generations.get(&m.id).copied().unwrap_or(0),
                done: status.map_or(0, |s| s.restart_generation),
                healthy: status.is_some_and(|s| s.healthy && s.epoch == inst.epoch) && role_ok,
                replicating: primary || status.is_some_and(|s| s.replication_ok),
                cpu: status.map_or(0.0, |s| s.cpu),
                memory_mib: status.map_or(0, |s| s.memory_bytes >> 20),
                lag_seconds: status.map_or(-1, |s| s.lag_seconds),
                position: status.map_or(0, |s| Position::parse(&s.position).total()),
                params_done: status.map_or(0, |s| s.parameters_generation),
                volume_mib: status.map_or(0, |s| s.volume_bytes >> 20),
                version: status.map_or_else(String::new, |s| s.version.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{cluster_on, node, spec};
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;
    use mofang_common::proto::{HeartbeatRequest, MemberStatus};

    fn beat(c: &Cluster, nodes: &[crate::model::Node]) {
        for n in nodes {
            c.heartbeat(HeartbeatRequest {
                node: n.name.clone(),
                ..Default::default()
            });
        }
    }

    /// Every member of `name` reported healthy in its role, replicating, at the epoch.
    fn all_healthy(c: &Cluster, name: &str) {
        let inst = lock(&c.inner)
            .instances
            .get(name)
            .cloned()
            .expect("instance");
        for m in &inst.members {
            c.heartbeat(HeartbeatRequest {
                node: m.node.clone(),
                members: vec![MemberStatus {
                    member: m.id.clone(),
                    instance: name.into(),
                    healthy: true,
                    role: m.role.to_string(),
                    epoch: inst.epoch,
                    replication_ok: true,
                    container_state: "running".into(),
                    address: format!("{}:3306", m.node),
                    cpu: inst.spec.resources.cpu,
                    memory_bytes: inst.spec.resources.memory << 20,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
    }

    /// The agent of `node` reports `member` of `inst` rebuilt to `generation`, healthy and
    /// replicating at the instance's epoch.
    fn rebuilt(c: &Cluster, inst: &Instance, member: &str, node: &str, generation: u64) {
        c.heartbeat(HeartbeatRequest {
            node: node.to_owned(),
            members: vec![MemberStatus {
                member: member.to_owned(),
                instance: inst.spec.name.clone(),
                healthy: true,
                role: "replica".into(),
                epoch: inst.epoch,
                replication_ok: true,
                container_state: "running".into(),
                address: format!("{node}:3306"),
                rebuild_generation: generation,
                cpu: inst.spec.resources.cpu,
                memory_bytes: inst.spec.resources.memory << 20,
                ..Default::default()
            }],
            ..Default::default()
        });
    }

    /// A store that refuses to write operations while `fail_ops` is set (a backend failing
    /// between two writes); everything else goes to SQLite in memory.
    struct FailingOps {
        inner: SqliteStore,
        fail_ops: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for FailingOps {
        async fn put_node(&self, n: &crate::model::Node) -> crate::store::Result<()> {
            self.inner.put_node(n).await
        }
        async fn nodes(&self) -> crate::store::Result<Vec<crate::model::Node>> {
            self.inner.nodes().await
        }
        async fn set_node_admin(
            &self,
            name: &str,
            admin: crate::model::NodeAdmin,
        ) -> crate::store::Result<crate::model::Node> {
            self.inner.set_node_admin(name, admin).await
        }
        async fn create_instance(
            &self,
            i: &Instance,
            e: &[crate::model::Event],
        ) -> crate::store::Result<Instance> {
            self.inner.create_instance(i, e).await
        }
        async fn update_instance(
            &self,
            i: &Instance,
            e: &[crate::model::Event],
        ) -> crate::store::Result<Instance> {
            self.inner.update_instance(i, e).await
        }
        async fn delete_instance(
            &self,
            name: &str,
            rev: u64,
            e: &[crate::model::Event],
        ) -> crate::store::Result<()> {
            self.inner.delete_instance(name, rev, e).await
        }
        async fn instance(&self, name: &str) -> crate::store::Result<Option<Instance>> {
            self.inner.instance(name).await
        }
        async fn instances(&self) -> crate::store::Result<Vec<Instance>> {
            self.inner.instances().await
        }
        async fn append_events(
            &self,
            e: &[crate::model::Event],
        ) -> crate::store::Result<Vec<crate::model::Event>> {
            self.inner.append_events(e).await
        }
        async fn prune_events(&self, before_ms: i64, limit: usize) -> crate::store::Result<usize> {
            self.inner.prune_events(before_ms, limit).await
        }
        async fn events(
            &self,
            i: Option<&str>,
            since: u64,
            limit: usize,
        ) -> crate::store::Result<Vec<crate::model::Event>> {
            self.inner.events(i, since, limit).await
        }
        async fn append_audit(
            &self,
            a: &crate::model::AuditEntry,
        ) -> crate::store::Result<crate::model::AuditEntry> {
            self.inner.append_audit(a).await
        }
        async fn audit(
            &self,
            since: u64,
            limit: usize,
        ) -> crate::store::Result<Vec<crate::model::AuditEntry>> {
            self.inner.audit(since, limit).await
        }
        async fn events_before(
            &self,
            i: Option<&str>,
            before: u64,
            limit: usize,
        ) -> crate::store::Result<Vec<crate::model::Event>> {
            self.inner.events_before(i, before, limit).await
        }
        async fn audit_before(
            &self,
            before: u64,
            limit: usize,
        ) -> crate::store::Result<Vec<crate::model::AuditEntry>> {
            self.inner.audit_before(before, limit).await
        }
        async fn get_meta(&self, key: &str) -> crate::store::Result<Option<String>> {
            self.inner.get_meta(key).await
        }
        async fn put_meta(&self, key: &str, value: &str) -> crate::store::Result<()> {
            if key.starts_with(PREFIX) && self.fail_ops.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::Error::Backend("disk full".into()));
            }
            self.inner.put_meta(key, value).await
        }
        async fn meta_with_prefix(
            &self,
            prefix: &str,
        ) -> crate::store::Result<Vec<(String, String)>> {
            self.inner.meta_with_prefix(prefix).await
        }
        async fn delete_meta(&self, key: &str) -> crate::store::Result<()> {
            self.inner.delete_meta(key).await
        }
    }

    /// `PATCH {"tls": ...}` whose rolling restart cannot start changes nothing and says why;
    /// one that starts has both the operation (carrying the mode) and the mode in the record.
    #[tokio::test]
    async fn a_tls_change_whose_restart_cannot_start_changes_nothing() {
        use mofang_common::DbTls;
        use std::sync::atomic::Ordering;
        let nodes = super::super::testkit::three_ssd_nodes();
        let store = Arc::new(FailingOps {
            inner: SqliteStore::open_in_memory().expect("store"),
            fail_ops: false.into(),
        });
        let c = cluster_on(store.clone(), &nodes).await;
        c.activate().await.expect("activate");
        beat(&c, &nodes);
        c.create_instance(spec("db", 100, None))
            .await
            .expect("create");
        all_healthy(&c, "db");
        let none = BTreeMap::new();

        store.fail_ops.store(true, Ordering::SeqCst);
        let e = c
            .patch_instance("db", &none, None, Some(DbTls::Required), "t")
            .await
            .expect_err("the restart cannot be stored");
        assert!(e.to_string().contains("disk full"), "{e}");
        let stored = store.instance("db").await.expect("read").expect("db");
        assert_eq!(stored.spec.tls, DbTls::Off, "the mode was written");
        assert_eq!(
            lock(&c.inner).instances.get("db").map(|i| i.spec.tls),
            Some(DbTls::Off)
        );
        assert!(c.operations_of("db").await.expect("ops").is_empty());

        store.fail_ops.store(false, Ordering::SeqCst);
        let inst = c
            .patch_instance("db", &none, None, Some(DbTls::Required), "t")
            .await
            .expect("patch");
        assert_eq!(inst.spec.tls, DbTls::Required);
        let ops = c.operations_of("db").await.expect("ops");
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert_eq!(
            (ops[0].kind, ops[0].tls),
            (OpKind::Restart, Some(DbTls::Required))
        );
        let stored = store.instance("db").await.expect("read").expect("db");
        assert_eq!(stored.spec.tls, DbTls::Required);
    }

    /// The scheduler stored the operation of a `tls` change and stopped before the record
    /// write: the next leader writes the mode before the operation's first restart.
    #[tokio::test]
    async fn a_tls_change_stored_only_as_its_operation_reaches_the_record_before_any_restart() {
        use mofang_common::DbTls;
        let nodes = super::super::testkit::three_ssd_nodes();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let c1 = cluster_on(store.clone(), &nodes).await;
        c1.activate().await.expect("activate");
        beat(&c1, &nodes);
        c1.create_instance(spec("db", 100, None))
            .await
            .expect("create");
        all_healthy(&c1, "db");
        let op = c1
            .start_operation_carrying(
                "db",
                OpKind::Restart,
                OpArgs::default(),
                None,
                "t",
                Some(DbTls::Required),
            )
            .await
            .expect("start");
        c1.deactivate();

        let c2 = cluster_on(store.clone(), &nodes).await;
        c2.activate().await.expect("activate");
        beat(&c2, &nodes);
        all_healthy(&c2, "db");
        c2.step_operation(&op.id).await.expect("step");
        let inst = lock(&c2.inner).instances.get("db").cloned().expect("db");
        assert_eq!(inst.spec.tls, DbTls::Required);
        assert!(
            inst.restart_generations.is_empty(),
            "no restart before the mode"
        );
        let events = store.events(Some("db"), 0, 100).await.expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("tls off -> required") && e.message.contains(&op.id)),
            "{events:?}"
        );
        // Then the restarts begin, and the mode is not written again.
        all_healthy(&c2, "db");
        c2.step_operation(&op.id).await.expect("step");
        let inst = lock(&c2.inner).instances.get("db").cloned().expect("db");
        assert_eq!(inst.restart_generations.len(), 1, "{inst:?}");
        assert_eq!(inst.spec.tls, DbTls::Required);
    }

    /// A scale-up's step stored by a leader that died before it wrote the instance record:
    /// the next leader, loading both from the store, writes the member asked on the node the
    /// step names (booked once), waits for it to be seeded, and finishes.
    #[tokio::test]
    async fn a_new_leader_resumes_a_scale_whose_step_never_reached_the_record() {
        let nodes: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| node(n, &[("ssd", 4000)]))
            .collect();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let c1 = cluster_on(store.clone(), &nodes).await;
        c1.activate().await.expect("activate");
        beat(&c1, &nodes);
        let mut s = spec("db", 500, None);
        s.replicas = 1;
        c1.create_instance(s).await.expect("create");
        all_healthy(&c1, "db");
        // Refusals change nothing.
        let scale = |n| OpArgs {
            replicas: Some(n),
            ..Default::default()
        };
        assert!(matches!(
            c1.start_operation("db", OpKind::Scale, scale(1), None, "t")
                .await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            c1.start_operation("db", OpKind::Scale, scale(4), None, "t")
                .await,
            Err(Error::Unplaceable(_))
        ));
        let op = c1
            .start_operation("db", OpKind::Scale, scale(2), None, "t")
            .await
            .expect("scale");
        // The leader decides and stores the step, then dies before the record write.
        let inst = lock(&c1.inner).instances.get("db").cloned().expect("db");
        let members = members_now(&c1, &lock(&c1.inner), &inst);
        let Next::AddReplica { member, donor } = ops::next(&op, &members, now_ms()) else {
            panic!("an add first");
        };
        assert_eq!(member, "db-2");
        assert_eq!(donor.as_deref(), Some("db-1"), "copied from the replica");
        let (node, disk_class) = c1.place_replica(&lock(&c1.inner), &inst).expect("room");
        let mut stored = op.clone();
        stored.steps.push(OpStep {
            action: StepAction::AddReplica {
                member: member.clone(),
                node: node.clone(),
                disk_class,
                donor,
                backup: None,
            },
            state: StepState::Running,
            started_ms: now_ms(),
            ended_ms: 0,
            reason: String::new(),
        });
        c1.save_operation(&stored).await.expect("save");
        c1.deactivate();

        // The next leader.
        let c2 = cluster_on(store.clone(), &nodes).await;
        c2.activate().await.expect("activate");
        beat(&c2, &nodes);
        all_healthy(&c2, "db");
        c2.step_operation(&op.id).await.expect("step");
        let inst = lock(&c2.inner).instances.get("db").cloned().expect("db");
        let added = inst.members.iter().find(|m| m.id == member).expect("added");
        assert_eq!(added.node, node, "on the node the stored step names");
        assert_eq!(inst.spec.replicas, 2);
        assert_eq!(
            inst.seed_donors.get(&member).map(String::as_str),
            Some("db-1")
        );
        // Asked once: the same step again changes nothing.
        let rev = inst.revision;
        c2.step_operation(&op.id).await.expect("step");
        assert_eq!(
            lock(&c2.inner).instances.get("db").map(|i| i.revision),
            Some(rev)
        );
        // Seeded and replicating: the step is done, the donor cleared, the operation ends.
        all_healthy(&c2, "db");
        c2.step_operation(&op.id).await.expect("done");
        c2.step_operation(&op.id).await.expect("succeed");
        let end = c2.operation(&op.id).await.expect("op");
        assert_eq!(end.state, OpState::Succeeded, "{end:?}");
        assert!(end.done.contains(&member));
        let inst = lock(&c2.inner).instances.get("db").cloned().expect("db");
        assert!(inst.seed_donors.is_empty());
        assert_eq!(
            lock(&c2.inner).reserved.get(&node).map(|r| r.members),
            Some(1)
        );
    }

    /// A rebuild is filled from the instance's latest usable backup when it has one, as a
    /// new replica is (decision 164): the step names the backup, the member's assignment
    /// carries it as a replica's restore source in the same write as its rebuild
    /// generation; once the step is done the source goes. Without a backup, nothing names
    /// one (the copy is a replica's).
    #[tokio::test]
    async fn a_rebuild_is_filled_from_the_latest_backup() {
        use crate::backup::{BackupObject, BackupState};
        let nodes = super::super::testkit::three_ssd_nodes();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::testkit::put_fs_repo(&*store, dir.path()).await;
        let c = cluster_on(store, &nodes).await;
        c.activate().await.expect("activate");
        beat(&c, &nodes);
        let mut one = spec("db", 100, None);
        one.replicas = 1;
        c.create_instance(one).await.expect("create");
        all_healthy(&c, "db");
        let inst = lock(&c.inner).instances.get("db").cloned().expect("db");
        let replica = inst
            .members
            .iter()
            .find(|m| m.role == Role::Replica)
            .cloned()
            .expect("replica");
        let rebuild = |c: Arc<Cluster>| {
            let member = replica.id.clone();
            async move {
                let op = c
                    .start_operation(
                        "db",
                        OpKind::Rebuild,
                        OpArgs {
                            member: Some(member),
                            ..OpArgs::default()
                        },
                        None,
                        "t",
                    )
                    .await
                    .expect("rebuild");
                c.step_operation(&op.id).await.expect("step");
                c.operation(&op.id).await.expect("op")
            }
        };
        let restore_of = |c: &Arc<Cluster>| {
            c.watch(&replica.node)
                .current()
                .members
                .iter()
                .find(|a| a.member == replica.id)
                .map(|a| a.restore.clone())
                .expect("assignment")
        };

        // No backup: the step names none, the assignment carries no source.
        let op = rebuild(c.clone()).await;
        match &op.steps[0].action {
            StepAction::Rebuild { backup, .. } => assert_eq!(backup, &None),
            other => panic!("{other:?}"),
        }
        assert_eq!(restore_of(&c), "");
        // Its agent reports it rebuilt, healthy and replicating: done.
        rebuilt(&c, &inst, &replica.id, &replica.node, 1);
        c.step_operation(&op.id).await.expect("step");
        c.step_operation(&op.id).await.expect("step");
        let op = c.operation(&op.id).await.expect("op");
        assert_eq!(op.state, OpState::Succeeded, "{op:?}");

        // A backup whose object is in the repository.
        let mut b =
            super::super::testkit::backup_record("db-1", "db", BackupState::Succeeded, 100, "r");
        let path = "backups/db/db-1/full.mbstream.zst";
        b.objects.push(BackupObject {
            path: path.into(),
            size: 5,
            sha256: "00".into(),
            raw_size: 5,
            encryption: None,
        });
        std::fs::create_dir_all(dir.path().join("backups/db/db-1")).expect("dir");
        std::fs::write(dir.path().join(path), b"bytes").expect("object");
        c.put_backup(&b).await.expect("record");
        let op = rebuild(c.clone()).await;
        match &op.steps[0].action {
            StepAction::Rebuild { backup, .. } => assert_eq!(backup.as_deref(), Some("db-1")),
            other => panic!("{other:?}"),
        }
        let src: mofang_common::backup::RestoreSource =
            serde_json::from_str(&restore_of(&c)).expect("a restore source");
        assert!(
            src.replica && src.backup == "db-1" && src.object == path,
            "{src:?}"
        );
        let inst = lock(&c.inner).instances.get("db").cloned().expect("db");
        assert_eq!(inst.rebuild_generations.get(&replica.id), Some(&2));
        assert!(inst.seed_backups.contains_key(&replica.id));
    }

    /// A rebuild on another node (issue 17): `node` with another type, an unknown node, the
    /// node the member is on and a node holding another member are refused (422) with nothing
    /// stored; a node that fits takes the member at the step: the record names it, the
    /// reservation moved with it, the generation raised; the old node is told and its desired
    /// state no longer has the member. Done once the member reports the rebuild from there.
    #[tokio::test]
    async fn a_rebuild_on_another_node_moves_the_member_and_its_reservation() {
        let mut nodes = super::super::testkit::three_ssd_nodes();
        nodes.push(node("d", &[("ssd", 1000)]));
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let c = cluster_on(store, &nodes).await;
        c.activate().await.expect("activate");
        beat(&c, &nodes);
        let mut one = spec("db", 100, None);
        one.replicas = 1;
        c.create_instance(one).await.expect("create");
        all_healthy(&c, "db");
        let inst = lock(&c.inner).instances.get("db").cloned().expect("db");
        let replica = inst
            .members
            .iter()
            .find(|m| m.role == Role::Replica)
            .cloned()
            .expect("replica");
        let primary = inst.primary().cloned().expect("primary");
        let free = nodes
            .iter()
            .map(|n| n.name.clone())
            .find(|n| inst.members.iter().all(|m| &m.node != n))
            .expect("a node without a member");
        let args = |node: &str| OpArgs {
            member: Some(replica.id.clone()),
            node: Some(node.to_owned()),
            ..OpArgs::default()
        };
        for (kind, a, why) in [
            (
                OpKind::Restart,
                OpArgs {
                    node: Some(free.clone()),
                    ..OpArgs::default()
                },
                "rebuild only",
            ),
            (OpKind::Rebuild, args("nowhere"), "not a known node"),
            (OpKind::Rebuild, args(&replica.node), "already"),
            (OpKind::Rebuild, args(&primary.node), "one member per node"),
        ] {
            match c.start_operation("db", kind, a, None, "t").await {
                Err(Error::Invalid(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(c.operations_of("db").await.expect("ops").is_empty());

        let op = c
            .start_operation("db", OpKind::Rebuild, args(&free), None, "t")
            .await
            .expect("a move to a free node");
        assert_eq!(op.node.as_deref(), Some(free.as_str()));
        let mut old_node = c.watch(&replica.node);
        old_node.current_and_update().expect("served");
        c.step_operation(&op.id).await.expect("step");
        let inst = lock(&c.inner).instances.get("db").cloned().expect("db");
        let moved = inst
            .members
            .iter()
            .find(|m| m.id == replica.id)
            .expect("member");
        assert_eq!(moved.node, free, "the record names the new node");
        assert_eq!(inst.rebuild_generations.get(&replica.id), Some(&1));
        {
            let inner = lock(&c.inner);
            let on = |n: &str| inner.reserved.get(n).map_or(0, |r| r.members);
            assert_eq!(
                (on(&free), on(&replica.node)),
                (1, 0),
                "the reservation moved"
            );
        }
        assert!(
            old_node.has_changed().expect("watch"),
            "the old node was told"
        );
        assert!(
            old_node
                .current_and_update()
                .expect("served")
                .members
                .iter()
                .all(|a| a.member != replica.id),
            "the old node no longer runs it"
        );
        let op = c.operation(&op.id).await.expect("op");
        match &op.steps[0].action {
            StepAction::Rebuild { node, .. } => assert_eq!(node.as_deref(), Some(free.as_str())),
            other => panic!("{other:?}"),
        }
        // The new node's agent reports it rebuilt, healthy and replicating: done.
        all_healthy(&c, "db");
        rebuilt(&c, &inst, &replica.id, &free, 1);
        c.step_operation(&op.id).await.expect("step");
        c.step_operation(&op.id).await.expect("step");
        let op = c.operation(&op.id).await.expect("op");
        assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    }
}
