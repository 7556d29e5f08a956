//! etcd implementation of [`Store`](super::Store): the shared key/value store logic
//! ([`KvStore`]) on etcd v3 transactions (etcd 3.4 and later).
//!
//! A write is one `Txn`: it compares each record's `mod_revision` (or `create_revision == 0`
//! to create) and the id counter's, puts or deletes when all hold, and otherwise reads the
//! compared keys back so the writer learns which condition failed. etcd commits a
//! transaction through Raft to a quorum's WAL (fsynced) before it answers. Reads are
//! linearizable (etcd's default, not `serializable`), so they never miss an acknowledged
//! write (<https://etcd.io/docs/v3.4/learning/api_guarantees/>).

use super::kv::{Commit, Entry, Expect, Kv, KvStore, Op};
use super::{Error, Result};
use crate::config::BackendTls;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, SortOrder,
    SortTarget, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Operations per transaction list: etcd's default `--max-txn-ops` is 128 per list
/// (compares, success, failure); the writer stays well below.
const MAX_TXN_OPS: usize = 64;
/// Value bytes per transaction: etcd's default `--max-request-bytes` is 1.5 MiB.
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Attempts of a read that fails for want of an answer.
const READ_ATTEMPTS: u32 = 4;
/// Timeout of one request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The store on etcd.
pub type EtcdStore = KvStore<EtcdKv>;

impl KvStore<EtcdKv> {
    /// A store keeping everything under `prefix` (e.g. `mofang/`) in the etcd cluster at
    /// `endpoints` (`http://host:port`, or `https://host:port` with `tls.ca_file`). Connects
    /// lazily: an unreachable etcd shows in the first call, not here.
    pub async fn etcd(endpoints: &[String], tls: &BackendTls, prefix: &str) -> Result<Self> {
        let client = connect(endpoints, tls)
            .await
            .map_err(|e| Error::Backend(format!("etcd connect: {e}")))?;
        Ok(KvStore::start(EtcdKv { client }, prefix))
    }
}

/// Why no client of etcd could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// A TLS file could not be read.
    #[error("cannot read etcd.{field} {path}: {message}")]
    File {
        /// `ca_file`, `cert_file` or `key_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The client refused the options.
    #[error(transparent)]
    Client(#[from] etcd_client::Error),
}

fn read_pem(field: &'static str, path: &Path) -> std::result::Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| ConnectError::File {
        field,
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A client of the etcd cluster at `endpoints`, with the timeouts the scheduler uses, over
/// TLS when `tls` names a CA (only that CA is trusted; the client certificate is presented
/// when given).
pub(crate) async fn connect(
    endpoints: &[String],
    tls: &BackendTls,
) -> std::result::Result<Client, ConnectError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
    if let Some(ca) = &tls.ca_file {
        let mut t =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem("ca_file", ca)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(
                read_pem("cert_file", cert)?,
                read_pem("key_file", key)?,
            ));
        }
        options = options.with_tls(t);
    }
    Ok(Client::connect(endpoints, Some(options)).await?)
}

/// etcd as a [`Kv`] backend.
pub struct EtcdKv {
    client: Client,
}

impl std::fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdKv")
    }
}

/// Whether a failed call may succeed if tried again (etcd unreachable or without leader).
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// The key just after every key starting with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn entry(kv: &etcd_client::KeyValue) -> Result<Entry> {
    let key = kv
        .key_str()
        .map_err(|e| Error::Backend(format!("etcd key is not UTF-8: {e}")))?
        .to_owned();
    let version = u64::try_from(kv.mod_revision())
        .map_err(|_| Error::Backend(format!("negative mod_revision of {key}")))?;
    Ok(Entry {
        key,
        value: kv.value().to_vec(),
        version,
    })
}

fn revision(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Backend(format!("revision {v} out of etcd's range")))
}

impl EtcdKv {
    /// Retries a read while etcd is unreachable or has no leader.
    async fn read<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut attempt = 1;
        loop {
            match f(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < READ_ATTEMPTS && transient(&e) => {
                    tracing::debug!(error = %e, attempt, "etcd read failed, retrying");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(Error::Backend(format!("etcd read: {e}"))),
            }
        }
    }
}

#[async_trait::async_trait]
impl Kv for EtcdKv {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn max_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn max_bytes(&self) -> usize {
        MAX_TXN_BYTES
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let resp = self
                .read(|mut c| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { c.txn(txn).await }
                })
                .await?;
            for op in resp.op_responses() {
                match op {
                    TxnOpResponse::Get(get) => out.push(get.kvs().first().map(entry).transpose()?),
                    other => {
                        return Err(Error::Backend(format!(
                            "etcd answered a read with {other:?}"
                        )))
                    }
                }
            }
        }
        if out.len() != keys.len() {
            return Err(Error::Backend(format!(
                "etcd answered {} of {} reads",
                out.len(),
                keys.len()
            )));
        }
        Ok(out)
    }

    async fn scan(&self, prefix: &str, from: &str, limit: usize) -> Result<Vec<Entry>> {
        let mut options = GetOptions::new().with_range(prefix_end(prefix));
        if let Ok(limit) = i64::try_from(limit) {
            options = options.with_limit(limit);
        }
        let resp = self
            .read(|mut c| {
                let options = options.clone();
                async move { c.get(from, Some(options)).await }
            })
            .await?;
        resp.kvs().iter().map(entry).collect()
    }

    async fn scan_back(&self, prefix: &str, before: &str, limit: usize) -> Result<Vec<Entry>> {
        // [prefix, min(before, the prefix's end)), newest key first, then put in key order.
        let end = prefix_end(prefix);
        let end = if before.as_bytes() < end.as_slice() {
            before.as_bytes().to_vec()
        } else {
            end
        };
        let mut options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Descend);
        if let Ok(limit) = i64::try_from(limit) {
            options = options.with_limit(limit);
        }
        let resp = self
            .read(|mut c| {
                let options = options.clone();
                async move { c.get(prefix, Some(options)).await }
            })
            .await?;
        let mut out: Vec<Entry> = resp.kvs().iter().map(entry).collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    async fn commit(&self, ops: &[Op]) -> Result<Commit> {
        let mut compares = Vec::new();
        // (index of the op, key, condition) of each compare, in order.
        let mut checks: Vec<(usize, &str, Expect)> = Vec::new();
        let mut success = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Put { key, value, expect } => {
                    if let Some(expect) = expect {
                        compares.push(match expect {
                            Expect::Absent => {
                                Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
                            }
                            Expect::Version(v) => {
                                Compare::mod_revision(key.as_str(), CompareOp::Equal, revision(*v)?)
                            }
                        });
                        checks.push((i, key, *expect));
                    }
                    success.push(TxnOp::put(key.as_str(), value.clone(), None));
                }
                Op::Delete { key, version } => {
                    compares.push(Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        revision(*version)?,
                    ));
                    checks.push((i, key, Expect::Version(*version)));
                    success.push(TxnOp::delete(key.as_str(), None));
                }
            }
        }
        let failure: Vec<TxnOp> = checks
            .iter()
            .map(|(_, key, _)| TxnOp::get(*key, None))
            .collect();
        let txn = Txn::new().when(compares).and_then(success).or_else(failure);
        // A write is not retried here: etcd may have applied it before the answer got lost.
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| Error::Backend(format!("etcd write (outcome unknown): {e}")))?;
        if resp.succeeded() {
            let rev = resp
                .header()
                .map(|h| h.revision())
                .and_then(|r| u64::try_from(r).ok())
                .ok_or_else(|| Error::Backend("etcd answered without a revision".to_owned()))?;
            let written = ops
                .iter()
                .filter_map(|op| match op {
                    Op::Put { key, .. } => Some((key.clone(), rev)),
                    Op::Delete { .. } => None,
                })
                .collect::<HashMap<_, _>>();
            return Ok(Commit::Applied(written));
        }
        // The failure branch read every compared key at the revision the compares saw.
        let mut failed = Vec::new();
        for ((index, _, expect), op) in checks.iter().zip(resp.op_responses()) {
            let TxnOpResponse::Get(get) = op else {
                return Err(Error::Backend(format!(
                    "etcd answered a failed transaction with {op:?}"
                )));
            };
            let current = get.kvs().first().map(entry).transpose()?;
            let holds = match (expect, current) {
                (Expect::Absent, None) => true,
                (Expect::Version(v), Some(e)) => e.version == *v,
                _ => false,
            };
            if !holds {
                failed.push(*index);
            }
        }
        Ok(Commit::Rejected(failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("mofang/"), b"mofang0".to_vec());
        assert_eq!(prefix_end("ab"), b"ac".to_vec());
    }
}
