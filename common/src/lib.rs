//! Mofang's shared vocabulary: ids, member specs and statuses, container labels.
//!
//! Everything that crosses a process boundary (agent <-> scheduler, API <-> CLI) is named here
//! once, so the two sides cannot drift apart.

pub mod config;
pub mod ids;
pub mod labels;
pub mod position;
pub mod signal;
pub mod spec;

pub use ids::{Epoch, InstanceName, MemberId, NodeId};
pub use spec::{EngineKind, ObservedRole, Resources, Role};

/// The agent <-> scheduler gRPC protocol (`proto/mofang.proto`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("mofang.v1");
}
