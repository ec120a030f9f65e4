use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use sha2::{Digest, Sha256};
use warden::guest::{DeclaredTensor, Dim};
use warden::trust::{
    MANIFEST_FILE, MODEL_FILE, PublisherKey, SIGNATURE_FILE, TrustStore, sign_bundle, verify_bundle,
};

use super::Global;

#[derive(Debug, Subcommand)]
pub(super) enum ModelCommand {
    /// Create a bundle directory with model.onnx and a drafted manifest.toml, for you to edit.
    Init {
        /// The ONNX model.
        #[arg(long)]
        model: PathBuf,
        /// Model name.
        #[arg(long)]
        name: String,
        /// Model version (a positive integer).
        #[arg(long)]
        version: u64,
        /// The bundle directory to create (e.g. REPO/NAME/VERSION).
        #[arg(long)]
        out: PathBuf,
        /// Draft a manifest that lets full-precision outputs leave the host (eases model extraction).
        #[arg(long)]
        dangerous_full_precision: bool,
    },
    /// Fill in the model digest and sign the manifest of a bundle directory.
    Sign {
        /// The publisher's secret key (PATH.key).
        #[arg(long)]
        key: PathBuf,
        /// The bundle directory.
        #[arg(long)]
        model_dir: PathBuf,
    },
    /// Verify a bundle's signature and digest against a trust directory.
    Verify {
        /// Directory of trusted publisher keys.
        #[arg(long)]
        trust: PathBuf,
        /// The bundle directory.
        bundle_dir: PathBuf,
    },
    /// Show a bundle's manifest, signer and digest status (verifies nothing against trust).
    Inspect {
        /// The bundle directory.
        bundle_dir: PathBuf,
    },
}

pub(super) fn run(global: &Global, cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Init { model, name, version, out, dangerous_full_precision } => {
            let bytes = std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
            if out.join(MANIFEST_FILE).exists() {
                bail!("{} already holds a manifest; refusing to overwrite it", out.display());
            }
            let runtime = global.runtime(None)?;
            let info = runtime.inspect_onnx(&bytes)?;
            let manifest = draft_manifest(
                &name,
                version,
                &bytes,
                &info.inputs,
                &info.outputs,
                dangerous_full_precision,
            )?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join(MODEL_FILE), &bytes)?;
            std::fs::write(out.join(MANIFEST_FILE), manifest)?;
            println!(
                "wrote {}/{{{MODEL_FILE},{MANIFEST_FILE}}}; edit the manifest, then `warden model sign`",
                out.display()
            );
            Ok(())
        }
        ModelCommand::Sign { key, model_dir } => {
            let key = PublisherKey::load(&key)?;
            sign_bundle(&model_dir, &key)?;
            println!("signed {} with key {}", model_dir.join(MANIFEST_FILE).display(), key.id());
            Ok(())
        }
        ModelCommand::Verify { trust, bundle_dir } => {
            let trust = TrustStore::load(&trust)?;
            let bundle = verify_bundle(&bundle_dir, &trust)?;
            let m = &bundle.manifest;
            println!(
                "OK {} version {} sha256 {} signed by {}",
                m.name, m.version, m.model_sha256, bundle.key_id
            );
            Ok(())
        }
        ModelCommand::Inspect { bundle_dir } => {
            let text = std::fs::read_to_string(bundle_dir.join(MANIFEST_FILE))
                .with_context(|| format!("reading {}", bundle_dir.join(MANIFEST_FILE).display()))?;
            let manifest: warden::manifest::Manifest =
                toml::from_str(&text).context("parsing the manifest")?;
            let signer = std::fs::read(bundle_dir.join(SIGNATURE_FILE))
                .ok()
                .and_then(|b| warden::wire::signing::ManifestSignature::from_bytes(&b))
                .map_or_else(
                    || "unsigned or malformed signature".to_string(),
                    |s| format!("key id {}", hex::encode(s.key_id)),
                );
            let digest = std::fs::read(bundle_dir.join(MODEL_FILE))
                .map(|b| hex::encode(Sha256::digest(&b)))
                .map_or_else(
                    |e| format!("unreadable ({e})"),
                    |d| {
                        if d == manifest.model_sha256 {
                            "matches the manifest".into()
                        } else {
                            format!("MISMATCH (file is {d})")
                        }
                    },
                );
            println!("{} version {}", manifest.name, manifest.version);
            println!("  signature: {signer} (not checked against any trust directory)");
            println!("  model.onnx: {digest}");
            for i in &manifest.inputs {
                println!("  input  {} {} {:?}", i.name, i.dtype, i.shape);
            }
            for o in &manifest.outputs {
                println!("  output {} {} {:?}", o.name, o.dtype, o.shape);
            }
            let p = &manifest.output_policy;
            println!(
                "  output policy: top_k {:?}, step {:?}{}",
                p.top_k,
                p.step,
                if p.dangerous_full_precision { ", DANGEROUS full precision" } else { "" }
            );
            println!("  limits: {:?}", manifest.limits);
            Ok(())
        }
    }
}

fn shape_toml(t: &DeclaredTensor) -> Result<(String, Option<u64>)> {
    let Some(shape) = &t.shape else {
        bail!("{:?} declares no shape; write one in the manifest by hand", t.name)
    };
    let mut elements = Some(1u64);
    let dims: Vec<String> = shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(Dim::Fixed(n)) => {
                elements = elements.and_then(|e| e.checked_mul(*n));
                n.to_string()
            }
            Some(Dim::Symbol(s))
                if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !s.is_empty() =>
            {
                elements = None;
                format!("{s:?}")
            }
            _ => {
                elements = None;
                format!("\"dim{i}\"")
            }
        })
        .collect();
    Ok((format!("[{}]", dims.join(", ")), elements))
}

fn draft_manifest(
    name: &str,
    version: u64,
    model: &[u8],
    inputs: &[DeclaredTensor],
    outputs: &[DeclaredTensor],
    dangerous_full_precision: bool,
) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "# Warden model manifest, drafted by `warden model init` from the model's declared interface."
    )?;
    writeln!(
        s,
        "# Review every field, then sign with `warden model sign`; the signature covers this exact file."
    )?;
    writeln!(s, "format = 1")?;
    writeln!(s, "name = {name:?}")?;
    writeln!(s, "version = {version}")?;
    writeln!(s, "model_sha256 = {:?}", hex::encode(Sha256::digest(model)))?;
    let mut input_bytes = Some(0u64);
    for t in inputs {
        let dtype = t.dtype.with_context(|| format!("input {:?} has no supported declared type", t.name))?;
        let (shape, elements) = shape_toml(t)?;
        input_bytes = input_bytes.zip(elements).map(|(b, e)| b + e * dtype.size() as u64);
        writeln!(s, "\n[[inputs]]\nname = {:?}\ndtype = {:?}\nshape = {shape}", t.name, dtype.name())?;
        writeln!(s, "# Bounds on every value (one number, or one per feature along the last axis):")?;
        writeln!(s, "# min = 0.0\n# max = 1.0")?;
    }
    for t in outputs {
        let dtype = t.dtype.with_context(|| format!("output {:?} has no supported declared type", t.name))?;
        let (shape, _) = shape_toml(t)?;
        writeln!(s, "\n[[outputs]]\nname = {:?}\ndtype = {:?}\nshape = {shape}", t.name, dtype.name())?;
    }
    writeln!(s, "\n[output_policy]")?;
    if dangerous_full_precision {
        writeln!(s, "# Full-precision outputs leave the host: this makes model extraction much easier.")?;
        writeln!(s, "dangerous_full_precision = true")?;
    } else {
        writeln!(
            s,
            "# Only the top_k largest scores per row are reported (others as 0), rounded to `step`."
        )?;
        writeln!(s, "top_k = 3\nstep = 0.01")?;
    }
    writeln!(
        s,
        "\n[limits]\nrequests_per_minute = 600\nburst = 60\ntimeout_ms = 2000\nmax_memory_mib = 256"
    )?;
    match input_bytes {
        Some(b) => writeln!(s, "max_input_bytes = {b}")?,
        None => writeln!(s, "max_input_bytes = 4194304")?,
    }
    Ok(s)
}
