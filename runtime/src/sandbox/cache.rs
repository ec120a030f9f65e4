//! The on-disk cache of the compiled guest, and the crate's only `unsafe` code.
//!
//! A cache file is `SHA-256(body) || body`, where body is what `Engine::precompile_module`
//! produced. Its name is keyed by the guest's SHA-256, the wasmtime version and the engine's
//! compatibility hash, so a different guest or engine configuration never picks it up. Before a
//! file is deserialized its digest is checked; a mismatch (torn write, bit rot, tampering without
//! recomputing the digest) means recompiling and rewriting it.
//!
//! Each compiled guest is about 60 MiB and every new build of Warden has its own, so the
//! directory keeps only the `KEEP` most recently used ones (a hit marks its file used).
//!
//! Trust note: compiled code runs natively. Whoever can write the cache directory can already
//! run code as this user (it is created 0700 under the user's cache home, but a directory that
//! already exists, or one named by `--cache-dir`, keeps its mode: the operator's to keep
//! private); the digest guards against corruption, not against a writer who recomputes it.
#![allow(unsafe_code)]

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

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

/// Compiled guests kept in a cache directory: the most recently used ones.
const KEEP: usize = 4;

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
            Ok(module) => {
                if let Some(dir) = cache_dir {
                    prune(dir, path);
                }
                return Ok((module, CompileOutcome::CacheHit, started.elapsed()));
            }
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
        match stored {
            Ok(()) => prune(dir, path),
            Err(e) => {
                tracing::warn!(error = %e, "could not store the compiled guest; the next start compiles again")
            }
        }
    }
    // SAFETY: `body` was produced just now by `precompile_module` on this very engine.
    let module = unsafe { Module::deserialize(engine, &body) }
        .map_err(|e| SandboxError::Setup(format!("loading the compiled guest: {e:#}")))?;
    Ok((module, CompileOutcome::Compiled, started.elapsed()))
}

/// Marks `used` as used now and removes all but the `KEEP` most recently used compiled guests
/// from `dir` (files named like `cache_path`'s; nothing else is touched). Best effort: a file
/// that cannot be read, marked or removed is left as it is.
fn prune(dir: &Path, used: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(used) {
        let _ = file.set_modified(SystemTime::now());
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut guests: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("guest-") && name.ends_with(".cwasm")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    guests.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, stale) in guests.iter().skip(KEEP).filter(|(_, p)| p != used) {
        if let Err(e) = std::fs::remove_file(stale) {
            tracing::debug!(path = %stale.display(), error = %e, "could not remove a stale compiled guest");
        }
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn guests_left(dir: &Path) -> Vec<String> {
        let mut left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        left
    }

    /// Only the most recently used compiled guests stay: the one just used (however old its
    /// file) and the newest others, `KEEP` in all; files of other names are never touched.
    #[test]
    fn prune_keeps_the_most_recently_used_guests() {
        let dir = tempfile::tempdir().unwrap();
        let base = SystemTime::now() - Duration::from_secs(3600);
        let guest = |i: u64| dir.path().join(format!("guest-{i:032}.cwasm"));
        let names = |ids: &[u64]| -> Vec<String> {
            let mut names: Vec<String> = ids.iter().map(|i| format!("guest-{i:032}.cwasm")).collect();
            names.push("notes.txt".into());
            names
        };
        for i in 0..7 {
            let file = std::fs::File::create(guest(i)).unwrap();
            file.set_modified(base + Duration::from_secs(60 * i)).unwrap();
        }
        std::fs::File::create(dir.path().join("notes.txt")).unwrap().set_modified(base).unwrap();
        // The oldest guest is the one used now.
        prune(dir.path(), &guest(0));
        assert_eq!(guests_left(dir.path()), names(&[0, 4, 5, 6]));
        // A newer guest arrives and an older one is used again: the least recently used goes.
        std::fs::File::create(guest(7)).unwrap();
        prune(dir.path(), &guest(5));
        assert_eq!(guests_left(dir.path()), names(&[0, 5, 6, 7]));
    }
}
