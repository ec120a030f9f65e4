//! Helpers shared by the end-to-end tests: paths, a runtime with a shared compiled-guest cache,
//! signed test bundles, and the ONNX Runtime reference fixtures.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use warden::kserve::RequestTensor;
use warden::manifest::{DimSpec, InputSpec, Limits, Manifest, OutputPolicy, OutputSpec};
use warden::trust::{MANIFEST_FILE, MODEL_FILE, PublisherKey, generate_keypair, sign_bundle};
use warden::wire::reading::{MAX_DEVICE_ID, Reading, SensorKind, Unit};
use warden::{DType, Runtime, RuntimeBuilder, Tensor};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The compiled-guest cache shared by every test process of this user.
pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("warden-test-guest-cache")
}

static FIRST_BUILD: Mutex<bool> = Mutex::new(false);

/// A runtime builder with test-friendly limits and the shared cache. The first call in a
/// process builds (and so compiles, if needed) before any other, so parallel tests do not all
/// compile the guest at once.
pub fn builder(state_dir: &Path, trust_dir: &Path) -> RuntimeBuilder {
    let mut warm = FIRST_BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !*warm {
        Runtime::builder().cache_dir(cache_dir()).state_dir(state_dir.join("warm")).build().unwrap();
        *warm = true;
    }
    Runtime::builder()
        .cache_dir(cache_dir())
        .state_dir(state_dir)
        .trust_dir(trust_dir)
        .instances_per_model(2)
        .timeout(Duration::from_secs(20))
        .load_timeout(Duration::from_secs(60))
}

#[derive(Debug)]
/// A publisher key pair in `dir/keys` with a trust directory `dir/trust` that holds it.
pub struct TestPublisher {
    /// The secret key.
    pub key: PublisherKey,
    /// The trust directory.
    pub trust: PathBuf,
}

impl TestPublisher {
    /// Generates a fresh key and trust directory under `dir`.
    pub fn new(dir: &Path) -> TestPublisher {
        let keys = dir.join("keys");
        let trust = dir.join("trust");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&trust).unwrap();
        generate_keypair(&keys.join("publisher")).unwrap();
        std::fs::copy(keys.join("publisher.pub"), trust.join("publisher.pub")).unwrap();
        TestPublisher { key: PublisherKey::load(&keys.join("publisher.key")).unwrap(), trust }
    }

    /// Writes `model` and `manifest` as a bundle at `repo/<name>/<version>` and signs it.
    pub fn bundle(&self, repo: &Path, manifest: &Manifest, model: &[u8]) -> PathBuf {
        let dir = repo.join(&manifest.name).join(manifest.version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MODEL_FILE), model).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), toml::to_string(manifest).unwrap()).unwrap();
        sign_bundle(&dir, &self.key).unwrap();
        dir
    }
}

/// A manifest with fixed shapes and full precision (so outputs can be compared exactly).
pub fn manifest(name: &str, inputs: &[(&str, DType, &[u64])], outputs: &[(&str, DType, &[u64])]) -> Manifest {
    let spec = |shape: &[u64]| shape.iter().map(|d| DimSpec::Fixed(*d)).collect();
    Manifest {
        format: 1,
        name: name.into(),
        version: 1,
        model_sha256: "0".repeat(64),
        description: None,
        inputs: inputs
            .iter()
            .map(|(n, d, s)| InputSpec { name: (*n).into(), dtype: *d, shape: spec(s), min: None, max: None })
            .collect(),
        outputs: outputs
            .iter()
            .map(|(n, d, s)| OutputSpec { name: (*n).into(), dtype: *d, shape: spec(s) })
            .collect(),
        output_policy: OutputPolicy { top_k: None, step: None, dangerous_full_precision: true },
        limits: Limits { max_input_bytes: Some(64 << 20), ..Limits::default() },
        readings: None,
    }
}

/// An ONNX Runtime reference fixture (`models/fixtures/*.reference.json`).
#[derive(Debug, Deserialize)]
pub struct Fixture {
    /// Model name.
    pub model: String,
    /// ONNX path relative to the workspace root.
    pub onnx: String,
    /// Input/output cases.
    pub cases: Vec<Case>,
}

/// One reference case.
#[derive(Debug, Deserialize)]
pub struct Case {
    /// Inputs.
    pub inputs: Vec<RequestTensor>,
    /// ONNX Runtime's outputs.
    pub outputs: Vec<RequestTensor>,
}

impl Fixture {
    /// Loads a fixture; panics with a hint if it is missing.
    pub fn load(path: &Path) -> Fixture {
        let text = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `python3 models/fetch_public_models.py` (scripts/test.sh does)",
                path.display()
            )
        });
        serde_json::from_slice(&text).unwrap()
    }

    /// The model bytes.
    pub fn model_bytes(&self) -> Vec<u8> {
        std::fs::read(root().join(&self.onnx)).unwrap()
    }

    /// A full-precision manifest shaped after the first case.
    pub fn manifest(&self) -> Manifest {
        let case = &self.cases[0];
        let io = |ts: &[RequestTensor]| -> Vec<(String, DType, Vec<u64>)> {
            ts.iter()
                .map(|t| (t.name.clone(), DType::from_kserve_name(&t.datatype).unwrap(), t.shape.clone()))
                .collect()
        };
        let (i, o) = (io(&case.inputs), io(&case.outputs));
        manifest(
            &self.model,
            &i.iter().map(|(n, d, s)| (n.as_str(), *d, s.as_slice())).collect::<Vec<_>>(),
            &o.iter().map(|(n, d, s)| (n.as_str(), *d, s.as_slice())).collect::<Vec<_>>(),
        )
    }
}

/// Decodes request tensors.
pub fn tensors(ts: &[RequestTensor]) -> Vec<Tensor> {
    ts.iter().map(|t| t.to_tensor().unwrap()).collect()
}

/// Absolute floor of [`assert_close`]: float32 rounding of values near zero.
pub const ABS_TOLERANCE: f64 = 1e-6;

/// Asserts `actual` equals `expected` elementwise as numpy's `allclose` does:
/// `|a - e| <= rel * |e| + ABS_TOLERANCE`. Integer tensors must match exactly.
pub fn assert_close(actual: &Tensor, expected: &Tensor, rel: f64, what: &str) {
    assert_eq!(actual.name, expected.name, "{what}");
    assert_eq!(actual.dtype, expected.dtype, "{what}: {}", actual.name);
    assert_eq!(actual.shape, expected.shape, "{what}: {}", actual.name);
    let n = expected.element_count().unwrap();
    let mut worst = (0.0f64, 0usize);
    for i in 0..n {
        let (a, e) = (actual.value_f64(i).unwrap(), expected.value_f64(i).unwrap());
        if expected.dtype.is_float() {
            let excess = (a - e).abs() / (rel * e.abs() + ABS_TOLERANCE);
            if excess > worst.0 {
                worst = (excess, i);
            }
        } else {
            assert_eq!(a, e, "{what}: {} element {i}", actual.name);
        }
    }
    assert!(
        worst.0 <= 1.0,
        "{what}: {} element {} is {:.2}x outside the tolerance ({rel:e} relative + {ABS_TOLERANCE:e}): got {}, expected {}",
        actual.name,
        worst.1,
        worst.0,
        actual.value_f64(worst.1).unwrap(),
        expected.value_f64(worst.1).unwrap()
    );
}

/// A reading as the `motion` sample model takes it (8 x 3 accelerometer samples, no timestamp)
/// from `device` at `counter`: what the load generator and the benches sign.
pub fn motion_reading(device: &heapless::String<MAX_DEVICE_ID>, counter: u64) -> Reading {
    let samples: Vec<i32> = (0..24).map(|i| if i % 3 == 2 { 1000 } else { (i % 5) - 2 }).collect();
    Reading {
        device_id: device.clone(),
        counter,
        timestamp_ms: None,
        sensor: SensorKind::Accelerometer,
        unit: Unit::MilliG,
        scale: 1.0,
        channels: 3,
        samples: heapless::Vec::from_slice(&samples).expect("24 samples fit a reading"),
    }
}
