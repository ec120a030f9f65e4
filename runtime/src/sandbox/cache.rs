//! The on-disk cache of the compiled guest, and the crate's only `unsafe` code.
//!
//! A cache file is `SHA-256(body) || body`, where body is what `Engine::precompile_module`
//! produced. Its name is keyed by the guest's SHA-256, the wasmtime version and the engine's
//! compatibility hash, so a different guest or engine configuration never picks it up. Before a
//! file is deserialized its digest is checked; a mismatch (torn write, bit rot, tampering without
//! recomputing the digest) means recompiling and rewriting it.
//!
//! Trust note: compiled code runs natively. Whoever can write the cache directory can already
//! run code as this user (it is created 0700 under the user's cache home); the digest guards
//! against corruption, not against that user.
#![allow(unsafe_code)]

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

use crate::error::SandboxError;
use crate::trust::fsutil::{create_private_dir, write_atomic};

/// How the compiled guest was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileOutcome {
    /// Loaded from the on-disk cache.
    CacheHit,
    /// Compiled now (and written to the cache, when there is one).
    Compiled,
}

struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

fn cache_path(engine: &Engine, dir: &Path, wasm_sha256: &str) -> PathBuf {
    let mut h = Sha256Hasher(Sha256::new());
    h.write(wasm_sha256.as_bytes());
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    let key = hex::encode(h.0.finalize());
    dir.join(format!("guest-{}.cwasm", &key[..32]))
}

/// Loads the compiled guest from `cache_dir` or compiles it (calling `on_compile` first, as it
/// takes seconds) and stores it there.
pub(crate) fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    wasm_sha256: &str,
    cache_dir: Option<&Path>,
    on_compile: &dyn Fn(),
) -> Result<(Module, CompileOutcome, Duration), SandboxError> {
    let started = Instant::now();
    let path = cache_dir.map(|dir| cache_path(engine, dir, wasm_sha256));
    if let Some(path) = &path
        && let Ok(file) = std::fs::read(path)
    {
        match deserialize_checked(engine, &file) {
            Ok(module) => return Ok((module, CompileOutcome::CacheHit, started.elapsed())),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "ignoring the cached guest; recompiling")
            }
        }
    }
    on_compile();
    let body = engine
        .precompile_module(wasm)
        .map_err(|e| SandboxError::Setup(format!("compiling the guest: {e:#}")))?;
    if let (Some(path), Some(dir)) = (&path, cache_dir) {
        let mut file = Sha256::digest(&body).to_vec();
        file.extend_from_slice(&body);
        let stored = create_private_dir(dir).and_then(|()| write_atomic(path, &file, 0o600));
        if let Err(e) = stored {
            tracing::warn!(error = %e, "could not store the compiled guest; the next start compiles again");
        }
    }
    // SAFETY: `body` was produced just now by `precompile_module` on this very engine.
    let module = unsafe { Module::deserialize(engine, &body) }
        .map_err(|e| SandboxError::Setup(format!("loading the compiled guest: {e:#}")))?;
    Ok((module, CompileOutcome::Compiled, started.elapsed()))
}

fn deserialize_checked(engine: &Engine, file: &[u8]) -> Result<Module, String> {
    if file.len() <= 32 {
        return Err("truncated".into());
    }
    let (digest, body) = file.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("digest mismatch".into());
    }
    // SAFETY: `body` is a file this module wrote from `precompile_module` output (its digest
    // matches what we stored beside it, in a directory only this user can write), under a name
    // keyed by this engine's compatibility hash; wasmtime checks the version and configuration
    // again while deserializing.
    unsafe { Module::deserialize(engine, body) }.map_err(|e| format!("{e:#}"))
}
