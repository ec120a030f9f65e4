//! Every signature check refuses tampering: byte flips in each bundle file, unknown and revoked
//! keys, rollback (also across restarts), reused versions, a missing signature.

use std::path::{Path, PathBuf};

use warden::trust::{MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, TrustStore, verify_bundle};
use warden::{BundleError, Error};
use warden_tests::{Fixture, TestPublisher, builder, root};

fn digits() -> Fixture {
    Fixture::load(&root().join("models/fixtures/digits.reference.json"))
}

fn refusal(result: warden::Result<impl std::fmt::Debug>) -> BundleError {
    match result {
        Err(Error::Bundle { kind, .. }) => kind,
        other => panic!("expected a refused bundle, got {other:?}"),
    }
}

fn flip_every_byte(bundle: &Path, file: &str, trust: &TrustStore, masks: &[u8]) -> usize {
    let path = bundle.join(file);
    let original = std::fs::read(&path).unwrap();
    let mut refused = 0;
    for i in 0..original.len() {
        for mask in masks {
            let mut bytes = original.clone();
            bytes[i] ^= mask;
            std::fs::write(&path, &bytes).unwrap();
            let kind = refusal(verify_bundle(bundle, trust));
            if file == MODEL_FILE {
                assert!(matches!(kind, BundleError::DigestMismatch { .. }), "{file} byte {i}: {kind}");
            }
            refused += 1;
        }
    }
    std::fs::write(&path, &original).unwrap();
    verify_bundle(bundle, trust).unwrap();
    refused
}

#[test]
fn any_flipped_byte_in_any_bundle_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let fixture = digits();
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let trust = TrustStore::load(&publisher.trust).unwrap();
    verify_bundle(&bundle, &trust).unwrap();
    // Every bit of the small files, every byte (all bits at once) of the model.
    let bits: Vec<u8> = (0..8).map(|b| 1 << b).collect();
    let n = flip_every_byte(&bundle, MANIFEST_FILE, &trust, &bits)
        + flip_every_byte(&bundle, SIGNATURE_FILE, &trust, &bits)
        + flip_every_byte(&bundle, MODEL_FILE, &trust, &[0xff]);
    assert!(n > 20_000, "only {n} tampered variants checked");
}

#[test]
fn unknown_revoked_and_missing_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(&dir.path().join("a"));
    let stranger = TestPublisher::new(&dir.path().join("b"));
    let fixture = digits();
    let bundle = stranger.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let trust = TrustStore::load(&publisher.trust).unwrap();
    assert!(matches!(refusal(verify_bundle(&bundle, &trust)), BundleError::UnknownKey(_)));

    let revoked_trust = dir.path().join("revoked-trust");
    std::fs::create_dir_all(&revoked_trust).unwrap();
    std::fs::copy(stranger.trust.join("publisher.pub"), revoked_trust.join("publisher.pub")).unwrap();
    let trust = TrustStore::load(&revoked_trust).unwrap();
    verify_bundle(&bundle, &trust).unwrap();
    std::fs::write(revoked_trust.join("revoked"), format!("# compromised\n{}\n", stranger.key.id())).unwrap();
    let trust = TrustStore::load(&revoked_trust).unwrap();
    assert!(matches!(refusal(verify_bundle(&bundle, &trust)), BundleError::RevokedKey(_)));

    std::fs::remove_file(bundle.join(SIGNATURE_FILE)).unwrap();
    let trust = TrustStore::load(&stranger.trust).unwrap();
    assert!(matches!(
        refusal(verify_bundle(&bundle, &trust)),
        BundleError::Unreadable { file: SIGNATURE_FILE, .. }
    ));
}

/// digits signed as version 1 and as version 2, in `dir/repo`.
fn digits_v1_and_v2(dir: &Path) -> (TestPublisher, PathBuf, PathBuf) {
    let publisher = TestPublisher::new(dir);
    let fixture = digits();
    let repo = dir.join("repo");
    let mut manifest = fixture.manifest();
    let v1 = publisher.bundle(&repo, &manifest, &fixture.model_bytes());
    manifest.version = 2;
    let v2 = publisher.bundle(&repo, &manifest, &fixture.model_bytes());
    (publisher, v1, v2)
}

#[test]
fn rollback_is_refused_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher, v1, v2) = digits_v1_and_v2(dir.path());
    let state = dir.path().join("state");
    {
        let runtime = builder(&state, &publisher.trust).build().unwrap();
        runtime.load_bundle(&v1).unwrap();
        runtime.load_bundle(&v2).unwrap();
        runtime.load_bundle(&v2).unwrap();
        assert_eq!(refusal(runtime.load_bundle(&v1)), BundleError::Rollback { offered: 1, accepted: 2 });
    }
    let restarted = builder(&state, &publisher.trust).build().unwrap();
    assert_eq!(refusal(restarted.load_bundle(&v1)), BundleError::Rollback { offered: 1, accepted: 2 });

    // Same version, different model bytes: refused too.
    let reused = dir.path().join("reused");
    let bc = Fixture::load(&root().join("models/fixtures/breast_cancer.reference.json"));
    let mut m = bc.manifest();
    m.name = "digits".into();
    m.version = 2;
    let dir2 = publisher.bundle(&reused, &m, &bc.model_bytes());
    assert_eq!(refusal(restarted.load_bundle(&dir2)), BundleError::VersionReused { version: 2 });
}

/// Two processes on one state directory (here two runtimes, each with its own view of the
/// ledger, as a daemon and `warden infer` beside it would have): what one accepts, the other
/// neither rolls back past nor overwrites when it records a model of its own.
#[test]
fn rollback_is_refused_across_processes_sharing_a_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher, v1, v2) = digits_v1_and_v2(dir.path());
    let bc = Fixture::load(&root().join("models/fixtures/breast_cancer.reference.json"));
    let other = publisher.bundle(&dir.path().join("other"), &bc.manifest(), &bc.model_bytes());
    let state = dir.path().join("state");
    let daemon = builder(&state, &publisher.trust).build().unwrap();
    let beside = builder(&state, &publisher.trust).build().unwrap();
    daemon.load_bundle(&v1).unwrap();
    beside.load_bundle(&v2).unwrap();
    // The daemon records another model: its write must keep digits at 2.
    daemon.load_bundle(&other).unwrap();
    assert_eq!(refusal(daemon.load_bundle(&v1)), BundleError::Rollback { offered: 1, accepted: 2 });
    let restarted = builder(&state, &publisher.trust).build().unwrap();
    assert_eq!(refusal(restarted.load_bundle(&v1)), BundleError::Rollback { offered: 1, accepted: 2 });
    restarted.load_bundle(&other).unwrap();
}

#[test]
fn bundle_directory_must_match_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = TestPublisher::new(dir.path());
    let fixture = digits();
    let bundle = publisher.bundle(&dir.path().join("repo"), &fixture.manifest(), &fixture.model_bytes());
    let moved = dir.path().join("repo/digits/7");
    std::fs::rename(&bundle, &moved).unwrap();
    let trust = TrustStore::load(&publisher.trust).unwrap();
    assert!(matches!(refusal(verify_bundle(&moved, &trust)), BundleError::Layout(_)));
}
