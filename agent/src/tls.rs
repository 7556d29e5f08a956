//! The agent's side of mutual TLS: checking its files at start (a missing one exits 64
//! naming its field), the tonic client TLS of each link session (read from the files every
//! session, so a renewed certificate is used on the next connection), and the first-start
//! join: a key made here (it never leaves the host), a certificate request signed by the
//! scheduler for a one-time token, both written 0600.

use crate::config::AgentConfig;
use mofang_common::config::{invalid, Error as ConfigError};
use mofang_common::proto::agent_control_client::AgentControlClient;
use mofang_common::proto::JoinRequest;
use mofang_common::tls::files;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::info;

/// Why TLS set-up of a session failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key or request could not be made.
    #[error(transparent)]
    Pki(#[from] mofang_common::tls::pki::Error),
    /// tonic refused the TLS settings.
    #[error("TLS settings")]
    Settings(#[source] tonic::transport::Error),
    /// The scheduler could not be dialed for the join.
    #[error("cannot connect to the scheduler to join")]
    Connect(#[source] tonic::transport::Error),
    /// The scheduler refused the join (token used, expired, for another node, ...).
    #[error("join refused: {}", .0.message())]
    Refused(tonic::Status),
    /// The signed certificate does not fit the key made here.
    #[error("the scheduler returned a certificate that does not fit this node's key: {0}")]
    Mismatch(String),
}

/// Result of TLS operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a link session needs for TLS.
#[derive(Clone)]
pub struct LinkTls {
    /// This node.
    pub node: String,
    /// The cluster CA.
    pub ca_file: PathBuf,
    /// This node's certificate.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The name the scheduler's certificate must carry.
    pub server_name: String,
    /// One-time token for a first start without a certificate.
    pub join_token: Option<String>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls")
            .field("node", &self.node)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("server_name", &self.server_name)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl LinkTls {
    /// From the config; `None` when TLS is disabled.
    pub fn from_config(cfg: &AgentConfig) -> Option<Self> {
        if cfg.tls.disable {
            return None;
        }
        Some(LinkTls {
            node: cfg.node.clone(),
            ca_file: cfg.tls.ca_file.clone().unwrap_or_default(),
            cert_file: cfg.cert_path(),
            key_file: cfg.key_path(),
            server_name: cfg.tls.server_name.clone(),
            join_token: cfg.tls.join_token.clone(),
        })
    }

    /// Whether this node has its certificate yet.
    pub fn has_certificate(&self) -> bool {
        self.cert_file.exists()
    }

    /// When the certificate, key and CA files last changed (a renewal shows here).
    pub fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.cert_file, &self.key_file, &self.ca_file]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// The tonic TLS settings of a session: the CA and server name, and this node's
    /// certificate unless `anonymous` (the join).
    pub fn client_config(&self, anonymous: bool) -> Result<ClientTlsConfig> {
        let ca = read(&self.ca_file, "CA certificate")?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(self.server_name.clone());
        if !anonymous {
            let cert = read(&self.cert_file, "certificate")?;
            let key = read(&self.key_file, "private key")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(tls)
    }

    /// First start: obtains this node's certificate from the scheduler at `endpoint` with
    /// the join token. The key is made here (or the one a failed attempt left is used).
    pub async fn join(&self, endpoint: &str, connect_timeout: Duration) -> Result<()> {
        let token = self.join_token.clone().unwrap_or_default();
        let key_pem = match std::fs::read_to_string(&self.key_file) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = mofang_common::tls::pki::agent_csr(&self.node)?;
                if let Some(dir) = self.key_file.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                files::write(
                    &self.key_file,
                    made.key_pem.as_bytes(),
                    files::PRIVATE,
                    false,
                )
                .map_err(|source| Error::Write {
                    path: self.key_file.clone(),
                    source,
                })?;
                made.key_pem
            }
            Err(source) => {
                return Err(Error::Read {
                    what: "private key",
                    path: self.key_file.clone(),
                    source,
                })
            }
        };
        let csr_pem = mofang_common::tls::pki::agent_csr_with_key(&self.node, &key_pem)?;
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(Error::Connect)?
            .connect_timeout(connect_timeout)
            .tls_config(self.client_config(true)?)
            .map_err(Error::Settings)?
            .connect()
            .await
            .map_err(Error::Connect)?;
        let answer = AgentControlClient::new(channel)
            .join(JoinRequest {
                token: token.trim().to_owned(),
                csr_pem,
            })
            .await
            .map_err(Error::Refused)?
            .into_inner();
        mofang_common::tls::check_key_pair(&answer.cert_pem, &key_pem).map_err(Error::Mismatch)?;
        files::write(
            &self.cert_file,
            answer.cert_pem.as_bytes(),
            files::PRIVATE,
            true,
        )
        .map_err(|source| Error::Write {
            path: self.cert_file.clone(),
            source,
        })?;
        info!(node = %self.node, cert = %self.cert_file.display(), "joined: certificate obtained with the join token");
        Ok(())
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Checks the agent's TLS files before anything starts: the CA must be readable PEM; the
/// certificate and key must both be there and fit (or be absent with a join token). Each
/// error names its config field (the daemon exits 64).
pub fn check_files(cfg: &AgentConfig) -> Result<(), ConfigError> {
    if cfg.tls.disable {
        return Ok(());
    }
    let ca = cfg.tls.ca_file.clone().unwrap_or_default();
    mofang_common::tls::read_roots(&ca)
        .map_err(|e| invalid("tls.ca_file", mofang_common::error_chain(&e)))?;
    let (cert, key) = (cfg.cert_path(), cfg.key_path());
    if !cert.exists() {
        if cfg.tls.join_token.is_some() {
            return Ok(());
        }
        return Err(invalid(
            "tls.cert_file",
            format!(
                "{} does not exist: give tls.join_token to obtain it from the scheduler, or \
                 create it with `mofang tls cert create --agent {}`",
                cert.display(),
                cfg.node
            ),
        ));
    }
    let cert_pem = std::fs::read_to_string(&cert).map_err(|e| {
        invalid(
            "tls.cert_file",
            format!("cannot read {}: {e}", cert.display()),
        )
    })?;
    let key_pem = std::fs::read_to_string(&key).map_err(|e| {
        invalid(
            "tls.key_file",
            format!("cannot read {}: {e}", key.display()),
        )
    })?;
    mofang_common::tls::check_key_pair(&cert_pem, &key_pem).map_err(|e| {
        invalid(
            "tls.key_file",
            format!("{} does not fit {}: {e}", key.display(), cert.display()),
        )
    })?;
    // The certificate must name this node, or every call would be refused.
    let der = mofang_common::tls::certs_from_pem(cert_pem.as_bytes())
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| {
            invalid(
                "tls.cert_file",
                format!("{} holds no certificate", cert.display()),
            )
        })?;
    match mofang_common::tls::node_identity(&der) {
        Ok(id) if id.node == cfg.node => Ok(()),
        Ok(id) => Err(invalid(
            "tls.cert_file",
            format!(
                "{} is node {}'s certificate; this agent is node {}",
                cert.display(),
                id.node,
                cfg.node
            ),
        )),
        Err(e) => Err(invalid("tls.cert_file", format!("{}: {e}", cert.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_common::tls::pki::{Ca, CertKind};

    fn config(dir: &Path, tls: &str) -> AgentConfig {
        AgentConfig::parse(
            &format!(
                "node = \"n1\"\nstate_dir = \"{}/state\"\n[[disks]]\npath = \"/d\"\n[tls]\n{tls}",
                dir.display()
            ),
            Path::new("agent.toml"),
        )
        .unwrap()
    }

    #[test]
    fn files_are_checked_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("t", 1).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let ca_line = format!("ca_file = \"{}\"\n", ca_file.display());

        // No certificate and no token.
        let e = check_files(&config(dir.path(), &ca_line)).unwrap_err();
        assert!(e.to_string().contains("tls.cert_file"), "{e}");
        // No certificate, a token: the join makes it.
        check_files(&config(
            dir.path(),
            &format!("{ca_line}join_token = \"abc123\"\n"),
        ))
        .unwrap();
        // A missing CA.
        let e =
            check_files(&config(dir.path(), "ca_file = \"/nonexistent/ca.pem\"\n")).unwrap_err();
        assert!(e.to_string().contains("tls.ca_file"), "{e}");

        let tls_dir = dir.path().join("state/tls");
        std::fs::create_dir_all(&tls_dir).unwrap();
        let mine = ca.issue(&CertKind::Agent("n1".into()), &[], 1).unwrap();
        std::fs::write(tls_dir.join("agent.pem"), &mine.cert_pem).unwrap();
        // The key is missing.
        let e = check_files(&config(dir.path(), &ca_line)).unwrap_err();
        assert!(e.to_string().contains("tls.key_file"), "{e}");
        std::fs::write(tls_dir.join("agent-key.pem"), &mine.key_pem).unwrap();
        check_files(&config(dir.path(), &ca_line)).unwrap();
        // Another node's certificate.
        let other = ca.issue(&CertKind::Agent("n2".into()), &[], 1).unwrap();
        std::fs::write(tls_dir.join("agent.pem"), &other.cert_pem).unwrap();
        std::fs::write(tls_dir.join("agent-key.pem"), &other.key_pem).unwrap();
        let e = check_files(&config(dir.path(), &ca_line)).unwrap_err();
        assert!(e.to_string().contains("node n2's"), "{e}");
        // A key that does not fit.
        std::fs::write(tls_dir.join("agent.pem"), &mine.cert_pem).unwrap();
        let e = check_files(&config(dir.path(), &ca_line)).unwrap_err();
        assert!(e.to_string().contains("tls.key_file"), "{e}");
    }
}
