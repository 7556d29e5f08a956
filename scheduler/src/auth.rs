//! API tokens: bearer tokens mapped to a name and a role. Only SHA-256 digests are kept in
//! memory; with no token configured, an admin token is generated once and stored 0600.

use crate::config::{TokenConfig, TokenRole};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Token name (recorded in the audit log).
    pub name: String,
    /// Its role.
    pub role: TokenRole,
}

/// Known tokens by digest.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<String, Identity>,
}

/// The hex SHA-256 of a token.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Tokens {
    /// Tokens from config.
    pub fn from_config(cfg: &[TokenConfig]) -> Self {
        let by_digest = cfg
            .iter()
            .filter_map(|t| {
                let d = t
                    .sha256
                    .clone()
                    .map(|h| h.to_lowercase())
                    .or_else(|| t.secret.as_deref().map(digest))?;
                Some((
                    d,
                    Identity {
                        name: t.name.clone(),
                        role: t.role,
                    },
                ))
            })
            .collect();
        Tokens { by_digest }
    }

    /// Adds one token.
    pub fn insert(&mut self, token: &str, name: &str, role: TokenRole) {
        self.by_digest.insert(
            digest(token),
            Identity {
                name: name.to_owned(),
                role,
            },
        );
    }

    /// Looks up a bearer token.
    pub fn check(&self, token: &str) -> Option<&Identity> {
        self.by_digest.get(&digest(token))
    }

    /// No tokens configured.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Reads the generated admin token from `<data_dir>/admin.token`, creating it (0600) on first
/// start. Returns the token and the file path (the path is logged, never the token).
pub fn ensure_admin_token(data_dir: &Path) -> std::io::Result<(String, PathBuf)> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok((t.trim().to_owned(), path)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use rand::distr::{Alphanumeric, SampleString};
    let token = format!("mfg_{}", Alphanumeric.sample_string(&mut rand::rng(), 40));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok((token, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_by_digest() {
        let cfg = vec![
            TokenConfig {
                name: "ops".into(),
                role: TokenRole::Operator,
                sha256: Some(digest("s3cret-token-ops-1")),
                secret: None,
            },
            TokenConfig {
                name: "ci".into(),
                role: TokenRole::Viewer,
                sha256: None,
                secret: Some("viewer-token-123456".into()),
            },
        ];
        let t = Tokens::from_config(&cfg);
        assert_eq!(t.check("s3cret-token-ops-1").unwrap().name, "ops");
        assert_eq!(
            t.check("viewer-token-123456").unwrap().role,
            TokenRole::Viewer
        );
        assert!(t.check("nope").is_none());
    }

    #[test]
    fn generated_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, p) = ensure_admin_token(d.path()).unwrap();
        let (b, _) = ensure_admin_token(d.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
