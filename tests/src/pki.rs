//! A cluster CA per test cluster (rcgen is fast): the scheduler's, agents' and users'
//! certificates in a temporary directory, the config sections naming them, and HTTP clients
//! trusting the CA. The end-to-end suite runs with TLS on by default through this.

use anyhow::{Context, Result};
use mofang_common::tls::pki::{Ca, CertKind};
use mofang_common::tls::{files, KeyPairFiles};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One test cluster's CA and the certificates issued from it.
pub struct TestPki {
    /// Where the CA and the scheduler's files are.
    pub dir: tempfile::TempDir,
    ca: Ca,
    server: KeyPairFiles,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestPki {
    /// A new CA and a scheduler certificate (names `server.mofang`, `localhost`, 127.0.0.1).
    pub fn new() -> Result<Arc<Self>> {
        let dir = tempfile::Builder::new()
            .prefix("mofang-pki-")
            .tempdir_in("/var/tmp")?;
        let ca = Ca::create("Mofang test CA", 2)?;
        files::write(
            &dir.path().join("ca.pem"),
            ca.cert_pem().as_bytes(),
            files::PUBLIC,
            false,
        )?;
        files::write(
            &dir.path().join("ca-key.pem"),
            ca.key_pem().as_bytes(),
            files::PRIVATE,
            false,
        )?;
        let server = issue_into(&ca, &CertKind::Server("mofang-test".into()), dir.path())?;
        Ok(Arc::new(TestPki { dir, ca, server }))
    }

    /// The CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA key.
    pub fn ca_key_file(&self) -> PathBuf {
        self.dir.path().join("ca-key.pem")
    }

    /// The CA, to issue odd certificates in a test.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// A certificate of `kind` written into `dir` (`<kind>-<name>.pem`, `-key.pem`).
    pub fn issue(&self, kind: &CertKind, dir: &Path) -> Result<KeyPairFiles> {
        issue_into(&self.ca, kind, dir)
    }

    /// The scheduler's `[tls]` section: this CA, the server certificate, the CA key (joins).
    pub fn scheduler_toml(&self) -> String {
        format!(
            "[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_key_file = \"{}\"\n",
            self.ca_file().display(),
            self.server.cert.display(),
            self.server.key.display(),
            self.ca_key_file().display()
        )
    }

    /// An agent's `[tls]` section with its own certificate for `node`, written into `dir`.
    pub fn agent_toml(&self, node: &str, dir: &Path) -> Result<String> {
        let own = self.issue(&CertKind::Agent(node.to_owned()), dir)?;
        Ok(format!(
            "[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.ca_file().display(),
            own.cert.display(),
            own.key.display()
        ))
    }

    /// An HTTP client trusting this CA.
    pub fn http_client(&self, timeout: Option<std::time::Duration>) -> Result<reqwest::Client> {
        let cfg = mofang_common::tls::client_config(&self.ca_file(), None)?;
        let mut b = reqwest::Client::builder().use_preconfigured_tls(cfg);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().context("HTTP client")
    }
}

fn issue_into(ca: &Ca, kind: &CertKind, dir: &Path) -> Result<KeyPairFiles> {
    let issued = ca.issue(kind, &[], 2)?;
    let base = format!("{}-{}", kind.label(), kind.name());
    let own = KeyPairFiles {
        cert: dir.join(format!("{base}.pem")),
        key: dir.join(format!("{base}-key.pem")),
    };
    files::write(&own.key, issued.key_pem.as_bytes(), files::PRIVATE, true)?;
    files::write(&own.cert, issued.cert_pem.as_bytes(), files::PUBLIC, true)?;
    Ok(own)
}

/// A raw agent-service client over TLS trusting `pki`'s CA, presenting `own` if given (the
/// probes of the TLS tests: what any program reaching the gRPC port could send).
pub async fn grpc_client(
    endpoint: &str,
    ca_file: &Path,
    own: Option<&KeyPairFiles>,
) -> Result<mofang_common::proto::agent_control_client::AgentControlClient<tonic::transport::Channel>>
{
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca_file)?))
        .domain_name(mofang_common::tls::SERVER_NAME);
    if let Some(own) = own {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&own.cert)?,
            std::fs::read(&own.key)?,
        ));
    }
    let channel = Endpoint::from_shared(endpoint.to_owned())?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        // A call on a connection the server refused after the client's side of a TLS 1.3
        // handshake (a foreign or expired client certificate) can otherwise wait forever in
        // tonic's reconnect loop: it ends as an error, which is what a refusal is.
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    Ok(mofang_common::proto::agent_control_client::AgentControlClient::new(channel))
}
