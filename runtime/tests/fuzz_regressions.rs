//! Replays every input saved under `fuzz/regressions/<target>/` (minimized crashes the fuzz
//! targets found) through exactly the code that target runs: `fuzz/src/lib.rs`, included here as
//! a module. Each input must end as `Ok` or a typed error, never a panic.
#![allow(missing_docs)]

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, missing_debug_implementations)]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The saved inputs of one target, in name order (a missing directory holds none).
fn saved(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("reading the regressions directory").path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("reading a saved input");
            (p, bytes)
        })
        .collect()
}

/// Runs `run` on every saved input of `target`, failing on a panic; returns the outcomes.
fn replay<T: std::fmt::Debug>(target: &str, run: impl Fn(&[u8]) -> T) -> Vec<(PathBuf, T)> {
    saved(target)
        .into_iter()
        .map(|(path, bytes)| match catch_unwind(AssertUnwindSafe(|| run(&bytes))) {
            Ok(outcome) => {
                eprintln!("{}: {outcome:?}", path.display());
                (path, outcome)
            }
            Err(_) => panic!(
                "{} still panics in the {target} harness (see fuzz/regressions/README.md)",
                path.display()
            ),
        })
        .collect()
}

#[test]
fn wire_frame_regressions() {
    replay("wire_frame", harness::wire_frame);
}

#[test]
fn manifest_regressions() {
    replay("manifest", harness::manifest);
}

#[test]
fn kserve_request_regressions() {
    replay("kserve_request", harness::kserve_request);
}

#[test]
fn onnx_sandbox_regressions() {
    replay("onnx_sandbox", harness::onnx_sandbox);
}

/// `manifest/readings-offset-overflow`: a signed manifest whose `[readings]` input has a fixed
/// shape of 2^64 - 2 elements, fed from sample offset 2. `reading_to_input` computed
/// `offset + elements` unchecked: an overflow panic with overflow checks on (debug builds, the
/// fuzz build), a wrapped range in release. It must be a typed refusal: of the manifest when the
/// bundle is verified, or of the reading.
#[test]
fn readings_offset_overflow_is_a_typed_error() {
    let input = repo_file("fuzz/regressions/manifest/readings-offset-overflow");
    let len = usize::from(u16::from_le_bytes([input[1], input[2]]));
    let text = std::str::from_utf8(&input[3..3 + len]).expect("UTF-8");
    let manifest: warden::manifest::Manifest = toml::from_str(text).expect("the manifest parses");
    match catch_unwind(|| harness::manifest(&input)) {
        Ok(Err(warden::Error::Bundle { kind: warden::BundleError::InvalidManifest(_), .. })) => {}
        Ok(Ok(())) => {
            let reading = harness::test_reading(&manifest);
            let refused = catch_unwind(|| warden::trust::reading_to_input(&manifest, &reading))
                .expect("reading_to_input does not panic");
            assert!(matches!(refused, Err(warden::trust::ReadingError::Shape(_))), "{refused:?}");
        }
        Ok(other) => panic!("unexpected outcome: {other:?}"),
        Err(_) => panic!("verifying the bundle or reading_to_input panics"),
    }
}

fn repo_file(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The harness still takes the happy paths end to end, so a change to the API it is written
/// against shows up here, not first in a fuzz run.
#[test]
fn harness_accepts_the_samples() {
    // wire/FORMAT.md's worked example: a raw postcard body, not a COBS frame (it holds zeros).
    let example = hex::decode(concat!(
        "0121fe31dfa154a26107626f6172642d37ac020000000000803f0303180fd60f",
        "df9390d7c009adf3a9636793b1fa44f91581026d3fdd620f2fbe18488de65ffd",
        "097d6b366ea7036f23bb3e607e7974eb5021271f4a0ddd6dec2e4b683c305903"
    ))
    .expect("hex");
    let [raw, framed] = harness::wire_frame(&example);
    assert_eq!(raw, Ok(()));
    assert_eq!(framed, Err(warden::wire::reading::FrameError::Malformed));

    let bundle = |f: &str| repo_file(&format!("models/repo/motion/1/{f}"));
    let (manifest, sig, model) = (bundle("manifest.toml"), bundle("manifest.sig"), bundle("model.onnx"));
    for flags in [0, harness::manifest_flags::REPO_LAYOUT, harness::manifest_flags::RESIGN] {
        harness::manifest(&harness::manifest_input(flags, &manifest, &sig, &model))
            .unwrap_or_else(|e| panic!("flags {flags}: the signed sample bundle is refused: {e}"));
    }
    let mut tampered = manifest.clone();
    tampered[0] ^= 1;
    let refused = harness::manifest(&harness::manifest_input(0, &tampered, &sig, &model));
    assert!(
        matches!(refused, Err(warden::Error::Bundle { kind: warden::BundleError::BadSignature, .. })),
        "{refused:?}"
    );

    let [plain, binary] = harness::kserve_request(&repo_file("models/requests/motion.json"));
    plain.expect("the sample request parses");
    assert!(binary.is_err(), "its last two bytes are no header length");
}

/// The sandbox target loads and runs a real model (so its "ran" count means what it says).
#[test]
fn harness_runs_the_motion_model_in_the_sandbox() {
    match harness::onnx_sandbox(&repo_file("models/repo/motion/1/model.onnx")) {
        Ok(harness::SandboxOutcome::Ran(2)) => {}
        other => panic!("the motion model did not run with its two outputs: {other:?}"),
    }
    let refused = harness::onnx_sandbox(b"not an onnx model");
    assert!(matches!(refused, Err(warden::Error::Sandbox(_))), "{refused:?}");
}
