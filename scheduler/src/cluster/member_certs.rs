//! Database members' server certificates (issue 15 point 7): which names the cluster CA signs
//! into a member's certificate when its agent asks (`SignMemberCertificate`).
//!
//! A member certificate may name the member, its container and the addresses the platform
//! itself publishes for it: the node's advertised address and the address the member last
//! reported. Anything else is refused, so an agent cannot obtain a certificate for an address
//! that is not its member's (a scheduler's, say, which the CLI verifies by address).

use super::{lock, Cluster};
use mofang_common::DbTls;

/// Why a member's certificate is not signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberCertRefusal {
    /// No instance has this member on the asking node.
    #[error("member {member} is not placed on node {node}")]
    NotOnNode {
        /// The member asked for.
        member: String,
        /// The asking node.
        node: String,
    },
    /// The member's instance runs with `tls: off`.
    #[error("instance {0} runs with tls off")]
    TlsOff(String),
    /// A name asked for is not one of the member's.
    #[error(
        "{name} is not an address of member {member} (allowed: {allowed}); an address the \
         member reports is allowed once its heartbeat has carried it"
    )]
    Name {
        /// The name refused.
        name: String,
        /// The member.
        member: String,
        /// What is allowed now, comma separated.
        allowed: String,
    },
}

/// The host of `host:port` (IPv6 in brackets or not), or the whole when it has no port.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => address,
    }
}

/// The names of `asked` a member's certificate may carry: each must be the member's container
/// name (`mofang-<member>`), the node's advertised address or the member's reported address.
pub fn allowed_names(
    member: &str,
    node_address: &str,
    reported_address: Option<&str>,
    asked: &[String],
) -> Result<Vec<String>, MemberCertRefusal> {
    let mut allowed = vec![format!("mofang-{member}")];
    for a in [Some(node_address), reported_address].into_iter().flatten() {
        let h = host_of(a);
        if !h.is_empty() && !allowed.iter().any(|x| x == h) {
            allowed.push(h.to_owned());
        }
    }
    let mut out = Vec::new();
    for name in asked {
        if name == member || out.contains(name) {
            continue;
        }
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Err(MemberCertRefusal::Name {
                name: name.clone(),
                member: member.to_owned(),
                allowed: allowed.join(", "),
            });
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// What a leader that holds no CA key says when it takes over (decision 112): the instances
/// with TLS that it cannot serve new member certificates for, and what to do. `None` when it
/// can sign, or when TLS is disabled on it altogether.
pub fn signing_warning(tls_on: bool, can_sign: bool, with_tls: &[String]) -> Option<String> {
    if !tls_on || can_sign {
        return None;
    }
    let which = if with_tls.is_empty() {
        "no instance has TLS now".to_owned()
    } else {
        format!(
            "instances with TLS: {}; their members keep the certificates they have, but a new \
             member, or one whose address changed, waits for a certificate until a scheduler \
             holding the CA key leads",
            with_tls.join(", ")
        )
    };
    Some(format!(
        "this scheduler leads but holds no CA key (tls.ca_key_file): it cannot sign member \
         certificates, and creating an instance with TLS or turning TLS on is refused (422 \
         tls_unavailable); {which}. Give tls.ca_key_file to every scheduler that may lead"
    ))
}

impl Cluster {
    /// Said once per term by a leader without a CA key ([`signing_warning`]): logged as a
    /// WARN and recorded as a `tls_signing_unavailable` event.
    pub async fn note_signing(&self, tls_on: bool, can_sign: bool) -> Option<String> {
        let with_tls: Vec<String> = lock(&self.inner)
            .instances
            .values()
            .filter(|i| i.revision > 0 && i.spec.tls != DbTls::Off)
            .map(|i| i.spec.name.clone())
            .collect();
        let text = signing_warning(tls_on, can_sign, &with_tls)?;
        tracing::warn!("{text}");
        self.emit(vec![super::event(
            crate::model::EventKind::TlsSigningUnavailable,
            None,
            None,
            text.clone(),
        )])
        .await;
        Some(text)
    }

    /// The names `node`'s agent may have signed into `member`'s certificate, of those it asks
    /// for ([`allowed_names`]).
    pub fn member_cert_names(
        &self,
        node: &str,
        member: &str,
        asked: &[String],
    ) -> Result<Vec<String>, MemberCertRefusal> {
        let inner = lock(&self.inner);
        let instance = inner
            .instances
            .values()
            .filter(|i| i.revision > 0)
            .find(|i| i.members.iter().any(|m| m.id == member && m.node == node))
            .ok_or_else(|| MemberCertRefusal::NotOnNode {
                member: member.to_owned(),
                node: node.to_owned(),
            })?;
        if instance.spec.tls == DbTls::Off {
            return Err(MemberCertRefusal::TlsOff(instance.spec.name.clone()));
        }
        let node_address = inner
            .nodes
            .get(node)
            .map(|n| n.address.clone())
            .unwrap_or_default();
        let reported = inner
            .live
            .get(node)
            .and_then(|l| l.members.get(member))
            .map(|s| s.address.clone())
            .filter(|a| !a.is_empty());
        allowed_names(member, &node_address, reported.as_deref(), asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_without_the_ca_key_says_what_waits_and_what_to_do() {
        assert_eq!(signing_warning(true, true, &["a".into()]), None, "it signs");
        assert_eq!(
            signing_warning(false, false, &["a".into()]),
            None,
            "TLS disabled"
        );
        let w = signing_warning(true, false, &["shop".into(), "cache".into()]).expect("warn");
        assert!(w.contains("holds no CA key (tls.ca_key_file)"), "{w}");
        assert!(w.contains("instances with TLS: shop, cache"), "{w}");
        assert!(w.contains("422 tls_unavailable"), "{w}");
        assert!(
            w.contains("Give tls.ca_key_file to every scheduler that may lead"),
            "{w}"
        );
        let none = signing_warning(true, false, &[]).expect("warn");
        assert!(none.contains("no instance has TLS now"), "{none}");
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_member_may_name_its_container_its_node_and_its_reported_address_only() {
        let ok = allowed_names(
            "shop-0",
            "10.0.0.5",
            Some("172.18.0.4:3306"),
            &names(&["mofang-shop-0", "10.0.0.5", "172.18.0.4", "shop-0"]),
        )
        .unwrap();
        assert_eq!(ok, names(&["mofang-shop-0", "10.0.0.5", "172.18.0.4"]));
        // Not reported yet: refused (the agent asks again after its next heartbeat).
        let e = allowed_names("shop-0", "10.0.0.5", None, &names(&["172.18.0.4"])).unwrap_err();
        assert!(matches!(e, MemberCertRefusal::Name { .. }), "{e}");
        // A scheduler's address, another member's container: refused.
        for bad in ["10.0.0.1", "mofang-shop-1", "server.mofang"] {
            assert!(
                allowed_names("shop-0", "10.0.0.5", Some("10.0.0.5:33001"), &names(&[bad]))
                    .is_err(),
                "{bad}"
            );
        }
        assert_eq!(host_of("[fd00::1]:3306"), "fd00::1");
        assert_eq!(host_of("fd00::1"), "fd00::1");
        assert_eq!(host_of("db.example.org"), "db.example.org");
    }
}
