//! Leader election among schedulers: the `Election` trait, the `Leadership` a winner holds,
//! and its Consul (session lock) and etcd (lease) implementations.
//!
//! A leader must stop acting before anyone else can start. One claim keeper
//! ([`keeper`]) renews every backend's claim and cancels [`Leadership::lost`] the moment the
//! claim is gone, or the moment it can no longer prove on its own clock that the claim is
//! still held; the backends only acquire, watch and release (each says what its bound is).

pub mod consul;
pub mod etcd;
mod keeper;

pub use self::consul::{ConsulElection, ConsulElectionConfig};
pub use self::etcd::{EtcdElection, EtcdElectionConfig};

use crate::config::{SchedulerConfig, StoreKind};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The election of the configured backend, on `<prefix>leader`, advertising `address`:
/// `None` with the SQLite store (one scheduler, always the leader). `checks` are Consul
/// health checks the leader's session depends on (e.g. the scheduler's own service check,
/// [`crate::registry::SchedulerService::check_id`]); etcd ignores them.
pub async fn open(
    cfg: &SchedulerConfig,
    address: &str,
    checks: Vec<String>,
) -> Result<Option<Arc<dyn Election>>> {
    Ok(match cfg.store {
        StoreKind::Sqlite => None,
        StoreKind::Consul => {
            let client = cfg.consul.client().map_err(|e| Error::Backend {
                backend: "consul",
                message: e.to_string(),
            })?;
            Some(Arc::new(ConsulElection::new(
                client,
                ConsulElectionConfig {
                    key: cfg.consul.leader_key(),
                    address: address.to_owned(),
                    session_ttl: cfg.consul.session_ttl(),
                    lock_delay: cfg.consul.lock_delay(),
                    checks,
                },
            )))
        }
        StoreKind::Etcd => Some(Arc::new(
            EtcdElection::connect(
                &cfg.etcd.endpoints,
                &cfg.etcd.tls(),
                EtcdElectionConfig {
                    key: cfg.etcd.leader_key(),
                    address: address.to_owned(),
                    lease_ttl: cfg.etcd.lease_ttl(),
                },
            )
            .await?,
        )),
    })
}

/// Why an election call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend (Consul, etcd) failed.
    #[error("{backend} election: {message}")]
    Backend {
        /// `consul` or `etcd`.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The campaign was stopped by its shutdown token.
    #[error("campaign cancelled")]
    Cancelled,
}

/// Result of an election call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who leads, as followers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The address the leader advertised (where followers forward writes).
    pub address: String,
    /// Number of this leadership: grows with each new leadership (Consul: the lock's
    /// `ModifyIndex` when taken; etcd: the leader key's `create_revision`).
    pub term: u64,
}

/// Leader election. One campaign per contender at a time.
#[async_trait::async_trait]
pub trait Election: Send + Sync + 'static {
    /// Waits until this contender leads; keeps trying through backend failures (logging
    /// them) until `shutdown` is cancelled, which ends it with [`Error::Cancelled`]. A
    /// campaign first clears any claim left under this contender's address (an earlier run's):
    /// never campaign while holding a [`Leadership`] of the same election.
    async fn campaign(&self, shutdown: &CancellationToken) -> Result<Leadership>;
    /// The current leader, read consistently; `None` while nobody leads.
    async fn leader(&self) -> Result<Option<LeaderInfo>>;
    /// Follows the leader in the background until `shutdown`: the receiver always holds
    /// the latest leader seen (`None` while nobody leads).
    fn watch_leader(&self, shutdown: CancellationToken) -> watch::Receiver<Option<LeaderInfo>>;
}

/// Held by the leader. [`Leadership::lost`] is cancelled as soon as the leadership ends, for
/// whatever reason; the holder must stop acting as leader at once when it is. Dropping it
/// resigns in the background.
#[derive(Debug)]
pub struct Leadership {
    term: u64,
    lost: CancellationToken,
    resign: CancellationToken,
    keeper: Option<JoinHandle<Result<()>>>,
}

impl Leadership {
    /// A leadership kept by the task `keeper`, which cancels `lost` when it ends and
    /// releases the claim when `resign` is cancelled.
    pub(crate) fn new(
        term: u64,
        lost: CancellationToken,
        resign: CancellationToken,
        keeper: JoinHandle<Result<()>>,
    ) -> Self {
        Leadership {
            term,
            lost,
            resign,
            keeper: Some(keeper),
        }
    }

    /// Number of this leadership (see [`LeaderInfo::term`]).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Whether the leadership is still held, as far as this process knows.
    pub fn is_held(&self) -> bool {
        !self.lost.is_cancelled()
    }

    /// A token cancelled when the leadership ends (cancelling it does nothing to the
    /// leadership).
    pub fn lost(&self) -> CancellationToken {
        self.lost.child_token()
    }

    /// Gives the leadership up: stops acting (`lost` is cancelled first), then releases the
    /// claim so another contender can lead without waiting for a timeout.
    pub async fn resign(mut self) -> Result<()> {
        self.lost.cancel();
        self.resign.cancel();
        match self.keeper.take() {
            Some(keeper) => keeper.await.map_err(|e| Error::Backend {
                backend: "election",
                message: format!("leadership keeper task failed: {e}"),
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.lost.cancel();
        self.resign.cancel();
    }
}
