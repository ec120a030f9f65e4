use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::VerifiedBundle;
use super::fsutil::{create_private_dir, write_atomic};
use crate::error::{BundleError, Error, Result};

const FILE: &str = "accepted-models.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Accepted {
    version: u64,
    model_sha256: String,
}

/// The highest model version accepted per name, persisted in the state directory so a restart
/// cannot be used to roll a model back.
#[derive(Debug)]
pub struct VersionLedger {
    path: PathBuf,
    accepted: Mutex<BTreeMap<String, Accepted>>,
}

impl VersionLedger {
    /// Opens (or starts) the ledger in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<VersionLedger> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(FILE);
        let accepted = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::io(&path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(VersionLedger { path, accepted: Mutex::new(accepted) })
    }

    /// Refuses a bundle whose version is below the highest accepted for its name, or equal
    /// with other model bytes. Returns whether it is new (needs recording).
    pub fn check(&self, bundle: &VerifiedBundle) -> Result<bool> {
        check_against(&self.accepted.lock().unwrap_or_else(|p| p.into_inner()), bundle)
    }

    /// [`check`](Self::check)s the bundle, then records it durably before returning.
    pub fn accept(&self, bundle: &VerifiedBundle) -> Result<()> {
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
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
