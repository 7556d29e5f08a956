//! Mofang's shared vocabulary: ids, member specs and statuses, container labels.
//!
//! Everything that crosses a process boundary (agent <-> scheduler, API <-> CLI) is named here
//! once, so the two sides cannot drift apart.

pub mod ids;
pub mod labels;
pub mod spec;

pub use ids::{Epoch, InstanceName, MemberId, NodeId};
pub use spec::{EngineKind, Resources, Role};
