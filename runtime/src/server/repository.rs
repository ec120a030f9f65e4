use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::runtime::{Model, Runtime};
use crate::trust::SIGNATURE_FILE;

/// A served model and the signature file it was loaded from (to tell a changed bundle on reload).
#[derive(Clone, Debug)]
struct Loaded {
    model: Model,
    signature: Vec<u8>,
}

type Models = BTreeMap<String, BTreeMap<u64, Loaded>>;

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Bundles loaded (new, or changed and accepted), as `name/version`.
    pub loaded: Vec<String>,
    /// Bundles no longer in the repository, no longer served.
    pub removed: Vec<String>,
    /// Bundles refused, with why; a refused change leaves the old bundle serving.
    pub refused: Vec<(String, String)>,
}

/// The models being served: every bundle of `<repo>/<name>/<version>/` that verified and loaded.
/// A refused bundle is reported and skipped; the others serve.
#[derive(Debug)]
pub struct Repository {
    runtime: Arc<Runtime>,
    root: PathBuf,
    models: RwLock<Models>,
    refused: Mutex<Vec<(String, String)>>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// `(version, dir)` of every version directory, ascending, per model directory.
fn scan(repo: &Path, refused: &mut Vec<(String, String)>) -> Vec<(u64, PathBuf)> {
    let mut dirs: Vec<_> = std::fs::read_dir(repo)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_else(|e| {
            refused.push((repo.display().to_string(), e.to_string()));
            Vec::new()
        });
    dirs.sort();
    let mut all = Vec::new();
    for name_dir in dirs {
        let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(&name_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok().map(|v| (v, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        // Ascending, so rollback protection sees versions in order.
        versions.sort();
        all.extend(versions);
    }
    all
}

impl Repository {
    /// Loads every bundle under `repo`.
    pub fn load(runtime: Arc<Runtime>, repo: &Path) -> Repository {
        let repository = Repository {
            runtime,
            root: repo.to_path_buf(),
            models: RwLock::new(BTreeMap::new()),
            refused: Mutex::new(Vec::new()),
            reloading: Mutex::new(()),
        };
        repository.reload();
        repository
    }

    /// Reads the trust directory again, then scans the repository: new and changed bundles are
    /// verified and loaded, bundles gone from disk stop being served, and so do bundles whose key
    /// is no longer trusted (revoked, or its `.pub` file gone). A bundle that is refused (bad
    /// signature, rollback, a model that does not load) leaves what was serving under its name and
    /// version in place, if its key is still trusted.
    pub fn reload(&self) -> ReloadReport {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport::default();
        // The trust directory first: a key revoked (or removed) since stops serving what it
        // signed, and signs nothing new.
        if let Err(e) = self.runtime.reload_trust() {
            tracing::error!(
                error = %e,
                "trust directory refused; keeping the keys read before, less those it still revokes"
            );
            report.refused.push(("trust directory".into(), e.to_string()));
        }
        let trust = self.runtime.trust();
        let untrusted = |c: &Loaded| {
            let key = c.model.key_id();
            trust.as_ref().map_or(Some(format!("{key}: no trust directory")), |t| {
                t.lookup(key).err().map(|e| e.to_string())
            })
        };
        let old = self.models.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut next: Models = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (version, dir) in scan(&self.root, &mut report.refused) {
            let Some(name) =
                dir.parent().and_then(Path::file_name).and_then(|n| n.to_str()).map(str::to_owned)
            else {
                continue;
            };
            seen.insert((name.clone(), version));
            let mut current = old.get(&name).and_then(|vs| vs.get(&version));
            let signature = std::fs::read(dir.join(SIGNATURE_FILE)).unwrap_or_default();
            if let Some(reason) = current.and_then(untrusted) {
                tracing::error!(model = %name, version, %reason, "its key is no longer trusted; unloaded");
                // Unchanged, it would only be refused again; changed (signed anew, say), it is
                // verified below, and nothing older stands in for it if it fails.
                let unchanged = current.is_some_and(|c| c.signature == signature);
                current = None;
                if unchanged {
                    report.refused.push((dir.display().to_string(), reason));
                    continue;
                }
            }
            if let Some(c) = current.filter(|c| c.signature == signature) {
                next.entry(name).or_default().insert(version, c.clone());
                continue;
            }
            match self.runtime.load_bundle(&dir) {
                Ok(model) => {
                    let m = model.manifest();
                    tracing::info!(model = %m.name, version, "loaded");
                    report.loaded.push(format!("{}/{version}", m.name));
                    next.entry(m.name.clone()).or_default().insert(version, Loaded { model, signature });
                }
                Err(e) => {
                    tracing::error!(bundle = %dir.display(), error = %e, "refused");
                    report.refused.push((dir.display().to_string(), e.to_string()));
                    if let Some(c) = current {
                        tracing::warn!(model = %name, version, "keeping the bundle already serving");
                        next.entry(name).or_default().insert(version, c.clone());
                    }
                }
            }
        }
        for (name, versions) in &old {
            for version in versions.keys() {
                if !seen.contains(&(name.clone(), *version)) {
                    tracing::info!(model = %name, version, "removed from the repository; unloaded");
                    report.removed.push(format!("{name}/{version}"));
                }
            }
        }
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone_from(&report.refused);
        report
    }

    /// Bundles refused at the last load or reload, with why.
    pub fn refused(&self) -> Vec<(String, String)> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A model by name and version (the highest version when `None`).
    pub fn get(&self, name: &str, version: Option<u64>) -> Option<Model> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let versions = models.get(name)?;
        match version {
            Some(v) => versions.get(&v),
            None => versions.values().next_back(),
        }
        .map(|l| l.model.clone())
    }

    /// Every (name, version) served.
    pub fn index(&self) -> Vec<(String, u64)> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.iter().flat_map(|(n, vs)| vs.keys().map(move |v| (n.clone(), *v))).collect()
    }

    /// Every model version served.
    pub fn models(&self) -> Vec<Model> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.values().flat_map(|vs| vs.values().map(|l| l.model.clone())).collect()
    }

    /// Versions of a model, ascending.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.get(name).map(|vs| vs.keys().copied().collect()).unwrap_or_default()
    }

    /// The models that take signed readings.
    pub fn reading_models(&self) -> Vec<Model> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .values()
            .filter_map(|vs| vs.values().next_back())
            .filter(|l| l.model.manifest().readings.is_some())
            .map(|l| l.model.clone())
            .collect()
    }

    /// The runtime models are loaded with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}
