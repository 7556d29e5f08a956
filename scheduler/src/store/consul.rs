//! Consul KV implementation of [`Store`](super::Store): the shared key/value store logic
//! ([`KvStore`]) on Consul's transaction endpoint.
//!
//! Writes are one `PUT /v1/txn` each: `cas` on the record's `ModifyIndex` (index 0 to
//! create), `check-index` + `delete-cas` to delete, `set` for event and audit records, and
//! `cas` on the id counter. Consul applies a transaction as one Raft entry, on a quorum of
//! servers' disks before it answers. Reads are `?consistent`: the serving server first
//! confirms with a quorum that it is still the leader, so a read never misses an
//! acknowledged write, even during a Consul leader change
//! (<https://developer.hashicorp.com/consul/api-docs/features/consistency>).

use super::kv::{Commit, Entry, Expect, Kv, KvStore, Op};
use super::{Error, Result};
use crate::consul::{self, ConsulClient, KvEntry, TxnOp, TxnOutcome};
use std::collections::HashMap;
use std::time::Duration;

/// Consul's limit of operations in one transaction (`maxTxnOps`).
const MAX_TXN_OPS: usize = 64;
/// Value bytes per transaction: Consul takes requests up to 512 KiB (`txn_max_req_len`)
/// and values travel in base64 (4/3 larger), so half of it leaves room for keys and JSON.
const MAX_TXN_BYTES: usize = 256 * 1024;
/// Attempts of a read that fails for want of an answer or with a 5xx (no leader yet).
const READ_ATTEMPTS: u32 = 4;

/// The store on Consul KV.
pub type ConsulStore = KvStore<ConsulKv>;

impl KvStore<ConsulKv> {
    /// A store keeping everything under `prefix` (e.g. `mofang/`) in the Consul KV reached
    /// through `client`. Starts its writer task on the current Tokio runtime; does no I/O.
    pub fn consul(client: ConsulClient, prefix: &str) -> Self {
        KvStore::start(ConsulKv { client }, prefix)
    }
}

/// Consul KV as a [`Kv`] backend.
#[derive(Debug)]
pub struct ConsulKv {
    client: ConsulClient,
}

impl ConsulKv {
    /// Retries a read while Consul is unreachable or answers 5xx (e.g. no leader yet).
    async fn read<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = consul::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < READ_ATTEMPTS && transient(&e) => {
                    tracing::debug!(error = %e, attempt, "consul read failed, retrying");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(backend(what, &e)),
            }
        }
    }
}

fn transient(e: &consul::Error) -> bool {
    match e {
        consul::Error::Request { .. } => true,
        consul::Error::Status { status, .. } => *status >= 500,
        _ => false,
    }
}

fn backend(what: &str, e: &consul::Error) -> Error {
    Error::Backend(format!("consul {what}: {}", mofang_common::error_chain(e)))
}

/// Whether a transaction error says a check-and-set condition did not hold (Consul 1.8's
/// wording: `index is stale`, `current modify index N != M`, `key ... doesn't exist`).
fn is_condition(what: &str) -> bool {
    what.contains("index is stale")
        || what.contains("current modify index")
        || what.contains("doesn't exist")
}

fn entry(e: KvEntry) -> Entry {
    Entry {
        key: e.key,
        value: e.value,
        version: e.modify_index,
    }
}

#[async_trait::async_trait]
impl Kv for ConsulKv {
    fn name(&self) -> &'static str {
        "consul"
    }

    fn max_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn cost(&self, op: &Op) -> usize {
        match op {
            Op::Put { .. } => 1,
            // check-index, then delete-cas (which alone accepts a missing key).
            Op::Delete { .. } => 2,
        }
    }

    fn max_bytes(&self) -> usize {
        MAX_TXN_BYTES
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        if let [key] = keys {
            let found = self.read("read", || self.client.kv_get(key)).await?;
            return Ok(vec![found.map(entry)]);
        }
        // A read-only transaction is one consistent read of many keys. `get` fails the
        // whole transaction on a missing key and names it: read the others again without it.
        let mut found: HashMap<String, KvEntry> = HashMap::new();
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let mut wanted: Vec<&String> = chunk.iter().collect();
            while !wanted.is_empty() {
                let ops: Vec<TxnOp> = wanted
                    .iter()
                    .map(|k| TxnOp::Get { key: (*k).clone() })
                    .collect();
                match self.read("read", || self.client.txn(&ops)).await? {
                    TxnOutcome::Applied(entries) => {
                        found.extend(entries.into_iter().map(|e| (e.key.clone(), e)));
                        break;
                    }
                    TxnOutcome::RolledBack(errors) => {
                        if let Some((_, what)) = errors
                            .iter()
                            .find(|(_, what)| !what.contains("doesn't exist"))
                        {
                            return Err(Error::Backend(format!(
                                "consul refused a read transaction: {what}"
                            )));
                        }
                        let missing: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
                        tracing::trace!(
                            missing = missing.len(),
                            of = wanted.len(),
                            "read again without missing keys"
                        );
                        let before = wanted.len();
                        wanted = wanted
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| !missing.contains(i))
                            .map(|(_, k)| k)
                            .collect();
                        if wanted.len() == before {
                            return Err(Error::Backend(
                                "consul rolled back a read without naming a key".to_owned(),
                            ));
                        }
                    }
                }
            }
        }
        Ok(keys
            .iter()
            .map(|k| found.get(k).cloned().map(entry))
            .collect())
    }

    async fn scan(&self, prefix: &str, from: &str, limit: usize) -> Result<Vec<Entry>> {
        // Consul lists a whole prefix; the layout keeps prefixes small (chunks of ids).
        let all = self.read("list", || self.client.kv_list(prefix)).await?;
        Ok(all
            .into_iter()
            .filter(|e| e.key.as_str() >= from)
            .take(limit)
            .map(entry)
            .collect())
    }

    async fn scan_back(&self, prefix: &str, before: &str, limit: usize) -> Result<Vec<Entry>> {
        let all = self.read("list", || self.client.kv_list(prefix)).await?;
        let below: Vec<_> = all
            .into_iter()
            .filter(|e| e.key.as_str() < before)
            .collect();
        let skip = below.len().saturating_sub(limit);
        Ok(below.into_iter().skip(skip).map(entry).collect())
    }

    async fn commit(&self, ops: &[Op]) -> Result<Commit> {
        let mut txn = Vec::with_capacity(ops.len() + 4);
        // Index of the logical op behind each Consul op.
        let mut origin = Vec::with_capacity(ops.len() + 4);
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Put {
                    key,
                    value,
                    expect: None,
                } => txn.push(TxnOp::Set {
                    key: key.clone(),
                    value: value.clone(),
                }),
                Op::Put {
                    key,
                    value,
                    expect: Some(expect),
                } => txn.push(TxnOp::Cas {
                    key: key.clone(),
                    value: value.clone(),
                    index: match expect {
                        Expect::Absent => 0,
                        Expect::Version(v) => *v,
                    },
                }),
                Op::Delete { key, version } => {
                    txn.push(TxnOp::CheckIndex {
                        key: key.clone(),
                        index: *version,
                    });
                    origin.push(i);
                    txn.push(TxnOp::DeleteCas {
                        key: key.clone(),
                        index: *version,
                    });
                }
            }
            origin.push(i);
        }
        // A write is not retried here: Consul may have applied it before the answer got lost.
        let outcome = self
            .client
            .txn(&txn)
            .await
            .map_err(|e| backend("write (outcome unknown)", &e))?;
        match outcome {
            TxnOutcome::Applied(entries) => {
                let written: HashMap<String, u64> = ops
                    .iter()
                    .filter_map(|op| match op {
                        Op::Put { key, .. } => Some(key.as_str()),
                        Op::Delete { .. } => None,
                    })
                    .filter_map(|key| {
                        entries
                            .iter()
                            .find(|e| e.key == key)
                            .map(|e| (key.to_owned(), e.modify_index))
                    })
                    .collect();
                Ok(Commit::Applied(written))
            }
            TxnOutcome::RolledBack(errors) => {
                tracing::debug!(?errors, "consul transaction rolled back");
                // Only failed conditions may be retried or answered as conflicts; anything
                // else (a value too large, an ACL refusal) is an error of the write itself.
                if let Some((_, what)) = errors.iter().find(|(_, what)| !is_condition(what)) {
                    return Err(Error::Backend(format!(
                        "consul refused the write (nothing applied): {what}"
                    )));
                }
                let mut failed: Vec<usize> = errors
                    .iter()
                    .filter_map(|(index, _)| origin.get(*index).copied())
                    .collect();
                failed.dedup();
                Ok(Commit::Rejected(failed))
            }
        }
    }
}
