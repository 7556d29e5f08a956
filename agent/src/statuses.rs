//! What reconcile publishes about this host's members and the rest of the agent reads: each
//! member's last status (the heartbeat carries it, `/metrics` renders it) and the counters of
//! the reconcile passes. A module of its own so that the link and the metrics depend on what
//! is published, not on reconcile's insides (issue 19).

use mofang_common::proto::MemberStatus;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Member statuses by member name: reconcile writes, the heartbeat and the metrics read.
pub type Statuses = Arc<Mutex<BTreeMap<String, MemberStatus>>>;

/// `MemberStatus.container_state` of a member whose instance is stopped.
pub const STOPPED: &str = "stopped";

/// Reconcile passes, for the agent's metrics.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    /// Passes that ended well.
    pub ok: AtomicU64,
    /// Passes that ended with an error.
    pub errors: AtomicU64,
    /// Total time spent in passes, microseconds.
    pub micros: AtomicU64,
    /// Each pass's duration.
    pub pass_seconds: crate::metrics::histogram::Histogram,
}
