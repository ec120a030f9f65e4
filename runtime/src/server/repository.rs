use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::runtime::{Model, Runtime};

/// The models being served: every bundle of `<repo>/<name>/<version>/` that verified and loaded.
/// A refused bundle is reported and skipped; the others serve.
#[derive(Debug)]
pub struct Repository {
    runtime: Arc<Runtime>,
    models: RwLock<BTreeMap<String, BTreeMap<u64, Model>>>,
    refused: Vec<(String, String)>,
}

impl Repository {
    /// Loads every bundle under `repo`.
    pub fn load(runtime: Arc<Runtime>, repo: &Path) -> Repository {
        let mut models: BTreeMap<String, BTreeMap<u64, Model>> = BTreeMap::new();
        let mut refused = Vec::new();
        let mut dirs: Vec<_> = std::fs::read_dir(repo)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_else(|e| {
                refused.push((repo.display().to_string(), e.to_string()));
                Vec::new()
            });
        dirs.sort();
        for name_dir in dirs {
            let mut versions: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&name_dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok().map(|v| (v, e.path())))
                        .collect()
                })
                .unwrap_or_default();
            // Ascending, so rollback protection sees versions in order.
            versions.sort();
            for (version, dir) in versions {
                match runtime.load_bundle(&dir) {
                    Ok(model) => {
                        tracing::info!(model = %model.manifest().name, version, "loaded");
                        models.entry(model.manifest().name.clone()).or_default().insert(version, model);
                    }
                    Err(e) => {
                        tracing::error!(bundle = %dir.display(), error = %e, "refused");
                        refused.push((dir.display().to_string(), e.to_string()));
                    }
                }
            }
        }
        Repository { runtime, models: RwLock::new(models), refused }
    }

    /// Bundles that were refused at load, with why.
    pub fn refused(&self) -> &[(String, String)] {
        &self.refused
    }

    /// A model by name and version (the highest version when `None`).
    pub fn get(&self, name: &str, version: Option<u64>) -> Option<Model> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let versions = models.get(name)?;
        match version {
            Some(v) => versions.get(&v).cloned(),
            None => versions.values().next_back().cloned(),
        }
    }

    /// Every (name, version) served.
    pub fn index(&self) -> Vec<(String, u64)> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.iter().flat_map(|(n, vs)| vs.keys().map(move |v| (n.clone(), *v))).collect()
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
            .filter(|m| m.manifest().readings.is_some())
            .cloned()
            .collect()
    }

    /// The runtime models are loaded with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}
