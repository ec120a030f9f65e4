//! Builds the guest (`../guest`) for `wasm32-wasip1` with `+simd128` and hands it to the crate
//! as `$OUT_DIR/warden_guest.wasm`, with its SHA-256 in `WARDEN_GUEST_SHA256`.
//!
//! The guest is built by a nested `cargo build` in its own target directory (beside this
//! build's), with the workspace's `guest` profile whatever profile the host uses, so a plain
//! `cargo build` or `cargo test` builds everything. `WARDEN_GUEST_WASM=/path/to.wasm` uses a
//! prebuilt guest instead.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const TARGET: &str = "wasm32-wasip1";

/// The guest's compiler flags. `-force-vector-interleave=4`: for wasm, LLVM's vectorizer runs
/// one vector per loop iteration; four amortize what the sandbox adds at every loop header (an
/// epoch check for deadlines, around which the compiled code keeps vector values in memory).
/// PP-OCR runs 0.82-0.89x the time with it (benches/README.md). `-inline-threshold=500` (LLVM's
/// default is 225): fewer calls, so fewer of the epoch checks the sandbox adds at every function
/// entry; the small models run 0.96-0.98x the time, the guest grows by 15% (benches/README.md).
const GUEST_RUSTFLAGS: &[&str] = &[
    "-Ctarget-feature=+simd128",
    "-Cllvm-args=-force-vector-interleave=4",
    "-Cllvm-args=-inline-threshold=500",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("runtime/ sits in the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=WARDEN_GUEST_WASM");

    let wasm = match env::var_os("WARDEN_GUEST_WASM") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => {
            for watched in [
                "guest/src",
                "guest/Cargo.toml",
                "guest/wasm/src",
                "guest/wasm/Cargo.toml",
                "wire/src",
                "wire/Cargo.toml",
                "Cargo.lock",
                "Cargo.toml",
                "rust-toolchain.toml",
            ] {
                println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
            }
            build_guest(&workspace, &out_dir)
        }
    };
    let bytes = fs::read(&wasm).unwrap_or_else(|e| panic!("reading the guest {}: {e}", wasm.display()));
    fs::write(out_dir.join("warden_guest.wasm"), &bytes).expect("writing OUT_DIR");
    println!("cargo:rustc-env=WARDEN_GUEST_SHA256={}", hex::encode(Sha256::digest(&bytes)));
}

fn build_guest(workspace: &Path, out_dir: &Path) -> PathBuf {
    ensure_target();
    // OUT_DIR is <target>/[<triple>/]<profile>/build/warden-<hash>/out.
    let target_dir =
        out_dir.ancestors().nth(4).expect("OUT_DIR has the layout cargo gives it").join("warden-guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--package", "warden-guest-wasm", "--lib", "--target", TARGET, "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"));
    println!(
        "cargo:warning=building the wasm guest (tract-onnx for {TARGET}, +simd128); the first build takes a few minutes"
    );
    let status = cmd.status().expect("running cargo for the guest");
    assert!(status.success(), "building the guest failed: {status}");
    target_dir.join(TARGET).join("guest").join("warden_guest_wasm.wasm")
}

/// Adds the wasm target when rustup's automatic install is off (RUSTUP_AUTO_INSTALL=0).
fn ensure_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot
        && sysroot.join("lib/rustlib").join(TARGET).exists()
    {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing: running `rustup target add {TARGET}`");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            panic!("`rustup target add {TARGET}` failed ({other:?}); install the target and build again")
        }
    }
}
