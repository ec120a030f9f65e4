//! A device's verifying key, with a table of its multiples built at its first reading, so that
//! each later reading's strict signature check costs about 0.4x ed25519-dalek's `verify_strict`
//! (benches/README.md, "The request path outside the sandbox").
//!
//! `verify_strict` computes `R' = [s]B - [k]A` with one variable-time double-base multiplication
//! (about 256 doublings), compresses `R'` and compares it with the signature's `R`. A device
//! sends many readings under one key `A`, so `[k]A` can come from a precomputed table of `A`'s
//! multiples as `[s]B` can from one of the basepoint's: [`super::edwards`] holds both (radix 16
//! for keys, 30 KiB each; radix 256 for the basepoint, one per process) and adds up one entry per
//! digit, in variable time (the inputs are public). Building a key's table costs about 230 us
//! (two `verify_strict`s), so the registry builds at most [`MAX_KEY_TABLES`] of them, lazily; keys beyond that
//! are checked by `verify_strict` itself.
//!
//! The check accepts exactly what `verify_strict` accepts (the unit tests compare both on valid,
//! mutated and crafted signatures). `verify_strict` accepts when:
//! 1. `s` is canonical (`s < l`; ed25519-dalek's `legacy_compatibility` feature, which would
//!    relax this, is off, and a test would fail if it were turned on);
//! 2. `R`'s bytes decompress to a point that is not of small order;
//! 3. `A` is not of small order;
//! 4. `compress([s]B - [k]A)` equals `R`'s bytes, with `k = SHA-512(R || A || M) mod l`.
//!
//! Here (2) is checked after (4), on `R'` instead of on a decompressed `R`: when (4) holds,
//! `R`'s bytes are the canonical encoding of `R'`, so they decompress to `R'` itself and (2)
//! reduces to "`R'` is not of small order", that is, `R`'s bytes are not the encoding of one of
//! the 8 points of order dividing 8; when (4) fails, both refuse. This saves the square root of
//! a decompression and the cofactor multiplication. (3) is checked once, when the key's table
//! would be built: a key of small order gets none, and `verify_strict` itself refuses it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};

use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha512};

use super::edwards::{self, Point, Table};

/// The most key tables one registry builds: 30 KiB each, so at most 30 MiB. Devices past this
/// many are checked without one (the same result, about 2.8x the time).
pub const MAX_KEY_TABLES: usize = 1024;

/// The encodings of the points of small order (order 1, 2, 4 or 8): `R'` is of small order
/// exactly when its canonical encoding is one of these.
static SMALL_ORDER: LazyLock<[[u8; 32]; 8]> =
    LazyLock::new(|| EIGHT_TORSION.map(|t| t.compress().to_bytes()));

/// The signature does not verify (strictly). Carries nothing, like ed25519-dalek's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSignature;

/// A device's verifying key and, once it has been used, its table of multiples.
#[derive(Debug)]
pub struct DeviceKey {
    key: VerifyingKey,
    /// Built at the first check, if the registry's budget allows; `None` if it did not.
    table: OnceLock<Option<Box<Table>>>,
}

/// How many tables a registry may still build.
#[derive(Debug)]
pub struct TableBudget {
    built: AtomicUsize,
    max: usize,
}

impl TableBudget {
    /// A budget of `max` tables.
    pub fn new(max: usize) -> TableBudget {
        TableBudget { built: AtomicUsize::new(0), max }
    }

    /// Takes one table from the budget, if any is left.
    fn take(&self) -> bool {
        self.built
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// How many tables were built.
    pub fn built(&self) -> usize {
        self.built.load(Ordering::Relaxed)
    }
}

impl DeviceKey {
    /// Wraps a key; its table is built at its first check.
    pub fn new(key: VerifyingKey) -> DeviceKey {
        DeviceKey { key, table: OnceLock::new() }
    }

    /// The key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Builds the tables shared by every key (the basepoint's, about 4 ms) if they are not built
    /// yet, so that the first reading does not wait for them.
    pub fn prepare() {
        let _ = edwards::basepoint_table();
        LazyLock::force(&SMALL_ORDER);
    }

    /// Checks `signature` on `message` as ed25519-dalek's `verify_strict` does, with the same
    /// result, building this key's table first if there is none and `budget` allows one.
    pub fn verify_strict(
        &self,
        message: &[u8],
        signature: &Signature,
        budget: &TableBudget,
    ) -> Result<(), BadSignature> {
        let table = self.table.get_or_init(|| {
            // (3) of the module's list: every signature of such a key is refused, by
            // `verify_strict` below, so it needs no table.
            if self.key.to_edwards().is_small_order() {
                return None;
            }
            // The key decoded when its `VerifyingKey` was made, so it decodes here too.
            let point = Point::decompress(self.key.as_bytes())?;
            budget.take().then(|| Box::new(Table::for_key(&point)))
        });
        match (edwards::basepoint_table(), table) {
            (Some(base), Some(table)) => self.verify_with(base, table, message, signature),
            _ => self.key.verify_strict(message, signature).map_err(|_| BadSignature),
        }
    }

    fn verify_with(
        &self,
        base: &Table,
        table: &Table,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), BadSignature> {
        // (1) of the module's list; (3) held when the table was built.
        let s =
            Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes())).ok_or(BadSignature)?;
        let r = signature.r_bytes();
        let k = Scalar::from_hash(
            Sha512::new().chain_update(r).chain_update(self.key.as_bytes()).chain_update(message),
        );
        // (4), then (2) on the point that R's bytes are now known to encode.
        if edwards::recompute_r(base, table, &s, &k) != *r || SMALL_ORDER.contains(r) {
            return Err(BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::traits::{Identity as _, IsIdentity as _};
    use ed25519_dalek::{Signer as _, SigningKey};

    /// A point of order 8 (and its multiples: the whole small-order subgroup).
    fn torsion() -> EdwardsPoint {
        // The y of a point of order 8, from RFC 8032's list of small-order encodings
        // (c7176a70...); checked below by multiplying it out.
        let bytes = hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a").unwrap();
        let t = CompressedEdwardsY(bytes.try_into().unwrap()).decompress().unwrap();
        assert!(
            t.is_small_order()
                && !(t * Scalar::from(4u8)).is_identity()
                && (t * Scalar::from(8u8)).is_identity()
        );
        t
    }

    /// Signs `message` with nonce point `R = [r]B + extra` and the given key, so that the
    /// equation `[s]B - [k]A = [r]B` holds and `R` differs from it by `extra`.
    fn sign_with_extra(
        secret: &SigningKey,
        public: &[u8; 32],
        message: &[u8],
        extra: EdwardsPoint,
    ) -> Signature {
        let r = Scalar::from_hash(Sha512::new().chain_update(b"test nonce").chain_update(message));
        let big_r = (ED25519_BASEPOINT_POINT * r + extra).compress();
        let k = Scalar::from_hash(
            Sha512::new().chain_update(big_r.as_bytes()).chain_update(public).chain_update(message),
        );
        let s = r + k * secret.to_scalar();
        Signature::from_components(big_r.to_bytes(), s.to_bytes())
    }

    /// The check and `verify_strict` agree; returns whether they accepted.
    fn agree(key: &DeviceKey, message: &[u8], signature: &Signature) -> bool {
        let budget = TableBudget::new(usize::MAX);
        let ours = key.verify_strict(message, signature, &budget);
        let theirs = key.key.verify_strict(message, signature);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "disagree on {signature:?}");
        ours.is_ok()
    }

    #[test]
    fn accepts_what_verify_strict_accepts_and_refuses_every_mutation() {
        for seed in 0..3u8 {
            let secret = SigningKey::from_bytes(&[seed; 32]);
            let key = DeviceKey::new(secret.verifying_key());
            for len in [0, 40, 200] {
                let message: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed + 3)).collect();
                let signature = secret.sign(&message);
                assert!(agree(&key, &message, &signature));
                // Every single-bit flip of the signature, and of the message's bytes.
                let bytes = signature.to_bytes();
                for bit in 0..512 {
                    let mut flipped = bytes;
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    assert!(!agree(&key, &message, &Signature::from_bytes(&flipped)));
                }
                for i in 0..message.len() {
                    let mut m = message.clone();
                    m[i] ^= 0x80;
                    assert!(!agree(&key, &m, &signature));
                }
            }
        }
    }

    #[test]
    fn refuses_what_only_a_lax_check_accepts() {
        let secret = SigningKey::from_bytes(&[42; 32]);
        let public = secret.verifying_key();
        let key = DeviceKey::new(public);
        let message = b"reading";
        let l_bytes = {
            let mut l = [0u8; 32];
            l.copy_from_slice(
                &hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010").unwrap(),
            );
            l
        };

        // s + l: the same equation, but `s` not canonical.
        let good = secret.sign(message);
        let mut s_plus_l = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = good.s_bytes()[i] as u16 + l_bytes[i] as u16 + carry;
            s_plus_l[i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "s + l fits in 256 bits for this signature");
        let lax = Signature::from_components(*good.r_bytes(), s_plus_l);
        assert!(!agree(&key, message, &lax));

        // R of small order (the identity) with s = k * a: the equation holds, `verify` (lax)
        // accepts, the strict checks refuse.
        let identity = EdwardsPoint::identity().compress();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(identity.as_bytes())
                .chain_update(public.as_bytes())
                .chain_update(message),
        );
        let small_r = Signature::from_components(identity.to_bytes(), (k * secret.to_scalar()).to_bytes());
        assert!(ed25519_dalek::Verifier::verify(&public, message, &small_r).is_ok());
        assert!(!agree(&key, message, &small_r));

        // R with a torsion component: the cofactored equation holds, the strict one does not.
        let t = torsion();
        for i in 1..8u64 {
            let extra = t * Scalar::from(i);
            let torsioned = sign_with_extra(&secret, public.as_bytes(), message, extra);
            assert!(!agree(&key, message, &torsioned));
        }
        // The same construction without torsion is a valid signature: the test signs right.
        assert!(agree(
            &key,
            message,
            &sign_with_extra(&secret, public.as_bytes(), message, EdwardsPoint::identity())
        ));
    }

    #[test]
    fn keys_of_small_or_mixed_order_get_the_same_answers() {
        let t = torsion();
        let secret = SigningKey::from_bytes(&[9; 32]);
        // A small-order key (the identity): every signature refused, even a "valid" one.
        let identity = VerifyingKey::from_bytes(EdwardsPoint::identity().compress().as_bytes()).unwrap();
        let key = DeviceKey::new(identity);
        // With A the identity the equation is [s]B = R: R = [r]B and s = r sign every message.
        let r = Scalar::from(1234u32);
        let forged =
            Signature::from_components((ED25519_BASEPOINT_POINT * r).compress().to_bytes(), r.to_bytes());
        assert!(ed25519_dalek::Verifier::verify(&identity, b"m", &forged).is_ok());
        assert!(!agree(&key, b"m", &forged));
        // A mixed-order key A + T: accepted exactly when both checks accept (when [k]T = 0).
        let mixed_point = secret.verifying_key().to_edwards() + t;
        let mixed = VerifyingKey::from_bytes(mixed_point.compress().as_bytes()).unwrap();
        let key = DeviceKey::new(mixed);
        let mut accepted = 0;
        for i in 0..64u32 {
            let message = i.to_le_bytes();
            let signature = sign_with_extra(&secret, mixed.as_bytes(), &message, EdwardsPoint::identity());
            accepted += usize::from(agree(&key, &message, &signature));
        }
        // [s]B - [k](A + T) = R - [k]T equals R when 8 divides k: about 1 in 8.
        assert!((1..64).contains(&accepted), "{accepted} of 64 accepted");
    }

    #[test]
    fn the_budget_bounds_the_tables_and_keys_past_it_still_verify() {
        let budget = TableBudget::new(2);
        let keys: Vec<(SigningKey, DeviceKey)> = (0..4u8)
            .map(|i| {
                let secret = SigningKey::from_bytes(&[i + 100; 32]);
                let key = DeviceKey::new(secret.verifying_key());
                (secret, key)
            })
            .collect();
        for round in 0..2 {
            for (secret, key) in &keys {
                let signature = secret.sign(b"hello");
                assert_eq!(key.verify_strict(b"hello", &signature, &budget), Ok(()));
                assert_eq!(
                    key.verify_strict(b"hellp", &signature, &budget),
                    Err(BadSignature),
                    "round {round}"
                );
            }
        }
        assert_eq!(budget.built(), 2);
        let with_tables = keys.iter().filter(|(_, k)| matches!(k.table.get(), Some(Some(_)))).count();
        assert_eq!(with_tables, 2);
    }
}
