//! Who may make an agent-service call: a pure function of the caller's certificate, the
//! node the call acts as, and the revocations. Every call of `AgentControl` but `Join` goes
//! through [`authorize`]; `agents.rs` turns a [`Refusal`] into a gRPC status, an event and an
//! audit entry.

use mofang_common::tls::{IdentityError, NodeIdentity};
use std::collections::BTreeMap;

/// Why a call was refused. One variant per reason; each maps to one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller presented no certificate.
    #[error("a client certificate signed by the cluster CA is needed (agent tls.cert_file)")]
    NoCertificate,
    /// The certificate is the CA's but names no node (a server or CLI certificate).
    #[error("the client certificate is not an agent certificate: {0}")]
    NotAnAgent(IdentityError),
    /// The certificate is node `cert`'s; the call acts as `asked`.
    #[error("the certificate is node {cert}'s; it may not act as node {asked}")]
    OtherNode {
        /// The node the certificate names.
        cert: String,
        /// The node the call names.
        asked: String,
    },
    /// The node was revoked after this certificate was issued.
    #[error("node {node} was revoked (at {revoked_at_ms} ms); its certificate is refused")]
    Revoked {
        /// The node.
        node: String,
        /// When it was revoked, unix ms.
        revoked_at_ms: i64,
    },
}

impl Refusal {
    /// The gRPC status: no certificate is `Unauthenticated`, everything else
    /// `PermissionDenied`.
    pub fn status(&self) -> tonic::Status {
        match self {
            Refusal::NoCertificate => tonic::Status::unauthenticated(self.to_string()),
            _ => tonic::Status::permission_denied(self.to_string()),
        }
    }

    /// Short machine name for logs and audit results.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::NotAnAgent(_) => "not_an_agent",
            Refusal::OtherNode { .. } => "other_node",
            Refusal::Revoked { .. } => "revoked",
        }
    }
}

/// What the TLS layer saw of the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A certificate the handshake verified (chain to the CA, validity), read by
    /// `node_identity`.
    Certified(Result<NodeIdentity, IdentityError>),
}

/// Whether `caller` may act as node `asked`, given `revoked` (node -> revocation time,
/// unix ms). A revocation refuses the certificates issued before it; one issued at or
/// after it (the host joined again) is admitted.
pub fn authorize(
    caller: &Caller,
    asked: &str,
    revoked: &BTreeMap<String, i64>,
) -> Result<(), Refusal> {
    let id = match caller {
        Caller::Anonymous => return Err(Refusal::NoCertificate),
        Caller::Certified(Err(e)) => return Err(Refusal::NotAnAgent(e.clone())),
        Caller::Certified(Ok(id)) => id,
    };
    if let Some(&at) = revoked.get(&id.node) {
        if id.not_before_s.saturating_mul(1000) < at {
            return Err(Refusal::Revoked {
                node: id.node.clone(),
                revoked_at_ms: at,
            });
        }
    }
    if id.node != asked {
        return Err(Refusal::OtherNode {
            cert: id.node.clone(),
            asked: asked.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(node: &str, not_before_s: i64) -> Caller {
        Caller::Certified(Ok(NodeIdentity {
            node: node.into(),
            not_before_s,
            not_after_s: not_before_s + 86_400,
            serial: "01".into(),
        }))
    }

    #[test]
    fn a_node_acts_as_itself_only() {
        let none = BTreeMap::new();
        assert_eq!(authorize(&cert("a", 100), "a", &none), Ok(()));
        assert_eq!(
            authorize(&cert("b", 100), "a", &none),
            Err(Refusal::OtherNode {
                cert: "b".into(),
                asked: "a".into()
            })
        );
    }

    #[test]
    fn no_certificate_is_unauthenticated_and_a_foreign_kind_is_denied() {
        let none = BTreeMap::new();
        let e = authorize(&Caller::Anonymous, "a", &none).unwrap_err();
        assert_eq!(e, Refusal::NoCertificate);
        assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
        let e = authorize(
            &Caller::Certified(Err(IdentityError::NoNodeName)),
            "a",
            &none,
        )
        .unwrap_err();
        assert_eq!(e.code(), "not_an_agent");
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_revocation_refuses_older_certificates_and_admits_newer_ones() {
        let revoked = BTreeMap::from([("a".to_owned(), 200_000)]);
        let e = authorize(&cert("a", 100), "a", &revoked).unwrap_err();
        assert!(matches!(e, Refusal::Revoked { .. }), "{e:?}");
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
        // Issued from the revocation's own (whole) second on: admitted. Validity is in whole
        // seconds, so a certificate from the second before it is always refused.
        assert_eq!(authorize(&cert("a", 200), "a", &revoked), Ok(()));
        assert_eq!(authorize(&cert("a", 300), "a", &revoked), Ok(()));
        // Another node's revocation changes nothing for this one.
        assert_eq!(authorize(&cert("b", 100), "b", &revoked), Ok(()));
        // A revoked certificate asking for another node is refused as revoked first.
        assert!(matches!(
            authorize(&cert("a", 100), "b", &revoked),
            Err(Refusal::Revoked { .. })
        ));
    }
}
