//! Batches (issue 17 point 3): one operation on every instance a label selector chose, with
//! at most `max_parallel` running at once, no new one started after `max_failures` failed.
//! The record and the pure decision of what to start or cancel next; the cluster stores and
//! acts (`cluster/operations.rs`).

use super::{OpKind, OpState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One instance of a batch and its operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    /// The instance.
    pub instance: String,
    /// Its operation, once started.
    #[serde(default)]
    pub operation: Option<String>,
    /// `pending`, then the operation's state; `not_started` when the batch stopped first.
    pub state: String,
    /// Why it failed or was not started.
    #[serde(default)]
    pub reason: String,
}

/// A batch, stored as it goes (`batch/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Batch {
    /// `batch-<ms>-<hex>`.
    pub id: String,
    /// The label selector that chose the instances (at creation).
    pub selector: String,
    /// The operation run on each.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// Each operation's timeout (ms).
    pub timeout_ms: i64,
    /// At most this many operations run at once.
    pub max_parallel: usize,
    /// After this many failed operations no new one starts.
    pub max_failures: usize,
    /// `running`, `succeeded`, `failed` (an operation failed), `cancelled`.
    pub state: OpState,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Ended (unix ms; 0 until then).
    #[serde(default)]
    pub ended_ms: i64,
    /// An operator asked to cancel: running operations are cancelled, none started.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Who asked.
    #[serde(default)]
    pub requested_by: String,
    /// The instances, in the order they are taken.
    pub items: Vec<BatchItem>,
}

/// What to do for a batch now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchPlan {
    /// Instances whose operation to start now.
    pub start: Vec<String>,
    /// Operations to cancel (the batch is cancelled).
    pub cancel: Vec<String>,
    /// The batch ends in this state (nothing running, nothing left to start).
    pub finish: Option<OpState>,
}

/// Folds the operations' states (`by operation id`) into the items, then decides. Pure.
pub fn plan(batch: &mut Batch, ops: &BTreeMap<String, OpState>) -> BatchPlan {
    for item in &mut batch.items {
        if let Some(state) = item.operation.as_ref().and_then(|id| ops.get(id)) {
            item.state = state_name(*state).into();
        }
    }
    let running: Vec<String> = batch
        .items
        .iter()
        .filter(|i| i.state == "running")
        .filter_map(|i| i.operation.clone())
        .collect();
    let failed = batch
        .items
        .iter()
        .filter(|i| i.state == "failed" || i.state == "cancelled")
        .count();
    let mut plan = BatchPlan::default();
    let stopping = batch.cancel_requested || failed >= batch.max_failures;
    if stopping {
        if batch.cancel_requested {
            plan.cancel = running.clone();
        }
        for item in batch.items.iter_mut().filter(|i| i.state == "pending") {
            item.state = "not_started".into();
            item.reason = if batch.cancel_requested {
                "the batch was cancelled".into()
            } else {
                format!(
                    "{failed} operations failed (max_failures {})",
                    batch.max_failures
                )
            };
        }
    } else {
        let room = batch.max_parallel.saturating_sub(running.len());
        plan.start = batch
            .items
            .iter()
            .filter(|i| i.state == "pending")
            .take(room)
            .map(|i| i.instance.clone())
            .collect();
    }
    let left = batch
        .items
        .iter()
        .any(|i| i.state == "pending" || i.state == "running");
    if !left && plan.start.is_empty() {
        plan.finish = Some(if batch.cancel_requested {
            OpState::Cancelled
        } else if failed > 0 {
            OpState::Failed
        } else {
            OpState::Succeeded
        });
    }
    plan
}

fn state_name(s: OpState) -> &'static str {
    match s {
        OpState::Pending | OpState::Running => "running",
        OpState::Succeeded => "succeeded",
        OpState::Failed => "failed",
        OpState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, par: usize, fails: usize) -> Batch {
        Batch {
            id: "b".into(),
            selector: "team=pay".into(),
            kind: OpKind::Restart,
            timeout_ms: 1000,
            max_parallel: par,
            max_failures: fails,
            state: OpState::Running,
            created_ms: 0,
            ended_ms: 0,
            cancel_requested: false,
            requested_by: "t".into(),
            items: (0..n)
                .map(|i| BatchItem {
                    instance: format!("i{i}"),
                    operation: None,
                    state: "pending".into(),
                    reason: String::new(),
                })
                .collect(),
        }
    }

    /// Starts what the plan says (operation id = "op-<instance>").
    fn start(b: &mut Batch, p: &BatchPlan) {
        for name in &p.start {
            let it = b.items.iter_mut().find(|i| &i.instance == name).unwrap();
            it.operation = Some(format!("op-{name}"));
            it.state = "running".into();
        }
    }

    #[test]
    fn never_more_than_max_parallel_and_all_succeed() {
        let mut b = batch(5, 2, 1);
        let mut ops = BTreeMap::new();
        let mut max_running = 0;
        for _ in 0..20 {
            let p = plan(&mut b, &ops);
            if p.finish.is_some() {
                assert_eq!(p.finish, Some(OpState::Succeeded));
                break;
            }
            start(&mut b, &p);
            let running: Vec<String> = b
                .items
                .iter()
                .filter(|i| i.state == "running")
                .filter_map(|i| i.operation.clone())
                .collect();
            max_running = max_running.max(running.len());
            // One finishes per round.
            if let Some(id) = running.first() {
                ops.insert(id.clone(), OpState::Succeeded);
            }
        }
        assert_eq!(max_running, 2);
        assert!(b.items.iter().all(|i| i.state == "succeeded"), "{b:?}");
    }

    #[test]
    fn no_new_operation_after_max_failures() {
        let mut b = batch(4, 1, 1);
        let p = plan(&mut b, &BTreeMap::new());
        assert_eq!(p.start, ["i0"]);
        start(&mut b, &p);
        let ops = BTreeMap::from([("op-i0".to_owned(), OpState::Failed)]);
        let p = plan(&mut b, &ops);
        assert!(p.start.is_empty(), "{p:?}");
        assert_eq!(p.finish, Some(OpState::Failed));
        assert!(
            b.items[1..].iter().all(|i| i.state == "not_started"),
            "{b:?}"
        );
    }

    #[test]
    fn cancel_cancels_the_running_and_starts_nothing() {
        let mut b = batch(3, 2, 1);
        let p = plan(&mut b, &BTreeMap::new());
        start(&mut b, &p);
        b.cancel_requested = true;
        let p = plan(&mut b, &BTreeMap::new());
        assert_eq!(p.cancel, ["op-i0", "op-i1"]);
        assert!(p.start.is_empty() && p.finish.is_none());
        let ops = BTreeMap::from([
            ("op-i0".to_owned(), OpState::Cancelled),
            ("op-i1".to_owned(), OpState::Succeeded),
        ]);
        assert_eq!(plan(&mut b, &ops).finish, Some(OpState::Cancelled));
    }
}
