//! The keys of a physical seed (decision 167): a new MariaDB replica's agent asks the agent
//! of a healthy replica (the donor) for a copy of it, which the donor's agent streams
//! straight from `mariadb-backup --stream` in the donor's container, compressed and sealed
//! with [`crate::backup_crypt`]'s STREAM construction.
//!
//! Both agents derive the same two keys, with HKDF-SHA256, from the instance's admin
//! password (every agent running a member of the instance holds it; the logical copy this
//! replaces reads the same data with it) and the names of the instance, the donor and the new
//! member: a stream key, which seals the copy (an eavesdropper on the agents' plain-HTTP port
//! learns its length only, and a copy cut short, altered or meant for another member does not
//! open), and a proof key, with which the asking agent signs the time of its request, so that
//! nobody without the password makes a donor run a backup. A signed request is good for
//! [`WINDOW_S`] either side of the donor's clock.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// How far the time a request is signed for may be from the donor's clock, seconds.
pub const WINDOW_S: i64 = 300;

/// The header carrying a request's proof (hex).
pub const PROOF_HEADER: &str = "x-mofang-seed-proof";

/// Why a donor refuses a request's proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The request was signed for a time too far from the donor's clock.
    #[error(
        "the request is signed for {at}, {off_s} s from this host's clock (at most {WINDOW_S})"
    )]
    Stale {
        /// The time signed, Unix seconds.
        at: i64,
        /// Its distance from the donor's clock, seconds.
        off_s: i64,
    },
    /// The proof is not the one the keys give.
    #[error(
        "the proof does not match: not signed with this instance's credentials for this member"
    )]
    Proof,
}

/// The keys of one donor → member copy.
pub struct SeedKeys {
    stream: Zeroizing<[u8; 32]>,
    proof: Zeroizing<[u8; 32]>,
    aad: String,
}

impl std::fmt::Debug for SeedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedKeys")
            .field("aad", &self.aad)
            .finish_non_exhaustive()
    }
}

impl SeedKeys {
    /// The keys of a copy of `donor` for `member`, both of `instance`, from its admin
    /// password `secret`.
    pub fn derive(secret: &str, instance: &str, donor: &str, member: &str) -> Self {
        let aad = format!("mofang seed v1\0{instance}\0{donor}\0{member}");
        let hk = Hkdf::<Sha256>::new(Some(b"mofang seed"), secret.as_bytes());
        let mut stream = Zeroizing::new([0u8; 32]);
        let mut proof = Zeroizing::new([0u8; 32]);
        // 32 bytes are always a valid HKDF-SHA256 output length.
        let _ = hk.expand(format!("stream\0{aad}").as_bytes(), stream.as_mut());
        let _ = hk.expand(format!("proof\0{aad}").as_bytes(), proof.as_mut());
        SeedKeys { stream, proof, aad }
    }

    /// The key the copy is sealed with.
    pub fn stream_key(&self) -> &[u8; 32] {
        &self.stream
    }

    /// The associated data the copy is sealed with (it names instance, donor and member).
    pub fn aad(&self) -> &str {
        &self.aad
    }

    /// The proof of a request signed for Unix second `at` (hex).
    pub fn proof(&self, at: i64) -> String {
        let hk = Hkdf::<Sha256>::new(None, self.proof.as_ref());
        let mut out = [0u8; 32];
        let _ = hk.expand(format!("request\0{at}").as_bytes(), &mut out);
        hex::encode(out)
    }

    /// Whether `proof` signs a request for `at`, and `at` is within [`WINDOW_S`] of `now`
    /// (Unix seconds). The comparison takes the same time wherever the proofs differ.
    pub fn check(&self, at: i64, now: i64, proof: &str) -> Result<(), Refused> {
        let off_s = at.saturating_sub(now).saturating_abs();
        if off_s > WINDOW_S {
            return Err(Refused::Stale { at, off_s });
        }
        let want = self.proof(at);
        let same = want.len() == proof.len()
            && want
                .bytes()
                .zip(proof.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(Refused::Proof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cretAdminPassw0rdForTheInstance";

    #[test]
    fn both_sides_derive_the_same_keys_and_a_proof_checks_within_the_window() {
        let asker = SeedKeys::derive(SECRET, "orders", "orders-1", "orders-3");
        let donor = SeedKeys::derive(SECRET, "orders", "orders-1", "orders-3");
        assert_eq!(asker.stream_key(), donor.stream_key());
        let p = asker.proof(1_000_000);
        assert_eq!(donor.check(1_000_000, 1_000_000 + WINDOW_S, &p), Ok(()));
        assert_eq!(donor.check(1_000_000, 1_000_000 - WINDOW_S, &p), Ok(()));
        assert_eq!(
            donor.check(1_000_000, 1_000_000 + WINDOW_S + 1, &p),
            Err(Refused::Stale {
                at: 1_000_000,
                off_s: WINDOW_S + 1
            })
        );
        // Signed for another second: the time is part of the proof.
        assert_eq!(donor.check(1_000_001, 1_000_000, &p), Err(Refused::Proof));
    }

    #[test]
    fn another_password_member_donor_or_instance_gives_other_keys() {
        let k = SeedKeys::derive(SECRET, "orders", "orders-1", "orders-3");
        let p = k.proof(7);
        for other in [
            SeedKeys::derive(
                "anotherAdminPassword0123456789",
                "orders",
                "orders-1",
                "orders-3",
            ),
            SeedKeys::derive(SECRET, "orders", "orders-1", "orders-4"),
            SeedKeys::derive(SECRET, "orders", "orders-2", "orders-3"),
            SeedKeys::derive(SECRET, "billing", "orders-1", "orders-3"),
        ] {
            assert_ne!(other.stream_key(), k.stream_key(), "{other:?}");
            assert_eq!(other.check(7, 7, &p), Err(Refused::Proof), "{other:?}");
        }
        assert_eq!(k.check(7, 7, ""), Err(Refused::Proof));
        assert_eq!(k.check(7, 7, &p[..63]), Err(Refused::Proof));
        // The keys never show in a debug print.
        assert!(!format!("{k:?}").contains(&hex::encode(k.stream_key())));
    }

    #[test]
    fn a_copy_sealed_for_one_member_does_not_open_for_another() {
        use crate::backup_crypt::{Decryptor, Encryptor};
        let k = SeedKeys::derive(SECRET, "orders", "orders-1", "orders-3");
        let mut enc = Encryptor::new(k.stream_key(), k.aad().as_bytes());
        let mut sealed = Vec::new();
        enc.update(b"ibdata1 and friends", &mut sealed).unwrap();
        enc.finish(&mut sealed).unwrap();
        let open = |keys: &SeedKeys| {
            let mut d = Decryptor::new(keys.stream_key(), keys.aad().as_bytes());
            let mut plain = Vec::new();
            d.update(&sealed, &mut plain)?;
            d.finish(&mut plain)?;
            Ok::<_, crate::backup_crypt::Error>(plain)
        };
        assert_eq!(open(&k).unwrap(), b"ibdata1 and friends");
        let other = SeedKeys::derive(SECRET, "orders", "orders-1", "orders-4");
        assert!(open(&other).is_err());
    }
}
