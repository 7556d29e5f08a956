//! The scheduler's TLS: its certificates and the CA key it signs join requests with, read
//! from the `[tls]` files (or made in `<data_dir>/tls/` when `[tls]` names none), swapped in
//! place on SIGHUP; the TLS listeners ([`serve`]); and the per-call authorization of the
//! agent service ([`authz`]).

pub mod authz;
pub mod serve;

use crate::config::{SchedulerConfig, TlsConfig};
use mofang_common::config::{invalid, Error as ConfigError};
use mofang_common::tls::pki::{Ca, CertKind};
use mofang_common::tls::{files, ClientAuth, KeyPairFiles};
use rustls::{ClientConfig, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use tracing::{error, info, warn};

/// ALPN of the gRPC port.
const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the REST port.
const ALPN_REST: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Where each piece comes from, resolved from `[tls]` (or the automatic directory).
#[derive(Debug, Clone)]
pub struct Paths {
    /// The CA certificate.
    pub ca: PathBuf,
    /// gRPC (and default REST) certificate and key.
    pub own: KeyPairFiles,
    /// REST certificate and key.
    pub rest: KeyPairFiles,
    /// The CA key, if joins are possible.
    pub ca_key: Option<PathBuf>,
    /// Whether REST asks for client certificates.
    pub rest_auth: ClientAuth,
}

/// What is loaded from [`Paths`]: one snapshot, replaced whole on reload.
pub struct Material {
    /// The gRPC server config (client certificates optional, checked per call).
    pub grpc: Arc<ServerConfig>,
    /// The REST server config.
    pub rest: Arc<ServerConfig>,
    /// The CA that signs join requests, when its key is configured.
    pub ca: Option<Arc<Ca>>,
    /// The CA certificate (handed to joining agents).
    pub ca_pem: String,
    /// A client config trusting the CA and presenting the scheduler's certificate (a
    /// follower forwarding an API request to the leader).
    pub client: Arc<ClientConfig>,
}

/// The TLS state of a running scheduler: the paths and the current material.
pub struct Tls {
    paths: Paths,
    current: RwLock<Arc<Material>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("paths", &self.paths).finish()
    }
}

impl Tls {
    /// Loads the material `cfg.tls` names (making it first in automatic mode); `None` when
    /// TLS is disabled. Every error names the config field whose file is at fault.
    pub fn start(cfg: &SchedulerConfig) -> Result<Option<Arc<Tls>>, ConfigError> {
        if cfg.tls.disable {
            warn!(
                field = "tls.disable",
                "TLS is disabled: REST and gRPC in plain text; anyone who reaches the gRPC port \
                 can act as any node, and API tokens cross the network in clear"
            );
            return Ok(None);
        }
        let paths = if cfg.tls.automatic() {
            automatic(
                &cfg.data_dir,
                &cfg.advertise_address,
                cfg.tls.rest_verify_clients,
            )?
        } else {
            configured(&cfg.tls)?
        };
        let material = load(&paths)?;
        info!(
            ca = %paths.ca.display(),
            cert = %paths.own.cert.display(),
            joins = material.ca.is_some(),
            "TLS on: REST and gRPC"
        );
        Ok(Some(Arc::new(Tls {
            paths,
            current: RwLock::new(Arc::new(material)),
        })))
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The files in use.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Reads every file again; on success new connections use them (open ones keep
    /// theirs), on failure the old material stays and the error is returned.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let material = load(&self.paths)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(material);
        Ok(())
    }
}

/// Reloads `tls` on every SIGHUP until `shutdown` (`systemctl reload`). Without TLS the
/// signal is only logged: it must not end the scheduler, as its default action would.
pub fn reload_on_sighup(tls: Option<Arc<Tls>>, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot watch SIGHUP: certificates reload only on restart");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = hup.recv() => if got.is_none() { break },
            }
            match tls.as_ref().map(|t| t.reload()) {
                None => info!("SIGHUP: TLS is disabled, nothing to reload"),
                Some(Ok(())) => info!("SIGHUP: TLS certificates and keys reloaded"),
                Some(Err(e)) => {
                    error!(error = %e, "SIGHUP: TLS reload failed; the previous certificates stay in use")
                }
            }
        }
    });
}

fn configured(t: &TlsConfig) -> Result<Paths, ConfigError> {
    let (Some(ca), Some(cert), Some(key)) = (&t.ca_file, &t.cert_file, &t.key_file) else {
        return Err(invalid(
            "tls.ca_file",
            "ca_file, cert_file and key_file are needed",
        ));
    };
    let own = KeyPairFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    let rest = match (&t.rest_cert_file, &t.rest_key_file) {
        (Some(c), Some(k)) => KeyPairFiles {
            cert: c.clone(),
            key: k.clone(),
        },
        _ => own.clone(),
    };
    Ok(Paths {
        ca: ca.clone(),
        own,
        rest,
        ca_key: t.ca_key_file.clone(),
        rest_auth: if t.rest_verify_clients {
            ClientAuth::Required
        } else {
            ClientAuth::Optional
        },
    })
}

/// Automatic mode: `<data_dir>/tls/` holds a CA made on first start and a server
/// certificate made again on every start (its names follow `advertise_address`).
fn automatic(data_dir: &Path, advertise: &str, verify_rest: bool) -> Result<Paths, ConfigError> {
    let dir = data_dir.join("tls");
    let field = "tls.ca_file";
    let io = |what: &str, p: &Path, e: std::io::Error| {
        invalid(field, format!("automatic TLS: {what} {}: {e}", p.display()))
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Err(io("cannot create", &dir, e));
    }
    let (ca_file, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let ca = if ca_file.exists() || ca_key.exists() {
        let cert = std::fs::read_to_string(&ca_file).map_err(|e| io("cannot read", &ca_file, e))?;
        let key = std::fs::read_to_string(&ca_key).map_err(|e| io("cannot read", &ca_key, e))?;
        Ca::load(&cert, &key).map_err(|e| invalid(field, format!("automatic TLS: {e}")))?
    } else {
        let ca = Ca::create("Mofang CA", 3650)
            .map_err(|e| invalid(field, format!("automatic TLS: {e}")))?;
        files::write(&ca_key, ca.key_pem().as_bytes(), files::PRIVATE, false)
            .map_err(|e| io("cannot write", &ca_key, e))?;
        files::write(&ca_file, ca.cert_pem().as_bytes(), files::PUBLIC, false)
            .map_err(|e| io("cannot write", &ca_file, e))?;
        info!(ca = %ca_file.display(), "no [tls] files configured: made a CA for this scheduler; give this file to agents (tls.ca_file) and to the CLI (MOFANG_CACERT)");
        ca
    };
    let mut sans = Vec::new();
    for name in [advertise.to_owned(), hostname()] {
        if let Ok(s) = mofang_common::tls::pki::san(&name) {
            sans.push(s);
        }
    }
    let issued = ca
        .issue(&CertKind::Server("mofang-scheduler".into()), &sans, 825)
        .map_err(|e| invalid(field, format!("automatic TLS: {e}")))?;
    let own = KeyPairFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    files::write(&own.key, issued.key_pem.as_bytes(), files::PRIVATE, true)
        .map_err(|e| io("cannot write", &own.key, e))?;
    files::write(&own.cert, issued.cert_pem.as_bytes(), files::PUBLIC, true)
        .map_err(|e| io("cannot write", &own.cert, e))?;
    Ok(Paths {
        ca: ca_file,
        rest: own.clone(),
        own,
        ca_key: Some(ca_key),
        rest_auth: if verify_rest {
            ClientAuth::Required
        } else {
            ClientAuth::Optional
        },
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The config field a file of `paths` stands for (for messages).
fn field_of(paths: &Paths, path: &Path) -> &'static str {
    if path == paths.ca {
        "tls.ca_file"
    } else if Some(path) == paths.ca_key.as_deref() {
        "tls.ca_key_file"
    } else if path == paths.own.cert {
        "tls.cert_file"
    } else if path == paths.own.key {
        "tls.key_file"
    } else if path == paths.rest.cert {
        "tls.rest_cert_file"
    } else {
        "tls.rest_key_file"
    }
}

fn tls_error(paths: &Paths, e: mofang_common::tls::Error) -> ConfigError {
    use mofang_common::tls::Error as E;
    let field = match &e {
        E::Read { path, .. } | E::NoPem { path, .. } | E::Verifier { path, .. } => {
            field_of(paths, path)
        }
        // A certificate and a key that do not belong together: the key is named.
        E::Rustls { what, .. } if what.starts_with("CA ") => "tls.ca_file",
        E::Rustls { what, .. }
            if what.contains(&*paths.rest.key.to_string_lossy()) && paths.rest != paths.own =>
        {
            "tls.rest_key_file"
        }
        E::Rustls { .. } => "tls.key_file",
    };
    invalid(field, mofang_common::error_chain(&e))
}

fn load(paths: &Paths) -> Result<Material, ConfigError> {
    let err = |e| tls_error(paths, e);
    let grpc =
        mofang_common::tls::server_config(&paths.own, &paths.ca, ClientAuth::Optional, ALPN_GRPC)
            .map_err(err)?;
    let rest =
        mofang_common::tls::server_config(&paths.rest, &paths.ca, paths.rest_auth, ALPN_REST)
            .map_err(err)?;
    let client = mofang_common::tls::client_config(&paths.ca, Some(&paths.own)).map_err(err)?;
    let ca_pem = std::fs::read_to_string(&paths.ca).map_err(|e| {
        invalid(
            "tls.ca_file",
            format!("cannot read {}: {e}", paths.ca.display()),
        )
    })?;
    let ca = match &paths.ca_key {
        None => None,
        Some(key_path) => {
            let key = std::fs::read_to_string(key_path).map_err(|e| {
                invalid(
                    "tls.ca_key_file",
                    format!("cannot read {}: {e}", key_path.display()),
                )
            })?;
            let ca = Ca::load(&ca_pem, &key).map_err(|e| {
                invalid(
                    "tls.ca_key_file",
                    format!("{} with {}: {e}", key_path.display(), paths.ca.display()),
                )
            })?;
            Some(Arc::new(ca))
        }
    };
    Ok(Material {
        grpc: Arc::new(grpc),
        rest: Arc::new(rest),
        ca,
        ca_pem,
        client: Arc::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(data: &Path, tls: &str) -> SchedulerConfig {
        SchedulerConfig::parse(
            &format!("data_dir = \"{}\"\n{tls}", data.display()),
            Path::new("s.toml"),
        )
        .unwrap()
    }

    #[test]
    fn automatic_mode_makes_a_ca_once_and_a_server_certificate_each_start() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), "");
        let tls = Tls::start(&c).unwrap().unwrap();
        let ca1 = std::fs::read_to_string(dir.path().join("tls/ca.pem")).unwrap();
        for key in ["tls/ca-key.pem", "tls/server-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        assert!(tls.current().ca.is_some(), "joins work in automatic mode");
        let server = std::fs::read_to_string(dir.path().join("tls/server.pem")).unwrap();
        mofang_common::tls::verify_server_cert(&ca1, &server, "server.mofang").unwrap();
        mofang_common::tls::verify_server_cert(&ca1, &server, "127.0.0.1").unwrap();
        // A second start keeps the CA (agents trust it) and its new certificate chains to it.
        let _again = Tls::start(&c).unwrap().unwrap();
        let ca2 = std::fs::read_to_string(dir.path().join("tls/ca.pem")).unwrap();
        assert_eq!(ca1, ca2);
        let server2 = std::fs::read_to_string(dir.path().join("tls/server.pem")).unwrap();
        mofang_common::tls::verify_server_cert(&ca1, &server2, "server.mofang").unwrap();
    }

    #[test]
    fn disabled_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Tls::start(&cfg(dir.path(), "[tls]\ndisable = true\n"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn missing_files_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        let ca = Ca::create("t", 1).unwrap();
        let s = ca.issue(&CertKind::Server("s".into()), &[], 1).unwrap();
        std::fs::write(pki.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(pki.join("s.pem"), &s.cert_pem).unwrap();
        std::fs::write(pki.join("s-key.pem"), &s.key_pem).unwrap();
        std::fs::write(pki.join("ca-key.pem"), ca.key_pem()).unwrap();
        let p = pki.display();
        let ok = format!(
            "[tls]\nca_file = \"{p}/ca.pem\"\ncert_file = \"{p}/s.pem\"\nkey_file = \"{p}/s-key.pem\"\n"
        );
        let tls = Tls::start(&cfg(dir.path(), &ok)).unwrap().unwrap();
        assert!(tls.current().ca.is_none(), "no CA key: no joins");
        let with_key = format!("{ok}ca_key_file = \"{p}/ca-key.pem\"\n");
        assert!(Tls::start(&cfg(dir.path(), &with_key))
            .unwrap()
            .unwrap()
            .current()
            .ca
            .is_some());
        for (text, field) in [
            (ok.replace("s-key.pem", "gone-key.pem"), "tls.key_file"),
            (ok.replace("/s.pem", "/gone.pem"), "tls.cert_file"),
            (ok.replace("ca.pem", "gone-ca.pem"), "tls.ca_file"),
            (
                format!("{ok}ca_key_file = \"{p}/gone.pem\"\n"),
                "tls.ca_key_file",
            ),
            // The server's key given as the CA key.
            (
                format!("{ok}ca_key_file = \"{p}/s-key.pem\"\n"),
                "tls.ca_key_file",
            ),
            // The CA key given as the server's key.
            (ok.replace("s-key.pem", "ca-key.pem"), "tls.key_file"),
        ] {
            let e = Tls::start(&cfg(dir.path(), &text)).map(|_| ()).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn reload_keeps_the_old_material_when_the_new_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::start(&cfg(dir.path(), "")).unwrap().unwrap();
        let before = tls.current();
        std::fs::write(dir.path().join("tls/server-key.pem"), "broken").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains("tls.key_file"), "{e}");
        assert!(Arc::ptr_eq(&before, &tls.current()));
    }
}
