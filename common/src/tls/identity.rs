//! Who a certificate speaks for: the names Mofang puts in its certificates and the one function
//! that reads the node name an agent acts as out of its certificate.
//!
//! An agent certificate names its node twice: the subject CN `<NODE>` (for people and logs) and
//! the DNS name `node.<NODE>.mofang` (what is checked). The DNS name is the identity because a
//! CN is also what server and CLI certificates have: only the agent kind carries a
//! `node.*.mofang` name, so a scheduler's or an operator's certificate never acts as a node.

use crate::ids::validate_dns_label;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The DNS name every scheduler certificate carries; agents verify it by default
/// (like Consul's `server.<dc>.consul`), so a scheduler needs no per-address certificate
/// for its agents.
pub const SERVER_NAME: &str = "server.mofang";

/// The DNS name an agent certificate carries for `node`.
pub fn node_san(node: &str) -> String {
    format!("node.{node}.mofang")
}

/// The DNS name a CLI (operator) certificate carries for `name`.
pub fn cli_san(name: &str) -> String {
    format!("cli.{name}.mofang")
}

/// Why a certificate names no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
    /// No `node.<NODE>.mofang` DNS name: a server or CLI certificate, or a foreign one.
    #[error("the certificate names no node (no DNS name node.<NODE>.mofang): it is not an agent certificate")]
    NoNodeName,
    /// Two different node names: refused rather than guessed.
    #[error("the certificate names several nodes: {0} and {1}")]
    SeveralNodeNames(String, String),
    /// The node name is not a DNS label.
    #[error("the certificate's node name {name:?} is invalid: {message}")]
    InvalidNodeName {
        /// The name found.
        name: String,
        /// Why it is invalid.
        message: String,
    },
    /// The subject CN and the DNS name disagree.
    #[error("the certificate's CN {cn:?} differs from its node name {node:?}")]
    CommonNameMismatch {
        /// The subject CN.
        cn: String,
        /// The node from the DNS name.
        node: String,
    },
}

/// The node a certificate speaks for, with what revocation and logs need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node name.
    pub node: String,
    /// Start of validity, unix seconds (a revocation refuses certificates issued before it).
    pub not_before_s: i64,
    /// End of validity, unix seconds.
    pub not_after_s: i64,
    /// Serial number, hex.
    pub serial: String,
}

/// Reads the node an agent certificate (DER) speaks for: its one `node.<NODE>.mofang` DNS
/// name, which must agree with the subject CN when there is one. Validity and the chain are
/// the TLS layer's business (rustls checked them during the handshake); this only names.
pub fn node_identity(der: &[u8]) -> Result<NodeIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::NotX509(e.to_string()))?;
    let mut node: Option<String> = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let GeneralName::DNSName(dns) = name else {
                continue;
            };
            let Some(found) = dns
                .strip_prefix("node.")
                .and_then(|rest| rest.strip_suffix(".mofang"))
            else {
                continue;
            };
            match &node {
                Some(n) if n != found => {
                    return Err(IdentityError::SeveralNodeNames(n.clone(), found.to_owned()))
                }
                _ => node = Some(found.to_owned()),
            }
        }
    }
    let node = node.ok_or(IdentityError::NoNodeName)?;
    validate_dns_label("node", &node, 63).map_err(|e| IdentityError::InvalidNodeName {
        name: node.clone(),
        message: e.to_string(),
    })?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        if cn != node {
            return Err(IdentityError::CommonNameMismatch {
                cn: cn.to_owned(),
                node,
            });
        }
    }
    Ok(NodeIdentity {
        node,
        not_before_s: cert.validity().not_before.timestamp(),
        not_after_s: cert.validity().not_after.timestamp(),
        serial: cert.raw_serial_as_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::{Ca, CertKind};

    fn der(pem: &str) -> Vec<u8> {
        crate::tls::certs_from_pem(pem.as_bytes()).unwrap()[0].to_vec()
    }

    #[test]
    fn an_agent_certificate_names_its_node() {
        let ca = Ca::create("test CA", 1).unwrap();
        let issued = ca.issue(&CertKind::Agent("node-a".into()), &[], 1).unwrap();
        let id = node_identity(&der(&issued.cert_pem)).unwrap();
        assert_eq!(id.node, "node-a");
        assert!(id.not_after_s > id.not_before_s);
        assert!(!id.serial.is_empty());
    }

    #[test]
    fn server_and_cli_certificates_name_no_node() {
        let ca = Ca::create("test CA", 1).unwrap();
        for kind in [
            CertKind::Server("node-a".into()),
            CertKind::Cli("node-a".into()),
        ] {
            let issued = ca.issue(&kind, &[], 1).unwrap();
            assert_eq!(
                node_identity(&der(&issued.cert_pem)),
                Err(IdentityError::NoNodeName),
                "{kind:?}"
            );
        }
        // The CA itself is no node either.
        assert_eq!(
            node_identity(&der(ca.cert_pem())),
            Err(IdentityError::NoNodeName)
        );
    }

    #[test]
    fn a_certificate_naming_two_nodes_or_disagreeing_with_its_cn_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![node_san("a"), node_san("b")]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "a".to_owned());
        let two = p.self_signed(&key).unwrap();
        assert_eq!(
            node_identity(two.der()),
            Err(IdentityError::SeveralNodeNames("a".into(), "b".into()))
        );

        let mut p = rcgen::CertificateParams::new(vec![node_san("a")]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "b".to_owned());
        let mismatch = p.self_signed(&key).unwrap();
        assert!(matches!(
            node_identity(mismatch.der()),
            Err(IdentityError::CommonNameMismatch { .. })
        ));

        let mut p = rcgen::CertificateParams::new(vec!["node.Bad_Name.mofang".to_owned()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        let bad = p.self_signed(&key).unwrap();
        assert!(matches!(
            node_identity(bad.der()),
            Err(IdentityError::InvalidNodeName { .. })
        ));

        // Without a CN the DNS name alone speaks.
        let mut p = rcgen::CertificateParams::new(vec![node_san("c")]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        let no_cn = p.self_signed(&key).unwrap();
        assert_eq!(node_identity(no_cn.der()).unwrap().node, "c");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            node_identity(b"not a certificate"),
            Err(IdentityError::NotX509(_))
        ));
        assert!(matches!(node_identity(&[]), Err(IdentityError::NotX509(_))));
    }

    #[test]
    fn names() {
        assert_eq!(node_san("demo-a"), "node.demo-a.mofang");
        assert_eq!(cli_san("ops"), "cli.ops.mofang");
    }
}
