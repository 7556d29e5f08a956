//! Mofang's shared vocabulary: ids, member specs and statuses, container labels.
//!
//! Everything that crosses a process boundary (agent <-> scheduler, API <-> CLI) is named here
//! once, so the two sides cannot drift apart.

pub mod backup;
pub mod backup_crypt;
pub mod config;
pub mod exposition;
pub mod ids;
pub mod labels;
pub mod params;
pub mod pitr;
pub mod position;
pub mod repo;
pub mod restore_phase;
pub mod rotation;
pub mod sealed;
pub mod seed;
pub mod signal;
pub mod spec;
pub mod tls;

pub use ids::{Epoch, InstanceName, MemberId, NodeId};
pub use spec::{DbTls, EngineKind, ObservedRole, Resources, Role};

/// gRPC metadata key a follower scheduler sets on its `Unavailable` answer: the call reached
/// a scheduler that answers but does not lead (an election is under way, or the agent dialed a
/// follower). The agent tries the next scheduler at once instead of backing off, so it is back
/// with the new leader as soon as one wins (defect 7 in docs/failover.md).
pub const FOLLOWER_METADATA: &str = "x-mofang-follower";

/// The agent <-> scheduler gRPC protocol (`proto/mofang.proto`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("mofang.v1");
}

/// An error with its sources on one line, `a: b: c` (most errors' own text leaves out why:
/// a failed connection's reason sits in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod error_chain_tests {
    #[test]
    fn an_error_shows_its_sources_in_order() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(super::error_chain(&outer), "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("asking the donor")]
        struct Ask(#[source] std::io::Error);
        let e = Ask(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(super::error_chain(&e), "asking the donor: refused");
    }
}
