use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::Signature;
use sha2::{Digest, Sha256};
use warden_wire::manifest::{Bound, DimSpec, MANIFEST_FORMAT, Manifest};
use warden_wire::signing::{MANIFEST_SIG_MAGIC, MODEL_MANIFEST_CONTEXT, ManifestSignature};

use super::fsutil::write_atomic;
use super::keys::{KeyId, PublisherKey, TrustStore};
use crate::error::{BundleError, Error, Result};

/// The ONNX file in a bundle directory.
pub const MODEL_FILE: &str = "model.onnx";
/// The manifest in a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The signature over the manifest in a bundle directory.
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// A bundle whose signature, key and digest have been checked. (Rollback is checked separately,
/// by [`super::VersionLedger::accept`], because it needs the host's persisted state.)
#[derive(Clone, Debug)]
pub struct VerifiedBundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The ONNX bytes, matching the signed digest.
    pub model: Vec<u8>,
    /// Which key signed it.
    pub key_id: KeyId,
}

fn read(dir: &Path, file: &'static str) -> std::result::Result<Vec<u8>, BundleError> {
    fs::read(dir.join(file)).map_err(|e| BundleError::Unreadable { file, reason: e.to_string() })
}

/// Verifies a bundle directory: signature (strict ed25519 over the exact manifest bytes, by a
/// trusted, unrevoked key), manifest rules, and the model digest.
pub fn verify_bundle(dir: &Path, trust: &TrustStore) -> Result<VerifiedBundle> {
    verify_inner(dir, trust).map_err(|kind| Error::Bundle { path: dir.to_path_buf(), kind })
}

fn verify_inner(dir: &Path, trust: &TrustStore) -> std::result::Result<VerifiedBundle, BundleError> {
    let sig_bytes = read(dir, SIGNATURE_FILE)?;
    let sig = ManifestSignature::from_bytes(&sig_bytes).ok_or(BundleError::MalformedSignature)?;
    let key_id = KeyId(sig.key_id);
    let key = trust.lookup(key_id)?;
    let manifest_bytes = read(dir, MANIFEST_FILE)?;
    let message = [MODEL_MANIFEST_CONTEXT, &manifest_bytes].concat();
    key.verify_strict(&message, &Signature::from_bytes(&sig.signature))
        .map_err(|_| BundleError::BadSignature)?;

    let text =
        std::str::from_utf8(&manifest_bytes).map_err(|_| BundleError::InvalidManifest("not UTF-8".into()))?;
    let manifest: Manifest =
        toml::from_str(text).map_err(|e| BundleError::InvalidManifest(e.message().to_string()))?;
    check_manifest(&manifest).map_err(BundleError::InvalidManifest)?;
    check_layout(dir, &manifest)?;

    let model = read(dir, MODEL_FILE)?;
    let actual = hex::encode(Sha256::digest(&model));
    if actual != manifest.model_sha256 {
        return Err(BundleError::DigestMismatch { expected: manifest.model_sha256.clone(), actual });
    }
    Ok(VerifiedBundle { dir: dir.to_path_buf(), manifest, model, key_id })
}

/// In a repository (`<repo>/<name>/<version>/`), the directory names must agree with the
/// manifest. A bundle directory whose name is not a number is a standalone bundle.
fn check_layout(dir: &Path, manifest: &Manifest) -> std::result::Result<(), BundleError> {
    let Some(version_dir) = dir.file_name().and_then(|n| n.to_str()) else { return Ok(()) };
    let Ok(version) = version_dir.parse::<u64>() else { return Ok(()) };
    if version != manifest.version {
        return Err(BundleError::Layout(format!(
            "directory {version_dir} holds manifest version {}",
            manifest.version
        )));
    }
    let name_dir = dir.parent().and_then(Path::file_name).and_then(|n| n.to_str());
    if name_dir != Some(manifest.name.as_str()) {
        return Err(BundleError::Layout(format!(
            "directory {name_dir:?} holds manifest name {:?}",
            manifest.name
        )));
    }
    Ok(())
}

/// The rules a manifest must follow beyond its TOML schema.
pub(crate) fn check_manifest(m: &Manifest) -> std::result::Result<(), String> {
    if m.format != MANIFEST_FORMAT {
        return Err(format!("format {} is not supported (expected {MANIFEST_FORMAT})", m.format));
    }
    let name_ok = !m.name.is_empty()
        && m.name.len() <= 128
        && m.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !m.name.starts_with('.');
    if !name_ok {
        return Err(format!("name {:?} must be 1-128 of [A-Za-z0-9._-], not starting with '.'", m.name));
    }
    if m.version == 0 {
        return Err("version must be at least 1".into());
    }
    if m.model_sha256.len() != 64
        || !m.model_sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("model_sha256 must be 64 lowercase hex digits".into());
    }
    if m.inputs.is_empty() || m.outputs.is_empty() {
        return Err("at least one input and one output are required".into());
    }
    let mut names = std::collections::HashSet::new();
    for spec in &m.inputs {
        if !names.insert(("in", spec.name.as_str())) {
            return Err(format!("input {:?} declared twice", spec.name));
        }
        check_shape(&spec.name, &spec.shape)?;
        let last = match spec.shape.last() {
            Some(DimSpec::Fixed(n)) => Some(*n),
            _ => None,
        };
        for (what, bound) in [("min", &spec.min), ("max", &spec.max)] {
            match bound {
                None => {}
                Some(Bound::All(v)) if v.is_finite() => {}
                Some(Bound::PerFeature(vs))
                    if vs.iter().all(|v| v.is_finite()) && last != Some(vs.len() as u64) =>
                {
                    return Err(format!(
                        "input {:?}: {what} has {} entries but the last dimension is {:?}",
                        spec.name,
                        vs.len(),
                        spec.shape.last()
                    ));
                }
                Some(Bound::PerFeature(vs)) if vs.iter().all(|v| v.is_finite()) => {}
                Some(_) => return Err(format!("input {:?}: {what} must be finite", spec.name)),
            }
        }
        if !spec.dtype.is_float()
            && (spec.min.is_some() || spec.max.is_some())
            && spec.dtype == warden_wire::DType::Bool
        {
            return Err(format!("input {:?}: bool inputs take no bounds", spec.name));
        }
    }
    for spec in &m.outputs {
        if !names.insert(("out", spec.name.as_str())) {
            return Err(format!("output {:?} declared twice", spec.name));
        }
        check_shape(&spec.name, &spec.shape)?;
    }
    let p = &m.output_policy;
    match p.step {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err("output_policy.step must be a positive number".into());
        }
        None if !p.dangerous_full_precision => {
            return Err("output_policy.step is required unless dangerous_full_precision = true".into());
        }
        _ => {}
    }
    if p.top_k == Some(0) {
        return Err("output_policy.top_k must be at least 1".into());
    }
    if let Some(r) = &m.readings {
        let fits = m.inputs.len() == 1
            && m.inputs[0].name == r.input
            && m.inputs[0].dtype == warden_wire::DType::F32
            && m.inputs[0].shape.iter().all(|d| matches!(d, DimSpec::Fixed(_)));
        if !fits {
            return Err(format!(
                "readings.input {:?} must be the manifest's only input, f32, with a fixed shape",
                r.input
            ));
        }
    }
    Ok(())
}

fn check_shape(name: &str, shape: &[DimSpec]) -> std::result::Result<(), String> {
    for d in shape {
        if let DimSpec::Named(s) = d
            && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(format!("{name:?}: dimension name {s:?} must be [A-Za-z0-9_]+"));
        }
    }
    if shape.len() > 8 {
        return Err(format!("{name:?}: rank {} is above the limit of 8", shape.len()));
    }
    Ok(())
}

/// Signs a bundle directory: fills `model_sha256` in `manifest.toml` with the digest of
/// `model.onnx` (keeping the rest of the file as written), checks the manifest's rules, and
/// writes `manifest.sig`.
pub fn sign_bundle(dir: &Path, key: &PublisherKey) -> Result<ManifestSignature> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let model_path = dir.join(MODEL_FILE);
    let model = fs::read(&model_path).map_err(|e| Error::io(&model_path, e))?;
    let text = fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let bad =
        |msg: String| Error::Bundle { path: dir.to_path_buf(), kind: BundleError::InvalidManifest(msg) };
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| bad(e.message().to_string()))?;
    doc["model_sha256"] = toml_edit::value(hex::encode(Sha256::digest(&model)));
    let text = doc.to_string();
    let manifest: Manifest = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
    check_manifest(&manifest).map_err(bad)?;
    check_layout(dir, &manifest).map_err(|kind| Error::Bundle { path: dir.to_path_buf(), kind })?;
    write_atomic(&manifest_path, text.as_bytes(), 0o644)?;
    let signature = key.sign(MODEL_MANIFEST_CONTEXT, text.as_bytes());
    let sig = ManifestSignature { key_id: key.id().0, signature: signature.to_bytes() };
    write_atomic(&dir.join(SIGNATURE_FILE), &sig.to_bytes(), 0o644)?;
    debug_assert!(sig.to_bytes().starts_with(MANIFEST_SIG_MAGIC));
    Ok(sig)
}
