//! The re-encryption pass: every instance whose secrets are in clear (a store written before
//! secrets were sealed) or sealed by an older key is written again through the cluster, so
//! the active key seals it; then every older key that seals nothing is retired. Run by the
//! leader when it takes charge and by `POST /v1/keyring/rotate`.

use super::{Rotation, SealedStore};
use crate::cluster::{self, Cluster, Resealed};
use crate::model::{now_ms, Event, EventKind};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Rounds of the pass: an instance busy with an operation is tried again next round.
const ROUNDS: usize = 50;
/// Pause between rounds.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// What a re-encryption pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reencrypted {
    /// Instances written again.
    pub resealed: usize,
    /// Keys retired.
    pub retired: Vec<u32>,
    /// Instances still not sealed by the active key (busy all along, or this scheduler
    /// stopped leading): a later pass finishes them.
    pub left: usize,
    /// Other records sealed whole (backup repositories) written again.
    pub resealed_records: usize,
}

fn event(kind: EventKind, message: String) -> Event {
    Event {
        id: 0,
        at_ms: now_ms(),
        instance: None,
        node: None,
        kind: kind.as_str().to_owned(),
        message,
    }
}

/// Seals every stale instance with the active key, then retires keys that seal nothing.
/// Only the leader writes; a follower does nothing.
pub async fn reencrypt(
    cluster: &Arc<Cluster>,
    sealed: &SealedStore,
) -> cluster::Result<Reencrypted> {
    let mut done = Reencrypted::default();
    let mut had_clear = false;
    for round in 0..ROUNDS {
        if !cluster.is_active() {
            break;
        }
        let usage = sealed.usage().await?;
        had_clear |= usage.clear > 0;
        // Records sealed whole have no operation to wait for: written once, in the first
        // round (before any key could be retired).
        if round == 0 {
            for key in &usage.stale_records {
                if cluster.reseal_record(key).await? {
                    done.resealed_records += 1;
                }
            }
        }
        if usage.stale.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        let mut busy = 0;
        for name in &usage.stale {
            match cluster.reseal_instance(name).await? {
                Resealed::Written => done.resealed += 1,
                Resealed::Busy => busy += 1,
                Resealed::Unknown => {}
            }
        }
        if busy == 0 {
            break;
        }
    }
    let usage = sealed.usage().await?;
    done.left = usage.stale.len() + usage.stale_records.len();
    if !cluster.is_active() {
        return Ok(done);
    }
    let active = sealed.vault().active_key();
    let unused: Vec<u32> = sealed
        .vault()
        .keys()
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| Some(*id) != active && usage.by_key.get(id).copied().unwrap_or(0) == 0)
        .collect();
    if !unused.is_empty() {
        done.retired = sealed
            .vault()
            .retire(sealed.inner().as_ref(), &unused)
            .await
            .map_err(store_error)?;
        if !done.retired.is_empty() {
            sealed
                .append_events(&[event(
                    EventKind::KeyRetired,
                    format!(
                        "data keys {:?} retired: no stored secret is sealed with them",
                        done.retired
                    ),
                )])
                .await?;
        }
    }
    if done.resealed + done.resealed_records > 0 {
        if had_clear {
            info!(
                instances = done.resealed,
                "secrets found in clear are sealed now"
            );
        }
        // Old record versions (clear, or under the old key) may linger in the backend's
        // free pages and logs.
        if let Err(e) = sealed.compact().await {
            warn!(error = %e, "store compaction after re-encryption failed; run it again with the next rotation");
        }
    }
    if done.left > 0 {
        warn!(
            instances = done.left,
            "some instances are not sealed with the active key yet; the next pass retries"
        );
    }
    Ok(done)
}

/// `mofang keyring rotate`: a new data key, every secret sealed again with it, old keys
/// retired once nothing uses them.
pub async fn rotate(cluster: &Arc<Cluster>, sealed: &SealedStore) -> cluster::Result<Rotation> {
    let id = sealed
        .vault()
        .rotate(sealed.inner().as_ref())
        .await
        .map_err(store_error)?;
    sealed
        .append_events(&[event(
            EventKind::KeyringRotated,
            format!("data key {id} is active: new secrets are sealed with it"),
        )])
        .await?;
    let done = reencrypt(cluster, sealed).await?;
    Ok(Rotation {
        active_key: id,
        resealed_instances: done.resealed,
        retired_keys: done.retired,
        status: sealed.status().await?,
    })
}

fn store_error(e: super::Error) -> cluster::Error {
    match e {
        super::Error::Store(e) => cluster::Error::Store(e),
        other => cluster::Error::Store(crate::store::Error::Backend(other.to_string())),
    }
}
