//! Signature properties, over every bit of small signed objects and over the keys and signatures
//! ed25519's cofactor and encoding leave room for:
//!
//! - every single-bit flip of a small signed bundle (all three files, every bit) is refused, each
//!   by the check that covers that file (bundles.rs flips the digits bundle's manifest and
//!   signature bit by bit and its model byte by byte; this adds every model bit and the reason);
//! - every single-bit flip of a signed reading's COBS frame (what a board sends; readings.rs
//!   flips the postcard bytes) is refused by authentication alone, before any counter check;
//! - small-order public keys are refused, and a signature that a cofactored/lax verifier accepts
//!   under one (R = identity, S = 0 verifies for any message) is refused on the reading path;
//! - non-canonical S (S + L, the same signature in a second encoding) is refused for bundles and
//!   readings.
//!
//! Warden has no signature thresholds (a bundle carries exactly one signature, a reading one), so
//! "duplicated signatures never count twice" reduces to: a `manifest.sig` holding the signature
//! twice is malformed.

use std::path::Path;
use std::time::SystemTime;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use warden::trust::{
    DeviceRegistry, MANIFEST_FILE, MODEL_FILE, ReadingError, ReadingVerifier, SIGNATURE_FILE, TrustStore,
    verify_bundle,
};
use warden::wire::provision::{KeyBlob, key_id};
use warden::wire::reading::{MAX_FRAME_LEN, SignedReading};
use warden::wire::signing::{KEY_ID_LEN, MANIFEST_SIG_MAGIC};
use warden::{BundleError, Error, KeyError};
use warden_tests::{TestPublisher, root};

use super::readings::{now_ms, sign, still};

/// The encodings of the eight points of order dividing 8 (canonical), then the two small-order
/// points that also have a non-canonical encoding (y = 0 + p and y = 1 + p), each with both
/// sign bits. Checked in Python: each decodes to a point P with 8P = identity.
const SMALL_ORDER: [&str; 12] = [
    "0100000000000000000000000000000000000000000000000000000000000000", // identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // order 2
    "0000000000000000000000000000000000000000000000000000000000000000", // order 4
    "0000000000000000000000000000000000000000000000000000000000000080", // order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", // order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", // order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", // order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", // order 8
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p: order 4
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", // y = p + 1: identity
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// The order of the ed25519 group, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn bytes32(hex_text: &str) -> [u8; 32] {
    let mut out = [0; 32];
    hex::decode_to_slice(hex_text, &mut out).unwrap();
    out
}

/// `s + L` (little-endian): the same scalar mod L, encoded non-canonically.
fn plus_l(s: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(L[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// A small signed bundle: the motion sample (604-byte model), re-signed with a test key.
fn motion_bundle(dir: &Path) -> (TestPublisher, std::path::PathBuf) {
    let publisher = TestPublisher::new(dir);
    let sample = root().join("models/repo/motion/1");
    let manifest: warden::manifest::Manifest =
        toml::from_str(&std::fs::read_to_string(sample.join(MANIFEST_FILE)).unwrap()).unwrap();
    let model = std::fs::read(sample.join(MODEL_FILE)).unwrap();
    let bundle = publisher.bundle(&dir.join("repo"), &manifest, &model);
    (publisher, bundle)
}

fn refusal(result: warden::Result<impl std::fmt::Debug>) -> BundleError {
    match result {
        Err(Error::Bundle { kind, .. }) => kind,
        other => panic!("expected a refused bundle, got {other:?}"),
    }
}

#[test]
fn every_bit_of_a_small_signed_bundle_is_refused_by_the_check_that_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher, bundle) = motion_bundle(dir.path());
    let trust = TrustStore::load(&publisher.trust).unwrap();
    verify_bundle(&bundle, &trust).unwrap();
    let magic = MANIFEST_SIG_MAGIC.len();
    let mut checked = 0;
    for file in [MANIFEST_FILE, SIGNATURE_FILE, MODEL_FILE] {
        let path = bundle.join(file);
        let original = std::fs::read(&path).unwrap();
        for i in 0..original.len() {
            for bit in 0..8 {
                let mut bytes = original.clone();
                bytes[i] ^= 1 << bit;
                std::fs::write(&path, &bytes).unwrap();
                let kind = refusal(verify_bundle(&bundle, &trust));
                let expected = match file {
                    // The signature covers the exact manifest bytes, checked before parsing.
                    MANIFEST_FILE => matches!(kind, BundleError::BadSignature),
                    SIGNATURE_FILE if i < magic => matches!(kind, BundleError::MalformedSignature),
                    SIGNATURE_FILE if i < magic + KEY_ID_LEN => matches!(kind, BundleError::UnknownKey(_)),
                    SIGNATURE_FILE => matches!(kind, BundleError::BadSignature),
                    _ => matches!(kind, BundleError::DigestMismatch { .. }),
                };
                assert!(expected, "{file} byte {i} bit {bit}: refused as {kind:?}");
                checked += 1;
            }
        }
        std::fs::write(&path, &original).unwrap();
    }
    verify_bundle(&bundle, &trust).unwrap();
    assert_eq!(checked, 8 * (604 + 80 + std::fs::read(bundle.join(MANIFEST_FILE)).unwrap().len()));
    eprintln!("{checked} single-bit flips refused");
}

#[test]
fn every_bit_of_a_signed_reading_frame_is_refused_by_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let blob = DeviceRegistry::open(&state).unwrap().provision("board-1").unwrap();
    let verifier = ReadingVerifier::open(&state, std::time::Duration::from_secs(300)).unwrap();
    let good = sign(&blob, 7, Some(now_ms()), &still(24));
    let mut buf = [0u8; MAX_FRAME_LEN];
    let frame = good.encode_frame(&mut buf).unwrap().to_vec();
    verifier
        .authenticate(&SignedReading::decode_frame(&mut frame.clone()).unwrap(), SystemTime::now())
        .unwrap();
    let (mut undecodable, mut unauthentic) = (0, 0);
    for i in 0..frame.len() {
        for bit in 0..8 {
            let mut tampered = frame.clone();
            tampered[i] ^= 1 << bit;
            match SignedReading::decode_frame(&mut tampered) {
                Err(_) => undecodable += 1,
                Ok(decoded) => {
                    // Refused without consulting the counter: authentication alone catches it.
                    let e = verifier.authenticate(&decoded, SystemTime::now()).unwrap_err();
                    assert!(
                        matches!(
                            e,
                            ReadingError::BadSignature(_)
                                | ReadingError::UnknownKey(_)
                                | ReadingError::UnknownDevice(_)
                                | ReadingError::UnknownFormat(_)
                                | ReadingError::Malformed
                        ),
                        "frame byte {i} bit {bit}: refused as {e:?}"
                    );
                    unauthentic += 1;
                }
            }
        }
    }
    assert_eq!(undecodable + unauthentic, frame.len() * 8);
    assert!(unauthentic > 0, "every flip failed to decode: the signature was never exercised");
    eprintln!("{} frame bits: {undecodable} undecodable, {unauthentic} decoded and refused", frame.len() * 8);
    // The untouched reading is still good (nothing above took its counter).
    verifier.verify(&good, SystemTime::now()).unwrap();
}

#[test]
fn small_order_public_keys_are_refused_in_the_trust_directory() {
    let dir = tempfile::tempdir().unwrap();
    for (n, hex_key) in SMALL_ORDER.iter().enumerate() {
        let trust = dir.path().join(format!("trust-{n}"));
        std::fs::create_dir_all(&trust).unwrap();
        std::fs::write(trust.join("weak.pub"), format!("warden-ed25519-public {hex_key}\n")).unwrap();
        match TrustStore::load(&trust) {
            Err(Error::Key(KeyError::Weak { .. })) => {}
            other => panic!("small-order key {hex_key}: {other:?}"),
        }
        // One weak key among good ones fails the whole directory closed.
        TestPublisher::new(&dir.path().join(format!("good-{n}")));
        std::fs::copy(dir.path().join(format!("good-{n}/trust/publisher.pub")), trust.join("good.pub"))
            .unwrap();
        assert!(TrustStore::load(&trust).is_err(), "{hex_key}");
    }
}

#[test]
fn forgeries_under_small_order_keys_pass_lax_verification_and_fail_warden() {
    // R = small-order point, S = 0: the lax check [S]B = R + [k]A holds for some pairs (with
    // A = R = identity, for every message); verify_strict refuses all of them.
    let message = b"warden/sensor-reading/v1\0anything at all";
    let mut lax = 0;
    for a in SMALL_ORDER {
        let Ok(key) = VerifyingKey::from_bytes(&bytes32(a)) else { continue };
        assert!(key.is_weak(), "{a}");
        for r in SMALL_ORDER {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&bytes32(r));
            let sig = Signature::from_bytes(&sig);
            if key.verify(message, &sig).is_ok() {
                lax += 1;
            }
            assert!(key.verify_strict(message, &sig).is_err(), "A {a} R {r}");
        }
    }
    assert!(lax > 0, "no forgery passed the lax check: the test does not exercise what it claims");

    // The reading path: a registry holding a small-order device key (written by some other
    // tool, or edited). The forgery that the lax check accepts is refused.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let real = DeviceRegistry::open(&state).unwrap().provision("board-9").unwrap();
    let identity = bytes32(SMALL_ORDER[0]);
    let registry = state.join("devices.json");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&registry).unwrap()).unwrap();
    doc["board-9"]["public_key"] = hex::encode(identity).into();
    doc["board-9"]["key_id"] = hex::encode(key_id(&identity)).into();
    std::fs::write(&registry, serde_json::to_vec(&doc).unwrap()).unwrap();
    let verifier = ReadingVerifier::open(&state, std::time::Duration::from_secs(300)).unwrap();
    let mut forged = sign(&real, 1, None, &still(24));
    forged.key_id = key_id(&identity);
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&identity);
    forged.signature.0 = sig;
    let key = VerifyingKey::from_bytes(&identity).unwrap();
    let mut msg = [0u8; warden::wire::reading::MAX_MESSAGE_LEN];
    let signed_bytes =
        warden::wire::reading::reading_message(forged.format, &forged.key_id, &forged.reading, &mut msg)
            .unwrap();
    assert!(key.verify(signed_bytes, &Signature::from_bytes(&sig)).is_ok(), "lax check accepts the forgery");
    assert_eq!(
        verifier.verify(&forged, SystemTime::now()),
        Err(ReadingError::BadSignature("board-9".into()))
    );
}

#[test]
fn non_canonical_s_is_refused_for_bundles_and_readings() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher, bundle) = motion_bundle(dir.path());
    let trust = TrustStore::load(&publisher.trust).unwrap();
    let sig_path = bundle.join(SIGNATURE_FILE);
    let original = std::fs::read(&sig_path).unwrap();
    let s_at = MANIFEST_SIG_MAGIC.len() + KEY_ID_LEN + 32;
    let mut malleated = original.clone();
    malleated[s_at..].copy_from_slice(&plus_l(&original[s_at..]));
    assert_ne!(malleated, original);
    std::fs::write(&sig_path, &malleated).unwrap();
    assert_eq!(refusal(verify_bundle(&bundle, &trust)), BundleError::BadSignature);

    // The same signature twice in one file (the nearest thing to a duplicated signature: there
    // are no multi-signature thresholds to double-count) is malformed.
    std::fs::write(&sig_path, [original.clone(), original.clone()].concat()).unwrap();
    assert_eq!(refusal(verify_bundle(&bundle, &trust)), BundleError::MalformedSignature);
    std::fs::write(&sig_path, &original).unwrap();
    verify_bundle(&bundle, &trust).unwrap();

    let state = dir.path().join("state");
    let blob: KeyBlob = DeviceRegistry::open(&state).unwrap().provision("board-2").unwrap();
    let verifier = ReadingVerifier::open(&state, std::time::Duration::from_secs(300)).unwrap();
    let good = sign(&blob, 1, None, &still(24));
    let mut malleated = good.clone();
    let s = plus_l(&good.signature.0[32..]);
    malleated.signature.0[32..].copy_from_slice(&s);
    assert_eq!(
        verifier.verify(&malleated, SystemTime::now()),
        Err(ReadingError::BadSignature("board-2".into()))
    );
    verifier.verify(&good, SystemTime::now()).unwrap();
}
