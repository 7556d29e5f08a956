//! History retention on the leader (decision 174): events older than
//! `[history] events_keep_days` and finished operations and batches that ended more than
//! `operations_keep_days` ago are deleted from the store, so a long-lived cluster's store (and
//! every read that lists it) does not grow without end. The audit log is never pruned.
//!
//! Which records go is decided by [`expired`] (pure); the store deletes events a prefix of
//! the log at a time ([`crate::store::Store::prune_events`]).

use super::operations::{BATCH_PREFIX, PREFIX};
use super::{Cluster, Result};
use crate::config::HistoryConfig;
use crate::ops::batch::Batch;
use crate::ops::Operation;
use std::collections::HashSet;
use tracing::{info, warn};

const DAY_MS: i64 = 86_400_000;
/// Events deleted per store call; a pass makes at most [`EVENT_ROUNDS`] calls, so a first
/// pass over a large backlog is spread over several passes.
const EVENTS_PER_CALL: usize = 1_000;
const EVENT_ROUNDS: usize = 100;

/// A stored record as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Its metadata key.
    pub key: String,
    /// Its id.
    pub id: String,
    /// Succeeded, failed or cancelled.
    pub finished: bool,
    /// When it ended (unix ms; 0 while running).
    pub ended_ms: i64,
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events.
    pub events: usize,
    /// Operation records.
    pub operations: usize,
    /// Batch records.
    pub batches: usize,
}

/// The keys of the operations and batches to delete: finished, and ended before `cutoff_ms`.
/// An operation a kept batch names stays with it (the batch's view reads its operations).
pub(crate) fn expired(
    ops: &[Record],
    batches: &[(Record, Vec<String>)],
    cutoff_ms: i64,
) -> (Vec<String>, Vec<String>) {
    let old = |r: &Record| r.finished && r.ended_ms > 0 && r.ended_ms < cutoff_ms;
    let mut held: HashSet<&str> = HashSet::new();
    let mut gone_batches = Vec::new();
    for (b, op_ids) in batches {
        if old(b) {
            gone_batches.push(b.key.clone());
        } else {
            held.extend(op_ids.iter().map(String::as_str));
        }
    }
    let gone_ops = ops
        .iter()
        .filter(|r| old(r) && !held.contains(r.id.as_str()))
        .map(|r| r.key.clone())
        .collect();
    (gone_ops, gone_batches)
}

impl Cluster {
    /// One retention pass at `now` (unix ms). The leader only.
    pub async fn prune_history(&self, cfg: &HistoryConfig, now: i64) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        if cfg.events_keep_days > 0 {
            let cutoff = now - i64::from(cfg.events_keep_days) * DAY_MS;
            for _ in 0..EVENT_ROUNDS {
                let n = self.store.prune_events(cutoff, EVENTS_PER_CALL).await?;
                pruned.events += n;
                if n < EVENTS_PER_CALL {
                    break;
                }
            }
        }
        if cfg.operations_keep_days > 0 {
            let cutoff = now - i64::from(cfg.operations_keep_days) * DAY_MS;
            let mut ops = Vec::new();
            for (key, value) in self.store.meta_with_prefix(PREFIX).await? {
                // A record that does not parse is left for an operator to look at.
                if let Ok(op) = serde_json::from_str::<Operation>(&value) {
                    ops.push(Record {
                        key,
                        id: op.id,
                        finished: op.state.is_terminal(),
                        ended_ms: op.ended_ms,
                    });
                }
            }
            let mut batches = Vec::new();
            for (key, value) in self.store.meta_with_prefix(BATCH_PREFIX).await? {
                if let Ok(b) = serde_json::from_str::<Batch>(&value) {
                    let op_ids = b.items.iter().filter_map(|i| i.operation.clone()).collect();
                    batches.push((
                        Record {
                            key,
                            id: b.id,
                            finished: b.state.is_terminal(),
                            ended_ms: b.ended_ms,
                        },
                        op_ids,
                    ));
                }
            }
            let (gone_ops, gone_batches) = expired(&ops, &batches, cutoff);
            // Batches first: an operation is never deleted while a kept batch names it.
            for key in &gone_batches {
                self.store.delete_meta(key).await?;
                pruned.batches += 1;
            }
            for key in &gone_ops {
                self.store.delete_meta(key).await?;
                pruned.operations += 1;
            }
        }
        if pruned != Pruned::default() {
            info!(
                events = pruned.events,
                operations = pruned.operations,
                batches = pruned.batches,
                "history older than its retention deleted"
            );
        }
        Ok(pruned)
    }

    /// [`Cluster::prune_history`] now, its failure logged (the next pass tries again).
    pub async fn prune_history_now(&self, cfg: &HistoryConfig) {
        if let Err(e) = self.prune_history(cfg, crate::model::now_ms()).await {
            warn!(error = %e, "history retention pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use crate::store::contract::finished_operation;
    use crate::store::Store;

    fn rec(id: &str, finished: bool, ended_ms: i64) -> Record {
        Record {
            key: format!("k/{id}"),
            id: id.into(),
            finished,
            ended_ms,
        }
    }

    #[test]
    fn only_finished_records_past_the_cutoff_go_and_a_kept_batch_keeps_its_operations() {
        let ops = [
            rec("old", true, 100),
            rec("new", true, 5_000),
            rec("running", false, 0),
            // Finished long ago but named by a batch that ended recently.
            rec("in-kept-batch", true, 200),
            // Named by a batch that goes too.
            rec("in-old-batch", true, 300),
        ];
        let batches = [
            (rec("b-new", true, 4_000), vec!["in-kept-batch".to_owned()]),
            (rec("b-old", true, 400), vec!["in-old-batch".to_owned()]),
            (rec("b-running", false, 0), vec![]),
        ];
        let (gone_ops, gone_batches) = expired(&ops, &batches, 1_000);
        assert_eq!(gone_ops, ["k/old", "k/in-old-batch"]);
        assert_eq!(gone_batches, ["k/b-old"]);
        let (none, _) = expired(&ops, &batches, 0);
        assert!(none.is_empty());
    }

    fn at(ms: i64) -> Event {
        Event {
            id: 0,
            at_ms: ms,
            instance: Some("db".into()),
            node: None,
            kind: "placed".into(),
            message: String::new(),
        }
    }

    /// On a cluster over an in-memory store: old events and finished operations go, recent
    /// ones and the audit log stay; 0 keeps everything.
    #[tokio::test]
    async fn a_pass_deletes_what_its_retention_expired_and_nothing_else() {
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
            crate::store::sqlite::SqliteStore::open_in_memory().expect("store"),
        );
        let now = 1_000 * DAY_MS;
        store
            .append_events(&[
                at(now - 100 * DAY_MS),
                at(now - 91 * DAY_MS),
                at(now - DAY_MS),
            ])
            .await
            .expect("events");
        store
            .put_meta(
                "operation/op-old",
                &finished_operation("op-old", "db", now - 95 * DAY_MS),
            )
            .await
            .expect("op");
        store
            .put_meta(
                "operation/op-new",
                &finished_operation("op-new", "db", now - 2 * DAY_MS),
            )
            .await
            .expect("op");
        let cluster = super::super::testkit::cluster_on(store.clone(), &[]).await;
        let keep_all = HistoryConfig {
            events_keep_days: 0,
            operations_keep_days: 0,
        };
        assert_eq!(
            cluster.prune_history(&keep_all, now).await.expect("pass"),
            Pruned::default()
        );
        let pruned = cluster
            .prune_history(&HistoryConfig::default(), now)
            .await
            .expect("pass");
        assert_eq!(
            pruned,
            Pruned {
                events: 2,
                operations: 1,
                batches: 0
            }
        );
        let left = store.events(None, 0, 10).await.expect("events");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, 3);
        let ops = store.meta_with_prefix("operation/").await.expect("ops");
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].0, "operation/op-new");
    }
}
