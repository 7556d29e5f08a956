//! The cluster PKI: a CA, the certificates it issues (server, agent, CLI) and agent CSRs
//! signed for join tokens. rcgen makes and signs everything; keys are ECDSA P-256.
//!
//! Like `consul tls ca create` / `nomad tls cert create`: one CA per cluster, created by an
//! operator (`mofang tls ca create`) or by a lone scheduler on first start
//! (docs/security.md). An issued certificate's validity starts now (not back-dated): a node
//! revocation refuses the certificates issued before it, so a host joined again afterwards
//! is admitted.

use super::identity::{cli_san, node_san, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::net::IpAddr;
use time::Duration;

/// Longest validity accepted, days (about 20 years).
pub const MAX_DAYS: u32 = 7300;

pub use time::{Duration as TimeDuration, OffsetDateTime};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused (bad parameters, bad key, bad CSR signature).
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being done.
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A name is not usable in a certificate.
    #[error("invalid name {name:?}: {message}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        message: String,
    },
    /// A validity out of range.
    #[error("validity of {days} days: must be 1 ..= {MAX_DAYS}")]
    Days {
        /// The days asked.
        days: u32,
    },
    /// The CSR does not name a node.
    #[error("the certificate request names no node (its subject CN must be the node name)")]
    CsrNoNode,
}

/// Result of PKI operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Rcgen { what, source }
}

/// What a certificate is for; decides its names and key usages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// A scheduler (REST and gRPC server): CN and DNS name `NAME`, `server.mofang`,
    /// `localhost`, `127.0.0.1`, plus the SANs given. Server and client auth (a follower
    /// forwards API calls to the leader).
    Server(String),
    /// An agent acting as node `NODE`: CN `NODE`, DNS name `node.NODE.mofang`. Client auth.
    Agent(String),
    /// An operator's CLI: CN `NAME`, DNS name `cli.NAME.mofang`. Client auth.
    Cli(String),
}

impl CertKind {
    /// `server`, `agent` or `cli`.
    pub fn label(&self) -> &'static str {
        match self {
            CertKind::Server(_) => "server",
            CertKind::Agent(_) => "agent",
            CertKind::Cli(_) => "cli",
        }
    }

    /// The name given (server name, node, CLI user).
    pub fn name(&self) -> &str {
        match self {
            CertKind::Server(n) | CertKind::Agent(n) | CertKind::Cli(n) => n,
        }
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). Never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A subject alternative name given on the command line: an IP address or a DNS name.
pub fn san(s: &str) -> Result<SanType> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !ok {
        return Err(Error::InvalidName {
            name: s.to_owned(),
            message: "neither an IP address nor a DNS name".into(),
        });
    }
    let name = s
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| Error::InvalidName {
            name: s.to_owned(),
            message: e.to_string(),
        })?;
    Ok(SanType::DnsName(name))
}

/// The cluster CA: its certificate as distributed and its key.
pub struct Ca {
    /// The certificate PEM as created or read (what everyone trusts).
    pem: String,
    /// Issuer for rcgen: same subject and key as `pem`.
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("key", &"<redacted>").finish()
    }
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<()> {
    if days == 0 || days > MAX_DAYS {
        return Err(Error::Days { days });
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + Duration::days(i64::from(days));
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // positive, as RFC 5280 asks
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Mofang");
    dn.push(DnType::CommonName, cn);
    dn
}

fn check_label(what: &'static str, name: &str) -> Result<()> {
    crate::ids::validate_dns_label(what, name, 63).map_err(|e| Error::InvalidName {
        name: name.to_owned(),
        message: e.to_string(),
    })
}

/// The parameters of a certificate of `kind` (names, usages, validity).
fn params_for(kind: &CertKind, extra_sans: &[SanType], days: u32) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    validity(&mut p, days)?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut sans: Vec<SanType> = Vec::new();
    match kind {
        CertKind::Server(name) => {
            p.distinguished_name = subject(name);
            sans.push(san(name)?);
            for s in [SERVER_NAME, "localhost", "127.0.0.1"] {
                sans.push(san(s)?);
            }
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        CertKind::Agent(node) => {
            check_label("node", node)?;
            p.distinguished_name = subject(node);
            sans.push(san(&node_san(node))?);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        CertKind::Cli(name) => {
            check_label("name", name)?;
            p.distinguished_name = subject(name);
            sans.push(san(&cli_san(name))?);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    for s in extra_sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    p.subject_alt_names = sans;
    Ok(p)
}

impl Ca {
    /// A new CA named `name`, valid `days`.
    pub fn create(name: &str, days: u32) -> Result<Self> {
        let mut p = CertificateParams::default();
        validity(&mut p, days)?;
        p.distinguished_name = subject(name);
        // Signs leaf certificates only.
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rcgen("generating the CA key"))?;
        let cert = p.self_signed(&key).map_err(rcgen("self-signing the CA"))?;
        Ok(Ca {
            pem: cert.pem(),
            cert,
            key,
        })
    }

    /// The CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen("reading the CA key"))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(rcgen("reading the CA certificate"))?;
        // rcgen signs with an issuer `Certificate`; one rebuilt from the same subject and
        // key issues certificates that chain to the distributed one. A key that does not
        // belong to the certificate would issue certificates nobody trusts: refuse it.
        let cert = params
            .self_signed(&key)
            .map_err(rcgen("rebuilding the CA"))?;
        let distributed = super::certs_from_pem(cert_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next());
        let matches = distributed.is_some_and(|d| {
            x509_parser::parse_x509_certificate(&d)
                .is_ok_and(|(_, c)| c.public_key().subject_public_key.data == key.public_key_raw())
        });
        if !matches {
            return Err(Error::InvalidName {
                name: "CA key".into(),
                message: "the key does not belong to the CA certificate".into(),
            });
        }
        Ok(Ca {
            pem: cert_pem.to_owned(),
            cert,
            key,
        })
    }

    /// The CA certificate, PEM (what clients and agents trust).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// The CA key, PEM. Never logged.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A new key and a certificate of `kind`, valid `days`, with `extra_sans` besides the
    /// names the kind carries.
    pub fn issue(&self, kind: &CertKind, extra_sans: &[SanType], days: u32) -> Result<Issued> {
        let params = params_for(kind, extra_sans, days)?;
        let key = KeyPair::generate().map_err(rcgen("generating a key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen("signing the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Like [`Ca::issue`] with an explicit validity (e.g. an already expired certificate,
    /// to show what a peer says about it).
    pub fn issue_valid_between(
        &self,
        kind: &CertKind,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued> {
        let mut params = params_for(kind, &[], 1)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().map_err(rcgen("generating a key"))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen("signing the certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR (PEM) as an agent certificate for `node`, valid `days`. Only the
    /// CSR's public key (its signature checked) is taken; names and usages are the agent
    /// kind's, whatever the CSR asks.
    pub fn sign_agent_csr(&self, csr_pem: &str, node: &str, days: u32) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rcgen("reading the certificate request"))?;
        csr.params = params_for(&CertKind::Agent(node.to_owned()), &[], days)?;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(rcgen("signing the certificate request"))?;
        Ok(cert.pem())
    }

    /// Signs a database member's CSR (PEM) as its server certificate, valid `days`: CN and
    /// DNS name `member`, the `names` the scheduler allowed ([`member_san`]), server auth
    /// only. Only the CSR's public key (its signature checked) is taken.
    pub fn sign_member_csr(
        &self,
        csr_pem: &str,
        member: &str,
        names: &[String],
        days: u32,
    ) -> Result<String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(rcgen("reading the certificate request"))?;
        csr.params = member_params(member, names, days)?;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(rcgen("signing the certificate request"))?;
        Ok(cert.pem())
    }
}

/// The names a database member's certificate may carry besides its member id: each an IP
/// address or a DNS name, none under `.mofang` (the names of schedulers, agents and CLIs) and
/// no wildcard, so a member certificate can never pose as anything of the platform's.
pub fn member_san(name: &str) -> Result<SanType> {
    let lower = name.to_ascii_lowercase();
    if lower == "mofang" || lower.ends_with(".mofang") || name.contains('*') {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            message: "a member certificate carries no wildcard and no name under .mofang".into(),
        });
    }
    san(name)
}

/// The parameters of a member's server certificate: CN and DNS name the member id, the
/// `names` given (its address, its container name), server auth only.
fn member_params(member: &str, names: &[String], days: u32) -> Result<CertificateParams> {
    check_label("member", member)?;
    let mut p = CertificateParams::default();
    validity(&mut p, days)?;
    p.distinguished_name = subject(member);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sans = vec![member_san(member)?];
    for n in names {
        let s = member_san(n)?;
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    p.subject_alt_names = sans;
    Ok(p)
}

/// A database member's certificate request (issue 15 point 7): made by the agent with the
/// member's key (PEM; a new one when None, returned in `key_pem`), asking for `names`.
/// The request travels in `cert_pem`; the key never leaves the host.
pub fn member_csr(member: &str, names: &[String], key_pem: Option<&str>) -> Result<Issued> {
    // A request carries names only: the signer sets validity and usages.
    let full = member_params(member, names, 1)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = full.distinguished_name;
    p.subject_alt_names = full.subject_alt_names;
    let key = match key_pem {
        Some(k) => KeyPair::from_pem(k).map_err(rcgen("reading the key"))?,
        None => KeyPair::generate().map_err(rcgen("generating a key"))?,
    };
    let csr = p
        .serialize_request(&key)
        .map_err(rcgen("making the certificate request"))?;
    Ok(Issued {
        cert_pem: csr
            .pem()
            .map_err(rcgen("encoding the certificate request"))?,
        key_pem: key.serialize_pem(),
    })
}

/// An agent's new key and its certificate request for `node` (the key stays on the host).
pub fn agent_csr(node: &str) -> Result<Issued> {
    check_label("node", node)?;
    let mut p =
        CertificateParams::new(vec![node_san(node)]).map_err(rcgen("naming the request"))?;
    p.distinguished_name = subject(node);
    let key = KeyPair::generate().map_err(rcgen("generating a key"))?;
    let csr = p
        .serialize_request(&key)
        .map_err(rcgen("making the certificate request"))?;
    Ok(Issued {
        cert_pem: csr
            .pem()
            .map_err(rcgen("encoding the certificate request"))?,
        key_pem: key.serialize_pem(),
    })
}

/// An agent's certificate request for `node` with a key it already holds (PEM).
pub fn agent_csr_with_key(node: &str, key_pem: &str) -> Result<String> {
    check_label("node", node)?;
    let mut p =
        CertificateParams::new(vec![node_san(node)]).map_err(rcgen("naming the request"))?;
    p.distinguished_name = subject(node);
    let key = KeyPair::from_pem(key_pem).map_err(rcgen("reading the key"))?;
    let csr = p
        .serialize_request(&key)
        .map_err(rcgen("making the certificate request"))?;
    csr.pem().map_err(rcgen("encoding the certificate request"))
}

/// The node a CSR asks for: its subject CN (the scheduler then checks the join token allows
/// it).
pub fn csr_node(csr_pem: &str) -> Result<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(rcgen("reading the certificate request"))?;
    let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => s.clone(),
        Some(rcgen::DnValue::PrintableString(p)) => p.as_str().to_owned(),
        _ => return Err(Error::CsrNoNode),
    };
    check_label("node", &cn)?;
    Ok(cn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::node_identity;

    fn der(pem: &str) -> Vec<u8> {
        crate::tls::certs_from_pem(pem.as_bytes()).unwrap()[0].to_vec()
    }

    fn parsed(pem: &str, f: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>)) {
        let d = der(pem);
        let (_, c) = x509_parser::parse_x509_certificate(&d).unwrap();
        f(&c)
    }

    fn dns_names(pem: &str) -> Vec<String> {
        let mut out = Vec::new();
        parsed(pem, |c| {
            for n in &c
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
            {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        out.push(format!("ip:{}", ip.len()))
                    }
                    _ => {}
                }
            }
        });
        out
    }

    #[test]
    fn a_ca_signs_what_it_issues_and_is_a_ca() {
        let ca = Ca::create("Mofang test CA", 10).unwrap();
        parsed(ca.cert_pem(), |c| {
            assert!(c.is_ca());
            let days =
                (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86_400;
            assert_eq!(days, 10);
        });
        let server = ca
            .issue(
                &CertKind::Server("sched-1".into()),
                &[san("10.0.0.5").unwrap(), san("sched.example.org").unwrap()],
                30,
            )
            .unwrap();
        let names = dns_names(&server.cert_pem);
        for n in ["sched-1", "server.mofang", "localhost", "sched.example.org"] {
            assert!(names.contains(&n.to_owned()), "{n} in {names:?}");
        }
        // 127.0.0.1 and 10.0.0.5 as IP SANs (4 bytes each).
        assert_eq!(names.iter().filter(|n| *n == "ip:4").count(), 2);
        // The chain verifies with rustls' own verifier (what the daemons use).
        crate::tls::verify_server_cert(ca.cert_pem(), &server.cert_pem, "server.mofang").unwrap();
        crate::tls::verify_server_cert(ca.cert_pem(), &server.cert_pem, "10.0.0.5").unwrap();
        assert!(
            crate::tls::verify_server_cert(ca.cert_pem(), &server.cert_pem, "other.example")
                .is_err()
        );
    }

    #[test]
    fn a_loaded_ca_issues_certificates_that_chain_to_the_distributed_one() {
        let ca = Ca::create("Mofang test CA", 10).unwrap();
        let again = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let agent = again.issue(&CertKind::Agent("n1".into()), &[], 1).unwrap();
        crate::tls::verify_client_cert(ca.cert_pem(), &agent.cert_pem).unwrap();
        // Another CA's certificate is not trusted.
        let other = Ca::create("other", 1).unwrap();
        assert!(crate::tls::verify_client_cert(other.cert_pem(), &agent.cert_pem).is_err());
        // A key that is not the CA's is refused.
        assert!(Ca::load(ca.cert_pem(), &other.key_pem()).is_err());
        assert!(Ca::load("garbage", &ca.key_pem()).is_err());
    }

    #[test]
    fn an_agent_certificate_is_a_client_certificate_only() {
        let ca = Ca::create("Mofang test CA", 10).unwrap();
        let agent = ca.issue(&CertKind::Agent("n1".into()), &[], 1).unwrap();
        assert_eq!(dns_names(&agent.cert_pem), ["node.n1.mofang"]);
        // It cannot act as the scheduler: no server usage, no server name.
        assert!(
            crate::tls::verify_server_cert(ca.cert_pem(), &agent.cert_pem, "node.n1.mofang")
                .is_err()
        );
        assert!(matches!(
            ca.issue(&CertKind::Agent("Not A Label".into()), &[], 1),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            ca.issue(&CertKind::Agent("n1".into()), &[], 0),
            Err(Error::Days { days: 0 })
        ));
    }

    #[test]
    fn a_csr_is_signed_with_the_agent_kinds_names_only() {
        let ca = Ca::create("Mofang test CA", 10).unwrap();
        let req = agent_csr("node-b").unwrap();
        assert_eq!(csr_node(&req.cert_pem).unwrap(), "node-b");
        let cert = ca.sign_agent_csr(&req.cert_pem, "node-b", 5).unwrap();
        assert_eq!(node_identity(&der(&cert)).unwrap().node, "node-b");
        crate::tls::verify_client_cert(ca.cert_pem(), &cert).unwrap();
        // The certificate holds the CSR's key: the pair loads as a rustls identity.
        crate::tls::check_key_pair(&cert, &req.key_pem).unwrap();
        // A request made again with the kept key.
        let again = agent_csr_with_key("node-b", &req.key_pem).unwrap();
        let cert2 = ca.sign_agent_csr(&again, "node-b", 5).unwrap();
        crate::tls::check_key_pair(&cert2, &req.key_pem).unwrap();
        assert!(csr_node("not a csr").is_err());
    }

    #[test]
    fn sans_are_ips_or_dns_names() {
        assert!(matches!(san("10.1.2.3").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(san("::1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(
            san("db.example.org").unwrap(),
            SanType::DnsName(_)
        ));
        for bad in ["", "a..b", "spaces here", "x/y"] {
            assert!(san(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_never_in_debug_output() {
        let ca = Ca::create("Mofang test CA", 1).unwrap();
        let issued = ca.issue(&CertKind::Cli("ops".into()), &[], 1).unwrap();
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_member_certificate_serves_its_address_and_name_and_nothing_of_the_platform() {
        let ca = Ca::create("Mofang CA", 30).unwrap();
        let names = vec!["10.1.0.7".to_owned(), "mofang-shop-0".to_owned()];
        let req = member_csr("shop-0", &names, None).unwrap();
        let cert = ca
            .sign_member_csr(&req.cert_pem, "shop-0", &names, 30)
            .unwrap();
        crate::tls::check_key_pair(&cert, &req.key_pem).unwrap();
        for name in ["10.1.0.7", "shop-0", "mofang-shop-0"] {
            crate::tls::verify_server_cert(ca.cert_pem(), &cert, name).unwrap();
        }
        assert!(crate::tls::verify_server_cert(ca.cert_pem(), &cert, "10.1.0.8").is_err());
        // Never a client (agent, CLI) and never a node.
        assert!(crate::tls::verify_client_cert(ca.cert_pem(), &cert).is_err());
        assert!(node_identity(&der(&cert)).is_err());
        // The same key asks again with more names (an address learnt later).
        let again = member_csr("shop-0", &names, Some(&req.key_pem)).unwrap();
        assert_eq!(again.key_pem, req.key_pem);
        // Names of the platform's are refused, whatever the CSR asks.
        for bad in ["server.mofang", "node.a.mofang", "*.example.org", "a b"] {
            assert!(
                ca.sign_member_csr(&req.cert_pem, "shop-0", &[bad.to_owned()], 30)
                    .is_err(),
                "{bad}"
            );
        }
    }
}
