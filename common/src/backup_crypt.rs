//! Client-side encryption of backup objects (issue 16): a stream of any length sealed in
//! chunks with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`, as [`crate::sealed`]),
//! so an object is encrypted and decrypted while it streams, in bounded memory.
//!
//! The construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015), as the `aead`
//! crate's `stream` module and age use it: the object opens with a header (the magic
//! [`MAGIC`] and a random 19-byte nonce prefix), then chunks of [`CHUNK`] plaintext bytes
//! (the last shorter, possibly empty), each sealed with the nonce `prefix ‖ counter (u32, big
//! endian) ‖ last (1 byte: 1 on the last chunk, else 0)` and the object's associated data.
//! Reordered, dropped, repeated or altered chunks do not open, nor does an object cut at a
//! chunk boundary (its last chunk is not marked last), nor one moved to another backup (the
//! associated data names it).
//!
//! A repository created with `"encrypt": true` holds a [`RepoKey`]; each object's key is
//! derived from it and the object's path with HKDF-SHA256 ([`RepoKey::object_key`]), so
//! nothing per object needs storing and a keyring rotation, which seals the repository record
//! again, never changes what an object needs (decision 119).

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// What a manifest records as the algorithm of an encrypted object.
pub const ALGORITHM: &str = "xchacha20poly1305-stream-64k";
/// The first bytes of an encrypted object.
pub const MAGIC: &[u8; 8] = b"MFBKENC1";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 << 10;
const TAG: usize = 16;
const PREFIX: usize = 19;
const HEADER: usize = MAGIC.len() + PREFIX;

/// Why an object did not decrypt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The object does not start with [`MAGIC`]: not encrypted, or another format.
    #[error(
        "not an encrypted backup object (no {:?} header)",
        String::from_utf8_lossy(MAGIC)
    )]
    NotEncrypted,
    /// A chunk did not open: the wrong key, or the object altered, reordered or moved.
    #[error("chunk {chunk} does not open: the wrong key, or the object was altered")]
    Chunk {
        /// The chunk's index.
        chunk: u32,
    },
    /// The object ends before its last chunk (cut short).
    #[error("the object is cut short after {chunks} chunks")]
    Truncated {
        /// Chunks read.
        chunks: u32,
    },
    /// Bytes follow the last chunk, or more chunks than a counter can number.
    #[error("bytes after the last chunk")]
    Trailing,
    /// The AEAD refused to seal (never for inputs of a chunk's size).
    #[error("sealing chunk {chunk} failed")]
    Seal {
        /// The chunk's index.
        chunk: u32,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A repository's encryption key: 256 bits, kept in the repository record (sealed by the
/// data keyring) and sent to agents with the repository. Its text form is base64url without
/// padding (43 characters). Never printed.
#[derive(Clone)]
pub struct RepoKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({}, <redacted>)", self.id())
    }
}

/// Why a repository key's text is refused (never quoting it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("encryption_key is not 32 bytes in base64url (43 characters, no padding)")]
pub struct BadKey;

impl RepoKey {
    /// A new random key.
    pub fn generate() -> Self {
        RepoKey(new_key())
    }

    /// Reads the text form.
    pub fn parse(text: &str) -> Result<Self, BadKey> {
        use base64::Engine as _;
        let raw = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim())
                .map_err(|_| BadKey)?,
        );
        let mut k = Zeroizing::new([0u8; 32]);
        if raw.len() != k.len() {
            return Err(BadKey);
        }
        k.copy_from_slice(&raw);
        Ok(RepoKey(k))
    }

    /// The text form (secret: store it sealed only).
    pub fn to_text(&self) -> Zeroizing<String> {
        use base64::Engine as _;
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_ref()))
    }

    /// A public name of the key (16 hex digits, derived one way): what manifests record, so
    /// a restore with another key is refused by name before any byte is read.
    pub fn id(&self) -> String {
        let mut id = [0u8; 8];
        self.expand(b"mofang backup key id v1", &mut id);
        hex::encode(id)
    }

    /// The key of the object at `rel` (its path under the repository's prefix).
    pub fn object_key(&self, rel: &str) -> Zeroizing<[u8; 32]> {
        let mut k = Zeroizing::new([0u8; 32]);
        let mut info = b"mofang backup object key v1\0".to_vec();
        info.extend_from_slice(rel.as_bytes());
        self.expand(&info, k.as_mut());
        k
    }

    fn expand(&self, info: &[u8], out: &mut [u8]) {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, self.0.as_ref());
        // Lengths of 8 and 32 bytes are far below HKDF-SHA256's limit (8160).
        if hk.expand(info, out).is_err() {
            out.fill(0);
        }
    }
}

/// A new random 256-bit object key.
pub fn new_key() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(k.as_mut());
    k
}

fn nonce(prefix: &[u8; PREFIX], counter: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&counter.to_be_bytes());
    n[23] = u8::from(last);
    XNonce::from(n)
}

/// Encrypts a stream: [`Encryptor::update`] with each piece of plaintext, then
/// [`Encryptor::finish`]; each appends the ciphertext ready so far to `out`.
pub struct Encryptor {
    cipher: XChaCha20Poly1305,
    prefix: [u8; PREFIX],
    counter: u32,
    aad: Vec<u8>,
    pending: Zeroizing<Vec<u8>>,
    header_sent: bool,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// An encryptor with `key`, binding the object to `aad` (e.g. its path).
    pub fn new(key: &[u8; 32], aad: &[u8]) -> Self {
        let mut prefix = [0u8; PREFIX];
        OsRng.fill_bytes(&mut prefix);
        Encryptor {
            cipher: XChaCha20Poly1305::new(key.into()),
            prefix,
            counter: 0,
            aad: aad.to_vec(),
            pending: Zeroizing::new(Vec::with_capacity(CHUNK)),
            header_sent: false,
        }
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        if !self.header_sent {
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&self.prefix);
            self.header_sent = true;
        }
    }

    fn seal(&mut self, last: bool, out: &mut Vec<u8>) -> Result<()> {
        let chunk = self.counter;
        let sealed = self
            .cipher
            .encrypt(
                &nonce(&self.prefix, chunk, last),
                Payload {
                    msg: &self.pending,
                    aad: &self.aad,
                },
            )
            .map_err(|_| Error::Seal { chunk })?;
        out.extend_from_slice(&sealed);
        self.pending.clear();
        self.counter = chunk.checked_add(1).ok_or(Error::Trailing)?;
        Ok(())
    }

    /// Takes `data`; appends every chunk it completes.
    pub fn update(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.header(out);
        while !data.is_empty() {
            // A full chunk is sealed only when more follows: the last one is marked at finish.
            if self.pending.len() == CHUNK {
                self.seal(false, out)?;
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Seals what is left as the last chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        self.header(out);
        self.seal(true, out)
    }
}

/// Decrypts a stream made by [`Encryptor`]: [`Decryptor::update`] with each piece of
/// ciphertext, then [`Decryptor::finish`], which fails if the object was cut short.
pub struct Decryptor {
    cipher: XChaCha20Poly1305,
    aad: Vec<u8>,
    prefix: Option<[u8; PREFIX]>,
    counter: u32,
    pending: Vec<u8>,
    ended: bool,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor with `key` for an object bound to `aad`.
    pub fn new(key: &[u8; 32], aad: &[u8]) -> Self {
        Decryptor {
            cipher: XChaCha20Poly1305::new(key.into()),
            aad: aad.to_vec(),
            prefix: None,
            counter: 0,
            pending: Vec::with_capacity(CHUNK + TAG),
            ended: false,
        }
    }

    fn open(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<()> {
        let chunk = self.counter;
        let prefix = self.prefix.ok_or(Error::NotEncrypted)?;
        let plain = self
            .cipher
            .decrypt(
                &nonce(&prefix, chunk, last),
                Payload {
                    msg: &self.pending[..len],
                    aad: &self.aad,
                },
            )
            .map_err(|_| Error::Chunk { chunk })?;
        out.extend_from_slice(&plain);
        self.pending.drain(..len);
        self.counter = chunk.checked_add(1).ok_or(Error::Trailing)?;
        Ok(())
    }

    /// Takes `data`; appends the plaintext of every chunk known not to be the last.
    pub fn update(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.ended && !data.is_empty() {
            return Err(Error::Trailing);
        }
        self.pending.extend_from_slice(data);
        if self.prefix.is_none() {
            if self.pending.len() < HEADER {
                if !MAGIC.starts_with(&self.pending[..self.pending.len().min(MAGIC.len())]) {
                    return Err(Error::NotEncrypted);
                }
                return Ok(());
            }
            if &self.pending[..MAGIC.len()] != MAGIC {
                return Err(Error::NotEncrypted);
            }
            let mut prefix = [0u8; PREFIX];
            prefix.copy_from_slice(&self.pending[MAGIC.len()..HEADER]);
            self.prefix = Some(prefix);
            self.pending.drain(..HEADER);
        }
        // A whole sealed chunk is opened as not-last only once a byte after it has come.
        while self.pending.len() > CHUNK + TAG {
            self.open(CHUNK + TAG, false, out)?;
        }
        Ok(())
    }

    /// The end of the object: opens its last chunk.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.prefix.is_none() {
            return Err(if self.pending.is_empty() {
                Error::Truncated { chunks: 0 }
            } else {
                Error::NotEncrypted
            });
        }
        if self.pending.len() < TAG {
            return Err(Error::Truncated {
                chunks: self.counter,
            });
        }
        let len = self.pending.len();
        match self.open(len, true, out) {
            // A cut at a chunk boundary leaves a whole chunk not marked last.
            Err(Error::Chunk { .. }) if len == CHUNK + TAG => Err(Error::Truncated {
                chunks: self.counter,
            }),
            other => {
                self.ended = true;
                other
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(key: &[u8; 32], aad: &[u8], data: &[u8], piece: usize) -> Vec<u8> {
        let mut e = Encryptor::new(key, aad);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            e.update(p, &mut out).unwrap();
        }
        e.finish(&mut out).unwrap();
        out
    }

    fn decrypt(key: &[u8; 32], aad: &[u8], data: &[u8], piece: usize) -> Result<Vec<u8>> {
        let mut d = Decryptor::new(key, aad);
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            d.update(p, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    /// Any length, fed in any pieces, round-trips; the ciphertext holds no run of the
    /// plaintext and is the plaintext plus the header and a tag per chunk.
    #[test]
    fn streams_of_any_length_round_trip_in_any_pieces() {
        let key = new_key();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| b"row value "[i % 10]).collect();
            for piece in [1000, CHUNK, 7 * CHUNK + 3] {
                let sealed = encrypt(&key, b"obj", &data, piece);
                let chunks = len.div_ceil(CHUNK).max(1);
                assert_eq!(sealed.len(), HEADER + len + chunks * TAG, "len {len}");
                assert!(sealed.starts_with(MAGIC));
                if len > 100 {
                    assert!(!sealed.windows(10).any(|w| w == b"row value "), "len {len}");
                }
                for out_piece in [1, 4096, CHUNK + TAG, sealed.len()] {
                    if out_piece == 1 && len > CHUNK {
                        continue;
                    }
                    assert_eq!(
                        decrypt(&key, b"obj", &sealed, out_piece).unwrap(),
                        data,
                        "len {len} piece {piece}/{out_piece}"
                    );
                }
            }
        }
    }

    /// Object keys differ per path and per repository key; the id names the key; the text
    /// form round-trips and a bad one is refused.
    #[test]
    fn repository_keys_derive_one_key_per_object() {
        let k = RepoKey::generate();
        let again = RepoKey::parse(&k.to_text()).unwrap();
        assert_eq!(k.id(), again.id());
        assert_eq!(k.id().len(), 16);
        assert_eq!(*k.object_key("a/b"), *again.object_key("a/b"));
        assert_ne!(*k.object_key("a/b"), *k.object_key("a/c"));
        let other = RepoKey::generate();
        assert_ne!(k.id(), other.id());
        assert_ne!(*k.object_key("a/b"), *other.object_key("a/b"));
        assert_eq!(RepoKey::parse("short").unwrap_err(), BadKey);
        assert!(!format!("{k:?}").contains(k.to_text().as_str()));
        // A fixed key derives fixed values (computed apart, with Python's hmac as RFC 5869
        // says): the derivation must never change, or existing backups would stop opening.
        let zero = RepoKey::parse(&"A".repeat(43)).unwrap();
        assert_eq!(zero.id(), "4ec187019342b408");
        assert_eq!(
            hex::encode(*zero.object_key("backups/db/db-1/full.mbstream.zst")),
            "a1d69ab103d6c820a2eeb2576993faad48fe700996a9697fc9540ed433cdc376"
        );
    }

    /// The wrong key, another object's associated data, an altered byte, a cut, a dropped
    /// or swapped chunk, trailing bytes and a plain object are each refused.
    #[test]
    fn tampering_and_the_wrong_key_are_refused() {
        let key = new_key();
        let data = vec![7u8; 3 * CHUNK + 5];
        let sealed = encrypt(&key, b"obj", &data, CHUNK);
        let other = new_key();
        assert_eq!(
            decrypt(&other, b"obj", &sealed, 4096),
            Err(Error::Chunk { chunk: 0 })
        );
        assert_eq!(
            decrypt(&key, b"another", &sealed, 4096),
            Err(Error::Chunk { chunk: 0 })
        );
        let mut altered = sealed.clone();
        altered[HEADER + CHUNK + TAG + 9] ^= 1;
        assert_eq!(
            decrypt(&key, b"obj", &altered, 4096),
            Err(Error::Chunk { chunk: 1 })
        );
        // Cut at a chunk boundary: every chunk opens, but none is the last.
        let cut = &sealed[..HEADER + 2 * (CHUNK + TAG)];
        assert_eq!(
            decrypt(&key, b"obj", cut, 4096),
            Err(Error::Truncated { chunks: 1 })
        );
        assert!(decrypt(&key, b"obj", &sealed[..sealed.len() - 1], 4096).is_err());
        assert!(decrypt(&key, b"obj", &sealed[..HEADER + 3], 4096).is_err());
        let c = CHUNK + TAG;
        let mut swapped = sealed[..HEADER].to_vec();
        swapped.extend_from_slice(&sealed[HEADER + c..HEADER + 2 * c]);
        swapped.extend_from_slice(&sealed[HEADER..HEADER + c]);
        swapped.extend_from_slice(&sealed[HEADER + 2 * c..]);
        assert_eq!(
            decrypt(&key, b"obj", &swapped, 4096),
            Err(Error::Chunk { chunk: 0 })
        );
        let mut dropped = sealed[..HEADER].to_vec();
        dropped.extend_from_slice(&sealed[HEADER + c..]);
        assert_eq!(
            decrypt(&key, b"obj", &dropped, 4096),
            Err(Error::Chunk { chunk: 0 })
        );
        let mut trailing = sealed.clone();
        trailing.extend_from_slice(&sealed[HEADER..HEADER + 40]);
        assert!(decrypt(&key, b"obj", &trailing, 4096).is_err());
        assert_eq!(
            decrypt(&key, b"obj", b"\xfe\xedplain mbstream", 4096),
            Err(Error::NotEncrypted)
        );
        assert_eq!(
            decrypt(&key, b"obj", b"", 4096),
            Err(Error::Truncated { chunks: 0 })
        );
    }
}
