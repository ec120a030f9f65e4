use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::VerifiedBundle;
use super::fsutil::{create_private_dir, open_new, read_json, write_atomic};
use crate::error::{BundleError, Error, Result};

const FILE: &str = "accepted-models.json";
/// Held (an exclusive file lock) while a process reads, merges and rewrites the ledger.
const LOCK_FILE: &str = "accepted-models.lock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Accepted {
    version: u64,
    model_sha256: String,
}

/// The highest model version accepted per name, persisted in the state directory so a restart
/// cannot be used to roll a model back.
///
/// Several processes may share a state directory (a daemon, and `warden infer` or `bench` beside
/// it): each check reads what the others recorded, and each record is written under a file lock
/// after merging the file's entries in, so no process writes back a version lower than one
/// another recorded.
#[derive(Debug)]
pub struct VersionLedger {
    path: PathBuf,
    lock_path: PathBuf,
    accepted: Mutex<BTreeMap<String, Accepted>>,
}

/// Takes in what another process recorded: per name, the higher version (the file's entry when
/// both have the same version, since it was recorded first).
fn merge(into: &mut BTreeMap<String, Accepted>, file: BTreeMap<String, Accepted>) {
    for (name, theirs) in file {
        if into.get(&name).is_none_or(|mine| mine.version <= theirs.version) {
            into.insert(name, theirs);
        }
    }
}

impl VersionLedger {
    /// Opens (or starts) the ledger in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<VersionLedger> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(FILE);
        let accepted = read_json(&path)?;
        Ok(VersionLedger { path, lock_path: state_dir.join(LOCK_FILE), accepted: Mutex::new(accepted) })
    }

    /// Refuses a bundle whose version is below the highest accepted for its name (by any process
    /// sharing the state directory), or equal with other model bytes. Returns whether it is new
    /// (needs recording).
    pub fn check(&self, bundle: &VerifiedBundle) -> Result<bool> {
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        merge(&mut accepted, read_json(&self.path)?);
        check_against(&accepted, bundle)
    }

    /// [`check`](Self::check)s the bundle, then records it durably before returning.
    pub fn accept(&self, bundle: &VerifiedBundle) -> Result<()> {
        // Already recorded (by this process or another): nothing to write, so no lock either
        // (a process that may not write the state directory still loads what is recorded).
        if !self.check(bundle)? {
            return Ok(());
        }
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        // An empty file whose only use is its lock (so truncating it is harmless).
        let lock = open_new(&self.lock_path, 0o600).map_err(|e| Error::io(&self.lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&self.lock_path, e))?;
        merge(&mut accepted, read_json(&self.path)?);
        if !check_against(&accepted, bundle)? {
            return Ok(());
        }
        let m = &bundle.manifest;
        let mut next = accepted.clone();
        next.insert(m.name.clone(), Accepted { version: m.version, model_sha256: m.model_sha256.clone() });
        let bytes =
            serde_json::to_vec_pretty(&next).map_err(|e| Error::io(&self.path, std::io::Error::other(e)))?;
        write_atomic(&self.path, &bytes, 0o600)?;
        *accepted = next;
        // The file lock goes with `lock`.
        Ok(())
    }

    /// The highest accepted version of a model, if any.
    pub fn accepted_version(&self, name: &str) -> Option<u64> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|a| a.version)
    }
}

fn check_against(accepted: &BTreeMap<String, Accepted>, bundle: &VerifiedBundle) -> Result<bool> {
    let m = &bundle.manifest;
    let Some(prev) = accepted.get(&m.name) else { return Ok(true) };
    let kind = if m.version < prev.version {
        BundleError::Rollback { offered: m.version, accepted: prev.version }
    } else if m.version == prev.version && m.model_sha256 != prev.model_sha256 {
        BundleError::VersionReused { version: m.version }
    } else {
        return Ok(m.version > prev.version);
    };
    Err(Error::Bundle { path: bundle.dir.clone(), kind })
}
