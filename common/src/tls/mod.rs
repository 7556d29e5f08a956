//! TLS for every Mofang hop, rustls only (no OpenSSL): reading certificates and keys (errors
//! name the file), the rustls server and client configs the scheduler, the agent and the CLI
//! build from them, the cluster PKI ([`pki`]), the node identity a certificate carries
//! ([`identity`]) and private files written 0600 from their creation ([`files`]).

pub mod files;
pub mod identity;
pub mod pki;

pub use identity::{node_identity, node_san, IdentityError, NodeIdentity, SERVER_NAME};

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS material could not be used. Each message names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {what} {path}")]
    Read {
        /// What the file is (`CA certificate`, `private key`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable PEM block of the expected kind.
    #[error("{what} {path} holds no {expected} (PEM)")]
    NoPem {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM kind looked for.
        expected: &'static str,
    },
    /// rustls refused the material (a key that does not fit its certificate, a bad CA).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being built.
        what: String,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built (e.g. an empty CA file).
    #[error("CA {path}: {message}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Result of TLS set-up.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The crypto rustls uses everywhere in Mofang (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in PEM text (no file): an empty list when there are none.
pub fn certs_from_pem(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file (a chain, leaf first; or CAs).
pub fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path, what)?;
    let certs = certs_from_pem(&bytes).unwrap_or_default();
    if certs.is_empty() {
        return Err(Error::NoPem {
            what,
            path: path.to_owned(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let what = "private key";
    let bytes = read(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| Error::NoPem {
        what,
        path: path.to_owned(),
        expected: "private key",
    })
}

/// The trust anchors of a CA file.
pub fn read_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|source| Error::Rustls {
            what: format!("CA certificate {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// Where a server's or client's own certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    /// Certificate (chain) PEM.
    pub cert: PathBuf,
    /// Private key PEM (0600).
    pub key: PathBuf,
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    None,
    /// A client certificate signed by the CA is checked when presented; a client without
    /// one is let through to the application, which decides per call (the agent service
    /// answers `Unauthenticated`; `Join` needs none).
    Optional,
    /// The handshake fails without a client certificate signed by the CA.
    Required,
}

/// A rustls server config: the certificate and key of `own`, client certificates checked
/// against `ca` as `auth` says, the ALPN protocols offered.
pub fn server_config(
    own: &KeyPairFiles,
    ca: &Path,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig> {
    let chain = read_certs(&own.cert, "certificate")?;
    let key = read_key(&own.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rustls {
            what: "TLS protocol versions".into(),
            source,
        })?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let verifier = client_verifier(ca, auth == ClientAuth::Optional)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|source| Error::Rustls {
            what: format!(
                "certificate {} with key {}",
                own.cert.display(),
                own.key.display()
            ),
            source,
        })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

fn client_verifier(ca: &Path, optional: bool) -> Result<Arc<dyn ClientCertVerifier>> {
    let roots = Arc::new(read_roots(ca)?);
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| Error::Verifier {
        path: ca.to_owned(),
        message: e.to_string(),
    })
}

/// A rustls client config trusting `ca` (none: the bundled public roots are not used, the
/// caller gets a config that trusts only what it is given) and presenting `own` if given.
pub fn client_config(ca: &Path, own: Option<&KeyPairFiles>) -> Result<ClientConfig> {
    let roots = read_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Rustls {
            what: "TLS protocol versions".into(),
            source,
        })?
        .with_root_certificates(roots);
    match own {
        None => Ok(builder.with_no_client_auth()),
        Some(own) => {
            let chain = read_certs(&own.cert, "client certificate")?;
            let key = read_key(&own.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| Error::Rustls {
                    what: format!(
                        "client certificate {} with key {}",
                        own.cert.display(),
                        own.key.display()
                    ),
                    source,
                })
        }
    }
}

/// When the first certificate of a PEM text expires, unix seconds.
pub fn not_after(cert_pem: &str) -> Option<i64> {
    let der = certs_from_pem(cert_pem.as_bytes())
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Checks that a certificate and a key (PEM) belong together.
pub fn check_key_pair(cert_pem: &str, key_pem: &str) -> std::result::Result<(), String> {
    let chain = certs_from_pem(cert_pem.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|e| e.to_string())
}

/// Verifies a server certificate (PEM) for `name` against a CA (PEM), now. For tests and
/// the CLI's checks; the daemons verify in the handshake.
pub fn verify_server_cert(
    ca_pem: &str,
    cert_pem: &str,
    name: &str,
) -> std::result::Result<(), String> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem.as_bytes())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
    let chain = certs_from_pem(cert_pem.as_bytes())?;
    let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Verifies a client certificate (PEM) against a CA (PEM), now.
pub fn verify_client_cert(ca_pem: &str, cert_pem: &str) -> std::result::Result<(), String> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem.as_bytes())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let chain = certs_from_pem(cert_pem.as_bytes())?;
    let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
    verifier
        .verify_client_cert(leaf, rest, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A TLS error, said for an operator: what is wrong with the peer's certificate, if that is
/// what failed (expired, unknown CA, wrong name), else the error as is.
pub fn explain(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the peer's certificate has expired".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (check the clocks)".into()
        }
        // Two CAs of the same name (the default `Mofang CA`) show as a bad signature.
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the peer's certificate is not signed by the trusted CA".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the peer's certificate is not valid for the name dialed".into()
        }
        E::InvalidCertificate(C::Revoked) => "the peer's certificate is revoked".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::pki::{Ca, CertKind};
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn configs_build_from_issued_files_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("t", 1).unwrap();
        let server = ca.issue(&CertKind::Server("s".into()), &[], 1).unwrap();
        let ca_file = write(dir.path(), "ca.pem", ca.cert_pem());
        let own = KeyPairFiles {
            cert: write(dir.path(), "s.pem", &server.cert_pem),
            key: write(dir.path(), "s-key.pem", &server.key_pem),
        };
        let cfg = server_config(&own, &ca_file, ClientAuth::Optional, &[b"h2"]).unwrap();
        assert_eq!(cfg.alpn_protocols, [b"h2".to_vec()]);
        client_config(&ca_file, Some(&own)).unwrap();
        client_config(&ca_file, None).unwrap();

        let missing = KeyPairFiles {
            cert: own.cert.clone(),
            key: dir.path().join("nope-key.pem"),
        };
        let e = server_config(&missing, &ca_file, ClientAuth::None, &[]).unwrap_err();
        assert!(e.to_string().contains("nope-key.pem"), "{e}");
        assert!(e.to_string().contains("private key"), "{e}");

        // A key that is not the certificate's.
        let other = ca.issue(&CertKind::Server("o".into()), &[], 1).unwrap();
        let wrong = KeyPairFiles {
            cert: own.cert.clone(),
            key: write(dir.path(), "o-key.pem", &other.key_pem),
        };
        let e = server_config(&wrong, &ca_file, ClientAuth::None, &[]).unwrap_err();
        assert!(e.to_string().contains("o-key.pem"), "{e}");

        // A CA file that holds no certificate.
        let empty = write(dir.path(), "empty.pem", "nothing here\n");
        let e = client_config(&empty, None).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        // A key file given as CA.
        let e = read_certs(&own.key, "CA certificate").unwrap_err();
        assert!(matches!(e, Error::NoPem { .. }), "{e}");
    }

    #[test]
    fn explanations_name_what_is_wrong() {
        use rustls::CertificateError as C;
        assert!(explain(&rustls::Error::InvalidCertificate(C::Expired)).contains("expired"));
        assert!(
            explain(&rustls::Error::InvalidCertificate(C::UnknownIssuer)).contains("trusted CA")
        );
    }
}
