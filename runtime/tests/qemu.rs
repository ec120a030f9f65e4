//! Real firmware under QEMU: the mps2-an386 board image signs accelerometer readings with a
//! provisioned key and writes COBS frames to its UART; `warden ingest` verifies each one and runs
//! the signed `motion` model. Altered, replayed, revoked-device and unknown-key frames are
//! refused with their reason, and a replay stays refused after a restart.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BOARD: &str = "firmware/boards/qemu-mps2-an386";
const KEY_PAGE: &str = "0x003FF000";
const FRAMES: usize = 5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn board_image() -> PathBuf {
    let dir = root().join(BOARD);
    let target_dir = dir.join("target");
    let status = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building the QEMU board image failed (is the thumbv7em-none-eabihf target installed?)"
    );
    target_dir.join("thumbv7em-none-eabihf/release/warden-board-qemu-mps2-an386")
}

/// Boots the image with `key` in the key page; returns the UART bytes.
fn run_board(image: &Path, key: &Path, out: &Path) -> Vec<u8> {
    let output = Command::new("qemu-system-arm")
        .args(["-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .arg("-device")
        .arg(format!("loader,file={},addr={KEY_PAGE}", key.display()))
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .arg("-kernel")
        .arg(image)
        .output()
        .expect("qemu-system-arm not found: scripts/test.sh installs it (apt-get install qemu-system-arm)");
    assert!(output.status.success(), "firmware failed: {}", String::from_utf8_lossy(&output.stderr));
    std::fs::read(out).unwrap()
}

struct Host {
    state: PathBuf,
}

impl Host {
    fn warden(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .env("WARDEN_STATE_DIR", &self.state)
            .env("WARDEN_CACHE_DIR", std::env::temp_dir().join("warden-test-guest-cache"))
            .output()
            .unwrap()
    }

    fn provision(&self, id: &str, out: &Path) -> PathBuf {
        let o = self.warden(&["device", "provision", "--id", id, "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.join(format!("{id}.keyblob"))
    }

    fn ingest(&self, frames: &Path) -> Vec<serde_json::Value> {
        let trust = root().join("models/dev-trust");
        let bundle = root().join("models/repo/motion/1");
        let o = self.warden(&[
            "ingest",
            "--trust",
            trust.to_str().unwrap(),
            bundle.to_str().unwrap(),
            "--from",
            frames.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

fn reasons(lines: &[serde_json::Value]) -> Vec<String> {
    lines.iter().map(|l| l["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn firmware_frames_under_qemu_are_verified_and_inferred() {
    let image = board_image();
    let dir = tempfile::tempdir().unwrap();
    let host = Host { state: dir.path().join("state") };
    let keys = dir.path().join("keys");
    let key_a = host.provision("board-a", &keys);
    let key_b = host.provision("board-b", &keys);

    // Good frames: every one verified and inferred.
    let frames_a = dir.path().join("a.bin");
    let bytes = run_board(&image, &key_a, &frames_a);
    assert_eq!(bytes.iter().filter(|b| **b == 0).count(), FRAMES, "one delimiter per frame");
    let lines = host.ingest(&frames_a);
    assert_eq!(lines.len(), FRAMES);
    let mut last_counter = 0;
    for l in &lines {
        assert_eq!(l["outcome"], "ok", "{l}");
        assert_eq!(l["device"], "board-a");
        let counter = l["counter"].as_u64().unwrap();
        assert!(counter > last_counter, "counters increase");
        last_counter = counter;
        assert_eq!(l["model_name"], "motion");
        let p = l["outputs"][1]["data"].as_array().unwrap();
        let total: f64 = p.iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 0.02, "probabilities: {p:?}");
    }

    // Replayed: the same frames again, in a new ingest process (a restart), are all refused.
    let lines = host.ingest(&frames_a);
    assert_eq!(lines.len(), FRAMES);
    for (l, r) in lines.iter().zip(reasons(&lines)) {
        assert_eq!(l["outcome"], "refused");
        assert!(r.contains("replay"), "{r}");
    }

    // Altered on the wire: one sample byte of a fresh frame flipped.
    let frames_b = dir.path().join("b.bin");
    let mut bytes = run_board(&image, &key_b, &frames_b);
    let first_end = bytes.iter().position(|b| *b == 0).unwrap();
    bytes[first_end - 10] ^= 0x01;
    let altered = dir.path().join("b-altered.bin");
    std::fs::write(&altered, &bytes).unwrap();
    let lines = host.ingest(&altered);
    assert_eq!(lines[0]["outcome"], "refused", "{}", lines[0]);
    let r = lines[0]["reason"].as_str().unwrap();
    assert!(r.contains("bad signature") || r.contains("malformed"), "{r}");
    assert!(lines[1..].iter().all(|l| l["outcome"] == "ok"), "the other frames still pass: {lines:?}");

    // Revoked device: its next frames are refused.
    let o = host.warden(&["device", "revoke", "board-b"]);
    assert!(o.status.success());
    let fresh_b = dir.path().join("b2.bin");
    run_board(&image, &key_b, &fresh_b);
    for r in reasons(&host.ingest(&fresh_b)) {
        assert!(r.contains("revoked"), "{r}");
    }

    // Unknown key: a board provisioned by another host with the same device id.
    let other = Host { state: dir.path().join("other-state") };
    let impostor_key = other.provision("board-a", &dir.path().join("other-keys"));
    let impostor = dir.path().join("impostor.bin");
    run_board(&image, &impostor_key, &impostor);
    for r in reasons(&host.ingest(&impostor)) {
        assert!(r.contains("unknown key"), "{r}");
    }
    // Unknown device.
    let stranger_key = other.provision("board-z", &dir.path().join("other-keys"));
    let stranger = dir.path().join("stranger.bin");
    run_board(&image, &stranger_key, &stranger);
    for r in reasons(&host.ingest(&stranger)) {
        assert!(r.contains("unknown device"), "{r}");
    }
}
