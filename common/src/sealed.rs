//! Secrets at rest: a versioned [`Keyring`] of 256-bit keys, [`Sealed`] values (XChaCha20-
//! Poly1305, RustCrypto's `chacha20poly1305`) that name the key that sealed them, and the 0600
//! keyring file both daemons keep.
//!
//! A sealed value's text form is `mfs1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`. The
//! nonce is 24 random bytes (XChaCha: random nonces are safe at any volume we will see). Each
//! value is bound to where it belongs by associated data (`aad`, e.g. the instance and field),
//! so a ciphertext copied to another record does not open. Keys only grow in id; the newest
//! is the *active* key that seals, older ones still open until they are retired.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Prefix of a sealed value's text form (format version 1).
pub const PREFIX: &str = "mfs1:";
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// Why sealing, opening or a keyring file failed. No variant carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value names a key this keyring does not hold (retired, or another keyring).
    #[error("sealed with key {id}, which this keyring does not hold (keys: {held:?})")]
    UnknownKey {
        /// The key id the value names.
        id: u32,
        /// The ids this keyring holds.
        held: Vec<u32>,
    },
    /// The AEAD refused: wrong key material, altered ciphertext, or a value moved from
    /// another record (associated data differs).
    #[error("sealed value does not open with key {id}: wrong key, altered, or moved")]
    Tampered {
        /// The key id the value names.
        id: u32,
    },
    /// Not a sealed value of a known format.
    #[error("malformed sealed value: {0}")]
    Malformed(&'static str),
    /// Sealing failed (the AEAD refused its input).
    #[error("sealing with key {id} failed")]
    Seal {
        /// The key id.
        id: u32,
    },
    /// The keyring file does not exist.
    #[error("keyring file {path} does not exist")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The keyring file could not be read, created or written.
    #[error("keyring file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The keyring file is not a keyring.
    #[error("keyring file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        message: String,
    },
    /// The keyring has no key to seal with.
    #[error("keyring is empty")]
    Empty,
}

/// Result of sealing operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One key: an id, the key bytes (wiped when dropped), when it was made.
#[derive(Clone)]
pub struct Key {
    id: u32,
    bytes: Zeroizing<[u8; KEY_LEN]>,
    created_at_ms: i64,
}

impl Key {
    fn generate(id: u32) -> Self {
        let k = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&k);
        Key {
            id,
            bytes,
            created_at_ms: now_ms(),
        }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// When it was created (unix ms).
    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.bytes.as_ref().into())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, <redacted>)", self.id)
    }
}

/// Versioned keys; the one with the highest id is active (seals), every held key opens.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: BTreeMap<u32, Key>,
}

/// A sealed value: the key id, the nonce, the ciphertext with its tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    key_id: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed(key {}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

impl Sealed {
    /// The id of the key that sealed it.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// True if `text` looks like a sealed value (the prefix), whatever its key.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(PREFIX)
    }

    /// The key id named by a sealed value's text, without opening it.
    pub fn key_id_of(text: &str) -> Result<u32> {
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(Error::Malformed("no mfs1: prefix"))?;
        let (id, _) = rest.split_once(':').ok_or(Error::Malformed("no key id"))?;
        id.parse()
            .map_err(|_| Error::Malformed("key id is not a number"))
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self> {
        let key_id = Self::key_id_of(text)?;
        let body = text
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .map(|(_, b)| b)
            .ok_or(Error::Malformed("no body"))?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| Error::Malformed("body is not base64url"))?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(Error::Malformed("too short"));
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(Sealed {
            key_id,
            nonce: n,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

impl std::fmt::Display for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(NONCE_LEN + self.ciphertext.len());
        raw.extend_from_slice(&self.nonce);
        raw.extend_from_slice(&self.ciphertext);
        write!(f, "{PREFIX}{}:{}", self.key_id, URL_SAFE_NO_PAD.encode(raw))
    }
}

impl Keyring {
    /// A keyring with one new random key, id 1.
    pub fn generate() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(1, Key::generate(1));
        Keyring { keys }
    }

    /// The active key's id (the highest); `None` only for an empty keyring.
    pub fn active_id(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    /// The ids held, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Adds a new random key that becomes active; returns its id. Older keys still open.
    pub fn rotate(&mut self) -> u32 {
        let id = self.active_id().map_or(1, |i| i.saturating_add(1));
        self.keys.insert(id, Key::generate(id));
        id
    }

    /// Forgets a key that is not the active one: values it sealed no longer open. Returns
    /// false if it is the active key or not held.
    pub fn retire(&mut self, id: u32) -> bool {
        if Some(id) == self.active_id() {
            return false;
        }
        self.keys.remove(&id).is_some()
    }

    /// Seals `plain` with the active key, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Sealed> {
        let key = self.keys.values().next_back().ok_or(Error::Empty)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = key
            .cipher()
            .encrypt(&nonce, Payload { msg: plain, aad })
            .map_err(|_| Error::Seal { id: key.id })?;
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&nonce);
        Ok(Sealed {
            key_id: key.id,
            nonce: n,
            ciphertext,
        })
    }

    /// Opens a sealed value bound to `aad`. The plaintext is wiped when dropped.
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>> {
        let key = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| Error::UnknownKey {
                id: sealed.key_id,
                held: self.ids(),
            })?;
        key.cipher()
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::Tampered { id: sealed.key_id })
    }

    /// Seals a string into its text form.
    pub fn seal_str(&self, aad: &str, plain: &str) -> Result<String> {
        Ok(self.seal(aad.as_bytes(), plain.as_bytes())?.to_string())
    }

    /// Opens the text form of a sealed string.
    pub fn open_str(&self, aad: &str, text: &str) -> Result<String> {
        let plain = self.open(aad.as_bytes(), &Sealed::parse(text)?)?;
        String::from_utf8(plain.to_vec()).map_err(|_| Error::Malformed("not UTF-8"))
    }

    /// The keyring as JSON (key material included: write it only sealed or to a 0600 file).
    pub fn to_json(&self) -> Zeroizing<String> {
        let file = KeyringFile {
            keys: self
                .keys
                .values()
                .map(|k| KeyEntry {
                    id: k.id,
                    key: Zeroizing::new(URL_SAFE_NO_PAD.encode(k.bytes.as_ref())),
                    created_at_ms: k.created_at_ms,
                })
                .collect(),
        };
        // Serializing plain strings and numbers cannot fail.
        Zeroizing::new(serde_json::to_string_pretty(&file).unwrap_or_default())
    }

    /// Reads the JSON of [`Keyring::to_json`]; `what` names the source in errors.
    pub fn from_json(json: &str) -> std::result::Result<Self, String> {
        let file: KeyringFile = serde_json::from_str(json).map_err(|e| {
            // serde's message may quote input; keep only its position.
            format!("not a keyring (line {}, column {})", e.line(), e.column())
        })?;
        let mut keys = BTreeMap::new();
        for k in file.keys {
            let raw = Zeroizing::new(
                URL_SAFE_NO_PAD
                    .decode(k.key.as_bytes())
                    .map_err(|_| format!("key {} is not base64url", k.id))?,
            );
            if raw.len() != KEY_LEN {
                return Err(format!("key {} is not {KEY_LEN} bytes", k.id));
            }
            let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
            bytes.copy_from_slice(&raw);
            if keys
                .insert(
                    k.id,
                    Key {
                        id: k.id,
                        bytes,
                        created_at_ms: k.created_at_ms,
                    },
                )
                .is_some()
            {
                return Err(format!("key {} appears twice", k.id));
            }
        }
        if keys.is_empty() {
            return Err("no keys".to_owned());
        }
        Ok(Keyring { keys })
    }

    /// Reads a keyring file. A file readable by group or others is refused: its keys may
    /// have leaked, and a key file is 0600 (Error::Corrupt names the mode).
    pub fn load(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(io(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                message: format!("mode {mode:o} lets others read it; it must be 0600"),
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        Self::from_json(&text).map_err(|message| Error::Corrupt {
            path: path.to_owned(),
            message,
        })
    }

    /// Writes the keyring to `path` with mode 0600 (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| Error::Io { path: p, source }
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(&tmp))?;
        f.write_all(self.to_json().as_bytes()).map_err(io(&tmp))?;
        f.write_all(b"\n").map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads the keyring file, or creates it (0600, one new key) if it does not exist.
    /// Returns the keyring and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool)> {
        match Self::load(path) {
            Ok(k) => Ok((k, false)),
            Err(Error::Missing { .. }) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                let k = Self::generate();
                k.save(path)?;
                Ok((k, true))
            }
            Err(e) => Err(e),
        }
    }
}

/// The keyring's JSON shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: u32,
    key: Zeroizing<String>,
    #[serde(default)]
    created_at_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_keyring_and_aad_only() {
        let k = Keyring::generate();
        let text = k
            .seal_str("instance/orders/admin", "hunter2-password")
            .unwrap();
        assert!(text.starts_with("mfs1:1:"), "{text}");
        assert!(!text.contains("hunter2"));
        assert_eq!(
            k.open_str("instance/orders/admin", &text).unwrap(),
            "hunter2-password"
        );
        // Moved to another record: refused.
        assert!(matches!(
            k.open_str("instance/other/admin", &text),
            Err(Error::Tampered { id: 1 })
        ));
        // Two seals of the same value differ (random nonce).
        assert_ne!(
            text,
            k.seal_str("instance/orders/admin", "hunter2-password")
                .unwrap()
        );
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let a = Keyring::generate();
        let b = Keyring::generate();
        let text = a.seal_str("x", "secret").unwrap();
        assert!(matches!(
            b.open_str("x", &text),
            Err(Error::Tampered { id: 1 })
        ));
    }

    #[test]
    fn a_tampered_ciphertext_is_refused() {
        let k = Keyring::generate();
        let mut s = k.seal(b"x", b"secret value").unwrap();
        for i in 0..s.ciphertext.len() {
            let mut t = s.clone();
            t.ciphertext[i] ^= 0x01;
            assert!(
                matches!(k.open(b"x", &t), Err(Error::Tampered { .. })),
                "byte {i}"
            );
        }
        s.nonce[0] ^= 0x80;
        assert!(matches!(k.open(b"x", &s), Err(Error::Tampered { .. })));
        for bad in ["mfs1:1:", "mfs1:x:AAAA", "mfs2:1:AAAA", "mfs1:1:!!!!"] {
            assert!(k.open_str("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rotation_seals_with_the_new_key_and_old_values_still_open_until_retired() {
        let mut k = Keyring::generate();
        let old = k.seal_str("x", "old secret").unwrap();
        assert_eq!(k.rotate(), 2);
        let new = k.seal_str("x", "new secret").unwrap();
        assert_eq!(Sealed::key_id_of(&new).unwrap(), 2);
        assert_eq!(k.open_str("x", &old).unwrap(), "old secret");
        assert!(!k.retire(2), "the active key is never retired");
        assert!(k.retire(1));
        assert!(matches!(
            k.open_str("x", &old),
            Err(Error::UnknownKey { id: 1, .. })
        ));
        assert_eq!(k.open_str("x", &new).unwrap(), "new secret");
        // A retired id is never reused.
        assert_eq!(k.rotate(), 3);
    }

    #[test]
    fn the_keyring_file_is_created_0600_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/keyring.json");
        let (a, created) = Keyring::load_or_create(&p).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = Keyring::load_or_create(&p).unwrap();
        assert!(!created);
        let text = a.seal_str("x", "secret").unwrap();
        assert_eq!(b.open_str("x", &text).unwrap(), "secret");
        // Readable by others: refused, never used.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keyring::load(&p).unwrap_err();
        assert!(e.to_string().contains("0600"), "{e}");
        // Garbage: refused without echoing the content.
        std::fs::write(&p, "{\"keys\": \"c2VjcmV0\"}").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Keyring::load(&p).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert!(matches!(
            Keyring::load(&d.path().join("none")),
            Err(Error::Missing { .. })
        ));
    }
}
